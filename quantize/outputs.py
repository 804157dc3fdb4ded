"""Safe outputs for the converters: checked destinations, temp names a later run can clean up.

A conversion writes ``.<name>.phiflash-tmp-<pid>[.<part>]`` beside its output and renames it at
the end. A run that dies (kill -9, power loss) leaves such files behind; the next conversion
into the same folder removes those whose process is gone (:func:`remove_stale`).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from phiflash.errors import ConversionError

TAG = ".phiflash-tmp-"
_TEMP_RE = re.compile(r"\..+" + re.escape(TAG) + r"(\d+)(\.[A-Za-z0-9_]+)?")


def temp_path(final: Path, part: str = "") -> Path:
    """This process's temp name for ``final`` (``part``: a second temp of the same run)."""
    return final.parent / f".{final.name}{TAG}{os.getpid()}{'.' + part if part else ''}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFO
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove(path: Path) -> None:
    """Remove a temp file or dir if present (never raises)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale(folder: Path) -> list[Path]:
    """Remove temp files and dirs in ``folder`` left by conversions whose process is gone
    (and any with this process's own id, which no earlier live run can hold)."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_RE.fullmatch(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not pid_alive(pid):
            remove(p)
            removed.append(p)
    return removed


def check_writable_folder(folder: Path) -> None:
    """One-line errors for an output folder that is missing, not a folder or not writable."""
    if not folder.exists():
        raise ConversionError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise ConversionError(f"output folder is not a folder: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConversionError(f"cannot write to {folder}: permission denied")


def is_same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(out: Path, inputs: list[Path]) -> None:
    """Refuse an output that is (or is a link to) one of the input files, --force or not."""
    for f in inputs:
        if out == f or (out.exists() and is_same_file(out, f)):
            raise ConversionError(
                f"the output {out} is an input file ({f.name}); choose another output path"
            )


def finish_file(tmp: Path, final: Path) -> None:
    """Give ``tmp`` an ordinary file's mode (0666 less the umask: 0644 usually) and rename it
    over ``final``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)
