"""Rollouts: the lead agent and its subagents (wideseek), or one agent alone (singleseek), for every task
and sample at once.

    episode.py    one trajectory: the turn loop every agent runs, its tools, its failure flags
    scheduler.py  the batching: all agents' generation and tool requests, flushed when none can run

Entry point: `run_rollouts(tasks, samples, engine, search, tokenizer, agent_cfg, search_cfg, seed, ...)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from wideseek_exp import WideseekError
from wideseek_exp.agents.episode import ChatFormat, Episode, Limits
from wideseek_exp.agents.scheduler import RolloutStats, Scheduler
from wideseek_exp.agents.summarize import Summarizer, make_summarizer
from wideseek_exp.agents.trajectory import Trajectory
from wideseek_exp.engines.base import Engine
from wideseek_exp.search.base import SearchBackend
from wideseek_exp.tasks.record import TaskRecord


class Rollout:
    """Shared state of one run_rollouts call."""

    def __init__(self, engine: Engine, search: SearchBackend, tokenizer, agent_cfg, search_cfg, seed: int,
                 subagent_engine: Engine | None, summarizer: Summarizer | None,
                 on_trajectory: Callable[[Trajectory], None] | None, keep: bool = True):
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
        self.keep = keep
        self.scheduler: Scheduler | None = None
        self.started = 0.0

    async def run(self, tasks: list[TaskRecord], samples: int, max_active: int | None,
                  stats: RolloutStats, skip: Callable[[str, int], bool] | None = None) -> list[Trajectory]:
        limits = self.limits
        self.scheduler = Scheduler(self.search_backend, self.seed, limits.temperature, limits.top_p,
                                   limits.tool_wait_s, stats, limits.stop_loops)
        self.started = time.perf_counter()

        async def one(task_index: int, task: TaskRecord, sample_index: int) -> Trajectory | None:
            trajectory = await Episode(self, task, task_index, sample_index).run()
            if self.on_trajectory is not None:
                self.on_trajectory(trajectory)
            return trajectory if self.keep else None  # a caller that stores them as they finish keeps none

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
    keep: bool = True,
) -> list[Trajectory]:
    """Roll out `samples` trajectories of every task, all in flight at once (or at most
    `max_active_trajectories`); returned in (task, sample) order. `on_trajectory` is called as each one
    finishes. `subagent_engine` (default: `engine`) serves the subagents; `summarizer` defaults to
    agent_cfg.summarizer. Pass a RolloutStats to receive the batching log. `skip(instance_id, sample)`
    leaves out trials that are already done (a resumed evaluation). `keep=False` returns None in place of
    each trajectory: a caller that stores them in `on_trajectory` (the evaluation) then holds in memory only
    those in flight, not every finished one (a trajectory's token lists take megabytes)."""
    if samples < 1:
        raise WideseekError(f"samples must be at least 1 (got {samples})")
    rollout = Rollout(engine, search, tokenizer, agent_cfg, search_cfg, seed, subagent_engine, summarizer,
                      on_trajectory, keep)
    coroutine = rollout.run(list(tasks), samples, max_active_trajectories, stats or RolloutStats(), skip)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from inside an event loop (a notebook): run ours in a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
