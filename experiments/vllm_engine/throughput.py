"""Rollout tokens/s with engine=vllm against engine=hf, on the same tasks, seeds and settings.

    python experiments/vllm_engine/throughput.py                       # tiny model, 16 tasks x 1 sample
    python experiments/vllm_engine/throughput.py model=qwen3_0_6b --tasks 32 --samples 2

Any further argument is a config override (as on run.py's command line). Each engine runs the whole
lead/subagent rollout over the mini-web (real bm25 search) with its own model weights from the same folder;
the figure is generated tokens / wall seconds of the rollout, and the ratio vllm / hf is printed last.
Needs a GPU with vLLM installed (requirements-gpu.txt); elsewhere it says vLLM is unavailable and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import engine_config, vllm_unavailable  # noqa: E402


def rollout_tokens_per_s(cfg, tasks, samples: int) -> tuple[float, int, float]:
    from wideseek_exp.agents import RolloutStats, run_rollouts
    from wideseek_exp.engines.factory import make_engine
    from wideseek_exp.search.factory import make_search_backend

    engine, search = make_engine(cfg), make_search_backend(cfg)
    try:
        run_rollouts(tasks[:1], 1, engine, search, engine.tokenizer, cfg.agent, cfg.search, cfg.seed)  # warm-up
        started = time.perf_counter()
        trajectories = run_rollouts(tasks, samples, engine, search, engine.tokenizer, cfg.agent, cfg.search, cfg.seed,
                                    stats=RolloutStats())
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    tokens = sum(sum(t.generated_tokens.values()) for t in trajectories)
    return tokens / seconds, tokens, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1)
    args, overrides = parser.parse_known_args()
    if vllm_unavailable():
        return 0

    from wideseek_exp.evaluation import load_eval_tasks

    results = {}
    for engine in ("hf", "vllm"):
        cfg = engine_config(engine, ["model.max_reply_tokens=256", *overrides])
        tasks = load_eval_tasks(cfg)[: args.tasks]
        results[engine] = rollout_tokens_per_s(cfg, tasks, args.samples)
        rate, tokens, seconds = results[engine]
        print(f"engine={engine}: {tokens} tokens in {seconds:.1f} s = {rate:.0f} tokens/s "
              f"({len(tasks)} tasks x {args.samples} samples, model={cfg.model.name})", flush=True)
    print(f"rollout tokens/s, vllm / hf: {results['vllm'][0] / results['hf'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
