"""Deep-QA records (is_markdown false): the boxed answer, the exact judge's normalised match, the
scorer's TrialScore and the reward (the LLM judge's path is in test_scoring_judges.py)."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from test_rl_reward import WIDESEEK, trajectory

from wideseek_exp.rl.reward import trajectory_reward
from wideseek_exp.scoring import ExactJudge, JudgeError, score_response
from wideseek_exp.scoring.aggregate import summarize_task
from wideseek_exp.scoring.judges import normalize_answer
from wideseek_exp.scoring.qa import extract_boxed, reference_answers
from wideseek_exp.tasks.record import TaskRecord


def qa(answer: str) -> TaskRecord:
    return TaskRecord("qa-1", "Who wrote The Hobbit?", "en", [], [], {}, [], [], is_table=False, answer_text=answer)


def test_the_last_box_is_the_answer_and_braces_nest():
    assert extract_boxed("maybe \\boxed{A} but finally \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{Paris} and an unclosed \\boxed{Lyo") == "Paris"
    assert extract_boxed("no box") is None and extract_boxed(None) is None


def test_normalisation_and_reference_lists():
    assert normalize_answer("  The J.R.R. Tolkien! ") == "jrrtolkien"
    assert reference_answers("\\boxed{Paris}") == ["Paris"]
    assert reference_answers('["J. R. R. Tolkien", "Tolkien"]') == ["J. R. R. Tolkien", "Tolkien"]
    assert reference_answers("plain answer") == ["plain answer"]


@pytest.mark.parametrize("response, correct, reason", [
    ("I found it: \\boxed{J.R.R. Tolkien}", 1.0, ""),
    ("\\boxed{the jrr tolkien}", 1.0, ""),
    ("\\boxed{C. S. Lewis}", 0.0, "wrong answer"),
    ("J.R.R. Tolkien", 0.0, "no \\boxed{} answer"),
    ("\\boxed{}", 0.0, "wrong answer"),
])
def test_exact_judge_scores_the_boxed_answer(response, correct, reason):
    score = score_response(response, qa("\\boxed{J. R. R. Tolkien}"), ExactJudge())
    assert (score.item_f1, score.row_f1, score.success, score.reason) == (correct, correct, correct, reason)


def test_any_accepted_reference_counts():
    task = qa('["J. R. R. Tolkien", "Tolkien"]')
    assert score_response("\\boxed{Tolkien}", task, ExactJudge()).success == 1.0


def test_qa_trials_aggregate_like_tables():
    task = qa("\\boxed{Tolkien}")
    scores = [score_response(r, task, ExactJudge()) for r in ("\\boxed{Tolkien}", "\\boxed{Lewis}")]
    summary = summarize_task(task.instance_id, "en", scores, 2)
    assert summary.mean["success"] == 0.5 and summary.max["success"] == 1.0


def test_reward_of_a_qa_trajectory():
    task = qa("\\boxed{Tolkien}")
    right = trajectory_reward(trajectory("\\boxed{Tolkien}"), task, ExactJudge(), WIDESEEK)
    assert right.valid and right.answer == 1.0 and right.total == pytest.approx(1.15)
    wrong = trajectory_reward(trajectory("\\boxed{Lewis}"), task, ExactJudge(), WIDESEEK)
    assert wrong.valid and wrong.answer == 0.0 and wrong.total == pytest.approx(0.15)
    unboxed = trajectory_reward(trajectory("Tolkien"), task, ExactJudge(), WIDESEEK)
    assert not unboxed.valid and unboxed.total == 0.0
    item_f1 = OmegaConf.merge(WIDESEEK, {"format_bonus": 0.0, "access_bonus": 0.0})
    assert trajectory_reward(trajectory("\\boxed{Tolkien}"), task, ExactJudge(), item_f1).total == 1.0


def test_a_judge_failure_on_qa_gives_a_nan_reward():
    class Failing(ExactJudge):
        def grade_answer(self, question, response, references):
            raise JudgeError("down")

    reward = trajectory_reward(trajectory("\\boxed{Tolkien}"), qa("Tolkien"), Failing(), WIDESEEK)
    assert reward.judge_error and math.isnan(reward.total)


def test_task_score_reports_a_hybrid_set_of_table_and_qa_tasks(tmp_path):
    import json

    from hydra import compose, initialize_config_dir
    from test_task_loaders import r1_qa_record, r1_table_record, write_jsonl

    from wideseek_exp.jobs.score import run as run_score
    from wideseek_exp.tracking import JobRun

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "test.jsonl", [r1_table_record("wide-1"), r1_qa_record("deep-1")])
    responses = tmp_path / "responses"
    responses.mkdir()
    table = "```markdown\n| Country | Capital City |\n|---|---|\n| Chile | Santiago |\n| Bolivia | Sucre |\n```"
    trials = [{"instance_id": "wide-1", "sample": 0, "response": table},
              {"instance_id": "deep-1", "sample": 0, "response": "So: \\boxed{paris}"},
              {"instance_id": "deep-1", "sample": 1, "response": "\\boxed{Lyon}"}]
    write_jsonl(responses / "trials.jsonl", trials)
    conf = str(__import__("pathlib").Path(__file__).parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=score", "data=wideseek_train", f"data.path={data}", "data.split=test", "eval.samples=2",
            f"score.responses={responses}", "tracking.enabled=false"])
    headline = run_score(cfg, JobRun(None), tmp_path / "out")
    scores = {(s["instance_id"], s["sample"]): s for s in map(json.loads, (tmp_path / "out/scores.jsonl").open())}
    assert scores[("deep-1", 0)]["success"] == 1.0 and scores[("deep-1", 1)]["reason"] == "wrong answer"
    assert scores[("wide-1", 0)]["success"] == 1.0 and scores[("wide-1", 1)]["reason"] == "no trial"
    # success avg@2 over the two tasks: wide 1/2, deep 1/2; pass@2: both 1
    assert headline["success_avg@2"] == pytest.approx(0.5) and headline["success_pass@2"] == pytest.approx(1.0)
