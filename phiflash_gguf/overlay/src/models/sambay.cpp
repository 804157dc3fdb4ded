// SambaY (Phi-4-mini-flash-reasoning, HF model_type "phi4flash"), phiflash's own model file.
//
// Layer kinds, from the GGUF:
//   il <  n_layer_kv_from_start (self-decoder):
//     n_head_kv == 0 -> Mamba-1; the last of them also emits the GMU memory
//     n_head_kv  > 0 -> differential attention, sliding-window where the pattern says so;
//                       the last one is the global layer whose K/V the cross-decoder reads
//   il >= n_layer_kv_from_start (cross-decoder):
//     n_head_kv == 0 -> GMU: ssm_out(silu(ssm_in(x)) * memory)
//     n_head_kv  > 0 -> differential cross-attention over the global layer's cache
// Every layer: x += mixer(LN(x)); x += ffn_down(swiglu(ffn_up(LN(x)))), LayerNorms with bias.
// No positional encoding (NoPE): positions come from the Mamba layers.

#include "models.h"

#include "../llama-kv-cache-iswa.h"
#include "../llama-memory-hybrid-iswa.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SAMBAY_X86 1
#endif

void llama_model_sambay::load_arch_hparams(llama_model_loader & ml) {
    ml.get_key(LLM_KV_SSM_CONV_KERNEL,    hparams.ssm_d_conv);
    ml.get_key(LLM_KV_SSM_INNER_SIZE,     hparams.ssm_d_inner);
    ml.get_key(LLM_KV_SSM_STATE_SIZE,     hparams.ssm_d_state);
    ml.get_key(LLM_KV_SSM_TIME_STEP_RANK, hparams.ssm_dt_rank);

    ml.get_key(LLM_KV_ATTENTION_LAYERNORM_EPS,     hparams.f_norm_eps);
    ml.get_key(LLM_KV_ATTENTION_LAYERNORM_RMS_EPS, hparams.f_norm_rms_eps);

    hparams.swa_type = LLAMA_SWA_TYPE_STANDARD;
    ml.get_key(LLM_KV_ATTENTION_SLIDING_WINDOW, hparams.n_swa);
    ml.get_arr(LLM_KV_ATTENTION_SLIDING_WINDOW_PATTERN, hparams.is_swa_impl);

    uint32_t n_shared = 0;
    ml.get_key(LLM_KV_ATTENTION_SHARED_KV_LAYERS, n_shared);
    hparams.n_layer_kv_from_start = (int32_t) hparams.n_layer() - (int32_t) n_shared;
    GGML_ASSERT(hparams.n_layer_kv_from_start >= 2 && "sambay: needs a memory layer and a KV layer");

    for (uint32_t il = 0; il < hparams.n_layer(); ++il) {
        hparams.is_recr_impl[il] = hparams.n_head_kv(il) == 0 && il < (uint32_t) hparams.n_layer_kv_from_start;
    }

    std::fill(diff_lambda.begin(), diff_lambda.end(), 0.0f);
    ml.get_key_or_arr(LLM_KV_ATTENTION_DIFF_LAMBDA, diff_lambda, hparams.n_layer());

    switch (hparams.n_layer()) {
        case 32: type = LLM_TYPE_4B; break;
        default: type = LLM_TYPE_UNKNOWN;
    }
}

