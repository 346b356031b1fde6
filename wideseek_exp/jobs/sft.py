"""task=sft: the imitation warm start (rl/imitation.py) trained into model.path, even when its stamp is
current; the world and the base model are built first if needed.

    python run.py task=sft [sft.max_steps=...] [sft.tasks=...]

Any other model (a pretrained checkpoint: model=smollm2_135m, a local folder, a hub id) imitates the same
expert from its own weights, without the copy stage (it can copy already), into <job folder>/sft_model:
the whole model, or with model.lora.enabled=true its LoRA adapter.

    python run.py task=sft model=smollm2_135m model.lora.enabled=true sft.tasks=8 sft.max_steps=20
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
    if cfg.model.source == "tiny":
        raise WideseekError(f"task=sft trains the warm start of model=tiny, not the random model "
                            f"(model={cfg.model.name}); use model=tiny")
    build_world(cfg, quiet=True)
    if cfg.model.source != "tiny_sft":
        return imitate_from_checkpoint(cfg, tracker, out or Path(cfg.paths.outputs) / "sft")
    result = build_warm_start(cfg, force=True, log_metrics=tracker.log_metrics)
    tracker.log_metrics(sft_metrics(result.counts))
    print(f"warm start saved to {result.path}")
    return result.counts


def sft_metrics(counts: dict) -> dict[str, float]:
    """The numeric counts of an imitation run, as MLflow metrics under sft.*."""
    return {f"sft.{k}": float(v) for k, v in counts.items() if isinstance(v, int | float) and math.isfinite(v)}


def imitate_from_checkpoint(cfg: DictConfig, tracker: JobRun, folder: Path) -> dict:
    from omegaconf import OmegaConf

    from wideseek_exp.models.loader import lora_config
    from wideseek_exp.rl.imitation import train_sft

    cfg = OmegaConf.merge(cfg, {"sft": {"copy_steps": 0}})  # a pretrained model copies from its context already
    target = Path(folder) / "sft_model"
    peft = lora_config(cfg)
    print(f"sft: {cfg.model.name} imitates the scripted expert from its own weights "
          f"({'LoRA adapters' if peft else 'every weight'}) -> {target}", flush=True)
    counts = train_sft(cfg, cfg.model.path, target, tracker.log_metrics, peft_config=peft)
    tracker.log_metrics(sft_metrics(counts))
    print(f"{'adapter' if peft else 'model'} saved to {target}")
    return counts
