"""search=web against a real HTTP server on 127.0.0.1 imitating a Serper-style search API and a Jina-style
reader: keys, failures and retries, the sqlite cache across instances, and concurrent writers in two processes."""

from __future__ import annotations

import json
import multiprocessing
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_http import send_reply, serving
from omegaconf import OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.conf import SearchConfig
from wideseek_exp.search.base import Hit, Page
from wideseek_exp.search.cache import SqliteCache
from wideseek_exp.search.web import WebSearchBackend, make_web_backend


class FakeWeb:
    """POST /search (X-API-KEY: search-key) and GET /reader/<url> (Bearer reader-key). `script` holds the
    status of the next requests ("429", "500", "404"); when it runs out, they succeed. A URL containing
    'plain' is answered as plain text, one containing 'missing' with 404."""

    def __init__(self):
        self.script: list[str] = []
        self.requests: list[tuple] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _scripted(self) -> bool:
                with fake.lock:
                    status = fake.script.pop(0) if fake.script else None
                if status:
                    self._send(int(status), b'{"error": "scripted"}', "application/json")
                return bool(status)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(("search", body, self.headers.get("X-API-KEY")))
                if self._scripted():
                    return
                if self.headers.get("X-API-KEY") != "search-key":
                    self._send(403, b'{"message": "bad key"}', "application/json")
                    return
                organic = [{"title": f"{body['q']} result {rank}", "link": f"https://site{rank}.test/{body['q'].replace(' ', '-')}",
                            "snippet": f"About {body['q']}.", "position": rank} for rank in range(1, 11)]
                self._send(200, json.dumps({"organic": organic[: body["num"]]}).encode(), "application/json")

            def do_GET(self):
                url = self.path[len("/reader/"):]
                with fake.lock:
                    fake.requests.append(("page", url, self.headers.get("Authorization")))
                if self._scripted():
                    return
                if "missing" in url:
                    self._send(404, b"not found", "text/plain")
                elif "plain" in url:
                    self._send(200, f"Title: Plain {url}\n\nMarkdown Content:\nText of {url}".encode(), "text/plain")
                else:
                    data = {"code": 200, "data": {"title": f"Page {url}", "url": url, "content": f"Content of {url}"}}
                    self._send(200, json.dumps(data).encode(), "application/json")

            def _send(self, status, payload, kind):
                send_reply(self, status, payload, kind)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, kind: str) -> int:
        return sum(1 for request in self.requests if request[0] == kind)


@pytest.fixture
def web():
    fake = FakeWeb()
    with serving(fake.server):
        yield fake


def backend(web, tmp_path, **overrides) -> WebSearchBackend:
    settings = {"search_url": web.base + "/search", "search_key": "search-key", "reader_url": web.base + "/reader/",
                "reader_key": "reader-key", "cache_path": tmp_path / "cache.sqlite", "max_concurrency": 4,
                "timeout_s": 5.0, "max_retries": 3, "retry_wait_s": 0.01, "max_wait_s": 0.02}
    return WebSearchBackend(**{**settings, **overrides})


def test_search_and_access(web, tmp_path):
    engine = backend(web, tmp_path)
    hits = engine.search(["capital of peru", "", "tallest tower"], top_k=2)
    assert hits[0] == [Hit("capital of peru result 1", "https://site1.test/capital-of-peru", "About capital of peru."),
                       Hit("capital of peru result 2", "https://site2.test/capital-of-peru", "About capital of peru.")]
    assert hits[1] == [] and len(hits[2]) == 2
    assert {"q": "capital of peru", "num": 2} in [request[1] for request in web.requests]
    assert {request[2] for request in web.requests} == {"search-key"}
    pages = engine.access(["https://a.test/x", "https://a.test/plain", "https://a.test/missing", "not a url"])
    assert pages[0] == Page("https://a.test/x", "Page https://a.test/x", "Content of https://a.test/x")
    assert pages[1].title == "Plain https://a.test/plain" and "Text of https://a.test/plain" in pages[1].text
    assert pages[2] is None and pages[3] is None
    assert {r[2] for r in web.requests if r[0] == "page"} == {"Bearer reader-key"}


def test_429_and_5xx_are_retried_with_backoff(web, tmp_path):
    web.script = ["429", "500", "503"]
    engine = backend(web, tmp_path, max_concurrency=1)
    assert len(engine.search(["q"], top_k=3)[0]) == 3
    assert web.count("search") == 4 and engine.failures == 0


def test_a_failure_after_the_retries_gives_nothing_not_an_exception(web, tmp_path):
    web.script = ["500"] * 3
    engine = backend(web, tmp_path, max_concurrency=1, max_retries=2)
    assert engine.search(["q"]) == [[]]
    assert engine.failures == 1
    web.script = ["500"] * 3
    assert engine.access(["https://a.test/y"]) == [None] and engine.failures == 2


def test_a_rejected_key_stops_with_one_line(web, tmp_path):
    engine = backend(web, tmp_path, search_key="wrong")
    with pytest.raises(WideseekError, match="rejected the API key.*search.search_api_key_env"):
        engine.search(["q"])


def test_missing_key_names_the_variable(monkeypatch, tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(SearchConfig), {"name": "web", "search_api_key_env": "WIDESEEK_TEST_KEY",
                                                               "cache_path": str(tmp_path / "c.sqlite")})
    monkeypatch.delenv("WIDESEEK_TEST_KEY", raising=False)
    with pytest.raises(WideseekError, match=r"WIDESEEK_TEST_KEY \(search.search_api_key_env\)"):
        make_web_backend(cfg)


def test_the_cache_survives_a_new_backend(web, tmp_path):
    first = backend(web, tmp_path)
    hits = first.search(["q one", "q two"])
    pages = first.access(["https://a.test/1"])
    before = len(web.requests)
    second = backend(web, tmp_path)
    assert second.search(["q two", "q one"]) == [hits[1], hits[0]]
    assert second.access(["https://a.test/1"]) == pages
    assert len(web.requests) == before  # nothing asked again
    second.search(["q one"], top_k=5)  # another count is another question
    assert len(web.requests) == before + 1


def _write_entries(path: str, worker: int, count: int) -> None:
    cache = SqliteCache(path)
    for index in range(count):
        cache.put("page", f"shared-{index}", {"worker": worker})  # both processes write these keys
        cache.put("page", f"own-{worker}-{index}", {"index": index})


def test_two_processes_write_the_cache_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    SqliteCache(path)  # created before the workers start
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_entries, args=(path, worker, 200)) for worker in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    cache = SqliteCache(path)
    assert cache.count("page") == 200 + 2 * 200
    assert cache.get("page", "own-2-199") == {"index": 199}
    assert cache.get("page", "shared-5")["worker"] in (1, 2)
