"""Read sweeps and training runs back from MLflow: a summary table, the width-scaling plot, training curves.

Used by the sweep's parent run when a sweep ends (tracking.SweepCallback), by the notebooks and by the
experiments/ scripts:

    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    table = summarize_sweep(client, parent_run_id)       # one row per child run
    plot_width_scaling(table, "width_scaling.png")      # item F1 avg@k and max@k against width

    runs = mlflow.search_runs(experiment_names=["width_sweep"])   # any runs, e.g. not from one sweep
    table = summary_frame(runs)

Plots use matplotlib's object API (Figure, rendered by Agg), so they need no display and leave
pyplot's global state alone; in a notebook the returned Figure shows itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_FILE = "summary.csv"

# summary column -> the run's param (short names logged by tracking.key_params)
KEY_PARAMS = {
    "width": "width", "model": "model", "subagent_model": "subagent_model", "trained": "trained",
    "agent": "agent", "engine": "engine", "search": "search", "reward": "reward", "judge": "judge",
    "data": "data", "seed": "seed", "samples": "samples",
}
# a swept config path -> the summary column that already holds it
SWEPT_AS = {"subagents": "width", "model": "model", "subagent_model": "subagent_model", "exp.train": "trained",
            "agent": "agent", "engine": "engine", "search": "search", "reward": "reward", "judge": "judge",
            "data": "data", "seed": "seed", "eval.samples": "samples"}
# summary column -> metric (evaluation.py's names)
METRICS = {
    "item_f1_avg": "eval.item_f1_avg", "item_f1_max": "eval.item_f1_max",
    "row_f1_avg": "eval.row_f1_avg", "row_f1_max": "eval.row_f1_max",
    "success_avg": "eval.success_avg", "success_pass": "eval.success_pass",
    "k": "eval.k", "tasks": "eval.tasks",
    "subagents_per_trial": "rollout.subagents_mean", "subagents_per_call": "rollout.subagents_per_call_mean",
    "lead_calls": "rollout.lead_calls_mean", "search_calls": "rollout.search_calls_mean",
    "access_calls": "rollout.access_calls_mean", "table_found": "rollout.table_found_rate",
    "wall_seconds": "rollout.wall_seconds", "tokens_per_second": "rollout.tokens_per_second",
    "job_seconds": "job.wall_seconds",
}
TOKENS_PREFIX = "rollout.generated_tokens_mean."  # + role: tokens_<role> columns
TRAINING_METRICS = ("reward/mean", "score/item_f1", "eval.item_f1_avg", "loss")


# ------------------------------------------------------------------------------------------------ runs


def client_for(uri_or_client: Any):
    import mlflow

    return uri_or_client if isinstance(uri_or_client, mlflow.MlflowClient) else mlflow.MlflowClient(uri_or_client)


def search_all(client, experiment_ids: Sequence[str], filter_string: str = "", order_by: Sequence[str] | None = None) -> list:
    """Every matching run (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000,
                                  order_by=list(order_by or ["attributes.start_time ASC"]), page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: Iterable) -> pd.DataFrame:
    """MLflow Run objects as mlflow.search_runs lays them out: run_id, status, start_time, params.*,
    metrics.*, tags.* (latest value of each metric)."""
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
               "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True)}
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_children(client, parent_run_id: str) -> pd.DataFrame:
    parent = client.get_run(parent_run_id)
    children = search_all(client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return runs_frame(children)


def sweep_keys(client, parent_run_id: str) -> list[str]:
    keys = client.get_run(parent_run_id).data.params.get("sweep.keys", "")
    return [key for key in keys.split(",") if key]


def list_sweeps(client, experiment_name: str) -> pd.DataFrame:
    """The sweep parent runs of an experiment, newest first: run_id, name, status, start, what is swept."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=["run_id", "run_name", "status", "start_time", "swept"])
    parents = search_all(client, [experiment.experiment_id], "tags.sweep = 'true'", ["attributes.start_time DESC"])
    return pd.DataFrame([{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                          "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
                          "swept": r.data.params.get("sweep.overrides", "")} for r in parents],
                        columns=["run_id", "run_name", "status", "start_time", "swept"])


# --------------------------------------------------------------------------------------------- summary


def _number(value: Any) -> Any:
    """'4' -> 4, '0.5' -> 0.5; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def summary_frame(runs: pd.DataFrame, keys: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run (a frame from mlflow.search_runs or runs_frame): the swept values first (`keys`,
    config paths such as "subagents" or "agent.single_max_turns"), then the key params, the metrics
    (item/row F1 avg and max, success avg and pass, subagents per trial and per call, tokens per role,
    wall time, tokens/s), status, run_id and output_dir. Rows are ordered by the swept values."""
    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=["status", *KEY_PARAMS, *METRICS, "run_id"])
    columns: dict[str, Any] = {}

    def param(name: str) -> pd.Series:
        column = f"params.{name}"
        return runs[column].map(_number) if column in runs else pd.Series([None] * len(runs), index=runs.index)

    swept = []
    for key in keys:
        name = SWEPT_AS.get(key, key)
        swept.append(name)
        if name not in KEY_PARAMS:  # any other config path: its value, or its option's name for a group
            value = param(f"cfg.{key}")
            columns[name] = value if value.notna().any() else param(f"cfg.{key}.name")
    for name, source in KEY_PARAMS.items():
        columns[name] = param(source)
    if "trained" in columns:
        columns["trained"] = columns["trained"].map(lambda v: {"true": True, "false": False}.get(str(v).lower(), v))
    for name, metric in METRICS.items():
        column = f"metrics.{metric}"
        columns[name] = runs[column] if column in runs else float("nan")
    for column in sorted(c for c in runs.columns if c.startswith(f"metrics.{TOKENS_PREFIX}")):
        columns["tokens_" + column.removeprefix(f"metrics.{TOKENS_PREFIX}")] = runs[column]
    columns["status"] = runs["status"] if "status" in runs else None
    columns["run_id"] = runs["run_id"]
    columns["output_dir"] = runs["tags.output_dir"] if "tags.output_dir" in runs else None
    table = pd.DataFrame(columns, index=runs.index)
    order = [name for name in dict.fromkeys(swept)]
    table = table[[*order, *[c for c in table.columns if c not in order]]]
    if order:
        table = table.sort_values(order, kind="stable", key=_sort_key)
    return table.reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def summarize_sweep(client, parent_run_id: str) -> pd.DataFrame:
    """The summary table of one sweep: one row per child run (failed ones too, with their status)."""
    client = client_for(client)
    return summary_frame(sweep_children(client, parent_run_id), sweep_keys(client, parent_run_id))


def x_axis(table: pd.DataFrame, keys: Sequence[str] = ()) -> str:
    """The column to plot against: width when it varies (or nothing numeric is swept), else the first
    numeric swept value (the turn budget of a depth sweep)."""
    if "width" in table and table["width"].nunique(dropna=True) > 1:
        return "width"
    for key in keys:
        name = SWEPT_AS.get(key, key)
        if name in table and pd.to_numeric(table[name], errors="coerce").notna().all() and name not in (
                "seed", "trained"):
            return name
    return "width"


# ------------------------------------------------------------------------------------------------ plots


def series_label(row: pd.Series, mark_untrained: bool = False) -> str:
    """One line per policy: the model (lead -> subagents when they differ), "(trained)" when the job trained
    it, "(untrained)" when `mark_untrained` (the table holds both)."""
    label = str(row.get("model"))
    subagent = row.get("subagent_model")
    if isinstance(subagent, str) and subagent and subagent != label:
        label += f" -> {subagent}"
    if row.get("trained") is True:
        label += " (trained)"
    elif mark_untrained:
        label += " (untrained)"
    return label


def plot_width_scaling(table: pd.DataFrame, path: str | Path | None = None, x: str = "width", title: str | None = None):
    """Item F1 avg@k (solid) and max@k (dashed) against `x`, one colour per policy (model, trained or not).
    Finished runs with metrics only. Saves a PNG when `path` is given; returns the Figure."""
    from matplotlib.figure import Figure

    rows = table
    if "status" in rows:
        rows = rows[rows["status"].isin(["FINISHED"]) | rows["status"].isna()]
    rows = rows[pd.to_numeric(rows.get("item_f1_avg"), errors="coerce").notna()] if len(rows) else rows
    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    axes = figure.add_subplot()
    k = ""
    if len(rows) and "k" in rows and pd.notna(rows["k"]).any():
        k = f"@{int(rows['k'].dropna().iloc[0])}"
    if len(rows):
        both = "trained" in rows and rows["trained"].map(lambda v: v is True).any() and \
            rows["trained"].map(lambda v: v is not True).any()
        labels = rows.apply(series_label, axis=1, mark_untrained=both)
        palette = [f"C{i}" for i in range(10)]
        for index, (label, group) in enumerate(rows.groupby(labels, sort=True)):
            group = group.assign(_x=pd.to_numeric(group[x], errors="coerce")).dropna(subset=["_x"]).sort_values("_x")
            means = group.groupby("_x")[["item_f1_avg", "item_f1_max"]].mean()  # seeds at one x: their mean
            colour = palette[index % len(palette)]
            axes.plot(means.index, 100 * means["item_f1_avg"], "o-", color=colour, label=f"{label}: avg{k}")
            axes.plot(means.index, 100 * means["item_f1_max"], "s--", color=colour, label=f"{label}: max{k}")
        xs = sorted(pd.to_numeric(rows[x], errors="coerce").dropna().unique())
        if xs:
            axes.set_xticks(xs)
            if len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
                axes.set_xscale("log", base=2)
                axes.set_xticks(xs, [f"{v:g}" for v in xs])
        top = 100 * float(pd.concat([rows["item_f1_avg"], rows["item_f1_max"]]).max())
        axes.set_ylim(0, max(5.0, 1.1 * top))
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no finished runs with metrics", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel({"width": "width W (subagents per call)"}.get(x, x))
    axes.set_ylabel("item F1 (%)")
    axes.set_title(title or f"item F1 avg{k} and max{k} against {x}")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path)
    return figure


def plot_name(x: str) -> str:
    return "width_scaling.png" if x == "width" else f"{x.split('.')[-1]}_scaling.png"


# ------------------------------------------------------------------------------------- end of a sweep


def markdown(table: pd.DataFrame, columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in table]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float) and not math.isnan(value) and column not in ("width",):
                cells.append(f"{100 * value:.1f}" if column in METRICS and column.startswith(("item", "row", "success"))
                             else f"{value:.3g}")
            else:
                cells.append("" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_sweep(client, parent_run_id: str, folder: Path | None = None, quiet: bool = False) -> pd.DataFrame:
    """Summary CSV and scaling plot of a sweep into `folder` (default: a temporary one) and onto the
    parent run as artifacts; prints a short table. Returns the summary."""
    import tempfile

    client = client_for(client)
    keys = sweep_keys(client, parent_run_id)
    table = summarize_sweep(client, parent_run_id)
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(folder) if folder is not None else Path(scratch)
        target.mkdir(parents=True, exist_ok=True)
        csv_path = target / SUMMARY_FILE
        table.to_csv(csv_path, index=False)
        client.log_artifact(parent_run_id, str(csv_path))
        x = x_axis(table, keys)
        plot_path = target / plot_name(x)
        plot_width_scaling(table, plot_path, x=x)
        client.log_artifact(parent_run_id, str(plot_path))
        if not quiet:
            finished = int((table["status"] == "FINISHED").sum()) if len(table) else 0
            shown = [SWEPT_AS.get(key, key) for key in keys]
            columns = [*dict.fromkeys([*shown, "model", "trained", "status", "item_f1_avg", "item_f1_max",
                                       "row_f1_avg", "success_avg", "subagents_per_call", "wall_seconds"])]
            print(f"sweep summary: {finished} of {len(table)} runs finished"
                  + (f" -> {csv_path}, {plot_path}" if folder is not None else "")
                  + f" (MLflow parent run {parent_run_id})", flush=True)
            if len(table):
                print(markdown(table, columns), flush=True)
    return table


# ------------------------------------------------------------------------------------------- training


def latest_run_with(client, experiment_name: str, metric: str = "reward/mean") -> str | None:
    """The newest run of an experiment that logged `metric` (e.g. the latest training run)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    for run in search_all(client, [experiment.experiment_id], order_by=["attributes.start_time DESC"]):
        if metric in run.data.metrics:
            return run.info.run_id
    return None


def metric_history(client, run_id: str, names: Sequence[str] = TRAINING_METRICS) -> pd.DataFrame:
    """Long format (metric, step, value) of each named metric's whole history."""
    client = client_for(client)
    rows = [{"metric": name, "step": point.step, "value": point.value}
            for name in names for point in client.get_metric_history(run_id, name)]
    frame = pd.DataFrame(rows, columns=["metric", "step", "value"])
    return frame.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)


def plot_training_curves(history: pd.DataFrame, path: str | Path | None = None, title: str = "training"):
    """One panel per metric of `history` (metric_history's frame) against the training step."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(history["metric"])) or ["(no metrics)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(3.6 * columns, 2.9 * rows), dpi=110)
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        points = history[history["metric"] == name]
        axes.plot(points["step"], points["value"], "o-", markersize=3)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path)
    return figure
