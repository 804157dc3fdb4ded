"""`phiflash serve` in a subprocess on a free 127.0.0.1 port, for the serve and chat tests.

Bounded waits everywhere; the context manager always stops the server (terminate, then kill).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from phiflash.engine import GenerationParams

HOST = "127.0.0.1"
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 300
KEY = "class-7b-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env() -> dict:
    """The environment a test server runs in: offline, transformers quiet."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


class ServerProcess:
    """A server command in a subprocess, up once :meth:`is_up`; the context manager always
    stops it (terminate, then kill)."""

    start_timeout_s = START_TIMEOUT_S

    def __init__(self, cmd: list[str], log_path: Path, env: dict):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def is_up(self) -> bool:
        raise NotImplementedError

    def __enter__(self):
        try:
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"server exited: {self.tail()}"
                try:
                    if self.is_up():
                        return self
                except OSError:
                    pass
                time.sleep(0.2)
            raise AssertionError(f"server not up in {self.start_timeout_s}s: {self.tail()}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.log.close()

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-3000:]


class Server(ServerProcess):
    """``phiflash serve --model MODEL ARGS`` on a free port."""

    def __init__(self, model, log_path: Path, *args: str, api_key: str | None = KEY):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.api_key = api_key
        env = server_env()
        env.pop("PHIFLASH_API_KEY", None)
        cmd = [sys.executable, "-m", "phiflash.cli", "serve", "--model", str(model)]
        cmd += ["--port", str(self.port), *args]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        super().__init__(cmd, log_path, env)

    def is_up(self) -> bool:
        return self.request("GET", "/health", auth=False)[0] == 200

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once /health reports no request in flight (a request is counted out just
        after its last byte is sent)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", "/health", auth=False)[1]["in_flight"] == 0:
                return True
            time.sleep(0.05)
        return False

    # -- requests -------------------------------------------------------------------------------
    def headers(self, auth=True, key=None) -> dict:
        h = {"Content-Type": "application/json"}
        key = key if key is not None else (self.api_key if auth else None)
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def request(self, method, path, body=None, auth=True, key=None, raw: bytes | None = None):
        """(status, parsed JSON body or raw bytes)."""
        c = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            c.request(method, path, data, self.headers(auth, key))
            r = c.getresponse()
            out = r.read()
        finally:
            c.close()
        try:
            return r.status, json.loads(out)
        except ValueError:
            return r.status, out

    def chat(self, messages, **params):
        """Non-streamed chat completion: (status, JSON)."""
        return self.request("POST", "/v1/chat/completions", {"messages": messages, **params})

    def stream(self, messages, **params):
        """Streamed chat completion: (text, finish_reason, number of content events)."""
        return self.stream_timed(messages, **params)[:3]

    def stream_timed(self, messages, **params):
        """:meth:`stream` plus the monotonic times of the first and the last content event."""
        c = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            body = {"messages": messages, "stream": True, **params}
            c.request("POST", "/v1/chat/completions", json.dumps(body), self.headers())
            r = c.getresponse()
            assert r.status == 200, r.read()[:500]
            assert r.getheader("Content-Type", "").startswith("text/event-stream")
            text, finish, events, done, times = "", None, 0, False, []
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                for choice in json.loads(payload).get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        text += piece
                        events += 1
                        times.append(time.monotonic())
                    finish = choice.get("finish_reason") or finish
            assert done, "the stream ended without [DONE]"
            return text, finish, events, times[0], times[-1]
        finally:
            c.close()


def solo(engine, messages, max_tokens=128, thinking_budget=0):
    """The engine's own answer at temperature 0 from an empty cache: (text, finish_reason)."""
    engine.reset()
    params = GenerationParams(max_tokens, 0.0, thinking_budget=thinking_budget)
    chunks = list(engine.stream(messages, params))
    return "".join(c.text for c in chunks), chunks[-1].finish_reason


