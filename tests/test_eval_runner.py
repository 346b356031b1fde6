"""task=eval and task=score: trials written as they finish, resume, scoring and the report files.

A scripted engine answers each mini-web task with its own gold table (or with garbage), so the
expected metrics are known exactly; the rollout, the trial store, the scorer and the aggregation run
for real.
"""

import json
import re
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from scripted_engine import ScriptedEngine, tiny_tokenizer, tool_call, world_config

import wideseek_exp.engines.factory as engine_factory
from wideseek_exp import WideseekError
from wideseek_exp.jobs.eval import run as run_eval
from wideseek_exp.jobs.score import run as run_score
from wideseek_exp.tasks.loaders import load_task_set
from wideseek_exp.tasks.record import to_markdown_table
from wideseek_exp.tracking import JobRun, job_run

CONF = Path(__file__).resolve().parent.parent / "conf"


def config(*overrides: str):
    world_config()  # the mini-web world and tiny model exist
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # gold tables run past the tiny model's 256-token reply budget
        return compose(config_name="config", overrides=["task=eval", "tracking.enabled=false", "model=tiny_random",
                                                        "model.max_reply_tokens=4096", *overrides])


def gold_answers(cfg) -> dict[str, str]:
    """Task query -> its gold table as the lead's final answer."""
    return {task.query: "```markdown\n" + to_markdown_table(task.gold_columns, task.gold_rows) + "\n```"
            for task in load_task_set(cfg.data, "test")}


def answering_engine(cfg, wrong_samples: set[int] = frozenset()):
    """The lead answers at once: the gold table, or a wrong table for samples in `wrong_samples`."""
    answers = gold_answers(cfg)
    seen: dict[str, int] = {}

    def script(view):
        count = seen[view.user] = seen.get(view.user, 0) + 1  # the n-th trial of this task asked
        if count - 1 in wrong_samples:
            return "```markdown\n| Nothing | Here |\n| --- | --- |\n| a | b |\n```"
        return answers[view.user]

    return ScriptedEngine(tiny_tokenizer(), script)


@pytest.fixture
def scripted(monkeypatch):
    """make_engine returns the given engine; yields a setter."""
    holder = {}
    monkeypatch.setattr(engine_factory, "make_engine",
                        lambda cfg, model_cfg=None: holder["engine"] if model_cfg is None else holder["subagent"])

    def use(engine):
        holder["engine"] = engine
        return engine

    return use


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_perfect_answers_score_one_and_write_every_report(tmp_path, scripted):
    cfg = config("eval.limit=3", "eval.samples=2")
    engine = scripted(answering_engine(cfg))
    headline = run_eval(cfg, JobRun(None), tmp_path)
    assert headline["item_f1_avg@2"] == pytest.approx(1.0)
    assert headline["success_pass@2"] == pytest.approx(1.0)
    assert sum(len(batch) for batch in engine.batches) == 6  # 3 tasks x 2 samples, one lead turn each
    trials = read_jsonl(tmp_path / "trials.jsonl")
    assert len(trials) == 6 and all(t["table_found"] for t in trials)
    assert len(read_jsonl(tmp_path / "trajectories.jsonl")) == 6
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["eval.item_f1_avg"] == pytest.approx(1.0)
    assert metrics["judge"].startswith("exact")
    assert metrics["rollout"]["trials"] == 6
    results = (tmp_path / "results.md").read_text()
    assert "| all | 3 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in results
    assert "judge: exact" in results
    assert len((tmp_path / "per_task.csv").read_text().splitlines()) == 1 + 3


def test_avg_and_max_over_samples(tmp_path, scripted):
    cfg = config("eval.limit=2", "eval.samples=2")
    scripted(answering_engine(cfg, wrong_samples={1}))
    headline = run_eval(cfg, JobRun(None), tmp_path)
    assert headline["item_f1_avg@2"] == pytest.approx(0.5)
    assert headline["item_f1_max@2"] == pytest.approx(1.0)
    assert headline["success_avg@2"] == pytest.approx(0.5)
    assert headline["success_pass@2"] == pytest.approx(1.0)


def test_rerun_resumes_after_a_crash_and_runs_only_missing_trials(tmp_path, scripted):
    cfg = config("eval.limit=2", "eval.samples=2")
    scripted(answering_engine(cfg))
    run_eval(cfg, JobRun(None), tmp_path)
    trials_file = tmp_path / "trials.jsonl"
    lines = trials_file.read_text().splitlines(keepends=True)
    trials_file.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # one trial kept, one torn mid-write

    engine = scripted(answering_engine(cfg))
    headline = run_eval(cfg, JobRun(None), tmp_path)
    assert sum(len(batch) for batch in engine.batches) == 3  # only the 3 missing trials ran
    assert len(read_jsonl(trials_file)) == 4
    assert headline["item_f1_avg@2"] == pytest.approx(1.0)

    engine = scripted(answering_engine(cfg))
    run_eval(cfg, JobRun(None), tmp_path)
    assert engine.batches == []  # everything done: nothing generated


