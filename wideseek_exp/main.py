"""Dispatch on cfg.task. Every task runs inside one MLflow run (wideseek_exp.tracking)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import read_stamp
from wideseek_exp.conf import Task
from wideseek_exp.tracking import JobRun, job_run, tracking_uri

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Checks the schema cannot express. Raises WideseekError naming the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise WideseekError(f"config key '{missing[0]}' is required but has no value (set {missing[0]}=...)")
    OmegaConf.to_container(cfg, resolve=True)  # a broken interpolation fails here, naming its key

    def at_least(key: str, minimum: float) -> None:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < minimum:
            raise WideseekError(f"config key '{key}' must be at least {minimum} (got {value})")

    for key in ("subagents", "eval.samples", "eval.stride", "eval.max_active_trajectories", "engine.max_batch_size", "search.top_k", "trainer.num_generations",
                "agent.lead_max_turns", "agent.subagent_max_turns", "agent.single_max_turns",
                "agent.max_queries_per_call", "agent.max_urls_per_call", "agent.max_reply_tokens"):
        at_least(key, 1)
    for key in ("agent.temperature", "trainer.learning_rate", "seed"):
        at_least(key, 0)
    for key in ("agent.top_p",):
        value = OmegaConf.select(cfg, key)
        if not 0 < value <= 1:
            raise WideseekError(f"config key '{key}' must be in (0, 1] (got {value})")
    if cfg.model.source in ("tiny", "tiny_sft") and cfg.model.tiny is None:
        raise WideseekError(f"config key 'model.tiny' is required when model.source={cfg.model.source}")
    if cfg.model.source == "tiny_sft" and not cfg.model.warm_start_from:
        raise WideseekError("config key 'model.warm_start_from' is required when model.source=tiny_sft")
    if cfg.agent.policy not in ("model", "scripted"):
        raise WideseekError(f"config key 'agent.policy' must be model or scripted (got {cfg.agent.policy!r})")
    if cfg.agent.policy == "scripted" and cfg.agent.name != "wideseek":
        raise WideseekError("agent.policy=scripted plays agent=wideseek only (got agent=" + str(cfg.agent.name) + ")")


def output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def run(cfg: DictConfig):
    validate(cfg)
    task = Task(cfg.task)
    handler = TASKS.get(task)
    if handler is None:
        available = ", ".join(t.value for t in TASKS)
        raise WideseekError(f"task={task.value} is not available in this version (available: {available})")
    out = output_dir()
    with job_run(cfg, out) as tracker:
        return handler(cfg, tracker, out)


# --------------------------------------------------------------------------------------------- build


def build_world(cfg: DictConfig, force: bool | None = None, quiet: bool = False, warm_start: bool = True) -> list:
    """Corpus, search index, mini-web task sets, the tiny model (model.source=tiny or tiny_sft) and its
    imitation warm start (tiny_sft, unless `warm_start` is False); each skipped when its inputs are
    unchanged. Returns the BuildResults in build order. `quiet` prints only what it builds."""
    from wideseek_exp.search.bm25 import build_index
    from wideseek_exp.search.miniweb import build_corpus, load_pages, read_manifest
    from wideseek_exp.tasks.miniweb import build_tasks

    force = cfg.build.force if force is None else force
    paths = cfg.paths
    results = []

    def record(result) -> None:
        results.append(result)
        if result.built or not quiet:
            print(result.summary(), flush=True)

    record(build_corpus(Path(paths.corpus), force=force))
    record(build_index(Path(paths.corpus), Path(paths.index), force=force))
    record(build_tasks(Path(paths.miniweb_tasks), seed=cfg.data.seed if cfg.data.name == "miniweb" else 0,
                       force=force))

    if cfg.model.source in ("tiny", "tiny_sft"):
        from wideseek_exp.models.tiny import build_tiny_model

        manifest = read_manifest(Path(paths.corpus))
        arch = OmegaConf.to_container(cfg.model.tiny, resolve=True)
        init_seed = arch.pop("init_seed")

        def tokenizer_texts():
            for page in load_pages(Path(paths.corpus)):
                yield page.text

        base = cfg.model.path if cfg.model.source == "tiny" else cfg.model.warm_start_from
        record(build_tiny_model(Path(base), arch, tokenizer_texts, seed=init_seed, force=force,
                                inputs_fingerprint=manifest["content_hash"]))
    # The scripted policy needs only the tokenizer, which the warm start shares with its base.
    if cfg.model.source == "tiny_sft" and warm_start and cfg.agent.policy != "scripted":
        from wideseek_exp.sft import build_warm_start

        if not quiet or read_stamp(Path(cfg.model.path)) is None:
            print(f"tiny-sft: imitation warm start into {cfg.model.path} (minutes on a CPU; cached)", flush=True)
        record(build_warm_start(cfg, force=force))
    return results


def task_build(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    start = time.perf_counter()
    print(f"building the mini-web world into {cfg.paths.generated}", flush=True)
    results = build_world(cfg)
    total = time.perf_counter() - start

    metrics: dict[str, float] = {"build.seconds": total, "build.artifacts_built": sum(r.built for r in results)}
    report = {}
    for result in results:
        prefix = f"build.{result.name.replace(' ', '_')}"
        metrics[f"{prefix}.seconds"] = result.seconds
        metrics[f"{prefix}.built"] = float(result.built)
        metrics[f"{prefix}.bytes"] = result.size_bytes
        for key, value in result.counts.items():
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[f"{prefix}.{key}"] = value
        report[result.name] = {"path": str(result.path), "built": result.built, "seconds": round(result.seconds, 3),
                               "bytes": result.size_bytes, "fingerprint": result.fingerprint, "counts": result.counts}
    tracker.log_metrics(metrics)
    tracker.log_dict(report, "build_report.json")
    built = [r.name for r in results if r.built]
    print(f"done in {total:.1f} s: " + (f"built {', '.join(built)}" if built else "everything was up to date"))
    if tracker.active:
        print(f"MLflow run {tracker.run_id} in experiment '{cfg.tracking.experiment}' "
              f"(open with: mlflow ui --backend-store-uri {tracking_uri(cfg)})")
    return report


def task_eval(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    if cfg.exp.train:  # a sweep point that trains first, then evaluates the trained policy
        from wideseek_exp.train_eval import run_train_then_eval

        return run_train_then_eval(cfg, tracker, out)
    from wideseek_exp.evaluate import run_eval

    return run_eval(cfg, tracker, out)


def task_score(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    from wideseek_exp.evaluate import run_score

    return run_score(cfg, tracker, out)


def task_sft(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    from wideseek_exp.sft import run_sft

    return run_sft(cfg, tracker, out)


def task_train(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    from wideseek_exp.train import run_train

    return run_train(cfg, tracker, out)


def task_serve_search(cfg: DictConfig, tracker: JobRun, out: Path | None) -> None:
    """Serve the configured backend over HTTP until interrupted (wideseek_exp.search.server)."""
    from wideseek_exp.search.factory import make_search_backend
    from wideseek_exp.search.server import SearchServer

    if cfg.search.name == "server":
        raise WideseekError("task=serve_search serves a backend: choose search=local or search=web "
                            "(search=server is the client of such a server)")
    if cfg.search.name == "local":
        build_world(cfg, quiet=True, warm_start=False)  # the index is all a server needs
    server = SearchServer(make_search_backend(cfg), cfg.search.host, cfg.search.port, default_top_k=cfg.search.top_k)
    print(f"serving search={cfg.search.name} at {server.url} (POST /retrieve, POST /access, GET /health); "
          f"clients: search=server search.server_url={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("search server stopped", flush=True)
    finally:
        server.shutdown()


def task_data(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    from wideseek_exp.synthesize import run_data

    return run_data(cfg, tracker, out)


TASKS: dict[Task, Callable[[DictConfig, JobRun, Path | None], object]] = {
    Task.build: task_build,
    Task.eval: task_eval,
    Task.score: task_score,
    Task.train: task_train,
    Task.serve_search: task_serve_search,
    Task.data: task_data,
    Task.sft: task_sft,
}
