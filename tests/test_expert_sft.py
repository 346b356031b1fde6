"""The scripted expert (agent.policy=scripted) through the real rollout, mini-web search and scorer, and
the imitation warm start (task=sft) that learns from its trajectories."""

import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scripted_engine import tiny_tokenizer, world_config

from wideseek_exp.agents import run_rollouts
from wideseek_exp.engines.expert import ExpertEngine, read_task
from wideseek_exp.scoring import make_judge, score_response
from wideseek_exp.search.factory import make_search_backend
from wideseek_exp.tasks.loaders import load_task_set


def expert_scores(split: str, stride: int, width: int) -> list:
    """Every `stride`-th task of the split (a spread over the families, which come sorted)."""
    cfg = world_config()
    tasks = list(load_task_set(cfg.data, split))[::stride]
    agent = OmegaConf.merge(cfg.agent, {"max_subagents_per_call": width, "max_reply_tokens": 4096})
    trajectories = run_rollouts(tasks, 1, ExpertEngine(tiny_tokenizer()), make_search_backend(cfg), tiny_tokenizer(),
                                agent, cfg.search, seed=0)
    judge = make_judge(cfg.judge)
    return [score_response(t.final_answer or "", task, judge) for t, task in zip(trajectories, tasks)], trajectories


def test_every_miniweb_query_is_readable_by_the_expert():
    cfg = world_config()
    for split in ("train", "test"):
        for task in load_task_set(cfg.data, split):
            spec = read_task(task.query)
            assert spec is not None, task.instance_id
            assert spec.columns == task.gold_columns, task.instance_id


def test_the_expert_solves_tasks_exactly_and_emits_the_wire_format():
    scores, trajectories = expert_scores("test", 10, width=8)
    assert sum(s.item_f1 == 1.0 for s in scores) >= 3, [s.item_f1 for s in scores]
    assert sum(s.item_f1 for s in scores) / len(scores) > 0.5
    tokenizer = tiny_tokenizer()
    for trajectory in trajectories:
        lead = trajectory.agents[0]
        first = tokenizer.decode(lead.turns[0].response_ids)
        assert first.startswith("<think>\n") and '<tool_call>\n{"name": "create_sub_agents"' in first
        assert lead.turns[0].tool_name == "create_sub_agents"  # parsed by the real parser
        assert sum(lead.response_mask()) == sum(len(t.response_ids) for t in lead.turns)


def test_more_width_covers_more_entities_under_the_lead_turn_budget():
    cfg = world_config()
    # tasks with more entities than W x (lead turns - 2) at W=1, from families whose list pages the
    # expert's searches find (it misses some airport and element lists)
    found = {"cities_by_country", "currencies_of_region", "us_states_by_admission", "us_states_by_time_zone"}
    tasks = [t for t in load_task_set(cfg.data, "test") if len(t.gold_rows) > 12 and t.meta["family"] in found][:2]
    assert len(tasks) == 2
    agent = lambda width: OmegaConf.merge(cfg.agent, {"max_subagents_per_call": width, "max_reply_tokens": 4096,  # noqa: E731
                                                      "lead_max_turns": 4})
    judge, search = make_judge(cfg.judge), make_search_backend(cfg)
    mean = {}
    for width in (1, 8):
        trajectories = run_rollouts(tasks, 1, ExpertEngine(tiny_tokenizer()), search, tiny_tokenizer(), agent(width),
                                    cfg.search, seed=0)
        mean[width] = sum(score_response(t.final_answer or "", task, judge).item_f1
                          for t, task in zip(trajectories, tasks)) / len(tasks)
        assert max(t.subagent_count for t in trajectories) <= 1 + 2 * width
    assert mean[8] > mean[1], mean


