"""Pilot tests of `phiflash chat` with fake engines (deterministic: a gate releases tokens)."""

from __future__ import annotations

import threading

import pytest
from tui_util import GatedEngine, ask, asynctest, wait_until

from phiflash.engine import FakeEngine
from phiflash.errors import ContextLengthError, ModelLoadError
from phiflash.tui.app import make_app, parse_args
from phiflash.tui.history import HistoryStore
from phiflash.tui.widgets.message import AssistantMessage, ErrorMessage, UserMessage

REPLY = FakeEngine.reply  # "<think>Add the ones: 2 + 3 = 5.</think>The answer is $\boxed{5}$."


def app_for(engine, store, tmp_path, **kw):
    return make_app(engine, store=store, export_dir=tmp_path, batch_interval=0, **kw)


async def ask_and_wait(pilot, app, text):
    await ask(pilot, text)
    await wait_until(pilot, lambda: app.chat_screen.streaming is None and app.workers_idle())
    await pilot.pause()


def _workers_idle(app):
    return all(w.is_finished for w in app.chat_screen.workers)


def setup_module():
    from phiflash.tui.app import PhiflashApp

    PhiflashApp.workers_idle = _workers_idle


@asynctest
async def test_type_send_and_stream_rendered(store, tmp_path):
    engine = FakeEngine()
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "what is 2+3")
        assert app.query_one("#prompt").value == ""
        assert app.query_one(UserMessage).turn.content == "what is 2+3"
        msg = app.query_one(AssistantMessage)
        assert "⟦5⟧" in msg.answer.source and "$" not in msg.answer.source
        assert "Answer: 5" in str(msg.query_one(".boxed").render())
        assert engine.calls == [[{"role": "user", "content": "what is 2+3"}]]
        stats = str(app.query_one("#stats").render())
        assert "ctx" in stats and "fake · none" in stats and "tok/s" in stats
        assert app.conversation.turns[-1].content == REPLY


@asynctest
async def test_think_block_live_then_folds_and_toggles(store, tmp_path):
    engine = GatedEngine()
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(pilot, "2+3?")
        engine.release(3)  # "<think>", "Add ", "the "
        msg = app.query_one(AssistantMessage)
        await wait_until(pilot, lambda: "Add the" in msg.raw)
        await pilot.pause(0.05)
        assert msg.think.display and not msg.think.collapsed
        assert msg.think.title == "Thinking…"
        assert "Add" in msg.query_one(".think-text").source
        assert msg.answer.source == ""
        engine.release(100)
        await wait_until(pilot, lambda: app.chat_screen.streaming is None)
        await pilot.pause()
        assert msg.think.collapsed
        assert msg.think.title.startswith("Reasoning (")
        assert "The answer is" in msg.answer.source
        await pilot.press("ctrl+t")
        assert not msg.think.collapsed
        await pilot.press("ctrl+t")
        assert msg.think.collapsed


@asynctest
async def test_escape_stops_mid_stream_and_keeps_partial(store, tmp_path):
    engine = GatedEngine(reply="<think>a b</think>one two three four five six seven")
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(pilot, "count")
        engine.release(5)  # "<think>", "a ", "b</think>", "one ", "two ": nothing more can arrive
        msg = app.query_one(AssistantMessage)
        await wait_until(pilot, lambda: "two" in msg.raw)
        shown = msg.turn.content
        await pilot.press("escape")
        assert app.chat_screen.streaming is None  # at once, not after the engine finishes
        assert msg.turn.status == "stopped"
        engine.release(100)
        await pilot.pause(0.1)
        assert msg.turn.content == shown and "seven" not in msg.raw
        assert store.raw_status(msg.turn.id) == (shown, "stopped")
        assert "stopped" in str(msg.query_one(".note").render())
        # the app goes on: a follow-up carries the partial answer
        await ask(pilot, "go on")
        await wait_until(pilot, lambda: len(engine.calls) == 2)
        assert engine.calls[1][1] == {"role": "assistant", "content": shown}
        assert engine.calls[1][2] == {"role": "user", "content": "go on"}


@asynctest
async def test_follow_up_passes_conversation_and_ctrl_n_clears(store, tmp_path):
    engine = FakeEngine()
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "2+3")
        await ask_and_wait(pilot, app, "why")
        assert [m["role"] for m in engine.calls[1]] == ["user", "assistant", "user"]
        assert engine.calls[1][1]["content"] == REPLY
        first_id = app.conversation.id
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert engine.resets == 1
        assert app.conversation.turns == [] and app.conversation.id is None
        assert not app.query(AssistantMessage) and not app.query(UserMessage)
        await ask_and_wait(pilot, app, "4+4")
        assert engine.calls[2] == [{"role": "user", "content": "4+4"}]
        assert app.conversation.id != first_id
        assert len(store.list()) == 2


@asynctest
async def test_history_persists_across_restart_and_resume(store, tmp_path):
    app = app_for(FakeEngine(), store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "2+3")
    store.close()
    reopened = HistoryStore(tmp_path / "history.sqlite3")
    engine = FakeEngine()
    app2 = app_for(engine, reopened, tmp_path, resume=True)
    async with app2.run_test(size=(100, 40)) as pilot:
        await pilot.pause(0.1)
        assert [t.role for t in app2.conversation.turns] == ["user", "assistant"]
        msg = app2.query_one(AssistantMessage)
        await wait_until(pilot, lambda: "⟦5⟧" in msg.answer.source)
        assert msg.think.collapsed
        await ask_and_wait(pilot, app2, "and 3+4?")
        assert [m["role"] for m in engine.calls[0]] == ["user", "assistant", "user"]
    reopened.close()


