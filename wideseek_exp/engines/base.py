"""The engine interface: token ids in; token ids, per-token sampling logprobs and finish reason out.

The rollout never re-tokenises history: it appends the returned ids to the prompt ids it sent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends after the first completed stop string (kept in output)
    seed: int | None = None
    # One reply grammar per prompt (EBNF, agents/grammar.py), or None for free text; empty: none at all.
    # Only engines with `supports_grammars` honour it; the rollout refuses to send grammars to others.
    grammars: tuple[str | None, ...] = ()
    # End a reply as soon as it is caught in a loop (is_degenerate_repetition), with stop_reason "loop": the
    # rollout fails such a reply either way, and a loop would otherwise run to max_new_tokens.
    stop_loops: bool = False


@dataclass
class Completion:
    token_ids: list[int]
    # log-probability of each sampled token under the sampling distribution (logits / temperature,
    # before top-p truncation): the "old policy" logprob that GRPO's importance ratio divides by.
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens or context full)
    text: str = ""
    stop_reason: str | None = field(default=None)  # the stop string or "eos" that ended it


class Engine(ABC):
    supports_grammars = False  # decodes under SamplingParams.grammars

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in the order of `prompts`."""

    def close(self) -> None:  # engines holding servers or GPU memory release them here
        return None


def is_degenerate_repetition(token_ids: list[int], window: int = 128, max_period: int = 32) -> bool:
    """True when the reply ends in a loop: its last `window` tokens repeat one pattern of at most
    `max_period` tokens (the same token, or the same few words, over and over). Shorter replies never
    count, so a table whose rows differ only in their numbers is not a loop."""
    tail = token_ids[-window:]
    if len(tail) < window:
        return False
    return any(all(tail[i] == tail[i - period] for i in range(period, window)) for period in range(1, max_period + 1))