def test_turn_rows_train_every_reply_after_its_recent_context():
    from wideseek_exp.agents.trajectory import AgentRun, Turn
    from wideseek_exp.rl.imitation import agent_rows

    prompt = list(range(100, 160))  # 60 prompt tokens
    turns = [Turn([1] * 5, [0.0] * 5, "stop", followup_ids=[2] * 30), Turn([3] * 8, [0.0] * 8, "stop",
             followup_ids=[4] * 30), Turn([5] * 50, [0.0] * 50, "stop")]
    agent = AgentRun("subagent", "lead.1.1", "lead", "x", prompt, turns)
    rows = agent_rows(agent, max_length=64, rows="turn", context_tokens=16, keep_prompt=False)
    assert [sum(mask) for _, mask in rows] == [5, 8, 48]  # the last reply is cut to fit after a quarter-length context
    ids, mask = rows[1]
    assert ids == [2] * 16 + [3] * 8 and mask == [0] * 16 + [1] * 8  # the 16 tokens just before the reply
    with_prompt = agent_rows(agent, max_length=128, rows="turn", context_tokens=16, keep_prompt=True)
    assert with_prompt[1][0] == prompt + [2] * 16 + [3] * 8
    assert with_prompt[0][0] == prompt + [1] * 5
    whole = agent_rows(agent, max_length=64, rows="agent", context_tokens=16, keep_prompt=False)
    assert len(whole) == 1 and whole[0][0] == agent.token_ids()[:64]


def test_rows_keep_the_lead_the_first_call_and_a_seeded_draw_of_the_later_subagents():
    import random

    from wideseek_exp.agents.trajectory import AgentRun
    from wideseek_exp.rl.imitation import kept_agents

    ids = ["lead", "lead.1.1"] + [f"lead.{call}.{n}" for call in (2, 3) for n in (1, 2, 3, 4)]
    agents = [AgentRun("lead" if i == "lead" else "subagent", i, None, None, [1], []) for i in ids]
    assert kept_agents(agents, 0, random.Random(0)) == agents
    kept = [a.agent_id for a in kept_agents(agents, 2, random.Random(0))]
    assert kept[:2] == ["lead", "lead.1.1"] and len(kept) == 4
    assert kept == [a.agent_id for a in kept_agents(agents, 2, random.Random(0))]  # seeded
    assert {a.agent_id for a in kept_agents(agents, 8, random.Random(0))} == set(ids)


def test_a_share_of_the_rows_start_with_the_agents_whole_prompt():
    from wideseek_exp import WideseekError
    from wideseek_exp.rl.imitation import expert_rows

    cfg = world_config()
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table][:2]
    system = tiny_tokenizer().encode("<|im_start|>system", add_special_tokens=False)

    def prompted(share: float) -> tuple[int, int, dict]:
        # rows of up to 2048 tokens: every prompt (~950 tokens), its recent context and reply fit whole
        sft = {"prompt_share": share, "rows": "turn", "subagents_per_task": 0}
        rows, stats = expert_rows(OmegaConf.merge(cfg, {"sft": sft}), tiny_tokenizer(), tasks, 2048)
        starts = sum(r["input_ids"][: len(system)] == system for r in rows)
        return starts, len(rows), stats

    none, count, stats = prompted(0.0)
    assert none == 0 and stats["rows_with_prompt"] == 0
    every, count_all, stats = prompted(1.0)
    assert count_all == count and every == count == stats["rows_with_prompt"]
    some, _, stats = prompted(0.5)
    assert 0.3 * count < some == stats["rows_with_prompt"] < 0.7 * count
    assert prompted(0.5)[0] == some  # drawn with sft.seed: the same rows every build
    with pytest.raises(WideseekError, match="sft.prompt_share"):
        prompted(1.5)


def test_the_reply_probe_counts_as_copied_what_the_task_or_a_tool_result_holds():
    import importlib.util

    from scripted_engine import REPO

    spec = importlib.util.spec_from_file_location("replies", REPO / "experiments" / "cpu_demo" / "replies.py")
    replies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replies)
    user = [1, 537, 201]
    system = [1, 847, 201, 10, 11, 12, 13, 2]  # 10 11 12 13 is in the system prompt only
    task = user + [20, 21, 22, 23, 2]
    reply = [10, 11, 12, 13, 20, 21, 22, 23]
    ids = system + task + reply
    mask = [0] * (len(system) + len(task)) + [1] * len(reply)
    copied = replies.copied_tokens(ids, mask, user)
    # only a 4-gram of the task counts: the reply's last token (20 21 22 23); never the system prompt's
    assert [i for i, c in enumerate(copied) if c] == [len(ids) - 1]


