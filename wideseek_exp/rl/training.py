"""The training run: multi-agent GRPO (trainer.py) on the training split, evaluated on the test split as
it goes. task=train (jobs/train.py) and a sweep point that trains first (jobs/train_then_eval.py) run it.

    python run.py task=train [trainer=debug] [model=...] [reward=...] [trainer.weighting=...]

1. the train split of data= (trainer.train_split; table tasks: the reward scores tables);
2. the policy (model=; LoRA with model.lora.enabled=true) and its tokenizer, the search backend, the
   judge and the reward (reward=);
3. MultiAgentGRPOTrainer (rl/trainer.py) with TRL's GRPOConfig built from trainer=: each step rolls out
   trainer.tasks_per_step tasks x trainer.num_generations trajectories with the policy itself as the
   engine (engine=hf), and takes one optimizer step;
4. every trainer.eval_every steps and at the end, the policy is evaluated on trainer.eval_split by the
   evaluator of task=eval (evaluation.py), logged to MLflow at that step, with a few whole trajectories
   as artifacts;
5. checkpoints every trainer.save_every steps in <job folder>/checkpoints (model, optimizer, scheduler,
   RNG, trainer state with the data position); trainer.resume=true continues from the last one with the
   same task order. Ctrl-C or a crash first saves the last finished step.

Job folder: train_steps.jsonl (per step: every trajectory's reward, components, advantage, agents),
eval/step_N/ (the evaluation files of task=eval), checkpoints/, final/ (the trained model or adapter).
Per-step metrics go to the job's MLflow run (HF's own MLflow callback is off: report_to=none).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from wideseek_exp import WideseekError
from wideseek_exp.evaluation import evaluate_training_step
from wideseek_exp.progress import Progress
from wideseek_exp.rl.imitation import require_warm_start
from wideseek_exp.tracking import JobRun
from wideseek_exp.world import prepare_world


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N of `folder` that was saved whole. transformers writes trainer_state.json after
    the weights, optimizer, scheduler and RNG state, so a checkpoint without it was cut short by a kill; it
    is passed over (its own get_last_checkpoint would take it and fail or resume from torn files)."""
    if not folder.is_dir():
        return None
    saved = sorted((checkpoint_step(path), path) for path in folder.glob("checkpoint-*")
                   if path.is_dir() and path.name.split("-", 1)[1].isdigit())
    for _step, path in reversed(saved):
        if (path / "trainer_state.json").is_file():
            return str(path)
        print(f"skipping {path}: it was not saved whole (no trainer_state.json)", file=sys.stderr)
    return None


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.split("-", 1)[1])


def keep_steps_up_to(steps_log: Path, last_step: int) -> None:
    """Cut train_steps.jsonl to the steps up to `last_step` (whole lines only: a line torn by a kill goes)."""
    if not steps_log.is_file():
        return
    kept = []
    for line in steps_log.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if record is None or record.get("step", 0) > last_step:
            break
        kept.append(line)
    partial_log = steps_log.with_suffix(".jsonl.partial")
    partial_log.write_text("".join(kept), encoding="utf-8")
    os.replace(partial_log, steps_log)


