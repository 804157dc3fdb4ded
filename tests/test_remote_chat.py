"""`phiflash chat --server URL`: the chat (Textual Pilot) as a client of `phiflash serve`.

The server is the bundled tutor on MLX, started by the test on a free 127.0.0.1 port
(tests/serve_util.py). The chat talks to it through RemoteEngine: ask, stream, think folding,
stats, stop, history (follow-ups carry the conversation); and against stock mlx_lm.server,
which reports no quantization or context.
"""

from __future__ import annotations

import asyncio
import functools
import sys

import pytest
import tui_util
from serve_util import KEY, QUESTIONS, Server, ServerProcess, answer, free_port, server_env, user
from tui_util import ask

from phiflash.engine import GenerationParams
from phiflash.errors import ContextLengthError, PhiflashError
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.remote import NOT_REPORTED, RemoteEngine, RemoteError
from phiflash.tui.app import make_app, parse_args
from phiflash.tui.history import HistoryStore
from phiflash.tui.widgets.message import AssistantMessage

FOLLOW_UP = "And what is 47 + 39?"


class RecordingRemote(RemoteEngine):
    """RemoteEngine that keeps the messages of every request it sends."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[list[dict]] = []

    def stream(self, messages, params, should_stop=None):
        self.calls.append([dict(m) for m in messages])
        return super().stream(messages, params, should_stop)


class StockServer(ServerProcess):
    """Stock ``mlx_lm.server`` on a free port, up once a RemoteEngine opens on it."""

    def __init__(self, model, log_path, env):
        self.port = free_port()
        cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(model)]
        cmd += ["--port", str(self.port), "--trust-remote-code"]
        super().__init__(cmd, log_path, env)

    def is_up(self) -> bool:
        try:
            self.engine = RemoteEngine(f"http://127.0.0.1:{self.port}")
        except PhiflashError:
            return False
        return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-chat") / "server.log"
    with Server(DEFAULT_MODEL_DIR, log, "--max-tokens-cap", "1024") as s:
        yield s


wait_until = functools.partial(tui_util.wait_until, timeout=120.0, step=0.02)


def test_chat_asks_streams_stops_and_keeps_history(server, tmp_path):
    expected = answer(server.chat(user(QUESTIONS[0]), max_tokens=200, temperature=0)[1])[0]
    engines = []

    def factory():
        engines.append(RecordingRemote(server.url, api_key=KEY))
        return engines[-1]

    async def body():
        store = HistoryStore(tmp_path / "h.sqlite3")
        app = make_app(engine_factory=factory, store=store, export_dir=tmp_path)
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_until(pilot, lambda: app.engine is not None or app.load_error)
            assert app.load_error is None
            engine = engines[0]
            await pilot.pause()
            # the chat's defaults come from the server (its cap), not the local engine rule
            assert app.params.max_tokens == engine.default_max_tokens == 1024
            app.params.temperature, app.params.max_tokens = 0.0, 200

            # ask: the answer streams in, the think block folds, the stats are the server's
            await ask(pilot, QUESTIONS[0])
            await wait_until(pilot, lambda: app.chat_screen.streaming is not None)
            msg = app.query_one(AssistantMessage)
            await wait_until(pilot, lambda: msg.raw)  # first tokens shown while streaming
            assert app.chat_screen.streaming is not None and msg.raw != expected
            await wait_until(pilot, lambda: app.chat_screen.streaming is None)
            await pilot.pause()
            reply = app.conversation.turns[-1]
            assert (reply.role, reply.status, reply.content) == ("assistant", "done", expected)
            assert msg.think.collapsed and msg.think.title.startswith("Reasoning (")
            if "\\boxed{" in expected:
                assert "Answer:" in str(msg.query_one(".boxed").render())
            n_prompt = engine.count_tokens(user(QUESTIONS[0]))
            stats = str(app.query_one("#stats").render())
            assert "remote mlx · bf16" in stats
            assert f"/{engine.context_limit}" in stats and f"ctx {n_prompt}/" not in stats

            # follow-up: the request carries the conversation so far
            await ask(pilot, FOLLOW_UP)
            await wait_until(pilot, lambda: len(app.conversation.turns) == 4)
            await wait_until(pilot, lambda: app.chat_screen.streaming is None)
            await pilot.pause(0.2)  # the reply's widget finishes rendering
            assert engine.calls[1] == [
                {"role": "user", "content": QUESTIONS[0]},
                {"role": "assistant", "content": expected},
                {"role": "user", "content": FOLLOW_UP},
            ]
            assert app.conversation.turns[-1].status == "done"
            status, resp = server.chat(engine.calls[1], max_tokens=200, temperature=0)
            assert app.conversation.turns[-1].content == answer(resp)[0]

            # stop: Escape mid-stream ends the reply at once and the server lets it go
            app.params.temperature, app.params.max_tokens = 0.0, 512
            await pilot.press("ctrl+n")
            await pilot.pause()
            await ask(pilot, "Write out the 7 times table from 7 x 1 to 7 x 50.")
            await wait_until(pilot, lambda: app.chat_screen.streaming is not None)
            await wait_until(pilot, lambda: len(app.conversation.turns) == 2)
            await wait_until(pilot, lambda: len(app.conversation.turns[-1].content) > 10)
            await pilot.press("escape")
            assert app.chat_screen.streaming is None
            stopped = app.conversation.turns[-1]
            assert stopped.status == "stopped"
            assert server.wait_idle(), "the server still generates the stopped reply"
            assert store.raw_status(stopped.id) == (stopped.content, "stopped")
        store.close()

    asyncio.run(body())
    # the server serves on
    status, resp = server.chat(user(QUESTIONS[1]), max_tokens=200, temperature=0)
    assert status == 200 and answer(resp)[1] == "stop"


def test_remote_engine_refusals_are_one_line(server):
    with pytest.raises(PhiflashError, match="API key"):
        RemoteEngine(server.url, api_key="wrong")
    with pytest.raises(PhiflashError, match="cannot reach"):
        RemoteEngine(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PhiflashError, match="does not serve"):
        RemoteEngine(server.url, api_key=KEY, model="other-model")
    engine = RemoteEngine(server.url + "/v1/", api_key=KEY)  # an OpenAI base URL works too
    with pytest.raises(RemoteError, match="cap of 1024"):
        list(engine.stream(user("2+3"), GenerationParams(max_tokens=10**6)))
    long = user("1 + " * 1300 + "1 = ?")  # ~3,900 tokens: fits alone, not with 1024 more
    with pytest.raises(ContextLengthError, match="context of 4096"):
        list(engine.stream(long, GenerationParams(max_tokens=1024)))
    with pytest.raises(RemoteError, match="answered 400: top_p"):
        list(engine.stream(user("2+3"), GenerationParams(max_tokens=8, top_p=0.0)))


def test_cli_flags():
    args = parse_args(["--server", "http://10.0.0.5:8080", "--api-key", "k"])
    assert (args.server, args.api_key) == ("http://10.0.0.5:8080", "k")
    with pytest.raises(SystemExit):
        parse_args(["--server", "http://10.0.0.5:8080", "--engine", "mlx"])


def test_against_a_stock_server_the_chat_shows_dashes(tmp_path):
    """Stock mlx_lm.server (a converted dir) has no phiflash extension: "–" and "?"."""
    from phiflash.quantize.convert import convert

    model = tmp_path / "tutor-mlx"
    convert(str(DEFAULT_MODEL_DIR), str(model), progress=False)
    env = server_env()
    (tmp_path / "hub").mkdir()  # stock /v1/models scans the hub cache and fails without one
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    with StockServer(model, tmp_path / "stock.log", env) as stock:
        engine = stock.engine
        assert (engine.name, engine.quantization, engine.context_limit) == (
            "remote",
            NOT_REPORTED,
            0,
        )
        with pytest.raises(RemoteError, match="does not count tokens"):
            engine.count_tokens(user("2+3"))
        chunks = list(engine.stream(user(QUESTIONS[0]), GenerationParams(128, temperature=0.0)))
        text = "".join(c.text for c in chunks)
        assert chunks[-1].finish_reason == "stop" and "\\boxed{" in text
        assert text.startswith("<think>") and "</think>" in text
        assert chunks[-1].prompt_tokens > 0  # from the usage the stock server reports at the end

        async def body():
            store = HistoryStore(tmp_path / "h.sqlite3")
            app = make_app(engine, store=store, export_dir=tmp_path)
            async with app.run_test(size=(110, 40)) as pilot:
                await pilot.pause(0.1)
                stats = str(app.query_one("#stats").render())
                assert f"remote · {NOT_REPORTED}" in stats and "/?" in stats
            store.close()

        asyncio.run(body())
