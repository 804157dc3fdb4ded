"""`phiflash convert`: a Hugging Face phi4flash checkpoint -> an MLX model dir (mlx-lm's layout).

The output runs under `phiflash generate` and under stock `mlx_lm.generate --trust-remote-code`
(it carries phiflash_mlx/model.py as its `model_file`). bf16/fp16/fp32, 8-bit, 4-bit, a mixed
recipe, or a dequantized copy of a quantized dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

from phiflash.checkpoint import TOKENIZER_FILES, read_json
from phiflash.errors import ConversionError, PhiflashError
from phiflash.quantize import outputs
from phiflash.quantize.recipes import MODE, RECIPES, recipe_predicate, uniform_predicate
from phiflash_mlx.model import keeps_fp32

MAX_SHARD_BYTES = 5 << 30
DTYPES = ("float16", "bfloat16", "float32")


def quantize_model(model: nn.Module, q_bits: int, q_group_size: int, recipe=None, progress=False):
    """Quantize ``model`` in place, as `phiflash convert -q` does; return the config block.

    Only Linear weights and the tied embedding are packed (it then also serves as the output
    layer through ``as_linear``). The block holds the default ``group_size``/``bits``/``mode``
    and, for layers packed differently (a recipe), ``{path: {...}}`` overrides, which both
    phiflash_mlx.load and mlx-lm read back.
    """
    from tqdm import tqdm

    if recipe:
        predicate = recipe_predicate(recipe, q_group_size)
        q_bits = RECIPES[recipe][1]
    else:
        predicate = uniform_predicate(q_bits, q_group_size)
    config = {"group_size": q_group_size, "bits": q_bits, "mode": MODE}
    default = dict(config)
    leaves = [(p, m) for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    packed = []
    for path, module in tqdm(leaves, desc="quantizing", unit="layer", disable=not progress):
        params = predicate(path, module)
        if not params:
            continue
        packed.append((path, module.to_quantized(**params)))
        if params != default:
            config[path] = params
    model.update_modules(tree_unflatten(packed))
    overrides = {k: config.pop(k) for k in sorted(config) if k not in default}
    return config | overrides


def cast_model(model: nn.Module, dtype: str) -> None:
    """Cast floating weights; A_log, D, the lambdas and dt bias stay float32 (as sanitize)."""
    target = getattr(mx, dtype)

    def cast(k, v):
        if not mx.issubdtype(v.dtype, mx.floating) or keeps_fp32(k):
            return v
        return v.astype(target)

    model.update(tree_map_with_path(cast, model.parameters()))


def _dequantize(model: nn.Module) -> None:
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)


def bits_per_weight(model: nn.Module) -> float:
    from mlx_lm.utils import compute_bits_per_weight

    return float(compute_bits_per_weight(model))


def _shards(weights: dict, max_bytes: int) -> list[dict]:
    shards, size = [], 0
    for k in sorted(weights):
        v = weights[k]
        if not shards or size + v.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    return shards


def save_weights(out: Path, model: nn.Module, progress=True, max_shard_bytes=MAX_SHARD_BYTES):
    """model.safetensors (or model-0000i-of-0000n) + model.safetensors.index.json, as mlx-lm.

    Tensors are evaluated (loaded, cast, quantized) a module at a time under the progress bar,
    so peak memory stays near one shard.
    """
    from mlx_lm.utils import get_total_parameters
    from tqdm import tqdm

    weights = dict(tree_flatten(model.parameters()))
    shards = _shards(weights, max_shard_bytes)
    n = len(shards)
    fmt = "model-{:05d}-of-{:05d}.safetensors" if n > 1 else "model.safetensors"
    index = {
        "metadata": {
            "total_size": sum(v.nbytes for v in weights.values()),
            "total_parameters": get_total_parameters(model),
        },
        "weight_map": {},
    }
    bar = tqdm(total=len(weights), desc="converting", unit="tensor", disable=not progress)
    for i, shard in enumerate(shards):
        groups: dict[str, list] = {}
        for k, v in shard.items():
            groups.setdefault(k.rsplit(".", 1)[0], []).append(v)
        for arrays in groups.values():
            mx.eval(arrays)
            bar.update(len(arrays))
        name = fmt.format(i + 1, n)
        mx.save_safetensors(str(out / name), shard, metadata={"format": "mlx"})
        index["weight_map"].update({k: name for k in shard})
    bar.close()
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return n


def output_config(config: dict, quantization: dict | None, dtype: str | None) -> dict:
    """The source config for mlx-lm: sorted, `model_file`, `quantization` mirrored as
    `quantization_config`, and no `auto_map` (its AutoTokenizer entry names a hub repo, which
    makes transformers' AutoTokenizer go online or ask to trust remote code)."""
    config = {k: v for k, v in config.items() if k not in ("auto_map", "_name_or_path")}
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    if dtype:
        config["torch_dtype"] = dtype
    config["model_file"] = "model.py"
    return dict(sorted(config.items()))


# What tokenizer_config.json's tokenizer_class says decides how transformers builds the
# tokenizer: "GPT2Tokenizer" (the real checkpoint's) makes transformers 5 rebuild it from
# vocab/merges with GPT-2's split rule, ignoring tokenizer.json's pre-tokenizer, so stock mlx-lm
# would split `<think>`, `-x`, `x.\ny` differently from us. The fast class reads tokenizer.json
# as phiflash does, in transformers 4 and 5 alike.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def copy_support_files(src: Path, out: Path) -> None:
    import phiflash_mlx.model

    for name in TOKENIZER_FILES:
        f = src / name
        if not f.is_file():
            continue
        if name == "tokenizer_config.json":
            tc = read_json(f)
            # auto_map: same reason as config.json (it would send AutoTokenizer to the hub)
            tc.pop("auto_map", None)
            tc["tokenizer_class"] = TOKENIZER_CLASS
            (out / name).write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
        else:
            shutil.copyfile(f, out / name)
    shutil.copyfile(phiflash_mlx.model.__file__, out / "model.py")


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def convert(
    hf_path,
    mlx_path="mlx_model",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    dtype: str | None = None,
    quant_recipe: str | None = None,
    dequantize: bool = False,
    force: bool = False,
    progress: bool = True,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict:
    """Convert ``hf_path`` (HF layout or an MLX dir) into ``mlx_path``.

    The output is written into a temporary dir beside ``mlx_path`` and renamed at the end;
    on any failure nothing is left behind. Returns {"path", "quantization" (or None),
    "bits_per_weight", "size_bytes", "files", "seconds"}. Raises a PhiflashError with a
    one-line message on bad input.
    """
    from phiflash.paths import resolve_model
    from phiflash_mlx.load import load_model

    t0 = time.perf_counter()
    quantize = quantize or bool(quant_recipe)
    if quantize and dequantize:
        raise ConversionError("choose either --quantize or --dequantize, not both")
    if quant_recipe and quant_recipe not in RECIPES:
        raise ConversionError(
            f"unknown --quant-recipe {quant_recipe!r} (known: {', '.join(RECIPES)})"
        )
    if quantize and q_bits not in (4, 8):
        raise ConversionError(f"--q-bits must be 4 or 8, not {q_bits}")
    if quantize and q_group_size not in (32, 64, 128):
        raise ConversionError(f"--q-group-size must be 32, 64 or 128, not {q_group_size}")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(os.path.abspath(Path(mlx_path).expanduser()))
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    src = resolve_model(hf_path)
    if out.exists() and out.resolve() == Path(src).resolve():
        raise ConversionError(f"the output {out} is the input; choose another --mlx-path")
    if Path(src).resolve() in out.resolve().parents:
        raise ConversionError(f"the output {out} is inside the input; choose another --mlx-path")
    if out.resolve() in Path(src).resolve().parents:
        raise ConversionError(f"the output {out} contains the input; choose another --mlx-path")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} is a file; --mlx-path names the output folder")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    outputs.check_writable_folder(parent)

    model, config = load_model(src, lazy=True)
    was_quantized = bool(config.get("quantization"))
    if quantize and was_quantized:
        raise ConversionError(f"{src} is already quantized; convert the original checkpoint")
    if dequantize and not was_quantized:
        raise ConversionError(f"--dequantize: {src} is not quantized")
    if dequantize:
        _dequantize(model)
    if dtype:
        cast_model(model, dtype)
    quantization = None
    if quantize:
        quantization = quantize_model(model, q_bits, q_group_size, quant_recipe)
    elif was_quantized and not dequantize:
        quantization = config["quantization"]
    bpw = bits_per_weight(model)

    tmp, old = outputs.temp_path(out), outputs.temp_path(out, "old")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        outputs.remove_stale(out.parent)
        tmp.mkdir()  # an ordinary dir (0777 less the umask), like the output should be
        files = save_weights(tmp, model, progress, max_shard_bytes)
        cfg = output_config(config, quantization, dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=4) + "\n")
        copy_support_files(Path(src), tmp)
        if out.exists():
            out.rename(old)
            tmp.rename(out)
            outputs.remove(old)
        else:
            tmp.rename(out)
    except OSError as e:
        raise ConversionError(f"cannot write {out}: {e.strerror or e}") from None
    except (PhiflashError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise ConversionError(f"conversion failed while writing {out}: {e}") from e
    finally:
        outputs.remove(tmp)
    return {
        "path": str(out),
        "quantization": quantization,
        "bits_per_weight": bpw,
        "size_bytes": dir_size(out),
        "files": files,
        "seconds": time.perf_counter() - t0,
    }


def describe(quantization: dict | None, dtype: str | None) -> str:
    if not quantization:
        return dtype or "unquantized"
    over = [v for v in quantization.values() if isinstance(v, dict)]
    if over:
        bits = sorted({v["bits"] for v in over} | {quantization["bits"]})
        return f"mixed {'/'.join(map(str, bits))}-bit"
    return f"{quantization['bits']}-bit, group {quantization['group_size']}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phiflash convert",
        description="Convert a Phi-4-mini-flash-reasoning (phi4flash) checkpoint to an MLX "
        "model dir that phiflash and stock mlx-lm (--trust-remote-code) run. "
        "Flags follow mlx_lm.convert.",
    )
    p.add_argument("--hf-path", "--model", required=True, help="HF checkpoint dir or repo id")
    p.add_argument("--mlx-path", default="mlx_model", help="output dir (default mlx_model)")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize the weights")
    p.add_argument("--q-bits", type=int, choices=[4, 8], default=4, help="bits (default 4)")
    p.add_argument(
        "--q-group-size", type=int, choices=[32, 64, 128], default=64, help="group (default 64)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="type of the unquantized weights (default: as stored, bf16 for the real model; "
        "A_log, D, lambdas and dt bias stay float32)",
    )
    p.add_argument(
        "--quant-recipe",
        choices=sorted(RECIPES),
        default=None,
        help="mixed precision (implies -q): sambay_mixed_4_8 = Mamba x_proj/dt_proj and "
        "attention Wqkv at 8 bits, the rest at 4",
    )
    p.add_argument("-d", "--dequantize", action="store_true", help="dequantize a quantized dir")
    p.add_argument("--force", action="store_true", help="replace an existing --mlx-path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    r = convert(
        args.hf_path,
        args.mlx_path,
        quantize=args.quantize,
        q_bits=args.q_bits,
        q_group_size=args.q_group_size,
        dtype=args.dtype,
        quant_recipe=args.quant_recipe,
        dequantize=args.dequantize,
        force=args.force,
        progress=not args.no_progress,
    )
    print(
        f"Saved {r['path']} ({describe(r['quantization'], args.dtype)}): "
        f"{r['bits_per_weight']:.3f} bits per weight, {human_size(r['size_bytes'])} "
        f"in {r['files']} weight file(s), {r['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    from phiflash.console import run_main

    sys.exit(run_main(main, sys.argv[1:]))
