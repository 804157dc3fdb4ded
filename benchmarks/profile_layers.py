"""Per-layer-kind timing of one prefill chunk (after 2048 cached tokens) and one decode step;
with ``--kernels``, the primitives of one whole decode step and the host time to build it.

python benchmarks/profile_layers.py [--tokens 2048] [--quick]
python benchmarks/profile_layers.py --kernels [--ctx 64] [--quant 4bit]

``--kernels`` builds SambaY and mlx-lm's phi3 at Phi-4-mini's layer counts (the quick widths:
a graph's primitives do not depend on width, except that a fused kernel may take only some
head sizes: on MLX-CUDA phi3's quick head size of 32 attended unfused; its real 96 was not
counted), with ``--quant`` its weights as ``bench_mlx.py`` prepares them, fills their caches,
runs one decode token
(logits and every updated cache array, unevaluated) and counts the nodes of that graph as
``mx.export_to_dot`` writes it: SambaY with its compiled decode steps and with the uncompiled
path, phi3 as mlx-lm runs it. "kernels" leaves out the primitives that only make a view
(reshape, transpose, slice, broadcast, ...). The counts are of the graph MLX evaluates on the
device it runs on: on CPU, attention is MLX's decomposed fallback (a few primitives where a GPU
runs one fused kernel). "build ms" is the host time to build that token's graph (Python and
the replay of the compiled functions' tapes; nothing is evaluated), the median of 200 tokens:
work the CPU does for every token whatever device then runs the kernels. A last table counts
the pieces the GPU kernels replace (the Mamba step) or may replace next (an attention layer's
query pairing and combine); on a CPU the combine's RMS norm is a few primitives, one on a GPU.
"""

import argparse
import collections
import json
import os
import re
import statistics
import tempfile
import time

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from _common import mlx_timed, paths_off, real_config
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

from phiflash_mlx import model as model_mod
from phiflash_mlx.model import DecoderLayer, ModelArgs


def ms(fn) -> float:
    return mlx_timed(fn) * 1e3


VIEWS = {
    "Broadcast",
    "ExpandDims",
    "Squeeze",
    "Reshape",
    "Transpose",
    "Slice",
    "AsStrided",
    "Flatten",
    "Unflatten",
}


def graph_primitives(outputs) -> collections.Counter:
    """Primitive nodes of the unevaluated graph behind ``outputs`` (by name)."""
    fd, path = tempfile.mkstemp(suffix=".dot")
    os.close(fd)
    try:
        mx.export_to_dot(path, *outputs)
        text = open(path).read()
    finally:
        os.unlink(path)
    return collections.Counter(re.findall(r'label ="([^"]+)", shape=rectangle', text))


def cache_arrays(cache) -> list:
    out = []
    for c in cache:
        if isinstance(c, ArraysCache):
            out += [a for a in c.cache if a is not None]
        else:
            out += [c.keys, c.values]
    return out


def count_decode(model, ctx: int) -> dict:
    from bench_mlx import filled_cache

    cache = filled_cache(model, ctx, mx.float32)
    tok = mx.array([[1]])
    for _ in range(2):  # the first traces the compiled functions, the second settles caches
        mx.eval(model(tok, cache=cache))  # of per-weights values (DiffLambda.full)
        mx.eval(cache_arrays(cache))
    logits = model(tok, cache=cache)
    prims = graph_primitives([logits] + cache_arrays(cache))
    kernels = sum(n for name, n in prims.items() if name not in VIEWS)
    mx.eval(logits, cache_arrays(cache))
    build = []
    for _ in range(200):
        t = time.perf_counter()
        logits = model(tok, cache=cache)
        build.append(time.perf_counter() - t)
        mx.eval(logits, cache_arrays(cache))
    return {
        "primitives": sum(prims.values()),
        "kernels": kernels,
        "build_ms": statistics.median(build) * 1e3,
        "by_name": dict(prims),
    }


def count_pieces(model) -> dict:
    """Primitives of the decode-step pieces that GPU kernels replace or may replace: one Mamba
    step through the compiled functions (``step_compiled``; the step kernels keep its x_proj,
    dt_proj with its weight transpose, and one slice), and one attention layer's query pairing
    and differential combine."""
    mb = next(x.attn for x in model.layers if x.kind == "mamba")
    at = next(x.attn for x in model.layers if x.kind == "swa")
    dtype = mb.conv1d.weight.dtype
    d, n, k = mb.d_inner, mb.d_state, mb.d_conv
    xz, conv = mx.zeros((1, 1, 2 * d), dtype), mx.zeros((1, k - 1, d), dtype)
    state = mx.zeros((1, d, n))
    w, bias = mb.conv1d.weight, mb.conv1d.bias_or_zeros(dtype)
    hd, m, g = at.head_dim, at.n_kv // 2, at.n_heads // at.n_kv
    q, o = mx.zeros((1, 1, at.n_heads * hd), dtype), mx.zeros((1, m * 2 * g, 1, 2 * hd), dtype)
    ica, lam = at.inner_cross_attn, mx.array(0.5)
    mx.eval(xz, conv, state, bias, q, o, lam)  # inputs, not part of the counted graphs
    pieces = {
        "Mamba step (compiled functions)": lambda: model_mod.step_compiled(
            xz, conv, w, bias, mb.x_proj, mb.dt_proj, mb.A_log, mb.D, state
        ),
        "attention: pair queries": lambda: [model_mod._pair_queries(q, m, g, hd)],
        "attention: combine": lambda: [
            model_mod._combine(o, lam, ica.subln.weight, 0.5, ica.subln.eps, m, g)
        ],
    }
    out = {}
    for name, piece in pieces.items():
        fn = mx.compile(piece)
        mx.eval(fn())  # traced and compiled
        out[name] = graph_primitives(list(fn()))
    return out


