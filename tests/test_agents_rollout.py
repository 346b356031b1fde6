"""The lead/subagent and single-agent loops on a scripted engine: every path, and the batching scheduler."""


import pytest
from scripted_engine import (
    TABLE_ANSWER,
    FakeSearch,
    ScriptedEngine,
    agent_config,
    make_task,
    tiny_tokenizer,
    tool_call,
    urls_in,
)

from wideseek_exp.agents import NO_INFORMATION, RolloutStats, run_rollouts
from wideseek_exp.engines.base import Engine


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def rollout(tokenizer, script, tasks=None, samples=1, search=None, engine=None, **agent_overrides):
    agent, search_cfg = agent_config(**{"max_subagents_per_call": 3, **agent_overrides})
    engine = engine or ScriptedEngine(tokenizer, script)
    search = search or FakeSearch()
    stats = RolloutStats()
    trajectories = run_rollouts(tasks or [make_task()], samples, engine, search, tokenizer, agent, search_cfg,
                                seed=7, stats=stats)
    return trajectories, engine, search, stats


def research_script(width=3, search_turns=1):
    """Lead: one create_sub_agents call with `width` subtasks, then a table. Subagent: `search_turns`
    searches, one access of its first hit, then a report (with thinking)."""

    def script(view):
        if view.role == "lead":
            if view.turn == 1:
                return tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"find part {k}"}
                                                                      for k in range(width)]})
            return TABLE_ANSWER
        if view.role == "subagent":
            if view.turn <= search_turns:
                return tool_call("search", {"queries": [{"query": view.subtask, "count": 2}]})
            if view.turn == search_turns + 1:
                url = urls_in(view.last_tool_result)[0]
                return tool_call("access", {"urls": [{"url": url, "info_to_extract": "IATA code"}]})
            return f"<think>\nprivate notes on {view.subtask}\n</think>\n\nReport on {view.subtask}: IATA code ALD."
        raise AssertionError(view.role)

    return script


# ------------------------------------------------------------------------------------------- wideseek


def test_lead_spawns_subagents_that_search_access_and_report(tokenizer):
    (trajectory,), engine, search, _ = rollout(tokenizer, research_script())
    lead, *subagents = trajectory.agents
    assert lead.role == "lead" and lead.parent_id is None and len(subagents) == 3
    assert [s.agent_id for s in subagents] == ["lead.1.1", "lead.1.2", "lead.1.3"]
    assert all(s.parent_id == "lead" and s.role == "subagent" for s in subagents)
    for number, sub in enumerate(subagents):
        assert sub.subtask == f"find part {number}"
        assert [t.tool_name for t in sub.turns] == ["search", "access", None]
        assert sub.final_text == f"Report on find part {number}: IATA code ALD."
        assert "Facts" not in sub.turns[1].tool_result and "IATA code: ALD" in sub.turns[1].tool_result
        assert sub.tool_errors == 0 and sub.failure is None
    # The lead reads one block per subtask, with the subagent's thinking removed.
    report = lead.turns[0].tool_result
    assert report.startswith("Subtask 1: find part 0\nResult: Report on find part 0: IATA code ALD.\n\nSubtask 2:")
    assert "private notes" not in report and "[Turn 2 of 10; give your final answer by turn 10.]" in report
    assert trajectory.final_answer.startswith("```markdown") and trajectory.table_found
    assert trajectory.subagent_count == 3 and trajectory.lead_calls == 1
    assert trajectory.generated_tokens["lead"] == lead.generated_tokens > 0
    assert trajectory.generated_tokens["subagent"] == sum(s.generated_tokens for s in subagents)
    assert not trajectory.lead_failed and trajectory.access_calls == 3 and trajectory.search_calls == 3
    # count 2 from the call reached the backend as top_k
    assert ("search", ["find part 0", "find part 1", "find part 2"], 2) in search.calls


def test_a_subagent_reads_the_main_task_and_its_own_subtask(tokenizer):
    task = make_task(query="Which airports does Aldova have?")
    seen = []

    def script(view):
        if view.role == "subagent":
            seen.append(view.user)
            return "nothing found"
        return research_script()(view)

    rollout(tokenizer, script, tasks=[task])
    assert len(seen) == 3
    assert all("Which airports does Aldova have?" in user for user in seen)
    assert sorted(user.rsplit("\n", 1)[1] for user in seen) == ["find part 0", "find part 1", "find part 2"]


