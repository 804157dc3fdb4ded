"""Where a decode token's time goes: SambaY's decode with one layer kind left out at a time,
against mlx-lm's phi3 with all its layers and with none, in one run.

    python benchmarks/profile_decode.py [--quant 4bit] [--ctx 1024] [--quick]
    python benchmarks/profile_decode.py --prefill 2048 --quant bf16   # a T-token prompt instead

Both models are built as ``bench_mlx.py`` builds them (full size, random weights, the same
quantization) and decode with mlx-lm's ``generate_step`` after a cache filled to ``--ctx``. A
left-out layer passes the residual stream through unchanged (its cache is kept but never read),
so "full - without kind" is what that kind's layers cost per token, and divided by their count,
per layer (full: decode compiled per layer, as the left-out variants run; the first row is the
default whole-step decode). "none" leaves every layer out: embedding, final norm and LM head
only. The layers that feed others (the cross-decoder's Mamba, whose output GMUs gate, and the
global attention, whose K/V the cross layers read) are never left out. Rows are the best of
``--repeat`` runs: decode speed on a GPU moves between runs. With ``--prefill T`` the same
variants time a T-token prompt as ``bench_mlx.py`` does (ms per prompt; a prompt chunk's cross-
decoder never runs, so only the self-decoder's kinds are left out), and each model's first
prompt chunk split into building its graph in Python and evaluating it, with MLX's buffer cache
emptied after each prompt (as mlx-lm's prefill does) and kept (on a CPU the prompt scan runs in
numpy, which evaluates what comes before it while the graph is built). Decode ends with each
model's tokens split the same way, pipelined as ``generate_step`` runs them: building token
t+1's graph in Python, handing it to MLX (``async_eval``, which encodes its kernels), then
waiting for token t. A wait near zero means the device finished token t before the host had
token t+1 ready: decode is bound by the host's per-token work.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from _common import paths_off
from bench_mlx import decode_tps, filled_cache, ours_model, phi3_model, prefill_tps, prepare
from mlx_lm.models import phi3
from mlx_lm.models.cache import make_prompt_cache

from phiflash_mlx import model as model_mod

LEAVE_OUT = ("mamba", "swa", "gmu", "cross")
# --prefill: the model file's switches back to a former prompt path (label -> flags set False)
FORMER_PROMPT_PATHS = {
    "scan sequential in time": ("SCAN_TIME_CHUNKS",),
    "whole window mask": ("BANDED_WINDOW_PREFILL",),
    "both former paths": ("SCAN_TIME_CHUNKS", "BANDED_WINDOW_PREFILL"),
}


class Skipped:
    """Stands in for a left-out layer: the residual stream passes unchanged; everything else
    (kind, attention shapes for building and filling the cache) is the layer's own."""

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def __call__(self, h, *args):  # as each model calls its layers: positional arguments
        if isinstance(self._layer, phi3.TransformerBlock):
            return h  # phi3: layer(h, mask, cache)
        _, memory, shared_kv, hn, _ = args  # SambaY: layer(h, cache, memory, shared_kv, hn, mask)
        return h, memory, shared_kv, hn


def build(name: str, quant: str, quick: bool):
    model = (ours_model if name == "sambay" else phi3_model)(quick)
    prepare(model, quant)
    return model


def ms_per_token(model, ctx: int, n: int, repeat: int) -> float:
    return 1e3 / max(decode_tps(model, ctx, n, mx.bfloat16) for _ in range(repeat))


def ms_per_prompt(model, T: int, repeat: int) -> float:
    vocab = model.args.vocab_size
    return min(T / prefill_tps(model, T, vocab) for _ in range(repeat)) * 1e3


def best_of(repeat: int, run) -> dict:
    """The run (a dict of ms) with the smallest total "ms" of ``repeat``."""
    return min((run() for _ in range(repeat)), key=lambda r: r["ms"])


def prompt_split(model, T: int, clear: bool) -> dict:
    """A T-token prompt as prefill_tps runs it (one chunk of T - 1 tokens, then the last
    token's logits), timed in pieces: the chunk's graph build (Python) and its evaluation,
    then the last token. ``clear``: empty MLX's buffer cache after the prompt, as mlx-lm's
    prefill does after each chunk."""
    toks = mx.random.randint(0, model.args.vocab_size, (1, T))
    cache = make_prompt_cache(model)
    mx.eval(toks)
    mx.synchronize()
    t0 = time.perf_counter()
    model(toks[:, : T - 1], cache=cache)
    states = [c.state for c in cache]
    t1 = time.perf_counter()
    mx.eval(states)
    mx.synchronize()
    t2 = time.perf_counter()
    mx.eval(model(toks[:, T - 1 :], cache=cache)[:, -1])
    mx.synchronize()
    t3 = time.perf_counter()
    del cache, states
    if clear:
        mx.clear_cache()
    ms = [round((b - a) * 1e3, 3) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t0, t3))]
    return dict(zip(("chunk_build_ms", "chunk_eval_ms", "last_token_ms", "ms"), ms))


