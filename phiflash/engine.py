"""The one engine protocol that the chat and the CLI consume.

Both engines (MLX in ``phiflash_mlx``, GGUF in ``phiflash_gguf``) implement :class:`Engine`;
:func:`phiflash.engines.open_engine` picks one for a ``--model``. This module is the core
layer: it imports no engine.

Limits, each named once:

- :data:`DEFAULT_MAX_TOKENS`: new tokens per reply unless a caller asks otherwise (both
  engines, every command). ``-1`` means "until the context is full", as in mlx_lm.
- the model's own context: the checkpoint's ``max_position_embeddings`` (262144 in the real
  config; the model card supports 64K) or the GGUF's ``sambay.context_length``;
- the context an engine allocates (``Engine.context_limit``): the MLX engine grows its cache
  up to the model's own context; the GGUF engine allocates ``phiflash_gguf.engine.DEFAULT_N_CTX``
  cells at most.

One overflow rule (:func:`check_context`): a prompt whose tokens plus ``max_tokens`` do not fit
``context_limit`` is refused before any work, with a :class:`ContextLengthError` that says by
how much; ``max_tokens`` is never lowered silently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from phiflash.errors import ContextLengthError, InvalidParamsError

# Model card defaults (temperature 0.6, top-p 0.95).
DEFAULT_TEMP = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 2048
# The real model reasons for thousands of tokens (its card generates up to 32K), so 2048 cuts
# it short. A model whose context holds at least REASONING_CONTEXT tokens (the real model: 256K
# on MLX, 32K as the GGUF engine allocates it; the 4K tutor does not) gets REASONING_MAX_TOKENS
# new tokens by default: half the GGUF allocation, leaving the other half to the conversation.
REASONING_CONTEXT = 32768
REASONING_MAX_TOKENS = 16384
# The chat's default thinking budget per engine (tokens inside <think> before </think> is
# forced; 0 = no limit), so that a CPU answer comes within minutes: GGUF Q4_0 at full size
# decoded 5.7-6.4 tok/s at 512-4096 tokens of context on a 2-core AMD EPYC
# (benchmarks/results/gguf_cpu.md) and 13-16 tok/s at short context on a 2-core CI machine, so
# 4096 tokens of reasoning take 4-12 minutes there; MLX 4-bit runs where MLX has a GPU (Apple
# silicon), several times faster, so it gets twice the room. Both leave at least half of
# REASONING_MAX_TOKENS to the answer. `phiflash generate` has no budget unless asked.
CHAT_THINKING_BUDGET = {"mlx": 8192, "gguf": 4096}


def default_max_tokens(context_limit: int) -> int:
    """New tokens per reply for a model with this context (see REASONING_MAX_TOKENS)."""
    return REASONING_MAX_TOKENS if context_limit >= REASONING_CONTEXT else DEFAULT_MAX_TOKENS


def chat_thinking_budget(engine_name: str, context_limit: int) -> int:
    """The chat's default budget: per engine for a reasoning-size model, none for small ones."""
    if context_limit < REASONING_CONTEXT:
        return 0
    return CHAT_THINKING_BUDGET.get(engine_name, 0)


@dataclass
class GenerationParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMP
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    # tokens allowed inside <think> before the engine forces </think>; 0 = no limit; counts
    # toward max_tokens (phiflash.thinking)
    thinking_budget: int = 0

    def validate(self, names: dict[str, str] | None = None) -> GenerationParams:
        """The one range rule for every command and the chat; returns ``self``.

        temperature >= 0 and finite (0 = greedy), 0 < top-p <= 1, 0 <= min-p <= 1, top-k >= 0
        (0 = off), max tokens > 0 or -1 (until the context is full). A value out of range
        raises :class:`InvalidParamsError` with one line; ``names`` maps a field to what the
        user typed (``{"temperature": "--temp"}``) so the line names the user's flag.
        """
        n = {
            "temperature": "temperature",
            "top_p": "top-p",
            "min_p": "min-p",
            "top_k": "top-k",
            "max_tokens": "max tokens",
        } | (names or {})

        def number(field: str, integer: bool = False):
            v = getattr(self, field)
            ok = isinstance(v, int) if integer else isinstance(v, int | float)
            if not ok or isinstance(v, bool):
                kind = "a whole number" if integer else "a number"
                raise InvalidParamsError(f"{n[field]} must be {kind} (got {v!r})")
            return v

        t = number("temperature")
        if not math.isfinite(t) or t < 0:
            raise InvalidParamsError(
                f"{n['temperature']} must be a finite number >= 0 (0 = greedy; got {t})"
            )
        p = number("top_p")
        if not 0.0 < p <= 1.0:  # NaN fails every comparison
            raise InvalidParamsError(f"{n['top_p']} must be in (0, 1] (got {p})")
        m = number("min_p")
        if not 0.0 <= m <= 1.0:
            raise InvalidParamsError(f"{n['min_p']} must be in [0, 1] (0 = off; got {m})")
        if number("top_k", integer=True) < 0:
            raise InvalidParamsError(f"{n['top_k']} must be >= 0 (0 = off; got {self.top_k})")
        mt = number("max_tokens", integer=True)
        if mt < 1 and mt != -1:
            raise InvalidParamsError(
                f"{n['max_tokens']} must be positive, or -1 for no limit (got {mt})"
            )
        s = self.seed
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**64):
            raise InvalidParamsError(f"{n.get('seed', 'seed')} must be in [0, 2**64) (got {s})")
        tb = self.thinking_budget
        if not isinstance(tb, int) or isinstance(tb, bool) or tb < 0:
            name = n.get("thinking_budget", "thinking budget")
            raise InvalidParamsError(f"{name} must be a whole number >= 0 (0 = no limit)")
        return self

    def check_budget_room(self, names: dict[str, str] | None = None) -> GenerationParams:
        """A budget the user set must leave room for the answer: below max tokens (it counts
        toward them). Callers apply it to a budget the user chose, not to a default or a
        server's cap; returns ``self``."""
        n = {"thinking_budget": "thinking budget", "max_tokens": "max tokens"} | (names or {})
        b, m = self.thinking_budget, self.max_tokens
        if b and m > 0 and b >= m:
            raise InvalidParamsError(
                f"the {n['thinking_budget']} ({b}) must be below {n['max_tokens']} ({m}): it "
                "counts toward them, and the answer needs room after it"
            )
        return self


