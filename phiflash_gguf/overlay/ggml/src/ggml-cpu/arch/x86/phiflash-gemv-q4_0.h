// phiflash: Q4_0 x Q8_0 GEMV over ggml's 8x8-interleaved Q4_0 (block_q4_0x8), for decode.
//
// Included by arch/x86/repack.cpp (after its own includes) and called from
// ggml_gemv_q4_0_8x8_q8_0 on AVX2 machines. Same inputs, same outputs, same result to the bit
// as ggml's LUT kernel for Q8_0 activations in [-127, 127], which is all quantize_row_q8_0 makes;
// fewer shuffles:
//
// - ggml stores each weight nibble as (q ^ 8), the two's-complement nibble of q - 8, and widens
//   it through a pshufb table. Here the nibble is XORed back to q in [0, 15] and multiplied as an
//   unsigned byte against the signed activation byte (vpdpbusd with AVX-VNNI or AVX512-VNNI,
//   pmaddubsw + pmaddwd otherwise), so sum((q - 8) * a) = sum(q * a) - 8 * sum(a), where sum(a)
//   of each activation block is computed once per call, not once per 8 rows.
// - A 32-byte load of the interleaved block holds 8 bytes (16 weights) of 4 rows. Multiplying it
//   against the matching 8 activation bytes broadcast to every 64-bit lane (a load, no shuffle)
//   leaves each row's partial sums in two adjacent 32-bit lanes; one hadd per block pairs them.
//   ggml's kernel broadcasts 4 activation bytes with a shuffle and blends the rows into place;
//   on a 2-core Intel Xeon VM it ran about as fast from L3 as from memory, bound by its
//   arithmetic (benchmarks/bench_gguf_gemv.py).
// - Each block's cache lines (three for its 144 bytes) are prefetched PHIFLASH_PREFETCH_AHEAD
//   bytes ahead (phiflash-prefetch.h).
//
// Returns false, computing nothing, for rows wider than GEMV_Q4_0_MAX_BLOCKS blocks: the caller
// then runs ggml's kernel.
#pragma once

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define PHIFLASH_GEMV_Q4_0 1
// With AVX512BW and AVX512-VNNI the block's two row halves share one 512-bit register (4
// vpdpbusd instead of 8); same sums to the bit. On a Zen 5 (full-width 512-bit units) the
// 256-bit loop was bound by its arithmetic at about 36 GB/s on 2 threads against 52 GB/s for
// a plain read; on a Zen 4 (512-bit operations as two halves) both loops ran at one speed.
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define PHIFLASH_GEMV_Q4_0_512 1
#else
#define PHIFLASH_GEMV_Q4_0_512 0
#endif

#include <immintrin.h>

#include "phiflash-prefetch.h"

