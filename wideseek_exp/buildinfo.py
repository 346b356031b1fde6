"""Build stamps: every generated artifact (corpus, index, tiny model, task sets) lives in a folder
with a `build.json` that records the fingerprint of its inputs. Rebuilding unchanged inputs is a
no-op; a changed input (config, upstream content hash, package version) rebuilds.

A folder is written in a temporary sibling and renamed into place, so an interrupted build never
leaves a half-written artifact that looks finished. A build replaces only its own earlier output: a
folder that holds another artifact (its stamp names another build) or files without a stamp (a model
trained elsewhere, say) is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wideseek_exp import WideseekError

STAMP = "build.json"


def fingerprint(*parts: object) -> str:
    """A stable hash of JSON-serialisable inputs (dict key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class BuildResult:
    name: str
    path: Path
    built: bool  # False when the stamp matched and nothing was done
    seconds: float
    counts: dict[str, int | float | str] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def size_bytes(self) -> int:
        return folder_bytes(self.path) if self.path.exists() else 0

    def summary(self) -> str:
        state = "built" if self.built else "up to date"
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return (
            f"{self.name:<12} {state:<10} {self.size_bytes / 1e6:8.2f} MB {self.seconds:7.2f} s  "
            f"{counts}  [{self.path}]"
        )


def read_stamp(path: Path) -> dict | None:
    stamp = path / STAMP
    if not stamp.is_file():
        return None
    try:
        return json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_folder(
    name: str,
    path: Path,
    inputs_fingerprint: str,
    build: Callable[[Path], dict],
    force: bool = False,
) -> BuildResult:
    """Run `build(tmp_dir) -> counts` unless `path` already holds a build of the same fingerprint.

    `build` writes everything into the temporary folder it is given; on success the folder
    replaces `path` and gets a stamp with the fingerprint and the counts.
    """
    start = time.perf_counter()
    stamp = read_stamp(path)
    if not force and stamp is not None and stamp.get("fingerprint") == inputs_fingerprint:
        return BuildResult(name, path, False, time.perf_counter() - start, stamp.get("counts", {}), inputs_fingerprint)
    if stamp is not None and stamp.get("name") != name:
        raise WideseekError(f"{name}: refusing to replace {path}: it holds a {stamp.get('name')!r} build; point the "
                            f"config at another folder or delete it")
    if stamp is None and path.is_dir() and any(path.iterdir()):
        raise WideseekError(f"{name}: refusing to replace {path}: it holds files that no build of ours made; point the "
                            f"config at another folder or delete it")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        counts = build(tmp) or {}
        (tmp / STAMP).write_text(
            json.dumps({"name": name, "fingerprint": inputs_fingerprint, "counts": counts,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2)
        )
        old = path.parent / f".{path.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(name, path, True, time.perf_counter() - start, counts, inputs_fingerprint)
