"""``phiflash eval-math``: the command over :mod:`phiflash.tutor.evalmath`."""

from __future__ import annotations

import argparse
import json

from phiflash.engine import DEFAULT_MAX_TOKENS, Engine
from phiflash.paths import RESOLUTION_HELP
from phiflash.tutor.data import KINDS, dataset, kinds_arg
from phiflash.tutor.evalmath import DEFAULT_N, evaluate, format_table, greedy_params


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phiflash eval-math",
        description="Greedy accuracy on the held-out tutor math problems "
        "(answer read from the last \\boxed{}, compared as numbers).",
    )
    ap.add_argument(
        "--model",
        default=None,
        help=f"{RESOLUTION_HELP} (default: the bundled tutor model)",
    )
    ap.add_argument(
        "--engine",
        choices=("mlx", "gguf"),
        default=None,
        help="force an engine (default: from the model path)",
    )
    ap.add_argument("--n", type=int, default=DEFAULT_N, help=f"problems (default {DEFAULT_N})")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("--seed", type=int, default=None, help="problem seed (default: the split's)")
    ap.add_argument(
        "--kinds",
        type=kinds_arg,
        default=KINDS,
        help=f"comma-separated subset of {','.join(KINDS)} (default: all)",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"max new tokens per reply (default {DEFAULT_MAX_TOKENS})",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the full result here")
    ap.add_argument(
        "--show-failures",
        type=int,
        default=3,
        metavar="K",
        help="print the first K failures (default 3)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None, engine: Engine | None = None) -> int:
    args = _parser().parse_args(argv)
    kinds = args.kinds
    problems = dataset(args.split, args.n, args.seed, kinds=kinds)
    if engine is None:
        from phiflash.engines import open_engine

        engine = open_engine(args.model, args.engine)
    print(
        f"eval-math: {len(problems)} {args.split} problems, engine {engine.name} "
        f"({engine.quantization}), model {engine.model_path}, greedy, "
        f"max {args.max_tokens} tokens"
    )
    result = evaluate(
        engine,
        problems,
        greedy_params(args.max_tokens),
        progress=False if args.no_progress else None,
    )
    print(format_table(result))
    if result["seconds"] > 0:
        print(
            f"{result['tokens']} tokens in {result['seconds']:.1f} s "
            f"({result['tokens'] / result['seconds']:.1f} tok/s)"
        )
    for f in result["failures"][: args.show_failures]:
        reply = f["reply"] if len(f["reply"]) <= 400 else f["reply"][:400] + "…"
        print(
            f"\n[{f['kind']}] {f['question']}\n  gold {f['gold']!r}, got {f['pred']!r} "
            f"({f['finish_reason']})\n  {reply!r}"
        )
    if args.json_out:
        meta = {
            "model": engine.model_path,
            "engine": engine.name,
            "quantization": engine.quantization,
            "split": args.split,
            "seed": args.seed,
            "kinds": list(kinds),
            "max_tokens": args.max_tokens,
        }
        with open(args.json_out, "w") as fh:
            json.dump({**meta, **result}, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
