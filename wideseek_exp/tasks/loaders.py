"""Task sets from every data layout we use, as TaskRecords.

Record layouts, told apart per record by their fields:
  WideSeek-R1   has `question`: answer (a markdown table when is_markdown, else a QA answer string),
                is_markdown, unique_columns, optional evaluation (dict or JSON string), instance_id,
                language. Train and test files of RLinf/WideSeek-R1-*-data.
  ours          has `answer` (markdown) and `query`: TaskRecord.to_json, as task=build writes the
                mini-web tasks (always this layout for data=miniweb).
  WideSearch    the official benchmark: instance_id, query, language, evaluation (a JSON string);
                its gold table is a CSV file, <gold_dir>/<instance_id>.csv.
Containers, told apart by suffix or folder contents: .jsonl, .json (a list, or JSON lines),
.parquet, or a folder written by `datasets` save_to_disk (a Dataset, or a DatasetDict by split).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from wideseek_exp import WideseekError
from wideseek_exp.scoring.table import read_gold_csv
from wideseek_exp.tasks.record import TaskRecord, normalize_column, parse_markdown_table

log = logging.getLogger(__name__)

DATA_NAMES = ("miniweb", "widesearch", "wideseek_train")
GOLD_DIR_NAME = "widesearch_gold"
# save_to_disk writes dataset_dict.json for a DatasetDict and state.json for a single Dataset.
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")

# WideSeek-R1 records may carry no eval_pipeline (its training data states only the required
# columns). Their columns are free text from tables, so by default a column is compared as a
# normalised string through the judge, with the generic criterion the official WideSearch tasks
# give their free-text columns. The offline `exact` judge reads llm_judge as normalised equality.
GENERIC_CRITERION = (
    "It is sufficient if the semantics are approximately the same as the reference answer or if they point to "
    "the same entity. There is no need for a word-for-word correspondence."
)


def default_column_pipeline() -> dict:
    return {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": GENERIC_CRITERION}


class MalformedRecord(ValueError):
    """A record that cannot become a task; the message says why."""


class Skipped(NamedTuple):
    file: str
    location: str  # "line 3" (1-based) in text files, "row 2" (0-based) in parquet and datasets
    reason: str


class TaskSet(list[TaskRecord]):
    """The tasks of one split (a plain list of TaskRecord), with the file they came from and the
    records skipped as malformed under on_error=skip."""

    def __init__(self, tasks: list[TaskRecord], source: Path, skipped: list[Skipped]):
        super().__init__(tasks)
        self.source = source
        self.skipped = skipped


def load_task_set(data_cfg, split: str | None = None) -> TaskSet:
    """The tasks of `split` (default data_cfg.split), in file order, the first data_cfg.limit kept."""
    split = split or data_cfg.split
    if data_cfg.name not in DATA_NAMES:
        raise WideseekError(f"unknown data.name {data_cfg.name!r} (known: {', '.join(DATA_NAMES)})")
    source = _split_source(data_cfg, split)
    root = Path(data_cfg.path) if Path(data_cfg.path).is_dir() else source.parent
    gold_dir = Path(data_cfg.gold_dir) if data_cfg.gold_dir else root / GOLD_DIR_NAME
    sources = [source]
    if split == "train":  # released training files of the same layout join the train split (a mix)
        sources += [_extra_source(Path(extra), data_cfg) for extra in (getattr(data_cfg, "extra_train", None) or [])]

    tasks: list[TaskRecord] = []
    skipped: list[Skipped] = []
    malformed: list[tuple[str, str]] = []  # on_error=fail: (where, reason) of every malformed record
    seen_ids: set[str] = set()
    for one_source in sources:
        for location, item in _read_items(one_source, split):
            record = None
            try:
                record = _decode(item)
                task = _parse_record(data_cfg.name, record, gold_dir)
                if task.instance_id in seen_ids:
                    raise MalformedRecord("duplicate instance_id")
            except (MalformedRecord, KeyError, TypeError, ValueError, AttributeError) as exc:
                instance_id = record.get("instance_id") if isinstance(record, dict) else None
                where = f"{one_source} {location}" + (f" (instance_id {instance_id})" if instance_id is not None else "")
                reason = " ".join(_reason(exc).split())  # one line, whatever the exception text held
                if data_cfg.on_error != "skip":
                    malformed.append((where, reason))
                    continue
                log.warning("skipping malformed task in %s: %s", where, reason)
                skipped.append(Skipped(str(one_source), location, reason))
                continue
            seen_ids.add(task.instance_id)
            tasks.append(task)

    if malformed:
        raise WideseekError(malformed_report(malformed))
    if skipped:
        log.warning("skipped %d malformed task record(s) in %s, kept %d", len(skipped), source, len(tasks))
    if not tasks:
        raise WideseekError(f"no usable tasks in {source} ({len(skipped)} malformed records skipped)")
    if data_cfg.limit is not None:
        tasks = tasks[: data_cfg.limit]
    return TaskSet(tasks, source, skipped)


SHOWN_MALFORMED = 5  # records a failure report spells out; the rest it counts


def malformed_report(entries: list[tuple[str, str]]) -> str:
    """One line for every malformed record (where, reason): the first few with their reasons, then where
    the others are."""
    if len(entries) == 1:
        return f"malformed task in {entries[0][0]}: {entries[0][1]}"
    shown = "; ".join(f"{where}: {reason}" for where, reason in entries[:SHOWN_MALFORMED])
    rest = [where for where, _ in entries[SHOWN_MALFORMED:]]
    more = f"; and {len(rest)} more, in {', '.join(rest)}" if rest else ""
    return f"{len(entries)} malformed task records (data.on_error=skip keeps the rest): in {shown}{more}"


# ---- where the records are -------------------------------------------------------------------


def _missing(path: Path, data_name: str) -> WideseekError:
    """A missing folder of splits, or a split file missing from its folder: the mini-web's are task=build's."""
    hint = " (run `python run.py task=build` first)" if data_name == "miniweb" else ""
    return WideseekError(f"task data not found: {path}{hint}")


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in SAVED_DATASET_MARKERS)


def _split_source(data_cfg, split: str) -> Path:
    """The file (or saved-datasets folder) holding `split`."""
    if not data_cfg.path:
        raise WideseekError("data.path is not set")
    path = Path(data_cfg.path)
    if not path.exists() and path.suffix:  # a file the user named, not a folder of splits a build makes
        raise WideseekError(f"config key 'data.path': the file {path} does not exist")
    if not path.exists():
        raise _missing(path, data_cfg.name)
    if path.is_file() or _is_saved_dataset(path):
        return path  # one file, or a DatasetDict that picks the split itself
    split_files = {"train": data_cfg.train_file, "test": data_cfg.test_file}
    if split not in split_files:
        raise WideseekError(f"split {split!r} is not train or test, the splits a folder of task files has: {path}")
    source = path / split_files[split]
    if not source.exists():
        raise _missing(source, data_cfg.name)
    return source


def _extra_source(path: Path, data_cfg) -> Path:
    """A data.extra_train entry: a task file, a saved dataset, or a folder holding data.train_file."""
    if not path.exists():
        raise WideseekError(f"data.extra_train: {path} does not exist")
    if path.is_file() or _is_saved_dataset(path):
        return path
    if not (path / data_cfg.train_file).is_file():
        raise WideseekError(f"data.extra_train: folder {path} has no {data_cfg.train_file}")
    return path / data_cfg.train_file


def _read_items(source: Path, split: str) -> Iterator[tuple[str, object]]:
    """(location, record) pairs; a text-file record is its raw line, decoded later so that a bad
    line is one malformed record rather than an unreadable file."""
    if source.is_dir():
        yield from _saved_dataset_rows(source, split)
        return
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(source)
        return
    if suffix not in (".jsonl", ".json"):
        raise WideseekError(f"unsupported task file {source} (expected .jsonl, .json, .parquet or a datasets folder)")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise WideseekError(f"cannot read task file {source}: {exc}") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WideseekError(f"task file {source} is not valid JSON: {exc}") from None
        yield from ((f"item {index}", item) for index, item in enumerate(items))
        return
    # JSON lines (a .json file that is not one list is read as JSON lines, as `datasets` does)
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"line {number}", line


def _parquet_rows(source: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(source).to_pylist()
    except (OSError, ValueError) as exc:
        raise WideseekError(f"cannot read parquet task file {source}: {exc}") from None
    yield from ((f"row {index}", row) for index, row in enumerate(rows))


def _saved_dataset_rows(folder: Path, split: str) -> Iterator[tuple[str, dict]]:
    import datasets  # imported only here: it takes seconds

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as exc:
        raise WideseekError(f"cannot load the saved dataset {folder}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise WideseekError(f"saved dataset {folder} has no split {split!r} (it has: {', '.join(loaded)})")
        loaded = loaded[split]
    yield from ((f"row {index}", row) for index, row in enumerate(loaded))


# ---- one record ------------------------------------------------------------------------------


def _decode(item: object) -> object:
    if not isinstance(item, str):
        return item
    try:
        return json.loads(item)
    except json.JSONDecodeError as exc:
        raise MalformedRecord(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, ValueError):  # MalformedRecord and parse_markdown_table say what is wrong
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _parse_record(data_name: str, record: object, gold_dir: Path) -> TaskRecord:
    if not isinstance(record, dict):
        raise MalformedRecord("not a JSON object")
    if "question" in record:
        task = _from_wideseek_r1(record)
    elif data_name == "miniweb" or "answer" in record:
        # Our own layout: the parser miniweb.load_tasks uses, with evaluation checked first.
        task = TaskRecord.from_json({**record, "evaluation": _evaluation(record["evaluation"])})
    else:
        task = _from_widesearch(record, gold_dir)
    if not isinstance(task.query, str) or not task.query.strip():
        raise MalformedRecord("empty query")
    if task.is_table:
        _check_table(task)
    return task


def _evaluation(value: object) -> dict:
    """The evaluation field as a dict: None (absent), a JSON string, or a dict."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise MalformedRecord(f"evaluation is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise MalformedRecord("evaluation is not a JSON object")
    evaluation = dict(value)
    if evaluation.get("eval_pipeline") is not None:
        # Arrow (parquet, datasets) keeps a dict column as one struct over all rows: a row comes
        # back with the other rows' columns and options set to None. Drop those.
        evaluation["eval_pipeline"] = {
            column: {option: setting for option, setting in spec.items() if setting is not None}
            for column, spec in evaluation["eval_pipeline"].items()
            if spec is not None
        }
    return evaluation


