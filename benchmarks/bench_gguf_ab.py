"""A/B of two libllama builds on one GGUF: decode steps interleaved round by round.

For a change to the fork's C++ (a kernel, an op): build the change into a second library
directory (the dev loop's ``devbuild/bin``, or any ``LLAMA_CPP_LIB_PATH``-style directory), then
compare it with the installed wheel on the same model and context. Both libraries serve the
model from their own process (``bench_gguf_cpu.py --serve``), fill the same context, then take
one decode step each per round, alternating who goes first; the speedup is the median over
rounds of A's step time / B's step time, so a shared host's slow spells hit both alike. With
``--prompt N`` each round is one N-token prompt into an empty cache instead (no fill).

    python benchmarks/bench_gguf_ab.py /tmp/phiflash-bench/sambay-random-q4_0.gguf \\
        --lib-b .cache/phiflash_gguf/devbuild/bin --ctx 8192 --rounds 24
    python benchmarks/bench_gguf_ab.py MODEL.gguf --lib-b OTHER/lib --prompt 512 --rounds 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_gguf_cpu import Model, interleaved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a SambaY (or any) GGUF")
    ap.add_argument("--lib-a", type=Path, default=None, help="default: the installed wheel's")
    ap.add_argument("--lib-b", type=Path, required=True, help="directory with libllama.so")
    ap.add_argument("--ctx", type=int, default=8192, help="tokens of context before the steps")
    ap.add_argument("--prompt", type=int, default=0, help="time N-token prompts, not steps")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/phiflash-bench"))
    args = ap.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"bench_gguf_ab: no such file: {args.model}")
    if args.lib_a is None:
        from phiflash_gguf.build import ensure_llama_cpp

        args.lib_a = Path(ensure_llama_cpp().__file__).parent / "lib"
    for lib in (args.lib_a, args.lib_b):
        if not (lib / "libllama.so").exists():
            raise SystemExit(f"bench_gguf_ab: no libllama.so in {lib}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    n_ctx = max(args.ctx + args.rounds, args.prompt) + 64
    ab = [
        Model(args.model, n_ctx, args.threads, args.workdir / f"{args.model.stem}-{k}.log", lib=lib)
        for k, lib in (("A", args.lib_a), ("B", args.lib_b))
    ]
    try:
        if args.prompt:
            for m in ab:  # warm-up
                m("prompt", n=args.prompt)
            (a, b), _ = interleaved(ab, args.rounds, "prompt", n=args.prompt)
            a, b = np.asarray(a) / args.prompt, np.asarray(b) / args.prompt  # s per token
        else:
            for k, m in zip("AB", ab):
                print(f"{k}: fill {args.ctx} tokens in {m('fill', n=args.ctx):.0f} s", flush=True)
            (a, b), _ = interleaved(ab, args.rounds, "step")
    finally:
        for m in ab:
            m.close()
    a, b = np.asarray(a), np.asarray(b)
    r = a / b
    print(
        f"{args.model.name} {f'prompt {args.prompt}' if args.prompt else f'@{args.ctx}'}: "
        f"A {1 / np.median(a):.2f} tok/s ({args.lib_a}), "
        f"B {1 / np.median(b):.2f} tok/s ({args.lib_b}); B/A speed {np.median(r):.3f}x "
        f"(quartiles {np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f}, {args.rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
