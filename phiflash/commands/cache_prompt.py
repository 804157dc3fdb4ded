"""`phiflash cache-prompt`: the command over :func:`phiflash_mlx.cache_prompt.cache_prompt`."""

from __future__ import annotations

import argparse

from phiflash.commands.generate import KV_BITS_REFUSAL, check_utf8, read_prompt
from phiflash.console import command_main
from phiflash.errors import InvalidParamsError
from phiflash.paths import RESOLUTION_HELP


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash cache-prompt",
        description="Pre-process a prompt and save the model state, like mlx_lm.cache_prompt. "
        "Reuse it with `phiflash generate --prompt-cache-file FILE --prompt REST` (or stock "
        "`mlx_lm.generate --prompt-cache-file FILE`), where the new prompt continues the cached "
        "one (a Mamba state cannot be rewound).",
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"MLX model: {RESOLUTION_HELP} (default: the bundled tutor model)",
    )
    p.add_argument("--prompt", "-p", required=True, help="prompt to cache ('-' = stdin)")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--ignore-chat-template", action="store_true")
    p.add_argument("--prompt-cache-file", required=True, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="replace an existing --prompt-cache-file")
    p.add_argument(
        "--kv-bits",
        type=int,
        default=None,
        help="KV-cache quantization (mlx_lm's flag): not supported for SambaY, refused",
    )
    args = p.parse_args(argv)
    if args.kv_bits is not None:
        raise InvalidParamsError(KV_BITS_REFUSAL)
    from phiflash.store import find_model
    from phiflash_mlx.cache_prompt import cache_prompt

    prompt = read_prompt(args.prompt)
    check_utf8(args.system_prompt, "--system-prompt")
    r = cache_prompt(
        find_model(args.model, "mlx"),
        prompt,
        args.prompt_cache_file,
        args.system_prompt,
        not args.ignore_chat_template,
        model_name=args.model,
        force=args.force,
    )
    print(
        f"Saved {r['tokens']} prompt tokens to {r['file']} "
        f"({r['tokens'] / max(r['seconds'], 1e-9):.1f} tokens-per-sec)"
    )
    return 0


if __name__ == "__main__":
    command_main(main)
