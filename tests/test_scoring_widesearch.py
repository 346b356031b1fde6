"""The WideSearch protocol, rule by rule, with hand-computed metrics (exact judge unless a test
needs a judge that answers otherwise). Names follow the rules of the project's protocol note
(widesearch_scoring.md); `divergence_` tests pin the rows of its divergence table."""

from __future__ import annotations

from fractions import Fraction

import pytest

from wideseek_exp import WideseekError
from wideseek_exp.scoring.judges import ExactJudge, JudgeError
from wideseek_exp.scoring.preprocess import column_kind, extract_number, harmonise, norm_date, norm_str
from wideseek_exp.scoring.trial import TrialScore
from wideseek_exp.scoring.widesearch import score_response, score_task_trials
from wideseek_exp.tasks.record import TaskRecord, normalize_column

EXACT = ExactJudge()
TEXT = {"preprocess": ["norm_str"], "metric": ["exact_match"]}
POPULATION = {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.1}
RAW = {"metric": ["exact_match"]}  # no preprocess: every character counts (case aside)


def make_task(columns, rows, pipeline, unique=None, required=None, language="en") -> TaskRecord:
    """A task whose gold is columns x rows; pipeline maps display names to specs."""
    keys = [normalize_column(c) for c in columns]
    return TaskRecord(
        instance_id="t",
        query="q",
        language=language,
        unique_columns=[normalize_column(c) for c in (unique or columns[:1])],
        required=[normalize_column(c) for c in required] if required else keys,
        eval_pipeline={normalize_column(name): spec for name, spec in pipeline.items()},
        gold_columns=list(columns),
        gold_rows=[list(row) for row in rows],
    )


