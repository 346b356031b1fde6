"""Generation with vLLM in this process (requirements-gpu.txt pins vllm==0.31.0; imported only here).

Token ids in (TokensPrompt), token ids out, with the logprob of each sampled token. vLLM is asked for
`processed_logprobs`: the log-softmax of the logits after temperature, as engine=hf reports them. With
top_p < 1 vLLM computes them after its nucleus mask, so they are renormalised over the nucleus (engine=hf:
before it); with the paper's top_p = 1 the two agree.

For training the engine is colocated with the policy: `sync_weights(model)` copies the policy's current
weights into vLLM after every optimizer step (the trainer calls it before each rollout) and empties vLLM's
prefix cache, whose KV came from the old weights. With `enable_sleep_mode`, `sleep()` frees vLLM's GPU memory
(weights and KV, level 2) while the trainer computes gradients; the next sync or generate wakes it up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams

INSTALL_HINT = "engine=vllm needs vLLM on a GPU machine: pip install -r requirements-gpu.txt"


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise WideseekError(f"{INSTALL_HINT} (import failed: {error})") from None
    return vllm


def completion_from_output(output) -> Completion:
    """A Completion from one vllm.RequestOutput (its first sample)."""
    sample = output.outputs[0]
    token_ids = [int(token) for token in sample.token_ids]
    logprobs = []
    for position, token in enumerate(token_ids):
        # one {token id: Logprob} per position; with logprobs=0 it holds just the sampled token
        logprobs.append(float(sample.logprobs[position][token].logprob))
    if sample.finish_reason == "length":
        finish, stop_reason = "length", None
    else:
        # vLLM's stop_reason: None for EOS, the stop string, or a stop token id
        finish = "stop"
        stop_reason = sample.stop_reason if isinstance(sample.stop_reason, str) else "eos"
    return Completion(token_ids, logprobs, finish, sample.text or "", stop_reason)


class VLLMEngine(Engine):
    def __init__(self, model_path: str, tokenizer, *, max_batch_size: int = 256, gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, dtype: str = "auto",
                 max_model_len: int | None = None, seed: int = 0, enable_prefix_caching: bool = True,
                 colocated: bool = False):
        vllm = import_vllm()
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.sleep_enabled = enable_sleep_mode
        self.asleep = False
        self.weights_current = True
        extra = {}
        if colocated:
            # Inside the trainer's processes (torchrun / accelerate launch): vLLM runs in this process, so its
            # model can take the policy's weights directly (sync_weights).
            for name, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                                  ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29511")):
                os.environ.setdefault(name, default)
            extra["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(
            model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, max_num_seqs=max_batch_size,
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode, max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs", **extra,
        )
        self.context_limit = int(self.llm.llm_engine.model_config.max_model_len)

    def sampling_params(self, sampling: SamplingParams, seed: int | None):
        return self.vllm.SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None, include_stop_str_in_output=True, seed=seed, logprobs=0,
            skip_special_tokens=False,
        )

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        for index, prompt in enumerate(prompts):
            if not prompt:
                raise WideseekError(f"prompt {index} is empty")
        self.wake_up()
        # One seed per prompt, so that equal prompts in one call still sample differently.
        params = [self.sampling_params(sampling, None if sampling.seed is None else (sampling.seed + i) % 2**31)
                  for i in range(len(prompts))]
        # max_tokens may not run past the model's context: shorten it per prompt (engine=hf does the same).
        for index, prompt in enumerate(prompts):
            room = self.context_limit - len(prompt)
            if room < 1:
                raise WideseekError(f"prompt {index} has {len(prompt)} tokens, more than the context of {self.context_limit}")
            params[index].max_tokens = min(params[index].max_tokens, room)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [completion_from_output(output) for output in outputs]

    # ---- colocated training ----

    def sync_weights(self, model) -> None:
        """Load `model`'s current parameters (HF names) into vLLM, then drop the KV computed with the old ones."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        self.load_weights(model.named_parameters())
        self.llm.reset_prefix_cache()
        self.weights_current = True

    def load_weights(self, named_tensors: Iterable) -> None:
        runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in named_tensors:
            runner_model.load_weights([(name, tensor.detach())])

    def sleep(self) -> None:
        """Free vLLM's GPU memory (level 2: weights and KV); a no-op without engine.enable_sleep_mode."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep, self.weights_current = True, False

    def wake_up(self) -> None:
        if not self.asleep:
            return
        if not self.weights_current:
            raise WideseekError("the vLLM engine slept (level 2) and lost its weights; call sync_weights(model) first")
        self.llm.wake_up(tags=["kv_cache"])
        self.asleep = False

    def close(self) -> None:
        self.llm = None
