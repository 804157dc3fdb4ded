"""``phiflash eval-math``: the command over :mod:`phiflash.tutor.evalmath`."""

from __future__ import annotations

import argparse
import json
import os

from phiflash.engine import DEFAULT_MAX_TOKENS, Engine
from phiflash.engines import add_engine_args
from phiflash.errors import PhiflashError
from phiflash.tutor.data import EVAL_SETS, KINDS, eval_set, kinds_arg
from phiflash.tutor.evalmath import (
    DEFAULT_N,
    evaluate,
    format_table,
    greedy_params,
    load_problems,
)


class EvalMathError(PhiflashError):
    """A bad eval-math argument."""


def sets_arg(text: str) -> tuple[str, ...]:
    """argparse type for ``--sets``: comma-separated eval sets."""
    sets = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in sets if s not in EVAL_SETS]
    if bad or not sets:
        raise argparse.ArgumentTypeError(
            f"unknown eval set {bad[0] if bad else text!r} (choose from {','.join(EVAL_SETS)})"
        )
    return sets


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phiflash eval-math",
        description="Greedy accuracy on the held-out tutor sets: problems, phrasings, "
        "follow-ups and refusals, reported apart (answer from the last \\boxed{}, graded "
        "by math-verify).",
    )
    add_engine_args(ap)
    ap.add_argument(
        "--sets",
        type=sets_arg,
        default=None,
        help=f"comma-separated eval sets (default: {','.join(EVAL_SETS)})",
    )
    ap.add_argument(
        "--problems",
        metavar="FILE",
        default=None,
        help="your own problems instead of the held-out sets: a JSON Lines file, one "
        '{"question": "whats 7*8", "answer": "56"} per line ("messages" for a conversation; '
        'answer null for a request the tutor should refuse); reported as the set "own"',
    )
    ap.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"per set (default {DEFAULT_N}; with --problems: the first N, default all)",
    )
    ap.add_argument("--seed", type=int, default=None, help="problem seed (default: the test one)")
    ap.add_argument(
        "--kinds",
        type=kinds_arg,
        default=None,
        help=f"keep only these kinds (comma-separated, of {','.join(KINDS)})",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"max new tokens per reply (default {DEFAULT_MAX_TOKENS})",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the full result here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json file")
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
    if args.n is not None and args.n < 1:
        raise EvalMathError(f"--n must be at least 1, not {args.n}")
    if args.json_out and os.path.exists(args.json_out) and not args.force:
        raise EvalMathError(f"{args.json_out} exists (pass --force to overwrite it)")
    if args.problems and (args.sets or args.seed is not None):
        raise EvalMathError("--problems replaces the held-out sets: drop --sets and --seed")
    if args.problems:
        problems = load_problems(args.problems)[: args.n]
        if args.kinds:
            problems = [p for p in problems if p["kind"] in args.kinds]
        sets = [f"own problems from {args.problems}"]
    else:
        sets = list(args.sets or EVAL_SETS)
        problems = []
        for name in sets:
            problems += eval_set(name, args.n or DEFAULT_N, args.seed, args.kinds)
    if not problems:
        where = args.problems or "the chosen --sets"
        raise EvalMathError(f"no problems: --kinds leaves none in {where}")
    if engine is None:
        from phiflash.engines import open_engine

        engine = open_engine(args.model, args.engine, mlx_dtype="auto")  # as the chat runs it
    print(
        f"eval-math: {len(problems)} test problems ({', '.join(sets)}), engine "
        f"{engine.name} ({engine.quantization}), model {engine.model_path}, greedy, "
        f"max {args.max_tokens} tokens, graded by math-verify"
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
            f"\n[{f['set']}/{f['kind']}] {f['question']}\n  gold {f['gold']!r}, got "
            f"{f['pred']!r} ({f['finish_reason']})\n  {reply!r}"
        )
    if args.json_out:
        meta = {
            "model": engine.model_path,
            "engine": engine.name,
            "quantization": engine.quantization,
            "sets": sets,
            "problems_file": args.problems,
            "n_per_set": args.n or (None if args.problems else DEFAULT_N),
            "seed": args.seed,
            "kinds": list(args.kinds) if args.kinds else None,
            "max_tokens": args.max_tokens,
        }
        tmp = f"{args.json_out}.tmp"
        with open(tmp, "w") as fh:
            json.dump({**meta, **result}, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, args.json_out)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
