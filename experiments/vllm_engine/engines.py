"""What both vLLM scripts share: whether vLLM can run here, and the config of one engine on the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import wideseek_exp.conf  # noqa: E402,F401  (registers the config schema)
from wideseek_exp import WideseekError  # noqa: E402


def vllm_unavailable() -> bool:
    """True (after saying why) when vLLM cannot be imported: the comparison has nothing to compare."""
    from wideseek_exp.engines.vllm import import_vllm

    try:
        import_vllm()
    except WideseekError as error:
        print(f"vLLM is unavailable here, nothing to compare: {error}")
        return True
    return False


def engine_config(engine: str, overrides: list[str]):
    """The composed config for `engine` (random tiny model unless overridden), its world built."""
    from hydra import compose, initialize_config_dir

    from wideseek_exp.world import build_world

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=["tracking.enabled=false", "model=tiny_random", f"engine={engine}", *overrides])
    build_world(cfg, quiet=True)
    return cfg