def test_more_than_w_subagents_are_dropped(tokenizer):
    (trajectory,), *_ = rollout(tokenizer, research_script(width=5), max_subagents_per_call=3)
    lead = trajectory.root
    assert lead.turns[0].parse_flags == {"dropped_items": 2}
    assert len(lead.turns[0].tool_arguments["sub_agents"]) == 3 and trajectory.subagent_count == 3
    assert "Subtask 3:" in lead.turns[0].tool_result and "Subtask 4:" not in lead.turns[0].tool_result


@pytest.mark.parametrize("width", [2, 5])
def test_the_width_is_stated_in_the_tool_description_and_the_lead_prompt(tokenizer, width):
    (trajectory,), *_ = rollout(tokenizer, research_script(width=1), max_subagents_per_call=width)
    prompt = tokenizer.decode(trajectory.root.prompt_ids)
    assert f"Start up to {width} subagents at once" in prompt  # the tool description
    assert f"start up to {width} subagents at once" in prompt  # the system prompt
    assert f'"maxItems": {width}' in prompt


def test_a_subagent_out_of_turns_gives_the_lead_a_failure_notice(tokenizer):
    def script(view):
        if view.role == "subagent":
            return tool_call("search", {"queries": [{"query": f"{view.subtask} again {view.turn}"}]})
        return research_script(width=2)(view)

    (trajectory,), *_ = rollout(tokenizer, script, subagent_max_turns=3)
    subagents = trajectory.subagents()
    assert all(s.turn_limit and s.final_text is None and len(s.turns) == 3 for s in subagents)
    assert all(s.turns[-1].tool_result is None for s in subagents)  # the last turn's call is not run
    assert "Last turn" not in subagents[0].turns[0].tool_result
    assert "[Turn 3 of 3: this is your last turn." in subagents[0].turns[1].tool_result
    report = trajectory.root.turns[0].tool_result
    assert report.count("(no result: the subagent used all its turns without finishing)") == 2
    assert trajectory.table_found and not trajectory.lead_failed


def test_the_lead_out_of_turns_fails_the_trajectory(tokenizer):
    def script(view):
        if view.role == "lead":
            return tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"part {view.turn}"}]})
        return "done"

    (trajectory,), *_ = rollout(tokenizer, script, lead_max_turns=2)
    assert trajectory.lead_turn_limit and trajectory.lead_failed and trajectory.final_answer is None
    assert trajectory.lead_calls == 1 and trajectory.subagent_count == 1  # the call on the last turn is not run
    assert not trajectory.table_found


def test_context_overflow_of_subagents_and_of_the_lead(tokenizer):
    (probe,), *_ = rollout(tokenizer, research_script(width=1))
    lead_prompt = len(probe.root.prompt_ids)
    sub_prompt = len(probe.subagents()[0].prompt_ids)
    # Room for the subagent's first reply but not for its search results.
    limit = sub_prompt + len(probe.subagents()[0].turns[0].response_ids) + 10
    assert limit > lead_prompt + len(probe.root.turns[0].response_ids)
    (trajectory,), *_ = rollout(tokenizer, research_script(width=1), max_context_tokens=limit)
    sub = trajectory.subagents()[0]
    assert sub.context_overflow and sub.final_text is None and len(sub.turns) == 1
    assert sub.turns[0].tool_result is not None and sub.turns[0].followup_ids == []  # ran, but did not fit
    assert "ran out of context" in trajectory.root.turns[0].tool_result
    # ... and the lead, whose prompt then grows past the limit as well, fails the trajectory.
    assert trajectory.lead_context_overflow and trajectory.lead_failed
    for agent in trajectory.agents:
        assert len(agent.token_ids()) <= limit


def test_an_initial_prompt_too_long_or_a_reply_cut_by_the_context_overflows(tokenizer):
    (trajectory,), engine, *_ = rollout(tokenizer, research_script(), max_context_tokens=50)
    assert trajectory.lead_context_overflow and trajectory.root.turns == [] and engine.batches == []

    def long_reply(view):
        return "word " * 400

    (probe,), *_ = rollout(tokenizer, long_reply)
    limit = len(probe.root.prompt_ids) + 100
    (trajectory,), *_ = rollout(tokenizer, long_reply, max_context_tokens=limit, max_reply_tokens=1000)
    turn = trajectory.root.turns[0]
    assert trajectory.lead_context_overflow and turn.finish_reason == "length" and len(turn.response_ids) == 100


