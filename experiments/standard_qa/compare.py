"""The standard-QA table: accuracy averaged over seven QA sets (experiment standard_qa; README.md here).

Each QA set is one task=eval run (data.path = that set); a QA trial scores 1 when its \\boxed{} answer is
judged correct, so a run's `eval.success_avg` is its accuracy (avg@k). Per system, the newest run of each
set counts, and the average is over the sets found (how many is printed beside it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

METRIC = "eval.success_avg"  # accuracy of a QA set
SET_PARAM = "cfg.data.path"  # which QA set a run evaluated
SETS = 7
# paper row, the model and agent of our run, the paper's 7-set average (%)
PAPER = [
    ("WideSeek-R1-4B (multi-agent)", "wideseek_r1_4b", "wideseek", 59.0),
    ("SingleSeek-R1-4B (single agent)", "singleseek_r1_4b", "singleseek", 57.0),
    ("Qwen3-4B (multi-agent)", "qwen3_4b", "wideseek", 51.3),
]


def set_accuracies(runs, **params) -> dict[str, float]:
    """{QA set: accuracy in %} from the newest matching run of each set (runs come newest first)."""
    found: dict[str, float] = {}
    for run in runs:
        name = run.data.params.get(SET_PARAM)
        if paper.matches(run, **params) and name and name not in found:
            found[name] = paper.percent(run, METRIC)
    return found


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "standard_qa", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if METRIC in run.data.metrics]
    rows = []
    for label, model, agent, average in PAPER:
        sets = set_accuracies(runs, model=model, agent=agent)
        ours = sum(sets.values()) / len(sets) if sets else None
        rows.append([label, f"model={model} agent={agent}", paper.pair(average, ours), f"{len(sets)} of {SETS}"])
    paper.print_table(f"Standard QA, average of {SETS} sets ({args.experiment} in {uri})",
                      ["system", "ours", "average accuracy (paper / ours)", "our sets"], rows,
                      [f"ours: {METRIC} (accuracy of the boxed answers) of each set's newest run, averaged over the "
                       "sets found; an average over fewer than 7 sets does not compare with the paper's."])


if __name__ == "__main__":
    main()