void llama_model_sambay::load_arch_tensors(llama_model_loader &) {
    LLAMA_LOAD_LOCALS;

    const int64_t d_conv  = hparams.ssm_d_conv;
    const int64_t d_inner = hparams.ssm_d_inner;
    const int64_t d_state = hparams.ssm_d_state;
    const int64_t dt_rank = hparams.ssm_dt_rank;

    tok_embd = create_tensor(tn(LLM_TENSOR_TOKEN_EMBD, "weight"), {n_embd, n_vocab}, 0);

    output_norm   = create_tensor(tn(LLM_TENSOR_OUTPUT_NORM, "weight"), {n_embd}, 0);
    output_norm_b = create_tensor(tn(LLM_TENSOR_OUTPUT_NORM, "bias"),   {n_embd}, 0);
    output        = create_tensor(tn(LLM_TENSOR_OUTPUT,      "weight"), {n_embd, n_vocab}, TENSOR_NOT_REQUIRED);
    if (output == nullptr) {
        // tied embeddings
        output = create_tensor(tn(LLM_TENSOR_TOKEN_EMBD, "weight"), {n_embd, n_vocab}, TENSOR_DUPLICATED);
    }

    for (int il = 0; il < n_layer; ++il) {
        auto & layer = layers[il];

        const int64_t n_head_l    = hparams.n_head(il);
        const int64_t n_head_kv_l = hparams.n_head_kv(il);
        const int64_t head_dim    = hparams.n_embd_head_k(il);
        const bool    self_dec    = il < hparams.n_layer_kv_from_start;

        layer.attn_norm   = create_tensor(tn(LLM_TENSOR_ATTN_NORM, "weight", il), {n_embd}, 0);
        layer.attn_norm_b = create_tensor(tn(LLM_TENSOR_ATTN_NORM, "bias",   il), {n_embd}, 0);

        if (hparams.is_recr(il)) {
            layer.ssm_in       = create_tensor(tn(LLM_TENSOR_SSM_IN,     "weight", il), {n_embd, 2*d_inner}, 0);
            layer.ssm_conv1d   = create_tensor(tn(LLM_TENSOR_SSM_CONV1D, "weight", il), {d_conv, d_inner}, 0);
            layer.ssm_conv1d_b = create_tensor(tn(LLM_TENSOR_SSM_CONV1D, "bias",   il), {d_inner}, 0);
            layer.ssm_x        = create_tensor(tn(LLM_TENSOR_SSM_X,      "weight", il), {d_inner, dt_rank + 2*d_state}, 0);
            layer.ssm_dt       = create_tensor(tn(LLM_TENSOR_SSM_DT,     "weight", il), {dt_rank, d_inner}, 0);
            layer.ssm_dt_b     = create_tensor(tn(LLM_TENSOR_SSM_DT,     "bias",   il), {d_inner}, 0);
            layer.ssm_a        = create_tensor(tn(LLM_TENSOR_SSM_A, il), {d_state, d_inner}, 0);
            layer.ssm_d        = create_tensor(tn(LLM_TENSOR_SSM_D, il), {d_inner}, 0);
            layer.ssm_out      = create_tensor(tn(LLM_TENSOR_SSM_OUT,    "weight", il), {d_inner, n_embd}, 0);
        } else if (n_head_kv_l == 0) {
            // GMU
            layer.ssm_in  = create_tensor(tn(LLM_TENSOR_SSM_IN,  "weight", il), {n_embd, d_inner}, 0);
            layer.ssm_out = create_tensor(tn(LLM_TENSOR_SSM_OUT, "weight", il), {d_inner, n_embd}, 0);
        } else {
            const int64_t n_embd_q  = head_dim * n_head_l;
            const int64_t n_embd_kv = head_dim * n_head_kv_l;
            if (self_dec) {
                layer.wqkv   = create_tensor(tn(LLM_TENSOR_ATTN_QKV, "weight", il), {n_embd, n_embd_q + 2*n_embd_kv}, 0);
                layer.wqkv_b = create_tensor(tn(LLM_TENSOR_ATTN_QKV, "bias",   il), {n_embd_q + 2*n_embd_kv}, 0);
            } else {
                layer.wq   = create_tensor(tn(LLM_TENSOR_ATTN_Q, "weight", il), {n_embd, n_embd_q}, 0);
                layer.wq_b = create_tensor(tn(LLM_TENSOR_ATTN_Q, "bias",   il), {n_embd_q}, 0);
            }
            layer.wo            = create_tensor(tn(LLM_TENSOR_ATTN_OUT,      "weight", il), {n_embd_q, n_embd}, 0);
            layer.wo_b          = create_tensor(tn(LLM_TENSOR_ATTN_OUT,      "bias",   il), {n_embd}, 0);
            layer.attn_sub_norm = create_tensor(tn(LLM_TENSOR_ATTN_SUB_NORM, "weight", il), {2*head_dim}, 0);
        }

        layer.ffn_norm   = create_tensor(tn(LLM_TENSOR_FFN_NORM, "weight", il), {n_embd}, 0);
        layer.ffn_norm_b = create_tensor(tn(LLM_TENSOR_FFN_NORM, "bias",   il), {n_embd}, 0);
        layer.ffn_up     = create_tensor(tn(LLM_TENSOR_FFN_UP,   "weight", il), {n_embd, 2*n_ff}, 0);
        layer.ffn_down   = create_tensor(tn(LLM_TENSOR_FFN_DOWN, "weight", il), {n_ff, n_embd}, 0);
    }
}

std::unique_ptr<llm_graph_context> llama_model_sambay::build_arch_graph(const llm_graph_params & params) const {
    return std::make_unique<graph>(*this, params);
}

// Softmax attention of q {hd, n_head, T} over cache views k {hd, n_kv_head, n_kv, ns} and v
// ({dv, n_kv_head, n_kv, ns}, or {n_kv, n_kv_head, dv, ns} when the cache is transposed).
// Unlike build_attn_mha this keeps an F32 cache in F32 on the flash-attention path, so an F32
// model with an F32 cache computes attention in full precision either way.
ggml_tensor * llama_model_sambay::graph::build_mha(ggml_tensor * q, ggml_tensor * k, ggml_tensor * v,
        ggml_tensor * kq_mask, float kq_scale, int il) {
    const bool    v_trans  = v->nb[1] > v->nb[2];
    const int64_t n_stream = k->ne[3];

    q = ggml_view_4d(ctx0, q, q->ne[0], q->ne[1], q->ne[2]/n_stream, n_stream,
            q->nb[1], q->nb[2], q->nb[2]*(q->ne[2]/n_stream), 0);

    q = ggml_permute(ctx0, q, 0, 2, 1, 3); // {hd, T, n_head, ns}
    k = ggml_permute(ctx0, k, 0, 2, 1, 3); // {hd, n_kv, n_kv_head, ns}
    v = ggml_permute(ctx0, v, 0, 2, 1, 3);

    ggml_tensor * cur;
    if (cparams.flash_attn) {
        GGML_ASSERT(!v_trans);
        cur = ggml_flash_attn_ext(ctx0, q, k, v, kq_mask, kq_scale, 0.0f, 0.0f);
        ggml_prec_set_acc(cur, GGML_PREC_F32);
        // {dv, n_head, T, ns} -> {dv*n_head, T*ns}
        cur = ggml_reshape_2d(ctx0, cur, cur->ne[0]*cur->ne[1], cur->ne[2]*cur->ne[3]);
    } else {
        ggml_tensor * kq = ggml_mul_mat(ctx0, k, q); // {n_kv, T, n_head, ns}
        ggml_prec_set_acc(kq, GGML_PREC_F32);
        kq = ggml_soft_max_ext(ctx0, kq, kq_mask, kq_scale, 0.0f);
        if (!v_trans) {
            v = ggml_cont(ctx0, ggml_transpose(ctx0, v));
        }
        ggml_tensor * kqv = ggml_mul_mat(ctx0, v, kq); // {dv, T, n_head, ns}
        cur = ggml_permute(ctx0, kqv, 0, 2, 1, 3);
        cur = ggml_cont_2d(ctx0, cur, cur->ne[0]*cur->ne[1], cur->ne[2]*cur->ne[3]);
    }
    cb(cur, "mha_out", il);
    return cur;
}

