"""Tables out of model responses (WideSearch step 2) and gold tables out of CSV or markdown.

The official scorer cuts the table text out of the response and hands it to pandas.read_csv with
`|` as the separator. We read it ourselves, reproducing what that reader does to a table (which
lines count, how cells are cut, padded and named, which cells become "nan") and departing from it
only where it crashes (see the divergence notes below).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

MISSING = "nan"  # how a missing cell reads once the official reader has turned it into a string

# The strings pandas.read_csv reads as missing by default. The protocol names the common ones
# (empty, N/A, null, None, nan); the reader knows all of these, case-sensitively. Note "NA": a
# Namibia code reads as missing, on both sides alike.
NA_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})

MARKDOWN_FENCE = re.compile(re.escape("```markdown"))  # the official reader's opening fence, exactly
FENCE_CLOSE = "```"
# An echo of the query's format line, "```markdown\n{data_content}\n```" (or "{数据内容}").
PLACEHOLDER = re.compile(r"^\{[^{}\n]*\}$")
SEPARATOR_CHARS = frozenset("|- :")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
# What one response cell may cost: a longer cell is cut to its first MAX_CELL_CHARS characters before it
# is typed, aligned, preprocessed and compared. No gold cell comes near it, so the cut changes no score a
# table can earn, and it bounds the time a hostile cell (a policy's runaway reply) can take.
MAX_CELL_CHARS = 4096


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]  # every row as long as `columns`


def normalize_column(name: str) -> str:
    """The WideSearch column key: stripped, lower-cased, ASCII spaces removed (step 1)."""
    return name.strip().lower().replace(" ", "")


def split_cells(line: str) -> list[str]:
    """Every `|`-separated field of a line, the empty ones outside the edge pipes included, each
    stripped. Divergence: `\\|` is a literal pipe inside a cell; the official reader splits on it,
    which gives the row one field too many and fails the whole table."""
    return [cell.strip().replace("\\|", "|") for cell in UNESCAPED_PIPE.split(line.strip())]


def is_separator(line: str) -> bool:
    """A line made only of `|`, `-`, `:` and spaces (the official rule: also drops blank lines and
    rows whose cells are all empty)."""
    return set(line.strip()) <= SEPARATOR_CHARS


def mangle_duplicates(names: list[str]) -> list[str]:
    """pandas renames a repeated header to name.1, name.2, ...: a table with a doubled column then
    has an extra column, which fails the column check."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


# ---- a response's table ------------------------------------------------------------------------


def fenced_blocks(text: str, opening: re.Pattern = MARKDOWN_FENCE):
    """The bodies of the fenced blocks of `text` whose opening matches `opening`, each running to the next
    ```, in order. With the default opening this is the official `re.findall(r"```markdown(.*?)```", ...,
    re.DOTALL)`, found in one pass (the lazy regex rescans the rest of the text from every opening that is
    never closed, quadratic in a long reply that repeats the opening)."""
    position = 0
    while (found := opening.search(text, position)) is not None:
        end = text.find(FENCE_CLOSE, found.end())
        if end < 0:
            return  # no closing fence after this opening: none after any later one either
        yield text[found.end():end]
        position = end + len(FENCE_CLOSE)


def unquote(cell: str) -> str:
    """A cell as the official reader's CSV parser reads it (sep="|", the stripped cells joined by pipes):
    a cell that starts with `"` is a quoted field, `""` inside it is one quote, and whatever follows the
    closing quote is appended as written, so `"Ann" Lee` reads `Ann Lee`. Divergence: a quote that is
    not closed within the cell is kept as text; the official parser runs on through the following
    separators and lines, which merges cells or fails the table ("EOF inside string")."""
    if not cell.startswith('"'):
        return cell
    out, i = [], 1
    while i < len(cell):
        if cell[i] == '"':
            if cell.startswith('"', i + 1):
                out.append('"')
                i += 2
                continue
            return "".join(out) + cell[i + 1:]
        out.append(cell[i])
        i += 1
    return cell


