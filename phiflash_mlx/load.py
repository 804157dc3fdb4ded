"""Load a phi4flash checkpoint (Hugging Face layout or a converted MLX dir), strictly."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from phiflash.checkpoint import (  # noqa: F401  (TOKENIZER_FILES, check_safetensors: re-exported)
    TOKENIZER_FILES,
    check_safetensors,
    check_tensors,
    open_checkpoint,
    read_config,
    read_json,
    weight_files,
)
from phiflash.errors import ModelLoadError
from phiflash.store import mlx_has_gpu
from phiflash_mlx.model import Model, ModelArgs, keeps_fp32


def load_weights(path: Path) -> dict[str, mx.array]:
    """Every tensor of the checkpoint, after phiflash.checkpoint's strict header checks."""
    open_checkpoint(path)  # truncation, byte counts, duplicates: before mlx reads a byte
    weights = {}
    for f in weight_files(path):
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # mlx raises RuntimeError/ValueError on bad files
            raise ModelLoadError(f"cannot read {f.name}: {e}") from e
    return weights


def _quantize(model: nn.Module, config: dict, weights: dict) -> None:
    q = config.get("quantization")
    if not q:
        return

    def predicate(p, m):
        if p in q and isinstance(q[p], dict):
            return q[p]
        if p in q and q[p] is False:
            return False
        return hasattr(m, "to_quantized") and f"{p}.scales" in weights

    nn.quantize(
        model,
        group_size=q["group_size"],
        bits=q["bits"],
        mode=q.get("mode", "affine"),
        class_predicate=predicate,
    )


def _check_names_and_shapes(model: nn.Module, weights: dict) -> None:
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    check_tensors(expected, {k: v.shape for k, v in weights.items()})


# MLX's CPU backend multiplies in bfloat16 about 20x slower than in float32 (98 against 5
# GFLOPS for a 2048x2560x10240 product on a 2-core AMD EPYC with OpenBLAS,
# benchmarks/results/mlx_cpu.md; the bundled tutor prefills 1886 tokens in 5.0 s against
# 0.9 s on the same machine). Without a GPU, ``dtype="auto"`` runs an
# unquantized 16-bit checkpoint in float32 when that copy is at most this many bytes (the
# tutor's is 31 MB; the real model's, 15 GB, stays bf16: a CPU laptop runs the GGUF engine).
CPU_FLOAT32_MAX_BYTES = 2 << 30


def auto_dtype(config: dict, weights: dict):
    """float32 on the CPU backend for a small unquantized 16-bit checkpoint, else None (keep
    the stored dtypes)."""
    if mlx_has_gpu() or config.get("quantization"):
        return None
    floats = [v for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)]
    if not any(v.dtype in (mx.bfloat16, mx.float16) for v in floats):
        return None
    return mx.float32 if 4 * sum(v.size for v in floats) <= CPU_FLOAT32_MAX_BYTES else None


def load_model(path, dtype=None, lazy: bool = False) -> tuple[Model, dict]:
    """Build the model from ``path``. ``dtype`` (e.g. mx.float32) casts the floating weights;
    by default they keep their stored dtype (bf16 for the real checkpoint); ``"auto"`` is
    :func:`auto_dtype`'s choice (what the chat and eval-math use)."""
    if isinstance(dtype, str) and dtype != "auto":
        raise ValueError(f"dtype must be an mlx dtype, None or 'auto' (got {dtype!r})")
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    config = read_config(path)
    try:
        args = ModelArgs.from_dict(config)
        model = Model(args)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json in {path} is not a valid phi4flash config ({e})") from e
    weights = model.sanitize(load_weights(path))
    _quantize(model, config, weights)
    _check_names_and_shapes(model, weights)
    if dtype == "auto":
        dtype = auto_dtype(config, weights)
    if dtype is not None:
        weights = {
            k: v.astype(dtype)
            if mx.issubdtype(v.dtype, mx.floating)
            and not (dtype != mx.float32 and keeps_fp32(k))
            and not k.endswith((".scales", ".biases"))
            else v
            for k, v in weights.items()
        }
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    if not lazy:
        mx.eval(model.parameters())
    return model, config


def load_tokenizer(path, config: dict | None = None):
    """mlx-lm's TokenizerWrapper over the dir's tokenizer files; stops on the
    generation_config eos list (<|end|>, <|endoftext|> in the real model)."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"no tokenizer (tokenizer.json) in {path}")
    eos = None
    gen = path / "generation_config.json"
    if gen.is_file():
        eos = read_json(gen).get("eos_token_id")
    if eos is None and config is not None:
        eos = config.get("eos_token_id")
    if isinstance(eos, int):
        eos = [eos]
    try:
        # The fast tokenizer class directly: config.json's auto_map names a hub tokenizer
        # ("Xenova/gpt-4o") that AutoTokenizer would try to fetch.
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
        return TokenizerWrapper(tok, BPEStreamingDetokenizer, eos_token_ids=eos)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {e}") from e


def load(path, dtype=None, lazy: bool = False):
    """``model, tokenizer = load(path)`` for a phi4flash checkpoint directory.

    Raises ModelLoadError (or WrongArchitectureError) with a one-line message on bad input.
    """
    from phiflash.paths import resolve_model

    path = resolve_model(path)
    model, config = load_model(path, dtype=dtype, lazy=lazy)
    return model, load_tokenizer(path, config)
