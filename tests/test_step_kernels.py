"""The Mamba decode-step kernels (model.py, "Decode-step kernels") on a machine without a GPU.

Their CUDA sources run through the warp emulator (``cuda_emu_util``) behind the model's own
launch code, with MLX's compile turned off (the emulator reads its inputs from numpy): decode
with the kernels gives the uncompiled path's tokens, and its log-probs within 1e-4 (fixture,
float32), at batch 1 and in a mixed-length batch. Not 1e-5 as the compiled functions (the same
MLX operations): the kernels compute exp and the state readout with the device's own
arithmetic (here g++'s libm; MLX's CPU backend has its own exp, and sums in another order),
about 3e-7 of the largest value per output per step, which twelve tokens through the fixture's
layers grow to 3.3e-5; the self-check runs once per dtype, and a kernel that
fails to build or gives wrong numbers turns them off for the process with one warning, decode
staying right; on a Metal device the same selection asks for the Metal spelling and falls back
the same way (the emulated CUDA sources standing in). On a CPU nothing is built. The GPU's own
arithmetic (bfloat16, speed) is tests/test_gpu.py's part; nvcc compiles the sources in
tests/test_cuda_sources.py.
"""

import logging

import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY
from cuda_emu_util import GXX
from cuda_emu_util import kernel as emulated
from mlx_lm.generate import BatchGenerator
from test_decode_compiled import batch, greedy, prompts, solo

from phiflash_mlx import load
from phiflash_mlx import model as model_mod

TOL = 1e-4


def assert_close(got, want, label):
    assert got[0] == want[0], f"{label}: with kernels {got[0]} != uncompiled {want[0]}"
    err = max(float(np.abs(a - b).max()) for a, b in zip(got[1], want[1]))
    assert err <= TOL, f"{label}: log-prob gap {err:.3g}"


def fresh():
    """A model of its own: decode functions are built once per model, with or without the
    kernels, and kept."""
    return load(TINY, dtype=mx.float32)[0]


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device as the model sees it, its kernels on the emulator; ``broken`` makes a
    step kernel fail at launch ("raise") or give wrong numbers ("wrong"). Returns the step
    kernels' launches."""
    if GXX is None:
        pytest.skip("needs g++")
    sim = {"broken": None, "launches": []}

    def step_kernel(which, backend):
        assert backend == "cuda"
        ref = emulated("step_" + which)

        def run(**kw):
            sim["launches"].append(which)
            if sim["broken"] == "raise":
                raise RuntimeError("[cuda] nvrtc: error: identifier undefined\nmore")
            out = ref(**kw)
            return [o + 1.0 for o in out] if sim["broken"] == "wrong" else out

        return run

    monkeypatch.setattr(model_mod, "_gpu_backend", lambda: "cuda")
    monkeypatch.setattr(model_mod, "_cuda_kernel", emulated)  # prompts: the CUDA scan sources
    monkeypatch.setattr(model_mod, "_step_kernel", step_kernel)
    monkeypatch.setattr(model_mod, "_step", {"ok": {}, "note": None})
    monkeypatch.setattr(model_mod, "_chunks", {"ok": None, "note": None})
    mx.disable_compile()
    try:
        yield sim
    finally:
        mx.enable_compile()


def mamba_layers(model) -> int:
    return sum(layer.kind in ("mamba", "mamba_mem") for layer in model.layers)


def with_and_without(fn):
    """fn(model) with the kernels (a fresh model) and through the uncompiled path."""
    got = fn(fresh())
    plain = fresh()
    plain.set_compiled_decode(False)
    return got, fn(plain)


@pytest.mark.parametrize("length", [5, 47])  # the fixture's window is 32: across it
def test_batch1_decode_with_step_kernels_equals_uncompiled(gpu, length):
    p = prompts([length], 1000, seed=length)[0]
    got, want = with_and_without(lambda m: solo(m, p, 12))
    assert_close(got, want, f"prompt {length}")
    assert model_mod.step_kernel_note() is None
    calls = gpu["launches"]
    # the self-check's pair, then two kernels per Mamba layer in every step that had a state
    n = mamba_layers(fresh())
    assert calls[:2] == ["conv", "scan"] and len(calls) >= 2 + 2 * n * 10, len(calls)
    assert calls.count("conv") == calls.count("scan")


def test_mixed_length_batch_with_step_kernels_equals_uncompiled(gpu):
    ps = prompts([3, 29, 47, 8], 1000, seed=7)
    maxes = [9, 6, 8, 5]

    def run(m):
        gen = BatchGenerator(m, sampler=greedy, prefill_batch_size=4, prefill_step_size=32)
        schedule = {
            0: [dict(prompts=ps[:2], max_tokens=maxes[:2])],
            3: [dict(prompts=ps[2:], max_tokens=maxes[2:])],
        }
        return batch(gen, schedule)

    got, want = with_and_without(run)
    assert sorted(got) == sorted(want) == list(range(4))
    for uid in range(4):
        assert_close(got[uid], want[uid], f"row {uid} (len {len(ps[uid])})")
    assert gpu["launches"].count("scan") > 2


