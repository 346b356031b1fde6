"""What one trial scores: the numbers every scorer returns (widesearch.py for tables, qa.py for boxed
answers) and every aggregate and reward reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrialScore:
    item_precision: float = 0.0
    item_recall: float = 0.0
    item_f1: float = 0.0
    row_precision: float = 0.0
    row_recall: float = 0.0
    row_f1: float = 0.0
    success: float = 0.0  # 1.0 when all six values above are 1
    reason: str = ""  # why the trial scored zero ("no table", "missing column: x", ...); "" when scored
    judge_error: bool = False  # the judge failed after its retries: zeros here, counted apart in reports
    response_rows: int = 0  # P: response rows after dedup (0 when no table was read)
    gold_rows: int = 0  # G: gold rows after dedup (the raw gold row count when scoring stopped early)
    matched_rows: int = 0  # response rows joined to a gold row

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialScore:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
