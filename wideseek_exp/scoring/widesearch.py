"""Score one response against one WideSearch task: the official protocol, steps 1-11.

    score_response(response, task, judge) -> TrialScore

The steps are numbered as in the project's WideSearch protocol note (widesearch_scoring.md). We
follow the official scorer, quirks included; the places where we deliberately differ say
"Divergence".

Nothing in a response raises: a response that cannot be scored gets zeros and a `reason`. A task
that cannot be scored (bad pipeline, gold without a required column) raises WideseekError.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from wideseek_exp import WideseekError
from wideseek_exp.scoring.judges import Judge, JudgeError
from wideseek_exp.scoring.preprocess import PREPROCESS, harmonise, parse_date
from wideseek_exp.scoring.qa import score_qa
from wideseek_exp.scoring.table import MISSING, NA_TOKENS, Table, extract_table, mangle_duplicates, normalize_column
from wideseek_exp.scoring.trial import TrialScore

METRICS = ("exact_match", "number_near", "date_near", "url_match", "llm_judge")
ALIGNED_KEY_METRICS = ("exact_match", "llm_judge")  # step 6: key columns the judge aligns
F1_EPSILON = 1e-9


class GoldTask(Protocol):
    """What scoring reads from a task: a tasks.record.TaskRecord (scoring does not import tasks)."""

    instance_id: str
    unique_columns: list[str]
    required: list[str]
    eval_pipeline: dict[str, dict]
    gold_columns: list[str]
    gold_rows: list[list[str]]


# ---- the task: its columns and their pipelines -------------------------------------------------


@dataclass
class ColumnRule:
    preprocess: list[str]
    metrics: list[str]
    criterion: object  # number_near: a relative tolerance; llm_judge: the grading text


def _column_rules(task: GoldTask) -> dict[str, ColumnRule]:
    """Every required column's pipeline, checked: a task the official scorer would crash on is a
    data error here, not a zero."""
    where = f"task {task.instance_id}"
    if not task.required or not task.unique_columns:
        raise WideseekError(f"{where}: no required or no unique columns, nothing to score")
    stray = [column for column in task.unique_columns if column not in task.required]
    if stray:
        raise WideseekError(f"{where}: unique column(s) {', '.join(stray)} not among the required columns")
    pipeline = {normalize_column(column): spec for column, spec in task.eval_pipeline.items()}
    rules = {}
    for column in task.required:
        spec = pipeline.get(column)
        if spec is None:
            raise WideseekError(f"{where}: required column {column!r} has no eval_pipeline entry")
        rule = ColumnRule(list(spec.get("preprocess") or []), list(spec.get("metric") or []), spec.get("criterion"))
        unknown = [name for name in rule.preprocess if name not in PREPROCESS]
        unknown += [name for name in rule.metrics if name not in METRICS]
        if unknown or not rule.metrics:
            raise WideseekError(f"{where}: column {column!r} has unknown or no metric/preprocess: {unknown}")
        if "number_near" in rule.metrics:
            try:
                rule.criterion = float(rule.criterion)
            except (TypeError, ValueError):
                raise WideseekError(f"{where}: column {column!r} needs a numeric number_near criterion") from None
        rules[column] = rule
    return rules


def _gold_table(task: GoldTask) -> Table:
    """Step 1: the gold table with normalised column names, projected on `required`, cells
    stripped and missing cells read as "nan" like the response's."""
    names = [normalize_column(column) for column in task.gold_columns]
    absent = [column for column in task.required if column not in names]
    if absent:
        raise WideseekError(f"task {task.instance_id}: gold table lacks required column(s) {', '.join(absent)}")
    where = [names.index(column) for column in task.required]
    rows = []
    for row in task.gold_rows:
        cells = [cell.strip() for cell in row] + [""] * (len(names) - len(row))
        rows.append([MISSING if cells[i] in NA_TOKENS else cells[i] for i in where])
    return Table(list(task.required), rows)