// ---------------------------------------------------------------------------------------------
// Decode-time differential attention on the CPU (two ggml custom ops per layer).
//
// ggml's flash-attention kernel walks the keys once per query head and runs each softmax branch
// as its own op, so for one token a layer reads K twice (GQA 2) and V' four times, with an
// online-softmax update per key and head. Here the work is split into (query row, chunk of
// keys, KV pair) items, a KV pair being K heads 2j, 2j+1 and V' = V heads 2j|2j+1; each thread
// walks its items' keys once, in blocks, for every query head of the group and both branches
// (online softmax per head), fetching the next block's rows as it goes; a second op merges the
// chunks and writes a1 - lambda*a2.
// Same math as build_diff_attn's flash-attention path, in F32 with F32 accumulators.

namespace {

constexpr int DIFF_BLOCK = 32; // keys per block
constexpr int DIFF_MAXH  = 8;  // query heads per KV pair and branch (GQA group), at most

inline float to_f32(float x) { return x; }
inline float to_f32(ggml_fp16_t x) { return ggml_fp16_to_fp32(x); }

// Rows of a cache view to fetch ahead: the slice [0, bytes) of rows base + r*stride, r < rows,
// walked in order a few lines per call, so the fetches spread over the arithmetic instead of
// stalling it in one burst, and the hardware prefetcher sees a forward stream.
struct diff_stream {
    const char * base = nullptr;
    size_t stride = 0, bytes = 0;
    int    rows   = 0;
    int    r      = 0;
    size_t off    = 0;

    void fetch(int lines) {
        for (; lines > 0 && r < rows; --lines) {
            __builtin_prefetch(base + r*stride + off);
            off += 64;
            if (off >= bytes) {
                off = 0;
                ++r;
            }
        }
    }
};

// the next block's K and V rows of a run of KV pairs, `lines` of each per key scored
struct diff_ahead {
    diff_stream k, v;
    int lines = 0;
};

inline void diff_fetch_ahead(diff_ahead & a) {
    a.k.fetch(a.lines);
    a.v.fetch(a.lines);
}

// s[h][k] = q_h . K_k for nk keys and a KV pair's 2g query heads: heads [0, g) against the
// pair's first K head (rows at ka + k*kstride, in elements), heads [g, 2g) against its second (kb)
template <typename T>
void diff_scores_scalar(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q, int g,
        int hd, float s[][DIFF_BLOCK], diff_ahead & ahead) {
    for (int k = 0; k < nk; ++k) {
        diff_fetch_ahead(ahead);
        for (int h = 0; h < 2*g; ++h) {
            const T * kr = (h < g ? ka : kb) + k*kstride;
            float acc = 0.0f;
            for (int d = 0; d < hd; ++d) {
                acc += q[h][d]*to_f32(kr[d]);
            }
            s[h][k] = acc;
        }
    }
}

// acc[h][0:hd] += sum_k p[h][k] * V0_k,  acc[h][hd:2hd] += sum_k p[h][k] * V1_k
template <typename T>
void diff_accum_scalar(const T * v0, const T * v1, size_t vstride, int nk, const float p[][DIFF_BLOCK],
        int nh, int hd, float * const * acc) {
    for (int k = 0; k < nk; ++k) {
        for (int h = 0; h < nh; ++h) {
            const float w = p[h][k];
            for (int d = 0; d < hd; ++d) {
                acc[h][d]      += w*to_f32(v0[k*vstride + d]);
                acc[h][hd + d] += w*to_f32(v1[k*vstride + d]);
            }
        }
    }
}


// Online softmax over one block: scores s[h][0:nk] become weights exp(x - M[h]) with
// x = s*scale + mask (0 where masked); a new running max M[h] rescales S[h] and acc[h] first.
inline void diff_rescale(float & M, float & S, float * acc, int dv, float mx) {
    const float r = M == -INFINITY ? 0.0f : expf(M - mx);
    S *= r;
    for (int d = 0; d < dv; ++d) {
        acc[d] *= r;
    }
    M = mx;
}

void diff_softmax_scalar(float s[][DIFF_BLOCK], const float * mv, int nk, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
    for (int h = 0; h < nh; ++h) {
        float mx = M[h];
        for (int kk = 0; kk < nk; ++kk) {
            s[h][kk] = mv[kk] == -INFINITY ? -INFINITY : s[h][kk]*scale + mv[kk];
            mx = std::max(mx, s[h][kk]);
        }
        if (mx == -INFINITY) {
            std::fill(s[h], s[h] + nk, 0.0f);
            continue;
        }
        if (mx > M[h]) {
            diff_rescale(M[h], S[h], acc[h], dv, mx);
        }
        for (int kk = 0; kk < nk; ++kk) {
            s[h][kk] = s[h][kk] == -INFINITY ? 0.0f : expf(s[h][kk] - mx);
            S[h] += s[h][kk];
        }
    }
}

#ifdef SAMBAY_X86
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const float * x) { return _mm256_loadu_ps(x); }
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const ggml_fp16_t * x) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x));
}

