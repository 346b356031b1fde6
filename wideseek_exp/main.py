"""Validate the config (conf.validate), then run the job cfg.task names (wideseek_exp/jobs/) inside one
MLflow run (tracking.job_run). Nothing imports this module but run.py.

Ctrl-C stops a job with one line: what it kept and the overrides that resume it (a job module's
`interrupted(cfg, out)` says both; run.py adds the command)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from wideseek_exp.conf import Task, validate
from wideseek_exp.tracking import job_run, output_dir


class Stopped(Exception):
    """A job stopped by Ctrl-C: `kept` says what is on disk, `resume` the overrides that continue it."""

    def __init__(self, kept: str, resume: list[str], out: Path | None):
        super().__init__(kept)
        self.kept, self.resume, self.out = kept, resume, out


def load_job(cfg: DictConfig) -> ModuleType:
    """The chosen job's module, with its run(cfg, tracker, out). Imported only when chosen, so that a quick
    job does not pay for the imports (torch, TRL) of the others."""
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
    return job


def run(cfg: DictConfig):
    validate(cfg)
    job = load_job(cfg)
    out = output_dir()
    finished = False
    try:
        with job_run(cfg, out) as tracker:
            result = job.run(cfg, tracker, out)
        finished = True
        return result
    except KeyboardInterrupt:
        interrupted = getattr(job, "interrupted", None)
        kept, resume = interrupted(cfg, out) if interrupted else (f"what was written so far ({out})", [])
        raise Stopped(kept, resume, out) from None
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
