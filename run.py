"""Entry point: python run.py [task=build|eval|score|train|...] [group=option ...] [key=value ...] [-m]

Configuration lives in conf/ (schema in wideseek_exp/conf.py). Errors in the config or the input
are reported in one line; see wideseek_exp/errors.py.
"""

import os
import sys

# Exceptions must reach us (not Hydra's multi-line report) so they can be shown in one line.
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import wideseek_exp.conf  # noqa: E402,F401  (registers the structured configs)
from wideseek_exp.errors import USER_ERRORS, one_line  # noqa: E402


def stop_line(stop) -> str:
    """"stopped: kept ...; resume with: python run.py <the same overrides> <the job's> hydra.run.dir=<folder>"."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    given = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.run.dir=")]
    names = {o.split("=", 1)[0].lstrip("+~") for o in stop.resume}
    given = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in names]
    folder = [f"hydra.run.dir={stop.out}"] if stop.out is not None and hydra_cfg.mode.name == "RUN" else []
    command = " ".join(["python run.py", *given, *stop.resume, *folder])
    return f"stopped: kept {stop.kept}; resume with: {command}"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from wideseek_exp.main import Stopped, run

    try:
        return run(cfg)
    except Stopped as stop:
        # one line, and out at once: what runs in worker threads (a batch being decoded) is not waited for,
        # and everything kept is already on disk, written as it was made
        print(stop_line(stop), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    except USER_ERRORS as error:
        print(one_line(error), file=sys.stderr)
        if HydraConfig.get().mode.name == "RUN":
            sys.exit(2)  # before Hydra adds its own report of the failed job
        error.reported = True  # a sweep: Hydra names the failed job, then we stop
        raise


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        if not getattr(error, "reported", False):
            print(one_line(error), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
