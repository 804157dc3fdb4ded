"""A local Hugging Face cache for the tests, in huggingface_hub's real layout.

``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` symlinks to the blobs,
``refs/main`` holding the commit: the library reads it as it would after ``hf download``
(nothing is stubbed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SKIP = {"golden.npz", "eval"}  # fixture files that are no part of a model repo


def add_to_hub_cache(cache: Path, repo: str, src: Path, commit: str | None = None) -> Path:
    """Put the files of ``src`` into ``cache`` as huggingface_hub stores a download of
    ``repo``'s main branch; returns the snapshot folder."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    files = sorted(p for p in src.iterdir() if p.is_file() and p.name not in SKIP)
    commit = (
        commit or hashlib.sha1(repo.encode() + b"".join(f.name.encode() for f in files)).hexdigest()
    )
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in files:
        data = f.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / f.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snap), link)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snap


def offline_hub(monkeypatch, tmp_path: Path, models_dir: Path) -> Path:
    """Point huggingface_hub (offline) at ``tmp_path/hf-cache`` and phiflash's model store at
    ``models_dir``; returns the cache folder (fill it with :func:`add_to_hub_cache`)."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PHIFLASH_MODELS_DIR", str(models_dir))
    return cache
