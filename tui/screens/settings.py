"""System prompt and sampling settings (saved in the history database)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from phiflash.engine import (
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    GenerationParams,
    chat_thinking_budget,
    default_max_tokens,
)
from phiflash.errors import InvalidParamsError


def parse_settings(temp: str, top_p: str, max_tokens: str) -> tuple[float, float, int]:
    """Validated values (the rule of ``GenerationParams.validate``), or ValueError for the user."""
    try:
        t = float(temp)
        p = float(top_p)
        m = int(max_tokens)
    except ValueError as e:
        raise ValueError("temperature and top-p must be numbers, max tokens a whole number") from e
    try:
        GenerationParams(max_tokens=m, temperature=t, top_p=p).validate()
    except InvalidParamsError as e:
        raise ValueError(str(e)) from e
    return t, p, m


def parse_budget(text: str, max_tokens: int) -> int:
    """The thinking budget field (0 or empty = no limit), or ValueError for the user."""
    try:
        b = int(text.strip() or 0)
    except ValueError:
        raise ValueError("the thinking budget must be a whole number (0 = no limit)") from None
    try:
        GenerationParams(max_tokens=max_tokens, thinking_budget=b).validate().check_budget_room()
    except InvalidParamsError as e:
        raise ValueError(str(e)) from e
    return b


def engine_defaults(app) -> tuple[int, int]:
    """(max tokens, thinking budget) by default for the loaded engine (the tutor's without)."""
    engine = getattr(app, "engine", None)
    limit = int(getattr(engine, "context_limit", 0) or 0)
    name = getattr(engine, "name", "")
    return default_max_tokens(limit), chat_thinking_budget(name, limit)


class SettingsScreen(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        app = self.app
        max_default, budget_default = engine_defaults(app)
        with Vertical(id="settings"):
            yield Label("Settings", id="settings-title")
            yield Label("System prompt (applies from the next problem, ctrl+n)")
            yield TextArea(app.system_prompt, id="system-prompt")
            with Horizontal(classes="row"):
                yield Label(f"Temperature (default {DEFAULT_TEMP})")
                yield Input(str(app.params.temperature), id="temp")
            with Horizontal(classes="row"):
                yield Label(f"Top-p (default {DEFAULT_TOP_P})")
                yield Input(str(app.params.top_p), id="top-p")
            with Horizontal(classes="row"):
                yield Label(f"Max tokens (default {max_default})")
                yield Input(str(app.params.max_tokens), id="max-tokens")
            with Horizontal(classes="row"):
                yield Label(f"Thinking budget (default {budget_default})")
                yield Input(
                    str(app.params.thinking_budget),
                    placeholder="0 = no limit",
                    id="thinking-budget",
                )
            yield Label("", id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Defaults", id="defaults")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "defaults":
            self.query_one("#temp", Input).value = str(DEFAULT_TEMP)
            self.query_one("#top-p", Input).value = str(DEFAULT_TOP_P)
            max_default, budget_default = engine_defaults(self.app)
            self.query_one("#max-tokens", Input).value = str(max_default)
            self.query_one("#thinking-budget", Input).value = str(budget_default)
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        try:
            temp, top_p, max_tokens = parse_settings(
                self.query_one("#temp", Input).value,
                self.query_one("#top-p", Input).value,
                self.query_one("#max-tokens", Input).value,
            )
            budget = parse_budget(self.query_one("#thinking-budget", Input).value, max_tokens)
        except ValueError as e:
            self.query_one("#settings-error", Label).update(f"⚠ {e}")
            return
        prompt = self.query_one("#system-prompt", TextArea).text
        self.app.apply_settings(prompt, temp, top_p, max_tokens, budget)
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
