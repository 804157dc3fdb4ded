"""Build phiflash's SambaY-aware llama.cpp fork into the running venv.

Run as ``python -m phiflash_gguf.build`` (the Makefile's ``fork`` target).

Steps (each cached): download the pinned llama-cpp-python sdist from PyPI and check its
sha256; unpack it; copy ``overlay/`` over ``vendor/llama.cpp`` (new files under ``src/models/``
are compiled by llama.cpp's own ``models/*.cpp`` glob) and apply ``patches/*.patch`` with our own
unified-diff applier (:mod:`phiflash_gguf.udiff`, no ``patch`` binary); switch the package's
common library off and set the version to ``0.3.36+sambay.N``; build a wheel with
scikit-build-core; install it.

ggml compiles for the building CPU (``-march=native``), so a wheel built on an AVX-512 machine
would crash on an AVX2-only one. The wheel is therefore cached under the build key: the fork hash
(sdist hash + patches + overlay + this recipe) and a tag of the CPU's feature flags. A second
run with nothing changed returns in a second; another CPU builds its own wheel.

Environment: ``PHIFLASH_CACHE`` (default ``<repo>/.cache``) holds the download, the source tree,
the build dir and the wheels. For development, ``LLAMA_CPP_LIB_PATH`` pointing at a CMake-built
``libllama.so`` makes :func:`ensure_llama_cpp` skip the wheel (llama-cpp-python's own switch).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from phiflash_gguf import udiff

PKG_DIR = Path(__file__).resolve().parent
REPO_ROOT = PKG_DIR.parent
OVERLAY_DIR = PKG_DIR / "overlay"
PATCH_DIR = PKG_DIR / "patches"

UPSTREAM = "llama-cpp-python"
UPSTREAM_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{UPSTREAM_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
FORK_REV = 10  # bump on every change to the patch series or overlay
FORK_VERSION = f"{UPSTREAM_VERSION}+sambay.{FORK_REV}"
CMAKE_ARGS = "-DLLAVA_BUILD=OFF"
STAMP_NAME = ".phiflash-fork"
RECIPE = f"{FORK_VERSION}|{CMAKE_ARGS}|common-off|v1"


class BuildError(RuntimeError):
    pass


def cpu_flags() -> str:
    """The building CPU's instruction-set description, which ``-march=native`` compiles for:
    the ``flags`` (x86) or ``Features`` (Arm) line of /proc/cpuinfo on Linux, the CPU feature
    sysctls on macOS, else the machine and processor names Python reports."""
    system = platform.system()
    if system == "Linux":
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return " ".join(sorted(set(value.split())))
    elif system == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True).stdout
        except OSError:
            out = ""
        keys = ("machdep.cpu.brand_string", "machdep.cpu.features", "machdep.cpu.leaf7_features")
        keep = [ln for ln in out.splitlines() if ln.startswith((*keys, "hw.optional."))]
        if keep:
            return "\n".join(sorted(keep))
    return f"{platform.machine()} {platform.processor()}"


def cpu_tag() -> str:
    """Short hash of the machine type and :func:`cpu_flags`, in every -march=native cache key."""
    return hashlib.sha256(f"{platform.machine()}|{cpu_flags()}".encode()).hexdigest()[:8]


def cache_dir() -> Path:
    return Path(os.environ.get("PHIFLASH_CACHE", REPO_ROOT / ".cache")) / "phiflash_gguf"


def fork_files() -> list[Path]:
    files = sorted(p for p in OVERLAY_DIR.rglob("*") if p.is_file())
    files += sorted(PATCH_DIR.glob("*.patch"))
    return files


def fork_hash() -> str:
    """Hash of what the fork is built from: sdist, recipe, overlay and patches."""
    h = hashlib.sha256()
    h.update(RECIPE.encode())
    h.update(SDIST_SHA256.encode())
    for p in fork_files():
        h.update(str(p.relative_to(PKG_DIR)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_key() -> str:
    """The wheel's cache key and installed stamp: the fork hash and the CPU it was built for."""
    return f"{fork_hash()}-{cpu_tag()}"


