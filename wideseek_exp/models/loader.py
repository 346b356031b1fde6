"""Load a causal LM and its tokenizer (a local folder such as the tiny model, or a hub id) for generation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from wideseek_exp import WideseekError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise WideseekError(f"unknown dtype {dtype!r}; use one of {['auto', *DTYPES]}")
    return DTYPES[dtype]


def _looks_local(path_or_hub_id: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else (absolute, relative with ./, deeper) is a folder.
    return (
        path_or_hub_id.startswith(("/", ".", "~"))
        or path_or_hub_id.count("/") > 1
        or Path(path_or_hub_id).expanduser().exists()
    )


def load_model_and_tokenizer(
    path_or_hub_id: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
):
    """(model in eval mode on `device`, tokenizer with left padding and a pad token)."""
    source = str(path_or_hub_id)
    if _looks_local(source):
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise WideseekError(f"model folder {source} not found (or has no config.json); build it first")
        source = str(folder)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    hf_logging.disable_progress_bar()  # a per-load weight bar clutters the job log
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:  # hub errors (missing repo, offline, bad revision) are OSErrors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WideseekError(f"cannot load model {path_or_hub_id!r}: {first_line}") from None
    model.to(target).eval()

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Left padding needs some pad id; it never reaches the model's attention, so eos serves.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(path_or_hub_id: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer alone, for engines whose model lives elsewhere (a server, vLLM)."""
    try:
        return AutoTokenizer.from_pretrained(str(path_or_hub_id), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WideseekError(f"cannot load the tokenizer of {path_or_hub_id!r}: {first_line}") from None


def lora_config(cfg):
    """peft's LoraConfig from model.lora, or None when model.lora.enabled is false (full fine-tuning)."""
    if not cfg.model.lora.enabled:
        return None
    from peft import LoraConfig

    lora = cfg.model.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
