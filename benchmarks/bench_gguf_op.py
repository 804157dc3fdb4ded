"""The fork's decode-time attention op on its own: one revision against another, in seconds.

A full-model decode benchmark at 16K needs minutes of prompt to fill the cache, and the step is
mostly weight kernels. This compiles ``op_harness.cpp`` around the op's source
(``phiflash_gguf/overlay/src/models/sambay-diff-attn.cpp``; for revisions from before that file,
fork rev 7 and older, the op's anonymous namespace in ``sambay.cpp``) and times it on the real
model's attention shapes: one F16 cache of N cells read by the global layer and the 7 cross-decoder
layers, a 256 MB stream standing in for each layer's weights between calls. With ``--ref REV``
the same harness is built from that git revision of the overlay too, and the two binaries run
alternately, round by round, so the ratio is measured in one run on one host.

    python benchmarks/bench_gguf_op.py --ref HEAD~1 --contexts 512 4096 16384

Needs g++, the fork wheel in ``.venv`` (its libggml-base) and the pinned sdist (ggml.h; from the
fork's build cache, fetched like the build does if missing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, real_config
from bench_gguf_cpu import FULL_KV_LAYERS

HERE = Path(__file__).resolve().parent
MODELS = "phiflash_gguf/overlay/src/models"
OP_FILES = ("sambay-diff-attn.h", "sambay-diff-attn.cpp")

# revisions where the op is the anonymous namespace of sambay.cpp: the names the harness uses
LEGACY_ADAPTER = """
inline int64_t n_chunks(int64_t n_kv) { return std::max<int64_t>(1, n_kv/DIFF_CHUNK_KEYS); }
inline int64_t partials_width(int64_t hd, int64_t nh) { return (2 + 2*hd)*nh; }
inline void partials_op(ggml_tensor * dst, int ith, int nth, void * ud) {
    diff_partials_op(dst, ith, nth, ud);
}
"""
LEGACY_PRELUDE = """#if defined(__x86_64__)
#include <immintrin.h>
#define SAMBAY_X86 1
#endif
"""


def _read(rev: str | None, path: str) -> str | None:
    """``path`` in the working tree (rev None) or at git revision ``rev``; None if absent."""
    if rev is None:
        f = ROOT / path
        return f.read_text() if f.is_file() else None
    r = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True
    )
    return r.stdout if r.returncode == 0 else None


def op_sources(rev: str | None) -> dict[str, str]:
    """The files the harness compiles for revision ``rev``: ``op_block.inc`` and what it
    includes."""
    files = {name: _read(rev, f"{MODELS}/{name}") for name in OP_FILES}
    if all(files.values()):
        return {**files, "op_block.inc": f'#include "{OP_FILES[1]}"\n'}
    model = _read(rev, f"{MODELS}/sambay.cpp")
    m = re.search(r"^namespace \{\n.*?^\} // namespace\n", model or "", re.S | re.M)
    if not m:
        raise SystemExit(f"bench_gguf_op: no decode op found at {rev or 'the working tree'}")
    block = LEGACY_PRELUDE + "namespace sambay_diff {\n" + m.group(0) + LEGACY_ADAPTER + "}\n"
    return {"op_block.inc": block}


def ggml_include(dst: Path) -> Path:
    """ggml's public headers, from the sdist the fork is built from."""
    from phiflash_gguf.build import SDIST_NAME, cache_dir, fetch_sdist

    sdist = cache_dir() / "sdist" / SDIST_NAME
    if not sdist.is_file():
        sdist = fetch_sdist()
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if "/vendor/llama.cpp/ggml/include/" in m.name]
        tf.extractall(dst, members=members, filter="data")
    return next(dst.rglob("ggml/include"))


def build(name: str, sources: dict[str, str], work: Path, inc: Path, lib: Path) -> Path:
    d = work / name
    d.mkdir()
    for fname, text in sources.items():
        (d / fname).write_text(text)
    (d / "op_harness.cpp").write_text((HERE / "op_harness.cpp").read_text())
    exe = d / "op_harness"
    cmd = ["g++", "-O3", "-std=c++17", f"-I{inc}", str(d / "op_harness.cpp"), "-o", str(exe)]
    cmd += [f"-L{lib}", "-lggml-base", "-lpthread", f"-Wl,-rpath,{lib}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_gguf_op: compiling {name} failed:\n{r.stderr[-3000:]}")
    return exe


def run_harness(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_gguf_op: {Path(cmd[0]).parent.name} failed: {r.stderr.strip()}")
    return r.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=None, help="git revision to compare against (e.g. HEAD~1)")
    ap.add_argument("--contexts", nargs="+", type=int, default=[512, 4096, 16384])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="repetitions per run (best is kept)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per build and context")
    args = ap.parse_args(argv)

    from phiflash_gguf.build import ensure_llama_cpp

    lib = Path(ensure_llama_cpp().__file__).parent / "lib"
    cfg = real_config()
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    shape = [hd, cfg["num_attention_heads"], cfg["num_key_value_heads"], FULL_KV_LAYERS]

    with tempfile.TemporaryDirectory(prefix="phiflash-op-") as tmp:
        work = Path(tmp)
        inc = ggml_include(work / "sdist")
        builds = {"this": build("this", op_sources(None), work, inc, lib)}
        if args.ref:
            builds[args.ref] = build("ref", op_sources(args.ref), work, inc, lib)
        names = list(builds)
        print(
            f"op: hd {hd}, {shape[1]} heads, {shape[2]} KV heads, {FULL_KV_LAYERS} layers, "
            f"{args.threads} threads; best of {args.reps} per run, {args.rounds} runs each"
        )
        for n in args.contexts:
            best = {b: [] for b in names}
            stream = []
            argv_n = [*map(str, shape), str(n), str(args.threads), str(args.reps)]
            for r in range(args.rounds):
                for b in names if r % 2 == 0 else names[::-1]:
                    out = json.loads(run_harness([str(builds[b]), *argv_n]))
                    best[b].append(out["best_s"])
                    stream.append(out["stream_gbs"])
            read_bytes = FULL_KV_LAYERS * out["kv_bytes"]
            cells = []
            for b in names:
                t = float(np.median(best[b]))
                cells.append(f"{b} {1e3 * t:.1f} ms ({read_bytes / t / 1e9:.1f} GB/s)")
            line = f"n_kv {n}: " + ", ".join(cells) + f"; stream {np.median(stream):.1f} GB/s"
            if args.ref:
                ratio = np.median(best[args.ref]) / np.median(best["this"])
                line += f"; this is {ratio:.2f}x faster"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