def test_copy_rows_repeat_each_span_and_train_on_the_second_copy_only():
    import numpy as np

    from wideseek_exp.rl.imitation import copy_rows

    vocabulary = np.arange(10, 60)
    ids, labels = copy_rows(np.random.default_rng(0), 3, 64, vocabulary, (5, 5))  # spans of 5: blocks of 10
    assert ids.shape == labels.shape == (3, 64)
    for row, target in zip(ids.tolist(), labels.tolist()):
        assert all(10 <= t < 60 for t in row)
        for block in range(0, 60, 10):
            assert row[block:block + 5] == row[block + 5:block + 10]
            # the second copy is trained from its second token: its first cannot be predicted
            assert target[block:block + 10] == [-100] * 6 + row[block + 6:block + 10]
        assert target[60:64] == [-100] * 4  # the last span, cut before its second copy
    ids, labels = copy_rows(np.random.default_rng(1), 4, 128, vocabulary, (6, 24))
    trained = labels != -100
    assert trained.any() and (labels[trained] == ids[trained]).all()
    assert 0.3 < trained.float().mean() < 0.5  # about half the tokens are second copies, less each span's first


def test_text_copy_rows_repeat_spans_of_a_real_passage_after_it():
    import numpy as np

    from wideseek_exp.rl.imitation import text_copy_rows

    sources = [list(range(1000, 1300)), [7, 8, 9]]  # the short one is never a passage
    ids, labels = text_copy_rows(np.random.default_rng(0), 3, 96, sources, (6, 10))
    assert ids.shape == labels.shape == (3, 96)
    for row, target in zip(ids.tolist(), labels.tolist()):
        passage, rest = row[:48], row[48:]
        assert passage == list(range(passage[0], passage[0] + 48)) and target[:48] == [-100] * 48
        # every span is a run of the passage; its first token is not trained, the others are
        starts = [i for i in range(len(rest)) if i == 0 or rest[i] != rest[i - 1] + 1]
        assert all(passage[0] <= t < passage[0] + 48 for t in rest)
        for i, t in enumerate(rest):
            assert target[48 + i] == (-100 if i in starts else t)
    assert (labels != -100).any()


def test_bad_sft_settings_fail_in_one_line_before_any_work(tmp_path):
    from wideseek_exp import WideseekError
    from wideseek_exp.rl.imitation import copy_stage, train_sft

    cfg = world_config()
    bad = [({"copy_span_min": 1}, "sft.copy_span_min"), ({"copy_target_accuracy": 1.5}, "sft.copy_target_accuracy"),
           ({"copy_share": 1.0}, "sft.copy_share"), ({"prompt_share": -0.1}, "sft.prompt_share"),
           ({"rows": "episode"}, "sft.rows"), ({"copy_text_steps": -1}, "sft.copy_text_steps"),
           ({"subagents_per_task": -2}, "sft.subagents_per_task"), ({"copy_text_length": 4}, "sft.copy_text_length")]
    for override, key in bad:
        wrong = OmegaConf.merge(cfg, {"sft": override})
        # a base folder that does not exist: the check comes before the model, the copy stage and the rollouts
        with pytest.raises(WideseekError, match=key):
            train_sft(wrong, str(tmp_path / "no-model"), tmp_path / "out")
        with pytest.raises(WideseekError, match=key):
            copy_stage(None, tiny_tokenizer(), wrong.sft)


def test_a_width_sweep_evaluates_one_warm_start():
    from pathlib import Path

    from wideseek_exp.rl.imitation import sft_fingerprint

    cfg = world_config()
    base = Path(cfg.model.path)
    prints = {sft_fingerprint(OmegaConf.merge(cfg, {"subagents": width}), base) for width in (1, 2, 4, 8)}
    assert len(prints) == 1  # the demonstrations' widths are sft.widths, not the run's
    assert sft_fingerprint(OmegaConf.merge(cfg, {"sft": {"widths": [8]}}), base) not in prints


