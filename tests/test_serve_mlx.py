"""`phiflash serve` on MLX (the bundled tutor): mlx-lm's server through phiflash's classes.

Servers run as subprocesses on a free 127.0.0.1 port (tests/serve_util.py), stopped by the
fixture. Temperature 0 unless a test is about sampling.
"""

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

from phiflash.paths import DEFAULT_MODEL_DIR

TINY = Path(__file__).parent / "fixtures" / "sambay-tiny"
CAP = 512
SYSTEM = "You are a math tutor for a class of twelve-year-olds."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-mlx") / "server.log"
    with Server(DEFAULT_MODEL_DIR, log, "--max-tokens-cap", str(CAP)) as s:
        yield s


@pytest.fixture(scope="module")
def engine():
    from phiflash_mlx.engine import MLXEngine

    return MLXEngine(str(DEFAULT_MODEL_DIR))


def test_chat_completion_is_the_engines_answer(server, engine):
    check_chat_completion_is_the_engines_answer(server, engine, "phiflash-tutor")


def test_streaming_gives_the_same_text_piece_by_piece(server):
    check_streaming_gives_the_same_text_piece_by_piece(server)


def test_concurrent_requests_are_all_answered_in_full(server, engine):
    alone = [answer(server.chat(user(q), max_tokens=200, temperature=0)[1]) for q in QUESTIONS]
    assert alone == [solo(engine, user(q), max_tokens=200) for q in QUESTIONS]
    together = concurrently(
        lambda q: server.chat(user(q), max_tokens=200, temperature=0), QUESTIONS
    )
    for i, (status, resp) in enumerate(together):
        assert status == 200, resp
        text, finish = answer(resp)
        assert finish == "stop", f"request {i} cut off: {text!r}"
        assert (text, finish) == alone[i]
    # streamed at the same time too: decoded together (one batch), each still its solo answer
    streams = concurrently(
        lambda q: server.stream_timed(user(q), max_tokens=200, temperature=0), QUESTIONS
    )
    assert [(t[0], t[1]) for t in streams] == alone
    assert overlapped(streams)


@pytest.mark.parametrize("label,kwargs,status,words", bad_requests(str(TINY)))
def test_bad_request_is_4xx_json_and_the_server_keeps_serving(server, label, kwargs, status, words):
    check_bad_request(server, label, kwargs, status, words)


def test_a_request_never_loads_another_model(server, engine):
    # another model's directory (a loadable checkpoint) is refused, not loaded
    status, body = server.chat(user("hi"), model=str(TINY), max_tokens=4)
    assert status == 404 and "only 'phiflash-tutor'" in body["error"]["message"]
    assert "sambay-tiny" not in server.tail()
    status, resp = server.chat(user(QUESTIONS[0]), max_tokens=128, temperature=0)
    assert status == 200 and answer(resp) == solo(engine, user(QUESTIONS[0]))  # the tutor


def test_thinking_budget_per_request(server, engine):
    check_thinking_budget_per_request(server, engine)


def test_sampling_parameters_change_the_output(server):
    check_sampling_parameters_change_the_output(server)


def test_models_health_and_token_count(server, engine):
    status, models = server.request("GET", "/v1/models")
    assert status == 200
    (entry,) = models["data"]
    assert entry["id"] == "phiflash-tutor"
    ext = entry["phiflash"]
    assert ext["engine"] == "mlx" and ext["quantization"] == engine.quantization
    assert ext["context_limit"] == engine.context_limit and ext["max_tokens_cap"] == CAP
    assert server.request("GET", "/v1/models", auth=False)[0] == 401
    status, health = server.request("GET", "/health", auth=False)  # no key: load balancers
    assert status == 200 and health["status"] == "ok"
    msgs = user(QUESTIONS[2])
    status, count = server.request("POST", "/phiflash/count_tokens", {"messages": msgs})
    assert status == 200 and count["prompt_tokens"] == engine.count_tokens(msgs)


def test_context_overflow_is_refused_before_work(server, engine):
    status, body = server.chat(user("What is 1 + 1?"), max_tokens=CAP)
    assert status == 200
    long = user("1 + " * 1300 + "1 = ?")  # fits the context alone, not with CAP more tokens
    assert engine.count_tokens(long) < engine.context_limit < engine.count_tokens(long) + CAP
    status, body = server.chat(long, max_tokens=CAP)
    assert status == 400 and "context" in body["error"]["message"], body


def test_fixed_system_prompt_queue_limit_and_one_at_a_time(tmp_path, engine):
    args = (
        "--system-prompt",
        SYSTEM,
        "--queue-limit",
        "2",
        "--thinking-budget-cap",
        "5",
        "--one-at-a-time",
    )
    with Server(DEFAULT_MODEL_DIR, tmp_path / "server.log", *args) as s:
        status, body = s.chat([{"role": "system", "content": "Be a pirate."}] + user("2+3?"))
        assert status == 400 and "system prompt" in body["error"]["message"]
        status, resp = s.chat(user(QUESTIONS[0]), max_tokens=128, temperature=0)
        assert status == 200
        with_system = [{"role": "system", "content": SYSTEM}] + user(QUESTIONS[0])
        # no budget named: the cap applies; more than the cap: refused
        status, body = s.chat(user(QUESTIONS[0]), thinking_budget=6)
        assert status == 400 and "cap of 5" in body["error"]["message"]
        assert answer(resp) == solo(engine, with_system, thinking_budget=5)
        assert resp["usage"]["prompt_tokens"] == engine.count_tokens(with_system)
        check_queue_limit(s)
        # --one-at-a-time: two students at once are answered one after the other
        two = concurrently(
            lambda q: s.stream_timed(user(q), max_tokens=200, temperature=0), QUESTIONS[:2]
        )
        assert not overlapped(two)
        assert s.chat(user(QUESTIONS[3]), max_tokens=200, temperature=0)[0] == 200
