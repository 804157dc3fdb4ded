"""ctypes access to ggml's CPU kernels that the fork patches, for kernel tests and benchmarks.

ggml's quantized blocks as numpy dtypes (the layouts of ``ggml-common.h`` and of the 8x8
repack of Q4_0), random operands in those layouts, and :func:`load_ggml_cpu`, which opens a
``libggml-cpu.so`` and declares the signatures of the patched kernels and of ggml's portable
``_generic`` versions of them.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

QK8_0 = 32  # weights per Q4_0 / Q8_0 block
QK_K = 256  # weights per K-quant block

BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", QK8_0)])
BLOCK_Q4_0X8 = np.dtype([("d", "<f2", 8), ("qs", "u1", 128)])  # 8 rows' blocks, interleaved
BLOCK_Q6_K = np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")])
BLOCK_Q8_K = np.dtype([("d", "<f4"), ("qs", "i1", QK_K), ("bsums", "<i2", 16)])

# void gemv(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc)
GEMV_ARGS = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
GEMV_ARGS += [ctypes.c_int, ctypes.c_int]
# void vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y,
#              size_t by, int nrc)
VEC_DOT_ARGS = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
VEC_DOT_ARGS += [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

GEMV_Q4_0 = "ggml_gemv_q4_0_8x8_q8_0"
VEC_DOTS = ("ggml_vec_dot_q8_0_q8_0", "ggml_vec_dot_q6_K_q8_K")


def load_ggml_cpu(lib_dir: Path) -> ctypes.CDLL:
    """``lib_dir/libggml-cpu.so``, initialised, with the kernels above and their ``_generic``."""
    lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-cpu.so"))
    lib.ggml_cpu_init()
    for name, args in [(GEMV_Q4_0, GEMV_ARGS)] + [(v, VEC_DOT_ARGS) for v in VEC_DOTS]:
        for symbol in (name, f"{name}_generic"):
            fn = getattr(lib, symbol)
            fn.argtypes, fn.restype = args, None
    return lib


def q8_0_row(rng: np.random.Generator, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """A random Q8_0 row of ``n`` values (into ``out`` when given)."""
    row = np.zeros(n // QK8_0, BLOCK_Q8_0) if out is None else out
    row["d"] = rng.uniform(0.001, 0.1, row.shape).astype(np.float16)
    row["qs"] = rng.integers(-127, 128, row["qs"].shape, dtype=np.int8)
    return row


def q4_0x8_operands(rng: np.random.Generator, n: int, rows: int):
    """Random repacked Q4_0 weights (rows/8 groups of n/32 blocks) and one Q8_0 activation row."""
    w = np.zeros((rows // 8) * (n // QK8_0), BLOCK_Q4_0X8)
    w["d"] = rng.uniform(-0.02, 0.02, w["d"].shape).astype(np.float16)
    w["qs"] = rng.integers(0, 256, w["qs"].shape, dtype=np.uint8)
    return w, q8_0_row(rng, n)


def q6_k_row(rng: np.random.Generator, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """A random Q6_K row of ``n`` values (into ``out`` when given)."""
    row = np.zeros(n // QK_K, BLOCK_Q6_K) if out is None else out
    row["ql"] = rng.integers(0, 256, row["ql"].shape, dtype=np.uint8)
    row["qh"] = rng.integers(0, 256, row["qh"].shape, dtype=np.uint8)
    row["scales"] = rng.integers(-128, 128, row["scales"].shape, dtype=np.int8)
    row["d"] = rng.uniform(-0.01, 0.01, row.shape).astype(np.float16)
    return row


def q8_k_row(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random Q8_K activation row of ``n`` values, with its 16-value block sums."""
    row = np.zeros(n // QK_K, BLOCK_Q8_K)
    row["d"] = rng.uniform(0.001, 0.1, row.shape).astype(np.float32)
    row["qs"] = rng.integers(-127, 128, row["qs"].shape, dtype=np.int8)
    row["bsums"] = row["qs"].reshape(-1, 16, 16).astype(np.int32).sum(axis=-1)
    return row
