"""The CPU recipe: warm start, GRPO from it, then a width sweep of both, on the mini-web.

    python experiments/cpu_demo/demo.py            # or: make demo

1. task=build: the world, the random tiny model and its imitation warm start (model=tiny; cached);
2. task=train trainer=debug from the warm start on the TRAIN split -> <job>/final;
3. a width sweep (+exp=width_sweep subagents=1,2,4,8 -m) on 12 TEST tasks of the scripted expert,
   the warm start and the GRPO policy, each a multirun with one MLflow child run per width;
4. prints item F1 per policy and width, logs them to one MLflow run (experiment cpu-demo) with the plot.

Every job is an ordinary `run.py` command, printed before it runs. Seeds: seed=0 throughout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WIDTHS = (1, 2, 4, 8)
# 12 test tasks, every 10th (the split is stored family by family: its first 8 tasks are one family, whose
# list pages the expert's searches miss), one trial each: CPU-sized
EVAL = ("eval.stride=10", "eval.limit=12", "eval.samples=1")
# 8 steps of 2 train tasks x 4 rollouts (a step takes 4-64 s: most rollouts end early); replies of up to 512
# tokens, a table of about 20 rows
TRAIN = ("trainer=debug", "trainer.max_steps=8", "trainer.tasks_per_step=2", "trainer.num_generations=4",
         "trainer.eval_every=0", "trainer.save_every=0", "model.max_reply_tokens=512", "eval.limit=2", "eval.samples=1")


def run(*args: str) -> None:
    command = [sys.executable, "run.py", *args]
    print("$ python run.py " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def sweep_f1(experiment: str) -> dict[int, float]:
    """Item F1 per width from the newest sweep's child runs (replaceable by the sweep summary CSV)."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time DESC"])
    runs = runs[runs["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in runs else runs
    newest = runs[runs["tags.mlflow.parentRunId"] == runs["tags.mlflow.parentRunId"].iloc[0]]
    # the metric is a fraction; the tables print percent
    return {int(w): 100 * float(f1) for w, f1 in zip(newest["params.cfg.subagents"], newest["metrics.eval.item_f1_avg"])}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{REPO / 'mlflow.db'}")
    started = time.perf_counter()
    run("task=build")
    train_dir = REPO / "outputs" / "cpu_demo" / time.strftime("%Y-%m-%d_%H-%M-%S") / "train"
    run("task=train", *TRAIN, "tracking.experiment=cpu-demo-train", f"hydra.run.dir={train_dir}")
    policies = {
        "scripted expert": ("agent.policy=scripted",),
        "warm start (SFT)": ("model=tiny",),
        "GRPO": ("model=tiny", "model.source=local", f"model.path={train_dir / 'final'}"),
    }
    results = {}
    for name, overrides in policies.items():
        experiment = "cpu-demo-" + name.split()[0].lower()
        run("+exp=width_sweep", *EVAL, *overrides, f"tracking.experiment={experiment}", "-m")
        results[name] = sweep_f1(experiment)

    print("\nitem F1 (avg@1, %) on every 10th test task (12 tasks), seed 0")
    print("| policy | " + " | ".join(f"W={w}" for w in WIDTHS) + " |")
    print("|---|" + "---|" * len(WIDTHS))
    for name, f1 in results.items():
        print(f"| {name} | " + " | ".join(f"{f1.get(w, float('nan')):.1f}" for w in WIDTHS) + " |")
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name, f1 in results.items():
        axes.plot(WIDTHS, [f1.get(w, float("nan")) for w in WIDTHS], marker="o", label=name)
    axes.set(xscale="log", xticks=WIDTHS, xticklabels=[str(w) for w in WIDTHS], xlabel="width W (subagents per call)",
             ylabel="item F1 avg (%)", title="mini-web test split")
    axes.legend()
    plot = REPO / "outputs" / "cpu_demo" / "width_scaling.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    mlflow.set_experiment("cpu-demo")
    with mlflow.start_run(run_name="cpu-demo"):
        for name, f1 in results.items():
            key = name.split()[0].lower()
            for width, value in f1.items():
                mlflow.log_metric(f"item_f1.{key}.w{width}", value)
        mlflow.log_artifact(str(plot))
    print(f"plot: {plot}\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
