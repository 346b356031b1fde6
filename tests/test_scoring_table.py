"""Table extraction (protocol step 2) and gold readers: the official reader's rules, and where we
parse what it crashes on (divergences: quotes, escaped pipes, placeholder blocks)."""

from __future__ import annotations

import pytest

from wideseek_exp.scoring.table import (
    Table,
    extract_table,
    normalize_column,
    read_gold_csv,
    read_gold_markdown,
)
from wideseek_exp.tasks.record import parse_markdown_table, to_markdown_table


def fenced(body: str) -> str:
    return f"```markdown\n{body}\n```"


def table_of(response: str) -> Table:
    table, reason = extract_table(response)
    assert table is not None, reason
    return table


# ---- which text is the table -------------------------------------------------------------------


def test_first_markdown_block_wins_over_later_blocks_and_bare_lines():
    response = (
        "| a |\n| bare |\n\n"  # pipe lines outside a fence: ignored when a fence exists
        + fenced("| A |\n|---|\n| first |")
        + "\nbetter:\n"
        + fenced("| A |\n|---|\n| second |")
    )
    assert table_of(response).rows == [["first"]]


def test_without_fence_the_first_run_of_pipe_lines():
    response = "Here it is:\n| A | B |\n|---|---|\n| 1 | 2 |\n\nand another\n| A | B |\n| 3 | 4 |\n"
    table = table_of(response)
    assert table.columns == ["a", "b"]
    assert table.rows == [["1", "2"]]


def test_unclosed_fence_falls_back_to_pipe_lines():
    assert table_of("```markdown\n| A |\n|---|\n| x |\n").rows == [["x"]]


def test_first_block_without_a_table_means_no_table():
    # quirk: the first ```markdown block is the table, even when it holds prose
    response = fenced("Sorry, here is my plan.") + "\n" + fenced("| A |\n|---|\n| x |")
    assert extract_table(response) == (None, "no table")


def test_no_table_gives_a_reason():
    assert extract_table("I could not find the data.") == (None, "no table")
    assert extract_table("") == (None, "no table")


# ---- how a table is read -----------------------------------------------------------------------


def test_header_lower_cased_with_spaces_removed():
    table = table_of(fenced("| Country Name | Area (km2) |\n|---|---|\n| France | 1 |"))
    assert table.columns == ["countryname", "area(km2)"]


def test_separator_rows_dropped_wherever_they_are():
    body = "| A | B |\n| :--- | ---: |\n| 1 | 2 |\n|---|---|\n| | |\n| 3 | 4 |"
    assert table_of(fenced(body)).rows == [["1", "2"], ["3", "4"]]


def test_lines_without_a_pipe_dropped_inside_the_block():
    body = "Table:\n| A | B |\n|---|---|\n| 1 | 2 |\n\nSource: memory"
    assert table_of(fenced(body)).rows == [["1", "2"]]


def test_cells_stripped():
    assert table_of(fenced("|  A  |  B |\n|---|---|\n|   x y   | z |")).rows == [["x y", "z"]]


def test_empty_edge_columns_dropped():
    assert table_of(fenced("| A | B |\n|---|---|\n| 1 | 2 |")).columns == ["a", "b"]
    assert table_of(fenced("A | B\n---|---\n1 | 2")).rows == [["1", "2"]]
    # any column with an empty header goes (pandas calls it "Unnamed: i" and the reader drops it)
    assert table_of(fenced("| A | | B |\n|---|---|---|\n| 1 | x | 2 |")).rows == [["1", "2"]]


def test_missing_cells_become_nan():
    body = "| A | B | C | D | E | F | G | H |\n|---|---|---|---|---|---|---|---|\n| | N/A | null | None | nan | NA | NULL | x |"
    assert table_of(fenced(body)).rows == [["nan"] * 7 + ["x"]]
    # the reader's list is case-sensitive: these are text
    body = "| A | B | C |\n|---|---|---|\n| none | Null | n.a. |"
    assert table_of(fenced(body)).rows == [["none", "Null", "n.a."]]


def test_short_row_padded_with_nan():
    # "1 | 2" has no edge pipes: its fields shift left against the header's edge fields, as pandas
    # reads it (the first field lands in the dropped edge column)
    table = table_of(fenced("| A | B |\n|---|---|\n| 1 |\n1 | 2"))
    assert table.rows == [["1", "nan"], ["2", "nan"]]


def test_long_row_fails_the_table():
    table, reason = extract_table(fenced("| A | B |\n|---|---|\n| 1 | 2 | 3 |"))
    assert table is None and reason.startswith("bad table: row 1 has 5 fields")


