"""Batched decode through mlx-lm's BatchGenerator: SambaY vs mlx-lm's phi3 at Phi-4-mini's size.

Both models are full size with random weights built in memory. For each model, weight type
(bf16, 4-bit) and context (2K, 16K, 32K tokens), the benchmark picks the largest batch whose
cache fits the card (``--max-batch`` caps it), hands BatchGenerator one prefilled cache per row
(``insert(caches=...)``: the rows' K/V and Mamba states as if that many tokens had been
processed; one random row's arrays shared by all rows until BatchGenerator merges them) and
times its decode steps. Reported per point: tok/s over the batch, the batch, peak memory and
the share of the bandwidth floor, (weight bytes + every row's cache bytes read per step) / the
streaming bandwidth measured in the same run, divided by the measured step time.

The batch-1 fast path is timed too (mlx-lm's ``generate_step`` at 2K context, bf16), and with
``--baseline-model-file`` against another copy of the SambaY model file (say, the one before
batch masking) on the same weights, so a slowdown of batch-1 decoding shows as a ratio.

    python benchmarks/bench_batch.py --out batch.json                   # the full table (GPU)
    python benchmarks/bench_batch.py --quick                            # tiny sizes, any device
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from bench_mlx import (
    cache_bytes_per_token,
    measure_bandwidth,
    nbytes,
    ours_model,
    phi3_model,
    quantize,
    to_bf16,
)
from mlx.utils import tree_flatten
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

MARGIN_GB = 4.0  # activations, logits, compiled graphs, allocator slack


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


def layer_caches(model):
    """(layer, cache class) for every cache a row of `model` holds."""
    if hasattr(model, "make_cache"):  # SambaY (this model file or a baseline copy)
        return [(layer, type(c)) for layer, c in zip(model.layers, model.make_cache())]
    return [(layer, KVCache) for layer in model.layers]


def kv_shape(layer):
    if hasattr(layer, "self_attn"):  # phi3
        return layer.self_attn.n_kv_heads, layer.self_attn.head_dim
    return layer.attn.n_kv // 2, 2 * layer.attn.head_dim  # SambaY pairs heads


def row_bytes(model, ctx: int) -> tuple[int, int]:
    """(bytes one row's cache holds at `ctx`, bytes BatchKVCache copies when it grows)."""
    held = grow = 0
    for layer, cls in layer_caches(model):
        if cls is ArraysCache:
            m = layer.attn
            held += m.d_inner * m.d_state * 4 + (m.d_conv - 1) * m.d_inner * 2
            continue
        h, d = kv_shape(layer)
        n = min(ctx, layer.attn.window) if cls is RotatingKVCache else ctx
        held += 2 * h * n * d * 2
        if cls is KVCache:
            grow += 2 * h * n * d * 2
    return held, grow


def row_cache(model, ctx: int, dtype=mx.bfloat16):
    """One row's caches as if `ctx` tokens had been processed (random contents)."""
    out = []
    for layer, cls in layer_caches(model):
        if cls is ArraysCache:
            m = layer.attn
            c = ArraysCache(size=2)
            c[0] = mx.random.normal((1, m.d_conv - 1, m.d_inner)).astype(dtype)
            c[1] = mx.random.normal((1, m.d_inner, m.d_state)) * 0.1
        else:
            h, d = kv_shape(layer)
            if cls is RotatingKVCache:
                c = RotatingKVCache(max_size=layer.attn.window)
                n = min(ctx, c.max_size)
                k = mx.random.normal((1, h, n, d)).astype(dtype)
                c.update_and_fetch(k, k)
                c.offset = ctx
            else:
                c = KVCache()
                c.keys = mx.random.normal((1, h, ctx, d)).astype(dtype)
                c.values = mx.random.normal((1, h, ctx, d)).astype(dtype)
                c.offset = ctx
        out.append(c)
    mx.eval([c.state for c in out])
    return out


def row_view(row, n: int):
    """`row` cut to its first `n` tokens (views: no new K/V arrays)."""
    out = []
    for c in row:
        if isinstance(c, KVCache):
            v = KVCache()
            v.keys, v.values, v.offset = c.keys[..., :n, :], c.values[..., :n, :], n
        elif isinstance(c, RotatingKVCache):
            v = RotatingKVCache(max_size=c.max_size)
            v.keys, v.values, v.offset, v._idx = c.keys, c.values, n, c._idx
        else:
            v = c
        out.append(v)
    return out


def largest_batch(model, ctx: int, mem_gb: float, cap: int) -> int:
    """Rows that fit: BatchGenerator holds each row's cache twice for a moment (it deep-copies
    the merged batch when prompt processing hands it to generation, and BatchKVCache grows by
    concatenation), beside the one random row that all rows share until the merge."""
    held, grow = row_bytes(model, ctx)
    free = mem_gb * 1e9 - nbytes(model) - MARGIN_GB * 1e9 - held
    return max(1, min(cap, int(free // (held + max(held, grow)))))


def batch_decode(model, ctx, batch, steps, warmup, vocab, ragged=False) -> dict:
    """tok/s of `batch` rows at `ctx` through BatchGenerator, rows handed in as caches.

    `ragged`: row i holds ctx - i * ctx // (8 * batch) tokens, so every row has its own left
    padding in the merged batch (the mean context is ~6% below ctx)."""
    row = row_cache(model, ctx)
    lengths = [ctx - (i * ctx // (8 * batch) if ragged else 0) for i in range(batch)]
    gen = BatchGenerator(
        model,
        sampler=greedy,
        completion_batch_size=batch,
        prefill_batch_size=batch,
        max_tokens=warmup + steps + 8,
    )
    prompts = [[int(t)] for t in mx.random.randint(0, vocab, (batch,)).tolist()]
    uids = gen.insert(prompts, caches=[row_view(row, n) for n in lengths])
    del row
    n = 0
    for _ in range(warmup + 4):  # merge, first step, compiling, the cache's first growth
        _, responses = gen.next()
        n += bool(responses)
        if n == warmup:
            break
    mx.synchronize()
    t = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        _, responses = gen.next()
        tokens += len(responses)
    mx.synchronize()
    dt = time.perf_counter() - t
    assert tokens == batch * steps, (tokens, batch, steps)
    gen.remove(uids)
    gen.close()
    del gen
    gc.collect()
    mx.clear_cache()
    return {"tok_s": tokens / dt, "step_ms": 1e3 * dt / steps, "mean_ctx": sum(lengths) / batch}


def solo_decode(model, ctx: int, n: int) -> float:
    """Batch-1 decode tok/s through generate_step (plain caches: the fast path)."""
    cache = row_cache(model, ctx)
    times = []
    for _ in generate_step(mx.array([1]), model, max_tokens=n, prompt_cache=cache):
        times.append(time.perf_counter())
    skip = min(5, len(times) // 4)
    del cache
    mx.clear_cache()
    return (len(times) - 1 - skip) / (times[-1] - times[skip])


def load_model_class(path: str):
    spec = importlib.util.spec_from_file_location("baseline_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batch1_check(model, args) -> dict:
    """Batch-1 decode of this model file, and of --baseline-model-file on the same weights."""
    out = {"ctx": 2048, "tok_s": []}
    other = None
    if args.baseline_model_file:
        mod = load_model_class(args.baseline_model_file)
        other = mod.Model(mod.ModelArgs.from_dict(vars(model.args)))
        other.load_weights(tree_flatten(model.parameters()))
        other.eval()
        out["baseline_tok_s"] = []
    for _ in range(args.solo_reps):  # alternate, so drift hits both alike
        out["tok_s"].append(solo_decode(model, 2048, args.solo_tokens))
        if other is not None:
            out["baseline_tok_s"].append(solo_decode(other, 2048, args.solo_tokens))
    out["best_tok_s"] = max(out["tok_s"])
    if other is not None:
        out["baseline_best_tok_s"] = max(out["baseline_tok_s"])
        out["ratio_vs_baseline"] = out["best_tok_s"] / out["baseline_best_tok_s"]
    return out


def bench(name, build, quant, args, vocab, bw, results, save):
    model = build(args.quick)
    to_bf16(model)
    if quant == "4bit":
        quantize(model, 4)
    model.eval()
    gc.collect()
    mx.clear_cache()
    wbytes = nbytes(model)
    if name == "sambay" and quant == "bf16" and args.solo_tokens:
        results["batch1"] = batch1_check(model, args)
        print("batch-1", json.dumps(results["batch1"]), flush=True)
        save()
    points = [(ctx, False) for ctx in args.contexts]
    if name == "sambay" and quant in args.ragged:
        points += [(ctx, True) for ctx in args.contexts]
    for ctx, ragged in points:
        batch = largest_batch(model, ctx, args.mem_gb, args.max_batch)
        mx.reset_peak_memory()
        r = batch_decode(model, ctx, batch, args.steps, args.warmup, vocab, ragged)
        step_bytes = wbytes + batch * cache_bytes_per_token(model, round(r["mean_ctx"]))
        row = {
            "model": name + (" ragged" if ragged else ""),
            "quant": quant,
            "ctx": ctx,
            "batch": batch,
            "weight_GB": wbytes / 1e9,
            "row_cache_MB": row_bytes(model, ctx)[0] / 1e6,
            **r,
            "floor_share": step_bytes / (bw * 1e9) / (r["step_ms"] / 1e3),
            "floor_tok_s": batch * bw * 1e9 / step_bytes,
            "peak_memory_GB": mx.get_peak_memory() / 1e9,
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        save()
    del model
    gc.collect()
    mx.clear_cache()


def table(rows) -> str:
    head = ["model", "quant", "context", "batch", "tok/s", "step ms", "floor share", "peak GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["model"], r["quant"], str(r["ctx"]), str(r["batch"]), f"{r['tok_s']:.0f}"]
        vals += [f"{r['step_ms']:.1f}", f"{r['floor_share']:.0%}", f"{r['peak_memory_GB']:.1f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ratios(rows) -> list[str]:
    by = {(r["model"], r["quant"], r["ctx"]): r for r in rows}
    out = []
    for (m, q, c), r in sorted(by.items()):
        p = by.get(("phi3", q, c))
        if m == "sambay" and p:
            out.append(
                f"sambay/phi3 {q} @{c}: {r['tok_s'] / p['tok_s']:.2f}x measured "
                f"(batch {r['batch']} vs {p['batch']}), "
                f"{r['floor_tok_s'] / p['floor_tok_s']:.2f}x at the bandwidth floor"
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, any device")
    p.add_argument("--quants", default="bf16,4bit", help="comma list: bf16,4bit")
    p.add_argument("--models", default="sambay,phi3")
    p.add_argument("--contexts", default="2048,16384,32768")
    p.add_argument("--max-batch", type=int, default=96, help="cap on the batch (default 96)")
    p.add_argument("--steps", type=int, default=24, help="timed decode steps per point")
    p.add_argument("--warmup", type=int, default=4, help="untimed decode steps per point")
    p.add_argument(
        "--ragged", default="bf16", help="quants whose SambaY points also run ragged rows"
    )
    p.add_argument("--solo-tokens", type=int, default=64, help="batch-1 decode tokens (0: skip)")
    p.add_argument("--solo-reps", type=int, default=3, help="batch-1 repetitions")
    p.add_argument("--baseline-model-file", default=None, help="SambaY model file to compare")
    p.add_argument("--mem-gb", type=float, default=None, help="device memory (default: MLX's)")
    p.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = p.parse_args(argv)
    args.contexts = [int(x) for x in args.contexts.split(",")]
    args.ragged = [q for q in args.ragged.split(",") if q]
    info = {"mlx": mx.__version__, "device": str(mx.default_device())}
    dev = mx.device_info()
    info["device_info"] = {k: v for k, v in dev.items() if isinstance(v, (int, float, str))}
    if args.mem_gb is None:
        if "memory_size" not in dev:
            p.error("MLX reports no device memory size: pass --mem-gb")
        args.mem_gb = 0.9 * dev["memory_size"] / 1e9
    if args.quick:
        args.contexts = [max(64, c // 32) for c in args.contexts]
        args.max_batch = min(args.max_batch, 8)
    info["mem_gb_budget"] = args.mem_gb
    vocab = _common.QUICK_VOCAB if args.quick else 200064
    bw = measure_bandwidth()
    info["stream_bandwidth_GB_s"] = bw
    print(json.dumps(info), flush=True)
    results = {"info": info, "args": vars(args), "rows": []}

    def save():
        if args.out:
            tmp = Path(args.out + ".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(args.out)

    builders = {"sambay": ours_model, "phi3": phi3_model}
    for q in args.quants.split(","):
        for name in args.models.split(","):
            bench(name, builders[name], q, args, vocab, bw, results, save)
    results["ratios"] = ratios(results["rows"])
    save()
    print()
    print(table(results["rows"]))
    for line in results["ratios"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
