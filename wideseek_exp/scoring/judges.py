"""Judges: the semantic calls of the WideSearch scorer, behind one interface.

A judge does three things, each ONE call per use:
  align_columns  response column names -> gold column names (step 3, when the sets differ)
  align_keys     a key column's response values -> gold values (step 6)
  grade          0/1 for every matched pair of an llm_judge column, against its criterion (step 9)

ExactJudge answers them by normalised equality: offline and deterministic, for tests, CI and
reward computation. The official judge is an LLM (GPT-4.1), and ExactJudge is stricter than it, so
every report names the judge it used. LLMJudge talks to any OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import tempfile
import threading
import unicodedata
from abc import ABC, abstractmethod
from pathlib import Path

from wideseek_exp import WideseekError
from wideseek_exp.httpretry import RetriesExhausted, TransientError, send, with_retries


class JudgeError(Exception):
    """The judge gave no usable answer after its retries. The scorer marks the trial judge_error
    (the official scorer would silently score it 0)."""


class Judge(ABC):
    name: str
    label: str  # how reports name the judge

    @abstractmethod
    def align_columns(self, response_columns: list[str], gold_columns: list[str]) -> dict[str, str]:
        """Response column name -> the gold column it means; unmatched names left out."""

    @abstractmethod
    def align_keys(self, column: str, response_values: list[str], gold_values: list[str]) -> dict[str, str]:
        """Response key value -> the gold key value naming the same entity; unmatched left out."""

    @abstractmethod
    def grade(self, column: str, criterion: str, pairs: list[tuple[str, str]]) -> list[float]:
        """1.0 or 0.0 for every (response, gold) pair of one column."""

    def grade_answer(self, question: str, response: str, references: list[str]) -> float:
        """1.0 when a QA task's (boxed) answer is correct against any accepted reference answer."""
        raise JudgeError(f"the {self.name} judge cannot grade QA answers")


# ---- the offline judge -------------------------------------------------------------------------


def canonical(text: str) -> str:
    """Unicode-normalised (NFKC: full-width letters and digits become ASCII), case-folded, without
    whitespace, `*` and backticks (markdown emphasis and code)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and ch not in "*`")


def _align_by_canonical(response_values: list[str], gold_values: list[str]) -> dict[str, str]:
    gold_by_form: dict[str, str] = {}
    for value in gold_values:
        gold_by_form.setdefault(canonical(value), value)
    mapping = {}
    for value in response_values:
        match = gold_by_form.get(canonical(value))
        if match is not None:
            mapping[value] = match
    return mapping


# A deep-QA answer's normal form: lower-cased (NFKC), punctuation and the articles a/an/the removed,
# then every space, as `canonical` does for table cells ("J. R. R." is "JRR").
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "，。、；：？！“”‘’（）《》")


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION)
    return "".join(_ARTICLES.sub(" ", text).split())


def exact_correct(response: str, references: list[str]) -> float:
    answer = normalize_answer(response)
    return 1.0 if answer and any(answer == normalize_answer(ref) for ref in references) else 0.0


class ExactJudge(Judge):
    """Normalised equality (see `canonical`) for alignment and grading: no synonyms, no
    translations, no partial credit. Offline and deterministic."""

    name = "exact"
    label = "exact-judge (normalised equality, offline; not the official GPT-4.1 judge)"

    def align_columns(self, response_columns, gold_columns):
        return _align_by_canonical(response_columns, gold_columns)

    def align_keys(self, column, response_values, gold_values):
        return _align_by_canonical(response_values, gold_values)

    def grade(self, column, criterion, pairs):
        return [1.0 if canonical(response) == canonical(gold) else 0.0 for response, gold in pairs]

    def grade_answer(self, question, response, references):
        return exact_correct(response, references)


# ---- the LLM judge -----------------------------------------------------------------------------

ALIGN_PROMPT = """You are matching two lists of strings that come from two tables about the same topic.
List A holds {what} as a model wrote them; list B holds the same kind of strings from the reference table.

For each string in A, decide whether some string in B denotes the same thing: the same entity or \
the same column, written differently (spelling, abbreviation, translation, formatting such as \
markdown, capitalisation or punctuation). Match by meaning, never by position in the list. Two \
identical strings always match. Leave out every string of A that has no counterpart in B; do not \
guess.

List A:
{response}

List B:
{reference}

