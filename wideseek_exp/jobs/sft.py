"""task=sft: the imitation warm start (rl/imitation.py) trained into model.path, even when its stamp is
current; the world and the base model are built first if needed.

    python run.py task=sft [sft.max_steps=...] [sft.tasks=...]
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.rl.imitation import build_warm_start
from wideseek_exp.tracking import JobRun
from wideseek_exp.world import build_world


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    if cfg.model.source != "tiny_sft":
        raise WideseekError(f"task=sft trains a warm start for model.source=tiny_sft (model={cfg.model.name} has "
                            f"source={cfg.model.source}); use model=tiny")
    build_world(cfg, quiet=True)
    result = build_warm_start(cfg, force=True, log_metrics=tracker.log_metrics)
    metrics = {f"sft.{k}": float(v) for k, v in result.counts.items() if isinstance(v, int | float)
               and math.isfinite(v)}
    tracker.log_metrics(metrics)
    print(f"warm start saved to {result.path}")
    return result.counts
