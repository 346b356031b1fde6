"""The live web: a Serper-style search API and a Jina-style page reader, behind the SearchBackend interface.

search  POST <search_url> {"q": query, "num": k} with header X-API-KEY -> {"organic": [{title, link, snippet}]}
access  GET <reader_url><page url> with "Authorization: Bearer KEY" -> the page as text (JSON
        {"data": {"title", "url", "content"}} when the reader offers it, else the plain text)

Each batch runs `max_concurrency` requests at once; transient failures (network, timeouts, 429, 5xx) are
retried with doubling waits (wideseek_exp.httpretry). Answers are kept in a sqlite cache (search.cache_path;
wideseek_exp.search.cache) shared by every worker, so a query or page is paid for once.

As every backend, this one never raises into an agent: a query that still fails after its retries gives no
hits, a page that cannot be read gives None, and both are counted in `failures`. A missing or rejected key
(HTTP 401/403) is the user's to fix and stops the run with a one-line error.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from wideseek_exp import WideseekError
from wideseek_exp.httpretry import RetriesExhausted, send, with_retries
from wideseek_exp.search.base import Hit, Page, SearchBackend
from wideseek_exp.search.cache import SqliteCache

log = logging.getLogger(__name__)


def api_key(env_name: str | None, config_key: str, what: str) -> str | None:
    """The key in the environment variable `env_name`; a one-line error when it is named but unset."""
    if not env_name:
        return None  # the config says this service needs no key
    value = os.environ.get(env_name)
    if not value:
        raise WideseekError(f"search=web needs the {what} API key in the environment variable {env_name} "
                            f"({config_key}); set it, or use search=local")
    return value


class WebSearchBackend(SearchBackend):
    thread_safe = True  # the search server may call it from several threads at once

    def __init__(self, search_url: str, search_key: str | None, reader_url: str, reader_key: str | None,
                 cache_path: str | None, *, max_concurrency: int = 16, timeout_s: float = 30.0, max_retries: int = 5,
                 retry_wait_s: float = 1.0, max_wait_s: float = 60.0, max_top_k: int = 10):
        self.search_url, self.reader_url = search_url, reader_url
        self.search_headers = {"X-API-KEY": search_key} if search_key else {}
        self.reader_headers = {"Accept": "application/json", **({"Authorization": f"Bearer {reader_key}"}
                                                                 if reader_key else {})}
        self.cache = SqliteCache(cache_path) if cache_path else None
        self.pool = ThreadPoolExecutor(max(1, max_concurrency), thread_name_prefix="web-search")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.retry_wait_s, self.max_wait_s = retry_wait_s, max_wait_s
        self.max_top_k = max_top_k
        self.failures = 0  # queries and pages given up on after their retries
        self.requests_sent = 0
        self._lock = threading.Lock()

    # ---- the interface ----

    def search(self, queries: list[str], top_k: int = 3) -> list[list[Hit]]:
        count = max(1, min(int(top_k), self.max_top_k))
        return list(self.pool.map(lambda query: self._search_one(query, count), queries))

    def access(self, urls: list[str]) -> list[Page | None]:
        return list(self.pool.map(self._access_one, urls))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- one query, one page ----

    def _search_one(self, query: object, count: int) -> list[Hit]:
        if not isinstance(query, str) or not query.strip():
            return []
        query = query.strip()
        key = f"{count}\t{query}"
        cached = self._cached("search", key)
        if cached is not None:
            return [Hit(**hit) for hit in cached]
        reply = self._request("POST", self.search_url, self.search_headers, json={"q": query, "num": count})
        if reply is None:
            return []
        try:
            organic = reply.json().get("organic") or []
            hits = [Hit(str(item.get("title", "")), str(item["link"]), str(item.get("snippet", "")))
                    for item in organic if isinstance(item, dict) and item.get("link")][:count]
        except (ValueError, AttributeError):
            self._count_failure()
            log.warning("search API answered %r with something that is not search results", query)
            return []
        self._store("search", key, [hit.__dict__ for hit in hits])
        return hits

    def _access_one(self, url: object) -> Page | None:
        if not isinstance(url, str) or not url.strip().startswith(("http://", "https://")):
            return None
        url = url.strip()
        cached = self._cached("page", url)
        if cached is not None:
            return Page(**cached)
        reply = self._request("GET", self.reader_url + url, self.reader_headers)
        if reply is None:
            return None
        page = reader_page(url, reply)
        if page is None or not page.text.strip():
            return None
        self._store("page", url, page.__dict__)
        return page

    def _request(self, method: str, url: str, headers: dict, **kwargs):
        """The 200 response, or None (counted) when the service failed for good or did not know the item."""

        def attempt():
            with self._lock:
                self.requests_sent += 1
            return send(method, url, headers=headers, timeout_s=self.timeout_s, **kwargs)

        try:
            reply = with_retries(attempt, self.max_retries, self.retry_wait_s, self.max_wait_s)
        except RetriesExhausted as error:
            self._count_failure()
            log.warning("giving up on %s %s: %s", method, url, error)
            return None
        if reply.status_code in (401, 403):
            raise WideseekError(f"search=web: {url.split('?')[0]} rejected the API key (HTTP {reply.status_code}); "
                                "check the variables named by search.search_api_key_env / search.reader_api_key_env")
        if reply.status_code != 200:
            self._count_failure()
            return None
        return reply

    def _count_failure(self) -> None:
        with self._lock:
            self.failures += 1

    def _cached(self, kind: str, key: str):
        return self.cache.get(kind, key) if self.cache is not None else None

    def _store(self, kind: str, key: str, value) -> None:
        if self.cache is not None:
            self.cache.put(kind, key, value)


def reader_page(url: str, reply) -> Page | None:
    """The page in a reader's answer: its JSON form ({"data": {"title", "content"}}) or plain text whose
    first `Title:` line, if any, names the page."""
    try:
        data = reply.json().get("data")
        if isinstance(data, dict):
            return Page(url, str(data.get("title") or ""), str(data.get("content") or ""))
    except (ValueError, AttributeError):
        pass
    text = reply.text
    title = next((line[len("Title:"):].strip() for line in text.splitlines()[:5] if line.startswith("Title:")), "")
    return Page(url, title, text)


def make_web_backend(search_cfg) -> WebSearchBackend:
    return WebSearchBackend(
        search_cfg.search_url, api_key(search_cfg.search_api_key_env, "search.search_api_key_env", "search"),
        search_cfg.reader_url, api_key(search_cfg.reader_api_key_env, "search.reader_api_key_env", "page reader"),
        search_cfg.cache_path, max_concurrency=search_cfg.max_concurrency, timeout_s=search_cfg.timeout_s,
        max_retries=search_cfg.max_retries, retry_wait_s=search_cfg.retry_wait_s, max_top_k=search_cfg.max_top_k,
    )
