"""`phiflash generate`: mlx_lm.generate's flags and output, for either engine."""

from __future__ import annotations

import argparse
import sys

from phiflash.console import command_main
from phiflash.engine import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    REASONING_CONTEXT,
    REASONING_MAX_TOKENS,
    GenerationParams,
    default_max_tokens,
)
from phiflash.engines import add_engine_args
from phiflash.errors import InvalidParamsError, PhiflashError

# what the user typed for each GenerationParams field, so a range error names the flag
FLAG_NAMES = {
    "temperature": "--temp",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "top_k": "--top-k",
    "max_tokens": "--max-tokens",
    "seed": "--seed",
    "thinking_budget": "--thinking-budget",
}


KV_BITS_REFUSAL = (
    "--kv-bits is not supported: SambaY's sliding-window and Mamba caches cannot be quantized "
    "(stock mlx-lm fails the same way: RotatingKVCache Quantization NYI)"
)


def check_utf8(value: str | None, what: str) -> None:
    """Refuse text from argv that was not UTF-8 (its bytes arrive as lone surrogates)."""
    try:
        (value or "").encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParamsError(f"{what} is not UTF-8 text") from None


def read_prompt(value: str) -> str:
    """``--prompt``'s text ('-' = stdin, which must be UTF-8); an empty prompt is refused."""
    if value == "-":
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "replace")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidParamsError(
                f"the prompt on stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at "
                f"offset {e.start})"
            ) from None
    else:
        check_utf8(value, "the prompt")
    if not value.strip():
        raise InvalidParamsError("the prompt is empty")
    return value


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
    add_engine_args(p, "the bundled tutor model in weights/")
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
        default=None,
        help=f"maximum number of tokens to generate; -1 = until the context is full "
        f"(default {DEFAULT_MAX_TOKENS}; {REASONING_MAX_TOKENS} for a model with a context of "
        f"{REASONING_CONTEXT // 1024}K or more, such as Phi-4-mini-flash-reasoning); a prompt "
        "whose tokens plus --max-tokens exceed the context is refused, never shortened",
    )
    p.add_argument(
        "--thinking-budget",
        type=int,
        default=0,
        metavar="N",
        help="end the model's reasoning after N tokens inside <think> by generating </think> "
        "(the answer follows; counts toward --max-tokens; default 0 = no limit)",
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
    p.add_argument(
        "--min-p", type=float, default=0.0, help="min-p sampling, 0 to 1 (default 0 = off)"
    )
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0 = off)")
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
        "--kv-bits",
        type=int,
        default=None,
        help="KV-cache quantization (mlx_lm's flag): not supported for SambaY, refused",
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
    params = GenerationParams(
        max_tokens=DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens,
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        thinking_budget=args.thinking_budget,
    ).validate(FLAG_NAMES)
    params.check_budget_room(FLAG_NAMES)
    if args.kv_bits is not None:
        raise InvalidParamsError(KV_BITS_REFUSAL)
    prompt = read_prompt(args.prompt)
    check_utf8(args.system_prompt, "--system-prompt")
    from phiflash.engines import open_engine

    kwargs = {}
    if args.prompt_cache_file:
        if args.engine == "gguf" or str(args.model or "").endswith(".gguf"):
            raise PhiflashError("--prompt-cache-file works with the MLX engine only")
        from phiflash_mlx.cache_prompt import read_prompt_cache

        pinned = read_prompt_cache(args.prompt_cache_file)
        meta = pinned.metadata
        kwargs["prompt_cache"] = pinned
        prompt = meta.get("phiflash_prompt", "") + prompt
        args.system_prompt = args.system_prompt or meta.get("phiflash_system") or None
        args.model = args.model or meta.get("model")
        if pinned.tokens is None:
            print(
                f"note: {args.prompt_cache_file} was made by mlx_lm.cache_prompt and stores no "
                "token ids, so that this prompt continues its prefix cannot be checked",
                file=sys.stderr,
            )
    engine = open_engine(args.model, args.engine, **kwargs)
    if args.max_tokens is None:  # the default follows the model (see --max-tokens)
        params.max_tokens = default_max_tokens(engine.context_limit)
    if args.prompt_cache_file:
        kwargs["prompt_cache"].check_model(engine.model)
        if kwargs["prompt_cache"].tokens is None and not args.ignore_chat_template:
            # stock mlx_lm's rule: the file holds the chat up to the user's text; send the rest
            messages = [{"role": "system", "content": args.system_prompt}] * bool(
                args.system_prompt
            ) + [{"role": "user", "content": "<query>"}]
            text = engine.apply_chat_template(messages)
            prompt = text[text.index("<query>") :].replace("<query>", prompt, 1)
            args.ignore_chat_template = True
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
    command_main(main)
