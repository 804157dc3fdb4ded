"""End to end: `phiflash chat` on the real MLX engine (sambay-tiny fixture, bundled tutor)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from phiflash.engines import open_engine
from phiflash.tui.app import make_app
from phiflash.tui.history import HistoryStore
from phiflash.tui.widgets.message import AssistantMessage

FIXTURE = Path(__file__).parent / "fixtures" / "sambay-tiny"


def test_chat_with_real_mlx_engine(tmp_path):
    async def body():
        store = HistoryStore(tmp_path / "h.sqlite3")
        app = make_app(
            engine_factory=lambda: open_engine(str(FIXTURE), "mlx"),
            store=store,
            export_dir=tmp_path,
            model_label="sambay-tiny",
        )
        app.params.max_tokens = 12
        app.params.seed = 0
        async with app.run_test(size=(100, 40)) as pilot:
            for _ in range(3000):  # loading runs in a worker
                if app.engine is not None or app.load_error:
                    break
                await pilot.pause(0.01)
            assert app.load_error is None and app.engine.name == "mlx"
            await pilot.click("#prompt")
            await pilot.press(*"What is 2 + 3?", "enter")
            for _ in range(3000):
                if app.conversation.turns and app.chat_screen.streaming is None:
                    break
                await pilot.pause(0.01)
            await pilot.pause()
            reply = app.conversation.turns[-1]
            assert reply.role == "assistant" and reply.status in ("done", "length")
            assert reply.content  # random weights: some text, whatever it says
            assert app.query_one(AssistantMessage).raw == reply.content
            stats = str(app.query_one("#stats").render())
            assert "mlx ·" in stats and "ctx 0/" not in stats
            assert store.raw_status(reply.id) == (reply.content, reply.status)
        store.close()

    asyncio.run(body())


def test_each_reply_on_a_new_thread_continues_the_cache():
    """The chat runs every reply in a new worker thread while the MLX engine keeps the
    conversation's cache. MLX streams belong to a thread, so a lazy cache update left by one
    reply made the next one fail ("There is no Stream(cpu, 2) in current thread"). Each reply
    on its own thread must equal the same conversation computed fresh on one thread."""
    import threading

    from phiflash.engine import GenerationParams

    params = GenerationParams(max_tokens=60, temperature=0.0)
    turns = ["What is 2 + 3?", "now times 4", "what is 30% of 90"]

    def reply(engine, messages, out):
        out.append("".join(c.text for c in engine.stream(messages, params)))

    # the bundled tutor as the chat opens it (float32 on a CPU)
    threaded, fresh = open_engine(mlx_dtype="auto"), open_engine(mlx_dtype="auto")
    messages = []
    for text in turns:
        messages.append({"role": "user", "content": text})
        got: list[str] = []
        t = threading.Thread(target=reply, args=(threaded, list(messages), got))
        t.start()
        t.join()
        assert len(got) == 1, "the reply on a new thread failed"
        fresh.reset()  # no reuse: the whole conversation from an empty cache
        want: list[str] = []
        reply(fresh, list(messages), want)
        assert got == want
        messages.append({"role": "assistant", "content": got[0]})
