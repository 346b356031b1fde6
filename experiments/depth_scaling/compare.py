"""Item F1 against the single agent's turn budget: the paper's depth scaling beside our sweeps (experiment
depth_scaling; README.md here). --experiment depth_sweep reads the CPU version (+exp=depth_sweep)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

KEY = "agent.single_max_turns"
TURNS = [10, 20, 30, 50, 100]  # the recipe's budgets (README.md)
PAPER_MODEL = "qwen3_4b"
PAPER_AT_50 = (20.1, 30.2)  # Qwen3-4B, single agent, 50 turns: the single-agent table
SHAPE = "plateaus early: more turns add little"


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "depth_scaling", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if paper.matches(run, agent="singleseek")]
    table = paper.scaling(runs, KEY, [KEY])

    def row(policy: str, turns: float, paper_numbers=None) -> list[str]:
        found = table[(table["policy"] == policy) & (table[KEY] == turns)] if len(table) else table
        point = None if found.empty else found.iloc[0]
        avg, best = (None, None) if point is None else (100 * point["item_f1_avg"], 100 * point["item_f1_max"])
        paper_avg, paper_max = paper_numbers or (None, None)
        run = "missing" if point is None else str(point["run_id"])[:8]
        return [policy, f"{turns:g}", paper.pair(paper_avg, avg), paper.pair(paper_max, best), run]

    rows = [row(PAPER_MODEL, turns, PAPER_AT_50 if turns == 50 else None) for turns in TURNS]
    notes = []
    policies = list(dict.fromkeys(table["policy"])) if len(table) else []
    for policy in policies:
        points = table[table["policy"] == policy]
        if policy != PAPER_MODEL:
            rows += [row(policy, turns) for turns in points[KEY]]
        notes.append(f"{policy}: ours: {paper.trend([100 * v for v in points['item_f1_avg']])}")
    if PAPER_MODEL not in policies:
        notes.append(f"{PAPER_MODEL}: ours: missing")
    paper.print_table(f"Depth scaling, single agent, item F1 ({args.experiment} in {uri})",
                      ["policy", "turn budget", "item F1 avg (paper / ours)", "item F1 max (paper / ours)", "our run"],
                      rows, [f"paper: {SHAPE}. The 50-turn numbers are the single-agent table's Qwen3-4B row; the "
                             "reference gives no other points.", *notes])


if __name__ == "__main__":
    main()
