import io
import os
import runpy
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """python run.py ARGS in a subprocess, as a user would type it. Unless ARGS choose a model, the random
    tiny model (model=tiny_random): the tests exercise the pipeline, and the default model's warm start
    takes minutes to build."""
    if not any(a.startswith("model=") for a in args):
        args = ("model=tiny_random", *args)
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    if not any(a.startswith(("hydra.run.dir=", "paths.outputs=")) for a in args):
        # Hydra makes a run folder even for a job that fails at once: keep it out of the repository.
        flags = tuple(a for a in args if a.startswith("-"))  # Hydra wants its flags after the overrides
        overrides = tuple(a for a in args if not a.startswith("-"))
        args = (*overrides, f"paths.outputs={tempfile.mkdtemp(prefix='wideseek-test-')}", *flags)
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=full_env,
    )


def run_script(path: Path, *args: str) -> str:
    """A script (an experiments/ compare.py) run in this process as `python PATH ARGS`; what it printed.
    Faster than a subprocess, for scripts that only read files or MLflow."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(path), *args]
    try:
        with redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


@pytest.fixture
def cli():
    return run_cli


def _mlruns_entries() -> set[str]:
    folder = REPO / "mlruns"
    return {str(path.relative_to(folder)) for path in folder.rglob("*")} if folder.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_repository_mlruns():
    """Tests write MLflow stores and artifacts only under their temporary folders: an experiment created
    without an artifact location would put its runs' artifacts under ./mlruns of the repository."""
    before = _mlruns_entries()
    yield
    added = sorted(_mlruns_entries() - before)
    assert not added, f"tests wrote into {REPO / 'mlruns'}: {added[:5]}"
