"""The MLX engine: the SambaY model, loading, and generation on top of mlx-lm."""

from phiflash_mlx.load import load

__all__ = ["load", "generate", "stream_generate"]


def __getattr__(name):
    if name in ("generate", "stream_generate"):
        from phiflash_mlx import generate as _g

        return getattr(_g, name)
    raise AttributeError(name)
