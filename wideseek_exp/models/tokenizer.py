"""A byte-level BPE tokenizer for the offline tiny model, trained on our own texts.

It mirrors the Qwen3 tokenizer's contract: ChatML special tokens, the reasoning and tool-call markers
as single ids that survive `decode(skip_special_tokens=True)` (the rollout parses them from text),
left padding, and the Qwen3 chat template (ours, in chat_template.jinja).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
# Added but not special: the model must read and write them, and decoded text must keep them.
MARKER_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Qwen-style pre-tokenisation: words with an optional leading non-letter, single digits (numbers
# then cost one token per digit, which keeps arithmetic on table values learnable), punctuation
# runs, and newline runs kept apart from spaces.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RESERVED_PATTERN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + MARKER_TOKENS))


def load_chat_template() -> str:
    return CHAT_TEMPLATE_PATH.read_text()


def _without_reserved(texts: Iterable[str]) -> Iterator[str]:
    """Cut the special and marker strings out of the training text: they get their own ids, so
    BPE merges spent on their characters would be wasted vocabulary."""
    for text in texts:
        for piece in _RESERVED_PATTERN.split(text):
            if piece:
                yield piece


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` (include `format_texts()` for compact tool-call encoding).

    `vocab_size` counts the learned tokens plus the three special tokens; the six markers come on
    top, so `len(tokenizer) == vocab_size + 6` when the texts are rich enough to fill the vocabulary.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_without_reserved(texts), trainer=trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return wrap_tokenizer(bpe, model_max_length)


def wrap_tokenizer(bpe: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # decoder-only generation continues from the right edge
        model_max_length=model_max_length,
        chat_template=load_chat_template(),
        clean_up_tokenization_spaces=False,
    )


# ---- format text: the wire format the agents speak, so that it tokenises compactly ----

_WORDS = (
    "population capital country river city mountain element airport currency language area founded "
    "president company revenue university museum team stadium year height length distance rank "
    "official source table list compare largest smallest northern southern average total annual"
).split()
_NAMES = "Aldova Brenmark Castellan Dunmore Elvaria Fenwick Galdor Hestia Istra Jorvik Kalmar Lunden".split()


def _tool_schemas() -> list[dict]:
    def function(name: str, description: str, properties: dict, required: list[str]) -> dict:
        parameters = {"type": "object", "properties": properties, "required": required}
        return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}

    def array_of(properties: dict, required: list[str]) -> dict:
        return {"type": "array", "items": {"type": "object", "properties": properties, "required": required}}

    # The reference tool names and argument shapes (agents/ renders the real descriptions).
    text, count = {"type": "string"}, {"type": "integer"}
    return [
        function("search", "Search the web; each query returns its top results.",
                 {"queries": array_of({"query": text, "count": count}, ["query"])}, ["queries"]),
        function("access", "Read web pages and extract the requested information.",
                 {"urls": array_of({"url": text, "info_to_extract": text}, ["url", "info_to_extract"])}, ["urls"]),
        function("create_sub_agents", "Start subagents that work on subtasks in parallel.",
                 {"sub_agents": array_of({"prompt": text}, ["prompt"])}, ["sub_agents"]),
    ]


def _number(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randrange(1, 100_000_000))
    if kind == 1:
        return f"{rng.randrange(1, 10_000_000):,}"
    if kind == 2:
        return f"{rng.uniform(0, 1000):.{rng.randrange(1, 4)}f}"
    return f"{rng.uniform(0, 100):.1f}%"


def _date(rng: random.Random) -> str:
    year, month, day = rng.randrange(1800, 2030), rng.randrange(1, 13), rng.randrange(1, 29)
    months = "January February March April May June July August September October November December".split()
    return rng.choice([f"{year}-{month:02d}-{day:02d}", f"{day} {months[month - 1]} {year}", str(year)])


def _markdown_table(rng: random.Random) -> str:
    columns = ["name"] + rng.sample(_WORDS, rng.randrange(2, 5))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _ in range(rng.randrange(2, 7)):
        cells = [rng.choice(_NAMES)] + [rng.choice([_number(rng), _date(rng)]) for _ in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _conversation(rng: random.Random) -> list[dict]:
    topic = " ".join(rng.sample(_WORDS, 3))
    name = rng.choice(_NAMES)
    url = f"https://{name.lower()}.example.org/wiki/{rng.choice(_WORDS)}_{rng.randrange(1000)}"
    hits = [{"title": f"{rng.choice(_NAMES)} {rng.choice(_WORDS)}", "url": url,
             "snippet": f"{name} has a {rng.choice(_WORDS)} of {_number(rng)} as of {_date(rng)}."}
            for _ in range(rng.randrange(1, 4))]
    queries = [{"query": f"{name} {topic}", "count": rng.randrange(1, 6)},
               {"query": f"{rng.choice(_NAMES)} {rng.choice(_WORDS)} {_date(rng)}"}]
    calls = [
        {"type": "function", "function": {"name": "search", "arguments": {"queries": queries}}},
        {"type": "function", "function": {"name": "access", "arguments": {
            "urls": [{"url": url, "info_to_extract": f"the {rng.choice(_WORDS)} of {name}"}]}}},
        {"type": "function", "function": {"name": "create_sub_agents", "arguments": {
            "sub_agents": [{"prompt": f"Find the {topic} of {n}."} for n in rng.sample(_NAMES, rng.randrange(1, 4))]}}},
    ]
    return [
        {"role": "system", "content": "You are a research agent. Use the tools and answer with a markdown table."},
        {"role": "user", "content": f"List the {topic} of {', '.join(rng.sample(_NAMES, 3))}."},
        {"role": "assistant", "reasoning_content": f"I should search for the {topic} of {name}.",
         "content": "", "tool_calls": calls[rng.randrange(3):][:1]},
        {"role": "tool", "content": json.dumps(hits, ensure_ascii=False)},
        {"role": "tool", "content": f"# {name}\n\n{name} was founded on {_date(rng)}. Its {rng.choice(_WORDS)} is {_number(rng)}."},
        {"role": "assistant", "reasoning_content": f"The page gives the {rng.choice(_WORDS)}.",
         "content": "```markdown\n" + _markdown_table(rng) + "\n```"},
    ]


def format_texts(n_conversations: int = 1000, seed: int = 0) -> list[str]:
    """Synthetic rendered chats: tool schemas, JSON tool calls, tool responses, markdown tables,
    numbers and dates, to be added to the tokenizer's training texts."""
    rng = random.Random(seed)
    template, tools = load_chat_template(), _tool_schemas()
    texts = []
    for i in range(n_conversations):
        chat = _conversation(rng)
        rendered, _ = render_jinja_template([chat], tools=tools if i % 2 == 0 else None, chat_template=template)
        texts.append(rendered[0])
        texts.append(_markdown_table(rng))
    return texts
