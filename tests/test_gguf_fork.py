"""The SambaY llama.cpp fork against the golden logits of the sambay-tiny fixture.

Builds the fork through the cached build (a no-op when `make fork` ran) and converts the
fixture with `phiflash convert-gguf`'s library function.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phiflash.quantize.gguf_convert import convert
from phiflash_gguf.build import ensure_llama_cpp

TINY = Path(__file__).parent / "fixtures" / "sambay-tiny"
GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def lc():
    return ensure_llama_cpp()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {
        t: convert(TINY, out / f"tiny-{t}.gguf", t, progress=False)
        for t in ("f32", "f16", "bf16", "q8_0")
    }


def _llm(lc, path, flash_attn, f32_cache=True, logits_all=True):
    kw = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    return lc.Llama(
        str(path),
        n_ctx=256,
        n_batch=128,
        logits_all=logits_all,
        flash_attn=flash_attn,
        n_threads=2,
        verbose=False,
        **kw,
    )


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _last_logits(lc, llm):
    return np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa-on", "fa-off"])
def test_f32_prefill_and_decode_match_golden(lc, ggufs, golden, flash_attn):
    llm = _llm(lc, ggufs["f32"], flash_attn)
    ids = golden["prompt_ids"].tolist()
    assert llm.tokenize(str(golden["prompt_text"]).encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    assert _rel(llm.scores[: len(ids)], golden["logits_prefill"]) <= 1e-4
    for t in golden["decode_ids"].tolist():
        llm.eval([t])
    decode = llm.scores[len(ids) : len(ids) + len(golden["decode_ids"])]
    assert _rel(decode, golden["logits_decode"]) <= 1e-4


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa-on", "fa-off"])
def test_f32_chunked_prompt_last_rows(lc, ggufs, golden, flash_attn):
    # only the last row of each chunk is asked for: the cross-decoder runs on that row only
    llm = _llm(lc, ggufs["f32"], flash_attn, logits_all=False)
    ids, b = golden["prompt_ids"].tolist(), golden["chunk_bounds"].tolist()
    for k in range(len(b) - 1):
        llm.eval(ids[b[k] : b[k + 1]])
        assert _rel(_last_logits(lc, llm), golden["logits_chunked"][k]) <= 1e-4


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa-on", "fa-off"])
def test_f32_greedy_continuation(lc, ggufs, golden, flash_attn):
    llm = _llm(lc, ggufs["f32"], flash_attn, logits_all=False)
    ids = golden["prompt_ids"].tolist()
    llm.eval(ids)
    out = []
    for _ in range(len(golden["greedy_ids"])):
        tok = int(np.argmax(_last_logits(lc, llm)))
        out.append(tok)
        llm.eval([tok])
    assert out == golden["greedy_ids"].tolist()


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_half_precision_within_bf16_tolerance(lc, ggufs, golden, outtype):
    # F16 KV cache (the default) and half-precision weights: the fixture README's bf16 bar
    llm = _llm(lc, ggufs[outtype], flash_attn=True, f32_cache=False)
    ids = golden["prompt_ids"].tolist()
    llm.eval(ids)
    logits = llm.scores[: len(ids)]
    assert float(np.abs(logits - golden["logits_prefill"]).max()) <= 1.4
    agree = (logits.argmax(1) == golden["logits_prefill"].argmax(1)).mean()
    assert agree >= 0.95


def test_q8_0_top1_agreement_with_f32(lc, ggufs, golden):
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(ggufs["q8_0"]).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.ssm_x.weight"] == "Q8_0"
    # dt_proj rows are dt_rank = 8 wide here, narrower than a Q8_0 block: clean F16 fallback
    assert types["blk.0.ssm_dt.weight"] == "F16"
    assert types["blk.0.ssm_a"] == "F32" and types["blk.1.attn_sub_norm.weight"] == "F32"

    ids = golden["prompt_ids"].tolist()
    rows = {}
    for t in ("f32", "q8_0"):
        llm = _llm(lc, ggufs[t], flash_attn=True)
        llm.eval(ids)
        rows[t] = llm.scores[: len(ids)].copy()
    f32, q8 = rows["f32"], rows["q8_0"]
    agree = q8.argmax(1) == f32.argmax(1)
    top2 = np.sort(f32, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    # This random tiny model has near-ties at many prompt positions (10 of 103 have a top-1
    # margin < 0.11, logit std 3.9); even bf16 keeps only 95% of the argmaxes (fixture
    # README), and Q8_0 moves a row's logits by 0.9 (median of the row's max). Which of the
    # closer calls flip depends on the CPU's kernels: on an AMD EPYC (AVX2) 65 of the 67 rows
    # with a margin >= 0.5 kept their argmax (margins 0.53 and 0.54 flipped), 84.5% of all
    # rows; a Xeon (AVX-512) passed 98% and 85% there. So the 98% bar is held where F32's
    # margin exceeds that movement (>= 1.0: 48 rows, 100% on the EPYC), plus overall bounds.
    # The bar on a model with real margins: test_bundled_tutor_model_... (100%).
    assert agree[margin >= 1.0].mean() >= 0.98
    assert agree.mean() >= 0.8
    top3 = np.argsort(f32, 1)[:, -3:]
    assert all(q8.argmax(1)[i] in top3[i] for i in range(len(ids)))
    p, q = _softmax(f32), _softmax(q8)
    assert float((p * (np.log(p) - np.log(q))).sum(1).mean()) <= 0.05


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_q4_k_m_falls_back_where_k_quants_do_not_fit(lc, tmp_path, golden):
    from gguf import GGUFReader

    path = convert(TINY, tmp_path / "tiny-q4km.gguf", "q4_k_m", progress=False)
    tensors = GGUFReader(path).tensors
    types = {t.name: t.tensor_type.name for t in tensors}
    # K-quants need rows that are a multiple of 256; hidden 128 is not, d_inner 256 is
    for t in tensors:
        if t.tensor_type.name.endswith("_K"):
            assert t.shape[0] % 256 == 0, t.name
    assert types["blk.0.ffn_up.weight"] == "Q5_0"  # Q4_K fallback
    assert types["blk.0.ssm_out.weight"] == "Q4_K"
    assert types["blk.2.ssm_x.weight"] == "Q8_0"
    llm = _llm(lc, path, flash_attn=True)
    ids = golden["prompt_ids"].tolist()
    llm.eval(ids)
    assert np.isfinite(llm.scores[: len(ids)]).all()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa-on", "fa-off"])
def test_window_sized_swa_cache_and_ubatches_without_outputs(lc, ggufs, golden, flash_attn):
    # 32-token ubatches (most with no output row) over a window-sized SWA cache that evicts
    llm = lc.Llama(
        str(ggufs["f32"]),
        n_ctx=256,
        n_batch=128,
        n_ubatch=32,
        swa_full=False,
        flash_attn=flash_attn,
        n_threads=2,
        verbose=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )
    ids = golden["prompt_ids"].tolist()
    llm.eval(ids)
    assert _rel(_last_logits(lc, llm)[None], golden["logits_prefill"][-1:]) <= 1e-4
    for k, t in enumerate(golden["decode_ids"].tolist()):
        llm.eval([t])
        assert _rel(_last_logits(lc, llm)[None], golden["logits_decode"][k : k + 1]) <= 1e-4


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("f32_cache", [True, False], ids=["f32-kv", "f16-kv"])
def test_decode_op_matches_attention_ops_over_long_context(lc, ggufs, f32_cache, threads):
    # With flash attention on, a decode step's differential attention runs in the fork's own
    # CPU op (one pass over the keys, in 1024-key chunks merged after); with it off, in ggml's
    # attention ops. 4200 tokens of context: four chunks for the global layer and the
    # cross-decoder, most of the window-sized SWA cache masked. The op splits (chunk, KV pair)
    # items evenly over the threads: one thread walks both of the fixture's pairs through every
    # chunk; three threads start and stop mid-chunk (8 items: 2, 3, 3).
    rng = np.random.default_rng(3)
    ids = rng.integers(10, 250, size=4200).tolist()
    steps = rng.integers(10, 250, size=3).tolist()
    logits = {}
    for fa in (True, False):
        llm = lc.Llama(
            str(ggufs["f32"]),
            n_ctx=4240,
            n_batch=512,
            flash_attn=fa,
            n_threads=threads,
            verbose=False,
            **({"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}),
        )
        llm.eval(ids)
        rows = []
        for t in steps:
            llm.eval([t])
            rows.append(_last_logits(lc, llm).copy())
        logits[fa] = np.stack(rows)
    # F16 cache: the mul_mat path rounds softmax weights to F16, the op keeps them in F32
    assert _rel(logits[True], logits[False]) <= (1e-4 if f32_cache else 5e-3)


def test_bundled_tutor_model_q8_0_and_q4_0_agree_with_f32(lc, tmp_path):
    """The issue's Q8_0 bar (top-1 agreement with F32 >= 98%) on a trained model, whose logits
    are not near-tied like the random fixture's: 512 tokens of held-out tutoring dialogues."""
    from phiflash.paths import DEFAULT_MODEL_DIR
    from phiflash.quantize.fidelity import compare_logits
    from phiflash.tutor.data import texts
    from phiflash_gguf.engine import position_logits
    from phiflash_mlx.load import load_tokenizer

    tok = load_tokenizer(DEFAULT_MODEL_DIR)
    ids = tok.encode("".join(texts("test", 12)), add_special_tokens=False)[:512]
    logits = {}
    for t in ("f32", "q8_0", "q4_0"):
        path = convert(DEFAULT_MODEL_DIR, tmp_path / f"{t}.gguf", t, progress=False)
        logits[t] = position_logits(path)(ids)
    top1 = {
        t: compare_logits(logits["f32"], logits[t], ids)["top1_agreement"] for t in ("q8_0", "q4_0")
    }
    assert top1["q8_0"] >= 0.98  # measured 100%
    assert top1["q4_0"] >= 0.95  # measured 98.8%


