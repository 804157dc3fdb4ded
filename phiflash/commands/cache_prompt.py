"""`phiflash cache-prompt`: the command over :func:`phiflash_mlx.cache_prompt.cache_prompt`."""

from __future__ import annotations

import argparse
import sys

from phiflash.console import command_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash cache-prompt",
        description="Pre-process a prompt and save the model state, like mlx_lm.cache_prompt. "
        "Reuse it with `phiflash generate --prompt-cache-file FILE --prompt REST`, where the "
        "new prompt continues the cached one (a Mamba state cannot be rewound).",
    )
    p.add_argument("--model", default=None, help="model dir (default: the bundled model)")
    p.add_argument("--prompt", "-p", required=True, help="prompt to cache ('-' = stdin)")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--ignore-chat-template", action="store_true")
    p.add_argument("--prompt-cache-file", required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    from phiflash.paths import resolve_model
    from phiflash_mlx.cache_prompt import cache_prompt

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    r = cache_prompt(
        resolve_model(args.model),
        prompt,
        args.prompt_cache_file,
        args.system_prompt,
        not args.ignore_chat_template,
    )
    print(
        f"Saved {r['tokens']} prompt tokens to {r['file']} "
        f"({r['tokens'] / max(r['seconds'], 1e-9):.1f} tokens-per-sec)"
    )
    return 0


if __name__ == "__main__":
    command_main(main)
