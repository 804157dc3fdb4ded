// SambaY's decode-time differential attention on the CPU: two ggml custom ops that replace the
// two ggml_flash_attn_ext calls of a differential-attention layer when a graph has at most
// DECODE_MAX_ROWS query rows (a decode step, or the cross-decoder's output rows during a
// prompt). The algorithm is described at the top of sambay-diff-attn.cpp.
//
// Graph use (sambay.cpp, build_diff_attn), for q {hd, n_head, T} F32 and the cache views
// k, v {hd, n_kv_head, n_kv} (F16 or F32, not transposed), mask {n_kv, >= T}:
//
//   part = ggml_custom_4d(ctx, F32, partials_width(hd, nh), n_chunks(n_kv), n_kv_head/2, T,
//                         {q, k, v, mask}, 4, partials_op, GGML_N_TASKS_MAX, nullptr)
//   out  = ggml_custom_4d(ctx, F32, 2*hd, n_head/2, T, 1, &part, 1, merge_op,
//                         GGML_N_TASKS_MAX, &lambda)   // out = a1 - lambda*a2
//
// where nh = 2 * (query pairs per KV pair) is the number of query heads one KV pair serves.
#pragma once

#include "ggml.h"

#include <algorithm>
#include <cstdint>

namespace sambay_diff {

constexpr int     MAX_GROUP       = 8;    // query pairs per KV pair (GQA group), at most
constexpr int64_t CHUNK_KEYS      = 1024; // keys per chunk of the partials op
constexpr int64_t DECODE_MAX_ROWS = 4;    // query rows at most for the ops to apply

// whether the two ops can compute this layer (else: build_diff_attn_mha's ggml ops)
bool decode_applies(const ggml_tensor * q, const ggml_tensor * k, const ggml_tensor * v, bool flash_attn);

// floats per (query row, chunk, KV pair) item: each head's running max, sum and V' accumulator
inline int64_t partials_width(int64_t hd, int64_t nh) { return (2 + 2*hd)*nh; }

// chunks of the partials op for a cache of n_kv cells: enough that any thread count has work
inline int64_t n_chunks(int64_t n_kv) { return std::max<int64_t>(1, n_kv/CHUNK_KEYS); }

// ggml_custom_op_t callbacks; merge_op's userdata points at the layer's lambda (a float)
void partials_op(ggml_tensor * dst, int ith, int nth, void * userdata);
void merge_op(ggml_tensor * dst, int ith, int nth, void * userdata);

} // namespace sambay_diff
