"""`phiflash convert-gguf`: a Hugging Face phi4flash (SambaY) checkpoint -> one GGUF file.

The GGUF uses the architecture name ``sambay`` that phiflash's llama.cpp fork implements
(see phiflash_gguf/). The layer layout, sliding windows and lambda_init come from the MLX model
file (phiflash_mlx/model.py), and the checkpoint is read by phiflash.checkpoint, whose names,
shapes and truncation checks all run before anything is written.

Float types are written here with the ``gguf`` package. Quantized types are made from a 16-bit
intermediate (every tensor kept in its checkpoint dtype: bf16 stays bf16, only tensors stored as
F32 stay F32) by the fork's ``llama_model_quantize``, run in a child process so that Ctrl-C
stops it; the Mamba ``x_proj``/``dt_proj`` matrices are pinned to Q8_0 (they steer the
recurrence). Temp files sit beside the output as ``.<name>.phiflash-tmp-<pid>[.part]`` and are
removed on any failure or interrupt, and by the next run if the process was killed.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phiflash.checkpoint import (
    TOKENIZER_FILES,
    TensorRef,
    check_tensors,
    f32_to_bf16_bits,
    open_checkpoint,
    read_config,
    read_json,
    to_f32,
    weight_files,
)
from phiflash.errors import ConversionError, ModelLoadError
from phiflash.quantize import outputs
from phiflash_mlx.model import Model, ModelArgs, lambda_init_fn

ARCH = "sambay"
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m")
FLOAT_OUTTYPES = ("f32", "f16", "bf16")
# llama_ftype values (include/llama.h) and ggml_type values (ggml.h)
_FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "bf16": 32}
_GGML_TYPE_Q8_0 = 8
# tensors that stay at the quantized file's "steering" precision, as regexes over GGUF names
PINNED_Q8_0 = (r"\.ssm_x\.weight$", r"\.ssm_dt\.weight$")
_READABLE_DTYPES = ("F32", "F16", "BF16")
_CAST_BLOCK_BYTES = 32 << 20
# The model file's layer kinds, as the GGUF writer names them: the memory layer's weights are a
# Mamba layer's, and the self-decoder's full-attention layer is the "global" one.
_GGUF_KIND = {"mamba_mem": "mamba", "attn": "global"}

__all__ = ["ConversionError", "convert", "layout_of", "main"]


@dataclass
class Layout:
    """Layer layout of a phi4flash config, from the MLX model file's ModelArgs."""

    args: ModelArgs
    n_layer: int
    kinds: list[str]  # mamba | swa | global | gmu | cross   (the memory layer is a mamba)
    swa: list[bool]
    window: int  # the sliding window of the swa layers (0 if none)
    n_shared: int  # cross-decoder layers (own no KV)


def model_args(cfg: dict) -> ModelArgs:
    try:
        return ModelArgs.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"config.json is not a valid phi4flash config ({e})") from None


def layout_of(cfg: dict) -> Layout:
    args = model_args(cfg)
    n = args.num_hidden_layers
    kinds = [_GGUF_KIND.get(k, k) for k in map(args.layer_kind, range(n))]
    half = n // 2
    shared = ("gmu", "cross")
    if (
        n < 4
        or kinds[half] != "mamba"
        or kinds[half + 1] != "global"
        or any(k in shared for k in kinds[: half + 2])
        or any(k not in shared for k in kinds[half + 2 :])
    ):
        raise ModelLoadError(
            f"unsupported SambaY layout (mb_per_layer={args.mb_per_layer}, layers={n})"
        )
    swa = [k == "swa" for k in kinds]
    sizes = {args.windows[i] for i in range(n) if swa[i]}
    if len(sizes) > 1:
        raise ModelLoadError(f"one sliding window per model in GGUF, config has {sorted(sizes)}")
    window = int(sizes.pop()) if sizes else 0
    return Layout(args, n, kinds, swa, window, sum(k in shared for k in kinds))


def mamba_dims(cfg: dict) -> tuple[int, int, int, int]:
    """(d_inner, d_state, d_conv, dt_rank) of a phi4flash config, as the model file reads it."""
    a = model_args(cfg)
    return a.mamba_expand * a.hidden_size, a.mamba_d_state, a.mamba_d_conv, int(a.mamba_dt_rank)


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

    @property
    def shape(self) -> tuple[int, ...]:
        if self.transform == "squeeze_conv":
            return (self.ref.shape[0], self.ref.shape[-1])
        return self.ref.shape