Think it through briefly, then end your answer with one fenced json block that maps each matched \
string of A, copied exactly, to its counterpart in B, copied exactly:
```json
{{"string from A": "string from B"}}
```"""

GRADE_PROMPT = """You are grading cells of a table written by a model against a reference table.
Column: {column}

Grading criterion for this column:
<criterion>
{criterion}
</criterion>

Each item below pairs the model's cell ("response") with the reference cell ("reference"). Cells \
were normalised first (lower-cased, spaces removed), so ignore such differences. Grade every item \
on its own: 1 if the response is correct by the criterion, else 0. No partial credit.

Items:
{items}

Reason briefly about the items, then end your answer with one fenced json block that gives every \
item id its grade, 0 or 1:
```json
{{"p1": 1, "p2": 0}}
```"""


QA_PROMPT = """You are grading the answer a model gave to a question, against the reference answer.

Question:
{question}

Reference answer (any one of these is correct):
{references}

Model's answer:
{response}

The model's answer is correct when it names the same thing as a reference answer, even if worded, \
abbreviated or formatted differently; it is incorrect when it is wrong, incomplete, hedges between \
several answers or names something more or less specific than the reference. Reason briefly, then \
end with one fenced json block:
```json
{{"correct": true}}
```"""


class MalformedAnswer(Exception):
    """The judge's reply holds no usable answer: asked again, as a failed attempt."""


