"""Host time per primitive, by kind: what one more primitive in a decode step costs the CPU.

Decode at short context on a GPU is bound by the host (``profile_decode.py``): the device waits
while the CPU builds a token's graph and encodes its kernels. This times chains of N primitives
of one kind on a tiny array (device time negligible), split as a decode step is: building the
graph (Python), ``mx.async_eval`` (the host encoding the kernels), and the wait for the device.
Each row is the median of ``--repeat`` chains, per primitive, in microseconds.

    python benchmarks/profile_host_ops.py [--n 400] [--repeat 30]
"""

import argparse
import statistics
import time

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
import mlx.nn as nn


def chains(n: int) -> dict:
    """name -> fn(x) applying n primitives of that kind to x [1, 1, 256] bf16."""
    w = mx.random.normal((256, 256)).astype(mx.bfloat16)
    qw, qs, qb = mx.quantize(w, group_size=64, bits=4)
    nw = mx.ones((256,), mx.bfloat16)
    mx.eval(w, qw, qs, qb, nw)
    fused = mx.compile(lambda x: (nn.silu(x.astype(mx.float32)) * 0.5 + 0.25).astype(x.dtype))
    fused_shapeless = mx.compile(
        lambda x: (nn.silu(x.astype(mx.float32)) * 0.5 + 0.25).astype(x.dtype), shapeless=True
    )

    def rep(f, per_step: int = 1):
        def run(x):
            for _ in range(n):
                x = f(x)
            return x

        run.primitives = n * per_step
        return run

    def views(x):
        for i in range(n):
            x = x.reshape(1, 256, 1) if i % 2 == 0 else x.reshape(1, 1, 256)
        return x + 1

    views.primitives = n

    return {
        "view (reshape)": views,
        "slice + concat (per primitive: 3 a step)": rep(
            lambda x: mx.concatenate([x[..., :128], x[..., 128:]], -1), per_step=3
        ),
        "elementwise (one op)": rep(lambda x: x * 0.5),
        "compiled fused elementwise": rep(fused),
        "compiled fused, shapeless": rep(fused_shapeless),
        "rms_norm (fast)": rep(lambda x: mx.fast.rms_norm(x, nw, 1e-5)),
        "sum (reduction) + add": rep(lambda x: x + x.sum(-1, keepdims=True)),
        "matmul 256x256": rep(lambda x: x @ w),
        "quantized matmul 4-bit 256x256": rep(
            lambda x: mx.quantized_matmul(x, qw, qs, qb, transpose=True, group_size=64, bits=4)
        ),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="primitives per chain")
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args()
    print(f"MLX {mx.__version__}, device {mx.default_device()}, {a.n} primitives a chain")
    x = mx.random.normal((1, 1, 256)).astype(mx.bfloat16)
    mx.eval(x)
    print("| primitive | build us | async_eval us | wait us | total us |\n|---|---|---|---|---|")
    for name, fn in chains(a.n).items():
        mx.eval(fn(x))  # trace, compile kernels
        rows = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            y = fn(x)
            t1 = time.perf_counter()
            mx.async_eval(y)
            t2 = time.perf_counter()
            mx.eval(y)
            t3 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, t3 - t2))
        b, e, w = (statistics.median(r[i] for r in rows) * 1e6 / fn.primitives for i in range(3))
        print(f"| {name} | {b:.2f} | {e:.2f} | {w:.2f} | {b + e + w:.2f} |")


if __name__ == "__main__":
    main()
