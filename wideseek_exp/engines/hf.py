"""Generation with a transformers model in this process: our own batched decoding loop over the KV cache.

Why not `model.generate`: the rollout needs the logprob of each sampled token under the sampling
distribution (before top-p truncation), stop strings that end a row right after their tokens, and
rows that leave the batch as soon as they finish. The loop is small enough to own.

Prefix caching (as vLLM does): an agent's next prompt is its previous prompt + reply + a follow-up. When
a row finishes, its KV (prompt + reply, less the last sampled token, which has none yet) goes into a
`PrefixCache`; a later prompt sharing a prefix with an entry copies those KV and prefills only the rest.
Rows of one call that share a long prefix (one task's samples, subagents with one system prompt) prefill it
once. The cache is emptied whenever the weights have changed (a policy being trained).

A batch's KV (`_BatchKV`) is one preallocated tensor written in place (DynamicCache would copy the whole
cache at every decode step). After prefill each row's tokens are contiguous and end in the same column,
left-padded; decode appends columns. Prefill runs in groups of rows with similar uncached-suffix lengths: a
group's cache holds each row's cached prefix right-aligned to a common column, then the suffixes, left-padded,
so a row has pads before its prefix and between prefix and suffix. The 4D additive mask hides every pad, and
position ids continue each row's own sequence (cached keys are already rotated). The group's KV is then
copied, compacted, into the batch.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams, is_degenerate_repetition

# Rows of one prefill group: padding up to this share of the real suffix tokens (plus a few) is cheaper than
# another forward pass.
_GROUP_PADDING = 0.25
_GROUP_SLACK_TOKENS = 32
# A prefix shared by rows of one call is prefilled once if it saves at least this many tokens per row.
_MIN_SHARED_TOKENS = 32
# Elements of each parameter compared to tell whether the weights changed since the cache was filled.
_WEIGHT_SAMPLES = 32


def sample_next_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token per row, its logprob). The logprob is taken under softmax(logits / temperature), or the raw
    logits when greedy, before top-p truncation: the distribution GRPO's importance ratio refers to."""
    if temperature <= 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
    else:
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        probs = logprobs.exp()
        if top_p < 1.0:
            head, head_ids = nucleus(probs, top_p)
            tokens = head_ids.gather(-1, draw(head, generator)[:, None]).squeeze(-1)
        else:
            tokens = draw(probs, generator)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def nucleus(probs: torch.Tensor, top_p: float, first_try: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p head of each row, in descending order: (probs with the tail zeroed, their token ids).

    The head is the shortest prefix whose mass reaches top_p. A trained model's head is usually small,
    so the top `first_try` tokens are tried before sorting the whole vocabulary (the slow part on CPU).
    """
    head, head_ids = probs.topk(min(first_try, probs.shape[-1]), dim=-1)
    if head.shape[-1] < probs.shape[-1] and bool((head.sum(-1) < top_p).any()):
        head, head_ids = probs.sort(dim=-1, descending=True)
    mass_before = head.cumsum(-1) - head
    tail = mass_before >= top_p
    tail[:, 0] = False
    return head.masked_fill(tail, 0.0), head_ids


def draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row, with probability proportional to `weights`, by inverting the cumulative sum
    (several times faster than torch.multinomial on CPU; float64 so the sum stays exact enough)."""
    cumulative = weights.double().cumsum(-1)
    uniform = torch.rand((weights.shape[0], 1), generator=generator, device=weights.device, dtype=torch.float64)
    picks = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return picks.clamp_(max=weights.shape[-1] - 1).squeeze(-1)


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(a[:n] != b[:n])
    return int(mismatch[0]) if mismatch.size else n


# ------------------------------------------------------------------------------------------ attention

_GQA_SDPA = "wideseek_sdpa_gqa"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa path copies every key/value head out to its query heads whenever a mask is given; in
    a CPU decode step that copy costs more than the attention (16 rows x 2,000 tokens: 5.1 ms against 3.7 ms a
    layer). torch's CPU kernel shares the heads itself (enable_gqa)."""
    if attention_mask is None or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(_GQA_SDPA, _sdpa_gqa)


# ------------------------------------------------------------------------------------------ KV storage


@dataclass(frozen=True)
class _KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


class _BufferLayer(DynamicLayer):
    """One layer's view of a `_BatchKV`: writes the new keys/values in place instead of concatenating
    (DynamicCache copies the whole cache on every decode step)."""

    def __init__(self, owner: _BatchKV, index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        start, end = self.owner.length, self.owner.length + key_states.shape[-2]
        keys, values = self.owner.data[self.index]
        keys[:, :, start:end] = key_states
        values[:, :, start:end] = value_states
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.owner.length


class _BatchKV(Cache):
    """The KV of a batch in one tensor [layer, key|value, row, kv head, column, head dim], with room to grow.
    Columns before `length` are filled; `valid` marks the real tokens (the rest are pads, never attended to)."""

    def __init__(self, shape: _KVShape, rows: int, capacity: int):
        super().__init__(layers=[_BufferLayer(self, i) for i in range(shape.layers)])
        self.shape = shape
        # zeros, not empty: a pad's key/value gets weight 0 and 0 * NaN would still be NaN
        self.data = torch.zeros((shape.layers, 2, rows, shape.kv_heads, capacity, shape.head_dim),
                                dtype=shape.dtype, device=shape.device)
        self.valid = torch.zeros((rows, capacity), dtype=torch.bool, device=shape.device)
        self.length = 0

    def reserve(self, columns: int) -> None:
        """Room for `columns` more; grows by half again so that appending one at a time stays cheap."""
        needed = self.length + columns
        capacity = self.data.shape[-2]
        if needed <= capacity:
            return
        grown = max(needed, capacity + capacity // 2)
        data = self.data.new_zeros((*self.data.shape[:-2], grown, self.data.shape[-1]))
        data[..., : self.length, :] = self.data[..., : self.length, :]
        valid = self.valid.new_zeros((self.valid.shape[0], grown))
        valid[:, : self.length] = self.valid[:, : self.length]
        self.data, self.valid = data, valid

    def attention_mask(self, new: int) -> torch.Tensor | None:
        """[row, 1, query, key] for a forward over the next `new` columns: each query sees the real tokens up to
        its own column, and itself even when it is a pad (so that no row of the mask is empty). Additive (0 or
        the dtype's minimum), as sdpa would otherwise convert a boolean mask again in every layer. None for a
        decode step without pads (one row, or rows of equal length): nothing to hide."""
        columns = self.length + new
        if new == 1:  # decode: the new column is real in every row
            if bool(self.valid[:, : self.length].all()):
                return None
            seen = self.valid[:, None, None, :columns]
        else:
            query = torch.arange(self.length, columns, device=self.valid.device)[:, None]
            key = torch.arange(columns, device=self.valid.device)[None, :]
            seen = (self.valid[:, None, None, :columns] & (key <= query)) | (key == query)
        hidden = torch.zeros(seen.shape, dtype=self.shape.dtype, device=self.shape.device)
        return hidden.masked_fill_(~seen, torch.finfo(self.shape.dtype).min)

    def select_rows(self, index: torch.Tensor) -> None:
        self.data, self.valid = self.data[:, :, index], self.valid[index]
        # Cut the columns that are padding in every remaining row (the long rows may have finished),
        # so that later steps attend over fewer columns; positions are passed explicitly, so unaffected.
        padding = int(self.valid[:, : self.length].any(0).int().argmax())
        if padding:
            self.data, self.valid = self.data[..., padding:, :], self.valid[:, padding:]
            self.length -= padding

    def row(self, row: int) -> torch.Tensor:
        """A copy of one row's real tokens: [layer, key|value, kv head, token, head dim]. They lie in a run or
        two (prefix, then suffix and reply), copied as slices (a boolean index is many times slower)."""
        valid = self.valid[row, : self.length].to(torch.int8)
        edges = torch.diff(valid, prepend=valid.new_zeros(1), append=valid.new_zeros(1)).nonzero().squeeze(1)
        edges = edges.tolist()  # where runs of real tokens start and end, alternately
        return torch.cat([self.data[:, :, row, :, start:end] for start, end in zip(edges[::2], edges[1::2])], dim=3)


@dataclass
class _Entry:
    token_ids: np.ndarray
    kv: torch.Tensor  # [layer, key|value, kv head, token, head dim]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Finished rows' KV, keyed by their token ids, least recently used first, within `max_bytes`.

    A lookup returns the entry sharing the longest prefix with the prompt (any prefix of an entry can be
    reused: keys and values of a token depend only on the tokens before it). Entries are copied into the
    batch, not moved out of the cache, so one entry serves any number of rows: one task's samples, subagents
    with the same system prompt. An entry is dropped as soon as a new entry extends it (the agent's previous
    turn, a shared prefix prefilled for the call): the new one serves every prompt at least as well.
    Lookup is a linear scan, vectorised per entry: about 1.5 ms for 200 entries of 2,000 tokens.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.bytes = 0
        self._next_key = 0

    def __len__(self) -> int:
        return len(self.entries)

    def longest_match(self, prompt: np.ndarray) -> tuple[int | None, int]:
        """(key of the entry sharing the longest prefix with `prompt`, that length)."""
        best_key, best = None, 0
        for key, entry in self.entries.items():
            length = common_prefix_length(entry.token_ids, prompt)
            if length > best:
                best_key, best = key, length
        return best_key, best

    def lookup(self, prompt: np.ndarray) -> tuple[_Entry | None, int]:
        """(entry, how many of the prompt's first tokens it holds), leaving at least the last prompt token to
        compute: its logits start the reply."""
        best_key, best = self.longest_match(prompt)
        if best_key is None:
            return None, 0
        self.entries.move_to_end(best_key)
        return self.entries[best_key], min(best, len(prompt) - 1)

    def store(self, token_ids: Sequence[int], kv: torch.Tensor) -> None:
        entry = _Entry(np.asarray(token_ids, dtype=np.int64), kv)
        if entry.nbytes > self.max_bytes or len(token_ids) == 0:
            return
        for key in [key for key, old in self.entries.items()
                    if common_prefix_length(old.token_ids, entry.token_ids) == len(old.token_ids)]:
            self._remove(key)
        while self.bytes + entry.nbytes > self.max_bytes:
            self._remove(next(iter(self.entries)))
        self.entries[self._next_key] = entry
        self.bytes += entry.nbytes
        self._next_key += 1

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def _remove(self, key: int) -> None:
        self.bytes -= self.entries.pop(key).nbytes


@dataclass
class EngineStats:
    """Counters since the engine was made (or `reset_stats`): where prefill work went, and the time spent."""

    prompt_tokens: int = 0  # tokens of the prompts generated from
    cached_tokens: int = 0  # of those, whose KV came from the prefix cache
    computed_tokens: int = 0  # prompt tokens run through the model (shared prefixes once), no padding
    padded_tokens: int = 0  # query positions of prefill forwards, padding included
    generated_tokens: int = 0
    prefill_s: float = 0.0  # CPU wall time; on a GPU, queued work may spill over into decode_s
    decode_s: float = 0.0


class _Row:
    """One prompt's generation state."""

    def __init__(self, budget: int):
        self.budget = budget  # new tokens allowed: max_new_tokens, or less where the context fills up
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason = "length"
        self.stop_reason: str | None = None


class GrammarMasks:
    """Token masks for replies decoded under a grammar (SamplingParams.grammars), with xgrammar: one matcher
    per row, advanced by every sampled token; before each sample the tokens the grammar rejects get -inf.
    The sampled token's logprob is then taken under the masked distribution, the one it was drawn from.
    Compiled grammars are cached by their text (a subagent's grammar changes only with its search results)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=True)
        self.vocab_size = vocab_size

    def matcher(self, grammar: str | None):
        if grammar is None:
            return None
        try:
            return self.xgr.GrammarMatcher(self.compiler.compile_grammar(grammar))
        except RuntimeError as error:
            raise WideseekError(f"a reply grammar does not compile: {str(error).splitlines()[0]}") from None

    def apply(self, logits: torch.Tensor, matchers: list) -> None:
        """Mask `logits` [rows, vocab] in place for the rows that have a matcher."""
        rows = [b for b, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        bitmask = self.xgr.allocate_token_bitmask(len(matchers), self.vocab_size)
        for b in rows:
            matchers[b].fill_next_token_bitmask(bitmask, b)
        self.xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device),
                                             indices=rows if len(rows) < len(matchers) else None)

    def replay(self, grammar: str, token_ids: list[int]) -> torch.Tensor:
        """The mask each token of a reply was sampled under, as xgrammar bitmasks [tokens, words] (int32, bit v
        of a row set where token v was allowed); the trainer scores the reply under the same masks."""
        matcher = self.matcher(grammar)
        bitmask = self.xgr.allocate_token_bitmask(max(1, len(token_ids)), self.vocab_size)[: len(token_ids)]
        for index, token in enumerate(token_ids):
            if matcher.is_terminated():
                break
            matcher.fill_next_token_bitmask(bitmask, index)
            self.advance(matcher, token)
        return bitmask

    @staticmethod
    def advance(matcher, token: int) -> None:
        if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(token):
            raise WideseekError(f"token {token} was sampled against its grammar")


class HFEngine(Engine):
    supports_grammars = True

    def __init__(self, model, tokenizer, max_batch_size: int = 16, prefix_cache_mb: float = 0):
        if max_batch_size < 1:
            raise WideseekError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if prefix_cache_mb < 0:
            raise WideseekError(f"prefix_cache_mb must be at least 0, got {prefix_cache_mb}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        config = model.config.get_text_config(decoder=True)
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            raise WideseekError(f"HFEngine supports full-attention models only, not layer types {set(config.layer_types)}")
        if model.config._attn_implementation not in ("sdpa", "eager"):
            raise WideseekError(f"HFEngine needs sdpa or eager attention, not {model.config._attn_implementation}")
        self.context_limit = int(config.max_position_embeddings)
        self.vocab_size = int(config.vocab_size)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv_shape = _KVShape(int(config.num_hidden_layers), int(config.num_key_value_heads), int(head_dim),
                                 next(model.parameters()).dtype, self.device)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Any of these ends a row (and is kept as its last token): the tokenizer's eos, <|im_end|>,
        # and the eos ids of the model's generation config (Qwen3 lists <|endoftext|> there too).
        eos: set[int] = set()
        for token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
            if token_id is not None and token_id != tokenizer.unk_token_id:
                eos.add(int(token_id))
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if generation_eos is not None:
            eos.update([generation_eos] if isinstance(generation_eos, int) else generation_eos)
        self.eos_token_ids = frozenset(eos)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self._weights_seen: torch.Tensor | None = None
        self._grammar_masks: GrammarMasks | None = None
        self.stats = EngineStats()

    # ---- public ----

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        for index, prompt in enumerate(prompts):
            self._check_prompt(index, prompt)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else random.randrange(2**63))

        # Batch prompts of similar length together (less padding); answer in the caller's order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [_Row(min(sampling.max_new_tokens, self.context_limit - len(p))) for p in prompts]
        live = [i for i in order if rows[i].budget > 0]
        was_training = self.model.training
        self.model.eval()  # a policy shared with training may be in train mode (which disables the cache)
        try:
            with torch.inference_mode(), self._attention():
                if self.prefix_cache is not None:
                    self._forget_stale_cache()
                    started = time.perf_counter()
                    self._prefill_shared_prefixes([prompts[i] for i in live])
                    self.stats.prefill_s += time.perf_counter() - started
                grammars = self._grammars(sampling, len(prompts))
                for start in range(0, len(live), self.max_batch_size):
                    chunk = live[start : start + self.max_batch_size]
                    self._generate_batch([prompts[i] for i in chunk], [rows[i] for i in chunk], sampling, generator,
                                         [grammars[i] for i in chunk])
        finally:
            self.model.train(was_training)
        return [self._completion(row) for row in rows]

    def clear_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def reset_stats(self) -> None:
        self.stats = EngineStats()

    # ---- internals ----

    @property
    def grammar_masks(self) -> GrammarMasks:
        """The masks this engine samples under (xgrammar over its tokenizer and vocabulary)."""
        if self._grammar_masks is None:
            self._grammar_masks = GrammarMasks(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return self._grammar_masks

    def _grammars(self, sampling: SamplingParams, count: int) -> list:
        """One matcher (or None) per prompt."""
        if not sampling.grammars:
            return [None] * count
        if len(sampling.grammars) != count:
            raise WideseekError(f"{len(sampling.grammars)} grammars for {count} prompts")
        return [self.grammar_masks.matcher(g) if g is not None else None for g in sampling.grammars]

    def _check_prompt(self, index: int, prompt: Sequence[int]) -> None:
        if len(prompt) == 0:
            raise WideseekError(f"prompt {index} is empty")
        if len(prompt) > self.context_limit:
            raise WideseekError(
                f"prompt {index} has {len(prompt)} tokens, more than the model's context of {self.context_limit}"
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise WideseekError(f"prompt {index} has token ids outside the vocabulary (0..{self.vocab_size - 1})")

    def _completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=False)
        return Completion(row.token_ids, row.logprobs, row.finish_reason, text, row.stop_reason)

    @contextmanager
    def _attention(self):
        """Our GQA-sharing sdpa on CPU for the length of a call (restored after, as train/eval mode is)."""
        config = self.model.config
        previous = config._attn_implementation
        if self.device.type == "cpu" and previous == "sdpa":
            config._attn_implementation = _GQA_SDPA
        try:
            yield
        finally:
            config._attn_implementation = previous

    def _forget_stale_cache(self) -> None:
        """Cached KV is only valid for the weights that computed it, and the policy may have been trained since
        the last call. Compared: a few elements spread over every parameter, by value (fused optimizers do not
        even bump a tensor's version counter); a training step moves all of them, a step that changes nothing
        (all gradients zero) rightly keeps the cache."""
        samples = []
        for parameter in self.model.parameters():
            flat = parameter.detach().reshape(-1)
            samples.append(flat[:: max(1, flat.numel() // _WEIGHT_SAMPLES)][:_WEIGHT_SAMPLES].float())
        weights = torch.cat(samples)
        if self._weights_seen is None or not torch.equal(weights, self._weights_seen):
            self.prefix_cache.clear()
            self._weights_seen = weights

    def _prefill_shared_prefixes(self, prompts: list[list[int]]) -> None:
        """Prefill once, into the prefix cache, each long prefix that rows of this call share beyond what the
        cache holds already. Sorted, a prompt's longest prefix shared with any other is shared with a neighbour."""
        ordered = [np.asarray(p, dtype=np.int64) for p in sorted(prompts)]
        shared = [0] * len(ordered)
        for k in range(len(ordered) - 1):
            length = common_prefix_length(ordered[k], ordered[k + 1])
            shared[k], shared[k + 1] = max(shared[k], length), max(shared[k + 1], length)
        seeds = set()
        for prompt, length in zip(ordered, shared):
            length = min(length, len(prompt) - 1)  # the row still computes its last token
            cached = self.prefix_cache.longest_match(prompt[:length])[1]
            if length - cached >= _MIN_SHARED_TOKENS:
                seeds.add(tuple(prompt[:length].tolist()))
        # A seed that is a prefix of another is served by the longer one (it sorts right before an extension).
        seeds = sorted(seeds)
        seeds = [s for s, after in zip(seeds, [*seeds[1:], ()]) if after[: len(s)] != s]
        if seeds:
            seeds = [list(s) for s in seeds]
            kv = self._prefill(seeds, [self._lookup(s) for s in seeds], extra=0)[0]
            for b, seed in enumerate(seeds):
                self.prefix_cache.store(seed, kv.row(b))

    def _generate_batch(
        self, prompts: list[list[int]], rows: list[_Row], sampling: SamplingParams, generator: torch.Generator,
        matchers: list | None = None,
    ) -> None:
        started = time.perf_counter()
        hits = [self._lookup(p) for p in prompts]
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.cached_tokens += sum(cached for _, cached in hits)
        kv, logits = self._prefill(prompts, hits, extra=min(max(row.budget for row in rows), 256))
        decode_started = time.perf_counter()
        self.stats.prefill_s += decode_started - started
        next_positions = torch.tensor([len(p) for p in prompts], device=self.device)
        live = list(range(len(rows)))  # indexes of the rows still in the batch, in batch order
        stops = tuple(s for s in sampling.stop if s)
        # Tokens enough to hold any stop string: each token is at least one byte, a character at most four.
        stop_window = 4 * max((len(s) for s in stops), default=0) + 1
        matchers = matchers if matchers is not None and any(m is not None for m in matchers) else None
        try:
            while True:
                if matchers is not None:
                    self.grammar_masks.apply(logits, [matchers[r] for r in live])
                tokens, logprobs = sample_next_tokens(logits, sampling.temperature, sampling.top_p, generator)
                kept = []
                for b, (r, token, logprob) in enumerate(zip(live, tokens.tolist(), logprobs.tolist())):
                    if matchers is not None:
                        GrammarMasks.advance(matchers[r], token)
                    if not self._append(rows[r], token, logprob, stops, stop_window, sampling.stop_loops):
                        kept.append(b)
                    elif self.prefix_cache is not None:  # its KV: the prompt and all its tokens but the last
                        self.prefix_cache.store(prompts[r] + rows[r].token_ids[:-1], kv.row(b))
                if not kept:
                    return
                if len(kept) < len(live):  # finished rows leave the batch
                    index = torch.tensor(kept, device=self.device)
                    kv.select_rows(index)
                    tokens, next_positions = tokens[index], next_positions[index]
                    live = [live[b] for b in kept]
                kv.reserve(1)
                kv.valid[:, kv.length] = True
                logits = self._forward(tokens[:, None], kv, next_positions[:, None], 1)
                next_positions = next_positions + 1
        finally:
            self.stats.decode_s += time.perf_counter() - decode_started

    def _lookup(self, prompt: list[int]) -> tuple[_Entry | None, int]:
        if self.prefix_cache is None:
            return None, 0
        return self.prefix_cache.lookup(np.asarray(prompt, dtype=np.int64))

    def _prefill(self, prompts: list[list[int]], hits: list[tuple[_Entry | None, int]],
                 extra: int) -> tuple[_BatchKV, torch.Tensor]:
        """(the batch's KV, every row ending in the same column, with room for `extra` more; each row's logits
        for its next token). Cached prefixes (`hits`) are copied in; the rest is computed in groups."""
        groups = self._prefill_groups([len(p) - cached for p, (_, cached) in zip(prompts, hits)])
        if len(groups) == 1:  # straight into the batch's KV, holes and all
            kv = self._group_kv(prompts, hits, extra)
            return kv, self._prefill_forward(kv, prompts, hits)
        width = max(len(p) for p in prompts)
        kv = _BatchKV(self.kv_shape, len(prompts), width + extra)
        kv.length = width
        logits = torch.empty((len(prompts), self.vocab_size), device=self.device)
        for group in groups:
            group_prompts, group_hits = [prompts[b] for b in group], [hits[b] for b in group]
            group_kv = self._group_kv(group_prompts, group_hits, extra=0)
            logits[group] = self._prefill_forward(group_kv, group_prompts, group_hits)
            # Into the batch, compacted, ending in its column `width`.
            for g, (b, prompt) in enumerate(zip(group, group_prompts)):
                kv.data[:, :, b, :, width - len(prompt) : width] = group_kv.row(g)
                kv.valid[b, width - len(prompt) : width] = True
        return kv, logits

    @staticmethod
    def _prefill_groups(suffix: list[int]) -> list[list[int]]:
        """Rows by decreasing suffix length, cut where padding to the group's longest would waste too much."""
        groups: list[list[int]] = []
        for b in sorted(range(len(suffix)), key=lambda b: -suffix[b]):
            if groups:
                group = groups[-1]
                real = sum(suffix[g] for g in group) + suffix[b]
                if (len(group) + 1) * suffix[group[0]] - real <= _GROUP_PADDING * real + _GROUP_SLACK_TOKENS:
                    group.append(b)
                    continue
            groups.append([b])
        return groups

    def _group_kv(self, prompts: list[list[int]], hits: list[tuple[_Entry | None, int]], extra: int) -> _BatchKV:
        """KV for prefilling `prompts` together: each row's cached prefix ends in column `length`, the longest
        prefix; the suffixes will follow, left-padded to the longest."""
        cached = [length for _, length in hits]
        prefix_width, suffix_width = max(cached), max(len(p) - c for p, c in zip(prompts, cached))
        kv = _BatchKV(self.kv_shape, len(prompts), prefix_width + suffix_width + extra)
        for g, (entry, c) in enumerate(hits):
            if c:
                kv.data[:, :, g, :, prefix_width - c : prefix_width] = entry.kv[:, :, :, :c]
                kv.valid[g, prefix_width - c : prefix_width] = True
        kv.length = prefix_width
        return kv

    def _prefill_forward(self, kv: _BatchKV, prompts: list[list[int]],
                         hits: list[tuple[_Entry | None, int]]) -> torch.Tensor:
        """Run each row's suffix (the prompt past its cached prefix) over `kv`; the rows' next-token logits."""
        suffixes = [p[c:] for p, (_, c) in zip(prompts, hits)]
        width = max(len(suffix) for suffix in suffixes)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(prompts), width), dtype=torch.long)
        for g, ((_, c), suffix) in enumerate(zip(hits, suffixes)):
            input_ids[g, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            position_ids[g, width - len(suffix) :] = torch.arange(c, c + len(suffix))
            kv.valid[g, kv.length + width - len(suffix) : kv.length + width] = True
        self.stats.computed_tokens += sum(len(s) for s in suffixes)
        self.stats.padded_tokens += len(prompts) * width
        return self._forward(input_ids.to(self.device), kv, position_ids.to(self.device), width, logits_to_keep=1)

    def _forward(self, input_ids, kv: _BatchKV, position_ids, new: int, logits_to_keep: int = 0) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=kv.attention_mask(new),
            position_ids=position_ids,
            past_key_values=kv,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        kv.length += new
        return output.logits[:, -1, :].float()

    def _append(self, row: _Row, token: int, logprob: float, stops: tuple[str, ...], stop_window: int,
                stop_loops: bool = False) -> bool:
        """Record a sampled token; True when the row is finished."""
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        self.stats.generated_tokens += 1
        if token in self.eos_token_ids:
            row.finish_reason, row.stop_reason = "stop", "eos"
            return True
        # every 16 tokens: the check costs a few thousand comparisons
        if stop_loops and len(row.token_ids) % 16 == 0 and is_degenerate_repetition(row.token_ids):
            row.finish_reason, row.stop_reason = "stop", "loop"
            return True
        if stops:
            # Checked every step, so a stop string found in the recent tail was completed by this token.
            tail = self.tokenizer.decode(row.token_ids[-stop_window:], skip_special_tokens=False)
            found = [(tail.find(s) + len(s), s) for s in stops if s in tail]
            if found:
                row.finish_reason, row.stop_reason = "stop", min(found)[1]
                return True
        return len(row.token_ids) >= row.budget


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar bitmasks [..., words] (int32) as booleans [..., vocab_size]: True where a token is allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask[..., None] >> shifts) & 1).flatten(-2)[..., :vocab_size].bool()
