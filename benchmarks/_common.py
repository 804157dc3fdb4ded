"""What the benchmark scripts share: the project on the import path, the real model's config and
the quick sizes, timing, and a description of the machine for the results tables.

Scripts are run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path`` and they
import this module as ``_common``; importing it puts the repository first on the path too, so a
source tree works without an install.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIG = ROOT / "tests" / "fixtures" / "real-config" / "config.json"

# --quick shrinks a full-size model to these widths (all layer kinds and counts stay)
QUICK_SIZES = dict(
    hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4
)
QUICK_VOCAB = 4096

# instruction-set extensions worth naming in a results table (Linux /proc/cpuinfo names)
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
)


def use_project() -> None:
    """Import the project from this checkout: the repository first on ``sys.path`` and, when
    the package is not installed, ``quantize/`` under its installed name ``phiflash.quantize``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if "phiflash.quantize" not in sys.modules:
        try:
            import phiflash.quantize  # noqa: F401
        except ImportError:
            import quantize

            sys.modules["phiflash.quantize"] = quantize


use_project()


@contextmanager
def paths_off(module, *flags: str) -> Iterator[None]:
    """The model file ``module`` with the speed-path switches ``flags`` (``SCAN_TIME_CHUNKS``,
    ``BANDED_WINDOW_PREFILL``, ``WHOLE_STEP_DECODE``, ``STEP_KERNELS``) off, so its former paths
    run; set back as they were after."""
    before = {flag: getattr(module, flag) for flag in flags}
    for flag in flags:
        setattr(module, flag, False)
    try:
        yield
    finally:
        for flag, value in before.items():
            setattr(module, flag, value)


def real_config(quick: bool = False) -> dict:
    """Phi-4-mini-flash-reasoning's config.json, or with ``quick`` the same layers at the quick
    widths and vocabulary."""
    cfg = json.loads(REAL_CONFIG.read_text())
    if quick:
        cfg.update(QUICK_SIZES, vocab_size=QUICK_VOCAB)
    return cfg


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def mlx_timed(fn: Callable[[], object], reps: int = 5) -> float:
    """Seconds per call of ``fn`` (its result evaluated by MLX), after one untimed call."""
    import mlx.core as mx

    mx.eval(fn())
    mx.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) / reps


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what Python reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The extensions of :data:`SIMD_FLAGS` this CPU has (what ``-march=native`` builds use)."""
    from phiflash_gguf.build import cpu_flags

    have = set(cpu_flags().split())
    return [f for f in SIMD_FLAGS if f in have]


def machine_line() -> str:
    """One line for a results table: CPU model, core count and SIMD flags."""
    flags = " ".join(simd_flags()) or "unknown"
    return f"{cpu_name()}, {os.cpu_count()} CPUs, flags: {flags}"
