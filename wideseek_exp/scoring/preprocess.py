"""Cell values before comparison: the column typing of the official reader (step 4) and the three
preprocess functions of an eval_pipeline (step 7)."""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache

from dateutil import parser as dateutil_parser

from wideseek_exp.scoring.table import MISSING

# ---- step 4: column types ----------------------------------------------------------------------
# The official scorer reads both tables with pandas, which types each column: all whole numbers ->
# int64, numbers with a decimal point or a missing cell among them -> float64, anything else ->
# text. Then every cell becomes a string again. So the string a cell is compared as depends on its
# column: "007" in an int column reads "7", "1.50" in a float column reads "1.5", a year in a
# column with a gap reads "2023.0". When one side's column is int and the other's float, the int
# side is turned into floats first, so gold 2023 and response 2023.0 agree. We reproduce that here.
# Possessive quantifiers (Python 3.11): each run of digits is taken whole and never given back, so a
# long cell that is almost a number fails in one pass, not after trying every split of its digits
# (with plain `[0-9]+\.?[0-9]*` a 16,000-digit cell took seconds, four times longer sixteen times as long).
INT_TEXT = re.compile(r"[+-]?[0-9]++")
FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?")


def _fits_64_bits(cell: str) -> bool:
    return len(cell) <= 24 and -(2**63) <= int(cell) < 2**64  # the length test first: int() refuses huge text


def column_kind(cells: list[str]) -> str:
    """"int", "float" or "text", as pandas would type the column (cells already "nan" when missing).
    Booleans stay text: their case is all pandas changes, and every metric ignores case."""
    if not cells:
        return "text"
    if all(INT_TEXT.fullmatch(cell) for cell in cells):
        # pandas keeps whole numbers beyond 64 bits as text
        return "int" if all(_fits_64_bits(cell) for cell in cells) else "text"
    if all(cell == MISSING or FLOAT_TEXT.fullmatch(cell) for cell in cells):
        return "float"
    return "text"


def typed_strings(cells: list[str], kind: str) -> list[str]:
    """The cells as the official scorer's astype(str) writes them for a column of this kind."""
    if kind == "int":
        return [str(int(cell)) for cell in cells]
    if kind == "float":
        return [MISSING if cell == MISSING else repr(float(cell)) for cell in cells]
    return list(cells)


def harmonise(response_cells: list[str], gold_cells: list[str]) -> tuple[list[str], list[str]]:
    """Both sides of one column typed as the official reader types them, int against float
    compared as floats."""
    response_kind, gold_kind = column_kind(response_cells), column_kind(gold_cells)
    if {response_kind, gold_kind} == {"int", "float"}:
        response_kind = gold_kind = "float"
    return typed_strings(response_cells, response_kind), typed_strings(gold_cells, gold_kind)


# ---- step 7: preprocess functions --------------------------------------------------------------


def norm_str(text: str) -> str:
    """Lower-cased, stripped, without ASCII spaces and `*` (markdown bold)."""
    return text.lower().strip().replace(" ", "").replace("*", "")


# The first number in the text: sign, digits with an optional decimal part (or a bare decimal
# part), and a `%` right after it. Only the first: "约7.9亿 (2023)" gives 7.9, as the official does.
FIRST_NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+\.?\d*)%?")


def extract_number(text: str) -> str:
    """The first number of the text with thousands commas removed (a trailing % kept), or "NULL"."""
    found = FIRST_NUMBER.search(text.replace(",", ""))
    return found.group(0) if found else "NULL"


# Dates. The official scorer parses with `dateparser`, which fills a missing year from today's
# date: a score could change with the day it is computed. Divergence: we complete partial dates
# deterministically. Missing day -> 1, missing month -> January, missing year -> 2000 (a leap year,
# so "Feb 29" parses). A bare whole number of up to four digits is a year ("1869" -> 1869-01-01;
# "1869.0", how a float column writes a year, too). Relative dates ("yesterday") are not parsed.
DEFAULT_DATE = datetime(2000, 1, 1)
BARE_YEAR = re.compile(r"([0-9]{1,4})(?:\.0)?")
# Chinese and Japanese dates, which dateutil does not read: 2023年5月1日, 2023年5月, 5月1日.
# Its runs of spaces are possessive: adjacent optional parts each followed by `\s*` could otherwise share
# a run of spaces between them in every possible way (quadratic in a cell like "2023年" + spaces + "x").
CJK_DATE = re.compile(
    r"(?:([0-9]{1,4})\s*+年)?\s*+(?:([0-9]{1,2})\s*+月)?\s*+(?:([0-9]{1,2})\s*+[日号])?")


@lru_cache(maxsize=65536)
def parse_date(text: str) -> date | None:
    """The date a cell names, completed as above; None when it names none."""
    text = text.strip()
    if not text or text == MISSING:
        return None
    try:
        bare = BARE_YEAR.fullmatch(text)
        if bare:
            year = int(bare.group(1))
            return date(year, 1, 1) if year > 0 else None
        cjk = CJK_DATE.fullmatch(text)
        if cjk and any(cjk.groups()):
            year, month, day = (int(part) if part else None for part in cjk.groups())
            return date(year or DEFAULT_DATE.year, month or 1, day or 1)
        return dateutil_parser.parse(text, default=DEFAULT_DATE).date()
    except Exception:  # dateutil raises assorted errors on odd text; an odd cell is no date
        return None


def norm_date(text: str) -> str:
    """YYYY-MM-DD when the cell names a date, else the cell unchanged."""
    parsed = parse_date(text)
    return text if parsed is None else f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d}"


PREPROCESS = {"norm_str": norm_str, "extract_number": extract_number, "norm_date": norm_date}
