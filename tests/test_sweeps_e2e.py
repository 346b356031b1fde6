"""Sweeps end to end with the random tiny model (model=tiny_random): `+exp=width_sweep subagents=1,2 exp.train=false,true -m` makes one
parent run and one child per point (the trained ones train, then evaluate), each with the params and metrics
a sweep is read by; the parent gets the summary CSV and the width-scaling plot. Both notebooks execute
against that sweep and a short real training run, the experiments/ scripts print our numbers from it, and
a depth sweep whose failing points fail still gets a summary of the points that finished."""

import json
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SMALL = ("eval.limit=2", "eval.samples=2", "model.max_reply_tokens=32")
SHORT_TRAINING = ("trainer=debug", "trainer.max_steps=1", "trainer.tasks_per_step=1", "trainer.num_generations=2")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from scripted_engine import world_config

    world_config()  # build the world once, before the jobs that use it
    root = tmp_path_factory.mktemp("sweeps")
    return root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def width_sweep(store):
    from conftest import run_cli

    root, uri = store
    result = run_cli("+exp=width_sweep", "subagents=1,2", "exp.train=false,true", *SHORT_TRAINING, *SMALL,
                     f"tracking.uri={uri}", f"hydra.sweep.dir={root / 'width'}", "-m")
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("width_sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return result, client, parents[0], children


@pytest.fixture(scope="module")
def train_run(store):
    from conftest import run_cli

    root, uri = store
    result = run_cli("task=train", "trainer=debug", "trainer.max_steps=2", "trainer.tasks_per_step=1",
                     "trainer.num_generations=2", "trainer.eval_every=1", "trainer.save_every=0", "eval.limit=1",
                     "eval.samples=1", "model.max_reply_tokens=32", f"tracking.uri={uri}",
                     "tracking.experiment=notebook-train", f"hydra.run.dir={root / 'train'}")
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("notebook-train").experiment_id])
    return run


# ------------------------------------------------------------------------------------------ the sweep


def test_one_child_per_point_with_the_params_and_metrics_of_a_sweep(width_sweep):
    _, client, parent, children = width_sweep
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.keys"] == "subagents,exp.train"
    assert parent.data.params["sweep.subagents"] == "1,2"
    points = sorted((run.data.params["width"], run.data.params["trained"]) for run in children)
    assert points == [("1", "false"), ("1", "true"), ("2", "false"), ("2", "true")]
    for run in children:
        assert run.info.status == "FINISHED"
        params, metrics = run.data.params, run.data.metrics
        for key, value in {"model": "tiny_random", "subagent_model": "tiny_random", "agent": "wideseek", "search": "local",
                           "reward": "wideseek", "judge": "exact", "data": "miniweb", "seed": "0", "samples": "2"}.items():
            assert params[key] == value, key
        assert params["width"] == params["cfg.subagents"] == run.data.tags["width"]
        for name in ("eval.item_f1_avg", "eval.item_f1_max", "eval.row_f1_avg", "eval.row_f1_max",
                     "eval.success_avg", "eval.success_pass", "rollout.subagents_mean",
                     "rollout.subagents_per_call_mean", "rollout.generated_tokens_mean.lead",
                     "rollout.generated_tokens_mean.subagent", "rollout.wall_seconds", "rollout.tokens_per_second",
                     "job.wall_seconds"):
            assert name in metrics, name
        assert metrics["eval.k"] == 2 and metrics["rollout.trials"] == 4
        if params["trained"] == "true":
            # trained for one step, then evaluated: the evaluation is the run's latest value, at that step
            assert [m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")] == [1]
            assert [m.step for m in client.get_metric_history(run.info.run_id, "eval.item_f1_avg")] == [1]
            assert metrics["train.steps"] == 1
            output = Path(run.data.tags["output_dir"])
            assert (output / "train" / "final" / "config.json").is_file()
            assert (output / "eval" / "trials.jsonl").is_file()
        else:
            assert "reward/mean" not in metrics


def test_the_parent_holds_the_summary_and_the_width_scaling_plot(width_sweep, tmp_path):
    result, client, parent, children = width_sweep
    parent_id = parent.info.run_id
    assert {a.path for a in client.list_artifacts(parent_id)} == {"summary.csv", "width_scaling.png"}
    summary = pd.read_csv(client.download_artifacts(parent_id, "summary.csv", str(tmp_path)))
    assert list(summary.columns[:2]) == ["width", "trained"]
    assert list(zip(summary["width"], summary["trained"])) == [(1, False), (1, True), (2, False), (2, True)]
    assert set(summary["run_id"]) == {run.info.run_id for run in children}
    assert {"item_f1_avg", "item_f1_max", "row_f1_avg", "success_pass", "subagents_per_call", "tokens_lead",
            "wall_seconds", "tokens_per_second"} <= set(summary.columns)
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert (sweep_dir / "width_scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "sweep summary: 4 of 4 runs finished" in result.stdout


def test_a_failed_point_leaves_a_summary_of_those_that_finished(store):
    """A depth sweep, in joblib's processes, two of whose four points fail (an unknown split)."""
    from conftest import run_cli

    root, uri = store
    result = run_cli("+exp=depth_sweep", "agent.single_max_turns=2,3", "data.split=test,nosuch", "eval.limit=1",
                     "eval.samples=1", "model.max_reply_tokens=32", f"tracking.uri={uri}",
                     f"hydra.sweep.dir={root / 'depth'}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "-m")
    assert result.returncode != 0
    sweep = json.loads((root / "depth" / "mlflow_sweep.json").read_text())
    client = mlflow.MlflowClient(uri)
    assert client.get_run(sweep["run_id"]).info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(sweep["run_id"])} == {"summary.csv", "single_max_turns_scaling.png"}
    summary = pd.read_csv(root / "depth" / "summary.csv")
    assert list(summary.columns[:2]) == ["agent.single_max_turns", "data.split"]
    finished = summary[summary["status"] == "FINISHED"]
    assert sorted(finished["agent.single_max_turns"]) == [2, 3] and set(finished["data.split"]) == {"test"}
    assert summary["item_f1_avg"].notna().sum() == 2
    printed = run_compare("depth_scaling", "--tracking-uri", uri, "--experiment", "depth_sweep")
    assert "| tiny_random | 2 | - / 0.0 |" in printed and "| tiny_random | 3 | - / 0.0 |" in printed


# ---------------------------------------------------------------------------------------- notebooks


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The python3 kernel of this environment; where none is installed, a kernelspec for this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        yield "python3"
        return
    except NoSuchKernel:
        pass
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "wideseek-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wideseek tests", "language": "python"}))
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(folder), before]))
    yield "wideseek-test"
    if before is None:
        os.environ.pop("JUPYTER_PATH")
    else:
        os.environ["JUPYTER_PATH"] = before


