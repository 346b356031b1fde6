"""Generating with an FSDP2-sharded policy (torchrun, gloo, CPU). The multi-agent rollout runs a different
number of forward passes on each rank; FSDP2 gathers a layer's shards inside every forward pass, a
collective all ranks must join. `fsdp2_gathered` (the trainer's generation context) gathers the policy
once, so each rank generates on its own: here rank 0 makes one engine call and rank 1 three, and both
must get exactly what the unsharded policy generates, then train a step with the shards back in place.

Accelerate enables FSDP only on accelerators, so the whole trainer under FSDP needs GPUs; this checks the
mechanism the trainer relies on, with the real engine and a real sharded model.

This file is also the worker: torchrun runs it as a script.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_workers(folder: Path, gather: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FSDP_TEST_GATHER": "1" if gather else "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).resolve()), str(folder)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sharded_policy_generates_rank_by_rank_and_trains(tmp_path):
    from scripted_engine import world_config

    world_config()  # build the tokenizer once, before the workers read it
    done = run_workers(tmp_path, gather=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2))
    assert (first["engine_calls"], second["engine_calls"]) == (1, 3)  # unequal work per rank
    for record in (first, second):
        assert record["generated"] == record["unsharded_generated"]  # the gathered policy is the policy
        assert record["sharded_before"] and record["sharded_after"]  # shards back in place for training
        assert record["parameter_sum_after"] != record["parameter_sum_before"]  # and a training step ran
    assert first["parameter_sum_after"] == pytest.approx(second["parameter_sum_after"], rel=1e-6)


@pytest.mark.slow
def test_without_the_gather_the_ranks_wait_on_each_other(tmp_path):
    """The control: the same generation straight on the sharded policy fails. The engine runs under
    inference mode, where FSDP2's per-forward gather makes inference tensors it cannot reshard into; and
    were that not so, rank 1's extra forward passes would pair their gathers with rank 0's training step."""
    done = run_workers(tmp_path, gather=False)
    assert done.returncode != 0
    assert not (tmp_path / "rank1.json").exists()


# ------------------------------------------------------------------------------------------------ worker


def worker(folder: Path) -> None:
    from contextlib import nullcontext
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from scripted_engine import tiny_tokenizer
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from wideseek_exp.engines.base import SamplingParams
    from wideseek_exp.engines.hf import HFEngine
    from wideseek_exp.rl.trainer import fsdp2_gathered

    gather = os.environ["FSDP_TEST_GATHER"] == "1"
    dist.init_process_group("gloo", timeout=timedelta(seconds=20 if not gather else 120))
    rank = dist.get_rank()
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False,
    ))
    model.eval()
    sampling = SamplingParams(max_new_tokens=6, temperature=0.0)
    calls = [[f"Rank {rank} asks question {k}." for k in range(1 + call)] for call in range(1 + 2 * rank)]
    prompts = [[tokenizer.encode(text, add_special_tokens=False) for text in call] for call in calls]
    unsharded = HFEngine(model, tokenizer, max_batch_size=4)
    unsharded_generated = [[c.token_ids for c in unsharded.generate(batch, sampling)] for batch in prompts]

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)

    def is_sharded() -> bool:
        return all(isinstance(p, DTensor) for p in model.parameters())

    sharded_before = is_sharded()
    parameter_sum_before = float(sum(p.detach().full_tensor().double().sum() for p in model.parameters()))
    context = fsdp2_gathered(model) if gather else nullcontext()
    with context, torch.no_grad():
        engine = HFEngine(model, tokenizer, max_batch_size=4)
        generated = [[c.token_ids for c in engine.generate(batch, sampling)] for batch in prompts]
    sharded_after = is_sharded()

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.tensor([prompts[0][0]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    parameter_sum_after = float(sum(p.detach().full_tensor().double().sum() for p in model.parameters()))
    record = {"engine_calls": len(calls), "generated": generated, "unsharded_generated": unsharded_generated,
              "sharded_before": sharded_before, "sharded_after": sharded_after,
              "parameter_sum_before": parameter_sum_before, "parameter_sum_after": parameter_sum_after}
    (folder / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()  # no rank tears its connections down while another still reads from them
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
