"""Use the system OpenBLAS for MLX's CPU matmuls on Linux when it is installed.

MLX's Linux CPU wheel links a bundled reference BLAS (a few GFLOP/s). Loading Debian's
OpenBLAS (package libopenblas0-pthread) with RTLD_GLOBAL before mlx is imported makes MLX's
cblas_* calls resolve to it (fp32 matmul 2 -> 85 GFLOP/s, prefill 14.5x, measured on the
2-core machine; benchmarks/bench_cpu_blas.py). Must run before ``import mlx``;
``PHIFLASH_NO_OPENBLAS=1`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

status = "not tried"


def preload_openblas() -> str:
    """Load OpenBLAS globally if possible; returns a short status string."""
    global status
    if status != "not tried":
        return status
    if not sys.platform.startswith("linux"):
        status = "not needed (not Linux)"
    elif os.environ.get("PHIFLASH_NO_OPENBLAS") == "1":
        status = "off (PHIFLASH_NO_OPENBLAS=1)"
    elif "mlx.core" in sys.modules:
        status = "not loaded (mlx was imported first)"
    else:
        status = "not found (apt-get install libopenblas0-pthread for fast CPU prefill)"
        for path in _CANDIDATES:
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    status = f"system OpenBLAS ({path})"
                    break
                except OSError:
                    continue
    return status