def test_self_check_runs_once_per_dtype(gpu, monkeypatch):
    checks = []
    real = model_mod._step_check_failure

    def spy(backend, dtype):
        checks.append(dtype)
        return real(backend, dtype) if dtype == mx.float32 else None  # the emulator is fp32

    monkeypatch.setattr(model_mod, "_step_check_failure", spy)
    for dtype in (mx.float32, mx.float32, mx.bfloat16, mx.float32, mx.bfloat16):
        assert model_mod.step_kernels_backend(dtype) == "cuda"
    assert checks == [mx.float32, mx.bfloat16]
    assert gpu["launches"] == ["conv", "scan"]  # the float32 check's kernels
    assert model_mod.step_kernel_note() is None


@pytest.mark.parametrize("broken, why", [("raise", "RuntimeError"), ("wrong", "mismatch")])
def test_failing_step_kernels_turn_off_and_say_so_once(gpu, caplog, broken, why):
    gpu["broken"] = broken
    p = prompts([20], 1000, seed=1)[0]
    with caplog.at_level(logging.WARNING):
        got, want = with_and_without(lambda m: solo(m, p, 6))
        assert model_mod.step_kernels_backend(mx.float32) is None
    assert_close(got, want, "after the fallback")
    note = model_mod.step_kernel_note()
    assert note.startswith("cuda decode-step kernels off (") and why in note
    assert [r.getMessage() for r in caplog.records] == [note]  # said once
    assert gpu["launches"] == ["conv"] if broken == "raise" else ["conv", "scan"]


def test_no_gpu_builds_no_step_kernel(monkeypatch):
    def refuse(*a):
        raise AssertionError("a step kernel was built on the CPU")

    monkeypatch.setattr(model_mod, "_step_kernel", refuse)
    monkeypatch.setattr(model_mod, "_step", {"ok": {}, "note": None})
    assert model_mod.step_kernels_backend(mx.float32) is None
    m = fresh()
    solo(m, prompts([9], 1000, seed=2)[0], 4)
    assert model_mod._step == {"ok": {}, "note": None}


def test_step_kernels_flag_keeps_the_compiled_functions(gpu, monkeypatch):
    monkeypatch.setattr(model_mod, "STEP_KERNELS", False)
    assert model_mod.step_kernels_backend(mx.float32) is None
    solo(fresh(), prompts([9], 1000, seed=2)[0], 4)
    assert gpu["launches"] == []


def test_metal_spelling_of_the_step_kernels():
    """The Metal sources are the CUDA ones in Metal's words (untested on Apple hardware)."""
    for which in ("conv", "scan"):
        metal = model_mod._step_source(which, "metal")
        cuda = model_mod._step_source(which, "cuda")
        assert "@" not in metal and "@" not in cuda
        assert "thread_position_in_grid" in metal and "blockIdx" not in metal
        assert "expf" not in metal and "metal::exp" in metal
    scan = model_mod._step_source("scan", "metal")
    assert "simd_shuffle_xor" in scan and "log1pf" not in scan


@pytest.mark.parametrize("broken", [None, "raise", "wrong"])
def test_metal_step_kernels_check_themselves_and_fall_back(monkeypatch, caplog, broken):
    """On a Metal device the kernels are asked for in Metal's spelling and checked first; a
    failing one turns them off with one warning naming Metal, and decode stays right. (The
    kernels here are the CUDA sources on the emulator standing in for Metal's.)"""
    if GXX is None:
        pytest.skip("needs g++")
    asked = []

    def step_kernel(which, backend):
        asked.append((which, backend))
        ref = emulated("step_" + which)

        def run(**kw):
            if broken == "raise":
                raise RuntimeError("[metal] program_source: error: use of undeclared identifier")
            out = ref(**kw)
            return [o + 1.0 for o in out] if broken == "wrong" else out

        return run

    monkeypatch.setattr(model_mod, "_gpu_backend", lambda: "metal")
    monkeypatch.setattr(model_mod, "_step_kernel", step_kernel)
    monkeypatch.setattr(model_mod, "_step", {"ok": {}, "note": None})
    # prompts keep the portable scan (the Metal scan kernel is tests/test_metal_scan.py's)
    monkeypatch.setattr(model_mod, "_metal", {"kernel": None, "ok": False, "note": None})
    mx.disable_compile()
    try:
        with caplog.at_level(logging.WARNING):
            backend = model_mod.step_kernels_backend(mx.float32)
            p = prompts([9], 1000, seed=4)[0]
            got, want = with_and_without(lambda m: solo(m, p, 5))
    finally:
        mx.enable_compile()
    assert {b for _, b in asked} == {"metal"}
    assert_close(got, want, f"metal, kernels {broken or 'right'}")
    if broken is None:
        assert backend == "metal" and model_mod.step_kernel_note() is None
    else:
        note = model_mod.step_kernel_note()
        assert backend is None and note.startswith("metal decode-step kernels off (")
        assert [r.getMessage() for r in caplog.records] == [note]
