"""The fork build: cached per CPU (a second run is a no-op), the patch series applies to the
sdist through our own unified-diff applier, one build at a time, nothing Linux-only at import."""

import re
import subprocess
import sys
import tarfile
import time

import pytest

from phiflash_gguf import build, udiff

# a child that takes the named lock file with the build's own (portable) lock, says so, holds it
HOLD_LOCK = (
    "import sys, time; from phiflash_gguf import build; f = open(sys.argv[1], 'a+b'); "
    "build._lock(f); print('locked', flush=True); time.sleep(1.5)"
)


def test_second_build_is_a_cached_no_op():
    build.ensure_llama_cpp()  # builds once if `make fork` has not run
    t = time.perf_counter()
    assert build.build() == build.build_key()
    assert time.perf_counter() - t < 5
    assert build.installed_hash() == build.build_key()


def test_fork_hash_covers_patches_and_overlay():
    names = {p.name for p in build.fork_files()}
    assert {"sambay.cpp", "sambay-diff-attn.cpp", "sambay-diff-attn.h"} <= names
    assert any(n.endswith(".patch") for n in names)
    assert build.fork_hash() == build.fork_hash()


def test_build_key_changes_with_the_cpu(monkeypatch):
    """ggml is compiled -march=native: a wheel (or upstream library) built for one CPU's flags
    must not be found in the cache, nor count as installed, on a CPU with other flags."""
    from phiflash_gguf import stock

    assert build.cpu_flags().strip()
    here = (build.build_key(), stock.upstream_dir())
    assert here[0] == f"{build.fork_hash()}-{build.cpu_tag()}"
    build.ensure_llama_cpp()
    assert build.installed_hash() == here[0]
    monkeypatch.setattr(build, "cpu_flags", lambda: "fpu sse2 avx2 fma f16c")
    avx2 = (build.build_key(), stock.upstream_dir())
    monkeypatch.setattr(build, "cpu_flags", lambda: "fpu sse2 avx2 fma f16c avx512f")
    avx512 = (build.build_key(), stock.upstream_dir())
    assert len({here, avx2, avx512}) == 3
    assert all(k.startswith(build.fork_hash()) for k, _ in (here, avx2, avx512))
    assert build.installed_hash() != build.build_key()  # this CPU's wheel is not the other's


def test_patches_apply_exactly_to_the_pinned_sdist(tmp_path):
    sdist = build.fetch_sdist()  # cached by the build; checks the pinned sha256
    prefix = f"llama_cpp_python-{build.UPSTREAM_VERSION}/vendor/llama.cpp/"
    for patch in sorted(build.PATCH_DIR.glob("*.patch")):
        files = set(re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.M))
        with tarfile.open(sdist) as tf:
            members = [tf.getmember(prefix + f) for f in files]
            tf.extractall(tmp_path, members=members, filter="data")
        root = tmp_path / prefix
        before = {f: (root / f).read_text() for f in files}
        written = udiff.apply(patch, root, max_offset=0)  # every hunk where its header says
        assert {p.relative_to(root).as_posix() for p in written} == files
        for fp in udiff.parse(patch.read_text()):
            after = (root / fp.path).read_text()
            assert after != before[fp.path]
            for h in fp.hunks:
                assert "\n".join(h.new) in after, (patch.name, h.header)


