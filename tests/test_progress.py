"""The progress lines of long phases: a step counter, the time so far and an ETA, printed sparingly."""

from wideseek_exp.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_in_the_largest_sensible_unit():
    assert [duration(s) for s in (0, 42.4, 65, 3599, 3720)] == ["0 s", "42 s", "1 min 05 s", "59 min 59 s",
                                                                "1 h 02 min"]


def test_the_eta_is_the_mean_step_time_times_the_steps_left():
    clock = Clock()
    progress = Progress("sft: imitation", 460, clock=clock)
    clock.now += 20.0  # 10 steps in 20 s
    assert progress.line(10, "loss 3.210") == "sft: imitation: step 10 of 460: loss 3.210, 20 s, ETA 15 min 00 s"
    assert progress.line(460) == "sft: imitation: step 460 of 460, 20 s"  # done: no ETA


def test_a_resumed_run_counts_only_its_own_steps():
    clock = Clock()
    progress = Progress("train", 10, initial=6, clock=clock)
    assert progress.eta(6) is None
    clock.now += 30.0
    assert progress.eta(8) == "30 s"  # 2 steps in 30 s, 2 left


def test_updates_print_the_first_the_last_and_then_every_few_seconds(capsys):
    clock = Clock()
    progress = Progress("copy", 100, every_s=10.0, clock=clock)
    for step in range(1, 101):
        clock.now += 1.0
        progress.update(step)
    printed = [line.split(",")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed[0] == "copy: step 1 of 100" and printed[-1] == "copy: step 100 of 100"
    assert len(printed) == 11  # step 1, every 10 s after it, and the last
