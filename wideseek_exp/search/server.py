"""One search backend shared over HTTP: `python run.py task=serve_search` (search.host, search.port), so that
many rollout workers query one index (or one web cache) instead of each loading their own.

    POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}
         -> {"result": [[{"document": {...}, "score": s}, ...] per query]}   (with return_scores)
         -> {"result": [[{...document...}, ...] per query]}                   (without)
    POST /access   {"urls": [...]} -> {"result": [{"url", "title", "text"} or null per URL]}
    GET  /health   -> {"status": "ok", "backend": "<class name>"}

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
               content_type: str = "application/json") -> None:
    """Answer a request: `body` as JSON (a dict) or as given (bytes). A client that gave up waiting is no error."""
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if isinstance(body, dict) else body
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    try:
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
MAX_BODY_BYTES = 16 * 2**20


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
        if not isinstance(top_k, int) or top_k < 1:
            raise BadRequest("'topk' must be a positive integer")
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

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok", "backend": type(server.backend).__name__})
                else:
                    self._send(404, {"error": f"no such endpoint: GET {self.path}"})

            def do_POST(self):
                route = routes.get(self.path.rstrip("/"))
                if route is None:
                    self._send(404, {"error": f"no such endpoint: POST {self.path}"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(413, {"error": "request body too large"})
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                    if not isinstance(body, dict):
                        raise BadRequest("the body must be a JSON object")
                    self._send(200, route(body))
                except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as error:
                    self._send(400, {"error": str(error)})
                except Exception as error:  # the backend failed: the client may retry
                    log.exception("search backend failed")
                    self._send(500, {"error": f"{type(error).__name__}: {error}"})

            def _send(self, status: int, payload: dict) -> None:
                send_reply(self, status, payload)

        return Handler
