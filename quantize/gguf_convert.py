"""`phiflash convert-gguf`: a Hugging Face phi4flash (SambaY) checkpoint -> one GGUF file.

The GGUF uses the architecture name ``sambay`` that phiflash's llama.cpp fork implements
(see phiflash_gguf/). Float types are written here with the ``gguf`` package; quantized
types go through the fork's ``llama_model_quantize`` with the Mamba ``x_proj``/``dt_proj``
matrices pinned to Q8_0 (they steer the recurrence). The output is written to a temp file
in the destination folder and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiflash.errors import ModelLoadError, PhiflashError, WrongArchitectureError

from .gguf_safetensors import TensorRef, f32_to_bf16_bits, open_checkpoint

ARCH = "sambay"
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m")
# llama_ftype values (include/llama.h) and ggml_type values (ggml.h)
_FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "bf16": 32}
_GGML_TYPE_Q8_0 = 8
# tensors that stay at the quantized file's "steering" precision, as regexes over GGUF names
PINNED_Q8_0 = (r"\.ssm_x\.weight$", r"\.ssm_dt\.weight$")


class ConversionError(PhiflashError):
    """The conversion cannot proceed (bad arguments, unwritable output, quantizer failure)."""


@dataclass
class Layout:
    """Layer kinds of a phi4flash config (SPEC.md section 3)."""

    n_layer: int
    kinds: list[str]  # mamba | swa | global | gmu | cross   (the memory layer is a mamba)
    swa: list[bool]
    n_shared: int  # cross-decoder layers (own no KV)


def read_config(hf_path: Path) -> dict:
    if not hf_path.exists():
        raise ModelLoadError(f"no such checkpoint directory: {hf_path}")
    cfg_path = hf_path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{hf_path} has no config.json (not a Hugging Face checkpoint)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{cfg_path}: invalid JSON ({e})") from None
    model_type = cfg.get("model_type")
    if model_type != "phi4flash":
        raise WrongArchitectureError(
            f"{hf_path} is a {model_type!r} checkpoint, not phi4flash (SambaY); "
            "convert-gguf only converts Phi-4-mini-flash-reasoning models"
        )
    return cfg


def layout_of(cfg: dict) -> Layout:
    n = int(cfg["num_hidden_layers"])
    mb = int(cfg.get("mb_per_layer", 2))
    half = n // 2
    kinds = []
    for i in range(n):
        if i >= half + 2:
            kinds.append("gmu" if i % mb == 0 else "cross")
        elif i % mb == 0:
            kinds.append("mamba")
        else:
            kinds.append("global" if i >= half + 1 else "swa")
    if kinds[half] != "mamba" or kinds[half + 1] != "global":
        raise ModelLoadError(f"unsupported SambaY layout (mb_per_layer={mb}, layers={n})")
    sw = cfg.get("sliding_window")
    if isinstance(sw, list):
        swa = [w is not None for w in sw]
    elif cfg.get("layer_types"):
        swa = [t == "sliding_attention" for t in cfg["layer_types"]]
    else:
        swa = [k == "swa" for k in kinds]
    swa = [s and k in ("swa",) for s, k in zip(swa, kinds)]
    return Layout(n, kinds, swa, n - (half + 2))


def window_of(cfg: dict) -> int:
    sw = cfg.get("sliding_window")
    if isinstance(sw, list):
        sizes = [w for w in sw if w is not None]
        return int(sizes[0]) if sizes else 0
    return int(sw or 0)


def lambda_init(i: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * i)


# ---------------------------------------------------------------------------------------------
# tensors


@dataclass
class Planned:
    name: str  # GGUF name
    ref: TensorRef
    force_f32: bool
    transform: str = ""  # "" | "squeeze_conv" | "neg_exp"

    def f32(self) -> np.ndarray:
        a = self.ref.load_f32()
        if self.transform == "squeeze_conv":
            a = a.reshape(a.shape[0], a.shape[-1])
        elif self.transform == "neg_exp":
            a = -np.exp(a.astype(np.float64)).astype(np.float32)
        return np.ascontiguousarray(a)


def plan_tensors(refs: dict[str, TensorRef], cfg: dict, lay: Layout) -> list[Planned]:
    used: set[str] = set()

    def get(name: str) -> TensorRef:
        if name not in refs:
            raise ModelLoadError(f"checkpoint is missing tensor {name}")
        used.add(name)
        return refs[name]

    def add(gguf: str, hf: str, force_f32=False, transform=""):
        out.append(Planned(gguf, get(hf), force_f32, transform))

    out: list[Planned] = []
    add("token_embd.weight", "model.embed_tokens.weight")
    add("output_norm.weight", "model.final_layernorm.weight", True)
    add("output_norm.bias", "model.final_layernorm.bias", True)
    if "lm_head.weight" in refs and not cfg.get("tie_word_embeddings", True):
        add("output.weight", "lm_head.weight")
    used.add("lm_head.weight")

    for i, kind in enumerate(lay.kinds):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight", True)
        add(b + "attn_norm.bias", p + "input_layernorm.bias", True)
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", True)
        add(b + "ffn_norm.bias", p + "post_attention_layernorm.bias", True)
        add(b + "ffn_up.weight", p + "mlp.fc1.weight")
        add(b + "ffn_down.weight", p + "mlp.fc2.weight")
        a = p + "attn."
        if kind == "mamba":
            add(b + "ssm_in.weight", a + "in_proj.weight")
            add(b + "ssm_conv1d.weight", a + "conv1d.weight", True, "squeeze_conv")
            add(b + "ssm_conv1d.bias", a + "conv1d.bias", True)
            add(b + "ssm_x.weight", a + "x_proj.weight")
            add(b + "ssm_dt.weight", a + "dt_proj.weight")
            add(b + "ssm_dt.bias", a + "dt_proj.bias", True)
            add(b + "ssm_a", a + "A_log", True, "neg_exp")
            add(b + "ssm_d", a + "D", True)
            add(b + "ssm_out.weight", a + "out_proj.weight")
        elif kind == "gmu":
            add(b + "ssm_in.weight", a + "in_proj.weight")
            add(b + "ssm_out.weight", a + "out_proj.weight")
        else:
            qkv = "attn_q" if kind == "cross" else "attn_qkv"
            add(f"{b}{qkv}.weight", a + "Wqkv.weight")
            add(f"{b}{qkv}.bias", a + "Wqkv.bias", True)
            add(b + "attn_output.weight", a + "out_proj.weight")
            add(b + "attn_output.bias", a + "out_proj.bias", True)
            add(b + "attn_sub_norm.weight", a + "inner_cross_attn.subln.weight", True)
            for lam in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                get(a + "inner_cross_attn." + lam)
    extra = sorted(set(refs) - used)
    if extra:
        raise ModelLoadError(f"unexpected tensor {extra[0]} in checkpoint ({len(extra)} unused)")
    return out


def diff_lambdas(refs: dict[str, TensorRef], lay: Layout) -> list[float]:
    """lambda_full per layer (0 for layers without attention), computed in float64."""
    out = []
    for i, kind in enumerate(lay.kinds):
        if kind in ("mamba", "gmu"):
            out.append(0.0)
            continue
        pre = f"model.layers.{i}.attn.inner_cross_attn."

        def v(n, pre=pre):
            return refs[pre + n].load_f32().astype(np.float64)

        lam = (
            math.exp(float(np.dot(v("lambda_q1"), v("lambda_k1"))))
            - math.exp(float(np.dot(v("lambda_q2"), v("lambda_k2"))))
            + lambda_init(i)
        )
        out.append(lam)
    return out


def check_shapes(plan: list[Planned], cfg: dict, lay: Layout) -> None:
    h = int(cfg["hidden_size"])
    emb = plan[0].ref.shape
    if len(emb) != 2 or emb[1] != h:
        raise ModelLoadError(f"model.embed_tokens.weight has shape {emb}, expected [vocab, {h}]")
    for p in plan:
        if p.name.endswith("_norm.weight") and p.ref.shape[-1] not in (h, 2 * _head_dim(cfg)):
            raise ModelLoadError(f"{p.ref.name} has shape {p.ref.shape}, expected [{h}]")


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


# ---------------------------------------------------------------------------------------------
# tokenizer


def add_tokenizer(w, hf_path: Path, cfg: dict, n_vocab: int) -> None:
    import gguf

    tok_path = hf_path / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"{hf_path} has no tokenizer.json")
    tok = json.loads(tok_path.read_text())
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ModelLoadError(f"tokenizer.json: expected a BPE tokenizer, got {model.get('type')}")
    tokens: list[str | None] = [None] * n_vocab
    types = [gguf.TokenType.NORMAL] * n_vocab
    for text, idx in model["vocab"].items():
        if idx < n_vocab:
            tokens[idx] = text
    for at in tok.get("added_tokens", []):
        idx = at["id"]
        if idx < n_vocab:
            tokens[idx] = at["content"]
            special = at.get("special")
            types[idx] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    by_text = {t: i for i, t in enumerate(tokens)}

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)

    gen = {}
    gen_path = hf_path / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text())
    eos = cfg.get("eos_token_id", by_text.get("<|endoftext|>"))
    if isinstance(eos, list):
        eos = eos[-1]
    bos = cfg.get("bos_token_id", eos)
    pad = cfg.get("pad_token_id", eos)
    if eos is not None:
        w.add_eos_token_id(int(eos))
    if bos is not None:
        w.add_bos_token_id(int(bos))
    if pad is not None:
        w.add_pad_token_id(int(pad))
    end = by_text.get("<|end|>")
    gen_eos = gen.get("eos_token_id", [])
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    eot = next((e for e in gen_eos if e != eos), end)
    if eot is not None:
        w.add_eot_token_id(int(eot))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    tc_path = hf_path / "tokenizer_config.json"
    if tc_path.is_file():
        tc = json.loads(tc_path.read_text())
        if tc.get("chat_template"):
            w.add_chat_template(tc["chat_template"])


# ---------------------------------------------------------------------------------------------
# writing


def mamba_dims(cfg: dict) -> tuple[int, int, int, int]:
    """(d_inner, d_state, d_conv, dt_rank) of a phi4flash config."""
    h = int(cfg["hidden_size"])
    dt_rank = cfg.get("mamba_dt_rank", "auto")
    dt_rank = math.ceil(h / 16) if dt_rank in (None, "auto") else int(dt_rank)
    d_inner = int(cfg.get("mamba_expand", 2)) * h
    return d_inner, int(cfg.get("mamba_d_state", 16)), int(cfg.get("mamba_d_conv", 4)), dt_rank


def add_sambay_metadata(w, cfg: dict, lay: Layout, lambdas: list[float], n_vocab: int) -> None:
    """The ``sambay.*`` hyperparameter keys (the GGUF contract of phiflash_gguf's fork)."""
    n_kv = int(cfg["num_key_value_heads"])
    hd = _head_dim(cfg)
    d_inner, d_state, d_conv, dt_rank = mamba_dims(cfg)
    w.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(lay.n_layer)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv([0 if k in ("mamba", "gmu") else n_kv for k in lay.kinds])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-5)))
    w.add_layer_norm_rms_eps(1e-5)  # subln (RMSNorm over 2*head_dim) uses a fixed 1e-5
    w.add_sliding_window(window_of(cfg))
    w.add_sliding_window_pattern(lay.swa)
    w.add_shared_kv_layers(lay.n_shared)
    w.add_array(f"{ARCH}.attention.diff_lambda", [float(x) for x in lambdas])
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_vocab_size(n_vocab)


