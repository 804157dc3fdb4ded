"""The MLX SambaY model against golden logits computed from Microsoft's own code."""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import REAL_CONFIG
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_causal_mask

from phiflash_mlx.model import (
    Model,
    ModelArgs,
    ssm_scan_chunked,
    ssm_step,
    window_band_attention,
)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def run_prefill(model, ids):
    return np.array(model(mx.array(ids)[None])[0].astype(mx.float32))


def run_decode(model, prompt, decode_ids):
    cache = model.make_cache()
    model(mx.array(prompt)[None], cache=cache)
    rows = [model(mx.array([[int(t)]]), cache=cache)[0, -1] for t in decode_ids]
    return np.array(mx.stack(rows).astype(mx.float32))


def run_chunks(model, prompt, bounds):
    cache = model.make_cache()
    rows = [
        model(mx.array(prompt[a:b])[None], cache=cache)[0, -1]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return np.array(mx.stack(rows).astype(mx.float32))


def greedy(model, prompt, n):
    cache = model.make_cache()
    logits = model(mx.array(prompt)[None], cache=cache)
    out = []
    for _ in range(n):
        tok = int(mx.argmax(logits[0, -1]).item())
        out.append(tok)
        logits = model(mx.array([[tok]]), cache=cache)
    return out


def test_fp32_prefill_matches_golden(tiny_fp32, golden):
    model, _ = tiny_fp32
    assert rel_err(run_prefill(model, golden["prompt_ids"]), golden["logits_prefill"]) <= 1e-4


def test_fp32_decode_matches_golden(tiny_fp32, golden):
    model, _ = tiny_fp32
    got = run_decode(model, golden["prompt_ids"], golden["decode_ids"])
    assert rel_err(got, golden["logits_decode"]) <= 1e-4


def test_fp32_uneven_chunks_match_golden(tiny_fp32, golden):
    model, _ = tiny_fp32
    got = run_chunks(model, golden["prompt_ids"], golden["chunk_bounds"])
    assert rel_err(got, golden["logits_chunked"]) <= 1e-4


def test_fp32_greedy_continuation(tiny_fp32, golden):
    model, _ = tiny_fp32
    assert greedy(model, golden["prompt_ids"], 16) == golden["greedy_ids"].tolist()


def test_bf16_within_fixture_tolerance(tiny_bf16, golden):
    model, _ = tiny_bf16
    assert model.model.layers[0].mlp.fc1.weight.dtype == mx.bfloat16
    assert model.model.layers[0].attn.A_log.dtype == mx.float32
    prefill = run_prefill(model, golden["prompt_ids"])
    assert np.abs(prefill - golden["logits_prefill"]).max() < 1.4
    decode = run_decode(model, golden["prompt_ids"], golden["decode_ids"])
    assert np.abs(decode - golden["logits_decode"]).max() < 1.4
    agree = (prefill.argmax(-1) == golden["logits_prefill"].argmax(-1)).mean()
    assert agree >= 0.9
    assert greedy(model, golden["prompt_ids"], 16) == golden["greedy_ids"].tolist()


def test_real_config_parameters_match_checkpoint_layout():
    config = json.loads((REAL_CONFIG / "config.json").read_text())
    tensors = json.loads((REAL_CONFIG / "tensors.json").read_text())
    expected = {k: tuple(t["shape"]) for k, t in tensors["tensors"].items()}
    model = Model(ModelArgs.from_dict(config))  # lazy: nothing is allocated
    # The checkpoint (no lm_head: tied) must survive sanitize unchanged in names and shapes.
    fake = {k: mx.zeros(s) for k, s in expected.items()}
    names = {k: tuple(v.shape) for k, v in model.sanitize(fake).items()}
    ours = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    assert ours == names == expected
    assert sum(np.prod(s) for s in ours.values()) == 3_852_562_944
    kinds = [layer.kind for layer in model.layers]
    assert kinds[:16] == ["mamba", "swa"] * 8
    assert kinds[16:18] == ["mamba_mem", "attn"]
    assert kinds[18:] == ["gmu", "cross"] * 7


def test_sliding_window_encodings_agree():
    base = json.loads((REAL_CONFIG / "config.json").read_text())
    scalar = ModelArgs.from_dict(base)
    per_layer = ModelArgs.from_dict({**base, "sliding_window": scalar.windows})
    types = ["sliding_attention" if w else "full_attention" for w in scalar.windows]
    with_types = ModelArgs.from_dict({**base, "layer_types": types})
    assert scalar.windows == per_layer.windows == with_types.windows
    assert [i for i, w in enumerate(scalar.windows) if w] == list(range(1, 16, 2))
    assert scalar.mamba_dt_rank == 160


def test_chunked_scan_equals_token_by_token_and_is_stable():
    mx.random.seed(0)
    b, T, d, n = 1, 150, 8, 16
    u = mx.random.normal((b, T, d))
    dt = mx.random.uniform(0, 30.0, (b, T, d))  # large steps: decays underflow to 0
    A = -mx.exp(mx.random.normal((d, n)))
    B, C = mx.random.normal((b, T, n)), mx.random.normal((b, T, n))
    D = mx.random.normal((d,))
    s0 = mx.random.normal((b, d, n))
    y, s = ssm_scan_chunked(u, dt, A, B, C, D, s0, block=32)
    state, ys = s0, []
    for t in range(T):
        yt, state = ssm_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        ys.append(yt)
    ref = mx.stack(ys, axis=1)
    assert bool(mx.all(mx.isfinite(y)))
    assert mx.abs(y - ref).max().item() < 1e-4 * max(1.0, mx.abs(ref).max().item())
    assert mx.abs(s - state).max().item() < 1e-4 * max(1.0, mx.abs(state).max().item())


def test_prefill_chunk_does_not_evaluate_cross_decoder(tiny_bf16):
    """mlx-lm's prefill evaluates only the cache states of a prompt chunk. Their graph must
    not reach the GMU/cross layers: it is identical with the cross-decoder cut off."""
    import io

    model, _ = tiny_bf16
    ids = mx.array([list(range(1, 41))])

    def primitives(*arrays):
        buf = io.StringIO()
        mx.export_to_dot(buf, *arrays)
        return sorted(
            line.split('label ="')[1].split('"')[0]
            for line in buf.getvalue().splitlines()
            if 'label ="' in line
        )

    def graphs(m):
        cache = m.make_cache()
        logits = m(ids, cache=cache)
        states = [a for c in cache for a in c.state if isinstance(a, mx.array)]
        return primitives(*states), primitives(logits)

    full_states, full_logits = graphs(model)
    layers = model.model.layers
    try:
        model.model.layers = layers[:6]  # self-decoder + memory + global layer
        cut_states, cut_logits = graphs(model)
    finally:
        model.model.layers = layers
    assert full_states == cut_states
    assert len(full_logits) > len(cut_logits)


def test_cache_layout(tiny_bf16):
    from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

    model, _ = tiny_bf16
    cache = model.make_cache()
    assert [type(c) for c in cache] == [
        ArraysCache,
        RotatingKVCache,
        ArraysCache,
        RotatingKVCache,
        ArraysCache,
        KVCache,
    ]
    assert cache[1].max_size == 32


@pytest.mark.parametrize("split", [1, 31, 32, 33, 70])
def test_swa_window_across_chunk_boundaries(tiny_fp32, golden, split):
    model, _ = tiny_fp32
    prompt = golden["prompt_ids"]
    got = run_chunks(model, prompt, [0, split, len(prompt)])[-1]
    assert rel_err(got, golden["logits_prefill"][-1]) <= 1e-4


@pytest.mark.parametrize(
    "T, S, window, block", [(100, 100, 16, 8), (100, 115, 16, 16), (70, 101, 32, 24), (9, 9, 4, 4)]
)
def test_window_band_attention_equals_the_whole_window_mask(T, S, window, block):
    """The banded prompt attention (blocks stacked along the batch axis, one band mask) gives
    what one attention call with the whole [T, S] sliding-window mask gives: first chunks
    (S = T, padded slots before key 0) and later ones (S - T earlier keys), blocks that do
    not divide T, paired query rows (GQA)."""
    mx.random.seed(T + S)
    q = mx.random.normal((2, 6, T, 8))
    k, v = mx.random.normal((2, 3, S, 8)), mx.random.normal((2, 3, S, 8))
    mask = create_causal_mask(T, S - T, window_size=window)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    got = window_band_attention(q, k, v, window, 0.3, block)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
