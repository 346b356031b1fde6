"""HFEngine against transformers itself: greedy decoding, logprobs, seeding, stops, limits, ordering; and its
prefix cache against the same engine without one."""

import random
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import wideseek_exp.conf  # noqa: F401  (registers the config schema)
from wideseek_exp import WideseekError
from wideseek_exp.engines.base import SamplingParams
from wideseek_exp.engines.factory import make_engine
from wideseek_exp.engines.hf import HFEngine
from wideseek_exp.models.loader import load_model_and_tokenizer
from wideseek_exp.models.tiny import build_tiny_model

ARCH = {
    "vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256,
    "rope_theta": 1e6, "tie_word_embeddings": True,
}
TEXTS = [
    "the cat sat on the mat", "hello world this is a longer prompt with 1 2 3 numbers",
    "x", "a table | name | population |", "Oslo had 709,037 people in 2023 and a long winter",
]
GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine") / "tiny"
    rng = random.Random(0)
    build_tiny_model(folder, ARCH, [" ".join(rng.choices(TEXTS, k=3)) for _ in range(200)])
    return folder


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_folder):
    model, tokenizer = load_model_and_tokenizer(str(tiny_folder), device="cpu")
    # At the default init scale a random model just repeats the last token, which would hide padding
    # and position bugs; large weights make every output depend on the whole prompt.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    return [model_and_tokenizer[1].encode(text) for text in TEXTS]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_generate_with_left_padding(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    assert len({len(p) for p in prompts}) > 2  # rows really are padded
    completions = HFEngine(model, tokenizer, max_batch_size=8).generate(prompts, GREEDY)
    for prompt, completion in zip(prompts, completions):
        reference = hf_greedy(model, prompt, GREEDY.max_new_tokens)
        assert completion.token_ids == reference[: len(completion.token_ids)]
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=False)
        if completion.finish_reason == "length":
            assert len(completion.token_ids) == GREEDY.max_new_tokens
    assert len({tuple(c.token_ids) for c in completions}) == len(prompts)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(max_new_tokens=16, temperature=0.7, top_p=0.8, seed=1)])
def test_logprobs_match_a_teacher_forced_pass(model_and_tokenizer, prompts, sampling):
    model, tokenizer = model_and_tokenizer
    completions = HFEngine(model, tokenizer, max_batch_size=4).generate(prompts, sampling)
    scale = sampling.temperature if sampling.temperature > 0 else 1.0
    for prompt, completion in zip(prompts, completions):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion.token_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits / scale, dim=-1)
        expected = [logprobs[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion.token_ids)]
        assert completion.logprobs == pytest.approx(expected, abs=1e-4)


def test_seed_reproduces_and_a_new_seed_changes(model_and_tokenizer, prompts):
    engine = HFEngine(*model_and_tokenizer, max_batch_size=3)

    def sample(seed):
        params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        return [c.token_ids for c in engine.generate(prompts, params)]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_string_ends_the_row_right_after_it(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer)
    greedy = engine.generate(prompts[:1], GREEDY)[0].token_ids
    # Two generated tokens from the middle, avoiding byte fragments that only decode in context.
    stop = next(text for i in range(4, 20) if "\ufffd" not in (text := tokenizer.decode(greedy[i : i + 2])))
    # The row must end at the first token whose text completes the stop string.
    end = next(n for n in range(1, len(greedy) + 1) if stop in tokenizer.decode(greedy[:n]))
    completion = engine.generate(prompts[:1], SamplingParams(max_new_tokens=24, temperature=0.0, stop=("@@never", stop)))[0]
    assert completion.token_ids == greedy[:end]
    assert (completion.finish_reason, completion.stop_reason) == ("stop", stop)


def test_eos_ends_the_row_and_is_kept(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer)
    greedy = engine.generate(prompts, GREEDY)
    # Pretend the 2nd token the longest prompt generates is an end-of-sequence token: its row leaves the
    # batch early, and the shorter rows go on over a cache whose shared left padding gets cut.
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    eos = greedy[longest].token_ids[1]
    engine.eos_token_ids = engine.eos_token_ids | {eos}
    completions = engine.generate(prompts, GREEDY)
    for before, after in zip(greedy, completions):
        if eos in before.token_ids:
            end = before.token_ids.index(eos) + 1
            assert after.token_ids == before.token_ids[:end]
            assert (after.finish_reason, after.stop_reason) == ("stop", "eos")
        else:
            assert after.token_ids == before.token_ids
    assert completions[longest].token_ids[-1] == eos


def test_length_limits(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer)
    engine.eos_token_ids = frozenset()  # so that only the limits end rows
    for completion in engine.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0, seed=0)):
        assert len(completion.token_ids) == len(completion.logprobs) == 5
        assert (completion.finish_reason, completion.stop_reason) == ("length", None)
    # A prompt three tokens short of the context gets three tokens.
    near_full = (prompts[1] * ARCH["max_position_embeddings"])[: ARCH["max_position_embeddings"] - 3]
    completion = engine.generate([near_full], GREEDY)[0]
    assert len(completion.token_ids) == 3 and completion.finish_reason == "length"


def test_bad_prompts_are_named(model_and_tokenizer, prompts):
    engine = HFEngine(*model_and_tokenizer)
    with pytest.raises(WideseekError, match="prompt 1 is empty"):
        engine.generate([prompts[0], []], GREEDY)
    with pytest.raises(WideseekError, match="prompt 0 has 300 tokens"):
        engine.generate([[5] * 300], GREEDY)


