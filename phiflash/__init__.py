"""phiflash: Phi-4-mini-flash-reasoning (SambaY) on laptops, offline."""

from phiflash.blas import preload_openblas

__version__ = "0.1.0"

preload_openblas()  # must precede the first `import mlx` of the process (Linux CPU speed)
