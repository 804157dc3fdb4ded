"""System prompt and sampling settings (saved in the history database)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from phiflash.engine import DEFAULT_MAX_TOKENS, DEFAULT_TEMP, DEFAULT_TOP_P, GenerationParams
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


class SettingsScreen(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        app = self.app
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
                yield Label(f"Max tokens (default {DEFAULT_MAX_TOKENS})")
                yield Input(str(app.params.max_tokens), id="max-tokens")
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
            self.query_one("#max-tokens", Input).value = str(DEFAULT_MAX_TOKENS)
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
        except ValueError as e:
            self.query_one("#settings-error", Label).update(f"⚠ {e}")
            return
        prompt = self.query_one("#system-prompt", TextArea).text
        self.app.apply_settings(prompt, temp, top_p, max_tokens)
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
