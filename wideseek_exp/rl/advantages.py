"""Multi-agent GRPO: group-normalised advantages and the dual-level token weights.

Trajectory i of a task's group of G rollouts has the reward R_i and N_i agents; agent a replied
o^1_{i,a}, ..., o^T_{i,a} over its turns. The paper's objective over a step of T = B * G trajectories:

    J = 1/T sum_i 1/N_i sum_a 1/L_{i,a} sum_t sum_j min(r Â_i, clip(r, 1 - eps_low, 1 + eps_high) Â_i)

    Â_i     = (R_i - mean_G R) / (std_G R + 1e-6)          group normalisation, unbiased std
    L_{i,a} = sum_t |o^t_{i,a}|                             agent a's reply tokens, over all its turns

Every reply token of every agent of trajectory i carries the same Â_i (multi-agent advantage assignment:
no critic, no per-agent baseline). Written per token, J is a weighted sum over tokens with the weight

    w_{i,a} = 1 / (T * N_i * L_{i,a})                       weighting=paper

The 1/N_i keeps a trajectory that spawns more agents from taking a larger share of the gradient; the
1/L_{i,a} makes each agent's contribution a token mean. The ablations drop one level and put its mean
over the step in its place, so the loss keeps its scale:

    token_mean   w = 1 / sum_{i,a} L_{i,a}                  one token mean over all rows (plain DAPO)
    agent_only   w = 1 / (T * N_i * mean L)                 no token-level normalisation
    token_only   w = 1 / (T * mean N * L_{i,a})             no agent-level normalisation

N_i and L_{i,a} count what is trained: the agents with selected turns (rows.select_turns) and their
selected reply tokens. A trajectory with nothing to train still counts in T, as it does in 1/G sum_i.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("paper", "token_mean", "agent_only", "token_only")
ADVANTAGE_EPSILON = 1e-6


def group_advantages(rewards: torch.Tensor, epsilon: float = ADVANTAGE_EPSILON) -> torch.Tensor:
    """Â for a (tasks, G) grid of rewards: (R - mean_G R) / (std_G R + epsilon), std unbiased.

    A NaN reward (a trajectory the judge could not score) is left out of its group's mean and std and
    gets Â = 0: it neither teaches nor shifts the baseline of the others. A group with one scored
    trajectory has no spread to normalise by: its Â is 0.
    """
    scored = ~torch.isnan(rewards)
    count = scored.sum(dim=1, keepdim=True)
    mean = torch.where(scored, rewards, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    squared = torch.where(scored, (rewards - mean) ** 2, 0.0)
    std = (squared.sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    advantages = (rewards - mean) / (std + epsilon)
    return torch.where(scored & (count > 1), advantages, 0.0)


def token_weights(weighting: str, row_trajectory: torch.Tensor, row_tokens: torch.Tensor,
                  trajectories: int) -> torch.Tensor:
    """The weight w of every trained token of each row (one row per agent), for a whole step.

    row_trajectory: the trajectory (0 .. trajectories-1) each row belongs to; row_tokens: its trained
    reply tokens L_{i,a}. A row with no trained token gets 0.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    tokens = row_tokens.double()
    trained = tokens > 0
    if not bool(trained.any()):
        return torch.zeros_like(tokens)
    agents = torch.zeros(trajectories, dtype=torch.float64).index_add_(0, row_trajectory.long(), trained.double())
    agents_of_row = agents[row_trajectory.long()]  # N_i
    total = float(trajectories)  # T
    if weighting == "paper":
        weights = 1.0 / (total * agents_of_row * tokens)
    elif weighting == "token_mean":
        weights = 1.0 / tokens.sum() * torch.ones_like(tokens)
    elif weighting == "agent_only":
        weights = 1.0 / (total * agents_of_row * tokens[trained].mean())
    else:  # token_only
        weights = 1.0 / (total * agents[agents > 0].mean() * tokens)
    return torch.where(trained, weights, 0.0)
