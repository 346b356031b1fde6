"""task=eval and task=score: rollouts on a task set, WideSearch scoring, the paper's table, MLflow.

task=eval
    1. load the task split (data=...), every eval.stride-th task, the first eval.limit of them;
    2. roll out eval.samples trials per task with the configured agent, engine and search backend,
       every trial written to the job folder as it finishes (trialstore.py); a rerun on the same
       folder (hydra.run.dir=...) skips finished trials;
    3. score every trial (scoring/), aggregate Avg@k / Max@k / Pass@k, write metrics.json,
       results.md, per_task.csv and scores.jsonl, log them to MLflow and print the table.

task=score
    the same step 3 for responses that already exist: an eval folder of ours, or the per-trial
    response files of the official WideSearch runner.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.scoring import aggregate, make_judge, render_table, score_response, summarize_task
from wideseek_exp.scoring.aggregate import Report
from wideseek_exp.scoring.widesearch import TrialScore
from wideseek_exp.tasks.loaders import load_task_set
from wideseek_exp.tasks.record import TaskRecord
from wideseek_exp.tracking import JobRun
from wideseek_exp.trialstore import TRIALS_FILE, TrialStore

TRAJECTORY_SAMPLES = 5  # whole trajectories logged to MLflow per evaluation (all are in the job folder)


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


def trial_record(trajectory) -> dict:
    """The per-trial line of trials.jsonl: what scoring and reports need, without token ids."""
    root = trajectory.root
    return {
        "instance_id": trajectory.instance_id,
        "sample": trajectory.sample_index,
        "response": trajectory.final_answer,
        "table_found": trajectory.table_found,
        "lead_failure": root.failure,
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


def run_eval(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    from wideseek_exp.agents import RolloutStats, run_rollouts
    from wideseek_exp.engines.factory import make_engine
    from wideseek_exp.main import build_world
    from wideseek_exp.search.factory import make_search_backend

    if cfg.data.name == "miniweb" or cfg.search.name == "local" or cfg.model.source in ("tiny", "tiny_sft"):
        build_world(cfg, quiet=True)  # a no-op when everything is up to date
    tasks = load_eval_tasks(cfg)
    samples = cfg.eval.samples
    folder = out or Path(cfg.paths.outputs) / "eval"
    store = TrialStore(folder, eval_settings(cfg))
    total = len(tasks) * samples
    done_before = sum(store.done(task.instance_id, s) for task in tasks for s in range(samples))
    print(f"evaluating {len(tasks)} tasks x {samples} samples, width {cfg.subagents}, agent={cfg.agent.name}, "
          f"model={cfg.model.name}, engine={cfg.engine.name}, search={cfg.search.name}"
          + (", policy=scripted" if cfg.agent.policy == "scripted" else "") + f" -> {folder}", flush=True)
    if done_before:
        print(f"resuming: {done_before} of {total} trials already done", flush=True)

    stats, started, generated_now = RolloutStats(), time.perf_counter(), 0
    if done_before < total:
        from tqdm import tqdm

        engine = make_engine(cfg)
        subagent_engine = make_subagent_engine(cfg, engine)
        summarizer = make_helper_summarizer(cfg)
        search = make_search_backend(cfg)
        progress = tqdm(total=total, initial=done_before, desc="trials", unit="trial", file=sys.stderr)
        started = time.perf_counter()  # the rollouts' wall time, without loading the model

        def finished(trajectory) -> None:
            nonlocal generated_now
            store.add(trial_record(trajectory), trajectory.to_dict())
            generated_now += sum(trajectory.generated_tokens.values())
            progress.update()

        try:
            run_rollouts(tasks, samples, engine, search, engine.tokenizer, cfg.agent, cfg.search, cfg.seed,
                         subagent_engine=subagent_engine, summarizer=summarizer, on_trajectory=finished, stats=stats,
                         skip=store.done, max_active_trajectories=cfg.eval.max_active_trajectories)
        finally:
            progress.close()
            for used in (engine, subagent_engine, getattr(summarizer, "engine", None)):
                if used is not None:
                    used.close()
    rollout_seconds = time.perf_counter() - started

    report = score_and_report(cfg, tasks, store.trials, samples, folder, tracker)
    rollout = rollout_metrics([store.trials[(t.instance_id, s)] for t in tasks for s in range(samples)
                               if store.done(t.instance_id, s)], rollout_seconds, generated_now, stats,
                              agent_roles(cfg))
    tracker.log_metrics({f"rollout.{k}": v for k, v in rollout.items()})
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["rollout"] = rollout
    metrics_path.write_text(json.dumps(metrics, indent=2))
    tracker.log_artifact(metrics_path)
    log_trajectory_samples(store, tracker, folder)
    return report.headline()


def agent_roles(cfg: DictConfig) -> tuple[str, ...]:
    """The roles whose tokens every evaluation of this agent logs (0 when a role generated nothing)."""
    return ("single",) if cfg.agent.name == "singleseek" else ("lead", "subagent")


def make_subagent_engine(cfg: DictConfig, lead_engine):
    """A second engine for the subagents when cfg.subagent_model is set (the lead-vs-subagent ablation).

    Every agent's prompts are rendered with one tokenizer, so the two models must share it."""
    if cfg.subagent_model is None:
        return None
    from wideseek_exp.engines.factory import make_engine

    engine = make_engine(cfg, cfg.subagent_model)
    if engine.tokenizer.get_vocab() != lead_engine.tokenizer.get_vocab():
        engine.close()
        raise WideseekError(f"subagent_model {cfg.subagent_model.name} does not share the tokenizer of model "
                            f"{cfg.model.name}; the lead and subagent models must use one tokenizer")
    return engine


