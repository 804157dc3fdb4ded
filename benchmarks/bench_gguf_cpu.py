"""CPU benchmark: SambaY (Phi-4-mini-flash, through phiflash's llama.cpp fork) vs Phi-4-mini (phi3).

Both models are full size (3.85B) with random weights, written on the fly straight into GGUF
files in the requested quantization (random blocks with a sane scale: the speed of a kernel
does not depend on the values). SambaY runs on the fork wheel; Phi-4-mini on upstream
llama.cpp, the unpatched sdist built by the same recipe (``--baseline upstream``, the default;
``--baseline fork`` runs it on the fork wheel, whose ggml carries the faster Q4_0 decode kernel).
Same thread count, one model per child process (so peak RSS is per model), both open at once
and interleaved: a decode point is --gen rounds of one bandwidth probe and one step per model,
a prompt point --repeat rounds of one prompt per model. A shared host's slow spells then hit
both models alike.

Reports prompt tok/s (512 and 4K prompts, empty cache), generation tok/s (1 / the median step
time) at 512, 4K and 16K tokens of context, peak RSS, each decode speed's share of this
machine's memory-bandwidth roofline (bytes per token = every weight once plus the KV cache that
token reads, against the probe of the step's own round), and paired ratios: the median over
rounds of the two models' times in the same round.

With --segment-fill, Phi-4-mini's cache for a decode point that no prompt point filled is filled
as 32 independent segments merged into one sequence (see segment_fill): the decode step then
does the same work as after one long prompt, but the fill is linear in the context instead of
quadratic (a 16K prompt into phi3 ran 82 minutes on 2 cores without finishing). SambaY is
always filled by one real prompt: its Mamba state depends on the order of every token.

    python benchmarks/bench_gguf_cpu.py --segment-fill        # full table (slow on 2 cores)
    python benchmarks/bench_gguf_cpu.py --quants q4_0 --contexts 512 4096 --prompts 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import ROOT, machine_line, real_config, seconds

FULL_KV_LAYERS = 8  # SambaY layers that read the whole cache: the global layer and 7 cross layers
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "sambay-tiny"  # padded to the full vocab

# Phi-4-mini (phi3 arch): 3.84B, tied embeddings, partial rotary (96 of 128 dims)
PHI4_MINI = dict(vocab=200064, hidden=3072, layers=32, heads=24, kv_heads=8, ff=8192, rot=96)

# GGML types and their (block elements, block bytes, byte offset of the f16 scale, scale)
QTYPES = {
    "q4_0": (2, 32, 18, 0, 0.004),
    "q8_0": (8, 32, 34, 0, 0.0002),
    "q6_k": (14, 256, 210, 208, 1e-5),
}
FTYPE = {"q4_0": 2, "q8_0": 7}
# llama.cpp's quantizer puts a tied output/token_embd at Q6_K for Q4_0 and at Q8_0 for Q8_0
EMBD_QTYPE = {"q4_0": "q6_k", "q8_0": "q8_0"}


# ---------------------------------------------------------------------------------------------
# random GGUF writers


def _rand_quant(rng, rows: int, cols: int, qname: str) -> np.ndarray:
    _, blk, tsize, off, scale = QTYPES[qname]
    assert cols % blk == 0, (rows, cols, qname)
    nb = cols // blk
    data = rng.integers(0, 256, size=(rows, nb, tsize), dtype=np.uint8)
    data[:, :, off : off + 2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
    return data.reshape(rows, nb * tsize)


class _Writer:
    """Two passes over one tensor list: infos first, then data (nothing held in memory)."""

    def __init__(self, path: Path, arch: str, quant: str):
        import gguf

        self.gguf, self.quant = gguf, quant
        self.w = gguf.GGUFWriter(path, arch)
        self.items: list[tuple[str, tuple[int, ...], str, object]] = []

    def mat(self, name, rows, cols, qname=None):
        self.items.append((name, (rows, cols), qname or self.quant, None))

    def f32(self, name, arr):
        self.items.append((name, arr.shape, "f32", np.ascontiguousarray(arr, dtype=np.float32)))

    def write(self, seed=0):
        gguf = self.gguf
        for name, shape, q, arr in self.items:
            if q == "f32":
                self.w.add_tensor_info(name, shape, np.dtype(np.float32), arr.nbytes)
            else:
                qt, blk, tsize = QTYPES[q][0], QTYPES[q][1], QTYPES[q][2]
                row = shape[1] // blk * tsize
                self.w.add_tensor_info(
                    name,
                    (shape[0], row),
                    np.dtype(np.uint8),
                    shape[0] * row,
                    raw_dtype=gguf.GGMLQuantizationType(qt),
                )
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_ti_data_to_file()
        rng = np.random.default_rng(seed)
        for _, shape, q, arr in self.items:
            self.w.write_tensor_data(arr if q == "f32" else _rand_quant(rng, *shape, q))
        self.w.close()


def _add_vocab(w, n_vocab: int) -> None:
    from phiflash.quantize.gguf_convert import add_tokenizer

    cfg = json.loads((TOKENIZER_DIR / "config.json").read_text())
    add_tokenizer(w, TOKENIZER_DIR, cfg, n_vocab)


def write_sambay(path: Path, quant: str) -> None:
    from phiflash.quantize import gguf_convert as gc

    cfg = real_config()
    lay = gc.layout_of(cfg)
    h, ff, n_vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // nh
    d_inner, d_state, d_conv, dt_rank = gc.mamba_dims(cfg)
    lambdas = [0.0 if k in ("mamba", "gmu") else 0.5 for k in lay.kinds]

    wr = _Writer(path, gc.ARCH, quant)
    wr.w.add_name("sambay-random")
    wr.w.add_file_type(FTYPE[quant])
    gc.add_sambay_metadata(wr.w, cfg, lay, lambdas, n_vocab)
    _add_vocab(wr.w, n_vocab)
    ones, zeros = np.ones(h), np.zeros(h)
    wr.mat("token_embd.weight", n_vocab, h, EMBD_QTYPE[quant])
    wr.f32("output_norm.weight", ones)
    wr.f32("output_norm.bias", zeros)
    a = -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1))
    for i, kind in enumerate(lay.kinds):
        b = f"blk.{i}."
        for n in ("attn_norm", "ffn_norm"):
            wr.f32(b + n + ".weight", ones)
            wr.f32(b + n + ".bias", zeros)
        wr.mat(b + "ffn_up.weight", 2 * ff, h)
        wr.mat(b + "ffn_down.weight", h, ff)
        if kind == "mamba":
            wr.mat(b + "ssm_in.weight", 2 * d_inner, h)
            wr.f32(b + "ssm_conv1d.weight", np.full((d_inner, d_conv), 0.1))
            wr.f32(b + "ssm_conv1d.bias", np.zeros(d_inner))
            wr.mat(b + "ssm_x.weight", dt_rank + 2 * d_state, d_inner, "q8_0")
            wr.mat(b + "ssm_dt.weight", d_inner, dt_rank, "q8_0")
            wr.f32(b + "ssm_dt.bias", np.full(d_inner, -4.0))
            wr.f32(b + "ssm_a", a)
            wr.f32(b + "ssm_d", np.ones(d_inner))
            wr.mat(b + "ssm_out.weight", h, d_inner)
        elif kind == "gmu":
            wr.mat(b + "ssm_in.weight", d_inner, h)
            wr.mat(b + "ssm_out.weight", h, d_inner)
        else:
            n_out = nh * hd if kind == "cross" else (nh + 2 * nkv) * hd
            qkv = "attn_q" if kind == "cross" else "attn_qkv"
            wr.mat(f"{b}{qkv}.weight", n_out, h)
            wr.f32(f"{b}{qkv}.bias", np.zeros(n_out))
            wr.mat(b + "attn_output.weight", h, nh * hd)
            wr.f32(b + "attn_output.bias", zeros)
            wr.f32(b + "attn_sub_norm.weight", np.ones(2 * hd))
    wr.write()


def write_phi3(path: Path, quant: str) -> None:
    c = PHI4_MINI
    h, hd = c["hidden"], c["hidden"] // c["heads"]
    wr = _Writer(path, "phi3", quant)
    w = wr.w
    w.add_name("phi4-mini-random")
    w.add_file_type(FTYPE[quant])
    w.add_context_length(131072)
    w.add_embedding_length(h)
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["ff"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_dimension_count(c["rot"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(c["vocab"])
    _add_vocab(w, c["vocab"])
    wr.mat("token_embd.weight", c["vocab"], h, EMBD_QTYPE[quant])
    wr.f32("output_norm.weight", np.ones(h))
    for i in range(c["layers"]):
        b = f"blk.{i}."
        wr.f32(b + "attn_norm.weight", np.ones(h))
        wr.mat(b + "attn_qkv.weight", h + 2 * c["kv_heads"] * hd, h)
        wr.mat(b + "attn_output.weight", h, h)
        wr.f32(b + "ffn_norm.weight", np.ones(h))
        wr.mat(b + "ffn_up.weight", 2 * c["ff"], h)
        wr.mat(b + "ffn_down.weight", h, c["ff"])
    wr.write()


# ---------------------------------------------------------------------------------------------
# measurements


def kv_bytes_per_token(arch: str, ctx: int) -> float:
    """KV bytes one decode step reads at ``ctx`` tokens of context (F16 cache)."""
    if arch == "phi3":
        c = PHI4_MINI
        return c["layers"] * ctx * c["kv_heads"] * (c["hidden"] // c["heads"]) * 2 * 2
    cfg = real_config()
    row = cfg["num_key_value_heads"] * (cfg["hidden_size"] // cfg["num_attention_heads"]) * 2
    # the fork's decode op reads each layer's K and V once for both differential branches;
    # 8 SWA layers over <= window keys, FULL_KV_LAYERS over all keys
    swa = 8 * min(ctx, cfg["sliding_window"]) * 2 * row
    full = FULL_KV_LAYERS * ctx * 2 * row
    return swa + full


class BandwidthProbe:
    """Read bandwidth in GB/s: ``threads`` numpy threads reducing disjoint slices of one array,
    the faster of a float64 sum and an integer OR (the best of ``reps`` passes each).

    The array is allocated once, so a probe between two decode steps costs a few passes over it
    (about 0.2 s): each step's roofline is judged against the bandwidth of its own moment. A
    float64 sum alone can be bound by its arithmetic: on a 2-core Zen 5 (2026-12-08) it read
    26.9 GB/s where the OR read 52.0 GB/s; on the CPUs measured before, the sum alone was used.
    """

    def __init__(self, threads: int, gib: float = 1.0):
        self.a = np.ones(int(gib * (1 << 30) / 8), dtype=np.float64)
        self.parts = np.array_split(self.a, threads)
        self.ints = [p.view(np.int64) for p in self.parts]
        self.pool = ThreadPoolExecutor(threads)

    def __call__(self, reps: int = 2) -> float:
        best = 0.0
        for fn, parts in ((np.sum, self.parts), (np.bitwise_or.reduce, self.ints)):
            for _ in range(reps):
                t0 = time.perf_counter()
                list(self.pool.map(fn, parts))
                best = max(best, self.a.nbytes / (time.perf_counter() - t0) / 1e9)
        return best


SEGMENTS = 32  # sequences a segment fill spreads the context over


def _reopen_with_sequences(llm, n_seq: int) -> None:
    """Re-open ``llm``'s context with ``n_seq`` sequences over one unified KV cache."""
    from llama_cpp import _internals

    llm._ctx.close()
    llm.context_params.n_seq_max = n_seq
    llm.context_params.kv_unified = True
    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)


