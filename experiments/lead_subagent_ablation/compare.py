"""The lead-vs-subagent ablation: which model plays which role (experiment lead_subagent_ablation; README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

TRAINED, BASE = "wideseek_r1_4b", "qwen3_4b"
# (lead, subagents) -> the paper's six numbers (%); the mixed pairs have no numbers in our reference
PAPER = [
    ((TRAINED, TRAINED), [40.0, 51.8, 15.3, 24.4, 0.4, 1.0]),
    ((TRAINED, BASE), None),
    ((BASE, TRAINED), None),
    ((BASE, BASE), [31.2, 42.3, 8.4, 15.5, 0.0, 0.0]),
]


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "lead_subagent_ablation", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if paper.matches(run, agent="wideseek")]
    rows = [paper.headline_row([lead, subagent], numbers, paper.pick(runs, model=lead, subagent_model=subagent))
            for (lead, subagent), numbers in PAPER]
    for run in paper.others(runs, [pair for pair, _ in PAPER], ("model", "subagent_model")):
        rows.append(paper.headline_row([run.data.params["model"], run.data.params["subagent_model"]], None, run))
    paper.print_table(f"Lead vs subagent model ({args.experiment} in {uri})",
                      paper.headline_header(["lead", "subagents"]), rows,
                      ["paper: both roles on the trained model is best (the same-model rows are the multi-agent "
                       "table's); the reference gives no numbers for the mixed pairs."])


if __name__ == "__main__":
    main()
