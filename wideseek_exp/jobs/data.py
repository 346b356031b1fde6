"""task=data: build the generator on the configured engine, run the synthesis pipeline
(tasks/synthesis.py) over the configured table source, write the data card and the `datasets`
copy, and log counts, tokens and cost per stage to MLflow.

    <synthesis.out_dir>/train.jsonl, test.jsonl   kept tasks (WideSeek-R1 layout)
                        drops.jsonl               dropped tasks with stage, code and reason
                        llm_cache.jsonl           every generator call, keyed by its hash
                        card.md, card.json        the data card
                        dataset/                  the kept tasks as a datasets DatasetDict
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import SamplingParams
from wideseek_exp.rl.imitation import require_warm_start
from wideseek_exp.scoring import make_judge
from wideseek_exp.tasks.sources import load_tables
from wideseek_exp.tasks.synthesis import Synthesizer, card, render_card, save_dataset
from wideseek_exp.tasks.textgen import CACHE_FILE, CachedGenerator, TextReply, TextRequest
from wideseek_exp.tracking import JobRun
from wideseek_exp.world import TINY_SOURCES, build_world


class EngineTextGenerator:
    """TextGenerator on any Engine: each prompt as one user message through the model's chat
    template; requests that share their sampling settings go to the engine as one batch. The engine
    is built on the first call, so a rerun with everything cached loads no model."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.model = f"{cfg.engine.name}:{cfg.model.path}@{cfg.model.revision or ''}"
        self.engine = None

    def generate(self, requests: list[TextRequest]) -> list[TextReply]:
        if self.engine is None:
            from wideseek_exp.engines.factory import make_engine

            self.engine = make_engine(self.cfg)
        from wideseek_exp.agents.parser import final_answer

        tokenizer = self.engine.tokenizer
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[(request.temperature, request.max_tokens, request.seed)].append(index)
        replies: list[TextReply | None] = [None] * len(requests)
        for (temperature, max_tokens, seed), indices in groups.items():
            prompts = []
            for index in indices:
                text = tokenizer.apply_chat_template([{"role": "user", "content": requests[index].prompt}],
                                                     tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=bool(self.cfg.synthesis.thinking))
                prompts.append(tokenizer.encode(text, add_special_tokens=False))
            # a prompt the model cannot take is refused, not sent: its candidate is dropped with the reason,
            # and the other candidates go on
            context = getattr(self.engine, "context_limit", None)
            fits = []
            for k, ids in enumerate(prompts):
                if context is None or len(ids) < context:
                    fits.append(k)
                else:
                    replies[indices[k]] = TextReply("", len(ids), 0, f"the prompt is {len(ids)} tokens, over the "
                                                                       f"model's context of {context}")
            sampling = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, seed=seed)
            completions = self.engine.generate([prompts[k] for k in fits], sampling) if fits else []
            for k, completion in zip(fits, completions):
                text = final_answer(tokenizer.decode(completion.token_ids, skip_special_tokens=False))
                replies[indices[k]] = TextReply(text, len(prompts[k]), len(completion.token_ids))
        return replies

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class AgentBaseline:
    """synthesis.baseline=agent: the configured agent answers each task with search, one rollout per task,
    on the generator's engine (built on first use, shared with the generator)."""

    def __init__(self, cfg: DictConfig, generator: EngineTextGenerator):
        self.cfg, self.generator, self.search = cfg, generator, None

    def __call__(self, tasks: list) -> list[str]:
        from wideseek_exp.agents import run_rollouts
        from wideseek_exp.engines.factory import make_engine
        from wideseek_exp.search.factory import make_search_backend

        if self.generator.engine is None:
            self.generator.engine = make_engine(self.cfg)
        if self.search is None:
            self.search = make_search_backend(self.cfg)
        engine = self.generator.engine
        trajectories = run_rollouts(tasks, 1, engine, self.search, engine.tokenizer, self.cfg.agent, self.cfg.search,
                                    seed=self.cfg.synthesis.seed)
        return [trajectory.final_answer or "" for trajectory in trajectories]


