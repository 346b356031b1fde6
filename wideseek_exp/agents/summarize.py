"""What an `access` call returns for one page, given the agent's `info_to_extract`.

    none        the page text, cut to max_page_chars
    extractive  offline: when info_to_extract names fact labels of the page ("Capital and Population"), the
                title and those fact lines ("Population: 709037"); otherwise the lines that share the most
                terms with it, within a character budget; in page order either way, a blank line between
                lines of different paragraphs (a list's members stay one paragraph)
    llm         a helper model extracts the information (the paper's setup); its generation requests
                go through the rollout's batching scheduler like any agent's

A page the backend does not have gives the fixed NO_INFORMATION text. Summarisers are coroutines so
that the llm one can await generation; the other two return at once.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from wideseek_exp import WideseekError
from wideseek_exp.agents.parser import final_answer
from wideseek_exp.engines.base import Completion
from wideseek_exp.search.base import Page

NO_INFORMATION = "No information could be extracted: the page is not available."

# generate(prompt_ids, max_new_tokens) -> Completion, awaited through the rollout's scheduler.
Generate = Callable[[list[int], int], Awaitable[Completion]]

_TERM = re.compile(r"[a-z0-9]+|[\u3400-\u9fff]")
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were what which "
    "who with all any each find get give list page information info extract their there these those".split()
)
_LONG_LINE = 400  # lines longer than this are split into sentences, so one paragraph cannot fill the budget
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_LABEL_CHARS = 40  # a fact line's label ("Area (km2)") is at most this long


def cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars].rstrip() + f"\n[... cut at {max_chars} characters]"


class Summarizer:
    """Turns (page, info_to_extract) into the text the agent reads."""

    name = "none"

    def __init__(self, max_page_chars: int):
        self.max_page_chars = max_page_chars

    async def summarize(self, page: Page | None, info_to_extract: str, generate: Generate | None = None) -> str:
        if page is None:
            return NO_INFORMATION
        return self.read(page, info_to_extract)

    def read(self, page: Page, info_to_extract: str) -> str:
        return cut(page.text, self.max_page_chars)


def terms(text: str) -> set[str]:
    """Lower-cased content words (plurals made singular: "s" dropped, "ies" -> "y") and single CJK characters."""
    words = set()
    for word in _TERM.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        if len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"  # countries, cities, currencies: the singular their pages' links use
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def passages(text: str) -> list[str]:
    """The page's non-empty lines; long lines split into sentences."""
    return [line for _, line in paragraph_passages(text)]


def paragraph_passages(text: str) -> list[tuple[int, str]]:
    """passages() with the index of the paragraph (blank-line separated) each comes from."""
    pieces, paragraph = [], 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            paragraph += 1
        elif len(line) > _LONG_LINE:
            pieces.extend((paragraph, s.strip()) for s in _SENTENCE_END.split(line) if s.strip())
        else:
            pieces.append((paragraph, line))
    return pieces


def _in_paragraphs(pieces: list[tuple[int, str]], chosen) -> str:
    """The chosen passages in page order, a blank line between those of different paragraphs."""
    out, last = [], None
    for i in sorted(chosen):
        paragraph, line = pieces[i]
        if last is not None and paragraph != last:
            out.append("")
        out.append(line)
        last = paragraph
    return "\n".join(out)


def named_facts(lines: list[str], request: str) -> list[int]:
    """The indices of the fact lines ("Label: value") whose label the request names as a phrase, in page order.
    Longer labels are matched first and their words consumed, so that "Numeric code and Minor units" names
    "Numeric code" and not also "Code"."""
    labels = {}
    for i, line in enumerate(lines):
        label = line.split(": ", 1)[0] if ": " in line else ""
        if label and len(label) <= _LABEL_CHARS:
            labels.setdefault(label.lower(), []).append(i)
    text, found = f" {request.lower()} ", []
    for label in sorted(labels, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w-]){re.escape(label)}(?![\w-])")
        if pattern.search(text):
            text = pattern.sub(" ", text)
            found += labels[label]
    return sorted(found)