__attribute__((target("avx2,fma,f16c"))) inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// {sum of a0, sum of a1, sum of a2, sum of a3}
__attribute__((target("avx2,fma,f16c"))) inline __m128 hsum8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// G (query pairs per KV pair) is a template argument so that the accumulators live in
// registers: 2G dot products per key, one per query head, independent of each other.
template <int G, typename T>
__attribute__((target("avx2,fma,f16c")))
void diff_scores_avx2(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q, int hd,
        float s[][DIFF_BLOCK], diff_ahead & ahead) {
    constexpr int NH = 2*G;
    for (int k = 0; k < nk; ++k) {
        diff_fetch_ahead(ahead);
        const T * ra = ka + k*kstride;
        const T * rb = kb + k*kstride;
        __m256 a[NH];
        for (int h = 0; h < NH; ++h) {
            a[h] = _mm256_setzero_ps();
        }
        for (int d = 0; d < hd; d += 8) {
            const __m256 va = load8(ra + d);
            const __m256 vb = load8(rb + d);
            for (int h = 0; h < G; ++h) {
                a[h]     = _mm256_fmadd_ps(_mm256_loadu_ps(q[h] + d),     va, a[h]);
                a[G + h] = _mm256_fmadd_ps(_mm256_loadu_ps(q[G + h] + d), vb, a[G + h]);
            }
        }
        if constexpr (NH % 4 == 0) {
            for (int h = 0; h < NH; h += 4) {
                alignas(16) float t[4];
                _mm_store_ps(t, hsum8x4(a[h], a[h + 1], a[h + 2], a[h + 3]));
                for (int i = 0; i < 4; ++i) {
                    s[h + i][k] = t[i];
                }
            }
        } else {
            for (int h = 0; h < NH; ++h) {
                s[h][k] = hsum8(a[h]);
            }
        }
    }
}

