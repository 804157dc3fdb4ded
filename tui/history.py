"""Chat history in SQLite (``<user data dir>/history.sqlite3``).

Every message is written when it happens, and a streaming answer is rewritten as it grows
(before the screen shows it), so killing the terminal mid-answer loses nothing already shown.
WAL mode keeps each write cheap. One connection is shared by the UI thread and the generation
worker, behind a lock.

The chat always opens (:meth:`HistoryStore.open_safely`): a database that is not SQLite or fails
its integrity check is moved aside (``history.sqlite3.corrupt-<time>``) and a fresh one is
started; a data dir or database that cannot be written gives an in-memory store (the chat runs
but is not saved), and so does a write that fails mid-session. ``store.notice`` holds the one
line the chat shows.
"""

from __future__ import annotations

import json
import os
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


class CorruptHistory(Exception):
    """The database file is not SQLite or fails ``PRAGMA quick_check``."""


MEMORY = ":memory:"
FAILING_DB = (sqlite3.OperationalError, sqlite3.DatabaseError)  # exact types, not subclasses


class HistoryStore:
    def __init__(self, path: str | Path, clock=time.time, check: bool = False):
        self.path = Path(path)
        self.notice: str | None = None  # one line for the user (see open_safely)
        self.on_notice = None  # called with a notice raised mid-session (the chat shows it)
        if str(path) != MEMORY:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            if check:
                row = self._db.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    raise CorruptHistory(row[0] if row else "quick_check returned nothing")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            if check:  # a read-only file opens fine and fails at the first write: find out now
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open_safely(cls, path: str | Path, clock=time.time) -> HistoryStore:
        """The store at ``path``; never raises for a bad file (see the module docstring)."""
        path = Path(path)
        try:
            return cls(path, clock, check=True)
        except (CorruptHistory, sqlite3.DatabaseError) as e:
            if isinstance(e, sqlite3.OperationalError):  # cannot open / read-only / locked
                return cls._in_memory(clock, f"cannot use the chat history at {path} ({e})")
            why = " ".join(str(e).replace("*", "").split())[:160]  # quick_check: many lines
        except OSError as e:  # the data dir cannot be created
            return cls._in_memory(clock, f"cannot use the chat history at {path} ({e.strerror})")
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):  # WAL files belong to the damaged database
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + suffix))
            store = cls(path, clock)
        except (OSError, sqlite3.Error) as e:
            return cls._in_memory(
                clock, f"the chat history at {path} is damaged ({why}) and cannot be replaced ({e})"
            )
        store.notice = f"the chat history was damaged ({why}); moved it to {aside}, started anew"
        return store

    @classmethod
    def _in_memory(cls, clock, why: str) -> HistoryStore:
        store = cls(MEMORY, clock)
        store.notice = f"{why}; this chat will not be saved"
        return store

    @classmethod
    def default(cls) -> HistoryStore:
        """The user's store (``<user data dir>/history.sqlite3``), opened with open_safely."""
        from phiflash.paths import user_data_dir

        try:
            path = user_data_dir() / "history.sqlite3"
        except Exception as e:  # no home dir to derive the data dir from
            return cls._in_memory(time.time, f"no user data dir ({e})")
        return cls.open_safely(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.DatabaseError as e:
                # only a failing database (I/O, read-only, full, damaged), never a wrong query
                if str(self.path) == MEMORY or type(e) not in FAILING_DB:
                    raise
                self._fall_back_to_memory(e)
                return self._db.execute(sql, args)

    def _fall_back_to_memory(self, error: sqlite3.Error) -> None:
        """The database failed mid-session (disk full, file gone): keep the chat running.

        What follows lives in memory only; ``on_notice`` (set by the chat) hears why.
        """
        try:
            self._db.close()
        except sqlite3.Error:
            pass
        failed = self.path
        self.path = Path(MEMORY)
        self._db = sqlite3.connect(MEMORY, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)  # no foreign keys: earlier rows stayed on disk
        self.notice = f"cannot write the chat history at {failed} ({error}); not saved from now on"
        if self.on_notice is not None:
            self.on_notice(self.notice)

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
        out = {}
        for k, v in self._exec("SELECT key, value FROM settings"):
            try:
                out[k] = json.loads(v)
            except ValueError:  # a damaged value: the default applies
                continue
        return out

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
