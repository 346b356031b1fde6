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


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from wideseek_exp.main import run

    try:
        return run(cfg)
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