def _log(msg: str) -> None:
    print(f"[phiflash fork] {msg}", flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(
    cmd: list[str],
    what: str,
    cwd: Path | None = None,
    env: dict | None = None,
    progress: bool = False,
) -> None:
    """Run ``cmd``; on failure raise BuildError naming ``what`` and the log file."""
    log = cache_dir() / "build.log"
    with open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(cmd)}\n")
        lf.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        last = 0.0
        assert proc.stdout is not None
        for line in proc.stdout:
            lf.write(line)
            s = line.strip()
            # ninja progress lines look like "[12/83] Building CXX object ..."
            if progress and s.startswith("[") and "/" in s.split("]")[0]:
                now = time.monotonic()
                if now - last > 10:
                    _log(f"  compiling {s.split(']')[0]}]")
                    last = now
        rc = proc.wait()
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc}); see {log}")


def installed_hash() -> str | None:
    """The build key stamped into the installed llama_cpp package, if it is our fork."""
    try:
        if importlib.metadata.version("llama_cpp_python") != FORK_VERSION:
            return None
        spec = importlib.util.find_spec("llama_cpp")
    except (importlib.metadata.PackageNotFoundError, ValueError, ImportError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    stamp = Path(list(spec.submodule_search_locations)[0]) / STAMP_NAME
    return stamp.read_text().strip() if stamp.is_file() else None


def fetch_sdist() -> Path:
    dl = cache_dir() / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / SDIST_NAME
    if not sdist.is_file():
        _log(f"downloading {UPSTREAM}=={UPSTREAM_VERSION} sdist from PyPI")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{UPSTREAM}=={UPSTREAM_VERSION}",
                "-d",
                str(dl),
            ],
            "sdist download",
        )
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise BuildError(f"{SDIST_NAME} sha256 mismatch (got {digest}, pinned {SDIST_SHA256})")
    return sdist


def prepare_source(sdist: Path, src_root: Path | None = None, fork: bool = True) -> Path:
    """Fresh unpacked sdist (in ``src_root``, default ``<cache>/src``) with the overlay and
    patches applied, or with none of them (``fork=False``: upstream llama.cpp built by the same
    recipe, the benchmark's baseline); returns the package root."""
    src_root = src_root or cache_dir() / "src"
    if src_root.exists():
        shutil.rmtree(src_root)
    src_root.mkdir(parents=True)
    _log("unpacking the sdist")
    with tarfile.open(sdist) as tf:
        tf.extractall(src_root, filter="data")
    pkg = src_root / f"llama_cpp_python-{UPSTREAM_VERSION}"
    vendor = pkg / "vendor" / "llama.cpp"
    if not vendor.is_dir():
        raise BuildError(f"{SDIST_NAME} has no vendor/llama.cpp")
    # the sdist keeps a git submodule pointer file that would confuse tools run inside it
    if (vendor / ".git").is_file():
        (vendor / ".git").unlink()

    overlay = sorted(p for p in OVERLAY_DIR.rglob("*") if p.is_file()) if fork else []
    for f in overlay:
        dst = vendor / f.relative_to(OVERLAY_DIR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    for patch in sorted(PATCH_DIR.glob("*.patch")) if fork else []:
        _log(f"applying {patch.name}")
        try:
            udiff.apply(patch, vendor)
        except udiff.PatchError as e:
            raise BuildError(str(e)) from None

    cml = pkg / "CMakeLists.txt"
    text = cml.read_text()
    old = 'set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'
    if old not in text:
        raise BuildError("llama-cpp-python CMakeLists.txt: LLAMA_BUILD_COMMON line not found")
    cml.write_text(text.replace(old, old.replace(" ON ", " OFF ")))

    if not fork:
        return pkg
    init = pkg / "llama_cpp" / "__init__.py"
    text = init.read_text()
    old = f'__version__ = "{UPSTREAM_VERSION}"'
    if old not in text:
        raise BuildError("llama_cpp/__init__.py: version line not found")
    init.write_text(text.replace(old, f'__version__ = "{FORK_VERSION}"'))
    (pkg / "llama_cpp" / STAMP_NAME).write_text(build_key() + "\n")
    return pkg


def build_wheel(pkg: Path, out_dir: Path, build_dir: Path | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = (env.get("CMAKE_ARGS", "") + " " + CMAKE_ARGS).strip()
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    # stable paths let ccache (if installed) reuse objects across rebuilds
    env.setdefault("CCACHE_BASEDIR", str(cache_dir()))
    env.setdefault("CCACHE_NOHASHDIR", "true")
    _log(f"building the wheel (CMAKE_ARGS={env['CMAKE_ARGS']}); a few minutes on 2 cores")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",
            str(pkg),
            "-w",
            str(out_dir),
            "--config-settings",
            f"build-dir={build_dir or cache_dir() / 'skbuild'}",
        ],
        "wheel build",
        env=env,
        progress=True,
    )
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise BuildError(f"wheel build produced no wheel in {out_dir}")
    return wheels[-1]


