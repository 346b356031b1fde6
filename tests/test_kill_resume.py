"""Kills lose nothing. An evaluation killed with SIGKILL at random points (not Ctrl-C: no handler runs) and
resumed on the same folder ends with exactly the trials and the metrics of an uninterrupted run: every
trial once, none twice, no torn line counted. A training run killed with SIGKILL between steps and resumed
with trainer.resume=true ends with the weights of an uninterrupted run of the same seed, bitwise on CPU.
task=data killed at random points and rerun ends with the tasks and drops of an uninterrupted run, and its
call cache holds every answered call once.

This file is also the worker: the tests run it as a script, `python tests/test_kill_resume.py eval|train|data
FOLDER`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TASKS, SAMPLES = 10, 2


def start_worker(folder: Path, job: str = "eval", *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), job, str(folder), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def scores(folder: Path) -> dict:
    """What metrics.json says of the trials: every eval.* and funnel.* metric, k and the judge. Its `rollout`
    section is left out: it describes the rollouts of the last process (wall time, tokens/s, engine calls)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "eval.item_f1_avg" in metrics["metrics"] and "funnel.item_f1" in metrics["metrics"]
    return {key: metrics[key] for key in ("judge", "k", "metrics")}


def trial_keys(folder: Path) -> list[tuple[str, int]]:
    return [(record["instance_id"], record["sample"]) for record in map(json.loads, lines(folder / "trials.jsonl"))]


@pytest.mark.slow
def test_an_evaluation_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path):
    from scripted_engine import world_config

    world_config()  # the world is built before the workers read it
    whole = tmp_path / "whole"
    done = start_worker(whole)
    assert done.wait(timeout=300) == 0, done.stdout.read()[-3000:]

    killed, rng, kills = tmp_path / "killed", random.Random(0), 0
    while kills < 4:
        worker = start_worker(killed)
        before = len(lines(killed / "trials.jsonl"))
        deadline = time.monotonic() + 120
        # kill once this run has added a random number of trials, or at a random moment once it writes
        target = before + rng.randint(1, 3)
        while worker.poll() is None and len(lines(killed / "trials.jsonl")) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if worker.poll() is not None:
            break  # it finished before the kill
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        kills += 1
    assert kills >= 2
    final = start_worker(killed)
    assert final.wait(timeout=300) == 0, final.stdout.read()[-3000:]

    assert sorted(trial_keys(killed)) == sorted(trial_keys(whole))  # every trial once, none twice
    assert len(trial_keys(whole)) == TASKS * SAMPLES
    trajectories = [(r["instance_id"], r["sample_index"]) for r in map(json.loads, lines(killed / "trajectories.jsonl"))]
    assert sorted(trajectories) == sorted(trial_keys(whole))
    assert scores(killed) == scores(whole)
    by_key = {(r["instance_id"], r["sample"]): r["response"] for r in map(json.loads, lines(whole / "trials.jsonl"))}
    assert {(r["instance_id"], r["sample"]): r["response"] for r in map(json.loads, lines(killed / "trials.jsonl"))} \
        == by_key


