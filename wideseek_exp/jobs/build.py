"""task=build: the world (world.py: corpus, index, task sets, tiny model) and, for model.source=tiny_sft,
the imitation warm start (rl/imitation.py), each skipped when its stamp says the inputs are unchanged.

    python run.py task=build [model=tiny_random] [build.force=true]

Logs every artifact's time, size and counts to MLflow (build_report.json).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp.rl.imitation import build_warm_start, needs_warm_start, warm_start_is_current
from wideseek_exp.tracking import JobRun, tracking_uri
from wideseek_exp.world import build_world


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    start = time.perf_counter()
    print(f"building the mini-web world into {cfg.paths.generated}", flush=True)
    results = build_world(cfg)
    if needs_warm_start(cfg):
        if not warm_start_is_current(cfg):
            print(f"tiny-sft: imitation warm start into {cfg.model.path} (20 to 26 minutes on a 2-core CPU, once; "
                  "cached)", flush=True)
        warm_start = build_warm_start(cfg, log_metrics=tracker.log_metrics)
        print(warm_start.summary(), flush=True)
        results.append(warm_start)
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
