"""task=serve_search: the configured search backend over HTTP until interrupted (search/server.py), for
clients with search=server.

    python run.py task=serve_search [search=local|web] [search.port=8765]
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.search.factory import make_search_backend
from wideseek_exp.search.server import SearchServer
from wideseek_exp.tracking import JobRun
from wideseek_exp.world import build_world


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> None:
    if cfg.search.name == "server":
        raise WideseekError("task=serve_search serves a backend: choose search=local or search=web "
                            "(search=server is the client of such a server)")
    if cfg.search.name == "local":
        build_world(cfg, quiet=True)  # the index is all a server needs
    server = SearchServer(make_search_backend(cfg), cfg.search.host, cfg.search.port, default_top_k=cfg.search.top_k)
    print(f"serving search={cfg.search.name} at {server.url} (POST /retrieve, POST /access, GET /health); "
          f"clients: search=server search.server_url={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("search server stopped", flush=True)
    finally:
        server.shutdown()
