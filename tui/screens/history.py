"""Past problems: reopen, delete, export to Markdown."""

from __future__ import annotations

import re
import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from phiflash.tui.history import export_markdown


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def export_path(directory: Path, conversation_id: int, title: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "problem"
    return directory / f"phiflash-{conversation_id}-{slug}.md"


class HistoryScreen(Screen):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("enter", "open", "Open", show=True),
        Binding("d", "delete", "Delete"),
        Binding("e", "export", "Export .md"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("History: past problems (newest first)", id="history-title")
        yield OptionList(id="history-list")
        yield Static("", id="history-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(OptionList).focus()

    def reload(self) -> None:
        items = self.app.store.list()
        options = self.query_one(OptionList)
        highlighted = options.highlighted or 0
        options.clear_options()
        for s in items:
            label = f"{_when(s.updated)}  {s.title or 'Untitled'}  ({s.messages} messages)"
            options.add_option(Option(label, id=str(s.id)))
        empty = self.query_one("#history-empty", Static)
        empty.update("" if items else "No saved problems yet.")
        if items:
            options.highlighted = min(highlighted, len(items) - 1)

    def _selected(self) -> int | None:
        options = self.query_one(OptionList)
        if options.highlighted is None or options.option_count == 0:
            return None
        return int(options.get_option_at_index(options.highlighted).id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_open()

    def action_close(self) -> None:
        self.app.pop_screen()

    def action_open(self) -> None:
        cid = self._selected()
        if cid is None:
            return
        self.app.pop_screen()
        self.app.call_later(self.app.open_conversation, cid)

    def action_delete(self) -> None:
        cid = self._selected()
        if cid is None:
            return
        self.app.store.delete(cid)
        if self.app.conversation.id == cid:
            self.app.new_problem()
            self.app.call_later(self.app.chat_screen.show_conversation)
        self.reload()
        self.notify("Deleted.", timeout=2)

    def action_export(self) -> None:
        cid = self._selected()
        if cid is None:
            return
        conv = self.app.store.load(cid)
        path = export_path(self.app.export_dir, cid, conv.title)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(export_markdown(conv, self.app.model_label), encoding="utf-8")
        self.app.last_export = path
        self.notify(f"Exported to {path}", timeout=4)
