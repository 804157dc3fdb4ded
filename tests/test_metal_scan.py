"""The Metal selective-scan kernel's selection, self-check and fallback, on CPU.

There is no Apple GPU here: the tests replace the backend detection (``_gpu_backend``) and the
kernel builder (``_build_metal_scan_kernel``) to simulate a Metal device whose kernel compiles
and agrees, fails to compile, fails at launch, or disagrees with the portable scan. The stand-in
"kernels" compute the recurrence one token at a time (``ssm_step``) from the exact inputs,
template and launch shape the model hands to ``mx.fast.metal_kernel``'s kernel, so the
argument plumbing is checked too; the Metal source itself is only compiled on Apple hardware.
"""

import logging
from functools import partial

import conftest
import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY, scan_inputs

from phiflash_mlx import load
from phiflash_mlx import model as model_mod


def reference_kernel(calls, offset=0.0):
    """A stand-in for the compiled kernel: checks the launch, then scans token by token."""

    def kernel(*, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        u, dt, A, B, C, D, state, _s_end, _decay, dims = inputs
        b, T, d = u.shape
        n = A.shape[1]
        assert dict(template) == {"DI": d, "NS": n}
        assert dims.tolist() == [b, T, 1, T]  # one chunk in time: the sequential scan
        assert 32 % n == 0 and threadgroup[0] % 32 == 0  # a channel's lanes in one SIMD group
        assert grid[0] >= b * d * n and grid[0] % threadgroup[0] == 0
        assert output_shapes == [(b, T, d), (b, d, n)]
        assert all(x.dtype == mx.float32 for x in (u, dt, A, B, C, D, state))
        calls.append((b, T, d))
        ys, s = [], state
        for t in range(T):
            y, s = model_mod.ssm_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], D, s)
            ys.append(y)
        return [mx.stack(ys, axis=1) + offset, s]

    return kernel


@pytest.fixture
def metal(monkeypatch):
    """Simulated Metal backend; returns a dict to set the builder's behaviour and read calls."""
    sim = {"builds": 0, "calls": [], "mode": "ok"}

    def build():
        sim["builds"] += 1
        if sim["mode"] == "compile_error":
            raise RuntimeError("[metal::Device] Unable to build metal library from source\nline 2")
        if sim["mode"] == "launch_error":

            def broken(**kw):
                raise RuntimeError("[metal] command buffer failed")

            return broken
        return reference_kernel(sim["calls"], offset=1.0 if sim["mode"] == "mismatch" else 0.0)

    monkeypatch.setattr(model_mod, "_metal", {"kernel": None, "ok": None, "note": None})
    monkeypatch.setattr(model_mod, "_gpu_backend", lambda: "metal")
    monkeypatch.setattr(model_mod, "_build_metal_scan_kernel", build)
    return sim


assert_portable = partial(conftest.assert_portable, atol=1e-5)


def test_no_gpu_uses_the_portable_scan_and_builds_nothing(monkeypatch):
    monkeypatch.setattr(model_mod, "_metal", {"kernel": None, "ok": None, "note": None})

    def build():
        raise AssertionError("the Metal kernel was built without a Metal device")

    monkeypatch.setattr(model_mod, "_build_metal_scan_kernel", build)
    assert model_mod._gpu_backend() is None  # these tests run on CPU
    args = scan_inputs()
    assert_portable(model_mod.selective_scan(*args), args)
    assert model_mod.scan_kernel_note() is None


def test_kernel_that_agrees_is_checked_once_then_used(metal, caplog):
    args = scan_inputs()
    with caplog.at_level(logging.WARNING, logger=model_mod.__name__):
        out = model_mod.selective_scan(*args)
        assert_portable(out, args)
        # the self-check ran on a small slice of the first prompt, then the whole prompt
        assert metal["calls"] == [(1, 40, 24), (2, 40, 24)]
        args2 = scan_inputs(b=1, T=70, d=24, seed=1)
        assert_portable(model_mod.selective_scan(*args2), args2)
    assert metal["calls"][2:] == [(1, 70, 24)]  # no second check
    assert metal["builds"] == 1
    assert model_mod.scan_kernel_note() is None
    assert not caplog.records


