"""WideSearch scoring: a response's table against a task's gold table, then k trials and many
tasks into the paper's numbers.

    table       tables out of responses (and gold CSV / markdown)
    preprocess  column typing, norm_str / extract_number / norm_date
    trial       TrialScore: what one trial scores, whichever scorer scored it
    judges      the semantic calls: ExactJudge (offline) and LLMJudge (OpenAI-compatible API)
    widesearch  score_response: the official protocol, steps 1-11, with documented divergences
    qa          deep-QA tasks: the last \\boxed{} answer against the reference
    aggregate   Avg@k / Max@k / Pass@k over tasks, for all / en / zh, and the report table

Imports no model code.
"""

from wideseek_exp.scoring.aggregate import Report, TaskSummary, aggregate, render_table, summarize_task
from wideseek_exp.scoring.judges import ExactJudge, Judge, JudgeError, LLMJudge, make_judge
from wideseek_exp.scoring.table import Table, extract_table, read_gold_csv, read_gold_markdown
from wideseek_exp.scoring.trial import TrialScore
from wideseek_exp.scoring.widesearch import score_response, score_task_trials

__all__ = [
    "ExactJudge", "Judge", "JudgeError", "LLMJudge", "Report", "Table", "TaskSummary", "TrialScore", "aggregate",
    "extract_table", "make_judge", "read_gold_csv", "read_gold_markdown", "render_table", "score_response",
    "score_task_trials", "summarize_task",
]
