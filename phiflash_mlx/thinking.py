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

from phiflash.thinking import PROMPT_TAIL, THINK_CLOSE, ThinkingBudget, opens_thinking


def close_ids(tokenizer) -> list[int]:
    return list(tokenizer.encode(THINK_CLOSE, add_special_tokens=False))


class BudgetProcessor:
    """One reply's budget as an mlx-lm logits processor (state lives in :attr:`budget`)."""

    def __init__(self, tokenizer, n: int):
        self.tokenizer = tokenizer
        self.n = int(n)
        self.ids = close_ids(tokenizer)
        self.budget: ThinkingBudget | None = None
        self._seen = 0

    def _decode(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.budget is not None and self.budget.state == "done":
            return logits  # nothing more to force: no host read of the tokens per step
        total = int(tokens.shape[-1])
        if self.budget is None:  # the first call: tokens are the prompt
            tail = tokens.reshape(-1)[-PROMPT_TAIL:].tolist()
            inside = opens_thinking(self.tokenizer.decode(tail))
            self.budget = ThinkingBudget(self.n, self.ids, self._decode, inside)
        elif total > self._seen:
            for t in tokens.reshape(-1)[self._seen - total :].tolist():
                self.budget.feed(t)
        self._seen = total
        forced = self.budget.forced()
        if forced is None:
            return logits
        keep = mx.arange(logits.shape[-1]) == forced
        return mx.where(keep, mx.zeros_like(logits), mx.full(logits.shape, -mx.inf, logits.dtype))


def budget_processor(tokenizer, n: int) -> BudgetProcessor:
    """A fresh processor for one reply (``n`` > 0 tokens of thinking; see the module doc)."""
    if n < 0:
        raise ValueError("the thinking budget must be >= 0")
    return BudgetProcessor(tokenizer, n)
