"""Build the configured search backend: local (the mini-web's bm25 index), web (search API + page reader)
or server (a backend that `task=serve_search` shares over HTTP)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.search.base import SearchBackend


def make_search_backend(cfg: DictConfig) -> SearchBackend:
    search = cfg.search
    if search.name == "local":
        from wideseek_exp.search.bm25 import BM25Backend

        return BM25Backend.load(Path(cfg.paths.index))
    if search.name == "web":
        from wideseek_exp.search.web import make_web_backend

        return make_web_backend(search)
    if search.name == "server":
        from wideseek_exp.search.server_client import ServerBackend

        return ServerBackend(search.server_url, timeout_s=search.timeout_s, max_retries=search.max_retries,
                             retry_wait_s=search.retry_wait_s)
    raise WideseekError(f"unknown search backend {search.name!r} (available: local, web, server)")