def train_policy(cfg: DictConfig, tracker: JobRun, out: Path | None, evaluate_at_end: bool = True) -> dict:
    """Train (the config checked by conf.validate first); `evaluate_at_end=False` skips the final
    evaluation (a caller that evaluates the saved model itself, as a sweep point with exp.train=true does).
    Stops at once when the world's warm start is missing (rl/imitation.require_warm_start)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings the hub when a trainer starts
    from accelerate import PartialState
    from accelerate.utils import DistributedType, broadcast_object_list
    from datasets import Dataset

    from wideseek_exp.agents.summarize import make_helper_summarizer
    from wideseek_exp.models.loader import lora_config, resolve_device
    from wideseek_exp.rl.reward import trajectory_reward
    from wideseek_exp.rl.trainer import MultiAgentGRPOTrainer, RolloutSetup
    from wideseek_exp.scoring import make_judge
    from wideseek_exp.search.factory import make_search_backend

    # The process group: gloo across CPU processes (torchrun), else what `accelerate launch` configured.
    state = PartialState(cpu=resolve_device(cfg.engine.device).type == "cpu")
    if state.distributed_type == DistributedType.FSDP and state.fsdp_plugin.fsdp_version != 2:
        # The rollout generates with the policy gathered whole (rl/trainer.py: fsdp2_gathered); FSDP1 would
        # gather inside each forward pass, which the ranks' unequal rollouts cannot keep in step.
        raise WideseekError("task=train supports FSDP version 2 only (fsdp_version: 2 in the accelerate config, "
                            "as in conf/accelerate/fsdp.yaml)")
    folder = Path(out or Path(cfg.paths.outputs) / "train")
    if state.num_processes > 1:  # every rank writes into rank 0's job folder
        folder = Path(broadcast_object_list([str(folder)])[0])
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = Path(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else folder / "checkpoints"
    resume_from = None
    if cfg.trainer.resume:
        resume_from = last_complete_checkpoint(checkpoints)
        if resume_from is None:
            raise WideseekError(f"trainer.resume=true but there is no checkpoint in {checkpoints}; point at the "
                                "earlier run with hydra.run.dir=<its job folder> or trainer.checkpoint_dir=...")

    with state.main_process_first():
        prepare_world(cfg)  # a no-op when everything is up to date
    require_warm_start(cfg)
    tasks = training_tasks(cfg)
    model, tokenizer, bf16 = load_policy(cfg)
    search = make_search_backend(cfg)
    judge = make_judge(cfg.judge)
    steps_log = folder / "train_steps.jsonl"
    if state.is_main_process:  # the steps after the checkpoint run again: their old lines go
        keep_steps_up_to(steps_log, checkpoint_step(resume_from) if resume_from else 0)

    def record_step(step: int, trajectories: list[dict]) -> None:
        with steps_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "trajectories": trajectories}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    setup = RolloutSetup(
        tasks=tasks, search=search, agent_cfg=cfg.agent, search_cfg=cfg.search,
        reward=partial(trajectory_reward, judge=judge, cfg=cfg.reward),
        engine_factory=(partial(colocated_vllm_engine, cfg) if cfg.engine.name == "vllm" else
                        partial(hf_engine, max_batch_size=cfg.engine.max_batch_size,
                                prefix_cache_mb=cfg.engine.prefix_cache_mb)),
        seed=cfg.seed, record_step=record_step, summarizer=make_helper_summarizer(cfg),
    )
    dataset = Dataset.from_dict({"prompt": [task.query for task in tasks], "task_index": list(range(len(tasks)))})
    trainer = MultiAgentGRPOTrainer(
        model, grpo_config(cfg, checkpoints, state.num_processes, bf16), dataset, tokenizer, setup,
        weighting=cfg.trainer.weighting, turn_selection=cfg.trainer.turn_selection,
        dual_clip=cfg.trainer.dual_clip, forward_chunk_rows=cfg.trainer.micro_batch_rows,
        peft_config=lora_config(cfg),
    )

    def evaluate_policy(step: int) -> dict | None:
        """The policy on trainer.eval_split, as task=eval evaluates; rank 0 evaluates while the others wait."""
        headline = None
        with trainer.policy_for_generation():
            if trainer.accelerator.is_main_process:
                headline = evaluate_training_step(cfg, tracker, folder, step, trainer.policy_engine(), search,
                                                  trainer.rollout.summarizer)
        trainer.accelerator.wait_for_everyone()
        return headline

    periodic_eval = PeriodicEval(evaluate_policy, cfg.trainer.eval_every)
    trainer.remove_callback(PrinterCallback)  # StepMetrics prints one line per step instead of the whole dict
    trainer.add_callback(StepMetrics(tracker))
    trainer.add_callback(periodic_eval)
    if state.is_main_process:
        slots = cfg.trainer.tasks_per_step * cfg.trainer.num_generations
        print(f"training on {len(tasks)} tasks: {cfg.trainer.max_steps} steps of {cfg.trainer.tasks_per_step} tasks "
              f"x {cfg.trainer.num_generations} rollouts ({slots // state.num_processes} per process), "
              f"weighting={cfg.trainer.weighting}, reward={cfg.reward.name} -> {folder}"
              + (f"; resuming from {resume_from}" if resume_from else ""), flush=True)

    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except BaseException as failure:
        try:
            saved = trainer.save_checkpoint_now()
        except Exception as error:  # the original failure matters more
            print(f"could not save a checkpoint after the failure: {error}", file=sys.stderr)
        else:  # (a Ctrl-C is reported by the job's one stop line, which names the checkpoint)
            if saved is not None and state.is_main_process and not isinstance(failure, KeyboardInterrupt):
                print(f"saved {saved}; continue with trainer.resume=true (same job folder)", file=sys.stderr)
        raise
    seconds = time.perf_counter() - started

    step = trainer.state.global_step
    # every rank takes the same branch: the evaluation has a barrier
    if step in periodic_eval.results:
        final_eval = periodic_eval.results[step]
    else:
        final_eval = periodic_eval.evaluate(step) if evaluate_at_end else None
    trainer.save_model(str(folder / "final"))
    summary = {"steps": step, "train_seconds": seconds, "checkpoints": str(checkpoints),
               "final_model": str(folder / "final"), "eval": final_eval}
    if state.is_main_process:
        tracker.log_dict(summary, "train_summary.json")
        tracker.log_artifact(steps_log)
        print(f"trained {step} steps in {seconds:.0f} s; model in {folder / 'final'}", flush=True)
    return summary


# ----------------------------------------------------------------------------------------------- setup


def training_tasks(cfg: DictConfig) -> list:
    from wideseek_exp.tasks.loaders import load_task_set

    tasks = list(load_task_set(cfg.data, cfg.trainer.train_split))
    # Table and deep-QA tasks alike: the reward scores a QA task by its boxed answer (the hybrid mix).
    if len(tasks) < cfg.trainer.tasks_per_step:
        raise WideseekError(f"data={cfg.data.name} split={cfg.trainer.train_split} has {len(tasks)} tasks, "
                            f"fewer than trainer.tasks_per_step={cfg.trainer.tasks_per_step}")
    if len({task.instance_id for task in tasks}) < len(tasks):
        raise WideseekError(f"data={cfg.data.name} split={cfg.trainer.train_split} repeats an instance_id")
    return tasks


def load_policy(cfg: DictConfig):
    """(model on CPU, tokenizer, bf16). Full fine-tuning keeps fp32 weights (an update of lr 1e-6 is
    below bf16's resolution) and computes in bf16 through autocast (trainer.bf16; by default on GPU); with LoRA the frozen base is
    loaded in model.dtype (bf16 on GPU) and the adapters stay fp32."""
    import torch

    from wideseek_exp.engines.factory import model_location
    from wideseek_exp.models.loader import load_model_and_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(cfg.engine.device)
    compute_dtype = resolve_dtype(cfg.model.dtype, device)
    weights_dtype = compute_dtype if cfg.model.lora.enabled else torch.float32
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    model, tokenizer = load_model_and_tokenizer(
        model_location(cfg.model), revision=cfg.model.revision, dtype=names[weights_dtype], device="cpu",
        trust_remote_code=cfg.model.trust_remote_code,
    )
    bf16 = cfg.trainer.bf16
    if bf16 is None:
        bf16 = device.type == "cuda" and compute_dtype == torch.bfloat16
    return model, tokenizer, bool(bf16)


def grpo_config(cfg: DictConfig, output_dir: Path, processes: int, bf16: bool):
    """TRL's GRPOConfig from trainer=. TRL counts rollout slots: B * G / processes per rank and optimizer
    step, trainer.rollouts_per_micro_batch of them per micro-batch (see rl/trainer.py)."""
    from trl import GRPOConfig

    from wideseek_exp.models.loader import resolve_device

    trainer = cfg.trainer
    slots = trainer.tasks_per_step * trainer.num_generations
    if slots % processes:
        raise WideseekError(f"trainer.tasks_per_step x trainer.num_generations ({slots}) must be divisible by the "
                            f"number of processes ({processes})")
    per_process = slots // processes
    per_micro_batch = trainer.rollouts_per_micro_batch or per_process  # 0: all of them at once
    if per_micro_batch < 1 or per_process % per_micro_batch:
        raise WideseekError(f"trainer.rollouts_per_micro_batch ({per_micro_batch}) must divide the rollouts of each "
                            f"process (tasks_per_step x num_generations / processes = {per_process})")
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_micro_batch,
        gradient_accumulation_steps=per_process // per_micro_batch,
        steps_per_generation=per_process // per_micro_batch,
        num_generations=trainer.num_generations,
        num_iterations=1,  # on-policy: one optimizer step per batch of rollouts
        max_steps=trainer.max_steps,
        learning_rate=trainer.learning_rate,
        lr_scheduler_type=trainer.lr_scheduler,
        warmup_steps=0,
        weight_decay=trainer.weight_decay,
        adam_beta1=trainer.adam_beta1,
        adam_beta2=trainer.adam_beta2,
        max_grad_norm=trainer.max_grad_norm,
        epsilon=trainer.epsilon_low,
        epsilon_high=trainer.epsilon_high,
        beta=trainer.beta,
        temperature=cfg.agent.temperature,  # the policy's logprobs must be those of the sampling distribution
        top_p=cfg.agent.top_p,
        max_completion_length=cfg.agent.max_reply_tokens,
        gradient_checkpointing=trainer.gradient_checkpointing,
        bf16=bf16,
        use_cpu=resolve_device(cfg.engine.device).type == "cpu",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        save_strategy="steps" if trainer.save_every > 0 else "no",
        save_steps=max(trainer.save_every, 1),
        save_total_limit=trainer.keep_checkpoints or None,
        seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_timeout=trainer.ddp_timeout_s,  # the other ranks wait while rank 0 evaluates
    )


def hf_engine(model, tokenizer, max_batch_size: int, prefix_cache_mb: float):
    """The policy itself as the engine (the trainer empties its prefix cache before each rollout)."""
    from wideseek_exp.engines.hf import HFEngine

    return HFEngine(model, tokenizer, max_batch_size=max_batch_size, prefix_cache_mb=prefix_cache_mb)


def colocated_vllm_engine(cfg: DictConfig, model, tokenizer):
    """vLLM in this process with its own copy of the weights; the trainer syncs the policy into it before
    every rollout (VLLMEngine.sync_weights)."""
    from wideseek_exp.engines.factory import vllm_engine

    return vllm_engine(cfg, cfg.model, colocated=True)


# ------------------------------------------------------------------------------------------- callbacks


class StepMetrics(TrainerCallback):
    """Everything the trainer logs at a step (rl/trainer.py's metrics, TRL's loss, grad_norm,
    learning_rate, step_time) into the job's MLflow run at that step."""

    def __init__(self, tracker: JobRun):
        self.tracker = tracker
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress("train", state.max_steps, initial=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numbers = {name: float(value) for name, value in logs.items()
                   if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}
        self.tracker.log_metrics(numbers, step=state.global_step)
        if "reward/mean" in numbers:
            get = numbers.get
            print(f"step {state.global_step}/{state.max_steps}: reward {get('reward/mean', 0):.3f} "
                  f"(valid {get('reward/valid_fraction', 0):.2f}, item F1 {get('score/item_f1', 0):.3f}), "
                  f"agents/trajectory {get('trajectory/agents', 0):.1f}, rows in loss {get('rows/in_loss', 0):.0f}, "
                  f"loss {get('loss', 0):.4g}, grad norm {get('grad_norm', 0):.3g}, logprob gap {get('policy/logprob_gap', 0):.2g}, "
                  f"{get('step_time', 0):.1f} s (rollouts {get('time/rollout_s', 0):.1f} s)"
                  + (f", ETA {eta}" if (eta := self.progress and self.progress.eta(state.global_step)) else ""),
                  flush=True)


class PeriodicEval(TrainerCallback):
    """evaluate(step) every `every` steps (0: never); the headline of each, by step, in `results`."""

    def __init__(self, evaluate, every: int):
        self.evaluate, self.every = evaluate, every
        self.results: dict[int, dict | None] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self.results[state.global_step] = self.evaluate(state.global_step)
