"""Conversation state as plain data, outside the widgets.

A :class:`Conversation` is what the engine sees (``engine_messages``) and what the history
stores; widgets only display it. :func:`split_think` separates the model's reasoning
(``<think>…</think>``) from its answer, also for a reply that is still streaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class Turn:
    role: str  # "user" | "assistant" | "error"
    content: str
    status: str = "done"  # "done" | "streaming" | "stopped" | "length" | "error"
    id: int | None = None  # row id in the history store


@dataclass
class Conversation:
    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)
    id: int | None = None  # row id in the history store; None until the first message
    title: str = ""

    def engine_messages(self) -> list[dict]:
        """The messages for ``Engine.stream``: the whole problem so far, errors left out."""
        messages = []
        if self.system_prompt.strip():
            messages.append({"role": "system", "content": self.system_prompt})
        for turn in self.turns:
            if turn.role in ("user", "assistant") and turn.status != "error":
                messages.append({"role": turn.role, "content": turn.content})
        return messages


@dataclass
class Split:
    think: str
    answer: str
    thinking: bool  # still inside <think> (no </think> yet)
    has_think: bool


def split_think(raw: str, final: bool = False) -> Split:
    """Split a (possibly partial) reply into reasoning and answer.

    While streaming, a tail that may be the start of a tag (``"</thi"``) is held back, so the
    answer never shows half a tag. A reply without ``<think>`` is all answer.
    """
    text = raw.lstrip()
    if not text.startswith(THINK_OPEN):
        if not final and THINK_OPEN.startswith(text):
            return Split("", "", False, False)  # maybe "<thi" of a coming <think>
        return Split("", raw, False, False)
    body = text[len(THINK_OPEN) :]
    end = body.find(THINK_CLOSE)
    if end < 0:
        hold = 0
        if not final:
            for k in range(len(THINK_CLOSE) - 1, 0, -1):
                if body.endswith(THINK_CLOSE[:k]):
                    hold = k
                    break
        return Split(body[: len(body) - hold], "", not final, True)
    return Split(body[:end], body[end + len(THINK_CLOSE) :].lstrip("\n"), False, True)


def title_for(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