def test_access_only_reads_urls_from_the_agents_own_search_results(tokenizer):
    def script(view):
        if view.role == "subagent":
            if view.turn == 1:
                return tool_call("search", {"queries": [{"query": "aldova airports"}, {"query": "missing page"}]})
            if view.turn == 2:
                return tool_call("access", {"urls": [
                    {"url": "http://EXAMPLE.test/aldova-airports/1/", "info_to_extract": "IATA"},  # seen, respelled
                    {"url": "https://example.test/never-seen/1", "info_to_extract": "IATA"},
                    {"url": "https://example.test/missing-page/1", "info_to_extract": "IATA"},  # seen, no page
                ]})
            return "done"
        return research_script(width=1)(view)

    (trajectory,), _, search, _ = rollout(tokenizer, script)
    sub = trajectory.subagents()[0]
    result = sub.turns[1].tool_result
    blocks = result.split("\n\nPage: ")
    assert "IATA code: ALD" in blocks[0]
    assert "did not appear in your search results" in blocks[1]
    assert NO_INFORMATION in blocks[2]
    assert sub.tool_errors == 2
    accessed = [call[1] for call in search.calls if call[0] == "access"]
    assert accessed == [["http://EXAMPLE.test/aldova-airports/1/", "https://example.test/missing-page/1"]]


def test_urls_seen_by_a_sibling_do_not_count_and_counts_are_capped(tokenizer):
    def script(view):
        if view.role == "subagent":
            if view.subtask == "find part 0":  # searches, with a count above max_top_k, then reports
                if view.turn == 1:
                    return tool_call("search", {"queries": [{"query": "shared", "count": 50}]})
                return "done"
            if view.turn == 1:  # reads part 0's first hit without having searched itself
                return tool_call("access", {"urls": [{"url": "https://example.test/shared/1", "info_to_extract": "x"}]})
            return "done"
        return research_script(width=2)(view)

    (trajectory,), _, search, _ = rollout(tokenizer, script)
    first, second = trajectory.subagents()
    assert ("search", ["shared"], 10) in search.calls  # capped at search.max_top_k
    assert first.tool_errors == 0
    assert "did not appear in your search results" in second.turns[0].tool_result and second.tool_errors == 1
    assert not [call for call in search.calls if call[0] == "access"]


def test_repeating_the_same_call_is_degenerate(tokenizer):
    def script(view):
        if view.role == "subagent":
            return tool_call("search", {"queries": [{"query": "same"}]})
        return research_script(width=1)(view)

    (trajectory,), *_ = rollout(tokenizer, script, repeat_call_limit=3)
    sub = trajectory.subagents()[0]
    assert sub.degenerate_repetition and len(sub.turns) == 3 and sub.turns[2].tool_result is None
    assert "repeating itself" in trajectory.root.turns[0].tool_result


def test_a_looping_reply_is_degenerate(tokenizer):
    def script(view):
        if view.role == "subagent":
            return "the the the " * 100
        return research_script(width=1)(view)

    (trajectory,), *_ = rollout(tokenizer, script)
    assert trajectory.subagents()[0].degenerate_repetition
    assert trajectory.subagents()[0].final_text is None


def test_chinese_tasks_get_chinese_prompts(tokenizer):
    task = make_task(query="列出阿尔多瓦的机场。", language="zh")
    (trajectory,), *_ = rollout(tokenizer, research_script(width=2), tasks=[task])
    lead_prompt = tokenizer.decode(trajectory.root.prompt_ids)
    assert "子智能体" in lead_prompt and "research team" not in lead_prompt
    sub_prompt = tokenizer.decode(trajectory.subagents()[0].prompt_ids)
    assert "主任务" in sub_prompt and "列出阿尔多瓦的机场。" in sub_prompt
    assert trajectory.root.turns[0].tool_result.startswith("子任务 1：find part 0\n结果：")
    assert "第 2 轮" in trajectory.root.turns[0].tool_result


def test_llm_summaries_go_through_the_same_batches(tokenizer):
    def script(view):
        if view.role == "summarizer":
            assert "IATA code: ALD" in view.user and "Extract this information from the page: IATA code" in view.user
            return "Extracted: ALD"
        return research_script(width=2)(view)

    (trajectory,), engine, _, stats = rollout(tokenizer, script, summarizer="llm")
    sub = trajectory.subagents()[0]
    assert "Extracted: ALD" in sub.turns[1].tool_result
    assert trajectory.generated_tokens["summarizer"] > 0
    # Round 4 is the two summaries, sent together; every round holds all that was ready.
    assert [flush.size for flush in stats.flushes] == [1, 2, 2, 2, 2, 1]


# ------------------------------------------------------------------------------------------- single


