"""What each piece of a one-token decode step costs: SambaY's Mamba, sliding-window and cross
layers taken apart, against a phi3 (Phi-4-mini) layer, at full width, 4-bit.

    python benchmarks/profile_mixers.py [--ctx 1024] [--bits 4] [--calls 300] [--quick]
    python benchmarks/profile_mixers.py --prefill 2048 [--bits 16] [--calls 20] [--quick]

``--prefill T`` takes apart a T-token first prompt chunk (no cache) instead: the Mamba,
sliding-window and global-attention layers piece by piece, against a phi3 layer.

Each piece runs ``--calls`` times back to back, every result handed to ``mx.async_eval`` as
mlx-lm's decode loop does, then one synchronize: milliseconds per call with launches
pipelined, as inside a decode step (a piece's inputs are evaluated before, so only its own
kernels run). ``profile_decode.py`` says which layer kinds cost the time; this says which
piece inside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from _common import paths_off, real_config
from bench_mlx import phi3_args, quantize
from mlx_lm.models import phi3
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache

from phiflash_mlx import model as model_mod
from phiflash_mlx.model import (
    DecoderLayer,
    ModelArgs,
    _build_decode_fns,
    _combine,
    _pair_queries,
    attention_mask,
    conv_silu,
    conv_step,
    dt_softplus,
    mamba_step,
    output_gate,
    selective_scan,
    window_band_attention,
)


def per_call_ms(fn, calls: int) -> float:
    mx.eval(fn())
    mx.synchronize()
    t = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
        mx.async_eval(out)
    mx.eval(out)
    mx.synchronize()
    return (time.perf_counter() - t) / calls * 1e3


def prepared(module, bits: int):
    module.set_dtype(mx.bfloat16)
    if bits < 16:
        quantize(module, bits)
    module.eval()
    mx.eval(module.parameters())
    return module


def filled_kv(cache, heads: int, n: int, dim: int):
    k = mx.random.normal((1, heads, n, dim)).astype(mx.bfloat16)
    cache.update_and_fetch(k, k)
    mx.eval(cache.state)
    return cache


def mamba_pieces(args, bits: int) -> dict:
    layer = prepared(DecoderLayer(args, 0), bits)
    mb, fns = layer.attn, _build_decode_fns(layer)
    bf = mx.bfloat16
    h = mx.random.normal((1, 1, args.hidden_size))
    x = layer.input_layernorm(h.astype(bf))
    xb, z = mx.split(mb.in_proj(x), 2, axis=-1)
    conv_state = mx.random.normal((1, mb.d_conv - 1, mb.d_inner)).astype(bf)
    state = mx.random.normal((1, mb.d_inner, mb.d_state)) * 0.1
    conv = mb.conv1d
    u, _ = conv_step(conv_state, xb, conv.weight, conv.bias)
    dbc = mb.x_proj(u)
    r, n = mb.dt_rank, mb.d_state
    dt = mb.dt_proj(dbc[..., :r])
    B, C = dbc[:, 0, r : r + n], dbc[:, 0, r + n :]
    gated, _, _ = mamba_step(u[:, 0], dt[:, 0], mb.A_log, B, C, mb.D, state, z[:, 0])
    mx.eval(h, x, xb, z, u, dbc, dt, gated)
    return {
        "whole layer (compiled step)": lambda: fns["layer"](h, conv_state, state),
        "input norm": lambda: layer.input_layernorm(h.astype(bf)),
        f"in_proj {args.hidden_size}->{2 * mb.d_inner}": lambda: mb.in_proj(x),
        "conv step": lambda: conv_step(conv_state, xb, conv.weight, conv.bias),
        f"x_proj {mb.d_inner}->{r + 2 * n}": lambda: mb.x_proj(u),
        f"dt_proj {r}->{mb.d_inner} ({type(mb.dt_proj).__name__})": lambda: mb.dt_proj(
            dbc[..., :r]
        ),
        "scan step + gate": lambda: mamba_step(
            u[:, 0], dt[:, 0], mb.A_log, B, C, mb.D, state, z[:, 0]
        ),
        f"out_proj {mb.d_inner}->{args.hidden_size}": lambda: mb.out_proj(gated[:, None]),
        "MLP": lambda: layer.mlp(x),
    }


def attention_pieces(args, idx: int, ctx: int, bits: int) -> dict:
    layer = prepared(DecoderLayer(args, idx), bits)
    attn, fns = layer.attn, _build_decode_fns(layer)
    m, d2 = attn.n_kv // 2, 2 * attn.head_dim
    h = mx.random.normal((1, 1, args.hidden_size))
    if attn.cross:
        keys = values = mx.random.normal((1, m, ctx, d2)).astype(mx.bfloat16)
        q = fns["pre"](h)
        pieces = {"whole layer": lambda: layer(h, None, None, (keys, values), None, None)}
    else:
        cache = filled_kv(RotatingKVCache(max_size=attn.window), m, ctx, d2)
        q, k, v = fns["pre"](h)
        mx.eval(q, k, v)
        keys, values = cache.update_and_fetch(k, v)
        pieces = {
            "whole layer": lambda: layer(h, cache, None, None, None, None),
            "cache update": lambda: cache.update_and_fetch(k, v),
        }
    lam = attn.inner_cross_attn.full(attn.lambda_init)
    o = attn.attend(q, keys, values, None)
    mx.eval(q, keys, values, o, lam)
    kv = f"{keys.shape[2]} keys"
    pieces |= {
        "pre (norm, Wqkv, paired queries)": lambda: fns["pre"](h),
        f"attention ({q.shape[1]} query rows x {kv}, dim {d2})": lambda: attn.attend(
            q, keys, values, None
        ),
        "post (combine, out_proj, MLP)": lambda: fns["post"](h, o, lam),
    }
    return pieces


def phi3_pieces(ctx: int, bits: int, quick: bool) -> dict:
    args = phi3_args(quick)
    layer = prepared(phi3.TransformerBlock(args), bits)
    a = layer.self_attn
    cache = filled_kv(KVCache(), a.n_kv_heads, ctx, a.head_dim)
    h = mx.random.normal((1, 1, args.hidden_size)).astype(mx.bfloat16)
    x = layer.input_layernorm(h)
    mx.eval(h, x)
    return {
        "whole layer": lambda: layer(h, None, cache),
        "attention (norm'd input, cache update, RoPE, attention, o_proj)": lambda: a(
            x, None, cache
        ),
        "MLP": lambda: layer.mlp(x),
    }


def residual_mlp(layer, h, o):
    """What a prompt layer does after its mixer: residual, post norm, MLP, residual."""
    norm = layer.post_attention_layernorm
    h = h + o
    return h + layer.mlp(norm(h.astype(norm.weight.dtype)))


def sequential_scan(*args):
    """The CUDA prompt scan in one pass sequential in time (no time chunks)."""
    with paths_off(model_mod, "SCAN_TIME_CHUNKS"):
        return selective_scan(*args)


def mamba_prefill_pieces(args, bits: int, T: int) -> dict:
    layer = prepared(DecoderLayer(args, 0), bits)
    mb, bf, f32 = layer.attn, mx.bfloat16, mx.float32
    r, n, d = mb.dt_rank, mb.d_state, mb.d_inner
    h = mx.random.normal((1, T, args.hidden_size))  # the float32 residual stream
    x = layer.input_layernorm(h.astype(bf))
    xb, z = mx.split(mb.in_proj(x), 2, axis=-1)
    xpad = mx.concatenate([mx.zeros((1, mb.d_conv - 1, d), bf), xb], axis=1)
    u, uf = conv_silu(xpad, mb.conv1d.weight, mb.conv1d.bias_or_zeros(bf))
    dbc = mb.x_proj(u)
    dt = dt_softplus(mb.dt_proj(dbc[..., :r]))
    B, C = dbc[..., r : r + n].astype(f32), dbc[..., r + n :].astype(f32)
    A = -mx.exp(mb.A_log.astype(f32))
    state = mx.zeros((1, d, n), f32)
    D = mb.D.astype(f32)
    y, _ = selective_scan(uf, dt, A, B, C, D, state)
    o = mb.out_proj(output_gate(y, z))
    mx.eval(h, x, xb, z, xpad, u, dbc, dt, B, C, A, uf, D, y, o)
    return {
        "whole layer": lambda: layer(h, None, None, None, None, "auto"),
        "input norm (with the cast)": lambda: layer.input_layernorm(h.astype(bf)),
        f"in_proj {args.hidden_size}->{2 * d}": lambda: mb.in_proj(x),
        "conv + silu": lambda: conv_silu(xpad, mb.conv1d.weight, mb.conv1d.bias_or_zeros(bf)),
        f"x_proj {d}->{r + 2 * n}": lambda: mb.x_proj(u),
        "dt_proj + softplus": lambda: dt_softplus(mb.dt_proj(dbc[..., :r])),
        "scan (kernel)": lambda: selective_scan(uf, dt, A, B, C, D, state),
        "scan (kernel, sequential in time)": lambda: sequential_scan(uf, dt, A, B, C, D, state),
        "gate + out_proj": lambda: mb.out_proj(output_gate(y, z)),
        "residual, post norm, MLP, residual": lambda: residual_mlp(layer, h, o),
        "MLP": lambda: layer.mlp(x),
    }


def attention_prefill_pieces(args, idx: int, bits: int, T: int) -> dict:
    layer = prepared(DecoderLayer(args, idx), bits)
    attn, bf = layer.attn, mx.bfloat16
    hd, m, g = attn.head_dim, attn.n_kv // 2, attn.n_heads // attn.n_kv
    h = mx.random.normal((1, T, args.hidden_size))
    x = layer.input_layernorm(h.astype(bf))
    qkv = attn.Wqkv(x)
    q, k, v = mx.split(qkv, [attn.n_heads * hd, (attn.n_heads + attn.n_kv) * hd], -1)
    keys = k.reshape(1, T, m, 2 * hd).transpose(0, 2, 1, 3)
    values = v.reshape(1, T, m, 2 * hd).transpose(0, 2, 1, 3)
    mask = attention_mask(None, T, attn.window)
    qp = _pair_queries(q, m, g, hd)
    o = attn.attend(qp, keys, values, mask)
    ica = attn.inner_cross_attn
    lam = ica.full(attn.lambda_init)
    oc = _combine(o, lam, ica.subln.weight, attn.lambda_init, ica.subln.eps, m, g)
    mx.eval(h, x, q, k, v, keys, values, qp, o, lam, oc)
    kind = "mask array" if isinstance(mask, mx.array) else repr(mask)
    W, sc = attn.window, attn.scale
    variants = {}
    if W:  # the windowed prompt's other ways: whole mask, array bands (batch caches), blocks
        whole = create_causal_mask(T, 0, window_size=W)
        mx.eval(whole)
        variants = {
            "attention, whole window mask": lambda: mx.fast.scaled_dot_product_attention(
                qp, keys, values, scale=sc, mask=whole
            ),
            "attention, bands cut from the mask array": lambda: attn.attend(
                qp, keys, values, whole
            ),
        } | {
            f"attention, bands of {blk} queries": lambda blk=blk: window_band_attention(
                qp, keys, values, W, sc, blk
            )
            for blk in (64, 128, 256, 512)
        }
    return variants | {
        "whole layer": lambda: layer(h, None, None, None, None, "auto"),
        f"Wqkv {args.hidden_size}->{qkv.shape[-1]}": lambda: attn.Wqkv(x),
        "mask": lambda: attention_mask(None, T, attn.window),
        "paired queries": lambda: _pair_queries(q, m, g, hd),
        f"attention ({qp.shape[1]} query rows, dim {2 * hd}, {kind})": lambda: attn.attend(
            qp, keys, values, mask
        ),
        "combine + sub-norm": lambda: _combine(
            o, lam, ica.subln.weight, attn.lambda_init, ica.subln.eps, m, g
        ),
        "out_proj": lambda: attn.out_proj(oc),
        "MLP": lambda: layer.mlp(x),
    }


def phi3_prefill_pieces(bits: int, T: int, quick: bool) -> dict:
    args = phi3_args(quick)
    layer = prepared(phi3.TransformerBlock(args), bits)
    h = mx.random.normal((1, T, args.hidden_size)).astype(mx.bfloat16)
    x = layer.input_layernorm(h)
    mx.eval(h, x)
    return {
        "whole layer": lambda: layer(h, "causal", None),
        "attention (norm'd input, RoPE, attention, o_proj)": lambda: layer.self_attn(
            x, "causal", None
        ),
        "MLP": lambda: layer.mlp(x),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--bits", type=int, default=4, choices=(4, 8, 16))
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="small widths, any device")
    p.add_argument("--prefill", type=int, default=0, help="take apart a T-token prompt chunk")
    a = p.parse_args(argv)
    print(json.dumps({"mlx": mx.__version__, "device": str(mx.default_device()), **vars(a)}))
    args = ModelArgs.from_dict(real_config(a.quick))
    if a.prefill:
        T = a.prefill
        what = f"{T}-token prompt chunk"
        groups = {
            "SambaY Mamba layer": mamba_prefill_pieces(args, a.bits, T),
            "SambaY sliding-window layer": attention_prefill_pieces(args, 1, a.bits, T),
            "SambaY global-attention layer": attention_prefill_pieces(args, 17, a.bits, T),
            "phi3 layer": phi3_prefill_pieces(a.bits, T, a.quick),
        }
    else:
        what = f"ctx {a.ctx}"
        groups = {
            "SambaY Mamba layer": mamba_pieces(args, a.bits),
            "SambaY sliding-window layer": attention_pieces(args, 1, a.ctx, a.bits),
            "SambaY cross-attention layer": attention_pieces(args, 19, a.ctx, a.bits),
            "phi3 layer": phi3_pieces(a.ctx, a.bits, a.quick),
        }
    print(f"\n| piece ({what}, {a.bits}-bit) | ms per call |\n|---|---|")
    for group, pieces in groups.items():
        for name, fn in pieces.items():
            print(f"| {group}: {name} | {per_call_ms(fn, a.calls):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
