"""MLX speed: SambaY (ours) against mlx-lm's phi3 at Phi-4-mini's size, random weights.

Both models are full size (3.85B parameters) with random weights, built in memory (no files),
measured in one run after a warm-up:

* prompt tok/s for 2K and 32K prompts (mlx-lm's prefill: 2048-token chunks, cache states
  evaluated per chunk, logits only for the last token; the best of three);
* generation tok/s at 1K, 32K and 128K context (caches filled with random K/V and states,
  then mlx-lm's ``generate_step`` decodes);
* peak memory, and the share of the bandwidth floor: bytes read per token (weights + caches)
  divided by the bandwidth of a large bf16 GEMV measured in the same run;
* the selective scan alone: CUDA kernel (in time chunks, and in one pass) vs the portable
  chunked scan (and the former log-depth scan) vs the one-token path;
* with ``--per-layer-decode``, SambaY again with its decode compiled per layer instead of the
  whole-step decode (the baseline of the whole-step decode, in the same run); with
  ``--uncompiled-decode``, again with its decode steps uncompiled;
* prefill with the cross-decoder removed, to show that prompt chunks never run it.

    python benchmarks/bench_mlx.py --out results.json           # the full table (GPU)
    python benchmarks/bench_mlx.py --quick                      # small sizes, any device
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
import mlx.nn as nn
from _common import QUICK_SIZES, QUICK_VOCAB, paths_off, real_config
from _common import mlx_timed as timed
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models import phi3
from mlx_lm.models.cache import ArraysCache, RotatingKVCache, make_prompt_cache

from phiflash.quantize.convert import quantize_model
from phiflash_mlx import model as model_mod
from phiflash_mlx.model import (
    Model,
    ModelArgs,
    keeps_fp32,
    ssm_scan_chunked,
    ssm_scan_cuda,
    ssm_scan_logdepth,
    ssm_step,
)


def ours_model(quick: bool):
    return Model(ModelArgs.from_dict(real_config(quick)))


def phi3_args(quick: bool):
    """mlx-lm's phi3 arguments at Phi-4-mini's size (small widths with ``quick``)."""
    args = dict(
        model_type="phi3",
        hidden_size=3072,
        num_hidden_layers=32,
        intermediate_size=8192,
        num_attention_heads=24,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        vocab_size=200064,
        tie_word_embeddings=True,
        partial_rotary_factor=0.75,
        max_position_embeddings=131072,
    )
    if quick:
        args.update(QUICK_SIZES, vocab_size=QUICK_VOCAB)
    return phi3.ModelArgs(**args)


def phi3_model(quick: bool):
    return phi3.Model(phi3_args(quick))


def to_bf16(model):
    params = tree_flatten(model.parameters())
    model.load_weights([(k, v if keeps_fp32(k) else v.astype(mx.bfloat16)) for k, v in params])
    mx.eval(model.parameters())


def quantize(model, bits: int, recipe: str | None = None):
    if isinstance(model, Model):  # the converter's own predicate and recipes
        quantize_model(model, q_bits=bits, q_group_size=64, recipe=recipe)
        mx.eval(model.parameters())
        return
    nn.quantize(
        model,
        group_size=64,
        bits=bits,
        class_predicate=lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0,
    )
    mx.eval(model.parameters())


def prepare(model, quant: str) -> None:
    """bf16 weights (the fp32 ones kept), quantized as ``quant`` says, in eval mode."""
    to_bf16(model)
    if quant in ("8bit", "4bit"):
        quantize(model, int(quant[0]))
    elif quant == "mixed":
        quantize(model, 4, recipe="sambay_mixed_4_8")
    model.eval()


def nbytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def measure_bandwidth() -> float:
    """Best GB/s of streaming reads: a bf16 GEMV over a 1 GiB matrix and a sum over it."""
    W = mx.random.normal((32768, 16384)).astype(mx.bfloat16)
    x = mx.random.normal((1, 16384)).astype(mx.bfloat16)
    mx.eval(W, x)
    dt = min(timed(lambda: x @ W.T, reps=20), timed(lambda: mx.sum(W, axis=0), reps=20))
    return W.nbytes / dt / 1e9


def prefill_tps(model, n: int, vocab: int, step: int = 2048) -> float:
    toks = mx.random.randint(0, vocab, (n,))
    cache = make_prompt_cache(model)
    mx.eval(toks)
    mx.synchronize()
    t = time.perf_counter()
    done = 0
    while n - done > 1:
        k = min(step, n - 1 - done)
        model(toks[None, done : done + k], cache=cache)
        mx.eval([c.state for c in cache])
        done += k
    mx.eval(model(toks[None, done:], cache=cache)[:, -1])
    mx.synchronize()
    dt = time.perf_counter() - t
    del cache
    mx.clear_cache()
    return n / dt


def filled_cache(model, ctx: int, dtype):
    """A cache as if `ctx` tokens had been processed (random contents)."""
    cache = make_prompt_cache(model)
    for c, layer in zip(cache, model.layers):
        if isinstance(c, ArraysCache):
            m = layer.attn
            c[0] = mx.random.normal((1, m.d_conv - 1, m.d_inner)).astype(dtype)
            c[1] = mx.random.normal((1, m.d_inner, m.d_state)) * 0.1
            continue
        if hasattr(layer, "self_attn"):  # phi3
            a = layer.self_attn
            h, d = a.n_kv_heads, a.head_dim
        else:
            a = layer.attn
            h, d = a.n_kv // 2, 2 * a.head_dim
        n = min(ctx, c.max_size) if isinstance(c, RotatingKVCache) else ctx
        k = mx.random.normal((1, h, n, d)).astype(dtype)
        v = mx.random.normal((1, h, n, d)).astype(dtype)
        c.update_and_fetch(k, v)
    mx.eval([c.state for c in cache])
    return cache


def cache_bytes_per_token(model, ctx: int) -> int:
    """Bytes of cache state a decode step reads at context `ctx`."""
    total = 0
    for layer in model.layers:
        if hasattr(layer, "self_attn"):
            a = layer.self_attn
            total += 2 * a.n_kv_heads * a.head_dim * ctx * 2
            continue
        kind = layer.kind
        if kind in ("mamba", "mamba_mem"):
            m = layer.attn
            total += 2 * m.d_inner * m.d_state * 4 + m.d_inner * (m.d_conv - 1) * 2
        elif kind in ("swa", "attn", "cross"):
            a = layer.attn
            n = min(ctx, a.window) if a.window else ctx
            total += 2 * a.n_kv * a.head_dim * n * 2
    return total


def decode_tps(model, ctx: int, n_tokens: int, dtype) -> float:
    cache = filled_cache(model, ctx, dtype)
    gen = generate_step(mx.array([1]), model, max_tokens=n_tokens, prompt_cache=cache)
    times = []
    for _ in gen:
        times.append(time.perf_counter())
    skip = min(5, len(times) // 4)
    del cache, gen
    mx.clear_cache()
    return (len(times) - 1 - skip) / (times[-1] - times[skip])


def scan_bench(T: int, d: int, n: int) -> dict:
    mx.random.seed(0)
    u = mx.random.normal((1, T, d))
    dt = mx.random.uniform(0.0, 0.1, (1, T, d))
    A = -mx.exp(mx.random.normal((d, n)))
    B, C = mx.random.normal((1, T, n)), mx.random.normal((1, T, n))
    D = mx.ones((d,))
    s0 = mx.zeros((1, d, n))
    mx.eval(u, dt, A, B, C, D, s0)

    out = {}
    t_chunk = timed(lambda: ssm_scan_chunked(u, dt, A, B, C, D, s0))
    out["chunked_tok_s"] = T / t_chunk
    out["logdepth_tok_s"] = T / timed(lambda: ssm_scan_logdepth(u, dt, A, B, C, D, s0))
    if mx.default_device() == mx.gpu and mx.cuda.is_available():
        t_kernel = timed(lambda: ssm_scan_cuda(u, dt, A, B, C, D, s0))
        out["cuda_kernel_tok_s"] = T / t_kernel
        with paths_off(model_mod, "SCAN_TIME_CHUNKS"):  # the same kernel in one pass
            out["cuda_kernel_one_pass_tok_s"] = T / timed(
                lambda: ssm_scan_cuda(u, dt, A, B, C, D, s0)
            )
        yk, sk = ssm_scan_cuda(u, dt, A, B, C, D, s0)
        yc, sc = ssm_scan_chunked(u, dt, A, B, C, D, s0)
        out["kernel_vs_chunked_max_rel_err"] = float(
            mx.abs(yk - yc).max().item() / max(mx.abs(yc).max().item(), 1e-9)
        )
    Ts = min(T, 256)

    def loop():
        s, ys = s0, []
        for t in range(Ts):
            y, s = ssm_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], D, s)
            ys.append(y)
            mx.eval(y, s)  # the one-token path: one step per generated token
        return s

    out["one_token_tok_s"] = Ts / timed(loop, reps=1)
    return out


DECODE_LABELS = {"whole": "", "per-layer": " per-layer decode", "uncompiled": " uncompiled"}


def bench_model(name, build, quant, args, vocab, bw, decode: str = "whole"):
    """``decode``: SambaY's decode path, "whole" (the default), "per-layer" or "uncompiled"."""
    with paths_off(model_mod, *(["WHOLE_STEP_DECODE"] if decode == "per-layer" else [])):
        return _bench_model(name, build, quant, args, vocab, bw, decode)