def install_wheel(wheel: Path) -> None:
    _log(f"installing {wheel.name}")
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
        "wheel install",
    )
    # runtime deps (numpy, jinja2, diskcache, typing-extensions) only where missing
    _run([sys.executable, "-m", "pip", "install", str(wheel)], "dependency install")


@contextlib.contextmanager
def build_lock(name: str = "build", what: str = "the fork"):
    """One build of ``what`` at a time per cache: a second process waits, then finds it done.

    Locks are per ``name`` (``<cache>/<name>.lock``), so a build that needs another one (the
    stock library needs the fork) takes both without waiting on itself.
    """
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{name}.lock", "a+b") as f:
        if not _try_lock(f):
            _log(f"another process is building {what}; waiting for it")
            _lock(f)
        yield


# file locks: fcntl.flock on POSIX, msvcrt.locking (first byte) on Windows; imported when used
def _try_lock(f) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock(f) -> None:
    if sys.platform == "win32":
        import msvcrt

        while True:  # LK_LOCK gives up after 10 tries of a second each
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue
    import fcntl

    fcntl.flock(f, fcntl.LOCK_EX)


def build(force: bool = False) -> str:
    """Make sure the fork is installed in this interpreter's environment; returns its build
    key (:func:`build_key`)."""
    with build_lock():
        return _build_locked(force)


def _build_locked(force: bool) -> str:
    want = build_key()
    if not force and installed_hash() == want:
        _log(f"llama-cpp-python {FORK_VERSION} (fork {want}) already installed")
        return want
    t0 = time.monotonic()
    wheel_dir = cache_dir() / "wheels" / want
    cached = sorted(wheel_dir.glob("llama_cpp_python-*.whl")) if wheel_dir.is_dir() else []
    if cached and not force:
        wheel = cached[-1]
        _log(f"using cached wheel for fork {want}")
    else:
        pkg = prepare_source(fetch_sdist())
        wheel = build_wheel(pkg, wheel_dir)
    install_wheel(wheel)
    if installed_hash() != want:
        raise BuildError("installed llama_cpp does not carry the fork stamp")
    _log(f"done in {time.monotonic() - t0:.0f} s: llama-cpp-python {FORK_VERSION} (fork {want})")
    return want


def ensure_llama_cpp():
    """Import and return the fork's ``llama_cpp`` module, building it first if needed.

    With ``LLAMA_CPP_LIB_PATH`` set (the dev loop), the installed Python package is used with
    that library and nothing is built.
    """
    if "llama_cpp" not in sys.modules and not os.environ.get("LLAMA_CPP_LIB_PATH"):
        if installed_hash() != build_key():
            build()
    import llama_cpp

    return llama_cpp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phiflash_gguf.build", description=__doc__)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument(
        "--print-hash",
        action="store_true",
        help="print the fork hash (sources) and the build key (sources + CPU) and exit",
    )
    args = ap.parse_args(argv)
    if args.print_hash:
        print(f"fork hash {fork_hash()}, build key {build_key()}")
        return 0
    try:
        build(force=args.force)
    except (BuildError, OSError) as e:
        print(f"error: building the llama.cpp fork: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
