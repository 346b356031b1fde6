"""How well a model predicts the scripted expert's replies on train tasks the warm start never saw.

    python experiments/cpu_demo/replies.py MODEL_FOLDER [MODEL_FOLDER ...] [--tasks 4] [sft.tasks=64 ...]

The expert plays the first --tasks train tasks that are not among the warm start's sft.tasks (same
shuffle and seed as wideseek_exp/rl/imitation.py); every reply of every agent is scored in its full context, as
inference sees it (system prompt, tools, history). Prints per role the greedy next-token accuracy and the
mean negative log-likelihood of the reply tokens. A finer measure than item F1 while that is 0: it shows
whether the model has learned the replies' templates before it can copy names and facts.

The reply tokens are also split in two: `copied` tokens, whose 4-gram (the token with the three before
it) occurs earlier in the agent's own task or tool results (the names, URLs, descriptions and facts a
reply takes from its context), and `template` tokens, the rest (tags, JSON keys, fixed wording).
Accuracy on copied tokens is the skill every table cell needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", metavar="MODEL_FOLDER | KEY=VALUE",
                        help="model folders, and the config overrides their warm start was built with (e.g. "
                             "sft.tasks=64: the held-out tasks come after its sft.tasks)")
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_intermixed_args()
    args.models = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import wideseek_exp.conf  # noqa: F401  (registers base_config)
    from wideseek_exp.agents import run_rollouts
    from wideseek_exp.engines.expert import ExpertEngine
    from wideseek_exp.rl.imitation import imitation_split
    from wideseek_exp.search.factory import make_search_backend
    from wideseek_exp.tasks.loaders import load_task_set

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false", *overrides])
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    seen = {t.instance_id for t in imitation_split(tasks, cfg.sft)[0]}
    held_out = [t for t in tasks if t.instance_id not in seen][: args.tasks]
    tokenizer = AutoTokenizer.from_pretrained(args.models[0])
    agent_cfg = OmegaConf.merge(cfg.agent, {"max_reply_tokens": int(cfg.sft.expert_max_reply_tokens),
                                            "max_subagents_per_call": int(cfg.sft.widths[0])})
    search = make_search_backend(cfg)
    trajectories = run_rollouts(held_out, 1, ExpertEngine(tokenizer), search, tokenizer, agent_cfg, cfg.search,
                                cfg.seed)
    user_start = tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    print(f"held-out train tasks: {', '.join(t.instance_id for t in held_out)}")
    for folder in args.models:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        totals: dict[str, list[float]] = {}
        for trajectory in trajectories:
            for agent in trajectory.agents:
                token_ids, response = agent.token_ids(), agent.response_mask()
                ids = torch.tensor([token_ids])
                mask = torch.tensor(response[1:], dtype=torch.bool)
                content = torch.tensor(copied_tokens(token_ids, response, user_start)[1:], dtype=torch.bool)
                with torch.no_grad():
                    logits = model(ids).logits[0, :-1]
                target = ids[0, 1:]
                logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
                hits = logits.argmax(-1) == target
                total = totals.setdefault(agent.role, [0.0] * 7)
                total[0] += hits[mask].sum().item()
                total[1] += -logprobs[mask].sum().item()
                total[2] += mask.sum().item()
                total[3] += hits[mask & ~content].sum().item()
                total[4] += (mask & ~content).sum().item()
                total[5] += hits[content].sum().item()
                total[6] += content.sum().item()
        print(f"{folder}:", flush=True)
        for role, (c, loss, n, tc, tn, cc, cn) in sorted(totals.items()):
            print(f"  {role}: accuracy {100 * c / n:.1f}% nll {loss / n:.2f} ({int(n)} tokens); template "
                  f"{100 * tc / max(tn, 1):.1f}% ({int(tn)}), copied {100 * cc / max(cn, 1):.1f}% ({int(cn)})",
                  flush=True)


def copied_tokens(token_ids: list[int], response: list[int], user_start: list[int]) -> list[bool]:
    """Per token: a reply token whose 4-gram occurs earlier among the context tokens from the first user
    turn on (task and tool results; never a reply, never the system prompt)."""
    first_user = next((i for i in range(len(token_ids)) if token_ids[i:i + len(user_start)] == user_start), 0)
    seen: set[tuple[int, ...]] = set()
    out = []
    for i in range(len(token_ids)):
        gram = tuple(token_ids[i - 3: i + 1]) if i >= 3 else None
        out.append(bool(response[i]) and gram in seen)
        if not response[i] and i >= first_user + 3 and gram is not None:
            seen.add(gram)
    return out


if __name__ == "__main__":
    main()
