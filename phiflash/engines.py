"""Chooses the engine for a ``--model``: the one place that knows every engine.

Command layer: it imports both engines, so only commands and the TUI import it.
"""

from __future__ import annotations

from phiflash.engine import Engine
from phiflash.errors import PhiflashError


def open_engine(model: str | None = None, engine: str | None = None, **kwargs) -> Engine:
    """Open the engine for ``model`` (default: the bundled tutor model).

    ``engine`` forces "mlx" or "gguf"; otherwise a path ending in ``.gguf`` selects GGUF.
    """
    from phiflash.paths import resolve_model

    path = resolve_model(model)
    kind = engine or ("gguf" if str(path).endswith(".gguf") else "mlx")
    if kind == "gguf":
        from phiflash_gguf.engine import GGUFEngine

        return GGUFEngine(str(path), **kwargs)
    if kind == "mlx":
        from phiflash_mlx.engine import MLXEngine

        return MLXEngine(str(path), **kwargs)
    raise PhiflashError(f"unknown engine {kind!r} (choose mlx or gguf)")
