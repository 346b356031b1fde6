"""Reading an agent's reply: its thinking, its tool call, its final answer. Never raises.

Rules (the reference's):
  - thinking (`<think>...</think>`) is removed first; a tool call written while thinking does not count;
  - only the FIRST `<tool_call>...</tool_call>` block is used, later ones are ignored;
  - the block must hold a JSON object {"name": ..., "arguments": {...}} naming a tool of the agent's role,
    with the required argument of the right type;
  - list entries beyond the per-call limit (W subagents, 5 queries, 5 URLs) are dropped, and so are
    entries of the wrong type or with an empty prompt / query / URL;
  - a string argument longer than MAX_ARGUMENT_CHARS is cut to it;
  - a reply with no valid call left after all this is the agent's final answer.
Every such event is counted in `ParsedReply.flags` (only non-zero counters are kept), so bad replies
show up in the metrics instead of in exceptions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from numbers import Integral

from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SINGLE, SUBAGENT
from wideseek_exp.scoring.table import fenced_blocks
from wideseek_exp.tasks.record import parse_markdown_table

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Strings the engine leaves at the end of a decoded reply.
END_MARKERS = ("<|im_end|>", "<|endoftext|>")

# Where a ```markdown (or ```md) block's body starts; the body runs to the next ```.
_FENCE_OPEN = re.compile(r"```(?:markdown|md)[ \t]*+\n", re.IGNORECASE)
# What one string argument (a subtask, a query, a URL, what to extract) may hold: longer ones are cut to
# this and counted ("cut_arguments"), so that a runaway argument cannot flood the tool results, the
# subagents' prompts and the search backend. No useful argument comes near it.
MAX_ARGUMENT_CHARS = 4096


@dataclass(frozen=True)
class CallLimits:
    max_subagents: int  # W
    max_queries: int
    max_urls: int


@dataclass
class ToolCall:
    """A cleaned call. Arguments by tool and role:
    create_sub_agents  {"sub_agents": [{"prompt": str}, ...]}
    search (subagent)  {"queries": [{"query": str, "count": int | None}, ...]}   None: the default count
    access (subagent)  {"urls": [{"url": str, "info_to_extract": str}, ...]}
    search (single)    {"query": str, "count": int | None}
    access (single)    {"url": str, "info_to_extract": str}
    """

    name: str
    arguments: dict


@dataclass
class ParsedReply:
    call: ToolCall | None  # None: the reply is the agent's final answer
    flags: dict[str, int] = field(default_factory=dict)

    def count(self, flag: str, amount: int = 1) -> None:
        if amount:
            self.flags[flag] = self.flags.get(flag, 0) + amount


# ---------------------------------------------------------------------------------------------- text


def strip_thinking(text: str) -> str:
    """The reply without its reasoning: closed think blocks removed; text before a lone `</think>` (its
    opening was in the prompt) removed; an unclosed `<think>` removes everything after it."""
    kept, position = [], 0
    while (start := text.find(THINK_OPEN, position)) >= 0:  # each closed block, in one pass over the text
        end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        if end < 0:
            break
        kept.append(text[position:start])
        position = end + len(THINK_CLOSE)
    text = "".join(kept) + text[position:]
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        text = text.split(THINK_OPEN, 1)[0]
    return text


def final_answer(text: str) -> str:
    """What an agent answers: the reply after its thinking, without end-of-turn markers."""
    text = strip_thinking(text)
    for marker in END_MARKERS:
        text = text.replace(marker, "")
    return text.strip()


def find_markdown_table(answer: str) -> str | None:
    """The last ```markdown fenced block of `answer` that holds a well-formed pipe table, or None."""
    for block in reversed(list(fenced_blocks(answer or "", _FENCE_OPEN))):
        try:
            parse_markdown_table(block)
        except ValueError:
            continue
        return block.strip()
    return None


# ---------------------------------------------------------------------------------------------- calls


def parse_reply(text: str, role: str, limits: CallLimits) -> ParsedReply:
    """The first tool call of a reply, cleaned, for an agent of `role` (lead | subagent | single)."""
    parsed = ParsedReply(call=None)
    answer = strip_thinking(text)
    start = answer.find(TOOL_CALL_OPEN)
    if start == -1:
        return parsed
    parsed.count("ignored_tool_calls", answer.count(TOOL_CALL_OPEN) - 1)
    end = answer.find(TOOL_CALL_CLOSE, start)
    if end == -1:
        parsed.count("unclosed_tool_call")
        return parsed
    try:
        body = json.loads(answer[start + len(TOOL_CALL_OPEN) : end].strip())
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than the interpreter's stack
        parsed.count("malformed_json")
        return parsed
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        parsed.count("malformed_json")
        return parsed
    name, arguments = body["name"], body.get("arguments")
    readers = _READERS.get(role, {})
    if name not in readers:
        parsed.count("unknown_tool")
        return parsed
    if not isinstance(arguments, dict):
        parsed.count("bad_arguments")
        return parsed
    cleaned = readers[name](arguments, limits, parsed)
    if cleaned is not None:
        parsed.call = ToolCall(name, cleaned)
    return parsed


def _text(value: object, parsed: ParsedReply) -> str | None:
    """A non-empty string, stripped and cut to MAX_ARGUMENT_CHARS, or None."""
    if isinstance(value, str) and value.strip():
        return _cut(value.strip(), parsed)
    return None


def _cut(value: str, parsed: ParsedReply) -> str:
    if len(value) > MAX_ARGUMENT_CHARS:
        parsed.count("cut_arguments")
        return value[:MAX_ARGUMENT_CHARS]
    return value


def _count(value: object, parsed: ParsedReply) -> int | None:
    """A result count: a positive integer, or None (the default) for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        parsed.count("defaulted_fields")
        return None
    return int(value)


def _entries(arguments: dict, key: str, most: int, parsed: ParsedReply, read) -> list[dict] | None:
    """The usable entries of the list argument `key`: extras beyond `most` dropped first (they are
    positional extras), then entries `read` rejects. None when nothing usable is left."""
    entries = arguments.get(key)
    if not isinstance(entries, list):
        parsed.count("bad_arguments")
        return None
    parsed.count("dropped_items", max(0, len(entries) - most))
    kept = []
    for entry in entries[:most]:
        item = read(entry, parsed) if isinstance(entry, dict) else None
        if item is None:
            parsed.count("invalid_items")
        else:
            kept.append(item)
    if not kept:
        parsed.count("no_valid_items")
        return None
    return kept


def _read_prompt(entry: dict, parsed: ParsedReply) -> dict | None:
    prompt = _text(entry.get("prompt"), parsed)
    return {"prompt": prompt} if prompt else None


def _read_query(entry: dict, parsed: ParsedReply) -> dict | None:
    query = _text(entry.get("query"), parsed)
    return {"query": query, "count": _count(entry.get("count"), parsed)} if query else None


def _read_url(entry: dict, parsed: ParsedReply) -> dict | None:
    url, info = _text(entry.get("url"), parsed), entry.get("info_to_extract")
    if url is None or not isinstance(info, str):
        return None
    return {"url": url, "info_to_extract": _cut(info.strip(), parsed)}


def _lead_create(arguments: dict, limits: CallLimits, parsed: ParsedReply) -> dict | None:
    entries = _entries(arguments, "sub_agents", limits.max_subagents, parsed, _read_prompt)
    return {"sub_agents": entries} if entries else None


def _subagent_search(arguments: dict, limits: CallLimits, parsed: ParsedReply) -> dict | None:
    entries = _entries(arguments, "queries", limits.max_queries, parsed, _read_query)
    return {"queries": entries} if entries else None


def _subagent_access(arguments: dict, limits: CallLimits, parsed: ParsedReply) -> dict | None:
    entries = _entries(arguments, "urls", limits.max_urls, parsed, _read_url)
    return {"urls": entries} if entries else None


def _single_search(arguments: dict, limits: CallLimits, parsed: ParsedReply) -> dict | None:
    item = _read_query(arguments, parsed)
    if item is None:
        parsed.count("bad_arguments")
    return item


def _single_access(arguments: dict, limits: CallLimits, parsed: ParsedReply) -> dict | None:
    item = _read_url(arguments, parsed)
    if item is None:
        parsed.count("bad_arguments")
    return item


_READERS = {
    LEAD: {CREATE_SUB_AGENTS: _lead_create},
    SUBAGENT: {SEARCH: _subagent_search, ACCESS: _subagent_access},
    SINGLE: {SEARCH: _single_search, ACCESS: _single_access},
}
