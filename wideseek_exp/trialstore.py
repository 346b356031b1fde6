"""Trials on disk, written as they finish, so a crash loses only the trials in flight and a rerun on
the same folder resumes.

    <folder>/eval_settings.json   what produced the trials (a rerun with other settings is refused)
    <folder>/trials.jsonl         one line per finished trial: response, summary, timings
    <folder>/trajectories.jsonl   the whole trajectory of each trial (token ids, masks, tool calls)

Each line is written and flushed whole. A line cut short by a crash is dropped on the next open.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from wideseek_exp import WideseekError

SETTINGS_FILE = "eval_settings.json"
TRIALS_FILE = "trials.jsonl"
TRAJECTORIES_FILE = "trajectories.jsonl"


def read_complete_lines(path: Path) -> Iterator[dict]:
    """The JSON records of a jsonl file; a torn last line (crash mid-write) is cut off the file."""
    if not path.is_file():
        return
    good_bytes = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
            yield record
    if good_bytes < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)


def count_complete_lines(path: Path) -> int:
    """How many whole lines (ending in a newline) a jsonl file holds; 0 when it does not exist. Cheap: the
    lines are counted, not parsed (what a stopped job reports it kept)."""
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.endswith(b"\n"))


def append_lines(path: Path, records: list[dict]) -> None:
    """Append JSON records as lines, on disk before returning (flushed and fsynced): a crash loses at most
    the line being written, which read_complete_lines then cuts off."""
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class TrialStore:
    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_settings(settings)
        self.trials: dict[tuple[str, int], dict] = {}
        for record in read_complete_lines(self.folder / TRIALS_FILE):
            self.trials[(record["instance_id"], int(record["sample"]))] = record
        self._drop_orphan_trajectories()

    def _check_settings(self, settings: dict) -> None:
        path = self.folder / SETTINGS_FILE
        if path.is_file():
            earlier = json.loads(path.read_text())
            changed = sorted(k for k in set(earlier) | set(settings) if earlier.get(k) != settings.get(k))
            if changed:
                key = changed[0]
                raise WideseekError(
                    f"{self.folder} holds trials made with other settings ({key}: {earlier.get(key)!r} there, "
                    f"{settings.get(key)!r} now); use a new output folder"
                )
        else:  # written whole or not at all: a kill mid-write must not leave a file the next run cannot read
            partial = path.with_suffix(".json.partial")
            partial.write_text(json.dumps(settings, indent=2, sort_keys=True))
            os.replace(partial, path)

    def _drop_orphan_trajectories(self) -> None:
        """A trajectory is written before its trial line, so a kill between the two leaves a trajectory whose
        trial is not done; the rerun writes that trial again. Such lines (and any torn last line) are removed,
        so that trajectories.jsonl holds each finished trial once."""
        path = self.folder / TRAJECTORIES_FILE
        records = list(read_complete_lines(path))
        keep, seen = [], set()
        for record in records:
            key = (record.get("instance_id"), int(record.get("sample_index", -1)))
            if key in self.trials and key not in seen:
                seen.add(key)
                keep.append(record)
        if len(keep) < len(records):
            partial = path.with_suffix(".jsonl.partial")
            partial.unlink(missing_ok=True)
            append_lines(partial, keep)
            os.replace(partial, path)

    def done(self, instance_id: str, sample: int) -> bool:
        return (instance_id, sample) in self.trials

    def add(self, trial: dict, trajectory: dict | None = None) -> None:
        """Trajectory first: a trial line exists only when its trajectory is already on disk."""
        if trajectory is not None:
            self._append(TRAJECTORIES_FILE, trajectory)
        self._append(TRIALS_FILE, trial)
        self.trials[(trial["instance_id"], int(trial["sample"]))] = trial

    def _append(self, name: str, record: dict) -> None:
        append_lines(self.folder / name, [record])

    def trajectories(self) -> Iterator[dict]:
        return read_complete_lines(self.folder / TRAJECTORIES_FILE)
