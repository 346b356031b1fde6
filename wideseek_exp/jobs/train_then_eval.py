"""task=eval with exp.train=true: train the policy at this point's settings, then evaluate what it learned.

    python run.py +exp=width_sweep subagents=1,2,4,8 exp.train=true trainer=debug -m

One job, one MLflow run:
1. task=train's training run (rl/training.py) into <job folder>/train/, without its own final
   evaluation; the per-step metrics land in the run at their steps;
2. the trained model (<job folder>/train/final; a LoRA adapter is merged into its base first) is
   evaluated by task=eval's evaluator (evaluation.py) into <job folder>/eval/, at the same width, agent, search, judge
   and eval.limit x eval.samples as an untrained point. Its eval.* and rollout.* metrics are logged at
   the last training step, so they are the run's latest values (what search_runs and the sweep summary
   read), and the run gets `train.steps` and `train.seconds`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp.evaluation import evaluate
from wideseek_exp.rl.training import train_policy
from wideseek_exp.tracking import JobRun, RunAtStep


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict | None:
    folder = Path(out or Path(cfg.paths.outputs) / "eval")
    print(f"exp.train=true: training first ({cfg.trainer.name}, {cfg.trainer.max_steps} steps), then evaluating "
          f"the trained policy at width {cfg.subagents}", flush=True)
    summary = train_policy(cfg, tracker, folder / "train", evaluate_at_end=False)
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # rank 0 evaluates (as training's own evaluations do)
    steps = int(summary["steps"])
    tracker.log_metrics({"train.steps": steps, "train.seconds": summary["train_seconds"]}, step=steps)

    eval_cfg = copy.deepcopy(cfg)
    OmegaConf.update(eval_cfg, "model.source", "local")
    OmegaConf.update(eval_cfg, "model.path", str(trained_model_folder(cfg, Path(summary["final_model"]))))
    OmegaConf.update(eval_cfg, "model.revision", None)
    OmegaConf.update(eval_cfg, "model.lora.enabled", False)
    return evaluate(eval_cfg, RunAtStep(tracker, steps, "eval"), folder / "eval")


def trained_model_folder(cfg: DictConfig, final: Path) -> Path:
    """The folder task=eval can load: `final` itself, or for LoRA the adapter merged into its base."""
    if not cfg.model.lora.enabled:
        return final
    merged = final.parent / "final_merged"
    if not (merged / "config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(str(final)).merge_and_unload()
        model.save_pretrained(str(merged))
        AutoTokenizer.from_pretrained(str(final)).save_pretrained(str(merged))
    return merged
