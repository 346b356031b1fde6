"""Generation through an OpenAI-compatible HTTP server (`vllm serve`, SGLang, a hosted API).

The engine interface is token-in/token-out, so each prompt goes to the legacy /v1/completions endpoint,
one request per prompt, at most `max_concurrency` in flight at once, each retried on transient failures
(wideseek_exp.httpretry) with a per-request timeout.

`prompt_format` says how much the server can do:
  token_ids  the prompt is sent as a list of token ids (vLLM and SGLang accept it) and the reply's tokens
             are asked for as ids (vLLM's `return_tokens_as_token_ids`), with their sampling logprobs:
             exactly the ids the model produced, as engine=hf returns them.
  text       for servers with a text /v1/completions: the prompt is decoded to text and the reply text is
             tokenised again with the model's tokenizer. Those ids need not be the ones the server
             sampled, and there are no logprobs: every logprob is NaN, so nothing can train on them.
  chat       for hosted chat APIs (API baselines such as DeepSeek-R1): the decoded prompt is split back
             into its chat turns (system, user, assistant; tool results are user turns in the Qwen3
             format) and sent to /v1/chat/completions; the reply is tokenised again as for `text`, with a
             reasoning model's separate reasoning put back in front as a <think> block.
A token_ids server that answers with text tokens only (no ids) is treated as `text` for that reply.
"""

from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams
from wideseek_exp.httpretry import RetriesExhausted, TransientError, send, with_retries

PROMPT_FORMATS = ("token_ids", "text", "chat")
_TOKEN_ID = re.compile(r"token_id:(\d+)$")
_CHAT_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(<\|im_end\|>|$)", re.S)


def chat_messages(prompt_text: str) -> list[dict]:
    """The chat turns of a prompt rendered in the Qwen3 format, without the open assistant turn at its end
    (the generation prompt, possibly holding an empty think block)."""
    turns = [(role, content, closed) for role, content, closed in _CHAT_TURN.findall(prompt_text)]
    if turns and turns[-1][0] == "assistant" and not turns[-1][2]:
        turns.pop()
    if not turns:
        raise WideseekError("engine.prompt_format=chat: the prompt has no <|im_start|>role turns to send as messages")
    return [{"role": role, "content": content} for role, content, _ in turns]


class OpenAIEngine(Engine):
    def __init__(self, tokenizer, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 32,
                 timeout_s: float = 600.0, max_retries: int = 5, retry_wait_s: float = 1.0, max_wait_s: float = 60.0,
                 prompt_format: str = "token_ids"):
        if prompt_format not in PROMPT_FORMATS:
            raise WideseekError(f"config key 'engine.prompt_format' must be one of {PROMPT_FORMATS} (got {prompt_format!r})")
        if max_concurrency < 1:
            raise WideseekError(f"config key 'engine.max_concurrency' must be at least 1 (got {max_concurrency})")
        self.tokenizer = tokenizer
        self.url = base_url.rstrip("/") + ("/chat/completions" if prompt_format == "chat" else "/completions")
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.retry_wait_s, self.max_wait_s = retry_wait_s, max_wait_s
        self.prompt_format = prompt_format
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.end_of_turn_id is None or self.end_of_turn_id == tokenizer.unk_token_id:
            self.end_of_turn_id = tokenizer.eos_token_id
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="openai-engine")
        self.requests_sent = 0  # attempts, retries included (for reports and tests)
        self._count_lock = threading.Lock()

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise WideseekError(f"prompt {index} is empty")
        # One seed per prompt, so that equal prompts in one call still sample differently.
        seeds = [None if sampling.seed is None else (sampling.seed + index) % 2**31 for index in range(len(prompts))]
        return list(self.pool.map(lambda args: self._complete(*args, sampling), zip(prompts, seeds)))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- one prompt ----

    def request_body(self, prompt: list[int], sampling: SamplingParams, seed: int | None) -> dict:
        body = {"model": self.model, "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "n": 1}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if seed is not None:
            body["seed"] = seed
        if self.prompt_format == "token_ids":
            body.update(prompt=list(prompt), logprobs=0, return_tokens_as_token_ids=True, skip_special_tokens=False,
                        include_stop_str_in_output=True)
        elif self.prompt_format == "chat":
            body["messages"] = chat_messages(self.tokenizer.decode(prompt, skip_special_tokens=False))
        else:
            body["prompt"] = self.tokenizer.decode(prompt, skip_special_tokens=False)
        return body

    def _complete(self, prompt: list[int], seed: int | None, sampling: SamplingParams) -> Completion:
        body = self.request_body(prompt, sampling, seed)

        def attempt() -> dict:
            with self._count_lock:
                self.requests_sent += 1
            reply = send("POST", self.url, json=body, headers=self.headers, timeout_s=self.timeout_s)
            if reply.status_code != 200:
                raise WideseekError(f"engine=openai: HTTP {reply.status_code} from {self.url}: {reply.text[:200]}")
            try:
                choice = reply.json()["choices"][0]
                return chat_choice_as_text(choice) if self.prompt_format == "chat" else choice
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise TransientError(f"the reply from {self.url} is not a completion") from None

        try:
            choice = with_retries(attempt, self.max_retries, self.retry_wait_s, self.max_wait_s)
        except RetriesExhausted as error:
            raise WideseekError(f"engine=openai: no completion from {self.url} after {self.max_retries + 1} "
                                f"attempts ({error})") from None
        return self.completion(choice, sampling)

    def completion(self, choice: dict, sampling: SamplingParams) -> Completion:
        """A Completion from one `choices[i]` of a /v1/completions reply."""
        text = choice.get("text") or ""
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        stop_reason = choice.get("stop_reason", choice.get("matched_stop"))  # vLLM, SGLang
        if finish == "stop":
            stop_reason = stop_reason if isinstance(stop_reason, str) else "eos"
        else:
            stop_reason = None
        token_ids, logprobs = self._tokens_with_logprobs(choice.get("logprobs"))
        if token_ids is None:
            token_ids = self.tokenizer.encode(text, add_special_tokens=False)
            if stop_reason == "eos" and self.end_of_turn_id is not None:
                token_ids.append(self.end_of_turn_id)  # hosted APIs drop the end-of-turn token from the text
            logprobs = [math.nan] * len(token_ids)
        return Completion(token_ids, logprobs, finish, text, stop_reason)

    def _tokens_with_logprobs(self, logprobs: dict | None) -> tuple[list[int] | None, list[float] | None]:
        """(ids, logprobs) when the server gave every token as an id with its logprob, else (None, None)."""
        if self.prompt_format != "token_ids" or not isinstance(logprobs, dict):
            return None, None
        tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
        if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
            return None, None
        ids = []
        for token in tokens:
            match = _TOKEN_ID.match(token) if isinstance(token, str) else None
            if match is None:
                return None, None
            ids.append(int(match.group(1)))
        return ids, [math.nan if value is None else float(value) for value in values]


def chat_choice_as_text(choice: dict) -> dict:
    """A /v1/chat/completions choice in the shape of a text completion choice."""
    message = choice["message"]
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        text = f"<think>\n{reasoning.strip()}\n</think>\n\n{text.lstrip()}"
    return {"text": text, "finish_reason": choice.get("finish_reason"), "stop_reason": choice.get("stop_reason")}
