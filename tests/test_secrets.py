"""API keys never reach what the project writes. One evaluation through the command line with every keyed
service at once, each a fake server on 127.0.0.1 that checks the key it is sent: the agents on engine=openai
(a chat API), search=web (a search API and a page reader, each with its key) and judge=llm. Then every
file the run wrote (Hydra's .hydra/ files, the job folder's trials, trajectories and reports, the MLflow
store and its artifacts, the web and judge caches) and everything it printed is searched for the keys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_http import send_reply, serving

REPO = Path(__file__).resolve().parent.parent
KEYS = {"WS_TEST_ENGINE_KEY": "sk-engine-SENTINEL-4b1d9e", "WS_TEST_JUDGE_KEY": "sk-judge-SENTINEL-77c2a0",
        "WS_TEST_SEARCH_KEY": "serp-SENTINEL-0f9e31", "WS_TEST_READER_KEY": "jina-SENTINEL-c0ffee"}


class KeyedServices:
    """One loopback server for all four services, each checking its own key:
    POST /engine/v1/chat/completions  the agents: the lead delegates once, then answers a table; a subagent
                                      searches, reads its first hit, then reports
    POST /judge/v1/chat/completions   the judge: an empty mapping (the table's columns stay unaligned)
    POST /search                      search results (X-API-KEY)
    GET  /reader/<url>                a page (Bearer key)"""

    def __init__(self):
        self.seen: dict[str, int] = {name: 0 for name in ("engine", "judge", "search", "reader")}
        self.refused: list[str] = []
        services = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _keyed(self, service: str, header: str, expected: str) -> bool:
                ok = self.headers.get(header) == expected
                services.seen[service] += ok
                if not ok:
                    services.refused.append(service)
                    send_reply(self, 401, {"error": "bad key"})
                return ok

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.startswith("/engine/"):
                    if self._keyed("engine", "Authorization", f"Bearer {KEYS['WS_TEST_ENGINE_KEY']}"):
                        content = agent_reply(body["messages"])
                        send_reply(self, 200, {"choices": [{"index": 0, "finish_reason": "stop",
                                                            "message": {"role": "assistant", "content": content}}]})
                elif self.path.startswith("/judge/"):
                    if self._keyed("judge", "Authorization", f"Bearer {KEYS['WS_TEST_JUDGE_KEY']}"):
                        send_reply(self, 200, {"choices": [{"index": 0, "message": {
                            "role": "assistant", "content": "```json\n{}\n```"}}]})
                elif self._keyed("search", "X-API-KEY", KEYS["WS_TEST_SEARCH_KEY"]):
                    organic = [{"title": f"{body['q']} {rank}", "link": f"https://site{rank}.test/page",
                                "snippet": f"About {body['q']}.", "position": rank} for rank in (1, 2)]
                    send_reply(self, 200, {"organic": organic})

            def do_GET(self):
                if self._keyed("reader", "Authorization", f"Bearer {KEYS['WS_TEST_READER_KEY']}"):
                    url = self.path[len("/reader/"):]
                    send_reply(self, 200, {"code": 200, "data": {"title": "A page", "url": url,
                                                                 "content": "Facts\nCode: ALD\nElevation: 120"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


def agent_reply(messages: list[dict]) -> str:
    """The scripted agents of the chat API: which agent by its tools, which turn by its past replies."""
    system, turn = messages[0]["content"], sum(m["role"] == "assistant" for m in messages) + 1
    if "create_sub_agents" in system:
        if turn == 1:
            call = {"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "find the airports"}]}}
            return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        return "```markdown\n| Thing | Code |\n| --- | --- |\n| Aldova Airport | ALD |\n```"
    if turn == 1:
        call = {"name": "search", "arguments": {"queries": [{"query": "aldova airports"}]}}
    elif turn == 2:
        url = re.search(r"URL: (\S+)", messages[-1]["content"]).group(1)
        call = {"name": "access", "arguments": {"urls": [{"url": url, "info_to_extract": "the code"}]}}
    else:
        return "Report: the code is ALD."
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


@pytest.fixture
def services():
    fake = KeyedServices()
    with serving(fake.server):
        yield fake


@pytest.mark.slow
def test_no_api_key_reaches_a_file_or_the_console(services, tmp_path):
    from scripted_engine import world_config

    world_config()
    base = services.base
    args = [
        "task=eval", "model=tiny_random", "eval.limit=2", "eval.samples=1", "subagents=1",
        "engine=openai", "engine.prompt_format=chat", f"engine.base_url={base}/engine/v1", "engine.api_key_env=WS_TEST_ENGINE_KEY",
        "engine.max_retries=1", "search=web", f"search.search_url={base}/search", f"search.reader_url={base}/reader/",
        "search.search_api_key_env=WS_TEST_SEARCH_KEY", "search.reader_api_key_env=WS_TEST_READER_KEY",
        f"search.cache_path={tmp_path / 'web_cache.sqlite'}",
        "judge=llm", f"judge.base_url={base}/judge/v1", "judge.api_key_env=WS_TEST_JUDGE_KEY", "judge.model=judge-model",
        f"judge.cache_dir={tmp_path / 'judge_cache'}",
        "tracking.enabled=true", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=secrets",
        f"paths.outputs={tmp_path / 'outputs'}", f"hydra.run.dir={tmp_path / 'job'}",
    ]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **KEYS, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # every service was used, with its key
    assert not services.refused and all(count > 0 for count in services.seen.values()), services.seen
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"config.yaml", "overrides.yaml", "trials.jsonl", "trajectories.jsonl", "metrics.json", "mlflow.db",
            "web_cache.sqlite"} <= names, sorted(names)
    assert any("judge_cache" in str(path) for path in written) and any("artifacts" in str(path) for path in written)
    for name, key in KEYS.items():
        assert key not in done.stdout + done.stderr, f"{name} printed"
        leaks = [str(path.relative_to(tmp_path)) for path in written if key.encode() in path.read_bytes()]
        assert not leaks, f"{name} written to {leaks}"
