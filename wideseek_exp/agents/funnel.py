"""The protocol funnel: how far each trial got through the agent protocol, stage by stage.

A policy that scores zero can break anywhere in the chain lead -> subagents -> tools -> reports ->
table. The funnel says where: the share of trials that pass each stage, in order,

    lead_call       the root agent's first reply is a tool call that parses (create_sub_agents for a
                    lead; search or access for a single agent)
    subagent        at least one subagent started (a single agent counts as its own searcher)
    search          a searching agent ran a search call that returned hits
    access          a searching agent ran an access call that read at least one page
    report_gold     a searching agent's final report holds at least one gold cell value (a single
                    agent's final answer, for singleseek)
    table           the final answer holds a markdown table
    item_f1         the trial's item F1 is above 0

A trial passes a stage without passing the ones before it only in odd cases (a table written without
any subagent); the shares are of all trials, so a stage's share is never read as conditional.
"""

from __future__ import annotations

import re

from wideseek_exp.agents.summarize import NO_INFORMATION
from wideseek_exp.agents.tools import ACCESS, CREATE_SUB_AGENTS, LEAD, SEARCH, SUBAGENT
from wideseek_exp.agents.trajectory import Trajectory

STAGES = ("lead_call", "subagent", "search", "access", "report_gold", "table", "item_f1")
STAGE_LABELS = {
    "lead_call": "the lead's first call parses",
    "subagent": "a subagent starts",
    "search": "a search returns hits",
    "access": "an access reads a page",
    "report_gold": "a report holds a gold cell",
    "table": "the final table parses",
    "item_f1": "item F1 > 0",
}
# Gold values shorter than this are too common to tell a real report from chance ("1", "No").
_MIN_GOLD_CHARS = 3
_SPACE = re.compile(r"\s+")


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def gold_values(gold_rows: list[list[str]]) -> set[str]:
    """The normalised gold cells a report is searched for."""
    return {value for row in gold_rows for cell in row
            if len(value := _normal(cell)) >= _MIN_GOLD_CHARS and value not in ("nan", "none", "n/a")}


def _contains_value(text: str, values: set[str]) -> bool:
    text = _normal(text)
    for value in values:
        start = text.find(value)
        while start >= 0:
            end = start + len(value)
            # whole words only: "Chad" is not found in "Chadian"
            if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
                return True
            start = text.find(value, start + 1)
    return False


def _read_a_page(result: str) -> bool:
    """An access result holds at least one page that was read (rollout: 'Page: <url>' blocks)."""
    for block in result.split("Page: ")[1:]:
        text = block.split("\n", 1)[1] if "\n" in block else ""
        if text.strip() and not text.startswith("Error:") and not text.startswith(NO_INFORMATION):
            return True
    return False


def protocol_stages(trajectory: Trajectory, gold: set[str]) -> dict[str, bool]:
    """Which stages one trial passed, but the last (item_f1: the score's, stage_rows adds it). `gold` from
    gold_values()."""
    root = trajectory.root
    first = root.turns[0] if root.turns else None
    wanted = (CREATE_SUB_AGENTS,) if root.role == LEAD else (SEARCH, ACCESS)
    searchers = [agent for agent in trajectory.agents if agent.role == SUBAGENT] if root.role == LEAD else [root]
    turns = [turn for agent in searchers for turn in agent.turns if turn.tool_result is not None]
    reports = [agent.final_text for agent in searchers if agent.final_text]
    return {
        "lead_call": first is not None and first.tool_name in wanted,
        "subagent": bool(searchers) and any(agent.turns for agent in searchers),
        "search": any(turn.tool_name == SEARCH and "\nURL: " in (turn.tool_result or "") for turn in turns),
        "access": any(turn.tool_name == ACCESS and _read_a_page(turn.tool_result or "") for turn in turns),
        "report_gold": bool(gold) and any(_contains_value(report, gold) for report in reports),
        "table": bool(trajectory.table_found),
    }


def stage_row(stages: dict[str, bool] | None, item_f1: float | None) -> dict[str, bool]:
    """All stages of one trial: its protocol stages (None: a missing trial, which passed none) and its score."""
    row = dict.fromkeys(STAGES, False)
    row.update(stages or {})
    row["item_f1"] = item_f1 is not None and item_f1 > 0
    return row


def funnel_shares(stage_rows: list[dict[str, bool]]) -> dict[str, float]:
    """The share of trials through each stage (one row per trial, missing ones included)."""
    total = len(stage_rows)
    return {stage: (sum(row[stage] for row in stage_rows) / total if total else 0.0) for stage in STAGES}


def render_funnel(shares: dict[str, float], trials: int) -> str:
    """The funnel as a markdown table, for results.md under the results table."""
    lines = [f"protocol funnel ({trials} trials: the share that gets through each stage)", "",
             "| stage | share of trials |", "|---|---|"]
    lines += [f"| {STAGE_LABELS[stage]} | {100 * shares[stage]:.1f}% |" for stage in STAGES]
    return "\n".join(lines)
