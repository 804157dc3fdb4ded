"""Generation on top of mlx-lm (the command is :mod:`phiflash.commands.generate`).

Stacked generators: mlx-lm's ``generate_step`` yields token ids, :func:`stream_generate`
yields text + stats, :func:`generate` returns the string.
"""

from __future__ import annotations

from phiflash.engine import DEFAULT_TEMP, DEFAULT_TOP_P, check_context


def make_sampler(temp: float, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0):
    from mlx_lm.sample_utils import make_sampler as _make_sampler

    return _make_sampler(temp=temp, top_p=top_p if 0 < top_p < 1 else 0.0, min_p=min_p, top_k=top_k)


def stream_generate(
    model,
    tokenizer,
    prompt,
    max_tokens: int = 256,
    *,
    temp: float = DEFAULT_TEMP,
    top_p: float = DEFAULT_TOP_P,
    min_p: float = 0.0,
    top_k: int = 0,
    sampler=None,
    **kwargs,
):
    """Yield mlx-lm ``GenerationResponse``s (text piece, token, tok/s, peak memory).

    ``prompt`` is a string (encoded as is: apply the chat template first) or token ids.
    Extra keyword arguments (``prompt_cache``, ``prefill_step_size``, ...) go to mlx-lm.
    """
    from mlx_lm.generate import stream_generate as _stream_generate

    if isinstance(prompt, str):
        prompt = tokenizer.encode(prompt, add_special_tokens=False)
    limit = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    if limit:
        check_context(len(prompt), max_tokens, limit)
    vocab = getattr(getattr(model, "args", None), "vocab_size", None)
    if vocab and top_k >= vocab:  # k >= vocab keeps every token: no top-k (mlx-lm refuses it)
        top_k = 0
    sampler = sampler or make_sampler(temp, top_p, min_p, top_k)
    yield from _stream_generate(model, tokenizer, prompt, max_tokens, sampler=sampler, **kwargs)


def generate(model, tokenizer, prompt, verbose: bool = False, **kwargs) -> str:
    """Generate a whole reply; ``verbose`` prints it as mlx_lm.generate does."""
    if verbose:
        print("=" * 10)
    text, last = "", None
    for last in stream_generate(model, tokenizer, prompt, **kwargs):
        if verbose:
            print(last.text, end="", flush=True)
        text += last.text
    if verbose and last is not None:
        print()
        print("=" * 10)
        print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.3f} tokens-per-sec")
        print(
            f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.3f} tokens-per-sec"
        )
        print(f"Peak memory: {last.peak_memory:.3f} GB")
    return text
