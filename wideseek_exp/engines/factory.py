"""Build the configured engine (engine=hf today; vllm and openai plug in here), or the scripted expert
(agent.policy=scripted) in its place."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Engine


def model_location(model_cfg: DictConfig) -> str:
    """The folder or hub id the model loads from; a tiny model must have been built first."""
    if model_cfg.source in ("tiny", "tiny_sft"):
        folder = Path(model_cfg.path)
        if not (folder / "config.json").is_file():
            raise WideseekError(f"the {model_cfg.name} model is not built at {folder}; run `python run.py task=build`")
        return str(folder)
    return str(model_cfg.path)


def make_engine(cfg: DictConfig, model_cfg: DictConfig | None = None) -> Engine:
    """The configured engine serving `model_cfg` (default: cfg.model)."""
    model_cfg = cfg.model if model_cfg is None else model_cfg
    if cfg.agent.policy == "scripted":  # the scripted expert needs only the model's tokenizer
        from transformers import AutoTokenizer

        from wideseek_exp.agents.expert import ExpertEngine

        if model_cfg.source == "tiny_sft":  # the warm start shares its base's tokenizer, and may not be built
            model_cfg = OmegaConf.merge(model_cfg, {"source": "tiny", "path": model_cfg.warm_start_from})
        return ExpertEngine(AutoTokenizer.from_pretrained(model_location(model_cfg), revision=model_cfg.revision))
    if cfg.engine.name == "hf":
        from wideseek_exp.engines.hf import HFEngine
        from wideseek_exp.models.loader import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(
            model_location(model_cfg), revision=model_cfg.revision, dtype=model_cfg.dtype, device=cfg.engine.device,
            trust_remote_code=model_cfg.trust_remote_code,
        )
        return HFEngine(model, tokenizer, max_batch_size=cfg.engine.max_batch_size,
                        prefix_cache_mb=cfg.engine.prefix_cache_mb)
    raise WideseekError(f"engine={cfg.engine.name} is not available in this version (available: hf)")