def write_float_gguf(hf_path: Path, out_path: Path, outtype: str, progress: bool = True) -> None:
    """Write an F32/F16/BF16 GGUF of the checkpoint in ``hf_path`` to ``out_path``."""
    import gguf
    from tqdm import tqdm

    cfg = read_config(hf_path)
    lay = layout_of(cfg)
    refs = open_checkpoint(hf_path)
    plan = plan_tensors(refs, cfg, lay)
    check_shapes(plan, cfg, lay)
    lambdas = diff_lambdas(refs, lay)

    n_vocab = plan[0].ref.shape[0]
    w = gguf.GGUFWriter(None, ARCH)
    w.add_name(hf_path.resolve().name)
    w.add_file_type(_FTYPE[outtype])
    add_sambay_metadata(w, cfg, lay, lambdas, n_vocab)
    add_tokenizer(w, hf_path, cfg, n_vocab)

    float_type = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }[outtype]

    def out_type(p: Planned):
        if p.force_f32 or len(p.ref.shape) < 2:
            return gguf.GGMLQuantizationType.F32
        return float_type

    def shape_of(p: Planned) -> tuple[int, ...]:
        if p.transform == "squeeze_conv":
            return (p.ref.shape[0], p.ref.shape[-1])
        return p.ref.shape

    for p in plan:
        t = out_type(p)
        shape = shape_of(p)
        n = int(np.prod(shape))
        esize = 4 if t == gguf.GGMLQuantizationType.F32 else 2
        np_dtype = {
            gguf.GGMLQuantizationType.F32: np.float32,
            gguf.GGMLQuantizationType.F16: np.float16,
        }.get(t, np.uint16)
        w.add_tensor_info(
            p.name,
            shape,
            np.dtype(np_dtype),
            n * esize,
            raw_dtype=t if t == gguf.GGMLQuantizationType.BF16 else None,
        )

    w.write_header_to_file(out_path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = sum(p.ref.nbytes for p in plan)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=f"writing {outtype.upper()}",
        disable=not progress,
    )
    for p in plan:
        t = out_type(p)
        if t == gguf.GGMLQuantizationType.BF16 and p.ref.dtype == "BF16" and not p.transform:
            data = np.ascontiguousarray(p.ref.load())
        elif t == gguf.GGMLQuantizationType.BF16:
            data = f32_to_bf16_bits(p.f32())
        elif t == gguf.GGMLQuantizationType.F16:
            data = p.f32().astype(np.float16)
        else:
            data = p.f32()
        w.write_tensor_data(data)
        bar.update(p.ref.nbytes)
    bar.close()
    w.close()


