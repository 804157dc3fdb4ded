"""The compiled decode step gives what the uncompiled path gives (fixture, float32).

Batch 1 through mlx-lm's ``generate_step`` (plain caches: the whole-step decode, and the
per-layer compiled functions where a sliding-window cache grows or trims), and mixed-length
batches through ``BatchGenerator`` (batch caches with left padding after the prompt, rows
joining mid-generation: per layer): tokens equal and log-probs within 1e-5, and the caches
left as mlx-lm's own updates leave them. Spies check that the compiled paths really ran.
"""

import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import ArraysCache, make_prompt_cache

from phiflash_mlx import load
from phiflash_mlx import model as model_mod

TOL = 1e-5


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


@pytest.fixture(scope="module")
def tiny():
    return load(TINY, dtype=mx.float32)[0]


@pytest.fixture
def compiled_kinds(monkeypatch):
    """The layer kinds whose decode step went through the compiled functions."""
    seen = set()
    orig = model_mod.DecoderLayer._compiled_step

    def spy(self, *args):
        out = orig(self, *args)
        if out is not None:
            seen.add(self.kind)
        return out

    monkeypatch.setattr(model_mod.DecoderLayer, "_compiled_step", spy)
    return seen


@pytest.fixture
def whole_steps(monkeypatch):
    """How many decode tokens the whole-step path took (and declined)."""
    seen = {"ran": 0, "declined": 0}
    orig = model_mod.WholeStep.__call__

    def spy(self, *args):
        out = orig(self, *args)
        seen["ran" if out is not None else "declined"] += 1
        return out

    monkeypatch.setattr(model_mod.WholeStep, "__call__", spy)
    return seen


def prompts(lengths, vocab, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def solo(model, prompt, n):
    toks, rows = [], []
    for tok, logprobs in generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy):
        toks.append(int(tok))
        rows.append(np.array(logprobs))
    return toks, rows


def solo_with(model, prompt, n, cache):
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy, prompt_cache=cache)
    return [int(tok) for tok, _ in steps]


def batch(gen, schedule, max_steps=500):
    out, done, live = {}, {}, set()
    for step in range(max_steps):
        for kwargs in schedule.get(step, []):
            live.update(gen.insert(**kwargs))
        if not live and max(schedule) <= step:
            return done
        for r in gen.next_generated():
            toks, rows = out.setdefault(r.uid, ([], []))
            toks.append(r.token)
            rows.append(np.array(r.logprobs))
            if r.finish_reason is not None:
                done[r.uid] = (toks, rows)
                live.discard(r.uid)
    raise AssertionError(f"batch did not finish in {max_steps} steps")


def assert_close(got, want, label):
    assert got[0] == want[0], f"{label}: compiled {got[0]} != uncompiled {want[0]}"
    err = max(float(np.abs(a - b).max()) for a, b in zip(got[1], want[1]))
    assert err <= TOL, f"{label}: log-prob gap {err:.3g}"


def both(model, fn):
    """fn() with the compiled decode, then with the uncompiled path."""
    try:
        model.set_compiled_decode(True)
        got = fn()
        model.set_compiled_decode(False)
        want = fn()
    finally:
        model.set_compiled_decode(True)
    return got, want


@pytest.mark.parametrize("length", [1, 5, 47])  # the fixture's window is 32: across it
def test_batch1_compiled_equals_uncompiled(tiny, compiled_kinds, whole_steps, length):
    p = prompts([length], tiny.args.vocab_size, seed=length)[0]
    got, want = both(tiny, lambda: solo(tiny, p, 40))
    assert_close(got, want, f"prompt {length}")
    # Per layer: the step after the prompt (the window cache grows or trims there); a 1-token
    # prompt's own step has no Mamba state yet and runs uncompiled.
    assert whole_steps["ran"] >= 38 and whole_steps["declined"] <= 2, whole_steps
    if length > 1:
        assert compiled_kinds == {"mamba", "mamba_mem", "swa", "attn", "gmu", "cross"}


def cache_arrays(cache):
    out = []
    for c in cache:
        if isinstance(c, ArraysCache):
            out += [np.array(a) for a in c.cache]
        else:  # what attention reads, and where the next token goes
            out += [np.array(a) for a in c.keys_and_values()]
            out.append(np.array([c.offset, getattr(c, "_idx", 0)]))
    return out


def test_whole_step_leaves_the_caches_as_mlx_lm_does(tiny, whole_steps):
    """300 tokens after a 47-token prompt: the window caches rotate many times and the global
    cache grows past 256 slots; then the caches equal the uncompiled path's."""
    p = prompts([47], tiny.args.vocab_size, seed=3)[0]

    def run():
        cache = make_prompt_cache(tiny)
        toks = solo_with(tiny, p, 300, cache)
        return toks, cache_arrays(cache)

    got, want = both(tiny, run)
    assert got[0] == want[0]
    assert whole_steps["ran"] >= 298, whole_steps
    assert len(got[1]) == len(want[1])
    for a, b in zip(got[1], want[1]):
        assert a.shape == b.shape and float(np.abs(a - b).max()) <= TOL


def test_mixed_length_batch_compiled_equals_uncompiled(tiny, compiled_kinds):
    ps = prompts([3, 29, 47, 90, 8], tiny.args.vocab_size, seed=7)
    maxes = [20, 9, 14, 6, 11]

    def run():
        gen = BatchGenerator(tiny, sampler=greedy, prefill_batch_size=4, prefill_step_size=32)
        return batch(
            gen,
            {
                0: [dict(prompts=ps[:3], max_tokens=maxes[:3])],
                5: [dict(prompts=ps[3:], max_tokens=maxes[3:])],
            },
        )

    got, want = both(tiny, run)
    assert sorted(got) == sorted(want) == list(range(5))
    for uid in range(5):
        assert_close(got[uid], want[uid], f"row {uid} (len {len(ps[uid])})")
    assert {"mamba", "swa", "attn", "gmu", "cross"} <= compiled_kinds
