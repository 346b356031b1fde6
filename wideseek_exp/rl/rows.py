"""Trajectories become training rows: one row per agent, all of its turns packed into one sequence.

An agent's context only grows by appending, so its whole history is one token sequence

    prompt | reply 1 | follow-up 1 | reply 2 | follow-up 2 | ... | reply T

where a follow-up is what the rollout appended after a reply (the tool-response wrapper, the tool or
subagent result, the next generation prompt). A row keeps the initial prompt apart from the rest, in
TRL's layout (prompt left-padded, completion right-padded), and marks in `trained_mask` the reply
tokens of the turns selected for training (select_turns: the reference implementation's choice); tool and subagent-result tokens are never trained. The
sampling logprobs of the reply tokens ride along as the old policy of the importance ratio.

Under DDP every rank must run the same number of forward/backward passes, and TRL splits a rank's rows
into steps_per_generation equal micro-batches (dropping any remainder). So every rank pads its rows to
one common count, a multiple of steps_per_generation, with padding rows of weight 0 (padded_row_count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wideseek_exp.agents.trajectory import AgentRun, Trajectory

PADDING = -1  # the trajectory index of a padding row


# ------------------------------------------------------------------------------------------ turn selection

REPETITION = "degenerate_repetition"
LIMITS = ("context_overflow", "turn_limit")


@dataclass(frozen=True)
class AgentOutcome:
    """What the turn selection needs to know about one agent of a trajectory (the root first)."""

    turns: int
    failure: str | None  # context_overflow | turn_limit | degenerate_repetition | None (it answered)


def select_turns(agents: Sequence[AgentOutcome], succeeded: bool) -> list[list[bool]]:
    """Which turns of each agent are trained, as the reference implementation chooses them.

    A successful trajectory (a valid final table from a root that finished) trains every turn of every
    agent except the subagents that failed. A failed one (reward 0) trains only what went wrong:
      - the root's final turn, when it answered (that answer held no valid table);
      - the last turn of every agent stopped for degenerate repetition, if there is any such agent;
        otherwise every turn of every agent that ran out of context or turns.
    """
    if succeeded:
        return [[agent.failure is None] * agent.turns for agent in agents]
    selected = [[False] * agent.turns for agent in agents]
    if agents and agents[0].failure is None and agents[0].turns:
        selected[0][-1] = True
    repeated = [k for k, agent in enumerate(agents) if agent.failure == REPETITION and agent.turns]
    if repeated:
        for k in repeated:
            selected[k][-1] = True
    else:
        for k, agent in enumerate(agents):
            if agent.failure in LIMITS:
                selected[k] = [True] * agent.turns
    return selected


# ------------------------------------------------------------------------------------------------- rows


@dataclass
class AgentRow:
    trajectory: int  # index of the trajectory within the step (over all ranks); PADDING for a padding row
    role: str  # lead | subagent | single | padding
    prompt_ids: list[int]  # the agent's initial prompt
    completion_ids: list[int]  # every reply and follow-up after it
    trained_mask: list[int]  # 1 on the reply tokens of selected turns; aligned with completion_ids
    sampling_logprobs: list[float]  # logprob of each reply token when it was sampled, 0.0 elsewhere
    advantage: float = 0.0  # Â of the trajectory
    weight: float = 0.0  # w of each trained token (advantages.token_weights)
    # replies decoded under a grammar (agent.tool_grammar): the mask each completion token was sampled under,
    # as xgrammar bitmasks [completion tokens, words]; every token allowed elsewhere. None: no grammar at all
    allowed: torch.Tensor | None = None

    @property
    def trained_tokens(self) -> int:
        return sum(self.trained_mask)


def agent_row(agent: AgentRun, selected: Sequence[bool], trajectory: int, masks=None) -> AgentRow:
    """`masks` (engines.hf.GrammarMasks) replays the grammar of each turn decoded under one, so that the
    trainer scores its tokens under the masks they were sampled under."""
    completion: list[int] = []
    trained: list[int] = []
    logprobs: list[float] = []
    for turn, train_it in zip(agent.turns, selected, strict=True):
        completion += turn.response_ids + turn.followup_ids
        trained += [int(train_it)] * len(turn.response_ids) + [0] * len(turn.followup_ids)
        logprobs += list(turn.response_logprobs) + [0.0] * len(turn.followup_ids)
    row = AgentRow(trajectory, agent.role, list(agent.prompt_ids), completion, trained, logprobs)
    if masks is not None and any(turn.grammar for turn in agent.turns):
        words = -(-masks.vocab_size // 32)
        row.allowed = torch.full((len(completion), words), -1, dtype=torch.int32)
        position = 0
        for turn in agent.turns:
            if turn.grammar:
                row.allowed[position: position + len(turn.response_ids)] = masks.replay(turn.grammar, turn.response_ids)
            position += len(turn.response_ids) + len(turn.followup_ids)
    return row


def trajectory_rows(trajectory: Trajectory, index: int, succeeded: bool, turn_selection: bool = True,
                    masks=None) -> list[AgentRow]:
    """One row per agent (the root first). `succeeded`: the reward found a valid table from a lead that
    finished. Without turn selection every reply of every agent is trained."""
    agents = trajectory.agents
    if turn_selection:
        selected = select_turns([AgentOutcome(len(a.turns), a.failure) for a in agents], succeeded)
    else:
        selected = [[True] * len(a.turns) for a in agents]
    return [agent_row(agent, chosen, index, masks) for agent, chosen in zip(agents, selected)]


def padding_row(pad_token_id: int) -> AgentRow:
    """A row that costs one token and trains nothing (weight 0, empty completion)."""
    return AgentRow(PADDING, "padding", [pad_token_id], [], [], [])


def padded_row_count(row_counts: Sequence[int], multiple: int) -> int:
    """The row count every rank pads to: the largest rank's count rounded up to a multiple of
    `multiple` (steps_per_generation), and at least one row per micro-batch."""
    largest = max(1, *row_counts) if row_counts else 1
    return multiple * -(-largest // multiple)


def collate(rows: Sequence[AgentRow], pad_token_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Rows as TRL's padded tensors (prompt left-padded, completion right-padded), plus the row's
    trained mask, sampling logprobs, advantage, weight and trajectory index."""
    count = len(rows)
    prompt_width = max(len(row.prompt_ids) for row in rows)
    completion_width = max(1, max(len(row.completion_ids) for row in rows))
    prompt_ids = torch.full((count, prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((count, prompt_width), dtype=torch.long)
    completion_ids = torch.full((count, completion_width), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((count, completion_width), dtype=torch.long)
    trained_mask = torch.zeros((count, completion_width), dtype=torch.long)
    sampling_logprobs = torch.zeros((count, completion_width), dtype=torch.float32)
    for r, row in enumerate(rows):
        prompt, completion = len(row.prompt_ids), len(row.completion_ids)
        prompt_ids[r, prompt_width - prompt:] = torch.tensor(row.prompt_ids, dtype=torch.long)
        prompt_mask[r, prompt_width - prompt:] = 1
        if completion:
            completion_ids[r, :completion] = torch.tensor(row.completion_ids, dtype=torch.long)
            completion_mask[r, :completion] = 1
            trained_mask[r, :completion] = torch.tensor(row.trained_mask, dtype=torch.long)
            sampling_logprobs[r, :completion] = torch.tensor(row.sampling_logprobs, dtype=torch.float32)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "trained_mask": trained_mask,
        "old_per_token_logps": sampling_logprobs,
        "advantages": torch.tensor([row.advantage for row in rows], dtype=torch.float32),
        "loss_weights": torch.tensor([row.weight for row in rows], dtype=torch.float64),
        "row_trajectory": torch.tensor([row.trajectory for row in rows], dtype=torch.long),
    }
    if any(row.allowed is not None for row in rows):
        words = next(row.allowed.shape[1] for row in rows if row.allowed is not None)
        allowed = torch.full((count, completion_width, words), -1, dtype=torch.int32)
        for r, row in enumerate(rows):
            if row.allowed is not None:
                allowed[r, : len(row.allowed)] = row.allowed
        batch["allowed_tokens"] = allowed
    return {key: value.to(device) for key, value in batch.items()}


def trim_padding_columns(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the columns that are padding in every row of this micro-batch (left of the prompts, right of
    the completions): the step's batch is padded to its longest row, a micro-batch rarely needs that."""
    prompt_used = batch["prompt_mask"].any(dim=0).nonzero()
    completion_used = batch["completion_mask"].any(dim=0).nonzero()
    prompt_start = int(prompt_used[0]) if len(prompt_used) else batch["prompt_mask"].shape[1] - 1
    completion_end = int(completion_used[-1]) + 1 if len(completion_used) else 1
    trimmed = dict(batch)
    for key in ("prompt_ids", "prompt_mask"):
        trimmed[key] = batch[key][:, prompt_start:]
    for key in ("completion_ids", "completion_mask", "trained_mask", "old_per_token_logps", "ref_per_token_logps",
                "allowed_tokens"):
        if key in batch:
            trimmed[key] = batch[key][:, :completion_end]
    return trimmed