LAST_JSON_BLOCK = re.compile(r"```json\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def last_json_block(content: str) -> object:
    """The JSON value of the last ```json fenced block of a reply."""
    blocks = LAST_JSON_BLOCK.findall(content or "")
    if not blocks:
        raise MalformedAnswer("no ```json block in the answer")
    try:
        return json.loads(blocks[-1])
    except json.JSONDecodeError as exc:
        raise MalformedAnswer(f"the last json block does not parse: {exc.msg}") from None


def parse_mapping(content: str) -> dict[str, str]:
    answer = last_json_block(content)
    if not isinstance(answer, dict):
        raise MalformedAnswer("the alignment answer is not a JSON object")
    mapping = {}
    for origin, target in answer.items():
        if target is None:  # "no counterpart", said explicitly
            continue
        if isinstance(target, (dict, list)):
            raise MalformedAnswer(f"alignment of {origin!r} is not a string")
        mapping[origin] = target if isinstance(target, str) else json.dumps(target)
    return mapping


def parse_grades(content: str, count: int) -> list[float]:
    answer = last_json_block(content)
    if not isinstance(answer, dict):
        raise MalformedAnswer("the grading answer is not a JSON object")
    grades = []
    for number in range(1, count + 1):
        value = answer.get(f"p{number}")
        if isinstance(value, str):
            value = value.strip()
        if value not in (0, 1, "0", "1"):  # True/False and 0.0/1.0 compare equal to 0/1
            raise MalformedAnswer(f"item p{number} has no 0/1 grade: {value!r}")
        grades.append(float(value))
    return grades


def parse_verdict(content: str) -> float:
    answer = last_json_block(content)
    verdict = answer.get("correct") if isinstance(answer, dict) else None
    if verdict not in (True, False):  # 1/0 compare equal to True/False and are accepted
        raise MalformedAnswer(f"the verdict is not true or false: {verdict!r}")
    return float(verdict)


def request_hash(model: str, messages: list[dict]) -> str:
    """The cache key of one judge request: sha256 of the model and the messages."""
    payload = json.dumps({"model": model, "messages": messages}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LLMJudge(Judge):
    """An OpenAI-compatible chat completions endpoint; one user message per call.

    The answer is read from the last ```json block of the reply. A failed attempt (network error,
    timeout, HTTP 408/429/5xx, a reply without a usable answer) is retried after waits that double
    from `retry_wait_s` up to `max_wait_s`, `max_retries` times; then JudgeError. Other HTTP errors
    (a bad key, an unknown model) raise JudgeError at once. Usable answers are cached on disk under
    the request hash, so scoring the same responses again makes no request.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str,
        max_retries: int = 8,
        timeout_s: float = 120.0,
        cache_dir: str | Path | None = None,
        retry_wait_s: float = 1.0,
        max_wait_s: float = 60.0,
    ):
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.retry_wait_s = retry_wait_s
        self.max_wait_s = max_wait_s
        self.label = f"llm-judge ({model})"
        self.http_requests = 0  # counters for reports: requests sent, answers read from the cache
        self.cache_hits = 0
        self._lock = threading.Lock()

    # -- the three questions

    def align_columns(self, response_columns, gold_columns):
        return self._align("column names", response_columns, gold_columns)

    def align_keys(self, column, response_values, gold_values):
        return self._align(f"the values of the key column '{column}'", response_values, gold_values)

    def _align(self, what: str, response_values: list[str], gold_values: list[str]) -> dict[str, str]:
        prompt = ALIGN_PROMPT.format(
            what=what,
            response=json.dumps(response_values, ensure_ascii=False),
            reference=json.dumps(gold_values, ensure_ascii=False),
        )
        return self.ask(prompt, parse_mapping)

    def grade(self, column, criterion, pairs):
        if not pairs:
            return []
        items = {f"p{number}": {"response": response, "reference": gold}
                 for number, (response, gold) in enumerate(pairs, start=1)}
        prompt = GRADE_PROMPT.format(
            column=column, criterion=criterion, items=json.dumps(items, ensure_ascii=False, indent=1)
        )
        return self.ask(prompt, lambda content: parse_grades(content, len(pairs)))

    def grade_answer(self, question, response, references):
        prompt = QA_PROMPT.format(question=question, response=response,
                                  references=json.dumps(references, ensure_ascii=False))
        return self.ask(prompt, parse_verdict)

    # -- one request, cached and retried

    def ask(self, prompt: str, parse):
        """parse(reply text) for one user message: from the cache, else from the endpoint."""
        messages = [{"role": "user", "content": prompt}]
        key = request_hash(self.model, messages)
        cached = self._cache_read(key)
        if cached is not None:
            try:
                answer = parse(cached)
                with self._lock:
                    self.cache_hits += 1
                return answer
            except MalformedAnswer:
                pass  # an entry our parser no longer accepts: ask again

        def attempt() -> tuple[str, object]:
            content = self._post(messages)
            return content, parse(content)

        try:
            content, answer = with_retries(attempt, self.max_retries, self.retry_wait_s, self.max_wait_s,
                                           retry_on=(TransientError, MalformedAnswer))
        except RetriesExhausted as exc:
            raise JudgeError(f"{self.model}: no usable answer after {self.max_retries + 1} attempts ({exc})") from None
        self._cache_write(key, messages, content)
        return answer

    def _post(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0.0}
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with self._lock:
            self.http_requests += 1
        reply = send("POST", self.url, json=body, headers=headers, timeout_s=self.timeout_s)
        if reply.status_code != 200:
            raise JudgeError(f"{self.model}: HTTP {reply.status_code} from {self.url}: {reply.text[:200]}")
        try:
            content = reply.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError("the reply is not a chat completion") from None
        if not isinstance(content, str):
            raise TransientError("the reply has no text content")
        return content

    # -- the disk cache: one JSON file per request hash

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_read(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable entry: ask again, the write replaces it

    def _cache_write(self, key: str, messages: list[dict], content: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"model": self.model, "messages": messages, "content": content}
        # Written aside, then renamed into place: a concurrent reader sees the old state or the whole
        # entry, and two writers of the same key both write the same answer.
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(entry, tmp, ensure_ascii=False)
        os.replace(tmp.name, path)


# ---- from the config ---------------------------------------------------------------------------


def _setting(cfg, key: str, default=None):
    value = cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)
    return default if value is None else value


def make_judge(judge_cfg) -> Judge:
    """The judge a `judge` config node names (conf.JudgeConfig: name exact|llm, model, base_url,
    api_key_env, max_retries, timeout_s, cache_dir)."""
    name = _setting(judge_cfg, "name")
    if name == "exact":
        return ExactJudge()
    if name != "llm":
        raise WideseekError(f"unknown judge.name {name!r} (known: exact, llm)")
    key_env = _setting(judge_cfg, "api_key_env", "OPENAI_API_KEY")
    api_key = os.environ.get(key_env)
    if not api_key:
        raise WideseekError(
            f"judge=llm needs an API key in the environment variable {key_env} (judge.api_key_env); "
            "set it, or score offline with judge=exact"
        )
    return LLMJudge(
        model=_setting(judge_cfg, "model", "gpt-4.1-2025-04-14"),
        base_url=_setting(judge_cfg, "base_url", "https://api.openai.com/v1"),
        api_key=api_key,
        max_retries=int(_setting(judge_cfg, "max_retries", 8)),
        timeout_s=float(_setting(judge_cfg, "timeout_s", 120.0)),
        cache_dir=_setting(judge_cfg, "cache_dir"),
    )
