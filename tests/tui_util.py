"""Helpers for the Pilot tests of `phiflash chat` (tui_app, long_chat, remote_chat)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time

from phiflash.engine import Chunk, FakeEngine


def asynctest(fn):
    """Run an async test with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_until(pilot, cond, timeout: float = 30.0, step: float = 0.01):
    """Pause the app ``step`` seconds at a time until ``cond()``; after ``timeout`` seconds
    (wall clock, and at least ``timeout / step`` pauses: CI's 2 cores may be busy), an
    AssertionError."""
    deadline = time.monotonic() + timeout
    for i in itertools.count():
        if cond():
            return
        if i >= timeout / step and time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await pilot.pause(step)


async def ask(pilot, text: str):
    """Type ``text`` into the prompt and send it."""
    await pilot.click("#prompt")
    await pilot.press(*text)
    await pilot.press("enter")


class GatedEngine(FakeEngine):
    """Streams one piece each time the test calls ``release``."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate = threading.Semaphore(0)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def stream(self, messages, params, should_stop=None):
        for chunk in super().stream(messages, params, should_stop):
            while not self.gate.acquire(timeout=0.01):
                if should_stop is not None and should_stop():
                    yield Chunk("", finish_reason="cancelled")
                    return
            yield chunk
