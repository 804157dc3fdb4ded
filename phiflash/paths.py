"""Where models and user data live, and how a ``--model`` argument becomes a path."""

from __future__ import annotations

import os
from pathlib import Path

from phiflash.errors import ModelLoadError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "phiflash-tutor"
REAL_MODEL = "microsoft/Phi-4-mini-flash-reasoning"


def user_data_dir() -> Path:
    """Per-user data dir (chat history); ``PHIFLASH_DATA_DIR`` overrides it."""
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


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A local path as is; a hub name through huggingface_hub's cache; None = bundled model.

    A hub name that is not cached is downloaded when online (with progress bars); offline,
    one clear line says how to get it.
    """
    if model is None:
        return default_model()
    path = Path(model).expanduser()
    if path.exists():
        return path
    name = str(model)
    if not _looks_like_repo_id(name):
        raise ModelLoadError(f"model not found: {name}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ModelLoadError(f"model not found: {name} (huggingface_hub is missing)") from e
    patterns = ["*.json", "*.safetensors", "*.txt", "*.py", "*.md", "*.gguf", "*.jinja"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(_offline_hint(name))
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        raise ModelLoadError(_offline_hint(name) + f" [{type(e).__name__}]") from e


def _offline_hint(name: str) -> str:
    return (
        f"model {name} is not in the Hugging Face cache and cannot be downloaded now; "
        f"when online run `huggingface-cli download {name}` (or pass --model with a local dir)"
    )
