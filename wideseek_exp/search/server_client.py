"""search=server: the SearchBackend interface over HTTP, talking to `python run.py task=serve_search`
(wideseek_exp.search.server) at search.server_url.

The server is asked for its health when the backend is made, so a wrong address stops the run at once with
one line. Later requests are retried on transient failures (wideseek_exp.httpretry); a batch that still fails
gives empty hit lists or None pages, counted in `failures`, as every backend answers rather than raises.
"""

from __future__ import annotations

import logging
import threading

from wideseek_exp import WideseekError
from wideseek_exp.httpretry import RetriesExhausted, TransientError, send, with_retries
from wideseek_exp.search.base import Hit, Page, SearchBackend

log = logging.getLogger(__name__)


class ServerBackend(SearchBackend):
    thread_safe = True

    def __init__(self, server_url: str, *, timeout_s: float = 30.0, max_retries: int = 5, retry_wait_s: float = 1.0,
                 max_wait_s: float = 60.0, check: bool = True):
        self.url = server_url.rstrip("/")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.retry_wait_s, self.max_wait_s = retry_wait_s, max_wait_s
        self.failures = 0
        self._lock = threading.Lock()
        if check:
            self.health()

    def health(self) -> dict:
        try:
            reply = send("GET", self.url + "/health", timeout_s=min(self.timeout_s, 10.0))
            if reply.status_code == 200:
                return reply.json()
            problem = f"HTTP {reply.status_code}"
        except (TransientError, ValueError) as error:
            problem = str(error).split(":")[0]  # the kind of failure; urllib3's details run to many lines
        raise WideseekError(f"no search server answers at {self.url} (search.server_url): {problem}; "
                            "start one with `python run.py task=serve_search`")

    def search(self, queries: list[str], top_k: int = 3) -> list[list[Hit]]:
        result = self._post("/retrieve", {"queries": list(queries), "topk": int(top_k), "return_scores": False})
        if result is None:
            return [[] for _ in queries]
        return [[Hit(doc.get("title", ""), doc.get("url", ""), doc.get("snippet", "")) for doc in docs]
                for docs in result]

    def access(self, urls: list[str]) -> list[Page | None]:
        result = self._post("/access", {"urls": list(urls)})
        if result is None:
            return [None] * len(urls)
        return [None if page is None else Page(page["url"], page.get("title", ""), page.get("text", ""))
                for page in result]

    def _post(self, path: str, body: dict) -> list | None:
        def attempt() -> list:
            reply = send("POST", self.url + path, json=body, timeout_s=self.timeout_s)
            if reply.status_code != 200:
                raise WideseekError(f"the search server at {self.url} refused {path}: HTTP {reply.status_code} "
                                    f"{reply.text[:200]}")
            try:
                result = reply.json()["result"]
            except (ValueError, KeyError, TypeError):
                raise TransientError(f"{path} answered without a result") from None
            count = len(body.get("queries", body.get("urls", [])))
            if not isinstance(result, list) or len(result) != count:
                raise TransientError(f"{path} answered {len(result) if isinstance(result, list) else 'no'} "
                                     f"results for {count} items")
            return result

        try:
            return with_retries(attempt, self.max_retries, self.retry_wait_s, self.max_wait_s)
        except RetriesExhausted as error:
            with self._lock:
                self.failures += 1
            log.warning("search server %s%s failed for good: %s", self.url, path, error)
            return None
