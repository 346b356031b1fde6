"""Structured tool calls (agent.tool_grammar): the reply grammar admits exactly the valid calls of a role,
the expert's replies lie in it, and engine=hf samples under its mask with logprobs of the masked
distribution."""

import json
import random

import pytest
import torch
import xgrammar as xgr
from omegaconf import OmegaConf
from scripted_engine import tiny_tokenizer, world_config

from wideseek_exp import WideseekError
from wideseek_exp.agents.grammar import Grounding, reply_grammar
from wideseek_exp.agents.parser import CallLimits, parse_reply
from wideseek_exp.agents.rollout import run_rollouts
from wideseek_exp.engines.base import SamplingParams
from wideseek_exp.engines.expert import ExpertEngine, answer, tool_call
from wideseek_exp.engines.hf import GrammarMasks, HFEngine
from wideseek_exp.search.factory import make_search_backend
from wideseek_exp.tasks.loaders import load_task_set

LIMITS = CallLimits(max_subagents=3, max_queries=2, max_urls=2)
SEEN = ["https://miniweb.local/list/countries-of-caribbean", "https://miniweb.local/country/cuba"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def compiler(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer),
                                                                  stop_token_ids=[end]))


def grammar(role, seen=SEEN, thinking=True):
    return reply_grammar(role, width=LIMITS.max_subagents, max_queries=LIMITS.max_queries,
                         max_urls=LIMITS.max_urls, thinking=thinking, seen_urls=seen)


def admits(compiler, ebnf: str, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(ebnf))
    return matcher.accept_string(text) and matcher.is_completed()


@pytest.mark.parametrize("role, reply", [
    ("lead", tool_call("create_sub_agents", {"sub_agents": [{"prompt": "Find the list."}]}, "First the set.")),
    ("lead", tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"Entity {i}"} for i in range(3)]}, "Wave.")),
    ("lead", answer("```markdown\n| Country | Capital |\n| --- | --- |\n| Cuba | Havana |\n```", "The table.")),
    ("subagent", tool_call("search", {"queries": [{"query": "Cuba", "count": 3}, {"query": "Cuba capital"}]}, "S.")),
    ("subagent", tool_call("access", {"urls": [{"url": SEEN[1], "info_to_extract": "Capital"}]}, "Read.")),
    ("subagent", answer('Cuba\nCapital: Havana (the "old" town)\n1 < 2', "Report.")),
    ("single", tool_call("search", {"query": "Cuba", "count": 5}, "S.")),
    ("single", tool_call("access", {"url": SEEN[0], "info_to_extract": "every entry"}, "Read.")),
])
def test_valid_replies_are_admitted(compiler, role, reply):
    assert admits(compiler, grammar(role), reply)


@pytest.mark.parametrize("role, reply", [
    # unclosed call, broken JSON, a tool of another role, an unknown key, too many entries, an empty string
    ("lead", '<think>\nx\n</think>\n\n<tool_call>\n{"name": "create_sub_agents", "arguments": {"sub_agents": []}}'),
    ("lead", '<think>\nx\n</think>\n\n<tool_call>\n{"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "a"}]}\n</tool_call>'),
    ("lead", tool_call("search", {"queries": [{"query": "Cuba"}]}, "S.")),
    ("subagent", tool_call("search", {"queries": [{"query": "Cuba", "top": 3}]}, "S.")),
    ("subagent", tool_call("search", {"queries": [{"query": q} for q in "abc"]}, "S.")),
    ("subagent", tool_call("search", {"queries": [{"query": " "}]}, "S.")),
    ("lead", tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"E{i}"} for i in range(4)]}, "Wave.")),
    # a URL the agent never saw; a tool call hidden in a final answer; no think block
    ("subagent", tool_call("access", {"urls": [{"url": "https://miniweb.local/country/chad", "info_to_extract": "x"}]},
                           "Read.")),
    ("subagent", answer('Done. <tool_call>\n{"name": "search"}\n</tool_call>', "Report.")),
    ("single", '<tool_call>\n{"name": "search", "arguments": {"query": "Cuba"}}\n</tool_call>'),
])
def test_invalid_replies_are_rejected(compiler, role, reply):
    assert not admits(compiler, grammar(role), reply)


def test_without_search_results_there_is_no_access_call(compiler):
    reply = tool_call("access", {"urls": [{"url": SEEN[0], "info_to_extract": "x"}]}, "Read.")
    assert not admits(compiler, grammar("subagent", seen=[]), reply)
    assert admits(compiler, grammar("subagent", seen=None), reply)  # tool_grammar=schema: any URL


