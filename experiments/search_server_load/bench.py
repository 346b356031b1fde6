"""task=serve_search under load, on loopback: the mini-web BM25 index served by SearchServer in this process,
32 concurrent clients x 200 requests each (keep-alive connections), against one client alone as the
baseline measured in the same run.

    python experiments/search_server_load/bench.py [--clients 32] [--requests 200] [--bad-share 0.1]

Requests: retrieve (one query, top 3) and access (one page) in turn, and a share of bad ones (malformed
JSON, an unknown field, a wrong method), which must get a 4xx and leave the connection serving.
Prints p50/p99 latency of the good requests alone and under load, their ratio, the throughput, and the
errors: a good request not answered 200, a bad one not answered 4xx, a connection failure. Needs the
built world (python run.py task=build).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from wideseek_exp.search.bm25 import BM25Backend  # noqa: E402
from wideseek_exp.search.server import SearchServer  # noqa: E402

WORDS = ["capital", "France", "airport", "Peru", "element", "symbol", "currency", "language", "state", "city",
         "population", "river", "Japan", "Brazil", "official", "code", "elevation", "founded"]
BAD = [("POST", "/retrieve", b'{"queries": ["open"'), ("POST", "/retrieve", b'{"queries": ["q"], "k": 3}'),
       ("PUT", "/retrieve", b"{}")]


def client(port: int, requests: int, bad_share: float, urls: list[str], seed: int, out: dict) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, errors = [], 0
    for k in range(requests):
        bad = rng.random() < bad_share
        if bad:
            method, path, body = rng.choice(BAD)
        elif k % 2:
            method, path = "POST", "/access"
            body = json.dumps({"urls": [rng.choice(urls)]}).encode()
        else:
            method, path = "POST", "/retrieve"
            body = json.dumps({"queries": [" ".join(rng.sample(WORDS, 3))], "topk": 3}).encode()
        started = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            reply.read()
            ok = 400 <= reply.status < 500 if bad else reply.status == 200
            if reply.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        except (OSError, http.client.HTTPException):
            ok = False
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if not bad:
            latencies.append(time.perf_counter() - started)
        errors += not ok
    connection.close()
    out.setdefault("latencies", []).extend(latencies)
    out["errors"] = out.get("errors", 0) + errors
    out["requests"] = out.get("requests", 0) + requests


def load(port: int, clients: int, requests: int, bad_share: float, urls: list[str]) -> dict:
    results: list[dict] = [{} for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(port, requests, bad_share, urls, seed, results[seed]))
               for seed in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    latencies = sorted(t for r in results for t in r["latencies"])
    return {"seconds": seconds, "requests": sum(r["requests"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "p50": statistics.median(latencies), "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--bad-share", type=float, default=0.1)
    args = parser.parse_args()
    index = BM25Backend.load(REPO / "data" / "generated" / "miniweb" / "index")
    urls = [hit.url for hits in index.search(WORDS, top_k=3) for hit in hits]
    server = SearchServer(index, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.httpd.server_address[1]
    try:
        alone = load(port, 1, args.requests, args.bad_share, urls)
        loaded = load(port, args.clients, args.requests, args.bad_share, urls)
    finally:
        server.shutdown()
    for name, run in (("1 client", alone), (f"{args.clients} clients", loaded)):
        print(f"{name:>11}: {run['requests']} requests in {run['seconds']:.1f} s ({run['requests'] / run['seconds']:.0f}/s), "
              f"p50 {run['p50'] * 1e3:.1f} ms, p99 {run['p99'] * 1e3:.1f} ms, errors {run['errors']}")
    print(f"under load / alone: p50 x{loaded['p50'] / alone['p50']:.1f}, p99 x{loaded['p99'] / alone['p99']:.1f}, "
          f"throughput x{(loaded['requests'] / loaded['seconds']) / (alone['requests'] / alone['seconds']):.2f}")


if __name__ == "__main__":
    main()
