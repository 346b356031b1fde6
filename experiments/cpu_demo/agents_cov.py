"""How a GRPO run's advantages lean on width: the in-group covariance of a rollout's agent count with its Â.

    python experiments/cpu_demo/agents_cov.py TRAIN_FOLDER [TRAIN_FOLDER ...]

Reads each run's `train_steps.jsonl` (one record a step, its trajectories in group order) and prints, over all its
groups: the mean covariance (the trainer's `advantage/agents_cov`, rl/trainer.agents_advantage_cov), how many of
the groups whose rollouts started different numbers of agents and scored differently had it above and below 0,
and the sum of Â_i / N_i, the net push the paper's 1/N_i weights give the lead's tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wideseek_exp.rl.trainer import agents_advantage_cov  # noqa: E402


def groups(folder: Path) -> list[list[dict]]:
    """The run's groups: per step, its trajectories by task, in the order they were rolled out."""
    found: list[list[dict]] = []
    with (folder / "train_steps.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            by_task: dict[str, list[dict]] = {}
            for trajectory in json.loads(line)["trajectories"]:
                by_task.setdefault(trajectory["instance_id"], []).append(trajectory)
            found.extend(by_task.values())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    print("| run | groups | mean cov | above 0 / below 0 (agents and Â differ) | sum Â/N |")
    print("|---|---|---|---|---|")
    for folder in args.folders:
        covs, above, below, push = [], 0, 0, 0.0
        for group in groups(folder):
            advantages = torch.tensor([[t["advantage"] for t in group]], dtype=torch.float64)
            cov = agents_advantage_cov(group, advantages)
            covs.append(cov)
            if len({t["agents"] for t in group}) > 1 and bool(advantages.abs().gt(1e-9).any()):
                above, below = above + (cov > 0), below + (cov < 0)
            push += sum(t["advantage"] / t["agents"] for t in group)
        mean = sum(covs) / max(len(covs), 1)
        print(f"| {folder} | {len(covs)} | {mean:.2f} | {above} / {below} | {push:+.2f} |")


if __name__ == "__main__":
    main()
