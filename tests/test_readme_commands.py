"""The README's commands run as written.

Every line of the README's fenced shell blocks (```sh / bash / shell / console) is a command.
Each one either runs here, offline, through bash in a scratch dir, or matches a rule of
:data:`CANNOT_RUN_HERE` that says why not. A command that matches no rule must run and exit 0
with no traceback, so a new README command is tested the day it is written.

How it runs offline: hub ids point at a local Hugging Face cache this test builds
(``HF_HUB_CACHE`` + ``HF_HUB_OFFLINE=1``) in which ``microsoft/Phi-4-mini-flash-reasoning``
holds the tiny fixture checkpoint; the text files a command reads (``problem.txt``, ...) are
written first; conversions run before the commands that use their outputs; ``--max-tokens``
is capped at :data:`MAX_TOKENS`; ``phiflash`` and ``python`` are this venv's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from hub_util import add_to_hub_cache

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_TOKENS = 12
HUB_REPOS = ["microsoft/Phi-4-mini-flash-reasoning"]  # each holds the tiny fixture here
SHELL_LANGS = {"sh", "bash", "shell", "console", "zsh"}

# (regex searched in the command, why it cannot run here). Keep each reason honest.
CANNOT_RUN_HERE = [
    (r"^make\b", "make targets create the venv and build the fork: CI runs `make test` itself"),
    (r"^(pip|uv|python -m pip)\b.*install", "installs from a package index (network)"),
    (r"^(git clone|curl|wget)\b", "network: a download or an HTTP call to a running server"),
    (r"^(hf|huggingface-cli) (download|login|upload)", "talks to the Hugging Face Hub"),
    (r"^phiflash pull\b", "downloads from the Hugging Face Hub (tests/test_hub_ids.py)"),
    (r"^phiflash chat\b", "interactive (tests/test_tui_*.py, the wheel test starts it on a pty)"),
    (r"^phiflash serve\b", "a server that runs until stopped (tests/test_serve_*.py)"),
    (r"^phiflash train\b", "trains the tutor for hours"),
    (r"^phiflash eval-math\b", "runs the held-out math set for many minutes"),
    (r"^(python|\.venv/bin/python) (-m )?benchmarks", "a long benchmark"),
    (r"^(python|\.venv/bin/python) .*benchmarks/", "a long benchmark"),
    (
        r"^(mlx_lm\.|python -m mlx_lm)\S*.*--model (microsoft|mlx-community)/",
        "stock mlx-lm on a hub model",
    ),  # fmt: skip
    (r"\bPHIFLASH_FAKE_ENGINE=1\b", "the hidden demo chat (interactive)"),
    (r"^(open|brew|xcode-select)\b", "macOS only"),
    (r"^\.ci/", "CI's own entry point (runs the whole suite)"),
    (r"^(cd|export|source)\b", "changes the shell's state only"),
]

SAMPLE_TEXT = (
    "1. Solve for x: 3x + 7 = 22.\n2. What is 17 * 23?\n3. A train travels 60 km in 45 "
    "minutes. What is its average speed in km/h?\n"
)


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced shell blocks, in order."""
    out, body, lang = [], None, None
    for line in text.splitlines():
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and body is None:
            lang, body = fence.group(2).lower(), []
        elif fence and body is not None:
            if lang in SHELL_LANGS:
                out.append("\n".join(body))
            body = None
        elif body is not None:
            body.append(line)
    return out


