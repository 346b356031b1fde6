"""The pieces of an agent that need no rollout: reply parsing, tool schemas, prompts, summarisers and
the trajectory's JSON round trip."""

import asyncio
import json

import pytest

from wideseek_exp.agents import prompts
from wideseek_exp.agents.parser import (
    CallLimits,
    final_answer,
    find_markdown_table,
    parse_reply,
    strip_thinking,
)
from wideseek_exp.agents.summarize import NO_INFORMATION, ExtractiveSummarizer, Summarizer, make_summarizer
from wideseek_exp.agents.tools import lead_tools, single_tools, subagent_tools
from wideseek_exp.agents.trajectory import AgentRun, Trajectory, Turn
from wideseek_exp.engines.base import is_degenerate_repetition
from wideseek_exp.search.base import Page

LIMITS = CallLimits(max_subagents=3, max_queries=5, max_urls=5)


def call(name: str, arguments, think: str = "") -> str:
    return f"{think}<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call><|im_end|>"


# ---------------------------------------------------------------------------------------------- parser


def test_a_valid_call_of_each_role_is_parsed_and_cleaned():
    lead = parse_reply(call("create_sub_agents", {"sub_agents": [{"prompt": " find A "}, {"prompt": "find B"}]}),
                       "lead", LIMITS)
    assert lead.call.name == "create_sub_agents" and lead.flags == {}
    assert lead.call.arguments == {"sub_agents": [{"prompt": "find A"}, {"prompt": "find B"}]}

    search = parse_reply(call("search", {"queries": [{"query": "a", "count": 7}, {"query": "b"}]}), "subagent", LIMITS)
    assert search.call.arguments == {"queries": [{"query": "a", "count": 7}, {"query": "b", "count": None}]}

    access = parse_reply(call("access", {"urls": [{"url": "https://x.test/a", "info_to_extract": "the code"}]}),
                         "subagent", LIMITS)
    assert access.call.arguments == {"urls": [{"url": "https://x.test/a", "info_to_extract": "the code"}]}

    single = parse_reply(call("search", {"query": "airports of Aldova", "count": 2}), "single", LIMITS)
    assert single.call.arguments == {"query": "airports of Aldova", "count": 2}
    single_access = parse_reply(call("access", {"url": "https://x.test/a", "info_to_extract": "x"}), "single", LIMITS)
    assert single_access.call.name == "access"


def test_only_the_first_tool_call_counts():
    text = call("search", {"queries": [{"query": "first"}]}) + call("search", {"queries": [{"query": "second"}]})
    parsed = parse_reply(text, "subagent", LIMITS)
    assert parsed.call.arguments["queries"][0]["query"] == "first"
    assert parsed.flags == {"ignored_tool_calls": 1}


def test_a_call_inside_thinking_does_not_count():
    inside = "<think>\nmaybe " + call("search", {"queries": [{"query": "x"}]}) + "\n</think>\n\nThe answer is 4."
    parsed = parse_reply(inside, "subagent", LIMITS)
    assert parsed.call is None and parsed.flags == {}
    after = call("search", {"queries": [{"query": "x"}]}, think="<think>\nI will search.\n</think>\n\n")
    assert parse_reply(after, "subagent", LIMITS).call.name == "search"


@pytest.mark.parametrize("text,role,flag", [
    ("no call at all, just an answer", "lead", None),
    ("<tool_call>\n{\"name\": \"search\", \"arguments\": {\"queries\": [}\n</tool_call>", "subagent", "malformed_json"),
    ("<tool_call>\n[1, 2]\n</tool_call>", "subagent", "malformed_json"),
    ("<tool_call>\n{\"name\": \"search\", \"arguments\": {\"queries\": [{\"query\": \"x\"}]}}", "subagent",
     "unclosed_tool_call"),
    (call("search", {"queries": [{"query": "x"}]}), "lead", "unknown_tool"),
    (call("create_sub_agents", {"sub_agents": [{"prompt": "x"}]}), "subagent", "unknown_tool"),
    (call("browse", {"url": "x"}), "single", "unknown_tool"),
    (call("search", "not an object"), "subagent", "bad_arguments"),
    (call("search", {"queries": "one query as a string"}), "subagent", "bad_arguments"),
    (call("search", {"queries": []}), "subagent", "no_valid_items"),
    (call("search", {"queries": [{"query": ""}, {"query": 3}, "bare"]}), "subagent", "no_valid_items"),
    (call("create_sub_agents", {"sub_agents": [{"prompt": "   "}]}), "lead", "no_valid_items"),
    (call("access", {"urls": [{"url": "https://x.test"}]}), "subagent", "no_valid_items"),
    (call("search", {"queries": [{"query": "x"}]}), "single", "bad_arguments"),
    (call("access", {"url": 5, "info_to_extract": "x"}), "single", "bad_arguments"),
])
def test_a_reply_without_a_valid_call_is_a_final_answer_with_its_flag(text, role, flag):
    parsed = parse_reply(text, role, LIMITS)
    assert parsed.call is None
    assert (flag in parsed.flags) if flag else parsed.flags == {}


