# Phi-4-mini-flash-reasoning ("SambaY", model_type phi4flash) for MLX.
#
# Self-contained: imports only mlx and mlx_lm, so a converted model directory can carry this
# file as its `model_file` and run under stock `mlx_lm.generate --trust-remote-code`.
# Layer layout (L layers): a self-decoder of Mamba-1 (even) and sliding-window differential
# attention (odd) layers up to L/2; layer L/2 is a Mamba layer whose pre-gate scan readout is
# the GMU memory; layer L/2+1 is the global differential attention whose K/V all cross layers
# reuse; then GMU (even) and cross-attention (odd) layers that own no cache.
# Batches follow mlx-lm's batch caches (BatchGenerator, mlx_lm.server): padded positions leave
# the Mamba state and conv window unchanged and are masked in every attention layer, so each
# row gets what it gets alone. Quantized K/V (--kv-bits) is not supported: RotatingKVCache has
# no quantized form, and mlx_lm.server never batches such requests.
# Speed paths: one-token decode steps with plain caches run as a few compiled functions over
# many layers (WholeStep), with batch caches as compiled functions per layer (the uncompiled
# path stays: Model.set_compiled_decode(False), and padded Mamba steps use it); on a GPU their
# Mamba steps are two kernels (self-checking; the Metal spelling untested); prompts scan with a
# CUDA kernel in chunks in time (self-checking), a self-checking Metal kernel (untested on
# Apple hardware), numpy on the CPU, or the portable chunked scan; training on CUDA scans
# through a forward/backward kernel pair; sliding-window prompts attend in bands.

