"""`python run.py task=build` end to end: builds the world once, a rerun does nothing, every job is
an MLflow run, and sweeps (basic launcher and joblib's separate processes) nest under one parent."""

import json
from pathlib import Path

import mlflow
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    args = (f"paths.generated={root / 'generated'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "tracking.experiment=e2e", "model=tiny_random")  # the warm start has tests of its own
    return root, args


@pytest.fixture(scope="module")
def first_build(world):
    from conftest import run_cli

    root, args = world
    result = run_cli("task=build", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def runs(root: Path, experiment: str) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              order_by=["attributes.start_time ASC"])


def test_build_makes_every_artifact_and_prints_it(world, first_build):
    root, _ = world
    out = first_build.stdout
    for name in ("corpus", "bm25-index", "tasks", "tiny-model"):
        assert f"{name}" in out and "built" in out
    generated = root / "generated"
    manifest = json.loads((generated / "miniweb/corpus/manifest.json").read_text())
    assert manifest["total_pages"] > 1000
    assert (generated / "miniweb/index/build.json").is_file()
    assert (generated / "tasks/miniweb/test.jsonl").stat().st_size > 0
    model_dir = generated / "models/tiny"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3" and len(tokenizer) == model.config.vocab_size


def test_second_build_is_a_no_op(world, first_build):
    from conftest import run_cli

    root, args = world
    stamps = {p: p.read_text() for p in (root / "generated").rglob("build.json")}
    result = run_cli("task=build", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "everything was up to date" in result.stdout
    assert "built " not in result.stdout.replace("built corpus", "")
    assert {p: p.read_text() for p in stamps} == stamps


def test_build_runs_are_logged_with_metrics_and_report(world, first_build):
    root, _ = world
    logged = runs(root, "e2e")
    assert logged, "no MLflow run"
    first = logged[0]
    assert first.info.status == "FINISHED"
    assert first.data.metrics["build.corpus.built"] == 1.0
    assert first.data.metrics["build.corpus.total"] > 1000
    assert first.data.params["cfg.task"] == "build" and first.data.tags["task"] == "build"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert "build_report.json" in {a.path for a in client.list_artifacts(first.info.run_id)}


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_nests_one_child_per_job_under_one_parent(world, first_build, launcher, tmp_path):
    from conftest import run_cli

    root, args = world
    experiment = f"sweep-{launcher}"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    result = run_cli("task=build", "subagents=1,2", *args, f"tracking.experiment={experiment}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra, "-m")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = runs(root, experiment)
    parents = [r for r in logged if r.data.tags.get("sweep") == "true"]
    children = [r for r in logged if r.data.tags.get("sweep") != "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["width"] for r in children) == ["1", "2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].data.params["sweep.overrides"].startswith("task=build subagents=1,2")


def test_eval_end_to_end_with_the_tiny_model_and_resume(world, first_build, tmp_path):
    from conftest import run_cli

    root, args = world
    job = tmp_path / "eval-job"
    eval_args = ("task=eval", "eval.limit=2", "eval.samples=2", "model.max_reply_tokens=32", *args,
                 "tracking.experiment=e2e-eval", f"hydra.run.dir={job}")
    result = run_cli(*eval_args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| all | 2 |" in result.stdout and "judge: exact-judge" in result.stdout
    for name in ("trials.jsonl", "trajectories.jsonl", "scores.jsonl", "metrics.json", "results.md", "per_task.csv"):
        assert (job / name).is_file(), name
    assert len((job / "trials.jsonl").read_text().splitlines()) == 4
    logged = runs(root, "e2e-eval")
    assert logged[-1].data.metrics["eval.k"] == 2 and "eval.item_f1_avg" in logged[-1].data.metrics

    again = run_cli(*eval_args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming: 4 of 4 trials already done" in again.stdout
    assert len((job / "trials.jsonl").read_text().splitlines()) == 4
