"""task=train: multi-agent GRPO on the training split, evaluated as it goes (rl/training.py).

    python run.py task=train [trainer=debug] [model=...] [reward=...] [trainer.weighting=...]
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp.rl.training import train_policy
from wideseek_exp.tracking import JobRun


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    return train_policy(cfg, tracker, out)
