"""The scheduler: every agent of every trajectory in flight at once, their requests batched.

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
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams
from wideseek_exp.search.base import SearchBackend


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


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
                 stats: RolloutStats, stop_loops: bool = False):
        self.loop = asyncio.get_running_loop()
        self.search_backend = search
        self.seed = seed
        self.temperature, self.top_p = temperature, top_p
        self.stop_loops = stop_loops
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
        self.stopping = False  # run() is ending (done, failed or cancelled): nothing new is started

    # -- running coroutines --------------------------------------------------------------------

    async def run(self, coroutines: list[Coroutine], limit: int | None) -> list:
        """Run top-level coroutines (at most `limit` at once) to the end; the first exception aborts all."""
        self.runnable = 1  # the group runner below
        everything = self.loop.create_task(self.run_group(coroutines, limit))
        cancelled = False
        try:
            await asyncio.wait({everything, self.failed}, return_when=asyncio.FIRST_COMPLETED)
            if self.failed.done():
                raise self.failed.exception()
            return everything.result()
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels us) or a caller's cancel
            cancelled = True
            raise
        finally:
            self.stopping = True
            everything.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(everything, *self.tasks, return_exceptions=True)
            if self.recheck is not None:
                self.recheck.cancel()
            # a cancelled run does not wait for the batch a worker thread is decoding: its trials are lost
            # anyway, and a stop should be quick
            for executor in [self.tool_executor, *(queue.executor for queue in self.queues.values())]:
                executor.shutdown(wait=not cancelled, cancel_futures=True)

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
        if self.runnable > 0 or self.failed.done() or self.stopping:
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
            stop_loops=self.stop_loops,
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
