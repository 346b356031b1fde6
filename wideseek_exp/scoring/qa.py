"""Deep-QA answers (WideSeek-R1 records with is_markdown false): the response's last \\boxed{...}
against the reference answer, correct or not.

    judge=exact  normalised exact match (judges.normalize_answer: lower-cased (NFKC), punctuation and
                 the articles a/an/the removed, then every space) against any of the reference's answers
    judge=llm    one call: the judge reads question, reference and boxed answer and says correct or not

A QA trial's TrialScore carries its correctness (1 or 0) in every precision, recall and F1 field and in
success, so Avg@k / Max@k / Pass@k and the reward read a QA task like a one-cell table.
A reference may be a boxed answer itself, a plain string, or a JSON list of accepted answers.
"""

from __future__ import annotations

import json

from wideseek_exp.scoring.judges import Judge, JudgeError
from wideseek_exp.scoring.trial import TrialScore

BOXED = "\\boxed{"


def extract_boxed(text: str | None) -> str | None:
    """The contents of the last \\boxed{...} (nested braces kept), or None."""
    if not text:
        return None
    start = text.rfind(BOXED)
    while start != -1:
        depth, i = 1, start + len(BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(BOXED): i - 1].strip()
        start = text.rfind(BOXED, 0, start)  # an unclosed box: try the one before it
    return None


def reference_answers(answer_text: str) -> list[str]:
    """The accepted answers of a QA record's reference."""
    text = extract_boxed(answer_text) or answer_text.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = None
        if isinstance(values, list) and values and all(isinstance(v, str | int | float) for v in values):
            return [str(v) for v in values]
    return [text]


def score_qa(response: str | None, question: str, answer_text: str, judge: Judge) -> TrialScore:
    boxed = extract_boxed(response)
    if boxed is None:
        return TrialScore(reason="no \\boxed{} answer")
    try:
        correct = float(judge.grade_answer(question, boxed, reference_answers(answer_text)))
    except JudgeError as exc:
        return TrialScore(reason=f"judge error: {exc}", judge_error=True)
    value = 1.0 if correct >= 1.0 else 0.0
    return TrialScore(item_precision=value, item_recall=value, item_f1=value, row_precision=value,
                      row_recall=value, row_f1=value, success=value, reason="" if value else "wrong answer",
                      response_rows=1, gold_rows=1, matched_rows=int(value))
