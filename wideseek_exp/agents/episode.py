"""The episode: one trajectory of one task, the agent protocol that every role follows: the lead and its
subagents (wideseek), or one agent alone (singleseek).

Every agent of every task and sample is a coroutine. An agent loops over turns:

    reply = await generate(context)                # batched with every other agent's request
    call  = parse_reply(reply)                      # first <tool_call> only; none -> final answer
    result = await run the tool                     # search / access (batched), or the lead's
                                                    #   create_sub_agents: its subagents run concurrently
                                                    #   and the lead waits for all of them
    context += reply ids + follow-up ids            # token in, token out: history is never re-tokenised

The follow-up is exactly what the chat template renders after an assistant turn for a tool message
plus the next generation prompt: `\\n<|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response>
<|im_end|>\\n<|im_start|>assistant\\n` (plus the empty think block when thinking is off), preceded by
`<|im_end|>` when the reply was cut before it. It is derived from the tokenizer's own template.

Failure flags (per agent; a failed agent has no final text, and the lead reads a failure notice)
-------------
  context_overflow       its next prompt would not fit in max_context_tokens, or a reply was cut by it
  turn_limit             it still called a tool on its last turn (the call is not run)
  degenerate_repetition  the same tool call (name and arguments) `repeat_call_limit` times in a row
                         (the last one is not run), or a reply whose last 128 tokens repeat one
                         pattern of at most 32 tokens (parser.is_degenerate_repetition)
  tool_errors            a count, not a failure: access to a URL not from the agent's own search results,
                         a page the backend does not have, a backend exception
  reply_limit            a flag, not a failure: a reply was cut at max_reply_tokens. A cut call does not
                         parse (parse flag unclosed_tool_call), so the reply is the agent's answer and
                         scores what it holds (a cut table keeps its finished rows)

What a trajectory keeps is bounded by the config: each agent's tokens by max_context_tokens (a reply
by max_reply_tokens), the agents by the lead's turns x W, a tool result by the backend's hits and pages
(search.top_k, the page size) with every string argument of a call cut to parser.MAX_ARGUMENT_CHARS.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from functools import partial

from wideseek_exp import WideseekError
from wideseek_exp.agents import prompts
from wideseek_exp.agents.grammar import (
    Grounding,
    bracketed_names,
    check_mode,
    entity_cells,
    linked_entities,
    reply_grammar,
    report_fields,
)
from wideseek_exp.agents.parser import (
    CallLimits,
    ToolCall,
    final_answer,
    find_markdown_table,
    parse_reply,
)
from wideseek_exp.agents.scheduler import derive_seed
from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SINGLE, SUBAGENT, tools_for
from wideseek_exp.agents.trajectory import AgentRun, Trajectory, Turn
from wideseek_exp.engines.base import Completion, is_degenerate_repetition
from wideseek_exp.search.bm25 import normalize_url
from wideseek_exp.tasks.record import TaskRecord

END_OF_TURN = "<|im_end|>"
# Control strings a page or a subagent's report must not smuggle into an agent's context as tokens.
_CONTROL_STRINGS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_response>", "</tool_response>")


@dataclass(frozen=True)
class Limits:
    width: int
    lead_max_turns: int
    subagent_max_turns: int
    single_max_turns: int
    max_context_tokens: int
    max_reply_tokens: int
    max_queries: int
    max_urls: int
    default_top_k: int
    max_top_k: int
    repeat_call_limit: int
    tool_wait_s: float
    thinking: bool
    temperature: float
    top_p: float
    tool_grammar: str = "off"  # agents/grammar.py: off | schema | seen_urls
    stop_loops: bool = False  # the engine ends a reply caught in a loop (SamplingParams.stop_loops)

    @classmethod
    def from_config(cls, agent_cfg, search_cfg) -> Limits:
        return cls(
            width=int(agent_cfg.max_subagents_per_call),
            lead_max_turns=int(agent_cfg.lead_max_turns),
            subagent_max_turns=int(agent_cfg.subagent_max_turns),
            single_max_turns=int(agent_cfg.single_max_turns),
            max_context_tokens=int(agent_cfg.max_context_tokens),
            max_reply_tokens=int(agent_cfg.max_reply_tokens),
            max_queries=int(agent_cfg.max_queries_per_call),
            max_urls=int(agent_cfg.max_urls_per_call),
            default_top_k=int(search_cfg.top_k),
            max_top_k=int(search_cfg.max_top_k),
            repeat_call_limit=int(agent_cfg.repeat_call_limit),
            tool_wait_s=float(agent_cfg.tool_wait_s),
            thinking=bool(agent_cfg.thinking),
            temperature=float(agent_cfg.temperature),
            top_p=float(agent_cfg.top_p),
            tool_grammar=check_mode(str(agent_cfg.get("tool_grammar", "off"))),
            stop_loops=bool(agent_cfg.get("stop_loops", False)),
        )

    @property
    def call_limits(self) -> CallLimits:
        return CallLimits(self.width, self.max_queries, self.max_urls)

    def max_turns(self, role: str) -> int:
        return {LEAD: self.lead_max_turns, SUBAGENT: self.subagent_max_turns, SINGLE: self.single_max_turns}[role]

    def top_k(self, count: int | None) -> int:
        return max(1, min(count if count is not None else self.default_top_k, self.max_top_k))


class ChatFormat:
    """Prompts and follow-ups as token ids, in the tokenizer's own chat template.

    A template without a tool section (it renders the same with and without tools: SmolLM2's) gets the tools
    in its system turn, as JSON schemas in <tools> with the <tool_call> format to answer in; a template that
    has no tool role of its own (no <tool_response> around a tool message) gets each tool result as a user
    turn inside <tool_response> tags. The end of an assistant turn is the checkpoint's: the token its
    template closes a reply with."""

    def __init__(self, tokenizer, thinking: bool):
        self.tokenizer = tokenizer
        self.thinking = thinking
        probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        self.generic_tools = self._render(probe, [_PROBE_TOOL]) == self._render(probe, None)
        reply, result = "\x01REPLY\x01", "\x01RESULT\x01"
        tool_turn = self._render([{"role": "user", "content": "task"}, {"role": "assistant", "content": reply},
                                  {"role": "tool", "content": result}], None)
        self.tool_role, self.wrap_results = ("tool", False) if "<tool_response>" in tool_turn else ("user", True)
        # Render a conversation whose last assistant reply and tool result are markers: what comes between
        # the reply's end of turn and the tool text, and after the tool text, is the follow-up wrapper.
        rendered = self.render([{"role": "user", "content": "task"}, {"role": "assistant", "content": reply},
                                {"role": self.tool_role, "content": self._wrapped(result)}], tools=None)
        after_reply = rendered.split(reply, 1)[1]
        end_of_turn = END_OF_TURN if after_reply.startswith(END_OF_TURN) else tokenizer.eos_token
        if not end_of_turn or not after_reply.startswith(end_of_turn):
            raise WideseekError("the chat template does not end an assistant turn with <|im_end|> or the tokenizer's "
                                f"eos token ({tokenizer.eos_token!r}); this checkpoint's format is not supported")
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        self.followup_head, self.followup_tail = after_reply[len(end_of_turn):].split(result, 1)

    def _render(self, messages: list[dict], tools: list[dict] | None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=self.thinking)

    def _wrapped(self, result: str) -> str:
        return f"<tool_response>\n{result}\n</tool_response>" if self.wrap_results else result

    def render(self, messages: list[dict], tools: list[dict] | None) -> str:
        if tools and self.generic_tools:
            messages = [{**messages[0], "content": messages[0]["content"] + tools_section(tools)}, *messages[1:]]
            tools = None
        return self._render(messages, tools)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def initial_prompt(self, system: str, user: str, tools: list[dict]) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.encode(self.render(messages, tools))

    def followup_ids(self, tool_text: str, response_ids: list[int]) -> list[int]:
        """Token ids appended after a reply: <|im_end|> if the reply lacks it, then the tool message and the
        next generation prompt."""
        closing = [] if response_ids and response_ids[-1] == self.end_of_turn_id else [self.end_of_turn_id]
        return closing + self.encode(self.followup_head + neutralize(tool_text) + self.followup_tail)


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "A probe.",
                                                 "parameters": {"type": "object", "properties": {}}}}


def tools_section(tools: list[dict]) -> str:
    """The tools in a system turn, for a template that has no place for them: each tool's JSON schema in
    <tools> tags and the format of a call."""
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("\n\n# Tools\n\nThese functions are available to you. Their JSON schemas, one per line:\n<tools>\n"
            f"{schemas}\n</tools>\n\nTo call one, answer with its name and arguments as a JSON object between "
            "tags, and nothing after it:\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments as a JSON "
            "object>}\n</tool_call>")


def neutralize(text: str) -> str:
    """Break up chat control strings in tool text so that they tokenise as plain characters."""
    for control in _CONTROL_STRINGS:
        text = text.replace(control, control.replace("<", "< ", 1))
    return text


# ----------------------------------------------------------------------------------------- the agents


@dataclass
class _AgentState:
    run: AgentRun
    seen_urls: set[str] = field(default_factory=set)  # normalised URLs from this agent's search results
    shown_urls: dict[str, None] = field(default_factory=dict)  # those URLs as the results showed them, in order
    result_blocks: list[list[str]] = field(default_factory=list)  # the lines of each paragraph of its tool results
    pages_read: list[str] = field(default_factory=list)  # the results of its access calls
    reports: list[str] = field(default_factory=list)  # a lead's: its subagents' final reports, in order
    subtasks: list[str] = field(default_factory=list)  # a lead's: the subtasks it delegated, in order
    # a lead's: the reports of the subtasks that named each entity in brackets ("[name]"), and of those that
    # named none (they find the entities: agents/grammar.py)
    entity_reports: dict[str, list[str]] = field(default_factory=dict)
    finding_reports: list[str] = field(default_factory=list)
    recent_calls: list[str] = field(default_factory=list)


def _url_key(url: str) -> str:
    return normalize_url(url) or url.strip()


class Episode:
    """One trajectory: a task, a sample index, its agents. `rollout` is the shared state of the
    run_rollouts call (rollout.Rollout: limits, chat format, engines, summariser, scheduler)."""

    def __init__(self, rollout, task: TaskRecord, task_index: int, sample_index: int):
        self.rollout = rollout
        self.task = task
        self.task_index = task_index
        self.sample_index = sample_index
        self.language = prompts.language_of(task.language)
        self.table = bool(task.gold_columns)
        self.agents: list[AgentRun] = []
        self.lead_calls = 0
        self.subagent_count = 0
        self.summary_tokens = {"generated": 0, "prefill": 0}

    async def run(self) -> Trajectory:
        rollout, limits = self.rollout, self.rollout.limits
        start = time.perf_counter()
        if rollout.mode == "wideseek":
            system = prompts.lead_system_prompt(self.language, limits.width, limits.lead_max_turns, self.table)
            root = await self.run_agent(LEAD, LEAD, None, None, system, self.task.query)
        else:
            system = prompts.single_system_prompt(self.language, limits.single_max_turns, self.table)
            root = await self.run_agent(SINGLE, SINGLE, None, None, system, self.task.query)

        generated: dict[str, int] = {}
        prefill: dict[str, int] = {}
        for agent in self.agents:
            generated[agent.role] = generated.get(agent.role, 0) + agent.generated_tokens
            prefill[agent.role] = prefill.get(agent.role, 0) + agent.prefill_tokens
        if self.summary_tokens["generated"] or self.summary_tokens["prefill"]:
            generated["summarizer"] = self.summary_tokens["generated"]
            prefill["summarizer"] = self.summary_tokens["prefill"]
        return Trajectory(
            instance_id=self.task.instance_id,
            sample_index=self.sample_index,
            seed=rollout.seed,
            mode=rollout.mode,
            width=limits.width if rollout.mode == "wideseek" else 0,
            agents=self.agents,
            final_answer=root.final_text,
            table_found=find_markdown_table(root.final_text or "") is not None,
            generated_tokens=generated,
            prefill_tokens=prefill,
            subagent_count=self.subagent_count,
            lead_calls=self.lead_calls,
            timings={"start_s": start - rollout.started, "wall_s": time.perf_counter() - start},
            lead_context_overflow=root.context_overflow,
            lead_turn_limit=root.turn_limit,
        )

    # -- the turn loop, the same for every role --------------------------------------------------

    async def run_agent(self, role: str, agent_id: str, parent_id: str | None, subtask: str | None,
                        system: str, user: str) -> AgentRun:
        rollout, limits, chat = self.rollout, self.rollout.limits, self.rollout.chat
        prompt_ids = chat.initial_prompt(system, user, tools_for(role, rollout.agent_cfg, rollout.search_cfg))
        agent = _AgentState(AgentRun(role, agent_id, parent_id, subtask, prompt_ids))
        self.agents.append(agent.run)
        engine = rollout.subagent_engine if role == SUBAGENT else rollout.engine
        # An engine that knows its model's context (HFEngine) may hold less than the config asks for.
        max_context = min(limits.max_context_tokens, getattr(engine, "context_limit", None) or limits.max_context_tokens)
        max_turns = limits.max_turns(role)
        context = list(prompt_ids)
        if len(context) >= max_context:
            agent.run.context_overflow = True
            return agent.run

        for turn_number in range(1, max_turns + 1):
            budget = min(limits.max_reply_tokens, max_context - len(context))
            seed = derive_seed(rollout.seed, self.task.instance_id, self.sample_index, agent_id, turn_number)
            order = (self.task_index, self.sample_index, agent_id, turn_number, 0)
            grammar = self.grammar(agent) if limits.tool_grammar != "off" else None
            completion = await rollout.scheduler.generate(engine, context, budget, order, seed, grammar)
            # A batch shares one max_new_tokens (the largest budget in it): cut this reply to its own budget.
            response = list(completion.token_ids[:budget])
            logprobs = list(completion.logprobs[:budget])
            finish = completion.finish_reason if len(completion.token_ids) <= budget else "length"
            text = chat.decode(response)
            parsed = parse_reply(text, role, limits.call_limits)
            turn = Turn(response, logprobs, finish, parse_flags=parsed.flags, seed=seed, grammar=grammar)
            if parsed.call is not None:
                turn.tool_name, turn.tool_arguments = parsed.call.name, parsed.call.arguments
            agent.run.turns.append(turn)

            if finish == "length" and len(context) + len(response) >= max_context:  # cut by the context
                agent.run.context_overflow = True
                break
            agent.run.reply_limit |= finish == "length" and len(response) >= limits.max_reply_tokens
            body = response[:-1] if response and response[-1] == chat.end_of_turn_id else response
            if is_degenerate_repetition(body):
                agent.run.degenerate_repetition = True
                break
            if parsed.call is None:
                agent.run.final_text = final_answer(text)
                break
            if turn_number == max_turns:
                agent.run.turn_limit = True
                break
            if self._repeats(agent, parsed.call):
                agent.run.degenerate_repetition = True
                break

            result = await self.run_tool(agent, parsed.call, turn_number)
            # each paragraph of a result is a block: a grounded report quotes one of them whole
            agent.result_blocks += [[line for line in block.splitlines() if line.strip()]
                                    for block in re.split(r"\n\s*\n", result) if block.strip()]
            if parsed.call.name == ACCESS:
                agent.pages_read.append(result)
            turn.tool_result = neutralize(prompts.with_turn_hint(result, self.language, turn_number + 1, max_turns))
            followup = chat.followup_ids(turn.tool_result, response)
            if len(context) + len(response) + len(followup) >= max_context:
                agent.run.context_overflow = True
                break
            turn.followup_ids = followup
            context += response + followup
        return agent.run

    def grammar(self, agent: _AgentState) -> str:
        """The reply grammar of this agent's next turn (agent.tool_grammar)."""
        limits = self.rollout.limits
        seen = list(agent.shown_urls) if limits.tool_grammar in ("seen_urls", "grounded") else None
        table = self.table and agent.run.role == LEAD
        grounding = self.grounding(agent) if limits.tool_grammar == "grounded" else None
        return reply_grammar(agent.run.role, width=limits.width, max_queries=limits.max_queries,
                             max_urls=limits.max_urls, thinking=limits.thinking, seen_urls=seen,
                             table_columns=list(self.task.gold_columns) if table and grounding else None,
                             table_cells=report_fields(agent.reports) if table and grounding else None,
                             grounding=grounding)

    def grounding(self, agent: _AgentState) -> Grounding:
        """What a grounded agent's words come from (agents/grammar.py: Grounding)."""
        quotes = self.quoted_text(agent)
        if agent.run.role == LEAD:
            return Grounding(quotes=quotes, entities=linked_entities(agent.finding_reports),
                             delegated=bracketed_names(agent.subtasks), entity_cells=entity_cells(agent.entity_reports))
        if agent.run.role == SUBAGENT:
            keys = bracketed_names([agent.run.subtask or ""]) if self.table else None
            return Grounding(quotes=quotes, blocks=agent.result_blocks, row_keys=keys,
                             row_cells=report_fields(agent.pages_read), row_width=len(self.task.gold_columns) - 1)
        return Grounding(quotes=quotes)

    def quoted_text(self, agent: _AgentState) -> str | None:
        """What a grounded agent's own words quote (agents/grammar.py): the lead's subtasks quote its task, a
        subagent's queries its task and subtask; the single agent writes its own."""
        if agent.run.role == LEAD:
            return self.task.query
        if agent.run.role == SUBAGENT:
            return prompts.subagent_user_message(self.language, self.task.query, agent.run.subtask or "")
        return None

    def _repeats(self, agent: _AgentState, call: ToolCall) -> bool:
        """True when this call is the `repeat_call_limit`-th identical call in a row."""
        limit = self.rollout.limits.repeat_call_limit
        agent.recent_calls.append(json.dumps([call.name, call.arguments], sort_keys=True, ensure_ascii=False))
        recent = agent.recent_calls[-limit:] if limit > 0 else []
        return limit > 0 and len(recent) == limit and len(set(recent)) == 1

    # -- tools ----------------------------------------------------------------------------------

    async def run_tool(self, agent: _AgentState, call: ToolCall, turn_number: int) -> str:
        if call.name == CREATE_SUB_AGENTS:
            return await self.create_sub_agents(agent, [entry["prompt"] for entry in call.arguments["sub_agents"]])
        # The single agent's one query / one URL takes the same path as a subagent's list.
        if call.name == SEARCH:
            return await self.search(agent, call.arguments.get("queries", [call.arguments]))
        if call.name == ACCESS:
            return await self.access(agent, call.arguments.get("urls", [call.arguments]), turn_number)
        raise AssertionError(f"the parser passed an unknown tool {call.name!r}")

    async def create_sub_agents(self, state: _AgentState, subtasks: list[str]) -> str:
        lead = state.run
        self.lead_calls += 1
        self.subagent_count += len(subtasks)
        limits = self.rollout.limits
        system = prompts.subagent_system_prompt(self.language, limits.subagent_max_turns, limits.max_queries,
                                                limits.max_urls)
        runs = await self.rollout.scheduler.run_group([
            self.run_agent(SUBAGENT, f"{lead.agent_id}.{self.lead_calls}.{number}", lead.agent_id, subtask, system,
                           prompts.subagent_user_message(self.language, self.task.query, subtask))
            for number, subtask in enumerate(subtasks, start=1)
        ])
        state.reports += [run.final_text for run in runs if run.final_text]
        state.subtasks += subtasks
        for subtask, run in zip(subtasks, runs):
            names = bracketed_names([subtask])
            for name in names if run.final_text else ():
                state.entity_reports.setdefault(name, []).append(run.final_text)
            if run.final_text and not names:
                state.finding_reports.append(run.final_text)
        return prompts.subagent_reports(self.language, [(run.subtask, run.final_text, run.failure) for run in runs])

    async def search(self, agent: _AgentState, items: list[dict]) -> str:
        limits = self.rollout.limits
        queries = [(item["query"], limits.top_k(item.get("count"))) for item in items]
        results = await self.rollout.scheduler.search(queries)
        blocks = []
        for (query, _), hits in zip(queries, results):
            if isinstance(hits, Exception):
                agent.run.tool_errors += 1
                blocks.append(f'Search for "{query}" failed: {hits}')
                continue
            if not hits:
                blocks.append(f'No results for "{query}".')
                continue
            lines = [f'Results for "{query}":']
            for rank, hit in enumerate(hits, start=1):
                agent.seen_urls.add(_url_key(hit.url))
                agent.shown_urls[hit.url] = None
                lines.append(f"[{rank}] {hit.title}\nURL: {hit.url}\n{hit.snippet}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    async def access(self, agent: _AgentState, items: list[dict], turn_number: int) -> str:
        allowed = [item for item in items if _url_key(item["url"]) in agent.seen_urls]
        pages = await self.rollout.scheduler.access([item["url"] for item in allowed]) if allowed else []
        page_of = {id(item): page for item, page in zip(allowed, pages)}
        summarizer = self.rollout.summarizer

        async def read(part: int, item: dict) -> str:
            if id(item) not in page_of:
                agent.run.tool_errors += 1
                return ("Error: this URL did not appear in your search results; only URLs from your own search "
                        "results can be accessed.")
            page = page_of[id(item)]
            if isinstance(page, Exception):
                agent.run.tool_errors += 1
                return f"Error: the page could not be read ({page})."
            if page is None:
                agent.run.tool_errors += 1
            generate = partial(self.summary_generate, agent.run.agent_id, turn_number, part)
            return await summarizer.summarize(page, item["info_to_extract"], generate)

        # Summaries run concurrently: an llm summariser's requests join the same generation batches.
        texts = await self.rollout.scheduler.run_group([read(part, item) for part, item in enumerate(items)])
        return "\n\n".join(f"Page: {item['url']}\n{text}" for item, text in zip(items, texts))

    async def summary_generate(self, agent_id: str, turn_number: int, part: int, prompt_ids: list[int],
                               max_new_tokens: int) -> Completion:
        rollout = self.rollout
        seed = derive_seed(rollout.seed, self.task.instance_id, self.sample_index, agent_id, turn_number, "summary",
                           part)
        order = (self.task_index, self.sample_index, agent_id, turn_number, part + 1)
        completion = await rollout.scheduler.generate(rollout.summarizer_engine, prompt_ids, max_new_tokens, order,
                                                      seed)
        completion.token_ids = completion.token_ids[:max_new_tokens]
        self.summary_tokens["generated"] += len(completion.token_ids)
        self.summary_tokens["prefill"] += len(prompt_ids)
        return completion
