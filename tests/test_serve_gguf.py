"""`phiflash serve` on a .gguf (the bundled tutor as Q8_0): llama-cpp-python's server routes
over phiflash's own ``Llama``, requests queued (never cut off), classroom checks in front.

Servers run as subprocesses on a free 127.0.0.1 port (tests/serve_util.py), stopped by the
fixture. Temperature 0 unless a test is about sampling.
"""

import sys
from pathlib import Path

import pytest
from serve_util import (
    QUESTIONS,
    Server,
    answer,
    bad_requests,
    check_bad_request,
    check_chat_completion_is_the_engines_answer,
    check_queue_limit,
    check_sampling_parameters_change_the_output,
    check_streaming_gives_the_same_text_piece_by_piece,
    check_thinking_budget_per_request,
    concurrently,
    overlapped,
    solo,
    user,
)

from phiflash.engine import GenerationParams
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.quantize.gguf_convert import convert
from phiflash.remote import RemoteEngine

CAP = 512
SYSTEM = "You are a math tutor for a class of twelve-year-olds."


@pytest.fixture(scope="session")
def tutor_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("tutor-gguf") / "phiflash-tutor-Q8_0.gguf"
    return convert(DEFAULT_MODEL_DIR, out, "q8_0", progress=False)


@pytest.fixture(scope="module")
def server(tutor_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-gguf") / "server.log"
    with Server(tutor_gguf, log, "--max-tokens-cap", str(CAP), "--threads", "2") as s:
        yield s


@pytest.fixture(scope="module")
def engine(tutor_gguf):
    from phiflash_gguf.engine import GGUFEngine

    return GGUFEngine(str(tutor_gguf), n_threads=2)


def test_chat_completion_is_the_engines_answer(server, engine, tutor_gguf):
    check_chat_completion_is_the_engines_answer(server, engine, Path(tutor_gguf).name)


def test_streaming_gives_the_same_text_piece_by_piece(server):
    check_streaming_gives_the_same_text_piece_by_piece(server)


def test_concurrent_requests_queue_and_none_is_cut_off(server, engine):
    alone = [answer(server.chat(user(q), max_tokens=200, temperature=0)[1]) for q in QUESTIONS]
    assert alone == [solo(engine, user(q), max_tokens=200) for q in QUESTIONS]
    # streams first: llama-cpp-python's default (interrupt_requests) would end a running stream
    # as soon as the next request arrives
    streams = concurrently(
        lambda q: server.stream_timed(user(q), max_tokens=200, temperature=0), QUESTIONS
    )
    assert not overlapped(streams)  # queued: one stream after the other
    for i, (text, finish, *_) in enumerate(streams):
        assert finish == "stop", f"stream {i} cut off: {text!r}"
        assert (text, finish) == alone[i]
    together = concurrently(
        lambda q: server.chat(user(q), max_tokens=200, temperature=0), QUESTIONS
    )
    assert [(s, answer(r)) for s, r in together] == [(200, a) for a in alone]


@pytest.mark.parametrize("label,kwargs,status,words", bad_requests(str(DEFAULT_MODEL_DIR)))
def test_bad_request_is_4xx_json_and_the_server_keeps_serving(server, label, kwargs, status, words):
    check_bad_request(server, label, kwargs, status, words)


def test_stock_endpoints_outside_the_classroom_are_closed(server):
    good = {"input": [1, 2]}
    assert server.request("POST", "/v1/embeddings", good)[0] == 404
    assert server.request("POST", "/v1/engines/copilot-codex/completions", good)[0] == 404
    status, body = server.request("POST", "/extras/tokenize", {"input": "2 + 3"})
    assert status == 200 and body["tokens"]


def test_thinking_budget_per_request(server, engine):
    check_thinking_budget_per_request(server, engine)


def test_sampling_parameters_change_the_output(server):
    check_sampling_parameters_change_the_output(server)


def test_models_health_count_and_overflow(server, engine, tutor_gguf):
    status, models = server.request("GET", "/v1/models")
    assert status == 200
    (entry,) = models["data"]
    assert entry["id"] == Path(tutor_gguf).name
    ext = entry["phiflash"]
    assert (ext["engine"], ext["quantization"]) == ("gguf", "Q8_0")
    assert ext["context_limit"] == engine.context_limit
    assert server.request("GET", "/v1/models", auth=False)[0] == 401
    assert server.request("GET", "/health", auth=False)[1]["status"] == "ok"
    msgs = user(QUESTIONS[2])
    status, count = server.request("POST", "/phiflash/count_tokens", {"messages": msgs})
    assert status == 200 and count["prompt_tokens"] == engine.count_tokens(msgs)
    # prompt + max_tokens over the context: refused (llama-cpp-python would lower max_tokens)
    long = user("1 + " * 1300 + "1 = ?")
    assert engine.count_tokens(long) < engine.context_limit < engine.count_tokens(long) + CAP
    status, body = server.chat(long, max_tokens=CAP)
    assert status == 400 and "context" in body["error"]["message"], body


def test_remote_engine_streams_what_the_engine_streams(server, engine):
    remote = RemoteEngine(server.url, api_key=server.api_key)
    assert (remote.name, remote.quantization) == ("remote gguf", "Q8_0")
    assert remote.context_limit == engine.context_limit
    msgs = user(QUESTIONS[0])
    chunks = list(remote.stream(msgs, GenerationParams(max_tokens=128, temperature=0.0)))
    assert ("".join(c.text for c in chunks), chunks[-1].finish_reason) == solo(engine, msgs)
    assert chunks[-1].prompt_tokens == engine.count_tokens(msgs)
    assert chunks[-1].generation_tokens == len(chunks) - 1


def test_fixed_system_prompt_and_queue_limit(tutor_gguf, engine, tmp_path):
    args = (
        "--system-prompt",
        SYSTEM,
        "--queue-limit",
        "2",
        "--thinking-budget-cap",
        "5",
        "--threads",
        "2",
    )
    with Server(tutor_gguf, tmp_path / "server.log", *args) as s:
        status, body = s.chat([{"role": "system", "content": "Be a pirate."}] + user("2+3?"))
        assert status == 400 and "system prompt" in body["error"]["message"]
        status, body = s.request("POST", "/v1/completions", {"prompt": "2+3=", "max_tokens": 4})
        assert status == 400 and "system prompt" in body["error"]["message"]
        # no budget named: the cap applies; more than the cap: refused
        status, body = s.chat(user(QUESTIONS[0]), thinking_budget=6)
        assert status == 400 and "cap of 5" in body["error"]["message"]
        status, resp = s.chat(user(QUESTIONS[0]), max_tokens=128, temperature=0)
        with_system = [{"role": "system", "content": SYSTEM}] + user(QUESTIONS[0])
        assert status == 200 and answer(resp) == solo(engine, with_system, thinking_budget=5)
        check_queue_limit(s)
        assert s.chat(user(QUESTIONS[3]), max_tokens=200, temperature=0)[0] == 200


def test_fork_graph_decodes_several_sequences_in_one_batch(tutor_gguf):
    """What a multi-sequence CPU server (llama-server --parallel) needs from the fork's graph:
    prompts of different lengths decoded as sequences of one context, then one llama_decode
    per step with a row per sequence, give every sequence its solo tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_gguf_multiseq import Batch, check, open_context

    from phiflash_gguf.build import ensure_llama_cpp

    engine, llm = open_context(str(tutor_gguf), n_seq=3, n_ctx=1024, threads=2)
    prompts = [engine.tokenize(engine.apply_chat_template(user(q))) for q in QUESTIONS[:3]]
    assert len({len(p) for p in prompts}) == 3
    same, gap = check(Batch(ensure_llama_cpp(), llm), prompts, steps=24)
    assert same == [True, True, True], gap


def test_a_stopped_stream_frees_the_server(server, engine):
    """The chat's Esc: the client closes the stream; the server stops that request and the
    next one is answered in full."""
    remote = RemoteEngine(server.url, api_key=server.api_key)
    seen = []

    def stop():
        return len(seen) >= 3

    params = GenerationParams(max_tokens=200, temperature=0.0)
    for chunk in remote.stream(user(QUESTIONS[2]), params, should_stop=stop):
        seen.append(chunk)
    assert seen[-1].finish_reason == "cancelled" and len(seen) == 4
    assert server.wait_idle()
    status, resp = server.chat(user(QUESTIONS[0]), max_tokens=128, temperature=0)
    assert status == 200 and answer(resp) == solo(engine, user(QUESTIONS[0]))