def test_with_thinking_off_a_reply_starts_with_its_call(compiler):
    call = '<tool_call>\n{"name": "search", "arguments": {"queries": [{"query": "Cuba"}]}}\n</tool_call>'
    assert admits(compiler, grammar("subagent", thinking=False), call)
    assert not admits(compiler, grammar("subagent", thinking=False), "<think>\nx\n</think>\n\n" + call)


@pytest.mark.parametrize("role", ["lead", "subagent", "single"])
def test_every_reply_sampled_under_the_mask_parses_into_a_valid_call_or_an_answer(tokenizer, role):
    """Random logits, masked by the grammar: whatever comes out is a call the parser accepts whole (no flag
    raised, no entry dropped, the URL one of those seen) or a final answer without a call."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    masks = GrammarMasks(tokenizer, len(tokenizer), {end})
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    # closing characters, favoured now and then so that most replies end within the budget
    closing = {tokenizer.convert_tokens_to_ids(t) for t in tokenizer.convert_ids_to_tokens(
        [i for i in range(len(tokenizer)) if tokenizer.decode([i]) in ('"', "}", "]", "\n", "<", ">", "/")])}
    calls = 0
    for sample in range(60):
        matcher = masks.matcher(grammar(role))
        # every other sample is put on the call branch (random tokens seldom open it)
        ids = tokenizer.encode("<think>\nx\n</think>\n\n<tool_call>\n" if sample % 2 else "", add_special_tokens=False)
        for token in ids:
            masks.advance(matcher, token)
        for _ in range(600):
            logits = torch.randn(1, len(tokenizer), generator=generator)
            masks.apply(logits, [matcher])
            allowed = torch.isfinite(logits[0]).nonzero().squeeze(1).tolist()
            ends = [t for t in allowed if t in closing or t == end]
            token = rng.choice(ends) if ends and rng.random() < 0.4 else rng.choice(allowed)
            masks.advance(matcher, token)
            ids.append(token)
            if token == end:
                break
        if ids[-1] != end:
            continue  # cut by the budget: nothing to parse
        text = tokenizer.decode(ids)
        parsed = parse_reply(text, role, LIMITS)
        if "<tool_call>" in text.split("</think>")[-1]:
            calls += 1
            assert parsed.call is not None and not parsed.flags, (text, parsed.flags)
            for item in parsed.call.arguments.get("urls", [parsed.call.arguments]):
                if "url" in item:
                    assert item["url"] in SEEN
        else:
            assert parsed.call is None
    assert calls > 0


@pytest.mark.parametrize("mode", ["seen_urls", "grounded"])
def test_the_experts_replies_lie_in_the_grammar_of_their_turn(compiler, mode):
    """The expert's whole rollouts under tool_grammar=seen_urls and grounded: every reply of every agent is
    admitted by the grammar its turn recorded (the URLs it reads are among those its searches showed; a
    subagent's report is made of lines it read)."""
    cfg = world_config()
    tasks = list(load_task_set(cfg.data, "train"))[::50][:6]
    agent = OmegaConf.merge(cfg.agent, {"max_reply_tokens": 4096, "tool_grammar": mode})
    tokenizer = tiny_tokenizer()
    trajectories = run_rollouts(tasks, 1, ExpertEngine(tokenizer), make_search_backend(cfg), tokenizer, agent,
                                cfg.search, seed=0)
    replies = 0
    for trajectory in trajectories:
        for run in trajectory.agents:
            for turn in run.turns:
                assert turn.grammar is not None
                text = tokenizer.decode(turn.response_ids).removesuffix("<|im_end|>")
                assert admits(compiler, turn.grammar, text), text
                replies += 1
    assert replies > 20


def test_engine_hf_samples_under_the_grammar_with_masked_logprobs(tokenizer):
    from wideseek_exp.models.loader import load_model_and_tokenizer

    cfg = world_config()
    model, tokenizer = load_model_and_tokenizer(cfg.paths.generated + "/models/tiny", dtype="float32", device="cpu")
    engine = HFEngine(model, tokenizer, max_batch_size=4, prefix_cache_mb=64)
    prompt = tokenizer.encode("<|im_start|>user\nfind Cuba<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    ebnf = grammar("subagent")
    sampling = SamplingParams(max_new_tokens=120, temperature=1.0, seed=3, grammars=(ebnf, None))
    constrained, free = engine.generate([prompt, prompt], sampling)
    # the random model's free reply is gibberish; the constrained one follows the grammar token by token
    matcher = xgr.GrammarMatcher(GrammarMasks(tokenizer, engine.vocab_size, engine.eos_token_ids).compiler
                                 .compile_grammar(ebnf))
    assert all(matcher.accept_token(t) for t in constrained.token_ids)
    assert tokenizer.decode(constrained.token_ids).startswith("<think>\n")
    assert not tokenizer.decode(free.token_ids).startswith("<think>\n")
    # the logprob of each sampled token is under the masked distribution: recompute it from the model
    masks = GrammarMasks(tokenizer, engine.vocab_size, engine.eos_token_ids)
    replay = masks.matcher(ebnf)
    ids = torch.tensor([prompt + constrained.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
    for position, token in enumerate(constrained.token_ids):
        row = logits[position: position + 1].clone()
        masks.apply(row, [replay])
        expected = torch.log_softmax(row[0], -1)[token].item()
        assert constrained.logprobs[position] == pytest.approx(expected, abs=1e-3)
        masks.advance(replay, token)


def test_an_engine_without_grammars_is_refused(tokenizer):
    from scripted_engine import FakeSearch, ScriptedEngine, agent_config, make_task

    engine = ScriptedEngine(tokenizer, lambda view: answer("done", "x"))
    with pytest.raises(WideseekError, match="agent.tool_grammar"):
        run_rollouts([make_task()], 1, engine, FakeSearch(), tokenizer, *agent_config(tool_grammar="schema"))


def test_a_bad_mode_is_one_line_naming_the_key(tokenizer):
    from wideseek_exp.agents.grammar import check_mode

    with pytest.raises(WideseekError, match="agent.tool_grammar"):
        check_mode("strict")
    assert json.loads(json.dumps(grammar("lead")))  # a plain string, storable in a trajectory


def test_a_grounded_report_is_a_whole_paragraph_the_subagent_read(compiler):
    read = [["Results for \"Cuba\":", "[1] Cuba", "URL: https://miniweb.local/country/cuba"],
            ["Page: https://miniweb.local/country/cuba", "Cuba", "Capital: Havana", "Population: 11210064"],
            ["- [Havana](https://miniweb.local/city/havana)", "- [Santiago](https://miniweb.local/city/santiago)"]]
    ebnf = reply_grammar("subagent", width=3, max_queries=2, max_urls=2, thinking=True, seen_urls=SEEN,
                         grounding=Grounding(blocks=read))
    members = "- [Havana](https://miniweb.local/city/havana)\n- [Santiago](https://miniweb.local/city/santiago)"
    assert admits(compiler, ebnf, answer(members, "Report."))
    assert admits(compiler, ebnf, answer("Page: https://miniweb.local/country/cuba\nCuba\nCapital: Havana\n"
                                         "Population: 11210064", "Report."))
    assert admits(compiler, ebnf, answer("", "Nothing."))
    assert not admits(compiler, ebnf, answer("- [Havana](https://miniweb.local/city/havana)", "Report."))  # cut short
    assert not admits(compiler, ebnf, answer("Cuba\nCapital: Havana", "Report."))  # part of a paragraph
    assert not admits(compiler, ebnf, answer("Capital: Hav", "Report."))  # part of a line
    assert not admits(compiler, ebnf, answer(members + "\n[1] Cuba", "Report."))  # two paragraphs
    assert not admits(compiler, ebnf, answer(members + "\n" + members, "Report."))  # a loop cannot start
    assert admits(compiler, ebnf, tool_call("search", {"queries": [{"query": "Cuba"}]}, "S."))  # calls as before


ENTITIES = ["Belize", "El Salvador", "Honduras", "Mexico"]
TASK = "Which are the countries that share a land border with Guatemala? Look up the Capital and ISO alpha-3 code."


def lead_grammar(delegated=(), cells=None, width=3, quotes=TASK, entities=ENTITIES):
    grounding = Grounding(quotes=quotes, entities=entities, delegated=list(delegated), entity_cells=cells or {})
    return reply_grammar("lead", width=width, max_queries=2, max_urls=2, thinking=False,
                         table_columns=["Country", "Capital", "ISO alpha-3 code"], table_cells=[], grounding=grounding)


def wave(*prompts):  # a call with thinking off
    return tool_call("create_sub_agents", {"sub_agents": [{"prompt": p} for p in prompts]}, "").split("</think>\n\n")[1]


def table(*rows):
    lines = ["| Country | Capital | ISO alpha-3 code |", "| --- | --- | --- |", *rows]
    return "```markdown\n" + "\n".join(lines) + "\n```"


def test_a_grounded_lead_delegates_each_reported_entity_once_in_the_reports_order(compiler):
    """A wave is full: the next min(W, not yet delegated) entities, in the reports' order, one subtask each."""
    ask = "[{}] the Capital and ISO alpha-3 code".format
    assert admits(compiler, lead_grammar(), wave(ask("Belize"), ask("El Salvador"), ask("Honduras")))
    assert admits(compiler, lead_grammar(["Belize", "El Salvador"]), wave(ask("Honduras"), "[Mexico]"))
    assert admits(compiler, lead_grammar(width=8), wave(*(ask(name) for name in ENTITIES)))
    assert not admits(compiler, lead_grammar(), wave(ask("Belize"), ask("Honduras"), ask("Mexico")))  # skips one
    assert not admits(compiler, lead_grammar(), wave(ask("Belize"), ask("El Salvador")))  # a short wave
    assert not admits(compiler, lead_grammar(["Belize"]), wave(ask("Honduras"), ask("Mexico")))  # not the next
    # entities known: every subtask delegates one; none known yet: subtasks find them, in the task's words
    assert not admits(compiler, lead_grammar(), wave("the countries that share a land border with Guatemala"))
    assert admits(compiler, lead_grammar(entities=[]), wave("the countries that share a land border with Guatemala"))
    assert not admits(compiler, lead_grammar(entities=[]), wave(ask("Belize")))
    finding = "the countries that share a land border with Guatemala"
    assert not admits(compiler, lead_grammar(entities=[]), wave(finding, finding))  # one finding subtask a call
    # all delegated: the lead can only answer
    assert not admits(compiler, lead_grammar(ENTITIES), wave("the countries that share a land border with Guatemala"))
    assert admits(compiler, lead_grammar(ENTITIES), table("| Belize |  |  |"))
    assert not admits(compiler, lead_grammar(["Belize"]), wave(ask("Belize")))  # delegated before
    assert not admits(compiler, lead_grammar(), wave(ask("Honduras"), ask("Belize")))  # not in the reports' order
    assert not admits(compiler, lead_grammar(), wave(ask("Belize"), ask("Belize"), ask("El Salvador")))  # twice
    assert not admits(compiler, lead_grammar(), wave(ask("Belise")))  # not a reported entity
    assert not admits(compiler, lead_grammar(), wave(ask("Belize"), ask("Honduras"), ask("Mexico"),
                                                     ask("El Salvador")))  # more than W
    assert not admits(compiler, lead_grammar(), wave("[Belize] and [Mexico]"))  # one entity a subtask


def test_a_grounded_lead_quotes_its_task(compiler):
    """Its subtasks' words are a span of the task, whole words, as the task spaces them; without a task to
    quote (quotes=None) they are its own, brackets aside."""
    for quote in ("the countries that share a land border with Guatemala", "Guatemala? Look up the Capital",
                  "Capital and ISO alpha-3 code."):
        assert admits(compiler, lead_grammar(entities=[]), wave(quote))
    assert admits(compiler, lead_grammar(["Belize", "El Salvador"]),
                  wave("[Honduras] the Capital", "[Mexico] Capital and ISO alpha-3 code."))
    assert not admits(compiler, lead_grammar(), wave("[Belize] the capital"))
    for words in ("the countries that share a land border with Mexico",  # not the task's
                  "the countries that share a border with Guatemala",  # a word left out
                  "the countries the countries",  # a loop
                  "countries that sh",  # part of a word
                  "Find the list of the countries"):
        assert not admits(compiler, lead_grammar(entities=[]), wave(words))
        assert admits(compiler, lead_grammar(quotes=None, entities=[]), wave(words))


def test_a_grounded_subagent_searches_quotes_of_its_task_and_subtask(compiler):
    user = "Main task (for context only; work on your subtask):\nFind the airports of Peru.\n\nYour subtask:\n[Cusco] the City"
    ebnf = reply_grammar("subagent", width=3, max_queries=2, max_urls=2, thinking=False, seen_urls=SEEN,
                         grounding=Grounding(quotes=user, blocks=[]))
    search = lambda query: tool_call("search", {"queries": [{"query": query, "count": 3}]}, "").split("</think>\n\n")[1]  # noqa: E731
    assert admits(compiler, ebnf, search("[Cusco] the City"))
    assert admits(compiler, ebnf, search("Cusco"))
    assert admits(compiler, ebnf, search("airports of Peru"))
    assert not admits(compiler, ebnf, search("Cusco airport"))
    access = lambda info: tool_call("access", {"urls": [{"url": SEEN[1], "info_to_extract": info}]}, "").split("</think>\n\n")[1]  # noqa: E731
    assert admits(compiler, ebnf, access("the City"))
    assert not admits(compiler, ebnf, access("the City, in a few words of my own"))


def test_a_grounded_table_has_the_first_entities_as_rows_with_cells_from_the_reports_on_each(compiler):
    cells = {"Belize": ["Belmopan", "BLZ"], "Honduras": ["Tegucigalpa", "HND"]}
    grammar = lead_grammar(cells=cells)
    assert admits(compiler, grammar, table("| Belize | Belmopan | BLZ |", "| El Salvador |  |  |",
                                           "| Honduras | Tegucigalpa | HND |"))
    assert admits(compiler, grammar, table("| Belize | BLZ |  |"))  # a value in the wrong column is the lead's
    assert admits(compiler, grammar, table())  # no rows
    assert not admits(compiler, grammar, table("| Belize | Tegucigalpa | BLZ |"))  # another entity's value
    assert not admits(compiler, grammar, table("| El Salvador | San Salvador |  |"))  # no report gave it
    assert not admits(compiler, grammar, table("| Belize |  |  |", "| Honduras |  |  |"))  # an entity skipped
    assert not admits(compiler, grammar, table("| Belize |  |  |", "| Belize |  |  |"))  # a row twice
    assert not admits(compiler, grammar, table("| Guatemala |  |  |"))  # not a reported entity


def test_the_lead_reads_its_entities_and_their_reports_from_what_came_back():
    from wideseek_exp.agents.grammar import bracketed_names, entity_cells, linked_entities

    reports = ["- [Belize](https://miniweb.local/country/belize)\n- [A \\[b\\]](https://x)", "Belize\nCapital: Belmopan"]
    assert linked_entities(reports) == ["Belize", "A [b]"]
    assert bracketed_names(["Find the page of the country [Belize].", "Find the list."]) == ["Belize"]
    assert entity_cells({"Belize": ["Belize\nCapital: Belmopan"]}) == {"Belize": ["Belmopan"]}


def test_with_thinking_off_the_expert_replies_without_a_think_block(compiler):
    cfg = world_config()
    tasks = list(load_task_set(cfg.data, "train"))[::100][:3]
    agent = OmegaConf.merge(cfg.agent, {"max_reply_tokens": 4096, "tool_grammar": "grounded", "thinking": False})
    tokenizer = tiny_tokenizer()
    trajectories = run_rollouts(tasks, 1, ExpertEngine(tokenizer), make_search_backend(cfg), tokenizer, agent,
                                cfg.search, seed=0)
    replies = [tokenizer.decode(turn.response_ids).removesuffix("<|im_end|>")
               for trajectory in trajectories for run in trajectory.agents for turn in run.turns]
    assert replies and not any("<think>" in reply for reply in replies)
    assert all(admits(compiler, turn.grammar, tokenizer.decode(turn.response_ids).removesuffix("<|im_end|>"))
               for trajectory in trajectories for run in trajectory.agents for turn in run.turns)
    assert any(trajectory.final_answer and "|" in trajectory.final_answer for trajectory in trajectories)


def test_a_grounded_entity_subagent_may_report_its_row_of_the_table(compiler):
    """Keyed by the entity its subtask names, each cell a value it read or empty, as many as the task's columns."""
    read = [["Page: https://miniweb.local/country/cuba", "Cuba", "Capital: Havana", "ISO alpha-3 code: CUB"]]
    grounding = Grounding(blocks=read, row_keys=["Cuba"], row_cells=["Havana", "CUB"], row_width=2)
    ebnf = reply_grammar("subagent", width=3, max_queries=2, max_urls=2, thinking=False, seen_urls=SEEN,
                         grounding=grounding)
    assert admits(compiler, ebnf, "| Cuba | Havana | CUB |")
    assert admits(compiler, ebnf, "| Cuba |  | CUB |")
    assert admits(compiler, ebnf, "Page: https://miniweb.local/country/cuba\nCuba\nCapital: Havana\nISO alpha-3 code: CUB")  # a paragraph read
    assert not admits(compiler, ebnf, "| Cuba | Havana |")  # a cell short
    assert not admits(compiler, ebnf, "| Chad | Havana | CUB |")  # another entity
    assert not admits(compiler, ebnf, "| Cuba | La Habana | CUB |")  # not a value it read
    lead_cells = __import__("wideseek_exp.agents.grammar", fromlist=["report_fields"]).report_fields(
        ["| Cuba | Havana | a \\| b |"])
    assert lead_cells == ["Havana", "a \\| b"]  # the lead's cells: the row's cells after the key
