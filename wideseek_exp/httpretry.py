"""HTTP calls that are worth repeating, and the repeating: the one place the judge, the openai engine, the
web search backend and the search-server client decide what a transient failure is and how long to wait.

Transient: the network failed, the request timed out, or the server answered 408, 429 or 5xx. Anything else
the server answered is the caller's to read (a 401 means a wrong key: repeating it would not help).
Waits double from `base_s` up to `max_s`; a server that says how long to wait (Retry-After, in seconds)
is believed, within `max_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests

T = TypeVar("T")
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class TransientError(Exception):
    """A failed attempt worth repeating."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s  # what the server asked for (Retry-After), if anything


class RetriesExhausted(Exception):
    """Every attempt failed; the message is the last failure."""


_local = threading.local()


def session() -> requests.Session:
    """One keep-alive session per thread (a Session is not safe to share between threads)."""
    if getattr(_local, "session", None) is None:
        _local.session = requests.Session()
    return _local.session


def send(method: str, url: str, *, timeout_s: float, **kwargs) -> requests.Response:
    """One attempt. Raises TransientError for network failures, timeouts and 408/429/5xx; returns any other
    response as it is."""
    try:
        response = session().request(method, url, timeout=timeout_s, **kwargs)
    except requests.RequestException as error:
        raise TransientError(f"{type(error).__name__}: {error}") from None
    if response.status_code in RETRY_STATUSES:
        raise TransientError(f"HTTP {response.status_code} from {url}", retry_after(response))
    return response


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to our own backoff


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait before retry number `attempt` (1, 2, ...): base, 2 base, 4 base, ... capped at max_s."""
    return min(base_s * 2 ** (attempt - 1), max_s)


def with_retries(attempt: Callable[[], T], max_retries: int, base_s: float = 1.0, max_s: float = 60.0,
                 retry_on: tuple[type[BaseException], ...] = (TransientError,)) -> T:
    """attempt() until it returns, at most 1 + max_retries times; RetriesExhausted after the last failure."""
    failure: BaseException | None = None
    for number in range(max_retries + 1):
        if number:
            wait = backoff_s(number, base_s, max_s)
            asked = getattr(failure, "wait_s", None)
            time.sleep(min(max(wait, asked), max_s) if asked is not None else wait)
        try:
            return attempt()
        except retry_on as error:
            failure = error
    raise RetriesExhausted(str(failure))