namespace phiflash {

constexpr int GEMV_Q4_0_MAX_BLOCKS = 1024; // rows up to 32768 weights

// acc + per-32-bit-lane sum of 4 products (unsigned u) x (signed s)
static inline __m256i dot_u8_s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    // q <= 15, |a| <= 128: a pair sums to at most 3840 in magnitude, no int16 saturation
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

// s[y * bs + c] = dot(row c of vx, row y of vy) for c < nc (a multiple of 8), y < nr
static bool gemv_q4_0_8x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const block_q4_0x8 * GGML_RESTRICT vx,
                               const block_q8_0 * GGML_RESTRICT vy, int nr, int nc) {
    const int nb = n / QK8_0;
    if (nb > GEMV_Q4_0_MAX_BLOCKS) {
        return false;
    }
#if PHIFLASH_GEMV_Q4_0_512
    const __m512i low512  = _mm512_set1_epi8(0x0F);
    const __m512i flip512 = _mm512_set1_epi8((char) 0x88);
#else
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i flip = _mm256_set1_epi8((char) 0x88);
#endif
    // lanes come out as rows 0 1 4 5 | 2 3 6 7
    const __m256i row_order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);

    int32_t a_sum8[GEMV_Q4_0_MAX_BLOCKS]; // 8 * sum(a) per activation block
    float   a_d[GEMV_Q4_0_MAX_BLOCKS];

    for (int y = 0; y < nr; y++) {
        const block_q8_0 * a = vy + (size_t) y * nb;
        for (int b = 0; b < nb; b++) {
            int sum = 0;
            for (int k = 0; k < QK8_0; k++) {
                sum += a[b].qs[k];
            }
            a_sum8[b] = 8 * sum;
            a_d[b]    = GGML_CPU_FP16_TO_FP32(a[b].d);
        }
        for (int x = 0; x < nc / 8; x++) {
            const block_q4_0x8 * w = vx + (size_t) x * nb;
            __m256 acc = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                PHIFLASH_PREFETCH_BLOCK(w + b);
                // qs: [rows 0-3 | rows 4-7] x [bytes 0-7 | bytes 8-15], 8 bytes per row each;
                // the low nibble of byte j is weight j, the high nibble weight j + 16
                int64_t a8[4]; // activation bytes 0-7, 8-15, 16-23, 24-31
                memcpy(a8, a[b].qs, sizeof(a8));
#if PHIFLASH_GEMV_Q4_0_512
                // both row halves in one 512-bit register: [rows 0-3 | rows 4-7], the same
                // integer sums as the 256-bit loop below with half the instructions
                const __m512i lo = _mm512_xor_si512(_mm512_loadu_si512(w[b].qs), flip512);
                const __m512i hi = _mm512_xor_si512(_mm512_loadu_si512(w[b].qs + 64), flip512);
                __m512i r = _mm512_setzero_si512();
                r = _mm512_dpbusd_epi32(r, _mm512_and_si512(lo, low512), _mm512_set1_epi64(a8[0]));
                r = _mm512_dpbusd_epi32(r, _mm512_and_si512(hi, low512), _mm512_set1_epi64(a8[1]));
                r = _mm512_dpbusd_epi32(r, _mm512_and_si512(_mm512_srli_epi16(lo, 4), low512),
                                        _mm512_set1_epi64(a8[2]));
                r = _mm512_dpbusd_epi32(r, _mm512_and_si512(_mm512_srli_epi16(hi, 4), low512),
                                        _mm512_set1_epi64(a8[3]));
                const __m256i r03 = _mm512_castsi512_si256(r);
                const __m256i r47 = _mm512_extracti64x4_epi64(r, 1);
#else
                const __m256i * q = (const __m256i *) w[b].qs;
                const __m256i r03_lo = _mm256_xor_si256(_mm256_loadu_si256(q + 0), flip);
                const __m256i r47_lo = _mm256_xor_si256(_mm256_loadu_si256(q + 1), flip);
                const __m256i r03_hi = _mm256_xor_si256(_mm256_loadu_si256(q + 2), flip);
                const __m256i r47_hi = _mm256_xor_si256(_mm256_loadu_si256(q + 3), flip);

                const __m256i a0 = _mm256_set1_epi64x(a8[0]);
                const __m256i a1 = _mm256_set1_epi64x(a8[1]);
                const __m256i a2 = _mm256_set1_epi64x(a8[2]);
                const __m256i a3 = _mm256_set1_epi64x(a8[3]);

                __m256i r03 = _mm256_setzero_si256();
                __m256i r47 = _mm256_setzero_si256();
                r03 = dot_u8_s8(r03, _mm256_and_si256(r03_lo, low4), a0);
                r47 = dot_u8_s8(r47, _mm256_and_si256(r47_lo, low4), a0);
                r03 = dot_u8_s8(r03, _mm256_and_si256(r03_hi, low4), a1);
                r47 = dot_u8_s8(r47, _mm256_and_si256(r47_hi, low4), a1);
                r03 = dot_u8_s8(r03, _mm256_and_si256(_mm256_srli_epi16(r03_lo, 4), low4), a2);
                r47 = dot_u8_s8(r47, _mm256_and_si256(_mm256_srli_epi16(r47_lo, 4), low4), a2);
                r03 = dot_u8_s8(r03, _mm256_and_si256(_mm256_srli_epi16(r03_hi, 4), low4), a3);
                r47 = dot_u8_s8(r47, _mm256_and_si256(_mm256_srli_epi16(r47_hi, 4), low4), a3);
#endif

                // exact integer dot products, rows 0 1 4 5 | 2 3 6 7
                const __m256i dot = _mm256_sub_epi32(_mm256_hadd_epi32(r03, r47), _mm256_set1_epi32(a_sum8[b]));
                // scales d0..d7 as 32-bit pairs (d0 d1)(d2 d3)(d4 d5)(d6 d7) -> d0 d1 d4 d5 d2 d3 d6 d7
                const __m128i d16 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *) w[b].d), _MM_SHUFFLE(3, 1, 2, 0));
                const __m256  d   = _mm256_mul_ps(_mm256_cvtph_ps(d16), _mm256_set1_ps(a_d[b]));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc);
            }
            _mm256_storeu_ps(s + y * bs + x * 8, _mm256_permutevar8x32_ps(acc, row_order));
        }
    }
    return true;
}

} // namespace phiflash

#endif // __AVX2__ && __F16C__ && __FMA__
