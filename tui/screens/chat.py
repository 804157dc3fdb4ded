"""The chat screen: messages, input, stats. Generation state lives in the app."""

from __future__ import annotations

import threading

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, LoadingIndicator, Static
from textual.worker import get_current_worker

from phiflash.engine import check_context
from phiflash.errors import ContextLengthError
from phiflash.tui.conversation import Turn, split_think, title_for
from phiflash.tui.widgets.message import AssistantMessage, ErrorMessage, UserMessage
from phiflash.tui.widgets.stats import StatsBar
from phiflash.tui.worker import Delta, Failed, Finished, run_generation

WELCOME = (
    "Type a math problem and press **Enter**. The tutor thinks first (dimmed, folds away when "
    "the answer starts), then answers. Follow-up questions stay in the same problem; "
    "**ctrl+n** starts a new one."
)
# What the bundled model can do and how to get the real one (shown when the bundled model runs).
BUNDLED_NOTE = (
    "This is the bundled 7.65M demo tutor: arithmetic, fractions, percentages and linear "
    "equations only (✓/✗ marks are sympy's own check). The real model: phiflash pull "
    "microsoft/Phi-4-mini-flash-reasoning, then phiflash chat --model "
    "microsoft/Phi-4-mini-flash-reasoning."
)


def runs_bundled_model(label: str) -> bool:
    """True when the chat's model label names the bundled tutor (no --model given)."""
    from pathlib import Path

    from phiflash.paths import DEFAULT_MODEL_DIR

    if label == "the bundled model":
        return True
    try:
        return bool(label) and Path(label).resolve() == DEFAULT_MODEL_DIR.resolve()
    except (OSError, ValueError):
        return False


# tokens kept free for the student's next message when warning that a problem nears the context
NEXT_MESSAGE_ROOM = 64


