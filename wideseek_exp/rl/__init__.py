"""The training algorithms: multi-agent GRPO (the paper's training, on top of TRL's GRPOTrainer) and the
imitation warm start it can begin from.

    reward.py      R of a trajectory: item F1 + format and access bonuses - length penalty (reward=)
    advantages.py  group-normalised Â and the dual-level token weights
    rows.py        a trajectory as one training row per agent, padded to TRL's layout; which turns are trained
    trainer.py     MultiAgentGRPOTrainer: rollouts as TRL's generation step, the weighted clipped loss
    training.py    a GRPO run from the config: policy, trainer, callbacks, periodic evaluation, checkpoints
    imitation.py   the warm start: copy stages, the scripted expert's rows, SFT, its build stamp

The jobs that run them: jobs/train.py (task=train), jobs/train_then_eval.py (exp.train=true), and
jobs/build.py / jobs/sft.py for the warm start.
"""
