"""The training-data ablation: width-only, deep-only and hybrid data (experiment data_ablation; README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import paper  # noqa: E402

# training data, the model.name the evaluation run carries, the paper's six numbers (%)
PAPER = [
    ("width (broad tables only)", "r1_data_width", None),
    ("deep (QA only)", "r1_data_deep", None),
    ("hybrid (the released model)", "r1_data_hybrid", [40.0, 51.8, 15.3, 24.4, 0.4, 1.0]),
]


def main(argv=None) -> None:
    args = paper.parse_args(__doc__, "data_ablation", argv)
    client, uri = paper.connect(args.tracking_uri)
    runs = paper.finished_runs(client, args.experiment)
    rows = [paper.headline_row([label, name], numbers, paper.pick(runs, model=name)) for label, name, numbers in PAPER]
    paper.print_table(f"Training data ablation, multi-agent WideSearch ({args.experiment} in {uri})",
                      paper.headline_header(["training data", "model.name"]), rows,
                      ["paper: hybrid data beats either alone; the hybrid row is WideSeek-R1-4B's (multi-agent "
                       "table), the reference gives no numbers for the other two."])


if __name__ == "__main__":
    main()
