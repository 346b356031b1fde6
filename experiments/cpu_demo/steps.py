"""How often a model takes each step of the protocol exactly as the scripted expert does, from the expert's
own states, on train tasks the warm start never saw.

    python experiments/cpu_demo/steps.py MODEL_FOLDER [MODEL_FOLDER ...] [--tasks 24] [--temperature 0]
                                         [sft.tasks=64 agent.tool_grammar=seen_urls ...]

The expert plays --tasks held-out train tasks (after the warm start's sft.tasks, same shuffle as
wideseek_exp/rl/imitation.py). At every turn of every agent the model writes its own reply to the context
the expert had (under the reply grammar when agent.tool_grammar is on, greedy unless --temperature), and
the reply counts when its action (the reply after its thinking) is exactly the expert's. Printed per kind of step:

    lead.list      the lead's first call: the list subtask, the task's description quoted in it
    lead.wave      a wave of entity subtasks ("[name] the <attributes>", names from the list report)
    lead.table     the final table
    list.search / list.access / list.report      the list subagent's three steps
    entity.search / entity.access / entity.report  an entity subagent's

A trial succeeds only if every step on its path does, so the rates multiply: where item F1 is 0, this
says which step to fix, and by how much a recipe moved it, in a minute instead of a full evaluation.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def step_kind(agent, turn) -> str:
    if agent.role == "lead":
        if turn.tool_name is None:
            return "lead.table"
        return "lead.wave" if "[" in str(turn.tool_arguments) else "lead.list"
    kind = "entity" if "[" in str(agent.subtask or "") else "list"
    return f"{kind}.{turn.tool_name or 'report'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", metavar="MODEL_FOLDER | KEY=VALUE")
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--show", type=int, default=0, help="print this many wrong replies per kind")
    args = parser.parse_intermixed_args()
    models = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import wideseek_exp.conf  # noqa: F401  (registers base_config)
    from wideseek_exp.agents import run_rollouts, strip_thinking
    from wideseek_exp.engines.base import SamplingParams
    from wideseek_exp.engines.expert import ExpertEngine
    from wideseek_exp.engines.hf import HFEngine
    from wideseek_exp.rl.imitation import imitation_split
    from wideseek_exp.search.factory import make_search_backend
    from wideseek_exp.tasks.loaders import load_task_set

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false", *overrides])
    tasks = [t for t in load_task_set(cfg.data, "train") if t.is_table]
    held_out = imitation_split(tasks, cfg.sft)[1][: args.tasks]
    tokenizer = AutoTokenizer.from_pretrained(models[0])
    # the expert's turns record the grammar of their state (tool_grammar=seen_urls records the seen URLs)
    grammar_mode = str(cfg.agent.tool_grammar)
    agent_cfg = OmegaConf.merge(cfg.agent, {"max_reply_tokens": int(cfg.sft.expert_max_reply_tokens),
                                            "max_subagents_per_call": int(cfg.sft.widths[0]),
                                            "tool_grammar": grammar_mode if grammar_mode != "off" else "schema"})
    trajectories = run_rollouts(held_out, 1, ExpertEngine(tokenizer), make_search_backend(cfg), tokenizer,
                                agent_cfg, cfg.search, cfg.seed)
    steps = [(step_kind(agent, turn), agent.turn_prompt_ids(index), list(turn.response_ids), turn.grammar)
             for trajectory in trajectories for agent in trajectory.agents
             for index, turn in enumerate(agent.turns)]
    print(f"{len(steps)} steps of {len(held_out)} held-out train tasks; grammar {grammar_mode}, "
          f"temperature {args.temperature}")
    for folder in models:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        engine = HFEngine(model, tokenizer, max_batch_size=int(cfg.engine.max_batch_size),
                          prefix_cache_mb=float(cfg.engine.prefix_cache_mb))
        right: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        shown: dict[str, int] = defaultdict(int)
        for start in range(0, len(steps), 32):
            chunk = steps[start: start + 32]
            sampling = SamplingParams(
                max_new_tokens=max(len(reply) for _, _, reply, _ in chunk) + 16, temperature=args.temperature,
                seed=start, grammars=tuple(g for *_, g in chunk) if grammar_mode != "off" else ())
            completions = engine.generate([context for _, context, _, _ in chunk], sampling)
            for (kind, _, reply, _), completion in zip(chunk, completions):
                ok = strip_thinking(tokenizer.decode(completion.token_ids)) == strip_thinking(tokenizer.decode(reply))
                right[kind][0] += ok
                right[kind][1] += 1
                if not ok and shown[kind] < args.show:
                    shown[kind] += 1
                    print(f"  [{kind}] expert: {tokenizer.decode(reply)[:300]!r}\n  [{kind}] model:  "
                          f"{tokenizer.decode(completion.token_ids)[:300]!r}")
        print(f"{folder}:")
        for kind in sorted(right):
            ok, total = right[kind]
            print(f"  {kind:14s} {100 * ok / total:5.1f}% of {total}")


if __name__ == "__main__":
    main()