def _bench_model(name, build, quant, args, vocab, bw, decode):
    compiled = decode != "uncompiled"
    mx.reset_peak_memory()
    model = build(args.quick)
    if not compiled:
        model.set_compiled_decode(False)
    prepare(model, quant)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()  # peak of running the model, not of building random weights
    wbytes = nbytes(model)
    label = name + DECODE_LABELS[decode]
    row = {"model": label, "quant": quant, "weight_GB": wbytes / 1e9}
    for n in args.prompts:
        prefill_tps(model, n, vocab)  # warm-up: compiles every chunk shape
        row[f"prompt_{n}_tok_s"] = max(prefill_tps(model, n, vocab) for _ in range(3))
    decode_tps(model, 256, 16, mx.bfloat16)  # warm-up: compiles the decode step
    for ctx in args.contexts:
        tps = max(decode_tps(model, ctx, args.gen_tokens, mx.bfloat16) for _ in range(2))
        floor_s = (wbytes + cache_bytes_per_token(model, ctx)) / (bw * 1e9)
        row[f"gen_{ctx}_tok_s"] = tps
        row[f"gen_{ctx}_floor_share"] = floor_s * tps
    row["peak_memory_GB"] = mx.get_peak_memory() / 1e9
    if name == "sambay" and decode == "whole" and args.cross_check and args.prompts:
        layers = model.model.layers
        model.model.layers = layers[: len(layers) // 2 + 2]
        n = args.prompts[-1]
        row[f"prompt_{n}_no_cross_decoder_tok_s"] = prefill_tps(model, n, vocab)
        model.model.layers = layers
    del model
    gc.collect()
    mx.clear_cache()
    return row


def fmt_table(rows, args) -> str:
    cols = [f"prompt_{n}_tok_s" for n in args.prompts if f"prompt_{n}_tok_s" in rows[0]] + [
        f"gen_{c}_tok_s" for c in args.contexts
    ]
    head = (
        ["model", "quant"]
        + [c.replace("_tok_s", "") for c in cols]
        + [
            "floor share @" + str(args.contexts[0]),
            "floor share @" + str(args.contexts[-1]),
            "peak GB",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = (
            [r["model"], r["quant"]]
            + [f"{r[c]:.0f}" for c in cols]
            + [
                f"{r[f'gen_{args.contexts[0]}_floor_share']:.0%}",
                f"{r[f'gen_{args.contexts[-1]}_floor_share']:.0%}",
                f"{r['peak_memory_GB']:.1f}",
            ]
        )
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ratios(rows, args) -> list[str]:
    out = []
    by = {(r["model"], r["quant"]): r for r in rows}
    for q in sorted({r["quant"] for r in rows}):
        a, b = by.get(("sambay", q)), by.get(("phi3", q))
        if not a or not b:
            continue
        parts = [
            f"{k.replace('_tok_s', '')} {a[k] / b[k]:.2f}x"
            for k in a
            if k.endswith("_tok_s") and k in b
        ]
        out.append(f"sambay/phi3 {q}: " + ", ".join(parts))
    for q in sorted({r["quant"] for r in rows}):
        for base in ("per-layer", "uncompiled"):
            a, b = by.get(("sambay", q)), by.get(("sambay" + DECODE_LABELS[base], q))
            if a and b:
                parts = [
                    f"{k.replace('_tok_s', '')} {a[k] / b[k]:.2f}x"
                    for k in a
                    if k.startswith("gen_") and k.endswith("_tok_s")
                ]
                out.append(f"sambay whole-step/{base} decode {q}: " + ", ".join(parts))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, short runs")
    p.add_argument("--quants", default="bf16,4bit", help="comma list: bf16,8bit,4bit,mixed")
    p.add_argument("--models", default="sambay,phi3")
    p.add_argument("--prompts", default="2048,32768")
    p.add_argument("--contexts", default="1024,32768,131072")
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--no-cross-check", dest="cross_check", action="store_false")
    p.add_argument("--no-scan", dest="scan", action="store_false")
    p.add_argument(
        "--per-layer-decode",
        action="store_true",
        help="also SambaY with its decode compiled per layer (the whole-step decode's baseline)",
    )
    p.add_argument(
        "--uncompiled-decode",
        action="store_true",
        help="also SambaY with uncompiled decode steps (baseline row)",
    )
    p.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = p.parse_args(argv)
    args.prompts = [int(x) for x in args.prompts.split(",") if x not in ("", "none")]
    args.contexts = [int(x) for x in args.contexts.split(",")]
    vocab = QUICK_VOCAB if args.quick else 200064
    info = {"mlx": mx.__version__, "device": str(mx.default_device())}
    if mx.cuda.is_available():
        info["backend"] = "cuda"
    bw = measure_bandwidth()
    info["gemv_bandwidth_GB_s"] = bw
    print(json.dumps(info), flush=True)
    results = {"info": info, "rows": []}
    if args.scan:
        d = 256 if args.quick else 5120
        results["scan"] = scan_bench(2048, d, 16)
        print("scan", json.dumps(results["scan"]), flush=True)
    builders = {"sambay": ours_model, "phi3": phi3_model}
    for q in args.quants.split(","):
        for name in args.models.split(","):
            if q == "mixed" and name != "sambay":
                continue
            variants = ["whole"]
            if name == "sambay":
                variants += ["per-layer"] * args.per_layer_decode
                variants += ["uncompiled"] * args.uncompiled_decode
            for decode in variants:
                row = bench_model(name, builders[name], q, args, vocab, bw, decode)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print(fmt_table(results["rows"], args))
    for line in ratios(results["rows"], args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