def test_single_agent_searches_reads_and_answers(tokenizer):
    def script(view):
        assert view.role == "single"
        if view.turn == 1:
            return tool_call("search", {"query": "aldova airports"})
        if view.turn == 2:
            return tool_call("access", {"url": urls_in(view.last_tool_result)[0], "info_to_extract": "IATA code"})
        return TABLE_ANSWER

    (trajectory,), _, search, _ = rollout(tokenizer, script, name="singleseek")
    (agent,) = trajectory.agents
    assert agent.role == "single" and agent.agent_id == "single" and trajectory.mode == "singleseek"
    assert [t.tool_name for t in agent.turns] == ["search", "access", None]
    assert "IATA code: ALD" in agent.turns[1].tool_result and "of 50" in agent.turns[1].tool_result
    assert trajectory.table_found and trajectory.width == 0 and trajectory.subagent_count == 0
    prompt = tokenizer.decode(agent.prompt_ids)
    assert "create_sub_agents" not in prompt and '"queries"' not in prompt
    assert ("search", ["aldova airports"], 3) in search.calls  # the default count


# ------------------------------------------------------------------------------------------- scheduler


def test_all_agents_of_all_tasks_and_samples_share_each_engine_call(tokenizer):
    tasks = [make_task(f"task-{i}") for i in range(3)]
    trajectories, engine, search, stats = rollout(tokenizer, research_script(), tasks=tasks, samples=2)
    assert [(t.instance_id, t.sample_index) for t in trajectories] == [(f"task-{i}", s) for i in range(3)
                                                                      for s in range(2)]
    # 6 leads; then 18 subagents search, access and report in lock-step; then the 6 leads answer.
    assert [len(batch) for batch in engine.batches] == [6, 18, 18, 18, 6]
    assert [flush.size for flush in stats.flushes] == [6, 18, 18, 18, 6]
    # Tools batched the same way: all 18 searches in one backend call, all 18 page reads in another.
    assert [call[0] for call in search.calls] == ["search", "access"]
    assert len(search.calls[0][1]) == 18 and len(search.calls[1][1]) == 18
    # Generation and tools ran in worker threads, not in the event loop.
    assert all(name.startswith("rollout-engine") for name in engine.threads)
    assert all(name.startswith("rollout-tools") for name in search.threads)


def test_no_engine_call_leaves_out_an_agent_that_was_ready(tokenizer):
    """Mixed work: leads spawn 1..3 subagents, subagent k searches k times. Criterion, checked from the
    engine's own record: an agent whose reply came back in call c and that went on (tool run, no
    subagents to wait for) is in call c + 1; new subagents start in the call after their lead's; a lead
    resumes in the call after its last subagent's final reply. Every prompt belongs to an agent turn."""

    def script(view):
        if view.role == "lead":
            if view.turn == 1:
                count = 1 + int(view.user[-1]) % 3
                return tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"part {k}"}
                                                                      for k in range(1, count + 1)]})
            return TABLE_ANSWER
        searches = int(view.subtask.split()[-1])
        if view.turn <= searches:
            return tool_call("search", {"queries": [{"query": f"{view.subtask} {view.turn}"}]})
        return "report"

    tasks = [make_task(f"task-{i}", query=f"Task number {i}") for i in range(4)]
    trajectories, engine, _, stats = rollout(tokenizer, script, tasks=tasks, samples=2)
    call_of = {}
    for index, batch in enumerate(engine.batches):
        for prompt in batch:
            call_of.setdefault(tuple(prompt), []).append(index)
    located = {}
    for t_index, trajectory in enumerate(trajectories):
        for agent in trajectory.agents:
            for turn_index in range(len(agent.turns)):
                calls = call_of.pop(tuple(agent.turn_prompt_ids(turn_index)))
                located[(t_index, agent.agent_id, turn_index)] = calls.pop(0)
                if calls:
                    call_of[tuple(agent.turn_prompt_ids(turn_index))] = calls
    assert not call_of, "the engine received prompts that belong to no agent turn"
    assert max(len(batch) for batch in engine.batches) > 1

    for t_index, trajectory in enumerate(trajectories):
        by_id = {agent.agent_id: agent for agent in trajectory.agents}
        for agent in trajectory.agents:
            for turn_index in range(1, len(agent.turns)):
                previous = agent.turns[turn_index - 1]
                here = located[(t_index, agent.agent_id, turn_index)]
                if previous.tool_name == "create_sub_agents":
                    children = [a for a in by_id.values() if a.parent_id == agent.agent_id]
                    ready = max(located[(t_index, c.agent_id, len(c.turns) - 1)] for c in children) + 1
                else:
                    ready = located[(t_index, agent.agent_id, turn_index - 1)] + 1
                assert here == ready, (agent.agent_id, turn_index)
            if agent.parent_id is not None:
                parent = by_id[agent.parent_id]
                spawned = located[(t_index, parent.agent_id, 0)]
                assert located[(t_index, agent.agent_id, 0)] == spawned + 1
    assert all(flush.tool_requests_in_flight == 0 for flush in stats.flushes)


