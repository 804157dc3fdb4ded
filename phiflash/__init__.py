"""phiflash: Phi-4-mini-flash-reasoning (SambaY) on laptops, offline."""

__version__ = "0.1.0"