def test_extras_beyond_the_limits_are_dropped_and_counted():
    five = [{"prompt": f"part {k}"} for k in range(5)]
    parsed = parse_reply(call("create_sub_agents", {"sub_agents": five}), "lead", LIMITS)
    assert [entry["prompt"] for entry in parsed.call.arguments["sub_agents"]] == ["part 0", "part 1", "part 2"]
    assert parsed.flags == {"dropped_items": 2}

    queries = [{"query": f"q{k}"} for k in range(7)]
    parsed = parse_reply(call("search", {"queries": queries}), "subagent", LIMITS)
    assert len(parsed.call.arguments["queries"]) == 5 and parsed.flags == {"dropped_items": 2}

    urls = [{"url": f"https://x.test/{k}", "info_to_extract": "x"} for k in range(6)]
    parsed = parse_reply(call("access", {"urls": urls}), "subagent", LIMITS)
    assert len(parsed.call.arguments["urls"]) == 5 and parsed.flags == {"dropped_items": 1}


def test_bad_entries_are_dropped_and_bad_counts_defaulted():
    queries = [{"query": "good", "count": "3"}, {"query": ""}, {"count": 2}, {"query": "fine", "count": True},
               {"query": "ok", "count": 0}]
    parsed = parse_reply(call("search", {"queries": queries}), "subagent", LIMITS)
    assert parsed.call.arguments["queries"] == [{"query": "good", "count": None}, {"query": "fine", "count": None},
                                                {"query": "ok", "count": None}]
    assert parsed.flags == {"invalid_items": 2, "defaulted_fields": 3}


def test_thinking_is_stripped_and_the_final_answer_extracted():
    assert strip_thinking("<think>\nplan\n</think>\n\nanswer") == "\n\nanswer"
    assert strip_thinking("plan continued\n</think>\n\nanswer") == "\n\nanswer"  # opening was in the prompt
    assert strip_thinking("<think>\nnever closed") == ""
    assert strip_thinking("<think>a</think>x<think>b</think>y") == "xy"
    assert final_answer("<think>\nplan\n</think>\n\nThe table.<|im_end|>") == "The table."
    assert final_answer("plain<|endoftext|>") == "plain"


def test_the_last_fenced_markdown_table_is_found():
    table = "| a | b |\n| --- | --- |\n| 1 | 2 |"
    assert find_markdown_table(f"Here:\n```markdown\n{table}\n```") == table
    assert find_markdown_table(f"```markdown\nold\n```\nthen\n```markdown\n{table}\n```") == table
    assert find_markdown_table(f"```markdown\n{table}\n```\n```markdown\nnot a table\n```") == table
    assert find_markdown_table(table) is None  # not fenced
    assert find_markdown_table(f"```python\n{table}\n```") is None
    assert find_markdown_table(f"```markdown\n{table}") is None  # never closed (a cut reply)


def test_degenerate_repetition_is_a_long_periodic_tail():
    assert is_degenerate_repetition([5] * 200)
    assert is_degenerate_repetition(list(range(40)) + [1, 2, 3] * 50)
    assert not is_degenerate_repetition([1, 2, 3] * 20)  # too short to tell
    assert not is_degenerate_repetition(list(range(300)))
    rows = [token for row in range(40) for token in (7, 8, 100 + row, 9)]  # table rows that differ in a number
    assert not is_degenerate_repetition(rows)


# ---------------------------------------------------------------------------------------------- tools