def test_a_folder_of_other_settings_is_refused(tmp_path, scripted):
    cfg = config("eval.limit=1", "eval.samples=1")
    scripted(answering_engine(cfg))
    run_eval(cfg, JobRun(None), tmp_path)
    with pytest.raises(WideseekError, match="subagents"):
        run_eval(config("eval.limit=1", "eval.samples=1", "subagents=8"), JobRun(None), tmp_path)


def test_eval_logs_metrics_and_reports_to_mlflow(tmp_path, scripted):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config("eval.limit=2", "eval.samples=1", "tracking.enabled=true", f"tracking.uri={uri}")
    scripted(answering_engine(cfg))
    with job_run(cfg, tmp_path / "job") as run:
        run_eval(cfg, run, tmp_path / "job")
        run_id = run.run_id
    logged = mlflow.MlflowClient(uri).get_run(run_id)
    assert logged.data.metrics["eval.item_f1_avg"] == pytest.approx(1.0)
    assert logged.data.metrics["eval.en.item_f1_avg"] == pytest.approx(1.0)
    assert logged.data.metrics["rollout.trials"] == 2
    assert logged.data.tags["judge"] == "exact-judge"
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}
    assert {"results.md", "per_task.csv", "scores.jsonl", "metrics.json", "trials.jsonl"} <= artifacts


def test_score_reads_official_response_files(tmp_path):
    cfg = config("eval.limit=2", "eval.samples=2")
    tasks = list(load_task_set(cfg.data, "test"))[:2]
    responses = tmp_path / "official"
    responses.mkdir()
    for number, task in enumerate(tasks):
        for trial in range(2):
            answer = "```markdown\n" + to_markdown_table(task.gold_columns, task.gold_rows) + "\n```"
            record = {"instance_id": task.instance_id, "response": answer if trial == 0 else ["NULL", 7][number],
                      "messages": [], "trial_idx": trial}
            (responses / f"my-model_{task.instance_id}_{trial}_response.jsonl").write_text(json.dumps(record) + "\n")
    (responses / f"other_{tasks[0].instance_id}_0_response.jsonl").write_text(
        json.dumps({"instance_id": tasks[0].instance_id, "response": "garbage", "trial_idx": 0}) + "\n")
    out = tmp_path / "scored"
    headline = run_score(config("eval.limit=2", "eval.samples=2", f"score.responses={responses}",
                                "score.model_prefix=my-model"), JobRun(None), out)
    assert headline["item_f1_avg@2"] == pytest.approx(0.5)  # trial 1 is "NULL" or a number: zeros
    assert headline["item_f1_max@2"] == pytest.approx(1.0)
    assert (out / "results.md").is_file()
    reasons = [json.loads(line)["reason"] for line in (out / "scores.jsonl").read_text().splitlines()]
    assert "response is not text (int)" in reasons and len(set(reasons)) == 3  # "", no final answer, not text


def test_score_rescores_our_own_eval_folder(tmp_path, scripted):
    cfg = config("eval.limit=2", "eval.samples=1")
    scripted(answering_engine(cfg))
    run_eval(cfg, JobRun(None), tmp_path / "eval")
    headline = run_score(config("eval.limit=2", "eval.samples=1", f"score.responses={tmp_path / 'eval'}"),
                         JobRun(None), tmp_path / "rescored")
    assert headline["item_f1_avg@1"] == pytest.approx(1.0)


def test_score_without_responses_is_a_clear_error(tmp_path):
    with pytest.raises(WideseekError, match="score.responses"):
        run_score(config(), JobRun(None), tmp_path)
    with pytest.raises(WideseekError, match="does not exist"):
        run_score(config(f"score.responses={tmp_path / 'nowhere'}"), JobRun(None), tmp_path)


