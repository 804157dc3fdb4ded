"""Per-layer-kind timing of one prefill chunk (after 2048 cached tokens) and one decode step.

python benchmarks/profile_layers.py [--tokens 2048] [--quick]
"""

import argparse
import json

import _common  # noqa: F401  (first: the project on the path, OpenBLAS loaded before mlx)
import mlx.core as mx
from _common import mlx_timed, real_config
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

from phiflash_mlx.model import DecoderLayer, ModelArgs


def ms(fn) -> float:
    return mlx_timed(fn) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
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