def segment_fill(lc, llm, n: int, toks) -> None:
    """Fill sequence 0 of a pure-attention model's cache with ``n`` tokens in linear time.

    Segment ``s`` holds positions [s*L, (s+1)*L) and is decoded as its own sequence, so its
    tokens attend only to each other (the CPU flash-attention kernel skips masked keys); then
    every segment is copied into sequence 0. The cache ends with the same cells, positions and
    visibility as after one ``n``-token prompt, so the decode step that follows does the same
    work; only the quadratic cost of the fill is gone. Not valid for a recurrent (Mamba) or
    sliding-window model, whose state depends on the order of the whole prompt.
    """
    llm.reset()
    llm._ctx.kv_cache_clear()
    seg = -(-n // SEGMENTS)
    batch = lc.llama_batch_init(seg, 0, 1)
    try:
        for s, start in enumerate(range(0, n, seg)):
            ids = toks(min(seg, n - start))
            batch.n_tokens = len(ids)
            for i, t in enumerate(ids):
                batch.token[i], batch.pos[i] = t, start + i
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, s
                batch.logits[i] = i == len(ids) - 1
            if lc.llama_decode(llm._ctx.ctx, batch) != 0:
                raise RuntimeError(f"segment fill: llama_decode failed at segment {s}")
    finally:
        lc.llama_batch_free(batch)
    for s in range(1, SEGMENTS):
        llm._ctx.kv_cache_seq_cp(s, 0, -1, -1)
    llm.n_tokens = n


# ---------------------------------------------------------------------------------------------
# one model per process, driven one command at a time


def serve(args) -> None:
    """Child: open one model, then answer JSON commands on stdin with JSON lines on stdout."""
    from phiflash_gguf.build import ensure_llama_cpp
    from phiflash_gguf.engine import _peak_rss_gb

    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies and nothing else
    lc = ensure_llama_cpp()
    t0 = time.perf_counter()
    llm = lc.Llama(
        model_path=args.serve,
        n_ctx=args.n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=True,
        swa_full=False,
        verbose=False,
    )
    rng = np.random.default_rng(1)

    def toks(n):
        return rng.integers(0, min(llm.n_vocab(), 1000), size=n).tolist()

    def fill(n):
        if llm.n_tokens != n:  # the prompt point of the same length already filled it
            if args.segment_fill:
                if llm.context_params.n_seq_max < SEGMENTS:
                    _reopen_with_sequences(llm, SEGMENTS)
                segment_fill(lc, llm, n, toks)
            else:  # go on from what the last point left, or start over
                if llm.n_tokens > n:
                    llm.reset()
                llm.eval(toks(n - llm.n_tokens))
        llm.eval(toks(1))  # warm-up: the first 1-token graph after a prompt is re-planned

    def prompt(n):
        llm.reset()
        llm.eval(toks(n))

    def step():
        t = toks(1)  # drawn before the clock starts
        return seconds(lambda: llm.eval(t))

    ops = {
        "prompt": lambda c: seconds(lambda: prompt(c["n"])),
        "fill": lambda c: seconds(lambda: fill(c["n"])),
        "step": lambda c: step(),
        "rss": lambda c: _peak_rss_gb(),
    }
    print(json.dumps({"ready": time.perf_counter() - t0}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        print(json.dumps({"value": ops[cmd["op"]](cmd)}), file=out, flush=True)


class Model:
    """Parent's handle on one served model (a child process; its stderr goes to ``log``).

    ``lib``: a directory with another ``libllama.so`` to run (LLAMA_CPP_LIB_PATH).
    """

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        threads: int,
        log: Path,
        *,
        arch="",
        segment_fill=False,
        lib: Path | None = None,
    ):
        self.arch, self.path, self.log = arch, path, log
        self.file_bytes = path.stat().st_size
        env = dict(os.environ)
        if lib is not None:
            env["LLAMA_CPP_LIB_PATH"] = str(lib)
        cmd = [sys.executable, __file__, "--serve", str(path), "--threads", str(threads)]
        cmd += ["--n-ctx", str(n_ctx)] + (["--segment-fill"] if segment_fill else [])
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env
            )
        self.load_s = self._reply()["ready"]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log.read_text()[-2000:]
            raise SystemExit(f"benchmark child failed for {self.path.name}:\n{tail}")
        return json.loads(line)

    def __call__(self, op: str, **kw) -> float:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._reply()["value"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def interleaved(models: list[Model], rounds: int, op: str, probe=None, **kw):
    """``rounds`` rounds of one ``op`` per model (after a bandwidth probe when given).

    Who goes first alternates, so neither model always runs right after the probe. Returns
    each model's times (in the order of ``models``) and the probes.
    """
    times, bws = [[] for _ in models], []
    for i in range(rounds):
        if probe is not None:
            bws.append(probe())
        for j in range(len(models)) if i % 2 == 0 else reversed(range(len(models))):
            times[j].append(models[j](op, **kw))
    return times, bws


def bench_quant(quant: str, args, probe: BandwidthProbe) -> dict:
    """All points for one quant, the models interleaved round by round.

    A prompt point runs ``--repeat`` rounds of one prompt per model. A decode point fills each
    model's context, then runs ``--gen`` rounds of: a bandwidth probe, one step per model.
    Both models see the same spells of a shared host, so the per-round ratios (and each step's
    share of the bandwidth measured next to it) stay meaningful when single speeds do not.
    """
    models = []
    n_ctx = max(args.contexts + args.prompts) + args.gen + 64
    for arch in args.archs:
        path = args.workdir / f"{arch}-random-{quant}.gguf"
        if not path.exists():
            t = time.perf_counter()
            (write_sambay if arch == "sambay" else write_phi3)(path, quant)
            print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
        # segment fill is only valid for pure attention (phi3); SambaY always gets one prompt
        seg = args.segment_fill and arch == "phi3"
        log = args.workdir / f"{path.stem}.log"
        lib = args.baseline_lib if arch == "phi3" else None
        models.append(Model(path, n_ctx, args.threads, log, arch=arch, segment_fill=seg, lib=lib))
    res = {
        m.arch: {"file_bytes": m.file_bytes, "load_s": m.load_s, "pp": {}, "tg": {}} for m in models
    }
    if "phi3" in res:
        res["phi3"]["library"] = "upstream" if args.baseline_lib else "fork"
    try:
        for n in sorted(set(args.prompts) | set(args.contexts)):
            if n in args.prompts:
                times, _ = interleaved(models, args.repeat, "prompt", n=n)
                for m, t in zip(models, times):
                    res[m.arch]["pp"][n] = {"s": t}
                _report(res, "pp", n, quant)
            if n in args.contexts:
                for m in models:
                    m("fill", n=n)
                times, bws = interleaved(models, args.gen, "step", probe)
                for m, t in zip(models, times):
                    res[m.arch]["tg"][n] = {"s": t, "bw": bws}
                _report(res, "tg", n, quant)
        for m in models:
            res[m.arch]["peak_rss_gb"] = m("rss")
    finally:
        for m in models:
            m.close()
    return res


def point(res: dict, arch: str, kind: str, n: int) -> dict:
    """Summary of one point: median tok/s, and for decode the median roofline share."""
    r = res[arch][kind][n]
    s = np.asarray(r["s"])
    out = {"tok_s": (n if kind == "pp" else 1) / float(np.median(s))}
    if kind == "tg":
        step_bytes = res[arch]["file_bytes"] + kv_bytes_per_token(arch, n)
        out["roof"] = float(np.median(step_bytes / s / 1e9 / np.asarray(r["bw"])))
    return out


def paired_ratio(res: dict, kind: str, n: int) -> float | None:
    """Median over rounds of Phi-4-mini's time / SambaY's time in the same round."""
    if not ("sambay" in res and "phi3" in res):
        return None
    s, p = (np.asarray(res[a][kind][n]["s"]) for a in ("sambay", "phi3"))
    return float(np.median(p / s))


def _report(res: dict, kind: str, n: int, quant: str) -> None:
    cells = []
    for arch in res:
        pt = point(res, arch, kind, n)
        roof = f" ({100 * pt['roof']:.0f}% roofline)" if "roof" in pt else ""
        cells.append(f"{arch} {pt['tok_s']:.2f} tok/s{roof}")
    ratio = paired_ratio(res, kind, n)
    if ratio is not None:
        cells.append(f"paired ratio {ratio:.2f}x")
    label = "prompt" if kind == "pp" else "decode @"
    print(f"  {quant} {label}{n}: " + ", ".join(cells), flush=True)


def fmt_table(results: dict, args) -> str:
    lines = []
    head = ["model", "quant", "file GB", "peak RSS GB"]
    head += [f"prompt {p} tok/s" for p in args.prompts]
    head += [f"gen @{c} tok/s (roofline %)" for c in args.contexts]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for quant, res in results.items():
        for arch, r in res.items():
            row = [arch, quant.upper(), f"{r['file_bytes'] / 1e9:.2f}", f"{r['peak_rss_gb']:.2f}"]
            row += [f"{point(res, arch, 'pp', p)['tok_s']:.1f}" for p in args.prompts]
            for c in args.contexts:
                pt = point(res, arch, "tg", c)
                row.append(f"{pt['tok_s']:.2f} ({100 * pt['roof']:.0f}%)")
            lines.append("| " + " | ".join(row) + " |")
    if not any({"sambay", "phi3"} <= res.keys() for res in results.values()):
        return "\n".join(lines)  # one model only: no pairs
    lines.append("")
    lines.append(
        "| paired ratio SambaY / Phi-4-mini | "
        + " | ".join([f"prompt {p}" for p in args.prompts] + [f"gen @{c}" for c in args.contexts])
        + " |"
    )
    lines.append("|" + "---|" * (1 + len(args.prompts) + len(args.contexts)))
    for quant, res in results.items():
        if not {"sambay", "phi3"} <= res.keys():
            continue
        cells = [f"{paired_ratio(res, 'pp', x):.2f}x" for x in args.prompts]
        cells += [f"{paired_ratio(res, 'tg', x):.2f}x" for x in args.contexts]
        lines.append(f"| {quant.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q8_0"], choices=list(FTYPE))
    ap.add_argument("--prompts", nargs="+", type=int, default=[512, 4096])
    ap.add_argument("--contexts", nargs="+", type=int, default=[512, 4096, 16384])
    ap.add_argument("--archs", nargs="+", default=["sambay", "phi3"], choices=["sambay", "phi3"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--gen", type=int, default=16, help="decode rounds per context (one step per model each)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="prompt rounds per prompt length (one per model each)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/phiflash-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the generated GGUF files")
    ap.add_argument("--json", type=Path, default=None, help="also write every round's times here")
    ap.add_argument(
        "--segment-fill",
        action="store_true",
        help="fill Phi-4-mini's context for the decode points as 32 independent segments merged "
        "into one sequence (same cache, same decode work, linear-time fill; a 16K prompt into "
        "phi3 ran 82 minutes on a 2-core Xeon VM without finishing). Prompt tok/s is always a "
        "real prompt.",
    )
    ap.add_argument(
        "--baseline",
        choices=["upstream", "fork"],
        default="upstream",
        help="library Phi-4-mini runs on: upstream llama.cpp built by the fork's recipe "
        "(python -m phiflash_gguf.stock --upstream; built on first use), or the fork wheel",
    )
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-ctx", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        serve(args)
        return 0

    from phiflash_gguf.build import FORK_VERSION, ensure_llama_cpp

    ensure_llama_cpp()
    args.baseline_lib = None
    if args.baseline == "upstream" and "phi3" in args.archs:
        from phiflash_gguf.stock import ensure_upstream_lib

        args.baseline_lib = ensure_upstream_lib()
    args.workdir.mkdir(parents=True, exist_ok=True)
    probe = BandwidthProbe(args.threads)
    bw = float(np.median([probe() for _ in range(3)]))
    print(f"memory read bandwidth ({args.threads} threads): {bw:.1f} GB/s at start", flush=True)
    results = {}
    for quant in args.quants:
        results[quant] = bench_quant(quant, args, probe)
        if not args.keep:
            for arch in args.archs:
                (args.workdir / f"{arch}-random-{quant}.gguf").unlink()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    all_bw = [
        b
        for res in results.values()
        for r in res.values()
        for p in r["tg"].values()
        for b in p["bw"]
    ]
    print()
    baseline = "upstream 0.3.36 (same recipe)" if args.baseline_lib else "the same fork wheel"
    print(
        f"SambaY on llama-cpp-python {FORK_VERSION}"
        + (f", Phi-4-mini on {baseline}" if "phi3" in args.archs else "")
        + f"; {args.threads} threads, {machine_line()}; "
        f"read bandwidth {bw:.1f} GB/s at start"
        + (f" ({min(all_bw):.1f}-{max(all_bw):.1f} over the rounds)" if all_bw else "")
        + f", flash attention on, F16 KV; {args.gen} decode rounds, {args.repeat} prompt round(s)"
    )
    print()
    print(fmt_table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
