"""`phiflash eval-quant`: how close a converted model stays to its reference.

Both models read the same tokens; at every position we compare the next-token distributions:
KL(reference || model) (mean and 99th percentile), top-1 agreement, and the perplexity of
each on the text. Any engine plugs in through a *logits source*: a callable that maps token
ids to per-position logits, ``[T, vocab]`` float32 (row t predicts token t+1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from phiflash.errors import ModelLoadError
from phiflash.paths import RESOLUTION_HELP

LogitsFn = Callable[[list[int]], np.ndarray]

# A short math-tutoring passage: the default --text (a real evaluation passes a longer file).
DEFAULT_TEXT = (
    "The teacher wrote a problem on the board: a train travels 120 miles in 2 hours, so its "
    "speed is 120 / 2 = 60 miles per hour. At the same speed, in 5 hours it travels 60 * 5 = "
    "300 miles. Next, we solve 3x + 7 = 22. Subtract 7 from both sides: 3x = 15. Divide by 3: "
    "x = 5. Check: 3 * 5 + 7 = 15 + 7 = 22, which is correct. The sum of the first ten "
    "positive integers is 10 * 11 / 2 = 55. A rectangle with sides 4 and 9 has area 36 and "
    "perimeter 2 * (4 + 9) = 26. If a shirt costs 40 dollars and is 25 percent off, the "
    "discount is 10 dollars and the price is 30 dollars. The answer is 30."
)


def mlx_logits(path, chunk: int = 512, float32: bool = False) -> LogitsFn:
    """Logits source for an MLX model dir (HF layout or converted, any quantization).
    ``float32`` runs float32 activations (unquantized weights upcast), which isolates the
    weights' error from bf16 rounding in the computation."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from phiflash_mlx.load import load_model

    model, _ = load_model(Path(path), dtype=mx.float32 if float32 else None)

    def logits(tokens: list[int]) -> np.ndarray:
        cache = make_prompt_cache(model)
        rows = []
        for s in range(0, len(tokens), chunk):
            out = model(mx.array(tokens[s : s + chunk])[None], cache=cache)[0]
            rows.append(np.array(out.astype(mx.float32)))
        return np.concatenate(rows, axis=0)

    return logits


def open_logits(path, float32: bool = False) -> LogitsFn:
    from phiflash.store import find_model

    path = find_model(path)  # local path > pulled model > Hugging Face cache > alias
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        from phiflash_gguf.engine import position_logits

        return position_logits(path)
    return mlx_logits(path, float32=float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, out: np.ndarray, tokens: list[int]) -> dict:
    """Metrics between two [T, vocab] logits arrays over the same tokens.

    A vocabulary padded differently (GGUF may drop padding rows) is compared on the common rows.
    """
    if ref.shape[0] != out.shape[0]:
        raise ValueError(f"{ref.shape[0]} reference positions vs {out.shape[0]} model positions")
    v = min(ref.shape[1], out.shape[1])
    lp_ref, lp = _log_softmax(ref[:, :v]), _log_softmax(out[:, :v])
    kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(axis=-1)
    kl = np.maximum(kl, 0.0)
    nxt = np.asarray(tokens[1:])
    t = np.arange(len(nxt))
    return {
        "positions": int(ref.shape[0]),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "top1_agreement": float((ref[:, :v].argmax(-1) == out[:, :v].argmax(-1)).mean()),
        "ppl_reference": float(np.exp(-lp_ref[t, nxt].mean())) if len(nxt) else float("nan"),
        "ppl_model": float(np.exp(-lp[t, nxt].mean())) if len(nxt) else float("nan"),
    }


def evaluate(
    reference,
    model,
    text: str | None = None,
    tokens: list[int] | None = None,
    max_tokens: int = 4096,
    float32: bool = False,
) -> dict:
    """Compare ``model`` (dir or .gguf) with ``reference`` (dir) over ``text`` (tokenized with
    the reference's tokenizer) or explicit ``tokens``."""
    if tokens is None:
        from phiflash.store import find_model
        from phiflash_mlx.load import load_tokenizer

        tok = load_tokenizer(find_model(reference, "mlx"))
        tokens = tok.encode(text if text is not None else DEFAULT_TEXT, add_special_tokens=False)
    tokens = list(tokens)[:max_tokens]
    if len(tokens) < 2:
        raise ModelLoadError("the text is too short: it needs at least 2 tokens")
    ref = open_logits(reference, float32)(tokens)
    out = open_logits(model, float32)(tokens)
    return {"reference": str(reference), "model": str(model), **compare_logits(ref, out, tokens)}


def format_report(r: dict) -> str:
    return "\n".join(
        [
            f"reference:        {r['reference']}",
            f"model:            {r['model']}",
            f"positions:        {r['positions']}",
            f"KL mean:          {r['kl_mean']:.6f}",
            f"KL p99:           {r['kl_p99']:.6f}",
            f"KL max:           {r['kl_max']:.6f}",
            f"top-1 agreement:  {100 * r['top1_agreement']:.2f}%",
            f"perplexity:       {r['ppl_model']:.4f} (reference {r['ppl_reference']:.4f})",
        ]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="phiflash eval-quant",
        description="Compare a converted model (MLX dir or .gguf) with its reference: "
        "KL divergence (mean, p99), top-1 agreement and perplexity over a text.",
    )
    p.add_argument(
        "--reference", required=True, help=f"reference model (e.g. bf16): {RESOLUTION_HELP}"
    )
    p.add_argument("--model", required=True, help=f"model to judge: {RESOLUTION_HELP}")
    p.add_argument("--text", default=None, help="UTF-8 text file (default: a built-in passage)")
    p.add_argument("--max-tokens", type=int, default=4096, help="use at most N tokens")
    p.add_argument(
        "--float32",
        action="store_true",
        help="compute in float32 (MLX models): measures the weights alone, without bf16 "
        "activation rounding",
    )
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = p.parse_args(argv)
    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"cannot read --text {args.text}: {e}") from e
    r = evaluate(args.reference, args.model, text, max_tokens=args.max_tokens, float32=args.float32)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    from phiflash.console import run_main

    sys.exit(run_main(main, sys.argv[1:]))
