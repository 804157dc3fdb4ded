"""Load a phi4flash checkpoint (Hugging Face layout or a converted MLX dir), strictly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from phiflash.errors import ModelLoadError, WrongArchitectureError
from phiflash_mlx.model import Model, ModelArgs, keeps_fp32

MODEL_TYPES = ("phi4flash",)
ARCHITECTURES = ("Phi4FlashForCausalLM",)
# tokenizer and generation files a checkpoint carries beside its weights (copied as present)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def load_config(path: Path) -> dict:
    """Read config.json and check that it describes a phi4flash (SambaY) model."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"no config.json in {path}")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"config.json in {path} is not valid JSON ({e})") from e
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if model_type not in MODEL_TYPES and not set(archs) & set(ARCHITECTURES):
        found = model_type or (archs[0] if archs else "unknown")
        raise WrongArchitectureError(
            f"{path} is a {found!r} model, not phi4flash (Phi-4-mini-flash-reasoning / SambaY)"
        )
    return config


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({e})") from e
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"shard {f.name} named in {index.name} is missing")
        return files
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors weights in {path}")
    return files


def check_safetensors(file: Path) -> None:
    """Validate the header and that the data section is complete (catches truncation)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 * 2**20:
                raise ValueError("header length is out of range")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ModelLoadError(f"corrupt safetensors file {file.name}: {e}") from e
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= d
            nbytes = count * _SAFETENSORS_DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"corrupt safetensors file {file.name}: bad entry {name}") from e
        if stop - start != nbytes:
            raise ModelLoadError(f"corrupt safetensors file {file.name}: {name} has bad size")
        end = max(end, stop)
    if 8 + n + end > size:
        raise ModelLoadError(
            f"truncated safetensors file {file.name}: {size} bytes, needs {8 + n + end}"
        )


def load_weights(path: Path) -> dict[str, mx.array]:
    weights = {}
    for f in weight_files(path):
        check_safetensors(f)
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
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"missing tensors: {', '.join(missing[:3])}{more}")
    if extra:
        more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
        raise ModelLoadError(f"unexpected tensors: {', '.join(extra[:3])}{more}")
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ModelLoadError(
                f"tensor {k} has shape {tuple(weights[k].shape)}, expected {tuple(v.shape)}"
            )


def load_model(path, dtype=None, lazy: bool = False) -> tuple[Model, dict]:
    """Build the model from ``path``. ``dtype`` (e.g. mx.float32) casts the floating weights;
    by default they keep their stored dtype (bf16 for the real checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    config = load_config(path)
    try:
        args = ModelArgs.from_dict(config)
        model = Model(args)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json in {path} is not a valid phi4flash config ({e})") from e
    weights = model.sanitize(load_weights(path))
    _quantize(model, config, weights)
    _check_names_and_shapes(model, weights)
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
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{gen} is not valid JSON ({e})") from e
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