@asynctest
async def test_partial_answer_on_disk_before_shown_and_resumed_after_crash(store, tmp_path):
    engine = GatedEngine(reply="<think>x</think>alpha beta gamma delta epsilon")
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(pilot, "greek")
        msg = app.query_one(AssistantMessage)
        pieces = engine._pieces()
        for n in range(1, 6):
            engine.release()
            await wait_until(pilot, lambda n=n: msg.raw == "".join(pieces[:n]))
            content, status = store.raw_status(msg.turn.id)
            assert content.startswith(msg.turn.content) and status == "streaming"
        shown = msg.turn.content
        # a crash: the process vanishes without finishing the turn (nothing more is written)
        app.chat_screen.streaming = None
        app.chat_screen.gen += 1
    reopened = HistoryStore(tmp_path / "history.sqlite3")
    conv = reopened.load(reopened.last_id())
    assert conv.turns[-1].content.startswith(shown) and conv.turns[-1].status == "stopped"
    reopened.close()


@asynctest
async def test_history_screen_reopen_export_delete(store, tmp_path):
    app = app_for(FakeEngine(), store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "first problem")
        await pilot.press("ctrl+n")
        await ask_and_wait(pilot, app, "second problem")
        await pilot.press("ctrl+r")
        await pilot.pause()
        options = app.screen.query_one("#history-list")
        assert options.option_count == 2
        assert "second problem" in str(options.get_option_at_index(0).prompt)
        await pilot.press("down", "e")  # export the first problem
        text = app.last_export.read_text()
        assert text.startswith("# first problem")
        assert "## Student\n\nfirst problem" in text
        assert "<details><summary>Reasoning</summary>\n\nAdd the ones: 2 + 3 = 5." in text
        assert "The answer is $\\boxed{5}$." in text
        await pilot.press("enter")  # reopen it
        await pilot.pause(0.1)
        assert app.screen is app.chat_screen
        assert app.conversation.turns[0].content == "first problem"
        await pilot.press("ctrl+r", "d")
        await pilot.pause()
        assert [s.title for s in store.list()] == ["first problem"]


@asynctest
async def test_engine_error_is_a_chat_message(store, tmp_path):
    engine = FakeEngine(fail_with=ContextLengthError("prompt (5000 tokens) exceeds the context"))
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "long")
        err = app.query_one(ErrorMessage)
        assert "exceeds the context" in str(err.render())
        assert not app.query(AssistantMessage)
        engine.fail_with = None
        await ask_and_wait(pilot, app, "short")
        assert app.query(AssistantMessage)


@asynctest
async def test_load_failure_is_readable_and_app_stays_up(store, tmp_path):
    def factory():
        raise ModelLoadError("model not found: /nope")

    app = make_app(engine_factory=factory, store=store, export_dir=tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: bool(app.query(ErrorMessage)))
        assert "Could not load the model: model not found: /nope" in str(
            app.query_one(ErrorMessage).render()
        )
        assert not app.query_one("#loading").display
        await ask(pilot, "hello")
        assert app.is_running and not app.query(UserMessage)


@asynctest
async def test_loading_indicator_while_engine_loads(store, tmp_path):
    loaded = threading.Event()

    def factory():
        loaded.wait(5)
        return FakeEngine()

    app = make_app(engine_factory=factory, store=store, model_label="tiny")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.query_one("#loading").display
        assert "Loading tiny" in str(app.query_one("#loading-label").render())
        loaded.set()
        await wait_until(pilot, lambda: app.engine is not None)
        await pilot.pause()
        assert not app.query_one("#loading").display


@asynctest
async def test_copy_gives_raw_answer(store, tmp_path):
    app = app_for(FakeEngine(), store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask_and_wait(pilot, app, "2+3")
        await pilot.press("ctrl+y")
        assert app.clipboard == "The answer is $\\boxed{5}$."


@asynctest
async def test_settings_screen_saves_and_validates(store, tmp_path):
    engine = FakeEngine()
    app = app_for(engine, store, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        assert (app.params.temperature, app.params.top_p) == (0.6, 0.95)
        await pilot.press("ctrl+s")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#temp").value = "-1"
        await pilot.click("#save")
        assert "temperature must be a finite number >= 0" in str(
            screen.query_one("#settings-error").render()
        )
        screen.query_one("#temp").value = "0.3"
        screen.query_one("#max-tokens").value = "3"
        screen.query_one("#system-prompt").text = "Be brief."
        await pilot.click("#max-tokens")
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is app.chat_screen
        assert app.params.temperature == 0.3 and app.params.max_tokens == 3
        await ask_and_wait(pilot, app, "2+3")
        assert engine.calls[0][0] == {"role": "system", "content": "Be brief."}
        assert app.conversation.turns[-1].status == "length"
    assert store.get_settings()["temperature"] == 0.3


def test_cli_flags_validated():
    assert parse_args(["--temp", "0.2", "--resume"]).resume
    with pytest.raises(SystemExit):
        parse_args(["--top-p", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--engine", "onnx"])


@asynctest
async def test_an_answer_removed_by_a_new_problem_while_it_finishes_is_kept(store, tmp_path):
    """ctrl+n while a finished reply still renders removes its widget under `finish`."""
    engine = FakeEngine()
    app = app_for(engine, store, tmp_path)
    async with app.run_test() as pilot:
        await ask_and_wait(pilot, app, "2+3")
        widget = app.chat_screen.query(AssistantMessage).last()
        await widget.remove()
        await widget.finish("stop")  # must not raise NoMatches
        await pilot.press("ctrl+n")
        await pilot.pause()
        saved = store.list()
        assert saved and "5" in store.load(saved[0].id).turns[-1].content
