"""Training speed of the tiny model on a CPU: fp32, bf16 autocast, and bf16 with freed memory kept in the
heap (sft.keep_freed_memory), each in its own process, on the same seeded rows of varying length (the
warm start's whole-conversation rows run from a few hundred to 6144 tokens).

    python experiments/cpu_demo/train_speed.py [--rows 8] [--min 1000] [--max 6000]

Prints tokens per second, system time and page faults of each, and the ratio to fp32 measured in the same
run. Needs the random tiny model (python run.py task=build makes it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
MODES = ("fp32", "bf16", "bf16+heap")


def measure(mode: str, rows: int, low: int, high: int) -> dict:
    """One mode, in this process: forward, backward and AdamW step on each row; the first row warms up."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from wideseek_exp.rl.imitation import keep_freed_memory

    if mode == "bf16+heap":
        keep_freed_memory()
    folder = REPO / "data" / "generated" / "models" / "tiny"
    if not folder.exists():
        raise SystemExit(f"{folder} is missing: run `python run.py task=build` first")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)
    lengths = [rng.randint(low, high) for _ in range(rows + 1)]
    tokens, seconds = 0, 0.0
    before = resource.getrusage(resource.RUSAGE_SELF)
    for index, length in enumerate(lengths):
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(index))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if index:  # the first step warms up the allocator and kernels
            tokens, seconds = tokens + length, seconds + time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "tokens_per_s": tokens / seconds, "system_s": after.ru_stime - before.ru_stime,
            "page_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--min", type=int, default=1000)
    parser.add_argument("--max", type=int, default=6000)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement (child process)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.rows, args.min, args.max)))
        return
    results = []
    for mode in MODES:  # a process each: the heap setting is process-wide
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--rows", str(args.rows), "--min",
                              str(args.min), "--max", str(args.max)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]["tokens_per_s"]
    print(f"{'mode':10s} {'tokens/s':>9s} {'vs fp32':>8s} {'system s':>9s} {'page faults':>12s}")
    for r in results:
        print(f"{r['mode']:10s} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / base:7.2f}x {r['system_s']:9.1f} "
              f"{r['page_faults']:12d}")


if __name__ == "__main__":
    main()