// DC column blocks of 8 at once, so that NH*DC accumulators (8) keep both FMA units busy
template <int NH, int DC, typename T>
__attribute__((target("avx2,fma,f16c")))
void diff_accum_avx2(const T * v0, const T * v1, size_t vstride, int nk, const float p[][DIFF_BLOCK],
        int hd, float * const * acc) {
    for (int half = 0; half < 2; ++half) {
        const T * vb = half ? v1 : v0;
        for (int d = 0; d < hd; d += 8*DC) {
            __m256 a[NH][DC];
            for (int h = 0; h < NH; ++h) {
                for (int c = 0; c < DC; ++c) {
                    a[h][c] = _mm256_loadu_ps(acc[h] + half*hd + d + 8*c);
                }
            }
            for (int k = 0; k < nk; ++k) {
                __m256 vv[DC];
                for (int c = 0; c < DC; ++c) {
                    vv[c] = load8(vb + k*vstride + d + 8*c);
                }
                for (int h = 0; h < NH; ++h) {
                    const __m256 w = _mm256_set1_ps(p[h][k]);
                    for (int c = 0; c < DC; ++c) {
                        a[h][c] = _mm256_fmadd_ps(w, vv[c], a[h][c]);
                    }
                }
            }
            for (int h = 0; h < NH; ++h) {
                for (int c = 0; c < DC; ++c) {
                    _mm256_storeu_ps(acc[h] + half*hd + d + 8*c, a[h][c]);
                }
            }
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) inline float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// e^x for x <= 0: x = n*ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^6 (relative
// error about 2e-7), 2^n through the exponent bits. Inputs below -87 give e^-87 (a masked key
// is zeroed by the caller, not here).
__attribute__((target("avx2,fma,f16c"))) inline __m256 exp_nonpos8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2, high bits
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);    // ln2, the rest
    __m256 p = _mm256_set1_ps(1.0f/720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f/120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f/24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f/6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// diff_softmax_scalar over a whole block (mv[nk:] is -inf): 8 keys per instruction
__attribute__((target("avx2,fma,f16c")))
void diff_softmax_avx2(float s[][DIFF_BLOCK], const float * mv, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
    constexpr int NV = DIFF_BLOCK/8;
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256 sc   = _mm256_set1_ps(scale);
    __m256 mvv[NV], live[NV];
    for (int i = 0; i < NV; ++i) {
        mvv[i]  = _mm256_loadu_ps(mv + 8*i);
        live[i] = _mm256_cmp_ps(mvv[i], ninf, _CMP_NEQ_OQ);
    }
    for (int h = 0; h < nh; ++h) {
        __m256 x[NV];
        __m256 vmax = ninf;
        for (int i = 0; i < NV; ++i) {  // blend, not arithmetic: s past nk is not initialized
            x[i] = _mm256_blendv_ps(ninf, _mm256_fmadd_ps(_mm256_loadu_ps(s[h] + 8*i), sc, mvv[i]), live[i]);
            vmax = _mm256_max_ps(vmax, x[i]);
        }
        const float mx = std::max(M[h], hmax8(vmax));
        if (mx == -INFINITY) {
            std::fill(s[h], s[h] + DIFF_BLOCK, 0.0f);
            continue;
        }
        if (mx > M[h]) {
            diff_rescale(M[h], S[h], acc[h], dv, mx);
        }
        const __m256 m = _mm256_set1_ps(mx);
        __m256 sum = _mm256_setzero_ps();
        for (int i = 0; i < NV; ++i) {
            const __m256 w = _mm256_and_ps(exp_nonpos8(_mm256_sub_ps(x[i], m)), live[i]);
            _mm256_storeu_ps(s[h] + 8*i, w);
            sum = _mm256_add_ps(sum, w);
        }
        S[h] += hsum8(sum);
    }
}

bool diff_have_avx2() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
    return ok;
}
#endif

template <typename T>
void diff_scores(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q, int g, int hd,
        float s[][DIFF_BLOCK], diff_ahead & ahead) {
#ifdef SAMBAY_X86
    if (hd % 8 == 0 && diff_have_avx2()) {
        switch (g) {
            case 1: return diff_scores_avx2<1>(ka, kb, kstride, nk, q, hd, s, ahead);
            case 2: return diff_scores_avx2<2>(ka, kb, kstride, nk, q, hd, s, ahead);
            case 4: return diff_scores_avx2<4>(ka, kb, kstride, nk, q, hd, s, ahead);
            default: break;
        }
    }
#endif
    diff_scores_scalar(ka, kb, kstride, nk, q, g, hd, s, ahead);
}

template <typename T>
void diff_accum(const T * v0, const T * v1, size_t vstride, int nk, const float p[][DIFF_BLOCK],
        int nh, int hd, float * const * acc) {
#ifdef SAMBAY_X86
    if (hd % 8 == 0 && diff_have_avx2()) {
        const bool wide = hd % 32 == 0;  // room for 4 column blocks at once
        switch (nh) {
            case 2: return wide ? diff_accum_avx2<2, 4>(v0, v1, vstride, nk, p, hd, acc)
                                : diff_accum_avx2<2, 1>(v0, v1, vstride, nk, p, hd, acc);
            case 4: return hd % 16 == 0 ? diff_accum_avx2<4, 2>(v0, v1, vstride, nk, p, hd, acc)
                                        : diff_accum_avx2<4, 1>(v0, v1, vstride, nk, p, hd, acc);
            case 8: return diff_accum_avx2<8, 1>(v0, v1, vstride, nk, p, hd, acc);
            default: break;
        }
    }
#endif
    diff_accum_scalar(v0, v1, vstride, nk, p, nh, hd, acc);
}

void diff_softmax(float s[][DIFF_BLOCK], const float * mv, int nk, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
#ifdef SAMBAY_X86
    if (diff_have_avx2()) {
        return diff_softmax_avx2(s, mv, nh, scale, M, S, acc, dv);
    }
#endif
    diff_softmax_scalar(s, mv, nk, nh, scale, M, S, acc, dv);
}

// Partials: src q {hd, n_head, T} F32, k/v cache views {hd, n_kv_head, n_kv} (not transposed),
// mask {n_kv, >= T}; dst {(2 + 2*hd)*nh, n_chunk, n_kvpair, T} F32 holds, per query row, KV pair
// and chunk of keys, each head's running max M, sum S and unnormalized V' accumulator.
// Query heads of KV pair j: its g query pairs, branch 1 (even heads) then branch 2 (odd).
//
// Work items are (query row, chunk of keys, KV pair), pair fastest; each thread takes one
// contiguous share of them, so within a chunk it walks a run of pairs: all of them at long
// context. It walks its keys in blocks and, within a block, its pairs in order, so the cache is
// read as one forward stream (a run of every pair reads whole rows, and rows are contiguous)
// instead of one strided slice per pair, and the mask row is read once per block.
template <typename T>
void diff_partials_run(ggml_tensor * dst, int t, int c, int j0, int j1) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];

    const int hd       = (int) q->ne[0];
    const int g        = (int) (q->ne[1]/k->ne[1]);  // query pairs per KV pair
    const int nh       = 2*g;
    const int per_head = 2 + 2*hd;
    const int n_kv     = (int) k->ne[2];
    const int chunk    = (int) ((n_kv + dst->ne[1] - 1)/dst->ne[1]);

    const size_t kstride = k->nb[2]/sizeof(T);
    const size_t vstride = v->nb[2]/sizeof(T);
    const float  scale   = 1.0f/sqrtf(float(hd));

    const char * mrow = (const char *) mask->data + t*mask->nb[1];

    // each pair's running max M [nh], sum S [nh] and V' accumulators [nh][2*hd], kept in dst
    auto part = [&](int j) {
        return (float *) ((char *) dst->data + c*dst->nb[1] + j*dst->nb[2] + t*dst->nb[3]);
    };
    for (int j = j0; j < j1; ++j) {
        float * p = part(j);
        std::fill(p, p + nh, -INFINITY);
        std::fill(p + nh, p + per_head*nh, 0.0f);
    }

    float s[2*DIFF_MAXH][DIFF_BLOCK];
    float mv[DIFF_BLOCK];
    const int kend = std::min(n_kv, (c + 1)*chunk);
    for (int k0 = c*chunk; k0 < kend; k0 += DIFF_BLOCK) {
        const int nk = std::min(DIFF_BLOCK, kend - k0);
        // the next block of this run's rows: from its first K (V) head to the end of its last
        const int nn = std::min(DIFF_BLOCK, kend - k0 - nk);
        diff_ahead ahead;
        ahead.k = { (const char *) k->data + 2*j0*k->nb[1] + (size_t) (k0 + nk)*k->nb[2], k->nb[2],
                    (2*(j1 - j0) - 1)*k->nb[1] + hd*sizeof(T), nn };
        ahead.v = { (const char *) v->data + 2*j0*v->nb[1] + (size_t) (k0 + nk)*v->nb[2], v->nb[2],
                    (2*(j1 - j0) - 1)*v->nb[1] + hd*sizeof(T), nn };
        ahead.lines = (int) ((nn*((ahead.k.bytes + 63)/64) + nk*(j1 - j0) - 1)/(nk*(j1 - j0)));
        bool any = false;
        for (int kk = 0; kk < nk; ++kk) {
            mv[kk] = mask->type == GGML_TYPE_F16
                ? ggml_fp16_to_fp32(((const ggml_fp16_t *) mrow)[k0 + kk])
                : ((const float *) mrow)[k0 + kk];
            any = any || mv[kk] != -INFINITY;
        }
        if (!any) {
            continue;
        }
        std::fill(mv + nk, mv + DIFF_BLOCK, -INFINITY);  // keys past the chunk count as masked

        for (int j = j0; j < j1; ++j) {
            const float * qh[2*DIFF_MAXH];  // the pair's query heads, branch 1 then branch 2
            for (int i = 0; i < g; ++i) {
                for (int b = 0; b < 2; ++b) {
                    qh[b*g + i] = (const float *) ((const char *) q->data + t*q->nb[2] + (2*(j*g + i) + b)*q->nb[1]);
                }
            }
            const T * k1 = (const T *) ((const char *) k->data + (2*j    )*k->nb[1]) + k0*kstride;
            const T * k2 = (const T *) ((const char *) k->data + (2*j + 1)*k->nb[1]) + k0*kstride;
            const T * v0 = (const T *) ((const char *) v->data + (2*j    )*v->nb[1]) + k0*vstride;
            const T * v1 = (const T *) ((const char *) v->data + (2*j + 1)*v->nb[1]) + k0*vstride;

            float * p = part(j);
            float * acc[2*DIFF_MAXH];
            for (int h = 0; h < nh; ++h) {
                acc[h] = p + 2*nh + h*2*hd;
            }
            diff_scores(k1, k2, kstride, nk, qh, g, hd, s, ahead);
            diff_softmax(s, mv, nk, nh, scale, p, p + nh, acc, 2*hd);
            diff_accum(v0, v1, vstride, nk, s, nh, hd, acc);
        }
    }
}

