"""The CUDA scan kernels' sources, on a machine without a GPU.

MLX's CUDA backend compiles a kernel's body at its first launch, inside a function whose
parameters it writes from the inputs and outputs (``const float* u``, ..., ``float* y``) and
whose template arguments become ``constexpr int`` lines. Here each of the model's CUDA sources
(``_CUDA_KERNELS``) is compiled the same way with nvcc (a syntax or type error shows here, not
on the first prompt on a GPU), and run with g++ through a warp emulator (``cuda_emu_util``)
behind the model's own launch code: the prompt scan in time chunks and in one pass, with its
self-check, and the training scan's outputs and gradients, against the portable scan. Speed
and the GPU's own arithmetic are tests/test_gpu.py's part.
"""

import logging
import shutil
import subprocess
from functools import partial

import conftest
import mlx.core as mx
import numpy as np
import pytest
from conftest import scan_inputs
from cuda_emu_util import GXX, kernel_function, kernel_source
from cuda_emu_util import kernel as emulated

from phiflash_mlx import model as model_mod

NVCC = shutil.which("nvcc")
needs_gxx = pytest.mark.skipif(GXX is None, reason="needs g++")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("which", sorted(model_mod._CUDA_KERNELS))
def test_cuda_kernel_source_compiles(tmp_path, which):
    name, inputs, outputs, body = model_mod._CUDA_KERNELS[which]
    src = tmp_path / f"{which}.cu"
    src.write_text("__global__ " + kernel_function(name, inputs, outputs, body, DI=5120, NS=16))
    ptx = tmp_path / "k.ptx"
    cmd = [NVCC, "-arch=sm_80", "-ptx", "-Werror", "all-warnings", str(src), "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("array_type", ["float", "__nv_bfloat16"])
@pytest.mark.parametrize("which", ["step_conv", "step_scan"])
def test_decode_step_kernel_source_compiles(tmp_path, which, array_type):
    """The decode-step kernels in float32 and bfloat16 (T: the outputs' type; MLX writes each
    input's own type, which the sources only ever convert with static_cast<float>)."""
    name, inputs, outputs, body = kernel_source(which)
    sizes = dict(DI=5120, KC=4) if which == "step_conv" else dict(DI=5120, NS=16, R=160)
    fn = kernel_function(name, inputs, outputs, body, array_type, T=array_type, **sizes)
    src = tmp_path / f"{which}.cu"
    src.write_text("#include <cuda_bf16.h>\n__global__ " + fn)
    ptx = tmp_path / "k.ptx"
    cmd = [NVCC, "-arch=sm_80", "-ptx", "-Werror", "all-warnings", str(src), "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


assert_portable = partial(conftest.assert_portable, rtol=1e-4, atol=1e-4)


@needs_gxx
@pytest.mark.parametrize(
    "b, T, d, n, chunks",
    [(2, 300, 8, 4, 4), (1, 200, 16, 8, 3), (2, 37, 12, 8, 1), (2, 150, 6, 4, 1)],
)
def test_cuda_prompt_scan_runs_right_on_the_warp_emulator(monkeypatch, b, T, d, n, chunks):
    """ssm_scan_cuda with the real kernel sources: in time chunks (a short last chunk, two
    sequences) after passing its self-check, and in one pass (too short to cut; d n = 24, where
    a warp holds lanes of several channels), equal to the portable scan."""
    monkeypatch.setattr(model_mod, "_cuda_kernel", emulated)
    monkeypatch.setattr(model_mod, "_chunks", {"ok": None, "note": None})
    args = scan_inputs(b, T, d, n, seed=T)
    assert model_mod.time_chunks(b, T, d, n) == chunks
    assert_portable(model_mod.ssm_scan_cuda(*args), args)
    assert model_mod._chunks["ok"] is (True if chunks > 1 else None)  # checked only when cut
    assert model_mod.scan_kernel_note() is None


@needs_gxx
def test_cuda_training_scan_runs_right_on_the_warp_emulator(monkeypatch):
    """ssm_scan_cuda_train with the real forward and backward kernel sources: the outputs and
    every input's gradient equal autodiff through the portable scan."""
    monkeypatch.setattr(model_mod, "_cuda_kernel", emulated)
    args = scan_inputs(2, 23, 8, 4, seed=3)
    w = mx.random.normal((2, 23, 8)), mx.random.normal((2, 8, 4))

    def loss(scan):
        def f(*a):
            y, s = scan(*a)
            return (y * w[0]).sum() + (s * w[1]).sum()

        return mx.value_and_grad(f, argnums=tuple(range(7)))(*args)

    (lk, gk), (lc, gc) = loss(model_mod.ssm_scan_cuda_train), loss(model_mod.ssm_scan_chunked)
    np.testing.assert_allclose(lk.item(), lc.item(), rtol=1e-5)
    for got, want in zip(gk, gc):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-4)


def test_time_chunks_fill_the_gpu_and_keep_a_warp_in_one_chunk():
    assert model_mod.time_chunks(1, 2048, 5120, 16) == 13  # 13 * 81,920 threads >= 2^20
    assert model_mod.time_chunks(1, 100, 5120, 16) == 1  # chunks of at least 64 tokens
    assert model_mod.time_chunks(2, 300, 8, 4) == 4  # T // 64
    assert model_mod.time_chunks(1, 4096, 24, 1) == 1  # d n = 24: a warp would straddle


@pytest.fixture
def cuda_chunks(monkeypatch):
    """The prompt kernels on the warp emulator; ``broken`` names a kernel that fails at launch
    or gives wrong numbers. Returns the kernels' launches."""
    if GXX is None:
        pytest.skip("needs g++")
    sim = {"broken": None, "launches": []}

    def kernel(which):
        ref = emulated(which)

        def run(**kw):
            sim["launches"].append((which, [int(v) for v in kw["inputs"][-1]]))
            if sim["broken"] == ("raise", which):
                raise RuntimeError("[cuda] nvrtc: error: identifier undefined\nmore")
            out = ref(**kw)
            return [o + 1.0 for o in out] if sim["broken"] == ("wrong", which) else out

        return run

    monkeypatch.setattr(model_mod, "_chunks", {"ok": None, "note": None})
    monkeypatch.setattr(model_mod, "_cuda_kernel", kernel)
    return sim


def test_time_chunks_check_themselves_once_then_run(cuda_chunks, caplog):
    args = scan_inputs(1, 300, 8, 4)
    for _ in range(2):
        y, s = model_mod.ssm_scan_cuda(*args)
        assert_portable((y, s), args)
    checks = [dims for which, dims in cuda_chunks["launches"] if which == "chunk_ends"]
    assert checks == [[1, 256, 4, 64], [1, 300, 4, 75], [1, 300, 4, 75]]  # check, then prompts
    assert model_mod.scan_kernel_note() is None and not caplog.records


@pytest.mark.parametrize("broken, why", [("raise", "RuntimeError"), ("wrong", "mismatch")])
def test_failing_time_chunks_fall_back_to_one_pass_and_say_so(cuda_chunks, caplog, broken, why):
    """The first pass fails at launch or gives wrong end states: every prompt then scans in
    one pass sequential in time (right), and the note is logged once."""
    cuda_chunks["broken"] = (broken, "chunk_ends")
    args = scan_inputs(1, 300, 8, 4)
    with caplog.at_level(logging.WARNING):
        y, s = model_mod.ssm_scan_cuda(*args)
        model_mod.ssm_scan_cuda(*args)
    assert_portable((y, s), args)
    note = model_mod.scan_kernel_note()
    assert note.startswith("CUDA scan's time chunks off (") and why in note
    assert [r.getMessage() for r in caplog.records] == [note]  # said once
    assert cuda_chunks["launches"][-1] == ("prompt", [1, 300, 1, 300])  # one pass in time
