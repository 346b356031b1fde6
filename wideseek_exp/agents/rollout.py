"""Rollouts: the lead agent and its subagents (wideseek), or one agent alone (singleseek).

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

The scheduler
-------------
`Scheduler` counts the coroutines that can run right now (`runnable`). A coroutine stops counting
while it awaits a generation, a tool batch or its subagents, and counts again the moment that wait is
resolved (before it even resumes). Nothing is sent anywhere while some agent can still run. When the
count reaches zero:
  1. the pending search/access requests of all agents go to the backend as one batch, in a tool thread;
  2. each idle engine gets ALL its pending generation requests as ONE `engine.generate` call, in that
     engine's own thread — but only once no tool batch is running (its agents will want to generate
     in a moment; with a local index that is milliseconds), or once one has run for `tool_wait_s`
     (a slow web backend must not stall generation). Meanwhile the event loop stays free, so tool
     batches and other engines proceed during a long generation call.
So a generation call never carries a single prompt while another agent is about to ask: every agent
is either in the batch, waiting for its subagents, or waiting for a busy engine.

Seeds and reproducibility
-------------------------
Each generation request gets a seed derived from (run seed, task, sample, agent id, turn), recorded in
its Turn. `Engine.generate` takes one SamplingParams per call, so a batch is sorted by its requests'
(task, sample, agent, turn) keys and seeded with a hash of the run seed and the sorted request seeds:
the batch seed is a function of which requests are in the batch, not of arrival order. With one engine
for all roles (and tools quicker than `tool_wait_s`) the batches are the same on every run, so the same
seed, config and engine give the same trajectories. With separate lead and subagent engines the
composition of batches depends on timing, and runs are not bit-reproducible.

Failure flags (per agent; a failed agent has no final text, and the lead reads a failure notice)
-------------
  context_overflow       its next prompt would not fit in max_context_tokens, or a reply was cut by it
  turn_limit             it still called a tool on its last turn (the call is not run)
  degenerate_repetition  the same tool call (name and arguments) `repeat_call_limit` times in a row
                         (the last one is not run), or a reply whose last 128 tokens repeat one
                         pattern of at most 32 tokens (parser.is_degenerate_repetition)
  tool_errors            a count, not a failure: access to a URL not from the agent's own search results,
                         a page the backend does not have, a backend exception
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from wideseek_exp import WideseekError
from wideseek_exp.agents import prompts
from wideseek_exp.agents.grammar import check_mode, reply_grammar
from wideseek_exp.agents.parser import (
    CallLimits,
    ToolCall,
    final_answer,
    find_markdown_table,
    is_degenerate_repetition,
    parse_reply,
)
from wideseek_exp.agents.summarize import Summarizer, make_summarizer
from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SINGLE, SUBAGENT, tools_for
from wideseek_exp.agents.trajectory import AgentRun, Trajectory, Turn
from wideseek_exp.engines.base import Completion, Engine, SamplingParams
from wideseek_exp.search.base import SearchBackend
from wideseek_exp.search.bm25 import normalize_url
from wideseek_exp.tasks.record import TaskRecord

END_OF_TURN = "<|im_end|>"
# Control strings a page or a subagent's report must not smuggle into an agent's context as tokens.
_CONTROL_STRINGS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_response>", "</tool_response>")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# ------------------------------------------------------------------------------------------ settings


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
        )

    @property
    def call_limits(self) -> CallLimits:
        return CallLimits(self.width, self.max_queries, self.max_urls)

    def max_turns(self, role: str) -> int:
        return {LEAD: self.lead_max_turns, SUBAGENT: self.subagent_max_turns, SINGLE: self.single_max_turns}[role]

    def top_k(self, count: int | None) -> int:
        return max(1, min(count if count is not None else self.default_top_k, self.max_top_k))


class ChatFormat:
    """Prompts and follow-ups as token ids, in the tokenizer's own chat template."""

    def __init__(self, tokenizer, thinking: bool):
        self.tokenizer = tokenizer
        self.thinking = thinking
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        # Render a conversation whose last assistant reply and tool result are markers: what comes between
        # the reply's <|im_end|> and the tool text, and after the tool text, is the follow-up wrapper.
        reply, result = "\x01REPLY\x01", "\x01RESULT\x01"
        rendered = self.render([{"role": "user", "content": "task"}, {"role": "assistant", "content": reply},
                                {"role": "tool", "content": result}], tools=None)
        after_reply = rendered.split(reply + END_OF_TURN, 1)[1]
        self.followup_head, self.followup_tail = after_reply.split(result, 1)

    def render(self, messages: list[dict], tools: list[dict] | None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=self.thinking)

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