template <typename T>
void diff_partials_typed(ggml_tensor * dst, int ith, int nth) {
    const int64_t n_chunk  = dst->ne[1];
    const int64_t n_kvpair = dst->ne[2];
    const int64_t n_items  = n_kvpair*n_chunk*dst->ne[3];

    GGML_ASSERT((2 + 2*dst->src[0]->ne[0])*2*(dst->src[0]->ne[1]/dst->src[1]->ne[1]) == dst->ne[0]);

    const int64_t end = n_items*(ith + 1)/nth;
    for (int64_t it = n_items*ith/nth; it < end; ) {
        const int64_t j0 = it % n_kvpair;
        const int64_t j1 = std::min(n_kvpair, j0 + (end - it));
        const int64_t c  = (it / n_kvpair) % n_chunk;
        const int64_t t  = it / (n_kvpair*n_chunk);
        diff_partials_run<T>(dst, (int) t, (int) c, (int) j0, (int) j1);
        it += j1 - j0;
    }
}

void diff_partials_op(ggml_tensor * dst, int ith, int nth, void *) {
    if (dst->src[1]->type == GGML_TYPE_F16) {
        diff_partials_typed<ggml_fp16_t>(dst, ith, nth);
    } else {
        diff_partials_typed<float>(dst, ith, nth);
    }
}

// Merge: src partials (above); dst {2*hd, n_pair, T} = a1 - lambda*a2.
// userdata: the layer's lambda (an element of llama_model_sambay::diff_lambda)
void diff_merge_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float lambda = *(const float *) userdata;
    const ggml_tensor * part = dst->src[0];

    const int dv       = (int) dst->ne[0]; // 2*hd
    const int n_chunk  = (int) part->ne[1];
    const int n_kvpair = (int) part->ne[2];
    const int n_rows   = (int) part->ne[3];
    const int g        = (int) dst->ne[1]/n_kvpair;
    const int nh       = 2*g;

    std::vector<float> acc((size_t) nh*dv);
    float M[2*DIFF_MAXH], S[2*DIFF_MAXH];

    for (int task = ith; task < n_rows*n_kvpair; task += nth) {
        const int j = task % n_kvpair;
        const int t = task / n_kvpair;
        std::fill(M, M + nh, -INFINITY);
        for (int c = 0; c < n_chunk; ++c) {
            const float * pc = (const float *) ((const char *) part->data + c*part->nb[1] + j*part->nb[2] + t*part->nb[3]);
            for (int h = 0; h < nh; ++h) {
                M[h] = std::max(M[h], pc[h]);
            }
        }
        std::fill(S, S + nh, 0.0f);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int c = 0; c < n_chunk; ++c) {
            const float * pc = (const float *) ((const char *) part->data + c*part->nb[1] + j*part->nb[2] + t*part->nb[3]);
            for (int h = 0; h < nh; ++h) {
                if (pc[h] == -INFINITY) {
                    continue;
                }
                const float r = expf(pc[h] - M[h]);
                S[h] += r*pc[nh + h];
                const float * ac = pc + 2*nh + h*dv;
                for (int d = 0; d < dv; ++d) {
                    acc[h*dv + d] += r*ac[d];
                }
            }
        }
        for (int i = 0; i < g; ++i) {
            float * out = (float *) ((char *) dst->data + t*dst->nb[2] + (j*g + i)*dst->nb[1]);
            const float w1 = S[i]     > 0.0f ? 1.0f/S[i]        : 0.0f;
            const float w2 = S[g + i] > 0.0f ? lambda/S[g + i]  : 0.0f;
            for (int d = 0; d < dv; ++d) {
                out[d] = acc[i*dv + d]*w1 - acc[(g + i)*dv + d]*w2;
            }
        }
    }
}

// Keys per chunk of the partials op: enough chunks that any thread count has work at long context
constexpr int64_t DIFF_CHUNK_KEYS = 1024;

// Rows at most this many take the decode op (one token, or the cross-decoder's output rows)
constexpr int64_t DIFF_DECODE_MAX_ROWS = 4;

bool diff_decode_applies(const ggml_tensor * q, const ggml_tensor * k, const ggml_tensor * v, bool flash_attn) {
    const int64_t n_pair = q->ne[1]/2, n_kvpair = k->ne[1]/2;
    const bool v_trans = v->nb[1] > v->nb[2];
    return flash_attn && !v_trans && q->type == GGML_TYPE_F32 && q->ne[2] <= DIFF_DECODE_MAX_ROWS &&
           k->ne[3] == 1 && k->type == v->type && (k->type == GGML_TYPE_F16 || k->type == GGML_TYPE_F32) &&
           n_kvpair > 0 && n_pair % n_kvpair == 0 && n_pair/n_kvpair <= DIFF_MAXH &&
           v->ne[0] == q->ne[0] && k->ne[0] == q->ne[0];
}

} // namespace