def test_tool_calls_of_all_agents_run_together_not_one_by_one(tokenizer):
    tasks = [make_task(f"task-{i}") for i in range(3)]
    search = FakeSearch(delay_s=0.05)
    _, _, search, stats = rollout(tokenizer, research_script(), tasks=tasks, samples=2, search=search)
    assert len(search.calls) == 2  # 36 tool calls, 2 backend calls (one by one they would be 36)
    assert [(b.search_requests, b.access_requests) for b in stats.tool_batches] == [(18, 0), (0, 18)]


def test_generation_waits_briefly_for_running_tools_then_goes_ahead(tokenizer):
    """Task 0's subagent searches (slow backend), task 1's answers at once, so task 1's lead is ready
    while the search runs: with tool_wait_s above the search time it waits and joins the next batch;
    below it, its call goes ahead while the tools run."""

    def script(view):
        if view.role == "lead":
            return research_script(width=1)(view)
        if "task 0" in view.user and view.turn == 1:
            return tool_call("search", {"queries": [{"query": "slow"}]})
        return "report"

    tasks = [make_task("t0", query="task 0"), make_task("t1", query="task 1")]
    *_, waited = rollout(tokenizer, script, tasks=tasks, search=FakeSearch(delay_s=0.3), tool_wait_s=5.0)
    assert [flush.size for flush in waited.flushes] == [2, 2, 2, 1]
    *_, overlapped = rollout(tokenizer, script, tasks=tasks, search=FakeSearch(delay_s=0.3), tool_wait_s=0.05)
    assert [flush.size for flush in overlapped.flushes] == [2, 2, 1, 1, 1]
    assert overlapped.flushes[2].tool_requests_in_flight == 1


def test_same_seed_same_requests_and_seeds_recorded(tokenizer):
    tasks = [make_task(f"task-{i}") for i in range(2)]
    first, engine_a, *_ = rollout(tokenizer, research_script(), tasks=tasks, samples=2)
    second, engine_b, *_ = rollout(tokenizer, research_script(), tasks=tasks, samples=2)
    assert [s.seed for s in engine_a.samplings] == [s.seed for s in engine_b.samplings]
    assert engine_a.batches == engine_b.batches
    assert [t.to_dict() | {"timings": {}} for t in first] == [t.to_dict() | {"timings": {}} for t in second]
    seeds = [turn.seed for t in first for agent in t.agents for turn in agent.turns]
    assert len(set(seeds)) == len(seeds)  # every request its own seed: task, sample, agent, turn
    assert len({s.seed for s in engine_a.samplings}) == len(engine_a.samplings)


def test_on_trajectory_sees_each_trajectory_as_it_finishes(tokenizer):
    def script(view):  # task 1 finishes in the first round, task 0 needs its subagents
        if view.role == "lead" and "quick" in view.user:
            return TABLE_ANSWER
        return research_script(width=1)(view)

    agent, search_cfg = agent_config(max_subagents_per_call=2)
    engine = ScriptedEngine(tokenizer, script)
    finished = []

    def on_trajectory(trajectory):
        finished.append((trajectory.instance_id, len(engine.batches)))

    tasks = [make_task("slow"), make_task("quick", query="quick one")]
    result = run_rollouts(tasks, 1, engine, FakeSearch(), tokenizer, agent, search_cfg, on_trajectory=on_trajectory)
    assert finished == [("quick", 1), ("slow", 5)]
    assert [t.instance_id for t in result] == ["slow", "quick"]


def test_at_most_max_active_trajectories_run_at_once(tokenizer):
    agent, search_cfg = agent_config(max_subagents_per_call=2)
    engine = ScriptedEngine(tokenizer, research_script(width=2))
    tasks = [make_task(f"task-{i}") for i in range(4)]
    result = run_rollouts(tasks, 1, engine, FakeSearch(), tokenizer, agent, search_cfg, max_active_trajectories=2)
    assert [t.instance_id for t in result] == [f"task-{i}" for i in range(4)]
    assert max(len(batch) for batch in engine.batches) == 4  # 2 trajectories x 2 subagents


def test_an_engine_failure_stops_the_rollout(tokenizer):
    class Broken(Engine):
        def generate(self, prompts, sampling):
            raise RuntimeError("device lost")

    agent, search_cfg = agent_config()
    with pytest.raises(RuntimeError, match="device lost"):
        run_rollouts([make_task()], 2, Broken(), FakeSearch(), tokenizer, agent, search_cfg)