@pytest.mark.slow
def test_a_short_sft_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wideseek_exp.rl.imitation import train_sft

    cfg = OmegaConf.merge(world_config(), {"sft": {"tasks": 2, "rows": "turn", "max_steps": 8, "max_length": 1024, "batch_size": 2,
                                                   "learning_rate": 2e-3, "copy_steps": 3, "copy_batch_size": 2,
                                                   "copy_length": 32, "copy_text_steps": 2,
                                                   "copy_text_length": 32, "list_drill_tasks": 2,
                                                   "list_drill_steps": 3}})
    logged = []
    stats = train_sft(cfg, cfg.model.path, tmp_path, log_metrics=lambda metrics, step: logged.append(metrics))
    assert stats["rows"] > 2 and 0 < stats["trained_tokens"] < stats["tokens"]  # reply tokens only
    assert stats["loss_last"] < stats["loss_first"], stats
    # the copy stage first (random spans, then spans of the expert's own contexts), then the imitation
    # then the list drill (the list subagents of 2 more tasks, mixed with as many of the imitation's rows)
    copy_logs, text_logs, sft_logs, drill_logs = logged[:3], logged[3:5], logged[5:13], logged[13:]
    assert all(set(m) == {"sft/copy_loss", "sft/copy_accuracy"} for m in copy_logs)
    assert all(set(m) == {"sft/text_copy_loss", "sft/text_copy_accuracy"} for m in text_logs)
    assert stats["copy_steps"] == 3 and stats["copy_loss_first"] > 0 and stats["text_copy_steps"] == 2
    assert len(sft_logs) == 8 and all("sft/loss" in m for m in sft_logs)
    assert len(drill_logs) == 3 and all("sft/list_drill_loss" in m for m in drill_logs)
    assert stats["list_drill_tasks"] == 2 and stats["list_drill_rows"] >= 2  # sft.rows=turn: a row per reply
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.model_type == "qwen3" and tokenizer.chat_template == tiny_tokenizer().chat_template


