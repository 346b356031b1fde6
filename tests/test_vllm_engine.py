"""engine=vllm without a GPU: the one-line error when vLLM is missing, and the engine's own logic (sampling
parameters, the conversion of vLLM's outputs, weight sync and sleep mode) against a fake `vllm` module.
The real engine runs only on a GPU machine (experiments/vllm_engine/)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from scripted_engine import tiny_tokenizer, world_config

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import SamplingParams
from wideseek_exp.engines.vllm import completion_from_output


@dataclass
class Logprob:
    logprob: float


@dataclass
class FakeSample:
    token_ids: list[int]
    logprobs: list[dict]
    finish_reason: str
    stop_reason: object = None
    text: str = ""


@dataclass
class FakeOutput:
    outputs: list[FakeSample]


@dataclass
class FakeSampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list | None = None
    include_stop_str_in_output: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True


@dataclass
class FakeLLM:
    """Answers each prompt with its own last token repeated, up to max_tokens; records what it was asked."""

    kwargs: dict
    calls: list = field(default_factory=list)
    events: list = field(default_factory=list)
    loaded: dict = field(default_factory=dict)

    def __post_init__(self):
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load))
        config = types.SimpleNamespace(max_model_len=self.kwargs.get("max_model_len") or 64)
        self.llm_engine = types.SimpleNamespace(model_config=config,
                                                model_executor=types.SimpleNamespace(
                                                    driver_worker=types.SimpleNamespace(model_runner=runner)))

    def _load(self, pairs):
        for name, tensor in pairs:
            self.loaded[name] = tensor.clone()

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outputs = []
        for prompt, param in zip(prompts, params):
            ids = [prompt["prompt_token_ids"][-1]] * param.max_tokens
            logprobs = [{token: Logprob(-0.5)} for token in ids]
            outputs.append(FakeOutput([FakeSample(ids, logprobs, "length")]))
        return outputs

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def sleep(self, level):
        self.events.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.events.append(f"wake_up:{','.join(tags or [])}")


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: FakeLLM(kwargs)
    module.SamplingParams = FakeSampling
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    module.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return module


def make(fake_vllm, **engine_overrides):
    from omegaconf import OmegaConf

    from wideseek_exp.engines.factory import make_engine

    cfg = OmegaConf.merge(world_config(), {"engine": {"name": "vllm", **engine_overrides}})
    return make_engine(cfg)


def test_missing_vllm_is_a_one_line_error(monkeypatch):
    from omegaconf import OmegaConf

    from wideseek_exp.engines.factory import make_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    cfg = OmegaConf.merge(world_config(), {"engine": {"name": "vllm"}})
    with pytest.raises(WideseekError, match="engine=vllm needs vLLM on a GPU machine: pip install -r requirements-gpu.txt"):
        make_engine(cfg)


def test_cli_without_vllm_says_so_in_one_line(cli):
    if _vllm_installed():
        pytest.skip("vLLM is installed here")
    result = cli("engine=vllm", "eval.limit=1", "eval.samples=1", "tracking.enabled=false")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: engine=vllm needs vLLM") and "Traceback" not in result.stderr


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_outputs_become_completions():
    eos = FakeSample([5, 6, 2], [{5: Logprob(-0.1)}, {6: Logprob(-0.2), 9: Logprob(-3.0)}, {2: Logprob(-0.3)}],
                     "stop", None, "ab</s>")
    stop = FakeSample([7], [{7: Logprob(-1.0)}], "stop", "</tool_call>", "</tool_call>")
    cut = FakeSample([8, 8], [{8: Logprob(-0.4)}, {8: Logprob(-0.4)}], "length")
    first, second, third = (completion_from_output(FakeOutput([s])) for s in (eos, stop, cut))
    assert (first.token_ids, first.logprobs, first.finish_reason, first.stop_reason, first.text) == (
        [5, 6, 2], [-0.1, -0.2, -0.3], "stop", "eos", "ab</s>")
    assert (second.finish_reason, second.stop_reason) == ("stop", "</tool_call>")
    assert (third.finish_reason, third.stop_reason, third.logprobs) == ("length", None, [-0.4, -0.4])
    token_stop = FakeSample([4], [{4: Logprob(0.0)}], "stop", 151645)  # a stop token id
    assert completion_from_output(FakeOutput([token_stop])).stop_reason == "eos"


def test_engine_asks_vllm_for_what_the_interface_promises(fake_vllm):
    engine = make(fake_vllm, max_model_len=20, max_batch_size=7, gpu_memory_utilization=0.3)
    llm = engine.llm
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["max_num_seqs"] == 7
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["model"].endswith("tiny")
    assert engine.tokenizer.get_vocab() == tiny_tokenizer().get_vocab()
    prompts = [[1, 2, 3], [4] * 18]
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=5, temperature=0.6, stop=("</x>",), seed=3))
    sent, params = llm.calls[0]
    assert [p["prompt_token_ids"] for p in sent] == prompts
    assert [p.seed for p in params] == [3, 4] and all(p.logprobs == 0 for p in params)
    assert params[0].stop == ["</x>"] and params[0].include_stop_str_in_output and not params[0].skip_special_tokens
    assert [p.max_tokens for p in params] == [5, 2]  # the second prompt has room for 2 tokens in a context of 20
    assert completions[0].token_ids == [3] * 5 and completions[1].token_ids == [4, 4]
    with pytest.raises(WideseekError, match="more than the context of 20"):
        engine.generate([[1] * 20], SamplingParams())


def test_weight_sync_and_sleep_mode(fake_vllm):
    engine = make(fake_vllm, enable_sleep_mode=True)
    llm = engine.llm
    policy = torch.nn.Linear(2, 2)
    engine.sync_weights(policy)
    assert set(llm.loaded) == {"weight", "bias"} and torch.equal(llm.loaded["weight"], policy.weight)
    assert llm.events == ["reset_prefix_cache"]
    engine.sleep()
    with pytest.raises(WideseekError, match="call sync_weights"):
        engine.generate([[1]], SamplingParams(max_new_tokens=1))
    with torch.no_grad():
        policy.weight.add_(1.0)
    engine.sync_weights(policy)
    engine.generate([[1]], SamplingParams(max_new_tokens=1))
    assert llm.events == ["reset_prefix_cache", "sleep2", "wake_up:weights", "reset_prefix_cache", "wake_up:kv_cache"]
    assert torch.equal(llm.loaded["weight"], policy.weight)


def test_sleep_is_a_no_op_without_sleep_mode(fake_vllm):
    engine = make(fake_vllm)
    engine.sleep()
    engine.generate([[1]], SamplingParams(max_new_tokens=1))
    assert engine.llm.events == []
