"""Per-task statistics over k trials and the macro means of the paper (Avg@k, Max@k, Pass@k) for
all / en / zh, with failed trials as zeros and judge errors counted apart."""

from __future__ import annotations

import pytest

from wideseek_exp import WideseekError
from wideseek_exp.scoring.aggregate import aggregate, render_table, summarize_task
from wideseek_exp.scoring.trial import TrialScore


def trial(item_f1: float, row_f1: float = 0.0, success: float = 0.0, judge_error: bool = False) -> TrialScore:
    return TrialScore(item_f1=item_f1, item_precision=item_f1, item_recall=item_f1, row_f1=row_f1,
                      row_precision=row_f1, row_recall=row_f1, success=success, judge_error=judge_error,
                      reason="judge error: x" if judge_error else "")


def test_per_task_mean_max_min_over_k_slots_missing_as_zero():
    summary = summarize_task("a", "en", [trial(0.5, 0.25), trial(1.0, 1.0, 1.0), None], k=4)
    # slots: 0.5, 1.0, 0 (failed), 0 (absent)
    assert summary.mean["item_f1"] == pytest.approx(0.375) and summary.max["item_f1"] == 1.0
    assert summary.min["item_f1"] == 0.0 and summary.mean["row_f1"] == pytest.approx(0.3125)
    assert summary.mean["success"] == 0.25 and summary.max["success"] == 1.0
    assert summary.missing == 2 and summary.judge_errors == 0


def test_more_trials_than_k_is_an_error():
    with pytest.raises(WideseekError, match="more than k=2"):
        summarize_task("a", "en", [trial(1)] * 3, k=2)


def test_judge_errors_count_as_zero_and_are_counted_apart():
    summary = summarize_task("a", "zh", [trial(1.0, 1.0, 1.0), trial(0.0, judge_error=True)], k=2)
    assert summary.mean["item_f1"] == 0.5 and summary.judge_errors == 1 and summary.missing == 0


def tasks():
    return [
        # en1: item F1 0.2, 0.6 -> mean 0.4, max 0.6; success 0, 1 -> mean 0.5, pass 1
        summarize_task("en1", "en", [trial(0.2, 0.1), trial(0.6, 0.3, 1.0)], k=2),
        # en2: item F1 0.0, 0.2 -> mean 0.1, max 0.2; one judge error
        summarize_task("en2", "en", [trial(0.0, judge_error=True), trial(0.2, 0.2)], k=2),
        # zh1: item F1 0.9 and a failed trial -> mean 0.45, max 0.9
        summarize_task("zh1", "zh", [trial(0.9, 0.5), None], k=2),
    ]


def test_macro_means_over_tasks_for_all_en_zh():
    report = aggregate(tasks(), judge="exact-judge")
    en, zh, everything = report.groups["en"], report.groups["zh"], report.groups["all"]
    assert (en.tasks, zh.tasks, everything.tasks) == (2, 1, 3)
    assert en.avg["item_f1"] == pytest.approx((0.4 + 0.1) / 2)  # Avg@k
    assert en.max["item_f1"] == pytest.approx((0.6 + 0.2) / 2)  # Max@k
    assert en.avg["row_f1"] == pytest.approx((0.2 + 0.1) / 2) and en.max["row_f1"] == pytest.approx(0.25)
    assert en.avg["success"] == pytest.approx(0.25) and en.max["success"] == pytest.approx(0.5)  # Pass@k
    assert zh.avg["item_f1"] == pytest.approx(0.45) and zh.max["item_f1"] == pytest.approx(0.9)
    assert everything.avg["item_f1"] == pytest.approx((0.4 + 0.1 + 0.45) / 3)
    assert everything.max["success"] == pytest.approx(1 / 3)
    assert (everything.judge_errors, everything.tasks_with_judge_errors, everything.missing) == (1, 1, 1)
    assert (en.judge_errors, zh.judge_errors, zh.missing) == (1, 0, 1)
    assert report.headline("zh") == {"item_f1_avg@2": 0.45, "item_f1_max@2": 0.9, "row_f1_avg@2": 0.25,
                                     "row_f1_max@2": 0.5, "success_avg@2": 0.0, "success_pass@2": 0.0}


def test_rendered_table_in_percent_with_the_judge_named():
    text = render_table(aggregate(tasks(), judge="exact-judge (offline)"))
    assert text.splitlines() == [
        "| split | tasks | item F1 avg@2 | item F1 max@2 | row F1 avg@2 | row F1 max@2 | success avg@2 | success pass@2 |",
        "|---|---|---|---|---|---|---|---|",
        "| all | 3 | 31.7 | 56.7 | 18.3 | 33.3 | 16.7 | 33.3 |",
        "| en | 2 | 25.0 | 40.0 | 15.0 | 25.0 | 25.0 | 50.0 |",
        "| zh | 1 | 45.0 | 90.0 | 25.0 | 50.0 | 0.0 | 0.0 |",
        "",
        "judge: exact-judge (offline)",
        "judge errors: 1 trial(s) in 1 task(s), scored 0 above (re-score to retry them); "
        "missing or failed trials: 1, scored 0",
    ]


def test_a_group_without_tasks_is_left_out_of_the_table():
    report = aggregate([summarize_task("e", "en", [trial(1.0, 1.0, 1.0)], k=1)], judge="j")
    assert report.groups["zh"].tasks == 0
    assert [line.split(" |")[0] for line in render_table(report).splitlines()[2:4]] == ["| all", "| en"]


def test_aggregate_needs_tasks_with_one_k():
    with pytest.raises(WideseekError):
        aggregate([], judge="j")
    with pytest.raises(WideseekError, match="different numbers of trials"):
        aggregate([summarize_task("a", "en", [], k=1), summarize_task("b", "en", [], k=2)], judge="j")
