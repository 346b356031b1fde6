"""MLflow tracking: one run per job, one parent run per multirun sweep.

- The tracking URI is `tracking.uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db.
  An unreachable server is an error before any work starts.
- Each job logs the flattened resolved config as params (prefixed `cfg.`), the YAML as an artifact,
  and tags for git commit, task and width.
- Each job also logs a few key params under short names (`key_params`: width, model, subagent_model,
  agent, engine, search, reward, judge, data, seed, samples, trained) and, when it ends, its wall time
  as the metric `job.wall_seconds`.
- A sweep (`-m`) gets a parent run from `SweepCallback.on_multirun_start`, which runs once in the
  launching process. Its id is written to `<sweep dir>/mlflow_sweep.json`; every job reads that file
  and tags itself as the parent's child. Jobs that a launcher runs in other processes or on other
  machines (joblib, submitit) find the parent the same way, through the shared sweep folder.
  The parent's params name what is swept (`sweep.keys`, and `sweep.<key>` = the values). When the
  sweep ends, even after a failed job, the parent gets `summary.csv` (one row per child) and a
  scaling plot (wideseek_exp/analysis/sweep_report.py), also written into the sweep folder.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from wideseek_exp import REPO_ROOT, WideseekError

SWEEP_FILE = "mlflow_sweep.json"
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call

log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.paths.root) / 'mlflow.db'}"


def artifact_root(cfg: DictConfig) -> str | None:
    """Where a new experiment keeps artifacts when the store is a local database: beside it.

    Without this MLflow puts them under ./mlruns of whatever folder the job was started from.
    """
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, timeout_s: float) -> None:
    """Fail fast and clearly when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as error:
            raise WideseekError(
                f"MLflow tracking server {uri} is unreachable ({type(error).__name__}); start it, or set "
                "tracking.uri / MLFLOW_TRACKING_URI, or run with tracking.enabled=false"
            ) from None
        if response.status_code >= 500:
            raise WideseekError(f"MLflow tracking server {uri} answered HTTP {response.status_code} on /health")
    elif uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WideseekError(f"cannot create the folder of MLflow database {db_path}: {error.strerror}") from None
        if not os.access(db_path.parent, os.W_OK):
            raise WideseekError(f"MLflow database folder {db_path.parent} is not writable")


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": "1", "c": "[1, 2]"} (lists stay whole, as JSON)."""
    flat: dict[str, str] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = json.dumps(tree) if isinstance(tree, list | tuple) else ("null" if tree is None else str(tree))
    flat[prefix[:-1]] = value[:PARAM_VALUE_LIMIT]
    return flat


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def _quiet_mlflow_logs() -> None:
    # The first use of a sqlite store runs its schema migrations and logs every step.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another job of the same sweep created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _hydra_runtime() -> tuple[str | None, Path | None, list[str]]:
    """(mode, sweep dir, task overrides) of the running Hydra job, or Nones outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None, []
    hydra_cfg = HydraConfig.get()
    mode = str(hydra_cfg.mode.name) if hydra_cfg.mode is not None else None
    sweep_dir = Path(hydra_cfg.sweep.dir) if mode == "MULTIRUN" else None
    return mode, sweep_dir, list(hydra_cfg.overrides.task)


class JobRun:
    """The MLflow run of one job. With tracking disabled every method is a no-op."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.active and metrics:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.active and params:
            import mlflow

            items = {k: str(v)[:PARAM_VALUE_LIMIT] for k, v in params.items()}
            keys = list(items)
            for start in range(0, len(keys), PARAM_BATCH):
                mlflow.log_params({k: items[k] for k in keys[start : start + PARAM_BATCH]})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active and tags:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_text(text, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)


class RunAtStep:
    """A JobRun seen from one training step: every metric logged at `step`, every artifact under
    `artifact_path`, so that the evaluator logs a training-time evaluation as it logs task=eval."""

    def __init__(self, tracker: JobRun, step: int, artifact_path: str):
        self.tracker, self.step, self.artifact_path = tracker, step, artifact_path

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step=self.step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, artifact_path or self.artifact_path)