@pytest.mark.slow
def test_a_short_grpo_run_from_a_warm_start_earns_rewards_and_moves_the_policy(tmp_path, monkeypatch):
    """A test-sized warm start, then one GRPO step from it on the same train tasks. The warm start fits only
    the lead's final tables of the expert's trajectories, in their full prompt (the quickest replies to
    learn that the reward pays for: a valid table earns the format bonus), so its rollouts write tables
    and the rewards are above zero; sampled tables differ, and the step moves the weights."""
    import mlflow
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file
    from scripted_engine import REPO

    import wideseek_exp.rl.imitation as sft_module
    from wideseek_exp.rl.training import train_policy
    from wideseek_exp.tracking import job_run

    real_rows = sft_module.expert_rows

    def final_tables_only(*args, **kwargs):
        rows, stats = real_rows(*args, **kwargs)
        rows = [r for r in rows if r["role"] == "lead" and "```markdown" in tiny_tokenizer().decode(
            [t for t, m in zip(r["input_ids"], r["assistant_masks"]) if m])]
        return rows, {**stats, "rows": len(rows)}

    monkeypatch.setattr(sft_module, "expert_rows", final_tables_only)
    warm = tmp_path / "warm"
    # four train tasks with 3-4 gold rows (short tables, learnt within the test's steps), as their own task set;
    # sampled copies of the tables differ in item F1, so the advantages are not all 0
    base = world_config()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    lines = (Path(base.data.path) / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (tasks / "train.jsonl").write_text("\n".join(lines[i] for i in (64, 68, 71, 75)) + "\n", encoding="utf-8")
    shutil.copy(Path(base.data.path) / "test.jsonl", tasks / "test.jsonl")
    cfg = OmegaConf.merge(base, {"data": {"path": str(tasks)}, "sft": {
        "tasks": 4, "rows": "turn", "subagents_per_task": 0, "max_steps": 120, "batch_size": 1,
        "learning_rate": 3e-3, "context_tokens": 0,
        "keep_prompt": True, "max_length": 2048, "copy_steps": 0}})  # tables only: no copy stage needed
    stats = sft_module.train_sft(cfg, cfg.model.path, warm)
    assert stats["rows"] == 4 and stats["loss_last"] < stats["loss_first"]

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        train_cfg = compose(config_name="config", overrides=[
            "task=train", "trainer=debug", "model=tiny_random", "model.source=local", f"model.path={warm}",
            "model.max_reply_tokens=1024", f"data.path={tasks}", "trainer.max_steps=1", "trainer.tasks_per_step=4",
            "trainer.num_generations=2", "trainer.weight_decay=0", "trainer.eval_every=0", "trainer.save_every=0",
            "eval.limit=1",
            "eval.samples=1", f"paths.outputs={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=grpo-warm-start"])
    out = tmp_path / "job"
    out.mkdir()
    with job_run(train_cfg, out) as tracker:
        run_id = tracker.run_id
        summary = train_policy(train_cfg, tracker, out)
    assert summary["steps"] == 1
    client = mlflow.MlflowClient(train_cfg.tracking.uri)
    rewards = client.get_metric_history(run_id, "reward/mean")
    assert [m.step for m in rewards] == [1] and rewards[0].value > 0
    assert client.get_metric_history(run_id, "grad_norm")[0].value > 0  # the rewards differed within a group
    # no weight decay: every change is the policy gradient's
    trained, initial = load_file(out / "final" / "model.safetensors"), load_file(warm / "model.safetensors")
    assert any(not torch_equal(trained[name], initial[name]) for name in initial)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_eval_stops_in_one_line_naming_the_build_when_the_warm_start_is_missing(cli, tmp_path):
    world_config()  # the world and the warm start's base exist; the warm start itself is not at model.path
    missing = tmp_path / "tiny_sft"
    result = cli("task=eval", "model=tiny", f"model.path={missing}", "eval.limit=2", "eval.samples=1",
                 "tracking.enabled=false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "warm start is not built" in lines[0] and "`python run.py task=build`" in lines[0]
    assert not missing.exists()  # nothing was trained or written


def test_a_warm_start_built_from_other_settings_is_refused_not_rebuilt(tmp_path):
    import json
    from pathlib import Path

    from wideseek_exp import WideseekError
    from wideseek_exp.rl.imitation import require_warm_start, sft_fingerprint

    folder = tmp_path / "tiny_sft"
    folder.mkdir()
    cfg = OmegaConf.merge(world_config(), {"model": {"name": "tiny", "source": "tiny_sft", "path": str(folder),
                                                     "warm_start_from": world_config().model.path}})
    (folder / "build.json").write_text(json.dumps({"name": "tiny-sft", "fingerprint": "from other settings"}))
    with pytest.raises(WideseekError, match=r"other sft\.\* settings.*python run\.py task=build"):
        require_warm_start(cfg)
    current = sft_fingerprint(cfg, Path(cfg.model.warm_start_from))
    (folder / "build.json").write_text(json.dumps({"name": "tiny-sft", "fingerprint": current}))
    require_warm_start(cfg)  # current: nothing to say
    require_warm_start(OmegaConf.merge(cfg, {"agent": {"policy": "scripted"}}))  # the tokenizer is all it needs


def test_on_policy_rows_label_the_states_the_model_reached_with_the_experts_reply():
    """DAgger: a 'model' that plays like the expert but reads the wrong list page. Its list subagent gets a row at
    that state (the expert reads the right page instead) and one at the state after the wrong page (a state the
    expert never reaches by itself: it reads the right page then); the turns where it did as the expert would get
    no row."""
    from scripted_engine import ScriptedEngine

    from wideseek_exp.engines.expert import expert_reply, tool_call
    from wideseek_exp.rl.imitation import on_policy_rows

    cfg = world_config()
    cfg = OmegaConf.merge(cfg, {"agent": {"max_reply_tokens": 4096}})
    task = next(t for t in load_task_set(cfg.data, "train") if t.meta["family"] == "cities_by_country")
    wrong = {}

    def script(view):
        reply = expert_reply(view.text)
        if view.role == "subagent" and not view.subtask.startswith("[") and '"access"' in reply \
                and "gave_up" not in wrong:
            urls = re.findall(r"URL: (\S+)", view.text)
            wrong.setdefault("url", next(u for u in urls if "/list/" in u and u not in reply))
            if "Page: " + wrong["url"] not in view.text:  # not read yet: read it
                return tool_call("access", {"urls": [{"url": wrong["url"], "info_to_extract": "every entry"}]}, "Read.")
            wrong["gave_up"] = True  # after the wrong page, it gives up (the lead's retry then goes as the expert's)
            return "<think>\nDone.\n</think>\n\nNo list page found."
        return reply

    tokenizer = tiny_tokenizer()
    rows, stats = on_policy_rows(cfg, None, tokenizer, [task], seed=0, engine=ScriptedEngine(tokenizer, script))
    assert stats["trajectories"] == 1 and stats["rows"] == len(rows) == 2
    first, second = rows
    assert first["role"] == second["role"] == "subagent"
    for row in rows:
        context = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if not m])
        target = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
        assert target == expert_reply(context) + "<|im_end|>"  # the expert's reply to the model's own state
        assert '"access"' in target and wrong["url"] not in target  # the right page, not the wrong one
        start = row["assistant_masks"].index(1)
        assert row["assistant_masks"] == [0] * start + [1] * (len(row["input_ids"]) - start)
    assert "Page: " + wrong["url"] not in tokenizer.decode(first["input_ids"])  # the state before the wrong page
    assert "Page: " + wrong["url"] in tokenizer.decode(second["input_ids"])  # the state after the wrong page
    assert stats["agreed_turns"] == stats["turns"] - 2


