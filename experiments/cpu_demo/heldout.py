"""Write the held-out train tasks: train tasks the imitation warm start never saw, on entity sets it never saw.

    python experiments/cpu_demo/heldout.py OUT.jsonl [--every 2 [--start 1]] [KEY=VALUE ...]
    python run.py data.path=OUT.jsonl data.split=train eval.samples=1   # judge a lever on them (all tasks of OUT)

The warm start imitates the expert on `sft.tasks` train tasks and drills its list subagents on `sft.list_drill_tasks`
more (rl/imitation.py: imitation_split). A test task never shares its entity set (the list it asks about) with a
train task, so a lever judged
on train tasks the imitation played flatters the warm start. The tasks written here are the other train tasks
whose entity set is that of no task the imitation played: the question a test task asks
the model (a set it has not seen), asked inside the train split. Every `--every`-th of them is written, in
the split's order, from the `--start`-th (0-based): `--every 2` and `--every 2 --start 1` are two disjoint halves,
for a second look at a lever judged on the first. The overrides are those the warm start was built with (sft.tasks, sft.seed, data.*).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def entity_set(task) -> str | frozenset[str]:
    """The task's entity set: its record's `entity_set`, else the names of its gold table's key column."""
    return task.meta.get("entity_set") or frozenset(row[0] for row in task.gold_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=int, default=1, help="write every N-th held-out task")
    parser.add_argument("--start", type=int, default=0, help="from the N-th held-out task (0-based)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args()
    if args.every < 1 or not 0 <= args.start < args.every:
        parser.error(f"--every must be at least 1 and --start in 0..every-1, got --every {args.every} "
                     f"--start {args.start}")

    from hydra import compose, initialize_config_dir

    import wideseek_exp.conf  # noqa: F401  (registers base_config)
    from wideseek_exp.rl.imitation import imitation_split
    from wideseek_exp.tasks.loaders import load_task_set

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false", *args.overrides])
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    played, _ = imitation_split(tasks, cfg.sft)
    played_ids = {t.instance_id for t in played}
    played_sets = {entity_set(t) for t in played}
    held_out = [t for t in tasks if t.instance_id not in played_ids and entity_set(t) not in played_sets]
    chosen = held_out[args.start :: args.every]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for task in chosen:
            out.write(json.dumps(task.to_json(), ensure_ascii=False) + "\n")
    print(f"{len(chosen)} of {len(held_out)} held-out train tasks ({len(tasks)} in the split, {len(played)} "
          f"played by the expert for the imitation and the list drill) -> {args.out}")


if __name__ == "__main__":
    main()
