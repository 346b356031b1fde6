"""The scripted expert (agent.policy=scripted): a policy written as code that plays the lead and the
subagents of agent=wideseek through the real tools, the real search backend and the real scorer.

It is an Engine: it decodes each prompt, reads the conversation so far (role, task, tool results) and
returns its next reply as token ids, in exactly the wire format a model emits (a short <think> block,
then one <tool_call>{json}</tool_call>, or a final answer). So its trajectories carry real token ids
and generated-token masks, and they are the demonstrations of the imitation warm start (task=sft).

    lead      turn 1: one subagent finds the entity set; its subtask quotes the task ("the <description>");
                      once more if it found none
              then:   waves of at most W subagents, one entity each ("[<name>] the <attributes>": the
                      entity in brackets, then the task's words for the columns), while turns remain
              last:   the markdown table; cells it has no report for stay empty
    subagent  list:   search the subtask as written (5 hits, then 10); read the one hit that is the list of
                      exactly this set; report its member lines as the page writes them ("- [name](url)")
              entity: search the subtask as written (3 hits, then the name alone); read the first hit titled
                      <name>; report the entity's row of the task's table ("| <name> | <value> | ... |")

Every subtask and every query is a quote of the task or the subtask, and every entity a name a report
linked to: the words agent.tool_grammar=grounded lets an agent write.

A list report is the paragraph of member lines the subagent read, an entity report one row of the table with values it
read, and one that found nothing reports nothing (an empty report): the reports agent.tool_grammar=grounded
admits.

Every decision is one a small model can learn to copy: one call per turn, one page per access, reports
that repeat lines of the page in its order, thinking in fixed sentences (none when the model's thinking is
off: the prompt then ends with an empty think block, and the reply is the call or the answer alone). It reads whatever conversation it is given,
not only its own: a wrong page read, a search that missed or a garbled call gets the next sensible step
(the other query, the right hit, a report of what is missing), so it can label the states a model
reaches in its own rollouts (on-policy imitation, rl/imitation.py).

Under the lead's turn budget it covers W x (lead_max_turns - 2) entities, so its item F1 rises with W
on the broad tasks. The policy is deterministic: every logprob it reports is 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams
from wideseek_exp.scoring.table import split_cells

END = "<|im_end|>"
THINKING_OFF = "<think>\n\n</think>\n\n"  # what a generation prompt ends with when thinking is off

# The four query openings of tasks/miniweb.py, each giving the set's description.
_DESCRIPTION = (
    re.compile(r"^List all of the (.+?)\. For each one, give the "),
    re.compile(r"^I am putting together a reference table of the (.+?)\. Find every one of them"),
    re.compile(r"^Compile a complete table of the (.+?), with the .+ of each\."),
    re.compile(r"^Which are the (.+?)\? Name every one of them"),
)
_NOUN = re.compile(r"one row per (.+?), with exactly these columns")
_WIDTH = re.compile(r"Start up to (\d+) subagents at once")
_LEAD_TURNS = re.compile(r"You have (\d+) turns in all")
_TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)
_SUBTASK_BLOCK = re.compile(r"^Subtask \d+: ", re.MULTILINE)
_LIST_SUBTASK = re.compile(r"^the ([^\[\]]+)$")
# The name in brackets, not quotes: a tool call writes the subtask as JSON, where a quote becomes \" and the
# copy of what follows it from the plain-text list report loses its anchor.
_ENTITY_SUBTASK = re.compile(r"^\[(.+)\] the (.+)$")
_MEMBER = re.compile(r"^- \[(.+)\]\((\S+)\)$")  # a list page's member line: "- [name](url)"
_QUERY = re.compile(r'^(?:Results for|No results for) "(.*)"[:.]$', re.MULTILINE)
_HIT_FULL = re.compile(r"^\[\d+\] (.*)\nURL: (\S+)\n(.*)$", re.MULTILINE)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _split_join(text: str) -> list[str]:
    """Inverse of _join (attribute names hold no ', ' or ' and ')."""
    head, _, last = text.rpartition(" and ")
    return [*head.split(", "), last] if head else [last]


def tool_call(name: str, arguments: dict, thinking: str) -> str:
    return (f"<think>\n{thinking}\n</think>\n\n<tool_call>\n"
            + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>")


def answer(text: str, thinking: str) -> str:
    return f"<think>\n{thinking}\n</think>\n\n{text}"


@dataclass
class TaskSpec:
    """What the lead reads from the task query."""

    description: str
    noun: str
    columns: list[str]  # the header the query asks for, key column first


def read_task(query: str) -> TaskSpec | None:
    first = query.split("\n\n", 1)[0]
    description = next((m.group(1) for p in _DESCRIPTION if (m := p.search(first))), None)
    noun = _NOUN.search(query)
    header = next((line for line in query.splitlines() if line.startswith("| ") and line.endswith(" |")), None)
    if description is None or noun is None or header is None:
        return None
    return TaskSpec(description, noun.group(1), [c.strip() for c in header.strip("|").split("|")])


@dataclass
class Conversation:
    role: str
    system: str
    user: str
    turn: int  # the turn being generated, 1-based
    tool_results: list[str] = field(default_factory=list)


def read_prompt(text: str) -> Conversation:
    """Who is speaking (lead | subagent | single | summarizer, told by the tools the system prompt offers),
    the first user message, the turn and the tool results so far."""
    system = text.split(END, 1)[0]
    if '"name": "create_sub_agents"' in system:
        role = "lead"
    elif '"queries"' in system:
        role = "subagent"
    elif '"name": "search"' in system:
        role = "single"
    else:
        role = "summarizer"
    user = text.split("<|im_start|>user\n", 1)[1].split(END, 1)[0] if "<|im_start|>user\n" in text else ""
    return Conversation(role, system, user, text.count("<|im_start|>assistant"), _TOOL_RESPONSE.findall(text))


def _strip_hint(result: str) -> str:
    """A tool result without the turn hint the rollout appends."""
    return re.sub(r"\n\n\[Turn \d+ of \d+[^\]]*\]$", "", result)


# ----------------------------------------------------------------------------------------------- lead


def _reports(chat: Conversation):
    """(subtask, report) of every subagent the lead has heard back from, in order."""
    for result in chat.tool_results:
        for block in _SUBTASK_BLOCK.split(_strip_hint(result))[1:]:
            prompt, _, report = block.partition("\nResult: ")
            yield prompt, report


def _row_facts(report: str, attributes: list[str]) -> dict[str, str]:
    """An entity report's facts by column: the cells after the key of a report that is a table row, else its
    "Label: value" lines."""
    for line in report.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            return {a: c for a, c in zip(attributes, split_cells(line)[2:-1]) if c}  # the cells after the key
    return dict(line.split(": ", 1) for line in report.splitlines() if ": " in line)


def lead_reply(chat: Conversation) -> str:
    spec = read_task(chat.user)
    if spec is None:
        return answer("I cannot read this task.", "The task is not one I know how to split.")
    width = int(m.group(1)) if (m := _WIDTH.search(chat.system)) else 1
    max_turns = int(m.group(1)) if (m := _LEAD_TURNS.search(chat.system)) else 10
    members: list[str] = []  # the names the list subagent reported
    facts: dict[str, dict[str, str]] = {}
    asked: set[str] = set()
    list_calls = 0
    for prompt, report in _reports(chat):
        if _LIST_SUBTASK.match(prompt):
            list_calls += 1
            if not members:
                members = [_unescape(m.group(1)) for line in report.splitlines()
                           if (m := _MEMBER.match(line)) and "/list/" not in m.group(2)]
        elif entity := _ENTITY_SUBTASK.match(prompt):
            name = entity.group(1)
            asked.add(name)
            facts[name] = _row_facts(report, _split_join(entity.group(2)))

    last_turn = chat.turn >= max_turns
    # No list yet: ask for it (once more after a failed try: another subagent may find it).
    if not members and list_calls < 2 and not last_turn:
        subtask = f"the {spec.description}"
        return tool_call("create_sub_agents", {"sub_agents": [{"prompt": subtask}]},
                         "First I need the whole set: one subagent finds the list.")
    todo = [name for name in members if name not in asked]
    if todo and not last_turn:
        attributes = _join(spec.columns[1:])
        wave = [{"prompt": f"[{name}] the {attributes}"}
                for name in todo[:width]]
        return tool_call("create_sub_agents", {"sub_agents": wave}, "Next, the entries still to look up.")
    header = "| " + " | ".join(spec.columns) + " |"
    lines = [header, "| " + " | ".join("---" for _ in spec.columns) + " |"]
    for name in members:
        cells = [name] + [facts.get(name, {}).get(column, "") for column in spec.columns[1:]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    table = "```markdown\n" + "\n".join(lines) + "\n```"
    return answer(table, "The reports are in: the table.")


# ------------------------------------------------------------------------------------------- subagent


def _subtask(user: str) -> str:
    return user.split("Your subtask:\n", 1)[1].strip() if "Your subtask:\n" in user else user.strip()


@dataclass
class _Seen:
    """What a subagent's tool results hold so far: the hits of its searches and the pages it read."""

    queries: list[str] = field(default_factory=list)
    hits: list[tuple[str, str, str]] = field(default_factory=list)  # (title, url, snippet), in order
    pages: dict[str, str] = field(default_factory=dict)  # url -> text read

    @classmethod
    def read(cls, results: list[str]) -> _Seen:
        seen = cls()
        for result in results:
            if result.startswith("Results for ") or result.startswith("No results for "):
                seen.queries += _QUERY.findall(result)
                seen.hits += [(t, u, snippet) for t, u, snippet in _HIT_FULL.findall(result)]
            elif result.startswith("Page: "):
                for block in ("\n\n" + result).split("\n\nPage: ")[1:]:
                    url, _, text = block.partition("\n")
                    seen.pages[url.strip()] = text
        return seen


