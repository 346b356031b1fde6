"""GRPO on replies decoded under a reply grammar (agent.tool_grammar): the rows carry the masks each token was
sampled under, and the trainer's logprobs are those of the masked distribution, the engine's own sampling
logprobs. Without the masks the importance ratio would compare two different distributions."""

import types
from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf
from scripted_engine import world_config

from wideseek_exp.agents import run_rollouts
from wideseek_exp.engines.hf import HFEngine, allowed_tokens
from wideseek_exp.models.loader import load_model_and_tokenizer
from wideseek_exp.rl.rows import collate, trajectory_rows
from wideseek_exp.rl.trainer import MultiAgentGRPOTrainer
from wideseek_exp.search.factory import make_search_backend
from wideseek_exp.tasks.loaders import load_task_set


@pytest.fixture(scope="module")
def grammar_rollout():
    cfg = world_config()
    model, tokenizer = load_model_and_tokenizer(cfg.paths.generated + "/models/tiny", dtype="float32", device="cpu")
    engine = HFEngine(model, tokenizer, max_batch_size=8, prefix_cache_mb=64)
    agent = OmegaConf.merge(cfg.agent, {"tool_grammar": "seen_urls", "max_reply_tokens": 48, "temperature": 0.7,
                                        "lead_max_turns": 2, "subagent_max_turns": 2})
    tasks = list(load_task_set(cfg.data, "train"))[:2]
    trajectories = run_rollouts(tasks, 2, engine, make_search_backend(cfg), tokenizer, agent, cfg.search, seed=1)
    return model, tokenizer, engine, trajectories


def scorer(temperature: float):
    """The trainer's scoring method on a stand-in for the trainer (its autocast, temperature, chunking)."""
    fake = types.SimpleNamespace(accelerator=types.SimpleNamespace(autocast=nullcontext), temperature=temperature,
                                 forward_chunk_rows=2)
    return lambda model, batch: MultiAgentGRPOTrainer._logps_and_entropies(fake, model, batch, compute_entropy=True)


def test_rows_replay_each_turns_grammar_into_the_masks_it_was_sampled_under(grammar_rollout):
    model, tokenizer, engine, trajectories = grammar_rollout
    rows = [row for t in trajectories for row in trajectory_rows(t, 0, True, False, engine.grammar_masks)]
    assert rows and all(row.allowed is not None and len(row.allowed) == len(row.completion_ids) for row in rows)
    for row in rows:
        allowed = allowed_tokens(row.allowed, engine.vocab_size)
        chosen = allowed[torch.arange(len(row.completion_ids)), torch.tensor(row.completion_ids)]
        assert bool(chosen.all())  # every token, reply or follow-up, is allowed where it stands
        replies = torch.tensor(row.trained_mask, dtype=torch.bool)
        assert bool((allowed[~replies]).all())  # follow-ups (tool results) are not constrained
        assert bool((~allowed[replies]).any())  # replies are


def test_the_trainer_scores_constrained_tokens_with_the_engines_sampling_logprobs(grammar_rollout):
    model, tokenizer, engine, trajectories = grammar_rollout
    rows = [row for t in trajectories for row in trajectory_rows(t, 0, True, False, engine.grammar_masks)]
    batch = collate(rows, tokenizer.pad_token_id)
    score = scorer(temperature=0.7)
    with torch.no_grad():
        logps, entropies = score(model, batch)
        unmasked, _ = score(model, {k: v for k, v in batch.items() if k != "allowed_tokens"} | {"allowed_tokens":
                                    torch.full_like(batch["allowed_tokens"], -1)})
    trained = batch["trained_mask"].bool()
    gap = (logps - batch["old_per_token_logps"]).abs()[trained]
    assert float(gap.max()) < 1e-4
    # scored without the masks, the constrained tokens look less likely than they were when sampled
    assert float((unmasked - batch["old_per_token_logps"]).abs()[trained].max()) > 0.01
    assert bool((entropies[trained] >= -1e-6).all())
