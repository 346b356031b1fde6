"""The agents: a lead that splits a broad task across parallel subagents (wideseek), or one agent that
searches alone (singleseek), all sharing one LLM with isolated contexts.

    tools.py       the function schemas of each role (create_sub_agents; search / access)
    parser.py      reading a reply: thinking, the first tool call (cleaned, with flags), the final answer
    prompts.py     system prompts, subagent task messages, subtask reports, turn hints (en / zh)
    summarize.py   what `access` returns for a page: none | extractive | llm
    trajectory.py  Trajectory / AgentRun / Turn: compact token bookkeeping, JSON lines
    episode.py     one trajectory: the turn loop every agent runs (the agent protocol), tools, failure flags
    scheduler.py   the batching of every agent's generation and tool requests, and the seeds
    rollout.py     run_rollouts: every task and sample in flight at once, through the two above

Entry point: `run_rollouts(tasks, samples, engine, search, tokenizer, agent_cfg, search_cfg, seed, ...)`.
"""

from wideseek_exp.agents.parser import (
    CallLimits,
    ParsedReply,
    ToolCall,
    final_answer,
    find_markdown_table,
    parse_reply,
    strip_thinking,
)
from wideseek_exp.agents.rollout import run_rollouts
from wideseek_exp.agents.scheduler import RolloutStats, derive_seed
from wideseek_exp.agents.summarize import NO_INFORMATION, make_summarizer
from wideseek_exp.agents.tools import tools_for
from wideseek_exp.agents.trajectory import AgentRun, Trajectory, Turn, append_jsonl, read_jsonl

__all__ = [
    "NO_INFORMATION",
    "AgentRun",
    "CallLimits",
    "ParsedReply",
    "RolloutStats",
    "ToolCall",
    "Trajectory",
    "Turn",
    "append_jsonl",
    "derive_seed",
    "final_answer",
    "find_markdown_table",
    "make_summarizer",
    "parse_reply",
    "read_jsonl",
    "run_rollouts",
    "strip_thinking",
    "tools_for",
]
