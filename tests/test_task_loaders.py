"""Task-set loaders: every record layout and container, split files, limit, and malformed records
under both on_error modes. Every file is written into tmp_path; the official example records are copied
there from tests/fixtures/."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from wideseek_exp import WideseekError
from wideseek_exp.conf import DataConfig, OnError
from wideseek_exp.tasks.loaders import GENERIC_CRITERION, load_task_set
from wideseek_exp.tasks.record import TaskRecord, to_markdown_table

# The two example records of the WideSearch dataset card (tests/fixtures/README.md says where from).
OFFICIAL_EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "widesearch" / "widesearch_examples.jsonl"
BOM = "\ufeff"


def write_jsonl(path: Path, records: list) -> Path:
    """One line per record; a str is written as the raw line (for broken JSON and blank lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, text: str, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((BOM if bom else "") + text, encoding="utf-8")


def data_cfg(name: str, path: Path, **overrides) -> DataConfig:
    return DataConfig(name=name, path=str(path), **overrides)


# ---- official WideSearch layout ------------------------------------------------------------------


def official_record(instance_id: str, query: str = "List the capitals.") -> dict:
    evaluation = {
        "unique_columns": ["country"],
        "required": ["country", "capital"],
        "eval_pipeline": {
            "country": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
            "capital": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
        },
    }
    return {"instance_id": instance_id, "query": query, "evaluation": json.dumps(evaluation), "language": "en"}


def official_gold(folder: Path, instance_id: str) -> None:
    write_csv(folder / "widesearch_gold" / f"{instance_id}.csv", "Country,Capital\nFrance,Paris\nPeru,Lima\n")


@pytest.fixture
def official_examples(tmp_path):
    """The two published example records with small gold tables (the English one with a BOM)."""
    shutil.copy(OFFICIAL_EXAMPLES, tmp_path / "widesearch.jsonl")
    gold = tmp_path / "widesearch_gold"
    write_csv(
        gold / "ws_en_001.csv",
        "Subject,University,QS World University Rankings by Subject 2025,QS World University Rankings 2025,"
        "Times Higher Education  World University Rankings 2025,Home Page,Application Deadline,Application Fee\n"
        "Arts & Humanities,University of Oxford,1,3,1,https://www.ox.ac.uk/,October 15,£75\n"
        'Engineering & Technology,Massachusetts Institute of Technology,1,1,2,https://www.mit.edu/,January 5,"$75, $90"\n',
        bom=True,
    )
    write_csv(
        gold / "ws_zh_001.csv",
        "年份,国家,电影名,导演,本国累计票房收益,电影类型\n2023,中国,满江红,张艺谋,45.44,剧情\n2023,美国,芭比,格蕾塔·葛韦格,6.36,喜剧\n",
    )
    return tmp_path


def test_official_examples_load_with_gold_csv(official_examples):
    tasks = load_task_set(data_cfg("widesearch", official_examples, test_file="widesearch.jsonl"))
    english, chinese = tasks
    assert [t.instance_id for t in tasks] == ["ws_en_001", "ws_zh_001"]
    assert english.language == "en" and chinese.language == "zh"
    assert english.query.startswith("My son is about to start")
    # The BOM is not part of the first column name; cells stay strings, as written.
    assert english.gold_columns[0] == "Subject"
    assert english.gold_rows[1] == [
        "Engineering & Technology",
        "Massachusetts Institute of Technology",
        "1",
        "1",
        "2",
        "https://www.mit.edu/",
        "January 5",
        "$75, $90",
    ]
    assert english.unique_columns == ["subject", "university"]
    assert english.required[4] == "timeshighereducationworlduniversityrankings2025"
    assert english.eval_pipeline["homepage"] == {"preprocess": ["norm_str"], "metric": ["url_match"]}
    assert chinese.unique_columns == ["国家", "电影名"]
    assert chinese.eval_pipeline["本国累计票房收益"]["criterion"] == 0.1
    assert chinese.gold_rows[0][4] == "45.44"
    assert all(t.is_table and t.answer_text == "" for t in tasks)


def test_official_gold_dir_can_be_set(official_examples, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(official_examples / "widesearch_gold", moved)
    tasks = load_task_set(data_cfg("widesearch", official_examples / "widesearch.jsonl", gold_dir=str(moved)))
    assert len(tasks) == 2


# ---- WideSeek-R1 layout --------------------------------------------------------------------------


def r1_table_record(instance_id: str = "r1-table", evaluation: object = None) -> dict:
    record = {
        "instance_id": instance_id,
        "question": "Which countries border Peru? Give each capital.",
        "answer": "```markdown\n"
        + to_markdown_table(["Country", "Capital City"], [["Chile", "Santiago"], ["Bolivia", "Sucre"]])
        + "\n```",
        "is_markdown": True,
        "unique_columns": ["Country"],
        "language": "en",
    }
    if evaluation is not None:
        record["evaluation"] = evaluation
    return record


def r1_qa_record(instance_id: str = "r1-qa") -> dict:
    return {
        "instance_id": instance_id,
        "question": "What is the capital of France?",
        "answer": "\\boxed{Paris}",
        "is_markdown": False,
        "unique_columns": [],
        "language": "en",
    }


def r1_records() -> list[dict]:
    """A mix whose evaluation fields differ per record, as in the real data: none, required only, a
    partial eval_pipeline and a full one with criteria. The same records go into every container."""
    partial = {
        "required": ["country", "capitalcity"],
        "eval_pipeline": {"country": {"preprocess": ["norm_str"], "metric": ["exact_match"]}},
    }
    judged = {
        "eval_pipeline": {
            "country": {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": "Same country."},
            "capitalcity": {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": "Same city."},
        }
    }
    return [
        r1_table_record("r1-bare"),
        r1_qa_record("r1-qa"),
        r1_table_record("r1-required", {"required": ["Country", "Capital City"]}),
        r1_table_record("r1-partial", partial),
        r1_table_record("r1-judged", judged),
    ]


def test_wideseek_r1_table_and_qa_records(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", r1_records())
    tasks = {t.instance_id: t for t in load_task_set(data_cfg("wideseek_train", tmp_path, split="test"))}

    bare = tasks["r1-bare"]
    assert bare.query.startswith("Which countries border Peru?")
    assert bare.gold_columns == ["Country", "Capital City"]
    assert bare.gold_rows == [["Chile", "Santiago"], ["Bolivia", "Sucre"]]
    # No `required`: the normalised gold header; no pipeline: the documented default per column.
    assert bare.required == ["country", "capitalcity"]
    assert bare.unique_columns == ["country"]
    default = {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": GENERIC_CRITERION}
    assert bare.eval_pipeline == {"country": default, "capitalcity": default}

    assert tasks["r1-required"].required == ["country", "capitalcity"]
    partial = tasks["r1-partial"].eval_pipeline
    assert partial["country"] == {"preprocess": ["norm_str"], "metric": ["exact_match"]}
    assert partial["capitalcity"] == default
    assert tasks["r1-judged"].eval_pipeline["capitalcity"]["criterion"] == "Same city."

    qa = tasks["r1-qa"]
    assert not qa.is_table and qa.answer_text == "\\boxed{Paris}"
    assert qa.gold_columns == [] and qa.required == []


def test_wideseek_r1_test_file_loads_as_widesearch(tmp_path):
    # The WideSeek-R1 test set carries the WideSearch tasks: data=widesearch reads it too.
    write_jsonl(tmp_path / "test.jsonl", [r1_table_record("ws_en_001", json.dumps({"required": ["country"]}))])
    (task,) = load_task_set(data_cfg("widesearch", tmp_path / "test.jsonl"))
    assert task.required == ["country"] and task.gold_columns == ["Country", "Capital City"]


# ---- containers ------------------------------------------------------------------------------------


def save_json_list(folder: Path, records: list[dict]) -> Path:
    path = folder / "tasks.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def as_table_rows(records: list[dict]) -> list[dict]:
    """Every record with every field (None where absent), as a table export has them: pyarrow takes
    the field names from the first record alone."""
    fields = list(dict.fromkeys(key for record in records for key in record))
    return [{key: record.get(key) for key in fields} for record in records]


def save_parquet(folder: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist(as_table_rows(records)), path)
    return path


def save_dataset(folder: Path, records: list[dict]) -> Path:
    import datasets

    path = folder / "saved_dataset"
    datasets.Dataset.from_list(as_table_rows(records)).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("save", [save_json_list, save_parquet, save_dataset])
def test_containers_give_the_same_tasks_as_jsonl(tmp_path, save):
    records = r1_records()
    expected = load_task_set(data_cfg("wideseek_train", write_jsonl(tmp_path / "tasks.jsonl", records)))
    # Arrow gives each row the union of all rows' evaluation keys (as None): they must not leak.
    assert load_task_set(data_cfg("wideseek_train", save(tmp_path, records))) == expected


def test_saved_dataset_dict_selects_the_split(tmp_path):
    import datasets

    splits = {"train": [r1_table_record("train-1"), r1_table_record("train-2")], "test": [r1_qa_record("test-1")]}
    folder = tmp_path / "saved"
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(folder)
    cfg = data_cfg("wideseek_train", folder, split="train")
    assert [t.instance_id for t in load_task_set(cfg)] == ["train-1", "train-2"]
    assert [t.instance_id for t in load_task_set(cfg, split="test")] == ["test-1"]
    with pytest.raises(WideseekError, match=r"no split 'validation' \(it has: train, test\)"):
        load_task_set(cfg, split="validation")


def test_parquet_malformed_row_is_named_by_index(tmp_path):
    records = [r1_table_record("good"), {**r1_table_record("broken"), "answer": "no table here"}]
    path = save_parquet(tmp_path, records)
    with pytest.raises(WideseekError, match=r"tasks\.parquet row 1 \(instance_id broken\): no markdown table"):
        load_task_set(data_cfg("wideseek_train", path))


def test_unsupported_file_type(tmp_path):
    (tmp_path / "tasks.csv").write_text("a,b\n")
    with pytest.raises(WideseekError, match="unsupported task file"):
        load_task_set(data_cfg("widesearch", tmp_path / "tasks.csv"))


# ---- split files and limit -----------------------------------------------------------------------


def test_split_files_of_a_folder_and_limit(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [r1_table_record(f"train-{i}") for i in range(5)])
    write_jsonl(tmp_path / "test.jsonl", [r1_table_record(f"test-{i}") for i in range(3)])
    cfg = data_cfg("wideseek_train", tmp_path, split="train")
    assert [t.instance_id for t in load_task_set(cfg)] == [f"train-{i}" for i in range(5)]
    assert [t.instance_id for t in load_task_set(cfg, split="test")] == ["test-0", "test-1", "test-2"]
    limited = data_cfg("wideseek_train", tmp_path, split="train", limit=2)
    assert [t.instance_id for t in load_task_set(limited)] == ["train-0", "train-1"]
    with pytest.raises(WideseekError, match="not train or test"):
        load_task_set(cfg, split="validation")


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(WideseekError, match=r"nowhere.*python run\.py task=build"):
        load_task_set(data_cfg("miniweb", tmp_path / "nowhere"))
    with pytest.raises(WideseekError, match="widesearch.jsonl") as error:
        load_task_set(data_cfg("widesearch", tmp_path, test_file="widesearch.jsonl"))
    assert "task=build" not in str(error.value)


# ---- our mini-web layout --------------------------------------------------------------------------


def miniweb_task(instance_id: str, split: str) -> TaskRecord:
    return TaskRecord(
        instance_id=instance_id,
        query="List the elements of period 1 with their symbols.",
        language="en",
        unique_columns=["element"],
        required=["element", "symbol"],
        eval_pipeline={
            column: {"preprocess": ["norm_str"], "metric": ["exact_match"]} for column in ("element", "symbol")
        },
        gold_columns=["Element", "Symbol"],
        gold_rows=[["Hydrogen", "H"], ["Helium", "He"]],
        meta={"family": "elements_by_position", "entity_set": "period-1", "split": split},
    )


def test_miniweb_layout_round_trips(tmp_path):
    by_split = {
        split: [miniweb_task(f"miniweb-{split}-{i:04d}", split) for i in range(2)] for split in ("train", "test")
    }
    for split, tasks in by_split.items():
        write_jsonl(tmp_path / f"{split}.jsonl", [task.to_json() for task in tasks])
    assert load_task_set(data_cfg("miniweb", tmp_path)) == by_split["test"]
    assert load_task_set(data_cfg("miniweb", tmp_path), split="train") == by_split["train"]


# ---- malformed records -----------------------------------------------------------------------------


def malformed_official_file(folder: Path, case: str) -> tuple[Path, str | None, str]:
    """widesearch.jsonl with good records on lines 1, 2 and 5, a blank line 4 and the broken record of
    `case` on line 3. Returns the file, the broken record's instance_id (None when unreadable) and a
    fragment of the expected reason."""
    broken_id = "ws-broken"
    broken: object = official_record(broken_id)
    reason = ""
    if case == "bad json":
        broken, broken_id, reason = '{"instance_id": "ws-broken", "query": ', None, "not valid JSON"
    elif case == "missing field":
        del broken["query"]
        reason = "missing field 'query'"
    elif case == "evaluation not json":
        broken["evaluation"] = "{unique_columns: country"
        reason = "evaluation is not valid JSON"
    elif case == "missing gold csv":
        reason = "no gold table"
    elif case == "duplicate id":
        broken, broken_id, reason = official_record("ws-1"), "ws-1", "duplicate instance_id"
    for instance_id in ("ws-1", "ws-2", "ws-5", "ws-broken"):
        if case != "missing gold csv" or instance_id != "ws-broken":
            official_gold(folder, instance_id)
    path = write_jsonl(
        folder / "widesearch.jsonl",
        [official_record("ws-1"), official_record("ws-2"), broken, "", official_record("ws-5")],
    )
    return path, broken_id, reason


MALFORMED_CASES = ["bad json", "missing field", "evaluation not json", "missing gold csv", "duplicate id"]


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_malformed_record_fails_naming_file_line_and_id(tmp_path, case):
    path, broken_id, reason = malformed_official_file(tmp_path, case)
    with pytest.raises(WideseekError) as error:
        load_task_set(data_cfg("widesearch", path, on_error=OnError.fail))
    message = str(error.value)
    assert "\n" not in message
    assert f"{path} line 3" in message and reason in message
    if broken_id is not None:
        assert f"instance_id {broken_id}" in message


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_malformed_record_is_skipped_and_reported(tmp_path, case, caplog):
    path, broken_id, reason = malformed_official_file(tmp_path, case)
    with caplog.at_level(logging.WARNING, logger="wideseek_exp.tasks.loaders"):
        tasks = load_task_set(data_cfg("widesearch", path, on_error=OnError.skip))
    assert [t.instance_id for t in tasks] == ["ws-1", "ws-2", "ws-5"]
    ((file, location, skipped_reason),) = tasks.skipped
    assert (file, location) == (str(path), "line 3") and reason in skipped_reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "line 3" in warnings[0] and (broken_id is None or broken_id in warnings[0])
    assert "skipped 1 malformed task record(s)" in warnings[1]


def test_wideseek_r1_missing_field_and_bad_table(tmp_path):
    no_flag = {k: v for k, v in r1_table_record("no-flag").items() if k != "is_markdown"}
    ragged = {**r1_table_record("ragged"), "answer": "| A | B |\n| --- | --- |\n| 1 |\n"}
    path = write_jsonl(tmp_path / "test.jsonl", [r1_table_record("ok"), no_flag, ragged])
    with pytest.raises(WideseekError, match=r"line 2 \(instance_id no-flag\): missing field 'is_markdown'"):
        load_task_set(data_cfg("wideseek_train", path))
    tasks = load_task_set(data_cfg("wideseek_train", path, on_error=OnError.skip))
    assert [t.instance_id for t in tasks] == ["ok"]
    assert [(s.location, s.reason) for s in tasks.skipped] == [
        ("line 2", "missing field 'is_markdown'"),
        ("line 3", "row 1 has 1 cells, the header has 2"),
    ]


def test_nothing_usable_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ["not json", ""])
    with pytest.raises(WideseekError, match="no usable tasks"):
        load_task_set(data_cfg("wideseek_train", path, on_error=OnError.skip))


def test_extra_train_files_join_the_train_split_only(tmp_path):
    ours, released = tmp_path / "ours", tmp_path / "released"
    ours.mkdir()
    released.mkdir()
    write_jsonl(ours / "train.jsonl", [r1_table_record("synth-1")])
    write_jsonl(ours / "test.jsonl", [r1_table_record("synth-test")])
    write_jsonl(released / "depth.jsonl", [r1_qa_record("depth-1")])
    write_jsonl(released / "train.jsonl", [r1_table_record("width-1")])
    cfg = data_cfg("wideseek_train", ours, extra_train=[str(released / "depth.jsonl"), str(released)])
    train = load_task_set(cfg, "train")
    assert [t.instance_id for t in train] == ["synth-1", "depth-1", "width-1"]
    assert [t.is_table for t in train] == [True, False, True]
    assert [t.instance_id for t in load_task_set(cfg, "test")] == ["synth-test"]

    with pytest.raises(WideseekError, match="duplicate instance_id"):
        load_task_set(data_cfg("wideseek_train", ours, extra_train=[str(ours / "train.jsonl")]), "train")
    with pytest.raises(WideseekError, match="data.extra_train: .*missing.jsonl does not exist"):
        load_task_set(data_cfg("wideseek_train", ours, extra_train=[str(tmp_path / "missing.jsonl")]), "train")


def test_a_task_file_that_does_not_exist_names_the_key_not_the_build(tmp_path):
    for name in ("miniweb", "widesearch", "wideseek_train"):
        with pytest.raises(WideseekError) as error:
            load_task_set(data_cfg(name, tmp_path / "nonexistent.jsonl"))
        message = str(error.value)
        assert "data.path" in message and "nonexistent.jsonl does not exist" in message
        assert "task=build" not in message


def test_every_malformed_record_is_reported_with_its_line(tmp_path):
    good = [r1_table_record(f"ok-{i}") for i in range(3)]
    broken = ["not json", {"question": "no answer"}, "{", "[1, 2"]
    path = write_jsonl(tmp_path / "test.jsonl", [good[0], broken[0], good[1], broken[1], broken[2], good[2], broken[3]])
    with pytest.raises(WideseekError) as error:
        load_task_set(data_cfg("wideseek_train", path, on_error=OnError.fail))
    message = str(error.value)
    assert "\n" not in message and message.startswith("4 malformed task records")
    for line in (2, 4, 5, 7):
        assert f"{path} line {line}" in message


def test_past_a_few_malformed_records_the_report_counts_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [r1_table_record("ok")] + ["not json"] * 8)
    with pytest.raises(WideseekError) as error:
        load_task_set(data_cfg("wideseek_train", path))
    message = str(error.value)
    assert message.startswith("8 malformed task records")
    assert message.count("not valid JSON") == 5  # the first five with their reasons
    assert message.endswith(f"; and 3 more, in {path} line 7, {path} line 8, {path} line 9")