def answer(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "Here is the table.\n```markdown\n" + "\n".join(lines) + "\n```"


COLUMNS = ["Country", "Capital", "Population"]
GOLD = [
    ["France", "Paris", "68000000"],
    ["Spain", "Madrid", "48000000"],
    ["Italy", "Rome", "59000000"],
    ["Japan", "Tokyo", "125000000"],
]
COUNTRIES = make_task(COLUMNS, GOLD, {"Country": TEXT, "Capital": TEXT, "Population": POPULATION})


def metrics(score: TrialScore) -> dict:
    return {name: getattr(score, name) for name in
            ("item_precision", "item_recall", "item_f1", "row_precision", "row_recall", "row_f1", "success")}


def expect(score: TrialScore, item_p, item_r, row_p, row_r, success=0.0):
    """Compare with fractions computed by hand; F1 = 2PR/(P+R)."""
    def f1(p, r):
        return 0.0 if p + r == 0 else 2 * Fraction(p) * Fraction(r) / (Fraction(p) + Fraction(r))
    wanted = {"item_precision": item_p, "item_recall": item_r, "item_f1": f1(item_p, item_r),
              "row_precision": row_p, "row_recall": row_r, "row_f1": f1(row_p, row_r), "success": success}
    got = metrics(score)
    for name, value in wanted.items():
        assert got[name] == pytest.approx(float(value), abs=1e-12), (name, got)


class SpyJudge(ExactJudge):
    """The exact judge, with scripted answers where a test sets them, recording every call."""

    def __init__(self, columns=None, keys=None, grades=None):
        self.columns, self.keys, self.grades = columns, keys, grades
        self.calls = []

    def align_columns(self, response_columns, gold_columns):
        self.calls.append(("align_columns", list(response_columns), list(gold_columns)))
        return self.columns if self.columns is not None else super().align_columns(response_columns, gold_columns)

    def align_keys(self, column, response_values, gold_values):
        self.calls.append(("align_keys", column, list(response_values), list(gold_values)))
        return self.keys if self.keys is not None else super().align_keys(column, response_values, gold_values)

    def grade(self, column, criterion, pairs):
        self.calls.append(("grade", column, criterion, list(pairs)))
        return self.grades(pairs) if self.grades else super().grade(column, criterion, pairs)

    def kinds(self):
        return [call[0] for call in self.calls]


# ---- step 7: preprocess functions ---------------------------------------------------------------


def test_norm_str_lowers_strips_removes_spaces_and_stars():
    assert norm_str("  **New York** City ") == "newyorkcity"
    assert norm_str("Ｔｏｋｙｏ") == "ｔｏｋｙｏ"  # nothing more than the protocol says


@pytest.mark.parametrize("text, number", [
    ("68,000,000", "68000000"),
    ("约7.9亿元 (2023)", "7.9"),  # only the first number
    ("2023: 68000000", "2023"),
    ("12.5%", "12.5%"),
    ("12.5 %", "12.5"),  # the % must follow the number
    ("-3 degrees", "-3"),
    (".5", ".5"),
    ("5.", "5."),
    ("v2.0.1", "2.0"),
    ("unknown", "NULL"),
    ("nan", "NULL"),
])
def test_extract_number_first_number_commas_removed_percent_kept(text, number):
    assert extract_number(text) == number


@pytest.mark.parametrize("text, iso", [
    ("2023-05-17", "2023-05-17"),
    ("May 17, 2023", "2023-05-17"),
    ("05/01/2023", "2023-05-01"),  # month first, as dateparser's English default
    ("2023", "2023-01-01"),  # a bare year: January 1
    ("1869.0", "1869-01-01"),  # a year as a float column writes it
    ("May 2023", "2023-05-01"),  # year and month: day 1
    ("2023-05", "2023-05-01"),
    ("2023年5月17日", "2023-05-17"),
    ("2023年5月", "2023-05-01"),
    ("2023年", "2023-01-01"),
    ("ancient", "ancient"),  # unparseable: kept
    ("nan", "nan"),
])
def test_norm_date_to_iso(text, iso):
    assert norm_date(text) == iso


def test_divergence_dates_completed_without_todays_date():
    # dateparser would take the missing year from today; we take 2000 (leap: Feb 29 parses)
    assert norm_date("May 5") == "2000-05-05"
    assert norm_date("Feb 29") == "2000-02-29"
    assert norm_date("5月1日") == "2000-05-01"
    assert norm_date("yesterday") == "yesterday"  # relative dates are not dates


# ---- step 4: types ------------------------------------------------------------------------------


def test_column_kinds_as_pandas_types_them():
    assert column_kind(["1", "-2", "007"]) == "int"
    assert column_kind(["1", "nan"]) == "float"  # a gap makes an int column float
    assert column_kind(["1.5", "2"]) == "float"
    assert column_kind(["1", "about 2"]) == "text"
    assert harmonise(["007", "8"], ["7", "8"]) == (["7", "8"], ["7", "8"])
    assert harmonise(["1.50", "nan"], ["1.5", "2.0"]) == (["1.5", "nan"], ["1.5", "2.0"])


def test_types_int_against_float_compared_as_floats():
    assert harmonise(["2023", "2024"], ["2023.0", "2024.5"]) == (["2023.0", "2024.0"], ["2023.0", "2024.5"])
    year = {"preprocess": [], "metric": ["exact_match"]}
    task = make_task(["Name", "Year"], [["a", "2023"], ["b", "2024"]], {"Name": TEXT, "Year": year})
    expect(score_response(answer(["Name", "Year"], [["a", "2023.0"], ["b", "2024.0"]]), task, EXACT),
           1, 1, 1, 1, success=1)


def test_types_quirk_int_in_a_text_column_does_not_meet_a_float():
    # gold "2023" sits in a text column (its other cell is words) so it stays "2023"; the response
    # column is text too ("unknown"), so its "2023.0" stays: they differ. 3 of 4 items, 1 of 2 rows.
    year = {"preprocess": [], "metric": ["exact_match"]}
    task = make_task(["Name", "Year"], [["a", "2023"], ["b", "unknown"]], {"Name": TEXT, "Year": year})
    score = score_response(answer(["Name", "Year"], [["a", "2023.0"], ["b", "unknown"]]), task, EXACT)
    expect(score, Fraction(3, 4), Fraction(3, 4), Fraction(1, 2), Fraction(1, 2))


def test_types_quirk_leading_zeros_vanish_in_int_columns():
    code = {"preprocess": ["norm_str"], "metric": ["exact_match"]}
    task = make_task(["Name", "Code"], [["a", "008"], ["b", "012"]], {"Name": TEXT, "Code": code})
    expect(score_response(answer(["Name", "Code"], [["a", "8"], ["b", "12"]]), task, EXACT), 1, 1, 1, 1, 1)


def test_types_a_gap_makes_the_response_column_float():
    # response a=2023, b=N/A reads 2023.0 / nan; gold (int) turns float: 2023.0 / 2024.0
    year = {"preprocess": [], "metric": ["exact_match"]}
    task = make_task(["Name", "Year"], [["a", "2023"], ["b", "2024"]], {"Name": TEXT, "Year": year})
    score = score_response(answer(["Name", "Year"], [["a", "2023"], ["b", "N/A"]]), task, EXACT)
    expect(score, Fraction(3, 4), Fraction(3, 4), Fraction(1, 2), Fraction(1, 2))


def test_types_whole_numbers_beyond_64_bits_stay_text():
    assert column_kind(["123456789012345678901234", "1"]) == "text"
    assert column_kind(["12345678901234567890", "1"]) == "int"
    assert column_kind(["0" * 5000 + "5"]) == "text"


# ---- steps 1, 8-11 on the running example -------------------------------------------------------


def test_perfect_table_scores_one_and_succeeds():
    score = score_response(answer(COLUMNS, GOLD[::-1]), COUNTRIES, EXACT)  # row order does not matter
    expect(score, 1, 1, 1, 1, success=1)
    assert (score.response_rows, score.gold_rows, score.matched_rows, score.reason) == (4, 4, 4, "")


def test_wrong_cell_and_missing_row():
    # 3 rows given (Japan missing), Italy's capital wrong: tp_item = 3+3+2 = 8 of P*n = 9 and
    # G*n = 12; tp_row = 2 of P = 3 and G = 4.
    rows = [GOLD[0], GOLD[1], ["Italy", "Milan", "59000000"]]
    score = score_response(answer(COLUMNS, rows), COUNTRIES, EXACT)
    expect(score, Fraction(8, 9), Fraction(8, 12), Fraction(2, 3), Fraction(2, 4))
    assert score.item_f1 == pytest.approx(16 / 21) and score.row_f1 == pytest.approx(4 / 7)


def test_extra_row_lowers_precision_only():
    score = score_response(answer(COLUMNS, GOLD + [["Germany", "Berlin", "84000000"]]), COUNTRIES, EXACT)
    expect(score, Fraction(12, 15), 1, Fraction(4, 5), 1)


def test_key_cells_score_one_and_row_credit_is_the_minimum():
    # France matched by its key, both other cells wrong: row credit 0, items 1 of 3.
    rows = [["France", "Lyon", "1"]] + GOLD[1:]
    score = score_response(answer(COLUMNS, rows), COUNTRIES, EXACT)
    expect(score, Fraction(10, 12), Fraction(10, 12), Fraction(3, 4), Fraction(3, 4))


def test_f1_is_zero_when_precision_and_recall_are_zero():
    rows = [[country, "wrong", "1"] for country, _, _ in GOLD]
    score = score_response(answer(COLUMNS, rows), COUNTRIES, EXACT)
    assert (score.row_precision, score.row_recall, score.row_f1) == (0.0, 0.0, 0.0)
    expect(score, Fraction(4, 12), Fraction(4, 12), 0, 0)


def test_success_needs_all_six_values_at_one():
    assert score_response(answer(COLUMNS, GOLD), COUNTRIES, EXACT).success == 1.0
    assert score_response(answer(COLUMNS, GOLD[:3]), COUNTRIES, EXACT).success == 0.0  # precision 1, recall 3/4


def test_gold_projected_on_required_columns():
    task = make_task(COLUMNS + ["Continent"], [row + ["Europe"] for row in GOLD],
                     {"Country": TEXT, "Capital": TEXT, "Population": POPULATION}, required=COLUMNS)
    expect(score_response(answer(COLUMNS, GOLD), task, EXACT), 1, 1, 1, 1, success=1)


def test_column_names_normalised_on_both_sides():
    task = make_task(["  Capital City ", "Area (km2)"], [["Paris", "1"]],
                     {"capitalcity": TEXT, "area(km2)": TEXT})
    expect(score_response(answer(["CAPITAL CITY", "Area (KM2)"], [["paris", "1"]]), task, EXACT), 1, 1, 1, 1, 1)


# ---- step 3: columns ----------------------------------------------------------------------------


def test_missing_column_zeroes_everything():
    score = score_response(answer(COLUMNS[:2], [row[:2] for row in GOLD]), COUNTRIES, EXACT)
    assert metrics(score) == metrics(TrialScore()) and score.reason == "missing column: population"


def test_quirk_extra_column_zeroes_everything():
    score = score_response(answer(COLUMNS + ["Source"], [row + ["wiki"] for row in GOLD]), COUNTRIES, EXACT)
    assert metrics(score) == metrics(TrialScore()) and score.reason == "extra column: source"


def test_column_alignment_one_judge_call_only_when_the_sets_differ():
    judge = SpyJudge()
    score_response(answer(COLUMNS, GOLD), COUNTRIES, judge)
    assert "align_columns" not in judge.kinds()

    judge = SpyJudge(columns={"nation": "country", "people": "population"})
    score = score_response(answer(["Nation", "Capital", "People"], GOLD), COUNTRIES, judge)
    assert judge.kinds().count("align_columns") == 1
    assert judge.calls[0] == ("align_columns", ["nation", "capital", "people"], ["country", "capital", "population"])
    expect(score, 1, 1, 1, 1, success=1)


def test_exact_judge_aligns_columns_by_normalised_name():
    score = score_response(answer(["**Country**", "Capital", "Population"], GOLD), COUNTRIES, EXACT)
    expect(score, 1, 1, 1, 1, success=1)


def test_two_columns_aligned_onto_one_gold_column_fail():
    judge = SpyJudge(columns={"capital": "country"})
    score = score_response(answer(["Country", "Capital", "Population"], GOLD), make_task(
        ["Country", "Population", "Extra"], [["a", "1", "x"]], {"Country": TEXT, "Population": POPULATION,
                                                                "Extra": TEXT}), judge)
    assert score.reason == "missing column: extra; duplicate column: country"


# ---- step 5: duplicates -------------------------------------------------------------------------


def test_dedup_on_keys_keeps_the_first_and_forgives_the_duplicate():
    # France twice, the first with a wrong capital: the first is kept, the second leaves before P
    # is counted (P = 4, not 5). tp_item = 11 of 12, tp_row = 3 of 4.
    rows = [["France", "Lyon", "68000000"]] + GOLD
    score = score_response(answer(COLUMNS, rows), COUNTRIES, EXACT)
    expect(score, Fraction(11, 12), Fraction(11, 12), Fraction(3, 4), Fraction(3, 4))
    assert score.response_rows == 4


def test_dedup_on_gold_side_too():
    task = make_task(COLUMNS, GOLD + [["France", "Lyon", "1"]], {"Country": TEXT, "Capital": TEXT,
                                                                 "Population": POPULATION})
    score = score_response(answer(COLUMNS, GOLD), task, EXACT)
    expect(score, 1, 1, 1, 1, success=1)
    assert score.gold_rows == 4


# ---- step 6: key alignment ----------------------------------------------------------------------


def test_key_alignment_one_call_per_aligned_key_column():
    judge = SpyJudge(keys={"USA": "United States"})
    task = make_task(["Country", "Capital"], [["United States", "Washington"], ["China", "Beijing"]],
                     {"Country": TEXT, "Capital": TEXT})
    score = score_response(answer(["Country", "Capital"], [["USA", "Washington"], ["China", "Beijing"]]), task, judge)
    assert judge.calls == [("align_keys", "country", ["USA", "China"], ["United States", "China"])]
    expect(score, 1, 1, 1, 1, success=1)


def test_key_columns_compared_by_number_are_not_aligned():
    judge = SpyJudge()
    task = make_task(["Year", "Country", "Winner"], [["2020", "a", "x"]],
                     {"Year": POPULATION, "Country": TEXT, "Winner": TEXT}, unique=["Year", "Country"])
    score_response(answer(["Year", "Country", "Winner"], [["2020", "a", "x"]]), task, judge)
    assert [call[:2] for call in judge.calls] == [("align_keys", "country")]


def test_inner_join_on_all_key_columns():
    # keys (year, country): (2021, USA) is in no gold row. P = 2, G = 3, n = 3:
    # tp_item = 3, tp_row = 1.
    task = make_task(["Year", "Country", "Film"], [["2020", "China", "X"], ["2020", "USA", "Y"], ["2021", "China", "Z"]],
                     {"Year": TEXT, "Country": TEXT, "Film": TEXT}, unique=["Year", "Country"])
    score = score_response(answer(["Year", "Country", "Film"], [["2020", "China", "X"], ["2021", "USA", "Y"]]),
                           task, EXACT)
    expect(score, Fraction(3, 6), Fraction(3, 9), Fraction(1, 2), Fraction(1, 3))


# ---- step 9: metrics ----------------------------------------------------------------------------


def one_column_task(metric: dict, gold: list[str]) -> TaskRecord:
    return make_task(["Name", "Value"], [[f"n{i}", value] for i, value in enumerate(gold)],
                     {"Name": TEXT, "Value": metric})


def cell_scores(metric: dict, gold: list[str], given: list[str], judge=EXACT) -> list[float]:
    """Per-row credit of a two-column table (key + the value under test): each row's credit is
    its value cell's score."""
    task = one_column_task(metric, gold)
    scores = []
    for i, (target, value) in enumerate(zip(gold, given)):
        single = make_task(["Name", "Value"], [[f"n{i}", target]], task.eval_pipeline)
        scores.append(score_response(answer(["Name", "Value"], [[f"n{i}", value]]), single, judge).row_recall)
    return scores


def test_exact_match_is_case_insensitive_and_nothing_more():
    plain = {"preprocess": [], "metric": ["exact_match"]}
    assert cell_scores(plain, ["New York", "New York", "New York"], ["new york", "NewYork", "New York."]) == [1, 0, 0]
    # with norm_str first, spaces and * go too
    assert cell_scores(TEXT, ["New York"], ["**NewYork**"]) == [1]


def test_number_near_relative_tolerance():
    # tol 0.1 of 68M is 6.8M: 62M is within, 75M is not; thousands commas and text around are fine
    assert cell_scores(POPULATION, ["68000000"] * 4, ["62,000,000", "75000000", "about 68,000,000 people",
                                                      "2023: 68000000"]) == [1, 0, 1, 0]


def test_number_near_percent_divided_by_100():
    assert cell_scores(POPULATION, ["12%", "12%", "0.5"], ["0.12", "12", "50%"]) == [1, 0, 1]


def test_number_near_non_numbers():
    # two cells without a number both read "NULL": equal strings, 1; one number: 0
    assert cell_scores(POPULATION, ["unknown", "unknown", "5"], ["n/a", "7", "none"]) == [1, 0, 0]
    raw = {"preprocess": [], "metric": ["number_near"], "criterion": 0.1}
    assert cell_scores(raw, ["abc", "abc"], ["abc", "abd"]) == [1, 0]


def test_date_near_within_31_days():
    date = {"preprocess": ["norm_date"], "metric": ["date_near"]}
    gold = ["2020-01-01"] * 3 + ["1869", "1869"]
    given = ["2020-02-01", "2020-02-02", "Jan 15, 2020", "1869", "1870"]
    assert cell_scores(date, gold, given) == [1, 0, 1, 1, 0]


def test_date_near_unparseable_sides():
    date = {"preprocess": ["norm_date"], "metric": ["date_near"]}
    # both unparseable: 1 even when different (official quirk); one side only: 0
    assert cell_scores(date, ["ancient", "ancient", "2020-01-01"], ["unknown", "2020", "unknown"]) == [1, 0, 0]


def test_url_match_compares_hostname_sets():
    url = {"preprocess": ["norm_str"], "metric": ["url_match"]}
    # (norm_str removes spaces first, so URLs in one cell need a comma or markup between them)
    gold = ["https://www.mit.edu/", "https://www.mit.edu", "https://a.org, https://b.org", "https://a.org",
            "none given", "https://a.org"]
    given = ["http://WWW.MIT.EDU/admissions", "https://mit.edu", "[B](https://b.org/x), https://a.org:443/",
             "https://a.org, https://b.org", "n/a", "a.org"]
    assert cell_scores(url, gold, given) == [1, 0, 1, 0, 1, 0]


def test_llm_judge_one_call_per_column_with_all_pairs_preprocessed():
    judge = SpyJudge(grades=lambda pairs: [1.0 if r.startswith(g[:3]) else 0.0 for r, g in pairs])
    free = {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": "same director"}
    task = make_task(["Film", "Director", "Genre"], [["A", "Zhang Yimou", "drama"], ["B", "Chen Kaige", "war"]],
                     {"Film": TEXT, "Director": free, "Genre": {**free, "criterion": "subset ok"}})
    response = answer(["Film", "Director", "Genre"], [["A", "Zhang Yi-mou", "Drama"], ["B", "Feng", "war"]])
    score = score_response(response, task, judge)
    grades = [call for call in judge.calls if call[0] == "grade"]
    assert grades == [
        ("grade", "director", "same director", [("zhangyi-mou", "zhangyimou"), ("feng", "chenkaige")]),
        ("grade", "genre", "subset ok", [("drama", "drama"), ("war", "war")]),
    ]
    expect(score, Fraction(5, 6), Fraction(5, 6), Fraction(1, 2), Fraction(1, 2))


def test_several_metrics_on_a_column_score_their_minimum():
    both = {"preprocess": ["norm_str"], "metric": ["exact_match", "url_match"]}
    assert cell_scores(both, ["https://a.org", "https://a.org"], ["https://a.org", "https://a.org/x"]) == [1, 0]


def test_missing_cells_on_both_sides_match():
    assert cell_scores(TEXT, ["N/A", ""], ["", "None"]) == [1, 1]


# ---- the quirks we keep -------------------------------------------------------------------------


def test_quirk_first_table_wins():
    wrong = answer(COLUMNS, [["France", "Lyon", "1"]])
    score = score_response(wrong + "\nCorrected:\n" + answer(COLUMNS, GOLD), COUNTRIES, EXACT)
    expect(score, Fraction(1, 3), Fraction(1, 12), 0, 0)


# ---- divergences --------------------------------------------------------------------------------


def test_divergence_escaped_pipes_and_placeholder_are_parsed():
    task = make_task(["Name", "Note"], [["a|b", "x"], ["c", "y"]], {"Name": TEXT, "Note": TEXT})
    response = ("Format: ```markdown\n{data_content}\n```\n"
                + answer(["Name", "Note"], [["a \\| b", "x"], ["c", "y"]]))
    expect(score_response(response, task, EXACT), 1, 1, 1, 1, success=1)


def test_quoted_cells_read_as_the_official_csv_reader_reads_them():
    # the official reader joins the stripped cells with pipes and hands them to a CSV parser: `"Ann" Lee`
    # is the quoted field Ann with " Lee" appended, `""` inside quotes is one quote
    task = make_task(["Name", "Note"], [["Ann Lee", 'say "hi"'], ["Bo", "y"]], {"Name": TEXT, "Note": RAW})
    response = answer(["Name", "Note"], [['"Ann" Lee', '"say ""hi"""'], ["Bo", '"y"']])
    expect(score_response(response, task, EXACT), 1, 1, 1, 1, success=1)


def test_divergence_an_unclosed_quote_is_text():
    # officially the quote runs on through the next separators and lines (merged cells or "EOF inside
    # string"); here it stays in its cell as a character
    task = make_task(["Name", "Note"], [["Ann", '"open'], ["Bo", "y"]], {"Name": TEXT, "Note": RAW})
    expect(score_response(answer(["Name", "Note"], [["Ann", '"open'], ["Bo", "y"]]), task, EXACT), 1, 1, 1, 1, success=1)


def test_divergence_empty_join_gives_zeros_and_a_reason():
    score = score_response(answer(COLUMNS, [["Atlantis", "Poseidonia", "1"]]), COUNTRIES, EXACT)
    assert metrics(score) == metrics(TrialScore())
    assert score.reason.startswith("empty join") and (score.response_rows, score.gold_rows) == (1, 4)


def test_divergence_header_only_table_gives_zeros_and_a_reason():
    score = score_response(answer(COLUMNS, []), COUNTRIES, EXACT)
    assert metrics(score) == metrics(TrialScore()) and score.reason == "no rows (header-only table)"


def test_divergence_each_gold_row_matched_at_most_once():
    # The judge aligns both "USA" and "United States" onto the gold "United States". Officially
    # both rows join it: tp_row 3 over G = 2 (recall 1.5). Here the first takes it, the second is
    # an unmatched response row: P = 3, G = 2, n = 2, tp_row = 2, tp_item = 4.
    judge = SpyJudge(keys={"USA": "United States"})
    task = make_task(["Country", "Capital"], [["United States", "Washington"], ["China", "Beijing"]],
                     {"Country": TEXT, "Capital": TEXT})
    rows = [["United States", "Washington"], ["USA", "Washington"], ["China", "Beijing"]]
    score = score_response(answer(["Country", "Capital"], rows), task, judge)
    expect(score, Fraction(4, 6), 1, Fraction(2, 3), 1)
    assert score.matched_rows == 2


def test_divergence_judge_failure_marks_the_trial():
    class Failing(ExactJudge):
        def align_keys(self, column, response_values, gold_values):
            raise JudgeError("endpoint down")

    score = score_response(answer(COLUMNS, GOLD), COUNTRIES, Failing())
    assert score.judge_error and score.reason == "judge error: endpoint down"
    assert metrics(score) == metrics(TrialScore())


# ---- robustness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("response", [
    "",
    "no table at all",
    "|",
    "| | |\n|---|",
    "```markdown\n```",
    "```markdown\n|a|b|\n|1|2|3|4|\n```",
    "| Country |\n| France | Paris | x | y |",
    "\x00\x01 | \ud7ff | ||||||",
    "| Country | Capital | Population |\n" + "| é | 🙂 | 1e400 |\n" * 3,
    "| Country | Capital | Population |\n| France | Paris | inf |\n| Spain | Madrid | nan% |",
])
def test_garbage_never_raises(response):
    score = score_response(response, COUNTRIES, EXACT)
    assert 0.0 <= score.item_f1 <= 1.0 and 0.0 <= score.row_f1 <= 1.0
    assert score.reason or score.item_f1 > 0


