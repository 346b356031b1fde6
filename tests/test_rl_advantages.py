"""rl/advantages.py against numbers worked out by hand: group normalisation and the dual-level weights of
every weighting mode."""

import math

import pytest
import torch

from wideseek_exp.rl.advantages import group_advantages, token_weights


def close(actual: torch.Tensor, expected: list[float], tolerance: float = 1e-6) -> None:
    assert actual.tolist() == pytest.approx(expected, rel=tolerance, abs=1e-12)


# --------------------------------------------------------------------------------- group normalisation


def test_advantage_is_the_reward_minus_the_group_mean_over_the_unbiased_std():
    # mean 0.5; deviations 0.4, -0.2, -0.2, 0; unbiased variance 0.24 / 3 = 0.08, std 0.2828427
    rewards = torch.tensor([[0.9, 0.3, 0.3, 0.5]], dtype=torch.float64)
    std = math.sqrt(0.08)
    close(group_advantages(rewards)[0], [0.4 / (std + 1e-6), -0.2 / (std + 1e-6), -0.2 / (std + 1e-6), 0.0])
    assert group_advantages(rewards)[0, 0].item() == pytest.approx(1.4142086, rel=1e-6)


def test_groups_are_normalised_separately():
    rewards = torch.tensor([[1.0, 0.0], [0.2, 0.6]], dtype=torch.float64)
    # each pair: deviations +-d, unbiased std sqrt(2 d^2) = d * sqrt(2): advantages +-1/sqrt(2)
    advantages = group_advantages(rewards)
    close(advantages[0], [1 / math.sqrt(2), -1 / math.sqrt(2)], tolerance=1e-5)
    close(advantages[1], [-1 / math.sqrt(2), 1 / math.sqrt(2)], tolerance=1e-5)


def test_a_group_with_equal_rewards_has_zero_advantages():
    rewards = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert group_advantages(rewards).abs().max().item() == 0.0


def test_an_unscored_trajectory_is_left_out_of_the_baseline_and_gets_zero():
    # scored 1, 0, 0.5: mean 0.5, unbiased std sqrt((0.25 + 0.25 + 0) / 2) = 0.5
    rewards = torch.tensor([[1.0, math.nan, 0.0, 0.5]], dtype=torch.float64)
    close(group_advantages(rewards)[0], [0.5 / 0.500001, 0.0, -0.5 / 0.500001, 0.0])
    lonely = torch.tensor([[math.nan, 0.7, math.nan]], dtype=torch.float64)
    assert group_advantages(lonely).abs().max().item() == 0.0


# --------------------------------------------------------------------------------------------- weights

# One step of T = 3 trajectories. Trajectory 0: a lead alone, 10 trained tokens. Trajectory 1: a lead
# (4 tokens) and two subagents (6 and 10). Trajectory 2: one agent with nothing trained (as after turn
# selection), and a padding-like empty row.
ROW_TRAJECTORY = torch.tensor([0, 1, 1, 1, 2])
ROW_TOKENS = torch.tensor([10, 4, 6, 10, 0])


def test_paper_weight_is_one_over_T_N_L():
    weights = token_weights("paper", ROW_TRAJECTORY, ROW_TOKENS, trajectories=3)
    close(weights, [1 / 30, 1 / 36, 1 / 54, 1 / 90, 0.0])
    # each trajectory's tokens weigh 1/T in total, however many agents it spawned
    per_trajectory = torch.zeros(3, dtype=torch.float64).index_add_(0, ROW_TRAJECTORY, weights * ROW_TOKENS)
    close(per_trajectory, [1 / 3, 1 / 3, 0.0])


def test_one_agent_trajectories_reduce_to_a_mean_over_trajectories_of_token_means():
    weights = token_weights("paper", torch.tensor([0, 1]), torch.tensor([5, 20]), trajectories=2)
    close(weights, [1 / 10, 1 / 40])


def test_token_mean_is_one_mean_over_every_trained_token():
    close(token_weights("token_mean", ROW_TRAJECTORY, ROW_TOKENS, trajectories=3), [1 / 30] * 4 + [0.0])


def test_agent_only_drops_the_token_level_for_the_mean_agent_length():
    # mean L over the four trained rows = 30 / 4 = 7.5
    weights = token_weights("agent_only", ROW_TRAJECTORY, ROW_TOKENS, trajectories=3)
    close(weights, [1 / 22.5, 1 / 67.5, 1 / 67.5, 1 / 67.5, 0.0])


def test_token_only_drops_the_agent_level_for_the_mean_agent_count():
    # mean N over trajectories with trained agents = (1 + 3) / 2 = 2
    weights = token_weights("token_only", ROW_TRAJECTORY, ROW_TOKENS, trajectories=3)
    close(weights, [1 / 60, 1 / 24, 1 / 36, 1 / 60, 0.0])


def test_a_step_with_nothing_to_train_has_zero_weights():
    assert token_weights("paper", torch.tensor([0, 1]), torch.tensor([0, 0]), trajectories=2).tolist() == [0.0, 0.0]
    assert token_weights("token_mean", torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 4).numel() == 0


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown weighting"):
        token_weights("tokens", ROW_TRAJECTORY, ROW_TOKENS, trajectories=3)


def test_agents_cov_is_the_in_group_covariance_of_agent_count_and_advantage():
    """advantage/agents_cov: per group, mean((N_i - mean N) * Â_i); then the mean over groups. Wider rollouts
    that scored better give a positive value, a group whose rollouts all started as many agents gives 0."""
    from wideseek_exp.rl.trainer import agents_advantage_cov

    advantages = torch.tensor([[1.0, -1.0, 0.5, -0.5], [1.0, -1.0, 0.0, 0.0]])
    agents = [9, 3, 5, 3, 4, 4, 4, 4]  # group 1: N - mean N = 4, -2, 0, -2; group 2: all alike
    summaries = [{"agents": n} for n in agents]
    # group 1: (4 * 1 + -2 * -1 + 0 * 0.5 + -2 * -0.5) / 4 = 7 / 4; group 2: 0
    assert agents_advantage_cov(summaries, advantages) == pytest.approx(7 / 8)
    assert agents_advantage_cov(summaries, -advantages) == pytest.approx(-7 / 8)


def test_the_agents_cov_script_counts_the_groups_whose_wider_rollouts_scored_better(tmp_path):
    """experiments/cpu_demo/agents_cov.py over a run's train_steps.jsonl: the mean in-group covariance, the groups
    with it above / below 0 among those whose agent counts and advantages differ, and the sum of Â / N."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    def traj(task: str, agents: int, advantage: float) -> dict:
        return {"instance_id": task, "agents": agents, "advantage": advantage}

    steps = [[traj("a", 4, 1.0), traj("a", 2, -1.0), traj("b", 3, 1.0), traj("b", 3, -1.0)],  # a: cov +1, b: 0
             [traj("c", 2, 1.0), traj("c", 6, -1.0), traj("d", 2, 0.0), traj("d", 5, 0.0)]]  # c: -2, d: Â all 0
    (tmp_path / "train_steps.jsonl").write_text("".join(
        json.dumps({"step": k + 1, "trajectories": t}) + "\n" for k, t in enumerate(steps)))
    script = Path(__file__).resolve().parents[1] / "experiments/cpu_demo/agents_cov.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # mean (1 + 0 - 2 + 0) / 4 = -0.25; a above, c below; sum Â/N = 1/4 - 1/2 + 1/3 - 1/3 + 1/2 - 1/6 = +0.08
    assert done.stdout.splitlines()[2] == f"| {tmp_path} | 4 | -0.25 | 1 / 1 | +0.08 |"
