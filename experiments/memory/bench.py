"""Peak memory (RSS) of the default tiny configuration: `make run`'s evaluation and one GRPO step, each as the
command a user types, against the same evaluation of a single trial (the model, tokenizer and index loaded:
the floor) measured in the same run.

    python experiments/memory/bench.py [--only eval|train] [--set KEY=VALUE ...]

The peak is the kernel's high-water mark of the process (VmHWM in /proc/<pid>/status), read until it
exits. Needs the built world and warm start (python run.py task=build). Target: at most 4 GiB for the
evaluation. `--set` adds overrides to every command (e.g. --set engine.prefix_cache_mb=0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_EVAL = ["eval.stride=3", "eval.limit=40", "eval.samples=1"]  # the Makefile's RUN_EVAL


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of `python run.py ARGS`."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(REPO / "run.py"), *args, "tracking.enabled=false", f"hydra.run.dir={folder}"]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while process.poll() is None:
            try:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)
        stderr = process.communicate()[1]
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{stderr[-2000:]}")
        return peak / 2**20, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["eval", "train"])
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = parser.parse_args()
    floor, seconds = peak_rss(["task=eval", "eval.limit=1", "eval.samples=1", *args.overrides])
    print(f"{'one trial (the floor)':<42} peak {floor:5.2f} GiB  {seconds:6.0f} s")
    runs = {"eval": ("make run's evaluation (40 tasks x 1)", ["task=eval", *RUN_EVAL]),
            "train": ("one GRPO step (trainer=debug)", ["task=train", "trainer=debug", "trainer.max_steps=1",
                                                        "trainer.eval_every=0", "trainer.save_every=0", "eval.limit=1",
                                                        "eval.samples=1"])}  # the final evaluation: one trial
    for name, (label, command) in runs.items():
        if args.only and name != args.only:
            continue
        peak, seconds = peak_rss([*command, *args.overrides])
        print(f"{label:<42} peak {peak:5.2f} GiB  {seconds:6.0f} s  ({peak / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