def test_self_check_slice_is_small(metal):
    args = scan_inputs(b=3, T=300, d=100)
    model_mod.selective_scan(*args)
    assert metal["calls"][0] == (1, 64, 64)


@pytest.mark.parametrize(
    "mode, why",
    [
        ("compile_error", "RuntimeError: [metal::Device] Unable to build metal library"),
        ("launch_error", "RuntimeError: [metal] command buffer failed"),
        ("mismatch", "mismatch"),
    ],
)
def test_failing_kernel_falls_back_for_the_process_and_says_so_once(metal, caplog, mode, why):
    metal["mode"] = mode
    with caplog.at_level(logging.WARNING, logger=model_mod.__name__):
        for seed in range(3):
            args = scan_inputs(seed=seed)
            assert_portable(model_mod.selective_scan(*args), args)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1, notes
    assert why in notes[0] and "portable scan" in notes[0]
    assert model_mod.scan_kernel_note() == notes[0]
    assert metal["builds"] == 1  # never retried
    assert len(metal["calls"]) == (1 if mode == "mismatch" else 0)  # only the check slice


def test_model_prompt_equal_with_kernel_and_after_fallback(metal):
    """A whole prefill of the fixture (float32) through the simulated kernel, and through the
    portable scan after a failed check, gives the portable path's logits."""
    model = load(TINY, dtype=mx.float32)[0]
    toks = mx.array([[5, 17, 300, 2, 9, 44, 801, 3, 12]])
    metal["mode"] = "ok"
    with_kernel = model(toks, cache=model.make_cache())
    assert len(metal["calls"]) > 1
    model_mod._metal.update(kernel=None, ok=None, note=None)
    metal["mode"] = "mismatch"
    fallback = model(toks, cache=model.make_cache())
    assert model_mod.scan_kernel_note() is not None
    model_mod._gpu_backend = lambda: None  # restored by monkeypatch
    portable = model(toks, cache=model.make_cache())
    np.testing.assert_allclose(np.array(with_kernel), np.array(portable), atol=1e-4)
    np.testing.assert_allclose(np.array(fallback), np.array(portable), atol=1e-5)


# The portable scan every non-CUDA device falls back to (and the Metal self-check's reference),
# and the CPU's numpy scan.


@pytest.mark.parametrize("T, block, segment", [(1, 32, 512), (70, 8, 32), (77, 32, 512), (5, 4, 4)])
def test_portable_scan_equals_token_by_token_values_and_gradients(T, block, segment):
    args = scan_inputs(b=2, T=T, d=12, n=8, seed=T)
    u, dt, A, B, C, D, s0 = args

    def steps(u, dt, A, B, C):
        ys, s = [], s0
        for t in range(u.shape[1]):
            y, s = model_mod._ssm_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], D, s)
            ys.append(y)
        return mx.stack(ys, axis=1), s

    def chunked(u, dt, A, B, C):
        return model_mod.ssm_scan_chunked(u, dt, A, B, C, D, s0, block=block, segment=segment)

    for got, want in zip(chunked(u, dt, A, B, C), steps(u, dt, A, B, C)):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)

    def loss(f):
        return lambda *a: (f(*a)[0] ** 2).sum() + f(*a)[1].sum()

    gc = mx.grad(loss(chunked), argnums=(0, 1, 2, 3, 4))(u, dt, A, B, C)
    gs = mx.grad(loss(steps), argnums=(0, 1, 2, 3, 4))(u, dt, A, B, C)
    for a, b in zip(gc, gs):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)


