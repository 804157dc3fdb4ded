"""The GGUF engine (phiflash's Engine protocol over llama-cpp-python) on the sambay-tiny fixture."""

import json
from pathlib import Path

import numpy as np
import pytest

from phiflash.engine import Chunk, Engine, GenerationParams
from phiflash.quantize.gguf_convert import convert
from phiflash_gguf.engine import GGUFEngine

TINY = Path(__file__).parent / "fixtures" / "sambay-tiny"
GREEDY = GenerationParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return convert(TINY, tmp_path_factory.mktemp("e") / "tiny-f32.gguf", "f32", progress=False)


@pytest.fixture(scope="module")
def engine(gguf_path):
    return GGUFEngine(str(gguf_path))  # the path alone, as open_engine calls it


def test_protocol_and_metadata(engine, gguf_path, golden):
    assert isinstance(engine, Engine)
    assert engine.name == "gguf" and engine.quantization == "F32"
    assert engine.model_path == str(gguf_path)
    assert engine.context_limit == 4096  # the fixture's max_position_embeddings caps n_ctx
    messages = json.loads(str(golden["prompt_messages"]))
    assert engine.apply_chat_template(messages) == str(golden["prompt_text"])
    assert engine.count_tokens(messages) == len(golden["prompt_ids"])


def test_stop_tokens_are_the_gguf_eos_list(engine):
    import llama_cpp

    eog = [t for t in range(1012) if llama_cpp.llama_vocab_is_eog(engine._vocab, t)]
    assert eog == [1000, 1003]  # <|endoftext|>, <|end|>


def test_greedy_stream_matches_golden(engine, golden):
    chunks = list(engine.stream_prompt(str(golden["prompt_text"]), GREEDY))
    assert all(isinstance(c, Chunk) for c in chunks)
    assert [c.token for c in chunks] == golden["greedy_ids"].tolist()
    last = chunks[-1]
    assert last.finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    assert last.prompt_tokens == len(golden["prompt_ids"]) and last.generation_tokens == 16
    assert last.prompt_tps > 0 and last.generation_tps > 0 and last.peak_memory_gb > 0
    text = "".join(c.text for c in chunks)
    assert text == engine.llm.detokenize(golden["greedy_ids"].tolist()).decode("utf-8", "replace")


def test_stops_on_end_token(engine, golden, monkeypatch):
    import llama_cpp

    real = llama_cpp.llama_sampler_sample
    calls = []

    def fake(smpl, ctx, idx):
        calls.append(1)
        return 1003 if len(calls) == 3 else real(smpl, ctx, idx)

    monkeypatch.setattr(llama_cpp, "llama_sampler_sample", fake)
    chunks = list(engine.stream_prompt(str(golden["prompt_text"]), GREEDY))
    assert chunks[-1].finish_reason == "stop" and chunks[-1].text == ""
    assert [c.token for c in chunks[:2]] == golden["greedy_ids"][:2].tolist()


def test_cancel(engine, golden):
    n = [0]

    def stop():
        n[0] += 1
        return n[0] > 4

    chunks = list(engine.stream_prompt(str(golden["prompt_text"]), GREEDY, stop))
    assert chunks[-1].finish_reason == "cancelled" and len(chunks) == 5


def test_follow_up_reuses_the_cache(gguf_path, engine):
    params = GenerationParams(max_tokens=6, temperature=0.0)
    turn1 = [{"role": "user", "content": "What is 12 + 30?"}]
    engine.reset()
    # one token: the cache then holds exactly turn 1's prompt, a prefix of turn 2's
    reply = "".join(c.text for c in engine.stream(turn1, GenerationParams(max_tokens=1)))
    n1 = engine.count_tokens(turn1)
    assert len(engine._tokens) == n1
    turn2 = turn1 + [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And 5 more?"},
    ]
    out = [c.token for c in engine.stream(turn2, params)]
    assert engine.last_prompt_eval == engine.count_tokens(turn2) - n1
    fresh = GGUFEngine(str(gguf_path))
    assert [c.token for c in fresh.stream(turn2, params)] == out
    assert fresh.last_prompt_eval == fresh.count_tokens(turn2)
    # a different conversation starts from an empty cache
    other = [{"role": "user", "content": "Something else"}]
    list(engine.stream(other, params))
    assert engine.last_prompt_eval == engine.count_tokens(other)


def test_sampling_is_seeded(engine, golden):
    p = GenerationParams(max_tokens=8, temperature=0.8, top_p=0.9, top_k=50, seed=7)
    a = [c.token for c in engine.stream_prompt("Hello", p)]
    b = [c.token for c in engine.stream_prompt("Hello", p)]
    assert a == b and len(a) >= 1


def test_mlx_and_gguf_greedy_tokens_agree(engine, tiny_fp32, golden):
    import mlx.core as mx

    model, _ = tiny_fp32
    ids = golden["prompt_ids"].tolist()
    cache = model.make_cache()
    logits = model(mx.array(ids)[None], cache=cache)
    mlx_out = []
    for _ in range(16):
        tok = int(mx.argmax(logits[0, -1]).item())
        mlx_out.append(tok)
        logits = model(mx.array([[tok]]), cache=cache)
    gguf_out = [c.token for c in engine.stream_prompt(str(golden["prompt_text"]), GREEDY)]
    assert gguf_out == mlx_out == golden["greedy_ids"].tolist()
    assert np.all(np.array(gguf_out) >= 0)
