"""Batch-1 decode, SambaY against mlx-lm's phi3, in alternating rounds: a ratio that holds
when the machine's speed does not.

On a GPU, decode at short context is bound by the host (``profile_decode.py``'s split: the
device waits for the next token's kernels, not the other way round), and its speed moves
between runs: two 4-bit runs on H100 machines fourteen minutes apart read 278 and 123 tok/s
for phi3. ``bench_mlx.py`` times each model once, one after the other; here both
models (and SambaY's per-layer decode, the whole step's baseline, and its decode without the
Mamba step kernels, theirs) stay loaded and decode in rounds, the order turning each round,
and the table gives each one's median tok/s and the median and quartiles of the per-round
ratios. Models and caches as ``bench_mlx.py`` builds
them (full size, random weights, caches filled with random K/V and states, mlx-lm's
``generate_step``).

    python benchmarks/bench_decode_rounds.py --quant 4bit --contexts 1024 32768 --rounds 9
    python benchmarks/bench_decode_rounds.py --quick --rounds 2 --gen-tokens 8   # any device
"""

from __future__ import annotations

import argparse
import json
import sys

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
import numpy as np
from _common import paths_off
from bench_mlx import DECODE_LABELS, decode_tps, ours_model, phi3_model, prepare

from phiflash_mlx import model as model_mod

PER_LAYER = "sambay" + DECODE_LABELS["per-layer"]  # bench_mlx.py's row name
NO_KERNELS = "sambay without step kernels"
VARIANTS = ("phi3", "sambay", PER_LAYER, NO_KERNELS)
FLAGS_OFF = {PER_LAYER: ["WHOLE_STEP_DECODE"], NO_KERNELS: ["STEP_KERNELS"]}


def tps(models: dict, name: str, ctx: int, n: int) -> float:
    with paths_off(model_mod, *FLAGS_OFF.get(name, [])):
        return decode_tps(models.get(name, models["sambay"]), ctx, n, mx.bfloat16)


def quartiles(x) -> str:
    q1, q2, q3 = np.percentile(x, [25, 50, 75])
    return f"{q2:.2f}x ({q1:.2f}-{q3:.2f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quant", default="4bit", choices=("bf16", "8bit", "4bit"))
    p.add_argument("--contexts", nargs="+", type=int, default=[1024])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="small widths, any device")
    p.add_argument("--out", default=None, help="write every round's tok/s as JSON here")
    a = p.parse_args(argv)
    print(json.dumps({"mlx": mx.__version__, "device": str(mx.default_device()), **vars(a)}))

    models = {}
    for name, make in (("phi3", phi3_model), ("sambay", ours_model)):
        models[name] = make(a.quick)
        prepare(models[name], a.quant)
    for name in VARIANTS:  # warm-up: traces the compiled steps
        tps(models, name, 256, 16)

    rounds = {}
    for ctx in a.contexts:
        runs = rounds[ctx] = {name: [] for name in VARIANTS}
        for r in range(a.rounds):
            for name in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                runs[name].append(tps(models, name, ctx, a.gen_tokens))
            print(json.dumps({"ctx": ctx, "round": r, **{k: v[-1] for k, v in runs.items()}}))
            sys.stdout.flush()

    print(f"\n{a.quant}, {a.rounds} rounds of {a.gen_tokens} tokens, medians (quartiles)")
    head = ["context", "phi3 tok/s", "SambaY tok/s", "per-layer tok/s", "no-kernels tok/s"]
    head += ["SambaY / phi3", "whole / per-layer", "kernels / none"]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for ctx, runs in rounds.items():
        tok = {k: np.array(v) for k, v in runs.items()}
        cells = [f"{np.median(tok[k]):.0f}" for k in VARIANTS]
        for a_, b_ in (("sambay", "phi3"), ("sambay", PER_LAYER), ("sambay", NO_KERNELS)):
            cells.append(quartiles(tok[a_] / tok[b_]))
        print(f"| {ctx} | " + " | ".join(cells) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
