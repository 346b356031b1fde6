"""Multi-agent GRPO: TRL's GRPOTrainer with its generation step replaced by the multi-agent rollout.

TRL's trainer assumes one completion per prompt copy. Here a prompt copy is one rollout slot: the
task is rolled out as a whole trajectory (a lead and its subagents, agents/), and the trajectory
becomes one training row per agent (rows.py) that share its reward (reward.py), its group-normalised
advantage and the paper's dual-level token weights (advantages.py).

Pinned: trl==1.16.0. We override three of its private methods:

  _generate_and_score_completions  rollouts, rewards, Â, rows and weights, padded to a common row count
  _compute_loss                    the weighted clipped surrogate (below)
  _get_train_sampler               TRL's RepeatSampler, reseeded per epoch: a resumed run sees the same tasks

and keep the rest of TRL: its data loader (one prompt copy per rollout slot), `_prepare_inputs` (generate
once per optimizer step, shuffle the rows, split them into steps_per_generation micro-batches),
`_get_per_token_logps_and_entropies` (the fused LM head), the reference model or adapter for the KL term,
and `log` (which averages `self._metrics`).

Batch geometry: TRL counts rollout slots. A step of B tasks x G rollouts gives every rank B * G / world
slots, per_device_train_batch_size (trainer.rollouts_per_micro_batch) of them per micro-batch, so
steps_per_generation = gradient_accumulation_steps = B * G / (world * rollouts_per_micro_batch). A
micro-batch holds the rows of about that many trajectories: the agents vary, so the rows of a rank are
padded to a count shared by all ranks and divisible by steps_per_generation; every rank then runs the
same number of micro-batches and none is dropped.

The loss of a step, summed over its micro-batches and ranks, is the paper's objective (negated):

    loss = sum_rows w_row sum_tokens mask * l,     l = max(-r Â, -clip(r, 1 - eps_low, 1 + eps_high) Â)
                                                   l = min(l, -c Â)               when Â < 0 (dual clip, c = 10)
                                                   l += beta * KL_k3(pi_theta || pi_ref)   when beta > 0

with r = pi_theta / pi_old and pi_old the sampling distribution: the logprobs the engine reported while
sampling. With engine=hf that is this policy, so r is 1 up to numerics; an engine with other kernels
(vLLM) makes r carry the importance-sampling correction as well.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trl
from accelerate.utils import gather_object
from tqdm import tqdm
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler, use_adapter

from wideseek_exp import WideseekError
from wideseek_exp.agents import RolloutStats, derive_seed, run_rollouts
from wideseek_exp.agents.trajectory import Trajectory
from wideseek_exp.rl.advantages import group_advantages, token_weights
from wideseek_exp.rl.reward import Reward
from wideseek_exp.rl.rows import collate, padded_row_count, padding_row, trajectory_rows, trim_padding_columns

TRL_VERSION = "1.16.0"  # the private methods overridden here are those of this release
LOG_RATIO_LIMIT = 20.0  # |log r| beyond this is clipped anyway; bounding it keeps exp() and its gradient finite


def weighted_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    dual_clip: float | None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum over rows and tokens of w_row * mask * l (see the module docstring), and per-token flags for
    the metrics. logps, old_logps, mask: (rows, tokens); advantages, weights: (rows,)."""
    logps = logps.float()  # the LM head may return bf16 under autocast; the ratio wants fp32
    advantage = advantages[:, None].to(logps.dtype)
    ratio = torch.exp((logps - old_logps).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_token = torch.maximum(-ratio * advantage, -clipped_ratio * advantage)
    dual_clipped = torch.zeros_like(mask)
    if dual_clip:
        bound = -dual_clip * advantage
        dual_clipped = (advantage < 0) & (per_token > bound)
        per_token = torch.where(dual_clipped, bound, per_token)
    kl = None
    if beta:
        gap = ref_logps - logps
        kl = torch.exp(gap) - gap - 1
        per_token = per_token + beta * kl
    # where(), not a product: a padded position may hold any value, and 0 * inf is NaN
    loss = torch.where(mask, per_token * weights[:, None].to(logps.dtype), 0.0).sum()
    clipped = ((ratio < 1 - epsilon_low) & (advantage < 0)) | ((ratio > 1 + epsilon_high) & (advantage > 0))
    flags = {"ratio": ratio.detach(), "clipped": clipped & mask, "dual_clipped": dual_clipped & mask}
    if kl is not None:
        flags["kl"] = kl.detach()
    return loss, flags


def multi_agent_reward(prompts, completions, **kwargs):
    """Fills the reward_funcs slot that TRL requires (and names the reward in its logs). Rewards are
    computed on whole trajectories in the generation step (reward.py); TRL never calls this here."""
    raise NotImplementedError("MultiAgentGRPOTrainer computes rewards per trajectory in its generation step")


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler with each epoch's order drawn from (seed, epoch), not from how many epochs this
    process has already iterated: a run resumed in epoch k sees the tasks an uninterrupted run would."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:  # transformers' Trainer calls this before every epoch
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed(int(self.seed or 0) + self.epoch)
        return super().__iter__()


@dataclass
class RolloutSetup:
    """What the generation step needs besides the policy."""

    tasks: Sequence[Any]  # TaskRecords; the dataset's `task_index` column points into this list
    search: Any  # SearchBackend
    agent_cfg: Any
    search_cfg: Any
    reward: Callable[[Trajectory, Any], Reward]  # (trajectory, task) -> Reward
    engine_factory: Callable[[Any, Any], Any]  # (policy model, tokenizer) -> Engine generating with that policy
    seed: int = 0
    record_step: Callable[[int, list[dict]], None] | None = None  # main process: the step's trajectories
    summarizer: Any = None  # the access tool's summariser on a helper engine of its own; None: agent_cfg's


class MultiAgentGRPOTrainer(GRPOTrainer):
    def __init__(self, model, args, train_dataset, processing_class, rollout: RolloutSetup, *,
                 weighting: str = "paper", turn_selection: bool = True, dual_clip: float | None = 10.0,
                 forward_chunk_rows: int = 4, peft_config=None, callbacks=None):
        if trl.__version__ != TRL_VERSION:
            raise WideseekError(f"the multi-agent trainer overrides private methods of trl=={TRL_VERSION}; "
                                f"trl {trl.__version__} is installed (pip install trl=={TRL_VERSION})")
        if args.gradient_accumulation_steps != args.steps_per_generation or args.num_iterations != 1:
            raise WideseekError("the multi-agent trainer takes one optimizer step per batch of rollouts: "
                                "gradient_accumulation_steps == steps_per_generation and num_iterations = 1")
        super().__init__(model=model, reward_funcs=[multi_agent_reward], args=args, train_dataset=train_dataset,
                         processing_class=processing_class, peft_config=peft_config, callbacks=callbacks)
        self.rollout = rollout
        self.weighting = weighting
        self.turn_selection = turn_selection
        self.dual_clip = dual_clip
        self.forward_chunk_rows = forward_chunk_rows
        self._engine = None
        self._masks = None  # grammar masks over the tokenizer, for an engine without its own (vLLM)
        self._loss_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    # ---- the policy as the rollout engine ----------------------------------------------------------

    def policy_engine(self):
        """An engine that generates with the policy as it is now (built on first use: under DeepSpeed the
        model reaches its device only when training starts). Its prefix cache, if any, is emptied on every
        call: KV computed before an optimizer step is stale, and the fused AdamW of HF's Trainer updates
        weights without bumping the parameter versions the engine watches."""
        policy = self.accelerator.unwrap_model(self.model_wrapped)
        if self._engine is None:
            self._engine = self.rollout.engine_factory(policy, self.processing_class)
        clear_prefix_cache = getattr(self._engine, "clear_prefix_cache", None)
        if clear_prefix_cache is not None:
            clear_prefix_cache()
        sync_weights = getattr(self._engine, "sync_weights", None)  # an engine with its own copy (vLLM)
        if sync_weights is not None:
            sync_weights(policy)
        return self._engine

    @contextmanager
    def policy_for_generation(self):
        """Context for generating with the policy. Every rank runs its own, differently long rollout, so no
        forward pass may need the other ranks: TRL's unwrap gathers ZeRO-3 shards, and under FSDP2 the whole
        policy is gathered once here (one collective per step) and its forward passes stay local."""
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as model:
            with fsdp2_gathered(self.model_wrapped):
                # on a CPU, rollouts decode in fp32 even when the update runs in bf16 autocast (trainer.bf16):
                # small decode batches are slower in bf16 there (one GRPO step's rollouts: 32 s against 20 s)
                plain = self.accelerator.device.type == "cpu" and hasattr(model, "_original_forward")
                if plain:
                    patched, model.forward = model.forward, model._original_forward
                try:
                    yield model
                finally:
                    if plain:
                        model.forward = patched

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return EpochSeededRepeatSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    # ---- generation step ---------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        accelerator, group = self.accelerator, self.num_generations
        # This rank's rollout slots; over the step, slot k is sample k % G of task k // G (RepeatSampler order).
        first_slot = accelerator.process_index * len(inputs)
        slots = [(first_slot + j, int(example["task_index"])) for j, example in enumerate(inputs)]
        tasks = [self.rollout.tasks[task_index] for _, task_index in slots]

        started = time.perf_counter()
        stats = RolloutStats()
        with self.policy_for_generation():
            trajectories = self._roll_out(slots, stats)
        rollout_seconds = time.perf_counter() - started
        rewards = [self.rollout.reward(trajectory, task) for trajectory, task in zip(trajectories, tasks)]
        reward_seconds = time.perf_counter() - started - rollout_seconds

        # Â over whole groups: every rank sees every reward of the step, in slot order.
        local_rewards = torch.tensor([reward.total for reward in rewards], dtype=torch.float64, device=accelerator.device)
        step_rewards = accelerator.gather(local_rewards).cpu()
        advantages = group_advantages(step_rewards.view(-1, group)).view(-1)

        masks = self._grammar_masks(trajectories)
        rows = [row for j, (trajectory, reward) in enumerate(zip(trajectories, rewards))
                for row in trajectory_rows(trajectory, first_slot + j, reward.valid, self.turn_selection, masks)
                if row.trained_tokens]
        # The weights need N_i and L_{i,a} over the whole step (token_mean and the ablations use step totals).
        row_counts = gather_object([len(rows)])
        step_rows = gather_object([(row.trajectory, row.trained_tokens) for row in rows])
        weights = token_weights(self.weighting, torch.tensor([t for t, _ in step_rows], dtype=torch.long),
                                torch.tensor([n for _, n in step_rows], dtype=torch.long), len(step_rewards))
        offset = sum(row_counts[: accelerator.process_index])
        for k, row in enumerate(rows):
            row.weight = float(weights[offset + k])
            row.advantage = float(advantages[row.trajectory])
        if self.beta == 0.0:
            rows = [row for row in rows if row.advantage != 0.0]  # Â = 0 and no KL: exactly 0 in loss and gradient
        # longest rows first: a micro-batch (and a forward chunk within it) then holds rows of like length, and
        # little of it is padding (each row's loss is its own, weighted over the whole step: order is free)
        rows.sort(key=lambda row: len(row.prompt_ids) + len(row.completion_ids), reverse=True)
        loss_row_counts = gather_object([len(rows)])
        padded = padded_row_count(loss_row_counts, self.args.steps_per_generation)
        padding = padded - len(rows)
        rows += [padding_row(self.processing_class.pad_token_id) for _ in range(padding)]
        batch = collate(rows, self.processing_class.pad_token_id, accelerator.device)
        if self.beta != 0.0:
            batch["ref_per_token_logps"] = self._reference_logps(batch)

        summaries = gather_object([
            trajectory_summary(trajectory, reward, float(advantages[first_slot + j]), slot, group)
            for j, (trajectory, reward, (slot, _)) in enumerate(zip(trajectories, rewards, slots))
        ])
        metrics = step_metrics(summaries, advantages.view(-1, group))
        metrics.update({
            "trajectory/trained_rows": sum(row_counts) / len(step_rewards),
            "tokens/trained": float(sum(tokens for _, tokens in step_rows)),
            "rows/trained": float(sum(row_counts)),
            "rows/in_loss": float(sum(loss_row_counts)),
            "rows/padding": float(padded * accelerator.num_processes - sum(loss_row_counts)),
            "time/rollout_s": rollout_seconds,
            "time/reward_s": reward_seconds,
            "time/engine_calls": float(len(stats.flushes)),
        })
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        if accelerator.is_main_process and self.rollout.record_step is not None:
            self.rollout.record_step(self.state.global_step + 1, summaries)
        return batch

    def _roll_out(self, slots: list[tuple[int, int]], stats: RolloutStats) -> list[Trajectory]:
        """One trajectory per slot, in slot order. Request seeds derive from (run seed, step, task, sample),
        so a resumed run rolls out exactly what the interrupted one would have."""
        group, tasks = self.num_generations, self.rollout.tasks
        wanted = {(tasks[task_index].instance_id, slot % group) for slot, task_index in slots}
        if len(wanted) != len(slots):
            raise WideseekError("a task appears twice in one step: the training set needs unique instance_ids")
        unique_tasks = [tasks[index] for index in dict.fromkeys(task_index for _, task_index in slots)]
        seed = derive_seed(self.rollout.seed, "train", self.state.global_step)
        progress = tqdm(total=len(slots), desc=f"step {self.state.global_step + 1} rollouts", unit="trajectory",
                        file=sys.stderr, disable=not self.accelerator.is_main_process)
        try:
            trajectories = run_rollouts(
                unique_tasks, group, self.policy_engine(), self.rollout.search, self.processing_class,
                self.rollout.agent_cfg, self.rollout.search_cfg, seed, stats=stats, summarizer=self.rollout.summarizer,
                skip=lambda instance_id, sample: (instance_id, sample) not in wanted,
                on_trajectory=lambda _: progress.update(),
            )
        finally:
            progress.close()
        sleep = getattr(self._engine, "sleep", None)  # vLLM's sleep mode hands its GPU memory to training
        if sleep is not None:
            sleep()
        by_key = {(trajectory.instance_id, trajectory.sample_index): trajectory for trajectory in trajectories}
        return [by_key[(tasks[task_index].instance_id, slot % group)] for slot, task_index in slots]

    def _grammar_masks(self, trajectories: list[Trajectory]):
        """What replays the reply grammars (agent.tool_grammar) for the rows, or None when no reply was decoded
        under one: the engine's own masks (engine=hf), else the same masks built over the tokenizer."""
        if not any(turn.grammar for trajectory in trajectories for agent in trajectory.agents for turn in agent.turns):
            return None
        masks = getattr(self._engine, "grammar_masks", None)
        if masks is None:
            if self._masks is None:
                from wideseek_exp.engines.hf import GrammarMasks

                config = self.accelerator.unwrap_model(self.model).config.get_text_config(decoder=True)
                stops = {self.processing_class.convert_tokens_to_ids("<|im_end|>"), self.processing_class.eos_token_id}
                self._masks = GrammarMasks(self.processing_class, int(config.vocab_size), stops - {None})
            masks = self._masks
        return masks

    def _logps_and_entropies(self, model, batch: dict[str, torch.Tensor], compute_entropy: bool = False):
        """log pi(token) of the trained completion tokens (and the entropy of pi there), pi the sampling
        distribution at the trainer's temperature; 0 at every other position, which the loss masks out.

        The LM head runs only at the positions some row of a chunk trains (`logits_to_keep` as indices): a
        completion is mostly tool results, and [rows, completion, vocabulary] logits would hold most of a
        step's memory and a large share of its time. Rows decoded under a grammar are scored under the mask
        each token was sampled under (batch["allowed_tokens"]), so that the importance ratio compares the same
        distributions: the logits of the tokens the grammar ruled out are set to -inf before the softmax, as
        the engine did."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        prompt_width = batch["prompt_ids"].shape[1]
        trained = batch.get("trained_mask", batch["completion_mask"]).bool()
        logps = torch.zeros(trained.shape, dtype=torch.float32, device=input_ids.device)
        entropies = torch.zeros_like(logps) if compute_entropy else None
        grammar = "allowed_tokens" in batch
        if grammar:
            from wideseek_exp.engines.hf import allowed_tokens
        for start in range(0, input_ids.shape[0], self.forward_chunk_rows):
            end = start + self.forward_chunk_rows
            # the chunk's own columns: none of the padding every row of the chunk has (left of the prompts,
            # right of the completions)
            prompt_used = batch["prompt_mask"][start:end].any(dim=0).nonzero()
            completion_used = batch["completion_mask"][start:end].any(dim=0).nonzero()
            low = int(prompt_used[0]) if len(prompt_used) else prompt_width - 1
            high = prompt_width + (int(completion_used[-1]) + 1 if len(completion_used) else 1)
            first = prompt_width - low - 1  # the chunk position whose logits predict the first completion token
            columns = trained[start:end].any(dim=0).nonzero().squeeze(1)  # completion positions any row trains
            # a chunk that trains nothing still runs the model (at one position, weighted 0): the loss then has a
            # gradient through every parameter, as DDP and FSDP require of each rank's backward
            scale = 1.0 if columns.numel() else 0.0
            if columns.numel() == 0:
                columns = torch.tensor([high - prompt_width - 1], device=input_ids.device)
            with self.accelerator.autocast():
                logits = model(input_ids=input_ids[start:end, low:high], attention_mask=attention_mask[start:end, low:high],
                               logits_to_keep=columns + first).logits
            logits = logits.float() / self.temperature
            if grammar:
                allowed = allowed_tokens(batch["allowed_tokens"][start:end][:, columns], logits.shape[-1])
                logits = logits.masked_fill(~allowed, float("-inf"))
            logprobs = torch.log_softmax(logits, dim=-1)
            tokens = batch["completion_ids"][start:end][:, columns]
            logps[start:end, columns] = scale * logprobs.gather(-1, tokens[:, :, None]).squeeze(-1).clamp(min=-1e4)
            if compute_entropy:
                probs = logprobs.exp()
                entropies[start:end, columns] = -scale * (probs * logprobs.masked_fill(probs == 0, 0.0)).sum(-1)
        return logps, entropies

    @torch.no_grad()
    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log pi_ref of every completion token, a few rows at a time: the reference model, or with PEFT the
        base model (adapters off) or the frozen copy of a pretrained adapter."""
        if self.ref_model is not None:
            model, context = self.ref_model, nullcontext()
        else:
            unwrapped = self.accelerator.unwrap_model(self.model)
            model = self.model
            context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        reference = torch.zeros_like(batch["old_per_token_logps"])
        with context:
            for start in range(0, len(batch["prompt_ids"]), self.forward_chunk_rows):
                chunk = trim_padding_columns({key: value[start:start + self.forward_chunk_rows]
                                              for key, value in batch.items()})
                width = chunk["completion_ids"].shape[1]
                logps, _ = self._logps_and_entropies(model, chunk)
                reference[start:start + self.forward_chunk_rows, :width] = logps
        return reference

    # ---- loss ----------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = trim_padding_columns(inputs)
        logps, entropies = self._logps_and_entropies(model, batch, compute_entropy=True)
        mask = batch["trained_mask"].bool()
        loss, flags = weighted_policy_loss(
            logps, batch["old_per_token_logps"], batch["advantages"], batch["loss_weights"], mask,
            self.epsilon_low, self.epsilon_high, self.dual_clip, self.beta, batch.get("ref_per_token_logps"),
        )
        self._add_loss_metrics(mask, flags, entropies, logps.detach() - batch["old_per_token_logps"])
        # DDP, ZeRO and FSDP average gradients over ranks; the weights already normalise by the whole step.
        return loss * self.accelerator.num_processes

    def _add_loss_metrics(self, mask, flags, entropies, logp_gap) -> None:
        """Token means over the trained tokens of the whole optimizer step, reduced over ranks once, on its
        last micro-batch."""
        values = {"policy/clip_fraction": flags["clipped"].float(), "policy/dual_clip_fraction": flags["dual_clipped"].float(),
                  "policy/ratio": flags["ratio"], "policy/entropy": entropies.detach(), "policy/logprob_gap": logp_gap.abs()}
        if "kl" in flags:
            values["policy/kl"] = flags["kl"]
        count = float(mask.sum())
        for name, value in values.items():
            self._loss_sums[name][0] += float(torch.where(mask, value.float(), 0.0).sum())
            self._loss_sums[name][1] += count
        if not self.accelerator.sync_gradients:
            return
        names = sorted(self._loss_sums)
        local = torch.tensor([self._loss_sums[n] for n in names], dtype=torch.float64, device=self.accelerator.device)
        totals = self.accelerator.reduce(local, reduction="sum")
        for name, (total, tokens) in zip(names, totals.tolist()):
            if tokens > 0:
                self._metrics["train"][name].append(total / tokens)
        self._loss_sums.clear()

    # ---- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint_now(self) -> Path | None:
        """A checkpoint of the last finished optimizer step (after Ctrl-C or a crash): model, optimizer,
        scheduler, RNG and trainer state, which holds the data position. None when there is nothing new."""
        step = self.state.global_step
        folder = Path(self.args.output_dir) / f"checkpoint-{step}"
        if step == 0 or folder.exists():
            return None
        self._save_checkpoint(self.model, trial=None)  # a half-accumulated step is not part of it
        return folder


# ---------------------------------------------------------------------------------------------- metrics


def trajectory_summary(trajectory: Trajectory, reward: Reward, advantage: float, slot: int, group: int) -> dict:
    """What the step metrics and the per-step log keep of one trajectory (no token ids)."""
    return {
        "instance_id": trajectory.instance_id,
        "sample": slot % group,
        "reward": reward.to_dict(),
        "advantage": advantage,
        "agents": len(trajectory.agents),
        "subagents": trajectory.subagent_count,
        "lead_failure": trajectory.root.failure,
        "generated_tokens": dict(trajectory.generated_tokens),
        "longest_reply": trajectory.longest_reply(),
        "access_calls": trajectory.access_calls,
        "search_calls": trajectory.search_calls,
    }


def agents_advantage_cov(summaries: list[dict], advantages: torch.Tensor) -> float:
    """The covariance of a trajectory's agent count N_i with its Â_i inside its group, averaged over the groups
    (`summaries` in the order of `advantages`, a (tasks, G) grid). Above 0: the rollouts that started more
    agents were the better ones. The paper's weights give the lead's tokens 1/N_i, so then the lead's tokens
    of the worse, narrower rollouts outweigh those of the better, wider ones."""
    agents = torch.tensor([s["agents"] for s in summaries], dtype=torch.float64).view_as(advantages)
    centred = agents - agents.mean(dim=1, keepdim=True)
    return float((centred * advantages.double()).mean(dim=1).mean())


def step_metrics(summaries: list[dict], advantages: torch.Tensor) -> dict[str, float]:
    """Means over the step's trajectories (NaN rewards, judge failures, left out of the reward means)."""
    count = max(len(summaries), 1)
    rewards = torch.tensor([s["reward"]["total"] for s in summaries], dtype=torch.float64)
    scored = rewards[~torch.isnan(rewards)]

    def mean(values) -> float:
        values = list(values)
        return float(sum(values) / len(values)) if values else 0.0

    metrics = {
        "reward/mean": float(scored.mean()) if len(scored) else 0.0,
        "reward/std": float(scored.std()) if len(scored) > 1 else 0.0,
        "reward/valid_fraction": mean(s["reward"]["valid"] for s in summaries),
        "reward/judge_errors": float(sum(s["reward"]["judge_error"] for s in summaries)),
        "score/item_f1": mean(s["reward"]["item_f1"] for s in summaries),
        "score/row_f1": mean(s["reward"]["row_f1"] for s in summaries),
        "advantage/mean": float(advantages.mean()),
        "advantage/std": float(advantages.std()) if advantages.numel() > 1 else 0.0,
        "advantage/min": float(advantages.min()),
        "advantage/max": float(advantages.max()),
        "advantage/zero_groups": float((advantages == 0).all(dim=1).double().mean()),
        "advantage/agents_cov": agents_advantage_cov(summaries, advantages),
        "trajectory/agents": mean(s["agents"] for s in summaries),
        "trajectory/subagents": mean(s["subagents"] for s in summaries),
        "trajectory/lead_failed": mean(s["lead_failure"] is not None for s in summaries),
        "trajectory/access_calls": mean(s["access_calls"] for s in summaries),
        "tokens/longest_reply": mean(s["longest_reply"] for s in summaries),
    }
    for component in ("answer", "format_bonus", "access_bonus", "length_penalty"):
        metrics[f"reward/{component}"] = mean(s["reward"][component] for s in summaries)
    roles = sorted({role for s in summaries for role in s["generated_tokens"]})
    for role in roles:
        metrics[f"tokens/{role}"] = sum(s["generated_tokens"].get(role, 0) for s in summaries) / count
    return metrics


@contextmanager
def fsdp2_gathered(model: torch.nn.Module):
    """Hold every FSDP2-sharded parameter of `model` whole until the context ends (a no-op without FSDP2).

    FSDP2 all-gathers a layer's shards inside each forward pass, a collective that every rank must join;
    the multi-agent rollout runs a data-dependent number of forward passes per rank, which would leave
    the ranks waiting on each other. Unsharded once, with resharding after forward switched off, the
    forward passes are local (the memory of ZeRO-3's gather for generation)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not sharded:
        yield
        return
    reshards = [_reshards_after_forward(module) for module in sharded]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module, reshard in zip(sharded, reshards):
            module.reshard()
            module.set_reshard_after_forward(reshard, recurse=False)


def _reshards_after_forward(module) -> bool:
    """The module's own setting (FSDP2 keeps it as the mesh info it reshards to after forward)."""
    group = module._get_fsdp_state()._fsdp_param_group
    return group is None or group.post_forward_mesh_info is not None
