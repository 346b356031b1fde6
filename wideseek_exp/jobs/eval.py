"""task=eval: the configured policy on the configured task split, through the evaluator (evaluation.py).

    python run.py task=eval [eval.limit=N] [eval.samples=K] [subagents=W] [model=...] [hydra.run.dir=...]

The world is brought up to date first (seconds); a missing imitation warm start stops the job with the
command that builds it (python run.py task=build): evaluating never trains.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp.evaluation import evaluate
from wideseek_exp.rl.imitation import require_warm_start
from wideseek_exp.tracking import JobRun
from wideseek_exp.world import prepare_world


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    prepare_world(cfg)
    require_warm_start(cfg)
    return evaluate(cfg, tracker, out or Path(cfg.paths.outputs) / "eval")


def interrupted(cfg: DictConfig, out: Path | None) -> tuple[str, list[str]]:
    """What a Ctrl-C leaves: the finished trials (trials.jsonl); a rerun in the same folder runs the rest."""
    from wideseek_exp.evaluation import load_eval_tasks
    from wideseek_exp.trialstore import TRIALS_FILE, count_complete_lines

    folder = out or Path(cfg.paths.outputs) / "eval"
    done = count_complete_lines(folder / TRIALS_FILE)
    total = len(load_eval_tasks(cfg)) * cfg.eval.samples
    return f"{done} of {total} trials in {folder / TRIALS_FILE}", []
