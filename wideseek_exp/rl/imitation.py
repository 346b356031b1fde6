"""Imitation warm start (built by task=sft, and by task=build for model=tiny): the scripted expert's
trajectories on the TRAIN split become supervised rows, and TRL's SFTTrainer fits the tiny model to them.

1. the expert (engines/expert.py) rolls out `sft.tasks` train tasks at the widths `sft.widths` through the real
   rollout and search backend. Each agent's whole context is one row (sft.rows=agent): the prompt, tool
   results and every reply, so each reply is trained after exactly what inference shows it (the task it
   copies a description from, the list a wave takes its next entities from, every report the final
   table assembles). The lead and the subagents of its first call (the entity set) always become rows,
   and `sft.subagents_per_task` of the entity subagents, drawn with sft.seed (the lookups of one task are
   near copies of each other). sft.rows=turn makes one shorter row per reply instead, after its most
   recent `sft.context_tokens` (optionally after the agent's prompt): cheaper, but blind to any source
   further back;
2. the loss is on the expert's reply tokens only: the trajectory's generated-token mask becomes the
   row's `assistant_masks`, so the prompt, tool results and turn hints are context, never targets;
3. SFTTrainer (trl==1.16) trains `sft.max_steps` steps from `model.warm_start_from` (the random tiny
   model), in bf16 autocast with fp32 weights (sft.bf16), and the result is saved as a model folder
   (weights, tokenizer, chat template) that a model config loads (conf/model/tiny.yaml).

Before step 3, a copy stage (sft.copy_steps > 0) trains the random model on synthetic rows of random
token spans each written twice, the loss on the second copy. Every cell of a table, URL of an access
call and name of a subtask is copied from the context, and a model from random weights learns that skill
(an induction circuit: find the earlier occurrence of the current token, predict what followed it) only
after a sudden transition: on the expert's rows it was not reached within the SFT budget, on copy rows
it is (in three runs the copy accuracy stayed below 5% for 350 to 900 steps, then passed 90% within
about 100), so the stage runs until sft.copy_target_accuracy. Then `sft.copy_text_steps` steps copy spans
of the expert's own contexts (a passage, then spans drawn from it): real text repeats its tokens, and
copying it needs more than the current token as a key. Measured on held-out expert replies and in free
running in experiments/cpu_demo/README.md.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint, read_stamp
from wideseek_exp.conf import check_sft
from wideseek_exp.progress import Progress

SFT_VERSION = "sft-7"


def agent_rows(agent, max_length: int, rows: str, context_tokens: int,
               keep_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """The (input_ids, mask) rows of one agent's context. rows=agent: the whole context, cut to its first
    `max_length` tokens (early replies only). rows=turn: one row per reply, the reply after the last
    `context_tokens` tokens of the context before it (the tool result it answers), preceded (keep_prompt)
    by the agent's initial prompt (system prompt, tool schemas, task: the prefix inference sees); a row is
    at most `max_length` tokens, a longer reply keeps its head."""
    if rows == "agent":
        ids, mask = agent.token_ids(), agent.response_mask()
        return [(ids[:max_length], mask[:max_length])]
    prompt = list(agent.prompt_ids) if keep_prompt else []
    out = []
    for index, turn in enumerate(agent.turns):
        reply = list(turn.response_ids)
        if not reply:
            continue
        history = agent.turn_prompt_ids(index)
        if keep_prompt:
            history = history[len(prompt):]
        context = prompt + (history[-context_tokens:] if context_tokens else [])
        context = context[-max(max_length - len(reply), max_length // 4):]
        reply = reply[: max_length - len(context)]
        out.append((context + reply, [0] * len(context) + [1] * len(reply)))
    return out


def is_list_agent(agent) -> bool:
    """A subagent of the lead's first call: the one that finds the entity set."""
    return agent.role != "lead" and str(agent.agent_id).startswith("lead.1.")


def kept_agents(agents: list, keep: int, rng: random.Random) -> list:
    """The agents of one trajectory that become rows: the lead, the subagents of its first call (the
    entity set), and `keep` of the later subagents drawn with `rng` (keep=0: all of them)."""
    later = [a for a in agents if a.role != "lead" and not is_list_agent(a)]
    if keep <= 0 or len(later) <= keep:
        return list(agents)
    drawn = {id(a) for a in rng.sample(later, keep)}
    return [a for a in agents if a.role == "lead" or is_list_agent(a) or id(a) in drawn]


