"""The chat on long problems and long reasoning: a warning before a problem outgrows the
context (with a new problem or dropping earlier reasoning offered), never a failure mid-answer;
reasoning progress against the thinking budget while the model thinks; per-engine defaults."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest
import tui_util
from textual.widgets import Static
from tui_util import GatedEngine, asynctest

from phiflash.engine import (
    CHAT_THINKING_BUDGET,
    DEFAULT_MAX_TOKENS,
    REASONING_MAX_TOKENS,
    FakeEngine,
)
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.tui.app import make_app, parse_args
from phiflash.tui.screens.chat import NEXT_MESSAGE_ROOM
from phiflash.tui.widgets.message import ErrorMessage

wait_until = functools.partial(tui_util.wait_until, timeout=10.0)


async def ask(pilot, app, text, wait=True):
    await wait_until(pilot, lambda: app.chat_screen.query("#prompt") and app.engine is not None)
    await pilot.click("#prompt")
    await pilot.press(*text, "enter")
    if wait:
        await wait_until(pilot, lambda: idle(app))
        await pilot.pause()


def idle(app) -> bool:
    return app.chat_screen.streaming is None and not any(w.is_running for w in app.workers)


def shown(app, selector) -> str | None:
    w = app.chat_screen.query_one(selector, Static)
    return str(w.render()) if w.display else None


# FakeEngine counts words + 2 per message + 1: a "2+3" exchange with its reply's reasoning is
# 3 + 13 tokens, 3 + 6 without the reasoning.
LIMIT, MAX = 300, 100


@asynctest
async def test_long_problem_warns_before_and_refuses_instead_of_failing(store, tmp_path):
    engine = FakeEngine(context_limit=LIMIT)
    app = make_app(engine, store=store, export_dir=tmp_path, batch_interval=0)
    async with app.run_test(size=(110, 40)) as pilot:
        app.params.max_tokens = MAX
        warned_at = None
        for k in range(1, 20):
            await ask(pilot, app, "2+3")
            used = engine.count_tokens(app.conversation.engine_messages())
            warning = shown(app, "#context-warning")
            fits_next = used + NEXT_MESSAGE_ROOM + MAX <= LIMIT
            assert (warning is None) == fits_next, (k, used, warning)
            if warning and warned_at is None:
                warned_at = k
                assert f"{used:,} of the model's {LIMIT:,} tokens" in warning
                assert (
                    "ctrl+n: new problem" in warning and "ctrl+g: drop earlier reasoning" in warning
                )
            if used + 3 + MAX > LIMIT:  # the next "2+3" no longer fits
                break
        assert warned_at is not None and warned_at < k  # said so before it happened
        calls = len(engine.calls)
        await ask(pilot, app, "2+3")
        # refused before sending: no call, no error turn, no failed answer, the text kept
        assert len(engine.calls) == calls
        assert not app.chat_screen.query(ErrorMessage)
        assert all(t.status == "done" for t in app.conversation.turns)
        assert app.chat_screen.query_one("#prompt").value == "2+3"
        assert "does not fit" in shown(app, "#context-warning")
        # drop earlier reasoning: the same message now fits, sent without the think blocks
        await pilot.press("ctrl+g")
        await pilot.click("#prompt")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(engine.calls) == calls + 1)
        await wait_until(pilot, lambda: idle(app))
        sent = engine.calls[-1]
        assistant = [m["content"] for m in sent if m["role"] == "assistant"]
        assert assistant and all("<think>" not in c for c in assistant)
        assert all(c == "The answer is $\\boxed{5}$." for c in assistant)
        # the history keeps the reasoning
        saved = store.load(app.conversation.id)
        assert sum("<think>" in t.content for t in saved.turns) == k + 1
        # a new problem: empty context, no warning
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert shown(app, "#context-warning") is None
        assert not app.chat_screen.drop_reasoning


@asynctest
async def test_reasoning_progress_while_thinking(store, tmp_path):
    think = " ".join(f"w{i}" for i in range(20))
    engine = GatedEngine(reply=f"<think>{think}</think>The answer is 5.")
    app = make_app(engine, store=store, export_dir=tmp_path, batch_interval=0)
    async with app.run_test(size=(110, 40)) as pilot:
        app.params.thinking_budget = 64
        await ask(pilot, app, "2+3", wait=False)
        seen = []
        for _ in range(12):  # "<think>", then words inside the block
            engine.gate.release()
            await pilot.pause(0.05)
            seen.append(shown(app, "#reasoning"))
        progress = [s for s in seen if s]
        assert progress and all(s.endswith("/ 64 budget") for s in progress)
        counts = [int(s.split()[1]) for s in progress]
        assert counts == sorted(counts) and counts[-1] > counts[0]
        for _ in range(40):
            engine.gate.release()
        await wait_until(pilot, lambda: idle(app))
        assert shown(app, "#reasoning") is None  # gone once the answer starts / ends
        app.params.thinking_budget = 0
        engine.gate = threading.Semaphore(0)  # drop the releases left over
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not app.chat_screen.query("AssistantMessage"))
        await pilot.pause(0.1)  # the old messages are gone before the next one is mounted
        await ask(pilot, app, "2+3", wait=False)
        for _ in range(4):
            engine.gate.release()
            await pilot.pause(0.05)
        assert "no budget" in shown(app, "#reasoning")
        for _ in range(40):
            engine.gate.release()
        await wait_until(pilot, lambda: idle(app))


@pytest.mark.parametrize(
    "name,limit,max_tokens,budget",
    [
        ("gguf", 32768, REASONING_MAX_TOKENS, CHAT_THINKING_BUDGET["gguf"]),
        ("mlx", 262144, REASONING_MAX_TOKENS, CHAT_THINKING_BUDGET["mlx"]),
        ("mlx", 4096, DEFAULT_MAX_TOKENS, 0),  # the tutor: no budget, 2048 tokens
    ],
)
def test_defaults_follow_the_engine(store, tmp_path, name, limit, max_tokens, budget):
    async def body():
        engine = FakeEngine(name=name, context_limit=limit)
        app = make_app(engine, store=store, export_dir=tmp_path)
        async with app.run_test(size=(110, 40)) as pilot:
            await pilot.pause()
            assert (app.params.max_tokens, app.params.thinking_budget) == (max_tokens, budget)

    asyncio.run(body())


@asynctest
async def test_chosen_limits_are_kept_and_the_setting_is_saved(store, tmp_path):
    store.put_settings({"max_tokens": 3000})
    engine = FakeEngine(name="gguf", context_limit=32768)
    app = make_app(engine, store=store, export_dir=tmp_path)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        assert app.params.max_tokens == 3000  # the user's, not the model's default
        assert app.params.thinking_budget == CHAT_THINKING_BUDGET["gguf"]
        await pilot.press("ctrl+s")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#thinking-budget").value = "5000"
        await pilot.click("#save")
        await pilot.pause()
        assert "below max tokens" in str(screen.query_one("#settings-error").render())
        screen.query_one("#thinking-budget").value = "512"
        screen.query_one("#thinking-budget").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is app.chat_screen and app.params.thinking_budget == 512
    assert store.get_settings()["thinking_budget"] == 512
    # values equal to the engine's defaults are saved as "default": they follow the next model
    app = make_app(engine, store=store, export_dir=tmp_path)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        app.apply_settings("", 0.6, 0.95, REASONING_MAX_TOKENS, CHAT_THINKING_BUDGET["gguf"])
    saved = store.get_settings()
    assert saved["max_tokens"] is None and saved["thinking_budget"] is None
    tutor = make_app(FakeEngine(context_limit=4096), store=store, export_dir=tmp_path)
    async with tutor.run_test(size=(110, 40)) as pilot:
        await pilot.pause()
        assert (tutor.params.max_tokens, tutor.params.thinking_budget) == (DEFAULT_MAX_TOKENS, 0)
    assert parse_args(["--thinking-budget", "100"]).thinking_budget == 100
    with pytest.raises(SystemExit):
        parse_args(["--thinking-budget", "-1"])


def test_chat_setting_reaches_the_engine(store, tmp_path):
    """The budget set in the chat ends the tutor's reasoning on the real MLX engine."""
    from phiflash_mlx.engine import MLXEngine

    async def body():
        engine = MLXEngine(str(DEFAULT_MODEL_DIR))
        app = make_app(engine, store=store, export_dir=tmp_path, batch_interval=0)
        async with app.run_test(size=(110, 40)) as pilot:
            app.params.temperature, app.params.max_tokens = 0.0, 120
            app.params.thinking_budget = 6
            await ask(pilot, app, "What is 4821 + 3967?")
            reply = app.conversation.turns[-1].content
            think = reply.split("<think>", 1)[1].split("</think>", 1)[0]
            ids = engine.tokenizer.encode(think, add_special_tokens=False)
            assert len(ids) <= 6 + 1 and reply.split("</think>", 1)[1].strip()

    asyncio.run(body())
