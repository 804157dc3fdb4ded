"""Which layers of a phi4flash model get quantized, and at how many bits.

A predicate sees a module path (``model.layers.3.attn.Wqkv``) and the module, and answers
False (keep it in floating point) or the ``{"group_size", "bits", "mode"}`` to pack it with.
Only ``nn.Linear`` weights and the tied embedding are ever candidates: A_log, D, conv1d, the
dt bias, norms, lambda vectors, subln and every bias are plain arrays or non-quantizable
modules, and nothing here can reach them.
"""

from __future__ import annotations

import mlx.nn as nn

MODE = "affine"

# Small projections whose errors feed the recurrence or every attention score: Mamba's
# x_proj (dt, B, C) and dt_proj, and the attention Q/K/V projection (Wqkv; the cross layers'
# Wqkv is their Q projection).
SENSITIVE = ("attn.x_proj", "attn.dt_proj", "attn.Wqkv")

# name -> (bits for the sensitive projections, bits for everything else, embedding bits).
# The tied embedding is also the output layer; on the fixture it is the single most sensitive
# tensor at 4 bits (docs/CONVERT.md), so the quality recipe keeps it at 8.
RECIPES = {
    "sambay_mixed_4_8": (8, 4, 8),
}


def quantizable(module: nn.Module, group_size: int) -> bool:
    """A Linear or Embedding whose input dimension splits into whole groups."""
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    return module.weight.shape[-1] % group_size == 0


def group_for(module: nn.Module, group_size: int) -> int | None:
    """``group_size`` if it divides the input dimension, else the largest smaller one that
    does (down to 32); None if none does (e.g. a dt_proj of rank 8)."""
    for g in (group_size, 64, 32):
        if g <= group_size and quantizable(module, g):
            return g
    return None


def uniform_predicate(bits: int, group_size: int):
    """Plain ``-q``: every quantizable layer at ``bits`` (mlx-lm's behaviour: layers whose
    input dimension is not a multiple of the group size stay in floating point)."""

    def predicate(path: str, module: nn.Module):
        if not quantizable(module, group_size):
            return False
        return {"group_size": group_size, "bits": bits, "mode": MODE}

    return predicate


def recipe_predicate(name: str, group_size: int):
    if name not in RECIPES:
        raise ValueError(f"unknown quant recipe {name!r} (known: {', '.join(RECIPES)})")
    high, low, embed = RECIPES[name]

    def predicate(path: str, module: nn.Module):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return False
        if path.endswith(SENSITIVE):
            # These are small: a smaller group that fits is cheap, so dt_proj (rank
            # hidden/16 = 160 in the real model) is packed at group 32 rather than skipped.
            g = group_for(module, group_size)
            bits = high
        else:
            g = group_size if quantizable(module, group_size) else None
            bits = embed if isinstance(module, nn.Embedding) else low
        if g is None:
            return False
        return {"group_size": g, "bits": bits, "mode": MODE}

    return predicate