def test_subagents_can_run_on_another_model(tmp_path, monkeypatch):
    """+model@subagent_model=NAME: the lead's requests go to one engine, the subagents' to another."""
    cfg = config("eval.limit=1", "eval.samples=1", "+model@subagent_model=tiny_random")
    answer = next(iter(gold_answers(cfg).values()))

    def lead(view):
        assert view.role == "lead"
        return tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find the members"}]}) if view.turn == 1 \
            else answer

    def subagent(view):
        assert view.role == "subagent"
        return "The members are listed on the list page."

    engines = {"lead": ScriptedEngine(tiny_tokenizer(), lead), "subagent": ScriptedEngine(tiny_tokenizer(), subagent)}
    monkeypatch.setattr(engine_factory, "make_engine",
                        lambda cfg, model_cfg=None: engines["lead" if model_cfg is None else "subagent"])
    headline = run_eval(cfg, JobRun(None), tmp_path)
    assert len(engines["lead"].batches) == 2 and len(engines["subagent"].batches) == 1
    assert headline["item_f1_avg@1"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "eval_settings.json").read_text())["subagent_model"].endswith("models/tiny")


def test_eval_stride_takes_a_spread_of_the_split_before_the_limit():
    from wideseek_exp.evaluation import load_eval_tasks

    split = list(load_task_set(config().data, "test"))
    tasks = load_eval_tasks(config("eval.stride=15", "eval.limit=8"))
    assert [t.instance_id for t in tasks] == [t.instance_id for t in split[::15][:8]]
    assert len({t.meta["family"] for t in tasks}) > len({t.meta["family"] for t in split[:8]})


def test_the_protocol_funnel_counts_each_stage_exactly(tmp_path, scripted):
    """Five trials scripted to stop at known stages of the protocol; the funnel in metrics.json, MLflow's
    metrics and results.md says exactly how many got through each."""
    cfg = config("eval.limit=5", "eval.samples=1", "subagents=1")
    tasks = list(load_task_set(cfg.data, "test"))[:5]
    gold = gold_answers(cfg)

    def kind(view) -> int:
        return next(k for k, task in enumerate(tasks) if task.query in view.user)

    def script(view):
        k, task = kind(view), tasks[kind(view)]
        key = task.gold_rows[0][0]
        if view.role == "lead":
            if k == 0:
                return "<think>\nx\n</think>\n\nI do not know."  # stops at once: no stage
            if view.turn == 1:
                return tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"find {key}"}]})
            header = "| " + " | ".join(task.gold_columns) + " |\n| " + " | ".join("---" for _ in task.gold_columns)
            return {1: f"```markdown\n{header} |\n```", 2: "No table.", 3: gold[task.query],
                    4: f"```markdown\n{header} |\n| wrong |" + " x |" * (len(task.gold_columns) - 1) + "\n```"}[k]
        if k == 1:
            return "Nothing to report."
        if view.turn == 1:
            return tool_call("search", {"queries": [{"query": key}]})
        if view.turn == 2 and k in (3, 4):
            url = "https://miniweb.local/nowhere" if k == 4 else re.findall(r"URL: (\S+)", view.last_tool_result)[0]
            return tool_call("access", {"urls": [{"url": url, "info_to_extract": "facts"}]})
        return f"Found: {key}." if k in (3, 4) else "Nothing found."

    scripted(ScriptedEngine(tiny_tokenizer(), script))
    run_eval(cfg, JobRun(None), tmp_path)
    funnel = {k.removeprefix("funnel."): v for k, v in
              json.loads((tmp_path / "metrics.json").read_text())["metrics"].items() if k.startswith("funnel.")}
    assert funnel == {"lead_call": 0.8, "subagent": 0.8, "search": 0.6, "access": 0.2, "report_gold": 0.4,
                      "table": 0.6, "item_f1": 0.2}
    results = (tmp_path / "results.md").read_text()
    assert "| an access reads a page | 20.0% |" in results and "| item F1 > 0 | 20.0% |" in results


def test_a_trajectory_whose_trial_was_not_written_is_dropped_on_reopen(tmp_path):
    from wideseek_exp.trialstore import TRAJECTORIES_FILE, TrialStore

    store = TrialStore(tmp_path, {"a": 1})
    store.add({"instance_id": "t", "sample": 0, "response": "x"}, {"instance_id": "t", "sample_index": 0})
    # killed between the trajectory line and the trial line of the next trial, then mid-write of another
    with (tmp_path / TRAJECTORIES_FILE).open("a") as handle:
        handle.write(json.dumps({"instance_id": "t", "sample_index": 1}) + "\n" + '{"instance_id": "t", "sam')
    reopened = TrialStore(tmp_path, {"a": 1})
    assert list(reopened.trials) == [("t", 0)]
    assert [(r["instance_id"], r["sample_index"]) for r in reopened.trajectories()] == [("t", 0)]
    assert not list(tmp_path.glob("*.partial"))
