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


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26


def ssm_scan_op(lib_dir: Path, s, x, dt, A, B, C, threads: int = 2):
    """ggml's ``ggml_ssm_scan`` (the Mamba-1 form: a decay per state) run on its CPU backend,
    one sequence: s [d, n] the incoming state, x and dt [T, d] (dt before softplus), A [d, n],
    B and C [T, n]. Returns (y [T, d], last state [d, n]) as float32."""
    lib_dir = Path(lib_dir)
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    base.ggml_init.argtypes, base.ggml_init.restype = [_InitParams], ptr
    base.ggml_new_tensor_4d.argtypes = [ptr, ctypes.c_int, i64, i64, i64, i64]
    base.ggml_new_tensor_4d.restype = ptr
    base.ggml_ssm_scan.argtypes, base.ggml_ssm_scan.restype = [ptr] * 8 + [i64], ptr
    base.ggml_new_graph.argtypes, base.ggml_new_graph.restype = [ptr], ptr
    base.ggml_build_forward_expand.argtypes, base.ggml_build_forward_expand.restype = (
        [ptr] * 2,
        None,
    )
    base.ggml_get_data.argtypes, base.ggml_get_data.restype = [ptr], ptr
    base.ggml_free.argtypes, base.ggml_free.restype = [ptr], None
    cpu.ggml_graph_compute_with_ctx.argtypes = [ptr, ptr, ctypes.c_int]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int

    T, d = x.shape
    n = A.shape[1]
    data = 4 * (3 * T * d + 3 * d * n + 2 * T * n)  # float32 inputs and the op's output
    ctx = base.ggml_init(_InitParams((16 << 20) + 2 * data, None, False))  # + graph, headers
    try:

        def tensor(array, ne, kind=GGML_TYPE_F32):
            t = base.ggml_new_tensor_4d(ctx, kind, *ne)
            dtype = np.float32 if kind == GGML_TYPE_F32 else np.int32
            data = np.ascontiguousarray(array, dtype)
            ctypes.memmove(base.ggml_get_data(t), data.ctypes.data, data.nbytes)
            return t

        # llama.cpp's Mamba-1 layout: heads = channels of one dimension each, one group
        ts = tensor(s, (n, 1, d, 1))
        tx = tensor(x, (1, d, T, 1))
        tdt = tensor(dt, (d, T, 1, 1))
        tA = tensor(A, (n, d, 1, 1))
        tB = tensor(B, (n, 1, T, 1))
        tC = tensor(C, (n, 1, T, 1))
        ids = tensor(np.zeros(1), (1, 1, 1, 1), GGML_TYPE_I32)
        out = base.ggml_ssm_scan(ctx, ts, tx, tdt, tA, tB, tC, ids, 1)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, out)
        if cpu.ggml_graph_compute_with_ctx(ctx, graph, threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")
        flat = np.empty(T * d + d * n, np.float32)
        ctypes.memmove(flat.ctypes.data, base.ggml_get_data(out), flat.nbytes)
    finally:
        base.ggml_free(ctx)
    return flat[: T * d].reshape(T, d), flat[T * d :].reshape(d, n)
