"""A lazy, numpy-only reader for a Hugging Face safetensors checkpoint (bf16 included).

numpy has no bfloat16, so bf16 tensors come back as their raw uint16 bits with
``dtype == "BF16"``; :func:`to_f32` widens them exactly.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiflash.errors import ModelLoadError

_NP = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclass
class TensorRef:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    def load(self) -> np.ndarray:
        """The raw tensor (bf16 as uint16 bits), memory-mapped from the file."""
        arr = np.memmap(
            self.path, dtype=_NP[self.dtype], mode="r", offset=self.offset, shape=self.shape or (1,)
        )
        return arr.reshape(self.shape)

    def load_f32(self) -> np.ndarray:
        return to_f32(self.load(), self.dtype)


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)


def f32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16)."""
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    return rounded.astype(np.uint16)


def _read_header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelLoadError(f"{path.name}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ModelLoadError(f"{path.name}: not a safetensors file (header size {n})")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path.name}: cannot read safetensors header ({e})") from None
    header["__data_start__"] = 8 + n
    return header


def open_checkpoint(model_dir: Path) -> dict[str, TensorRef]:
    """All tensors of the checkpoint in ``model_dir`` by name (one file or a sharded index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    refs: dict[str, TensorRef] = {}
    for fname in files:
        path = model_dir / fname
        if not path.is_file():
            raise ModelLoadError(f"missing weight shard {fname} in {model_dir}")
        header = _read_header(path)
        start = header.pop("__data_start__")
        size = path.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if start + end > size:
                raise ModelLoadError(f"{fname}: truncated (tensor {name} ends past the file end)")
            if info["dtype"] not in _NP:
                raise ModelLoadError(f"{fname}: unsupported dtype {info['dtype']} for {name}")
            refs[name] = TensorRef(
                name, info["dtype"], tuple(info["shape"]), path, start + begin, end - begin
            )
    return refs