def without_reasoning(messages: list[dict]) -> list[dict]:
    """``messages`` with the think blocks of earlier replies left out (the answers stay)."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            m = dict(m, content=split_think(m["content"], final=True).answer.strip())
        out.append(m)
    return out


def reasoning_progress(tokens: int, budget: int) -> str:
    if budget > 0:
        return f"thinking: {tokens:,} tokens / {budget:,} budget"
    return f"thinking: {tokens:,} tokens (no budget: ctrl+s sets one)"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+n", "new_problem", "New problem", priority=True),
        Binding("ctrl+t", "toggle_think", "Thinking"),
        Binding("ctrl+y", "copy", "Copy answer"),
        Binding("ctrl+r", "history", "History"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+g", "drop_reasoning", "Drop reasoning", show=False),
    ]
    DEFAULT_CSS = """
    #reasoning { color: $text-muted; padding: 0 1; height: auto; }
    #context-warning { color: $warning; background: $warning 10%; padding: 0 1; height: auto; }
    """

    def __init__(self):
        super().__init__()
        self.gen = 0  # id of the current generation; messages from older ones are ignored
        self.streaming: AssistantMessage | None = None
        self._save_lock = threading.Lock()
        self.drop_reasoning = False  # send earlier replies without their think blocks
        self._think_from: int | None = None  # generated tokens before the think block
        self._last_tokens = 0

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="messages"):
            yield Static(WELCOME, id="welcome", markup=False)
        with Vertical(id="loading"):
            yield LoadingIndicator()
            yield Static("", id="loading-label")
        yield Static("", id="reasoning", markup=False)
        yield Static("", id="context-warning", markup=False)
        yield Input(placeholder="Type a math problem and press Enter", id="prompt")
        yield StatsBar(id="stats")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#reasoning").display = False
        self.query_one("#context-warning").display = False
        welcome = WELCOME.replace("**", "")
        if runs_bundled_model(self.app.model_label):
            welcome += "\n" + BUNDLED_NOTE
        self.query_one("#welcome", Static).update(welcome)
        await self.show_conversation()
        self.query_one("#prompt", Input).focus()
        await self.app.start()

    # loading

    def show_loading(self, label: str | None) -> None:
        box = self.query_one("#loading")
        box.display = label is not None
        if label is not None:
            self.query_one("#loading-label", Static).update(label)

    # rendering the conversation

    async def show_conversation(self) -> None:
        messages = self.query_one("#messages", VerticalScroll)
        await messages.query("UserMessage, AssistantMessage, ErrorMessage").remove()
        self.query_one("#welcome").display = not self.app.conversation.turns
        turns = self.app.conversation.turns
        widgets = [self._widget_for(turn, turns[:i]) for i, turn in enumerate(turns)]
        if widgets:
            await messages.mount_all(widgets)
        messages.scroll_end(animate=False)
        self.query_one(StatsBar).show(None, context_used=0)
        self.drop_reasoning = False  # another problem: its reasoning is sent again
        self.show_context_warning(None)

    def _widget_for(self, turn: Turn, before: list[Turn] = ()):
        if turn.role == "user":
            return UserMessage(turn)
        if turn.role == "assistant":
            asked = [t.content for t in before if t.role == "user"]  # for the answer check
            return AssistantMessage(turn, asked[-1] if asked else None, len(asked) > 1)
        return ErrorMessage(turn)

    async def add_error(self, text: str) -> None:
        app = self.app
        turn = Turn("error", text, "error")
        app.conversation.turns.append(turn)
        if app.conversation.id is not None:
            app.store.add(app.conversation, turn, app.model_label)
        await self._mount(ErrorMessage(turn))

    async def _mount(self, widget) -> None:
        messages = self.query_one("#messages", VerticalScroll)
        self.query_one("#welcome").display = False
        await messages.mount(widget)
        messages.scroll_end(animate=False)

    # sending

    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        app = self.app
        if self.streaming is not None:
            self.notify("Still answering: press Esc to stop it first.", severity="warning")
            return
        if app.engine is None:
            if app.load_error:
                self.notify("No model is loaded (see the message above).", severity="error")
            else:
                self.notify("The model is still loading…", severity="warning")
            return
        conv = app.conversation
        turn_messages = conv.engine_messages() + [{"role": "user", "content": text}]
        if self.drop_reasoning:
            turn_messages = without_reasoning(turn_messages)
        problem = self.context_problem(turn_messages, 0)
        if problem:  # refused before anything is sent: never a failure mid-answer
            self.show_context_warning(problem)
            return
        self.show_context_warning(None)
        event.input.value = ""
        if not conv.title:
            conv.title = title_for(text)
        user = Turn("user", text)
        conv.turns.append(user)
        app.store.add(conv, user, app.model_label)
        messages = conv.engine_messages()
        if self.drop_reasoning:
            messages = without_reasoning(messages)
        reply = Turn("assistant", "", "streaming")
        conv.turns.append(reply)
        app.store.add(conv, reply, app.model_label)
        await self._mount(UserMessage(user))
        follow_up = sum(t.role == "user" for t in conv.turns) > 1
        self.streaming = AssistantMessage(reply, question=text, follow_up=follow_up)
        await self._mount(self.streaming)
        self.gen += 1
        self._think_from, self._last_tokens = None, 0
        self.generate(self.gen, messages, reply.id)

    @work(thread=True, exclusive=True, group="generate")
    def generate(self, gen: int, messages: list[dict], message_id: int) -> None:
        app = self.app
        worker = get_current_worker()

        def should_stop() -> bool:
            return worker.is_cancelled or gen != self.gen or self.streaming is None

        def save(text: str, status: str) -> None:
            with self._save_lock:
                if gen == self.gen and self.streaming is not None:
                    app.store.update(message_id, text, status)

        with app.engine_lock:  # an older, stopped generation may still be winding down
            if should_stop():
                return
            run_generation(
                app.engine,
                messages,
                app.params,
                gen,
                should_stop,
                self.post_message,
                save,
                app.batch_interval,
            )

    async def on_delta(self, message: Delta) -> None:
        if message.gen != self.gen or self.streaming is None:
            return
        widget = self.streaming
        widget.turn.content += message.text
        messages = self.query_one("#messages", VerticalScroll)
        follow = messages.scroll_offset.y >= messages.max_scroll_y - 2
        await widget.append(message.text)
        self.query_one(StatsBar).show(message.chunk)
        self._show_reasoning(widget.turn.content, message.chunk.generation_tokens)
        if follow:
            messages.scroll_end(animate=False)

    def _show_reasoning(self, raw: str, tokens: int) -> None:
        """While the model thinks: tokens so far inside <think> and the budget."""
        line = self.query_one("#reasoning", Static)
        if not split_think(raw).thinking:
            line.display = False
            self._last_tokens = tokens
            return
        if self._think_from is None:
            self._think_from = self._last_tokens
        self._last_tokens = tokens
        line.update(reasoning_progress(tokens - self._think_from, self.app.params.thinking_budget))
        line.display = True

    # long conversations

    def context_problem(self, messages: list[dict], room: int) -> str | None:
        """A one-line warning when ``messages`` plus a reply of max tokens (plus ``room``) do
        not fit the engine's context (phiflash.engine.check_context), else None."""
        engine, params = self.app.engine, self.app.params
        limit = int(getattr(engine, "context_limit", 0) or 0)
        try:
            used = engine.count_tokens(messages)
        except Exception:  # an engine that cannot count here: the engine's own check remains
            return None
        if limit <= 0:
            return None
        try:
            check_context(used + room, params.max_tokens, limit)
            return None
        except ContextLengthError:
            pass
        reply = (
            f"a reply of up to {params.max_tokens:,} tokens"
            if params.max_tokens > 0
            else ("a reply")
        )
        options = ["ctrl+n: new problem"]
        if not self.drop_reasoning:
            lighter = engine.count_tokens(without_reasoning(messages))
            if lighter < used:
                options.append(f"ctrl+g: drop earlier reasoning (frees {used - lighter:,} tokens)")
        options.append("ctrl+s: lower max tokens")
        return (
            f"⚠ This problem holds {used:,} of the model's {limit:,} tokens of context; {reply} "
            f"does not fit. " + " · ".join(options)
        )

    def show_context_warning(self, text: str | None) -> None:
        box = self.query_one("#context-warning", Static)
        box.display = text is not None
        if text is not None:
            box.update(text)

    def warn_if_near_the_end(self) -> None:
        """After a reply: say so before the next question would not fit."""
        if self.app.engine is None:
            return
        messages = self.app.conversation.engine_messages()
        if self.drop_reasoning:
            messages = without_reasoning(messages)
        self.show_context_warning(self.context_problem(messages, NEXT_MESSAGE_ROOM))

    def action_drop_reasoning(self) -> None:
        if self.streaming is not None:
            self.notify("Still answering: press Esc to stop it first.", severity="warning")
            return
        if self.drop_reasoning:
            self.notify("Earlier reasoning is already left out of this problem.")
            return
        self.drop_reasoning = True
        self.notify(
            "Earlier reasoning is left out of what the model sees from now on (it stays in the "
            "history); the next message starts a fresh context.",
            timeout=6,
        )
        self.warn_if_near_the_end()

    async def on_finished(self, message: Finished) -> None:
        if message.gen != self.gen or self.streaming is None:
            return
        widget, self.streaming = self.streaming, None
        widget.turn.content = message.text
        await self._finish(widget, message.text, message.status)
        self.query_one(StatsBar).show(message.chunk)
        self.warn_if_near_the_end()

    async def on_failed(self, message: Failed) -> None:
        if message.gen != self.gen or self.streaming is None:
            return
        widget, self.streaming = self.streaming, None
        widget.turn.content = message.text
        conv = self.app.conversation
        if message.text:
            await self._finish(widget, message.text, "stopped")
        else:
            conv.turns.remove(widget.turn)
            self.app.store.delete_message(widget.turn.id)
            await widget.remove()
        await self.add_error(message.error)

    async def _finish(self, widget: AssistantMessage, text: str, status: str) -> None:
        self.query_one("#reasoning").display = False
        widget.raw = text
        await widget.finish(status)
        self.query_one("#messages", VerticalScroll).scroll_end(animate=False)

    # actions

    async def action_stop(self) -> None:
        """Stop at once: keep what is shown, save it, let the engine wind down on its own."""
        widget = self.streaming
        if widget is None:
            return
        with self._save_lock:
            self.streaming = None
            text = widget.turn.content
            widget.turn.status = "stopped"
            self.app.store.update(widget.turn.id, text, "stopped")
        self.workers.cancel_group(self, "generate")
        await self._finish(widget, text, "stopped")

    async def action_new_problem(self) -> None:
        await self.action_stop()
        self.app.new_problem()
        await self.show_conversation()

    def _last_assistant(self) -> AssistantMessage | None:
        found = self.query(AssistantMessage)
        return found.last() if found else None

    def action_toggle_think(self) -> None:
        widget = self._last_assistant()
        if widget is not None:
            widget.toggle_think()

    def action_copy(self) -> None:
        widget = self._last_assistant()
        if widget is None:
            self.notify("Nothing to copy yet.")
            return
        self.app.copy_to_clipboard(widget.answer_raw())
        self.notify("Copied the answer (raw Markdown + LaTeX).", timeout=2)

    def action_history(self) -> None:
        if self.streaming is not None:
            self.notify("Still answering: press Esc to stop it first.", severity="warning")
            return
        from phiflash.tui.screens.history import HistoryScreen

        self.app.push_screen(HistoryScreen())

    def action_settings(self) -> None:
        from phiflash.tui.screens.settings import SettingsScreen

        self.app.push_screen(SettingsScreen())
