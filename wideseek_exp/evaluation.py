"""The evaluator: rollouts on a task set, WideSearch scoring, the paper's table, MLflow. task=eval,
training's periodic evaluation and a sweep point that trains first all evaluate through `evaluate`;
task=score reports on responses that already exist through `report`.

    1. the tasks: the split (data=...), every eval.stride-th task, the first eval.limit of them;
    2. the trials: eval.samples per task, rolled out by the configured agent, engine and search backend
       (or by the policy a trainer holds), each written to the folder as it finishes (trialstore.py); a
       rerun on the same folder (hydra.run.dir=...) skips finished trials;
    3. the report: every trial scored (scoring/), Avg@k / Max@k / Pass@k and the rollout means gathered in
       one metrics dict, written as metrics.json, results.md, per_task.csv and scores.jsonl, logged to
       MLflow and printed as the paper's table.
"""

from __future__ import annotations

import copy
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.agents import RolloutStats, run_rollouts
from wideseek_exp.agents.funnel import funnel_shares, gold_values, protocol_stages, render_funnel, stage_row
from wideseek_exp.agents.summarize import make_helper_summarizer
from wideseek_exp.scoring import aggregate, make_judge, render_table, score_response, summarize_task
from wideseek_exp.scoring.aggregate import Report
from wideseek_exp.scoring.judges import Judge
from wideseek_exp.scoring.trial import TrialScore
from wideseek_exp.search.factory import make_search_backend
from wideseek_exp.tasks.loaders import load_task_set
from wideseek_exp.tasks.record import TaskRecord
from wideseek_exp.tracking import JobRun, RunAtStep
from wideseek_exp.trialstore import TRIALS_FILE, TrialStore

TRAJECTORY_SAMPLES = 5  # whole trajectories logged to MLflow per evaluation (all are in the job folder)


@dataclass
class Policy:
    """What rolls out the trials: the engine (and the subagents' own, when subagent_model is set), the
    search backend and the access tool's summariser (None: agent.summarizer's default)."""

    engine: Any
    search: Any
    summarizer: Any = None
    subagent_engine: Any = None


def policy_from_config(cfg: DictConfig) -> Policy:
    """The configured engines, search backend and summariser; the caller closes them (close_policy)."""
    from wideseek_exp.engines.factory import make_engine, make_subagent_engine

    engine = make_engine(cfg)
    return Policy(engine, make_search_backend(cfg), make_helper_summarizer(cfg), make_subagent_engine(cfg, engine))


def close_policy(policy: Policy) -> None:
    for used in (policy.engine, policy.subagent_engine, getattr(policy.summarizer, "engine", None)):
        if used is not None:
            used.close()


def load_eval_tasks(cfg: DictConfig) -> list[TaskRecord]:
    tasks = list(load_task_set(cfg.data, cfg.data.split))[:: cfg.eval.stride]
    if cfg.eval.limit is not None:
        tasks = tasks[: cfg.eval.limit]
    # Table and deep-QA tasks alike: the scorer grades a QA task by its boxed answer.
    if not tasks:
        raise WideseekError(f"no tasks to evaluate in data={cfg.data.name} split={cfg.data.split}")
    return tasks


def eval_settings(cfg: DictConfig) -> dict:
    """What decides the trials of a folder: resuming into it with other values is refused."""
    settings = {
        "model": cfg.model.path, "engine": cfg.engine.name,
        "subagent_model": cfg.subagent_model.path if cfg.subagent_model is not None else None, "search": cfg.search.name, "subagents": cfg.subagents,
        "agent": OmegaConf.to_container(cfg.agent, resolve=True), "data": cfg.data.name, "data_path": cfg.data.path,
        "split": cfg.data.split, "samples": cfg.eval.samples, "seed": cfg.seed,
        "summarizer_engine": cfg.summarizer_engine.name if cfg.summarizer_engine is not None else None,
        "summarizer_model": cfg.summarizer_model.path if cfg.summarizer_model is not None else None,
    }
    return json.loads(json.dumps(settings, default=str))


