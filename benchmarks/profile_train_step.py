"""Where a training step of the tutor model spends its time: one micro-batch's forward and
backward, whole and with the selective scan or the attention replaced by a cheap stand-in of
the same shape (their cost is the difference), and the step under ``mx.compile``. On MLX's
CUDA backend the scan is the training kernels; ``--chunked`` adds the step with autodiff
through the portable chunked scan instead.

    python benchmarks/profile_train_step.py --batch 32 --length 256
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
import mlx.nn as nn
from _common import mlx_timed

from phiflash_mlx import model as M
from phiflash_mlx import train as T


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunked", action="store_true", help="also the chunked scan's step")
    ap.add_argument("--no-compile", action="store_true", help="skip the mx.compile row")
    a = ap.parse_args(argv)
    cfg = T.TrainConfig()
    model = T.init_model(T.model_args(cfg.model), 0, mx.float32)
    model.train()
    x = mx.random.randint(0, cfg.model["vocab_size"] - 1, (a.batch, a.length))
    m = mx.ones(x.shape)
    grad = nn.value_and_grad(model, T.loss_fn)
    tokens = a.batch * a.length
    print(f"device {mx.default_device()}, batch {a.batch} x {a.length} tokens", flush=True)

    def row(name: str, fn) -> None:
        s = mlx_timed(fn, a.repeat)
        print(f"{name:44s} {s * 1e3:9.1f} ms  {tokens / s:10.0f} tok/s", flush=True)

    def step():
        return grad(model, x, x, m)

    row("forward", lambda: T.loss_fn(model, x, x, m))
    row("forward + backward", step)
    scan = M.selective_scan
    if a.chunked:
        M.selective_scan = lambda *args, training=False: M.ssm_scan_chunked(*args)
        row("forward + backward, chunked scan", step)
    M.selective_scan = lambda u, dt, A, B, C, D, state, training=False: (
        u * dt + B.sum(-1, keepdims=True) * C.sum(-1, keepdims=True),
        state,
    )
    row("forward + backward, scan stubbed", step)
    M.selective_scan = scan
    attend = M.DiffAttention.attend
    M.DiffAttention.attend = lambda self, q, k, v, mask: q
    row("forward + backward, attention stubbed", step)
    M.DiffAttention.attend = attend
    if not a.no_compile:
        compiled = mx.compile(lambda x, m: grad(model, x, x, m))
        row("forward + backward, mx.compile", lambda: compiled(x, m))


if __name__ == "__main__":
    main()