def test_outputs_come_back_in_input_order(model_and_tokenizer, prompts):
    engine = HFEngine(*model_and_tokenizer, max_batch_size=2)
    longest_first = sorted(prompts, key=len, reverse=True)
    batched = engine.generate(longest_first, GREEDY)
    alone = [engine.generate([p], GREEDY)[0] for p in longest_first]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]


# ---- prefix cache: a later prompt that extends an earlier prompt + completion reuses its KV


SYSTEM = "You are a careful agent. Search, read the pages and report a table | name | population | of the cities."


def two_turns(engine: HFEngine, tokenizer, prompts, sampling):
    """Turn 1 from three prompts that share a long system prefix; turn 2 extends each with its completion and
    a follow-up of its own length (so the rows' cached lengths differ), next to rows with no cache hit and a
    row that shares only its first turn's prompt."""
    system = tokenizer.encode(SYSTEM)
    first = [system + p for p in prompts[:3]]
    turn1 = engine.generate(first, sampling)
    follow_ups = [tokenizer.encode(text) for text in ("ok", "the tool said 42 and more", "x y")]
    second = [p + c.token_ids + f for p, c, f in zip(first, turn1, follow_ups)]
    second += [prompts[3], prompts[4], first[0] + follow_ups[1]]
    return turn1, engine.generate(second, sampling)


def assert_same(expected, actual):
    for before, after in zip(expected, actual, strict=True):
        assert after.token_ids == before.token_ids
        assert after.logprobs == pytest.approx(before.logprobs, abs=1e-4)
        assert (after.finish_reason, after.stop_reason) == (before.finish_reason, before.stop_reason)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3)])
def test_prefix_cache_gives_what_a_full_prefill_gives(model_and_tokenizer, prompts, sampling):
    model, tokenizer = model_and_tokenizer
    plain = two_turns(HFEngine(model, tokenizer, max_batch_size=4), tokenizer, prompts, sampling)
    engine = HFEngine(model, tokenizer, max_batch_size=4, prefix_cache_mb=16)
    cached = two_turns(engine, tokenizer, prompts, sampling)
    for expected, actual in zip(plain, cached):
        assert_same(expected, actual)
    # Turn 1 prefilled the shared system prompt once; turn 2 found each row's first turn in the cache.
    system, turn1 = len(tokenizer.encode(SYSTEM)), cached[0]
    extended = sum(system + len(p) + len(c.token_ids) - 1 for p, c in zip(prompts[:3], turn1))
    assert engine.stats.cached_tokens >= 3 * (system - 1) + extended
    assert engine.stats.computed_tokens < engine.stats.prompt_tokens - extended


def test_prefix_cache_eviction_keeps_outputs_right(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    plain = two_turns(HFEngine(model, tokenizer), tokenizer, prompts, GREEDY)
    limit = 30_000  # bytes: about two entries of this model
    engine = HFEngine(model, tokenizer, prefix_cache_mb=limit / 2**20)
    cached = two_turns(engine, tokenizer, prompts, GREEDY)
    for expected, actual in zip(plain, cached):
        assert_same(expected, actual)
    assert 0 < engine.prefix_cache.bytes <= limit and len(engine.prefix_cache) <= 2
    assert engine.stats.cached_tokens > 0


@pytest.mark.parametrize("megabytes", [0, 8])
def test_the_engine_config_sizes_the_prefix_cache(tiny_folder, megabytes):
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model.path={tiny_folder}", "engine.device=cpu",
                                                       f"engine.prefix_cache_mb={megabytes}"])
    engine = make_engine(cfg)
    if megabytes:
        assert engine.prefix_cache.max_bytes == megabytes * 2**20
    else:
        assert engine.prefix_cache is None


def test_prefix_cache_disabled(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, prefix_cache_mb=0)
    assert engine.prefix_cache is None
    two_turns(engine, tokenizer, prompts, GREEDY)
    assert engine.stats.cached_tokens == 0
    assert engine.stats.computed_tokens == engine.stats.prompt_tokens


def test_prefix_cache_is_dropped_when_the_weights_change(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, prefix_cache_mb=16)
    first = engine.generate(prompts[:2], GREEDY)
    second = [p + c.token_ids for p, c in zip(prompts[:2], first)]
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        # A training step with a fused optimizer, which does not even bump the parameters' version counters.
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        ids = torch.tensor([second[0]])
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        model.zero_grad()
        expected = HFEngine(model, tokenizer).generate(second, GREEDY)
        assert_same(expected, engine.generate(second, GREEDY))
    finally:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(saved[name])


def test_an_entry_is_dropped_when_a_new_one_extends_it(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, max_batch_size=2, prefix_cache_mb=16)
    first = engine.generate(prompts[:3], GREEDY)

    def stored():
        return {tuple(entry.token_ids.tolist()) for entry in engine.prefix_cache.entries.values()}

    entries = [tuple(p + c.token_ids[:-1]) for p, c in zip(prompts, first)]
    assert stored() == set(entries)
    # Row 0 goes on with its conversation: the new entry holds the old one, which is dropped. Row 1 shares
    # only its prompt with its entry (another sample of the same task, say): that entry stays for others.
    continued, other = prompts[0] + first[0].token_ids + [5], prompts[1] + [first[1].token_ids[0] + 1]
    second = engine.generate([continued, other], GREEDY)
    assert stored() == {entries[1], entries[2], tuple(continued + second[0].token_ids[:-1]),
                        tuple(other + second[1].token_ids[:-1])}
    # The same request again stores the same entry again: it replaces the first copy.
    engine.generate([continued], GREEDY)
    assert len(engine.prefix_cache) == 4