def keep_freed_memory() -> None:
    """Training steps of varying length allocate and free buffers of hundreds of MB (the logits of a 6K-token
    row); glibc hands them back to the kernel and faults them in again every step. Keeping them in the heap
    (mmap threshold and trim threshold raised, as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ would) cut
    the page faults of the tiny model's bf16 training steps to under a third and raised its tokens per
    second 1.4x (experiments/cpu_demo/train_speed.py). A no-op where the C library has no mallopt."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, (1 << 31) - 1)
    mallopt(m_top_pad, 1 << 28)


def copy_rows(rng, batch_size: int, length: int, vocabulary, span: tuple[int, int]):
    """A batch of copy rows: random token spans of span[0]..span[1] tokens, each followed by itself, until a
    row holds `length` tokens. Returns (input_ids, labels): labels are -100 except on the second copy's
    tokens after its first (the first is unpredictable: it starts the repeat)."""
    import torch

    rows, labels = [], []
    for _ in range(batch_size):
        ids, target = [], []
        while len(ids) < length:
            size = int(rng.integers(span[0], span[1] + 1))
            piece = rng.choice(vocabulary, size).tolist()
            ids += piece + piece
            target += [-100] * (size + 1) + piece[1:]
        rows.append(ids[:length])
        labels.append(target[:length])
    return torch.tensor(rows), torch.tensor(labels)


def text_copy_rows(rng, batch_size: int, length: int, sources: list[list[int]], span: tuple[int, int]):
    """A batch of copy rows from real contexts: a passage (the first half of the row, a window of one of
    `sources`, e.g. the expert's contexts) followed by spans drawn from it, until the row holds `length`
    tokens. Labels are -100 except on each span's tokens after its first. Real text repeats its tokens
    ("the", "of", a name's first word), so the copy must key on more than the current token, as a table cell
    or a subtask copied from the task does."""
    import torch

    passage_length = length // 2
    pool = [s for s in sources if len(s) > passage_length] or sources
    rows, labels = [], []
    for _ in range(batch_size):
        source = pool[int(rng.integers(len(pool)))]
        start = int(rng.integers(max(1, len(source) - passage_length + 1)))
        passage = list(source[start: start + passage_length])
        ids, target = list(passage), [-100] * len(passage)
        while len(ids) < length:
            size = min(int(rng.integers(span[0], span[1] + 1)), len(passage))
            begin = int(rng.integers(len(passage) - size + 1))
            piece = passage[begin: begin + size]
            ids += piece
            target += [-100] + piece[1:]
        rows.append(ids[:length])
        labels.append(target[:length])
    return torch.tensor(rows), torch.tensor(labels)


def copy_vocabulary(tokenizer):
    """The ids copy rows draw from: every token but the chat markers and tags (added tokens)."""
    import numpy as np

    added = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in added])


def mixed_copy_rows(sft, tokenizer, count: int) -> list[dict]:
    """`count` copy rows as SFT rows (the second copies are the trained tokens), seeded by sft.seed."""
    import numpy as np

    rng = np.random.default_rng(int(sft.seed) + 1)
    ids, labels = copy_rows(rng, count, int(sft.copy_length), copy_vocabulary(tokenizer),
                            (int(sft.copy_span_min), int(sft.copy_span_max)))
    return [{"input_ids": row, "assistant_masks": [int(t != -100) for t in target], "role": "copy"}
            for row, target in zip(ids.tolist(), labels.tolist())]


def copy_stage(model, tokenizer, sft, log_metrics=None, sources: list[list[int]] | None = None) -> dict:
    """Train `model` in place on batches of copy rows (AdamW, constant lr after a 50-step warm-up) until the
    greedy copy accuracy of the last 20 steps reaches sft.copy_target_accuracy, or for sft.copy_steps steps.
    The skill appears suddenly, after a number of steps that varies with the seed and settings (350 to 950
    steps at the defaults). Returns the steps taken and the loss and accuracy of their first and last tenth."""
    import numpy as np
    import torch

    check_sft(sft)
    steps = int(sft.copy_steps)
    rng = np.random.default_rng(int(sft.seed))
    torch.manual_seed(int(sft.seed))
    vocabulary = copy_vocabulary(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(sft.copy_learning_rate), weight_decay=0.0)
    warmup = 50
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    target, window = float(sft.copy_target_accuracy), 20
    model.train()
    history = []
    text_steps = int(sft.copy_text_steps) if sources else 0
    span = (int(sft.copy_span_min), int(sft.copy_span_max))
    text_started = None
    progress = Progress(f"sft: copy stage (ends early at copy accuracy {target:g})", steps)
    text_progress = None
    for step in range(1, steps + text_steps + 1):
        if text_started is None:
            ids, labels = copy_rows(rng, int(sft.copy_batch_size), int(sft.copy_length), vocabulary, span)
        else:
            ids, labels = text_copy_rows(rng, int(sft.copy_batch_size), int(sft.copy_text_length), sources, span)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(sft.bf16)):
            logits = model(input_ids=ids).logits[:, :-1].float()
        targets = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        mask = targets != -100
        accuracy = (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()
        history.append((loss.item(), accuracy))
        if text_started is None:
            if log_metrics is not None:
                log_metrics({"sft/copy_loss": loss.item(), "sft/copy_accuracy": accuracy}, step=step)
            reached = len(history) >= window and sum(h[1] for h in history[-window:]) / window >= target
            progress.update(step, f"loss {loss.item():.3f}, copy accuracy {accuracy:.3f}", force=reached)
            if reached or step >= steps:  # the skill is there (the rest of the budget goes unspent), or no budget
                if not text_steps:
                    break
                text_started = len(history)
                text_progress = Progress("sft: text copy stage", text_steps)
        else:
            done = len(history) - text_started
            if log_metrics is not None:
                log_metrics({"sft/text_copy_loss": loss.item(), "sft/text_copy_accuracy": accuracy}, step=done)
            text_progress.update(done, f"loss {loss.item():.3f}, copy accuracy {accuracy:.3f}")
            if done >= text_steps:
                break
    random_spans = history[:text_started] if text_started is not None else history
    tenth = max(1, len(random_spans) // 10)
    mean = lambda values: round(sum(values) / len(values), 4)  # noqa: E731
    stats = {"copy_steps": len(random_spans), "copy_loss_first": mean([h[0] for h in random_spans[:tenth]]),
             "copy_loss_last": mean([h[0] for h in random_spans[-tenth:]]),
             "copy_accuracy_last": mean([h[1] for h in random_spans[-tenth:]])}
    if text_started is not None:
        text = history[text_started:]
        tenth = max(1, len(text) // 10)
        stats.update({"text_copy_steps": len(text), "text_copy_accuracy_first": mean([h[1] for h in text[:tenth]]),
                      "text_copy_accuracy_last": mean([h[1] for h in text[-tenth:]])})
    return stats


def expert_rows(cfg: DictConfig, tokenizer, tasks: list, max_length: int,
                list_only: bool = False) -> tuple[list[dict], dict]:
    """Training rows from the expert's trajectories (sft.rows: one per agent or one per reply):
    input_ids and assistant_masks (1 on reply tokens), and the agent's role. `list_only`: the rows of the
    subagents of the lead's first call alone (the ones that find the entity set)."""
    from tqdm import tqdm

    from wideseek_exp.engines.expert import ExpertEngine

    agent_cfg = OmegaConf.merge(cfg.agent, {"temperature": 1.0})
    # The expert writes whole tables in one reply: its replies are not cut to the model's reply budget.
    agent_cfg.max_reply_tokens = int(cfg.sft.expert_max_reply_tokens)
    progress = tqdm(total=len(tasks), desc="sft: expert demonstrations", unit="trajectory", file=sys.stderr)
    try:
        trajectories = rollouts_at_widths(cfg, tasks, ExpertEngine(tokenizer), tokenizer, agent_cfg, cfg.seed,
                                          progress.update)
    finally:
        progress.close()
    check_sft(cfg.sft)
    share = float(cfg.sft.prompt_share)
    rng = random.Random(int(cfg.sft.seed))
    rows, cut, prompted = [], 0, 0
    per_task = int(cfg.sft.subagents_per_task)
    for trajectory in trajectories:
        agents = ([a for a in trajectory.agents if is_list_agent(a)] if list_only
                  else kept_agents(trajectory.agents, per_task, rng))
        for agent in agents:
            cut += len(agent.token_ids()) > max_length
            settings = (max_length, str(cfg.sft.rows), int(cfg.sft.context_tokens))
            keep_all = bool(cfg.sft.keep_prompt)
            short = agent_rows(agent, *settings, keep_all)
            # rows=turn: a share of the rows start with the agent's whole prompt, as at inference
            drawn = share and not keep_all and str(cfg.sft.rows) == "turn"
            full = agent_rows(agent, *settings, True) if drawn else short
            for short_row, full_row in zip(short, full):
                keep = bool(drawn) and rng.random() < share
                ids, mask = full_row if keep else short_row
                if any(mask):
                    prompted += keep_all or keep
                    rows.append({"input_ids": ids, "assistant_masks": mask, "role": agent.role})
    stats = {"trajectories": len(trajectories), "rows": len(rows), "rows_cut": cut, "rows_with_prompt": prompted,
             "tokens": sum(len(r["input_ids"]) for r in rows),
             "trained_tokens": sum(sum(r["assistant_masks"]) for r in rows)}
    return rows, stats


def rollouts_at_widths(cfg: DictConfig, tasks: list, engine, tokenizer, agent_cfg, seed: int, on_trajectory) -> list:
    """Rollouts of `tasks`, task k at width sft.widths[k % len(sft.widths)] (one run_rollouts call per width)."""
    from wideseek_exp.agents import run_rollouts
    from wideseek_exp.search.factory import make_search_backend

    widths = [int(w) for w in cfg.sft.widths]
    search = make_search_backend(cfg)
    trajectories = []
    for index, width in enumerate(widths):
        group = tasks[index::len(widths)]
        if group:
            trajectories += run_rollouts(group, 1, engine, search, tokenizer,
                                         OmegaConf.merge(agent_cfg, {"max_subagents_per_call": width}), cfg.search,
                                         seed, on_trajectory=lambda _: on_trajectory())
    return trajectories


def on_policy_rows(cfg: DictConfig, model, tokenizer, tasks: list, seed: int, engine=None) -> tuple[list[dict], dict]:
    """On-policy imitation (DAgger): the model as it is now plays `tasks` (at the widths sft.widths, sampled and
    decoded as at inference: agent.temperature, agent.tool_grammar), and the expert labels the states the
    model reached. Each turn where the model's action (its reply after the thinking) is not the expert's
    becomes a row: the model's own context up to that turn, then the expert's reply, the only trained tokens.
    At most sft.dagger_rows_per_agent rows per agent, the first deviations (a later one is often a
    consequence of the first). Returns the rows and counts, with the protocol funnel of the rollouts. `engine`
    (default: engine=hf over `model`) is what plays."""
    from tqdm import tqdm

    from wideseek_exp.agents import strip_thinking
    from wideseek_exp.agents.funnel import STAGES, funnel_shares, gold_values, protocol_stages, stage_row
    from wideseek_exp.engines.expert import END, expert_label
    from wideseek_exp.engines.hf import HFEngine

    sft = cfg.sft
    if engine is None:
        engine = HFEngine(model, tokenizer, max_batch_size=int(cfg.engine.max_batch_size),
                          prefix_cache_mb=float(cfg.engine.prefix_cache_mb))
    progress = tqdm(total=len(tasks), desc="sft: on-policy rollouts", unit="trajectory", file=sys.stderr)
    try:
        trajectories = rollouts_at_widths(cfg, tasks, engine, tokenizer, cfg.agent, seed, progress.update)
    finally:
        progress.close()
    end_id = tokenizer.convert_tokens_to_ids(END)
    max_length, per_agent = int(sft.max_length), int(sft.dagger_rows_per_agent)
    rows, turns, agreed = [], 0, 0
    for trajectory in trajectories:
        for agent in trajectory.agents:
            kept = 0
            for index, turn in enumerate(agent.turns):
                turns += 1
                context = agent.turn_prompt_ids(index)
                label = expert_label(tokenizer.decode(context, skip_special_tokens=False))
                if strip_thinking(tokenizer.decode(turn.response_ids)).removesuffix(END).strip() == \
                        strip_thinking(label).strip():
                    agreed += 1
                    continue
                reply = tokenizer.encode(label, add_special_tokens=False) + [end_id]
                if kept >= per_agent or len(context) + len(reply) > max_length:
                    continue
                rows.append({"input_ids": context + reply, "assistant_masks": [0] * len(context) + [1] * len(reply),
                             "role": agent.role})
                kept += 1
    task_of = {task.instance_id: task for task in tasks}
    scores = _item_f1s(cfg, trajectories, task_of)
    funnel = funnel_shares([stage_row(protocol_stages(t, gold_values(task_of[t.instance_id].gold_rows)), score)
                            for t, score in zip(trajectories, scores)])
    stats = {"trajectories": len(trajectories), "turns": turns, "agreed_turns": agreed, "rows": len(rows),
             "item_f1": sum(scores) / max(1, len(scores)), **{f"funnel.{k}": funnel[k] for k in STAGES}}
    return rows, stats


def _item_f1s(cfg: DictConfig, trajectories: list, task_of: dict) -> list[float]:
    from wideseek_exp.scoring import make_judge, score_response

    judge = make_judge(cfg.judge)
    return [score_response(t.final_answer, task_of[t.instance_id], judge).item_f1 if t.final_answer else 0.0
            for t in trajectories]


def fit(model, tokenizer, rows: list[dict], sft, steps: int, learning_rate: float, out_dir: Path, label: str,
        log_metrics=None, log_prefix: str = "sft/loss", step_offset: int = 0) -> list[float]:
    """`steps` steps of TRL's SFTTrainer on `rows` (loss on their assistant_masks tokens), cosine from
    `learning_rate` after sft.warmup_ratio of warm-up, in place on `model`; the loss of each step."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    losses: list[float] = []
    if steps <= 0:  # (a trainer given max_steps=0 would run whole epochs instead)
        return losses

    class Record(TrainerCallback):
        """Each step's loss into `losses` and MLflow, and a progress line (in place of TRL's dict per step)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(label, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if log_metrics is not None:
                    log_metrics({log_prefix: float(logs["loss"])}, step=step_offset + state.global_step)
                self.progress.update(state.global_step, f"loss {float(logs['loss']):.3f}")

    torch.manual_seed(int(sft.seed) + step_offset)
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"), max_steps=steps, learning_rate=learning_rate,
        per_device_train_batch_size=int(sft.batch_size), lr_scheduler_type="cosine",
        warmup_steps=float(sft.warmup_ratio), train_sampling_strategy="group_by_length",
        weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, bf16=bool(sft.bf16), seed=int(sft.seed) + step_offset, max_length=int(sft.max_length),
        packing=False, dataset_text_field="input_ids", remove_unused_columns=False, dataloader_num_workers=0,
    )
    model.train()
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "assistant_masks": r["assistant_masks"]} for r in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Record()])
    trainer.remove_callback(PrinterCallback)  # Record prints the step counter instead of one dict per step
    trainer.train()
    model.eval()
    return losses