def neutralize(text: str) -> str:
    """Break up chat control strings in tool text so that they tokenise as plain characters."""
    for control in _CONTROL_STRINGS:
        text = text.replace(control, control.replace("<", "< ", 1))
    return text


# ----------------------------------------------------------------------------------------- scheduler


@dataclass
class FlushRecord:
    """One engine.generate call."""

    engine: int  # engines numbered in order of first use
    size: int  # prompts in the call
    max_new_tokens: int
    tool_requests_in_flight: int  # > 0 only when generation stopped waiting for a slow tool batch
    start_s: float  # since the rollout began
    seconds: float = 0.0


@dataclass
class ToolBatchRecord:
    search_requests: int  # tool calls (one per agent) in the batch
    queries: int
    access_requests: int
    urls: int
    seconds: float = 0.0


@dataclass
class RolloutStats:
    flushes: list[FlushRecord] = field(default_factory=list)
    tool_batches: list[ToolBatchRecord] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class _Request:
    order: tuple  # (task index, sample, agent id, turn, part): the order of a batch
    seed: int
    prompt_ids: list[int]
    max_new_tokens: int
    future: asyncio.Future
    grammar: str | None = None


@dataclass
class _EngineQueue:
    engine: Engine
    index: int
    executor: ThreadPoolExecutor
    pending: list[_Request] = field(default_factory=list)
    busy: bool = False


@dataclass
class _Group:
    """Coroutines run together; the parent waits for all (at most `limit` at a time)."""

    queue: deque
    results: list
    remaining: int
    waiter: asyncio.Future