class ExtractiveSummarizer(Summarizer):
    name = "extractive"

    def __init__(self, max_page_chars: int, max_chars: int):
        super().__init__(max_page_chars)
        self.max_chars = max_chars

    def read(self, page: Page, info_to_extract: str) -> str:
        pieces = paragraph_passages(page.text[: self.max_page_chars])
        if not pieces:
            return NO_INFORMATION
        lines = [line for _, line in pieces]
        named = named_facts(lines, info_to_extract)
        if named:  # the request names facts of the page by their labels: the title and exactly those
            return cut(_in_paragraphs(pieces, {0, *named}), self.max_chars)
        wanted = terms(info_to_extract)
        overlap = [len(wanted & terms(line)) for line in lines]
        if not any(overlap):
            # Nothing matches the request: the start of the page is the best guess at what it is about.
            return cut(_in_paragraphs(pieces, range(len(lines))), self.max_chars)
        # The first line (the title) always, then the best-matching lines while the budget lasts;
        # ties go to the earlier line. Shown in page order so that fact lists still read as lists.
        ranked = sorted((i for i in range(1, len(lines)) if overlap[i]), key=lambda i: (-overlap[i], i))
        chosen, used = {0}, len(lines[0])
        for i in ranked:
            if used + len(lines[i]) + 1 > self.max_chars:
                continue
            chosen.add(i)
            used += len(lines[i]) + 1
        return cut(_in_paragraphs(pieces, chosen), self.max_chars)


class LLMSummarizer(Summarizer):
    """Asks a model to extract `info_to_extract` from the page. `engine` is the engine to ask; None
    means the rollout's subagent engine. Thinking is off: the answer is the summary."""

    name = "llm"

    def __init__(self, tokenizer, max_page_chars: int, max_new_tokens: int, max_context_tokens: int, engine=None):
        super().__init__(max_page_chars)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = max_context_tokens
        self.engine = engine

    def prompt_ids(self, page: Page, info_to_extract: str) -> list[int]:
        messages = [
            {"role": "system", "content": "You extract information from web pages accurately and concisely."},
            {"role": "user", "content": (
                f"Web page {page.url}\n\n{cut(page.text, self.max_page_chars)}\n\n"
                f"Extract this information from the page: {info_to_extract}\n"
                "Copy names, numbers and dates exactly as the page gives them. If the page does not contain "
                f"the information, reply exactly: {NO_INFORMATION}"
            )},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def summarize(self, page: Page | None, info_to_extract: str, generate: Generate | None = None) -> str:
        if page is None:
            return NO_INFORMATION
        if generate is None:
            raise ValueError("the llm summariser needs the rollout's generate function")
        prompt = self.prompt_ids(page, info_to_extract)
        budget = min(self.max_new_tokens, self.max_context_tokens - len(prompt))
        if budget < 1:  # the page is too long for the helper's context: fall back to the cut page
            return super().read(page, info_to_extract)
        completion = await generate(prompt, budget)
        return final_answer(self.tokenizer.decode(completion.token_ids, skip_special_tokens=False)) or NO_INFORMATION


def make_summarizer(agent_cfg, search_cfg, tokenizer=None, engine=None) -> Summarizer:
    """The summariser named by agent_cfg.summarizer (none | extractive | llm)."""
    name, max_page_chars = str(agent_cfg.summarizer), int(search_cfg.max_page_chars)
    if name == "none":
        return Summarizer(max_page_chars)
    if name == "extractive":
        return ExtractiveSummarizer(max_page_chars, int(agent_cfg.summary_max_chars))
    if name == "llm":
        if tokenizer is None:
            raise WideseekError("summarizer=llm needs a tokenizer")
        return LLMSummarizer(tokenizer, max_page_chars, int(agent_cfg.summary_max_tokens),
                             int(agent_cfg.max_context_tokens), engine)
    raise WideseekError(f"unknown agent.summarizer {name!r}; expected none, extractive or llm")


def make_helper_summarizer(cfg):
    """The llm page summariser on its own engine and model (cfg.summarizer_engine / cfg.summarizer_model), or
    None: the rollout's default summariser (agent.summarizer; an llm one asks the subagents' engine)."""
    if cfg.agent.summarizer != "llm" or (cfg.summarizer_engine is None and cfg.summarizer_model is None):
        return None
    from omegaconf import OmegaConf

    from wideseek_exp.engines.factory import make_engine

    helper_cfg = cfg if cfg.summarizer_engine is None else OmegaConf.merge(cfg, {"engine": cfg.summarizer_engine})
    engine = make_engine(helper_cfg, cfg.summarizer_model if cfg.summarizer_model is not None else cfg.model)
    return make_summarizer(cfg.agent, cfg.search, engine.tokenizer, engine)
