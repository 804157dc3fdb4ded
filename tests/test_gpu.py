"""The MLX model's GPU paths on a CUDA device: the fixture's float32 logits, with prompts through
the CUDA scan kernel and decode steps through the whole-step decode and the Mamba step kernels,
against golden, against the portable scan's and the compiled steps' on the same device; the
step kernels' self-check in bfloat16; and the kernel against the portable chunked scan on
random inputs.

MLX runs float32 matmuls as TF32 on CUDA by default (1.7e-3 relative on the fixture's prefill
logits on an H100, 2026-12-06), so the model comparisons run in a child process with
``MLX_ENABLE_TF32=0``.

Skipped where MLX has no CUDA GPU (CI, laptops); run on a GPU machine with
``python -m pytest tests/test_gpu.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_mlx_model import rel_err

from phiflash_mlx import model as model_mod
from phiflash_mlx import train as train_mod

TESTS = Path(__file__).resolve().parent
HAVE_CUDA = getattr(mx, "cuda", None) is not None and mx.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not HAVE_CUDA or mx.default_device() != mx.gpu, reason="needs MLX's CUDA backend on a GPU"
)

# in full float32: prefill, uneven chunks and decode steps against golden, how many prompt scans
# took the CUDA kernel and how many decode steps the whole-step path, and the prefill with the
# portable scan against the kernel's
GOLDEN_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mlx.core as mx
from conftest import TINY
import numpy as np
from test_mlx_model import rel_err, run_chunks, run_decode, run_prefill
from phiflash_mlx import load, model as model_mod

calls = []
kernel = model_mod.ssm_scan_cuda
def counted(*args):
    calls.append(1)
    return kernel(*args)
model_mod.ssm_scan_cuda = counted
whole = []
step = model_mod.WholeStep.__call__
def whole_counted(self, *args):
    out = step(self, *args)
    whole.append(out is not None)
    return out
model_mod.WholeStep.__call__ = whole_counted
steps = []
step_scan = model_mod.step_scan
def scan_counted(*args):  # runs when a decode function is traced
    steps.append(1)
    return step_scan(*args)
model_mod.step_scan = scan_counted
model, _ = load(TINY, dtype=mx.float32)
g = dict(np.load(TINY / "golden.npz"))
p = g["prompt_ids"]
prefill = run_prefill(model, p)
errs = {
    "prefill": rel_err(prefill, g["logits_prefill"]),
    "chunked": rel_err(run_chunks(model, p, g["chunk_bounds"]), g["logits_chunked"]),
    "decode": rel_err(run_decode(model, p, g["decode_ids"]), g["logits_decode"]),
    "kernel_calls": len(calls),
    "whole_steps": sum(whole),
    "step_kernel_traces": len(steps),
}
model_mod.STEP_KERNELS = False
plain, _ = load(TINY, dtype=mx.float32)
decode = run_decode(model, p, g["decode_ids"])
errs["kernels_vs_compiled_steps"] = rel_err(decode, run_decode(plain, p, g["decode_ids"]))
model_mod.STEP_KERNELS = True
model_mod.ssm_scan_cuda = model_mod.ssm_scan_chunked
errs["portable_vs_kernel"] = rel_err(run_prefill(model, p), prefill.astype(np.float64))
print(json.dumps(errs))
"""