# ---- step 9: cell metrics, on preprocessed strings ---------------------------------------------


def exact_match(response: str, gold: str) -> float:
    return 1.0 if response.lower() == gold.lower() else 0.0


def _as_number(text: str) -> float | None:
    """A value for number_near: a `%` value is divided by 100; Python's float() decides what is a
    number, as in the official code ("nan" is a number that equals nothing)."""
    try:
        return float(text.replace("%", "")) / 100.0 if "%" in text else float(text)
    except ValueError:
        return None


def number_near(response: str, gold: str, tolerance: float) -> float:
    """|r - t| <= tol * |t|. When either side is not a number: 1 only when neither is and the two
    strings are equal (so "NULL" against "NULL", two cells without a number, match)."""
    r, t = _as_number(response), _as_number(gold)
    if r is None or t is None:
        return 1.0 if r is None and t is None and response == gold else 0.0
    return 1.0 if abs(r - t) <= tolerance * abs(t) else 0.0


def date_near(response: str, gold: str) -> float:
    """Within 31 days. Both unparseable -> 1 (the official quirk: two non-dates always match);
    only one -> 0."""
    r, t = parse_date(response), parse_date(gold)
    if r is None or t is None:
        return 1.0 if r is None and t is None else 0.0
    return 1.0 if abs((r - t).days) <= 31 else 0.0


URL = re.compile(r"https?://[^\s/?#<>\"'()\[\]{}|\\^`,;]+", re.IGNORECASE)


def url_hosts(text: str) -> set[str]:
    hosts = set()
    for url in URL.findall(text):
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue
        if host:
            hosts.add(host)
    return hosts


def url_match(response: str, gold: str) -> float:
    """The sets of hostnames of the http(s) URLs in the two cells are equal (two cells without a
    URL match, as in the official code)."""
    return 1.0 if url_hosts(response) == url_hosts(gold) else 0.0


def _column_scores(column: str, rule: ColumnRule, pairs: list[tuple[str, str]], judge: Judge) -> list[float]:
    """One score per matched pair of a non-key column. Divergence (not in the official data, which
    gives each column one metric): with several metrics a cell scores their minimum, so an item
    counts once and metrics stay in [0, 1]; the official code would count one item per metric."""
    scores = [1.0] * len(pairs)
    for metric in rule.metrics:
        if metric == "llm_judge":
            # ONE judge call for the whole column, on the preprocessed values.
            found = judge.grade(column, str(rule.criterion or ""), pairs) if pairs else []
            if len(found) != len(pairs):
                raise JudgeError(f"{len(found)} grades for {len(pairs)} pairs in column {column!r}")
        elif metric == "number_near":
            found = [number_near(r, g, rule.criterion) for r, g in pairs]
        elif metric == "date_near":
            found = [date_near(r, g) for r, g in pairs]
        elif metric == "url_match":
            found = [url_match(r, g) for r, g in pairs]
        else:
            found = [exact_match(r, g) for r, g in pairs]
        scores = [min(a, b) for a, b in zip(scores, found)]
    return scores


# ---- steps 5-8 helpers -------------------------------------------------------------------------


def _dedup(rows: list[list[str]], key_index: list[int]) -> list[list[str]]:
    """Step 5: the first row of every key kept. Exact duplicate keys in a response are forgiven:
    they leave the table before P is counted (official behaviour)."""
    seen, kept = set(), []
    for row in rows:
        key = tuple(row[i] for i in key_index)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _preprocess(rows: list[list[str]], index: int, names: list[str]) -> None:
    for name in names:
        apply, memo = PREPROCESS[name], {}
        for row in rows:
            cell = row[index]
            if cell not in memo:
                memo[cell] = apply(cell)
            row[index] = memo[cell]