def test_tool_schemas_carry_the_reference_names_and_the_real_limits():
    for width in (1, 4, 10):
        (lead,) = lead_tools(width)
        function = lead["function"]
        assert function["name"] == "create_sub_agents"
        assert f"up to {width} subagents" in function["description"]
        assert "ten" not in function["description"].lower().split()
        items = function["parameters"]["properties"]["sub_agents"]
        assert items["maxItems"] == width and items["items"]["required"] == ["prompt"]

    search, access = subagent_tools(5, 5, default_count=3, max_count=10)
    query_item = search["function"]["parameters"]["properties"]["queries"]
    assert search["function"]["name"] == "search" and query_item["maxItems"] == 5
    assert set(query_item["items"]["properties"]) == {"query", "count"}
    assert query_item["items"]["properties"]["count"]["default"] == 3
    url_item = access["function"]["parameters"]["properties"]["urls"]
    assert access["function"]["name"] == "access" and url_item["maxItems"] == 5
    assert url_item["items"]["required"] == ["url", "info_to_extract"]

    single_search, single_access = single_tools(3, 10)
    assert single_search["function"]["parameters"]["required"] == ["query"]
    assert set(single_access["function"]["parameters"]["properties"]) == {"url", "info_to_extract"}


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("language", ["en", "zh"])
def test_prompts_state_the_width_and_the_turn_budget(language):
    lead = prompts.lead_system_prompt(language, width=7, max_turns=9)
    assert "7" in lead and "9" in lead and "```markdown" in lead
    sub = prompts.subagent_system_prompt(language, max_turns=13, max_queries=4, max_urls=2)
    assert "13" in sub and "4" in sub and "2" in sub
    single = prompts.single_system_prompt(language, max_turns=50)
    assert "50" in single and "```markdown" in single
    assert "\\boxed{}" in prompts.single_system_prompt(language, 50, table=False)
    hint = prompts.turn_hint(language, 3, 10)
    assert "3" in hint and "10" in hint
    last = prompts.turn_hint(language, 10, 10)
    assert last != prompts.turn_hint(language, 9, 10)


def test_english_and_chinese_prompts_differ_and_follow_the_task_language():
    assert prompts.language_of("zh") == "zh" and prompts.language_of("zh-CN") == "zh"
    assert prompts.language_of("en") == "en" and prompts.language_of(None) == "en"
    zh = prompts.lead_system_prompt("zh", 4, 10)
    assert "子智能体" in zh and "subagent" not in zh
    assert "Subtask" not in prompts.subagent_reports("zh", [("p", "r", None)])
    assert "主任务" in prompts.subagent_user_message("zh", "main", "sub")


def test_subagent_reports_have_one_block_per_subtask_and_failure_notices():
    text = prompts.subagent_reports("en", [("find A", "A is 1", None), ("find B", None, "turn_limit"),
                                           ("find C", None, "context_overflow")])
    blocks = text.split("\n\n")
    assert blocks[0] == "Subtask 1: find A\nResult: A is 1"
    assert blocks[1].startswith("Subtask 2: find B\nResult: (no result") and "turns" in blocks[1]
    assert "context" in blocks[2]
    user = prompts.subagent_user_message("en", "the main task", "my part")
    assert "the main task" in user and user.endswith("Your subtask:\nmy part")


# ---------------------------------------------------------------------------------------------- summarisers

PAGE = Page("https://miniweb.local/airport/x", "Aldova Airport",
            "Aldova Airport\n\nAldova Airport serves the city of Aldova. It opened in 1950.\n\nFacts\n"
            "IATA code: ALD\nICAO code: ALDX\nCity: Aldova\nElevation (ft): 120\n\nRelated pages\n- [Aldova](x)")


def summarize(summarizer, page, info):
    return asyncio.run(summarizer.summarize(page, info))


def test_none_summariser_cuts_the_page():
    assert summarize(Summarizer(10_000), PAGE, "anything") == PAGE.text
    cut = summarize(Summarizer(20), PAGE, "anything")
    assert cut.startswith(PAGE.text[:14]) and "cut at 20 characters" in cut