def _head_and_tail(losses: list[float]) -> tuple[float, float]:
    tenth = max(1, len(losses) // 10)
    return round(sum(losses[:tenth]) / tenth, 4), round(sum(losses[-tenth:]) / tenth, 4)


def with_replay(new: list[dict], replay: list[dict], share: float, rng: random.Random) -> list[dict]:
    """`new` rows and a draw of `replay` rows that makes up `share` of the mix (as many as there are)."""
    return new + rng.sample(replay, min(len(replay), round(len(new) * share / (1 - share))))


def imitation_split(tasks: list, sft) -> tuple[list, list]:
    """The train tasks as the imitation takes them: shuffled with sft.seed, the ones the expert plays (the first
    sft.tasks, all of them when 0, then sft.list_drill_tasks more for the list drill), and the rest, in that
    order (the on-policy rounds draw from the rest)."""
    order = list(tasks)
    random.Random(int(sft.seed)).shuffle(order)
    count = int(sft.tasks) + int(sft.list_drill_tasks) if int(sft.tasks) else len(order)
    return order[:count], order[count:]


def train_sft(cfg: DictConfig, base: str, out_dir: Path, log_metrics=None, peft_config=None) -> dict:
    """Fit the model in folder `base` to the expert's rows (after the copy stages), then sft.dagger_rounds
    rounds of on-policy imitation, and save it to `out_dir`. With `peft_config` (a peft LoraConfig) only
    LoRA adapters train, and `out_dir` receives the adapter. Returns counts."""
    from wideseek_exp.models.loader import load_model_and_tokenizer
    from wideseek_exp.tasks.loaders import load_task_set

    sft = cfg.sft
    check_sft(sft)  # before minutes of copy stage and rollouts
    keep_freed_memory()
    tasks = [task for task in load_task_set(cfg.data, "train") if task.is_table]  # never the test split
    played, later_tasks = imitation_split(tasks, sft)
    expert_tasks, drill_tasks = (played[: int(sft.tasks)], played[int(sft.tasks):]) if int(sft.tasks) else (played, [])
    model, tokenizer = load_model_and_tokenizer(base, dtype="float32", device="cpu")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    started = time.perf_counter()
    rows, stats = expert_rows(cfg, tokenizer, expert_tasks, int(sft.max_length))
    stats["expert_seconds"] = round(time.perf_counter() - started, 2)
    if not rows:
        raise WideseekError("sft: the expert produced no trainable rows (check sft.tasks and data=)")
    if int(sft.copy_steps) > 0:
        started = time.perf_counter()
        stats.update(copy_stage(model, tokenizer, sft, log_metrics, [r["input_ids"] for r in rows]))
        stats["copy_seconds"] = round(time.perf_counter() - started, 2)
    share = float(sft.copy_share)
    if share > 0:  # copy rows among the expert's keep the copying skill alive while the templates are learnt
        rows = rows + mixed_copy_rows(sft, tokenizer, round(len(rows) * share / (1 - share)))
        stats["copy_rows"] = len(rows) - stats["rows"]
    print(f"sft: {stats['rows']} rows ({stats['trained_tokens']} reply tokens of {stats['tokens']}) from "
          f"{stats['trajectories']} expert trajectories in {stats['expert_seconds']} s", flush=True)

    started = time.perf_counter()
    losses = fit(model, tokenizer, rows, sft, int(sft.max_steps), float(sft.learning_rate), out_dir,
                 "sft: imitation", log_metrics)
    stats["train_seconds"] = round(time.perf_counter() - started, 2)
    stats["steps"] = len(losses)
    if losses:
        stats["loss_first"], stats["loss_last"] = _head_and_tail(losses)
        print(f"sft: {stats['steps']} steps in {stats['train_seconds']} s, loss {stats['loss_first']} -> "
              f"{stats['loss_last']}", flush=True)

    if drill_tasks and int(sft.list_drill_steps) > 0:
        stats.update(list_drill(cfg, model, tokenizer, drill_tasks, rows, out_dir, log_metrics))

    # On-policy rounds: new train tasks each round (after the expert's), rows aggregated over the rounds.
    pool = later_tasks or expert_tasks
    on_policy: list[dict] = []
    rng = random.Random(int(sft.seed) + 2)
    for round_index in range(int(sft.dagger_rounds)):
        started = time.perf_counter()
        count = int(sft.dagger_tasks)
        round_tasks = [pool[(round_index * count + k) % len(pool)] for k in range(count)]
        new_rows, round_stats = on_policy_rows(cfg, model, tokenizer, round_tasks, int(sft.seed) + 1000 + round_index)
        on_policy += new_rows
        replay = float(sft.dagger_replay)
        mixed = with_replay(on_policy, rows, replay, rng)
        print(f"sft: on-policy round {round_index + 1} of {sft.dagger_rounds}: {round_stats['agreed_turns']} of "
              f"{round_stats['turns']} turns as the expert's, item F1 {100 * round_stats['item_f1']:.1f}; "
              f"{len(new_rows)} new rows, {len(mixed)} in the mix", flush=True)
        if log_metrics is not None:
            log_metrics({f"sft/dagger_{k}": float(v) for k, v in round_stats.items()}, step=round_index + 1)
        round_losses = fit(model, tokenizer, mixed, sft, int(sft.dagger_steps), float(sft.dagger_learning_rate),
                           out_dir, f"sft: on-policy round {round_index + 1}", log_metrics, "sft/dagger_loss",
                           step_offset=round_index * int(sft.dagger_steps)) if mixed else []
        prefix = f"dagger{round_index + 1}_"
        stats.update({prefix + k: v for k, v in round_stats.items()})
        stats[prefix + "seconds"] = round(time.perf_counter() - started, 2)
        if round_losses:
            stats[prefix + "loss_first"], stats[prefix + "loss_last"] = _head_and_tail(round_losses)
    model.save_pretrained(out_dir)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out_dir)
    return stats


