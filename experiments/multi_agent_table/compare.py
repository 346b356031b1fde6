"""The paper's multi-agent WideSearch table beside our runs (experiment reproduce_multi_agent; README.md here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

PAPER_WIDTH = 10
# paper row, our model config (None: another agent system, not run by this repository), the six numbers (%)
PAPER = [
    ("WideSeek-R1-4B", "wideseek_r1_4b", [40.0, 51.8, 15.3, 24.4, 0.4, 1.0]),
    ("Qwen3-4B", "qwen3_4b", [31.2, 42.3, 8.4, 15.5, 0.0, 0.0]),
    ("AgentFlow-7B", None, [28.7, 45.4, 9.0, 20.2, 0.4, 1.5]),
    ("OWL-8B", None, [20.2, 29.3, 3.1, 5.8, 0.0, 0.0]),
    ("MiroFlow-8B", None, [23.7, 37.7, 5.8, 12.7, 0.4, 1.0]),
]


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "reproduce_multi_agent", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if paper.matches(run, agent="wideseek")]
    rows = []
    for label, model, numbers in PAPER:
        if model is None:
            rows.append(paper.headline_row([label, "another system"], numbers, None, missing="n/a"))
            continue
        # lead and subagents on the same model, at the paper's width when we have it
        run = (paper.pick(runs, model=model, subagent_model=model, width=PAPER_WIDTH)
               or paper.pick(runs, model=model, subagent_model=model))
        rows.append(paper.headline_row([label, f"model={model}"], numbers, run))
    known = {(model, model) for _, model, _ in PAPER if model}
    for run in paper.others(runs, known, ("model", "subagent_model")):
        params = run.data.params
        name = params["model"] if params["model"] == params["subagent_model"] else \
            f"{params['model']} -> {params['subagent_model']}"
        rows.append(paper.headline_row([name, "ours only"], None, run))
    paper.print_table(f"Multi-agent WideSearch, width {PAPER_WIDTH} ({args.experiment} in {uri})",
                      paper.headline_header(["model", "ours"]), rows,
                      ["paper: WideSearch, 200 tasks, 4 samples, GPT-4.1 judge; our settings are in the last column."])


if __name__ == "__main__":
    main()
