"""A phi4flash (SambaY) checkpoint on disk: its config and its safetensors weights, read strictly.

The one config reader (with the one architecture rule) and the one safetensors reader, shared by
the MLX loader, `phiflash convert` and `phiflash convert-gguf`. Core module: it imports no
engine (stdlib and numpy only), so every command gives the same verdict on the same directory.

The architecture rule: ``model_type`` must be ``phi4flash`` (mlx-lm picks the model code by it)
and ``architectures``, when present, must name ``Phi4FlashForCausalLM`` (Hugging Face picks it
by that); a config whose two fields disagree is refused, by every command.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiflash.errors import ModelLoadError, WrongArchitectureError

MODEL_TYPE = "phi4flash"
ARCHITECTURE = "Phi4FlashForCausalLM"
# config fields without a default: the model's size cannot be guessed
REQUIRED_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
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
# bytes per element of each safetensors dtype
DTYPE_BYTES = {
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
# numpy views of the dtypes (bf16 as its raw uint16 bits: numpy has no bfloat16)
_NUMPY = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "U32": np.uint32,
    "I16": np.int16,
    "U16": np.uint16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2**20


# ---------------------------------------------------------------------------------------------
# config.json


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ModelLoadError (one line) if unreadable, invalid or not an
    object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path.name} in {path.parent} is not valid JSON ({e})") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} in {path.parent} is not a JSON object")
    return data


def check_architecture(config: dict, where: str) -> None:
    """Raise WrongArchitectureError unless ``config`` describes a phi4flash (SambaY) model."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    if model_type == MODEL_TYPE and (not archs or ARCHITECTURE in archs):
        return
    if model_type != MODEL_TYPE:
        found = model_type or (archs[0] if archs else "unknown")
    else:
        found = archs[0]
    detail = ""
    if model_type not in (None, MODEL_TYPE) and ARCHITECTURE in archs:
        detail = f" (config.json: model_type {model_type!r} but architectures {ARCHITECTURE})"
    raise WrongArchitectureError(
        f"{where} is a {found!r} model, not phi4flash (Phi-4-mini-flash-reasoning / SambaY){detail}"
    )


def read_config(path: str | Path) -> dict:
    """config.json of the checkpoint dir ``path``, checked: valid JSON, the architecture rule,
    and every size field present as a positive integer. Raises ModelLoadError (one line)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"no config.json in {path} (not a Hugging Face or MLX model dir)")
    config = read_json(cfg_file)
    check_architecture(config, str(path))
    missing = [k for k in REQUIRED_SIZES if k not in config]
    if missing:
        raise ModelLoadError(
            f"config.json in {path} is incomplete: no {', '.join(repr(k) for k in missing)}"
        )
    for k in REQUIRED_SIZES:
        v = config[k]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ModelLoadError(
                f"config.json in {path}: {k} must be a positive integer, not {v!r}"
            )
    return config


# ---------------------------------------------------------------------------------------------
# safetensors


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a safetensors file: where it is, not its data."""

    name: str
    dtype: str  # safetensors dtype name (F32, BF16, ...)
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    def load(self) -> np.ndarray:
        """The raw tensor, memory-mapped from the file (bf16 as uint16 bits)."""
        if self.dtype not in _NUMPY:
            raise ModelLoadError(f"{self.path.name}: cannot read {self.name} ({self.dtype})")
        arr = np.memmap(
            self.path,
            dtype=_NUMPY[self.dtype],
            mode="r",
            offset=self.offset,
            shape=self.shape or (1,),
        )
        return arr.reshape(self.shape)

    def load_f32(self) -> np.ndarray:
        return to_f32(self.load(), self.dtype)


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a tensor from :meth:`TensorRef.load` to float32 (bf16 exactly)."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)


def f32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16)."""
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    return rounded.astype(np.uint16)


def read_safetensors(file: str | Path) -> dict[str, TensorRef]:
    """The tensors of one safetensors file, after checking its header and that the data section
    is complete (truncation) and every entry's byte count matches its dtype and shape."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > _MAX_HEADER:
                raise ValueError("header length is out of range")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"corrupt safetensors file {file.name}: {e}") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {file}: {e.strerror or e}") from None
    refs: dict[str, TensorRef] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            count = 1
            for d in shape:
                if d < 0:
                    raise ValueError(d)
                count *= d
            nbytes = count * DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(
                f"corrupt safetensors file {file.name}: bad entry {name} ({e!r})"
            ) from None
        if start < 0 or stop - start != nbytes:
            raise ModelLoadError(f"corrupt safetensors file {file.name}: {name} has bad size")
        end = max(end, stop)
        refs[name] = TensorRef(name, info["dtype"], shape, file, 8 + n + start, nbytes)
    if 8 + n + end > size:
        raise ModelLoadError(
            f"truncated safetensors file {file.name}: {size} bytes, needs {8 + n + end}"
        )
    return refs


def check_safetensors(file: str | Path) -> None:
    """Raise ModelLoadError if ``file`` is not a complete, well-formed safetensors file."""
    read_safetensors(file)


def weight_files(path: str | Path) -> list[Path]:
    """The checkpoint's safetensors files: those of model.safetensors.index.json, else
    model*.safetensors (else any *.safetensors)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({e!r})") from None
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"shard {f.name} named in {index.name} is missing")
        if not files:
            raise ModelLoadError(f"{index} names no weight files")
        return files
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors weights in {path}")
    return files


def open_checkpoint(path: str | Path) -> dict[str, TensorRef]:
    """Every tensor of the checkpoint in ``path`` by name, each file checked by
    :func:`read_safetensors`; a name stored twice is refused."""
    refs: dict[str, TensorRef] = {}
    for f in weight_files(path):
        for name, ref in read_safetensors(f).items():
            if name in refs:
                raise ModelLoadError(
                    f"tensor {name} is stored twice ({refs[name].path.name} and {f.name})"
                )
            refs[name] = ref
    return refs


def check_tensors(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> None:
    """Names and shapes of a checkpoint (``found``) against the model's (``expected``);
    raise ModelLoadError naming the first missing, unexpected or misshapen tensor."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"missing tensors: {', '.join(missing[:3])}{more}")
    if extra:
        more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
        raise ModelLoadError(f"unexpected tensors: {', '.join(extra[:3])}{more}")
    for k in sorted(expected):
        want, got = tuple(expected[k]), tuple(found[k])
        if got != want:
            raise ModelLoadError(f"tensor {k} has shape {got}, expected {want}")