def check_checkpoint(refs: dict[str, TensorRef], cfg: dict, lay: Layout) -> None:
    """The MLX loader's strictness: every name and shape the model file expects, nothing more,
    and only float dtypes; raises ModelLoadError naming the first bad tensor."""
    if cfg.get("quantization"):
        raise ModelLoadError(
            "this is a quantized MLX dir; convert-gguf reads the original (bf16/f16/f32) checkpoint"
        )
    from mlx.utils import tree_flatten

    model = Model(lay.args)  # parameters are lazy: nothing is allocated
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    tied = lay.args.tie_word_embeddings
    found = {k: r.shape for k, r in refs.items() if not (tied and k == "lm_head.weight")}
    check_tensors(expected, found)
    for k in sorted(refs):
        if refs[k].dtype not in _READABLE_DTYPES:
            raise ModelLoadError(f"tensor {k} is {refs[k].dtype}; convert-gguf reads F32/F16/BF16")


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
    if "lm_head.weight" in refs and not lay.args.tie_word_embeddings:
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
            + lambda_init_fn(i)
        )
        out.append(lam)
    return out


@dataclass
class Checkpoint:
    """Everything convert-gguf reads from a checkpoint, checked, before it writes a byte."""

    path: Path
    cfg: dict
    lay: Layout
    plan: list[Planned]
    lambdas: list[float]
    inputs: list[Path] = field(default_factory=list)  # files read (never to be written over)

    @property
    def n_vocab(self) -> int:
        return self.plan[0].ref.shape[0]


def read_checkpoint(hf_path: Path) -> Checkpoint:
    cfg = read_config(hf_path)
    lay = layout_of(cfg)
    refs = open_checkpoint(hf_path)
    check_checkpoint(refs, cfg, lay)
    plan = plan_tensors(refs, cfg, lay)
    _tokenizer_files(hf_path)
    inputs = [hf_path / "config.json", *weight_files(hf_path)]
    inputs += [hf_path / n for n in ("model.safetensors.index.json", *TOKENIZER_FILES)]
    inputs = [f for f in inputs if f.is_file()]
    return Checkpoint(hf_path, cfg, lay, plan, diff_lambdas(refs, lay), inputs)


# ---------------------------------------------------------------------------------------------
# tokenizer


def _tokenizer_files(hf_path: Path) -> tuple[dict, dict, dict]:
    """tokenizer.json, generation_config.json and tokenizer_config.json ({} when absent)."""
    tok_path = hf_path / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"{hf_path} has no tokenizer.json")
    tok = read_json(tok_path)
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ModelLoadError(f"tokenizer.json: expected a BPE tokenizer, got {kind}")
    if not isinstance(model.get("vocab"), dict):
        raise ModelLoadError("tokenizer.json: the BPE model has no vocab")
    other = []
    for name in ("generation_config.json", "tokenizer_config.json"):
        p = hf_path / name
        other.append(read_json(p) if p.is_file() else {})
    return tok, other[0], other[1]


def add_tokenizer(w, hf_path: Path, cfg: dict, n_vocab: int) -> None:
    import gguf

    tok, gen, tc = _tokenizer_files(hf_path)
    model = tok["model"]
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

    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])


# ---------------------------------------------------------------------------------------------
# writing


def add_sambay_metadata(w, cfg: dict, lay: Layout, lambdas: list[float], n_vocab: int) -> None:
    """The ``sambay.*`` hyperparameter keys (the GGUF contract of phiflash_gguf's fork)."""
    a = lay.args
    n_kv = a.num_key_value_heads
    d_inner, d_state, d_conv, dt_rank = mamba_dims(cfg)
    w.add_context_length(a.max_position_embeddings)
    w.add_embedding_length(a.hidden_size)
    w.add_block_count(lay.n_layer)
    w.add_feed_forward_length(a.intermediate_size)
    w.add_head_count(a.num_attention_heads)
    w.add_head_count_kv([0 if k in ("mamba", "gmu") else n_kv for k in lay.kinds])
    w.add_key_length(a.head_dim)
    w.add_value_length(a.head_dim)
    w.add_layer_norm_eps(float(a.layer_norm_eps))
    w.add_layer_norm_rms_eps(1e-5)  # subln (RMSNorm over 2*head_dim) uses a fixed 1e-5
    w.add_sliding_window(lay.window)
    w.add_sliding_window_pattern(lay.swa)
    w.add_shared_kv_layers(lay.n_shared)
    w.add_array(f"{ARCH}.attention.diff_lambda", [float(x) for x in lambdas])
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_vocab_size(n_vocab)


