"""Stock llama.cpp: what an unpatched llama-cpp-python does with our GGUF, and how fast it is.

Two builds of the *unpatched* pinned sdist, each cached under the sdist hash (the optimized
one also under the CPU tag, as it is compiled ``-march=native``):

- :func:`ensure_stock_lib`, for the refusal check: ``libllama.so`` compiled from the upstream
  ``vendor/llama.cpp/src`` at ``-O0`` (it only ever loads a model's header and refuses it; 188
  files, 4.5 minutes from scratch on a 2-core Intel Xeon VM, 2026-11-23), linked against the
  ``libggml*`` the fork wheel installed. The fork's ggml patches (``patches/0002``, ``0003``)
  change kernels' speed, not their results (bit-identical) nor any API, so model loading is
  upstream's.
- :func:`ensure_upstream_lib`, the benchmark's baseline: the whole library set (libllama and
  ggml) built from the unpatched sdist by the fork's own recipe (same CMake flags, same
  compiler), so Phi-4-mini runs on upstream kernels.

Pointing llama-cpp-python's own ``LLAMA_CPP_LIB_PATH`` at either directory gives the stock
``llama_cpp`` package: same Python code, upstream native code.

    python -m phiflash_gguf.stock              # the refusal library: build (or find), print its dir
    python -m phiflash_gguf.stock --upstream   # the optimized upstream library set
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phiflash_gguf.build import (
    SDIST_SHA256,
    UPSTREAM_VERSION,
    BuildError,
    _log,
    build_lock,
    build_wheel,
    cache_dir,
    cpu_tag,
    ensure_llama_cpp,
    fetch_sdist,
    prepare_source,
)

GGML_LIBS = ("libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0")
DEFINES = (
    "-DGGML_BACKEND_SHARED",
    "-DGGML_SHARED",
    "-DGGML_USE_CPU",
    "-DLLAMA_BUILD",
    "-DLLAMA_SHARED",
)


def stock_dir() -> Path:
    return cache_dir() / f"stock-{SDIST_SHA256[:16]}"


def _unpack_llama_src(sdist: Path, dst: Path) -> Path:
    """``vendor/llama.cpp`` of the sdist (src, include, ggml/include only), unpatched."""
    prefix = f"llama_cpp_python-{UPSTREAM_VERSION}/vendor/llama.cpp/"
    keep = tuple(prefix + d for d in ("src/", "include/", "ggml/include/"))
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(keep)]
        if not members:
            raise BuildError(f"{sdist.name} has no vendor/llama.cpp/src")
        tf.extractall(dst, members=members, filter="data")
    return dst / prefix


def _compile(args: tuple[list[str], Path]) -> str | None:
    cmd, obj = args
    if obj.is_file():  # compiled by an interrupted earlier run
        return None
    tmp = obj.with_suffix(".o.tmp")
    proc = subprocess.run([*cmd, "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        errs = [ln for ln in proc.stderr.splitlines() if "error" in ln] or ["(no message)"]
        return f"{obj.name}: {errs[0]}"
    tmp.rename(obj)
    return None


def ensure_stock_lib() -> Path:
    """Directory with a stock ``libllama.so`` and the installed ggml libraries beside it."""
    lib = stock_dir() / "lib"
    if (lib / "libllama.so").is_file():
        return lib
    with build_lock("stock", "the stock library"):
        if not (lib / "libllama.so").is_file():  # unless the process we waited for built it
            _build_stock(lib)
    return lib


def _build_stock(lib: Path) -> None:
    out = lib.parent
    lc = ensure_llama_cpp()
    ggml_dir = Path(lc.__file__).parent / "lib"
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        raise BuildError("no C++ compiler (c++ or g++) on PATH")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    root = _unpack_llama_src(fetch_sdist(), work)
    version_in = root / "src" / "llama-version.h.in"  # CMake's configure_file, by hand
    text = version_in.read_text().replace("@LLAMA_VERSION@", f"stock-{UPSTREAM_VERSION}")
    (root / "src" / "llama-version.h").write_text(text.replace("@LLAMA_BUILD_COMMIT@", "sdist"))
    sources = sorted((root / "src").rglob("*.cpp"))
    flags = ["-std=c++17", "-O0", "-fPIC", *DEFINES]
    flags += [f"-I{root / 'src'}", f"-I{root / 'include'}", f"-I{root / 'ggml' / 'include'}"]
    jobs = []
    for i, src in enumerate(sources):
        obj = work / "obj" / f"{i:03d}-{src.stem}.o"
        obj.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(([cxx, *flags, "-c", str(src)], obj))
    _log(f"compiling stock libllama ({len(jobs)} files, -O0) for the stock-refusal check")
    with ThreadPoolExecutor(os.cpu_count() or 2) as ex:
        errors = [e for e in ex.map(_compile, jobs) if e]
    if errors:
        raise BuildError(f"stock libllama: {len(errors)} file(s) failed, first: {errors[0]}")
    tmp = out / "lib.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name in GGML_LIBS:
        (tmp / name).symlink_to(ggml_dir / name)
    link = [cxx, "-shared", "-Wl,-soname,libllama.so.0", "-Wl,-rpath,$ORIGIN"]
    link += [str(o) for _, o in jobs]
    link += [f"-L{tmp}", "-l:libggml.so.0", "-l:libggml-base.so.0", "-o", str(tmp / "libllama.so")]
    proc = subprocess.run(link, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"stock libllama link failed: {proc.stderr.strip()[-500:]}")
    if lib.exists():
        shutil.rmtree(lib)
    tmp.rename(lib)
    shutil.rmtree(work)


def upstream_dir() -> Path:
    # compiled -march=native like the fork: one build per CPU
    return cache_dir() / f"upstream-{SDIST_SHA256[:16]}-{cpu_tag()}"


def ensure_upstream_lib() -> Path:
    """Directory with upstream's optimized ``libllama.so`` and ``libggml*`` (no fork patches)."""
    lib = upstream_dir() / "lib"
    if (lib / "libllama.so").is_file():
        return lib
    with build_lock("upstream", "upstream llama.cpp"):
        if not (lib / "libllama.so").is_file():
            _build_upstream(lib)
    return lib


def _build_upstream(lib: Path) -> None:
    out = lib.parent
    _log("building upstream llama-cpp-python (no fork patches) as the benchmark's baseline")
    pkg = prepare_source(fetch_sdist(), src_root=out / "src", fork=False)
    wheel = build_wheel(pkg, out / "wheel", build_dir=out / "skbuild")
    tmp = out / "lib.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith("llama_cpp/lib/") and not info.is_dir():
                target = tmp / Path(info.filename).name
                target.write_bytes(zf.read(info))
                target.chmod(0o755)
    if not (tmp / "libllama.so").is_file():
        raise BuildError(f"{wheel.name} has no llama_cpp/lib/libllama.so")
    if lib.exists():
        shutil.rmtree(lib)
    tmp.rename(lib)
    for d in ("src", "skbuild"):
        shutil.rmtree(out / d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phiflash_gguf.stock", description=__doc__)
    ap.add_argument(
        "--upstream",
        action="store_true",
        help="the optimized upstream library set (benchmark baseline), not the -O0 refusal lib",
    )
    args = ap.parse_args(argv)
    try:
        print(ensure_upstream_lib() if args.upstream else ensure_stock_lib())
    except (BuildError, OSError) as e:
        print(f"phiflash_gguf.stock: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
