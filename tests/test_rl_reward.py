"""rl/reward.py: the paper's shaped reward, its zero cases, and the unshaped item_f1 / row_f1 options,
on hand-made trajectories and a mini-web task scored by the exact judge."""

import math

import pytest
from omegaconf import OmegaConf
from scripted_engine import world_config

from wideseek_exp.agents.trajectory import AgentRun, Trajectory, Turn
from wideseek_exp.rl.reward import length_penalty, trajectory_reward
from wideseek_exp.scoring import ExactJudge, JudgeError, score_response
from wideseek_exp.tasks.loaders import load_task_set

WIDESEEK = OmegaConf.create({"name": "wideseek", "answer_metric": "item_f1", "format_bonus": 0.1,
                             "access_bonus": 0.05, "length_penalty": 0.1, "length_penalty_start": 3000,
                             "length_penalty_end": 5000})
ITEM_F1 = OmegaConf.merge(WIDESEEK, {"name": "item_f1", "format_bonus": 0.0, "access_bonus": 0.0, "length_penalty": 0.0})
ROW_F1 = OmegaConf.merge(ITEM_F1, {"name": "row_f1", "answer_metric": "row_f1"})


@pytest.fixture(scope="module")
def task():
    cfg = world_config()
    return next(t for t in load_task_set(cfg.data, "test") if len(t.gold_rows) >= 4)


def table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "```markdown\n" + "\n".join(lines) + "\n```"


def trajectory(answer, *, access=True, longest=100, lead_failure=None) -> Trajectory:
    """A lead and one subagent; the subagent searched and (optionally) accessed; `longest` is the
    longest reply of any agent, in tokens."""
    lead = AgentRun("lead", "lead", None, None, [1, 2, 3],
                    [Turn([5] * 10, [-0.1] * 10, "stop", tool_name="create_sub_agents", tool_result="reports"),
                     Turn([6] * 20, [-0.1] * 20, "stop")],
                    final_text=None if lead_failure else answer)
    if lead_failure:
        setattr(lead, lead_failure, True)
    sub_turns = [Turn([7] * longest, [-0.2] * longest, "stop", tool_name="search", tool_result="hits")]
    if access:
        sub_turns.append(Turn([8] * 5, [-0.2] * 5, "stop", tool_name="access", tool_result="page"))
    sub_turns.append(Turn([9] * 5, [-0.2] * 5, "stop"))
    sub = AgentRun("subagent", "lead.1.1", "lead", "part", [1, 2], sub_turns, final_text="report")
    return Trajectory("t", 0, 0, "wideseek", 4, [lead, sub], final_answer=None if lead_failure else answer,
                      table_found=answer is not None and "```markdown" in answer and not lead_failure)


def perfect(task) -> str:
    return table(task.gold_columns, task.gold_rows)


def test_a_perfect_table_with_an_access_call_earns_f1_plus_both_bonuses(task):
    reward = trajectory_reward(trajectory(perfect(task)), task, ExactJudge(), WIDESEEK)
    assert reward.valid and reward.item_f1 == 1.0 and reward.answer == 1.0
    assert (reward.format_bonus, reward.access_bonus, reward.length_penalty) == (0.1, 0.05, 0.0)
    assert reward.total == pytest.approx(1.15)


def test_no_access_call_no_access_bonus(task):
    reward = trajectory_reward(trajectory(perfect(task), access=False), task, ExactJudge(), WIDESEEK)
    assert reward.access_bonus == 0.0 and reward.total == pytest.approx(1.1)


@pytest.mark.parametrize("longest,penalty", [(3000, 0.0), (3500, 0.025), (4000, 0.05), (5000, 0.1), (9000, 0.1)])
def test_length_penalty_grows_from_3000_to_5000_tokens(task, longest, penalty):
    assert length_penalty(longest, WIDESEEK) == pytest.approx(penalty)
    reward = trajectory_reward(trajectory(perfect(task), longest=longest), task, ExactJudge(), WIDESEEK)
    assert reward.length_penalty == pytest.approx(penalty) and reward.total == pytest.approx(1.15 - penalty)


def test_a_partial_table_earns_its_item_f1(task):
    answer = table(task.gold_columns, task.gold_rows[:2])
    expected = score_response(answer, task, ExactJudge())
    assert 0 < expected.item_f1 < 1
    reward = trajectory_reward(trajectory(answer), task, ExactJudge(), WIDESEEK)
    assert reward.answer == expected.item_f1 and reward.total == pytest.approx(expected.item_f1 + 0.15)


@pytest.mark.parametrize("answer", [None, "I could not find the airports.", "```markdown\nno table here\n```"])
def test_no_valid_table_scores_zero_whatever_the_shaping(task, answer):
    reward = trajectory_reward(trajectory(answer), task, ExactJudge(), WIDESEEK)
    assert reward.total == 0.0 and not reward.valid
    assert (reward.answer, reward.format_bonus, reward.access_bonus, reward.length_penalty) == (0, 0, 0, 0)


@pytest.mark.parametrize("failure", ["turn_limit", "context_overflow"])
def test_a_failed_lead_scores_zero(task, failure):
    reward = trajectory_reward(trajectory(perfect(task), lead_failure=failure), task, ExactJudge(), WIDESEEK)
    assert reward.total == 0.0 and not reward.valid


def test_a_table_missing_a_required_column_is_not_valid(task):
    answer = table(task.gold_columns[:-1], [row[:-1] for row in task.gold_rows])
    assert "missing column" in score_response(answer, task, ExactJudge()).reason
    reward = trajectory_reward(trajectory(answer), task, ExactJudge(), WIDESEEK)
    assert reward.total == 0.0 and not reward.valid and reward.format_bonus == 0.0


def test_item_f1_and_row_f1_rewards_have_no_shaping(task):
    answer = table(task.gold_columns, task.gold_rows[:2])
    score = score_response(answer, task, ExactJudge())
    long_with_access = trajectory(answer, longest=6000)
    item = trajectory_reward(long_with_access, task, ExactJudge(), ITEM_F1)
    row = trajectory_reward(long_with_access, task, ExactJudge(), ROW_F1)
    assert item.total == score.item_f1 and row.total == score.row_f1
    assert item.format_bonus == item.access_bonus == item.length_penalty == 0.0
    assert trajectory_reward(trajectory("no table"), task, ExactJudge(), ITEM_F1).total == 0.0


def test_a_judge_failure_leaves_the_reward_unscored(task):
    class Failing(ExactJudge):
        def align_keys(self, column, response_values, gold_values):
            raise JudgeError("endpoint down")

    reward = trajectory_reward(trajectory(perfect(task)), task, Failing(), WIDESEEK)
    assert math.isnan(reward.total) and reward.judge_error and not reward.valid


def test_the_config_files_hold_the_papers_constants():
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "conf" / "reward"
    assert OmegaConf.load(conf / "wideseek.yaml") == WIDESEEK
    for name in ("item_f1", "row_f1"):
        option = OmegaConf.load(conf / f"{name}.yaml")
        assert option.format_bonus == option.access_bonus == option.length_penalty == 0.0
