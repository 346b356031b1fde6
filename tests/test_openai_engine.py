"""engine=openai against a real HTTP server on 127.0.0.1 that imitates vLLM's /v1/completions: token ids in
and out with logprobs, text-only replies as hosted APIs give, 429/500/timeouts, the concurrency limit."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_http import send_reply, serving
from scripted_engine import tiny_tokenizer

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import SamplingParams
from wideseek_exp.engines.openai import OpenAIEngine


def reply_ids(prompt: list[int], max_tokens: int) -> list[int]:
    """What the fake model answers: a function of the prompt, so each prompt's reply is recognisable."""
    return [(sum(prompt) + step) % 50 + 10 for step in range(min(max_tokens, 4))]


class FakeCompletionsServer:
    """POST /v1/completions. `script` holds the behaviour of the next requests ("429", "500", "401", "slow",
    "text"); when it runs out, `default` applies ("ok": token ids with logprobs)."""

    def __init__(self, delay_s: float = 0.0):
        self.script: list[str] = []
        self.default = "ok"
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    mode = fake.script.pop(0) if fake.script else fake.default
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay_s)
                    self._answer(mode, body)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _answer(self, mode, body):
                if mode == "slow":
                    time.sleep(0.5)
                    mode = "ok"
                if mode in ("429", "500", "401"):
                    self._send(int(mode), {"error": "scripted"})
                    return
                if self.path.endswith("/chat/completions"):  # a hosted chat API: text out, reasoning apart
                    roles = ",".join(message["role"] for message in body["messages"])
                    message = {"role": "assistant", "content": f"Seen {roles}.", "reasoning_content": "Because."}
                    self._send(200, {"id": "c", "object": "chat.completion",
                                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
                    return
                if mode == "text":
                    choice = {"text": "plain words", "finish_reason": "stop", "logprobs": None}
                else:
                    ids = reply_ids(body["prompt"], body["max_tokens"])
                    finish = "length" if len(ids) == body["max_tokens"] else "stop"
                    choice = {"text": "".join(f"<{i}>" for i in ids), "finish_reason": finish, "stop_reason": None,
                              "logprobs": {"tokens": [f"token_id:{i}" for i in ids],
                                           "token_logprobs": [-0.25 * (k + 1) for k in range(len(ids))]}}
                self._send(200, {"id": "c", "object": "text_completion", "choices": [{"index": 0, **choice}]})

            def _send(self, status, payload):
                send_reply(self, status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def server():
    fake = FakeCompletionsServer()
    with serving(fake.server):
        yield fake


def engine_for(server, **overrides) -> OpenAIEngine:
    settings = {"base_url": server.base_url, "model": "served-model", "api_key": "k", "max_concurrency": 4,
                "timeout_s": 5.0, "max_retries": 3, "retry_wait_s": 0.01, "max_wait_s": 0.02}
    return OpenAIEngine(tiny_tokenizer(), **{**settings, **overrides})


PROMPTS = [[5, 6, 7], [100, 200], [9] * 10, [5, 6, 7]]


def test_token_ids_and_logprobs_come_back_in_prompt_order(server):
    engine = engine_for(server)
    completions = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.7, seed=11))
    for prompt, completion in zip(PROMPTS, completions):
        assert completion.token_ids == reply_ids(prompt, 8)
        assert completion.logprobs == [-0.25, -0.5, -0.75, -1.0]
        assert completion.finish_reason == "stop" and completion.stop_reason == "eos"
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/completions" and server.requests[0]["auth"] == "Bearer k"
    assert body["model"] == "served-model" and body["return_tokens_as_token_ids"] is True
    assert body["temperature"] == 0.7 and body["max_tokens"] == 8 and body["logprobs"] == 0
    # equal prompts get different seeds, so they can sample differently
    seeds = sorted(request["body"]["seed"] for request in server.requests)
    assert seeds == [11, 12, 13, 14]


def test_length_finish(server):
    completion = engine_for(server).generate([[1, 2]], SamplingParams(max_new_tokens=2))[0]
    assert completion.finish_reason == "length" and completion.stop_reason is None and len(completion.token_ids) == 2


def test_429_and_500_and_timeouts_are_retried(server):
    server.script = ["429", "500", "slow"]
    engine = engine_for(server, max_concurrency=1, timeout_s=0.2)
    completion = engine.generate([[3, 4]], SamplingParams(max_new_tokens=8))[0]
    assert completion.token_ids == reply_ids([3, 4], 8)
    assert engine.requests_sent == 4


def test_a_server_that_keeps_failing_gives_a_one_line_error(server):
    server.default = "500"
    with pytest.raises(WideseekError, match=r"no completion from http://127\.0\.0\.1:\d+/v1/completions after 3 attempts"):
        engine_for(server, max_retries=2).generate([[3]], SamplingParams())


def test_a_wrong_key_is_not_retried(server):
    server.script = ["401"]
    engine = engine_for(server)
    with pytest.raises(WideseekError, match="HTTP 401"):
        engine.generate([[3]], SamplingParams())
    assert engine.requests_sent == 1


def test_text_only_replies_are_retokenised_without_logprobs(server):
    server.default = "text"
    tokenizer = tiny_tokenizer()
    for prompt_format in ("token_ids", "text"):
        completion = engine_for(server, prompt_format=prompt_format).generate([[40, 41]], SamplingParams())[0]
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert completion.token_ids == tokenizer.encode("plain words", add_special_tokens=False) + [end_of_turn]
        assert len(completion.logprobs) == len(completion.token_ids) and all(map(math.isnan, completion.logprobs))
    text_body = server.requests[-1]["body"]
    assert text_body["prompt"] == tokenizer.decode([40, 41], skip_special_tokens=False)
    assert "return_tokens_as_token_ids" not in text_body  # hosted APIs reject unknown fields


def test_concurrency_is_limited_but_used():
    fake = FakeCompletionsServer(delay_s=0.05)
    with serving(fake.server):
        engine = engine_for(fake, max_concurrency=3)
        completions = engine.generate([[i] for i in range(12)], SamplingParams(max_new_tokens=4))
        assert [c.token_ids for c in completions] == [reply_ids([i], 4) for i in range(12)]
        assert 1 < fake.max_in_flight <= 3


def test_bad_prompt_format_names_the_key(server):
    with pytest.raises(WideseekError, match="engine.prompt_format"):
        engine_for(server, prompt_format="messages")


def test_chat_format_sends_the_prompt_turns_as_messages(server):
    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "You are a lead agent."}, {"role": "user", "content": "List the airports."},
                {"role": "assistant", "content": "<tool_call>\n{\"name\": \"search\"}\n</tool_call>"},
                {"role": "user", "content": "<tool_response>\nAldova Airport\n</tool_response>"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    (completion,) = engine_for(server, prompt_format="chat").generate([prompt], SamplingParams(max_new_tokens=16))

    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user", "assistant", "user"]
    assert request["body"]["messages"][1]["content"] == "List the airports."
    assert "Aldova Airport" in request["body"]["messages"][3]["content"]
    # the reply, with the reasoning put back as a think block, tokenised with the model's tokenizer
    text = "<think>\nBecause.\n</think>\n\nSeen system,user,assistant,user."
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert completion.text == text
    assert completion.token_ids == tokenizer.encode(text, add_special_tokens=False) + [end_of_turn]
    assert all(math.isnan(value) for value in completion.logprobs)


def test_chat_format_refuses_a_prompt_without_turns(server):
    tokenizer = tiny_tokenizer()
    with pytest.raises(WideseekError, match="prompt_format=chat"):
        engine_for(server, prompt_format="chat").generate([tokenizer.encode("no turns here")], SamplingParams())


def test_the_page_summariser_can_ask_its_own_engine(server):
    """agent.summarizer=llm with +engine@summarizer_engine=openai: the access tool's summaries come from the
    server, while the agents run on their own engine."""
    from hydra import compose, initialize_config_dir
    from scripted_engine import REPO, TABLE_ANSWER, FakeSearch, ScriptedEngine, make_task, tool_call, world_config

    from wideseek_exp.agents import run_rollouts
    from wideseek_exp.agents.summarize import make_helper_summarizer

    world_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "tracking.enabled=false", "model=tiny_random", "agent.summarizer=llm", "subagents=1",
            "+engine@summarizer_engine=openai", f"summarizer_engine.base_url={server.base_url}"])
    summarizer = make_helper_summarizer(cfg)
    assert isinstance(summarizer.engine, OpenAIEngine)

    def script(view):
        if view.role == "lead":
            return (tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find the code"}]}) if view.turn == 1
                    else TABLE_ANSWER)
        assert view.role == "subagent"  # the agents' engine never sees a summary prompt
        if view.turn == 1:
            return tool_call("search", {"queries": [{"query": "Aldova airport", "count": 1}]})
        if view.turn == 2:
            url = view.last_tool_result.split("URL: ", 1)[1].split()[0]
            return tool_call("access", {"urls": [{"url": url, "info_to_extract": "IATA code"}]})
        return "Report: done."

    tokenizer = tiny_tokenizer()
    agents = ScriptedEngine(tokenizer, script)
    (trajectory,) = run_rollouts([make_task()], 1, agents, FakeSearch(), tokenizer, cfg.agent, cfg.search, seed=3,
                                 summarizer=summarizer)
    (request,) = server.requests  # one summary, one request
    assert "Extract this information from the page: IATA code" in tokenizer.decode(request["body"]["prompt"])
    summary = tokenizer.decode(reply_ids(request["body"]["prompt"], request["body"]["max_tokens"]))
    assert summary in trajectory.subagents()[0].turns[1].tool_result
    assert trajectory.generated_tokens["summarizer"] == 4


def test_no_helper_summariser_unless_configured():
    from scripted_engine import world_config

    from wideseek_exp.agents.summarize import make_helper_summarizer

    cfg = world_config()
    assert make_helper_summarizer(cfg) is None  # extractive by default; llm alone uses the subagents' engine
