"""The fork's Q4_0 decode kernel against upstream's, alone: ``ggml_gemv_q4_0_8x8_q8_0``.

Loads ``libggml-cpu.so`` of the fork wheel and of upstream llama.cpp built by the same recipe
(``python -m phiflash_gguf.stock --upstream``) into one process and calls each library's
kernel through ctypes on the same repacked Q4_0 weights and Q8_0 activations, alternately, in
rounds. With ``--threads 2`` the rows are split in two halves run by two Python threads (ctypes
drops the GIL), as ggml splits a matmul. Shapes are the real model's decode matmuls: a matrix
bigger than the last-level cache reads from memory (``--rows``), a smaller one (``--cache-rows``,
14 MB) stays in L3 and shows how much the arithmetic alone allows. (An L2-sized matrix takes
about as long as one ctypes call from Python, so it cannot be timed this way.) Prints GB/s of
weights read and the per-round ratio's median (fork over upstream speed), and checks both
kernels agree to 1e-6 first.

    python benchmarks/bench_gguf_gemv.py --threads 1 2 --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import seconds

from phiflash_gguf.kernels import GEMV_Q4_0, QK8_0, load_ggml_cpu, q4_0x8_operands


def load_gemv(lib_dir: Path):
    return getattr(load_ggml_cpu(lib_dir), GEMV_Q4_0)


def run(fn, pool, threads: int, n: int, rows: int, w, a, out) -> float:
    """Seconds for one GEMV over all ``rows``, split into ``threads`` contiguous parts."""
    bounds = np.linspace(0, rows // 8, threads + 1).astype(int) * 8
    group = w.itemsize * (n // QK8_0)  # bytes of one group of 8 rows

    def part(i):
        r0, r1 = int(bounds[i]), int(bounds[i + 1])
        fn(
            n,
            out.ctypes.data + 4 * r0,
            rows,
            w.ctypes.data + group * r0 // 8,
            a.ctypes.data,
            1,
            r1 - r0,
        )

    return seconds(lambda: list(pool.map(part, range(threads))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fork-lib", type=Path, default=None, help="default: the installed wheel's")
    ap.add_argument("--upstream-lib", type=Path, default=None, help="default: build or find it")
    ap.add_argument("--n", type=int, default=3072, help="row width (hidden size)")
    ap.add_argument("--rows", type=int, default=65536, help="rows of the from-memory case")
    ap.add_argument("--cache-rows", type=int, default=8192, help="rows of the in-L3 case")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)

    from phiflash_gguf.build import FORK_VERSION, build
    from phiflash_gguf.stock import ensure_upstream_lib

    if args.fork_lib is None:
        build()  # installs the fork wheel if needed, without importing llama_cpp
        spec = importlib.util.find_spec("llama_cpp")
        fork_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    else:
        fork_dir = args.fork_lib
    up_dir = args.upstream_lib or ensure_upstream_lib()
    fork, up = load_gemv(fork_dir), load_gemv(up_dir)
    print(f"fork: llama-cpp-python {FORK_VERSION}; upstream: 0.3.36 by the same recipe")
    # llama_cpp is not imported: each libggml-cpu is loaded once, by path, with its own symbols

    for rows, where in ((args.rows, "from memory"), (args.cache_rows, "in L3")):
        w, a = q4_0x8_operands(np.random.default_rng(0), args.n, rows)
        o_f, o_u = np.zeros(rows, np.float32), np.zeros(rows, np.float32)
        with ThreadPoolExecutor(max(args.threads)) as pool:
            run(fork, pool, 1, args.n, rows, w, a, o_f)
            run(up, pool, 1, args.n, rows, w, a, o_u)
            err = float(np.abs(o_f - o_u).max() / np.abs(o_u).max())
            if err > 1e-6:
                raise SystemExit(f"kernels disagree: {err:.2e} relative")
            mb = w.nbytes / 1e6
            reps = max(1, int(2e8 // w.nbytes))  # about 200 MB of reads per timing
            for t in args.threads:
                tf, tu = [], []
                for r in range(args.rounds):
                    pair = [(fork, tf), (up, tu)] if r % 2 == 0 else [(up, tu), (fork, tf)]
                    for fn, acc in pair:
                        acc.append(
                            sum(run(fn, pool, t, args.n, rows, w, a, o_f) for _ in range(reps))
                        )
                tf, tu = np.array(tf), np.array(tu)
                ratio = tu / tf
                read = reps * w.nbytes / 1e9
                q1, q3 = np.quantile(ratio, [0.25, 0.75])
                print(
                    f"{where:11s} {rows}x{args.n} ({mb:.0f} MB), {t} thread(s): "
                    f"fork {read / np.median(tf):.1f} GB/s, upstream {read / np.median(tu):.1f} "
                    f"GB/s, fork/upstream {np.median(ratio):.2f}x (quartiles {q1:.2f}-{q3:.2f}, "
                    f"{args.rounds} rounds)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
