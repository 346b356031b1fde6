"""The paper's single-agent WideSearch table beside our runs (experiment reproduce_single_agent; README.md here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

# paper row, the model name our run carries (model.name), the six numbers (%)
PAPER = [
    ("SingleSeek-R1-4B", "singleseek_r1_4b", [28.1, 39.2, 6.5, 12.5, 0.3, 1.0]),
    ("Qwen3-4B", "qwen3_4b", [20.1, 30.2, 3.0, 4.8, 0.0, 0.0]),
    ("Search-R1-7B", "search_r1_7b", [15.5, 24.4, 2.0, 4.4, 0.0, 0.0]),
    ("ASearcher-7B", "asearcher_7b", [16.5, 26.0, 2.8, 5.8, 0.0, 0.0]),
    ("DeepSeek-R1-671B", "deepseek_r1", [41.3, 55.1, 20.7, 31.7, 0.4, 1.5]),
]


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "reproduce_single_agent", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = [run for run in paper.finished_runs(client, args.experiment) if paper.matches(run, agent="singleseek")]
    rows = [paper.headline_row([label, f"model.name={model}"], numbers, paper.pick(runs, model=model))
            for label, model, numbers in PAPER]
    for run in paper.others(runs, {(model,) for _, model, _ in PAPER}, ("model",)):
        rows.append(paper.headline_row([run.data.params["model"], "ours only"], None, run))
    paper.print_table(f"Single-agent WideSearch ({args.experiment} in {uri})", paper.headline_header(["model", "ours"]),
                      rows, ["paper: WideSearch, 200 tasks, 4 samples, GPT-4.1 judge, one agent with 50 turns."])


if __name__ == "__main__":
    main()