def trial_record(trajectory, task: TaskRecord | None = None) -> dict:
    """The per-trial line of trials.jsonl: what scoring and reports need, without token ids; with the task,
    the protocol stages the trial got through (agents/funnel.py)."""
    root = trajectory.root
    record = {
        "instance_id": trajectory.instance_id,
        "sample": trajectory.sample_index,
        "response": trajectory.final_answer,
        "table_found": trajectory.table_found,
        "lead_failure": root.failure,
        "lead_reply_limit": root.reply_limit,
        "subagents": trajectory.subagent_count,
        "lead_calls": trajectory.lead_calls,
        "search_calls": trajectory.search_calls,
        "access_calls": trajectory.access_calls,
        "turns": {agent.agent_id: len(agent.turns) for agent in trajectory.agents},
        "generated_tokens": trajectory.generated_tokens,
        "prefill_tokens": trajectory.prefill_tokens,
        "longest_reply": trajectory.longest_reply(),
        "wall_s": trajectory.timings.get("wall_s", 0.0),
    }
    if task is not None:
        record["funnel"] = protocol_stages(trajectory, gold_values(task.gold_rows))
    return record


def evaluate(cfg: DictConfig, tracker: JobRun, folder: Path, policy: Policy | None = None, title: str = "",
             settings: dict | None = None, rollout_prefix: str = "rollout.") -> dict:
    """Roll out, score and report cfg.eval.samples trials of every task of load_eval_tasks(cfg) into
    `folder`; returns the report's headline. Without `policy` the configured one is built (only when
    trials are left to run) and closed afterwards; a given policy is the caller's to close. `title`
    names the evaluation in its first line ("step 20"), `settings` join those a resumed folder must match,
    and the rollout means are logged under `rollout_prefix`."""
    tasks = load_eval_tasks(cfg)
    samples = cfg.eval.samples
    store = TrialStore(folder, {**eval_settings(cfg), **(settings or {})})
    total = len(tasks) * samples
    done_before = sum(store.done(task.instance_id, s) for task in tasks for s in range(samples))
    print(f"evaluating {title + ': ' if title else ''}{len(tasks)} tasks x {samples} samples of split "
          f"{cfg.data.split}, width {cfg.subagents}, agent={cfg.agent.name}, model={cfg.model.name}, "
          f"engine={cfg.engine.name}, search={cfg.search.name}"
          + (", policy=scripted" if cfg.agent.policy == "scripted" else "") + f" -> {folder}", flush=True)
    if done_before:
        print(f"resuming: {done_before} of {total} trials already done", flush=True)

    stats, started, generated_now = RolloutStats(), time.perf_counter(), 0
    if done_before < total:
        from tqdm import tqdm

        used = policy or policy_from_config(cfg)
        progress = tqdm(total=total, initial=done_before, desc="trials", unit="trial", file=sys.stderr)
        started = time.perf_counter()  # the rollouts' wall time, without loading the model

        task_of = {task.instance_id: task for task in tasks}

        def finished(trajectory) -> None:
            nonlocal generated_now
            store.add(trial_record(trajectory, task_of[trajectory.instance_id]), trajectory.to_dict())
            generated_now += sum(trajectory.generated_tokens.values())
            progress.update()

        try:
            run_rollouts(tasks, samples, used.engine, used.search, used.engine.tokenizer, cfg.agent, cfg.search,
                         cfg.seed, subagent_engine=used.subagent_engine, summarizer=used.summarizer,
                         on_trajectory=finished, stats=stats, skip=store.done,
                         max_active_trajectories=cfg.eval.max_active_trajectories, keep=False)
        finally:
            progress.close()
            if policy is None:
                close_policy(used)
    done = [store.trials[(t.instance_id, s)] for t in tasks for s in range(samples) if store.done(t.instance_id, s)]
    rollout = rollout_metrics(done, time.perf_counter() - started, generated_now, stats, agent_roles(cfg))
    result = report(cfg, tasks, store.trials, samples, folder, tracker, rollout, rollout_prefix)
    log_trajectory_samples(store, tracker, folder)
    return result.headline()


def evaluate_training_step(cfg: DictConfig, tracker: JobRun, folder: Path, step: int, engine, search,
                           summarizer=None) -> dict:
    """Training's periodic evaluation: the policy the trainer holds, on trainer.eval_split (eval.limit tasks x
    eval.samples), into <folder>/eval/step_N and the job's MLflow run at `step`."""
    eval_cfg = copy.deepcopy(cfg)
    OmegaConf.update(eval_cfg, "data.split", cfg.trainer.eval_split)
    name = f"step_{step:06d}"
    return evaluate(eval_cfg, RunAtStep(tracker, step, f"eval/{name}"), folder / "eval" / name,
                    Policy(engine, search, summarizer), title=f"step {step}", settings={"train_step": step},
                    rollout_prefix="eval.rollout.")


