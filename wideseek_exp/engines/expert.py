"""The scripted expert (agent.policy=scripted): a policy written as code that plays the lead and the
subagents of agent=wideseek through the real tools, the real search backend and the real scorer.

It is an Engine: it decodes each prompt, reads the conversation so far (role, task, tool results) and
returns its next reply as token ids, in exactly the wire format a model emits (a short <think> block,
then one <tool_call>{json}</tool_call>, or a final answer). So its trajectories carry real token ids
and generated-token masks, and they are the demonstrations of the imitation warm start (task=sft).

    lead      turn 1: one subagent finds the entity set ("Find the list of the <description>")
              then:   waves of at most W subagents, one entity each ("Find the page of the <noun>
                      "<name>" (<url>) and report its <attributes>"), while turns remain
              last:   the markdown table; cells it has no report for stay empty
    subagent  list:   search the description; access the list pages among the hits; report the members
              entity: search <name> and "<name> <attributes>"; access the page the list linked (or the hit titled
                      <name>; none: "Not found"); report the "Label: value" lines

Under the lead's turn budget it covers W x (lead_max_turns - 2) entities, so its item F1 rises with W
on the broad tasks. The policy is deterministic: every logprob it reports is 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams

END = "<|im_end|>"

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
_LIST_SUBTASK = re.compile(r"^Find the list of the (.+?)\. Report the name of every entry\.$")
_ENTITY_SUBTASK = re.compile(r'^Find the page of the (.+?) "(.+)" \((\S+)\) and report its (.+)\.$')
_MEMBER = re.compile(r"^- (.+) \((\S+)\)$")
_HIT = re.compile(r"^\[\d+\] (.*)\nURL: (\S+)", re.MULTILINE)
_LINK = re.compile(r"^- \[(.+)\]\((\S+)\)$", re.MULTILINE)


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


def lead_reply(chat: Conversation) -> str:
    spec = read_task(chat.user)
    if spec is None:
        return answer("I cannot read this task.", "The task is not one I know how to split.")
    width = int(m.group(1)) if (m := _WIDTH.search(chat.system)) else 1
    max_turns = int(m.group(1)) if (m := _LEAD_TURNS.search(chat.system)) else 10
    members: list[tuple[str, str]] = []  # (name, url) from the list subagent
    facts: dict[str, dict[str, str]] = {}
    asked: set[str] = set()
    for result in chat.tool_results:
        for block in _SUBTASK_BLOCK.split(_strip_hint(result))[1:]:
            prompt, _, report = block.partition("\nResult: ")
            if _LIST_SUBTASK.match(prompt) and not members:
                members = [m.groups() for line in report.splitlines() if (m := _MEMBER.match(line))]
            elif entity := _ENTITY_SUBTASK.match(prompt):
                name = entity.group(2)
                asked.add(name)
                facts[name] = dict(line.split(": ", 1) for line in report.splitlines() if ": " in line)

    if not chat.tool_results:
        subtask = f"Find the list of the {spec.description}. Report the name of every entry."
        return tool_call("create_sub_agents", {"sub_agents": [{"prompt": subtask}]},
                         "First I need the whole set: one subagent finds the list.")
    todo = [(name, url) for name, url in members if name not in asked]
    if todo and chat.turn < max_turns:
        attributes = _join(spec.columns[1:])
        wave = [{"prompt": f'Find the page of the {spec.noun} "{name}" ({url}) and report its {attributes}.'}
                for name, url in todo[:width]]
        return tool_call("create_sub_agents", {"sub_agents": wave},
                         f"{len(members)} entries, {len(todo)} still to look up: the next {len(wave)}.")
    header = "| " + " | ".join(spec.columns) + " |"
    lines = [header, "| " + " | ".join("---" for _ in spec.columns) + " |"]
    for name, _ in members:
        cells = [name] + [facts.get(name, {}).get(column, "") for column in spec.columns[1:]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    table = "```markdown\n" + "\n".join(lines) + "\n```"
    return answer(table, f"All reports are in for {len(facts)} of {len(members)} entries: the table.")


# ------------------------------------------------------------------------------------------- subagent


def _subtask(user: str) -> str:
    return user.split("Your subtask:\n", 1)[1].strip() if "Your subtask:\n" in user else user.strip()


def subagent_reply(chat: Conversation) -> str:
    subtask = _subtask(chat.user)
    results = [_strip_hint(r) for r in chat.tool_results]
    if listing := _LIST_SUBTASK.match(subtask):
        return _list_reply(listing.group(1), results)
    if entity := _ENTITY_SUBTASK.match(subtask):
        return _entity_reply(entity.group(2), entity.group(3), _split_join(entity.group(4)), results)
    return answer("I cannot do this subtask.", "The subtask is not one I know.")


def _list_reply(description: str, results: list[str]) -> str:
    """Search with the list pages' own wording, then read the list pages among the hits, five per turn,
    until one is the list of exactly this set."""
    if not results:
        queries = [{"query": f"This list names entries, the {description}.", "count": 10},
                   {"query": description, "count": 10}, {"query": _key_words(description) + " list", "count": 10}]
        return tool_call("search", {"queries": queries}, "Search for the list page.")
    for page in results[-1].split("\n\nPage: ") if len(results) > 1 else []:
        if f", the {description}." in page:
            links = [(name, url) for name, url in _LINK.findall(page) if "/list/" not in url]
            return answer(f"The {description}: {len(links)} entries.\n" + "\n".join(f"- {n} ({u})" for n, u in links),
                          "This page is the list.")
    candidates = list(dict.fromkeys(url for _, url in _HIT.findall(results[0]) if "/list/" in url))
    batch = candidates[5 * (len(results) - 1) : 5 * len(results)]
    if not batch:
        return answer("No list page found.", "None of the pages is the list.")
    items = [{"url": url, "info_to_extract": f"the {description}: every entry with its https link"} for url in batch]
    return tool_call("access", {"urls": items}, "Read the list pages to find the right one.")


def _key_words(description: str) -> str:
    """The head noun and the proper names and numbers of a description: what sets this list apart."""
    words = description.split()
    return " ".join([words[0]] + [w for w in words[1:] if w[0].isupper() or w[0].isdigit() or w[0] == "("])


def _entity_reply(name: str, page_url: str, attributes: list[str], results: list[str]) -> str:
    if not results:
        # three hits each: the page is among them for all but a few entities (item F1 within a point of
        # three queries of five hits), at under half the context a subagent reads and the warm start trains on
        queries = [{"query": name, "count": 3}, {"query": f"{name} {' '.join(attributes)}", "count": 3}]
        return tool_call("search", {"queries": queries}, f"Search for {name}.")
    if len(results) == 1:
        hits = [(title, url) for title, url in _HIT.findall(results[0]) if "/list/" not in url]
        exact = [url for title, url in hits if url == page_url or title.strip().lower() == name.lower()]
        # no page of that name among the hits: report it missing rather than read another entity's page
        url = page_url if page_url in exact else exact[0] if exact else None
        if url is None:
            return answer(f"{name}\nNot found.", "The search found no page.")
        return tool_call("access", {"urls": [{"url": url, "info_to_extract": _join(attributes)}]},
                         f"Read the page of {name}.")
    found = dict(line.split(": ", 1) for line in results[-1].splitlines() if ": " in line)
    lines = [f"{label}: {found[label]}" for label in attributes if label in found]
    return answer("\n".join([name, *lines]), "Report the facts.")


# --------------------------------------------------------------------------------------------- engine


def expert_reply(prompt_text: str) -> str:
    chat = read_prompt(prompt_text)
    if chat.role == "lead":
        return lead_reply(chat)
    if chat.role == "subagent":
        return subagent_reply(chat)
    raise WideseekError("agent.policy=scripted plays agent=wideseek with agent.summarizer=none or extractive "
                        "(it received a prompt of another role)")


class ExpertEngine(Engine):
    """The scripted expert behind the Engine interface: prompt ids in, the expert's reply ids out."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.end_id = tokenizer.convert_tokens_to_ids(END)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        completions = []
        for prompt in prompts:
            reply = expert_reply(self.tokenizer.decode(prompt, skip_special_tokens=False))
            ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.end_id]
            finish = "stop" if len(ids) <= sampling.max_new_tokens else "length"
            ids = ids[: sampling.max_new_tokens]
            completions.append(Completion(ids, [0.0] * len(ids), finish, self.tokenizer.decode(ids),
                                          "eos" if finish == "stop" else None))
        return completions