def test_fp32_logits_through_the_cuda_scan_match_golden():
    env = dict(os.environ, MLX_ENABLE_TF32="0")
    proc = subprocess.run(
        [sys.executable, "-c", GOLDEN_CHILD, str(TESTS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert errs.pop("kernel_calls") > 0, "the prompts did not take the CUDA scan kernel"
    assert errs.pop("whole_steps") > 0, "no decode step took the whole-step path"
    assert errs.pop("step_kernel_traces") > 0, "no decode step took the step kernels"
    assert errs.pop("portable_vs_kernel") <= 1e-5, errs
    assert max(errs.values()) <= 1e-4, errs


def test_step_kernels_pass_their_self_check_in_every_dtype():
    for dtype in (mx.float32, mx.bfloat16, mx.float16):
        assert model_mod.step_kernels_backend(dtype) == "cuda", model_mod.step_kernel_note()


def random_scan(T: int, d: int, n: int, seed: int):
    """u, dt, A, B, C, D and the incoming state of a two-sequence scan."""
    mx.random.seed(seed)
    u = mx.random.normal((2, T, d))
    dt = mx.random.uniform(0.0, 0.1, (2, T, d))
    A = -mx.exp(mx.random.normal((d, n)))
    B, C = mx.random.normal((2, T, n)), mx.random.normal((2, T, n))
    D = mx.random.normal((d,))
    return u, dt, A, B, C, D, mx.random.normal((2, d, n)) * 0.1


@pytest.mark.parametrize(
    "T, d, n",
    [(1, 64, 16), (37, 256, 16), (2048, 5120, 16), (300, 96, 8), (1000, 64, 16), (130, 18, 8)],
)
def test_cuda_scan_kernel_matches_the_chunked_scan(T, d, n):
    """In time chunks ((2048, 5120): 7 chunks for two sequences; (1000, 64): 15 chunks, the
    last one shorter) and in one sequential pass ((37, 256): too short; (130, 18, 8): d n not
    a multiple of 32)."""
    u, dt, A, B, C, D, s0 = random_scan(T, d, n, seed=T + d)
    yk, sk = model_mod.ssm_scan_cuda(u, dt, A, B, C, D, s0)
    yc, sc = model_mod.ssm_scan_chunked(u, dt, A, B, C, D, s0)
    assert rel_err(np.array(yk), np.array(yc, np.float64)) <= 1e-4
    assert rel_err(np.array(sk), np.array(sc, np.float64)) <= 1e-4


@pytest.mark.parametrize("T, d, n", [(1, 32, 16), (37, 64, 16), (300, 96, 8), (1024, 512, 16)])
def test_training_scan_kernels_match_the_chunked_scans_gradient(T, d, n):
    """The training scan (forward and backward kernels) gives the outputs and the gradient of
    every input that autodiff through the portable chunked scan gives."""
    u, dt, A, B, C, D, s0 = random_scan(T, d, n, seed=T + d + n)
    wy, ws = mx.random.normal((2, T, d)), mx.random.normal((2, d, n))

    def loss(scan):
        def f(u, dt, A, B, C, D, s0):
            y, s = scan(u, dt, A, B, C, D, s0)
            return (y * wy).sum() + (s * ws).sum(), (y, s)

        return mx.value_and_grad(f, argnums=tuple(range(7)))

    (lk, (yk, sk)), gk = loss(model_mod.ssm_scan_cuda_train)(u, dt, A, B, C, D, s0)
    (lc, (yc, sc)), gc = loss(model_mod.ssm_scan_chunked)(u, dt, A, B, C, D, s0)
    assert rel_err(np.array(yk), np.array(yc, np.float64)) <= 1e-4
    assert rel_err(np.array(sk), np.array(sc, np.float64)) <= 1e-4
    for name, a, b in zip(("u", "dt", "A", "B", "C", "D", "state"), gk, gc):
        assert rel_err(np.array(a), np.array(b, np.float64)) <= 1e-3, name


def test_training_step_takes_the_scan_kernels(monkeypatch):
    """A training forward pass on the GPU scans with the training kernels, and its loss and
    gradient match the chunked scan's."""
    model = train_mod.init_model(train_mod.model_args(train_mod.TrainConfig().model), 0, mx.float32)
    model.train()
    x = mx.random.randint(0, 600, (4, 96))
    m = mx.ones(x.shape)
    grad = nn.value_and_grad(model, train_mod.loss_fn)
    calls = []
    kernel = model_mod.ssm_scan_cuda_train
    monkeypatch.setattr(model_mod, "ssm_scan_cuda_train", lambda *a: calls.append(1) or kernel(*a))
    lk, gk = grad(model, x, x, m)
    mx.eval(lk, gk)
    assert calls, "training did not take the scan kernels"
    monkeypatch.setattr(model_mod, "ssm_scan_cuda_train", model_mod.ssm_scan_chunked)
    lc, gc = grad(model, x, x, m)
    assert abs(lk.item() - lc.item()) <= 1e-4 * abs(lc.item())
    flat_c = dict(tree_flatten(gc))
    for k, v in tree_flatten(gk):
        assert rel_err(np.array(v), np.array(flat_c[k], np.float64)) <= 2e-3, k
