"""Stock `mlx_lm.server` batches concurrent requests on a converted dir and answers each as alone.

Two servers on 127.0.0.1 over the same float32 conversion of the bundled tutor: a reference
server that gets every request alone, one after another, and a server that gets four requests
of different lengths at once (a batch) and then a follow-up that reuses a system-prompt prefix
state extracted from that batched prefill. Temperature 0 everywhere.

mlx_lm.server serves a request that carries a `seed` on its own, blocking its loop; the test uses
one (a long, streamed "blocker") to hold the loop while the four requests queue, so they enter
one BatchGenerator together, and asserts from the streams that they were decoded concurrently.
"""

import http.client
import json
import socket
import sys
import threading
import time

import pytest
from serve_util import HOST, QUESTIONS, ServerProcess, free_port, server_env

from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.quantize.convert import convert

MAX_TOKENS = 64
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 120

# Different system prompts (cached as prefix states by the server) and questions (QUESTIONS): four
# clearly different prompt lengths.
SYSTEMS = [
    "You are a tutor.",
    "You are a patient math tutor for a class of twelve-year-olds. Show the steps.",
    "You are a math tutor.",
    "You are a careful, friendly math tutor. Explain each step of the working briefly, check "
    "the result, and put the final answer in a box at the end of your reply.",
]
FOLLOW_UP = (3, "What is 250 - 175?")  # reuses SYSTEMS[3], a prefix from the batched prefill


def messages(system, question):
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("srv") / "tutor-fp32"
    convert(str(DEFAULT_MODEL_DIR), str(out), dtype="float32", progress=False)
    return out


class Server(ServerProcess):
    """`python -m mlx_lm.server` in a subprocess, stopped by the context manager."""

    start_timeout_s = START_TIMEOUT_S

    def __init__(self, model_dir, log_path):
        self.port = free_port()
        cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir)]
        cmd += ["--trust-remote-code", "--host", HOST, "--port", str(self.port)]
        super().__init__(cmd, log_path, server_env())

    def is_up(self) -> bool:
        return self.get("/health")[0] == 200

    def conn(self):
        return http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)

    def get(self, path):
        c = self.conn()
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def chat(self, msgs, **extra):
        """Non-streamed chat completion: (text, token ids, cached prompt tokens)."""
        body = dict(messages=msgs, max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True)
        c = self.conn()
        try:
            c.request("POST", "/v1/chat/completions", json.dumps({**body, **extra}))
            r = c.getresponse()
            data = r.read()
            assert r.status == 200, data[:500]
        finally:
            c.close()
        resp = json.loads(data)
        choice = resp["choices"][0]
        ids = [t["id"] for t in choice["logprobs"]["content"]]
        cached = resp["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        return choice["message"]["content"], ids, cached

    def open_stream(self, msgs, **extra):
        """Sends a streamed request; returns (connection, its socket)."""
        body = dict(messages=msgs, max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
        body["stream_options"] = {"include_usage": True}
        c = self.conn()
        c.request("POST", "/v1/chat/completions", json.dumps({**body, **extra}))
        return c, c.sock

    @staticmethod
    def events(conn):
        """Yields the decoded `data:` events of a streamed response until [DONE]."""
        r = conn.getresponse()
        assert r.status == 200
        for _ in range(100_000):  # bounded: at most one line per event
            line = r.readline()
            if not line:
                return
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                return
            yield json.loads(line[6:])


def test_concurrent_requests_batch_and_equal_solo(model_dir, tmp_path):
    reqs = [messages(s, q) for s, q in zip(SYSTEMS, QUESTIONS)]
    follow = messages(SYSTEMS[FOLLOW_UP[0]], FOLLOW_UP[1])

    with Server(model_dir, tmp_path / "reference.log") as ref:
        alone = [ref.chat(m) for m in reqs]
        want_follow = ref.chat(follow)

    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    with Server(model_dir, tmp_path / "batched.log") as srv:
        # A long seeded request holds the server's loop while the four requests queue.
        blocker, blocker_sock = srv.open_stream(
            messages("You count.", "Count upwards from one."),
            seed=0,
            max_tokens=3000,
            logit_bias={str(t): -1e9 for t in eos},
        )
        blocker_events = Server.events(blocker)
        next(blocker_events)  # the server is now serving it alone

        order, lock = [], threading.Lock()
        got, errors = {}, []
        sent = threading.Barrier(len(reqs) + 1, timeout=60)

        def client(i):
            try:
                c, _ = srv.open_stream(reqs[i])
                sent.wait()
                text, usage = "", None
                for ev in Server.events(c):
                    if ev.get("usage"):
                        usage = ev["usage"]
                    for ch in ev.get("choices", []):
                        piece = ch.get("delta", {}).get("content") or ""
                        text += piece
                        with lock:
                            order.append((i, ch.get("finish_reason")))
                got[i] = (text, usage)
                c.close()
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        sent.wait()
        time.sleep(1.0)  # the handlers put the four requests on the server's queue
        blocker_sock.shutdown(socket.SHUT_RDWR)  # the server stops the blocker at its next write
        blocker.close()
        for t in threads:
            t.join(REQUEST_TIMEOUT_S)
        assert not errors, errors
        assert sorted(got) == list(range(len(reqs))), srv.tail()

        # A batch formed: every stream was still live while all four had started, and each
        # sent several pieces in that window (one-at-a-time serving cannot interleave them).
        first = [min(k for k, (i, _) in enumerate(order) if i == r) for r in range(len(reqs))]
        last = [max(k for k, (i, _) in enumerate(order) if i == r) for r in range(len(reqs))]
        window = order[max(first) : min(last) + 1]
        per_row = [sum(1 for i, _ in window if i == r) for r in range(len(reqs))]
        assert max(first) < min(last) and min(per_row) >= 5, (first, last, per_row)

        after = srv.chat(follow)

    for i in range(len(reqs)):
        text, usage = got[i]
        assert text == alone[i][0], f"request {i}: batched {text!r} != alone {alone[i][0]!r}"
        assert usage["completion_tokens"] == len(alone[i][1])
    assert after[2] > 0, "the follow-up did not reuse a cached prefix"
    assert after[:2] == want_follow[:2], f"follow-up {after[0]!r} != alone {want_follow[0]!r}"
