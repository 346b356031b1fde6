"""One search backend shared over HTTP: `python run.py task=serve_search` (search.host, search.port), so that
many rollout workers query one index (or one web cache) instead of each loading their own.

    POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}
         -> {"result": [[{"document": {...}, "score": s}, ...] per query]}   (with return_scores)
         -> {"result": [[{...document...}, ...] per query]}                   (without)
    POST /access   {"urls": [...]} -> {"result": [{"url", "title", "text"} or null per URL]}
    GET  /health   -> {"status": "ok", "backend": "<class name>"}

A bad request gets a 4xx with {"error": ...} and the server goes on serving: malformed JSON, a field it
does not know, a value of the wrong type (400), a body over MAX_BODY_BYTES (413), an unknown path (404),
another method (405). experiments/search_server_load/bench.py measures it under 32 concurrent clients.

/retrieve takes the request of Search-R1's retriever server, and each document carries its `contents`
field ('"<title>"\\n<text>') beside our title/url/snippet, so clients of either kind can read it. The
interface returns hits in rank order without the backend's scores, so `score` is 1/rank: an order, not a
relevance value to compare across queries.

The stdlib ThreadingHTTPServer answers each connection in its own thread; a backend not marked
`thread_safe` (the bm25 index) is called under a lock, which costs little since its calls take milliseconds.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from wideseek_exp.search.base import Hit, SearchBackend

log = logging.getLogger(__name__)


def send_reply(handler: BaseHTTPRequestHandler, status: int, body: dict | bytes,
               content_type: str = "application/json", headers: dict | None = None) -> None:
    """Answer a request: `body` as JSON (a dict) or as given (bytes). A client that gave up waiting is no error.
    When the handler will close the connection (a request body left unread), the reply says so."""
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if isinstance(body, dict) else body
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()
    try:
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


MAX_BODY_BYTES = 2**20  # a request body: thousands of queries or URLs fit; a larger one is refused (413)
FIELDS = {"/retrieve": {"queries", "topk", "return_scores"}, "/access": {"urls"}}


def document(hit: Hit) -> dict:
    return {"id": hit.url, "title": hit.title, "url": hit.url, "snippet": hit.snippet,
            "contents": f'"{hit.title}"\n{hit.snippet}'}


class BadRequest(Exception):
    pass


def _strings(body: dict, key: str) -> list[str]:
    values = body.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadRequest(f"'{key}' must be a list of strings")
    return values


class SearchServer:
    """The HTTP server around `backend`; port 0 picks a free port (see .url)."""

    def __init__(self, backend: SearchBackend, host: str = "127.0.0.1", port: int = 8765, default_top_k: int = 3):
        self.backend = backend
        self.default_top_k = default_top_k
        self.lock = nullcontext() if getattr(backend, "thread_safe", False) else threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def retrieve(self, body: dict) -> dict:
        queries = _strings(body, "queries")
        top_k = body.get("topk", self.default_top_k)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise BadRequest("'topk' must be a positive integer")
        if not isinstance(body.get("return_scores", False), bool):
            raise BadRequest("'return_scores' must be true or false")
        with self.lock:
            hit_lists = self.backend.search(queries, top_k)
        if body.get("return_scores", False):
            return {"result": [[{"document": document(hit), "score": 1.0 / rank} for rank, hit in enumerate(hits, 1)]
                               for hits in hit_lists]}
        return {"result": [[document(hit) for hit in hits] for hits in hit_lists]}

    def access(self, body: dict) -> dict:
        urls = _strings(body, "urls")
        with self.lock:
            pages = self.backend.access(urls)
        return {"result": [None if page is None else {"url": page.url, "title": page.title, "text": page.text}
                           for page in pages]}

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self
        routes = {"/retrieve": server.retrieve, "/access": server.access}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a client sends many requests on one connection
            disable_nagle_algorithm = True  # headers and body go out at once (else a 40 ms delayed-ACK stall)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok", "backend": type(server.backend).__name__})
                else:
                    self._send(404, {"error": f"no such endpoint: GET {self.path}"})

            def _read_body(self) -> bytes | None:
                """The request body; None (and a 4xx sent, the connection closed after it) when it is too large
                or its length is unreadable: unread, it would be taken for the next request."""
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if 0 <= length <= MAX_BODY_BYTES:
                    return self.rfile.read(length)
                self.close_connection = True
                self._send(413 if length > 0 else 400, {"error": f"request body over {MAX_BODY_BYTES} bytes"
                                                        if length > 0 else "invalid Content-Length"})
                return None

            def do_POST(self):
                path = self.path.rstrip("/")
                route = routes.get(path)
                data = self._read_body()
                if data is None:
                    return
                if route is None:
                    self._send(404, {"error": f"no such endpoint: POST {self.path}"})
                    return
                try:
                    body = json.loads(data or b"null")
                    if not isinstance(body, dict):
                        raise BadRequest("the body must be a JSON object")
                    unknown = sorted(set(body) - FIELDS[path])
                    if unknown:
                        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                         f"{path} takes {', '.join(sorted(FIELDS[path]))}")
                    self._send(200, route(body))
                except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as error:
                    self._send(400, {"error": str(error)})
                except Exception as error:  # the backend failed: the client may retry
                    log.exception("search backend failed")
                    self._send(500, {"error": f"{type(error).__name__}: {error}"})

            def _send(self, status: int, payload: dict) -> None:
                send_reply(self, status, payload)

            def _wrong_method(self):
                if self._read_body() is None:
                    return
                send_reply(self, 405, {"error": f"method {self.command} not allowed: GET /health, POST /retrieve "
                                                "or /access"}, headers={"Allow": "GET, POST"})

            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _wrong_method

        return Handler
