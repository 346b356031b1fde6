"""The standard-QA table: average over seven QA sets (experiment standard_qa; README.md here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

METRIC = "eval.qa_avg"  # the average over the seven sets a QA evaluation logs (not in this version yet)
# paper row, the model and agent of our run, the paper's 7-set average (%)
PAPER = [
    ("WideSeek-R1-4B (multi-agent)", "wideseek_r1_4b", "wideseek", 59.0),
    ("SingleSeek-R1-4B (single agent)", "singleseek_r1_4b", "singleseek", 57.0),
    ("Qwen3-4B (multi-agent)", "qwen3_4b", "wideseek", 51.3),
]


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "standard_qa", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if METRIC in run.data.metrics]
    rows = []
    for label, model, agent, average in PAPER:
        run = paper.pick(runs, model=model, agent=agent)
        rows.append([label, f"model={model} agent={agent}", paper.pair(average, paper.percent(run, METRIC)),
                     paper.source(run)])
    paper.print_table(f"Standard QA, average of 7 sets ({args.experiment} in {uri})",
                      ["system", "ours", "7-set average (paper / ours)", "our run"], rows,
                      [f"ours: the metric {METRIC}; this version's task=eval scores table tasks only (QA records "
                       "are skipped), so these stay missing until a QA scorer logs it."])


if __name__ == "__main__":
    main()