def test_unicode_task_scores():
    money = {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.1}
    task = make_task(["国家", "电影名", "本国累计票房收益"], [["中国", "长津湖", "57.7亿元"], ["美国", "壮志凌云：独行侠", "7.2亿美元"]],
                     {"国家": TEXT, "电影名": TEXT, "本国累计票房收益": money}, unique=["国家", "电影名"], language="zh")
    response = answer(["国家", "电影名", "本国累计票房收益"], [["中国", "长津湖", "约57.8亿元"], ["美国", "壮志凌云：独行侠", "8.5亿美元"]])
    expect(score_response(response, task, EXACT), Fraction(5, 6), Fraction(5, 6), Fraction(1, 2), Fraction(1, 2))


def test_ten_thousand_rows():  # its time is measured by experiments/scoring_perf/bench.py, not here
    rows = [[f"entity {i}", f"city {i}", str(1000 + i)] for i in range(10_000)]
    task = make_task(COLUMNS, rows, {"Country": TEXT, "Capital": TEXT, "Population": POPULATION})
    given = [row if i % 10 else [row[0], "wrong", row[2]] for i, row in enumerate(rows)]
    score = score_response(answer(COLUMNS, given), task, EXACT)
    expect(score, Fraction(29_000, 30_000), Fraction(29_000, 30_000), Fraction(9, 10), Fraction(9, 10))


