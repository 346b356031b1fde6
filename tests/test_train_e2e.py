"""task=train end to end on CPU with the tiny model and trainer=debug: steps complete and move the weights,
metrics and evaluations reach MLflow at their steps, Ctrl-C leaves a checkpoint, and a resumed run
continues at the right step with the same task order. Also the loss, worked out by hand.

The tiny model has random weights: it never writes a table, so the real reward is 0 for every
trajectory, every advantage is 0 and the gradient is exactly 0 (the CLI test checks that). The run that
must move the weights therefore uses a stand-in reward that does vary between samples.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from scripted_engine import REPO, world_config

from wideseek_exp import WideseekError
from wideseek_exp.rl import reward as reward_module
from wideseek_exp.rl.trainer import EpochSeededRepeatSampler, MultiAgentGRPOTrainer, weighted_policy_loss

# ------------------------------------------------------------------------------------------ the loss


def test_weighted_policy_loss_by_hand():
    # row 0: Â = +2, weight 0.5, ratios 1.5 (clipped at 1.28), 0.5 (a positive Â is not clipped below),
    #        1.1 (not trained); row 1: Â = -1, weight 0.25, ratios 1.5, 0.5 (clipped at 0.8), 20 (dual clip 10)
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 20.0]], dtype=torch.float64)
    logps = ratios.log().requires_grad_()
    old = torch.zeros_like(logps)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([2.0, -1.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.25], dtype=torch.float64)
    loss, flags = weighted_policy_loss(logps, old, advantages, weights, mask, 0.2, 0.28, 10.0)
    # 0.5 * (-(1.28 * 2) - 0.5 * 2) + 0.25 * (1.5 * 1 + 0.8 * 1 + 10 * 1)
    assert loss.item() == pytest.approx(0.5 * (-2.56 - 1.0) + 0.25 * (1.5 + 0.8 + 10.0))
    assert flags["clipped"].tolist() == [[True, False, False], [False, True, False]]
    assert flags["dual_clipped"].tolist() == [[False, False, False], [False, False, True]]
    loss.backward()
    # d/dlogp of -r Â w is -r Â w where unclipped; 0 where a clip holds the value, or the token is masked
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -0.5 * 2 * 0.5, 0.0, 1.5 * 0.25, 0.0, 0.0])


def test_the_kl_term_is_weighted_like_the_surrogate():
    logps = torch.zeros((1, 2), dtype=torch.float64)
    reference = torch.full((1, 2), math.log(2.0), dtype=torch.float64)  # k3 = 2 - log 2 - 1 per token
    mask = torch.tensor([[True, False]])
    no_advantage = torch.zeros(1, dtype=torch.float64)
    loss, flags = weighted_policy_loss(logps, logps, no_advantage, torch.tensor([0.5], dtype=torch.float64), mask,
                                       0.2, 0.28, 10.0, beta=0.1, ref_logps=reference)
    assert loss.item() == pytest.approx(0.5 * 0.1 * (1 - math.log(2.0)))
    assert flags["kl"][0, 0].item() == pytest.approx(1 - math.log(2.0))


def test_trl_is_the_pinned_release():
    import trl

    from wideseek_exp.rl.trainer import TRL_VERSION

    assert trl.__version__ == TRL_VERSION
    assert "trl==" + TRL_VERSION in (REPO / "requirements.txt").read_text()
    assert {"_generate_and_score_completions", "_compute_loss", "_get_train_sampler"} <= set(vars(MultiAgentGRPOTrainer))


# ------------------------------------------------------------------------------------------ end to end


def train_config(tmp_path: Path, *overrides: str):
    world_config()  # the world and the tiny model, built once
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "task=train", "trainer=debug", "model=tiny_random", "model.max_reply_tokens=32", "trainer.tasks_per_step=1",
            # fp32 updates: the update's logprobs then equal the sampler's to 1e-4 (bf16: test_bf16_updates_...)
            "trainer.num_generations=2", "trainer.bf16=false", "eval.limit=1", "eval.samples=1", f"paths.outputs={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=train-e2e", *overrides])


def run(cfg, out: Path):
    from wideseek_exp.rl.training import train_policy
    from wideseek_exp.tracking import job_run

    with job_run(cfg, out) as tracker:
        run_id = tracker.run_id
        try:
            return train_policy(cfg, tracker, out), run_id
        except KeyboardInterrupt:
            return None, run_id


def stand_in_reward(trajectory, task, judge, cfg):
    """The share of even token ids in the lead's replies: differs between samples, learnable, and honest
    about being a stand-in (see the module docstring)."""
    ids = [token for turn in trajectory.root.turns for token in turn.response_ids]
    share = sum(token % 2 == 0 for token in ids) / max(len(ids), 1)
    return reward_module.Reward(share, share, 0.0, 0.0, 0.0, 0.0, 0.0, valid=True)


def metric_steps(client, run_id: str, name: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, name)}


@pytest.mark.slow
def test_train_interrupt_and_resume(tmp_path, monkeypatch):
    import mlflow
    from safetensors.torch import load_file

    monkeypatch.setattr(reward_module, "trajectory_reward", stand_in_reward)
    out = tmp_path / "job"
    out.mkdir()
    cfg = train_config(tmp_path, "trainer.max_steps=3", "trainer.eval_every=2", "trainer.save_every=0")

    # Run 1: Ctrl-C as step 3 starts. Nothing was saved periodically (save_every=0): the interrupt saves step 2.
    original = MultiAgentGRPOTrainer._generate_and_score_completions

    def interrupted_at_step_3(self, inputs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return original(self, inputs)

    with monkeypatch.context() as patch:
        patch.setattr(MultiAgentGRPOTrainer, "_generate_and_score_completions", interrupted_at_step_3)
        summary, first_run = run(cfg, out)
    assert summary is None
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    trained, initial = load_file(checkpoint / "model.safetensors"), load_file(Path(cfg.model.path) / "model.safetensors")
    changed = [name for name in initial if not torch.equal(trained[name], initial[name])]
    assert len(changed) > len(initial) // 2, "two steps should move most weights"

    client = mlflow.MlflowClient(cfg.tracking.uri)
    rewards = metric_steps(client, first_run, "reward/mean")
    assert sorted(rewards) == [1, 2] and all(0 < value < 1 for value in rewards.values())
    for name in ("reward/answer", "score/item_f1", "advantage/std", "trajectory/agents", "tokens/lead",
                 "rows/in_loss", "policy/clip_fraction", "policy/entropy", "grad_norm", "learning_rate", "step_time"):
        assert sorted(metric_steps(client, first_run, name)) == [1, 2], name
    assert metric_steps(client, first_run, "advantage/std")[1] > 0.5  # two samples: Â = +-0.707
    # the engine's sampling logprobs are the policy's own, also after the weights moved (no stale KV cache)
    assert all(gap < 1e-4 for gap in metric_steps(client, first_run, "policy/logprob_gap").values())
    assert metric_steps(client, first_run, "learning_rate")[2] == pytest.approx(1e-4)  # constant
    assert sorted(metric_steps(client, first_run, "eval.item_f1_avg")) == [2]
    artifacts = {a.path for a in client.list_artifacts(first_run, "eval/step_000002")}
    assert "eval/step_000002/trajectories_sample.jsonl" in artifacts

    # Run 2: trainer.resume=true in the same job folder continues at step 3, on the task an uninterrupted
    # run would have drawn, and ends with the final evaluation.
    resumed = train_config(tmp_path, "trainer.max_steps=3", "trainer.eval_every=2", "trainer.save_every=0",
                           "trainer.resume=true")
    summary, second_run = run(resumed, out)
    assert summary["steps"] == 3 and summary["eval"] is not None
    assert (out / "final" / "model.safetensors").is_file()
    assert sorted(metric_steps(client, second_run, "reward/mean")) == [3]
    assert sorted(metric_steps(client, second_run, "eval.item_f1_avg")) == [3]

    steps = [json.loads(line) for line in (out / "train_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    # the task order of an uninterrupted run: one task per step, its 2 samples in one micro-batch (debug)
    order = list(EpochSeededRepeatSampler(range(497), mini_repeat_count=2, batch_size=1, repeat_count=1, seed=0))
    expected = [order[2 * k] for k in range(3)]
    from wideseek_exp.tasks.loaders import load_task_set

    train_ids = [task.instance_id for task in load_task_set(cfg.data, "train")]
    assert [s["trajectories"][0]["instance_id"] for s in steps] == [train_ids[k] for k in expected]
    assert all([t["sample"] for t in s["trajectories"]] == [0, 1] for s in steps)


def test_resume_without_a_checkpoint_names_what_to_do(tmp_path):
    from wideseek_exp.rl.training import train_policy
    from wideseek_exp.tracking import JobRun

    cfg = train_config(tmp_path, "trainer.resume=true", "tracking.enabled=false")
    with pytest.raises(WideseekError, match="no checkpoint in .*hydra.run.dir"):
        train_policy(cfg, JobRun(None), tmp_path / "empty")


@pytest.mark.slow
def test_grpo_steps_raise_the_mean_reward_on_their_training_tasks(tmp_path, monkeypatch):
    """The direction of the policy gradient: 12 steps of 2 tasks x 4 rollouts under a learnable reward (the
    share of even token ids) raise its mean. A flipped sign or a mis-aligned logprob lowers it or leaves it
    flat."""
    monkeypatch.setattr(reward_module, "trajectory_reward", stand_in_reward)
    cfg = train_config(tmp_path, "trainer.max_steps=12", "trainer.tasks_per_step=2", "trainer.num_generations=4",
                       "trainer.learning_rate=1e-2", "trainer.save_every=0", "trainer.eval_every=0",
                       "tracking.enabled=false")
    out = tmp_path / "job"
    out.mkdir()
    summary, _ = run(cfg, out)
    assert summary["steps"] == 12
    means = []
    for line in (out / "train_steps.jsonl").read_text().splitlines():
        rewards = [t["reward"]["total"] for t in json.loads(line)["trajectories"]]
        means.append(sum(rewards) / len(rewards))
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.05, means


@pytest.mark.slow
def test_bf16_updates_score_the_fp32_rollouts_within_bf16_rounding(tmp_path, monkeypatch):
    """trainer.bf16=true on a CPU: the update runs in bf16 autocast, the rollouts stay fp32 (the same tokens as
    an fp32 run's with the same seed), so the update's logprobs differ from the sampler's by bf16 rounding only."""
    import mlflow

    monkeypatch.setattr(reward_module, "trajectory_reward", stand_in_reward)
    runs = {}
    for bf16 in ("false", "true"):
        cfg = train_config(tmp_path / bf16, "trainer.max_steps=1", "trainer.save_every=0", "trainer.eval_every=0",
                           f"trainer.bf16={bf16}")
        out = tmp_path / bf16 / "job"
        out.mkdir(parents=True)
        summary, run_id = run(cfg, out)
        assert summary["steps"] == 1
        step = json.loads((out / "train_steps.jsonl").read_text().splitlines()[0])
        gap = metric_steps(mlflow.MlflowClient(cfg.tracking.uri), run_id, "policy/logprob_gap")[1]
        runs[bf16] = ([(t["reward"]["total"], t["generated_tokens"]) for t in step["trajectories"]], gap)
    assert runs["true"][0] == runs["false"][0]  # the same rollouts: decoded in fp32 either way
    assert runs["false"][1] < 1e-4 < runs["true"][1] < 0.05


@pytest.mark.slow
def test_cli_one_lora_step_with_the_real_reward(cli, tmp_path):
    world_config()
    done = cli("task=train", "trainer=debug", "trainer.max_steps=1", "trainer.tasks_per_step=1",
               "trainer.num_generations=2", "model.max_reply_tokens=32", "model.lora.enabled=true", "eval.limit=1",
               "eval.samples=1", f"hydra.run.dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert done.returncode == 0, done.stderr[-3000:]
    # a random tiny model writes no table: reward 0 everywhere, Â = 0, nothing in the loss, no gradient
    assert "step 1/1: reward 0.000 (valid 0.00" in done.stdout
    assert "rows in loss 0, loss 0, grad norm 0," in done.stdout
    assert (tmp_path / "final" / "adapter_config.json").is_file()  # LoRA saves the adapter
    assert (tmp_path / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