def commands(block: str) -> list[str]:
    """Command lines: continuations joined, prompts (`$ `) and comments stripped."""
    cmds, pending = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if pending:
            line = pending + " " + line.lstrip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        line = re.sub(r"^\s*\$\s+", "", line).strip()
        if not line or line.startswith("#"):
            continue
        cmds.append(strip_comment(line))
    if pending:
        cmds.append(pending)
    return cmds


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after a space, outside quotes)."""
    quote, prev = None, " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line


def readme_commands() -> list[str]:
    seen, out = set(), []
    for block in shell_blocks(README.read_text(encoding="utf-8")):
        for c in commands(block):
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def program(cmd: str) -> str:
    """The command without leading ``VAR=value`` assignments and a ``.venv/bin/`` prefix."""
    cmd = re.sub(r"^(\w+=(\"[^\"]*\"|'[^']*'|\S*)\s+)+", "", cmd)
    return re.sub(r"^\.venv/bin/", "", cmd)


def why_not(cmd: str) -> str | None:
    for pattern, reason in CANNOT_RUN_HERE:
        if re.search(pattern, cmd) or re.search(pattern, program(cmd)):
            return reason
    return None


GENERATE = (
    r"^(phiflash generate|python -m phiflash\.commands\.generate"
    r"|(python -m )?mlx_lm[. ]generate)\b"
)


def capped(cmd: str) -> str:
    """``--max-tokens``/``-m`` capped at MAX_TOKENS for generation commands, and a
    ``--thinking-budget`` below it (a budget must leave room for the answer)."""
    if not re.match(GENERATE, program(cmd)):
        return cmd
    if "--help" in cmd.split() or "-h" in cmd.split():
        return cmd
    cmd = re.sub(r"(--thinking-budget)([ =])\d+", rf"\g<1>\g<2>{MAX_TOKENS // 2}", cmd)
    if re.search(r"(--max-tokens|-m)[ =]-?\d+", cmd):
        return re.sub(r"(--max-tokens|-m)([ =])-?\d+", rf"\g<1>\g<2>{MAX_TOKENS}", cmd)
    return f"{cmd} --max-tokens {MAX_TOKENS}"


def stage(cmd: str) -> int:
    """Conversions first, then prompt caches, then everything else (README order within)."""
    if re.match(r"^phiflash convert(-gguf)?\b", program(cmd)):
        return 0
    if re.match(r"^phiflash cache-prompt\b", program(cmd)):
        return 1
    return 2


ALL = readme_commands()
RUNNABLE = [c for c in ALL if why_not(c) is None]
SKIPPED = [(c, why_not(c)) for c in ALL if why_not(c) is not None]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    cache = root / "hf-cache"
    for repo in HUB_REPOS:
        add_to_hub_cache(cache, repo, TINY)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)  # `.venv/bin/phiflash ...`
    for name in sorted({m for c in ALL for m in re.findall(r"[\w./-]+\.txt\b", c)}):
        if "/" not in name:
            (work / name).write_text(SAMPLE_TEXT)
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PHIFLASH_DATA_DIR=str(root / "data"),
        PHIFLASH_MODELS_DIR=str(root / "models"),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    )
    env.pop("PYTHONPATH", None)
    out = {}
    for cmd in sorted(RUNNABLE, key=stage):
        r = subprocess.run(
            ["bash", "-c", capped(cmd)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        out[cmd] = r
    return out


def test_readme_has_commands():
    assert len(ALL) >= 5, "no shell blocks found in README.md"
    assert any(c.startswith("phiflash generate") for c in RUNNABLE)


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_command_runs(results, cmd):
    r = results[cmd]
    detail = f"$ {capped(cmd)}\n--- stdout\n{r.stdout[-1500:]}\n--- stderr\n{r.stderr[-2500:]}"
    assert r.returncode == 0, detail
    assert "Traceback" not in r.stdout + r.stderr, detail
    if re.match(r"^phiflash generate\b", program(cmd)) and "--help" not in cmd:
        assert r.stdout.strip(), detail


@pytest.mark.parametrize("cmd,reason", SKIPPED, ids=[c for c, _ in SKIPPED])
def test_readme_command_not_runnable_here(cmd, reason):
    """Listed with its reason in CANNOT_RUN_HERE: reported as skipped, never silently dropped."""
    pytest.skip(f"not run here: {reason}")
