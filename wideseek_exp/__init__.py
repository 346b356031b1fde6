"""wideseek-exp: reproduce and extend WideSeek-R1 (broad information seeking with a lead agent and
parallel subagents, trained with multi-agent GRPO, scored with the WideSearch metrics)."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent


class WideseekError(Exception):
    """An error caused by the user's input or environment (config, files, servers).

    run.py prints it as one line and exits non-zero; it never carries a traceback to the user.
    """