def test_the_held_out_train_tasks_are_on_entity_sets_the_imitation_never_played(tmp_path):
    """experiments/cpu_demo/heldout.py: the train tasks outside the imitation's draw (sft.tasks with sft.seed,
    as rl/imitation.py draws them) whose entity set no imitated task shares; they load as a task set, and
    `--every 2 --start 1` writes the odd positions of them."""
    import random
    import subprocess
    import sys

    cfg = world_config()
    out = tmp_path / "heldout.jsonl"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "experiments/cpu_demo/heldout.py"), str(out), "sft.tasks=64",
                           "--every", "2", "--start", "1"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    random.Random(cfg.sft.seed).shuffle(tasks)
    played = tasks[: 64 + cfg.sft.list_drill_tasks]  # the imitation's tasks and the list drill's
    held = list(load_task_set(OmegaConf.merge(cfg.data, {"path": str(out)}), "train"))
    played_sets = {t.meta["entity_set"] for t in played}
    assert len(held) > 1 and len(held) < len(tasks) - len(played)
    assert not {t.instance_id for t in held} & {t.instance_id for t in played}
    assert not {t.meta["entity_set"] for t in held} & played_sets
    expected = [t.instance_id for t in load_task_set(cfg.data, "train")
                if t.instance_id not in {p.instance_id for p in played} and t.meta["entity_set"] not in played_sets]
    assert [t.instance_id for t in held] == expected[1::2]  # every other such task, in the split's order
    assert f"{len(held)} of {len(expected)} held-out train tasks" in done.stdout


def test_the_list_drill_trains_on_the_list_subagents_of_tasks_beyond_the_imitations():
    """sft.list_drill_tasks: the expert plays that many train tasks after the imitation's sft.tasks (in the
    imitation's shuffled order, so the held-out tasks exclude them too), and only its list subagents (the ones
    that find the entity set) become rows: one per task, each reading the list its subtask names."""
    from wideseek_exp.rl.imitation import expert_rows, imitation_split

    cfg = world_config()
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    sft = OmegaConf.merge(cfg.sft, {"tasks": 8, "list_drill_tasks": 3})
    played, rest = imitation_split(tasks, sft)
    plain, plain_rest = imitation_split(tasks, OmegaConf.merge(sft, {"list_drill_tasks": 0}))
    assert len(played) == 11 and played[:8] == plain and played[8:] == plain_rest[:3] and rest == plain_rest[3:]

    cfg = OmegaConf.merge(cfg, {"agent": {"max_reply_tokens": 4096}})
    tokenizer = tiny_tokenizer()
    drill = played[8:]
    rows, stats = expert_rows(cfg, tokenizer, drill, 6144, list_only=True)
    assert stats["trajectories"] == 3 and len(rows) == 3
    everything, _ = expert_rows(cfg, tokenizer, drill, 6144)
    assert len(everything) > len(rows)
    for row, task in zip(rows, drill):
        assert row["role"] == "subagent"
        text = tokenizer.decode(row["input_ids"])
        target = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
        slug = task.meta["entity_set"]
        assert f"/list/{slug}" in target  # the access call reads the list of this task's set
        assert f"Page: https://miniweb.local/list/{slug}" in text


