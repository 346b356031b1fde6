"""The tiny model build: hub-like folder, Qwen3 chat format, marker tokens, build stamps."""

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from wideseek_exp import WideseekError
from wideseek_exp.models.loader import load_model_and_tokenizer
from wideseek_exp.models.tiny import build_tiny_model
from wideseek_exp.models.tokenizer import MARKER_TOKENS

SMALL_ARCH = {
    "vocab_size": 700, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 512,
    "rope_theta": 1e6, "tie_word_embeddings": True,
}

SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
ACCESS = {"type": "function", "function": {
    "name": "access", "description": "Open a page.",
    "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}


def sentences(n: int = 300) -> list[str]:
    rng = random.Random(0)
    subjects = ["The river", "Oslo", "A small museum", "The airport", "Our team", "The capital"]
    verbs = ["has", "lists", "reported", "opened", "counts"]
    objects = ["a population of", "an area of", "revenue of", "a height of"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.randrange(10**6):,} in {rng.randrange(1900, 2025)}."
            for _ in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    result = build_tiny_model(folder, SMALL_ARCH, sentences(), seed=0, inputs_fingerprint="corpus-v1")
    return folder, result


@pytest.fixture(scope="module")
def tokenizer(built):
    return AutoTokenizer.from_pretrained(built[0])


def test_folder_loads_like_a_hub_model(built, tokenizer):
    folder, result = built
    assert result.built
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.config.vocab_size == len(tokenizer) == result.counts["vocab_size"]
    assert model.config.hidden_size == SMALL_ARCH["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) == result.counts["parameters"]
    assert tokenizer.padding_side == "left"
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.model_max_length == SMALL_ARCH["max_position_embeddings"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id

    loaded, loaded_tokenizer = load_model_and_tokenizer(str(folder), dtype="auto", device="cpu")
    assert not loaded.training and loaded_tokenizer.padding_side == "left"


def test_loader_names_a_missing_model(tmp_path):
    with pytest.raises(WideseekError, match="no-such-model"):
        load_model_and_tokenizer(str(tmp_path / "no-such-model"))


def test_marker_tokens_are_single_ids_that_survive_skipping_specials(tokenizer):
    for marker in MARKER_TOKENS + ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        assert len(tokenizer.encode(marker)) == 1, marker
    text = '<|im_start|>assistant\n<think>\nok\n</think>\n\n<tool_call>\n{"name": "search"}\n</tool_call><|im_end|>'
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    kept = tokenizer.decode(ids, skip_special_tokens=True)
    assert kept == 'assistant\n<think>\nok\n</think>\n\n<tool_call>\n{"name": "search"}\n</tool_call>'
    assert tokenizer.decode(tokenizer.encode("<tool_response>\nx\n</tool_response>"), skip_special_tokens=True) \
        == "<tool_response>\nx\n</tool_response>"


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_template_system_tools_user_and_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Population of Oslo?"}]
    expected = (
        "<|im_start|>system\nYou are helpful.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "search", "description": "Search the web.", "parameters": '
        '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}\n'
        '{"type": "function", "function": {"name": "access", "description": "Open a page.", "parameters": '
        '{"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}\n'
        "</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nPopulation of Oslo?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(tokenizer, messages, tools=[SEARCH, ACCESS], add_generation_prompt=True) == expected


def test_template_tool_call_and_grouped_tool_responses(tokenizer):
    messages = [
        {"role": "user", "content": "Population of Oslo?"},
        {"role": "assistant", "content": "", "reasoning_content": "I need to search.",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Oslo population"}}}]},
        {"role": "tool", "content": "Oslo: 709,037"},
        {"role": "tool", "content": "Norway: 5.5 million"},
    ]
    expected = (
        "<|im_start|>user\nPopulation of Oslo?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nI need to search.\n</think>\n\n"
        '<tool_call>\n{"name": "search", "arguments": {"query": "Oslo population"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nOslo: 709,037\n</tool_response>\n"
        "<tool_response>\nNorway: 5.5 million\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(tokenizer, messages, add_generation_prompt=True) == expected


def test_template_drops_reasoning_before_the_last_query(tokenizer):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nLet me search.",
         "tool_calls": [{"name": "search", "arguments": '{"query": "x"}'}]},
        {"role": "tool", "content": "r"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nnew thoughts\n</think>\n\nA2"},
    ]
    expected = (
        "<|im_start|>user\nQ1<|im_end|>\n"
        '<|im_start|>assistant\nLet me search.\n<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nA2<|im_end|>\n"
    )
    assert render(tokenizer, messages) == expected


def test_template_enable_thinking_false(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False) == expected
    assert render(tokenizer, messages, add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_rebuild_is_a_noop_and_a_new_arch_rebuilds(tmp_path):
    folder = tmp_path / "model"
    calls = []

    def texts():
        calls.append(1)
        return sentences(50)

    assert build_tiny_model(folder, SMALL_ARCH, texts, inputs_fingerprint="c1").built
    again = build_tiny_model(folder, SMALL_ARCH, texts, inputs_fingerprint="c1")
    assert not again.built and len(calls) == 1  # the corpus is not even read
    wider = build_tiny_model(folder, {**SMALL_ARCH, "hidden_size": 48}, texts, inputs_fingerprint="c1")
    assert wider.built and AutoModelForCausalLM.from_pretrained(folder).config.hidden_size == 48
    assert build_tiny_model(folder, {**SMALL_ARCH, "hidden_size": 48}, texts, inputs_fingerprint="c2").built
