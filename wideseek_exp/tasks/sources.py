"""Tables that broad tasks are synthesised from (task=data), read into one shape: SourceTable.

    hybridqa   HybridQA's released table folders (the WikiTables-WithLinks layout):
                 <tables>/<table_id>.json    {"url", "title", "header": [[name, [links]], ...],
                                              "data": [[[cell text, [links]], ...], ...] (rows of cells),
                                              optional "intro", "section_title", "section_text"}
                 <passages>/<table_id>.json  {link: passage text} for the links of that table
    miniweb    the mini-web's list pages: one table per list whose members are the rows, the
               family's attribute columns read from each member's entity page, and that page's text
               as the passage linked from the member's name.

A table file that cannot be read stops the run with a one-line error naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wideseek_exp import WideseekError

SOURCES = ("hybridqa", "miniweb")


@dataclass
class SourceTable:
    table_id: str
    title: str
    context: str  # what the table is about: section title and intro text
    header: list[str]
    rows: list[list[str]]
    links: list[list[list[str]]] = field(default_factory=list)  # per row, per cell: the link targets
    passages: dict[str, str] = field(default_factory=dict)  # link target -> passage text
    url: str = ""

    def row_passages(self, row_index: int) -> list[tuple[str, str]]:
        """(link, passage) for every linked cell of one row, each link once."""
        seen, found = set(), []
        cells = self.links[row_index] if row_index < len(self.links) else []
        for targets in cells:
            for link in targets:
                if link in self.passages and link not in seen:
                    seen.add(link)
                    found.append((link, self.passages[link]))
        return found


def load_tables(source_cfg) -> Iterator[SourceTable]:
    """The tables of the configured source (synthesis.source), in a stable order."""
    name = source_cfg.source
    if name == "hybridqa":
        if not source_cfg.hybridqa_tables:
            raise WideseekError("synthesis.source=hybridqa needs synthesis.hybridqa_tables=<folder of table json files>")
        yield from read_hybridqa(Path(source_cfg.hybridqa_tables),
                                 Path(source_cfg.hybridqa_passages) if source_cfg.hybridqa_passages else None)
    elif name == "miniweb":
        yield from miniweb_tables()
    else:
        raise WideseekError(f"unknown synthesis.source {name!r} (known: {', '.join(SOURCES)})")


# ---- HybridQA -----------------------------------------------------------------------------------


def _cell(value, where: str) -> tuple[str, list[str]]:
    """A released cell is [text, [links]]; a bare string is a cell without links."""
    if isinstance(value, str):
        return value.strip(), []
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], list):
        return value[0].strip(), [str(link) for link in value[1]]
    raise WideseekError(f"{where}: a cell is not [text, [links]] ({str(value)[:60]})")


def read_hybridqa_table(path: Path, passages_dir: Path | None) -> SourceTable:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WideseekError(f"cannot read HybridQA table {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("header"), list) or not isinstance(raw.get("data"), list):
        raise WideseekError(f"HybridQA table {path} has no 'header' and 'data' lists")
    header = [_cell(cell, f"{path} header")[0] for cell in raw["header"]]
    rows, links = [], []
    for number, row in enumerate(raw["data"]):
        if not isinstance(row, list) or len(row) != len(header):
            raise WideseekError(f"{path} data row {number}: {len(row) if isinstance(row, list) else 'no'} cells "
                                f"for {len(header)} header columns")
        cells = [_cell(cell, f"{path} data row {number}") for cell in row]
        rows.append([text for text, _ in cells])
        links.append([targets for _, targets in cells])
    passages: dict[str, str] = {}
    passage_file = passages_dir / path.name if passages_dir else None
    if passage_file is not None and passage_file.is_file():
        try:
            loaded = json.loads(passage_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WideseekError(f"cannot read HybridQA passages {passage_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise WideseekError(f"HybridQA passages {passage_file} is not a {{link: passage}} object")
        passages = {str(link): str(text) for link, text in loaded.items()}
    context = " ".join(str(raw.get(key) or "").strip() for key in ("section_title", "intro", "section_text"))
    return SourceTable(table_id=path.stem, title=str(raw.get("title") or path.stem), context=" ".join(context.split()),
                       header=header, rows=rows, links=links, passages=passages, url=str(raw.get("url") or ""))


def read_hybridqa(tables_dir: Path, passages_dir: Path | None) -> Iterator[SourceTable]:
    if not tables_dir.is_dir():
        raise WideseekError(f"synthesis.hybridqa_tables folder {tables_dir} does not exist")
    if passages_dir is not None and not passages_dir.is_dir():
        raise WideseekError(f"synthesis.hybridqa_passages folder {passages_dir} does not exist")
    for path in sorted(tables_dir.glob("*.json")):
        yield read_hybridqa_table(path, passages_dir)


# ---- the mini-web -------------------------------------------------------------------------------


def miniweb_tables() -> Iterator[SourceTable]:
    """One table per list page of a task family: key column plus every attribute all members state."""
    from wideseek_exp.search.miniweb import build_miniweb
    from wideseek_exp.tasks.miniweb import FAMILIES

    web = build_miniweb()
    for family in FAMILIES:
        pages = sorted((p for p in web.lists.values() if p.category == family.category), key=lambda p: p.slug)
        for page in pages:
            members = [(name, url) for name, url in page.members if url in web.entities]
            columns = [c for c in family.attributes
                       if all(web.entities[url].fact(c.fact) is not None for _, url in members)]
            if len(members) < 3 or not columns:
                continue
            rows = [[name, *(web.entities[url].fact(c.fact) for c in columns)] for name, url in members]
            links = [[[url]] + [[] for _ in columns] for _, url in members]
            yield SourceTable(
                table_id=f"{family.name}--{page.slug}", title=page.title, context=f"The {page.description}.",
                header=[family.key.display, *(c.display for c in columns)], rows=rows, links=links,
                passages={url: web.entities[url].text() for _, url in members}, url=page.url,
            )
