"""One-line error reports for the command line.

Hydra prints configuration errors over several lines with a hint about HYDRA_FULL_ERROR; a
researcher mistyping a key should read one line that names it. run.py lets exceptions propagate
(HYDRA_FULL_ERROR=1) and turns the known kinds into one line here. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from wideseek_exp import WideseekError

USER_ERRORS = (WideseekError, OmegaConfBaseException, HydraException, MissingConfigException)


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _omegaconf_line(error: OmegaConfBaseException) -> str:
    message = _first_line(getattr(error, "msg", None) or str(error))
    key = getattr(error, "full_key", None)
    if "not in struct" in message or "Key '" in message and "not in" in message:
        missing = re.search(r"Key '([^']+)'", message)
        name = missing.group(1) if missing else key
        where = f"{key}" if key and key != name else name
        return f"unknown config key '{where}'"
    if key:
        return f"{key}: {message}"
    return message


def one_line(error: BaseException) -> str:
    """The message a user sees for a configuration or input error."""
    if isinstance(error, WideseekError):
        return f"error: {_first_line(str(error))}"
    if isinstance(error, OmegaConfBaseException):
        return f"config error: {_omegaconf_line(error)}"
    cause = error.__cause__
    if isinstance(error, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        # Hydra words these "Could not override 'KEY'." or "Error merging override KEY=VALUE"
        message = _first_line(str(error))
        quoted = re.search(r"override '([^']+)'", message)
        merged = re.search(r"override (\S+)$", message)
        detail = _omegaconf_line(cause)
        if "unknown config key" in detail:
            key = quoted.group(1) if quoted else (merged.group(1).split("=")[0] if merged else "?")
            return f"config error: unknown config key '{key}' (python run.py --cfg job lists the keys)"
        origin = f" (from override {merged.group(1)})" if merged else ""
        return f"config error: {detail}{origin}"
    if isinstance(error, MissingConfigException):
        message = _first_line(str(error))
        options = getattr(error, "options", None)
        if options:
            message += f" (available: {', '.join(sorted(options))})"
        return f"config error: {message}"
    if isinstance(error, OverrideParseException):
        return f"config error: cannot parse override: {_first_line(str(error))}"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"config error: {text}"
