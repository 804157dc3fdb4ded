"""CPU prefill with MLX's bundled reference BLAS vs the system OpenBLAS (Linux).

Runs the same measurement twice in subprocesses, once with PHIFLASH_NO_OPENBLAS=1, on a
mid-size random-weight SambaY (all real layer kinds, hidden 1024, 8 layers):

    python benchmarks/bench_cpu_blas.py [--tokens 512] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import seconds


def measure(tokens: int, dtype: str) -> dict:
    from phiflash.blas import preload_openblas

    status = preload_openblas()
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from phiflash_mlx.model import Model, ModelArgs

    args = ModelArgs(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=32064,
        sliding_window=512,
    )
    model = Model(args)
    if dtype == "bfloat16":
        model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    toks = mx.random.randint(0, args.vocab_size, (1, tokens))

    def run():
        cache = make_prompt_cache(model)
        model(toks[:, :-1], cache=cache)
        mx.eval([c.state for c in cache])
        mx.eval(model(toks[:, -1:], cache=cache))

    run()
    dt = seconds(run)
    return {"blas": status, "tokens": tokens, "dtype": dtype, "prompt_tok_s": tokens / dt}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.tokens, a.dtype)))
        return 0
    rows = []
    for off in ("1", "0"):
        env = dict(os.environ, PHIFLASH_NO_OPENBLAS=off)
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--tokens", str(a.tokens), "--dtype", a.dtype],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[1]["prompt_tok_s"] / rows[0]["prompt_tok_s"]
    print(f"OpenBLAS / reference BLAS prefill speed: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
