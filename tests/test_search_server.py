"""task=serve_search and search=server: the mini-web index served over HTTP on 127.0.0.1 (in a thread and as
`python run.py task=serve_search` in a subprocess), read through the client backend, and a whole rollout
that searches through the server finding what it finds with the index in-process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from scripted_engine import ScriptedEngine, agent_config, tiny_tokenizer, tool_call, urls_in, world_config

from wideseek_exp import WideseekError
from wideseek_exp.agents import run_rollouts
from wideseek_exp.search.base import Hit, SearchBackend
from wideseek_exp.search.bm25 import BM25Backend
from wideseek_exp.search.server import SearchServer
from wideseek_exp.search.server_client import ServerBackend
from wideseek_exp.tasks.loaders import load_task_set

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["capital of France", "chemical element with symbol Na", "", "airports in Peru"]


@pytest.fixture(scope="module")
def index():
    return BM25Backend.load(Path(world_config().paths.index))


def serving(backend):
    server = SearchServer(backend, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server(index):
    server = serving(index)
    yield server
    server.shutdown()


def client(url, **overrides):
    return ServerBackend(url, **{"timeout_s": 5.0, "max_retries": 2, "retry_wait_s": 0.01, "max_wait_s": 0.02,
                                 **overrides})


def test_the_client_answers_as_the_backend_does(server, index):
    remote = client(server.url)
    assert remote.search(QUERIES, top_k=4) == index.search(QUERIES, top_k=4)
    urls = [hit.url for hit in index.search(["France"], top_k=2)[0]] + ["https://miniweb.local/nowhere", "bad"]
    assert remote.access(urls) == index.access(urls)
    assert remote.health()["backend"] == "BM25Backend"


def test_search_r1_request_shape(server, index):
    reply = requests.post(server.url + "/retrieve", json={"queries": ["capital of France"], "topk": 2,
                                                          "return_scores": True}, timeout=5).json()
    (results,) = reply["result"]
    hits = index.search(["capital of France"], top_k=2)[0]
    assert [r["document"]["url"] for r in results] == [hit.url for hit in hits]
    assert [r["score"] for r in results] == [1.0, 0.5]
    assert results[0]["document"]["contents"].startswith(f'"{hits[0].title}"\n')
    plain = requests.post(server.url + "/retrieve", json={"queries": ["capital of France"], "topk": 2}, timeout=5)
    assert [doc["title"] for doc in plain.json()["result"][0]] == [hit.title for hit in hits]


@pytest.mark.parametrize("body", [{"queries": "not a list"}, {"queries": ["q"], "topk": 0}, [1, 2],
                                  {"queries": ["q"], "topk": True}, {"queries": ["q"], "top_k": 2},
                                  {"queries": ["q"], "return_scores": "yes"}])
def test_bad_requests_get_400(server, body):
    reply = requests.post(server.url + "/retrieve", json=body, timeout=5)
    assert reply.status_code == 400 and "error" in reply.json()


def test_malformed_bodies_methods_and_sizes_get_a_4xx_and_the_server_goes_on(server, index):
    """Each bad request on its own keep-alive connection and on one shared session: a 4xx with a reason,
    and a good request right after it still gets its answer."""
    from wideseek_exp.search.server import MAX_BODY_BYTES

    good = {"queries": ["capital of France"], "topk": 2}
    expected = [doc.url for doc in index.search(["capital of France"], top_k=2)[0]]
    session = requests.Session()
    cases = [
        ("post", "/retrieve", {"data": b'{"queries": ["unclosed"', "headers": {"Content-Type": "application/json"}}, 400),
        ("post", "/retrieve", {"data": b"\xff\xfe not utf-8"}, 400),
        ("post", "/access", {"json": {"urls": ["x"], "extra": 1}}, 400),
        ("post", "/retrieve", {"data": b"{" + b" " * MAX_BODY_BYTES + b"}"}, 413),
        ("post", "/nowhere", {"json": good}, 404),
        ("get", "/retrieve", {}, 404),
        ("put", "/retrieve", {"json": good}, 405),
        ("delete", "/access", {}, 405),
        ("patch", "/health", {"json": {}}, 405),
    ]
    for method, path, kwargs, status in cases:
        for sender in (requests, session):
            reply = getattr(sender, method)(server.url + path, timeout=5, **kwargs)
            assert reply.status_code == status, (method, path, reply.status_code, reply.text[:200])
            assert "error" in reply.json()
            after = sender.post(server.url + "/retrieve", json=good, timeout=5)
            assert [doc["url"] for doc in after.json()["result"][0]] == expected


class FlakyBackend(SearchBackend):
    """Fails its first `failures` calls, then answers one hit per query."""

    def __init__(self, failures: int):
        self.failures = failures

    def search(self, queries, top_k=3):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("index busy")
        return [[Hit(q, f"https://x.test/{len(q)}", "s")] for q in queries]

    def access(self, urls):
        return [None for _ in urls]


def test_the_client_retries_a_failing_server_then_gives_empty_hits():
    flaky = FlakyBackend(failures=2)
    server = serving(flaky)
    try:
        assert client(server.url).search(["ab"]) == [[Hit("ab", "https://x.test/2", "s")]]
        flaky.failures = 10
        remote = client(server.url)
        assert remote.search(["ab", "c"]) == [[], []] and remote.failures == 1
    finally:
        server.shutdown()


def test_no_server_is_a_one_line_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WideseekError, match=rf"no search server answers at http://127.0.0.1:{port} \(search.server_url\)"):
        client(f"http://127.0.0.1:{port}", max_retries=0)


def research_script(view):
    """Lead: two subagents on the task, then an empty table. Subagent: search its subtask, read the first
    hit, report what it read."""
    if view.role == "lead":
        if view.turn == 1:
            return tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find the first half"},
                                                                  {"prompt": "find the second half"}]})
        return "| a |\n|---|\n| b |"
    if view.turn == 1:
        return tool_call("search", {"queries": [{"query": view.user.split("\n")[0][:80], "count": 3}]})
    if view.turn == 2:
        return tool_call("access", {"urls": [{"url": urls_in(view.last_tool_result)[0], "info_to_extract": "facts"}]})
    return "Report: " + (view.last_tool_result or "")[:200]


def tool_results(search) -> list[str]:
    world = world_config()
    tasks = load_task_set(world.data, "test")[:2]
    agent, search_cfg = agent_config()
    trajectories = run_rollouts(tasks, 1, ScriptedEngine(tiny_tokenizer(), research_script), search, tiny_tokenizer(),
                                agent, search_cfg, seed=3)
    return [turn.tool_result for t in trajectories for a in t.agents for turn in a.turns if turn.tool_result]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_serve_search_task_serves_a_rollout(index, tmp_path):
    port = free_port()
    command = [sys.executable, str(REPO / "run.py"), "task=serve_search", f"search.port={port}",
               "tracking.enabled=false", f"paths.outputs={tmp_path}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # the server is up within a few seconds; a dead process ends the wait
            if process.poll() is not None:
                pytest.fail(f"task=serve_search exited: {process.stdout.read()}")
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        remote = client(url)
        expected = tool_results(index)
        assert len(expected) >= 8 and any("miniweb.local" in text for text in expected)
        assert tool_results(remote) == expected
    finally:
        process.terminate()
        process.wait(30)


def test_serve_search_refuses_to_serve_the_client(cli):
    result = cli("task=serve_search", "search=server", "tracking.enabled=false")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: task=serve_search serves a backend")
