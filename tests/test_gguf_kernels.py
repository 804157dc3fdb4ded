"""The fork's ggml kernel patches against ggml's own reference code, called through ctypes.

``ggml_gemv_q4_0_8x8_q8_0`` is the decode matmul of every Q4_0 model on x86 (weights repacked
8x8). The fork's version (``phiflash-gemv-q4_0.h``) must give ggml's portable reference
(``..._generic``, unpatched) within float rounding, and exact integer sums: checked here on
random blocks, extreme activations, several widths, and the widths that fall back to ggml's
own kernel.

Patch 0004 runs the Mamba-1 scan op's state loop a vector at a time (AVX-512: 16 states,
AVX2 with FMA: 8) with ggml's vectorized exp. The op, run through a ggml graph, must give a
float64 reference (softplus, decay per state, readout), with a scalar tail where the states do
not fill a vector.

Patch 0003 makes the Q8_0 and Q6_K dot products (Q8_0 models' matmuls, the Q4_0 models' output
matrix) prefetch their weights 4 KB ahead. Those must still match ggml's reference, and a row
that ends just before an unmapped page must not fault (a prefetch past the end never does).
"""

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from phiflash_gguf.build import ensure_llama_cpp
from phiflash_gguf.kernels import (
    BLOCK_Q4_0X8,
    BLOCK_Q6_K,
    BLOCK_Q8_0,
    GEMV_Q4_0,
    QK8_0,
    QK_K,
    VEC_DOTS,
    load_ggml_cpu,
    q4_0x8_operands,
    q6_k_row,
    q8_0_row,
    q8_k_row,
    ssm_scan_op,
)


@pytest.fixture(scope="module")
def ggml_lib_dir():
    lc = ensure_llama_cpp()
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(lc.__file__).parent / "lib")


@pytest.fixture(scope="module")
def ggml_cpu(ggml_lib_dir):
    return load_ggml_cpu(ggml_lib_dir)


def _gemv(fn, n: int, rows: int, w, a) -> np.ndarray:
    out = np.full(rows, np.nan, np.float32)
    fn(n, out.ctypes.data, rows, w.ctypes.data, a.ctypes.data, 1, rows)
    return out