def _table_text(response: str) -> str | None:
    """The text the table is read from: the first ```markdown block, else the first run of
    consecutive lines that start with `|`. The first table wins even when a later one is better:
    the official quirk."""
    for block in fenced_blocks(response):
        # Divergence: a block holding only the query's placeholder (the model echoing the format
        # line before its real answer) is skipped; the official reader takes it and fails.
        if not PLACEHOLDER.match(block.strip()):
            return block
    run: list[str] = []
    for line in response.splitlines():
        if line.lstrip().startswith("|"):
            run.append(line)
        elif run:
            break
    return "\n".join(run) if run else None


def _read_pipe_lines(text: str) -> tuple[Table | None, str]:
    """Cells of the table lines, as the official reader sees them: lines without a pipe and
    separator lines dropped, the first line left is the header, a short row padded with missing
    cells, a long row fails the table (pandas refuses it), columns with an empty header dropped
    (pandas names them "Unnamed: i", then the reader drops those: the empty fields outside the edge
    pipes, and any column whose header cell is empty)."""
    lines = [line for line in text.strip().splitlines() if "|" in line and not is_separator(line)]
    if not lines:
        return None, "no table"
    header = [unquote(cell.replace(" ", "").lower()) for cell in split_cells(lines[0])]
    rows = []
    for number, line in enumerate(lines[1:], start=1):
        cells = split_cells(line)
        if len(cells) > len(header):
            return None, f"bad table: row {number} has {len(cells)} fields, the header has {len(header)}"
        cells = [unquote(cell[:MAX_CELL_CHARS]) for cell in cells]
        cells = [MISSING if cell in NA_TOKENS else cell for cell in cells]
        rows.append(cells + [MISSING] * (len(header) - len(cells)))
    keep = [i for i, name in enumerate(header) if name]
    if not keep:
        return None, "bad table: no column has a name"
    columns = mangle_duplicates([header[i] for i in keep])
    return Table(columns, [[row[i] for i in keep] for row in rows]), ""


def extract_table(response: str) -> tuple[Table | None, str]:
    """The response's table, header lower-cased without spaces, missing cells as "nan";
    or None and the reason there is none."""
    text = _table_text(response or "")
    if text is None:
        return None, "no table"
    return _read_pipe_lines(text)


# ---- gold tables -------------------------------------------------------------------------------


def read_gold_csv(source: str | Path) -> Table:
    """A gold table from a CSV file (a Path) or CSV text (a str), with or without a UTF-8 BOM.
    Headers and cells are kept as written; blank lines are skipped; a ragged row is a ValueError."""
    text = Path(source).read_bytes().decode("utf-8-sig") if isinstance(source, Path) else source
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = next(reader, None)
    if not header:
        raise ValueError("empty CSV: no header")
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"CSV line {reader.line_num} has {len(row)} cells, the header has {len(header)}")
        rows.append(row)
    return Table(header, rows)


def _inner_cells(line: str) -> list[str]:
    """The cells between a well-formed row's edge pipes."""
    cells = split_cells(line)
    stripped = line.strip()
    if stripped.startswith("|"):
        cells = cells[1:]
    if stripped.endswith("|") and not stripped.endswith("\\|"):
        cells = cells[:-1]
    return cells


def read_gold_markdown(text: str) -> Table:
    """A gold table written as markdown: the first run of `|` lines, a separator under the header,
    every row as wide as the header (a ValueError otherwise). Headers and cells are kept as written
    (stripped, `\\|` read as a pipe), so a table round-trips through to_markdown_table."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("|"):
            lines.append(line)
        elif lines:
            break
    if len(lines) < 2:
        raise ValueError("no markdown table found")
    header = _inner_cells(lines[0])
    if not is_separator(lines[1]):
        raise ValueError("markdown table has no separator line under its header")
    rows = [_inner_cells(line) for line in lines[2:] if not is_separator(line)]
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} cells, the header has {len(header)}")
    return Table(header, rows)
