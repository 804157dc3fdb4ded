"""GGUF engine for CPU laptops on phiflash's SambaY-aware llama.cpp fork (see build.py)."""
