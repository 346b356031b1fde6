"""Text generation for task synthesis: a small protocol, and an on-disk cache of every call.

The synthesis pipeline (tasks/synthesis.py) asks for text through `TextGenerator.generate`, a batch
of TextRequests in, one TextReply per request out. The job (wideseek_exp/jobs/data.py)
implements it on any Engine; tests implement it with a deterministic double. Nothing here imports
model code.

CachedGenerator wraps a generator: a request whose key, sha256 of (stage, prompt, sampling, model),
is in the cache file is answered from it; the others go to the generator in slices of at most
`max_concurrency` and each answer is appended (flushed and fsynced) as soon as its slice returns. A
rerun is free, and an interrupted run loses at most the slice in flight. Tokens, calls and cost are
counted per stage.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from wideseek_exp.trialstore import append_lines, read_complete_lines

CACHE_FILE = "llm_cache.jsonl"


@dataclass(frozen=True)
class TextRequest:
    stage: str  # query | answer | baseline: what the call is for (counted per stage)
    prompt: str  # one user message
    temperature: float
    max_tokens: int
    seed: int  # tells repeated samples of one prompt apart (the two answers)


@dataclass
class TextReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # why there is no text: the generator could not take the prompt (longer than its model's context)
    refused: str | None = None


class TextGenerator(Protocol):
    model: str  # part of the cache key: another model's answers are not reused

    def generate(self, requests: list[TextRequest]) -> list[TextReply]:
        """One reply per request, in order."""


@dataclass
class StageUsage:
    calls: int = 0  # every request, cached or not
    cached_calls: int = 0  # answered from the cache (no generation this run)
    prompt_tokens: int = 0  # over all calls: what the data cost to make, whichever run paid it
    completion_tokens: int = 0

    def cost(self, price_in: float | None, price_out: float | None) -> float | None:
        if price_in is None and price_out is None:
            return None
        return self.prompt_tokens * (price_in or 0.0) + self.completion_tokens * (price_out or 0.0)


def request_key(request: TextRequest, model: str) -> str:
    payload = {**asdict(request), "model": model}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedGenerator:
    def __init__(self, inner: TextGenerator, cache_file: Path, max_concurrency: int = 16):
        self.inner = inner
        self.model = inner.model
        self.path = Path(cache_file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_concurrency = max(1, int(max_concurrency))
        self.cache: dict[str, TextReply] = {}
        for entry in read_complete_lines(self.path):  # a torn last line is cut off here
            self.cache[entry["key"]] = TextReply(entry["text"], entry["prompt_tokens"], entry["completion_tokens"],
                                                 entry.get("refused"))
        self.usage: dict[str, StageUsage] = defaultdict(StageUsage)

    def generate(self, requests: list[TextRequest]) -> list[TextReply]:
        keys = [request_key(request, self.model) for request in requests]
        missing: dict[str, TextRequest] = {}
        for key, request in zip(keys, requests):
            if key not in self.cache:
                missing.setdefault(key, request)
        pending = list(missing.items())
        for start in range(0, len(pending), self.max_concurrency):
            batch = pending[start: start + self.max_concurrency]
            replies = self.inner.generate([request for _, request in batch])
            if len(replies) != len(batch):
                raise RuntimeError(f"the generator gave {len(replies)} replies for {len(batch)} requests")
            self._append([(key, request, reply) for (key, request), reply in zip(batch, replies)])
        out = []
        for key, request in zip(keys, requests):
            reply = self.cache[key]
            usage = self.usage[request.stage]
            usage.calls += 1
            usage.cached_calls += key not in missing
            usage.prompt_tokens += reply.prompt_tokens
            usage.completion_tokens += reply.completion_tokens
            out.append(reply)
        return out

    def _append(self, entries: list[tuple[str, TextRequest, TextReply]]) -> None:
        append_lines(self.path, [{"key": key, "stage": request.stage, "model": self.model, **asdict(reply)}
                                  for key, request, reply in entries])
        for key, _, reply in entries:
            self.cache[key] = reply
