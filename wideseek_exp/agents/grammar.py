"""Structured tool calls (agent.tool_grammar): the grammar an agent's reply is decoded under.

A small model writes most of a tool call right and still loses the turn to one wrong character: an
unclosed string, a missing brace, a URL copied with a typo. Decoding under a grammar makes such replies
impossible, the way vLLM's structured outputs do. The grammar of one reply (GBNF-style EBNF, the
dialect xgrammar and vLLM read) is

    reply    ::= think? (call | answer)
    think    ::= "<think>\\n" thought "\\n</think>\\n\\n"      (when thinking is on)
    call     ::= "<tool_call>\\n" one of the role's calls "\\n</tool_call>"
    answer   ::= text without "<t" or "</t" (no tool call or think tag can hide in it)

A call is the JSON the parser reads, in one fixed layout (`{"name": "search", "arguments": {...}}`,
keys in schema order, ", " and ": " separators, as json.dumps writes it), with the role's limits:
at most W subagents, max_queries queries, max_urls pages per call, non-empty strings. With
tool_grammar=seen_urls an access URL is one of the URLs of the agent's own search results, and an
agent that has searched nothing cannot call access at all; that is the rule the access tool enforces
anyway (rollout: only URLs from the agent's own results are read), moved into decoding.
tool_grammar=grounded also grounds a subagent's final report in what it read: the report is made of whole
lines of its tool results (the turn hints left out), or is empty. An extraction subagent reports facts it
found, and a small model then cannot misspell or invent the name or the number it copies; it can only
choose the wrong line. The lead's final table, on a table task, is the markdown table with exactly the
columns the task names, in their order, and each cell one of the values its subagents reported (the value
after "Label: " on a line of a report, or a link's text) or empty: the lead assembles, and cannot garble
what it assembles.

Every reply the grammar admits parses (agents/parser.py) into a valid call of the role or into a
final answer: tests/test_agents_grammar.py checks it on the expert's calls and on replies sampled
from the grammar itself. The engine ends the reply with its end-of-turn token once the grammar is
complete.
"""

from __future__ import annotations

import json
import re

from wideseek_exp import WideseekError
from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SINGLE, SUBAGENT

MODES = ("off", "schema", "seen_urls", "grounded")
_LINK_TEXT = re.compile(r"\[((?:[^\]\\]|\\.)+)\]\(")

# A JSON string's characters: anything but a quote, a backslash or a control character, or an escape; and no
# "<t" or "</t", so that no string opens or closes a think block or a tool call for the parser.
_JSON_TEXT = r"""
jchar ::= [^"\\\x00-\x1f<] | tag_free | "\\" ["\\/bfnrt] | "\\u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]
jtext ::= "\"" ([^"\\\x00-\x20<] | tag_free) jchar* "\""
tag_free ::= "<" [^"\\\x00-\x1f/t] | "</" [^"\\\x00-\x1ft]
count ::= [1-9] [0-9]?
""".strip()
_ANSWER = r'answer ::= ([^<] | "<" [^t/] | "</" [^t])*'
_THOUGHT = r'thought ::= [^<]*'


def _literal(text: str) -> str:
    """`text` as an EBNF string literal (JSON escaping is a subset of what the dialect reads)."""
    return json.dumps(text, ensure_ascii=False)


def _items(rule: str, most: int) -> str:
    """`[ rule (, rule){0,most-1} ]`"""
    tail = f' (", " {rule}){{0,{most - 1}}}' if most > 1 else ""
    return f'"[" {rule}{tail} "]"'


def _call(name: str, arguments: str) -> str:
    return f'"{{\\"name\\": \\"{name}\\", \\"arguments\\": " {arguments} "}}"'