def output_dir() -> Path | None:
    """The running Hydra job's folder (None outside Hydra: a test or a notebook calling a job)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


@contextmanager
def job_run(cfg: DictConfig, output_dir: Path | None = None) -> Iterator[JobRun]:
    """Start the job's MLflow run (checking the store first), log config and tags, end it on exit.

    Under torchrun / accelerate only rank 0 tracks; the other ranks get a no-op JobRun."""
    if not cfg.tracking.enabled or int(os.environ.get("RANK", "0")) != 0:
        yield JobRun(None)
        return

    uri = tracking_uri(cfg)
    check_reachable(uri, cfg.tracking.check_timeout_s)
    _quiet_mlflow_logs()
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    mode, sweep_dir, overrides = _hydra_runtime()
    parent = read_sweep_file(sweep_dir) if sweep_dir else None
    if parent is not None:
        experiment_id = parent["experiment_id"]
    else:
        experiment_id = _experiment_id(client, cfg.tracking.experiment, artifact_root(cfg))

    tags = {
        **git_state(),
        "task": cfg.task.value if hasattr(cfg.task, "value") else str(cfg.task),
        "width": cfg.subagents,
        "model": cfg.model.name,
        "hydra.overrides": " ".join(overrides),
    }
    if output_dir is not None:
        tags["output_dir"] = str(output_dir)
    if parent is not None:
        tags["mlflow.parentRunId"] = parent["run_id"]
    run_name = cfg.tracking.run_name or _default_run_name(cfg, overrides)

    # A run left active by an earlier job of the same process (basic launcher) is not ours to nest under.
    while mlflow.active_run() is not None:
        mlflow.end_run()
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    job = JobRun(run.info.run_id)
    status = "FAILED"
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        job.log_params({f"{cfg.tracking.param_prefix}{k}": v for k, v in flatten(resolved).items()})
        job.log_params(key_params(cfg))
        job.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        job.log_text("\n".join(overrides) + "\n", "overrides.txt")
        started = time.perf_counter()
        yield job
        job.log_metrics({"job.wall_seconds": time.perf_counter() - started})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)


def key_params(cfg: DictConfig) -> dict[str, Any]:
    """The params a sweep is read by, under short names (everything is also under `cfg.`).

    `trained` (eval only): whether this job trained the policy before evaluating it (exp.train=true)."""
    task = cfg.task.value if hasattr(cfg.task, "value") else str(cfg.task)
    subagent_model = cfg.get("subagent_model")
    params = {
        "width": cfg.subagents,
        "model": cfg.model.name,
        "subagent_model": subagent_model.name if subagent_model is not None else cfg.model.name,
        "agent": cfg.agent.name,
        "engine": cfg.engine.name,
        "search": cfg.search.name,
        "reward": cfg.reward.name,
        "judge": cfg.judge.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "samples": cfg.eval.samples,
    }
    if task == "eval":
        params["trained"] = str(bool(cfg.exp.train)).lower()
    return params


def _default_run_name(cfg: DictConfig, overrides: list[str]) -> str:
    task = cfg.task.value if hasattr(cfg.task, "value") else str(cfg.task)
    shown = [o for o in overrides if not o.startswith(("hydra.", "tracking."))]
    return " ".join([task, *shown])[:250] if shown else f"{task} W={cfg.subagents} {cfg.model.name}"


def read_sweep_file(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def swept_values(config: DictConfig) -> dict[str, list[str]]:
    """What a multirun sweeps, as Hydra's basic sweeper decides it: hydra.sweeper.params (an exp file's
    defaults) then the command line, the later override of a key winning. Keys are config paths
    (`subagents`, `agent.single_max_turns`, `subagent_model` for +model@subagent_model=...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params_node = config.hydra.sweeper.get("params")
    lines = [f"{key}={value}" for key, value in (params_node or {}).items()]
    lines += list(config.hydra.overrides.task)
    swept: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.package or override.key_or_group
        if override.is_sweep_override():
            swept[key] = list(override.sweep_string_iterator())
        else:
            swept.pop(key, None)
    return swept


class SweepCallback(Callback):
    """Creates the parent run of a multirun sweep; when the sweep ends (or the process exits after a failed
    job) it logs the sweep's summary and scaling plot to the parent and ends it."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled:
            return
        # Hydra turns a callback's exception into a warning and runs the sweep anyway (each job then
        # checks the store itself before any work), so say it once, plainly.
        try:
            self._start(config)
        except Exception as error:
            print(f"warning: no MLflow parent run for this sweep: {error}", file=sys.stderr)

    def _start(self, config: DictConfig) -> None:
        uri = tracking_uri(config)
        check_reachable(uri, config.tracking.check_timeout_s)
        _quiet_mlflow_logs()
        import mlflow

        client = mlflow.MlflowClient(uri)
        experiment_id = _experiment_id(client, config.tracking.experiment, artifact_root(config))
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        name = config.exp.name if config.exp.name != "none" else f"sweep {config.task.value}"
        tags = {
            **git_state(),
            "sweep": "true",
            "task": config.task.value,
            "sweep_dir": str(sweep_dir),
            "hydra.overrides": " ".join(overrides),
        }
        run = client.create_run(experiment_id, run_name=f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags)
        self.run_id, self.uri, self.sweep_dir = run.info.run_id, uri, sweep_dir
        swept = swept_values(config)
        params = {"sweep.overrides": " ".join(overrides), "sweep.keys": ",".join(swept),
                  **{f"sweep.{key}": ",".join(values) for key, values in swept.items()}}
        for key, value in params.items():
            client.log_param(self.run_id, key, str(value)[:PARAM_VALUE_LIMIT])
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(
            json.dumps({"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": uri}, indent=2)
        )
        atexit.register(self._end, "FAILED")  # a job failed: Hydra raises before on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self.run_id is None:
            return
        import mlflow

        run_id, self.run_id = self.run_id, None
        client = mlflow.MlflowClient(self.uri)
        try:  # a report that fails must not hide the sweep's own outcome
            from wideseek_exp.analysis.sweep_report import report_sweep

            report_sweep(client, run_id, self.sweep_dir)
        except Exception as error:
            print(f"warning: no summary for sweep run {run_id}: {type(error).__name__}: {error}", file=sys.stderr)
        client.set_terminated(run_id, status=status)
