"""What every experiments/<result>/compare.py shares: find our MLflow runs, print them beside the paper.

A compare script names its experiment and the paper's numbers, picks runs by their key params (logged by
every job under short names: model, subagent_model, agent, width, ...; see wideseek_exp/tracking.py) and
prints one markdown table. A number we have not produced yet reads "missing"; a paper cell the reference
does not give reads "-". Ours are in %, like the paper's.

    python experiments/<result>/compare.py [--tracking-uri URI] [--experiment NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MISSING = "missing"
NOT_GIVEN = "-"
# the paper's six WideSearch columns and the metrics task=eval logs for them
HEADLINE = [("item F1 avg", "eval.item_f1_avg"), ("item F1 max", "eval.item_f1_max"),
            ("row F1 avg", "eval.row_f1_avg"), ("row F1 max", "eval.row_f1_max"),
            ("success avg", "eval.success_avg"), ("success pass", "eval.success_pass")]


def parse_args(description: str, experiment: str, argv: Sequence[str] | None = None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--experiment", default=experiment, help=f"MLflow experiment to read (default: {experiment})")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def connect(uri: str | None):
    import logging

    import mlflow

    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"
    return mlflow.MlflowClient(uri), uri


def finished_runs(client, experiment: str, task: str | None = "eval") -> list:
    """Finished runs of `experiment` (of `task`), newest first; [] when the experiment does not exist."""
    from wideseek_exp.analysis.sweep_report import search_all

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    filters = ["attributes.status = 'FINISHED'"] + ([f"tags.task = '{task}'"] if task else [])
    return search_all(client, [found.experiment_id], " and ".join(filters), ["attributes.start_time DESC"])


def matches(run, **params) -> bool:
    return all(run.data.params.get(key) == str(value) for key, value in params.items())


def pick(runs: Iterable, **params):
    """The newest run whose params equal `params` (compared as MLflow stores them: strings), or None."""
    return next((run for run in runs if matches(run, **params)), None)


def percent(run, metric: str) -> float | None:
    if run is None or metric not in run.data.metrics:
        return None
    return 100 * run.data.metrics[metric]


def cell(value: float | str | None, missing: str = MISSING) -> str:
    if value is None:
        return missing
    return value if isinstance(value, str) else f"{value:.1f}"


def pair(paper: float | None, ours: float | None, missing: str = MISSING) -> str:
    """'paper / ours' in one cell."""
    return f"{cell(paper, NOT_GIVEN)} / {cell(ours, missing)}"


def source(run) -> str:
    """Which run our numbers come from, and the settings that decide whether they compare."""
    if run is None:
        return MISSING
    params, metrics = run.data.params, run.data.metrics
    k = metrics.get("eval.k")
    tasks = metrics.get("eval.tasks")
    width = f" W={params.get('width')}" if params.get("agent") == "wideseek" else ""
    return (f"{run.info.run_id[:8]}{width} data={params.get('data', '?')} judge={params.get('judge', '?')}"
            + (f" k={int(k)}" if k is not None else "") + (f" tasks={int(tasks)}" if tasks is not None else ""))


def headline_row(label: Sequence[str], paper: Sequence[float] | None, run, missing: str = MISSING) -> list[str]:
    """label cells, then 'paper / ours' for the six WideSearch numbers, then where ours come from."""
    paper = list(paper) if paper is not None else [None] * len(HEADLINE)
    ours = [pair(p, percent(run, metric), missing) for p, (_, metric) in zip(paper, HEADLINE)]
    return [*label, *ours, source(run) if run is not None else missing]


def headline_header(label: Sequence[str]) -> list[str]:
    return [*label, *(f"{name} (paper / ours)" for name, _ in HEADLINE), "our run"]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    print(f"## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    for note in notes:
        print(note)
    print()


def others(runs: Iterable, known: Iterable[tuple], keys: Sequence[str]) -> list:
    """The newest run of every combination of `keys` params not in `known` (our runs the paper has no row for)."""
    seen, extra = set(known), []
    for run in runs:
        combination = tuple(run.data.params.get(key) for key in keys)
        if combination not in seen:
            seen.add(combination)
            extra.append(run)
    return extra


def scaling(runs: Sequence, x: str, keys: Sequence[str] = ()):
    """Our runs (newest first, as finished_runs gives them) as a sweep summary (wideseek_exp.analysis.sweep_report),
    the newest run per (policy, x): a frame with a `policy` column (model, '-> subagent model', '(trained)')
    and `x` as numbers, ordered by policy and x."""
    import pandas as pd

    from wideseek_exp.analysis.sweep_report import runs_frame, series_label, summary_frame

    table = summary_frame(runs_frame(runs), keys)
    if table.empty:
        return table.assign(policy=pd.Series(dtype=str))
    newest = {run.info.run_id: index for index, run in enumerate(runs)}
    table = table.assign(policy=table.apply(series_label, axis=1), _newest=table["run_id"].map(newest),
                         **{x: pd.to_numeric(table[x], errors="coerce")})
    table = table.sort_values("_newest").drop_duplicates(["policy", x]).drop(columns="_newest")
    return table.sort_values(["policy", x], kind="stable").reset_index(drop=True)


def trend(values: Sequence[float]) -> str:
    """How a curve moves with x, in words: 'rises', 'falls', 'flat', 'rises then falls (peak at i)', ..."""
    if len(values) < 2:
        return "fewer than 2 points"
    steps = [b - a for a, b in zip(values, values[1:])]
    if all(abs(step) < 1e-9 for step in steps):
        return "flat"
    if all(step >= 0 for step in steps):
        return "rises monotonically"
    if all(step <= 0 for step in steps):
        return "falls monotonically"
    peak = max(range(len(values)), key=values.__getitem__)
    return f"not monotonic (highest at point {peak + 1} of {len(values)})"
