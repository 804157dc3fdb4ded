"""`phiflash generate`: mlx_lm.generate's flags and output, for either engine."""

from __future__ import annotations

import argparse
import sys

from phiflash.console import command_main
from phiflash.engine import DEFAULT_MAX_TOKENS, DEFAULT_TEMP, DEFAULT_TOP_P, GenerationParams
from phiflash.errors import PhiflashError


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
    command_main(main)
