"""Scoring speed: 200 tasks x 4 trials of 30-row tables, scored with the exact judge.

    python experiments/scoring_perf/bench.py [--tasks 200] [--trials 4] [--rows 30] [--seed 0]

Target (2-core CPU): the whole set (800 responses) scored and aggregated in < 10 s.
The tables are synthetic, with the noise real answers carry: wrong cells, missing and extra rows,
numbers written with thousands commas, units or as percentages, dates in several formats, markdown
bold, upper case, duplicated rows.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from wideseek_exp.scoring import ExactJudge, aggregate, render_table, score_response, summarize_task  # noqa: E402
from wideseek_exp.tasks.record import TaskRecord, normalize_column, to_markdown_table  # noqa: E402

COLUMNS = ["Name", "Capital", "Population", "Share", "Founded", "Homepage"]
PIPELINE = {
    "name": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
    "capital": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
    "population": {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.05},
    "share": {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.01},
    "founded": {"preprocess": ["norm_date"], "metric": ["date_near"]},
    "homepage": {"preprocess": ["norm_str"], "metric": ["url_match"]},
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def make_task(index: int, rows: int, rng: random.Random) -> TaskRecord:
    gold = []
    for r in range(rows):
        name = f"Entity {index}-{r}"
        gold.append([
            name,
            f"City {rng.randint(1, 10_000)}",
            str(rng.randint(10_000, 90_000_000)),
            f"{rng.uniform(0, 100):.1f}%",
            f"{rng.randint(1800, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"https://www.site{index}x{r}.org/",
        ])
    return TaskRecord(
        instance_id=f"bench-{index:03d}", query="", language="en" if index % 2 else "zh",
        unique_columns=["name"], required=[normalize_column(c) for c in COLUMNS], eval_pipeline=PIPELINE,
        gold_columns=COLUMNS, gold_rows=gold,
    )


def noisy_cell(column: int, cell: str, rng: random.Random) -> str:
    if rng.random() < 0.08:  # plainly wrong
        return "unknown" if rng.random() < 0.5 else "Wrong " + cell[:3]
    if column == 0:
        return rng.choice([cell, cell.upper(), f"**{cell}**"])
    if column == 2:
        value = int(cell)
        return rng.choice([f"{value:,}", f"about {value / 1e6:.2f} million", str(int(value * rng.uniform(0.97, 1.03)))])
    if column == 3:
        return rng.choice([cell, f"{float(cell[:-1]) / 100:.3f}", cell.replace("%", " %")])
    if column == 4:
        year, month, day = (int(part) for part in cell.split("-"))
        return rng.choice([cell, f"{MONTHS[month - 1]} {day}, {year}", f"{month}/{day}/{year}", str(year)])
    if column == 5:
        return rng.choice([cell, cell.replace("https", "http") + "about", f"[site]({cell})"])
    return cell


def noisy_response(task: TaskRecord, rng: random.Random) -> str:
    rows = [[noisy_cell(c, cell, rng) for c, cell in enumerate(row)] for row in task.gold_rows
            if rng.random() > 0.1]  # ~10% rows missing
    rows += [[f"Invented {i}", "Nowhere", "1", "1%", "2000", "https://x.org"] for i in range(rng.randint(0, 3))]
    if rows and rng.random() < 0.2:
        rows.append(list(rows[0]))  # a duplicated row
    rng.shuffle(rows)
    return "Here is the table I compiled.\n```markdown\n" + to_markdown_table(COLUMNS, rows) + "\n```\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    tasks = [make_task(i, args.rows, rng) for i in range(args.tasks)]
    responses = [[noisy_response(task, rng) for _ in range(args.trials)] for task in tasks]
    judge = ExactJudge()

    start = time.perf_counter()
    summaries = []
    for task, trials in zip(tasks, responses):
        scores = [score_response(response, task, judge) for response in trials]
        summaries.append(summarize_task(task.instance_id, task.language, scores, k=args.trials))
    report = aggregate(summaries, judge=judge.label)
    seconds = time.perf_counter() - start

    print(render_table(report))
    print()
    n = args.tasks * args.trials
    print(f"scored {args.tasks} tasks x {args.trials} trials ({n} responses, {args.rows}-row tables) "
          f"in {seconds:.2f} s: {args.tasks / seconds:.1f} tasks/s, {n / seconds:.0f} responses/s "
          f"(target < 10 s: {'met' if seconds < 10 else 'MISSED'})")


if __name__ == "__main__":
    main()
