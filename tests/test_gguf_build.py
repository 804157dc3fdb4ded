"""The fork build: cached (a second run is a no-op) and the patch series applies to the sdist."""

import re
import subprocess
import sys
import tarfile
import time

import pytest

from phiflash_gguf import build


def test_second_build_is_a_cached_no_op():
    build.ensure_llama_cpp()  # builds once if `make fork` has not run
    t = time.perf_counter()
    assert build.build() == build.fork_hash()
    assert time.perf_counter() - t < 5
    assert build.installed_hash() == build.fork_hash()


def test_fork_hash_covers_patches_and_overlay():
    names = {p.name for p in build.fork_files()}
    assert "sambay.cpp" in names and any(n.endswith(".patch") for n in names)
    assert build.fork_hash() == build.fork_hash()


def test_patches_apply_cleanly_to_the_pinned_sdist(tmp_path):
    sdist = build.fetch_sdist()  # cached by the build; checks the pinned sha256
    prefix = f"llama_cpp_python-{build.UPSTREAM_VERSION}/vendor/llama.cpp/"
    for patch in sorted(build.PATCH_DIR.glob("*.patch")):
        files = set(re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.M))
        with tarfile.open(sdist) as tf:
            members = [tf.getmember(prefix + f) for f in files]
            tf.extractall(tmp_path, members=members, filter="data")
        root = tmp_path / prefix
        proc = subprocess.run(
            ["patch", "-p1", "--dry-run", "--batch", "-d", str(root), "-i", str(patch)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "fuzz" not in proc.stdout and "offset" not in proc.stdout, proc.stdout


def test_a_second_build_waits_for_the_first(capsys):
    # two processes building at once would unpack into the same source tree
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(1.5)",
            str(build.cache_dir() / "build.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    t = time.perf_counter()
    assert build.build() == build.fork_hash()  # installed already: returns once the lock is free
    assert time.perf_counter() - t >= 1.0
    assert holder.wait() == 0
    assert "another process is building the fork" in capsys.readouterr().out


def test_a_second_stock_build_waits_and_builds_nothing(tmp_path, monkeypatch, capsys):
    from phiflash_gguf import stock

    monkeypatch.setenv("PHIFLASH_CACHE", str(tmp_path))
    monkeypatch.setattr(stock, "_build_stock", lambda lib: pytest.fail("built a second time"))
    lib = stock.stock_dir() / "lib"
    lib.parent.mkdir(parents=True)
    # the first builder: holds the stock lock, finishes the library, then lets go
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, pathlib, sys, time; f = open(sys.argv[1], 'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(1.5); "
            "lib = pathlib.Path(sys.argv[2]); lib.mkdir(); (lib / 'libllama.so').touch()",
            str(build.cache_dir() / "stock.lock"),
            str(lib),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    t = time.perf_counter()
    assert stock.ensure_stock_lib() == lib
    assert time.perf_counter() - t >= 1.0
    assert holder.wait() == 0
    assert "another process is building the stock library" in capsys.readouterr().out


def test_upstream_source_is_the_same_recipe_without_the_fork(tmp_path):
    """The benchmark's baseline: the sdist as is, only the recipe's build switches applied."""
    pkg = build.prepare_source(build.fetch_sdist(), src_root=tmp_path / "src", fork=False)
    vendor = pkg / "vendor" / "llama.cpp"
    assert not (vendor / "src" / "models" / "sambay.cpp").exists()
    for f in build.fork_files():
        if f.suffix != ".patch":
            assert not (vendor / f.relative_to(build.OVERLAY_DIR)).exists(), f.name
    assert "phiflash" not in (vendor / "ggml/src/ggml-cpu/arch/x86/repack.cpp").read_text()
    assert "sambay" not in (vendor / "src" / "llama-arch.cpp").read_text()
    assert (
        f'__version__ = "{build.UPSTREAM_VERSION}"' in (pkg / "llama_cpp/__init__.py").read_text()
    )
    assert not (pkg / "llama_cpp" / build.STAMP_NAME).exists()
    assert "LLAMA_BUILD_COMMON OFF CACHE" in (pkg / "CMakeLists.txt").read_text()


def test_upstream_lib_is_cached(tmp_path, monkeypatch):
    from phiflash_gguf import stock

    monkeypatch.setenv("PHIFLASH_CACHE", str(tmp_path))
    monkeypatch.setattr(stock, "_build_upstream", lambda lib: pytest.fail("built again"))
    lib = stock.upstream_dir() / "lib"
    lib.mkdir(parents=True)
    (lib / "libllama.so").write_bytes(b"")
    assert stock.ensure_upstream_lib() == lib
