"""The thinking budget on MLX: an mlx-lm logits processor (see :mod:`phiflash.thinking`).

``budget_processor(tokenizer, n)`` returns one processor for one reply: pass it in
``logits_processors`` to mlx-lm's ``stream_generate`` / ``generate_step``, or per row to
``BatchGenerator.insert(..., logits_processors=[[budget_processor(tokenizer, n)], ...])``.
It is called once per step with the row's tokens so far (the prompt at the first call, one
more token at each call after) and, once the row has spent ``n`` tokens inside ``<think>``,
masks every logit but the next id of ``</think>`` until the tag is complete.
"""

from __future__ import annotations

import mlx.core as mx

from phiflash.thinking import THINK_CLOSE, BudgetFeed, ThinkingBudget, opens_thinking


def close_ids(tokenizer) -> list[int]:
    return list(tokenizer.encode(THINK_CLOSE, add_special_tokens=False))


class BudgetProcessor:
    """One reply's budget as an mlx-lm logits processor (state lives in :attr:`feed`)."""

    def __init__(self, tokenizer, n: int):
        self.tokenizer = tokenizer
        self.n = int(n)
        self.ids = close_ids(tokenizer)
        self.feed = BudgetFeed(self._start)

    def _decode(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _start(self, prompt_tail: list[int]) -> ThinkingBudget:
        inside = opens_thinking(self.tokenizer.decode(prompt_tail))
        return ThinkingBudget(self.n, self.ids, self._decode, inside)

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.feed.done:
            return logits  # nothing more to force: no host read of the tokens per step
        flat = tokens.reshape(-1)
        forced = self.feed.forced(int(flat.shape[0]), lambda k: flat[-k:].tolist())
        if forced is None:
            return logits
        keep = mx.arange(logits.shape[-1]) == forced
        return mx.where(keep, mx.zeros_like(logits), mx.full(logits.shape, -mx.inf, logits.dtype))


def budget_processor(tokenizer, n: int) -> BudgetProcessor:
    """A fresh processor for one reply (``n`` > 0 tokens of thinking; see the module doc)."""
    if n < 0:
        raise ValueError("the thinking budget must be >= 0")
    return BudgetProcessor(tokenizer, n)