def _table_task(
    record: dict, query: str, evaluation: dict, unique_columns: list, required: list, gold: tuple[list, list]
) -> TaskRecord:
    """A table task; columns without a pipeline of their own get the default one."""
    if not isinstance(unique_columns, list) or not isinstance(required, list):
        raise MalformedRecord("unique_columns and required must be lists of column names")
    required = [normalize_column(column) for column in required]
    given = {normalize_column(column): spec for column, spec in (evaluation.get("eval_pipeline") or {}).items()}
    return TaskRecord(
        instance_id=str(record["instance_id"]),
        query=query,
        language=str(record.get("language") or "en"),
        unique_columns=[normalize_column(column) for column in unique_columns],
        required=required,
        eval_pipeline={column: given.get(column) or default_column_pipeline() for column in required},
        gold_columns=gold[0],
        gold_rows=gold[1],
    )


def _from_widesearch(record: dict, gold_dir: Path) -> TaskRecord:
    evaluation = _evaluation(record["evaluation"])
    for key in ("unique_columns", "required"):
        if key not in evaluation:
            raise MalformedRecord(f"evaluation has no {key!r}")
    gold = _read_gold_csv(gold_dir / f"{record['instance_id']}.csv")
    return _table_task(record, record["query"], evaluation, evaluation["unique_columns"], evaluation["required"], gold)


