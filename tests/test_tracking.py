"""MLflow tracking: one run per job with the config as params and YAML, tags, URI precedence, fail-fast checks."""

import socket
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir

import wideseek_exp.conf  # noqa: F401
from wideseek_exp import WideseekError
from wideseek_exp.tracking import flatten, job_run, tracking_uri

CONF = Path(__file__).resolve().parent.parent / "conf"


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flatten_keeps_lists_whole_and_nulls_visible():
    assert flatten({"a": {"b": 1, "c": None}, "d": [1, 2]}) == {"a.b": "1", "a.c": "null", "d": "[1, 2]"}


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_with(f"paths.root={tmp_path}")
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert tracking_uri(cfg) == "sqlite:///from-env.db"
    assert tracking_uri(compose_with("tracking.uri=sqlite:///from-config.db")) == "sqlite:///from-config.db"


def test_job_run_logs_prefixed_params_yaml_and_tags(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_with(f"tracking.uri={uri}", "subagents=8", "tracking.experiment=unit")
    with job_run(cfg, tmp_path) as run:
        run.log_metrics({"answer": 42.0}, step=1)
        run_id = run.run_id
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    params, tags = logged.data.params, logged.data.tags
    assert params["cfg.subagents"] == "8" and params["cfg.model.name"] == "tiny"
    assert params["cfg.task"] == "eval" and params["cfg.agent.max_subagents_per_call"] == "8"
    assert not any(key.startswith("cfg.hydra") for key in params)
    assert tags["task"] == "eval" and tags["width"] == "8" and len(tags["git.commit"]) >= 7
    assert logged.data.metrics["answer"] == 42.0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.txt"} <= artifacts
    yaml_text = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert "subagents: 8" in yaml_text
    assert client.get_experiment(logged.info.experiment_id).name == "unit"


def test_failed_job_marks_its_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_with(f"tracking.uri={uri}", "tracking.experiment=unit")
    with pytest.raises(RuntimeError), job_run(cfg, tmp_path) as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FAILED"


def test_tracking_disabled_is_a_no_op(tmp_path):
    cfg = compose_with("tracking.enabled=false", f"paths.root={tmp_path}")
    with job_run(cfg) as run:
        assert not run.active
        run.log_metrics({"x": 1})
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_is_an_error_before_work(tmp_path):
    cfg = compose_with(f"tracking.uri=http://127.0.0.1:{free_port()}", "tracking.check_timeout_s=2")
    with pytest.raises(WideseekError, match="unreachable"), job_run(cfg, tmp_path):
        pytest.fail("the job body must not run")


def test_unreachable_server_from_the_command_line(cli, tmp_path):
    generated = tmp_path / "generated"
    result = cli(f"tracking.uri=http://127.0.0.1:{free_port()}", f"paths.generated={generated}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: MLflow tracking server http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not generated.exists(), "no work may start before the tracking check"
