"""The MLX engine: the SambaY model, loading, and generation on top of mlx-lm."""

from phiflash.blas import preload_openblas

preload_openblas()  # before mlx is imported

from phiflash_mlx.generate import generate, stream_generate  # noqa: E402
from phiflash_mlx.load import load  # noqa: E402

__all__ = ["load", "generate", "stream_generate"]
