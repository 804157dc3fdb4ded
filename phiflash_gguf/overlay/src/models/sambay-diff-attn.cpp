// SambaY's decode-time differential attention on the CPU (phiflash's fork of llama.cpp).
//
// A differential-attention layer computes two softmax attentions that share V' and subtracts
// them: out = a1 - lambda*a2, with query heads paired in stripes (branch 1 the even heads,
// branch 2 the odd ones) and K/V paired the same way: KV pair j is K heads 2j and 2j+1 and
// V' = V heads 2j|2j+1 joined into one 2*hd wide head. With GQA, the g query pairs of a group
// share one KV pair.
//
// Through ggml's flash-attention kernel a decode step of one layer walks the keys once per
// query head and per branch: for one token it reads K twice (g = 2) and V' four times, with an
// online-softmax update per key and head. These ops read each cache row once per token:
//
// - partials_op. The work is split into (query row, chunk of CHUNK_KEYS keys, KV pair) items,
//   pair fastest, and each thread takes one contiguous share of them, so every thread gets the
//   same number of items whatever the thread count. Within a chunk a thread walks its run of
//   pairs (all of them at long context) block by block: for each block of BLOCK keys, every
//   pair in turn. For each pair it scores the keys against all 2g query heads (both K heads in
//   one pass), updates each head's online softmax (running max M, sum S) and adds the weighted
//   V' rows into each head's accumulator. Rows are contiguous in the cache, so a run of every
//   pair reads the cache as one forward stream, and the mask row is read once per block.
// - Prefetch. A cache row is a cell (all KV heads); a pair reads only its slice of it, a pattern
//   the hardware prefetcher does not follow. While a block is scored, the next block's rows of
//   the run are fetched a few cache lines per key, so the fetches spread over the arithmetic
//   instead of stalling it in one burst.
// - merge_op combines the chunks' (M, S, accumulator) triples of each head and writes
//   a1 - lambda*a2 per query pair.
//
// Everything is F32 with F32 accumulators: the same math as the flash-attention path of
// build_diff_attn_mha. The arithmetic uses AVX2/FMA/F16C when the CPU has them (checked at run
// time): 2g independent dot products per key, summed across lanes 4 at a time; the V' sum over
// 8 accumulators so both FMA units stay busy; the softmax update 8 keys per instruction with an
// exp of our own. Other GQA group sizes, head sizes that are not a multiple of 8, and other
// CPUs take the plain C++ path.

#include "sambay-diff-attn.h"

#include <cmath>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SAMBAY_X86 1
#endif

namespace sambay_diff {

namespace {

constexpr int BLOCK      = 32;  // keys per block
constexpr int CACHE_LINE = 64;

inline float to_f32(float x) { return x; }
inline float to_f32(ggml_fp16_t x) { return ggml_fp16_to_fp32(x); }

// Rows of a cache view to fetch ahead: the slice [0, bytes) of rows base + r*stride, r < rows,
// walked in order a few lines per call.
struct stream_ahead {
    const char * base = nullptr;
    size_t stride = 0, bytes = 0;
    int    rows   = 0;
    int    r      = 0;
    size_t off    = 0;

    void fetch(int lines) {
        for (; lines > 0 && r < rows; --lines) {
            __builtin_prefetch(base + r*stride + off);
            off += CACHE_LINE;
            if (off >= bytes) {
                off = 0;
                ++r;
            }
        }
    }
};

// the next block's K and V rows of a run of KV pairs, `lines` of each per key scored
struct block_ahead {
    stream_ahead k, v;
    int lines = 0;

