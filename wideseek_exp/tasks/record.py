"""One broad task in the WideSearch layout, and the markdown tables its gold answer is kept in.

Saved layout (one JSON object per line):
  instance_id, query, language,
  evaluation   a JSON *string* {"unique_columns", "required", "eval_pipeline"} as the official
               WideSearch data keeps it (a string keeps the column-keyed dict from clashing with
               other rows' schemas when `datasets` infers one),
  answer       the gold table as markdown, display headers,
  family, entity_set, split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from wideseek_exp.scoring.table import normalize_column, read_gold_markdown  # tasks may import scoring, not the reverse

__all__ = ["TaskRecord", "normalize_column", "parse_markdown_table", "to_markdown_table"]

META_FIELDS = ("family", "entity_set", "split")


def escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(escape_cell(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table in `text`: the scorer's gold reader (one
    table grammar for gold and responses: `\\|` is a literal pipe). ValueError when there is no
    table, no separator line under the header, or a row not as wide as the header."""
    table = read_gold_markdown(text)
    return table.columns, table.rows


@dataclass
class TaskRecord:
    instance_id: str
    query: str
    language: str
    unique_columns: list[str]  # normalised
    required: list[str]  # normalised
    eval_pipeline: dict[str, dict]  # normalised column -> {"preprocess", "metric", optional "criterion"}
    gold_columns: list[str]  # display names, in table order
    gold_rows: list[list[str]]
    meta: dict[str, str] = field(default_factory=dict)  # family, entity_set, split
    # QA tasks (WideSeek-R1 deep-QA records, is_markdown false) have no gold table: the columns,
    # rows and evaluation above stay empty and the reference answer string is kept as given.
    is_table: bool = True
    answer_text: str = ""

    @property
    def evaluation(self) -> dict:
        return {"unique_columns": self.unique_columns, "required": self.required, "eval_pipeline": self.eval_pipeline}

    @property
    def answer_markdown(self) -> str:
        return to_markdown_table(self.gold_columns, self.gold_rows)

    def to_json(self) -> dict:
        record = {
            "instance_id": self.instance_id,
            "query": self.query,
            "language": self.language,
            "evaluation": json.dumps(self.evaluation, ensure_ascii=False),
            "answer": self.answer_markdown,
        }
        record.update({key: self.meta.get(key, "") for key in META_FIELDS})
        return record

    @classmethod
    def from_json(cls, record: dict) -> TaskRecord:
        """Inverse of to_json; raises ValueError or KeyError on a malformed record."""
        evaluation = record["evaluation"]
        if isinstance(evaluation, str):
            evaluation = json.loads(evaluation)
        columns, rows = parse_markdown_table(record["answer"])
        return cls(
            instance_id=str(record["instance_id"]),
            query=str(record["query"]),
            language=str(record.get("language", "en")),
            unique_columns=list(evaluation["unique_columns"]),
            required=list(evaluation["required"]),
            eval_pipeline=dict(evaluation["eval_pipeline"]),
            gold_columns=columns,
            gold_rows=rows,
            meta={key: str(record[key]) for key in META_FIELDS if key in record},
        )
