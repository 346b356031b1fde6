"""Build the configured engine: hf (transformers in this process), vllm (in this process, GPU) or openai
(HTTP), or the scripted expert (agent.policy=scripted) in its place."""

from __future__ import annotations

import os
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

        from wideseek_exp.engines.expert import ExpertEngine

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
    if cfg.engine.name == "openai":
        return openai_engine(cfg.engine, model_cfg)
    if cfg.engine.name == "vllm":
        return vllm_engine(cfg, model_cfg)
    raise WideseekError(f"unknown engine {cfg.engine.name!r} (available: hf, vllm, openai)")


def openai_engine(engine_cfg: DictConfig, model_cfg: DictConfig) -> Engine:
    from wideseek_exp.engines.openai import OpenAIEngine
    from wideseek_exp.models.loader import load_tokenizer

    if not engine_cfg.base_url:
        raise WideseekError("engine=openai needs the server's address: set engine.base_url=http://HOST:PORT/v1")
    # A local server needs no key; a hosted API answers 401 without one, and the error names the URL.
    api_key = os.environ.get(engine_cfg.api_key_env) if engine_cfg.api_key_env else None
    tokenizer = load_tokenizer(model_location(model_cfg), revision=model_cfg.revision,
                               trust_remote_code=model_cfg.trust_remote_code)
    return OpenAIEngine(
        tokenizer, engine_cfg.base_url, engine_cfg.served_model_name or str(model_cfg.path), api_key,
        max_concurrency=engine_cfg.max_concurrency, timeout_s=engine_cfg.timeout_s, max_retries=engine_cfg.max_retries,
        retry_wait_s=engine_cfg.retry_wait_s, prompt_format=engine_cfg.prompt_format,
    )


def vllm_engine(cfg: DictConfig, model_cfg: DictConfig, colocated: bool = False) -> Engine:
    from wideseek_exp.engines.vllm import VLLMEngine, import_vllm
    from wideseek_exp.models.loader import load_tokenizer

    import_vllm()  # before loading anything: a machine without vLLM gets its one-line hint at once
    location = model_location(model_cfg)
    tokenizer = load_tokenizer(location, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    return VLLMEngine(
        location, tokenizer, max_batch_size=cfg.engine.max_batch_size,
        gpu_memory_utilization=cfg.engine.gpu_memory_utilization, tensor_parallel_size=cfg.engine.tensor_parallel_size,
        enable_sleep_mode=cfg.engine.enable_sleep_mode, dtype=str(model_cfg.dtype), max_model_len=cfg.engine.max_model_len,
        seed=cfg.seed, colocated=colocated,
    )


def make_subagent_engine(cfg: DictConfig, lead_engine: Engine) -> Engine | None:
    """A second engine for the subagents when cfg.subagent_model is set (the lead-vs-subagent ablation).

    Every agent's prompts are rendered with one tokenizer, so the two models must share it."""
    if cfg.subagent_model is None:
        return None
    engine = make_engine(cfg, cfg.subagent_model)
    if engine.tokenizer.get_vocab() != lead_engine.tokenizer.get_vocab():
        engine.close()
        raise WideseekError(f"subagent_model {cfg.subagent_model.name} does not share the tokenizer of model "
                            f"{cfg.model.name}; the lead and subagent models must use one tokenizer")
    return engine
