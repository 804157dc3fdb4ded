"""Chooses the engine for a ``--model``: the one place that knows every engine.

Command layer: it imports both engines, so only commands and the TUI import it.
"""

from __future__ import annotations

import sys

from phiflash.engine import Engine
from phiflash.errors import PhiflashError
from phiflash.paths import RESOLUTION_HELP

_noticed: set[str] = set()


def add_engine_args(parser, model_default: str = "the bundled tutor model") -> None:
    """The ``--model`` and ``--engine`` options every command that opens an engine takes
    (their values go to :func:`open_engine`)."""
    parser.add_argument(
        "--model", default=None, help=f"{RESOLUTION_HELP} (default: {model_default})"
    )
    parser.add_argument(
        "--engine",
        choices=("mlx", "gguf"),
        default=None,
        help="force an engine (default: from the model path)",
    )


def open_engine(
    model: str | None = None, engine: str | None = None, mlx_dtype=None, **kwargs
) -> Engine:
    """Open the engine for ``model`` (default: the bundled tutor model).

    ``model`` is found by :func:`phiflash.store.find_model` (local path > pulled model >
    Hugging Face cache > alias). ``engine`` forces "mlx" or "gguf"; otherwise a path ending in
    ``.gguf`` selects GGUF. ``mlx_dtype`` goes to the MLX engine only (``"auto"``: the chat's
    float32 on a CPU for a small 16-bit model, :func:`phiflash_mlx.load.auto_dtype`).
    """
    from phiflash.store import find_model

    if engine not in (None, "mlx", "gguf"):
        raise PhiflashError(f"unknown engine {engine!r} (choose mlx or gguf)")
    path = find_model(model, engine)
    kind = engine or ("gguf" if str(path).endswith(".gguf") else "mlx")
    if kind == "gguf":
        from phiflash_gguf.engine import GGUFEngine

        return GGUFEngine(str(path), **kwargs)
    from phiflash_mlx.engine import MLXEngine

    eng = MLXEngine(str(path), dtype=mlx_dtype, **kwargs)
    note = slow_path_notice(eng)
    if note and note not in _noticed:
        _noticed.add(note)
        print(f"note: {note}", file=sys.stderr)
    return eng


def slow_path_notice(engine) -> str | None:
    """One line when ``engine`` is MLX with quantized weights on a machine where MLX has no
    GPU (MLX's CPU quantized matmul is the slow path there), else None."""
    from phiflash.store import CPU_FORMAT, GGUF_CPU_TOKS, MLX_CPU_TOKS, mlx_has_gpu

    quant = str(getattr(engine, "quantization", ""))
    if getattr(engine, "name", "") != "mlx" or not (quant.endswith("-bit") or quant == "mixed"):
        return None
    if mlx_has_gpu():
        return None
    return (
        f"MLX {quant} without a GPU is slow here: on a 2-core CPU it decoded "
        f"{MLX_CPU_TOKS} tok/s against {GGUF_CPU_TOKS:.0f} tok/s for the GGUF engine "
        f"({CPU_FORMAT}, {GGUF_CPU_TOKS / MLX_CPU_TOKS:.0f}x); get a GGUF with "
        f"`phiflash pull REPO --format {CPU_FORMAT}` (or `phiflash convert-gguf`)"
    )