def test_a_second_build_waits_for_the_first(capsys):
    # two processes building at once would unpack into the same source tree
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(build.cache_dir() / "build.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    t = time.perf_counter()
    assert build.build() == build.build_key()  # installed already: returns once the lock is free
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
            HOLD_LOCK + "; import pathlib; lib = pathlib.Path(sys.argv[2]); lib.mkdir(); "
            "(lib / 'libllama.so').touch()",
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


def test_gguf_code_imports_without_linux_only_modules():
    """fcntl and resource do not exist on Windows: the GGUF package imports without them and
    reports peak memory as 0.0 there."""
    code = (
        "import sys; sys.modules['fcntl'] = None; sys.modules['resource'] = None\n"
        "import phiflash_gguf.build, phiflash_gguf.engine, phiflash_gguf.kernels\n"
        "import phiflash_gguf.stock, phiflash_gguf.udiff\n"
        "print(phiflash_gguf.engine._peak_rss_gb())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.0"


# the applier on small trees: what it writes, and the one line it fails with

SOURCE = "".join(f"line {i}\n" for i in range(1, 21))
PATCH = """diff --git a/src/a.txt b/src/a.txt
index 1111111..2222222 100644
--- a/src/a.txt
+++ b/src/a.txt
@@ -2,3 +2,4 @@ context text
 line 2
-line 3
+line three
+line 3.5
 line 4
@@ -17,3 +18,3 @@
 line 17
-line 18
+line eighteen
 line 19
"""


def _tree(tmp_path, text=SOURCE):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text(text)
    (tmp_path / "p.patch").write_text(PATCH)
    return tmp_path


def test_udiff_applies_hunks_like_patch(tmp_path):
    root = _tree(tmp_path)
    assert udiff.apply(root / "p.patch", root) == [root / "src" / "a.txt"]
    want = SOURCE.replace("line 3\n", "line three\nline 3.5\n").replace(
        "line 18\n", "line eighteen\n"
    )
    assert (root / "src" / "a.txt").read_text() == want


def test_udiff_finds_a_moved_hunk_within_its_offset(tmp_path):
    root = _tree(tmp_path, "new first line\n" + SOURCE)
    udiff.apply(root / "p.patch", root)
    assert (root / "src" / "a.txt").read_text().startswith("new first line\nline 1\nline 2\n")
    root2 = tmp_path / "exact"
    root2.mkdir()
    _tree(root2, "new first line\n" + SOURCE)
    with pytest.raises(udiff.PatchError):
        udiff.apply(root2 / "p.patch", root2, max_offset=0)


def test_udiff_refuses_a_hunk_that_does_not_apply_and_writes_nothing(tmp_path):
    text = SOURCE.replace("line 18\n", "line 18 changed upstream\n")
    root = _tree(tmp_path, text)
    with pytest.raises(udiff.PatchError) as e:
        udiff.apply(root / "p.patch", root)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == "p.patch: hunk 2 of src/a.txt (@@ -17,3 +18,3 @@) does not apply"
    assert (root / "src" / "a.txt").read_text() == text  # hunk 1 applied nowhere either


def test_udiff_creates_new_files_and_keeps_a_missing_last_newline(tmp_path):
    (tmp_path / "old.txt").write_text("a\nb")  # no newline at the end
    (tmp_path / "p.patch").write_text(
        "--- /dev/null\n+++ b/new/file.h\n@@ -0,0 +1,2 @@\n+#pragma once\n+int x;\n"
        "--- a/old.txt\n+++ b/old.txt\n@@ -1,2 +1,2 @@\n-a\n+A\n b\n\\ No newline at end of file\n"
    )
    udiff.apply(tmp_path / "p.patch", tmp_path)
    assert (tmp_path / "new" / "file.h").read_text() == "#pragma once\nint x;\n"
    assert (tmp_path / "old.txt").read_text() == "A\nb"


@pytest.mark.parametrize(
    "patch, error",
    [
        ("just words\n", "p.patch: no file changes found"),
        ("--- a/x\n@@ -1 +1 @@\n", "p.patch: line 1: '---' without a '+++' line"),
        (
            "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n",
            "p.patch: x: hunk '@@ -1,2 +1,2 @@' is cut short",
        ),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", "p.patch: x: no such file in"),
    ],
)
def test_udiff_malformed_or_misplaced_patches_fail_in_one_line(tmp_path, patch, error):
    (tmp_path / "p.patch").write_text(patch)
    with pytest.raises(udiff.PatchError) as e:
        udiff.apply(tmp_path / "p.patch", tmp_path)
    assert str(e.value).startswith(error) and "\n" not in str(e.value)


def test_a_patch_that_does_not_apply_stops_the_build_with_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "patches"
    bad.mkdir()
    text = (build.PATCH_DIR / "0003-prefetch-decode-weights.patch").read_text()
    (bad / "0003-prefetch-decode-weights.patch").write_text(
        text.replace(' #include "simd-mappings.h"', ' #include "simd-mappings-renamed.h"')
    )
    monkeypatch.setattr(build, "PATCH_DIR", bad)
    with pytest.raises(build.BuildError) as e:
        build.prepare_source(build.fetch_sdist(), src_root=tmp_path / "src")
    assert str(e.value).startswith(
        "0003-prefetch-decode-weights.patch: hunk 1 of ggml/src/ggml-cpu/arch/x86/quants.c "
    )
    assert str(e.value).endswith("does not apply") and "\n" not in str(e.value)
