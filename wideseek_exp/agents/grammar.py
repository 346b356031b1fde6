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
tool_grammar=grounded also grounds a subagent's final report in what it read: the report is one whole
paragraph of its tool results (the turn hints left out), or is empty, so a list's members are reported
whole, never cut short and never mixed with what follows them. An extraction subagent reports facts it
found, and a small model then cannot misspell or invent the name or the number it copies; it can only
choose the wrong line. The lead's final table, on a table task, is the markdown table with exactly the
columns the task names, in their order, and each cell one of the values its subagents reported (the value
after "Label: " on a line of a report, or a link's text) or empty: the lead assembles, and cannot garble
what it assembles. Its entities are the ones its reports link to ("- [name](url)", in the order the reports
give them), and the grammar makes each a choice among them:
- a subtask that names an entity writes it in brackets, "[name]", and the name is one of the entities that
  no earlier subtask named; a call is a full wave, the next min(width, not yet named) entities in the
  reports' order, so no entity is delegated twice, none is skipped and none can be misspelt (free text
  around the brackets is the lead's own);
- each row of the table starts with one of the entities, in the reports' order, each at most once; a lead
  without reported entities writes the header alone.

Every reply the grammar admits parses (agents/parser.py) into a valid call of the role or into a
final answer: tests/test_agents_grammar.py checks it on the expert's calls and on replies sampled
from the grammar itself. The engine ends the reply with its end-of-turn token once the grammar is
complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from wideseek_exp import WideseekError
from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SINGLE, SUBAGENT
from wideseek_exp.scoring.table import split_cells

MODES = ("off", "schema", "seen_urls", "grounded")
# a link's text: no unescaped bracket inside (names with brackets are escaped), each character taken once,
# so that a reply of "[[[[..." costs one pass, not one pass per bracket
_LINK_TEXT = re.compile(r"\[((?:[^\[\]\\]|\\.)++)\]\(")

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
# Quotes (grounded): a span of a text, whole pieces (a word, a number or one punctuation mark) with the
# text's own spacing between them; pieces that could open a tag are never part of one.
_PIECE = re.compile(r"\w+|[^\w\s]")
_NO_QUOTE = set("<>")
_NO_BRACKETS = set("<>[]")  # a lead's quotes: brackets only name entities
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")


def _literal(text: str) -> str:
    """`text` as an EBNF string literal (JSON escaping is a subset of what the dialect reads)."""
    return json.dumps(text, ensure_ascii=False)


def _items(rule: str, most: int) -> str:
    """`[ rule (, rule){0,most-1} ]`"""
    tail = f' (", " {rule}){{0,{most - 1}}}' if most > 1 else ""
    return f'"[" {rule}{tail} "]"'


def _call(name: str, arguments: str) -> str:
    return f'"{{\\"name\\": \\"{name}\\", \\"arguments\\": " {arguments} "}}"'


@dataclass
class Grounding:
    """What a grounded agent's words must come from (tool_grammar=grounded; None fields: not grounded).

    quotes        the text its own words quote, a span each: a lead's subtasks (its task), a subagent's
                  queries and info_to_extract (its task and subtask)
    blocks        the paragraphs of a subagent's tool results, as lines: its report may be one of
                  them, whole
    row_keys      a subagent's entities (the names its subtask gives in brackets) on a table task: its report
                  may instead be one row of the task's table, keyed by one of them, with `row_cells` (values
                  from what it read) or empty cells, `row_width` of them after the key
    entities      a lead's entities (the names the reports of its entity-finding subtasks link to, in order);
                  while there are none, a call has one subtask, which finds them; once there are any, a call
                  is a full wave: the next min(width, fresh) of them in this order, one in brackets a
                  subtask, none that an earlier subtask named (`delegated`); once all are delegated the lead
                  can only answer; its table's rows are the first entities in order, one row each, with
                  cells from `entity_cells` (the values of the reports on each entity) or empty
    """

    quotes: str | None = None
    blocks: list[list[str]] | None = None
    row_keys: list[str] | None = None
    row_cells: list[str] = field(default_factory=list)
    row_width: int = 0
    entities: list[str] | None = None
    delegated: list[str] = field(default_factory=list)
    entity_cells: dict[str, list[str]] = field(default_factory=dict)


def reply_grammar(role: str, *, width: int, max_queries: int, max_urls: int, thinking: bool,
                  seen_urls: list[str] | None = None, table_columns: list[str] | None = None,
                  table_cells: list[str] | None = None, grounding: Grounding | None = None) -> str:
    """The EBNF of one reply of `role`. `seen_urls`: None admits any URL (tool_grammar=schema); a list
    admits only those (seen_urls; an empty list: no access call). `table_columns` and `table_cells` (the lead
    of a table task, grounded): the final answer is the ```markdown table with exactly these columns, each
    cell one of `table_cells` or empty. `grounding` (tool_grammar=grounded): Grounding."""
    g = grounding or Grounding()
    quotes, entities = g.quotes, g.entities
    rules = [_JSON_TEXT]
    calls = []
    if seen_urls is None:
        rules.append("url ::= jtext")
    elif seen_urls:
        rules.append("url ::= " + " | ".join(_literal(json.dumps(u, ensure_ascii=False)) for u in seen_urls))
    can_access = seen_urls is None or bool(seen_urls)
    if quotes is not None:
        rules += _span_rules("quote", quotes, _NO_BRACKETS if role == LEAD else _NO_QUOTE)
    if role == LEAD and entities is not None:
        known = _names(entities)
        fresh = [name for name in known if name not in set(g.delegated)]
        if fresh or not known:  # once every entity is delegated, the lead can only answer
            rules += _grounded_subtasks(fresh, width, "quote" if quotes is not None else None)
            calls.append(_call(CREATE_SUB_AGENTS, '"{\\"sub_agents\\": [" sub_0_1 "]}"'))
    elif role == LEAD:
        rules.append('subtask ::= "{\\"prompt\\": " jtext "}"')
        calls.append(_call(CREATE_SUB_AGENTS, f'"{{\\"sub_agents\\": " {_items("subtask", width)} "}}"'))
    elif role == SUBAGENT:
        text = '"\\"" quote "\\""' if quotes is not None else "jtext"
        rules.append(f'query ::= "{{\\"query\\": " {text} (", \\"count\\": " count)? "}}"')
        calls.append(_call(SEARCH, f'"{{\\"queries\\": " {_items("query", max_queries)} "}}"'))
        if can_access:
            rules.append(f'page ::= "{{\\"url\\": " url ", \\"info_to_extract\\": " {text} "}}"')
            calls.append(_call(ACCESS, f'"{{\\"urls\\": " {_items("page", max_urls)} "}}"'))
    elif role == SINGLE:
        calls.append(_call(SEARCH, '"{\\"query\\": " jtext (", \\"count\\": " count)? "}"'))
        if can_access:
            calls.append(_call(ACCESS, '"{\\"url\\": " url ", \\"info_to_extract\\": " jtext "}"'))
    else:
        raise WideseekError(f"unknown role {role!r} for a reply grammar")
    if calls:
        rules.append("call ::= " + " | ".join(f"({c})" for c in calls))
        rules.append('tool_call ::= "<tool_call>\\n" call "\\n</tool_call>"')
    if table_columns:
        header = "| " + " | ".join(table_columns) + " |"
        separator = "| " + " | ".join("---" for _ in table_columns) + " |"
        row = '"| " cell' + ' " | " cell' * (len(table_columns) - 1) + ' " |"'
        if entities is None:
            cells = [c for c in dict.fromkeys(table_cells or []) if c and "<" not in c and "\n" not in c]
            rules.append("cell ::= " + " | ".join(['""', *(_literal(c) for c in cells)]))
            rules.append(f'answer ::= "```markdown\\n" {_literal(header)} "\\n" {_literal(separator)} ("\\n" row)* "\\n```"')
            rules.append(f"row ::= {row}")
        else:
            rules.append(f'answer ::= "```markdown\\n" {_literal(header)} "\\n" {_literal(separator)} rows_0 "\\n```"')
            rules += _entity_rows(_names(entities), len(table_columns) - 1, g.entity_cells)
    elif g.blocks is None:
        rules.append(_ANSWER)
    else:
        rules += _line_runs(g.blocks)
        if g.row_keys:
            rules += _report_row(_names(g.row_keys), g.row_cells, g.row_width)
        else:
            rules.append("answer ::= answer_lines")
    rules.append(_THOUGHT)
    head = '"<think>\\n" thought "\\n</think>\\n\\n" ' if thinking else ""
    body = "(tool_call | answer)" if calls else "answer"
    return "\n".join([f"root ::= {head}{body}", *rules]) + "\n"


def _names(entities: list[str]) -> list[str]:
    """The entities a grammar can offer: each once, none empty or holding a bracket, a tag or a line break."""
    return [n for n in dict.fromkeys(e.strip() for e in entities)
            if n and not any(c in n for c in "[]<\n")]


def _grounded_subtasks(names: list[str], width: int, quote: str | None) -> list[str]:
    """Rules for a grounded lead's subtasks (start: sub_0_1). Without entities (`names` empty) the call has one
    subtask, text: a span of the task when `quote` names its rule, else free text without brackets. With entities
    (the fresh ones, in order) the call is a full wave: sub_0_k names names[k-1] in brackets, optionally followed by
    a space and text, for k = 1 .. min(width, len(names))."""
    rules = []
    if quote is None:
        rules.append(r"""
pchar ::= [^"\\\x00-\x1f<\[\]] | ptag_free | "\\" ["\\/bfnrt]
ptag_free ::= "<" [^"\\\x00-\x1f/t\[\]] | "</" [^"\\\x00-\x1ft\[\]]
ptext1 ::= ([^"\\\x00-\x20<\[\]] | ptag_free) pchar*
""".strip())
        quote = "ptext1"
    if not names:  # one subtask finds the entities (copies of it would only repeat its search)
        return [*rules, f'sub_0_1 ::= "{{\\"prompt\\": \\"" {quote} "\\"}}"']
    # a full wave: the next min(width, fresh) entities, in order, one subtask each
    wave = names[:width]
    for k, name in enumerate(wave):
        literal = _literal(json.dumps(name, ensure_ascii=False)[1:-1])
        after = f' ", " sub_0_{k + 2}' if k + 1 < len(wave) else ""
        rules.append(f'sub_0_{k + 1} ::= "{{\\"prompt\\": \\"[" {literal} "]" (" " {quote})? "\\"}}"{after}')
    return rules


def _span_rules(rule: str, text: str, banned: set[str]) -> list[str]:
    """Rules for `rule`: any non-empty span of `text` made of whole pieces (_PIECE) with the spacing between
    them as the text has it, JSON-escaped (the span is written inside a JSON string); no span holds a piece
    with a character of `banned`."""
    pieces = [(m.start(), m.end()) for m in _PIECE.finditer(text)]
    allowed = [not (set(text[a:b]) & banned) for a, b in pieces]
    escape = lambda part: _literal(json.dumps(part, ensure_ascii=False)[1:-1])  # noqa: E731
    starts, rules = [], []
    for i, (a, b) in enumerate(pieces):
        if not allowed[i]:
            continue
        starts.append(f"{rule}_{i}")
        piece = escape(text[a:b])
        if i + 1 < len(pieces) and allowed[i + 1]:
            gap = text[b: pieces[i + 1][0]]
            piece += f" ({escape(gap)} {rule}_{i + 1})?" if gap else f" {rule}_{i + 1}?"
        rules.append(f"{rule}_{i} ::= {piece}")
    if not starts:  # nothing to quote (an empty text): a word of its own
        return [f'{rule} ::= [^"\\\\\\x00-\\x20<>\\[\\]]+']
    return [f"{rule} ::= " + " | ".join(starts), *rules]


def _line_runs(blocks: list[list[str]]) -> list[str]:
    """answer_lines ::= "" or one whole block (paragraph) of what the agent read, its lines as written. A block
    holding a line with "<" cannot be quoted."""
    starts, rules = [], []
    for b, block in enumerate(blocks):
        lines = [line.strip() for line in block if line.strip()]
        if not lines or any("<" in line for line in lines):
            continue
        starts.append(f"para_{b}")
        rules.append(f"para_{b} ::= {_literal(chr(10).join(lines))}")
    return ['answer_lines ::= ""' + "".join(f" | {start}" for start in starts), *rules]


def _report_row(keys: list[str], cells: list[str], width: int) -> list[str]:
    """A subagent's report as one table row: answer ::= ... | "| " key (" | " cell){width} " |"."""
    values = [v for v in dict.fromkeys(cells) if v and "<" not in v and "\n" not in v]
    return ["answer ::= answer_lines | report_row",
            "report_row ::= \"| \" (" + " | ".join(_literal(k.replace("|", "\\|")) for k in keys) + ")"
            + ' " | " report_cell' * width + ' " |"',
            "report_cell ::= " + " | ".join(['""', *(_literal(v) for v in values)])]


def _entity_rows(names: list[str], attributes: int, entity_cells: dict[str, list[str]]) -> list[str]:
    """Rules for the rows of a grounded table (start: rows_0): rows_i is the end of the table or the row of
    names[i] followed by rows_{i+1}, so the rows are the first k entities in order; each of the row's
    `attributes` cells is empty or one of the values `entity_cells` gives for its entity."""
    rules = []
    for i, name in enumerate(names):
        values = [v for v in dict.fromkeys(entity_cells.get(name, [])) if v and "<" not in v and "\n" not in v]
        rules.append(f"cell_{i} ::= " + " | ".join(['""', *(_literal(v) for v in values)]))
        row = _literal(name.replace("|", "\\|")) + "".join(f' " | " cell_{i}' for _ in range(attributes)) + ' " |"'
        rules.append(f'rows_{i} ::= "" | "\\n| " {row} rows_{i + 1}')
    rules.append(f'rows_{len(names)} ::= ""')
    return rules


def bracketed_names(subtasks: list[str]) -> list[str]:
    """The entity names subtasks give in brackets, in order."""
    return [name.strip() for subtask in subtasks for name in _BRACKETED.findall(subtask)]


def linked_entities(reports: list[str]) -> list[str]:
    """The names reports link to ("[name](url)", unescaped), in order of appearance."""
    return [anchor.replace("\\[", "[").replace("\\]", "]") for anchor in _LINK_TEXT.findall("\n".join(reports))]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise WideseekError(f"config key 'agent.tool_grammar' must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


def entity_cells(reports: dict[str, list[str]]) -> dict[str, list[str]]:
    """The cell values of the reports on each entity (report_fields of each entity's reports)."""
    return {name: report_fields(texts) for name, texts in reports.items()}


def report_fields(reports: list[str]) -> list[str]:
    """The values subagents' reports offer a table cell: the value after "Label: " on a line, the text of each
    markdown link "[text](url)" (also unescaped), and the cells after the key of a report that is a table
    row, in order of appearance ("|" escaped, as a cell writes it)."""
    fields = []
    for line in "\n".join(reports).splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            fields += split_cells(line)[2:-1]  # the cells after the key
            continue
        if ": " in line:
            fields.append(line.split(": ", 1)[1].strip())
        for anchor in _LINK_TEXT.findall(line):
            fields += [anchor, anchor.replace("\\[", "[").replace("\\]", "]")]
    return [f.replace("|", "\\|") for f in fields if f]