def decode_split(model, ctx: int, n: int) -> dict:
    """n greedy tokens at context ``ctx`` as generate_step pipelines them: build token t+1's
    graph, async_eval it, then wait for token t. Mean ms per token of each part."""
    cache = filled_cache(model, ctx, mx.bfloat16)

    def step(y, cache=cache):
        return mx.argmax(model(y, cache=cache)[:, -1], axis=-1)[:, None]

    nxt = step(mx.array([[1]]))
    mx.async_eval(nxt)
    parts = [0.0, 0.0, 0.0]
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        cur, nxt = nxt, step(nxt)
        t1 = time.perf_counter()
        mx.async_eval(nxt)
        t2 = time.perf_counter()
        cur.item()
        t3 = time.perf_counter()
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3))):
            parts[i] += b - a
    total = time.perf_counter() - start
    mx.eval(nxt)
    del cache
    mx.clear_cache()
    ms = [round(x / n * 1e3, 3) for x in (*parts, total)]
    return dict(zip(("build_ms", "async_eval_ms", "wait_ms", "ms"), ms))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quant", default="4bit", choices=("bf16", "8bit", "4bit"))
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small widths, any device")
    p.add_argument("--prefill", type=int, default=0, help="time a T-token prompt instead")
    a = p.parse_args(argv)
    print(json.dumps({"mlx": mx.__version__, "device": str(mx.default_device()), **vars(a)}))

    rows = []

    def row(label: str, ms: float, n_layers: int | None = None, full: float | None = None):
        r = {"variant": label, "ms": round(ms, 3)}
        if full is not None and n_layers:
            r["kind_ms"] = round(full - ms, 3)
            r["per_layer_ms"] = round((full - ms) / n_layers, 4)
        rows.append(r)
        print(json.dumps(r), flush=True)

    split_rows = []

    def split(name: str, model) -> None:  # the first chunk's (a token's) build and evaluation
        if not a.prefill:
            r = {"variant": name} | best_of(
                a.repeat, lambda: decode_split(model, a.ctx, a.gen_tokens)
            )
            split_rows.append(r)
            print(json.dumps(r), flush=True)
            return
        for clear in (True, False):
            kept = "emptied" if clear else "kept"
            r = {"variant": f"{name}, buffer cache {kept}"}
            r |= best_of(a.repeat, lambda c=clear: prompt_split(model, a.prefill, c))
            split_rows.append(r)
            print(json.dumps(r), flush=True)

    def measure(model) -> float:
        if a.prefill:
            return ms_per_prompt(model, a.prefill, a.repeat)
        return ms_per_token(model, a.ctx, a.gen_tokens, a.repeat)

    def warm_up(model) -> None:  # traces the compiled steps, compiles every chunk shape
        if a.prefill:
            prefill_tps(model, a.prefill, model.args.vocab_size)
        else:
            decode_tps(model, 256, 16, mx.bfloat16)

    ours = build("sambay", a.quant, a.quick)
    layers = list(ours.model.layers)
    warm_up(ours)
    full = measure(ours)
    row("sambay", full)
    split("sambay", ours)
    # Left-out layers are not DecoderLayers, so decode runs per layer: compare like with like.
    with paths_off(model_mod, "WHOLE_STEP_DECODE"):
        if not a.prefill:
            full = measure(ours)
            row("sambay, decode compiled per layer", full)
            split("sambay, decode compiled per layer", ours)
        for kind in LEAVE_OUT[:2] if a.prefill else LEAVE_OUT:
            picked = [i for i, layer in enumerate(layers) if layer.kind == kind]
            ours.model.layers = [Skipped(x) if i in picked else x for i, x in enumerate(layers)]
            row(f"sambay without {kind} ({len(picked)})", measure(ours), len(picked), full)
        keep = {"mamba_mem", "attn"}  # they feed the cross-decoder
        ours.model.layers = [x if x.kind in keep else Skipped(x) for x in layers]
        row("sambay, only mamba_mem + attn", measure(ours))
        ours.model.layers = layers
    if a.prefill:  # the former prompt paths, one at a time and together
        for label, flags in FORMER_PROMPT_PATHS.items():
            with paths_off(model_mod, *flags):
                warm_up(ours)
                row(f"sambay, {label}", measure(ours))
    del ours
    gc.collect()
    mx.clear_cache()

    phi = build("phi3", a.quant, a.quick)
    warm_up(phi)
    pfull = measure(phi)
    row("phi3", pfull)
    split("phi3", phi)
    players = list(phi.model.layers)
    phi.model.layers = [Skipped(x) for x in players]
    row(f"phi3 without its layers ({len(players)})", measure(phi), len(players), pfull)
    print()
    what = f"{a.prefill}-token prompt" if a.prefill else f"ctx {a.ctx}"
    unit = "ms/prompt" if a.prefill else "ms/token"
    print(f"| variant ({a.quant}, {what}) | {unit} | kind ms | per layer ms |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ms']:.2f} | {r.get('kind_ms', '')} "
            f"| {r.get('per_layer_ms', '')} |"
        )
    if split_rows and not a.prefill:
        print()
        print(f"| decode, ctx {a.ctx} | build ms | async_eval ms | wait ms | ms/token |")
        print("|---|---|---|---|---|")
        for r in split_rows:
            print(
                f"| {r['variant']} | {r['build_ms']:.3f} | {r['async_eval_ms']:.3f} "
                f"| {r['wait_ms']:.3f} | {r['ms']:.3f} |"
            )
    elif split_rows:
        print()
        head = "chunk graph build ms | chunk eval ms | last token ms | ms"
        print(f"| {a.prefill}-token prompt | {head} |")
        print("|---|---|---|---|---|")
        for r in split_rows:
            print(
                f"| {r['variant']} | {r['chunk_build_ms']:.2f} | {r['chunk_eval_ms']:.2f} "
                f"| {r['last_token_ms']:.2f} | {r['ms']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