def subagent_reply(chat: Conversation) -> str:
    subtask = _subtask(chat.user)
    seen = _Seen.read([_strip_hint(r) for r in chat.tool_results])
    if listing := _LIST_SUBTASK.match(subtask):
        return _list_reply(subtask, listing.group(1), seen)
    if entity := _ENTITY_SUBTASK.match(subtask):
        return _entity_reply(subtask, entity.group(1), _split_join(entity.group(2)), seen)
    return answer("", "The subtask is not one I know.")


def _is_the_list(text: str, description: str) -> bool:
    """A list page (or its snippet) of exactly this set: "This list names N entries, the <description>."."""
    return f"entries, the {description}." in text or f"entry, the {description}." in text


def _list_reply(subtask: str, description: str, seen: _Seen) -> str:
    """Search the subtask as it reads (the task's words for the set); read the one hit that is the list of exactly
    this set; report its member lines as the page gives them. A search that missed is repeated for 10 hits;
    a wrong page read is followed by the right hit."""
    for text in seen.pages.values():
        if _is_the_list(text, description):
            members = [line for line in text.splitlines() if (m := _MEMBER.match(line)) and "/list/" not in m.group(2)]
            return answer("\n".join(members), "This page is the list.")
    match = next((url for _, url, snippet in seen.hits if _is_the_list(snippet, description)
                  and url not in seen.pages), None)
    if match is not None:  # what to extract, in the subtask's own words (the members' links name their kind)
        return tool_call("access", {"urls": [{"url": match, "info_to_extract": subtask}]}, "Read the list page.")
    searched = seen.queries.count(subtask)
    if searched < 2:  # 5 hits, then 10 when the list was not among them
        return tool_call("search", {"queries": [{"query": subtask, "count": 10 if searched else 5}]},
                         "Search for the list page.")
    return answer("", "None of the pages is the list.")