def agent_roles(cfg: DictConfig) -> tuple[str, ...]:
    """The roles whose tokens every evaluation of this agent logs (0 when a role generated nothing)."""
    return ("single",) if cfg.agent.name == "singleseek" else ("lead", "subagent")


def rollout_metrics(trials: list[dict], seconds: float, generated_now: int, stats,
                    roles: tuple[str, ...] = ()) -> dict[str, float]:
    """Means over trials of what the agents did, and this run's throughput (tokens generated now).

    Tokens per role are logged for every role in `roles` (0 when it generated nothing, so that the
    columns of a sweep line up) and for any other role that appears (the summarizer)."""
    count = max(len(trials), 1)
    tokens_by_role: dict[str, float] = dict.fromkeys(roles, 0.0)
    prefill_by_role: dict[str, float] = dict.fromkeys(roles, 0.0)
    for trial in trials:
        for role, tokens in trial["generated_tokens"].items():
            tokens_by_role[role] = tokens_by_role.get(role, 0.0) + tokens
        for role, tokens in (trial.get("prefill_tokens") or {}).items():
            prefill_by_role[role] = prefill_by_role.get(role, 0.0) + tokens
    lead_calls = sum(t["lead_calls"] for t in trials)
    metrics = {
        "trials": len(trials),
        "subagents_mean": sum(t["subagents"] for t in trials) / count,
        # the width actually used: subagents started per create_sub_agents call (at most W)
        "subagents_per_call_mean": sum(t["subagents"] for t in trials) / lead_calls if lead_calls else 0.0,
        "lead_calls_mean": lead_calls / count,
        "search_calls_mean": sum(t["search_calls"] for t in trials) / count,
        "access_calls_mean": sum(t["access_calls"] for t in trials) / count,
        "table_found_rate": sum(bool(t["table_found"]) for t in trials) / count,
        "lead_failure_rate": sum(t["lead_failure"] is not None for t in trials) / count,
        "longest_reply_mean": sum(t["longest_reply"] for t in trials) / count,
        "wall_seconds": seconds,
        "tokens_per_second": generated_now / seconds if seconds > 0 else 0.0,
    }
    for role, tokens in tokens_by_role.items():
        metrics[f"generated_tokens_mean.{role}"] = tokens / count
    for role, tokens in prefill_by_role.items():
        metrics[f"prefill_tokens_mean.{role}"] = tokens / count
    flushes = getattr(stats, "flushes", None) or []
    if flushes:
        sizes = [len(getattr(flush, "prompt_lengths", []) or []) or getattr(flush, "size", 0) for flush in flushes]
        metrics["engine_calls"] = len(flushes)
        metrics["engine_batch_mean"] = sum(sizes) / len(sizes)
    return metrics


def log_trajectory_samples(store: TrialStore, tracker: JobRun, folder: Path) -> None:
    if not tracker.active:
        return
    sample_path = folder / "trajectories_sample.jsonl"
    with sample_path.open("w", encoding="utf-8") as handle:
        for index, trajectory in enumerate(store.trajectories()):
            if index >= TRAJECTORY_SAMPLES:
                break
            handle.write(json.dumps(trajectory, ensure_ascii=False) + "\n")
    tracker.log_artifact(sample_path)
    tracker.log_artifact(folder / TRIALS_FILE)


# --------------------------------------------------------------------------------------------- the report


def score_trials(tasks: list[TaskRecord], trials: dict[tuple[str, int], dict], samples: int,
                 judge: Judge) -> tuple[Report, list[dict]]:
    """Every trial scored (a missing trial, or one without a final answer, scores zeros) and aggregated;
    also one line per trial for scores.jsonl."""
    summaries, score_lines = [], []
    for task in tasks:
        task_scores: list[TrialScore | None] = []
        for sample in range(samples):
            trial = trials.get((task.instance_id, sample))
            if trial is None or trial.get("response") is None:
                task_scores.append(None)  # missing or failed: zeros in every aggregate
                reason = "no trial" if trial is None else "no final answer"
                score_lines.append({"instance_id": task.instance_id, "sample": sample, "reason": reason})
                continue
            score = score_response(trial["response"], task, judge)
            task_scores.append(score)
            score_lines.append({"instance_id": task.instance_id, "sample": sample, **score.to_dict()})
        summaries.append(summarize_task(task.instance_id, task.language, task_scores, samples))
    return aggregate(summaries, judge.label), score_lines