class Scheduler:
    def __init__(self, search: SearchBackend, seed: int, temperature: float, top_p: float, tool_wait_s: float,
                 stats: RolloutStats):
        self.loop = asyncio.get_running_loop()
        self.search_backend = search
        self.seed = seed
        self.temperature, self.top_p = temperature, top_p
        self.tool_wait_s = tool_wait_s
        self.stats = stats
        self.started = time.perf_counter()
        self.runnable = 0
        self.queues: dict[int, _EngineQueue] = {}
        self.search_requests: list[tuple[list[tuple[str, int]], asyncio.Future]] = []
        self.access_requests: list[tuple[list[str], asyncio.Future]] = []
        self.tool_executor = ThreadPoolExecutor(1, thread_name_prefix="rollout-tools")
        self.tools_started: float | None = None  # when the running tool batch started; None: none runs
        self.tool_requests_in_flight = 0
        self.recheck: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task] = set()
        self.failed: asyncio.Future = self.loop.create_future()

    # -- running coroutines --------------------------------------------------------------------

    async def run(self, coroutines: list[Coroutine], limit: int | None) -> list:
        """Run top-level coroutines (at most `limit` at once) to the end; the first exception aborts all."""
        self.runnable = 1  # the group runner below
        everything = self.loop.create_task(self.run_group(coroutines, limit))
        try:
            await asyncio.wait({everything, self.failed}, return_when=asyncio.FIRST_COMPLETED)
            if self.failed.done():
                raise self.failed.exception()
            return everything.result()
        finally:
            everything.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(everything, *self.tasks, return_exceptions=True)
            if self.recheck is not None:
                self.recheck.cancel()
            for executor in [self.tool_executor, *(queue.executor for queue in self.queues.values())]:
                executor.shutdown(wait=True, cancel_futures=True)

    async def run_group(self, coroutines: list[Coroutine], limit: int | None = None) -> list:
        """Run `coroutines` concurrently and return their results in order; the caller waits for all."""
        if not coroutines:
            return []
        group = _Group(deque(enumerate(coroutines)), [None] * len(coroutines), len(coroutines),
                       self.loop.create_future())
        for _ in range(min(limit or len(coroutines), len(coroutines))):
            self._start_next(group)
        return await self._wait(group.waiter)

    def _start_next(self, group: _Group) -> None:
        index, coroutine = group.queue.popleft()
        self.runnable += 1  # counts from now, before the task first runs
        task = self.loop.create_task(self._member(group, index, coroutine))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _member(self, group: _Group, index: int, coroutine: Coroutine) -> None:
        try:
            group.results[index] = await coroutine
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # a bug or an engine failure: stop the whole rollout
            self._fail(error)
        finally:
            group.remaining -= 1
            if group.queue and not self.failed.done():
                self._start_next(group)
            if group.remaining == 0:
                self._resolve(group.waiter, group.results)  # the parent counts again before this one stops
            self.runnable -= 1
            self._maybe_flush()

    async def _wait(self, future: asyncio.Future):
        self.runnable -= 1
        self._maybe_flush()
        return await future

    def _resolve(self, future: asyncio.Future, value) -> None:
        if not future.done():
            self.runnable += 1
            future.set_result(value)

    def _fail(self, error: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(error)

    # -- what agents wait for --------------------------------------------------------------------

    async def generate(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int, order: tuple,
                       seed: int, grammar: str | None = None) -> Completion:
        if grammar is not None and not engine.supports_grammars:
            raise WideseekError(f"agent.tool_grammar needs an engine that decodes under a grammar; "
                                f"{type(engine).__name__} does not (use agent.tool_grammar=off)")
        queue = self.queues.get(id(engine))
        if queue is None:
            queue = self.queues[id(engine)] = _EngineQueue(
                engine, len(self.queues), ThreadPoolExecutor(1, thread_name_prefix=f"rollout-engine{len(self.queues)}"))
        request = _Request(order, seed, list(prompt_ids), max_new_tokens, self.loop.create_future(), grammar)
        queue.pending.append(request)
        return await self._wait(request.future)

    async def search(self, queries: list[tuple[str, int]]) -> list:
        """Hits (or the backend's exception) for each (query, top_k)."""
        future = self.loop.create_future()
        self.search_requests.append((queries, future))
        return await self._wait(future)

    async def access(self, urls: list[str]) -> list:
        """The page (None when unknown, or the backend's exception) for each URL."""
        future = self.loop.create_future()
        self.access_requests.append((urls, future))
        return await self._wait(future)

    # -- flushing ----------------------------------------------------------------------------------

    def _maybe_flush(self) -> None:
        if self.runnable > 0 or self.failed.done():
            return
        if (self.search_requests or self.access_requests) and self.tools_started is None:
            self._flush_tools()
        idle_with_work = [q for q in self.queues.values() if q.pending and not q.busy]
        if self.tools_started is not None and idle_with_work:
            waited = time.perf_counter() - self.tools_started
            if waited < self.tool_wait_s:  # the tool batch's agents will want to join this generation call
                if self.recheck is not None:
                    self.recheck.cancel()
                self.recheck = self.loop.call_later(self.tool_wait_s - waited, self._maybe_flush)
                return
        for queue in idle_with_work:
            self._flush_engine(queue)
        if self.tools_started is None and not any(q.busy or q.pending for q in self.queues.values()):
            self._fail(RuntimeError("rollout scheduler stalled: every agent waits and nothing is running"))

    def _flush_engine(self, queue: _EngineQueue) -> None:
        requests = sorted(queue.pending, key=lambda r: r.order)
        queue.pending, queue.busy = [], True
        sampling = SamplingParams(
            max_new_tokens=max(r.max_new_tokens for r in requests), temperature=self.temperature, top_p=self.top_p,
            seed=derive_seed(self.seed, "batch", *(r.seed for r in requests)),
            grammars=tuple(r.grammar for r in requests) if any(r.grammar for r in requests) else (),
        )
        record = FlushRecord(queue.index, len(requests), sampling.max_new_tokens, self.tool_requests_in_flight,
                             time.perf_counter() - self.started)
        self.stats.flushes.append(record)
        prompts_ids = [r.prompt_ids for r in requests]
        job = self.loop.run_in_executor(queue.executor, queue.engine.generate, prompts_ids, sampling)
        job.add_done_callback(partial(self._engine_done, queue, requests, record))

    def _engine_done(self, queue: _EngineQueue, requests: list[_Request], record: FlushRecord, job) -> None:
        queue.busy = False
        record.seconds = time.perf_counter() - self.started - record.start_s
        if job.cancelled():
            return
        if job.exception() is not None:
            self._fail(job.exception())
            return
        completions = job.result()
        if len(completions) != len(requests):
            self._fail(RuntimeError(f"engine returned {len(completions)} completions for {len(requests)} prompts"))
            return
        for request, completion in zip(requests, completions):
            self._resolve(request.future, completion)
        self._maybe_flush()

    def _flush_tools(self) -> None:
        searches, accesses = self.search_requests, self.access_requests
        self.search_requests, self.access_requests = [], []
        self.tools_started = time.perf_counter()
        self.tool_requests_in_flight = len(searches) + len(accesses)
        record = ToolBatchRecord(len(searches), sum(len(q) for q, _ in searches), len(accesses),
                                 sum(len(u) for u, _ in accesses))
        self.stats.tool_batches.append(record)
        job = self.loop.run_in_executor(self.tool_executor, self._run_tools,
                                        [queries for queries, _ in searches], [urls for urls, _ in accesses])
        job.add_done_callback(partial(self._tools_done, searches, accesses, record))

    def _run_tools(self, query_lists: list[list[tuple[str, int]]], url_lists: list[list[str]]):
        """In the tool thread: one backend.search call per distinct top_k, one backend.access call."""
        by_top_k: dict[int, list[tuple[int, int, str]]] = {}
        for request_index, queries in enumerate(query_lists):
            for item_index, (query, top_k) in enumerate(queries):
                by_top_k.setdefault(top_k, []).append((request_index, item_index, query))
        search_results = [[None] * len(queries) for queries in query_lists]
        for top_k, entries in by_top_k.items():
            try:
                hit_lists = self.search_backend.search([query for _, _, query in entries], top_k)
            except Exception as error:  # a backend failure is the agents' tool error, not a crash
                hit_lists = [error] * len(entries)
            for (request_index, item_index, _), hits in zip(entries, hit_lists):
                search_results[request_index][item_index] = hits

        all_urls = [url for urls in url_lists for url in urls]
        try:
            pages = list(self.search_backend.access(all_urls)) if all_urls else []
        except Exception as error:
            pages = [error] * len(all_urls)
        pages += [None] * (len(all_urls) - len(pages))  # a backend that answered short: the rest are unknown
        access_results, start = [], 0
        for urls in url_lists:
            access_results.append(pages[start : start + len(urls)])
            start += len(urls)
        return search_results, access_results

    def _tools_done(self, searches, accesses, record: ToolBatchRecord, job) -> None:
        record.seconds = time.perf_counter() - self.tools_started
        self.tools_started, self.tool_requests_in_flight = None, 0
        if job.cancelled():
            return
        if job.exception() is not None:
            self._fail(job.exception())
            return
        search_results, access_results = job.result()
        for (_, future), results in zip(searches, search_results):
            self._resolve(future, results)
        for (_, future), results in zip(accesses, access_results):
            self._resolve(future, results)
        self._maybe_flush()


# ----------------------------------------------------------------------------------------- the agents


@dataclass
class _AgentState:
    run: AgentRun
    seen_urls: set[str] = field(default_factory=set)  # normalised URLs from this agent's search results
    shown_urls: dict[str, None] = field(default_factory=dict)  # those URLs as the results showed them, in order
    recent_calls: list[str] = field(default_factory=list)


def _url_key(url: str) -> str:
    return normalize_url(url) or url.strip()


class Episode:
    """One trajectory: a task, a sample index, its agents."""

    def __init__(self, rollout: Rollout, task: TaskRecord, task_index: int, sample_index: int):
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
        seen = list(agent.shown_urls) if limits.tool_grammar == "seen_urls" else None
        return reply_grammar(agent.run.role, width=limits.width, max_queries=limits.max_queries,
                             max_urls=limits.max_urls, thinking=limits.thinking, seen_urls=seen)

    def _repeats(self, agent: _AgentState, call: ToolCall) -> bool:
        """True when this call is the `repeat_call_limit`-th identical call in a row."""
        limit = self.rollout.limits.repeat_call_limit
        agent.recent_calls.append(json.dumps([call.name, call.arguments], sort_keys=True, ensure_ascii=False))
        recent = agent.recent_calls[-limit:] if limit > 0 else []
        return limit > 0 and len(recent) == limit and len(set(recent)) == 1

    # -- tools ----------------------------------------------------------------------------------

    async def run_tool(self, agent: _AgentState, call: ToolCall, turn_number: int) -> str:
        if call.name == CREATE_SUB_AGENTS:
            return await self.create_sub_agents(agent.run, [entry["prompt"] for entry in call.arguments["sub_agents"]])
        # The single agent's one query / one URL takes the same path as a subagent's list.
        if call.name == SEARCH:
            return await self.search(agent, call.arguments.get("queries", [call.arguments]))
        if call.name == ACCESS:
            return await self.access(agent, call.arguments.get("urls", [call.arguments]), turn_number)
        raise AssertionError(f"the parser passed an unknown tool {call.name!r}")

    async def create_sub_agents(self, lead: AgentRun, subtasks: list[str]) -> str:
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


# ----------------------------------------------------------------------------------------- entry point


class Rollout:
    """Shared state of one run_rollouts call."""

    def __init__(self, engine: Engine, search: SearchBackend, tokenizer, agent_cfg, search_cfg, seed: int,
                 subagent_engine: Engine | None, summarizer: Summarizer | None,
                 on_trajectory: Callable[[Trajectory], None] | None):
        self.mode = str(agent_cfg.name)
        if self.mode not in ("wideseek", "singleseek"):
            raise WideseekError(f"agent.name must be wideseek or singleseek (got {self.mode!r})")
        self.agent_cfg, self.search_cfg = agent_cfg, search_cfg
        self.limits = Limits.from_config(agent_cfg, search_cfg)
        self.engine = engine
        self.subagent_engine = subagent_engine or engine
        self.search_backend = search
        self.chat = ChatFormat(tokenizer, self.limits.thinking)
        self.summarizer = summarizer or make_summarizer(agent_cfg, search_cfg, tokenizer)
        own_engine = getattr(self.summarizer, "engine", None)
        self.summarizer_engine = own_engine or (self.subagent_engine if self.mode == "wideseek" else engine)
        self.seed = int(seed)
        self.on_trajectory = on_trajectory
        self.scheduler: Scheduler | None = None
        self.started = 0.0

    async def run(self, tasks: list[TaskRecord], samples: int, max_active: int | None,
                  stats: RolloutStats, skip: Callable[[str, int], bool] | None = None) -> list[Trajectory]:
        limits = self.limits
        self.scheduler = Scheduler(self.search_backend, self.seed, limits.temperature, limits.top_p,
                                   limits.tool_wait_s, stats)
        self.started = time.perf_counter()

        async def one(task_index: int, task: TaskRecord, sample_index: int) -> Trajectory:
            trajectory = await Episode(self, task, task_index, sample_index).run()
            if self.on_trajectory is not None:
                self.on_trajectory(trajectory)
            return trajectory

        # Request seeds derive from (instance_id, sample), not from the position in this call, so the
        # trials left to run after a resume ask for the same seeds they would have had.
        coroutines = [one(i, task, s) for i, task in enumerate(tasks) for s in range(samples)
                      if skip is None or not skip(task.instance_id, s)]
        try:
            return await self.scheduler.run(coroutines, max_active)
        finally:
            for coroutine in coroutines:  # those never started when the run was aborted
                coroutine.close()
            stats.wall_s = time.perf_counter() - self.started


def run_rollouts(
    tasks: list[TaskRecord],
    samples: int,
    engine: Engine,
    search: SearchBackend,
    tokenizer,
    agent_cfg,
    search_cfg,
    seed: int = 0,
    *,
    subagent_engine: Engine | None = None,
    summarizer: Summarizer | None = None,
    on_trajectory: Callable[[Trajectory], None] | None = None,
    max_active_trajectories: int | None = None,
    stats: RolloutStats | None = None,
    skip: Callable[[str, int], bool] | None = None,
) -> list[Trajectory]:
    """Roll out `samples` trajectories of every task, all in flight at once (or at most
    `max_active_trajectories`); returned in (task, sample) order. `on_trajectory` is called as each one
    finishes. `subagent_engine` (default: `engine`) serves the subagents; `summarizer` defaults to
    agent_cfg.summarizer. Pass a RolloutStats to receive the batching log. `skip(instance_id, sample)`
    leaves out trials that are already done (a resumed evaluation)."""
    if samples < 1:
        raise WideseekError(f"samples must be at least 1 (got {samples})")
    rollout = Rollout(engine, search, tokenizer, agent_cfg, search_cfg, seed, subagent_engine, summarizer,
                      on_trajectory)
    coroutine = rollout.run(list(tasks), samples, max_active_trajectories, stats or RolloutStats(), skip)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from inside an event loop (a notebook): run ours in a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
