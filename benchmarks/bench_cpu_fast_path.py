"""Where MLX has no GPU: MLX 4-bit against the GGUF engine's Q4_0, full size, random weights.

The number behind `phiflash pull`'s choice of a GGUF on such a machine and the notice that
generate / chat / serve print for an MLX quantized model there. Both models have the real
config (3.85B parameters, vocab 200064) with random weights, in the same run:

* MLX: built in memory, cast to bf16 and quantized by the converter's own 4-bit recipe (group
  64), then mlx-lm's ``generate_step`` decodes from a cache filled to ``--ctx`` tokens;
* GGUF: a Q4_0 file written by ``bench_gguf_cpu.write_sambay`` (embedding Q6_K, Mamba
  ``x_proj``/``dt_proj`` Q8_0, as ``convert-gguf`` makes them), decoded one token at a time on
  the fork in a child process after ``--ctx`` tokens of prompt.

    .venv/bin/python benchmarks/bench_cpu_fast_path.py --ctx 64 --mlx-tokens 4 --gguf-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
from _common import machine_line


def gguf_q4_0(ctx: int, n: int, threads: int, folder: Path) -> float:
    from bench_gguf_cpu import Model, write_sambay

    path = folder / "sambay-random-Q4_0.gguf"
    write_sambay(path, "q4_0")
    model = Model(path, ctx + n + 8, threads, folder / "gguf.log", arch="sambay")
    try:
        model("fill", n=ctx)
        times = [model("step") for _ in range(n)]
    finally:
        model.close()
        path.unlink()
    return len(times) / sum(times)


def mlx_4bit(ctx: int, n: int) -> float:
    """Decode tok/s of the real config quantized to 4 bits by the converter's own recipe.

    The random weights are cast and quantized lazily and evaluated one layer at a time, so the
    peak is about the 4-bit model (2.2 GB) plus one layer in float32, not the 7.7 GB of bf16."""
    import mlx.core as mx
    from bench_mlx import decode_tps, ours_model
    from mlx.utils import tree_flatten

    from phiflash.quantize.convert import quantize_model
    from phiflash_mlx.model import keeps_fp32

    model = ours_model(False)
    params = tree_flatten(model.parameters())
    model.load_weights([(k, v if keeps_fp32(k) else v.astype(mx.bfloat16)) for k, v in params])
    del params
    quantize_model(model, q_bits=4, q_group_size=64)
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    return decode_tps(model, ctx, n, mx.bfloat16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ctx", type=int, default=64, help="context before the timed steps")
    p.add_argument("--mlx-tokens", type=int, default=4, help="MLX decode steps (slow)")
    p.add_argument("--gguf-tokens", type=int, default=16, help="GGUF decode steps")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)
    import mlx.core as mx

    device = str(mx.default_device())
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        gguf = gguf_q4_0(args.ctx, args.gguf_tokens, args.threads, Path(tmp))
    mlx = mlx_4bit(args.ctx, args.mlx_tokens)
    out = {
        "machine": machine_line(),
        "mlx_device": device,
        "ctx": args.ctx,
        "gguf_q4_0_tok_s": round(gguf, 3),
        "mlx_4bit_tok_s": round(mlx, 4),
        "ratio_gguf_over_mlx": round(gguf / mlx, 1),
    }
    print(
        f"{out['machine']}; MLX on {device}, context {args.ctx}\n"
        f"GGUF Q4_0 (fork): {gguf:.2f} tok/s\nMLX 4-bit: {mlx:.4f} tok/s\n"
        f"GGUF / MLX: {gguf / mlx:.0f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