def report(cfg: DictConfig, tasks: list[TaskRecord], trials: dict[tuple[str, int], dict], samples: int,
           folder: Path, tracker: JobRun, rollout: dict[str, float] | None = None,
           rollout_prefix: str = "rollout.") -> Report:
    """Score the trials and report them, all in one place: the metrics dict (eval.* from the scores,
    `rollout_prefix`* from the rollout means, when there were rollouts), the files (metrics.json,
    results.md, per_task.csv, scores.jsonl), MLflow (metrics, judge tag, the files) and the printed table."""
    judge = make_judge(cfg.judge)
    folder.mkdir(parents=True, exist_ok=True)
    scored, score_lines = score_trials(tasks, trials, samples, judge)
    metrics = report_metrics(scored)
    funnel = trial_funnel(tasks, trials, samples, score_lines)
    if funnel is not None:
        metrics.update({f"funnel.{stage}": share for stage, share in funnel.items()})
    logged = {**metrics, **{rollout_prefix + name: value for name, value in (rollout or {}).items()}}
    table = render_table(scored)
    if funnel is not None:
        table += "\n\n" + render_funnel(funnel, len(tasks) * samples)

    with (folder / "scores.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in score_lines)
    write_per_task_csv(folder / "per_task.csv", scored, tasks)
    (folder / "results.md").write_text(table + "\n")
    summary = {"judge": judge.label, "k": scored.k, "metrics": metrics}
    if rollout is not None:
        summary["rollout"] = rollout
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    tracker.log_metrics(logged)
    tracker.set_tags({"judge": judge.label.split()[0]})
    for name in ("results.md", "per_task.csv", "scores.jsonl", "metrics.json"):
        tracker.log_artifact(folder / name)
    print(table, flush=True)
    return scored


def trial_funnel(tasks: list[TaskRecord], trials: dict[tuple[str, int], dict], samples: int,
                 score_lines: list[dict]) -> dict[str, float] | None:
    """The protocol funnel over every trial of the evaluation (a missing one passes no stage), or None when the
    trials carry no stages (responses scored without their trajectories: task=score on official files)."""
    if not any("funnel" in trial for trial in trials.values()):
        return None
    item_f1 = {(line["instance_id"], line["sample"]): line.get("item_f1") for line in score_lines}
    rows = [stage_row((trials.get((task.instance_id, sample)) or {}).get("funnel"),
                      item_f1.get((task.instance_id, sample)))
            for task in tasks for sample in range(samples)]
    return funnel_shares(rows)


def report_metrics(report: Report) -> dict[str, float]:
    """MLflow names: eval.item_f1_avg (all tasks), eval.en.item_f1_avg, ... (k is logged as eval.k)."""
    metrics: dict[str, float] = {"eval.k": report.k}
    for group, result in report.groups.items():
        if not result.tasks:
            continue
        prefix = "eval." if group == "all" else f"eval.{group}."
        for name, value in report.headline(group).items():
            metrics[prefix + name.split("@")[0]] = value
        metrics[prefix + "tasks"] = result.tasks
        metrics[prefix + "judge_errors"] = result.judge_errors
        metrics[prefix + "missing_trials"] = result.missing
    return metrics


def write_per_task_csv(path: Path, report: Report, tasks: list[TaskRecord]) -> None:
    family = {task.instance_id: task.meta.get("family", "") for task in tasks}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instance_id", "language", "family", "item_f1_mean", "item_f1_max", "row_f1_mean",
                         "row_f1_max", "success_mean", "success_max", "missing", "judge_errors"])
        for summary in report.tasks:
            writer.writerow([summary.instance_id, summary.language, family.get(summary.instance_id, ""),
                             *(f"{x:.4f}" for x in (summary.mean["item_f1"], summary.max["item_f1"],
                                                   summary.mean["row_f1"], summary.max["row_f1"],
                                                   summary.mean["success"], summary.max["success"])),
                             summary.missing, summary.judge_errors])
