"""The fork's ggml kernel patches against ggml's own reference code, called through ctypes.

``ggml_gemv_q4_0_8x8_q8_0`` is the decode matmul of every Q4_0 model on x86 (weights repacked
8x8). The fork's version (``phiflash-gemv-q4_0.h``) must give ggml's portable reference
(``..._generic``, unpatched) within float rounding, and exact integer sums: checked here on
random blocks, extreme activations, several widths, and the widths that fall back to ggml's
own kernel.
"""

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

from phiflash_gguf.build import ensure_llama_cpp

QK = 32
BLOCK_Q4_0X8 = np.dtype([("d", "<f2", 8), ("qs", "u1", 128)])
BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", QK)])
GEMV_ARGS = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
]


@pytest.fixture(scope="module")
def ggml_cpu():
    lc = ensure_llama_cpp()
    lib_dir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(lc.__file__).parent / "lib")
    lib = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
    lib.ggml_cpu_init()
    for name in ("ggml_gemv_q4_0_8x8_q8_0", "ggml_gemv_q4_0_8x8_q8_0_generic"):
        getattr(lib, name).argtypes = GEMV_ARGS
        getattr(lib, name).restype = None
    return lib


def _blocks(rng, n: int, rows: int, a_range=(-127, 127)):
    """Random repacked Q4_0 weights (rows/8 groups of n/32 blocks) and one Q8_0 activation row."""
    w = np.zeros((rows // 8) * (n // QK), BLOCK_Q4_0X8)
    w["d"] = rng.uniform(-0.02, 0.02, w["d"].shape).astype(np.float16)
    w["qs"] = rng.integers(0, 256, w["qs"].shape, dtype=np.uint8)
    a = np.zeros(n // QK, BLOCK_Q8_0)
    a["d"] = rng.uniform(0.001, 0.1, a.shape).astype(np.float16)
    a["qs"] = rng.integers(a_range[0], a_range[1] + 1, a["qs"].shape, dtype=np.int8)
    return w, a


def _gemv(fn, n: int, rows: int, w, a) -> np.ndarray:
    out = np.full(rows, np.nan, np.float32)
    fn(n, out.ctypes.data, rows, w.ctypes.data, a.ctypes.data, 1, rows)
    return out


def _reference(n: int, rows: int, w, a) -> np.ndarray:
    """The same dot products in float64 from the block layout (ggml's repack of Q4_0)."""
    nb = n // QK
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
    w, a = _blocks(rng, n, rows)
    ours = _gemv(ggml_cpu.ggml_gemv_q4_0_8x8_q8_0, n, rows, w, a)
    generic = _gemv(ggml_cpu.ggml_gemv_q4_0_8x8_q8_0_generic, n, rows, w, a)
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
    w, a = _blocks(rng, n, rows)
    a["qs"] = value
    w["qs"][::2] = 0x77  # q = 15 everywhere (stored as q ^ 8)
    w["qs"][1::2] = 0x88  # q = 0
    ours = _gemv(ggml_cpu.ggml_gemv_q4_0_8x8_q8_0, n, rows, w, a)
    ref = _reference(n, rows, w, a)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


def test_q4_0_gemv_wide_rows_take_ggml_kernel(ggml_cpu):
    """Rows wider than the kernel's block buffers (1024 blocks) go to ggml's own kernel."""
    rng = np.random.default_rng(3)
    n, rows = 32 * 1056, 8
    w, a = _blocks(rng, n, rows)
    ours = _gemv(ggml_cpu.ggml_gemv_q4_0_8x8_q8_0, n, rows, w, a)
    ref = _reference(n, rows, w, a)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6