@pytest.mark.slow
def test_training_killed_between_steps_resumes_to_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file
    from scripted_engine import world_config

    world_config()
    whole = start_worker(tmp_path / "whole", "train")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-3000:]

    killed = tmp_path / "killed"
    worker = start_worker(killed, "train")
    state = killed / "checkpoints" / "checkpoint-2" / "trainer_state.json"  # written last: step 2 is saved whole
    deadline = time.monotonic() + 600
    while worker.poll() is None and not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.poll() is None, "the run ended before it could be killed"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert not (killed / "final").exists()
    (killed / "checkpoints" / "checkpoint-3").mkdir(exist_ok=True)  # as a kill in the middle of saving step 3 leaves
    resumed = start_worker(killed, "train", "trainer.resume=true")
    output = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, output[-3000:]
    assert "resuming from" in output and "checkpoint-2" in output and "skipping" in output

    expected, got = (load_file(folder / "final" / "model.safetensors") for folder in (tmp_path / "whole", killed))
    assert expected.keys() == got.keys()
    assert all(torch_equal(expected[name], got[name]) for name in expected), "resumed weights differ"
    steps = [json.loads(line)["step"] for line in lines(killed / "train_steps.jsonl")]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_data_synthesis_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path):
    whole = start_worker(tmp_path / "whole", "data")
    assert whole.wait(timeout=300) == 0, whole.stdout.read()[-3000:]
    killed, rng, kills = tmp_path / "killed", random.Random(1), 0
    cache = killed / "llm_cache.jsonl"
    while kills < 3:
        worker = start_worker(killed, "data")
        target = len(lines(cache)) + rng.randint(1, 4)
        deadline = time.monotonic() + 120
        while worker.poll() is None and len(lines(cache)) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if worker.poll() is not None:
            break
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        kills += 1
    assert kills >= 2
    final = start_worker(killed, "data")
    assert final.wait(timeout=300) == 0, final.stdout.read()[-3000:]

    def records(folder: Path, name: str) -> list[str]:
        return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines(folder / name))

    for name in ("train.jsonl", "drops.jsonl"):
        assert records(killed, name) == records(tmp_path / "whole", name), name
    keys = [json.loads(line)["key"] for line in lines(cache)]
    assert len(keys) == len(set(keys)) == len(lines(tmp_path / "whole" / "llm_cache.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("job", ["eval", "train"])
def test_ctrl_c_prints_one_line_with_what_was_kept_and_the_resume_command(tmp_path, job):
    """SIGINT as a user's Ctrl-C, once the job has written something: no traceback, out in seconds, and the
    line names what is kept and the command that resumes (the same overrides, the same folder)."""
    from scripted_engine import world_config

    world_config()
    folder = tmp_path / "job"
    overrides = {
        "eval": ["task=eval", "eval.limit=60", "eval.samples=4"],
        "train": ["task=train", "trainer=debug", "trainer.max_steps=200", "trainer.eval_every=0", "trainer.save_every=1"],
    }[job]
    args = [*overrides, "model=tiny_random", "model.max_reply_tokens=32", "tracking.enabled=false", f"hydra.run.dir={folder}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # SIGINT as a terminal delivers it: a suite started in the background of a non-interactive shell inherits
    # SIGINT ignored, and an ignored signal stays ignored across exec
    process = subprocess.Popen([sys.executable, str(HERE.parent / "run.py"), *args], cwd=HERE.parent, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    written = folder / ("trials.jsonl" if job == "eval" else "checkpoints/checkpoint-2/trainer_state.json")
    deadline = time.monotonic() + 300
    while process.poll() is None and not written.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before the interrupt"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr and "Error" not in stderr, stderr[-3000:]
    stop = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert len(stop) == 1, stderr[-3000:]
    resume = " ".join([*overrides, "model=tiny_random", "model.max_reply_tokens=32", "tracking.enabled=false"])
    if job == "eval":
        kept = len(lines(folder / "trials.jsonl"))
        assert stop[0].startswith(f"stopped: kept {kept} of 240 trials in {folder / 'trials.jsonl'}")
        assert stop[0].endswith(f"resume with: python run.py {resume} hydra.run.dir={folder}")
    else:
        assert "stopped: kept " + str(folder / "checkpoints" / "checkpoint-") in stop[0]
        assert stop[0].endswith(f"resume with: python run.py {resume} trainer.resume=true hydra.run.dir={folder}")


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ worker


def worker(folder: Path) -> None:
    """An evaluation of TASKS x SAMPLES trials with a scripted lead that answers some tasks with their gold
    table and others with half of it (so that the metrics are neither 0 nor 1), slowly enough to be killed
    between and during writes."""
    import hashlib

    from hydra import compose, initialize_config_dir
    from scripted_engine import ScriptedEngine, tiny_tokenizer

    import wideseek_exp.engines.factory as engine_factory
    from wideseek_exp.jobs.eval import run as run_eval
    from wideseek_exp.tasks.loaders import load_task_set
    from wideseek_exp.tasks.record import to_markdown_table
    from wideseek_exp.tracking import JobRun

    with initialize_config_dir(config_dir=str(HERE.parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=eval", "tracking.enabled=false", "model=tiny_random", "model.max_reply_tokens=4096",
            f"eval.limit={TASKS}", f"eval.samples={SAMPLES}", "eval.max_active_trajectories=2"])
    answers = {}
    for task in load_task_set(cfg.data, "test"):
        rows = task.gold_rows
        if int(hashlib.sha256(task.instance_id.encode()).hexdigest(), 16) % 2:
            rows = rows[: max(1, len(rows) // 2)]
        answers[task.query] = "```markdown\n" + to_markdown_table(task.gold_columns, rows) + "\n```"
    engine = ScriptedEngine(tiny_tokenizer(), lambda view: answers[view.user], delay_s=0.15)
    engine_factory.make_engine = lambda cfg, model_cfg=None: engine
    run_eval(cfg, JobRun(None), folder)


def train_worker(folder: Path, overrides: list[str]) -> None:
    """Four GRPO steps of the random tiny model (trainer=debug) with a stand-in reward that varies between
    samples (the real one is 0 for a random model, and so would be every gradient), a checkpoint a step."""
    from hydra import compose, initialize_config_dir
    from test_train_e2e import stand_in_reward

    from wideseek_exp.rl import reward as reward_module
    from wideseek_exp.rl.training import train_policy
    from wideseek_exp.tracking import JobRun

    reward_module.trajectory_reward = stand_in_reward
    with initialize_config_dir(config_dir=str(HERE.parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=train", "trainer=debug", "model=tiny_random", "model.max_reply_tokens=32", "trainer.tasks_per_step=1",
            "trainer.num_generations=2", "trainer.bf16=false", "trainer.max_steps=4", "trainer.save_every=1",
            "trainer.eval_every=0", "trainer.learning_rate=1e-3", "tracking.enabled=false", *overrides])
    train_policy(cfg, JobRun(None), folder, evaluate_at_end=False)


def data_worker(folder: Path) -> None:
    """task=data's synthesis on the HybridQA fixture tables with the scripted generator (test_task_synthesis),
    slowed down so that a kill lands between and during its writes."""
    import test_task_synthesis as synthesis
    from synth_double import TableDouble

    class Slow(TableDouble):
        def generate(self, requests):
            time.sleep(0.1)
            return super().generate(requests)

    tables = list(synthesis.read_hybridqa(synthesis.TABLES, synthesis.PASSAGES))
    synthesis.run(folder, double=Slow(tables, synthesis.MODES), max_concurrency=1)


if __name__ == "__main__":
    if sys.argv[1] == "data":
        data_worker(Path(sys.argv[2]))
    elif sys.argv[1] == "train":
        train_worker(Path(sys.argv[2]), sys.argv[3:])
    else:
        worker(Path(sys.argv[2]))
