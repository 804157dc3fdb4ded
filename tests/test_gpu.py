"""The MLX model's GPU paths on a CUDA device: the fixture's float32 logits, with prompts through
the CUDA scan kernel, against golden; and the kernel against the portable chunked scan.

Skipped where MLX has no CUDA GPU (CI, laptops); run on a GPU machine with
``python -m pytest tests/test_gpu.py``.
"""

import mlx.core as mx
import numpy as np
import pytest
from test_mlx_model import rel_err, run_chunks, run_decode, run_prefill

from phiflash_mlx import model as model_mod

HAVE_CUDA = getattr(mx, "cuda", None) is not None and mx.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not HAVE_CUDA or mx.default_device() != mx.gpu, reason="needs MLX's CUDA backend on a GPU"
)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the prompt scans that go through the CUDA kernel."""
    calls = []
    kernel = model_mod.ssm_scan_cuda

    def counted(*args):
        calls.append(args[0].shape)
        return kernel(*args)

    monkeypatch.setattr(model_mod, "ssm_scan_cuda", counted)
    return calls


def test_fp32_logits_through_the_cuda_scan_match_golden(tiny_fp32, golden, kernel_calls):
    model, _ = tiny_fp32
    prompt = golden["prompt_ids"]
    assert rel_err(run_prefill(model, prompt), golden["logits_prefill"]) <= 1e-4
    assert kernel_calls, "the prompt did not take the CUDA scan kernel"
    got = run_chunks(model, prompt, golden["chunk_bounds"])
    assert rel_err(got, golden["logits_chunked"]) <= 1e-4
    got = run_decode(model, prompt, golden["decode_ids"])
    assert rel_err(got, golden["logits_decode"]) <= 1e-4


@pytest.mark.parametrize("T, d, n", [(1, 64, 16), (37, 256, 16), (2048, 5120, 16), (300, 96, 8)])
def test_cuda_scan_kernel_matches_the_chunked_scan(T, d, n):
    mx.random.seed(T + d)
    u = mx.random.normal((2, T, d))
    dt = mx.random.uniform(0.0, 0.1, (2, T, d))
    A = -mx.exp(mx.random.normal((d, n)))
    B, C = mx.random.normal((2, T, n)), mx.random.normal((2, T, n))
    D = mx.random.normal((d,))
    s0 = mx.random.normal((2, d, n)) * 0.1
    yk, sk = model_mod.ssm_scan_cuda(u, dt, A, B, C, D, s0)
    yc, sc = model_mod.ssm_scan_chunked(u, dt, A, B, C, D, s0)
    assert rel_err(np.array(yk), np.array(yc, np.float64)) <= 1e-4
    assert rel_err(np.array(sk), np.array(sc, np.float64)) <= 1e-4
