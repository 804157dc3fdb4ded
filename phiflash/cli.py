"""`phiflash` command dispatcher: each subcommand is a thin parser over a library call."""

from __future__ import annotations

import importlib
import sys

from phiflash.console import run_main

COMMANDS = {
    "generate": ("phiflash.commands.generate", "generate text (mlx_lm.generate's flags)"),
    "chat": ("phiflash.tui.app", "the terminal math tutor (Textual)"),
    "convert": ("phiflash.quantize.convert", "HF checkpoint -> MLX dir (bf16, 8/4-bit)"),
    "convert-gguf": ("phiflash.quantize.gguf_convert", "HF checkpoint -> GGUF file"),
    "eval-quant": ("phiflash.quantize.fidelity", "KL / top-1 / perplexity vs a reference"),
    "eval-math": ("phiflash.commands.eval_math", "accuracy on the held-out math problems"),
    "cache-prompt": ("phiflash.commands.cache_prompt", "save a prompt cache for reuse"),
    "serve": ("phiflash.commands.serve", "OpenAI-compatible server for a classroom"),
    "pull": ("phiflash.commands.pull", "download + convert a hub model for this machine"),
    "list": ("phiflash.commands.pull:list_main", "the pulled models"),
    "rm": ("phiflash.commands.pull:rm_main", "remove a pulled model"),
    "train": ("phiflash_mlx.train", "train a SambaY model from scratch (the tutor)"),
}


def _usage() -> str:
    lines = ["usage: phiflash <command> [options]", "", "commands:"]
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<14}{help_}")
    lines.append("")
    lines.append("Run `phiflash <command> --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from phiflash import __version__

        print(f"phiflash {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"phiflash: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _, func = COMMANDS[name][0].partition(":")  # "module" or "module:function"
    module = importlib.import_module(target)
    return run_main(getattr(module, func or "main"), rest)


if __name__ == "__main__":
    sys.exit(main())
