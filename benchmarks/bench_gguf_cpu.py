"""CPU benchmark: SambaY (Phi-4-mini-flash, through phiflash's llama.cpp fork) vs Phi-4-mini (phi3).

Both models are full size (3.85B) with random weights, written on the fly straight into GGUF
files in the requested quantization (random blocks with a sane scale: the speed of a kernel
does not depend on the values). Both run through the same llama-cpp-python build with the
same thread count, one model per child process so that peak RSS is per model.

Reports prompt tok/s (512 and 4K prompts, empty cache), generation tok/s (1 / the median step
time over --gen steps) at 512, 4K and 16K
tokens of context, peak RSS, and the ratio of each decode speed to this machine's memory
bandwidth roofline (bandwidth measured in the same run; bytes per token = every weight once
plus the KV cache that token reads).

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
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIG = ROOT / "tests" / "fixtures" / "real-config" / "config.json"
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

    cfg = json.loads(REAL_CONFIG.read_text())
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
    cfg = json.loads(REAL_CONFIG.read_text())
    row = cfg["num_key_value_heads"] * (cfg["hidden_size"] // cfg["num_attention_heads"]) * 2
    # the fork's decode op reads each layer's K and V once for both differential branches;
    # 8 SWA layers over <= window keys, the global layer and 7 cross layers over all keys
    swa = 8 * min(ctx, cfg["sliding_window"]) * 2 * row
    full = 8 * ctx * 2 * row
    return swa + full


def measure_bandwidth(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """Read bandwidth in GB/s: ``threads`` numpy threads summing disjoint slices."""
    n = int(gib * (1 << 30) / 8)
    a = np.ones(n, dtype=np.float64)
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(ex.map(np.sum, parts))
            best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def child(args) -> dict:
    from phiflash_gguf.build import ensure_llama_cpp

    lc = ensure_llama_cpp()
    n_ctx = max(args.contexts + args.prompts) + args.gen + 64
    t0 = time.perf_counter()
    llm = lc.Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=True,
        swa_full=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    vocab = llm.n_vocab()

    def toks(n):
        return rng.integers(0, min(vocab, 1000), size=n).tolist()

    def decode(n):
        llm.eval(toks(1))  # warm-up: the first 1-token graph after a prompt is re-planned
        steps = []
        for tok in toks(n):
            t = time.perf_counter()
            llm.eval([tok])
            steps.append(time.perf_counter() - t)
        # the median step: a step that lost its core to another tenant does not move it
        return 1.0 / float(np.median(steps))

    out = {"load_s": load_s, "pp": {}, "tg": {}}

    def note(kind, n):  # each point as it lands (a 16K fill takes most of an hour on 2 cores)
        line = f"  {Path(args.model).stem}: {kind} {n}: {out[kind][n]:.2f} tok/s"
        print(line, file=sys.stderr, flush=True)

    filled = 0
    for p in sorted(set(args.prompts)):
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks(p))
        out["pp"][p] = p / (time.perf_counter() - t)
        note("pp", p)
        filled = p
        if p in args.contexts:  # the prompt doubles as the fill for this context
            out["tg"][p] = decode(args.gen)
            note("tg", p)
            filled += args.gen + 1
    for c in sorted(set(args.contexts) - set(out["tg"])):
        if args.segment_fill:  # a context of its own, opened once, after the prompt points
            if llm.context_params.n_seq_max < SEGMENTS:
                _reopen_with_sequences(llm, SEGMENTS)
            segment_fill(lc, llm, c, toks)
        else:
            if c < filled:
                llm.reset()
                filled = 0
            llm.eval(toks(c - filled))
        out["tg"][c] = decode(args.gen)
        note("tg", c)
        filled = c + args.gen + 1
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


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


def run_child(model: Path, args, segment_fill: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(model),
        "--threads",
        str(args.threads),
        "--gen",
        str(args.gen),
        "--prompts",
        *map(str, args.prompts),
        "--contexts",
        *map(str, args.contexts),
    ]
    if segment_fill:
        cmd.append("--segment-fill")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:  # the child's progress lines, passed through as they come
        err.append(line)
        if line.startswith("  "):
            print(line, end="", flush=True)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"benchmark child failed for {model.name}:\n{''.join(err)[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def merge_runs(runs: list[dict]) -> dict:
    """Per point, the median over repeated runs; peak RSS, the largest."""
    out = {k: float(np.median([r[k] for r in runs])) for k in ("load_s", "file_bytes")}
    for kind in ("pp", "tg"):
        out[kind] = {n: float(np.median([r[kind][n] for r in runs])) for n in runs[0][kind]}
    out["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    out["file_gb"] = out["file_bytes"] / 1e9
    out["runs"] = len(runs)
    return out


def fmt_table(results: dict, args, bw: float) -> str:
    lines = []
    head = ["model", "quant", "file GB", "peak RSS GB"]
    head += [f"prompt {p} tok/s" for p in args.prompts]
    head += [f"gen @{c} tok/s (roofline %)" for c in args.contexts]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for (arch, quant), r in results.items():
        row = [arch, quant.upper(), f"{r['file_gb']:.2f}", f"{r['peak_rss_gb']:.2f}"]
        row += [f"{r['pp'][str(p)]:.1f}" for p in args.prompts]
        for c in args.contexts:
            roof = bw * 1e9 / (r["file_bytes"] + kv_bytes_per_token(arch, c))
            row.append(f"{r['tg'][str(c)]:.2f} ({100 * r['tg'][str(c)] / roof:.0f}%)")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "| ratio SambaY / Phi-4-mini | "
        + " | ".join([f"prompt {p}" for p in args.prompts] + [f"gen @{c}" for c in args.contexts])
        + " |"
    )
    lines.append("|" + "---|" * (1 + len(args.prompts) + len(args.contexts)))
    for quant in args.quants:
        s, p = results.get(("sambay", quant)), results.get(("phi3", quant))
        if not (s and p):
            continue
        cells = [f"{s['pp'][str(x)] / p['pp'][str(x)]:.2f}x" for x in args.prompts]
        cells += [f"{s['tg'][str(x)] / p['tg'][str(x)]:.2f}x" for x in args.contexts]
        lines.append(f"| {quant.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q8_0"], choices=list(FTYPE))
    ap.add_argument("--prompts", nargs="+", type=int, default=[512, 4096])
    ap.add_argument("--contexts", nargs="+", type=int, default=[512, 4096, 16384])
    ap.add_argument("--archs", nargs="+", default=["sambay", "phi3"], choices=["sambay", "phi3"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gen", type=int, default=16, help="tokens generated per decode point")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each model this many times, alternating, and report the median per point",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/phiflash-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the generated GGUF files")
    ap.add_argument(
        "--segment-fill",
        action="store_true",
        help="fill Phi-4-mini's context for the decode points as 32 independent segments merged "
        "into one sequence (same cache, same decode work, linear-time fill; a 16K prompt into "
        "phi3 ran 82 minutes here without finishing). Prompt tok/s is always a real prompt.",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        args.model = args.child
        print(json.dumps(child(args)))
        return 0

    from phiflash_gguf.build import FORK_VERSION, ensure_llama_cpp

    ensure_llama_cpp()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bw = measure_bandwidth(args.threads)
    print(f"memory read bandwidth ({args.threads} threads): {bw:.1f} GB/s", flush=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    for quant in args.quants:
        for rep in range(args.repeat):  # models alternate, so slow spells hit both alike
            for arch in args.archs:
                path = args.workdir / f"{arch}-random-{quant}.gguf"
                if not path.exists():
                    t = time.perf_counter()
                    (write_sambay if arch == "sambay" else write_phi3)(path, quant)
                    print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
                # segment fill is only valid for pure attention (phi3); SambaY gets one prompt
                r = run_child(path, args, segment_fill=args.segment_fill and arch == "phi3")
                r["file_bytes"] = path.stat().st_size
                runs.setdefault((arch, quant), []).append(r)
                print(f"{arch} {quant} (run {rep + 1}): {json.dumps(r)}", flush=True)
        if not args.keep:
            for arch in args.archs:
                (args.workdir / f"{arch}-random-{quant}.gguf").unlink()
    results = {k: merge_runs(v) for k, v in runs.items()}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print()
    print(
        f"llama-cpp-python {FORK_VERSION}, {args.threads} threads, {cpu}, "
        f"{os.cpu_count()} CPUs, read bandwidth {bw:.1f} GB/s, flash attention on, F16 KV, "
        f"median of {args.repeat} run(s) per point"
    )
    print()
    print(fmt_table({k: _strkeys(v) for k, v in results.items()}, args, bw))
    return 0


def _strkeys(r: dict) -> dict:
    r = dict(r)
    for k in ("pp", "tg"):
        r[k] = {str(a): b for a, b in r[k].items()}
    return r


if __name__ == "__main__":
    sys.exit(main())
