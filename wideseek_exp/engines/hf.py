"""Generation with a transformers model in this process: our own batched decoding loop over the KV cache.

Why not `model.generate`: the rollout needs the logprob of each sampled token under the sampling
distribution (before top-p truncation), stop strings that end a row right after their tokens, and
rows that leave the batch as soon as they finish. The loop is small enough to own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from wideseek_exp import WideseekError
from wideseek_exp.engines.base import Completion, Engine, SamplingParams


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


class _Row:
    """One prompt's generation state."""

    def __init__(self, budget: int):
        self.budget = budget  # new tokens allowed: max_new_tokens, or less where the context fills up
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason = "length"
        self.stop_reason: str | None = None


class HFEngine(Engine):
    def __init__(self, model, tokenizer, max_batch_size: int = 16):
        if max_batch_size < 1:
            raise WideseekError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        config = model.config.get_text_config(decoder=True)
        self.context_limit = int(config.max_position_embeddings)
        self.vocab_size = int(config.vocab_size)
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

    # ---- public ----

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        for index, prompt in enumerate(prompts):
            self._check_prompt(index, prompt)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else random.randrange(2**63))

        # Batch prompts of similar length together (less padding); answer in the caller's order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [_Row(min(sampling.max_new_tokens, self.context_limit - len(p))) for p in prompts]
        was_training = self.model.training
        self.model.eval()  # a policy shared with training may be in train mode (which disables the cache)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.max_batch_size):
                    chunk = [i for i in order[start : start + self.max_batch_size] if rows[i].budget > 0]
                    if chunk:
                        self._generate_batch([prompts[i] for i in chunk], [rows[i] for i in chunk], sampling, generator)
        finally:
            self.model.train(was_training)
        return [self._completion(row) for row in rows]

    # ---- internals ----

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

    def _generate_batch(
        self, prompts: list[list[int]], rows: list[_Row], sampling: SamplingParams, generator: torch.Generator
    ) -> None:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, prompt in enumerate(prompts):  # left padding: every row's last prompt token is in the last column
            input_ids[b, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[b, width - len(prompt) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        # Positions count real tokens only, so a padded row sees the same positions as when alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        next_positions = torch.tensor([len(p) for p in prompts], device=self.device)

        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention_mask, position_ids, cache, logits_to_keep=1)
        live = list(rows)  # the rows still in the batch, in batch order
        stops = tuple(s for s in sampling.stop if s)
        # Tokens enough to hold any stop string: each token is at least one byte, a character at most four.
        stop_window = 4 * max((len(s) for s in stops), default=0) + 1
        while True:
            tokens, logprobs = sample_next_tokens(logits, sampling.temperature, sampling.top_p, generator)
            kept = [
                b for b, (row, token, logprob) in enumerate(zip(live, tokens.tolist(), logprobs.tolist()))
                if not self._append(row, token, logprob, stops, stop_window)
            ]
            if not kept:
                return
            if len(kept) < len(live):  # finished rows leave the batch
                index = torch.tensor(kept, device=self.device)
                cache.batch_select_indices(index)
                attention_mask, tokens, next_positions = attention_mask[index], tokens[index], next_positions[index]
                attention_mask = self._drop_shared_padding(cache, attention_mask)
                live = [live[b] for b in kept]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
            logits = self._forward(tokens[:, None], attention_mask, next_positions[:, None], cache)
            next_positions = next_positions + 1

    def _forward(self, input_ids, attention_mask, position_ids, cache, logits_to_keep: int = 0) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return output.logits[:, -1, :].float()

    def _append(self, row: _Row, token: int, logprob: float, stops: tuple[str, ...], stop_window: int) -> bool:
        """Record a sampled token; True when the row is finished."""
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        if token in self.eos_token_ids:
            row.finish_reason, row.stop_reason = "stop", "eos"
            return True
        if stops:
            # Checked every step, so a stop string found in the recent tail was completed by this token.
            tail = self.tokenizer.decode(row.token_ids[-stop_window:], skip_special_tokens=False)
            found = [(tail.find(s) + len(s), s) for s in stops if s in tail]
            if found:
                row.finish_reason, row.stop_reason = "stop", min(found)[1]
                return True
        return len(row.token_ids) >= row.budget

    @staticmethod
    def _drop_shared_padding(cache: DynamicCache, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cut the left columns that are padding in every remaining row (the long rows may have finished),
        so that later steps attend over fewer positions. Only for plain dynamic layers, whose length is the
        tensor length; positions are unaffected because they are passed explicitly."""
        padding = int((attention_mask.sum(0) == 0).long().cumprod(0).sum())
        if padding == 0 or not all(type(layer) is DynamicLayer for layer in cache.layers):
            return attention_mask
        for layer in cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys[:, :, padding:, :]
                layer.values = layer.values[:, :, padding:, :]
        return attention_mask[:, padding:]
