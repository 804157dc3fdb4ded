"""Conversions: HF checkpoint to MLX and GGUF, and fidelity evaluation."""
