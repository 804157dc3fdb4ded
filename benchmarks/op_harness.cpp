// Times the fork's decode-time differential-attention op (sambay_diff::partials_op) on its own,
// at full size. Built by bench_gguf_op.py, which provides the op's source of any revision as
// op_block.inc (sambay-diff-attn.cpp, or for revisions before it had its own file, the op's
// block of sambay.cpp with an adapter) and links libggml-base from the wheel.
//
//   op_harness HD N_HEAD N_KV_HEAD LAYERS N_KV THREADS REPS
//
// One F16 K/V cache of N_KV cells, read by LAYERS calls of the op (the global layer and the
// cross-decoder all read the same cache). Before each call a 256 MB buffer is streamed on the same
// threads, standing in for that layer's weights, so the cache comes from memory, not L3. Prints
// one JSON line: the best and median time of the LAYERS calls over REPS repetitions, and the
// best read bandwidth of the stand-in stream (GB/s).
#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "op_block.inc"

using sambay_diff::n_chunks;
using sambay_diff::partials_op;
using sambay_diff::partials_width;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

template <typename F>
void on_threads(int nth, F f) {
    std::vector<std::thread> th;
    for (int i = 0; i < nth; ++i) {
        th.emplace_back(f, i);
    }
    for (auto & t : th) {
        t.join();
    }
}

float uniform() { return (float) (rand() % 2001 - 1000)/1000.0f; }

} // namespace

int main(int argc, char ** argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HD N_HEAD N_KV_HEAD LAYERS N_KV THREADS REPS\n", argv[0]);
        return 2;
    }
    const int hd = atoi(argv[1]), n_head = atoi(argv[2]), n_kv_head = atoi(argv[3]);
    const int layers = atoi(argv[4]), n_kv = atoi(argv[5]), nth = atoi(argv[6]), reps = atoi(argv[7]);
    const int g = n_head/n_kv_head;

    const size_t kv_bytes = (size_t) 2*hd*n_kv_head*n_kv*sizeof(ggml_fp16_t);
    ggml_init_params ip = { kv_bytes + ((size_t) 64 << 20), nullptr, false };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, hd, n_kv_head, n_kv);
    ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, hd, n_kv_head, n_kv);
    ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, n_head, 1);
    ggml_tensor * m = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, 1);
    ggml_tensor * dst = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, partials_width(hd, 2*g), n_chunks(n_kv),
            n_kv_head/2, 1);
    dst->src[0] = q;
    dst->src[1] = k;
    dst->src[2] = v;
    dst->src[3] = m;

    srand(1);
    for (int64_t i = 0; i < ggml_nelements(k); ++i) {
        ((ggml_fp16_t *) k->data)[i] = ggml_fp32_to_fp16(uniform());
        ((ggml_fp16_t *) v->data)[i] = ggml_fp32_to_fp16(uniform());
    }
    for (int64_t i = 0; i < ggml_nelements(q); ++i) {
        ((float *) q->data)[i] = 3.0f*uniform();
    }
    for (int64_t i = 0; i < n_kv; ++i) {
        ((ggml_fp16_t *) m->data)[i] = ggml_fp32_to_fp16(0.0f);
    }

    std::vector<float> weights((size_t) 64 << 20, 1.0f);  // 256 MB stand-in for a layer's weights
    std::vector<float> sums(nth);
    std::vector<double> times;
    double stream_best = 1e30;
    for (int r = 0; r < reps; ++r) {
        double t = 0;
        for (int l = 0; l < layers; ++l) {
            const auto s0 = clock_type::now();
            on_threads(nth, [&](int i) {
                const size_t n = weights.size()/nth;
                const float * p = weights.data() + i*n;
                float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                for (size_t x = 0; x < n; x += 16) {  // one float per 64-byte line
                    a0 += p[x]; a1 += p[x + 4]; a2 += p[x + 8]; a3 += p[x + 12];
                }
                sums[i] = a0 + a1 + a2 + a3;
            });
            stream_best = std::min(stream_best, seconds_since(s0));

            const auto t0 = clock_type::now();
            on_threads(nth, [&](int i) { partials_op(dst, i, nth, nullptr); });
            t += seconds_since(t0);
        }
        times.push_back(t);
    }
    std::sort(times.begin(), times.end());
    // the stream's sum is printed so that the compiler must compute it
    float stream_sum = 0.0f;
    for (float x : sums) {
        stream_sum += x;
    }
    printf("{\"n_kv\": %d, \"threads\": %d, \"best_s\": %.6g, \"median_s\": %.6g, \"kv_bytes\": %zu, "
           "\"layers\": %d, \"stream_gbs\": %.4g, \"check\": %.6g, \"stream_sum\": %.6g}\n",
        n_kv, nth, times.front(), times[times.size()/2], kv_bytes, layers,
        weights.size()*sizeof(float)/stream_best/1e9, ((float *) dst->data)[0], stream_sum);
    return 0;
}
