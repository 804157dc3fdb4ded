"""The thinking budget for llama-cpp-python's own generation loop (``Llama.create_completion``
/ ``create_chat_completion``, as a server built on llama-cpp-python runs it).

:class:`phiflash_gguf.engine.GGUFEngine` forces ``</think>`` in its own sampling loop; this is
the same state machine (:mod:`phiflash.thinking`) as a llama-cpp-python logits processor:
``logits_processor=llama_cpp.LogitsProcessorList([budget_logits_processor(llm, n)])``, one
per request. It is called once per step with the tokens so far (the prompt first, then one
more token per call) and, once ``n`` tokens were spent inside ``<think>``, leaves only the next
id of ``</think>`` possible until the tag is complete.
"""

from __future__ import annotations

import numpy as np

from phiflash.thinking import PROMPT_TAIL, THINK_CLOSE, BudgetFeed, ThinkingBudget, opens_thinking


def thinking_budget(llm, prompt_ids, n: int) -> ThinkingBudget:
    """The budget's state machine for one reply of ``llm`` after ``prompt_ids``.

    The one construction for both loops: :class:`phiflash_gguf.engine.GGUFEngine`'s own
    sampling loop and :class:`BudgetLogitsProcessor` in llama-cpp-python's.
    """

    def piece(token: int) -> str:
        return llm.detokenize([token]).decode("utf-8", "replace")

    close = llm.tokenize(THINK_CLOSE.encode(), add_bos=False, special=False)
    tail = [int(t) for t in prompt_ids[-PROMPT_TAIL:]]
    text = llm.detokenize(tail, special=True).decode("utf-8", "replace")
    return ThinkingBudget(int(n), close, piece, inside=opens_thinking(text))


class BudgetLogitsProcessor:
    def __init__(self, llm, n: int):
        if n < 0:
            raise ValueError("the thinking budget must be >= 0")
        self.llm = llm
        self.n = int(n)
        self.feed = BudgetFeed(lambda prompt_tail: thinking_budget(llm, prompt_tail, self.n))

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.feed.done:
            return scores  # nothing more to force
        forced = self.feed.forced(len(input_ids), lambda k: input_ids[-k:].tolist())
        if forced is None:
            return scores
        out = np.full_like(scores, -np.inf)
        out[forced] = 0.0
        return out


def budget_logits_processor(llm, n: int) -> BudgetLogitsProcessor:
    """A fresh processor for one request on ``llm`` (a ``llama_cpp.Llama``)."""
    return BudgetLogitsProcessor(llm, n)