def overlapped(timed: list) -> bool:
    """True when two streams of ``timed`` (stream_timed results) were producing tokens at the
    same time: decoded together, not one after another. (Whether all of them join one batch
    depends on when each request reaches a loaded server; tests/test_batch_server.py holds
    the server to make a batch of four certain.)"""
    spans = [(t[3], t[4]) for t in timed]
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def answer(resp: dict) -> tuple[str, str]:
    choice = resp["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


QUESTIONS = [
    "What is 47 + 38?",
    "Compute 12 * 7.",
    "A shop sells pens at 3 dollars each. Tom buys 14 pens and pays with a 50 dollar note. "
    "How much change does he get back, in dollars?",
    "Solve for x: 5x - 9 = 31.",
]


def concurrently(fn, args: list) -> list:
    """``fn(arg)`` for every arg in its own thread, started together; results in order."""
    results: list = [None] * len(args)
    errors: list = []
    start = threading.Barrier(len(args))

    def run(i, a):
        try:
            start.wait(timeout=30)
            results[i] = fn(a)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a request did not finish"
    if errors:
        raise errors[0]
    return results


def bad_requests(other_model_path: str) -> list[tuple[str, dict, int, str]]:
    """(label, kwargs for ``Server.request`` on the chat path, expected status, words in the
    error message); the server runs with ``--api-key KEY --max-tokens-cap`` below 100000."""
    good = {"messages": user("What is 2 + 3?"), "max_tokens": 8}
    return [
        ("negative max_tokens", dict(body={**good, "max_tokens": -5}), 400, "max_tokens"),
        ("zero max_tokens", dict(body={**good, "max_tokens": 0}), 400, "max_tokens"),
        ("-1 max_tokens", dict(body={**good, "max_tokens": -1}), 400, "max_tokens"),
        ("over the cap", dict(body={**good, "max_tokens": 100000}), 400, "cap"),
        ("another model's name", dict(body={**good, "model": "org/other-model"}), 404, "served"),
        ("a model path", dict(body={**good, "model": other_model_path}), 404, "served"),
        ("temperature", dict(body={**good, "temperature": -1}), 400, "temperature"),
        ("top_p", dict(body={**good, "top_p": 0}), 400, "top_p"),
        ("top_k", dict(body={**good, "top_k": "many"}), 400, "top_k"),
        ("budget >= max_tokens", dict(body={**good, "thinking_budget": 8}), 400, "below max"),
        ("no messages", dict(body={"max_tokens": 8}), 400, "messages"),
        ("bad role", dict(body={**good, "messages": [{"role": "x", "content": "a"}]}), 400, "role"),
        ("n=2", dict(body={**good, "n": 2}), 400, "n must be 1"),
        ("adapters", dict(body={**good, "adapters": "my-adapter"}), 400, "adapters"),
        ("not JSON", dict(raw=b"{nope"), 400, "JSON"),
        ("wrong key", dict(body=good, key="guess"), 401, "API key"),
        ("no key", dict(body=good, auth=False), 401, "API key"),
    ]


# -- checks both servers (MLX and GGUF) pass alike ----------------------------------------------
def check_streaming_gives_the_same_text_piece_by_piece(server):
    _, resp = server.chat(user(QUESTIONS[1]), max_tokens=128, temperature=0)
    text, finish, events = server.stream(user(QUESTIONS[1]), max_tokens=128, temperature=0)
    assert (text, finish) == answer(resp)
    assert events > 10  # token by token, not one block at the end


def check_bad_request(server, label, kwargs, status, words):
    got, body = server.request("POST", "/v1/chat/completions", **kwargs)
    assert got == status, (label, body)
    assert isinstance(body, dict) and words in body["error"]["message"], body
    ok, resp = server.chat(user("What is 2 + 3?"), max_tokens=64, temperature=0)
    assert ok == 200 and answer(resp)[0], resp


def check_thinking_budget_per_request(server, engine):
    msgs = user(QUESTIONS[0])
    status, resp = server.chat(msgs, max_tokens=128, temperature=0, thinking_budget=5)
    assert status == 200, resp
    short = answer(resp)
    assert short == solo(engine, msgs, thinking_budget=5)  # the engine's own budget
    assert short != solo(engine, msgs) and short[0].index("</think>") < 60
    assert server.chat(msgs, thinking_budget=-1)[0] == 400
    # one request with a budget and one without, at the same time: each keeps its own
    both = concurrently(
        lambda b: server.chat(msgs, max_tokens=128, temperature=0, thinking_budget=b), [5, 0]
    )
    assert [answer(r) for _, r in both] == [short, solo(engine, msgs)]


def check_sampling_parameters_change_the_output(server):
    def text(**p):
        status, resp = server.chat(user("hello"), max_tokens=30, top_p=1.0, **p)
        assert status == 200, resp
        return answer(resp)[0]

    greedy = text(temperature=0)
    hot = text(temperature=2.0, seed=1)
    assert hot != greedy  # temperature reaches the sampler
    assert text(temperature=2.0, seed=1) == hot  # the seed too
    assert text(temperature=2.0, seed=1, top_k=1) == greedy  # and top_k


def check_chat_completion_is_the_engines_answer(server, engine, model_id: str):
    status, resp = server.chat(user(QUESTIONS[0]), max_tokens=128, temperature=0)
    assert status == 200, resp
    text, finish = answer(resp)
    assert (text, finish) == solo(engine, user(QUESTIONS[0]))
    assert finish == "stop"  # a whole answer
    assert resp["model"] == model_id
    assert resp["usage"]["prompt_tokens"] == engine.count_tokens(user(QUESTIONS[0]))


def check_queue_limit(server):
    """Eight students at once against ``--queue-limit 2``: the rest are told to come back."""
    results = concurrently(
        lambda q: server.chat(user(q), max_tokens=200, temperature=0), QUESTIONS * 2
    )
    codes = sorted(status for status, _ in results)
    assert 503 in codes and codes.count(200) >= 2, codes
    for status, body in results:
        if status == 503:
            assert "busy" in body["error"]["message"]
        else:
            assert status == 200 and answer(body)[1] == "stop"
    assert server.wait_idle()  # every admitted request counted out again
