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


def interrupted(cfg: DictConfig, out: Path | None) -> tuple[str, list[str]]:
    """What a Ctrl-C leaves: the checkpoint of the last finished step (the trainer saves one as it stops)."""
    from wideseek_exp.rl.training import last_complete_checkpoint

    folder = Path(out or Path(cfg.paths.outputs) / "train")
    checkpoints = Path(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else folder / "checkpoints"
    saved = last_complete_checkpoint(checkpoints)
    if saved is None:
        return "no checkpoint (stopped before the first step ended)", []
    return f"{saved}", ["trainer.resume=true"]
