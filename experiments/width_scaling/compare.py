"""Item F1 against width: the paper's width-scaling figure beside our sweeps (experiment width_scaling;
README.md here). --experiment width_sweep_cpu reads `make sweep`'s CPU version."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

WIDTHS = [1, 2, 4, 6, 8, 10]  # the recipe's widths (README.md)
# policy -> the paper's (item F1 avg@4, max@4) at width 10 (the multi-agent table) and the figure's shape
PAPER = {
    "wideseek_r1_4b": ((40.0, 51.8), "rises monotonically with width up to 10"),
    "qwen3_4b": ((31.2, 42.3), "first improves, then declines at larger widths"),
}


def add_parent(parser) -> None:
    parser.add_argument("--parent-run-id", default=None, help="only the children of this sweep (default: every run)")


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "width_scaling", argv, add_parent)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if paper.matches(run, agent="wideseek")]
    if args.parent_run_id:
        runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == args.parent_run_id]
    table = paper.scaling(runs, "width", ["subagents"])

    def ours(policy: str, width: float):
        found = table[(table["policy"] == policy) & (table["width"] == width)] if len(table) else table
        return None if found.empty else found.iloc[0]

    def row(policy: str, width: float, paper_numbers=None) -> list[str]:
        point = ours(policy, width)
        avg, best = (None, None) if point is None else (100 * point["item_f1_avg"], 100 * point["item_f1_max"])
        paper_avg, paper_max = paper_numbers or (None, None)
        extra = ["missing"] * 3 if point is None else [
            f"{point['subagents_per_call']:.2f}", f"{point['wall_seconds']:.1f}", str(point["run_id"])[:8]]
        return [policy, f"{width:g}", paper.pair(paper_avg, avg), paper.pair(paper_max, best), *extra]

    rows, notes = [], []
    for policy, (at_10, shape) in PAPER.items():
        rows += [row(policy, width, at_10 if width == 10 else None) for width in WIDTHS]
        points = table[table["policy"] == policy] if len(table) else table
        found = "missing" if points.empty else paper.trend([100 * v for v in points["item_f1_avg"]])
        notes.append(f"{policy}: paper: {shape}; ours: {found}")
    for policy in [p for p in dict.fromkeys(table["policy"]) if p not in PAPER] if len(table) else []:
        points = table[table["policy"] == policy]
        rows += [row(policy, width) for width in points["width"]]
        notes.append(f"{policy}: ours: {paper.trend([100 * v for v in points['item_f1_avg']])} (no paper curve)")
    paper.print_table(f"Width scaling, item F1 ({args.experiment} in {uri})",
                      ["policy", "W", "item F1 avg (paper / ours)", "item F1 max (paper / ours)",
                       "subagents per call", "rollout wall s", "our run"], rows,
                      ["paper numbers at W=10 are the multi-agent table's; the reference gives the curves' shape, "
                       "not their other points.", *notes])


if __name__ == "__main__":
    main()