def make_helper_summarizer(cfg: DictConfig):
    """The llm page summariser on its own engine and model (cfg.summarizer_engine / cfg.summarizer_model), or
    None: the rollout's default summariser (agent.summarizer; an llm one asks the subagents' engine)."""
    if cfg.agent.summarizer != "llm" or (cfg.summarizer_engine is None and cfg.summarizer_model is None):
        return None
    from wideseek_exp.agents import make_summarizer
    from wideseek_exp.engines.factory import make_engine

    helper_cfg = cfg if cfg.summarizer_engine is None else OmegaConf.merge(cfg, {"engine": cfg.summarizer_engine})
    engine = make_engine(helper_cfg, cfg.summarizer_model if cfg.summarizer_model is not None else cfg.model)
    return make_summarizer(cfg.agent, cfg.search, engine.tokenizer, engine)


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


# --------------------------------------------------------------------------------------------- scoring


def score_and_report(cfg: DictConfig, tasks: list[TaskRecord], trials: dict[tuple[str, int], dict], samples: int,
                     folder: Path, tracker: JobRun) -> Report:
    """Score every trial, aggregate, write the report files, log them and print the table."""
    judge = make_judge(cfg.judge)
    folder.mkdir(parents=True, exist_ok=True)
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
    report = aggregate(summaries, judge.label)
    table = render_table(report)

    with (folder / "scores.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in score_lines)
    write_per_task_csv(folder / "per_task.csv", report, tasks)
    (folder / "results.md").write_text(table + "\n")
    metrics = report_metrics(report)
    (folder / "metrics.json").write_text(json.dumps({"judge": judge.label, "k": report.k, "metrics": metrics},
                                                    indent=2))
    tracker.log_metrics(metrics)
    tracker.set_tags({"judge": judge.label.split()[0]})
    for name in ("results.md", "per_task.csv", "scores.jsonl"):
        tracker.log_artifact(folder / name)
    print(table, flush=True)
    return report


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


# --------------------------------------------------------------------------------------------- task=score

OFFICIAL_FILE = re.compile(r"^(?P<stem>.+)_response\.jsonl$")


def read_responses(folder: Path, model_prefix: str | None) -> dict[tuple[str, int], dict]:
    """(instance_id, trial) -> {"response": text} from our trials.jsonl or the official runner's files."""
    if (folder / TRIALS_FILE).is_file():
        trials = {}
        for number, line in enumerate((folder / TRIALS_FILE).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                trials[(record["instance_id"], int(record["sample"]))] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise WideseekError(f"{folder / TRIALS_FILE} line {number}: not a trial record ({error})") from None
        return trials
    trials = {}
    # Official runner: {model}_{instance_id}_{trial}[_multi_agent]_response.jsonl, one record inside
    # with instance_id, response, messages, trial_idx. The record, not the name, says which trial it is.
    for path in sorted(folder.glob("*_response.jsonl")):
        if model_prefix and not path.name.startswith(f"{model_prefix}_"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["instance_id"]), int(record.get("trial_idx") or 0))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise WideseekError(f"{path} line {number}: not an official response record ({error})") from None
            response = record.get("response")
            trials[key] = {"instance_id": key[0], "sample": key[1],
                           "response": response if isinstance(response, str) and response != "NULL" else None}
    if not trials:
        raise WideseekError(f"no responses in {folder}: expected {TRIALS_FILE} or official *_response.jsonl files"
                            + (f" starting with {model_prefix}_" if model_prefix else ""))
    return trials


def run_score(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    if not cfg.score.responses:
        raise WideseekError("task=score needs score.responses=<an eval folder or a folder of official response files>")
    source = Path(cfg.score.responses)
    if not source.is_dir():
        raise WideseekError(f"score.responses folder {source} does not exist")
    trials = read_responses(source, cfg.score.model_prefix)
    tasks = load_eval_tasks(cfg)
    known = {task.instance_id for task in tasks}
    unknown = sorted({instance_id for instance_id, _ in trials} - known)
    if unknown:
        print(f"note: {len(unknown)} response(s) for tasks not in data={cfg.data.name} split={cfg.data.split} "
              f"(first: {unknown[0]}) are ignored", file=sys.stderr)
    samples = max(cfg.eval.samples, 1 + max(sample for _, sample in trials))
    print(f"scoring {len(trials)} responses from {source} against {len(tasks)} tasks (k={samples})", flush=True)
    report = score_and_report(cfg, tasks, trials, samples, out or source, tracker)
    return report.headline()