def test_portable_scan_leaves_state_unchanged_where_dt_is_zero():
    u, dt, A, B, C, D, s0 = scan_inputs(b=2, T=50, d=12, n=8)
    keep = mx.arange(50)[None, :, None] < mx.array([50, 13])[:, None, None]  # row 1: 13 real
    _, s = model_mod.ssm_scan_chunked(u, mx.where(keep, dt, 0.0), A, B, C, D, s0, block=8)
    _, s13 = model_mod.ssm_scan_chunked(
        u[1:, :13], dt[1:, :13], A, B[1:, :13], C[1:, :13], D, s0[1:], block=8
    )
    np.testing.assert_allclose(np.array(s[1:]), np.array(s13), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T, max_elems", [(1, 1 << 24), (77, 1 << 24), (77, 2 * 12 * 8 * 10)])
def test_numpy_scan_equals_token_by_token(T, max_elems):
    """The CPU prompt path, in one segment and in segments of 10 positions."""
    u, dt, A, B, C, D, s0 = scan_inputs(b=2, T=T, d=12, n=8, seed=T)
    dt = mx.where(mx.arange(T)[None, :, None] < mx.array([T, T // 2])[:, None, None], dt, 0.0)
    ys, s = [], s0
    for t in range(T):
        y, s = model_mod._ssm_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], D, s)
        ys.append(y)
    got = model_mod.ssm_scan_numpy(u, dt, A, B, C, D, s0, max_elems=max_elems)
    for g, w in zip(got, (mx.stack(ys, axis=1), s)):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-5, atol=1e-5)
    assert got[0].dtype == got[1].dtype == mx.float32
    _, s_half = model_mod.ssm_scan_numpy(
        u[1:, : T // 2], dt[1:, : T // 2], A, B[1:, : T // 2], C[1:, : T // 2], D, s0[1:]
    )  # dt = 0 leaves row 1's state where its real positions left it
    np.testing.assert_allclose(np.array(got[1][1:]), np.array(s_half), rtol=1e-5, atol=1e-6)


def test_cpu_prompts_scan_in_numpy_and_training_keeps_the_differentiable_scan(monkeypatch):
    calls = []
    for name in ("ssm_scan_numpy", "ssm_scan_chunked"):
        real = getattr(model_mod, name)
        monkeypatch.setattr(
            model_mod, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a)
        )
    args = scan_inputs()
    model_mod.selective_scan(*args)
    model_mod.selective_scan(*args, training=True)
    assert calls == ["ssm_scan_numpy", "ssm_scan_chunked"]


def test_generate_verbose_prints_the_metal_fallback(monkeypatch):
    """The one warning also reaches `generate --verbose` through the engine's backend note."""
    from phiflash_mlx.engine import MLXEngine

    engine = MLXEngine(str(TINY))
    assert engine.backend_note.startswith("CPU BLAS:")
    monkeypatch.setitem(model_mod._metal, "note", "Metal selective-scan kernel off (test)")
    assert engine.backend_note.splitlines()[-1] == "Metal selective-scan kernel off (test)"


@pytest.mark.parametrize(
    "backend, training, expected",
    [
        ("cuda", False, "ssm_scan_cuda"),
        ("cuda", True, "ssm_scan_cuda_train"),
        ("metal", True, "ssm_scan_chunked"),  # the Metal kernel has no gradient
    ],
)
def test_scan_selection_by_backend_and_training(monkeypatch, backend, training, expected):
    """Prompts on CUDA take the prompt kernel, training steps the kernels with a gradient;
    training on Metal keeps the differentiable portable scan (and never self-checks)."""
    calls = []
    for name in ("ssm_scan_cuda", "ssm_scan_cuda_train", "ssm_scan_chunked", "metal_scan_ready"):
        monkeypatch.setattr(model_mod, name, lambda *a, _n=name: calls.append(_n) or (None, None))
    monkeypatch.setattr(model_mod, "_gpu_backend", lambda: backend)
    model_mod.selective_scan(*scan_inputs(), training=training)
    assert calls == [expected]
