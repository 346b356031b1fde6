"""Does engine=vllm generate what engine=hf generates? Greedy decoding of the same prompts on the same model.

    python experiments/vllm_engine/greedy_agreement.py                 # tiny model, 16 task prompts
    python experiments/vllm_engine/greedy_agreement.py model=qwen3_0_6b --new-tokens 128

Prints, over the prompts: the share of replies identical token for token, the mean length of the common
prefix as a share of the reply, and the largest gap between the two engines' logprobs on that prefix. Kernels
differ (vLLM's attention and bf16 paths), so long greedy replies may part where two tokens are nearly tied;
the logprob gap tells a near-tie from a real mismatch (weights, positions, the chat template).
Needs a GPU with vLLM installed; elsewhere it says vLLM is unavailable and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import engine_config, vllm_unavailable  # noqa: E402

from wideseek_exp.engines.base import SamplingParams  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args, overrides = parser.parse_known_args()
    if vllm_unavailable():
        return 0

    from wideseek_exp.engines.factory import make_engine
    from wideseek_exp.evaluation import load_eval_tasks

    replies = {}
    for engine_name in ("hf", "vllm"):
        cfg = engine_config(engine_name, overrides)
        engine = make_engine(cfg)
        tokenizer = engine.tokenizer
        prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": task.query}],
                                                                  tokenize=False, add_generation_prompt=True),
                                    add_special_tokens=False)
                   for task in load_eval_tasks(cfg)[: args.prompts]]
        replies[engine_name] = engine.generate(prompts, SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0))
        engine.close()

    identical, prefix_shares, gaps = 0, [], []
    for hf, vllm in zip(replies["hf"], replies["vllm"]):
        common = next((i for i, (a, b) in enumerate(zip(hf.token_ids, vllm.token_ids)) if a != b),
                      min(len(hf.token_ids), len(vllm.token_ids)))
        identical += hf.token_ids == vllm.token_ids
        prefix_shares.append(common / max(len(hf.token_ids), 1))
        gaps += [abs(a - b) for a, b in zip(hf.logprobs[:common], vllm.logprobs[:common])]
    count = len(replies["hf"])
    print(f"{count} prompts, greedy, {args.new_tokens} new tokens, model={cfg.model.name}")
    print(f"identical replies: {identical}/{count}; mean common prefix: {sum(prefix_shares) / count:.1%} of the reply; "
          f"largest logprob gap on it: {max(gaps, default=0.0):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
