"""Helpers for the Pilot tests of `phiflash chat` (tui_app, long_chat, remote_chat)."""

from __future__ import annotations

import asyncio
import functools


def asynctest(fn):
    """Run an async test with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_until(pilot, cond, timeout: float = 5.0, step: float = 0.01):
    """Pause the app ``step`` seconds at a time until ``cond()``; at most ``timeout / step``
    pauses, then an AssertionError."""
    for _ in range(int(timeout / step)):
        if cond():
            return
        await pilot.pause(step)
    raise AssertionError("condition not reached")


async def ask(pilot, text: str):
    """Type ``text`` into the prompt and send it."""
    await pilot.click("#prompt")
    await pilot.press(*text)
    await pilot.press("enter")
