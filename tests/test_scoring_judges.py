"""Judges: the exact judge, and the LLM judge against a real OpenAI-style HTTP server on 127.0.0.1
(answers, retries, failures, malformed answers, the disk cache, the config factory)."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_http import send_reply, serving
from omegaconf import OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.conf import JudgeConfig
from wideseek_exp.scoring.judges import (
    ExactJudge,
    JudgeError,
    LLMJudge,
    canonical,
    last_json_block,
    make_judge,
    parse_grades,
    request_hash,
)
from wideseek_exp.scoring.widesearch import score_response
from wideseek_exp.tasks.record import TaskRecord

# ---- the exact judge ----------------------------------------------------------------------------


def test_canonical_form():
    assert canonical(" **Ｔｏｋｙｏ**  Tower ") == "tokyotower"
    assert canonical("`Straße`") == "strasse"


def test_exact_judge_aligns_by_canonical_form_and_leaves_the_rest_out():
    judge = ExactJudge()
    assert judge.align_columns(["**country**", "capital", "notes"], ["country", "capital"]) == {
        "**country**": "country", "capital": "capital"}
    assert judge.align_keys("country", ["FRANCE", "USA"], ["France", "United States"]) == {"FRANCE": "France"}
    assert judge.grade("c", "anything", [("Paris", "paris"), ("Lyon", "Paris")]) == [1.0, 0.0]


# ---- a fake OpenAI-compatible endpoint ----------------------------------------------------------


def oracle(prompt: str) -> str:
    """Answers the judge's prompts the way an exact grader would: alignment of identical strings
    after lower-casing, grade 1 for identical pairs, a QA answer correct when it equals a reference
    after lower-casing."""
    if "Model's answer:" in prompt:
        references = json.loads(re.search(r"correct\):\n(.*)\n\nModel's answer:", prompt).group(1))
        answer = re.search(r"Model's answer:\n(.*)\n\nThe model's answer", prompt, re.DOTALL).group(1)
        verdict = answer.lower() in {ref.lower() for ref in references}
        return "Compared.\n```json\n" + json.dumps({"correct": verdict}) + "\n```"
    if "List A:" in prompt:
        a = json.loads(re.search(r"List A:\n(.*)\n\nList B:", prompt).group(1))
        b = json.loads(re.search(r"List B:\n(.*)\n\nThink", prompt).group(1))
        lowered = {value.lower(): value for value in b}
        mapping = {value: lowered[value.lower()] for value in a if value.lower() in lowered}
        return "Matched by name.\n```json\n" + json.dumps(mapping, ensure_ascii=False) + "\n```"
    items = json.loads(re.search(r"Items:\n(.*)\n\nReason", prompt, re.DOTALL).group(1))
    grades = {key: int(item["response"] == item["reference"]) for key, item in items.items()}
    return "Draft: ```json\n{\"p1\": 0}\n```\nFinal:\n```json\n" + json.dumps(grades) + "\n```"


class FakeEndpoint:
    """POST /v1/chat/completions. `script` holds the behaviour of the next requests, one entry
    each ("500", "401", "malformed", "slow", "not_json"); when it runs out, `default` applies
    ("ok": the oracle answers)."""

    def __init__(self):
        self.script: list[str] = []
        self.default = "ok"
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append({"path": self.path, "body": body,
                                              "auth": self.headers.get("Authorization")})
                    mode = endpoint.script.pop(0) if endpoint.script else endpoint.default
                if mode == "slow":
                    time.sleep(0.6)
                    mode = "ok"
                if mode in ("500", "401"):
                    self._send(int(mode), b'{"error": "scripted"}')
                    return
                if mode == "not_json":
                    self._send(200, b"<html>gateway</html>")
                    return
                content = "I think they match." if mode == "malformed" else oracle(body["messages"][-1]["content"])
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                self._send(200, json.dumps(reply).encode())

            def _send(self, status, payload):
                send_reply(self, status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)


@pytest.fixture
def endpoint():
    fake = FakeEndpoint()
    with serving(fake.server):
        yield fake


def llm_judge(endpoint, tmp_path=None, **overrides) -> LLMJudge:
    settings = {"model": "judge-model", "base_url": endpoint.base_url, "api_key": "test-key", "max_retries": 3,
                "timeout_s": 5.0, "retry_wait_s": 0.01, "max_wait_s": 0.02,
                "cache_dir": tmp_path / "cache" if tmp_path else None}
    return LLMJudge(**{**settings, **overrides})


FREE = {"preprocess": ["norm_str"], "metric": ["llm_judge"], "criterion": "same entity"}
TASK = TaskRecord(
    instance_id="t",
    query="q",
    language="en",
    unique_columns=["film"],
    required=["film", "director"],
    eval_pipeline={"film": {"preprocess": ["norm_str"], "metric": ["exact_match"]}, "director": FREE},
    gold_columns=["Film", "Director"],
    gold_rows=[["Hero", "Zhang Yimou"], ["Yellow Earth", "Chen Kaige"]],
)
# Key alignment maps "HERO" onto "Hero"; the graded pairs are ("zhangyimou", "zhangyimou") -> 1
# and ("fengxiaogang", "chenkaige") -> 0. n = 2, P = G = 2: tp_item = 2 + 1, tp_row = 1.
RESPONSE = "```markdown\n| Film | Director |\n|---|---|\n| HERO | Zhang Yimou |\n| Yellow Earth | Feng Xiaogang |\n```"


def assert_expected(score):
    assert not score.judge_error and score.reason == ""
    assert score.item_f1 == pytest.approx(3 / 4) and score.row_f1 == pytest.approx(1 / 2)


# ---- the LLM judge ------------------------------------------------------------------------------


def test_llm_judge_scores_through_the_chat_api(endpoint):
    assert_expected(score_response(RESPONSE, TASK, llm_judge(endpoint)))
    assert endpoint.count == 2  # one key alignment, one grading call (columns already match)
    for request in endpoint.requests:
        assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer test-key"
        assert request["body"]["model"] == "judge-model"
        assert [m["role"] for m in request["body"]["messages"]] == ["user"]  # one user message per call
    grading = endpoint.requests[1]["body"]["messages"][0]["content"]
    assert "same entity" in grading and "fengxiaogang" in grading and "chenkaige" in grading


def test_column_alignment_through_the_api(endpoint):
    judge = llm_judge(endpoint)
    assert judge.align_columns(["FILM", "notes"], ["film", "director"]) == {"FILM": "film"}


def test_server_errors_are_retried_until_an_answer(endpoint):
    endpoint.script = ["500", "500", "not_json"]
    assert_expected(score_response(RESPONSE, TASK, llm_judge(endpoint)))
    assert endpoint.count == 3 + 2


def test_timeouts_are_retried(endpoint):
    endpoint.script = ["slow"]
    assert_expected(score_response(RESPONSE, TASK, llm_judge(endpoint, timeout_s=0.2)))
    assert endpoint.count == 3


def test_always_failing_endpoint_gives_a_judge_error_trial(endpoint):
    endpoint.default = "500"
    score = score_response(RESPONSE, TASK, llm_judge(endpoint, max_retries=2))
    assert score.judge_error and score.reason.startswith("judge error:") and "3 attempts" in score.reason
    assert (score.item_f1, score.row_f1, score.success) == (0.0, 0.0, 0.0)
    assert endpoint.count == 3  # the first call failed for good: scoring stopped there


def test_malformed_answer_is_retried(endpoint):
    endpoint.script = ["malformed"]
    assert_expected(score_response(RESPONSE, TASK, llm_judge(endpoint)))
    assert endpoint.count == 3


def test_always_malformed_answer_gives_a_judge_error(endpoint):
    endpoint.default = "malformed"
    with pytest.raises(JudgeError, match="no ```json block"):
        llm_judge(endpoint, max_retries=1).align_keys("film", ["a"], ["a"])
    assert endpoint.count == 2


def test_client_errors_fail_at_once(endpoint):
    endpoint.default = "401"
    score = score_response(RESPONSE, TASK, llm_judge(endpoint))
    assert score.judge_error and "HTTP 401" in score.reason
    assert endpoint.count == 1


def test_cached_answers_make_a_rescore_free(endpoint, tmp_path):
    first = score_response(RESPONSE, TASK, llm_judge(endpoint, tmp_path))
    assert endpoint.count == 2
    judge = llm_judge(endpoint, tmp_path)  # a fresh judge: the answers come from disk
    assert score_response(RESPONSE, TASK, judge) == first
    assert endpoint.count == 2 and (judge.http_requests, judge.cache_hits) == (0, 2)
    files = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(files) == 2 and all(p.suffix == ".json" for p in files)  # no temp file left behind
    keys = {request_hash("judge-model", r["body"]["messages"]) for r in endpoint.requests}
    assert {p.stem for p in files} == keys and all(p.parent.name == p.stem[:2] for p in files)


def test_failures_are_not_cached(endpoint, tmp_path):
    endpoint.default = "malformed"
    with pytest.raises(JudgeError):
        llm_judge(endpoint, tmp_path, max_retries=0).align_keys("film", ["a"], ["a"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_concurrent_scoring_shares_one_cache(endpoint, tmp_path):
    judge = llm_judge(endpoint, tmp_path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        scores = list(pool.map(lambda _: score_response(RESPONSE, TASK, judge), range(16)))
    for score in scores:
        assert_expected(score)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_request_hash_covers_model_and_messages():
    messages = [{"role": "user", "content": "x"}]
    assert request_hash("a", messages) == request_hash("a", [{"role": "user", "content": "x"}])
    assert request_hash("a", messages) != request_hash("b", messages)
    assert request_hash("a", messages) != request_hash("a", [{"role": "user", "content": "y"}])


def test_answer_parsing_takes_the_last_json_block():
    assert last_json_block('```json\n{"a": 1}\n```\nbut finally\n```JSON\n{"a": 2}\n```') == {"a": 2}
    assert parse_grades('```json\n{"p1": 1, "p2": "0", "p3": true}\n```', 3) == [1.0, 0.0, 1.0]
    for bad in ('```json\n{"p1": 1}\n```', '```json\n{"p1": 1, "p2": 0.5}\n```', "```json\n[1, 0]\n```"):
        with pytest.raises(Exception, match="p2|not a JSON object"):
            parse_grades(bad, 2)


# ---- make_judge ---------------------------------------------------------------------------------


def test_make_judge_exact():
    assert isinstance(make_judge(OmegaConf.structured(JudgeConfig(name="exact", cache_dir="unused"))), ExactJudge)


def test_make_judge_llm_without_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("WIDESEEK_TEST_JUDGE_KEY", raising=False)
    cfg = OmegaConf.structured(JudgeConfig(name="llm", api_key_env="WIDESEEK_TEST_JUDGE_KEY", cache_dir="unused"))
    with pytest.raises(WideseekError, match="WIDESEEK_TEST_JUDGE_KEY"):
        make_judge(cfg)


def test_make_judge_llm_from_config(monkeypatch, tmp_path):
    monkeypatch.setenv("WIDESEEK_TEST_JUDGE_KEY", "secret")
    cfg = OmegaConf.structured(JudgeConfig(name="llm", model="m", base_url="http://127.0.0.1:9/v1/",
                                           api_key_env="WIDESEEK_TEST_JUDGE_KEY", max_retries=2, timeout_s=3,
                                           cache_dir=str(tmp_path)))
    judge = make_judge(cfg)
    assert isinstance(judge, LLMJudge)
    assert (judge.model, judge.url, judge.api_key, judge.max_retries, judge.timeout_s, judge.cache_dir) == (
        "m", "http://127.0.0.1:9/v1/chat/completions", "secret", 2, 3.0, tmp_path)
    assert judge.label == "llm-judge (m)"


def test_make_judge_unknown_name():
    with pytest.raises(WideseekError, match="unknown judge.name"):
        make_judge({"name": "oracle"})


# ---- deep-QA answers through the LLM judge ------------------------------------------------------

QA_TASK = TaskRecord("qa", "Which river flows through Lyon besides the Saone?", "en", [], [], {}, [], [],
                     is_table=False, answer_text="\\boxed{Rhone}")


def test_llm_judge_grades_a_boxed_qa_answer(endpoint, tmp_path):
    judge = llm_judge(endpoint, tmp_path)
    right = score_response("It is the \\boxed{RHONE}.", QA_TASK, judge)
    wrong = score_response("\\boxed{Loire}", QA_TASK, judge)
    assert (right.success, right.item_f1, right.row_f1) == (1.0, 1.0, 1.0)
    assert (wrong.success, wrong.item_f1, wrong.reason) == (0.0, 0.0, "wrong answer")
    prompt = endpoint.requests[0]["body"]["messages"][0]["content"]
    assert QA_TASK.query in prompt and '["Rhone"]' in prompt
    assert endpoint.count == 2
    score_response("It is the \\boxed{RHONE}.", QA_TASK, llm_judge(endpoint, tmp_path))
    assert endpoint.count == 2  # cached


def test_a_qa_verdict_that_is_not_true_or_false_is_retried_then_a_judge_error(endpoint):
    endpoint.default = "malformed"
    score = score_response("\\boxed{Rhone}", QA_TASK, llm_judge(endpoint))
    assert score.judge_error and score.item_f1 == 0.0 and endpoint.count == 4