def reply_grammar(role: str, *, width: int, max_queries: int, max_urls: int, thinking: bool,
                  seen_urls: list[str] | None = None, answer_lines: list[str] | None = None,
                  table_columns: list[str] | None = None, table_cells: list[str] | None = None) -> str:
    """The EBNF of one reply of `role`. `seen_urls`: None admits any URL (tool_grammar=schema); a list
    admits only those (seen_urls; an empty list: no access call). `answer_lines` (tool_grammar=grounded, for
    a subagent): a final answer is made of these lines, each whole, or is empty. `table_columns` and
    `table_cells` (grounded, the lead of a table task): the final answer is the ```markdown table with exactly
    these columns, each cell one of `table_cells` or empty."""
    rules = [_JSON_TEXT]
    calls = []
    if seen_urls is None:
        rules.append("url ::= jtext")
    elif seen_urls:
        rules.append("url ::= " + " | ".join(_literal(json.dumps(u, ensure_ascii=False)) for u in seen_urls))
    can_access = seen_urls is None or bool(seen_urls)
    if role == LEAD:
        rules.append('subtask ::= "{\\"prompt\\": " jtext "}"')
        calls.append(_call(CREATE_SUB_AGENTS, f'"{{\\"sub_agents\\": " {_items("subtask", width)} "}}"'))
    elif role == SUBAGENT:
        rules.append('query ::= "{\\"query\\": " jtext (", \\"count\\": " count)? "}"')
        calls.append(_call(SEARCH, f'"{{\\"queries\\": " {_items("query", max_queries)} "}}"'))
        if can_access:
            rules.append('page ::= "{\\"url\\": " url ", \\"info_to_extract\\": " jtext "}"')
            calls.append(_call(ACCESS, f'"{{\\"urls\\": " {_items("page", max_urls)} "}}"'))
    elif role == SINGLE:
        calls.append(_call(SEARCH, '"{\\"query\\": " jtext (", \\"count\\": " count)? "}"'))
        if can_access:
            calls.append(_call(ACCESS, '"{\\"url\\": " url ", \\"info_to_extract\\": " jtext "}"'))
    else:
        raise WideseekError(f"unknown role {role!r} for a reply grammar")
    rules.append("call ::= " + " | ".join(f"({c})" for c in calls))
    rules.append('tool_call ::= "<tool_call>\\n" call "\\n</tool_call>"')
    if table_columns:
        cells = [c for c in dict.fromkeys(table_cells or []) if c and "<" not in c and "\n" not in c]
        rules.append("cell ::= " + " | ".join(['""', *(_literal(c) for c in cells)]))
        header = "| " + " | ".join(table_columns) + " |"
        separator = "| " + " | ".join("---" for _ in table_columns) + " |"
        row = '"| " cell' + ' " | " cell' * (len(table_columns) - 1) + ' " |"'
        rules.append(f'answer ::= "```markdown\\n" {_literal(header)} "\\n" {_literal(separator)} ("\\n" row)* "\\n```"')
        rules.append(f"row ::= {row}")
    elif answer_lines is None:
        rules.append(_ANSWER)
    else:
        lines = [line for line in dict.fromkeys(answer_lines) if line and "<" not in line]
        rules.append('answer ::= ("" | line ("\\n" line)*)' if lines else 'answer ::= ""')
        if lines:
            rules.append("line ::= " + " | ".join(_literal(line) for line in lines))
    rules.append(_THOUGHT)
    head = '"<think>\\n" thought "\\n</think>\\n\\n" ' if thinking else ""
    return "\n".join([f"root ::= {head}(tool_call | answer)", *rules]) + "\n"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise WideseekError(f"config key 'agent.tool_grammar' must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


def report_fields(reports: list[str]) -> list[str]:
    """The values subagents' reports offer a table cell: the value after "Label: " on a line, and the text of
    each markdown link "[text](url)" (also unescaped), in order of appearance ("|" escaped, as a cell writes
    it)."""
    fields = []
    for line in "\n".join(reports).splitlines():
        if ": " in line:
            fields.append(line.split(": ", 1)[1].strip())
        for anchor in _LINK_TEXT.findall(line):
            fields += [anchor, anchor.replace("\\[", "[").replace("\\]", "]")]
    return [f.replace("|", "\\|") for f in fields if f]
