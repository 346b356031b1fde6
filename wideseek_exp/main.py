"""Validate the config (conf.validate), then run the job cfg.task names (wideseek_exp/jobs/) inside one
MLflow run (tracking.job_run). Nothing imports this module but run.py."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import DictConfig

from wideseek_exp.conf import Task, validate
from wideseek_exp.tracking import job_run, output_dir


def load_job(cfg: DictConfig) -> Callable:
    """The chosen job's run(cfg, tracker, out). Imported only when chosen, so that a quick job does not pay
    for the imports (torch, TRL) of the others."""
    task = Task(cfg.task)
    if task is Task.build:
        from wideseek_exp.jobs import build as job
    elif task is Task.eval and cfg.exp.train:  # a sweep point that trains first, then evaluates the trained policy
        from wideseek_exp.jobs import train_then_eval as job
    elif task is Task.eval:
        from wideseek_exp.jobs import eval as job
    elif task is Task.score:
        from wideseek_exp.jobs import score as job
    elif task is Task.train:
        from wideseek_exp.jobs import train as job
    elif task is Task.sft:
        from wideseek_exp.jobs import sft as job
    elif task is Task.data:
        from wideseek_exp.jobs import data as job
    else:
        from wideseek_exp.jobs import serve_search as job
    return job.run


def run(cfg: DictConfig):
    validate(cfg)
    job = load_job(cfg)
    out = output_dir()
    finished = False
    try:
        with job_run(cfg, out) as tracker:
            result = job(cfg, tracker, out)
        finished = True
        return result
    finally:
        close_process_group(finished)


def close_process_group(finished: bool) -> None:
    """Destroy the process group a multi-process job opened (torchrun, accelerate launch). Left to the
    interpreter's exit, gloo's threads can outlive it and abort the process after the job has finished.
    A finished job first waits for every rank: a rank that tears its gloo connections down while another
    still holds them can leave that one hanging in its own teardown (seen in about one run in four of the
    two-rank trainer test). A failed job does not wait, since the failed rank's peers may never arrive."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        if finished:
            distributed.barrier()
        distributed.destroy_process_group()