def _reference(n: int, rows: int, w, a) -> np.ndarray:
    """The same dot products in float64 from the block layout (ggml's repack of Q4_0)."""
    nb = n // QK8_0
    qs = w["qs"].reshape(rows // 8, nb, 2, 8, 8)  # group, block, byte half, row, byte
    nib = qs ^ 0x88  # back to unsigned q in [0, 15] per nibble, value q - 8
    lo = (nib & 0x0F).astype(np.int64) - 8  # weights j (byte half 0) and j + 8 (half 1)
    hi = (nib >> 4).astype(np.int64) - 8  # weights j + 16 and j + 24
    q = np.concatenate([lo[:, :, 0], lo[:, :, 1], hi[:, :, 0], hi[:, :, 1]], axis=-1)
    # q: group, block, row, 32 weights in order
    dots = np.einsum("gbrk,bk->gbr", q, a["qs"].astype(np.int64))
    w_d = w["d"].reshape(rows // 8, nb, 8).astype(np.float64)
    scale = w_d * a["d"].astype(np.float64)[None, :, None]
    return (dots * scale).sum(axis=1).reshape(rows)


@pytest.mark.parametrize("n", [32, 96, 3072, 8192])
def test_q4_0_gemv_matches_ggml_reference(ggml_cpu, n):
    rng = np.random.default_rng(n)
    rows = 136
    w, a = q4_0x8_operands(rng, n, rows)
    ours = _gemv(getattr(ggml_cpu, GEMV_Q4_0), n, rows, w, a)
    generic = _gemv(getattr(ggml_cpu, f"{GEMV_Q4_0}_generic"), n, rows, w, a)
    ref = _reference(n, rows, w, a)
    scale = np.abs(ref).max()
    assert np.abs(generic - ref).max() / scale < 1e-6  # the layout reading above is ggml's
    assert np.abs(ours - ref).max() / scale < 1e-6
    assert np.abs(ours - generic).max() / scale < 1e-6


@pytest.mark.parametrize("value", [127, -127, -128], ids=["max", "min", "int8-min"])
def test_q4_0_gemv_extreme_activations(ggml_cpu, value):
    """Saturated activations and all-15 / all-0 nibbles: no int16 overflow in the byte products."""
    rng = np.random.default_rng(7)
    n, rows = 256, 16
    w, a = q4_0x8_operands(rng, n, rows)
    a["qs"] = value
    w["qs"][::2] = 0x77  # q = 15 everywhere (stored as q ^ 8)
    w["qs"][1::2] = 0x88  # q = 0
    ours = _gemv(getattr(ggml_cpu, GEMV_Q4_0), n, rows, w, a)
    ref = _reference(n, rows, w, a)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


def test_q4_0_gemv_wide_rows_take_ggml_kernel(ggml_cpu):
    """Rows wider than the kernel's block buffers (1024 blocks) go to ggml's own kernel."""
    rng = np.random.default_rng(3)
    n, rows = 32 * 1056, 8
    w, a = q4_0x8_operands(rng, n, rows)
    ours = _gemv(getattr(ggml_cpu, GEMV_Q4_0), n, rows, w, a)
    ref = _reference(n, rows, w, a)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


ROWS = {  # vec_dot: (weight row builder, activation row builder, weight block dtype, its width)
    "ggml_vec_dot_q8_0_q8_0": (q8_0_row, q8_0_row, BLOCK_Q8_0, QK8_0),
    "ggml_vec_dot_q6_K_q8_K": (q6_k_row, q8_k_row, BLOCK_Q6_K, QK_K),
}


def _vec_dot(fn, n: int, x, y) -> float:
    out = np.full(1, np.nan, np.float32)
    fn(n, out.ctypes.data, 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
    return float(out[0])


class GuardedRow:
    """A weight row whose last byte sits just before a page that may not be read (PROT_NONE)."""

    def __init__(self, dtype: np.dtype, count: int):
        size = dtype.itemsize * count
        page = mmap.PAGESIZE
        self.mm = mmap.mmap(-1, (size // page + 2) * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        guard = base + (size // page + 1) * page
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(guard, page, 0) == 0  # PROT_NONE, os.strerror(ctypes.get_errno())
        self.row = np.frombuffer(self.mm, dtype, count, offset=guard - base - size)


@pytest.mark.parametrize("vec_dot", VEC_DOTS)
@pytest.mark.parametrize("n", [256, 3072, 8192])
def test_prefetching_vec_dot_matches_ggml_reference(ggml_cpu, vec_dot, n):
    rng = np.random.default_rng(n)
    make_x, make_y, _, _ = ROWS[vec_dot]
    for _ in range(8):
        x, y = make_x(rng, n), make_y(rng, n)
        ours = _vec_dot(getattr(ggml_cpu, vec_dot), n, x, y)
        generic = _vec_dot(getattr(ggml_cpu, f"{vec_dot}_generic"), n, x, y)
        assert abs(ours - generic) <= 1e-5 * max(abs(generic), 1e-3)


@pytest.mark.parametrize("vec_dot", VEC_DOTS)
def test_prefetch_past_the_last_row_does_not_fault(ggml_cpu, vec_dot):
    """The prefetch reaches 4 KB past the row; here that is an unreadable page."""
    rng = np.random.default_rng(5)
    n = 3072
    make_x, make_y, dtype, width = ROWS[vec_dot]
    guarded = GuardedRow(dtype, n // width)
    x = make_x(rng, n, out=guarded.row)
    y = make_y(rng, n)
    ours = _vec_dot(getattr(ggml_cpu, vec_dot), n, x, y)
    generic = _vec_dot(getattr(ggml_cpu, f"{vec_dot}_generic"), n, x, y)
    assert abs(ours - generic) <= 1e-5 * max(abs(generic), 1e-3)


def test_q4_0_gemv_prefetch_past_the_last_group_does_not_fault(ggml_cpu):
    rng = np.random.default_rng(6)
    n, rows = 3072, 16
    w, a = q4_0x8_operands(rng, n, rows)
    guarded = GuardedRow(BLOCK_Q4_0X8, len(w))
    guarded.row[:] = w
    ours = _gemv(getattr(ggml_cpu, GEMV_Q4_0), n, rows, guarded.row, a)
    ref = _reference(n, rows, w, a)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


def _scan_reference(s, x, dt, A, B, C):
    """The Mamba-1 scan in float64: softplus(dt) as ggml computes it, then per token
    s = s exp(dt A) + dt x B and y = s . C."""
    s = s.astype(np.float64)
    dt = dt.astype(np.float64)
    dt = np.where(dt > 20.0, dt, np.log1p(np.exp(dt)))
    y = np.empty(x.shape)
    for t in range(x.shape[0]):
        s = s * np.exp(dt[t][:, None] * A) + (dt[t] * x[t])[:, None] * B[t][None, :]
        y[t] = s @ C[t]
    return y, s


@pytest.mark.parametrize("T, d, n", [(7, 64, 16), (33, 24, 16), (5, 10, 12), (3, 8, 4)])
def test_mamba1_scan_op_matches_reference(ggml_lib_dir, T, d, n):
    """16 states (a whole AVX-512 vector, two AVX2 vectors), 12 (a vector and a tail on AVX2,
    all tail on AVX-512) and 4 (all tail), on 1 and 2 threads."""
    rng = np.random.default_rng(T * d + n)
    s = rng.normal(0, 0.5, (d, n)).astype(np.float32)
    x = rng.normal(0, 1, (T, d)).astype(np.float32)
    dt = rng.normal(-2, 2, (T, d)).astype(np.float32)  # softplus from ~0 to ~4 (and past 20)
    dt[0, 0] = 25.0
    A = -np.exp(rng.normal(0, 1, (d, n))).astype(np.float32)
    B = rng.normal(0, 1, (T, n)).astype(np.float32)
    C = rng.normal(0, 1, (T, n)).astype(np.float32)
    want_y, want_s = _scan_reference(s, x, dt, A, B, C)
    for threads in (1, 2):
        y, last = ssm_scan_op(ggml_lib_dir, s, x, dt, A, B, C, threads)
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5 * np.abs(want_y).max())
        np.testing.assert_allclose(last, want_s, rtol=1e-5, atol=1e-5 * np.abs(want_s).max())
