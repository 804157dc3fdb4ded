"""Every bad input gets one clear line: the CLI as a user runs it (a subprocess).

Each case runs `python -m phiflash.cli ...` in a scratch dir holding its inputs and checks:
exit != 0, no "Traceback" anywhere, at most a few lines on stderr, the inputs byte-for-byte
unchanged and no new files (nothing half-written). The chat cases check the opposite promise:
a damaged or unwritable history never stops the chat from opening.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from phiflash.engine import GenerationParams
from phiflash.errors import InvalidParamsError
from phiflash.paths import DEFAULT_MODEL_DIR
from phiflash.tui.conversation import Conversation, Turn
from phiflash.tui.history import HistoryStore
from phiflash.tui.screens.settings import parse_settings

MAX_STDERR_LINES = 3


def env(**extra) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUTF8="0")
    e.update(extra)
    return e


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def phiflash(args, cwd, stdin: bytes = b"", **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phiflash.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=env(**extra_env),
        timeout=180,
    )


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """A prompt cache of the tiny fixture model (6 cached layers; the tutor has 8)."""
    d = tmp_path_factory.mktemp("cache")
    r = phiflash(
        ["cache-prompt", "--model", str(TINY), "-p", "Nia has 40 coins."]
        + ["--prompt-cache-file", "tiny.safetensors"],
        cwd=d,
    )
    assert r.returncode == 0, r.stderr.decode()
    return d / "tiny.safetensors"


def gen(*flags):
    return ["generate", "--model", str(TINY), "--max-tokens", "4", *flags]


# (id, argv, stdin, words the one line must contain)
CASES = [
    ("stdin-not-utf8", gen("-p", "-"), b"\xff\xfe2 + 3 = \xc3(", "not UTF-8"),
    ("min-p-5", gen("-p", "hi", "--min-p", "5"), b"", "--min-p must be in [0, 1]"),
    ("temp-negative", gen("-p", "hi", "--temp", "-1"), b"", "--temp must be a finite number"),
    ("temp-nan", gen("-p", "hi", "--temp", "nan"), b"", "--temp must be a finite number"),
    ("temp-inf", gen("-p", "hi", "--temp", "inf"), b"", "--temp must be a finite number"),
    ("top-p-2", gen("-p", "hi", "--top-p", "2"), b"", "--top-p must be in (0, 1]"),
    ("top-p-0", gen("-p", "hi", "--top-p", "0"), b"", "--top-p must be in (0, 1]"),
    ("top-k-negative", gen("-p", "hi", "--top-k", "-5"), b"", "--top-k must be >= 0"),
    ("max-tokens-0", gen("-p", "hi", "--max-tokens", "0"), b"", "--max-tokens must be positive"),
    ("max-tokens-neg2", gen("-p", "hi", "--max-tokens", "-2"), b"", "or -1 for no limit"),
    ("prompt-empty", gen("-p", ""), b"", "the prompt is empty"),
    ("prompt-blank", gen("-p", "  \n "), b"", "the prompt is empty"),
    ("stdin-empty", gen("-p", "-"), b"", "the prompt is empty"),
    ("kv-bits", gen("-p", "hi", "--kv-bits", "4"), b"", "--kv-bits is not supported"),
    ("seed-negative", gen("-p", "hi", "--seed", "-1"), b"", "--seed must be in [0, 2**64)"),
    ("seed-huge", gen("-p", "hi", "--seed", str(2**64)), b"", "--seed must be in [0, 2**64)"),
    ("prompt-argv-not-utf8", gen("-p", b"2 + \xff3"), b"", "the prompt is not UTF-8"),
    (
        "system-prompt-not-utf8",
        gen("-p", "hi", "--system-prompt", b"Be \xffbrief"),
        b"",
        "--system-prompt is not UTF-8",
    ),
    (
        "cache-prompt-kv-bits",
        ["cache-prompt", "--model", str(TINY), "-p", "x", "--prompt-cache-file", "o.safetensors"]
        + ["--kv-bits", "8"],
        b"",
        "--kv-bits is not supported",
    ),
    (
        "cache-prompt-empty",
        ["cache-prompt", "--model", str(TINY), "-p", " ", "--prompt-cache-file", "o.safetensors"],
        b"",
        "the prompt is empty",
    ),
    (
        "cache-prompt-no-dir",
        ["cache-prompt", "--model", str(TINY), "-p", "x"]
        + ["--prompt-cache-file", "missing/o.safetensors"],
        b"",
        "no such directory",
    ),
]


@pytest.mark.parametrize("args,stdin,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(tmp_path, args, stdin, needle):
    check_refused(tmp_path, args, stdin, needle)


def check_refused(cwd: Path, args, stdin: bytes, needle: str) -> str:
    before = snapshot(cwd)
    r = phiflash(args, cwd, stdin)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode != 0, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= MAX_STDERR_LINES, err
    assert needle in err, err
    assert snapshot(cwd) == before  # inputs unchanged, nothing left behind
    return err


def test_top_k_beyond_the_vocabulary_means_off(tmp_path):
    """k >= vocab keeps every token (mlx-lm itself refuses such a k with a traceback)."""
    r = phiflash(gen("-p", "hi", "--top-k", "1000000", "--seed", "1"), tmp_path)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode()[-2000:]


def test_prompt_cache_from_another_model_size(tmp_path, tiny_cache):
    shutil.copy(tiny_cache, tmp_path / "tiny.safetensors")
    args = ["generate", "--model", str(DEFAULT_MODEL_DIR), "--max-tokens", "4"]
    err = check_refused(
        tmp_path,
        args + ["--prompt-cache-file", "tiny.safetensors", "-p", "How many?"],
        b"",
        "was made for another model",
    )
    assert "caches 6 layers, this model 8" in err


def test_cache_prompt_never_overwrites_without_force(tmp_path, tiny_cache):
    shutil.copy(tiny_cache, tmp_path / "tiny.safetensors")
    args = ["cache-prompt", "--model", str(TINY), "-p", "Other text."]
    check_refused(tmp_path, args + ["--prompt-cache-file", "tiny.safetensors"], b"", "--force")
    # with --force it is replaced whole, and no temporary file is left
    r = phiflash(args + ["--prompt-cache-file", "tiny.safetensors", "--force"], tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]
    assert (tmp_path / "tiny.safetensors").read_bytes() != tiny_cache.read_bytes()


def test_not_a_prompt_cache(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 64)
    check_refused(
        tmp_path,
        gen("-p", "hi", "--prompt-cache-file", "x.safetensors"),
        b"",
        "is not a prompt cache",
    )


# -- the one validation rule, shared by generate, the chat's flags and its settings screen ----


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -1.0),
        ("temperature", float("nan")),
        ("top_p", 2.0),
        ("top_p", float("nan")),
        ("min_p", 5.0),
        ("top_k", -5),
        ("max_tokens", 0),
        ("max_tokens", -2),
    ],
)
def test_validate_refuses(field, value):
    with pytest.raises(InvalidParamsError):
        GenerationParams(**{field: value}).validate()


def test_validate_accepts_the_edges():
    for kw in ({"temperature": 0.0}, {"top_p": 1.0}, {"min_p": 1.0}, {"max_tokens": -1}):
        assert GenerationParams(**kw).validate() is not None


def test_settings_screen_uses_the_same_rule():
    assert parse_settings("0", "1", "-1") == (0.0, 1.0, -1)
    for temp, top_p, max_tokens in (("nan", "0.9", "10"), ("-1", "0.9", "10"), ("1", "2", "1")):
        with pytest.raises(ValueError):
            parse_settings(temp, top_p, max_tokens)


def test_budget_must_leave_room_for_the_answer(tmp_path):
    """The one rule for a budget the user chose: below max tokens, in every front end."""
    with pytest.raises(InvalidParamsError, match="must be below max tokens"):
        GenerationParams(max_tokens=100, thinking_budget=100).check_budget_room()
    for ok in (
        {"max_tokens": 100, "thinking_budget": 99},
        {"max_tokens": -1, "thinking_budget": 1},
    ):
        GenerationParams(**ok).check_budget_room()
    check_refused(tmp_path, gen("-p", "hi", "--thinking-budget", "4"), b"", "--thinking-budget (4)")
    r = phiflash(
        ["chat", "--max-tokens", "64", "--thinking-budget", "64"],
        tmp_path,
        PHIFLASH_DATA_DIR=str(tmp_path / "data"),
    )
    err = r.stderr.decode()
    assert r.returncode == 2 and "must be below --max-tokens (64)" in err, err
    assert not (tmp_path / "data").exists()


def test_chat_flags_use_the_same_rule(tmp_path):
    r = phiflash(["chat", "--temp", "nan"], tmp_path, PHIFLASH_DATA_DIR=str(tmp_path / "data"))
    err = r.stderr.decode()
    assert r.returncode == 2 and "--temp must be a finite number" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= MAX_STDERR_LINES
    assert not (tmp_path / "data").exists()


# -- the chat history: damaged or unwritable, the chat still opens -----------------------------


def filled_store(path: Path) -> None:
    store = HistoryStore(path)
    for i in range(40):
        store.add(Conversation(), Turn("user", f"problem {i} " + "x" * 3000))
    store.close()


def test_history_not_sqlite_is_moved_aside(tmp_path):
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"not a database\n" * 100)
    store = HistoryStore.open_safely(db)
    assert store.notice and "damaged" in store.notice and "\n" not in store.notice
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == b"not a database\n" * 100
    store.add(Conversation(), Turn("user", "2+3"))  # the fresh store works
    assert len(store.list()) == 1
    store.close()


def test_history_with_damaged_pages_is_moved_aside(tmp_path):
    db = tmp_path / "history.sqlite3"
    filled_store(db)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the header's page size
    data[page : page + 64] = b"\x13" * 64  # page 2: a b-tree page's header
    db.write_bytes(bytes(data))
    store = HistoryStore.open_safely(db)
    assert store.notice and "damaged" in store.notice and "\n" not in store.notice
    assert store.list() == [] and store.path == db
    store.close()


def test_history_healthy_is_kept(tmp_path):
    db = tmp_path / "history.sqlite3"
    filled_store(db)
    store = HistoryStore.open_safely(db)
    assert store.notice is None and len(store.list()) == 40
    store.close()


def test_history_unwritable_falls_back_to_memory(tmp_path):
    # the data dir cannot be created (a file is in the way; fails the same way for root)
    (tmp_path / "file").write_text("x")
    store = HistoryStore.open_safely(tmp_path / "file" / "data" / "history.sqlite3")
    assert store.notice and "will not be saved" in store.notice
    store.add(Conversation(), Turn("user", "2+3"))
    assert len(store.list()) == 1
    store.close()
    # the database path is a directory: sqlite cannot open it
    (tmp_path / "dir.sqlite3").mkdir()
    store = HistoryStore.open_safely(tmp_path / "dir.sqlite3")
    assert store.notice and "will not be saved" in store.notice
    store.close()


@pytest.mark.skipif(os.name == "nt" or (hasattr(os, "getuid") and os.getuid() == 0), reason="root")
def test_history_read_only_file_falls_back_to_memory(tmp_path):
    db = tmp_path / "history.sqlite3"
    filled_store(db)
    db.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        store = HistoryStore.open_safely(db)
        assert store.notice and "will not be saved" in store.notice
        store.close()
    finally:
        tmp_path.chmod(0o755)


def screen_text(raw: str) -> str:
    """What a terminal shows, roughly: the output without its escape sequences."""
    return re.sub(r"\x1b\[[0-9;?<>$]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]", "", raw)


def run_chat_in_pty(data_dir: Path, until: str, timeout: float = 90.0, cmd=None, **env_):
    """Start `phiflash chat` (default: the demo engine) on a pseudo-terminal; once ``until``
    shows on the screen, press ctrl+q (again every 2 s until it exits); return (exit code,
    everything it wrote). Killed after ``timeout`` seconds."""
    import pty
    import select
    import signal

    e = env(
        PHIFLASH_FAKE_LOAD_S="0",
        PHIFLASH_DATA_DIR=str(data_dir),
        TERM="xterm-256color",
        **({"PHIFLASH_FAKE_ENGINE": "1"} | env_),
    )
    cmd = cmd or [sys.executable, "-m", "phiflash.cli", "chat"]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(cmd[0], cmd, e)
    out, t0, last_q = b"", time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        now = time.monotonic()
        if last_q is None and until in screen_text(out.decode(errors="replace")):
            last_q = now - 2.0
        if last_q is not None and now - last_q >= 2.0:
            os.write(fd, b"\x11")  # ctrl+q
            last_q = now
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.skipif(os.name == "nt", reason="needs a POSIX pseudo-terminal")
def test_chat_opens_on_a_damaged_history(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"garbage" * 50)
    code, out = run_chat_in_pty(data, until="Type a math problem")
    assert code == 0 and "Traceback" not in out
    assert "note: the chat history was damaged" in out
    names = sorted(p.name for p in data.iterdir())
    assert "history.sqlite3" in names and any(".corrupt-" in n for n in names)
    with sqlite3.connect(data / "history.sqlite3") as db:  # the fresh one is real SQLite
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"


@pytest.mark.skipif(os.name == "nt", reason="needs a POSIX pseudo-terminal")
def test_chat_opens_with_an_unwritable_data_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    code, out = run_chat_in_pty(tmp_path / "file" / "data", until="Type a math problem")
    assert code == 0 and "Traceback" not in out
    assert "will not be saved" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.name == "nt", reason="the stale-file probe is POSIX (signal 0)")
def test_cache_prompt_removes_temps_of_killed_runs(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_out)
    stale = tmp_path / f".ctx.phiflash-tmp-{int(dead.stdout)}.safetensors"
    live = tmp_path / f".ctx.phiflash-tmp-{os.getpid()}.safetensors"  # a run still going
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    args = [
        "cache-prompt",
        "--model",
        str(TINY),
        "-p",
        "x",
        "--prompt-cache-file",
        "ctx.safetensors",
    ]
    r = phiflash(args, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ctx.safetensors", live.name])


_out = {"capture_output": True, "text": True, "check": True}


def disk_full(store: HistoryStore) -> None:
    """From now on every write that needs a new page fails with SQLITE_FULL (a full disk)."""
    pages = store._exec("PRAGMA page_count").fetchone()[0]
    store._exec(f"PRAGMA max_page_count = {pages}")


def test_history_write_failing_mid_session_goes_on_in_memory(tmp_path):
    store = HistoryStore.open_safely(tmp_path / "history.sqlite3")
    heard = []
    store.on_notice = heard.append
    conv = Conversation()
    store.add(conv, Turn("user", "2+3"))
    disk_full(store)
    reply = Turn("assistant", "5 " * 20000)
    store.add(conv, reply)  # needs new pages: the disk is "full"
    assert heard == [store.notice] and "not saved from now on" in store.notice
    assert "full" in store.notice
    store.update(reply.id, "five", "done")
    assert store.raw_status(reply.id) == ("five", "done")
    store.close()
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:  # what was saved stays saved
        assert db.execute("SELECT content FROM messages").fetchall() == [("2+3",)]


def test_chat_survives_a_full_disk_mid_answer(tmp_path):
    """The chat keeps streaming and tells the user, instead of dying with a traceback."""
    import asyncio
    import time

    from phiflash.engine import FakeEngine
    from phiflash.tui.app import make_app

    store = HistoryStore.open_safely(tmp_path / "history.sqlite3")
    engine = FakeEngine(reply="The answer is " + "5 " * 5000)

    async def go():
        app = make_app(engine, store=store, export_dir=tmp_path, batch_interval=0)
        # every notification shown, kept past its timeout (the reply may outlast its 15 s
        # on a busy CI machine, and Textual then drops it from app._notifications)
        notified, notify = [], app.notify
        app.notify = lambda message, *a, **kw: notified.append(message) or notify(message, *a, **kw)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            app.params.max_tokens = -1  # no limit: the whole reply (the settings allow -1)
            disk_full(store)
            await pilot.click("#prompt")
            await pilot.press(*"2+3", "enter")
            deadline = time.monotonic() + 120  # generous: CI's 2 cores may be busy
            while time.monotonic() < deadline:  # the reply is done: its status leaves "streaming"
                turns = app.conversation.turns
                if len(turns) == 2 and turns[-1].status != "streaming":
                    break
                await pilot.pause(0.05)
            assert app.conversation.turns[-1].status == "done"
            assert app.conversation.turns[-1].content.startswith("The answer is 5 5")
            shown = notified
            assert any("not saved from now on" in m for m in shown), shown

    asyncio.run(go())
    store.close()


def test_prompt_cache_with_other_dimensions_is_refused(tiny_cache):
    """Same layer layout, other sizes (e.g. another hidden size): refused, naming the shapes."""
    import mlx.core as mx

    from phiflash.errors import PromptCacheError
    from phiflash_mlx.cache_prompt import read_prompt_cache
    from phiflash_mlx.load import load_model

    model, _ = load_model(TINY)
    pinned = read_prompt_cache(str(tiny_cache))
    pinned.check_model(model)  # its own model: fits
    cls, (keys, values, *rest) = pinned._layers[1]  # a sliding-window layer
    wider = [mx.zeros((*keys.shape[:3], keys.shape[3] * 2), keys.dtype) for _ in range(2)]
    pinned._layers[1] = (cls, (*wider, *rest))
    with pytest.raises(PromptCacheError, match="layer 1 holds shape"):
        pinned.check_model(model)