def count_kernels(ctx: int, quant: str) -> None:
    from bench_mlx import ours_model, phi3_model, prepare

    def build(make):
        model = make(True)
        if quant != "none":
            prepare(model, quant)
        model.eval()
        return model

    rows = {}
    ours = build(ours_model)
    for label, on in (("sambay uncompiled", False), ("sambay compiled per layer", True)):
        ours.set_compiled_decode(on)
        with paths_off(model_mod, "WHOLE_STEP_DECODE"):
            rows[label] = count_decode(ours, ctx)
    rows["sambay whole-step (default)"] = count_decode(ours, ctx)
    rows["phi3 (mlx-lm)"] = count_decode(build(phi3_model), ctx)
    print(
        f"one decode token at context {ctx}, weights {quant}, device {mx.default_device()}, "
        f"MLX {mx.__version__}"
    )
    print("| model | primitives | kernels (no views) | build ms |\n|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['primitives']} | {r['kernels']} | {r['build_ms']:.2f} |")
    for label, r in rows.items():
        top = sorted(r["by_name"].items(), key=lambda kv: -kv[1])
        print(label, json.dumps(dict(top)))
    print("\n| piece (SambaY) | primitives | kernels (no views) |\n|---|---|---|")
    for label, prims in count_pieces(ours).items():
        kernels = sum(c for name, c in prims.items() if name not in VIEWS)
        print(f"| {label} | {sum(prims.values())} | {kernels} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--kernels", action="store_true", help="count one decode step's primitives")
    p.add_argument("--ctx", type=int, default=64, help="context for --kernels")
    p.add_argument(
        "--quant",
        default="none",
        choices=("none", "bf16", "8bit", "4bit"),
        help="--kernels: weights as bench_mlx.py prepares them (none: float32 as built)",
    )
    a = p.parse_args()
    if a.kernels:
        count_kernels(a.ctx, a.quant)
        return
    args = ModelArgs.from_dict(real_config(a.quick))
    T, H = a.tokens, args.hidden_size
    bf = mx.bfloat16
    x = mx.random.normal((1, T, H))
    x1 = mx.random.normal((1, 1, H))
    rows = {}
    for idx in (0, 1, 16, 17, 18, 19):
        layer = DecoderLayer(args, idx)
        layer.set_dtype(bf)
        layer.eval()
        mx.eval(layer.parameters())
        kind = layer.kind
        d = args.mamba_expand * H
        memory = mx.random.normal((1, T, d)).astype(bf)
        m1 = memory[:, :1]
        kv = mx.random.normal((1, args.num_key_value_heads // 2, T + 2048, 2 * args.head_dim))
        kv = (kv.astype(bf), kv.astype(bf))
        kv1 = (kv[0][:, :, : T + 1], kv[1][:, :, : T + 1])

        def make_cache(kind=kind, layer=layer):
            if kind in ("mamba", "mamba_mem"):
                return ArraysCache(2)
            if kind == "swa":
                c = RotatingKVCache(max_size=layer.attn.window)
            elif kind == "attn":
                c = KVCache()
            else:
                return None
            k = mx.random.normal((1, args.num_key_value_heads // 2, 2048, 2 * args.head_dim))
            c.update_and_fetch(k.astype(bf), k.astype(bf))
            return c

        def prefill(layer=layer, make_cache=make_cache, memory=memory, kv=kv):
            return layer(x, make_cache(), memory, kv)[0]

        c1 = make_cache()

        def step(layer=layer, c1=c1, m1=m1, kv1=kv1):
            return layer(x1, c1, m1, kv1)[0]

        rows[f"{idx}:{kind}"] = {"prefill_ms": ms(prefill), "step_ms": ms(step)}
        print(idx, kind, json.dumps(rows[f"{idx}:{kind}"]), flush=True)
    est = (
        8 * rows["0:mamba"]["prefill_ms"]
        + 8 * rows["1:swa"]["prefill_ms"]
        + rows["16:mamba_mem"]["prefill_ms"]
        + rows["17:attn"]["prefill_ms"]
    )
    print(f"self-decoder prefill estimate for {T} tokens: {est:.1f} ms = {T / est * 1e3:.0f} tok/s")


if __name__ == "__main__":
    main()
