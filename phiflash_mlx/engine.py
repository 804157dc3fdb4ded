"""The MLX engine behind the engine protocol (:mod:`phiflash.engine`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from phiflash.engine import Chunk, GenerationParams, Message, check_context
from phiflash.errors import PromptCacheError
from phiflash_mlx.cache_prompt import PromptCacheFile


def describe_quantization(config: dict, model=None) -> str:
    q = config.get("quantization")
    if q:
        if any(isinstance(v, dict) for v in q.values()):
            return "mixed"
        return f"{q['bits']}-bit"
    if model is not None:
        dtype = str(model.model.embed_tokens.weight.dtype).rsplit(".", 1)[-1]
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    return "bf16"


class MLXEngine:
    """Keeps one prompt cache; a prompt that extends the cached tokens only feeds the rest."""

    name = "mlx"

    def __init__(
        self,
        model_path: str,
        dtype=None,
        prompt_cache: PromptCacheFile | None = None,
        prefill_step_size: int = 2048,
    ):
        from phiflash import blas
        from phiflash_mlx.load import load_model, load_tokenizer

        self.model, self.config = load_model(model_path, dtype=dtype)
        self.tokenizer = load_tokenizer(model_path, self.config)
        self.model_path = str(model_path)
        self.quantization = describe_quantization(self.config, self.model)
        # the model's own context (the config's max_position_embeddings); the MLX caches grow
        # as needed, so the engine allocates no fixed context
        self.context_limit = int(self.model.args.max_position_embeddings)
        self.prefill_step_size = prefill_step_size
        self._blas_note = f"CPU BLAS: {blas.status}"
        self._cache = None
        self._tokens: list[int] = []
        self._pinned = prompt_cache

    @property
    def backend_note(self) -> str:
        """What `generate --verbose` prints after the stats: the BLAS in use and, once a
        prompt has run on a GPU, whether a scan kernel's self-check turned it off (the Metal
        kernel, or the CUDA scan's time chunks)."""
        from phiflash_mlx.model import scan_kernel_note

        note = scan_kernel_note()
        return self._blas_note if note is None else f"{self._blas_note}\n{note}"

    # -- protocol ---------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.encode(self.apply_chat_template(messages)))

    def reset(self) -> None:
        self._cache = None
        self._tokens = []

    def stream(self, messages, params: GenerationParams, should_stop=None) -> Iterator[Chunk]:
        return self._stream_tokens(
            self.encode(self.apply_chat_template(messages)), params, should_stop
        )

    def stream_prompt(self, prompt: str, params: GenerationParams, should_stop=None):
        return self._stream_tokens(self.encode(prompt), params, should_stop)

    # -- internals --------------------------------------------------------------------------
    def _prepare(self, tokens: list[int]) -> list[int]:
        """Pick the cache to continue from and return the tokens still to be processed."""
        from mlx_lm.models.cache import make_prompt_cache

        n = len(self._tokens)
        if self._cache is not None and n < len(tokens) and tokens[:n] == self._tokens:
            return tokens[n:]
        if self._pinned is not None:
            cached = self._pinned.tokens
            if cached is None:  # a stock mlx_lm file: no token ids, `tokens` is what follows
                self._cache, self._tokens = self._pinned.fresh_cache(), []
                return tokens
            if len(cached) >= len(tokens) or tokens[: len(cached)] != cached:
                raise PromptCacheError(
                    "the prompt cache was made for a prompt that is not a prefix of this one; "
                    "a Mamba state cannot be rewound, so it cannot be reused here"
                )
            self._cache, self._tokens = self._pinned.fresh_cache(), list(cached)
            return tokens[len(cached) :]
        self._cache, self._tokens = make_prompt_cache(self.model), []
        return tokens

    def _stream_tokens(
        self, tokens: list[int], params: GenerationParams, should_stop: Callable[[], bool] | None
    ) -> Iterator[Chunk]:
        import mlx.core as mx

        from phiflash_mlx.generate import stream_generate

        check_context(len(tokens), params.max_tokens, self.context_limit)
        new = self._prepare(tokens)
        if params.seed is not None:
            mx.random.seed(params.seed)
        # Every token mlx-lm yields has already been fed to the model (it runs one step
        # ahead), so the cache always holds prompt + all tokens received so far.
        self._tokens = self._tokens + new
        extra = {}
        if params.thinking_budget > 0:
            from phiflash_mlx.thinking import budget_processor

            extra["logits_processors"] = [budget_processor(self.tokenizer, params.thinking_budget)]
        gen = stream_generate(
            self.model,
            self.tokenizer,
            new,
            params.max_tokens,
            temp=params.temperature,
            top_p=params.top_p,
            min_p=params.min_p,
            top_k=params.top_k,
            prompt_cache=self._cache,
            prefill_step_size=self.prefill_step_size,
            **extra,
        )
        try:
            for r in gen:
                self._tokens.append(int(r.token))
                chunk = Chunk(
                    text=r.text,
                    token=int(r.token),
                    prompt_tokens=r.prompt_tokens,
                    prompt_tps=r.prompt_tps,
                    generation_tokens=r.generation_tokens,
                    generation_tps=r.generation_tps,
                    peak_memory_gb=r.peak_memory,
                    context_used=len(self._tokens),
                    finish_reason=r.finish_reason,
                )
                if r.finish_reason is None and should_stop is not None and should_stop():
                    chunk.finish_reason = "cancelled"
                    yield chunk
                    return
                yield chunk
        except Exception:
            self.reset()  # a failed step leaves the cache unknown: the next reply starts afresh
            raise
        finally:
            gen.close()
            if self._cache is not None:
                # MLX streams belong to a thread (mlx-lm generates on a thread-local stream), and
                # the chat runs each reply in a new worker thread: no lazy cache update may
                # outlive this one, or the next reply cannot evaluate it.
                mx.eval([c.state for c in self._cache])
