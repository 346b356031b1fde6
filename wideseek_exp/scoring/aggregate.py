"""From trial scores to the paper's numbers: per task over k trials, then a macro mean over tasks.

Per task, over its k trial slots: mean, max and min of every metric. A missing or failed trial
(None: the rollout gave no answer) fills its slot with zeros. Over tasks, unweighted:
    Avg@k  = mean of per-task means        (item F1, row F1, success, ...)
    Max@k  = mean of per-task maxima        (item F1, row F1)
    Pass@k = mean of per-task max success
reported for all tasks, English (en) and Chinese (zh).

judge_error trials: the judge (not the agent) failed after its retries, so the trial has no true
score. They enter the means as the zeros their TrialScore holds, as the official scorer counts
them (a lower bound: re-scoring retries them, answers already cached cost nothing), and they are
counted apart, per task and per group, and named under the rendered table, so they are never
mistaken for agent failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from wideseek_exp import WideseekError
from wideseek_exp.scoring.trial import TrialScore

METRICS = ("item_precision", "item_recall", "item_f1", "row_precision", "row_recall", "row_f1", "success")
GROUPS = ("all", "en", "zh")


@dataclass
class TaskSummary:
    instance_id: str
    language: str
    k: int
    mean: dict[str, float]
    max: dict[str, float]
    min: dict[str, float]
    missing: int = 0  # trial slots with no score (failed or absent rollouts): zeros
    judge_errors: int = 0  # trials the judge could not score: zeros, counted here


def summarize_task(instance_id: str, language: str, trials: Sequence[TrialScore | None], k: int) -> TaskSummary:
    """Mean/max/min of every metric over exactly k trial slots; None or absent trials are zeros."""
    if len(trials) > k:
        raise WideseekError(f"task {instance_id}: {len(trials)} trials, more than k={k}")
    scored = [trial for trial in trials if trial is not None]
    slots = scored + [TrialScore()] * (k - len(scored))
    values = {metric: [getattr(trial, metric) for trial in slots] for metric in METRICS}
    return TaskSummary(
        instance_id=instance_id,
        language=language,
        k=k,
        mean={metric: sum(v) / k for metric, v in values.items()},
        max={metric: max(v) for metric, v in values.items()},
        min={metric: min(v) for metric, v in values.items()},
        missing=k - len(scored),
        judge_errors=sum(trial.judge_error for trial in scored),
    )


@dataclass
class GroupResult:
    name: str  # all | en | zh
    tasks: int = 0
    avg: dict[str, float] = field(default_factory=dict)  # Avg@k: mean over tasks of per-task means
    max: dict[str, float] = field(default_factory=dict)  # Max@k; max["success"] is Pass@k
    min: dict[str, float] = field(default_factory=dict)
    missing: int = 0
    judge_errors: int = 0
    tasks_with_judge_errors: int = 0


@dataclass
class Report:
    k: int
    judge: str  # the judge's label: every report says which judge scored it
    groups: dict[str, GroupResult]
    tasks: list[TaskSummary]

    def headline(self, group: str = "all") -> dict[str, float]:
        """The paper's six numbers (fractions, not %)."""
        result = self.groups[group]
        return {
            f"item_f1_avg@{self.k}": result.avg.get("item_f1", 0.0),
            f"item_f1_max@{self.k}": result.max.get("item_f1", 0.0),
            f"row_f1_avg@{self.k}": result.avg.get("row_f1", 0.0),
            f"row_f1_max@{self.k}": result.max.get("row_f1", 0.0),
            f"success_avg@{self.k}": result.avg.get("success", 0.0),
            f"success_pass@{self.k}": result.max.get("success", 0.0),
        }


def _group(name: str, tasks: list[TaskSummary]) -> GroupResult:
    result = GroupResult(name=name, tasks=len(tasks))
    for metric in METRICS if tasks else ():
        result.avg[metric] = sum(task.mean[metric] for task in tasks) / len(tasks)
        result.max[metric] = sum(task.max[metric] for task in tasks) / len(tasks)
        result.min[metric] = sum(task.min[metric] for task in tasks) / len(tasks)
    result.missing = sum(task.missing for task in tasks)
    result.judge_errors = sum(task.judge_errors for task in tasks)
    result.tasks_with_judge_errors = sum(1 for task in tasks if task.judge_errors)
    return result


def aggregate(summaries: Sequence[TaskSummary], judge: str) -> Report:
    """Macro means over tasks for all / en / zh (a language other than en and zh counts in all)."""
    if not summaries:
        raise WideseekError("no tasks to aggregate")
    ks = {summary.k for summary in summaries}
    if len(ks) != 1:
        raise WideseekError(f"tasks summarised over different numbers of trials: {sorted(ks)}")
    groups = {
        "all": _group("all", list(summaries)),
        "en": _group("en", [s for s in summaries if s.language == "en"]),
        "zh": _group("zh", [s for s in summaries if s.language == "zh"]),
    }
    return Report(k=ks.pop(), judge=judge, groups=groups, tasks=list(summaries))


def render_table(report: Report) -> str:
    """The paper's table, in %, one decimal, one line per group with tasks, then the judge and the
    judge-error count."""
    k = report.k
    header = ["split", "tasks", f"item F1 avg@{k}", f"item F1 max@{k}", f"row F1 avg@{k}", f"row F1 max@{k}",
              f"success avg@{k}", f"success pass@{k}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in GROUPS:
        group = report.groups[name]
        if not group.tasks:
            continue
        numbers = report.headline(name).values()
        lines.append("| " + " | ".join([name, str(group.tasks)] + [f"{100 * x:.1f}" for x in numbers]) + " |")
    everything = report.groups["all"]
    lines.append("")
    lines.append(f"judge: {report.judge}")
    lines.append(
        f"judge errors: {everything.judge_errors} trial(s) in {everything.tasks_with_judge_errors} task(s), "
        "scored 0 above (re-score to retry them); "
        f"missing or failed trials: {everything.missing}, scored 0"
    )
    return "\n".join(lines)