def test_score_task_trials_scores_a_missing_response_zero():
    scores = score_task_trials([answer(COLUMNS, GOLD), None], COUNTRIES, EXACT)
    assert [s.success for s in scores] == [1.0, 0.0] and scores[1].reason == "no response"


def test_trial_score_round_trips_as_a_dict():
    score = score_response(answer(COLUMNS, GOLD[:2]), COUNTRIES, EXACT)
    assert TrialScore.from_dict(score.to_dict()) == score


@pytest.mark.parametrize("change, message", [
    ({"eval_pipeline": {"country": TEXT, "capital": TEXT}}, "no eval_pipeline entry"),
    ({"eval_pipeline": {"country": TEXT, "capital": TEXT, "population": {"metric": ["fuzzy"]}}}, "unknown"),
    ({"eval_pipeline": {"country": TEXT, "capital": TEXT, "population": {"metric": ["number_near"]}}}, "numeric"),
    ({"unique_columns": ["continent"]}, "not among the required"),
    ({"gold_columns": ["Country", "Capital", "Pop"]}, "lacks required column"),
])
def test_a_task_that_cannot_be_scored_is_a_data_error(change, message):
    task = make_task(COLUMNS, GOLD, {"Country": TEXT, "Capital": TEXT, "Population": POPULATION})
    for key, value in change.items():
        setattr(task, key, value)
    with pytest.raises(WideseekError, match=message):
        score_response(answer(COLUMNS, GOLD), task, EXACT)


