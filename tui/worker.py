"""Generation off the UI thread: one cancellable thread worker posting typed messages.

The worker batches tokens (at most one message per ``interval`` seconds) so the UI stays
responsive at hundreds of tokens per second, and writes the partial answer to the history
*before* posting it, so whatever the screen shows is already on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.message import Message

from phiflash.engine import Chunk, GenerationParams


class Delta(Message):
    """New raw text of the answer being generated (``gen`` tells stale ones apart)."""

    def __init__(self, gen: int, text: str, chunk: Chunk):
        super().__init__()
        self.gen, self.text, self.chunk = gen, text, chunk


class Finished(Message):
    """Generation ended: ``status`` is "done", "stopped" or "length"."""

    def __init__(self, gen: int, text: str, chunk: Chunk | None, status: str):
        super().__init__()
        self.gen, self.text, self.chunk, self.status = gen, text, chunk, status


class Failed(Message):
    """The engine raised; ``error`` is a readable one-line message."""

    def __init__(self, gen: int, text: str, error: str):
        super().__init__()
        self.gen, self.text, self.error = gen, text, error


class EngineReady(Message):
    def __init__(self, engine):
        super().__init__()
        self.engine = engine


class EngineFailed(Message):
    def __init__(self, error: str):
        super().__init__()
        self.error = error


def describe_error(exc: BaseException) -> str:
    from phiflash.errors import PhiflashError

    if isinstance(exc, PhiflashError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


FINISH_STATUS = {"stop": "done", "length": "length", "cancelled": "stopped", None: "done"}


def run_generation(
    engine,
    messages: list[dict],
    params: GenerationParams,
    gen: int,
    should_stop: Callable[[], bool],
    post: Callable[[Message], object],
    save: Callable[[str, str], None],
    interval: float = 0.05,
) -> None:
    """Stream one reply; post batched :class:`Delta`s and one final message."""
    full, pending, last_post = "", "", 0.0
    chunk: Chunk | None = None
    try:
        for chunk in engine.stream(messages, params, should_stop):
            full += chunk.text
            pending += chunk.text
            now = time.monotonic()
            if pending and now - last_post >= interval and chunk.finish_reason is None:
                save(full, "streaming")
                post(Delta(gen, pending, chunk))
                pending, last_post = "", now
            if should_stop():
                break
    except Exception as exc:  # engine errors become a chat message, the app stays up
        save(full, "stopped")
        post(Failed(gen, full, describe_error(exc)))
        return
    if should_stop():
        status = "stopped"  # the UI already saved what it showed when Esc was pressed
    else:
        status = FINISH_STATUS.get(chunk.finish_reason if chunk else None, "done")
        save(full, status)
    post(Finished(gen, full, chunk, status))
