"""Broad tasks over the mini-web: sound gold tables, a clean split, and answerable from the corpus."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from wideseek_exp import REPO_ROOT, WideseekError
from wideseek_exp.search.miniweb import BASE_URL, build_corpus, load_page_records
from wideseek_exp.tasks.miniweb import MAX_ROWS, MIN_ROWS, build_tasks, load_tasks
from wideseek_exp.tasks.record import TaskRecord, normalize_column, parse_markdown_table, to_markdown_table

LINK_PATTERN = re.compile(r"\[((?:\\.|[^\]\\])+)\]\((https://miniweb\.local/[^)\s]+)\)")
KNOWN_PREPROCESS = {"norm_str", "extract_number", "norm_date"}
KNOWN_METRICS = {"exact_match", "number_near", "date_near"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniweb")
    build_corpus(root / "corpus")
    result = build_tasks(root / "tasks", seed=0)
    pages = {r["url"]: r for r in load_page_records(root / "corpus")}
    return {
        "root": root,
        "dir": root / "tasks",
        "result": result,
        "pages": pages,
        "train": load_tasks(root / "tasks" / "train.jsonl"),
        "test": load_tasks(root / "tasks" / "test.jsonl"),
    }


def all_tasks(built) -> list[TaskRecord]:
    return built["train"] + built["test"]


def list_members(list_text: str) -> dict[str, str]:
    """url -> anchor for the member links of a list page (before its "Related lists")."""
    members_part = list_text.split("\nRelated lists\n")[0]
    return {url: anchor.replace("\\[", "[").replace("\\]", "]") for anchor, url in LINK_PATTERN.findall(members_part)}


def test_counts_and_card(built):
    train, test = built["train"], built["test"]
    assert 400 <= len(train) <= 700
    assert 100 <= len(test) <= 200
    card = json.loads((built["dir"] / "card.json").read_text())
    assert card["seed"] == 0
    assert card["counts"] == {"train": len(train), "test": len(test)}
    assert built["result"].counts["train"] == len(train)
    families = Counter(t.meta["family"] for t in all_tasks(built))
    assert len(families) >= 8
    assert {f: c["train"] + c["test"] for f, c in card["families"].items()} == dict(families)
    for family, counts in card["families"].items():
        assert counts["test"] >= 1, f"{family} has no test task"
    for split in ("train", "test"):
        assert sum(card["row_histogram"][split].values()) == card["counts"][split]


def test_split_is_disjoint_on_family_and_entity_set(built):
    train_sets = {(t.meta["family"], t.meta["entity_set"]) for t in built["train"]}
    test_sets = {(t.meta["family"], t.meta["entity_set"]) for t in built["test"]}
    assert train_sets and test_sets
    assert not train_sets & test_sets
    assert all(t.meta["split"] == "train" for t in built["train"])
    assert all(t.meta["split"] == "test" for t in built["test"])
    ids = [t.instance_id for t in all_tasks(built)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"miniweb-(train|test)-\d{4}", i) for i in ids)


def test_tables_have_bounded_rows_and_full_cells(built):
    for task in all_tasks(built):
        assert MIN_ROWS <= len(task.gold_rows) <= MAX_ROWS, task.instance_id
        assert len(task.gold_columns) >= 3
        keys = [row[0] for row in task.gold_rows]
        assert len(keys) == len(set(keys)), f"{task.instance_id}: duplicate key"
        for row in task.gold_rows:
            assert len(row) == len(task.gold_columns)
            assert all(cell.strip() for cell in row), f"{task.instance_id}: empty cell in {row}"


def test_evaluation_follows_the_widesearch_layout(built):
    for task in all_tasks(built):
        assert task.required == [normalize_column(c) for c in task.gold_columns]
        assert set(task.eval_pipeline) == set(task.required), task.instance_id
        assert task.unique_columns and set(task.unique_columns) <= set(task.required)
        for column, spec in task.eval_pipeline.items():
            assert set(spec["preprocess"]) <= KNOWN_PREPROCESS
            assert set(spec["metric"]) <= KNOWN_METRICS
            if "number_near" in spec["metric"]:
                assert spec["preprocess"] == ["extract_number"]
                assert 0 < spec["criterion"] < 1, (task.instance_id, column)
            else:
                assert "criterion" not in spec
    raw = json.loads((built["dir"] / "train.jsonl").read_text().splitlines()[0])
    assert set(raw) == {"instance_id", "query", "language", "evaluation", "answer", "family", "entity_set", "split"}
    assert isinstance(raw["evaluation"], str) and raw["language"] == "en"
    assert set(json.loads(raw["evaluation"])) == {"unique_columns", "required", "eval_pipeline"}


def test_queries_name_their_columns_and_ask_for_one_markdown_table(built):
    for task in all_tasks(built):
        header = "| " + " | ".join(task.gold_columns) + " |"
        assert header in task.query, task.instance_id
        assert "```markdown" in task.query


def test_every_task_is_answerable_from_the_corpus(built):
    pages = built["pages"]
    for task in all_tasks(built):
        list_page = pages.get(f"{BASE_URL}/list/{task.meta['entity_set']}")
        assert list_page is not None, f"{task.instance_id}: no list page {task.meta['entity_set']}"
        members = list_members(list_page["text"])
        assert len(members) == len(task.gold_rows), f"{task.instance_id}: list and gold differ in size"
        url_of_key = {anchor: url for url, anchor in members.items()}
        assert set(url_of_key) == {row[0] for row in task.gold_rows}, f"{task.instance_id}: list and gold differ"
        for row in task.gold_rows:
            page = pages.get(url_of_key[row[0]])
            assert page is not None, f"{task.instance_id}: member page {url_of_key[row[0]]} missing"
            # the key opens the member's page (its title is the key, perhaps with a qualifier)
            assert page["text"].splitlines()[0].startswith(row[0]), f"{task.instance_id}: {row[0]}"
            lines = set(page["text"].splitlines())
            for column, cell in zip(task.gold_columns[1:], row[1:]):
                # each gold cell is a fact line of the member's page, verbatim
                assert f"{column}: {cell}" in lines, f"{task.instance_id}: {column}: {cell} not on {page['url']}"


def test_rebuild_is_a_noop_and_deterministic(built, tmp_path):
    again = build_tasks(built["dir"], seed=0)
    assert not again.built
    other = build_tasks(tmp_path / "same-seed", seed=0)
    for name in ("train.jsonl", "test.jsonl", "card.json"):
        assert (tmp_path / "same-seed" / name).read_bytes() == (built["dir"] / name).read_bytes()
    assert other.built


def test_another_seed_gives_another_split(built, tmp_path):
    build_tasks(tmp_path / "seed1", seed=1)
    test_sets_0 = {(t.meta["family"], t.meta["entity_set"]) for t in built["test"]}
    test_sets_1 = {(t.meta["family"], t.meta["entity_set"]) for t in load_tasks(tmp_path / "seed1" / "test.jsonl")}
    assert test_sets_0 != test_sets_1


def test_build_in_a_fresh_process_is_identical(built, tmp_path):
    script = ("import sys; from pathlib import Path; from wideseek_exp.tasks.miniweb import build_tasks; "
              "build_tasks(Path(sys.argv[1]), seed=0)")
    env = {**os.environ, "PYTHONHASHSEED": "777"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "fresh")], check=True, cwd=REPO_ROOT, env=env)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "fresh" / name).read_bytes() == (built["dir"] / name).read_bytes()


def test_datasets_can_load_the_files(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = {split: str(built["dir"] / f"{split}.jsonl") for split in ("train", "test")}
    loaded = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf-cache"))
    assert loaded["train"].num_rows == len(built["train"])
    assert loaded["test"].num_rows == len(built["test"])
    first = loaded["test"][0]
    assert json.loads(first["evaluation"])["required"] == built["test"][0].required
    assert first["answer"] == built["test"][0].answer_markdown


def test_load_tasks_names_file_and_line_of_a_malformed_record(built, tmp_path):
    good = (built["dir"] / "train.jsonl").read_text().splitlines()[:2]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("\n".join(good + ["{not json"]) + "\n")
    with pytest.raises(WideseekError, match=r"bad\.jsonl line 3"):
        load_tasks(bad_json)
    missing_field = tmp_path / "missing.jsonl"
    record = json.loads(good[0])
    del record["answer"]
    missing_field.write_text(good[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(WideseekError, match=r"missing\.jsonl line 2"):
        load_tasks(missing_field)
    with pytest.raises(WideseekError, match="nowhere.jsonl"):
        load_tasks(tmp_path / "nowhere.jsonl")


def test_record_round_trips(built):
    for task in built["test"][:20]:
        assert TaskRecord.from_json(task.to_json()) == task
        assert TaskRecord.from_json(json.loads(json.dumps(task.to_json()))) == task


def test_markdown_table_escapes_pipes():
    columns = ["Name", "Note"]
    rows = [["a|b", "plain"], ["c", "x | y"]]
    table = to_markdown_table(columns, rows)
    assert "a\\|b" in table and "x \\| y" in table
    assert parse_markdown_table(table) == (columns, rows)
    assert parse_markdown_table("text before\n" + table + "\ntext after") == (columns, rows)
    with pytest.raises(ValueError):
        parse_markdown_table("| a | b |\n| c | d |")


def test_normalize_column():
    assert normalize_column("  Area (km2) ") == "area(km2)"
    assert normalize_column("ISO alpha-3 code") == "isoalpha-3code"
    assert normalize_column("Name") == "name"


def test_split_can_be_regenerated_from_the_saved_layout(built, tmp_path):
    # the saved files alone (no corpus) must carry everything a scorer needs
    path = Path(built["dir"]) / "test.jsonl"
    for line in path.read_text().splitlines()[:5]:
        record = json.loads(line)
        evaluation = json.loads(record["evaluation"])
        header, rows = parse_markdown_table(record["answer"])
        assert [normalize_column(h) for h in header] == evaluation["required"]
        assert rows
