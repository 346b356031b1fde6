"""A deterministic stand-in for the task=data generator (a TextGenerator).

It knows the source tables and recognises which one a prompt is about by its title (the query and
answer prompts show it; the baseline prompt shows the query, which the double wrote with the title
in it). What it answers is set per title by a Mode, so a test controls exactly how far the two
answers agree and what the closed-book baseline knows; the pipeline's logic then runs for real.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from wideseek_exp.tasks.record import to_markdown_table
from wideseek_exp.tasks.sources import SourceTable
from wideseek_exp.tasks.textgen import TextReply, TextRequest


@dataclass(frozen=True)
class Mode:
    columns: int = 3  # the plan asks for the first `columns` header columns, keyed on the first
    corrupt_cells: int = 0  # answer 2 gets this many non-key cells wrong (first rows, last column)
    plan: str = "ok"  # ok | garbage (no json block) | stray_key (a unique column not among the columns)
    keys_2: str | None = None  # answer 2 names these unique columns instead
    no_table_2: bool = False  # answer 2 writes no table
    baseline_knows: bool = False  # the closed-book baseline answers the table exactly
    rows: int | None = None  # the answers hold only the first `rows` rows


class TableDouble:
    model = "double-v1"

    def __init__(self, tables: list[SourceTable], modes: dict[str, Mode] | None = None):
        self.tables = {table.title: table for table in tables}
        self.modes = modes or {}
        self.calls: Counter = Counter()

    def _table(self, prompt: str) -> SourceTable:
        for title in sorted(self.tables, key=len, reverse=True):
            if title in prompt:
                return self.tables[title]
        raise AssertionError(f"the double knows no table in this prompt: {prompt[:80]!r}")

    def generate(self, requests: list[TextRequest]) -> list[TextReply]:
        return [self.one(request) for request in requests]

    def one(self, request: TextRequest) -> TextReply:
        self.calls[request.stage] += 1
        table = self._table(request.prompt)
        mode = self.modes.get(table.title, Mode())
        columns = table.header[: mode.columns]
        if request.stage == "query":
            text = self.plan(table, columns, mode)
        elif request.stage == "answer":
            second = request.seed % 100 == 1
            text = self.answer(table, columns, mode, second)
        else:  # baseline
            text = self.answer(table, columns, mode, False) if mode.baseline_knows else "I cannot know that."
        return TextReply(text, prompt_tokens=len(request.prompt.split()), completion_tokens=len(text.split()))

    def plan(self, table: SourceTable, columns: list[str], mode: Mode) -> str:
        if mode.plan == "garbage":
            return "Here is a nice task about the table."
        keys = ["Nonexistent"] if mode.plan == "stray_key" else [columns[0]]
        plan = {"intent": f"a reader wants the {table.title}", "columns": columns, "unique_columns": keys,
                "query": f"List all {table.title}, giving {', '.join(columns[1:])} of each."}
        return "Thinking about it.\n```json\n" + json.dumps(plan) + "\n```"

    def answer(self, table: SourceTable, columns: list[str], mode: Mode, second: bool) -> str:
        if second and mode.no_table_2:
            return "Sorry, no table."
        rows = [row[: len(columns)] for row in table.rows[: mode.rows]]
        if second:
            rows = [list(row) for row in rows]
            for i in range(mode.corrupt_cells):
                rows[i][-1] = rows[i][-1] + " (disputed)"
        keys = (mode.keys_2 if second and mode.keys_2 else columns[0])
        return "```markdown\n" + to_markdown_table(columns, rows) + f"\n```\nUnique columns: {keys}"
