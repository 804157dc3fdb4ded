"""Where models and user data live, and how a ``--model`` argument becomes a path.

A name is resolved in this order (:func:`resolve_model`):

1. a local path (a model dir, a checkpoint dir or a ``.gguf`` file), as is;
2. a Hugging Face repo id (``org/name``) through huggingface_hub's cache: used offline when it
   is cached (``HF_HUB_OFFLINE=1`` is respected), downloaded with progress bars when online;
3. a short alias (:data:`ALIASES`, e.g. ``phi4-flash``) for its repo id, then as 2.

Commands that run a model look in the user's model store first (models made by
``phiflash pull``, :mod:`phiflash.store`), so a pulled model wins over the cache and the alias.
Conversions take the checkpoint itself (this module only).
"""

from __future__ import annotations

import os
from pathlib import Path

from phiflash.errors import ModelLoadError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "phiflash-tutor"
if not DEFAULT_MODEL_DIR.is_dir():  # an installed wheel carries it as package data
    DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "phiflash-tutor"
REAL_MODEL = "microsoft/Phi-4-mini-flash-reasoning"
# short names for hub repos (lower case)
ALIASES = {
    "phi4-flash": REAL_MODEL,
    "phi-4-mini-flash-reasoning": REAL_MODEL,
}
# the files of a checkpoint repo that phiflash reads (weights, config, tokenizer, card)
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.py", "*.md", "*.jinja", "*.model"]
_TRUE = {"1", "true", "yes", "on"}

RESOLUTION_HELP = (
    "a model dir, a .gguf file, a Hugging Face repo id or an alias such as phi4-flash; a name "
    "is looked up as a pulled model (`phiflash list`) first, then in the Hugging Face cache "
    "(downloaded when online), then as an alias"
)


def user_data_dir() -> Path:
    """Per-user data dir (chat history, pulled models); ``PHIFLASH_DATA_DIR`` overrides it."""
    env = os.environ.get("PHIFLASH_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir as _udd

    return Path(_udd("phiflash", appauthor=False))


def default_model() -> Path:
    if not DEFAULT_MODEL_DIR.is_dir():
        raise ModelLoadError(
            f"no --model given and the bundled default model is missing ({DEFAULT_MODEL_DIR})"
        )
    return DEFAULT_MODEL_DIR


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, checked at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def repo_id_for(name: str) -> str | None:
    """The hub repo a name stands for (a repo id as is, an alias expanded), or None."""
    if looks_like_repo_id(name):
        return name
    return ALIASES.get(name.lower())


def _cache_dir() -> str | None:
    # huggingface_hub reads HF_HUB_CACHE once, at import; read it again so a change after
    # import (a test, a wrapper script) is honoured
    return os.environ.get("HF_HUB_CACHE") or None


def hub_snapshot(repo: str, download: bool = True, patterns=None) -> Path:
    """The cached snapshot of ``repo`` (its ``main``); downloaded when not cached and online.

    The download is huggingface_hub's ``snapshot_download``: progress bars, and an interrupted
    download resumes where it stopped. Offline and not cached: a one-line hint.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ModelLoadError(f"cannot fetch {repo}: huggingface_hub is not installed") from e
    patterns = patterns or CHECKPOINT_PATTERNS
    cache = _cache_dir()
    try:
        return Path(
            snapshot_download(repo, allow_patterns=patterns, local_files_only=True, cache_dir=cache)
        )
    except Exception as e:
        partial = type(e).__name__ == "IncompleteSnapshotError"  # an interrupted download
    if not download or hub_offline():
        if partial:
            raise ModelLoadError(
                f"the cached download of {repo} is incomplete (interrupted); when online run "
                f"`phiflash pull {repo}` or `hf download {repo}` to finish it"
            )
        raise ModelLoadError(offline_hint(repo))
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=cache))
    except KeyboardInterrupt:
        raise
    except Exception as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot download {repo}: {why}") from None


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A local path as is; a hub repo id or alias through huggingface_hub's cache; None = the
    bundled tutor model. (Pulled models: :func:`phiflash.store.find_model`.)"""
    if model is None:
        return default_model()
    path = Path(model).expanduser()
    if path.exists():
        return path
    name = str(model)
    repo = repo_id_for(name)
    if repo is None:
        raise ModelLoadError(
            f"model not found: {name} (not a local path, a Hugging Face repo id "
            f"(org/name) or an alias: {', '.join(sorted(ALIASES))})"
        )
    return hub_snapshot(repo)


def offline_hint(repo: str) -> str:
    return (
        f"model {repo} is not in the Hugging Face cache and cannot be downloaded now "
        f"(offline); when online run `phiflash pull {repo}` or `hf download {repo}`, "
        "or pass a local model dir"
    )
