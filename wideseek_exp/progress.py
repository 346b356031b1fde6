"""Progress of a long phase as plain lines: "step N of M", the time so far and an ETA. Plain lines read
the same in a terminal, a log file and a cluster job's output; tqdm bars (the rollouts' trial counters)
cover the phases that count trials rather than steps."""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """42 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """The steps of one phase. The ETA assumes the steps left take as long as the ones done so far took
    on average (`initial`: steps already done before this process started, as after a resume)."""

    def __init__(self, label: str, total: int, initial: int = 0, every_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.total, self.initial, self.every_s, self.clock = label, total, initial, every_s, clock
        self.started = clock()
        self.last_printed: float | None = None

    def eta(self, done: int) -> str | None:
        """The time the remaining steps will take, or None before the first step and after the last."""
        ran = done - self.initial
        if ran <= 0 or done >= self.total:
            return None
        return duration((self.clock() - self.started) / ran * (self.total - done))

    def line(self, done: int, detail: str = "") -> str:
        text = f"{self.label}: step {done} of {self.total}" + (f": {detail}" if detail else "")
        text += f", {duration(self.clock() - self.started)}"
        eta = self.eta(done)
        return text + (f", ETA {eta}" if eta is not None else "")

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        """Print the line at the first and last step, when `force`, and otherwise at most once every
        `every_s` seconds (a step of a few milliseconds must not flood the log)."""
        now = self.clock()
        due = self.last_printed is None or now - self.last_printed >= self.every_s
        if force or due or done >= self.total:
            print(self.line(done, detail), flush=True)
            self.last_printed = now
