"""What a long response cell costs the scorer: one score_response with a 100,000-character cell, as a ratio
to the same response with a 100-character cell, for cells that look like numbers, dates, URLs and text.

    python experiments/scoring_perf/long_cells.py [--long 100000] [--short 100] [--repeat 5]

Two costs are printed per kind: the whole score_response (a response cell is cut to MAX_CELL_CHARS first,
scoring/table.py), and the uncut preprocessing the patterns do (column typing, the first number, the date
parser) on the full cell, which shows that the patterns themselves are linear. Target: every ratio well
under the length ratio (1000 at the defaults); the patterns once took 18-25 s for a 32,000-character cell.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from wideseek_exp.scoring import ExactJudge, score_response  # noqa: E402
from wideseek_exp.scoring.preprocess import column_kind, extract_number, parse_date  # noqa: E402
from wideseek_exp.scoring.table import MAX_CELL_CHARS  # noqa: E402
from wideseek_exp.tasks.record import TaskRecord  # noqa: E402

PIPELINE = {
    "name": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
    "value": {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.05},
    "day": {"preprocess": ["norm_date"], "metric": ["date_near"]},
    "home": {"preprocess": ["norm_str"], "metric": ["url_match"]},
}
# the worst cases of the old patterns: almost a number, almost a CJK date; a URL and plain text
KINDS = {
    "value": lambda n: "1" * (n - 1) + "x",
    "day": lambda n: "2023年" + " " * (n - 6) + "x",
    "home": lambda n: "https://" + "a" * (n - 12) + ".org",
    "name": lambda n: "word " * (n // 5),
}


def task() -> TaskRecord:
    return TaskRecord(instance_id="long", query="", language="en", unique_columns=["name"],
                      required=list(PIPELINE), eval_pipeline=PIPELINE, gold_columns=list(PIPELINE),
                      gold_rows=[["a", "5", "2020-01-01", "https://a.org"]])


def response(kind: str, length: int) -> str:
    cells = {"name": "a", "value": "5", "day": "2020-01-01", "home": "https://a.org"}
    cells[kind] = KINDS[kind](length)
    return f"| {' | '.join(PIPELINE)} |\n|---|---|---|---|\n| {' | '.join(cells.values())} |"


def best_of(repeat: int, work) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", type=int, default=100_000)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    judge, gold = ExactJudge(), task()
    print(f"cell {args.long} vs {args.short} characters (response cells cut to {MAX_CELL_CHARS}); best of {args.repeat}")
    print(f"{'cell kind':<10} {'score short':>12} {'score long':>11} {'ratio':>7} {'patterns long':>14} {'ratio':>7}")
    ratios = []
    for kind in KINDS:
        texts = {length: response(kind, length) for length in (args.short, args.long)}
        cells = {length: KINDS[kind](length) for length in (args.short, args.long)}
        short, long = (best_of(args.repeat, lambda text=texts[n]: score_response(text, gold, judge))
                       for n in (args.short, args.long))
        # the patterns on the whole cell; the date parser unmemoised (parse_date keeps an lru_cache)
        raw_short, raw_long = (
            best_of(args.repeat, lambda cell=cells[n]: (column_kind(["1.5", cell]), extract_number(cell),
                                                        parse_date.__wrapped__(cell)))
            for n in (args.short, args.long))
        ratios.append(long / short)
        print(f"{kind:<10} {short * 1e3:>10.2f}ms {long * 1e3:>9.2f}ms {long / short:>7.1f} "
              f"{raw_long * 1e3:>12.2f}ms {raw_long / raw_short:>7.1f}")
    print(f"worst score_response ratio: {max(ratios):.1f} (length ratio {args.long / args.short:.0f})")


if __name__ == "__main__":
    main()