@dataclass
class Chunk:
    """One streamed piece of a reply.

    ``finish_reason`` is None while streaming, then one of "stop" (a stop token),
    "length" (max_tokens reached) or "cancelled" (``should_stop`` returned True).
    Rates are tokens per second; memory is in GB.
    """

    text: str
    token: int | None = None
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_gb: float = 0.0
    context_used: int = 0
    finish_reason: str | None = None


Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@runtime_checkable
class Engine(Protocol):
    name: str  # "mlx" or "gguf"
    model_path: str
    quantization: str  # "bf16", "8-bit", "4-bit", "Q4_0", ...
    context_limit: int

    def stream(
        self,
        messages: list[Message],
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        """Render ``messages`` with the chat template and stream the reply.

        The engine keeps its cache between calls: when the new prompt extends the tokens
        already in the cache (a follow-up in the same problem), only the new tokens are
        processed. Anything else starts a fresh cache.
        """
        ...

    def stream_prompt(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        """Stream a reply to an already formatted prompt (no chat template; fresh cache)."""
        ...

    def apply_chat_template(self, messages: list[Message]) -> str:
        """The prompt text for ``messages`` with the generation prompt appended."""
        ...

    def reset(self) -> None:
        """Drop the cache (a new problem starts from an empty context)."""
        ...

    def count_tokens(self, messages: list[Message]) -> int: ...


@dataclass
class FakeEngine:
    """Streams canned text word by word; serves the TUI tests and demos."""

    reply: str = "<think>Add the ones: 2 + 3 = 5.</think>The answer is $\\boxed{5}$."
    delay: float = 0.0
    name: str = "fake"
    model_path: str = "fake"
    quantization: str = "none"
    context_limit: int = 4096
    fail_with: Exception | None = None
    calls: list[list[Message]] = field(default_factory=list)
    resets: int = 0
    _cached: int = 0

    def _pieces(self) -> list[str]:
        out, word = [], ""
        for ch in self.reply:
            word += ch
            if ch in " >\n":
                out.append(word)
                word = ""
        if word:
            out.append(word)
        return out

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages) + 1

    def reset(self) -> None:
        self.resets += 1
        self._cached = 0

    def apply_chat_template(self, messages: list[Message]) -> str:
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + "<|assistant|>"

    def stream_prompt(self, prompt, params, should_stop=None):
        return self.stream([{"role": "user", "content": prompt}], params, should_stop)

    def stream(self, messages, params, should_stop=None):
        self.calls.append([dict(m) for m in messages])
        if self.fail_with is not None:
            raise self.fail_with
        n_prompt = self.count_tokens(messages)
        start = time.perf_counter()
        pieces = self._pieces()
        for i, piece in enumerate(pieces):
            if should_stop is not None and should_stop():
                yield Chunk(
                    "",
                    prompt_tokens=n_prompt,
                    generation_tokens=i,
                    context_used=n_prompt + i,
                    finish_reason="cancelled",
                )
                return
            if self.delay:
                time.sleep(self.delay)
            if 0 < params.max_tokens <= i + 1:  # -1: no limit
                yield Chunk(
                    piece, i, n_prompt, 1000.0, i + 1, 100.0, 0.1, n_prompt + i + 1, "length"
                )
                return
            elapsed = max(time.perf_counter() - start, 1e-6)
            last = i == len(pieces) - 1
            yield Chunk(
                piece,
                i,
                n_prompt,
                1000.0,
                i + 1,
                (i + 1) / elapsed,
                0.1,
                n_prompt + i + 1,
                "stop" if last else None,
            )
        self._cached = n_prompt + len(pieces)


def check_context(n_prompt: int, max_tokens: int, limit: int) -> None:
    """The overflow rule shared by both engines (see the module docstring)."""
    if n_prompt >= limit:
        raise ContextLengthError(
            f"prompt is {n_prompt} tokens; the model's context is {limit} tokens"
        )
    if max_tokens > 0 and n_prompt + max_tokens > limit:
        raise ContextLengthError(
            f"prompt ({n_prompt} tokens) + max tokens ({max_tokens}) exceeds the model's "
            f"context of {limit} tokens; lower --max-tokens"
        )
