"""Test doubles for the agent tests: an engine that replays scripted replies, a fake search world, and
the built mini-web world (tokenizer, tiny model, tasks) for the tests that use the real ones.

The engine decides each reply by reading the prompt it is given (which role, which turn, which
subtask, the last tool result), tokenises the reply with the real tiny tokenizer and returns fake but
recognisable logprobs. It records every batch it was called with.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import wideseek_exp.conf  # noqa: F401  (registers base_config)
from wideseek_exp.engines.base import Completion, Engine, SamplingParams
from wideseek_exp.search.base import Hit, Page, SearchBackend
from wideseek_exp.tasks.record import TaskRecord

REPO = Path(__file__).resolve().parent.parent
END = "<|im_end|>"


# ---------------------------------------------------------------------------------------------- world


@functools.cache
def world_config():
    """The default composed config on the random tiny model (model=tiny_random: these tests need the
    pipeline, not a trained policy), with the mini-web world and that model built into data/generated
    when they are missing (a no-op taking well under a second when they are up to date)."""
    from wideseek_exp.world import build_world

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false", "model=tiny_random"])
    build_world(cfg)
    return cfg


@functools.cache
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(world_config().model.path)


def agent_config(**overrides):
    """agent + search config nodes as the eval runner passes them, with overrides on the agent."""
    cfg = world_config()
    agent = OmegaConf.merge(cfg.agent, overrides)
    return agent, cfg.search


def make_task(instance_id: str = "task-0", query: str = "List the airports of Aldova with their IATA codes.",
              language: str = "en") -> TaskRecord:
    return TaskRecord(instance_id=instance_id, query=query, language=language, unique_columns=["airport"],
                      required=["airport", "iatacode"], eval_pipeline={}, gold_columns=["Airport", "IATA code"],
                      gold_rows=[["Aldova Airport", "ALD"]])


# ---------------------------------------------------------------------------------------------- prompts


@dataclass
class PromptView:
    """What a script needs to know about a prompt."""

    text: str
    role: str  # lead | subagent | single | summarizer
    turn: int  # the turn being generated, 1-based
    user: str  # the first user message
    subtask: str | None
    last_tool_result: str | None


def view(text: str) -> PromptView:
    from wideseek_exp.engines.expert import read_prompt

    chat = read_prompt(text)
    subtask = None
    for marker in ("Your subtask:\n", "你的子任务：\n"):
        if marker in chat.user:
            subtask = chat.user.split(marker, 1)[1]
    return PromptView(text, chat.role, chat.turn, chat.user, subtask,
                      chat.tool_results[-1] if chat.tool_results else None)


def tool_call(name: str, arguments: dict, thinking: str | None = "I should use a tool.") -> str:
    think = f"<think>\n{thinking}\n</think>\n\n" if thinking is not None else ""
    return think + "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def urls_in(text: str | None) -> list[str]:
    return re.findall(r"URL: (\S+)", text or "")


TABLE_ANSWER = "<think>\nThe reports are in.\n</think>\n\n```markdown\n| Airport | IATA code |\n| --- | --- |\n| Aldova Airport | ALD |\n```"


# ---------------------------------------------------------------------------------------------- engine


def fake_logprob(token_id: int, position: int) -> float:
    """Distinct, recognisable values: a test can recompute which token and reply position each belongs to."""
    return -(1 + (token_id * 7 + position) % 97) / 100


class ScriptedEngine(Engine):
    """Replies `script(view(prompt))` to each prompt, ended by <|im_end|> unless the script's reply already
    ends the turn or `end_turns` is False. Records every call's prompts and sampling params."""

    def __init__(self, tokenizer, script: Callable[[PromptView], str], end_turns: bool = True, delay_s: float = 0.0):
        self.tokenizer = tokenizer
        self.script = script
        self.end_turns = end_turns
        self.delay_s = delay_s
        self.end_id = tokenizer.convert_tokens_to_ids(END)
        self.batches: list[list[list[int]]] = []
        self.samplings: list[SamplingParams] = []
        self.threads: set[str] = set()

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        self.batches.append([list(p) for p in prompts])
        self.samplings.append(sampling)
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        completions = []
        for prompt in prompts:
            reply = self.script(view(self.tokenizer.decode(prompt, skip_special_tokens=False)))
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            if self.end_turns and (not ids or ids[-1] != self.end_id):
                ids.append(self.end_id)
            finish = "stop" if len(ids) <= sampling.max_new_tokens else "length"
            ids = ids[: sampling.max_new_tokens]
            logprobs = [fake_logprob(token, position) for position, token in enumerate(ids)]
            completions.append(Completion(ids, logprobs, finish, self.tokenizer.decode(ids)))
        return completions


# ---------------------------------------------------------------------------------------------- search


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "q"


class FakeSearch(SearchBackend):
    """Each query has three hits, https://example.test/<query slug>/<rank>; every page exists except
    those whose URL contains 'missing'. Records calls (and the thread they ran in)."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: list[tuple] = []
        self.threads: set[str] = set()

    def search(self, queries: list[str], top_k: int = 3) -> list[list[Hit]]:
        self.calls.append(("search", list(queries), top_k))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [[Hit(f"{query} ({rank})", f"https://example.test/{slug(query)}/{rank}", f"About {query}, item {rank}.")
                 for rank in range(1, min(top_k, 3) + 1)] for query in queries]

    def access(self, urls: list[str]) -> list[Page | None]:
        self.calls.append(("access", list(urls)))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [None if "missing" in url else
                Page(url, f"Page {url}", f"Page {url}\n\nSome history of the place.\n\nFacts\nIATA code: ALD\n"
                                         f"Elevation (ft): 120\nCountry: Aldova")
                for url in urls]
