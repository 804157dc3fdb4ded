"""The thinking budget: after N tokens inside ``<think>`` the model's own ``</think>`` is
forced, token by token, and the answer follows.

In Phi-4-mini-flash-reasoning's tokenizer (and the tutor's) ``<think>`` and ``</think>`` are
plain text, several tokens each, so the block is tracked from the decoded text of the
generated tokens and closed by forcing the ids of ``</think>`` one per step, in the engine's
token loop (a logits processor on MLX, the sampling loop on GGUF); the output is never edited
as a string. The budget counts toward ``max_tokens``. This module is the engine-free state
machine both engines drive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_TAIL = 2 * len(THINK_CLOSE)


OPEN_WITHIN = 16  # a reply that has not opened <think> after this many tokens never does
ASSISTANT = "<|assistant|>"  # where the reply starts in the model's chat template
PROMPT_TAIL = 64  # the prompt tokens an engine decodes for opens_thinking


def opens_thinking(prompt_text: str) -> bool:
    """True when the prompt itself ends inside a think block (a template that opens it).

    Only the text after the last ``<|assistant|>`` counts: an earlier reply that was stopped
    while thinking leaves an open block in the history, not in the reply being made."""
    tail = prompt_text.rsplit(ASSISTANT, 1)[-1]
    return tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)


class ThinkingBudget:
    """Tracks one reply's think block; :meth:`forced` says which token must come next.

    ``budget`` tokens may follow the token that completes ``<think>``; then the ids of
    ``close_ids`` (the tokenizer's encoding of ``</think>``) are forced one by one. ``decode``
    turns one token id into its text (a byte piece of a character may decode to U+FFFD; the
    tags are ASCII, so that never hides one). ``budget`` 0 = no limit. A reply that has not
    opened ``<think>`` within ``OPEN_WITHIN`` tokens is an answer without reasoning: it is not
    decoded any further.
    """

    def __init__(
        self,
        budget: int,
        close_ids: Sequence[int],
        decode: Callable[[int], str],
        inside: bool = False,
    ):
        if budget < 0:
            raise ValueError("the thinking budget must be >= 0 (0 = no limit)")
        if budget and not close_ids:
            raise ValueError("the closing tag encodes to no tokens")
        self.budget = int(budget)
        self.close_ids = [int(t) for t in close_ids]
        self.decode = decode
        self.state = "thinking" if inside else "before"  # before|thinking|closing|done
        self.thinking_tokens = 0  # tokens inside the block (not counting the forced tag)
        self._tail = ""
        self._forced = 0  # close ids already emitted
        self._before = 0  # tokens seen before <think>

    def forced(self) -> int | None:
        """The token id that must be generated next, or None (sample freely)."""
        if self.state == "closing":
            return self.close_ids[self._forced]
        return None

    def feed(self, token: int, text: str | None = None) -> None:
        """Advance with the token just generated (forced or sampled); ``text`` is its decoded
        piece where the caller has it already (else ``decode`` is called)."""
        if self.state == "closing":
            self._forced += 1
            if self._forced == len(self.close_ids):
                self.state = "done"
            return
        if self.state == "done":
            return
        piece = self.decode(int(token)) if text is None else text
        self._tail = (self._tail + piece)[-_TAIL:]
        if self.state == "before":
            at = self._tail.find(THINK_OPEN)
            if at >= 0:
                self.state = "thinking"
                self._tail = self._tail[at + len(THINK_OPEN) :]
                if self._tail:  # the token that completed <think> also began the reasoning
                    self._count()
                return
            self._before += 1
            if self._before >= OPEN_WITHIN:  # an answer without reasoning: stop watching it
                self.state = "done"
            return
        # thinking
        if THINK_CLOSE in self._tail:
            self.state = "done"
            return
        self._count()

    def _count(self) -> None:
        self.thinking_tokens += 1
        if self.budget and self.thinking_tokens >= self.budget:
            self.state = "closing"
            self._forced = 0


class BudgetFeed:
    """A :class:`ThinkingBudget` fed from a logits processor's view: the whole token list so far
    at every call (the prompt at the first, one more token at each call after).

    ``start(prompt_tail)`` builds the budget from the prompt's last ``PROMPT_TAIL`` ids. Each
    processor call passes the list's length and ``last(k)``, its last ``k`` ids as ints, so
    a processor converts only the new tokens from its own array type.
    """

    def __init__(self, start: Callable[[list[int]], ThinkingBudget]):
        self.start = start
        self.budget: ThinkingBudget | None = None
        self._seen = 0

    @property
    def done(self) -> bool:
        """Nothing more to force for this reply (the processor can skip reading tokens)."""
        return self.budget is not None and self.budget.state == "done"

    def forced(self, total: int, last: Callable[[int], list[int]]) -> int | None:
        """The id that must come next after ``total`` tokens, or None (sample freely)."""
        if self.budget is None:
            k = min(total, PROMPT_TAIL)
            self.budget = self.start(last(k) if k else [])
        elif total > self._seen:
            for t in last(total - self._seen):
                self.budget.feed(int(t))
        self._seen = total
        return self.budget.forced()