def _with_kv_heads(dst: Path, n_kv_heads: int, seed: int) -> Path:
    """The fixture with ``num_key_value_heads`` changed: the self-decoder attention layers'
    fused QKV projections are drawn again (F32) at the new height, everything else is kept."""
    import mlx.core as mx

    shutil.copytree(TINY, dst, ignore=shutil.ignore_patterns("golden.npz"))
    cfg = json.loads((TINY / "config.json").read_text())
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    old_rows = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    new_rows = (cfg["num_attention_heads"] + 2 * n_kv_heads) * hd
    cfg["num_key_value_heads"] = n_kv_heads
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))

    weights = mx.load(str(dst / "model.safetensors"))
    rng = np.random.default_rng(seed)
    for name in sorted(weights):
        w = weights[name]
        if ".Wqkv." in name and w.shape[0] == old_rows:  # a layer that writes K and V
            shape = (new_rows, *w.shape[1:])
            weights[name] = mx.array(rng.normal(0, 0.1, shape).astype(np.float32))
    mx.save_safetensors(str(dst / "model.safetensors"), weights)
    return dst


@pytest.mark.parametrize("n_kv_heads", [8, 2], ids=["1-query-pair-per-kv-pair", "4-per-kv-pair"])
def test_other_gqa_ratios_match_mlx(lc, tmp_path, n_kv_heads):
    """The fixture has 2 query pairs per KV pair; the decode op's SIMD paths are specialised
    for 1, 2 and 4. The same model with 8 and 2 KV heads (1 and 4 per pair), against the MLX
    engine in float32, flash attention on (the decode op) and off (ggml's attention ops)."""
    import mlx.core as mx

    from phiflash_mlx import load

    src = _with_kv_heads(tmp_path / "hf", n_kv_heads, seed=n_kv_heads)
    path = convert(src, tmp_path / "tiny.gguf", "f32", progress=False)
    rng = np.random.default_rng(n_kv_heads)
    ids = rng.integers(10, 250, size=600).tolist()
    steps = rng.integers(10, 250, size=3).tolist()

    model, _ = load(src, dtype=mx.float32)
    cache = model.make_cache()
    model(mx.array(ids)[None], cache=cache)
    ref = np.stack([np.array(model(mx.array([[t]]), cache=cache)[0, -1]) for t in steps])
    for fa in (True, False):
        llm = lc.Llama(str(path), n_ctx=640, n_batch=256, flash_attn=fa, n_threads=2,
                       verbose=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)  # fmt: skip
        llm.eval(ids)
        rows = []
        for t in steps:
            llm.eval([t])
            rows.append(_last_logits(lc, llm).copy())
        assert _rel(np.stack(rows), ref) <= 1e-4, f"flash_attn={fa}"
