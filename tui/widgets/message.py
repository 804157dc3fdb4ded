"""Chat message widgets. They display a Turn; they never own conversation state."""

from __future__ import annotations

import asyncio

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import Collapsible, Markdown, Static

from phiflash.tui.conversation import Turn, split_think
from phiflash.tui.mathrender import MathStream, latex_to_unicode, render_markdown
from phiflash.tutor.answers import extract_boxed
from phiflash.tutor.check import check_answer

STATUS_NOTES = {
    "stopped": "■ stopped",
    "length": "■ cut off at the token limit (raise max tokens in settings, ctrl+s)",
}


class UserMessage(Vertical):
    def __init__(self, turn: Turn):
        super().__init__(classes="message user")
        self.turn = turn

    def compose(self) -> ComposeResult:
        yield Static("You", classes="who")
        yield Markdown(render_markdown(self.turn.content), classes="body")


class ErrorMessage(Static):
    def __init__(self, turn: Turn):
        super().__init__(f"⚠ {turn.content}", classes="message error")
        self.turn = turn


class AssistantMessage(Vertical):
    """Reasoning in a dimmed collapsible block, then the answer as streamed Markdown.

    ``append`` takes raw model text; math is rendered by :class:`MathStream`, which only emits
    text whose rendering is final, so the Markdown widgets are only ever appended to.
    """

    def __init__(self, turn: Turn, question: str | None = None, follow_up: bool = False):
        super().__init__(classes="message assistant")
        self.turn = turn
        self.question = question  # the student's message this replies to (for the answer check)
        self.follow_up = follow_up  # not the conversation's first question
        self.check = None  # phiflash.tutor.check.CheckResult once the answer was checked
        self.raw = ""
        self._think_fed = 0
        self._answer_fed = 0
        self._think_math = MathStream()
        self._answer_math = MathStream()
        self._think_stream = None
        self._answer_stream = None
        self.folded_by_user: bool | None = None

    def compose(self) -> ComposeResult:
        yield Static("Tutor", classes="who")
        with Collapsible(title="Thinking…", collapsed=False, classes="think"):
            yield Markdown("", classes="think-text")
        yield Markdown("", classes="answer")
        yield Static("", classes="boxed")
        yield Static("", classes="note")

    @property
    def think(self) -> Collapsible:
        return self.query_one(Collapsible)

    @property
    def answer(self) -> Markdown:
        return self.query_one(".answer", Markdown)

    def on_mount(self) -> None:
        self.think.display = False
        self.query_one(".boxed").display = False
        self.query_one(".note").display = False
        if self.turn.content and self.turn.status != "streaming":
            self.call_after_refresh(self.show_final, self.turn.content, self.turn.status)

    def _streams(self):
        if self._think_stream is None:
            self._think_stream = Markdown.get_stream(self.query_one(".think-text", Markdown))
            self._answer_stream = Markdown.get_stream(self.answer)
        return self._think_stream, self._answer_stream

    async def append(self, text: str) -> None:
        self.raw += text
        split = split_think(self.raw)
        think_stream, answer_stream = self._streams()
        if split.has_think:
            self.think.display = True
        new_think = split.think[self._think_fed :]
        if new_think:
            self._think_fed += len(new_think)
            await think_stream.write(self._think_math.feed(new_think))
        if split.has_think and not split.thinking and self.think.title == "Thinking…":
            self._fold(split.think)
        new_answer = split.answer[self._answer_fed :]
        if new_answer:
            self._answer_fed += len(new_answer)
            await answer_stream.write(self._answer_math.feed(new_answer))

    def _fold(self, think: str) -> None:
        words = len(think.split())
        self.think.title = f"Reasoning ({words} words) · ctrl+t"
        if self.folded_by_user is None:
            self.think.collapsed = True

    async def finish(self, status: str) -> None:
        """Stop streaming: flush the rendered tails, fold the reasoning, show the answer.

        A new problem (ctrl+n) may remove this widget while it finishes; the turn is already
        saved, so there is nothing left to show and the widget just stops.
        """
        self.turn.status = status
        try:
            if self._think_stream is not None:
                await self._think_stream.stop()
                await self._answer_stream.stop()
            await self.show_final(self.raw, status)
        except NoMatches:  # its children are gone: the widget is being removed
            return

    async def show_final(self, raw: str, status: str) -> None:
        self.raw = raw
        split = split_think(raw, final=True)
        self.think.display = split.has_think and bool(split.think.strip())
        await self.query_one(".think-text", Markdown).update(render_markdown(split.think))
        if split.has_think and "</think>" in raw:
            self._fold(split.think)
        elif split.has_think:
            self.think.title = "Reasoning (stopped while thinking) · ctrl+t"
        await self.answer.update(render_markdown(split.answer))
        boxed = extract_boxed(split.answer)
        if boxed is not None:
            badge = self.query_one(".boxed", Static)
            text = f" Answer: {latex_to_unicode(boxed, box=('', ''))} "
            badge.update(text)
            badge.display = True
            if self.question:
                self.run_worker(self._mark(badge, text, split.answer), group="check")
        note = STATUS_NOTES.get(status)
        if note:
            self.query_one(".note", Static).update(note)
            self.query_one(".note").display = True

    async def _mark(self, badge: Static, text: str, answer: str) -> None:
        """sympy solves the student's problem on its own: checked ✓ / differs ✗, or no mark."""
        self.check = await asyncio.to_thread(check_answer, self.question, answer, self.follow_up)
        if self.check is not None:
            badge.update(f"{text}· {self.check.badge()} ")

    def toggle_think(self) -> None:
        self.think.collapsed = not self.think.collapsed
        self.folded_by_user = self.think.collapsed

    def answer_raw(self) -> str:
        split = split_think(self.raw, final=True)
        return (split.answer or self.raw).strip()
