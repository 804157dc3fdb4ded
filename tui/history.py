"""Chat history in SQLite (``<user data dir>/history.sqlite3``).

Every message is written when it happens, and a streaming answer is rewritten as it grows
(before the screen shows it), so killing the terminal mid-answer loses nothing already shown.
WAL mode keeps each write cheap. One connection is shared by the UI thread and the generation
worker, behind a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from phiflash.tui.conversation import Conversation, Turn, split_think

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'done',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Summary:
    id: int
    title: str
    updated: float
    messages: int


class HistoryStore:
    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @classmethod
    def default(cls) -> HistoryStore:
        from phiflash.paths import user_data_dir

        return cls(user_data_dir() / "history.sqlite3")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # conversations

    def create(self, conv: Conversation, model: str = "") -> int:
        now = self._clock()
        cur = self._exec(
            "INSERT INTO conversations (title, system_prompt, model, created, updated)"
            " VALUES (?, ?, ?, ?, ?)",
            (conv.title, conv.system_prompt, model, now, now),
        )
        conv.id = cur.lastrowid
        return conv.id

    def list(self) -> list[Summary]:
        rows = self._exec(
            "SELECT c.id, c.title, c.updated, COUNT(m.id) FROM conversations c"
            " LEFT JOIN messages m ON m.conversation_id = c.id"
            " GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
        ).fetchall()
        return [Summary(*row) for row in rows]

    def last_id(self) -> int | None:
        row = self._exec(
            "SELECT id FROM conversations ORDER BY updated DESC, id DESC LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def load(self, conversation_id: int) -> Conversation | None:
        row = self._exec(
            "SELECT title, system_prompt FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            return None
        conv = Conversation(system_prompt=row[1], id=conversation_id, title=row[0])
        for mid, role, content, status in self._exec(
            "SELECT id, role, content, status FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ):
            if status == "streaming":  # the process died mid-answer
                status = "stopped"
            conv.turns.append(Turn(role, content, status, mid))
        return conv

    def delete(self, conversation_id: int) -> None:
        self._exec("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # messages

    def add(self, conv: Conversation, turn: Turn, model: str = "") -> int:
        if conv.id is None:
            self.create(conv, model)
        now = self._clock()
        cur = self._exec(
            "INSERT INTO messages (conversation_id, role, content, status, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (conv.id, turn.role, turn.content, turn.status, now),
        )
        self._exec("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv.id))
        turn.id = cur.lastrowid
        return turn.id

    def update(self, message_id: int, content: str, status: str) -> None:
        self._exec(
            "UPDATE messages SET content = ?, status = ? WHERE id = ?",
            (content, status, message_id),
        )

    def delete_message(self, message_id: int) -> None:
        self._exec("DELETE FROM messages WHERE id = ?", (message_id,))

    def raw_status(self, message_id: int) -> tuple[str, str] | None:
        """(content, status) as stored, without the load-time fix-up (for tests and tools)."""
        return self._exec(
            "SELECT content, status FROM messages WHERE id = ?", (message_id,)
        ).fetchone()

    # settings

    def get_settings(self) -> dict:
        return {k: json.loads(v) for k, v in self._exec("SELECT key, value FROM settings")}

    def put_settings(self, values: dict) -> None:
        for key, value in values.items():
            self._exec(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )


def export_markdown(conv: Conversation, model: str = "") -> str:
    """A conversation as Markdown: LaTeX kept as written, reasoning in a <details> block."""
    lines = [f"# {conv.title or 'Untitled problem'}", ""]
    if model:
        lines += [f"Model: `{model}`", ""]
    if conv.system_prompt.strip():
        lines += ["System prompt:", "", f"> {conv.system_prompt.strip()}", ""]
    for turn in conv.turns:
        if turn.role == "user":
            lines += ["## Student", "", turn.content.strip(), ""]
        elif turn.role == "assistant":
            split = split_think(turn.content, final=True)
            lines += ["## Tutor", ""]
            if split.has_think and split.think.strip():
                lines += ["<details><summary>Reasoning</summary>", "", split.think.strip(), ""]
                lines += ["</details>", ""]
            if split.answer.strip():
                lines += [split.answer.strip(), ""]
            if turn.status == "stopped":
                lines += ["*(stopped)*", ""]
            elif turn.status == "length":
                lines += ["*(cut off at the token limit)*", ""]
        else:
            lines += [f"> **Error:** {turn.content.strip()}", ""]
    return "\n".join(lines).rstrip() + "\n"