def _join(response: list[list[str]], gold: list[list[str]], key_index: list[int]) -> list[tuple[int, int]]:
    """Step 8: inner join on all key columns, as (response row, gold row) pairs.
    Divergence: each gold row is matched at most once (the first response row with its key takes
    it) and each response row at most once. The official merge pairs every combination, so two
    response keys aligned onto one gold key both count and recall/F1 can pass 1."""
    waiting: dict[tuple, deque[int]] = {}
    for g, row in enumerate(gold):
        waiting.setdefault(tuple(row[i] for i in key_index), deque()).append(g)
    pairs = []
    for r, row in enumerate(response):
        queue = waiting.get(tuple(row[i] for i in key_index))
        if queue:
            pairs.append((r, queue.popleft()))
    return pairs


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > F1_EPSILON else 0.0


# ---- the protocol ------------------------------------------------------------------------------


def score_response(response: str, task: GoldTask, judge: Judge) -> TrialScore:
    """Steps 1-11 for one response. Judge failures give a judge_error trial, never a silent 0.
    A QA task (is_table false: a WideSeek-R1 deep-QA record) is scored by its boxed answer (qa.py)."""
    if not isinstance(response, str):  # a runner's record can hold anything: no text, nothing to score
        return TrialScore(reason=f"response is not text ({type(response).__name__})", gold_rows=len(task.gold_rows))
    if not getattr(task, "is_table", True):
        return score_qa(response, task.query, task.answer_text, judge)
    rules = _column_rules(task)
    gold = _gold_table(task)  # step 1
    table, why = extract_table(response)  # step 2
    if table is None:
        return TrialScore(reason=why, gold_rows=len(gold.rows))
    try:
        return _score_table(table, gold, task, rules, judge)
    except JudgeError as exc:
        return TrialScore(reason=f"judge error: {exc}", judge_error=True, gold_rows=len(gold.rows))


