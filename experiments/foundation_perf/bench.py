"""Foundation performance: index build, search and access latency, tiny-model batched generation.

    python experiments/foundation_perf/bench.py            # uses (and builds if needed) data/generated

Targets (2-core CPU): whole-corpus index build < 10 s; search p50 < 5 ms per query; access < 1 ms;
tiny-model generation tokens/s at batch 8 >= 3x batch 1 (ratio measured in this run).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

import wideseek_exp.conf  # noqa: E402,F401
from wideseek_exp.engines.base import SamplingParams  # noqa: E402
from wideseek_exp.engines.factory import make_engine  # noqa: E402
from wideseek_exp.search.bm25 import BM25Backend, build_index  # noqa: E402
from wideseek_exp.search.miniweb import load_pages  # noqa: E402
from wideseek_exp.tasks.miniweb import load_tasks  # noqa: E402
from wideseek_exp.world import build_world  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_search(cfg, queries: int, seed: int) -> dict:
    corpus, rows = Path(cfg.paths.corpus), {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_index(corpus, Path(tmp) / "index", force=True)
        rows["index build (s)"] = (time.perf_counter() - start, "< 10")
    backend = BM25Backend.load(Path(cfg.paths.index))
    pages = load_pages(corpus)
    rng = random.Random(seed)
    sample = rng.sample(pages, min(queries, len(pages)))
    # Queries as an agent writes them: an entity name plus the attribute it is after.
    attributes = ["population", "capital", "atomic mass", "discovery year", "IATA code", "admission date", "currency"]
    texts = [f"{page.title} {rng.choice(attributes)}" for page in sample]
    latencies = []
    for text in texts:
        start = time.perf_counter()
        backend.search([text], top_k=3)
        latencies.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    backend.search(texts, top_k=3)
    batched = (time.perf_counter() - start) * 1e3 / len(texts)
    rows["search p50 (ms/query)"] = (statistics.median(latencies), "< 5")
    rows["search p95 (ms/query)"] = (percentile(latencies, 0.95), "")
    rows["search batched (ms/query)"] = (batched, "")
    urls = [page.url for page in sample]
    access = []
    for url in urls:
        start = time.perf_counter()
        backend.access([url])
        access.append((time.perf_counter() - start) * 1e3)
    rows["access p50 (ms)"] = (statistics.median(access), "< 1")
    rows["access max (ms)"] = (max(access), "")
    rows["pages"] = (len(pages), "")
    return rows


def bench_generation(cfg, new_tokens: int, batch: int, seed: int) -> dict:
    engine = make_engine(cfg)
    tokenizer = engine.tokenizer
    tasks = load_tasks(Path(cfg.paths.miniweb_tasks) / "test.jsonl")[:batch]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": task.query}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        for task in tasks
    ]
    # Random weights rarely emit EOS, so every row generates close to max_new_tokens.
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=seed)
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=8, seed=seed))  # warm-up

    start = time.perf_counter()
    single = [engine.generate([prompt], sampling)[0] for prompt in prompts]
    single_rate = sum(len(c.token_ids) for c in single) / (time.perf_counter() - start)
    start = time.perf_counter()
    batched = engine.generate(prompts, sampling)
    batch_rate = sum(len(c.token_ids) for c in batched) / (time.perf_counter() - start)
    return {
        "prompt tokens (mean)": (statistics.mean(len(p) for p in prompts), ""),
        "tokens/s at batch 1": (single_rate, ""),
        f"tokens/s at batch {batch}": (batch_rate, ""),
        f"batch {batch} / batch 1": (batch_rate / single_rate, ">= 3"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.generated=/tmp/gen")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny_random", *args.overrides])
    build_world(cfg, force=False)
    rows = {**bench_search(cfg, args.queries, args.seed), **bench_generation(cfg, args.new_tokens, args.batch, args.seed)}
    print(f"\n{'measure':<28}{'value':>12}  target")
    for name, (value, target) in rows.items():
        shown = f"{value:12.3f}" if isinstance(value, float) else f"{value:12d}"
        print(f"{name:<28}{shown}  {target}")


if __name__ == "__main__":
    main()
