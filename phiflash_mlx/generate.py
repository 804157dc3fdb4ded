"""Generation on top of mlx-lm, and `phiflash generate` (mlx_lm.generate's flags and output).

Stacked generators: mlx-lm's ``generate_step`` yields token ids, :func:`stream_generate`
yields text + stats, :func:`generate` returns the string.
"""

from __future__ import annotations

import argparse
import sys

from phiflash.engine import DEFAULT_MAX_TOKENS, DEFAULT_TEMP, DEFAULT_TOP_P, GenerationParams
from phiflash.errors import ContextLengthError


def make_sampler(temp: float, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0):
    from mlx_lm.sample_utils import make_sampler as _make_sampler

    return _make_sampler(temp=temp, top_p=top_p if 0 < top_p < 1 else 0.0, min_p=min_p, top_k=top_k)


def check_context(n_prompt: int, max_tokens: int, limit: int) -> None:
    if n_prompt >= limit:
        raise ContextLengthError(
            f"prompt is {n_prompt} tokens; the model's context is {limit} tokens"
        )
    if max_tokens > 0 and n_prompt + max_tokens > limit:
        raise ContextLengthError(
            f"prompt ({n_prompt} tokens) + max tokens ({max_tokens}) exceeds the model's "
            f"context of {limit} tokens; lower --max-tokens"
        )


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


def str2bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phiflash generate",
        description="Generate text with Phi-4-mini-flash-reasoning (SambaY): MLX for a model "
        "directory, the llama.cpp fork for a .gguf file. Flags follow mlx_lm.generate.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model dir, .gguf file or Hugging Face repo id "
        "(default: the bundled tutor model in weights/)",
    )
    p.add_argument(
        "--engine",
        choices=["mlx", "gguf"],
        default=None,
        help="force an engine (default: from the model path)",
    )
    p.add_argument(
        "--prompt",
        "-p",
        default="What is 12 + 30?",
        help="message to send ('-' reads it from stdin)",
    )
    p.add_argument("--system-prompt", default=None, help="system prompt for the chat template")
    p.add_argument(
        "--max-tokens",
        "-m",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"maximum number of tokens to generate (default {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument(
        "--temp",
        type=float,
        default=DEFAULT_TEMP,
        help=f"sampling temperature; 0 = greedy (default {DEFAULT_TEMP}, model card)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=DEFAULT_TOP_P,
        help=f"nucleus sampling top-p (default {DEFAULT_TOP_P})",
    )
    p.add_argument("--min-p", type=float, default=0.0, help="min-p sampling (default off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument(
        "--ignore-chat-template",
        action="store_true",
        help="send the prompt as raw text, without the chat template",
    )
    p.add_argument(
        "--prompt-cache-file",
        default=None,
        help="a prompt cache from `phiflash cache-prompt` to start from",
    )
    p.add_argument(
        "--verbose",
        type=str2bool,
        default=True,
        help="True: separators and speed stats (default); False: only the text",
    )
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens == 0 or args.max_tokens < -1:
        print("error: --max-tokens must be positive", file=sys.stderr)
        return 2
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = GenerationParams(
        max_tokens=args.max_tokens,
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
    )
    from phiflash.engine import open_engine

    kwargs = {}
    if args.prompt_cache_file:
        from phiflash_mlx.engine import prompt_cache_metadata

        meta = prompt_cache_metadata(args.prompt_cache_file)
        kwargs["prompt_cache_file"] = args.prompt_cache_file
        prompt = meta.get("phiflash_prompt", "") + prompt
        args.system_prompt = args.system_prompt or meta.get("phiflash_system") or None
        args.model = args.model or meta.get("model")
    engine = open_engine(args.model, args.engine, **kwargs)
    if args.ignore_chat_template:
        stream = engine.stream_prompt(prompt, params)
    else:
        messages = []
        if args.system_prompt:
            messages.append({"role": "system", "content": args.system_prompt})
        messages.append({"role": "user", "content": prompt})
        stream = engine.stream(messages, params)

    if args.verbose:
        print("=" * 10)
    last = None
    for last in stream:
        print(last.text, end="", flush=True)
    print()
    if args.verbose and last is not None:
        print("=" * 10)
        print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.3f} tokens-per-sec")
        print(
            f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.3f} tokens-per-sec"
        )
        print(f"Peak memory: {last.peak_memory_gb:.3f} GB")
        extra = getattr(engine, "backend_note", None)
        if extra:
            print(extra)
    return 0


if __name__ == "__main__":
    from phiflash.cli import run_main

    sys.exit(run_main(main, sys.argv[1:]))