def test_new_rows_are_mixed_with_replay_rows_at_the_given_share():
    """DAgger's and the list drill's mix: the new rows, then a seeded draw of replay rows making up `share`."""
    import random

    from wideseek_exp.rl.imitation import with_replay

    replay = [{"id": k} for k in range(100)]
    new = [{"id": "new"}] * 4
    mixed = with_replay(new, replay, 0.5, random.Random(0))
    assert mixed[:4] == new and len(mixed) == 8 and all(row in replay for row in mixed[4:])
    assert len({row["id"] for row in mixed[4:]}) == 4  # drawn without repeats
    assert with_replay(new, replay, 0.5, random.Random(0)) == mixed  # seeded
    assert len(with_replay(new, replay, 0.75, random.Random(0))) == 16
    short = with_replay(new, replay[:2], 0.75, random.Random(0))
    assert sorted(row["id"] for row in short[4:]) == [0, 1]  # all there are
    assert with_replay(new, replay, 0.0, random.Random(0)) == new


def test_the_paired_script_pairs_item_f1_over_tasks_and_ranks_the_list_read(tmp_path):
    """experiments/cpu_demo/paired.py: per-task item F1 paired against the first folder (mean and SE of the
    differences), the rank among its first search's hits of the page each list subagent read, and the lead calls
    and subagents a trial."""
    import json
    import subprocess
    import sys

    def trial(read: str | None) -> dict:
        hits = "Results for \"x\":\n[1] A\nURL: https://w/a\nsnip\n[2] B\nURL: https://w/b\nsnip"
        turns = [{"tool_name": "search", "tool_result": hits, "tool_arguments": {}}]
        if read:
            turns.append({"tool_name": "access", "tool_result": "Page", "tool_arguments": {"urls": [{"url": read}]}})
        return {"agents": [{"agent_id": "lead", "turns": []}, {"agent_id": "lead.1.1", "turns": turns}]}

    for name, f1s, reads in (("base", [0.1, 0.2, 0.3], ["https://w/b", None, "https://w/a"]),
                             ("other", [0.3, 0.2, 0.6], ["https://w/a", "https://w/a", "https://w/c"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "per_task.csv").write_text("instance_id,item_f1_mean\n" + "".join(
            f"t{k},{f}\n" for k, f in enumerate(f1s)))
        (folder / "trajectories.jsonl").write_text("".join(json.dumps(trial(r)) + "\n" for r in reads))
        (folder / "trials.jsonl").write_text("".join(json.dumps({"lead_calls": 2 + k, "subagents": 3 * k}) + "\n"
                                                     for k in range(len(reads) if name == "base" else 2)))
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "experiments/cpu_demo/paired.py"), str(tmp_path / "base"),
                           str(tmp_path / "other")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # differences +20, 0, +30 points: mean +16.7, SE = sd / sqrt(3) = 15.28 / 1.732 = 8.8
    # lead calls / subagents a trial: base 2, 3, 4 / 0, 3, 6; other 2, 3 / 0, 3
    assert lines[2] == f"| {tmp_path / 'base'} | 3 | 20.0 |  | 1 / 1 / 0 / 0 / 0 / 0 / 1 | 3.0 / 3.0 |"
    assert lines[3] == f"| {tmp_path / 'other'} | 3 | 36.7 | +16.7 +- 8.8 | 2 / 0 / 0 / 0 / 0 / 1 / 0 | 2.5 / 1.5 |"
