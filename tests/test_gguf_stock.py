"""An unpatched llama-cpp-python refuses our GGUF with "unknown model architecture".

The stock library is libllama compiled from the unpatched src/ of the same pinned sdist
(`phiflash_gguf.stock`), loaded by llama-cpp-python's own LLAMA_CPP_LIB_PATH switch in a
child process, so the Python package, ggml and the file are exactly what a user would have.
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY

from phiflash.quantize.gguf_convert import convert
from phiflash_gguf.stock import ensure_stock_lib

PROBE = r"""
import sys
import llama_cpp
print("LIB", llama_cpp.llama_cpp._lib._name, flush=True)
try:
    llama_cpp.Llama(model_path=sys.argv[1], verbose=True)
except ValueError as e:
    print("REFUSED", e, flush=True)
    sys.exit(3)
print("LOADED", flush=True)
"""


def _probe(gguf: Path, lib_dir: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    if lib_dir is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(gguf)], env=env, capture_output=True, text=True
    )


def test_stock_llama_cpp_refuses_sambay_and_the_fork_loads_it(tmp_path):
    lib = ensure_stock_lib()
    gguf = convert(TINY, tmp_path / "tiny-f32.gguf", "f32", progress=False)

    stock = _probe(gguf, lib)
    assert f"LIB {lib}" in stock.stdout  # really the stock library
    assert stock.returncode == 3, stock.stdout + stock.stderr[-2000:]
    assert "unknown model architecture: 'sambay'" in stock.stderr
    assert "REFUSED" in stock.stdout

    fork = _probe(gguf, None)
    assert fork.returncode == 0 and "LOADED" in fork.stdout, fork.stderr[-2000:]
