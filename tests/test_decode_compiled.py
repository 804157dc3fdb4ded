"""The compiled decode step gives what the uncompiled path gives (fixture, float32).

Batch 1 through mlx-lm's ``generate_step`` (plain caches: every layer kind runs compiled), and
mixed-length batches through ``BatchGenerator`` (batch caches with left padding after the
prompt, rows joining mid-generation): tokens equal and log-probs within 1e-5. A spy checks that
the compiled functions really ran for every layer kind.
"""

import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY
from mlx_lm.generate import BatchGenerator, generate_step

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


def prompts(lengths, vocab, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def solo(model, prompt, n):
    toks, rows = [], []
    for tok, logprobs in generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy):
        toks.append(int(tok))
        rows.append(np.array(logprobs))
    return toks, rows


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
def test_batch1_compiled_equals_uncompiled(tiny, compiled_kinds, length):
    p = prompts([length], tiny.args.vocab_size, seed=length)[0]
    got, want = both(tiny, lambda: solo(tiny, p, 40))
    assert_close(got, want, f"prompt {length}")
    if length > 1:  # a 1-token prompt has no Mamba state yet at its first step
        assert compiled_kinds == {"mamba", "mamba_mem", "swa", "attn", "gmu", "cross"}


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