def list_drill(cfg: DictConfig, model, tokenizer, tasks: list, replay_rows: list[dict], out_dir: Path,
               log_metrics=None) -> dict:
    """The list drill: sft.list_drill_steps steps on the expert's list subagents of `tasks` (train tasks beyond
    the imitation's, so entity sets it has not seen), mixed with the imitation's rows (sft.list_drill_replay:
    their share). A list subagent reads one of several look-alike lists its search returns (airports of Cuba,
    of Montenegro, of Bhutan); choosing the one its subtask names is a copy keyed on the task, which the
    imitation's few entity sets teach poorly (the model reads a list it has seen before instead)."""
    sft = cfg.sft
    started = time.perf_counter()
    drill, drill_stats = expert_rows(cfg, tokenizer, tasks, int(sft.max_length), list_only=True)
    share = float(sft.list_drill_replay)
    rng = random.Random(int(sft.seed) + 3)
    mixed = with_replay(drill, replay_rows, share, rng)
    print(f"sft: list drill: {len(drill)} list-subagent rows from {len(tasks)} tasks, {len(mixed)} in the mix",
          flush=True)
    losses = fit(model, tokenizer, mixed, sft, int(sft.list_drill_steps), float(sft.list_drill_learning_rate),
                 out_dir, "sft: list drill", log_metrics, "sft/list_drill_loss")
    stats = {"list_drill_rows": len(drill), "list_drill_tasks": len(tasks),
             "list_drill_seconds": round(time.perf_counter() - started, 2)}
    if losses:
        stats["list_drill_loss_first"], stats["list_drill_loss_last"] = _head_and_tail(losses)
    return stats