// Differential attention over cache views k {hd, n_kv_head, n_kv, ns} and v (plain or transposed).
// Heads are paired in stripes: q1/k1 are the even heads, q2/k2 the odd ones; V' joins kv heads 2j
// and 2j+1 into one 2*hd wide head, so both softmaxes read the same V'.
//   out = RMSNorm(a1 - lambda*a2) * subln * (1 - lambda_init)
ggml_tensor * llama_model_sambay::graph::build_diff_attn(const llama_model_sambay & model,
        ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * kq_mask, int il) {
    const int64_t hd     = q->ne[0];
    const int64_t n_pair = q->ne[1] / 2;
    const int64_t n_rows = q->ne[2];

    const float lambda_init = 0.8f - 0.6f*expf(-0.3f*float(il));

    ggml_tensor * cur;
    if (diff_decode_applies(q, k, v, cparams.flash_attn)) {
        const int64_t n_kvpair = k->ne[1]/2;
        const int64_t nh       = 2*(n_pair/n_kvpair);
        const int64_t n_chunk  = std::max<int64_t>(1, k->ne[2]/DIFF_CHUNK_KEYS);
        ggml_tensor * args[4] = { q, k, v, kq_mask };
        ggml_tensor * part = ggml_custom_4d(ctx0, GGML_TYPE_F32, (2 + 2*hd)*nh, n_chunk, n_kvpair, n_rows,
                args, 4, diff_partials_op, GGML_N_TASKS_MAX, nullptr);
        cb(part, "diff_partials", il);
        cur = ggml_custom_4d(ctx0, GGML_TYPE_F32, 2*hd, n_pair, n_rows, 1, &part, 1, diff_merge_op,
                GGML_N_TASKS_MAX, const_cast<float *>(&model.diff_lambda[il]));
        cb(cur, "diff_decode", il);
    } else {
        cur = build_diff_attn_mha(model, q, k, v, kq_mask, il);
    }
    cur = ggml_rms_norm(ctx0, cur, hparams.f_norm_rms_eps);
    cur = ggml_mul(ctx0, cur, model.layers[il].attn_sub_norm);
    cur = ggml_scale(ctx0, cur, 1.0f - lambda_init);
    cur = ggml_reshape_2d(ctx0, cur, 2*hd*n_pair, n_rows);
    cb(cur, "diff_out", il);

    return cur;
}

// a1 - lambda*a2 {2*hd, n_pair, T} through two build_mha calls (flash attention or not)
ggml_tensor * llama_model_sambay::graph::build_diff_attn_mha(const llama_model_sambay & model,
        ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * kq_mask, int il) {
    const int64_t hd       = q->ne[0];
    const int64_t n_pair   = q->ne[1] / 2;
    const int64_t n_rows   = q->ne[2];
    const int64_t n_kvpair = k->ne[1] / 2;
    const int64_t n_kv     = k->ne[2];
    const int64_t ns       = k->ne[3];

    ggml_tensor * q1 = ggml_cont(ctx0, ggml_view_3d(ctx0, q, hd, n_pair, n_rows, 2*q->nb[1], q->nb[2], 0));
    ggml_tensor * q2 = ggml_cont(ctx0, ggml_view_3d(ctx0, q, hd, n_pair, n_rows, 2*q->nb[1], q->nb[2], q->nb[1]));

    ggml_tensor * k1 = ggml_view_4d(ctx0, k, hd, n_kvpair, n_kv, ns, 2*k->nb[1], k->nb[2], k->nb[3], 0);
    ggml_tensor * k2 = ggml_view_4d(ctx0, k, hd, n_kvpair, n_kv, ns, 2*k->nb[1], k->nb[2], k->nb[3], k->nb[1]);

    const bool v_trans = v->nb[1] > v->nb[2];
    ggml_tensor * vp = v_trans
        ? ggml_view_4d(ctx0, v, n_kv, n_kvpair, 2*hd, ns, 2*v->nb[1], v->nb[2], v->nb[3], 0)
        : ggml_view_4d(ctx0, v, 2*hd, n_kvpair, n_kv, ns, 2*v->nb[1], v->nb[2], v->nb[3], 0);

    const float kq_scale = 1.0f/sqrtf(float(hd));

    ggml_tensor * a1 = build_mha(q1, k1, vp, kq_mask, kq_scale, il);
    ggml_tensor * a2 = build_mha(q2, k2, vp, kq_mask, kq_scale, il);
    cb(a1, "diff_a1", il);
    cb(a2, "diff_a2", il);

    ggml_tensor * cur = ggml_add(ctx0, a1, ggml_scale(ctx0, a2, -model.diff_lambda[il]));
    return ggml_reshape_3d(ctx0, cur, 2*hd, n_pair, n_rows);
}