def usage_metrics(summary: dict) -> dict[str, float]:
    metrics = {"data.candidates": summary["candidates"], "data.kept.train": summary["kept"]["train"],
               "data.kept.test": summary["kept"]["test"]}
    metrics.update({f"data.passed.{stage}": n for stage, n in summary["passed"].items()})
    metrics.update({f"data.dropped.{reason.replace('/', '.')}": n for reason, n in summary["drop_reasons"].items()})
    for stage, usage in summary.get("usage", {}).items():
        for key in ("calls_this_run", "cached_this_run", "generated_calls", "prompt_tokens", "completion_tokens", "cost"):
            if usage[key] is not None:
                metrics[f"data.{stage}.{key}"] = usage[key]
    return metrics


def run(cfg: DictConfig, tracker: JobRun, out: Path | None, generator=None) -> dict:
    """`generator` (a TextGenerator) replaces the engine-backed one: tests pass a double."""
    s = cfg.synthesis
    out_dir = Path(s.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = make_judge(cfg.judge)
    inner = generator
    if inner is None:
        if cfg.model.source in TINY_SOURCES:
            build_world(cfg, quiet=True)
            require_warm_start(cfg)
        inner = EngineTextGenerator(cfg)
    cached = CachedGenerator(inner, out_dir / CACHE_FILE, s.max_concurrency)
    print(f"synthesising broad tasks from source={s.source} with {cached.model}, judge={judge.name} -> {out_dir}",
          flush=True)
    baseline_agent = None
    if s.baseline == "agent":
        if not isinstance(inner, EngineTextGenerator):
            raise WideseekError("synthesis.baseline=agent runs the agent on the generator's engine; a test "
                                "generator has none")
        baseline_agent = AgentBaseline(cfg, inner)
    synthesizer = Synthesizer(s, cached, judge, out_dir, s.source, baseline_agent)
    if synthesizer.done:
        print(f"resuming: {len(synthesizer.done)} candidate tasks already decided", flush=True)

    def progress() -> None:
        print(f"  {len(synthesizer.done)} candidates decided", file=sys.stderr, flush=True)

    try:
        synthesizer.run(load_tables(s), on_chunk=progress)
    finally:
        if hasattr(inner, "close"):
            inner.close()

    prices = (s.price_per_input_token, s.price_per_output_token)
    summary = card(out_dir, cached.usage, prices)
    text = render_card(summary, f"Synthesised broad tasks ({s.source}, {cached.model}, judge={judge.name})")
    (out_dir / "card.md").write_text(text, encoding="utf-8")
    (out_dir / "card.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if summary["kept"]["train"] + summary["kept"]["test"]:
        save_dataset(out_dir)
    tracker.log_metrics(usage_metrics(summary))
    for name in ("card.md", "card.json", "drops.jsonl"):
        if (out_dir / name).is_file():
            tracker.log_artifact(out_dir / name)
    print(text, flush=True)
    return summary


def interrupted(cfg: DictConfig, out: Path | None) -> tuple[str, list[str]]:
    """What a Ctrl-C leaves: the tasks decided so far and every answered generator call (the cache); a
    rerun skips the decided tasks and asks the cache first."""
    from wideseek_exp.tasks.synthesis import DROPS_FILE, SPLIT_FILES
    from wideseek_exp.trialstore import count_complete_lines

    out_dir = Path(cfg.synthesis.out_dir)
    kept = sum(count_complete_lines(out_dir / name) for name in SPLIT_FILES.values())
    return (f"{kept} tasks kept and {count_complete_lines(out_dir / DROPS_FILE)} dropped, "
            f"{count_complete_lines(out_dir / CACHE_FILE)} answered generator calls in {out_dir}", [])