def sft_fingerprint(cfg: DictConfig, base: Path) -> str:
    base_stamp = (read_stamp(base) or {}).get("fingerprint", "")
    settings = OmegaConf.to_container(cfg.sft, resolve=True)
    agent = {k: cfg.agent[k] for k in ("lead_max_turns", "subagent_max_turns", "summarizer", "summary_max_chars",
                                       "thinking")}
    # sft.widths, not the run's `subagents`: a width sweep evaluates one warm start, it does not rebuild it
    return fingerprint("tiny-sft", SFT_VERSION, base_stamp, settings, agent, cfg.seed)


def build_warm_start(cfg: DictConfig, force: bool = False, log_metrics=None) -> BuildResult:
    """model.path <- the warm start from model.warm_start_from (a no-op when its stamp matches)."""
    base = Path(cfg.model.warm_start_from)
    return build_folder("tiny-sft", Path(cfg.model.path), sft_fingerprint(cfg, base),
                        lambda tmp: train_sft(cfg, str(base), tmp, log_metrics), force=force)


def needs_warm_start(cfg: DictConfig) -> bool:
    """model.source=tiny_sft with a model policy: the scripted one needs only the tokenizer, which the warm
    start shares with its base."""
    return cfg.model.source == "tiny_sft" and cfg.agent.policy != "scripted"


def warm_start_is_current(cfg: DictConfig) -> bool:
    stamp = read_stamp(Path(cfg.model.path))
    return stamp is not None and stamp.get("fingerprint") == sft_fingerprint(cfg, Path(cfg.model.warm_start_from))


def require_warm_start(cfg: DictConfig) -> None:
    """Stop, in one line naming the command that builds it, when the job needs the warm start and it is
    missing or was built from other settings. Only task=build and task=sft train it: a job that reads it
    never trains behind the user's back."""
    if not needs_warm_start(cfg) or warm_start_is_current(cfg):
        return
    stamp = read_stamp(Path(cfg.model.path))
    build = "python run.py task=build"
    if stamp is None:
        raise WideseekError(f"the {cfg.model.name} model's imitation warm start is not built at {cfg.model.path}: run "
                            f"`{build}` first (20 to 26 minutes on a 2-core CPU, once)")
    raise WideseekError(f"the warm start at {cfg.model.path} was built from other sft.* settings (or another base "
                        f"model or seed): run `{build}` with this job's model, sft.* and seed settings")