import logging
import math
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs, create_causal_mask
from mlx_lm.models.cache import (
    ArraysCache,
    BatchKVCache,
    BatchRotatingKVCache,
    KVCache,
    RotatingKVCache,
)


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "phi4flash"
    vocab_size: int = 200064
    hidden_size: int = 2560
    intermediate_size: int = 10240
    num_hidden_layers: int = 32
    num_attention_heads: int = 40
    num_key_value_heads: int = 20
    sliding_window: int | list[int | None] | None = 512
    layer_types: list[str] | None = None
    mb_per_layer: int = 2
    layer_norm_eps: float = 1e-5
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 262144

    def __post_init__(self):
        L = self.num_hidden_layers
        if self.mamba_dt_rank == "auto" or self.mamba_dt_rank is None:
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16)
        w = self.sliding_window
        if isinstance(w, (list, tuple)):
            windows = list(w)
        elif self.layer_types is not None:
            windows = [w if t == "sliding_attention" else None for t in self.layer_types]
        else:
            windows = [w if (i < L // 2 and i % 2 == 1) else None for i in range(L)]
        if len(windows) != L:
            raise ValueError(f"sliding_window/layer_types has {len(windows)} entries, not {L}")
        self.windows = windows
        self.head_dim = self.hidden_size // self.num_attention_heads

    def layer_kind(self, i: int) -> str:
        half = self.num_hidden_layers // 2
        if i % self.mb_per_layer == 0:
            if i >= half + 2:
                return "gmu"
            return "mamba_mem" if i >= half else "mamba"
        if i >= half + 2:
            return "cross"
        return "swa" if self.windows[i] else "attn"


# Parameters that steer the recurrence and the attention mix stay float32 in every dtype.
FP32_PARAMS = ("A_log", "D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


def keeps_fp32(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in FP32_PARAMS or name.endswith("dt_proj.bias")


def softplus(x):
    return mx.where(x > 20.0, x, mx.logaddexp(x, 0.0))


def lambda_init_fn(depth: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


# ---------------------------------------------------------------------------------------------
# Selective scan. s_t = exp(dt_t A) s_{t-1} + dt_t u_t B_t ;  y_t = s_t . C_t + D u_t
# All state arithmetic in float32.


# The elementwise work around the scan, written once for prompts and the one-token step, as
# compiled functions: one fused primitive each where a prompt's graph had 17, 4 and 4.


@mx.compile
def conv_silu(xpad, w, bias):
    """Causal depthwise conv + SiLU. xpad [b, K-1+T, d] holds the previous K-1 inputs then the
    T new ones; w is HF's [d, 1, K]. Returns u [b, T, d] in xpad's dtype and the same values in
    float32 (the scan's input)."""
    f32 = mx.float32
    K = w.shape[-1]
    T = xpad.shape[1] - (K - 1)
    c = bias.astype(f32)
    for k in range(K):
        c = c + w[:, 0, k].astype(f32) * xpad[:, k : k + T].astype(f32)
    u = nn.silu(c).astype(xpad.dtype)
    return u, u.astype(f32)


@partial(mx.compile, shapeless=True)
def dt_softplus(dt):
    return softplus(dt.astype(mx.float32))


@partial(mx.compile, shapeless=True)
def output_gate(y, z):
    """y * SiLU(z) in float32, back in z's dtype."""
    return (y * nn.silu(z.astype(mx.float32))).astype(z.dtype)


@mx.compile
def conv_step(conv_state, xb, w, bias):
    """One token of the causal depthwise conv + SiLU; returns (u, new conv state)."""
    xpad = mx.concatenate([conv_state, xb], axis=1)
    return conv_silu(xpad, w, bias)[0], xpad[:, 1:]


@mx.compile
def mamba_step(u, dt, A_log, B, C, D, state, z):
    """One token of softplus + selective scan + output gate, all in float32."""
    f32 = mx.float32
    y, state = _ssm_step(
        u.astype(f32),
        dt_softplus(dt),
        -mx.exp(A_log.astype(f32)),
        B.astype(f32),
        C.astype(f32),
        D.astype(f32),
        state,
    )
    return output_gate(y, z), y.astype(z.dtype), state


def _ssm_step(u, dt, A, B, C, D, state):
    # u, dt: [b, d]; B, C: [b, n]; A: [d, n]; state: [b, d, n]
    state = mx.exp(dt[..., None] * A) * state + (dt * u)[..., None] * B[:, None, :]
    y = (state * C[:, None, :]).sum(axis=-1) + D * u
    return y, state


ssm_step = mx.compile(_ssm_step)


@mx.compile
def _scan_position(s, P, dt, du, B, C, A):
    """One position of every block at once: s, P [b, nb, d, n]; dt, du [b, nb, d]; B, C
    [b, nb, n]. P is the product of the block's decays so far (for the carry-in fix-up)."""
    a = mx.exp(dt[..., None] * A)
    s = a * s + du[..., None] * B[..., None, :]
    return s, a * P, (s * C[..., None, :]).sum(axis=-1)


@mx.compile
def _scan_carry(carry, P_end, s_end):
    return P_end * carry + s_end


@mx.compile
def _scan_fixup(y, P, carry_in, C, D, u):
    """y + (decay since the block start * the block's incoming state) . C + D u, one position."""
    return y + (P * carry_in * C[..., None, :]).sum(axis=-1) + D * u


def ssm_scan_chunked(u, dt, A, B, C, D, state, block: int = 32, segment: int = 512):
    """Prompt path for any device: sequential within blocks, all blocks of a segment at once.

    A segment of up to ``segment`` tokens is cut into blocks of ``block`` tokens. Every block
    is scanned from a zero state at the same time (``block`` steps over all blocks, each also
    carrying the product of the block's decays so far), the blocks' true incoming states
    follow from one step per block, and each position then adds its block's incoming state
    times that product. Only products of decays in (0, 1] are formed, so it is stable for any
    dt and A, and each decay exp(dt A) is computed once. Segments run one after another, which
    bounds the temporaries at [b, segment, d, n]. Work is linear in T; Python runs about
    ``2 * block + segment / block`` steps per segment; differentiable. A position with dt = 0
    leaves the state unchanged (padding, and the zero-padded tail of the last block).
    """
    b, T, d = u.shape
    n = A.shape[1]
    ys = []
    for s0 in range(0, T, segment):
        s1 = min(s0 + segment, T)
        L = s1 - s0
        k = min(block, L)
        nb = -(-L // k)
        pad = nb * k - L

        def blocks(x, pad=pad, nb=nb, k=k):  # [b, L, c] -> [k, b, nb, c], contiguous
            if pad:
                x = mx.pad(x, [(0, 0), (0, pad), (0, 0)])
            return mx.contiguous(x.reshape(b, nb, k, x.shape[-1]).transpose(2, 0, 1, 3))

        dts, us = dt[:, s0:s1], u[:, s0:s1]
        dtb, ub, Bb, Cb = blocks(dts), blocks(us), blocks(B[:, s0:s1]), blocks(C[:, s0:s1])
        dub = dtb * ub
        sl = mx.zeros((b, nb, d, n), dtype=mx.float32)
        P = mx.ones((b, nb, d, n), dtype=mx.float32)
        Ps, yl = [], []
        for i in range(k):
            sl, P, yi = _scan_position(sl, P, dtb[i], dub[i], Bb[i], Cb[i], A)
            Ps.append(P)
            yl.append(yi)
        carries = [state]
        for j in range(nb):
            carries.append(_scan_carry(carries[-1], P[:, j], sl[:, j]))
        state = carries[-1]
        carry_in = mx.stack(carries[:-1], axis=1)  # [b, nb, d, n]
        y = [_scan_fixup(yl[i], Ps[i], carry_in, Cb[i], D, ub[i]) for i in range(k)]
        y = mx.stack(y, axis=2).reshape(b, nb * k, d)  # [b, nb, k, d] -> [b, L + pad, d]
        ys.append(y[:, :L] if pad else y)
    y = mx.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
    return y, state


def ssm_scan_logdepth(u, dt, A, B, C, D, state, block: int = 64):
    """The former prompt path (kept as a benchmark baseline): blocks of ``block`` tokens, each a
    log-depth (Hillis-Steele) scan over the full [b, t, d, n] states."""
    T = u.shape[1]
    ys = []
    for s in range(0, T, block):
        e = min(s + block, T)
        dtb = dt[:, s:e]
        a = mx.exp(dtb[..., None] * A)  # [b, t, d, n]
        x = (dtb * u[:, s:e])[..., None] * B[:, s:e, None, :]
        k = 1
        while k < e - s:
            x = mx.concatenate([x[:, :k], a[:, k:] * x[:, :-k] + x[:, k:]], axis=1)
            a = mx.concatenate([a[:, :k], a[:, k:] * a[:, :-k]], axis=1)
            k *= 2
        states = a * state[:, None] + x
        ys.append((states @ C[:, s:e, :, None]).squeeze(-1))
        state = states[:, -1]
    y = mx.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
    return y + D * u, state


def ssm_scan_numpy(u, dt, A, B, C, D, state, max_elems: int = 1 << 24):
    """Prompt path on MLX's CPU backend, in numpy: the decays exp(dt A) of a segment in one
    vectorized call, then the recurrence in place over the segment's positions (two numpy
    calls per position on [b, d, n]), and the readout y = s . C as one batched matmul.

    On a CPU the scan's cost is its b*T*d*n exponentials: MLX's CPU backend evaluates exp at
    about 55 M/s, numpy at about 1 G/s (AMD EPYC Zen 4, one thread; benchmarks/results/
    mlx_cpu.md). Segments hold at most ``max_elems`` states (64 MB). Not differentiable (training
    keeps ssm_scan_chunked); the inputs are evaluated here. A position with dt = 0 leaves the
    state unchanged, as in every other path.
    """
    import numpy as np  # mlx_lm's own dependency

    u, dt, A, B, C, D, s = (np.asarray(x.astype(mx.float32)) for x in (u, dt, A, B, C, D, state))
    b, T, d = u.shape
    n = A.shape[1]
    segment = max(1, min(T, max_elems // (b * d * n)))
    y = np.empty((b, T, d), np.float32)
    for s0 in range(0, T, segment):
        s1 = min(s0 + segment, T)
        L = s1 - s0
        S = np.exp(dt[:, s0:s1, :, None] * A)  # the decays, overwritten by the states
        dBu = (dt[:, s0:s1] * u[:, s0:s1])[..., None] * B[:, s0:s1, None, :]
        for t in range(L):
            np.multiply(S[:, t], s, out=S[:, t])
            np.add(S[:, t], dBu[:, t], out=S[:, t])
            s = S[:, t]
        s = s.copy()  # S is dropped with the segment
        y[:, s0:s1] = (S.reshape(b * L, d, n) @ C[:, s0:s1].reshape(b * L, n, 1)).reshape(b, L, d)
    y += D * u
    return mx.array(y), mx.array(s)


# The selective-scan kernel of both GPU backends, one thread per (sequence, time chunk,
# channel, state): a channel's NS lanes sit in one warp / SIMD group (NS divides 32) and reduce
# y = sum_n s[n] C[n] with shuffles. Time is cut into K chunks of L tokens scanned at once:
# a first pass (CUDA only) scans each chunk from a zero state and keeps its end state s_end and
# its decay, the product of exp(dt a) over the chunk; the prompt pass starts chunk k from the
# incoming state carried through chunks 0..k-1 (s = decay_j s + s_end_j), scans it again and
# writes y. K = 1 is the plain sequential scan (no first pass; s_end and decay unread). Each
# step loads the next token's inputs before it computes its own, so the loads of a thread's
# dependent chain overlap its arithmetic. The backends differ only in the spellings.
_SCAN_INDEX = """
    @UINT@ gid = @GID@;
    int nb = dims[0], T = dims[1], K = dims[2], L = dims[3];
    @UINT@ n = gid % NS;
    @UINT@ ch = gid / NS;
    bool active = ch < @NCH@;
    if (!active) ch = 0;
    @UINT@ d = ch % DI, k = (ch / DI) % K, b = ch / (DI * K);
    float a = A[(size_t)d * NS + n];
    int t0 = (int)k * L, t1 = t0 + L;
    if (t1 > T) t1 = T;
"""
_SCAN_CHUNK_ENDS = """
    float s = 0.0f, p = 1.0f;
    size_t o = ((size_t)b * T + t0) * DI + d, on = ((size_t)b * T + t0) * NS + n;
    float dtv = 0.0f, uv = 0.0f, bv = 0.0f;
    if (t0 < t1) { dtv = dt[o]; uv = u[o]; bv = Bm[on]; }
    for (int t = t0; t < t1; ++t, o += DI, on += NS) {
        float dtc = dtv, uc = uv, bc = bv;
        if (t + 1 < t1) { dtv = dt[o + DI]; uv = u[o + DI]; bv = Bm[on + NS]; }
        float at = @EXP@(dtc * a);
        s = at * s + dtc * uc * bc;
        p *= at;
    }
    if (active) {
        size_t w = (((size_t)b * K + k) * DI + d) * NS + n;
        s_end[w] = s;
        decay[w] = p;
    }
"""
_SCAN_SRC = """
    float s = state[((size_t)b * DI + d) * NS + n];
    for (@UINT@ j = 0; j < k; ++j) {
        size_t w = (((size_t)b * K + j) * DI + d) * NS + n;
        s = decay[w] * s + s_end[w];
    }
    float dd = D[d];
    size_t o = ((size_t)b * T + t0) * DI + d, on = ((size_t)b * T + t0) * NS + n;
    float dtv = 0.0f, uv = 0.0f, bv = 0.0f, cv = 0.0f;
    if (t0 < t1) { dtv = dt[o]; uv = u[o]; bv = Bm[on]; cv = Cm[on]; }
    for (int t = t0; t < t1; ++t, o += DI, on += NS) {
        float dtc = dtv, uc = uv, bc = bv, cc = cv;
        if (t + 1 < t1) { dtv = dt[o + DI]; uv = u[o + DI]; bv = Bm[on + NS]; cv = Cm[on + NS]; }
        s = @EXP@(dtc * a) * s + dtc * uc * bc;@KEEP@
        float p = s * cc;
        for (@OFF@ off = NS / 2; off > 0; off >>= 1) p += @SHUFFLE@;
        if (active && n == 0) y[o] = p + dd * uc;
    }
    if (active && (int)k == K - 1) state_out[((size_t)b * DI + d) * NS + n] = s;
"""
_CUDA_SPELLING = dict(
    UINT="int",
    GID="blockIdx.x * blockDim.x + threadIdx.x",
    NCH="nb * K * DI",
    EXP="expf",
    OFF="int",
    SHUFFLE="__shfl_xor_sync(0xffffffffu, p, off)",
)
_METAL_SPELLING = dict(
    UINT="uint",
    GID="thread_position_in_grid.x",
    NCH="(uint)(nb * K * DI)",
    EXP="metal::exp",
    OFF="ushort",
    SHUFFLE="simd_shuffle_xor(p, off)",
)


def _spell(src: str, spell: dict) -> str:
    """``src`` with every @KEY@ replaced by ``spell[KEY]`` (one backend's spelling)."""
    for key, text in spell.items():
        src = src.replace(f"@{key}@", text)
    return src


def _scan_source(body: str, spell: dict) -> str:
    """The index prelude and ``body`` in one backend's spelling; @KEEP@ (after each state
    update) is empty unless ``spell`` fills it."""
    return _spell(_SCAN_INDEX + body, {"KEEP": ""} | spell)


_CUDA_SCAN_SRC = _scan_source(_SCAN_SRC, _CUDA_SPELLING)
_CUDA_SCAN_CHUNK_ENDS = _scan_source(_SCAN_CHUNK_ENDS, _CUDA_SPELLING)
_METAL_SCAN_SRC = _scan_source(_SCAN_SRC, _METAL_SPELLING)
_SCAN_KERNEL_IO = dict(
    input_names=["u", "dt", "A", "Bm", "Cm", "D", "state", "s_end", "decay", "dims"],
    output_names=["y", "state_out"],
)
SCAN_TIME_CHUNKS = True  # False: the CUDA prompt scan runs sequentially in time (benchmarks)


def _threads(n: int) -> dict:
    """A kernel launch's grid and threadgroup for ``n`` threads, in groups of 128."""
    return dict(grid=(-(-n // 128) * 128, 1, 1), threadgroup=(128, 1, 1))


def _launch(kernel, inputs, shape, n: int, shapes, chunks: int = 1):
    """Launch a scan kernel over [b, T, d] inputs (``shape``), ``dims`` = [b, T, K, L] (K
    chunks of L tokens) appended as the last input, one thread per (sequence, chunk, channel,
    state); float32 outputs."""
    b, T, d = shape
    L = -(-T // chunks)
    threads = b * chunks * d * n
    return kernel(
        inputs=[*inputs, mx.array([b, T, chunks, L], dtype=mx.int32)],
        template=[("DI", d), ("NS", n)],
        **_threads(threads),
        output_shapes=shapes,
        output_dtypes=[mx.float32] * len(shapes),
    )


def time_chunks(b: int, T: int, d: int, n: int) -> int:
    """How many chunks in time the CUDA prompt scan cuts a prompt into: enough threads to
    fill a large GPU (about 2^20: b d n is 81,920 for one sequence of the real model, which
    leaves most of an H100 idle), chunks of at least 64 tokens, and 1 where a warp would hold
    lanes of two chunks (d n not a multiple of 32)."""
    if not SCAN_TIME_CHUNKS or (d * n) % 32:
        return 1
    return max(1, min(-(-(1 << 20) // (b * d * n)), T // 64))


def _run_scan_kernel(kernel, u, dt, A, B, C, D, state, ends=None, chunks: int = 1, states=False):
    """Launch a kernel of ``_SCAN_KERNEL_IO``'s inputs over [b, T, d] inputs; ``ends`` =
    (s_end, decay) of the first pass when ``chunks`` > 1; ``states``: a third output keeps
    every state [b, T, d, n] (the training forward kernel)."""
    b, T, d = u.shape
    n = A.shape[1]
    f32 = mx.float32
    s_end, decay = ends if ends is not None else (mx.zeros((1,), f32),) * 2
    inputs = [u, dt, A, B.astype(f32), C.astype(f32), D.astype(f32), state, s_end, decay]
    shapes = [(b, T, d), (b, d, n)] + ([(b, T, d, n)] if states else [])
    return _launch(kernel, inputs, u.shape, n, shapes, chunks)


def _cuda_scan(u, dt, A, B, C, D, state, K: int):
    """The CUDA prompt scan in K chunks in time: the chunks' end states and decays first (K >
    1), then every chunk from its carried-in state."""
    b, T, d = u.shape
    n = A.shape[1]
    ends = None
    if K > 1:
        inputs = [u, dt, A, B.astype(mx.float32)]
        ends = _launch(_cuda_kernel("chunk_ends"), inputs, u.shape, n, [(b, K, d, n)] * 2, K)
    return tuple(_run_scan_kernel(_cuda_kernel("prompt"), u, dt, A, B, C, D, state, ends, K))


def ssm_scan_cuda(u, dt, A, B, C, D, state):
    """Prompt path on MLX's CUDA backend: one thread per chunk in time, channel and state
    (time_chunks), once the chunked kernels have passed their self-check in this process;
    else one pass sequential in time."""
    b, T, d = u.shape
    K = time_chunks(b, T, d, A.shape[1])
    if K > 1 and not time_chunks_ready(u, dt, A, B, C, D, state):
        K = 1
    return _cuda_scan(u, dt, A, B, C, D, state, K)


# Training on MLX's CUDA backend: the scan with its gradient as two kernels (mx.custom_function),
# where autodiff through the chunked scan spends about four fifths of a training step. The
# forward kernel is the prompt kernel's source, run with D = 0 in one pass, that also keeps
# every state [b, T, d, n]; the backward kernel walks time in reverse, one thread per
# (sequence, channel, state), with
#   gs_t = gy_t C_t + exp(dt_{t+1} A) gs_{t+1}   (the gradient reaching s_t)
#   gC_t += gy_t s_t,  gB_t += gs_t dt_t u_t,  g(a_t) = gs_t s_{t-1}  with a_t = exp(dt_t A),
#   gdt_t = sum_n g(a_t) a_t A + gs_t B_t u_t,  gu_t = sum_n gs_t B_t dt_t,  gA += g(a_t) a_t dt_t,
# reducing over states with shuffles and over channels (gB, gC) and sequences (gA) after.
_CUDA_SCAN_TRAIN_FWD = _scan_source(
    _SCAN_SRC, _CUDA_SPELLING | {"KEEP": "\n        if (active) states[o * NS + n] = s;"}
)
_CUDA_SCAN_TRAIN_BWD = _scan_source(
    """
    size_t bdn = ((size_t)b * DI + d) * NS + n;
    float gs = gstate_out[bdn];
    float ga_sum = 0.0f;
    for (int t = T - 1; t >= 0; --t) {
        size_t o = ((size_t)b * T + t) * DI + d;
        size_t on = ((size_t)b * T + t) * NS + n;
        float dtv = dt[o], uv = u[o], gyv = gy[o], bv = Bm[on];
        float s_t = states[o * NS + n];
        float s_prev = t > 0 ? states[(o - DI) * NS + n] : state[bdn];
        float at = expf(dtv * a);
        gs += gyv * Cm[on];
        float ga = gs * s_prev;
        float gdt = ga * at * a + gs * bv * uv;
        float gu = gs * bv * dtv;
        ga_sum += ga * at * dtv;
        if (active) {
            gC_full[o * NS + n] = gyv * s_t;
            gB_full[o * NS + n] = gs * dtv * uv;
        }
        for (int off = NS / 2; off > 0; off >>= 1) {
            gdt += __shfl_xor_sync(0xffffffffu, gdt, off);
            gu += __shfl_xor_sync(0xffffffffu, gu, off);
        }
        if (active && n == 0) {
            gdt_out[o] = gdt;
            gu_out[o] = gu;
        }
        gs *= at;
    }
    if (active) {
        gstate_in[bdn] = gs;
        gA_part[bdn] = ga_sum;
    }
""",
    _CUDA_SPELLING,
)
# which -> (name, input names, output names, source) of the CUDA scan kernels
_CUDA_KERNELS = {
    "prompt": ("sambay_selective_scan", *_SCAN_KERNEL_IO.values(), _CUDA_SCAN_SRC),
    "chunk_ends": (
        "sambay_scan_chunk_ends",
        ["u", "dt", "A", "Bm", "dims"],
        ["s_end", "decay"],
        _CUDA_SCAN_CHUNK_ENDS,
    ),
    "train_fwd": (
        "sambay_scan_train_fwd",
        _SCAN_KERNEL_IO["input_names"],
        [*_SCAN_KERNEL_IO["output_names"], "states"],
        _CUDA_SCAN_TRAIN_FWD,
    ),
    "train_bwd": (
        "sambay_scan_train_bwd",
        ["u", "dt", "A", "Bm", "Cm", "state", "states", "gy", "gstate_out", "dims"],
        ["gu_out", "gdt_out", "gB_full", "gC_full", "gA_part", "gstate_in"],
        _CUDA_SCAN_TRAIN_BWD,
    ),
}


@cache
def _cuda_kernel(which: str):
    """One of ``_CUDA_KERNELS``, built on first use."""
    name, inputs, outputs, source = _CUDA_KERNELS[which]
    return mx.fast.cuda_kernel(
        name=name,
        input_names=inputs,
        output_names=outputs,
        source=source,
    )


@mx.custom_function
def _scan_train(u, dt, A, B, C, state):
    """y_t = s_t . C_t (no D term) and the last state; the third output keeps every state
    for the backward kernel."""
    no_d = mx.zeros((u.shape[2],), mx.float32)
    kernel = _cuda_kernel("train_fwd")
    return tuple(_run_scan_kernel(kernel, u, dt, A, B, C, no_d, state, states=True))


@_scan_train.vjp
def _scan_train_vjp(primals, cotangents, outputs):
    u, dt, A, B, C, state = primals
    b, T, d = u.shape
    n = A.shape[1]
    gy, gsf = cotangents[:2]  # float32, zeros for an output the loss does not use
    shapes = [(b, T, d), (b, T, d), (b, T, d, n), (b, T, d, n), (b, d, n), (b, d, n)]
    inputs = [u, dt, A, B, C, state, outputs[2], gy, gsf]
    gu, gdt, gB, gC, gA, gs0 = _launch(_cuda_kernel("train_bwd"), inputs, u.shape, n, shapes)
    return gu, gdt, gA.sum(axis=0), gB.sum(axis=2), gC.sum(axis=2), gs0


def ssm_scan_cuda_train(u, dt, A, B, C, D, state):
    """Training path on MLX's CUDA backend: the scan kernels with their gradient."""
    f32 = mx.float32
    args = [x.astype(f32) for x in (u, dt, A, B, C, state)]
    y, state, _ = _scan_train(*args)
    return y + D.astype(f32) * args[0], state


# ---------------------------------------------------------------------------------------------
# Metal selective-scan kernel: the CUDA kernel's shape for Apple GPUs. One thread per
# (sequence, channel, state); a channel's NS lanes sit in one SIMD group (NS divides 32) and
# reduce y = sum_n s[n] C[n] with simd_shuffle_xor. UNTESTED ON APPLE HARDWARE: it was written
# without access to a Mac, so it checks itself. The first prompt on a Metal device runs the
# kernel and the portable scan on a small slice of that prompt and compares; a compile error,
# a runtime error or a mismatch turns the kernel off for the process and logs one warning
# (scan_kernel_note() says which), and the portable scan serves every prompt.

SCAN_CHECK_TOL = 1e-3  # max |kernel - portable| / max |portable| on the check slice
_metal = {"kernel": None, "ok": None, "note": None}  # ok: None = not checked yet
_log = logging.getLogger(__name__)


def _build_metal_scan_kernel():
    return mx.fast.metal_kernel(
        name="sambay_selective_scan", source=_METAL_SCAN_SRC, **_SCAN_KERNEL_IO
    )


def ssm_scan_metal(u, dt, A, B, C, D, state):
    """Prompt path on MLX's Metal backend (see the section comment: untested on Apple
    hardware; selective_scan uses it only after metal_scan_ready())."""
    if _metal["kernel"] is None:
        _metal["kernel"] = _build_metal_scan_kernel()
    y, state = _run_scan_kernel(_metal["kernel"], u, dt, A, B, C, D, state)
    return y, state


def scan_kernel_note() -> str | None:
    """Why a scan kernel is off in this process (None while the kernels are on or unchecked):
    the Metal kernel, or the CUDA prompt scan's time chunks."""
    return _metal["note"] or _chunks["note"]


def _check_slice(args, T: int, d: int):
    """The first sequence, T tokens and d channels of a scan's inputs."""
    u, dt, A, B, C, D, state = args
    T, d = min(u.shape[1], T), min(u.shape[2], d)
    return u[:1, :T, :d], dt[:1, :T, :d], A[:d], B[:1, :T], C[:1, :T], D[:d], state[:1, :d]


def _agreement_failure(run, reference, args, tol: float, against: str) -> str | None:
    """Why ``run(*args)`` does not give ``reference(*args)``'s outputs (a compile or launch
    error, or max |run - reference| / max |reference| over all outputs above ``tol``), or
    None when it does: the kernels' self-checks."""
    f32 = mx.float32
    try:
        got, want = run(*args), reference(*args)
        mx.eval(got, want)
        scale = max(max(mx.abs(w.astype(f32)).max().item() for w in want), 1e-6)
        diffs = (mx.abs(g.astype(f32) - w.astype(f32)).max().item() for g, w in zip(got, want))
        err = max(diffs) / scale
    except Exception as e:  # a compile or launch error: any of them means "off"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not err <= tol:  # also catches NaN
        return f"mismatch {err:.2g} against {against} on its self-check"
    return None


def _self_check_failure(scan, sl) -> str | None:
    """Why ``scan`` does not give the portable scan's outputs on the inputs ``sl``."""
    return _agreement_failure(scan, ssm_scan_chunked, sl, SCAN_CHECK_TOL, "the portable scan")


def _turn_off(state: dict, note: str) -> bool:
    state["ok"], state["note"] = False, note
    _log.warning(note)
    return False


def metal_scan_ready(u, dt, A, B, C, D, state) -> bool:
    """True once the kernel has matched the portable scan on a slice of the first prompt."""
    if _metal["ok"] is not None:
        return _metal["ok"]
    why = _self_check_failure(ssm_scan_metal, _check_slice((u, dt, A, B, C, D, state), 64, 64))
    if why:
        return _turn_off(
            _metal, f"Metal selective-scan kernel off ({why}); using the portable scan"
        )
    _metal["ok"] = True
    return True


# The CUDA prompt scan's time chunks check themselves once per process, as the Metal kernel
# does: the first prompt long enough to be cut runs 256 tokens x 64 channels of itself in 4
# chunks and compares with the portable scan; on an error or a mismatch every prompt scans in
# one pass sequential in time, and generate --verbose says so.
_chunks = {"ok": None, "note": None}


def time_chunks_ready(u, dt, A, B, C, D, state) -> bool:
    """True once the time-chunked CUDA kernels have matched the portable scan."""
    if _chunks["ok"] is not None:
        return _chunks["ok"]
    sl = _check_slice((u, dt, A, B, C, D, state), 256, 64)
    K = time_chunks(1, sl[0].shape[1], sl[0].shape[2], A.shape[1])
    why = _self_check_failure(lambda *a: _cuda_scan(*a, K), sl)
    if why:
        note = f"CUDA scan's time chunks off ({why}); scanning in one pass"
        return _turn_off(_chunks, note)
    _chunks["ok"] = True
    return True


def _lanes_fit(n: int) -> bool:
    """Whether a channel's n states fit the GPU kernels' lanes (a power of two up to 32, so
    a warp / SIMD group holds whole channels)."""
    return n <= 32 and n & (n - 1) == 0


def _gpu_backend() -> str | None:
    """ "cuda" or "metal" when MLX's default device is a GPU of that backend, else None."""
    if mx.default_device() != mx.gpu:
        return None
    if mx.cuda.is_available():
        return "cuda"
    return "metal" if mx.metal.is_available() else None


def selective_scan(u, dt, A, B, C, D, state, training: bool = False):
    if u.shape[1] == 1:
        y, state = ssm_step(u[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, state)
        return y[:, None], state
    backend = _gpu_backend() if _lanes_fit(A.shape[1]) else None
    if backend == "cuda" and training:
        return ssm_scan_cuda_train(u, dt, A, B, C, D, state)
    if backend == "cuda":
        return ssm_scan_cuda(u, dt, A, B, C, D, state)
    if backend == "metal" and not training and metal_scan_ready(u, dt, A, B, C, D, state):
        return ssm_scan_metal(u, dt, A, B, C, D, state)
    if not training and mx.default_device() == mx.cpu:
        return ssm_scan_numpy(u, dt, A, B, C, D, state)
    return ssm_scan_chunked(u, dt, A, B, C, D, state)


# ---------------------------------------------------------------------------------------------
# Decode-step kernels. On a GPU a one-token Mamba step is two kernels where the compiled functions
# (conv_step, mamba_step, the slices and squeezes between them) give 45 primitives a layer, x_proj
# and dt_proj included (benchmarks/profile_layers.py --kernels), of which the kernels keep 4 beside
# their two; each primitive costs the host time to encode, and a short-context decode waits on the
# host, not on the device (benchmarks/results/mlx_h100.md). The conv kernel, one thread per
# (sequence, channel), reads x from in_proj's output and the conv window and writes u = SiLU(conv)
# and the shifted window; after x_proj and dt_proj, the scan kernel, one thread per (sequence,
# channel, state) with a channel's NS lanes in one warp / SIMD group, computes softplus(dt), the
# state update, y = s . C + D u (a shuffle reduction) and the gated output y SiLU(z), reading B, C
# from x_proj's output and z from in_proj's. All arithmetic in float32 as in mamba_step; outputs
# other than the state in the model's dtype (T). Both backends check themselves once per process and
# dtype against the compiled functions on random inputs (the Metal spelling is untested on Apple
# hardware); a failure turns them off for the process, logs one warning (step_kernel_note()), and
# decode keeps the compiled path.
_STEP_CONV_SRC = """
    @UINT@ gid = @GID@;
    int nb = dims[0];
    if (gid >= (@UINT@)(nb * DI)) return;
    @UINT@ d = gid % DI, b = gid / DI;
    size_t w0 = (size_t)d * KC, s0 = (size_t)b * (KC - 1) * DI + d;
    float c = static_cast<float>(bias[d]);
    for (int k = 0; k < KC - 1; ++k) {
        float x = static_cast<float>(conv_state[s0 + k * DI]);
        c += static_cast<float>(wc[w0 + k]) * x;
        if (k > 0) conv_out[s0 + (k - 1) * DI] = static_cast<T>(x);
    }
    float x = static_cast<float>(xz[(size_t)b * 2 * DI + d]);
    c += static_cast<float>(wc[w0 + KC - 1]) * x;
    conv_out[s0 + (KC - 2) * DI] = static_cast<T>(x);
    u[(size_t)b * DI + d] = static_cast<T>(c * (1.0f / (1.0f + @EXP@(-c))));
"""
_STEP_SCAN_SRC = """
    @UINT@ gid = @GID@;
    int nb = dims[0];
    @UINT@ n = gid % NS, ch = gid / NS;
    bool active = ch < (@UINT@)(nb * DI);
    if (!active) ch = 0;
    @UINT@ d = ch % DI, b = ch / DI;
    float x = static_cast<float>(dtl[(size_t)b * DI + d]);
    float e = @EXP@(-(x < 0.0f ? -x : x));
    float dtv = x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + @LOG1P_E@;
    float a = -@EXP@(static_cast<float>(A_log[(size_t)d * NS + n]));
    float uv = static_cast<float>(u[(size_t)b * DI + d]);
    size_t row = (size_t)b * (R + 2 * NS);
    float bv = static_cast<float>(dbc[row + R + n]), cv = static_cast<float>(dbc[row + R + NS + n]);
    size_t si = ((size_t)b * DI + d) * NS + n;
    float s = @EXP@(dtv * a) * static_cast<float>(state[si]) + dtv * uv * bv;
    float p = s * cv;
    for (@OFF@ off = NS / 2; off > 0; off >>= 1) p += @SHUFFLE@;
    if (active) state_out[si] = s;
    if (active && n == 0) {
        float yv = p + static_cast<float>(D[d]) * uv;
        float zv = static_cast<float>(xz[(size_t)b * 2 * DI + DI + d]);
        y[(size_t)b * DI + d] = static_cast<T>(yv);
        gated[(size_t)b * DI + d] = static_cast<T>(yv * (zv * (1.0f / (1.0f + @EXP@(-zv)))));
    }
"""
_STEP_IO = {
    "conv": ("sambay_step_conv", ["xz", "conv_state", "wc", "bias", "dims"], ["u", "conv_out"]),
    "scan": (
        "sambay_step_scan",
        ["xz", "u", "dbc", "dtl", "A_log", "D", "state", "dims"],
        ["gated", "y", "state_out"],
    ),
}
_STEP_SRC = {"conv": _STEP_CONV_SRC, "scan": _STEP_SCAN_SRC}
_LOG1P_E = {  # log(1 + e) for 0 < e <= 1; Metal has no log1p
    "cuda": "log1pf(e)",
    "metal": "(e < 1e-3f ? e * (1.0f - 0.5f * e) : metal::log(1.0f + e))",
}


def _step_source(which: str, backend: str) -> str:
    spell = _CUDA_SPELLING if backend == "cuda" else _METAL_SPELLING
    return _spell(_STEP_SRC[which], spell | {"LOG1P_E": _LOG1P_E[backend]})


@cache
def _step_kernel(which: str, backend: str):
    """The decode-step kernel ``which`` ("conv" or "scan") for ``backend``, built on first use."""
    name, inputs, outputs = _STEP_IO[which]
    make = mx.fast.cuda_kernel if backend == "cuda" else mx.fast.metal_kernel
    return make(
        name=name, input_names=inputs, output_names=outputs, source=_step_source(which, backend)
    )


def step_conv(kernel, xz, conv_state, w, bias):
    """conv_step's (u [b, d], new conv window) from in_proj's output xz [b, 1, 2d]."""
    b, K, d = xz.shape[0], w.shape[-1], w.shape[0]
    u, conv = kernel(
        inputs=[xz, conv_state, w, bias, mx.array([b], dtype=mx.int32)],
        template=[("T", xz.dtype), ("DI", d), ("KC", K)],
        **_threads(b * d),
        output_shapes=[(b, d), (b, K - 1, d)],
        output_dtypes=[xz.dtype, xz.dtype],
    )
    return u, conv


def step_scan(kernel, xz, u, dbc, dtl, A_log, D, state):
    """mamba_step's (gated [b, 1, d], y [b, 1, d], state) from x_proj's output dbc [b, r+2n]
    and dt_proj's dtl [b, d]."""
    b, d, n = state.shape
    gated, y, state = kernel(
        inputs=[xz, u, dbc, dtl, A_log, D, state, mx.array([b], dtype=mx.int32)],
        template=[("T", xz.dtype), ("DI", d), ("NS", n), ("R", dbc.shape[-1] - 2 * n)],
        **_threads(b * d * n),
        output_shapes=[(b, 1, d), (b, 1, d), (b, d, n)],
        output_dtypes=[xz.dtype, xz.dtype, mx.float32],
    )
    return gated, y, state


STEP_KERNELS = True  # False: GPU decode steps keep the compiled functions (benchmarks)
STEP_CHECK_TOL = 1e-3  # as SCAN_CHECK_TOL, against the compiled step
_step = {"ok": {}, "note": None}  # ok: dtype -> bool once checked


def step_compiled(xz, conv_state, w, bias, x_proj, dt_proj, A_log, D, state):
    """A one-token Mamba step from in_proj's output xz [b, 1, 2d] through the compiled
    functions: (gated [b, 1, d], y [b, 1, d], conv window, state). ``x_proj`` and ``dt_proj``
    are callables (the layer's projections)."""
    d, n = w.shape[0], state.shape[-1]
    u, conv = conv_step(conv_state, xz[..., :d], w, bias)
    u = u[:, 0]  # [b, d]
    dbc = x_proj(u)
    r = dbc.shape[-1] - 2 * n
    dt, B, C = dbc[:, :r], dbc[:, r : r + n], dbc[:, r + n :]
    gated, y, state = mamba_step(u, dt_proj(dt), A_log, B, C, D, state, xz[:, 0, d:])
    return gated[:, None], y[:, None], conv, state


def step_kernels(backend, xz, conv_state, w, bias, x_proj, dt_proj, A_log, D, state):
    """step_compiled's outputs through the decode-step kernels of ``backend``."""
    u, conv = step_conv(_step_kernel("conv", backend), xz, conv_state, w, bias)
    dbc = x_proj(u)
    dtl = dt_proj(dbc[:, : dbc.shape[-1] - 2 * state.shape[-1]])
    gated, y, state = step_scan(_step_kernel("scan", backend), xz, u, dbc, dtl, A_log, D, state)
    return gated, y, conv, state


def _step_check_failure(backend: str, dtype) -> str | None:
    """Why the step kernels do not give the compiled functions' outputs on random inputs of
    ``dtype`` (_agreement_failure), or None."""
    b, d, n, r, K = 2, 64, 16, 8, 4
    key = mx.random.key(0)
    ks = mx.random.split(key, 9)
    wx = (0.2 * mx.random.normal((d, r + 2 * n), key=ks[4])).astype(dtype)
    wdt = (0.3 * mx.random.normal((r, d), key=ks[5])).astype(dtype)
    args = (
        mx.random.normal((b, 1, 2 * d), key=ks[0]).astype(dtype),
        mx.random.normal((b, K - 1, d), key=ks[1]).astype(dtype),
        (0.5 * mx.random.normal((d, 1, K), key=ks[2])).astype(dtype),
        (0.1 * mx.random.normal((d,), key=ks[3])).astype(dtype),
        lambda u: u @ wx,
        lambda dt: dt @ wdt,
        mx.log(mx.broadcast_to(mx.arange(1, n + 1, dtype=mx.float32), (d, n))),
        mx.random.normal((d,), key=ks[6]),
        mx.random.normal((b, d, n), key=ks[7]),
    )
    tol = max(STEP_CHECK_TOL, 2 * mx.finfo(dtype).eps)  # or a rounding of dtype either way
    run = partial(step_kernels, backend)
    return _agreement_failure(run, step_compiled, args, tol, "the compiled step")


def step_kernels_backend(dtype) -> str | None:
    """The backend whose decode-step kernels serve a Mamba step in ``dtype`` ("cuda" or
    "metal", once they have passed their self-check in this process), or None."""
    backend = _gpu_backend() if STEP_KERNELS else None
    if backend is None:
        return None
    ok = _step["ok"].get(dtype)
    if ok is None:
        why = _step_check_failure(backend, dtype)
        ok = why is None
        if why:
            _step["note"] = f"{backend} decode-step kernels off ({why}); using compiled steps"
            _log.warning(_step["note"])
        _step["ok"][dtype] = ok
    return backend if ok else None


def step_kernel_note() -> str | None:
    """Why the decode-step kernels are off in this process (None while on or unchecked)."""
    return _step["note"]


# ---------------------------------------------------------------------------------------------
# Blocks


@partial(mx.compile, shapeless=True)
def swiglu(gate, up):
    g = gate.astype(mx.float32)
    return (nn.silu(g) * up.astype(mx.float32)).astype(gate.dtype)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fc1 = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.fc2 = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x):
        gate, up = mx.split(self.fc1(x), 2, axis=-1)
        return self.fc2(swiglu(gate, up))


class DepthwiseConv1d(nn.Module):
    """Causal depthwise conv with the HF weight layout [channels, 1, kernel] (run by
    ``conv_silu`` and ``conv_step``)."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__()
        self.weight = mx.zeros((channels, 1, kernel))
        if bias:
            self.bias = mx.zeros((channels,))

    def bias_or_zeros(self, dtype) -> mx.array:
        return self.bias if "bias" in self else mx.zeros((self.weight.shape[0],), dtype)


class Mamba(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        H, d = args.hidden_size, args.mamba_expand * args.hidden_size
        self.d_inner, self.d_state, self.d_conv = d, args.mamba_d_state, args.mamba_d_conv
        self.dt_rank = args.mamba_dt_rank
        self.in_proj = nn.Linear(H, 2 * d, bias=args.mamba_proj_bias)
        self.conv1d = DepthwiseConv1d(d, self.d_conv, args.mamba_conv_bias)
        self.x_proj = nn.Linear(d, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d, bias=True)
        self.A_log = mx.log(mx.broadcast_to(mx.arange(1, self.d_state + 1), (d, self.d_state)))
        self.D = mx.ones((d,))
        self.out_proj = nn.Linear(d, H, bias=args.mamba_proj_bias)

    def __call__(self, x, cache=None, mask=None):
        """Returns (output, y) where y is the pre-gate scan readout (the GMU memory).

        ``mask`` [b, T] (from the cache's ``make_mask``) marks the real positions of a padded
        batch: a padded position gets a zero conv input and Δ = 0, so exp(Δ A) = 1 and Δ u B = 0
        leave the state unchanged in every scan path, and the conv window is read at each row's
        real end (``cache.lengths``). Outputs at padded positions are don't-cares.
        """
        b, T, _ = x.shape
        xz = self.in_proj(x)
        conv_state = cache[0] if cache is not None else None
        if conv_state is None:
            conv_state = mx.zeros((b, self.d_conv - 1, self.d_inner), dtype=xz.dtype)
        if T == 1 and cache is not None and not self.training and mask is None:
            return self._step(xz, conv_state, cache)
        xb, z = mx.split(xz, 2, axis=-1)
        if mask is not None:
            xb = mx.where(mask[..., None], xb, 0)
        xpad = mx.concatenate([conv_state, xb], axis=1)
        conv = self.conv1d
        u, u32 = conv_silu(xpad, conv.weight, conv.bias_or_zeros(xb.dtype))
        dt, B, C = mx.split(self.x_proj(u), [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        f32 = mx.float32
        dt = dt_softplus(self.dt_proj(dt))
        if mask is not None:
            dt = mx.where(mask[..., None], dt, 0.0)
        state = cache[1] if cache is not None else None
        if state is None:
            state = mx.zeros((b, self.d_inner, self.d_state), dtype=f32)
        A = -mx.exp(self.A_log.astype(f32))
        y, state = selective_scan(
            u32,
            dt,
            A,
            B.astype(f32),
            C.astype(f32),
            self.D.astype(f32),
            state,
            training=self.training,
        )
        if cache is not None:
            keep = self.d_conv - 1
            lengths = getattr(cache, "lengths", None)
            if lengths is None:
                cache[0] = xpad[:, -keep:]
            else:  # the K-1 inputs before each row's real end (old state if it has none)
                ends = mx.clip(lengths, 0, T)
                cache[0] = mx.take_along_axis(xpad, (ends[:, None] + mx.arange(keep))[..., None], 1)
            cache[1] = state
            if mask is not None:
                cache.advance(T)
        return self.out_proj(output_gate(y, z)), y.astype(x.dtype)

    def _step(self, xz, conv_state, cache):
        """Decode path: the same math as above for one token (step_compiled)."""
        conv = self.conv1d
        state = cache[1]
        if state is None:
            state = mx.zeros((xz.shape[0], self.d_inner, self.d_state), dtype=mx.float32)
        args = (conv.weight, conv.bias_or_zeros(xz.dtype), self.x_proj, self.dt_proj, self.A_log)
        gated, y, cache[0], cache[1] = step_compiled(xz, conv_state, *args, self.D, state)
        return self.out_proj(gated), y


class GMU(nn.Module):
    """Gated memory unit: out_proj(SiLU(in_proj(x)) * memory)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        d = args.mamba_expand * args.hidden_size
        self.in_proj = nn.Linear(args.hidden_size, d, bias=False)
        self.out_proj = nn.Linear(d, args.hidden_size, bias=False)

    def __call__(self, x, memory):
        return self.out_proj(swiglu(self.in_proj(x), memory))


class DiffLambda(nn.Module):
    """HF's `inner_cross_attn`: the lambda vectors and the sub-layer RMSNorm over 2*head_dim."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.lambda_q1 = mx.zeros((head_dim,))
        self.lambda_k1 = mx.zeros((head_dim,))
        self.lambda_q2 = mx.zeros((head_dim,))
        self.lambda_k2 = mx.zeros((head_dim,))
        self.subln = nn.RMSNorm(2 * head_dim, eps=eps)

    def full(self, lambda_init: float):
        """lambda = exp(q1.k1) - exp(q2.k2) + lambda_init, in float32 (input-independent)."""
        # read as dict items (a Module is a dict): this runs for every layer on every token
        key = (
            id(self["lambda_q1"]),
            id(self["lambda_k1"]),
            id(self["lambda_q2"]),
            id(self["lambda_k2"]),
        )
        cached = getattr(self, "_lambda_cache", None)
        if not self.training and cached is not None and cached[0] == key:
            return cached[1]
        f32 = mx.float32
        lam = (
            mx.exp(mx.sum(self.lambda_q1.astype(f32) * self.lambda_k1.astype(f32)))
            - mx.exp(mx.sum(self.lambda_q2.astype(f32) * self.lambda_k2.astype(f32)))
            + lambda_init
        )
        if not self.training:  # a plain attribute, not a parameter
            object.__setattr__(self, "_lambda_cache", (key, lam))
        return lam


def _pair_queries(q, m: int, g: int, hd: int):
    """[b, T, n_heads*hd] -> [b, m*2*g, T, 2hd]: branch-1 rows [q1, 0], branch-2 rows [0, q2].

    Query head 2j (branch 1) and 2j+1 (branch 2) of pair j = g*kv + jj use kv pair kv.
    """
    b, T = q.shape[:2]
    q = q.reshape(b, T, m, g, 2, hd).transpose(0, 2, 4, 3, 1, 5)  # [b, m, branch, g, T, hd]
    return (q[..., None, :] * _branch_eye(q.dtype)).reshape(b, m * 2 * g, T, 2 * hd)


@cache
def _branch_eye(dtype) -> mx.array:
    """The 2x2 identity that keeps half == branch, made and evaluated once per dtype: a
    constant to the compiled decode steps, not an eye (zeros, aranges, a scatter) per layer
    per token."""
    eye = mx.eye(2, dtype=dtype).reshape(1, 1, 2, 1, 1, 2, 1)
    mx.eval(eye)
    return eye


def _combine(o, lam, subln_w, lambda_init: float, eps: float, m: int, g: int):
    """O = RMSNorm(A1 - lambda A2) * (1 - lambda_init), back to [b, T, n_heads*hd]."""
    b, _, T, d2 = o.shape
    lam = lam.astype(o.dtype)
    o = o.reshape(b, m, 2, g, T, d2)
    o = o[:, :, 0] - lam * o[:, :, 1]  # [b, m, g, T, 2hd]
    o = mx.fast.rms_norm(o, subln_w, eps) * (1.0 - lambda_init)
    if T == 1:  # [b, m, g, 1, d2] is already in [b, 1, m*g*d2] order
        return o.reshape(b, 1, m * g * d2)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, T, m * g * d2)


_pair_queries_step = mx.compile(_pair_queries)

# Sliding-window prompts longer than two windows attend in bands (DiffAttention.attend):
# blocks of queries, each over the window + block keys its queries can reach. On a GPU a block
# is one window (an H100 at the real width: 0.27 ms a 2K chunk, against 0.41 for half-window
# blocks and 1.10 for the whole window mask; benchmarks/results/mlx_h100.md); on a CPU, where
# the cost is the scores, half a window (1.5 windows of scores a query instead of 2).
BANDED_WINDOW_PREFILL = True


def band_block(window: int) -> int:
    """Queries per block of window_band_attention on the default device."""
    return window if mx.default_device() == mx.gpu else max(1, window // 2)


def window_band_attention(q, keys, values, window: int, scale: float, block: int):
    """Sliding-window attention of T queries over S keys as one attention call over bands.

    The last T keys are the queries' own, in order (the cache's update returns them so), and
    query i sees keys S-T+i-window+1 .. S-T+i. Each block of ``block`` queries attends to the
    window + block keys ending at its last query, the blocks stacked along the batch axis, with
    one band mask for all of them (slots before key 0 are padding, masked). The softmax runs
    over the same keys as with the whole [T, S] mask, with window + block scores per query
    instead of S.
    """
    b, h, T, _ = q.shape
    S, dv = keys.shape[2], values.shape[-1]
    nb = -(-T // block)
    pad_q = nb * block - T
    span = window + block
    o = S - T

    def bands(x):
        """[b, hk, S, d] -> [b * nb, hk, span, d]: block i reads from key o + i*block - window."""
        x = mx.pad(x, [(0, 0), (0, 0), (window, pad_q), (0, 0)])
        x = mx.stack([x[:, :, o + i * block : o + i * block + span] for i in range(nb)], axis=1)
        return x.reshape(b * nb, *x.shape[2:])

    if pad_q:
        q = mx.pad(q, [(0, 0), (0, 0), (0, pad_q), (0, 0)])
    q = q.reshape(b, h, nb, block, -1).transpose(0, 2, 1, 3, 4).reshape(b * nb, h, block, -1)
    qi, jj = mx.arange(block)[:, None], mx.arange(span)[None]
    first = window - o - block * mx.arange(nb)  # a block's first slot holding a real key
    allowed = (jj > qi) & (jj <= qi + window) & (jj >= first[:, None, None])  # [nb, block, span]
    mask = mx.where(allowed, mx.array(0, q.dtype), mx.array(-mx.inf, q.dtype))
    mask = mx.broadcast_to(mask[None, :, None], (b, nb, 1, block, span)).reshape(
        b * nb, 1, block, span
    )
    out = mx.fast.scaled_dot_product_attention(
        q, bands(keys), bands(values), scale=scale, mask=mask
    )
    out = out.reshape(b, nb, h, block, dv).transpose(0, 2, 1, 3, 4).reshape(b, h, nb * block, dv)
    return out[:, :, :T] if pad_q else out


def attention_mask(cache, T: int, window: int | None):
    """The mask for T new queries, taken before the cache update.

    Batch caches (``BatchKVCache``, ``BatchRotatingKVCache``) give a boolean mask that hides
    each row's padded slots; plain caches give None for one token and "causal" (or a windowed
    array) otherwise, so batch-1 decoding builds no mask at all.

    One-token steps over a ``BatchKVCache`` (the global K/V, read by the global and every cross
    layer) get no array: MLX's fused one-query attention takes none (an array mask falls back
    to an unfused path, ~5x slower at long context on MLX-CUDA). They get None when no row is
    padded, else runs ``[(first row, end row, padding)]`` of rows with equal left padding, each
    attending to its unpadded slice.
    """
    if T == 1 and window is None and isinstance(cache, BatchKVCache):
        pads = [max(0, p) for p in cache.left_padding.tolist()]  # B ints, evaluated already
        runs, start = [], 0
        for i in range(1, len(pads) + 1):
            if i == len(pads) or pads[i] != pads[start]:
                runs.append((start, i, pads[start]))
                start = i
        return None if len(runs) == 1 and runs[0][2] == 0 else runs
    if (
        BANDED_WINDOW_PREFILL
        and window is not None
        and T > 2 * window
        and not isinstance(cache, (BatchKVCache, BatchRotatingKVCache))
    ):
        return "window"  # window_band_attention, from the keys the cache returns
    if cache is not None:
        return cache.make_mask(T, window_size=window, return_array=False)
    if T == 1:
        return None
    if window is not None and T > window:
        return create_causal_mask(T, 0, window_size=window)
    return "causal"


def ssm_mask(cache, T: int):
    """[b, T] real positions for the Mamba layers, or None when nothing is padded.

    One-token steps are never padded (mlx-lm right-pads only prompts, and a left padding is
    used up by the prompt), so they keep the fused step unless ``lengths`` is set.
    """
    if cache is None or not hasattr(cache, "make_mask"):
        return None
    if T == 1 and cache.lengths is None:
        return None
    return cache.make_mask(T)


_combine_step = mx.compile(_combine)


class DiffAttention(nn.Module):
    """Differential attention; `cross` layers project only Q and read the shared K/V.

    The cache holds K and V as pairs of adjacent heads, [b, n_kv/2, t, 2*head_dim] (a pure
    reshape of the projection). Both softmax branches then run as one attention call: branch-1
    queries are [q1, 0] and branch-2 queries are [0, q2] against the paired keys, so every
    key and value in the cache is read once per step for all heads.
    """

    def __init__(self, args: ModelArgs, layer_idx: int, cross: bool):
        super().__init__()
        self.n_heads, self.n_kv = args.num_attention_heads, args.num_key_value_heads
        self.head_dim = hd = args.head_dim
        self.cross = cross
        self.window = args.windows[layer_idx]
        self.lambda_init = lambda_init_fn(layer_idx)
        self.scale = hd**-0.5
        q_dim = self.n_heads * hd
        out = q_dim if cross else q_dim + 2 * self.n_kv * hd
        self.Wqkv = nn.Linear(args.hidden_size, out, bias=True)
        self.out_proj = nn.Linear(q_dim, args.hidden_size, bias=True)
        self.inner_cross_attn = DiffLambda(hd, args.layer_norm_eps)

    def __call__(self, x, cache=None, shared_kv=None, mask="auto"):
        """``mask`` comes from the cache's ``make_mask`` before the update (the model makes one
        per layer kind); ``"auto"`` makes it here, from ``cache`` or a plain causal mask."""
        b, T, _ = x.shape
        if isinstance(mask, str) and mask == "auto":
            mask = attention_mask(None if self.cross else cache, T, self.window)
        hd, m = self.head_dim, self.n_kv // 2
        g = self.n_heads // self.n_kv
        qkv = self.Wqkv(x)
        if self.cross:
            q = qkv
            keys, values = shared_kv
        else:
            q, k, v = mx.split(qkv, [self.n_heads * hd, (self.n_heads + self.n_kv) * hd], -1)
            keys = k.reshape(b, T, m, 2 * hd).transpose(0, 2, 1, 3)
            values = v.reshape(b, T, m, 2 * hd).transpose(0, 2, 1, 3)
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)

        # q heads (h two): pair j = (kv pair j // g, member j % g); branch 1 = even heads
        step = T == 1 and not self.training
        q = (_pair_queries_step if step else _pair_queries)(q, m, g, hd)

        o = self.attend(q, keys, values, mask)

        ica = self.inner_cross_attn
        o = (_combine_step if step else _combine)(
            o,
            ica.full(self.lambda_init),
            ica.subln.weight,
            self.lambda_init,
            ica.subln.eps,
            m,
            g,
        )
        return self.out_proj(o), (keys, values)

    def attend(self, q, keys, values, mask):
        """Both softmax branches in one attention call; ``mask`` as from attention_mask.

        A sliding-window prompt longer than two windows runs in bands: ``"window"`` (a plain
        cache) as one call over stacked blocks (window_band_attention); an array mask (a batch
        cache, whose mask also hides each row's padding) as one call per block of ``window``
        queries over the keys its window can reach, cut from that mask (the new keys sit at
        the end of ``keys`` in order, so query i sees at most keys S-T+i-window+1 .. S-T+i).
        Either way the softmax runs over the same keys as with the whole mask."""
        sdpa = mx.fast.scaled_dot_product_attention
        if isinstance(mask, list):  # runs of rows with equal left padding (attention_mask)
            return mx.concatenate(
                [
                    sdpa(q[a:e], keys[a:e, :, p:], values[a:e, :, p:], scale=self.scale)
                    for a, e, p in mask
                ]
            )
        W, T, S = self.window, q.shape[2], keys.shape[2]
        if isinstance(mask, str) and mask == "window":  # attention_mask: a plain windowed prompt
            return window_band_attention(q, keys, values, W, self.scale, band_block(W))
        if BANDED_WINDOW_PREFILL and W and isinstance(mask, mx.array) and T > 2 * W:
            out = []
            for s in range(0, T, W):
                e = min(s + W, T)
                k0, k1 = max(0, S - T + s - W + 1), S - T + e
                m = mask[..., s:e, k0:k1]
                out.append(
                    sdpa(
                        q[:, :, s:e],
                        keys[:, :, k0:k1],
                        values[:, :, k0:k1],
                        scale=self.scale,
                        mask=m,
                    )
                )
            return mx.concatenate(out, axis=2)
        return sdpa(q, keys, values, scale=self.scale, mask=mask)


@mx.compile
def _add_cast(h, o, like):
    h = h + o
    return h, h.astype(like.dtype)


@mx.compile
def _add_norm(h, o, w, b, eps: float):
    h = h + o
    return h, mx.fast.layer_norm(h.astype(w.dtype), w, b, eps)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.kind = kind = args.layer_kind(layer_idx)
        self.input_layernorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        if kind in ("mamba", "mamba_mem"):
            self.attn = Mamba(args)
        elif kind == "gmu":
            self.attn = GMU(args)
        else:
            self.attn = DiffAttention(args, layer_idx, cross=kind == "cross")
        self.mlp = MLP(args)
        # The mask this layer reads (Phi4FlashModel makes one per key per call): the Mamba
        # layers share one, attention layers one per window, cross layers the global layer's.
        if kind in ("mamba", "mamba_mem"):
            self.mask_key = "ssm"
        elif kind in ("swa", "attn"):
            self.mask_key = self.attn.window
        else:
            self.mask_key = "shared" if kind == "cross" else "none"

    # Decode steps run as compiled functions of this layer's parameters (see "Compiled decode"
    # below); set False on a layer (or Model.set_compiled_decode) for the uncompiled path.
    compiled_decode = True

    def _compiled_step(self, h, cache, memory, shared_kv, mask):
        """One decode token through the compiled functions, or None where they do not apply
        (a padded Mamba step, a cache of another kind): the caller then runs the plain path."""
        built = _kept(self, "_decode_fns")
        fns = built.get(STEP_KERNELS)
        if fns is None:
            fns = built[STEP_KERNELS] = _build_decode_fns(self)
        kind = self.kind
        if kind == "gmu":
            h, hn = fns["layer"](h, memory)
            return h, memory, shared_kv, hn
        if kind in ("mamba", "mamba_mem"):
            if cache is None or not isinstance(mask, (str, type(None))):
                return None
            conv_state, state = cache[0], cache[1]
            if conv_state is None or state is None:
                return None
            h, hn, memory, cache[0], cache[1] = fns["layer"](h, conv_state, state)
            return h, memory, shared_kv, hn
        attn = self.attn
        if isinstance(mask, str) and mask == "auto":
            mask = attention_mask(None if attn.cross else cache, 1, attn.window)
        if attn.cross:
            q = fns["pre"](h)
            keys, values = shared_kv
        else:
            q, k, v = fns["pre"](h)
            keys, values = (k, v) if cache is None else cache.update_and_fetch(k, v)
            shared_kv = (keys, values)
        o = attn.attend(q, keys, values, mask)
        h, hn = fns["post"](h, o, attn.inner_cross_attn.full(attn.lambda_init))
        return h, memory, shared_kv, hn

    def __call__(self, h, cache=None, memory=None, shared_kv=None, hn=None, mask="auto"):
        """h is the float32 residual stream; norms see it in the weights' dtype (``hn``, when
        the previous decode step already made that cast). ``mask``: see Mamba/DiffAttention
        (a Mamba layer reads "auto" as no padding). Returns (h, memory, shared_kv, hn)."""
        if h.shape[1] == 1 and self.compiled_decode and not self.training:
            out = self._compiled_step(h, cache, memory, shared_kv, mask)
            if out is not None:
                return out
        norm = self.input_layernorm
        x = norm(h.astype(norm.weight.dtype) if hn is None else hn)
        if self.kind == "gmu":
            o = self.attn(x, memory)
        elif self.kind == "cross":
            o, _ = self.attn(x, shared_kv=shared_kv, mask=mask)
        elif self.kind in ("mamba", "mamba_mem"):
            o, memory = self.attn(x, cache, None if isinstance(mask, str) else mask)
        else:
            o, shared_kv = self.attn(x, cache, mask=mask)
        norm = self.post_attention_layernorm
        if h.shape[1] == 1 and not self.training:
            h, x = _add_norm(h, o, norm.weight, norm.bias, norm.eps)
            h, hn = _add_cast(h, self.mlp(x), norm.weight)
            return h, memory, shared_kv, hn
        h = h + o
        x = norm(h.astype(norm.weight.dtype))
        return h + self.mlp(x), memory, shared_kv, None


# ---------------------------------------------------------------------------------------------
# Compiled decode. Each layer's one-token step is traced once into compiled functions whose
# implicit inputs are the layer's parameters (so reloaded or updated weights are seen) and
# whose explicit inputs and outputs are the residual stream and the layer's cache arrays:
# Mamba and GMU layers are one function each (norms, projections, conv, scan, gate, MLP and
# residuals); attention layers are a function before the cache update (norm, Wqkv, paired
# queries) and one after the attention call (differential combine with the layer's lambda, sub-norm,
# out_proj, residual, norm, MLP). The K/V cache update and the attention call stay outside:
# the cache's length changes every token, and a batch cache brings its own mask.


def _decode_pieces(layer: "DecoderLayer") -> dict:
    """The layer's one-token step as plain functions of (h, ...): "layer" for Mamba and GMU
    layers, "pre" and "post" around the attention call for attention layers."""
    f32 = mx.float32
    n1, n2, mlp, attn = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp, layer.attn

    def pre_norm(h):
        return n1(h.astype(n1.weight.dtype))

    def tail(h, o):  # residual, post-attention norm, MLP, residual; hn for the next layer
        h = h + o
        h = h + mlp(n2(h.astype(n2.weight.dtype))).astype(f32)
        return h, h.astype(n1.weight.dtype)

    if layer.kind == "gmu":

        def gmu(h, memory):
            return tail(h, attn(pre_norm(h), memory).astype(f32))

        return {"layer": gmu}
    if layer.kind in ("mamba", "mamba_mem"):
        mb = attn
        fits = _lanes_fit(mb.d_state)
        backend = step_kernels_backend(mb.conv1d.weight.dtype) if fits else None
        step = partial(step_kernels, backend) if backend else step_compiled

        def mamba(h, conv_state, state):  # Mamba._step's conv_step and mamba_step, traced in
            xz = mb.in_proj(pre_norm(h))
            conv = mb.conv1d
            args = (conv.weight, conv.bias_or_zeros(xz.dtype), mb.x_proj, mb.dt_proj, mb.A_log)
            gated, y, new_conv, state = step(xz, conv_state, *args, mb.D, state)
            h, hn = tail(h, mb.out_proj(gated).astype(f32))
            return h, hn, y, new_conv, state

        return {"layer": mamba}
    hd, m = attn.head_dim, attn.n_kv // 2
    g = attn.n_heads // attn.n_kv
    ica = attn.inner_cross_attn

    def pre(h):
        b = h.shape[0]
        qkv = attn.Wqkv(pre_norm(h))
        if attn.cross:
            return _pair_queries(qkv, m, g, hd)
        q, k, v = mx.split(qkv, [attn.n_heads * hd, (attn.n_heads + attn.n_kv) * hd], -1)
        k = k.reshape(b, 1, m, 2 * hd).transpose(0, 2, 1, 3)
        v = v.reshape(b, 1, m, 2 * hd).transpose(0, 2, 1, 3)
        return _pair_queries(q, m, g, hd), k, v

    def post(h, o, lam):  # lam: DiffLambda.full, computed once per weights, not per token
        o = _combine(o, lam, ica.subln.weight, attn.lambda_init, ica.subln.eps, m, g)
        return tail(h, attn.out_proj(o).astype(f32))

    return {"pre": pre, "post": post}


def _kept(module: nn.Module, attr: str) -> dict:
    """A dict kept on ``module`` as a plain attribute (not a parameter), made on first use: the
    decode functions built for it, keyed by STEP_KERNELS (one set with, one without)."""
    kept = module.__dict__.get(attr)
    if kept is None:
        kept = {}
        object.__setattr__(module, attr, kept)
    return kept


def _build_decode_fns(layer: "DecoderLayer") -> dict:
    return {k: mx.compile(f, inputs=layer.state) for k, f in _decode_pieces(layer).items()}


# ---------------------------------------------------------------------------------------------
# Whole-step decode. With plain caches (mlx-lm's generate_step, batch 1 or any batch without
# padding) one decode token runs as a few compiled functions over many layers instead of one
# or two per layer: the model is cut only at the attention calls over the global K/V (the
# global layer and the cross layers), whose key count grows every token. Everything between
# two such calls, the sliding-window layers' cache writes and attention included, is one
# compiled function whose inputs and outputs are the residual stream, the Mamba states and
# the sliding-window K/V buffers. A sliding-window cache is written where mlx-lm's
# RotatingKVCache writes one token (its rotating index) and keeps its bookkeeping; steps where
# that cache grows or trims (the first tokens after a prompt, every 256 tokens while it
# fills) take the per-layer path. Model.set_compiled_decode(False) turns both off.
WHOLE_STEP_DECODE = True


class WholeStep:
    """The compiled segments of one model's decode step (see above)."""

    def __init__(self, model: "Phi4FlashModel"):
        self.layers = layers = list(model.layers)
        # the attention calls over the global K/V: the global layer's, then the cross layers'
        self.cuts = [i for i, layer in enumerate(layers) if layer.kind in ("attn", "cross")]
        self.pieces = [_decode_pieces(layer) for layer in layers]
        self.model = model
        self.fns = {}
        kinds = [layer.kind for layer in layers]
        self.mamba = [i for i, k in enumerate(kinds) if k in ("mamba", "mamba_mem")]
        self.swa = [i for i, k in enumerate(kinds) if k == "swa"]
        self.attn = [layer.attn for layer in layers if isinstance(layer.attn, DiffAttention)]
        self.lambdas = [(a.inner_cross_attn, a.lambda_init) for a in self.attn]
        # SambaY's layout: every cache-owning Mamba and window layer before the global layer
        first = self.cuts[0] if self.cuts else None
        self.applies = (
            first is not None
            and layers[first].kind == "attn"
            and max(self.mamba + self.swa, default=-1) < first
        )

    def matches(self, model) -> bool:
        return len(self.layers) == len(model.layers) and all(
            a is b for a, b in zip(self.layers, model.layers)
        )

    def _segment(self, j: int, masked: bool):
        """Segment j: the post of cut j-1 (or the embedding), the whole layers up to cut j,
        and the pre of cut j (or, after the last cut, the final norm)."""
        key = (j, masked)
        if key in self.fns:
            return self.fns[key]
        layers, pieces, model = self.layers, self.pieces, self.model
        first, last = j == 0, j == len(self.cuts)
        a = 0 if first else self.cuts[j - 1] + 1
        b = len(layers) if last else self.cuts[j]

        def run(h, o, lams, memory, convs, ssms, kbufs, vbufs, pos):
            """Lists stand for what a segment may lack: o, memory and pos hold 0 or 1 arrays."""
            lams, convs, ssms, kbufs, vbufs = map(list, (lams, convs, ssms, kbufs, vbufs))
            memory = memory[0] if memory else None
            pos = pos[0] if pos else None
            if first:
                h = model.embed_tokens(h).astype(mx.float32)
            else:
                h, _ = pieces[a - 1]["post"](h, o[0], lams.pop(0))
            out_convs, out_ssms, out_k, out_v = [], [], [], []
            if kbufs:  # where the token goes and which slots hold keys: the same in every layer
                slots = mx.arange(kbufs[0].shape[2])
                at = (slots == pos[0])[:, None]
                mask = slots < pos[1] if masked else None
            for i in range(a, b):
                layer, fns = layers[i], pieces[i]
                if layer.kind == "gmu":
                    h, _ = fns["layer"](h, memory)
                elif layer.kind in ("mamba", "mamba_mem"):
                    h, _, y, conv, state = fns["layer"](h, convs.pop(0), ssms.pop(0))
                    out_convs.append(conv)
                    out_ssms.append(state)
                    if layer.kind == "mamba_mem":
                        memory = y
                else:  # a sliding-window layer: write the token at pos[0], attend
                    q, k, v = fns["pre"](h)
                    kb, vb = kbufs.pop(0), vbufs.pop(0)
                    kb, vb = mx.where(at, k, kb), mx.where(at, v, vb)
                    h, _ = fns["post"](h, layer.attn.attend(q, kb, vb, mask), lams.pop(0))
                    out_k.append(kb)
                    out_v.append(vb)
            if last:
                norm = model.final_layernorm
                tail = norm(h.astype(norm.weight.dtype))
            else:
                tail = pieces[b]["pre"](h)
            return tail, h, [] if memory is None else [memory], out_convs, out_ssms, out_k, out_v

        parts = [layers[i] for i in range(max(a - 1, 0), b + (0 if last else 1))]
        parts += [model.embed_tokens] if first else []
        parts += [model.final_layernorm] if last else []
        fn = mx.compile(run, inputs=[x.state for x in parts])
        self.fns[key] = fn
        return fn

    def __call__(self, inputs, cache):
        """The final hidden state for one token, or None where the caches do not allow it."""
        if not self.applies:
            return None
        g = self.cuts[0]  # the global layer: its cache is the last one
        if len(cache) <= g or type(cache[g]) is not KVCache:
            return None
        mamba, swa = [cache[i] for i in self.mamba], [cache[i] for i in self.swa]
        for c in mamba:
            if type(c) is not ArraysCache or c[0] is None or c[1] is None:
                return None
        pos, masked = [], False
        if swa:
            c0 = swa[0]
            if any(type(c) is not RotatingKVCache or c.keys is None for c in swa):
                return None
            cap, at = c0.keys.shape[2], c0._idx
            if any((c.keys.shape[2], c.offset, c._idx) != (cap, c0.offset, at) for c in swa):
                return None
            if cap > c0.max_size or (c0.offset >= cap and cap < c0.max_size):
                return None  # RotatingKVCache trims or grows at this step
            if at == c0.max_size:
                at = c0.keep
            valid = min(c0.offset + 1, cap)
            masked = valid < cap
            pos = [mx.array([at, valid])]
        # swa layers first, then the global layer and the cross layers
        lams = [ica.full(lambda_init) for ica, lambda_init in self.lambdas]
        n = len(swa)
        out = self._segment(0, masked)(
            inputs,
            [],
            lams[:n],
            [],
            [c[0] for c in mamba],
            [c[1] for c in mamba],
            [c.keys for c in swa],
            [c.values for c in swa],
            pos,
        )
        (q, k, v), h, memory, convs, ssms, kbufs, vbufs = out
        for c, conv, state in zip(mamba, convs, ssms):
            c[0], c[1] = conv, state
        for c, kb, vb in zip(swa, kbufs, vbufs):
            c.keys, c.values = kb, vb
            c.offset += 1
            c._idx = at + 1
        keys, values = cache[g].update_and_fetch(k, v)
        for j, attn in enumerate(self.attn[n:]):
            o = attn.attend(q, keys, values, None)
            q, h, memory, *_ = self._segment(j + 1, False)(
                h, [o], [lams[n + j]], memory, [], [], [], [], []
            )
        return q


class Phi4FlashModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.final_layernorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, inputs, cache=None):
        """With mlx-lm's batch caches a row may be padded (right in prefill, left after a
        merge): one mask per layer kind is made from the first cache of that kind before its
        update; cross layers reuse the global layer's mask with its K/V."""
        T = inputs.shape[1]
        if T == 1 and cache is not None and WHOLE_STEP_DECODE and not self.training:
            out = self._whole_step(inputs, cache)
            if out is not None:
                return out
        h = self.embed_tokens(inputs).astype(mx.float32)
        if cache is None:
            cache = [None] * len(self.layers)
        memory = shared_kv = hn = None
        masks = {}
        for i, layer in enumerate(self.layers):
            c = cache[i] if i < len(cache) else None
            key = layer.mask_key
            if key not in masks:
                if key == "ssm":
                    masks[key] = ssm_mask(c, T)
                elif key in ("none", "shared"):
                    masks[key] = None
                else:
                    masks[key] = attention_mask(c, T, key)
            if layer.kind == "attn":
                masks["shared"] = masks[key]
            h, memory, shared_kv, hn = layer(h, c, memory, shared_kv, hn, masks[key])
        norm = self.final_layernorm
        return norm(h.astype(norm.weight.dtype) if hn is None else hn)

    def _whole_step(self, inputs, cache):
        if not all(isinstance(x, DecoderLayer) and x.compiled_decode for x in self.layers):
            return None
        built = _kept(self, "_whole")
        whole = built.get(STEP_KERNELS)
        if whole is None or not whole.matches(self):
            whole = built[STEP_KERNELS] = WholeStep(self)
        return whole(inputs, cache)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = Phi4FlashModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None):
        h = self.model(inputs, cache)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    @property
    def layers(self):
        return self.model.layers

    def set_compiled_decode(self, on: bool) -> None:
        """Compiled decode steps (the default: whole-step where the caches allow it, else per
        layer) or the uncompiled path, for every layer."""
        for layer in self.layers:
            object.__setattr__(layer, "compiled_decode", bool(on))

    @property
    def cast_predicate(self):
        """mlx-lm's `convert --dtype` hook: False keeps a parameter float32 (keeps_fp32)."""
        return lambda k: not keeps_fp32(k)

    def make_cache(self):
        """One cache per self-decoder layer and the global layer; GMU/cross layers own none."""
        caches = []
        for layer in self.layers:
            if layer.kind in ("gmu", "cross"):
                break
            if layer.kind in ("mamba", "mamba_mem"):
                caches.append(ArraysCache(size=2))
            elif layer.kind == "swa":
                caches.append(RotatingKVCache(max_size=layer.attn.window))
            else:
                caches.append(KVCache())
        return caches

    def sanitize(self, weights):
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return {k: v.astype(mx.float32) if keeps_fp32(k) else v for k, v in weights.items()}
