"""The offline `tiny` model: a Qwen3-architecture causal LM with random weights and our own tokenizer.

It exists so that every part of the pipeline (rollouts, tool parsing, GRPO updates) runs end to end
without a model hub. The folder it writes loads with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained`, exactly like a downloaded Qwen3 checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint

if TYPE_CHECKING:
    from transformers import Qwen3Config

# torch and transformers are imported inside the build: an up-to-date check must stay cheap.
CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Bump when the build itself changes (tokenizer recipe, format text, config defaults) so that
# existing tiny models are rebuilt.
TINY_VERSION = 2

ARCH_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "tie_word_embeddings",
)


def tiny_config(arch: dict, vocab_size: int, pad_id: int, eos_id: int) -> Qwen3Config:
    from transformers import Qwen3Config

    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"tiny model arch is missing {missing}")
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=int(arch["hidden_size"]),
        intermediate_size=int(arch["intermediate_size"]),
        num_hidden_layers=int(arch["num_hidden_layers"]),
        num_attention_heads=int(arch["num_attention_heads"]),
        num_key_value_heads=int(arch["num_key_value_heads"]),
        head_dim=int(arch["head_dim"]),
        max_position_embeddings=int(arch["max_position_embeddings"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(arch["rope_theta"])},
        tie_word_embeddings=bool(arch["tie_word_embeddings"]),
        # Qwen3 uses <|endoftext|> as bos and pad and <|im_end|> as eos.
        bos_token_id=pad_id,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        dtype="float32",
    )


def build_tiny_model(
    model_dir: Path,
    arch: dict,
    texts: Iterable[str] | Callable[[], Iterable[str]],
    seed: int = 0,
    force: bool = False,
    inputs_fingerprint: str = "",
) -> BuildResult:
    """Train the tokenizer on `texts` plus format text, then save a randomly initialised Qwen3 model.

    `texts` may be a callable so that the corpus is only read when a build is actually needed.
    `inputs_fingerprint` identifies the texts (the caller passes the corpus content hash).
    """
    arch = {k: arch[k] for k in ARCH_KEYS if k in arch}
    template_hash = hashlib.sha256(CHAT_TEMPLATE_PATH.read_bytes()).hexdigest()[:16]
    stamp = fingerprint("tiny", arch, seed, TINY_VERSION, template_hash, inputs_fingerprint)

    def build(folder: Path) -> dict:
        import torch
        from transformers import GenerationConfig, Qwen3ForCausalLM

        from wideseek_exp.models.tokenizer import EOS_TOKEN, PAD_TOKEN, format_texts, train_tokenizer

        corpus = texts() if callable(texts) else texts
        started = time.perf_counter()
        tokenizer = train_tokenizer(
            itertools.chain(corpus, format_texts(seed=seed)),
            vocab_size=int(arch["vocab_size"]),
            model_max_length=int(arch["max_position_embeddings"]),
        )
        tokenizer_seconds = time.perf_counter() - started

        pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        config = tiny_config(arch, len(tokenizer), pad_id, eos_id)
        # A private RNG scope: the seed fixes the weights without disturbing the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[eos_id, pad_id]
        )
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "tokenizer_seconds": round(tokenizer_seconds, 2),
        }

    return build_folder("tiny-model", Path(model_dir), stamp, build, force=force)
