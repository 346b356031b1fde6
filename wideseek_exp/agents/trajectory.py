"""What a rollout leaves behind: one Trajectory per (task, sample), holding every agent's turns.

Token bookkeeping is stored compactly. An agent's context only ever grows by appending, so its
prompt at turn t is

    prompt_ids + sum over earlier turns u < t of (turns[u].response_ids + turns[u].followup_ids)

and only the initial prompt, the responses and the follow-ups (tool-response wrapper, tool result,
next generation prompt) are kept. `AgentRun` rebuilds turn prompts, the whole token sequence, the mask
of model-generated tokens and the per-token sampling logprobs aligned with it: one training row per
agent for the trainer.

Everything round-trips through JSON (one trajectory per line).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wideseek_exp.agents.tools import ACCESS, SEARCH, SUBAGENT


@dataclass
class Turn:
    response_ids: list[int]
    response_logprobs: list[float]  # sampling logprob of each response token
    finish_reason: str  # "stop" | "length"
    tool_name: str | None = None  # the parsed (cleaned) call, or None: the reply was a final answer
    tool_arguments: dict | None = None
    parse_flags: dict[str, int] = field(default_factory=dict)  # parser counters, non-zero only
    tool_result: str | None = None  # the text the agent was shown (turn hint included)
    followup_ids: list[int] = field(default_factory=list)  # appended to the context after the response
    seed: int | None = None  # the request's seed (see rollout: how generation is seeded)
    grammar: str | None = None  # the grammar the reply was decoded under (agent.tool_grammar), None: free text


@dataclass
class AgentRun:
    role: str  # lead | subagent | single
    agent_id: str  # "lead", "lead.2.3" (the lead's 2nd call, 3rd subagent), "single"
    parent_id: str | None
    subtask: str | None  # a subagent's prompt from the lead
    prompt_ids: list[int]  # the initial prompt: system (with tools) + user + generation prompt
    turns: list[Turn] = field(default_factory=list)
    final_text: str | None = None  # the answer with thinking removed; None when the agent failed
    context_overflow: bool = False  # its next prompt (or its reply) would not fit in its context
    turn_limit: bool = False  # still calling tools on its last turn
    degenerate_repetition: bool = False  # see episode.py: repeated calls or a looping reply
    tool_errors: int = 0  # tool-call items that failed: URLs not from search, missing pages, backend errors
    reply_limit: bool = False  # a reply was cut at max_reply_tokens (a flag, not a failure: see episode.py)

    @property
    def failure(self) -> str | None:
        for name in ("context_overflow", "turn_limit", "degenerate_repetition"):
            if getattr(self, name):
                return name
        return None

    def turn_prompt_ids(self, turn_index: int) -> list[int]:
        """The exact prompt the engine received for turn `turn_index` (0-based)."""
        ids = list(self.prompt_ids)
        for turn in self.turns[:turn_index]:
            ids += turn.response_ids + turn.followup_ids
        return ids

    def token_ids(self) -> list[int]:
        return self.turn_prompt_ids(len(self.turns))

    def response_mask(self) -> list[int]:
        """1 for model-generated tokens, 0 for prompt and tool tokens; aligned with token_ids()."""
        mask = [0] * len(self.prompt_ids)
        for turn in self.turns:
            mask += [1] * len(turn.response_ids) + [0] * len(turn.followup_ids)
        return mask

    def token_logprobs(self) -> list[float]:
        """Sampling logprob of each generated token, 0.0 elsewhere; aligned with token_ids()."""
        logprobs = [0.0] * len(self.prompt_ids)
        for turn in self.turns:
            logprobs += list(turn.response_logprobs) + [0.0] * len(turn.followup_ids)
        return logprobs

    @property
    def generated_tokens(self) -> int:
        return sum(len(turn.response_ids) for turn in self.turns)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens summed over all turns: what the engine read (without prefix caching)."""
        total, length = 0, len(self.prompt_ids)
        for turn in self.turns:
            total += length
            length += len(turn.response_ids) + len(turn.followup_ids)
        return total

    @property
    def longest_reply(self) -> int:
        return max((len(turn.response_ids) for turn in self.turns), default=0)

    def tool_calls(self, name: str | None = None) -> int:
        """Executed calls (a valid call on the last turn, or one stopped as a repetition, is not run)."""
        return sum(1 for turn in self.turns
                   if turn.tool_result is not None and (name is None or turn.tool_name == name))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AgentRun:
        data = dict(data)
        data["turns"] = [Turn(**turn) for turn in data.get("turns", [])]
        return cls(**data)


@dataclass
class Trajectory:
    instance_id: str
    sample_index: int
    seed: int  # the run's seed; request seeds derive from it (see scheduler.py)
    mode: str  # wideseek | singleseek
    width: int  # W: most subagents per call (0 for singleseek)
    agents: list[AgentRun] = field(default_factory=list)  # the root (lead or single) first, then subagents
    final_answer: str | None = None  # the root's final text; None when it failed
    table_found: bool = False  # the final answer holds a ```markdown pipe table
    generated_tokens: dict[str, int] = field(default_factory=dict)  # per role, "summarizer" included
    prefill_tokens: dict[str, int] = field(default_factory=dict)  # per role
    subagent_count: int = 0  # subagents started over all lead calls
    lead_calls: int = 0  # create_sub_agents calls executed
    timings: dict[str, float] = field(default_factory=dict)  # start_s (since the rollout began), wall_s
    lead_context_overflow: bool = False  # for singleseek: the single agent
    lead_turn_limit: bool = False

    @property
    def root(self) -> AgentRun:
        return self.agents[0]

    @property
    def lead_failed(self) -> bool:
        return self.root.failure is not None

    def subagents(self) -> list[AgentRun]:
        return [agent for agent in self.agents if agent.role == SUBAGENT]

    def longest_reply(self) -> int:
        """L_max of the reward: the longest single reply (tokens) of any agent."""
        return max((agent.longest_reply for agent in self.agents), default=0)

    def tool_calls(self, name: str) -> int:
        return sum(agent.tool_calls(name) for agent in self.agents)

    @property
    def access_calls(self) -> int:
        return self.tool_calls(ACCESS)

    @property
    def search_calls(self) -> int:
        return self.tool_calls(SEARCH)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trajectory:
        data = dict(data)
        data["agents"] = [AgentRun.from_dict(agent) for agent in data.get("agents", [])]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        return cls.from_dict(json.loads(line))


def append_jsonl(path: str | Path, trajectory: Trajectory) -> None:
    """Append one trajectory as one line (and flush it: a crash loses only trials still running)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(trajectory.to_json() + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[Trajectory]:
    with Path(path).open(encoding="utf-8") as f:
        return [Trajectory.from_json(line) for line in f if line.strip()]