def _score_table(table: Table, gold: Table, task: GoldTask, rules: dict[str, ColumnRule], judge: Judge) -> TrialScore:
    required = task.required
    stop = TrialScore(gold_rows=len(gold.rows), response_rows=len(table.rows))

    # Step 3: column names; one judge call when the sets differ. Still different afterwards: a
    # missing column or an extra one (quirk: even a harmless extra column) zeroes everything.
    columns = mangle_duplicates([normalize_column(column) for column in table.columns])
    if set(columns) != set(required):
        mapping = judge.align_columns(columns, list(required))
        columns = [mapping.get(column, column) for column in columns]
    missing = [column for column in required if column not in columns]
    extra = [column for column in _unique(columns) if column not in required]
    doubled = [column for column in _unique(columns) if columns.count(column) > 1]
    problems = [f"missing column: {c}" for c in missing] + [f"extra column: {c}" for c in extra]
    problems += [f"duplicate column: {c}" for c in doubled]
    if problems:
        stop.reason = "; ".join(problems)
        return stop
    if not table.rows:
        # Divergence: the official scorer crashes on a header-only table (scoring 0); same zeros here.
        stop.reason = "no rows (header-only table)"
        return stop

    # Step 4: column typing, int against float as floats; afterwards every cell is a string.
    position = {column: columns.index(column) for column in required}
    response_columns, gold_columns = [], []
    for j, column in enumerate(required):
        mine, theirs = harmonise([row[position[column]] for row in table.rows], [row[j] for row in gold.rows])
        response_columns.append(mine)
        gold_columns.append(theirs)
    response_rows = [list(cells) for cells in zip(*response_columns)]
    gold_rows = [list(cells) for cells in zip(*gold_columns)]

    # Step 5: duplicates on the key columns dropped, the first kept.
    key_index = [required.index(column) for column in task.unique_columns]
    response_rows, gold_rows = _dedup(response_rows, key_index), _dedup(gold_rows, key_index)
    n_response, n_gold, n_columns = len(response_rows), len(gold_rows), len(required)

    # Step 6: key alignment, ONE judge call per key column compared by exact_match or llm_judge;
    # response values the judge maps are replaced by their gold value, the others kept.
    for i in key_index:
        if any(metric in ALIGNED_KEY_METRICS for metric in rules[required[i]].metrics) and gold_rows:
            mapping = judge.align_keys(
                required[i], _unique([row[i] for row in response_rows]), _unique([row[i] for row in gold_rows])
            )
            for row in response_rows:
                row[i] = mapping.get(row[i], row[i])

    # Step 7: every column's preprocess functions, in order, on both sides.
    for j, column in enumerate(required):
        _preprocess(response_rows, j, rules[column].preprocess)
        _preprocess(gold_rows, j, rules[column].preprocess)

    # Step 11, its first half: the whole table equals the gold, read before the join (see _equal_tables).
    equal = _equal_tables(response_rows, gold_rows, columns, required, task.unique_columns, rules)

    # Step 8: inner join on the key columns.
    pairs = _join(response_rows, gold_rows, key_index)
    if not pairs:
        # Divergence: the official merge of nothing crashes (scoring 0); same zeros, with the reason.
        return TrialScore(reason="empty join: no response row matched a gold key",
                          response_rows=n_response, gold_rows=n_gold)

    # Step 9: cell scores; key cells score 1.
    cell_scores = []
    for j, column in enumerate(required):
        if j in key_index:
            cell_scores.append([1.0] * len(pairs))
        else:
            cells = [(response_rows[r][j], gold_rows[g][j]) for r, g in pairs]
            cell_scores.append(_column_scores(column, rules[column], cells, judge))

    # Step 10: a row earns the minimum of its cells; items are all cells, key cells included.
    row_credits = [min(cells) for cells in zip(*cell_scores)]
    tp_row, tp_item = math.fsum(row_credits), math.fsum(math.fsum(scores) for scores in cell_scores)
    row_precision, row_recall = tp_row / n_response, (tp_row / n_gold if n_gold else 0.0)
    item_precision = tp_item / (n_response * n_columns)
    item_recall = tp_item / (n_gold * n_columns) if n_gold else 0.0
    score = TrialScore(
        item_precision=item_precision,
        item_recall=item_recall,
        item_f1=_f1(item_precision, item_recall),
        row_precision=row_precision,
        row_recall=row_recall,
        row_f1=_f1(row_precision, row_recall),
        response_rows=n_response,
        gold_rows=n_gold,
        matched_rows=len(pairs),
    )
    # Step 11: success when the tables are equal, or when all six precision/recall/F1 values are 1.
    six = (score.item_precision, score.item_recall, score.item_f1, score.row_precision, score.row_recall, score.row_f1)
    score.success = 1.0 if equal or all(value == 1.0 for value in six) else 0.0
    return score


def _equal_tables(response_rows: list[list[str]], gold_rows: list[list[str]], columns: list[str], required: list[str],
                  unique_columns: list[str], rules: dict[str, ColumnRule]) -> bool:
    """The official scorer's first success test: both tables (deduplicated, aligned, preprocessed) sorted
    by the required columns are equal, cell for cell and case included. Its quirks, kept: the response's
    columns must be in the gold's order (the required order), since the frames' labels are compared too;
    and a key column the judge aligned (exact_match or llm_judge) leaves an extra `<key>_before_map`
    column in the response frame, so then the shapes differ and only the six values can make a success.
    It can succeed where the six do not: identical cells that their metric scores 0 ("nan" against "nan"
    under number_near, a judge that fails an identical pair)."""
    aligned = any(metric in ALIGNED_KEY_METRICS for column in unique_columns for metric in rules[column].metrics)
    if aligned or columns != required or len(response_rows) != len(gold_rows):
        return False
    return sorted(response_rows) == sorted(gold_rows)


def score_task_trials(responses: Sequence[str | None], task: GoldTask, judge: Judge) -> list[TrialScore]:
    """One TrialScore per trial; None (a failed rollout, no final answer) scores 0, "no response"."""
    return [
        TrialScore(reason="no response", gold_rows=len(task.gold_rows)) if response is None
        else score_response(response, task, judge)
        for response in responses
    ]