    void fetch() {
        k.fetch(lines);
        v.fetch(lines);
    }
};

// s[h][k] = q_h . K_k for nk keys and a KV pair's 2g query heads: heads [0, g) against the
// pair's first K head (rows at ka + k*kstride, in elements), heads [g, 2g) against its second (kb)
template <typename T>
void scores_scalar(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q, int g,
        int hd, float s[][BLOCK], block_ahead & ahead) {
    for (int k = 0; k < nk; ++k) {
        ahead.fetch();
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
void accum_scalar(const T * v0, const T * v1, size_t vstride, int nk, const float p[][BLOCK],
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

// A new running max mx > M of one head: S and its accumulator acc[0:dv] are rescaled to it
// (from M = -inf, the first live block, the factor is exp(-inf) = 0 and both stay 0).
inline void rescale(float & M, float & S, float * acc, int dv, float mx) {
    const float r = expf(M - mx);
    S *= r;
    for (int d = 0; d < dv; ++d) {
        acc[d] *= r;
    }
    M = mx;
}

// Online softmax over one block: scores s[h][0:nk] become weights exp(x - M[h]) with
// x = s*scale + mask (0 where masked). The caller skips blocks with no live key, so each head's
// block max is finite.
void softmax_scalar(float s[][BLOCK], const float * mv, int nk, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
    for (int h = 0; h < nh; ++h) {
        float mx = M[h];
        for (int kk = 0; kk < nk; ++kk) {
            s[h][kk] = s[h][kk]*scale + mv[kk];  // -inf where masked
            mx = std::max(mx, s[h][kk]);
        }
        if (mx > M[h]) {
            rescale(M[h], S[h], acc[h], dv, mx);
        }
        for (int kk = 0; kk < nk; ++kk) {
            s[h][kk] = expf(s[h][kk] - mx);  // exp(-inf) = 0 where masked
            S[h] += s[h][kk];
        }
    }
}

#ifdef SAMBAY_X86
#define SAMBAY_AVX2 __attribute__((target("avx2,fma,f16c")))

SAMBAY_AVX2 inline __m256 load8(const float * x) { return _mm256_loadu_ps(x); }
SAMBAY_AVX2 inline __m256 load8(const ggml_fp16_t * x) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x));
}

SAMBAY_AVX2 inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// {sum of a0, sum of a1, sum of a2, sum of a3}
SAMBAY_AVX2 inline __m128 hsum8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

SAMBAY_AVX2 inline float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// G (query pairs per KV pair) is a template argument so that the accumulators live in
// registers: 2G dot products per key, one per query head, independent of each other.
template <int G, typename T>
SAMBAY_AVX2 void scores_avx2(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q,
        int hd, float s[][BLOCK], block_ahead & ahead) {
    constexpr int NH = 2*G;
    for (int k = 0; k < nk; ++k) {
        ahead.fetch();
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
SAMBAY_AVX2 void accum_avx2(const T * v0, const T * v1, size_t vstride, int nk, const float p[][BLOCK],
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

// e^x for x <= 0: x = n*ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^6 (relative
// error about 2e-7), 2^n through the exponent bits. Inputs below -87 give e^-87 (a masked key
// is zeroed by the caller, not here).
SAMBAY_AVX2 inline __m256 exp_nonpos8(__m256 x) {
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

// softmax_scalar over a whole block (mv[nk:] is -inf): 8 keys per instruction
SAMBAY_AVX2 void softmax_avx2(float s[][BLOCK], const float * mv, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
    constexpr int NV = BLOCK/8;
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
        if (mx > M[h]) {
            rescale(M[h], S[h], acc[h], dv, mx);
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

bool have_avx2() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
    return ok;
}
#endif // SAMBAY_X86

template <typename T>
void scores(const T * ka, const T * kb, size_t kstride, int nk, const float * const * q, int g, int hd,
        float s[][BLOCK], block_ahead & ahead) {
#ifdef SAMBAY_X86
    if (hd % 8 == 0 && have_avx2()) {
        switch (g) {
            case 1: return scores_avx2<1>(ka, kb, kstride, nk, q, hd, s, ahead);
            case 2: return scores_avx2<2>(ka, kb, kstride, nk, q, hd, s, ahead);
            case 4: return scores_avx2<4>(ka, kb, kstride, nk, q, hd, s, ahead);
            default: break;
        }
    }
#endif
    scores_scalar(ka, kb, kstride, nk, q, g, hd, s, ahead);
}

template <typename T>
void accum(const T * v0, const T * v1, size_t vstride, int nk, const float p[][BLOCK],
        int nh, int hd, float * const * acc) {
#ifdef SAMBAY_X86
    if (hd % 8 == 0 && have_avx2()) {
        // column blocks of 8 per pass: as many as hd allows, up to NH*DC = 8 accumulators
        const bool cols2 = hd % 16 == 0;
        const bool cols4 = hd % 32 == 0;
        switch (nh) {
            case 2: return cols4 ? accum_avx2<2, 4>(v0, v1, vstride, nk, p, hd, acc)
                                 : accum_avx2<2, 1>(v0, v1, vstride, nk, p, hd, acc);
            case 4: return cols2 ? accum_avx2<4, 2>(v0, v1, vstride, nk, p, hd, acc)
                                 : accum_avx2<4, 1>(v0, v1, vstride, nk, p, hd, acc);
            case 8: return accum_avx2<8, 1>(v0, v1, vstride, nk, p, hd, acc);
            default: break;
        }
    }
#endif
    accum_scalar(v0, v1, vstride, nk, p, nh, hd, acc);
}

void softmax(float s[][BLOCK], const float * mv, int nk, int nh, float scale,
        float * M, float * S, float * const * acc, int dv) {
#ifdef SAMBAY_X86
    if (have_avx2()) {
        return softmax_avx2(s, mv, nh, scale, M, S, acc, dv);
    }
#endif
    softmax_scalar(s, mv, nk, nh, scale, M, S, acc, dv);
}

// One KV pair of a run, at key 0 of the cache: its query heads (branch 1 then branch 2), its two
// K heads and two V heads, and its slice of the partials (M [nh], S [nh], accumulators [nh][2*hd]).
template <typename T>
struct pair_view {
    const float * q[2*MAX_GROUP];
    const T * k1;
    const T * k2;
    const T * v0;
    const T * v1;
    float * part;
    float * acc[2*MAX_GROUP];
};

// Partials of query row t, chunk c and KV pairs [j0, j1): src q {hd, n_head, T} F32, k/v cache
// views {hd, n_kv_head, n_kv} (not transposed), mask {n_kv, >= T}; dst
// {partials_width(hd, nh), n_chunk, n_kvpair, T} F32. Query heads of KV pair j: its g query pairs,
// branch 1 (even heads) then branch 2 (odd).
template <typename T>
void partials_run(ggml_tensor * dst, int t, int c, int j0, int j1) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];

    const int hd       = (int) q->ne[0];
    const int g        = (int) (q->ne[1]/k->ne[1]);  // query pairs per KV pair
    const int nh       = 2*g;
    const int n_pairs  = j1 - j0;
    const int n_kv     = (int) k->ne[2];
    const int chunk    = (int) ((n_kv + dst->ne[1] - 1)/dst->ne[1]);

    const size_t kstride = k->nb[2]/sizeof(T);
    const size_t vstride = v->nb[2]/sizeof(T);
    const float  scale   = 1.0f/sqrtf(float(hd));

    const char * mrow = (const char *) mask->data + t*mask->nb[1];

    std::vector<pair_view<T>> pairs(n_pairs);
    for (int i = 0; i < n_pairs; ++i) {
        const int j = j0 + i;
        pair_view<T> & pv = pairs[i];
        for (int h = 0; h < g; ++h) {
            for (int b = 0; b < 2; ++b) {
                pv.q[b*g + h] = (const float *) ((const char *) q->data + t*q->nb[2] + (2*(j*g + h) + b)*q->nb[1]);
            }
        }
        pv.k1 = (const T *) ((const char *) k->data + (2*j    )*k->nb[1]);
        pv.k2 = (const T *) ((const char *) k->data + (2*j + 1)*k->nb[1]);
        pv.v0 = (const T *) ((const char *) v->data + (2*j    )*v->nb[1]);
        pv.v1 = (const T *) ((const char *) v->data + (2*j + 1)*v->nb[1]);
        pv.part = (float *) ((char *) dst->data + c*dst->nb[1] + j*dst->nb[2] + t*dst->nb[3]);
        for (int h = 0; h < nh; ++h) {
            pv.acc[h] = pv.part + 2*nh + h*2*hd;
        }
        std::fill(pv.part, pv.part + nh, -INFINITY);
        std::fill(pv.part + nh, pv.part + partials_width(hd, nh), 0.0f);
    }

    // the run's rows, from its first K (V) head to the end of its last
    const size_t k_bytes = (2*n_pairs - 1)*k->nb[1] + hd*sizeof(T);
    const size_t v_bytes = (2*n_pairs - 1)*v->nb[1] + hd*sizeof(T);
    const size_t k_lines = (k_bytes + CACHE_LINE - 1)/CACHE_LINE;

    float s[2*MAX_GROUP][BLOCK];
    float mv[BLOCK];
    const int kend = std::min(n_kv, (c + 1)*chunk);
    for (int k0 = c*chunk; k0 < kend; k0 += BLOCK) {
        const int nk = std::min(BLOCK, kend - k0);
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
        std::fill(mv + nk, mv + BLOCK, -INFINITY);  // keys past the chunk count as masked

        // the next block, fetched over the nk*n_pairs keys scored in this one
        const int nn = std::min(BLOCK, kend - k0 - nk);
        block_ahead ahead;
        ahead.k = { (const char *) pairs[0].k1 + (size_t) (k0 + nk)*k->nb[2], k->nb[2], k_bytes, nn };
        ahead.v = { (const char *) pairs[0].v0 + (size_t) (k0 + nk)*v->nb[2], v->nb[2], v_bytes, nn };
        ahead.lines = (int) ((nn*k_lines + nk*n_pairs - 1)/(nk*n_pairs));

        for (pair_view<T> & pv : pairs) {
            scores(pv.k1 + k0*kstride, pv.k2 + k0*kstride, kstride, nk, pv.q, g, hd, s, ahead);
            softmax(s, mv, nk, nh, scale, pv.part, pv.part + nh, pv.acc, 2*hd);
            accum(pv.v0 + k0*vstride, pv.v1 + k0*vstride, vstride, nk, s, nh, hd, pv.acc);
        }
    }
}

template <typename T>
void partials_typed(ggml_tensor * dst, int ith, int nth) {
    const int64_t n_chunk  = dst->ne[1];
    const int64_t n_kvpair = dst->ne[2];
    const int64_t n_items  = n_kvpair*n_chunk*dst->ne[3];

    GGML_ASSERT(partials_width(dst->src[0]->ne[0], 2*(dst->src[0]->ne[1]/dst->src[1]->ne[1])) == dst->ne[0]);

    const int64_t end = n_items*(ith + 1)/nth;
    for (int64_t it = n_items*ith/nth; it < end; ) {
        const int64_t j0 = it % n_kvpair;
        const int64_t j1 = std::min(n_kvpair, j0 + (end - it));
        const int64_t c  = (it / n_kvpair) % n_chunk;
        const int64_t t  = it / (n_kvpair*n_chunk);
        partials_run<T>(dst, (int) t, (int) c, (int) j0, (int) j1);
        it += j1 - j0;
    }
}

} // namespace

bool decode_applies(const ggml_tensor * q, const ggml_tensor * k, const ggml_tensor * v, bool flash_attn) {
    const int64_t n_pair = q->ne[1]/2, n_kvpair = k->ne[1]/2;
    const bool v_trans = v->nb[1] > v->nb[2];
    return flash_attn && !v_trans && q->type == GGML_TYPE_F32 && q->ne[2] <= DECODE_MAX_ROWS &&
           k->ne[3] == 1 && k->type == v->type && (k->type == GGML_TYPE_F16 || k->type == GGML_TYPE_F32) &&
           n_kvpair > 0 && n_pair % n_kvpair == 0 && n_pair/n_kvpair <= MAX_GROUP &&
           v->ne[0] == q->ne[0] && k->ne[0] == q->ne[0];
}

void partials_op(ggml_tensor * dst, int ith, int nth, void *) {
    if (dst->src[1]->type == GGML_TYPE_F16) {
        partials_typed<ggml_fp16_t>(dst, ith, nth);
    } else {
        partials_typed<float>(dst, ith, nth);
    }
}

// src: the partials above; dst {2*hd, n_pair, T} = a1 - lambda*a2
void merge_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float lambda = *(const float *) userdata;
    const ggml_tensor * part = dst->src[0];

    const int dv       = (int) dst->ne[0]; // 2*hd
    const int n_chunk  = (int) part->ne[1];
    const int n_kvpair = (int) part->ne[2];
    const int n_rows   = (int) part->ne[3];
    const int g        = (int) dst->ne[1]/n_kvpair;
    const int nh       = 2*g;

    std::vector<float> acc((size_t) nh*dv);
    float M[2*MAX_GROUP], S[2*MAX_GROUP];

    for (int task = ith; task < n_rows*n_kvpair; task += nth) {
        const int j = task % n_kvpair;
        const int t = task / n_kvpair;
        auto chunk_part = [&](int c) {
            return (const float *) ((const char *) part->data + c*part->nb[1] + j*part->nb[2] + t*part->nb[3]);
        };
        std::fill(M, M + nh, -INFINITY);
        for (int c = 0; c < n_chunk; ++c) {
            const float * pc = chunk_part(c);
            for (int h = 0; h < nh; ++h) {
                M[h] = std::max(M[h], pc[h]);
            }
        }
        std::fill(S, S + nh, 0.0f);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int c = 0; c < n_chunk; ++c) {
            const float * pc = chunk_part(c);
            for (int h = 0; h < nh; ++h) {
                if (pc[h] == -INFINITY) {  // no live key in this chunk (M[h] may be -inf too)
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
            const float w1 = S[i]     > 0.0f ? 1.0f/S[i]       : 0.0f;
            const float w2 = S[g + i] > 0.0f ? lambda/S[g + i] : 0.0f;
            for (int d = 0; d < dv; ++d) {
                out[d] = acc[i*dv + d]*w1 - acc[(g + i)*dv + d]*w2;
            }
        }
    }
}

} // namespace sambay_diff
