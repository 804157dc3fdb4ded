"""The user's model store: models made by ``phiflash pull``, ready to run.

Layout (``models_dir()``: ``<user data dir>/models``; ``PHIFLASH_MODELS_DIR`` or
``PHIFLASH_DATA_DIR`` move it)::

    manifest.json                                   one entry per pulled model
    microsoft--Phi-4-mini-flash-reasoning/gguf-q4_0/Phi-4-mini-flash-reasoning-Q4_0.gguf
    microsoft--Phi-4-mini-flash-reasoning/mlx-4bit/  (an MLX model dir)

A pulled model is named ``<repo name>:<format>`` in lower case (``phi-4-mini-flash-reasoning:
gguf-q4_0``); commands also find it by its repo id or alias. :func:`find_model` is how a
command that runs a model turns ``--model`` into a path: local path > pulled model > Hugging
Face cache > alias. The manifest is written to a temp file and renamed, so it is never seen
half-written.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from phiflash.errors import PhiflashError
from phiflash.paths import default_model, repo_id_for, resolve_model, user_data_dir

# format -> engine that runs it
FORMATS = {
    "mlx-4bit": "mlx",
    "mlx-8bit": "mlx",
    "mlx-bf16": "mlx",
    "gguf-q4_0": "gguf",
    "gguf-q8_0": "gguf",
    "gguf-q4_k_m": "gguf",
}
# Where MLX has no GPU, the GGUF engine is the fast path: at full size (random weights in the
# real layout) on a 2-core x86 CPU, MLX 4-bit decoded 0.04 tok/s and the fork's Q4_0 16 tok/s.
# Q4_0 is the GGUF default: the fork's decode kernel is written for it, and on a 2-core AMD EPYC
# (benchmarks/results/gguf_cpu.md, 2026-11-23) it decoded 1.79x / 1.71x faster than Q8_0 at
# 512 / 4096 tokens of context (6.41 / 5.67 against 3.59 / 3.31 tok/s) from a file 0.57x the
# size (2.32 against 4.10 GB).
GPU_FORMAT = "mlx-4bit"
CPU_FORMAT = "gguf-q4_0"
MLX_CPU_TOKS = 0.04
GGUF_CPU_TOKS = 16.0
MANIFEST = "manifest.json"


class StoreError(PhiflashError):
    """A pulled model cannot be found, removed or recorded."""


def models_dir() -> Path:
    env = os.environ.get("PHIFLASH_MODELS_DIR")
    return Path(env) if env else user_data_dir() / "models"


def mlx_has_gpu() -> bool:
    """MLX runs on a GPU here (Metal on Apple silicon, or MLX's CUDA backend)."""
    try:
        import mlx.core as mx
    except ImportError:
        return False
    try:
        return mx.default_device().type == mx.gpu
    except Exception:  # a broken backend counts as no GPU
        return False


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def default_format() -> str:
    """The format ``pull`` makes here: MLX 4-bit where MLX has a GPU, else GGUF Q4_0."""
    return GPU_FORMAT if is_apple_silicon() or mlx_has_gpu() else CPU_FORMAT


@dataclass
class Entry:
    name: str
    repo: str
    format: str
    path: str  # relative to models_dir()
    revision: str = ""
    size_bytes: int = 0
    created: float = 0.0

    @property
    def engine(self) -> str:
        return FORMATS[self.format]

    def abs_path(self, root: Path | None = None) -> Path:
        return (root or models_dir()) / self.path


def entry_name(repo: str, fmt: str) -> str:
    return f"{repo.rsplit('/', 1)[-1].lower()}:{fmt}"


def entry_dir(repo: str, fmt: str, root: Path | None = None) -> Path:
    return (root or models_dir()) / repo.replace("/", "--") / fmt


def load_manifest(root: Path | None = None) -> list[Entry]:
    path = (root or models_dir()) / MANIFEST
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [Entry(**e) for e in data["models"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"the model store's manifest {path} is unreadable ({e})") from None


def save_manifest(entries: list[Entry], root: Path | None = None) -> None:
    root = root or models_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    body = {"models": [asdict(e) for e in sorted(entries, key=lambda e: e.name)]}
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def record(entry: Entry) -> None:
    """Add ``entry`` to the manifest (replacing one of the same name)."""
    entries = [e for e in load_manifest() if e.name != entry.name]
    entry.created = entry.created or time.time()
    save_manifest([*entries, entry])


def lookup(name: str, fmt: str | None = None) -> list[Entry]:
    """Entries that ``name`` (entry name, repo id or alias; case-insensitive) names."""
    key = name.lower()
    repo = (repo_id_for(name) or "").lower()
    found = []
    for e in load_manifest():
        if key == e.name or (repo and repo == e.repo.lower()):
            if fmt is None or e.format == fmt:
                found.append(e)
    return found


def _preference(entry: Entry) -> tuple:
    preferred = default_format()
    engine_rank = 0 if entry.engine == FORMATS[preferred] else 1
    return (entry.format != preferred, engine_rank, list(FORMATS).index(entry.format))


def find_pulled(name: str, engine: str | None = None) -> Entry | None:
    """The pulled model ``name`` stands for (this machine's format first), or None."""
    entries = [e for e in lookup(name) if engine is None or e.engine == engine]
    entries = [e for e in entries if e.abs_path().exists()]
    return min(entries, key=_preference) if entries else None


def find_model(model: str | os.PathLike | None, engine: str | None = None) -> Path:
    """``--model`` for a command that runs a model: local path > pulled model (for ``engine``
    if given) > Hugging Face cache > alias; None = the bundled tutor model."""
    if model is None:
        return default_model()
    if Path(model).expanduser().exists():
        return Path(model).expanduser()
    entry = find_pulled(str(model), engine)
    if entry is not None:
        return entry.abs_path()
    return resolve_model(model)


def remove(name: str, fmt: str | None = None) -> list[Entry]:
    """Delete the pulled model(s) ``name`` names (all formats of a repo unless ``fmt``)."""
    import shutil

    found = lookup(name, fmt)
    if not found:
        raise StoreError(f"no pulled model named {name!r} (see `phiflash list`)")
    root = models_dir()
    keep = [e for e in load_manifest() if e not in found]
    save_manifest(keep)  # forget first: a half-removed model is never offered
    for e in found:
        target = e.abs_path(root)
        folder = entry_dir(e.repo, e.format, root)
        victim = folder if folder in target.parents or folder == target else target
        try:
            if victim.is_dir():
                shutil.rmtree(victim)
            elif victim.exists():
                victim.unlink()
            if victim.parent != root and not any(victim.parent.iterdir()):
                victim.parent.rmdir()
        except OSError as e2:
            raise StoreError(f"cannot remove {victim}: {e2.strerror or e2}") from None
    return found


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
