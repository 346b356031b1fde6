"""The reward of a trajectory (the reward= config group): one scalar, shared by all of its agents.

reward=wideseek, the paper's shaped reward:

    R = r_ans + 0.1 [valid table] + 0.05 [at least one access call]
        - 0.1 * clip((L_max - 3000) / (5000 - 3000), 0, 1)
    R = 0 when there is no valid final table or the lead failed (context or turn limit)

r_ans is the item F1 of the final table against the gold (the WideSearch scorer, scoring/), L_max the
longest single reply, in tokens, of any agent. reward=item_f1 and reward=row_f1 keep only r_ans (that
F1), without shaping. All bonuses, thresholds and the answer metric come from the config.

A valid table is one the scorer can read and that has every required column (the reference zeroes a
table whose required columns cannot be aligned, before any bonus). When the judge fails, the reward
is NaN: the trajectory is left out of its group's baseline and gets a zero advantage (advantages.py),
rather than being punished for an outage.

A deep-QA task (is_markdown false) is rewarded the same way, with a \boxed{} answer in place of the
table and its correctness (judge=exact: normalised match; judge=llm: the judge's verdict) as r_ans.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from wideseek_exp.agents.trajectory import Trajectory
from wideseek_exp.scoring import Judge, extract_table, score_response
from wideseek_exp.scoring.qa import extract_boxed
from wideseek_exp.tasks.record import TaskRecord

ANSWER_METRICS = ("item_f1", "row_f1")
MISSING_COLUMN = "missing column"  # the scorer's reason when a required column cannot be aligned


@dataclass
class Reward:
    total: float  # R; NaN when the judge failed
    answer: float  # r_ans as added to R (0 without a valid table)
    format_bonus: float
    access_bonus: float
    length_penalty: float  # subtracted from R
    item_f1: float  # the scorer's values, whatever R used
    row_f1: float
    valid: bool  # a valid final table from a lead that finished: the trajectory succeeded
    judge_error: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def length_penalty(longest_reply: int, cfg) -> float:
    """cfg.length_penalty * clip((L_max - start) / (end - start), 0, 1)."""
    if cfg.length_penalty == 0:
        return 0.0
    start, end = cfg.length_penalty_start, cfg.length_penalty_end
    fraction = (longest_reply - start) / (end - start) if end > start else float(longest_reply >= start)
    return float(cfg.length_penalty) * min(1.0, max(0.0, fraction))


def trajectory_reward(trajectory: Trajectory, task: TaskRecord, judge: Judge, cfg) -> Reward:
    """R of one trajectory under the reward config `cfg` (cfg.reward)."""
    if cfg.answer_metric not in ANSWER_METRICS:
        raise ValueError(f"reward.answer_metric must be one of {ANSWER_METRICS} (got {cfg.answer_metric!r})")
    response = trajectory.final_answer
    # A QA task (deep-QA records of a hybrid mix) is answered in \boxed{}: a box is its valid answer,
    # and r_ans its correctness (the scorer puts it in every F1 field).
    readable = response is not None and (extract_table(response)[0] is not None if task.is_table
                                         else extract_boxed(response) is not None)
    if trajectory.lead_failed or not readable:
        return Reward(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, valid=False)
    score = score_response(response, task, judge)
    if score.judge_error:
        return Reward(math.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, valid=False, judge_error=True)
    if MISSING_COLUMN in score.reason:
        return Reward(0.0, 0.0, 0.0, 0.0, 0.0, score.item_f1, score.row_f1, valid=False)
    answer = float(getattr(score, cfg.answer_metric))
    format_bonus = float(cfg.format_bonus)
    access_bonus = float(cfg.access_bonus) if trajectory.access_calls > 0 else 0.0
    penalty = length_penalty(trajectory.longest_reply(), cfg)
    total = answer + format_bonus + access_bonus - penalty
    return Reward(total, answer, format_bonus, access_bonus, penalty, score.item_f1, score.row_f1, valid=True)
