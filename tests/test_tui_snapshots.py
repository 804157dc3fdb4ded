"""SVG snapshots of the main screens at a fixed terminal size (pytest-textual-snapshot).

Update with ``pytest tests/test_tui_snapshots.py --snapshot-update`` after a deliberate change.
"""

from __future__ import annotations

import os
import time

import pytest

from phiflash.engine import Chunk, FakeEngine
from phiflash.tui.app import DEMO_REPLY, make_app
from phiflash.tui.history import HistoryStore

SIZE = (100, 36)


class SteadyEngine(FakeEngine):
    """Fixed rates, so the stats line is the same on every machine."""

    def stream(self, messages, params, should_stop=None):
        for c in super().stream(messages, params, should_stop):
            yield Chunk(
                c.text,
                c.token,
                c.prompt_tokens,
                1000.0,
                c.generation_tokens,
                50.0,
                0.1,
                c.context_used,
                c.finish_reason,
            )


@pytest.fixture
def utc():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _app(tmp_path, **kw):
    ticks = iter(range(10**6))
    store = HistoryStore(tmp_path / "h.sqlite3", clock=lambda: 1_767_225_600 + next(ticks) * 60)
    return make_app(
        SteadyEngine(reply=DEMO_REPLY), store=store, export_dir=tmp_path, batch_interval=0, **kw
    )


async def _ask(pilot, text="What is 1 + 2 + ... + 10?"):
    app = pilot.app
    for _ in range(500):  # the first screen mounts and sets the engine up
        if app.engine is not None and app.chat_screen.query_one("#prompt").has_focus:
            break
        await pilot.pause(0.01)
    await pilot.pause()
    prompt = app.chat_screen.query_one("#prompt")
    prompt.cursor_blink = False  # a blinking caret would make the picture timing-dependent
    prompt.focus()
    await pilot.press(*text, "enter")
    for _ in range(500):
        if app.chat_screen.streaming is None and all(
            w.is_finished for w in app.chat_screen.workers
        ):
            break
        await pilot.pause(0.01)
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


def test_snapshot_chat_answered(snap_compare, tmp_path):
    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=_ask)


def test_snapshot_chat_think_expanded(snap_compare, tmp_path):
    async def run_before(pilot):
        await _ask(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()

    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_snapshot_history(snap_compare, tmp_path, utc):
    async def run_before(pilot):
        await _ask(pilot)
        await pilot.press("ctrl+n")
        await _ask(pilot, "Solve x^2 = 49")
        await pilot.press("ctrl+r")
        await pilot.pause()

    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_snapshot_settings(snap_compare, tmp_path):
    async def run_before(pilot):
        await pilot.press("ctrl+s")
        await pilot.pause()
        pilot.app.screen.query_one("#system-prompt").cursor_blink = False
        await pilot.pause()

    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=run_before)
