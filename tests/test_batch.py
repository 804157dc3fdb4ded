"""mlx-lm's BatchGenerator gives every row the tokens and log-probs it gets alone.

BatchGenerator right-pads prompts of different lengths in prefill (``prepare(lengths=...)``,
then ``finalize()`` rolls the padding to the left), merges per-request caches with left padding,
and decodes rows that joined at different times. The model has to keep padded positions out of
the Mamba state and conv window and mask them in every attention layer.
"""

import copy

import mlx.core as mx
import numpy as np
import pytest
from conftest import TINY
from mlx_lm.generate import BatchGenerator, PromptProcessingBatch, generate_step

from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash_mlx import load

LOGPROB_TOL = 1e-4  # fp32


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


@pytest.fixture(scope="module")
def tiny():
    return load(TINY, dtype=mx.float32)[0]


@pytest.fixture(scope="module")
def tutor():
    return load(DEFAULT_MODEL_DIR, dtype=mx.float32)


def random_prompts(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def solo(model, prompt, n, cache=None):
    """Tokens and log-prob rows of a plain batch-1 greedy run (stock generate_step)."""
    toks, rows = [], []
    for tok, logprobs in generate_step(
        mx.array(prompt), model, max_tokens=n, sampler=greedy, prompt_cache=cache
    ):
        toks.append(int(tok))
        rows.append(np.array(logprobs))
    return toks, rows


def run_batch(gen, schedule, max_steps=2000):
    """Drive ``gen``; ``schedule`` maps a step number to prompts inserted before it.

    Returns {uid: (tokens, logprob rows, final prompt cache)} for every finished row."""
    out, finished, live = {}, {}, set()
    for step in range(max_steps):
        for kwargs in schedule.get(step, []):
            live.update(gen.insert(**kwargs))
        if not live and max(schedule) <= step:
            return finished
        for r in gen.next_generated():
            toks, rows = out.setdefault(r.uid, ([], []))
            toks.append(r.token)
            rows.append(np.array(r.logprobs))
            if r.finish_reason is not None:
                finished[r.uid] = (toks, rows, r.prompt_cache)
                live.discard(r.uid)
    raise AssertionError(f"batch did not finish in {max_steps} steps")


def assert_same(got, want, label):
    toks, rows = got[:2]
    wtoks, wrows = want
    assert toks == wtoks, f"{label}: batched {toks} != solo {wtoks}"
    err = max(float(np.abs(a - b).max()) for a, b in zip(rows, wrows))
    assert err <= LOGPROB_TOL, f"{label}: log-prob gap {err:.3g}"


# The fixture's sliding window is 32: prompts below, across and far above it.
LENGTHS = [3, 29, 47, 90]


@pytest.mark.parametrize("prefill_step", [2048, 16])
def test_different_lengths_equal_solo(tiny, prefill_step):
    prompts = random_prompts(LENGTHS, tiny.args.vocab_size)
    n = 12
    gen = BatchGenerator(
        tiny, max_tokens=n, sampler=greedy, prefill_batch_size=8, prefill_step_size=prefill_step
    )
    got = run_batch(gen, {0: [dict(prompts=prompts)]})
    assert len(got) == len(prompts)
    for uid, p in enumerate(prompts):
        assert_same(got[uid], solo(tiny, p, n), f"len {len(p)} step {prefill_step}")


def test_prompt_longer_than_a_prefill_step_equal_solo(tiny):
    """PromptProcessingBatch.prompt() runs several model calls over one right-padded batch
    (rows that ended in an earlier chunk are all padding in the later ones)."""
    prompts = random_prompts([3, 47, 90, 33], tiny.args.vocab_size, seed=4)
    n = 10
    batch = PromptProcessingBatch(
        tiny,
        list(range(len(prompts))),
        [tiny.make_cache() for _ in prompts],
        prefill_step_size=16,
        fallback_sampler=greedy,
    )
    batch.prompt([p[:-1] for p in prompts])
    gen = batch.generate([[p[-1]] for p in prompts])
    got = [([], []) for _ in prompts]
    for _ in range(n):
        for (toks, rows), r in zip(got, gen.next()):
            toks.append(r.token)
            rows.append(np.array(r.logprobs))
    for p, g in zip(prompts, got):
        assert_same(g, solo(tiny, p, n), f"len {len(p)}")


def test_rows_joining_mid_generation_equal_solo(tiny):
    prompts = random_prompts([7, 61, 2, 38, 120], tiny.args.vocab_size, seed=1)
    maxes = [20, 9, 14, 6, 11]  # rows leave at different steps (filter)
    gen = BatchGenerator(tiny, sampler=greedy, prefill_batch_size=4, prefill_step_size=32)
    schedule = {
        0: [dict(prompts=prompts[:2], max_tokens=maxes[:2])],
        4: [dict(prompts=prompts[2:4], max_tokens=maxes[2:4])],
        9: [dict(prompts=prompts[4:], max_tokens=maxes[4:])],
    }
    got = run_batch(gen, schedule)
    assert sorted(got) == list(range(5))
    for uid, (p, n) in enumerate(zip(prompts, maxes)):
        assert_same(got[uid], solo(tiny, p, n), f"row {uid} (len {len(p)})")


def test_extracted_caches_continue_alone_and_merge_back(tiny):
    """A finished row's extracted cache is its true state: it continues alone, and merged with
    histories of other lengths (left padding) into a new batch, like a fresh run of the whole
    history."""
    vocab = tiny.args.vocab_size
    prompts = random_prompts([5, 52, 23], vocab, seed=2)
    n = 8
    gen = BatchGenerator(tiny, max_tokens=n, sampler=greedy, prefill_step_size=2048)
    first = run_batch(gen, {0: [dict(prompts=prompts)]})
    follow = random_prompts([4, 30, 11], vocab, seed=3)
    # the extracted cache holds the prompt and every generated token
    wants = [solo(tiny, prompts[u] + first[u][0] + follow[u], n) for u in range(3)]
    for u in range(3):
        got = solo(tiny, follow[u], n, cache=copy.deepcopy(first[u][2]))
        assert_same(got, wants[u], f"row {u} alone from its extracted cache")

    gen = BatchGenerator(tiny, max_tokens=n, sampler=greedy, prefill_step_size=2048)
    caches = [copy.deepcopy(first[u][2]) for u in range(3)]
    got = run_batch(gen, {0: [dict(prompts=follow, caches=caches)]})
    for u in range(3):
        assert_same(got[u], wants[u], f"row {u} merged from its extracted cache")


TUTOR_QUESTIONS = [
    "What is 47 + 38?",
    "Compute 12 * 7.",
    "A shop sells pens at 3 dollars each. Tom buys 14 pens and pays with a 50 dollar note. "
    "How much change does he get back, in dollars?",
    "Solve for x: 5x - 9 = 31.",
]


def test_tutor_batched_answers_equal_solo(tutor):
    model, tok = tutor
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in TUTOR_QUESTIONS
    ]
    assert len({len(p) for p in prompts}) == len(prompts)
    n = 48
    gen = BatchGenerator(model, max_tokens=n, sampler=greedy, prefill_step_size=2048)
    got = run_batch(gen, {0: [dict(prompts=prompts)]})
    for uid, p in enumerate(prompts):
        assert_same(got[uid], solo(model, p, n), TUTOR_QUESTIONS[uid])
