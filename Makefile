# Every target sets up .venv first (only Python is needed on the machine); `make setup` is quick
# once the environment matches requirements.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
GPUS ?= 8
ACCEL ?= zero3

.PHONY: setup run test test-fast sweep demo train-multi lint strip-notebooks clean-generated

setup: $(STAMP)

# torch first, then everything else under constraints.txt, so no package can swap in a CUDA build. xgrammar
# goes in without its dependencies: they pull triton (1 GB), which only its GPU kernels use.
$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps xgrammar==0.2.8
	@touch $(STAMP)

# The main job, in two visible steps. 1: task=build makes the mini-web world and the default model, the tiny
# model and its imitation warm start (20 to 26 minutes on a 2-core CPU the first time; cached, then seconds).
# 2: task=eval evaluates the default configuration on 40 of the mini-web test tasks (every 3rd: all families),
# one trial each (a few minutes), prints the paper-format table and logs to MLflow. `make run RUN_EVAL=`
# evaluates all 122 test tasks x 4 trials (Avg@4 / Max@4 / Pass@4). Evaluation never trains: without the warm
# start it stops and names step 1.
RUN_EVAL ?= eval.stride=3 eval.limit=40 eval.samples=1
run: setup
	$(PY) run.py task=build $(ARGS)
	$(PY) run.py task=eval $(RUN_EVAL) $(ARGS)

# The import layering first (pyproject.toml [tool.importlinter]; docs/architecture.md), then the tests.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# The width-scaling recipe at CPU size (conf/exp/width_sweep_cpu.yaml): widths 1, 2, 4, 8 of the default
# model, each untrained and after a short GRPO run, 12 mini-web tasks x 2 samples; a few minutes. One MLflow
# child run per point; the parent run gets summary.csv and width_scaling.png (also in the sweep folder).
# It reads the default model's warm start: `make run` or `python run.py task=build` first.
sweep: setup
	$(PY) run.py +exp=width_sweep_cpu -m $(ARGS)

# Multi-GPU training on one machine: one process per GPU through accelerate, with the parallelism of
# conf/accelerate/$(ACCEL).yaml (ddp, zero2, zero3, fsdp: FSDP version 2). Needs the GPU stack
# (README: GPU set-up), so it does not run `setup`, which installs the CPU one.
#   make train-multi GPUS=8 ACCEL=zero3 ARGS="+exp=reproduce_training data.path=... hydra.run.dir=outputs/train/NAME"
train-multi:
	$(VENV)/bin/accelerate launch --config_file conf/accelerate/$(ACCEL).yaml --num_processes $(GPUS) \
		run.py task=train $(ARGS)

# The CPU recipe (experiments/cpu_demo): warm start, GRPO from it, width sweeps of the expert, the warm
# start and the GRPO policy; prints item F1 per policy and width, logs it and the plot to MLflow.
demo: setup
	$(PY) experiments/cpu_demo/demo.py

lint: setup
	$(PY) -m ruff check .

# Notebooks are committed without outputs (tests/test_notebooks.py checks).
strip-notebooks: setup
	$(PY) notebooks/strip_outputs.py

clean-generated:
	rm -rf data/generated