def _titled(title: str, name: str) -> bool:
    """A page title names the entity: "Kabul", or "Kabul, Afghanistan" for a city."""
    return title.strip().lower().startswith(name.lower())


def _entity_reply(subtask: str, name: str, attributes: list[str], seen: _Seen) -> str:
    """Search the subtask as it reads (its name and attributes put the entity's page first for 95% of the train
    tasks' entities, three hits each); read the first hit titled with the name (right for 97%), for the
    attributes in the subtask's words; report the entity's row of the task's table: its name, then the value
    the page gives for each attribute asked, in order (empty where the page has none). Not found after a
    second search (the name alone): an empty report rather than another entity's page."""
    for text in seen.pages.values():
        if _titled(text.split("\n", 1)[0], name):
            found = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            cells = [name, *(found.get(attribute, "").strip() for attribute in attributes)]
            return answer("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |", "Report the row.")
    titled = [url for title, url, _ in seen.hits if "/list/" not in url and url not in seen.pages and _titled(title, name)]
    if titled:
        request = subtask.split("] ", 1)[1]  # "the <attributes>", quoted from the subtask
        return tool_call("access", {"urls": [{"url": titled[0], "info_to_extract": request}]}, "Read the page.")
    for query, count in ((subtask, 3), (name, 5)):
        if query not in seen.queries:
            return tool_call("search", {"queries": [{"query": query, "count": count}]}, "Search for the page.")
    return answer("", "The search found no page.")


def _unescape(anchor: str) -> str:
    return anchor.replace("\\[", "[").replace("\\]", "]")


# --------------------------------------------------------------------------------------------- engine


def expert_label(prompt_text: str) -> str:
    """The expert's reply to a rendered prompt, as the model would write it: without its thinking when the
    prompt ends with the empty think block of a template whose thinking is off."""
    reply = expert_reply(prompt_text)
    return reply.split("</think>\n\n", 1)[-1] if prompt_text.endswith(THINKING_OFF) else reply


def expert_reply(prompt_text: str) -> str:
    chat = read_prompt(prompt_text)
    if chat.role == "lead":
        return lead_reply(chat)
    if chat.role == "subagent":
        return subagent_reply(chat)
    raise WideseekError("agent.policy=scripted plays agent=wideseek with agent.summarizer=none or extractive "
                        "(it received a prompt of another role)")


class ExpertEngine(Engine):
    """The scripted expert behind the Engine interface: prompt ids in, the expert's reply ids out. Its replies
    lie in every reply grammar (agents/grammar.py) by construction, so it takes grammars and needs no mask."""

    supports_grammars = True

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.end_id = tokenizer.convert_tokens_to_ids(END)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        completions = []
        for prompt in prompts:
            reply = expert_label(self.tokenizer.decode(prompt, skip_special_tokens=False))
            ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.end_id]
            finish = "stop" if len(ids) <= sampling.max_new_tokens else "length"
            ids = ids[: sampling.max_new_tokens]
            completions.append(Completion(ids, [0.0] * len(ids), finish, self.tokenizer.decode(ids),
                                          "eos" if finish == "stop" else None))
        return completions
