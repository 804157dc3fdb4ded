"""Apply a unified diff (``git diff`` output, ``-p1`` paths) to a tree, in Python.

The fork's patch series is plain unified diffs of existing text files, so this needs no
``patch`` binary (Windows has none). Each hunk must match its context exactly; it may sit a few
lines away from where the header says (as with ``patch``'s offset), but no fuzz is allowed. A
hunk that does not apply raises :class:`PatchError` naming the patch, the file and the hunk,
and nothing of that patch is written. Lines the patch does not touch are kept byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
MAX_OFFSET = 200  # lines a hunk may have moved from its header's position


class PatchError(RuntimeError):
    pass


@dataclass
class Hunk:
    header: str
    old_start: int  # 1-based; 0 for an empty old side
    old: list[str] = field(default_factory=list)  # lines without their newline
    new: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    path: str  # relative to the tree, after stripping one leading component
    hunks: list[Hunk] = field(default_factory=list)
    new_file: bool = False


def _strip1(name: str) -> str:
    name = name.split("\t")[0].strip()
    return name.split("/", 1)[1] if "/" in name else name


def parse(text: str, name: str = "patch") -> list[FilePatch]:
    """The files and hunks of a unified diff; raises PatchError on a malformed one."""
    files: list[FilePatch] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("--- "):
            i += 1  # "diff --git", "index", commentary
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise PatchError(f"{name}: line {i + 1}: '---' without a '+++' line")
        old_name, new_name = line[4:], lines[i + 1][4:]
        fp = FilePatch(_strip1(new_name), new_file=old_name.split("\t")[0] == "/dev/null")
        if new_name.split("\t")[0] == "/dev/null":
            raise PatchError(f"{name}: deleting files is not supported ({_strip1(old_name)})")
        files.append(fp)
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = HUNK_RE.match(lines[i])
            if not m:
                raise PatchError(f"{name}: line {i + 1}: malformed hunk header {lines[i]!r}")
            n_old = int(m.group(2)) if m.group(2) is not None else 1
            n_new = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(lines[i], int(m.group(1)))
            i += 1
            while len(hunk.old) < n_old or len(hunk.new) < n_new:
                if i >= len(lines):
                    raise PatchError(f"{name}: {fp.path}: hunk {hunk.header!r} is cut short")
                body = lines[i]
                tag, rest = body[:1], body[1:]
                if tag == " " or body == "":  # some tools drop the space of an empty line
                    hunk.old.append(rest)
                    hunk.new.append(rest)
                elif tag == "-":
                    hunk.old.append(rest)
                elif tag == "+":
                    hunk.new.append(rest)
                elif tag != "\\":  # "\ No newline at end of file"
                    raise PatchError(f"{name}: line {i + 1}: unexpected {body[:40]!r} in a hunk")
                i += 1
            if len(hunk.old) != n_old or len(hunk.new) != n_new:
                raise PatchError(f"{name}: {fp.path}: hunk {hunk.header!r} has the wrong length")
            fp.hunks.append(hunk)
            while i < len(lines) and lines[i].startswith("\\"):
                i += 1
    if not files:
        raise PatchError(f"{name}: no file changes found")
    return files


def _find(lines: list[str], old: list[str], want: int, lo: int, max_offset: int) -> int | None:
    """Index where ``old`` matches ``lines``, nearest to ``want`` and not before ``lo``."""
    for d in range(max_offset + 1):
        for at in (want - d, want + d) if d else (want,):
            if lo <= at <= len(lines) - len(old) and lines[at : at + len(old)] == old:
                return at
    return None


def _apply_file(fp: FilePatch, text: str, name: str, max_offset: int) -> str:
    ends = text.split("\n")  # the last element is what follows the last newline
    lines, tail = ends[:-1], ends[-1]
    if tail:
        lines.append(tail)  # a last line without a newline is still a line
    out: list[str] = []
    pos = 0  # lines[:pos] are done
    for n, h in enumerate(fp.hunks, 1):
        want = max(h.old_start - 1, 0) if h.old else h.old_start
        at = _find(lines, h.old, want, pos, max_offset)
        if at is None:
            raise PatchError(
                f"{name}: hunk {n} of {fp.path} ({h.header.split(' @@')[0]} @@) does not apply"
            )
        out += lines[pos:at] + h.new
        pos = at + len(h.old)
    out += lines[pos:]
    return "\n".join(out) + ("" if tail else "\n")  # a missing last newline stays missing


def apply(patch: Path, root: Path, max_offset: int = MAX_OFFSET) -> list[Path]:
    """Apply ``patch`` under ``root``; returns the files written. A hunk may sit up to
    ``max_offset`` lines from its header's line. All hunks of every file are checked before
    anything is written, so a patch that fails leaves the tree as it was."""
    files = parse(patch.read_text(encoding="utf-8"), patch.name)
    results: list[tuple[Path, str]] = []
    for fp in files:
        target = root / fp.path
        if fp.new_file:
            if target.exists():
                raise PatchError(f"{patch.name}: {fp.path} already exists")
            text = ""
        elif not target.is_file():
            raise PatchError(f"{patch.name}: {fp.path}: no such file in {root}")
        else:
            text = target.read_bytes().decode("utf-8", "surrogateescape")
        results.append((target, _apply_file(fp, text, patch.name, max_offset)))
    for target, text in results:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".udiff-tmp")
        tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
        tmp.replace(target)
    return [t for t, _ in results]
