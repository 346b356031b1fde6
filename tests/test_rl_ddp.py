"""The multi-agent trainer under DDP (torchrun, gloo, CPU): one step where one rank holds a lone lead's
trajectories (2 rows) and the other a lead with three subagents (8 rows). Both ranks pad to one row
count, run the same number of micro-batches, lose no row, end with the same weights, and take the
step one process takes on the same data (same gradient norm: the loss is scaled for DDP's mean).

This file is also the worker: torchrun runs it as a script.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_workers(processes: int, folder: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(Path(__file__).resolve()), str(folder)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(processes)]


@pytest.mark.slow
def test_ranks_with_different_row_counts_take_the_one_process_step(tmp_path):
    from scripted_engine import world_config

    world_config()  # build the world once, before the workers read it
    (single,) = run_workers(1, tmp_path / "one")
    first, second = run_workers(2, tmp_path / "two")

    # one rank rolled out the lone lead (2 rows), the other the lead with three subagents (8 rows)
    assert sorted([first["rows"], second["rows"]]) == [2, 8]
    assert first["padded_rows"] == second["padded_rows"] == 8  # a common count, divisible by 2 micro-batches
    assert first["micro_batches"] == second["micro_batches"] == 2
    assert single["rows"] == 10 and single["padded_rows"] == 12 and single["micro_batches"] == 4
    # no row dropped: every trained token of every trajectory went through the loss, on one rank or the other
    assert sorted(first["trajectories"] + second["trajectories"]) == single["trajectories"] == [0, 1, 2, 3]
    assert first["trained_tokens_seen"] + second["trained_tokens_seen"] == single["trained_tokens_seen"]
    assert single["trained_tokens_seen"] == single["trained_tokens_built"] > 0
    # DDP kept the ranks in step, and the step is the one-process step
    assert first["parameter_sum"] == second["parameter_sum"]
    assert first["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
    assert first["parameter_sum"] != first["initial_parameter_sum"]


# ------------------------------------------------------------------------------------------------ worker


def worker(folder: Path) -> None:
    import torch
    import torch.distributed as dist
    from datasets import Dataset
    from omegaconf import OmegaConf
    from scripted_engine import (
        TABLE_ANSWER,
        ScriptedEngine,
        agent_config,
        make_task,
        tiny_tokenizer,
        tool_call,
        world_config,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM, TrainerCallback

    from wideseek_exp.engines.base import Engine
    from wideseek_exp.rl.reward import Reward
    from wideseek_exp.rl.trainer import MultiAgentGRPOTrainer, RolloutSetup
    from wideseek_exp.rl.training import grpo_config
    from wideseek_exp.search.base import SearchBackend

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=8192, tie_word_embeddings=True,
    ))
    initial_parameter_sum = sum(float(p.double().sum()) for p in model.parameters())

    def script(view):
        if view.role == "lead":
            if "team" in view.user and view.turn == 1:
                return tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"part {k}"} for k in range(3)]})
            return TABLE_ANSWER
        return f"Report on {view.subtask}."

    class PolicyScoredScript(Engine):
        """Scripted replies with the logprobs the policy gives them, as an on-policy sampler reports. The
        samples of a task must differ (identical rows with opposite advantages cancel), so the n-th copy
        of a prompt in a batch (batches are sorted by task and sample) gets a reply of its own."""

        def __init__(self, policy, tokenizer):
            self.policy, self.tokenizer = policy, tokenizer
            self.scripted = ScriptedEngine(tokenizer, script)

        def generate(self, prompts, sampling):
            copies: dict[tuple, int] = {}
            completions = self.scripted.generate(prompts, sampling)
            for prompt, completion in zip(prompts, completions):
                copy = copies[tuple(prompt)] = copies.get(tuple(prompt), -1) + 1
                completion.token_ids = self.tokenizer.encode(f" Take {copy}.", add_special_tokens=False) + completion.token_ids
                with torch.no_grad():
                    logits = self.policy(input_ids=torch.tensor([prompt + completion.token_ids])).logits[0].float()
                logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
                completion.logprobs = logprobs.gather(-1, torch.tensor(completion.token_ids)[:, None])[:, 0].tolist()
            return completions

    class NoSearch(SearchBackend):
        def search(self, queries, top_k=3):
            raise AssertionError("the script never searches")

        def access(self, urls):
            raise AssertionError("the script never reads a page")

    def reward(trajectory, task):  # the two samples of a task differ, so every row has a non-zero Â
        value = float(trajectory.sample_index)
        return Reward(value, value, 0.0, 0.0, 0.0, value, value, valid=True)

    tasks = [make_task("solo", "List the airports of Aldova."), make_task("team", "A team task: the airports.")]
    cfg = OmegaConf.merge(world_config(), {"trainer": {"tasks_per_step": 2, "num_generations": 2, "max_steps": 1,
                                                       "learning_rate": 1e-3, "save_every": 0}})
    agent, search_cfg = agent_config(max_subagents_per_call=3)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = grpo_config(cfg, folder / "checkpoints", world, bf16=False)
    setup = RolloutSetup(tasks, NoSearch(), agent, search_cfg, reward, PolicyScoredScript, seed=0)
    dataset = Dataset.from_dict({"prompt": [t.query for t in tasks], "task_index": [0, 1]})

    seen = {"micro_batches": 0, "trained_tokens_seen": 0, "trajectories": set(), "grad_norm": None}
    built = {}

    class Recording(MultiAgentGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            real = batch["row_trajectory"] >= 0
            built.update(rows=int(real.sum()), padded_rows=len(real),
                         trained_tokens_built=int(batch["trained_mask"][real].sum()))
            return batch

        def _compute_loss(self, model, inputs):
            seen["micro_batches"] += 1
            seen["trained_tokens_seen"] += int(inputs["trained_mask"].sum())
            seen["trajectories"].update(t for t in inputs["row_trajectory"].tolist() if t >= 0)
            return super()._compute_loss(model, inputs)

    class GradNorm(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs:
                seen["grad_norm"] = float(logs["grad_norm"])

    trainer = Recording(model, args, dataset, tokenizer, setup, callbacks=[GradNorm()])
    trainer.train()
    parameter_sum = sum(float(p.double().sum()) for p in trainer.accelerator.unwrap_model(trainer.model).parameters())
    rank = dist.get_rank() if dist.is_initialized() else 0
    record = {**built, **seen, "trajectories": sorted(seen["trajectories"]), "parameter_sum": parameter_sum,
              "initial_parameter_sum": initial_parameter_sum}
    (folder / f"rank{rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():  # left to the interpreter's exit, gloo's threads can abort the process
        dist.barrier()  # no rank tears its connections down while another still holds them (that can hang)
        dist.destroy_process_group()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    worker(target)
    # The results are on disk and the group is torn down. Leave without the interpreter's own teardown, in
    # which a thread gloo leaves behind can abort the process ("terminate called without an active
    # exception", exit -6) after the work is done: seen once in a fresh-clone CI run of the FSDP test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