def quantize_gguf(src: Path, dst: Path, outtype: str, n_threads: int | None = None) -> None:
    """Quantize a float GGUF with the fork's llama_model_quantize (x_proj/dt_proj at Q8_0)."""
    import ctypes

    from phiflash_gguf.build import ensure_llama_cpp

    llama_cpp = ensure_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPE[outtype]
    params.nthread = n_threads or 0
    overrides = (llama_cpp.llama_model_tensor_override * (len(PINNED_Q8_0) + 1))()
    for i, pat in enumerate(PINNED_Q8_0):
        overrides[i].pattern = pat.encode()
        overrides[i].type = _GGML_TYPE_Q8_0
    overrides[len(PINNED_Q8_0)].pattern = None
    params.tt_overrides = ctypes.cast(overrides, type(params.tt_overrides))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ConversionError(f"llama_model_quantize failed for {outtype} (code {rc})")


def convert(
    hf_path: str | Path,
    outfile: str | Path,
    outtype: str,
    progress: bool = True,
    n_threads: int | None = None,
) -> Path:
    """Convert ``hf_path`` to ``outfile`` (temp file + rename). Returns ``outfile``."""
    hf_path, outfile = Path(hf_path), Path(outfile)
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    cfg = read_config(hf_path)  # fail fast, before creating anything
    del cfg
    outfile = outfile.resolve()
    if not outfile.parent.is_dir():
        raise ConversionError(f"output folder does not exist: {outfile.parent}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{outfile.name}.", suffix=".tmp", dir=outfile.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_float = None
    try:
        if outtype in ("f32", "f16", "bf16"):
            write_float_gguf(hf_path, tmp, outtype, progress)
        else:
            refs = open_checkpoint(hf_path)
            all_bf16 = all(r.dtype == "BF16" for r in refs.values() if len(r.shape) == 2)
            base = "bf16" if all_bf16 else "f32"
            fd, tmp_float_name = tempfile.mkstemp(
                prefix=f".{outfile.name}.", suffix=".f.tmp", dir=outfile.parent
            )
            os.close(fd)
            tmp_float = Path(tmp_float_name)
            write_float_gguf(hf_path, tmp_float, base, progress)
            if progress:
                print(
                    f"quantizing to {outtype.upper()} (x_proj/dt_proj pinned to Q8_0)...",
                    flush=True,
                )
            quantize_gguf(tmp_float, tmp, outtype, n_threads)
        os.replace(tmp, outfile)
    except OSError as e:
        raise ConversionError(f"cannot write {outfile}: {e.strerror or e}") from None
    finally:
        for p in (tmp, tmp_float):
            if p is not None and p.exists():
                p.unlink()
    return outfile


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phiflash convert-gguf",
        description="Convert a Hugging Face phi4flash (SambaY) checkpoint to GGUF "
        "(architecture 'sambay', runs on phiflash's llama.cpp fork).",
    )
    ap.add_argument("--hf-path", required=True, type=Path, help="checkpoint directory")
    ap.add_argument(
        "--outfile",
        type=Path,
        default=None,
        help="output .gguf (default: <hf-path>/<name>-<OUTTYPE>.gguf)",
    )
    ap.add_argument("--outtype", choices=OUTTYPES, default="f16", help="output type (default f16)")
    ap.add_argument("--threads", type=int, default=None, help="quantization threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_path: Path = args.hf_path
    outfile = args.outfile or hf_path / f"{hf_path.resolve().name}-{args.outtype.upper()}.gguf"
    out = convert(hf_path, outfile, args.outtype, progress=not args.quiet, n_threads=args.threads)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({args.outtype.upper()}, {size:.1f} MB)")
    return 0
