// The fork's Q4_0 decode GEMV (phiflash-gemv-q4_0.h) at one software-prefetch distance, against
// a plain read of the same bytes: how close the kernel gets to the bandwidth the machine lends
// it, and whether the prefetch distance (phiflash-prefetch.h) matters on this CPU.
//
//   X86=phiflash_gguf/overlay/ggml/src/ggml-cpu/arch/x86
//   SRC=benchmarks/gemv_prefetch_harness.cpp
//   for d in 0 4096 16384; do g++ -O3 -march=native -std=c++17 -I $X86 -DAHEAD=$d $SRC -o /tmp/gemv_pf_$d; done
//   for i in 1 2 3 4 5 6; do for d in 0 4096 16384; do /tmp/gemv_pf_$d 262144 4; done; done
//
// Arguments: ROWS (of 3072 weights, the real model's hidden size; 262144 rows = 453 MB, far
// beyond the last-level cache) and ROUNDS. Each round runs the GEMV on 2 threads, each over half
// the rows as ggml splits a matmul, then a plain read of the same bytes on 2 threads; it prints
// one line: "AHEAD gemv GB/s stream GB/s ratio". On a shared VM the bandwidth moves from moment
// to moment, so compare the per-round ratios of binaries run alternately, not single speeds.
// AHEAD=0 prefetches the line in use: the same as no software prefetch.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

// the few ggml definitions the kernel uses (same layouts as ggml-common.h)
#define GGML_RESTRICT __restrict
#define QK8_0         32
typedef uint16_t ggml_half;
struct block_q4_0x8 {
    ggml_half d[8];
    uint8_t   qs[128];
};
struct block_q8_0 {
    ggml_half d;
    int8_t    qs[QK8_0];
};
static inline float GGML_CPU_FP16_TO_FP32(ggml_half h) { return _cvtsh_ss(h); }

#include "phiflash-prefetch.h"
#ifndef AHEAD
#define AHEAD 4096
#endif
#undef PHIFLASH_PREFETCH_AHEAD
#define PHIFLASH_PREFETCH_AHEAD AHEAD // the kernel below expands it here
#include "phiflash-gemv-q4_0.h"

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// sum of every 64-bit word in [p, p + n), n a multiple of 128
uint64_t stream_read(const uint8_t * p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *) (p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *) (p + i + 32)));
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *) (p + i + 64)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *) (p + i + 96)));
    }
    alignas(32) uint64_t v[4];
    _mm256_store_si256((__m256i *) v, _mm256_add_epi64(a, b));
    return v[0] + v[1] + v[2] + v[3];
}

template <typename F> double on_two_threads(F f) {
    const double t0 = now();
    std::thread  t(f, 1);
    f(0);
    t.join();
    return now() - t0;
}

} // namespace

int main(int argc, char ** argv) {
    const int    n      = 3072;
    const int    rows   = argc > 1 ? atoi(argv[1]) : 262144;
    const int    rounds = argc > 2 ? atoi(argv[2]) : 5;
    const int    nb     = n / QK8_0;
    const size_t groups = rows / 8;
    std::vector<block_q4_0x8> w(groups * nb);
    srand(1);
    for (auto & b : w) {
        std::fill(b.d, b.d + 8, (ggml_half) 0x2000);
        for (auto & q : b.qs) {
            q = (uint8_t) rand();
        }
    }
    std::vector<block_q8_0> a(nb);
    for (auto & b : a) {
        b.d = 0x2000;
        for (auto & q : b.qs) {
            q = (int8_t) (rand() % 255 - 127);
        }
    }
    std::vector<float> out(rows);
    const size_t       bytes = w.size() * sizeof(block_q4_0x8);
    const size_t       half  = bytes / 2 / 128 * 128;
    volatile uint64_t  sink  = 0;
    for (int r = 0; r < rounds; r++) {
        const double tg = on_two_threads([&](int t) {
            const size_t g0 = groups * t / 2, g1 = groups * (t + 1) / 2;
            phiflash::gemv_q4_0_8x8_q8_0(n, out.data() + g0 * 8, rows, w.data() + g0 * nb, a.data(), 1,
                                         (int) (g1 - g0) * 8);
        });
        const double ts = on_two_threads([&](int t) { sink = sink + stream_read((const uint8_t *) w.data() + half * t, half); });
        printf("%d gemv %.1f stream %.1f ratio %.2f\n", AHEAD, bytes / tg / 1e9, 2 * half / ts / 1e9,
               (bytes / tg) / (2 * half / ts));
    }
    return out[0] == 12345.0f ? 1 : 0; // keep the result alive
}