llama_model_sambay::graph::graph(const llama_model & model, const llm_graph_params & params) : llm_build_mamba_base(params) {
    const auto & sm = static_cast<const llama_model_sambay &>(model);

    const int il_cross = hparams.n_layer_kv_from_start; // first cross-decoder layer
    const int il_kv    = il_cross - 1;                  // global attention layer, KV source
    const int il_mem   = il_cross - 2;                  // Mamba layer that emits the GMU memory

    ggml_tensor * inpL = build_inp_embd(model.tok_embd);

    auto * inp_hybrid = build_inp_mem_hybrid_iswa();
    auto * inp_attn   = inp_hybrid->get_attn();
    const auto * mctx_iswa = inp_attn->mctx;

    GGML_ASSERT(inp_attn->self_k_rot == nullptr && inp_attn->self_v_rot == nullptr &&
                "sambay: quantized KV cache types are not supported");

    ggml_tensor * inp_out_ids = build_inp_out_ids();

    // The cross-decoder writes no state, so during a prompt it only needs the rows whose
    // logits are asked for. Needs a single stream so that the mask rows can be selected too.
    const bool prune_rows = inp_out_ids && (cparams.kv_unified || ubatch.n_seqs_unq == 1);
    bool rows_selected = false;

    ggml_tensor * mem           = nullptr;
    ggml_tensor * kq_mask_cross = inp_attn->get_kq_mask();

    for (int il = 0; il < n_layer; ++il) {
        const auto & layer = model.layers[il];

        if (il == il_cross && prune_rows) {
            inpL = ggml_get_rows(ctx0, inpL, inp_out_ids);
            mem  = ggml_get_rows(ctx0, mem,  inp_out_ids);

            ggml_tensor * m = kq_mask_cross;
            m = ggml_get_rows(ctx0, ggml_reshape_2d(ctx0, m, m->ne[0], m->ne[1]), inp_out_ids);
            if (m->type != kq_mask_cross->type) {
                m = ggml_cast(ctx0, m, kq_mask_cross->type);
            }
            kq_mask_cross = ggml_reshape_4d(ctx0, m, m->ne[0], m->ne[1], 1, 1);
            rows_selected = true;
        }

        ggml_tensor * cur = build_norm(inpL, layer.attn_norm, layer.attn_norm_b, LLM_NORM, il);
        cb(cur, "attn_norm", il);

        const int64_t n_head_kv_l = hparams.n_head_kv(il);
        const int64_t head_dim    = hparams.n_embd_head_k(il);

        if (hparams.is_recr(il)) {
            ggml_tensor * y = nullptr;
            cur = build_mamba_layer(inp_hybrid->get_recr(), cur, model, ubatch, il, il == il_mem ? &y : nullptr);
            if (il == il_mem) {
                mem = ggml_reshape_2d(ctx0, y, y->ne[0], y->ne[1]*y->ne[2]);
                cb(mem, "gmu_memory", il);
            }
        } else if (n_head_kv_l == 0) {
            GGML_ASSERT(mem != nullptr);
            cur = build_lora_mm(layer.ssm_in, cur);
            cur = ggml_swiglu_split(ctx0, cur, mem);
            cur = build_lora_mm(layer.ssm_out, cur);
            cb(cur, "gmu_out", il);
        } else if (il < il_cross) {
            auto [Qcur, Kcur, Vcur] = build_qkv(layer, cur, head_dim, hparams.n_head(il), n_head_kv_l, il);

            const bool is_swa = hparams.is_swa(il);
            const auto * mctx_cur = is_swa ? mctx_iswa->get_swa() : mctx_iswa->get_base();

            ggml_build_forward_expand(gf, Qcur);
            ggml_build_forward_expand(gf, Kcur);
            ggml_build_forward_expand(gf, Vcur);

            const auto & k_idxs = is_swa ? inp_attn->get_k_idxs_swa() : inp_attn->get_k_idxs();
            const auto & v_idxs = is_swa ? inp_attn->get_v_idxs_swa() : inp_attn->get_v_idxs();
            ggml_build_forward_expand(gf, mctx_cur->cpy_k(ctx0, Kcur, k_idxs, il));
            ggml_build_forward_expand(gf, mctx_cur->cpy_v(ctx0, Vcur, v_idxs, il));

            ggml_tensor * kq_mask = is_swa ? inp_attn->get_kq_mask_swa() : inp_attn->get_kq_mask();

            cur = build_diff_attn(sm, Qcur, mctx_cur->get_k(ctx0, il), mctx_cur->get_v(ctx0, il), kq_mask, il);
            cur = build_lora_mm(layer.wo, cur);
            cur = ggml_add(ctx0, cur, layer.wo_b);
        } else {
            ggml_tensor * Qcur = build_lora_mm(layer.wq, cur);
            Qcur = ggml_add(ctx0, Qcur, layer.wq_b);
            Qcur = ggml_reshape_3d(ctx0, Qcur, head_dim, hparams.n_head(il), Qcur->ne[1]);

            const auto * mctx_base = mctx_iswa->get_base();

            cur = build_diff_attn(sm, Qcur, mctx_base->get_k(ctx0, il_kv), mctx_base->get_v(ctx0, il_kv), kq_mask_cross, il);
            cur = build_lora_mm(layer.wo, cur);
            cur = ggml_add(ctx0, cur, layer.wo_b);
        }
        cb(cur, "mixer_out", il);

        if (il == n_layer - 1 && inp_out_ids && !rows_selected) {
            cur  = ggml_get_rows(ctx0, cur,  inp_out_ids);
            inpL = ggml_get_rows(ctx0, inpL, inp_out_ids);
        }

        ggml_tensor * ffn_inp = ggml_add(ctx0, cur, inpL);
        cb(ffn_inp, "ffn_inp", il);

        cur = build_norm(ffn_inp, layer.ffn_norm, layer.ffn_norm_b, LLM_NORM, il);
        cb(cur, "ffn_norm", il);

        cur = build_ffn(cur,
                layer.ffn_up,   nullptr, nullptr,
                nullptr,        nullptr, nullptr,
                layer.ffn_down, nullptr, nullptr,
                nullptr,
                LLM_FFN_SWIGLU, LLM_FFN_SEQ, il);
        cb(cur, "ffn_out", il);

        cur = ggml_add(ctx0, cur, ffn_inp);
        cur = build_cvec(cur, il);
        cb(cur, "l_out", il);

        inpL = cur;
    }

    ggml_tensor * cur = build_norm(inpL, model.output_norm, model.output_norm_b, LLM_NORM, -1);
    cb(cur, "result_norm", -1);
    res->t_embd = cur;

    cur = build_lora_mm(model.output, cur);
    cb(cur, "result_output", -1);
    res->t_logits = cur;

    ggml_build_forward_expand(gf, cur);
}
