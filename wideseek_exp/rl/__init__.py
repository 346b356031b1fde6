"""Multi-agent GRPO: the paper's training, on top of TRL's GRPOTrainer.

    reward.py      R of a trajectory: item F1 + format and access bonuses - length penalty (reward=)
    advantages.py  group-normalised Â, the dual-level token weights, which turns are trained
    rows.py        a trajectory as one training row per agent, padded to TRL's layout
    trainer.py     MultiAgentGRPOTrainer: rollouts as TRL's generation step, the weighted clipped loss

The task that runs it is wideseek_exp/train.py (task=train).
"""
