"""Several sequences in one llama.cpp batch on phiflash's fork: correctness and decode speed.

What a multi-sequence CPU server (llama.cpp's own `llama-server --parallel N`, continuous
batching) would do with the SambaY graph: N prompts decoded as N sequences of one context
(``n_seq_max = N``; Mamba states in the recurrent memory, one cell per sequence; attention
over one unified KV cache with per-sequence masks), then one ``llama_decode`` per step with one
row per sequence.

1. correctness: every sequence's greedy tokens equal its solo run's (and the largest logit gap);
2. speed: the decode step with 1 row vs N rows, interleaved rounds, medians; aggregate tok/s
   = N / step time. On a memory-bound CPU the weights are read once per step for all rows.

    python benchmarks/bench_gguf_multiseq.py --model tutor-Q8_0.gguf
    python benchmarks/bench_gguf_multiseq.py --model sambay-random-q4_0.gguf --skip-check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def open_context(path: str, n_seq: int, n_ctx: int, threads: int):
    """A Llama whose context holds ``n_seq`` sequences over one unified KV cache."""
    from llama_cpp import _internals

    from phiflash_gguf.engine import GGUFEngine

    engine = GGUFEngine(path, n_threads=threads, n_ctx=n_ctx)
    llm = engine.llm
    llm._ctx.close()
    llm.context_params.n_seq_max = n_seq
    llm.context_params.kv_unified = True
    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    return engine, llm


class Batch:
    def __init__(self, lc, llm):
        self.lc, self.llm, self.ctx = lc, llm, llm._ctx.ctx
        self.n_vocab = llm.n_vocab()

    def decode(self, items) -> None:
        """items: (token, position, sequence, wants logits)."""
        lc = self.lc
        b = lc.llama_batch_init(len(items), 0, 1)
        try:
            b.n_tokens = len(items)
            for i, (t, p, s, w) in enumerate(items):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, 1, w
                b.seq_id[i][0] = s
            rc = lc.llama_decode(self.ctx, b)
        finally:
            lc.llama_batch_free(b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self, i: int) -> np.ndarray:
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)


def check(batch: Batch, prompts: list[list[int]], steps: int) -> tuple[list[bool], float]:
    """Greedy tokens of every sequence batched vs alone; the largest logit difference."""
    solo = []
    for p in prompts:
        batch.clear()
        batch.decode([(t, i, 0, i == len(p) - 1) for i, t in enumerate(p)])
        toks, rows = [], []
        for s in range(steps):
            row = batch.logits(-1)
            toks.append(int(row.argmax()))
            rows.append(row)
            batch.decode([(toks[-1], len(p) + s, 0, True)])
        solo.append((toks, rows))
    batch.clear()
    items = []
    for s, p in enumerate(prompts):
        items += [(t, i, s, i == len(p) - 1) for i, t in enumerate(p)]
    batch.decode(items)
    out_rows = list(np.cumsum([len(p) for p in prompts]) - 1)
    toks = [[] for _ in prompts]
    gap = 0.0
    for step in range(steps):
        nxt = []
        for s, p in enumerate(prompts):
            row = batch.logits(int(out_rows[s]))
            gap = max(gap, float(np.abs(row - solo[s][1][step]).max()))
            toks[s].append(int(row.argmax()))
            nxt.append((toks[s][-1], len(p) + step, s, True))
        batch.decode(nxt)
        out_rows = list(range(len(prompts)))
    return [toks[s] == solo[s][0] for s in range(len(prompts))], gap


def speed(batch: Batch, n_seq: int, prompt_len: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    hi = min(batch.n_vocab, 1000)
    batch.clear()
    for s in range(n_seq):
        ids = rng.integers(0, hi, prompt_len).tolist()
        batch.decode([(t, i, s, i == prompt_len - 1) for i, t in enumerate(ids)])
    pos = [prompt_len] * n_seq
    one, many = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        batch.decode([(int(rng.integers(0, hi)), pos[0], 0, True)])
        one.append(time.perf_counter() - t)
        pos[0] += 1
        items = [(int(rng.integers(0, hi)), pos[s], s, True) for s in range(n_seq)]
        t = time.perf_counter()
        batch.decode(items)
        many.append(time.perf_counter() - t)
        pos = [q + 1 for q in pos]
    a, b = statistics.median(one), statistics.median(many)
    return {
        "one_row_tps": 1 / a,
        "n_rows_aggregate_tps": n_seq / b,
        "step_time_ratio": b / a,
        "paired_aggregate_ratio": statistics.median(n_seq * x / y for x, y in zip(one, many)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=".gguf (SambaY)")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence (speed)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=24, help="greedy steps compared (check)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-check", action="store_true")
    args = p.parse_args(argv)
    from phiflash_gguf.build import ensure_llama_cpp

    lc = ensure_llama_cpp()
    n_ctx = args.sequences * (args.prompt + args.rounds + 8) + 512
    engine, llm = open_context(args.model, args.sequences, n_ctx, args.threads)
    batch = Batch(lc, llm)
    if not args.skip_check:
        questions = [
            "What is 47 + 38?",
            "A shop sells pens at 3 dollars each. Tom buys 14 pens and pays with a 50 dollar "
            "note. How much change does he get back, in dollars?",
            "Solve for x: 5x - 9 = 31.",
            "Compute 12 * 7.",
        ][: args.sequences]
        prompts = [
            engine.tokenize(engine.apply_chat_template([{"role": "user", "content": q}]))
            for q in questions
        ]
        same, gap = check(batch, prompts, args.steps)
        print(f"batched = solo tokens per sequence: {same}; largest logit gap {gap:.2e}")
    r = speed(batch, args.sequences, args.prompt, args.rounds)
    print(
        f"decode: 1 row {r['one_row_tps']:.2f} tok/s; {args.sequences} rows "
        f"{r['n_rows_aggregate_tps']:.2f} tok/s together (a step takes {r['step_time_ratio']:.2f}x "
        f"as long); paired per-round aggregate ratio {r['paired_aggregate_ratio']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
