"""Entry points: the SLURM launcher config and the accelerate configs compose; `make train-multi`, `make run`
and `make test` run the commands they promise."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher is not installed")
def test_slurm_launcher_composes(cli):
    result = cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg=hydra")
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_parse(name):
    config = yaml.safe_load((REPO / "conf" / "accelerate" / f"{name}.yaml").read_text())
    assert config["num_processes"] >= 1 and config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_multi_runs_accelerate_with_the_chosen_config():
    result = subprocess.run(["make", "-n", "train-multi", "GPUS=4", "ACCEL=zero2", "ARGS=trainer=debug seed=3"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "accelerate launch --config_file conf/accelerate/zero2.yaml --num_processes 4 run.py task=train " \
           "trainer=debug seed=3" in command


def make_commands(target: str) -> list[str]:
    result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True)
    return [line.strip() for line in result.stdout.splitlines() if "run.py" in line or "pytest" in line or "lint-imports" in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_builds_then_evaluates_as_two_visible_steps():
    build, evaluate = make_commands("run")
    assert build.endswith("run.py task=build")
    assert evaluate.endswith("run.py task=eval eval.stride=3 eval.limit=40 eval.samples=1")  # a spread of 40 tasks


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_evaluates_the_whole_test_split_one_override_away():
    result = subprocess.run(["make", "-n", "run", "RUN_EVAL="], cwd=REPO, capture_output=True, text=True, check=True)
    evaluate = [line.strip() for line in result.stdout.splitlines() if "task=eval" in line]
    assert len(evaluate) == 1 and evaluate[0].endswith("run.py task=eval")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_checks_the_import_contracts_before_the_tests():
    lint, tests = make_commands("test")
    assert lint.endswith("lint-imports") and "-m pytest" in tests
