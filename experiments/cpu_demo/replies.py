"""How well a model predicts the scripted expert's replies on train tasks the warm start never saw.

    python experiments/cpu_demo/replies.py MODEL_FOLDER [MODEL_FOLDER ...] [--tasks 4]

The expert plays the first --tasks train tasks that are not among the warm start's sft.tasks (same
shuffle and seed as wideseek_exp/sft.py); every reply of every agent is scored in its full context, as
inference sees it (system prompt, tools, history). Prints per role the greedy next-token accuracy and the
mean negative log-likelihood of the reply tokens. A finer measure than item F1 while that is 0: it shows
whether the model has learned the replies' templates before it can copy names and facts.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import wideseek_exp.conf  # noqa: F401  (registers base_config)
    from wideseek_exp.agents.expert import ExpertEngine
    from wideseek_exp.agents.rollout import run_rollouts
    from wideseek_exp.search.factory import make_search_backend
    from wideseek_exp.tasks.loaders import load_task_set

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false"])
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    shuffled = list(tasks)
    random.Random(cfg.sft.seed).shuffle(shuffled)
    seen = {t.instance_id for t in shuffled[: cfg.sft.tasks]}
    held_out = [t for t in tasks if t.instance_id not in seen][: args.tasks]
    tokenizer = AutoTokenizer.from_pretrained(args.models[0])
    agent_cfg = OmegaConf.merge(cfg.agent, {"max_reply_tokens": int(cfg.sft.expert_max_reply_tokens)})
    trajectories = run_rollouts(held_out, 1, ExpertEngine(tokenizer), make_search_backend(cfg), tokenizer, agent_cfg,
                                cfg.search, cfg.seed)
    print(f"held-out train tasks: {', '.join(t.instance_id for t in held_out)}")
    for folder in args.models:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        totals: dict[str, list[float]] = {}
        for trajectory in trajectories:
            for agent in trajectory.agents:
                ids = torch.tensor([agent.token_ids()])
                mask = torch.tensor(agent.response_mask()[1:], dtype=torch.bool)
                with torch.no_grad():
                    logits = model(ids).logits[0, :-1]
                target = ids[0, 1:]
                logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
                correct = (logits.argmax(-1) == target)[mask].float()
                total = totals.setdefault(agent.role, [0.0, 0.0, 0.0])
                total[0] += correct.sum().item()
                total[1] += -logprobs[mask].sum().item()
                total[2] += mask.sum().item()
        line = ", ".join(f"{role} accuracy {100 * c / n:.1f}% nll {loss / n:.2f} ({int(n)} tokens)"
                         for role, (c, loss, n) in sorted(totals.items()))
        print(f"{folder}: {line}", flush=True)


if __name__ == "__main__":
    main()
