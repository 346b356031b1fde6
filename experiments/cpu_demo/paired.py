"""Compare evaluation folders task by task: item F1, the paired difference against the first folder, and which
search hit each list subagent read.

    python experiments/cpu_demo/paired.py BASE OTHER [OTHER ...]

Each folder is an evaluation's output (`per_task.csv`, `trajectories.jsonl`). A difference is the mean of the
per-task differences (OTHER - BASE) over the tasks both hold, with its standard error. The list subagent (the
subagent of the lead's first call) reads one of the hits its first search returned; `read hit` counts the trials
by the rank of the hit it read first (1: the top hit, which on the mini-web is the list its subtask names), `-`
where it read none (or no subagent started). `lead calls / subagents` are their means a trial (`trials.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import paired, per_task_f1  # noqa: E402

_URL = re.compile(r"^URL: (\S+)$", re.MULTILINE)


def list_hit_ranks(folder: Path) -> Counter:
    """Trials by the rank, among its first search's hits, of the page the list subagent read first."""
    ranks: Counter = Counter()
    with (folder / "trajectories.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            agents = json.loads(line)["agents"]
            finder = next((a for a in agents if str(a["agent_id"]).startswith("lead.1.")), None)
            hits, read = None, None
            for turn in finder["turns"] if finder else []:
                if turn["tool_name"] == "search" and hits is None and isinstance(turn["tool_result"], str):
                    hits = _URL.findall(turn["tool_result"])
                if turn["tool_name"] == "access" and read is None and turn["tool_arguments"]:
                    read = turn["tool_arguments"]["urls"][0]["url"]
            ranks[(hits or []).index(read) + 1 if read in (hits or []) else ("other" if read else "-")] += 1
    return ranks


def calls_per_trial(folder: Path) -> str:
    """`lead calls / subagents`, each the mean a trial, from the folder's trials.jsonl."""
    with (folder / "trials.jsonl").open(encoding="utf-8") as handle:
        trials = [json.loads(line) for line in handle if line.strip()]
    count = max(len(trials), 1)
    return "{:.1f} / {:.1f}".format(sum(t["lead_calls"] for t in trials) / count,
                                    sum(t["subagents"] for t in trials) / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    args = parser.parse_args()
    base = per_task_f1(args.base)
    print("| folder | tasks | item F1 | - base (paired SE) | read hit 1 / 2 / 3 / 4 / 5 / other / - "
          "| lead calls / subagents |")
    print("|---|---|---|---|---|---|")
    for folder in [args.base, *args.others]:
        scores = per_task_f1(folder)
        mean = sum(scores.values()) / len(scores)
        difference = "" if folder == args.base else "{:+.1f} +- {:.1f}".format(*paired(scores, base))
        ranks = list_hit_ranks(folder)
        read = " / ".join(str(ranks[k]) for k in (1, 2, 3, 4, 5, "other", "-"))
        print(f"| {folder} | {len(scores)} | {mean:.1f} | {difference} | {read} | {calls_per_trial(folder)} |")


if __name__ == "__main__":
    main()