def test_duplicate_header_renamed_like_pandas():
    assert table_of(fenced("| A | a | A |\n|---|---|---|\n| 1 | 2 | 3 |")).columns == ["a", "a.1", "a.2"]


def test_unicode_table():
    table = table_of("结果如下：\n" + fenced("| 国家 | 电影名 |\n|---|---|\n| 中国 | 《长津湖》 |"))
    assert table.columns == ["国家", "电影名"] and table.rows == [["中国", "《长津湖》"]]


# ---- divergences: what the official reader crashes on ------------------------------------------


def test_divergence_an_unclosed_quote_is_text_and_a_closed_one_is_read_as_csv():
    body = '| A | B |\n|---|---|\n| "Paris, France | 2 |\n| x | "quoted" |\n| "Ann" Lee | "a ""b""" |\n| "" | 3 |'
    assert table_of(fenced(body)).rows == [['"Paris, France', "2"], ["x", "quoted"], ["Ann Lee", 'a "b"'],
                                           ["nan", "3"]]


def test_a_cell_is_cut_to_max_cell_chars():
    from wideseek_exp.scoring.table import MAX_CELL_CHARS

    table = table_of(fenced(f"| A | B |\n|---|---|\n| {'7' * (3 * MAX_CELL_CHARS)} | {'x' * MAX_CELL_CHARS} |"))
    assert table.rows == [["7" * MAX_CELL_CHARS, "x" * MAX_CELL_CHARS]]


def test_fenced_blocks_are_the_official_findall():
    import re

    from wideseek_exp.scoring.table import fenced_blocks

    official = re.compile(r"```markdown(.*?)```", re.DOTALL)
    for text in ["", "```markdown a```", "x```markdown\n|a|\n``` y ```markdown b``` ```markdown c",
                 "```markdown```markdown```", "```markdown ```markdown x", "``````markdown q```"]:
        assert list(fenced_blocks(text)) == official.findall(text), text


def test_divergence_escaped_pipe_is_a_literal_pipe():
    assert table_of(fenced("| A | B |\n|---|---|\n| a \\| b | 2 |")).rows == [["a | b", "2"]]


def test_divergence_placeholder_block_skipped_for_the_next_table():
    real = fenced("| A |\n|---|\n| x |")
    assert table_of("The format is " + fenced("{data_content}") + "\nAnswer:\n" + real).rows == [["x"]]
    assert table_of(fenced("{数据内容}") + "\n" + real).rows == [["x"]]
    # no fenced table after the placeholder: the bare pipe lines are read
    assert table_of(fenced("{data_content}") + "\n| A |\n|---|\n| y |").rows == [["y"]]


# ---- gold tables -------------------------------------------------------------------------------


def test_normalize_column():
    assert normalize_column("  Area (km2) ") == "area(km2)"
    assert normalize_column("Times Higher Education  World University Rankings 2025") == (
        "timeshighereducationworlduniversityrankings2025"
    )


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_read_gold_csv_file_and_text_with_or_without_bom(tmp_path, bom):
    text = bom + 'Country,Capital,Note\nFrance,Paris,"big, old"\n\nSpain,Madrid,\n'
    path = tmp_path / "gold.csv"
    path.write_bytes(text.encode("utf-8"))
    for table in (read_gold_csv(path), read_gold_csv(text)):
        assert table.columns == ["Country", "Capital", "Note"]
        assert table.rows == [["France", "Paris", "big, old"], ["Spain", "Madrid", ""]]


def test_read_gold_csv_rejects_ragged_rows():
    with pytest.raises(ValueError, match="has 3 cells"):
        read_gold_csv("a,b\n1,2,3\n")
    with pytest.raises(ValueError, match="empty"):
        read_gold_csv("")


def test_read_gold_markdown_keeps_display_headers():
    table = read_gold_markdown("Gold:\n| Country | Note |\n|---|---|\n| France | a \\| b |\n| Spain |  |\n")
    assert table.columns == ["Country", "Note"]
    assert table.rows == [["France", "a | b"], ["Spain", ""]]


def test_read_gold_markdown_is_strict():
    with pytest.raises(ValueError, match="no markdown table"):
        read_gold_markdown("no table here")
    with pytest.raises(ValueError, match="separator"):
        read_gold_markdown("| a | b |\n| c | d |")
    with pytest.raises(ValueError, match="row 1 has 3 cells"):
        read_gold_markdown("| a | b |\n|---|---|\n| 1 | 2 | 3 |")


def test_record_parse_markdown_table_delegates_to_the_gold_reader():
    columns, rows = ["Name", "Note"], [["a|b", "plain"], ["c", "x | y"]]
    text = to_markdown_table(columns, rows)
    table = read_gold_markdown(text)
    assert parse_markdown_table(text) == (table.columns, table.rows) == (columns, rows)