# ---- step 11: success -----------------------------------------------------------------------------

NUMBER_KEY = {"metric": ["number_near"], "criterion": 0.0}  # a key the judge does not align
NUMBER_RAW = {"metric": ["number_near"], "criterion": 0.1}  # no preprocess: "nan" stays a float NaN


def test_success_when_the_sorted_tables_are_equal_even_if_a_metric_fails_an_identical_cell():
    # "nan" against "nan" under number_near is NaN against NaN: 0, so the six values are below 1, yet the
    # tables are equal (rows in another order), which the official scorer counts as a success
    task = make_task(["Code", "Value"], [["1", "5"], ["2", ""]], {"Code": NUMBER_KEY, "Value": NUMBER_RAW})
    expect(score_response(answer(["Code", "Value"], [["2", "N/A"], ["1", "5"]]), task, EXACT),
           Fraction(3, 4), Fraction(3, 4), Fraction(1, 2), Fraction(1, 2), success=1)


def test_equal_tables_need_the_gold_column_order_and_no_aligned_key():
    # the official frames compare their column labels too, and an aligned key adds a `<key>_before_map`
    # column to the response frame: then only the six values can make a success
    task = make_task(["Code", "Value"], [["1", "5"], ["2", ""]], {"Code": NUMBER_KEY, "Value": NUMBER_RAW})
    swapped = answer(["Value", "Code"], [["nan", "2"], ["5", "1"]])
    assert score_response(swapped, task, EXACT).success == 0
    aligned = make_task(["Code", "Value"], [["1", "5"], ["2", ""]], {"Code": TEXT, "Value": NUMBER_RAW})
    assert score_response(answer(["Code", "Value"], [["1", "5"], ["2", ""]]), aligned, EXACT).success == 0


@pytest.mark.parametrize("response", [7, b"| a |", 1.5, ["| a |"], {"table": 1}])
def test_a_response_that_is_not_text_scores_zero_with_a_reason(response):
    (score,) = score_task_trials([response], COUNTRIES, EXACT)
    assert metrics(score) == metrics(TrialScore()) and score.reason.startswith("response is not text")
    assert score.gold_rows == 4

