"""Sweep bookkeeping without a model: what a sweep varies, the key params of a job, the summary table and
plot of a parent run (failed children included), the rollout metrics a summary reads, the experiments/
scripts against an empty store, and notebooks committed without outputs."""

import runpy
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import wideseek_exp.conf  # noqa: F401
from wideseek_exp.analysis import sweep_report
from wideseek_exp.evaluation import rollout_metrics
from wideseek_exp.tracking import SweepCallback, job_run, key_params, swept_values

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
COMPARE_SCRIPTS = sorted((REPO / "experiments").glob("*/compare.py"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (a new sqlite store costs seconds of schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def compose_with(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


# ------------------------------------------------------------------------------------ what is swept


def multirun_config(*overrides: str):
    """The config SweepCallback sees for `python run.py OVERRIDES -m` (compose cannot take sweeps, so the
    sweeping overrides are left out of the composition and only recorded as the command line)."""
    cfg = compose_with(*(o for o in overrides if "," not in o), hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = list(overrides)
    return cfg


def test_the_exp_file_widths_are_swept_unless_the_command_line_says_otherwise():
    assert swept_values(multirun_config("+exp=width_sweep")) == {"subagents": ["1", "2", "4", "8"]}
    assert swept_values(multirun_config("+exp=width_sweep", "subagents=1,2")) == {"subagents": ["1", "2"]}
    assert swept_values(multirun_config("+exp=width_sweep", "subagents=2")) == {}
    assert swept_values(multirun_config("+exp=depth_sweep")) == {"agent.single_max_turns": ["10", "20", "50"]}
    assert swept_values(multirun_config("+exp=width_sweep_cpu")) == {
        "subagents": ["1", "2", "4", "8"], "exp.train": ["False", "True"]}
    mixed = swept_values(multirun_config("+model@subagent_model=tiny,qwen3_4b", "seed=1,2", "subagents=3"))
    assert mixed == {"subagent_model": ["tiny", "qwen3_4b"], "seed": ["1", "2"]}


def test_the_cpu_recipe_is_small_and_trains_with_the_debug_trainer():
    cfg = compose_with("+exp=width_sweep_cpu")
    assert cfg.task.value == "eval" and cfg.trainer.name == "debug"
    assert cfg.eval.limit <= 16 and cfg.eval.samples <= 2 and cfg.trainer.max_steps <= 3
    assert cfg.eval.stride > 1  # a spread over the families, which the split stores one after another


def test_every_job_logs_key_params_and_its_wall_time(tmp_path, store):
    uri = store
    cfg = compose_with(f"tracking.uri={uri}", "subagents=8", "+model@subagent_model=tiny", "exp.train=true",
                       "tracking.experiment=unit")
    assert key_params(cfg)["trained"] == "true"
    with job_run(cfg, tmp_path) as run:
        run_id = run.run_id
    logged = mlflow.MlflowClient(uri).get_run(run_id).data
    expected = {"width": "8", "model": "tiny", "subagent_model": "tiny", "agent": "wideseek", "engine": "hf",
                "search": "local", "reward": "wideseek", "judge": "exact", "data": "miniweb", "seed": "0",
                "samples": "4", "trained": "true"}
    assert {key: logged.params[key] for key in expected} == expected
    assert logged.metrics["job.wall_seconds"] >= 0
    assert "trained" not in key_params(compose_with("task=train"))


# -------------------------------------------------------------------------------------- the summary


def fake_sweep(uri: str, points: list[dict], keys: str = "subagents,exp.train") -> str:
    """A parent run and one child per point, as a sweep of task=eval leaves them."""
    client = mlflow.MlflowClient(uri)
    # artifacts beside the store, as tracking.artifact_root puts a job's: by default MLflow would use ./mlruns
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    experiment = client.create_experiment(f"fake-{uuid.uuid4().hex[:8]}", artifact_location=artifacts.as_uri())
    parent = client.create_run(experiment, tags={"sweep": "true"}).info.run_id
    client.log_param(parent, "sweep.keys", keys)
    for point in points:
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "task": "eval",
                                                    "output_dir": "/tmp/x"}).info.run_id
        params = {"width": point["width"], "model": "tiny", "subagent_model": "tiny", "agent": "wideseek",
                  "trained": str(point["trained"]).lower(), "seed": 0, "samples": 2, "cfg.subagents": point["width"],
                  "cfg.exp.train": point["trained"]}
        for key, value in params.items():
            client.log_param(child, key, str(value))
        if point.get("failed"):
            client.set_terminated(child, "FAILED")
            continue
        metrics = {"eval.item_f1_avg": point["f1"], "eval.item_f1_max": min(1.0, point["f1"] + 0.1),
                   "eval.row_f1_avg": point["f1"] / 2, "eval.k": 2, "rollout.subagents_per_call_mean": point["width"],
                   "rollout.generated_tokens_mean.lead": 100, "rollout.generated_tokens_mean.subagent": 50,
                   "rollout.wall_seconds": 3.0, "rollout.tokens_per_second": 50.0}
        for key, value in metrics.items():
            client.log_metric(child, key, value)
        client.set_terminated(child, "FINISHED")
    return parent


POINTS = [
    {"width": 4, "trained": False, "f1": 0.30}, {"width": 1, "trained": False, "f1": 0.10},
    {"width": 1, "trained": True, "f1": 0.20}, {"width": 4, "trained": True, "f1": 0.50},
    {"width": 2, "trained": True, "failed": True},
]


def test_summary_has_one_row_per_child_ordered_by_the_swept_values(tmp_path, store):
    uri = store
    parent = fake_sweep(uri, POINTS)
    table = sweep_report.summarize_sweep(mlflow.MlflowClient(uri), parent)
    assert list(table.columns[:2]) == ["width", "trained"]
    assert list(zip(table["width"], table["trained"])) == [(1, False), (1, True), (2, True), (4, False), (4, True)]
    assert list(table["status"]) == ["FINISHED", "FINISHED", "FAILED", "FINISHED", "FINISHED"]
    assert table["item_f1_avg"].tolist()[:2] == pytest.approx([0.1, 0.2])
    assert pd.isna(table.loc[2, "item_f1_avg"])
    for column in ("item_f1_max", "row_f1_avg", "success_pass", "subagents_per_call", "tokens_lead", "tokens_subagent",
                   "wall_seconds", "tokens_per_second", "model", "seed", "run_id"):
        assert column in table, column


def test_report_logs_the_csv_and_the_plot_to_the_parent(tmp_path, store, capsys):
    uri = store
    parent = fake_sweep(uri, POINTS)
    client = mlflow.MlflowClient(uri)
    sweep_report.report_sweep(client, parent, tmp_path / "sweep")
    assert {a.path for a in client.list_artifacts(parent)} == {"summary.csv", "width_scaling.png"}
    csv = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert len(csv) == 5 and (csv["status"] == "FAILED").sum() == 1
    assert (tmp_path / "sweep" / "width_scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "4 of 5 runs finished" in capsys.readouterr().out


def test_plot_draws_trained_and_untrained_as_separate_lines(tmp_path, store):
    uri = store
    table = sweep_report.summarize_sweep(mlflow.MlflowClient(uri), fake_sweep(uri, POINTS))
    figure = sweep_report.plot_width_scaling(table, tmp_path / "plot.png")
    labels = sorted(line.get_label() for line in figure.axes[0].get_lines())
    assert labels == ["tiny (trained): avg@2", "tiny (trained): max@2", "tiny (untrained): avg@2",
                      "tiny (untrained): max@2"]
    trained_avg = next(line for line in figure.axes[0].get_lines() if line.get_label() == "tiny (trained): avg@2")
    assert list(trained_avg.get_xdata()) == [1, 4]  # the failed width-2 point is left out
    assert list(trained_avg.get_ydata()) == pytest.approx([20.0, 50.0])


def test_the_callback_ends_the_parent_with_a_summary_even_when_nothing_finished(tmp_path, store):
    uri = store
    parent = fake_sweep(uri, [{"width": 1, "trained": False, "failed": True}])
    callback = SweepCallback()
    callback.run_id, callback.uri, callback.sweep_dir = parent, uri, tmp_path / "sweep"
    callback._end("FAILED")
    client = mlflow.MlflowClient(uri)
    assert client.get_run(parent).info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(parent)} == {"summary.csv", "width_scaling.png"}
    callback._end("FINISHED")  # atexit after on_multirun_end: nothing more
    assert client.get_run(parent).info.status == "FAILED"


def test_depth_sweeps_plot_against_the_turn_budget():
    table = pd.DataFrame({"agent.single_max_turns": [10, 20], "width": [4, 4], "item_f1_avg": [0.1, 0.2]})
    assert sweep_report.x_axis(table, ["agent.single_max_turns"]) == "agent.single_max_turns"
    assert sweep_report.plot_name("agent.single_max_turns") == "single_max_turns_scaling.png"
    assert sweep_report.x_axis(table.assign(width=[1, 2]), ["subagents"]) == "width"


# ---------------------------------------------------------------------------------- rollout metrics


def test_rollout_metrics_name_the_width_used_and_tokens_of_every_role():
    trials = [
        {"generated_tokens": {"lead": 10}, "prefill_tokens": {"lead": 100}, "subagents": 0, "lead_calls": 0,
         "search_calls": 0, "access_calls": 0, "table_found": False, "lead_failure": None, "longest_reply": 10},
        {"generated_tokens": {"lead": 30, "subagent": 40}, "prefill_tokens": {"lead": 300, "subagent": 200},
         "subagents": 6, "lead_calls": 2, "search_calls": 3, "access_calls": 1, "table_found": True,
         "lead_failure": None, "longest_reply": 20},
    ]
    metrics = rollout_metrics(trials, 2.0, 80, None, ("lead", "subagent"))
    assert metrics["subagents_mean"] == 3 and metrics["subagents_per_call_mean"] == 3
    assert metrics["generated_tokens_mean.lead"] == 20 and metrics["generated_tokens_mean.subagent"] == 20
    assert metrics["prefill_tokens_mean.subagent"] == 100
    assert metrics["tokens_per_second"] == 40 and metrics["wall_seconds"] == 2.0
    idle = rollout_metrics(trials[:1], 1.0, 10, None, ("lead", "subagent"))
    assert idle["generated_tokens_mean.subagent"] == 0 and idle["subagents_per_call_mean"] == 0


# ------------------------------------------------------------------------------- experiments, notebooks


def test_there_is_one_compare_script_per_paper_result():
    folders = {path.parent.name for path in COMPARE_SCRIPTS}
    assert folders == {"single_agent_table", "multi_agent_table", "width_scaling", "depth_scaling",
                       "lead_subagent_ablation", "data_ablation", "standard_qa"}
    for folder in folders:
        readme = (REPO / "experiments" / folder / "README.md").read_text()
        assert "python run.py" in readme and "compare.py" in readme and "Hardware" in readme, folder


@pytest.mark.parametrize("script", COMPARE_SCRIPTS, ids=lambda p: p.parent.name)
def test_compare_scripts_print_missing_against_an_empty_store(script, store):
    from conftest import run_script

    printed = run_script(script, "--tracking-uri", store)  # none of the recipes' experiments is in it
    assert printed.startswith("## ") and "| missing |" in printed.replace(" / missing |", " | missing |")
    assert "paper" in printed


def test_committed_notebooks_have_no_outputs():
    strip = runpy.run_path(str(REPO / "notebooks" / "strip_outputs.py"))
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert {path.name for path in notebooks} >= {"width_sweep.ipynb", "training_curves.ipynb"}
    assert strip["main"](["--check", *map(str, notebooks)]) == 0, "run: make strip-notebooks"


def test_standard_qa_averages_each_sets_newest_run(tmp_path):
    """Accuracy per QA set from the newest run of each set, averaged over the sets found."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("standard_qa", artifact_location=(tmp_path / "art").as_uri())
    for data_path, accuracy in [("qa/one", 0.2), ("qa/two", 0.6), ("qa/one", 0.4)]:  # the last run of qa/one counts
        run = client.create_run(experiment, tags={"task": "eval"})
        for key, value in {"model": "wideseek_r1_4b", "agent": "wideseek", "cfg.data.path": data_path}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "eval.success_avg", accuracy)
        client.set_terminated(run.info.run_id)
    from conftest import run_script

    printed = run_script(REPO / "experiments" / "standard_qa" / "compare.py", "--tracking-uri", uri)
    wideseek = next(line for line in printed.splitlines() if line.startswith("| WideSeek-R1-4B"))
    assert "| 59.0 / 50.0 |" in wideseek and "| 2 of 7 |" in wideseek  # (40 + 60) / 2
    assert "| 57.0 / missing |" in printed  # no single-agent runs