def execute(name: str, kernel: str, env: dict[str, str], monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(notebook, kernel_name=kernel, timeout=600,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs


def test_the_width_sweep_notebook_shows_the_table_and_the_plot(width_sweep, store, kernel, monkeypatch):
    _, _, parent, _ = width_sweep
    outputs = execute("width_sweep.ipynb", kernel, {"WIDESEEK_TRACKING_URI": store[1],
                                                    "WIDESEEK_EXPERIMENT": "width_sweep",
                                                    "WIDESEEK_PARENT_RUN_ID": parent.info.run_id}, monkeypatch)
    texts = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert f"sweep {parent.info.run_id}: 4 runs, sweeping subagents, exp.train" in texts
    assert "item_f1_avg" in texts and "tokens_per_second" in texts
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 1


def test_the_width_sweep_notebook_finds_the_newest_sweep_by_itself(width_sweep, store, kernel, monkeypatch):
    _, _, parent, _ = width_sweep
    outputs = execute("width_sweep.ipynb", kernel, {"WIDESEEK_TRACKING_URI": store[1],
                                                    "WIDESEEK_EXPERIMENT": "width_sweep",
                                                    "WIDESEEK_PARENT_RUN_ID": ""}, monkeypatch)
    assert any(f"sweep {parent.info.run_id}" in output.get("text", "") for output in outputs)


def test_the_training_curves_notebook_plots_reward_item_f1_and_loss(train_run, store, kernel, monkeypatch):
    outputs = execute("training_curves.ipynb", kernel, {"WIDESEEK_TRACKING_URI": store[1],
                                                        "WIDESEEK_EXPERIMENT": "notebook-train",
                                                        "WIDESEEK_RUN_ID": ""}, monkeypatch)
    texts = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert f"run {train_run.info.run_id}" in texts
    for metric in ("reward/mean", "score/item_f1", "eval.item_f1_avg", "loss"):
        assert metric in texts, metric
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 1


# -------------------------------------------------------------------------------------- experiments/


def run_compare(result: str, *args: str) -> str:
    from conftest import run_script

    return run_script(REPO / "experiments" / result / "compare.py", *args)


@pytest.mark.parametrize("result", sorted(p.parent.name for p in (REPO / "experiments").glob("*/compare.py")))
def test_compare_scripts_read_the_sweep(result, width_sweep, store):
    args = ["--tracking-uri", store[1]] + (["--experiment", "width_sweep"] if result == "width_scaling" else [])
    printed = run_compare(result, *args)
    if result == "width_scaling":
        for line in ("| tiny_random | 1 | - / 0.0 | - / 0.0 |", "| tiny_random | 2 | - / 0.0 | - / 0.0 |",
                     "| tiny_random (trained) | 1 | - / 0.0 | - / 0.0 |", "| tiny_random (trained) | 2 | - / 0.0 | - / 0.0 |",
                     "| wideseek_r1_4b | 10 | 40.0 / missing | 51.8 / missing |"):
            assert line in printed, printed
        assert "tiny_random: ours: flat (no paper curve)" in printed
    else:
        assert "missing" in printed  # none of the other recipes' experiments is in this store