def write_float_gguf(ck: Checkpoint, out_path: Path, outtype: str, progress: bool = True) -> None:
    """Write the checked checkpoint ``ck`` as a float GGUF to ``out_path``.

    ``outtype`` f32/f16/bf16 casts every matrix to that type; ``"source"`` (the quantizer's
    intermediate) keeps each matrix in its checkpoint dtype, so bf16 is copied byte for byte and
    only matrices stored as F32 are F32. Norms, biases, A, D and the conv kernel are F32 in all.
    """
    import gguf
    from tqdm import tqdm

    T = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(None, ARCH)
    w.add_name(ck.path.resolve().name)
    w.add_file_type(_FTYPE.get(outtype, _FTYPE["bf16"]))
    add_sambay_metadata(w, ck.cfg, ck.lay, ck.lambdas, ck.n_vocab)
    add_tokenizer(w, ck.path, ck.cfg, ck.n_vocab)

    cast_to = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}.get(outtype)
    source = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16}

    def out_type(p: Planned):
        if p.force_f32 or len(p.ref.shape) < 2:
            return T.F32
        return cast_to if cast_to is not None else source[p.ref.dtype]

    np_dtype = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}
    for p in ck.plan:
        t = out_type(p)
        n = int(np.prod(p.shape))
        w.add_tensor_info(
            p.name,
            p.shape,
            np.dtype(np_dtype[t]),
            n * np.dtype(np_dtype[t]).itemsize,
            raw_dtype=t if t == T.BF16 else None,
        )

    try:
        w.write_header_to_file(out_path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        label = "16-bit intermediate" if cast_to is None else outtype.upper()
        bar = tqdm(
            total=sum(p.ref.nbytes for p in ck.plan),
            unit="B",
            unit_scale=True,
            desc=f"writing {label}",
            disable=not progress,
        )

        def as_type(a: np.ndarray, t) -> np.ndarray:
            if t == T.BF16:
                return f32_to_bf16_bits(a)
            return a.astype(np_dtype[t], copy=False)

        for p in ck.plan:
            t = out_type(p)
            if not p.transform and source.get(p.ref.dtype) == t:
                data = p.ref.load()  # same type: the mapped bytes, no copy
            elif p.transform or len(p.shape) < 2:
                data = as_type(p.f32(), t)  # small tensors
            else:  # cast a block of rows at a time: peak memory ~ the output tensor, not 3x it
                src, data = p.ref.load(), np.empty(p.shape, dtype=np_dtype[t])
                step = max(1, _CAST_BLOCK_BYTES // max(1, src[0].nbytes))
                for r in range(0, p.shape[0], step):
                    data[r : r + step] = as_type(to_f32(src[r : r + step], p.ref.dtype), t)
            w.write_tensor_data(data)
            bar.update(p.ref.nbytes)
        bar.close()
    finally:
        w.close()  # also on an error or Ctrl-C, so the temp file can be removed


# ---------------------------------------------------------------------------------------------
# quantizing (in a child process: llama_model_quantize is one blocking C call)

_WORKER = (
    "import sys; from phiflash.quantize.gguf_convert import quantize_worker; "
    "sys.exit(quantize_worker(sys.argv[1:]))"
)


def quantize_worker(argv: list[str]) -> int:
    """Child side of :func:`quantize_gguf`: ``SRC DST OUTTYPE THREADS PARENT_PID``."""
    import ctypes
    import signal

    src, dst, outtype, threads, parent = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if needed
    if sys.platform.startswith("linux"):
        # die with the parent (kill -9 included); PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):
        return 3  # the parent is already gone
    from phiflash_gguf.build import ensure_llama_cpp

    llama_cpp = ensure_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPE[outtype]
    params.nthread = int(threads)
    overrides = (llama_cpp.llama_model_tensor_override * (len(PINNED_Q8_0) + 1))()
    for i, pat in enumerate(PINNED_Q8_0):
        overrides[i].pattern = pat.encode()
        overrides[i].type = _GGML_TYPE_Q8_0
    overrides[len(PINNED_Q8_0)].pattern = None
    params.tt_overrides = ctypes.cast(overrides, type(params.tt_overrides))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    return 0


def quantize_gguf(src: Path, dst: Path, outtype: str, n_threads: int | None = None) -> None:
    """Quantize the float GGUF ``src`` into ``dst`` with the fork's llama_model_quantize
    (x_proj/dt_proj at Q8_0), in a child process that an interrupt kills at once."""
    cmd = [
        sys.executable,
        "-c",
        _WORKER,
        str(src),
        str(dst),
        outtype,
        str(n_threads or 0),
        str(os.getpid()),
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise ConversionError(f"quantizing to {outtype.upper()} failed: {why}")


def _ensure_fork() -> None:
    from phiflash_gguf.build import ensure_llama_cpp

    try:
        ensure_llama_cpp()
    except (RuntimeError, OSError, ImportError) as e:
        raise ConversionError(f"the llama.cpp fork (needed to quantize) is unavailable: {e}") from e


# ---------------------------------------------------------------------------------------------
# the command


def convert(
    hf_path: str | Path,
    outfile: str | Path,
    outtype: str,
    progress: bool = True,
    n_threads: int | None = None,
    force: bool = False,
) -> Path:
    """Convert ``hf_path`` to ``outfile`` (temp file + rename). Returns ``outfile``.

    Every check (config, names, shapes, dtypes, tokenizer, output path) runs before anything is
    written; an existing ``outfile`` is replaced only with ``force``, an input file never.
    """
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    from phiflash.paths import resolve_model

    hf_path = resolve_model(hf_path)  # a local dir, or a hub repo id through the HF cache
    out = Path(os.path.abspath(outfile))
    ck = read_checkpoint(hf_path)
    outputs.check_writable_folder(out.parent)
    outputs.refuse_inputs(out, ck.inputs)
    if out.is_dir():
        raise ConversionError(f"{out} is a folder; --outfile names the .gguf file to write")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    if outtype not in FLOAT_OUTTYPES:
        _ensure_fork()
    outputs.remove_stale(out.parent)
    tmp, mid = outputs.temp_path(out), outputs.temp_path(out, "src16")
    try:
        if outtype in FLOAT_OUTTYPES:
            write_float_gguf(ck, tmp, outtype, progress)
        else:
            write_float_gguf(ck, mid, "source", progress)
            if progress:
                print(
                    f"quantizing to {outtype.upper()} (x_proj/dt_proj pinned to Q8_0)...",
                    file=sys.stderr,
                    flush=True,
                )
            quantize_gguf(mid, tmp, outtype, n_threads)
            outputs.remove(mid)
        outputs.finish_file(tmp, out)
    except OSError as e:
        raise ConversionError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        outputs.remove(tmp)
        outputs.remove(mid)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phiflash convert-gguf",
        description="Convert a Hugging Face phi4flash (SambaY) checkpoint to GGUF "
        "(architecture 'sambay', runs on phiflash's llama.cpp fork). Quantized types are "
        "made from a 16-bit intermediate beside the output (about the checkpoint's size).",
    )
    ap.add_argument(
        "--hf-path", "--model", required=True, type=Path, help="checkpoint dir or hub repo id"
    )
    ap.add_argument(
        "--outfile",
        type=Path,
        default=None,
        help="output .gguf (default: <hf-path>/<name>-<OUTTYPE>.gguf)",
    )
    ap.add_argument("--outtype", choices=OUTTYPES, default="f16", help="output type (default f16)")
    ap.add_argument("--threads", type=int, default=None, help="quantization threads")
    ap.add_argument("--force", action="store_true", help="replace an existing --outfile")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_path: Path = args.hf_path
    outfile = args.outfile or hf_path / f"{hf_path.resolve().name}-{args.outtype.upper()}.gguf"
    if args.outfile is None and not hf_path.exists():  # a hub repo id: write into the cwd
        outfile = Path(f"{hf_path.name}-{args.outtype.upper()}.gguf")
    out = convert(
        hf_path,
        outfile,
        args.outtype,
        progress=not args.quiet,
        n_threads=args.threads,
        force=args.force,
    )
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({args.outtype.upper()}, {size:.1f} MB)")
    return 0


if __name__ == "__main__":
    from phiflash.console import run_main

    sys.exit(run_main(main, sys.argv[1:]))
