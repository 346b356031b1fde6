"""Build the configured search backend (search=local today; web and server plug in here)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.search.base import SearchBackend


def make_search_backend(cfg: DictConfig) -> SearchBackend:
    if cfg.search.name == "local":
        from wideseek_exp.search.bm25 import BM25Backend

        return BM25Backend.load(Path(cfg.paths.index))
    raise WideseekError(f"search={cfg.search.name} is not available in this version (available: local)")