def test_extractive_summariser_keeps_the_title_and_the_matching_fact_lines():
    text = summarize(ExtractiveSummarizer(25_000, 4000), PAGE, "the IATA and the elevation")
    assert text.splitlines() == ["Aldova Airport", "", "IATA code: ALD", "Elevation (ft): 120"]  # paragraphs kept
    # A small budget keeps the best-matching lines first ("code" alone also matches the ICAO line).
    ranked = summarize(ExtractiveSummarizer(25_000, 30), PAGE, "IATA codes")
    assert ranked.splitlines() == ["Aldova Airport", "", "IATA code: ALD"]
    # Nothing matches: the start of the page, so the agent still learns what the page is.
    assert summarize(ExtractiveSummarizer(25_000, 4000), PAGE, "zzz").startswith("Aldova Airport")


def test_a_missing_page_gives_the_fixed_no_information_text():
    for summarizer in (Summarizer(100), ExtractiveSummarizer(100, 100)):
        assert summarize(summarizer, None, "x") == NO_INFORMATION


def test_make_summarizer_by_name():
    from scripted_engine import agent_config

    agent, search = agent_config(summarizer="none")
    assert type(make_summarizer(agent, search)) is Summarizer
    agent, search = agent_config(summarizer="extractive")
    assert isinstance(make_summarizer(agent, search), ExtractiveSummarizer)


# ---------------------------------------------------------------------------------------------- trajectory


def test_trajectory_round_trips_through_json_and_rebuilds_sequences():
    agent = AgentRun("subagent", "lead.1.1", "lead", "find A", prompt_ids=[1, 2, 3])
    agent.turns = [Turn([4, 5], [-0.1, -0.2], "stop", "search", {"queries": [{"query": "a", "count": None}]},
                        {"ignored_tool_calls": 1}, "results", [6, 7, 8], seed=11),
                   Turn([9], [-0.3], "stop")]
    agent.final_text = "A is 1"
    trajectory = Trajectory("task-0", 1, 0, "wideseek", 4, agents=[AgentRun("lead", "lead", None, None, [1]), agent],
                            final_answer="x", generated_tokens={"lead": 0, "subagent": 3})
    again = Trajectory.from_json(trajectory.to_json())
    assert again == trajectory
    sub = again.agents[1]
    assert sub.turn_prompt_ids(1) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert sub.token_ids() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert sub.response_mask() == [0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert sub.token_logprobs() == [0, 0, 0, -0.1, -0.2, 0, 0, 0, -0.3]
    assert sub.prefill_tokens == 3 + 8 and sub.generated_tokens == 3 and sub.longest_reply == 2
    assert again.search_calls == 1 and again.access_calls == 0 and again.longest_reply() == 2


def test_extractive_summariser_returns_exactly_the_facts_a_request_names_by_label():
    page = Page("https://miniweb.local/currency/x", "Aldovan Mark (ALM)",
                "Aldovan Mark (ALM)\n\nThe mark is the currency of Aldova.\n\nFacts\nCode: ALM\nNumeric code: 999\n"
                "Minor units: 2\nUsed in: Aldova\n\nRelated pages\n- [Aldova](x)")
    lines = lambda info, page=page: [x for x in summarize(ExtractiveSummarizer(25_000, 4000), page, info).splitlines() if x]  # noqa: E731
    assert lines("Numeric code and Minor units") == ["Aldovan Mark (ALM)", "Numeric code: 999", "Minor units: 2"]
    assert lines("the Code, Numeric code and Minor units") == [
        "Aldovan Mark (ALM)", "Code: ALM", "Numeric code: 999", "Minor units: 2"]
    assert lines("IATA code and Elevation (ft)", PAGE) == ["Aldova Airport", "IATA code: ALD", "Elevation (ft): 120"]


def test_extractive_summariser_keeps_a_lists_members_one_paragraph():
    page = Page("https://miniweb.local/list/x", "Cities in Aldova",
                "Cities in Aldova\n\nThis list names 2 entries, the cities in Aldova.\n\n"
                "- [Alda](https://miniweb.local/city/alda)\n- [Bel](https://miniweb.local/city/bel)\n\n"
                "Related lists\n- [Cities in Chad](https://miniweb.local/list/cities-in-chad)")
    text = summarize(ExtractiveSummarizer(25_000, 4000), page, "the cities in Aldova")
    paragraphs = text.split("\n\n")
    assert "- [Alda](https://miniweb.local/city/alda)\n- [Bel](https://miniweb.local/city/bel)" in paragraphs
    assert paragraphs[-1] == "- [Cities in Chad](https://miniweb.local/list/cities-in-chad)"  # "cities" -> "city"