def _from_wideseek_r1(record: dict) -> TaskRecord:
    answer, is_markdown = record["answer"], record["is_markdown"]
    if is_markdown not in (True, False):
        raise MalformedRecord(f"is_markdown is {is_markdown!r}, not true or false")
    if not isinstance(answer, str):
        raise MalformedRecord("answer is not a string")
    if not is_markdown:
        return TaskRecord(
            instance_id=str(record["instance_id"]),
            query=record["question"],
            language=str(record.get("language") or "en"),
            unique_columns=[],
            required=[],
            eval_pipeline={},
            gold_columns=[],
            gold_rows=[],
            is_table=False,
            answer_text=answer,
        )
    evaluation = _evaluation(record.get("evaluation"))
    columns, rows = parse_markdown_table(answer)
    unique_columns = record.get("unique_columns") or evaluation.get("unique_columns") or []
    # Without `required`, every column of the gold table is asked for.
    required = evaluation.get("required") or columns
    return _table_task(record, record["question"], evaluation, unique_columns, required, (columns, rows))


def _read_gold_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an official gold table, every cell kept as the string it is."""
    try:
        table = read_gold_csv(path)
    except FileNotFoundError:
        raise MalformedRecord(f"no gold table {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(f"gold table {path}: {exc}") from None
    return table.columns, table.rows


def _check_table(task: TaskRecord) -> None:
    """What the scorer relies on: key columns among the required ones, and a gold table with rows
    and every required column."""
    if not task.unique_columns:
        raise MalformedRecord("no unique_columns")
    header = [normalize_column(column) for column in task.gold_columns]
    absent = [column for column in task.required if column not in header]
    if absent:
        raise MalformedRecord(f"gold table lacks required column(s) {', '.join(absent)}")
    stray = [column for column in task.unique_columns if column not in task.required]
    if stray:
        raise MalformedRecord(f"unique column(s) {', '.join(stray)} not among the required columns")
    if not task.gold_rows:
        raise MalformedRecord("gold table has no rows")
