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
#include "sambay-diff-attn.h"

#include "../llama-kv-cache-iswa.h"
#include "../llama-memory-hybrid-iswa.h"

#include <algorithm>
#include <cmath>

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
    if (sambay_diff::decode_applies(q, k, v, cparams.flash_attn)) {
        // the CPU decode ops of sambay-diff-attn.cpp
        const int64_t n_kvpair = k->ne[1]/2;
        const int64_t nh       = 2*(n_pair/n_kvpair);
        ggml_tensor * args[4] = { q, k, v, kq_mask };
        ggml_tensor * part = ggml_custom_4d(ctx0, GGML_TYPE_F32, sambay_diff::partials_width(hd, nh),
                sambay_diff::n_chunks(k->ne[2]), n_kvpair, n_rows, args, 4, sambay_diff::partials_op,
                GGML_N_TASKS_MAX, nullptr);
        cb(part, "diff_partials", il);
        cur = ggml_custom_4d(ctx0, GGML_TYPE_F32, 2*hd, n_pair, n_rows, 1, &part, 1, sambay_diff::merge_op,
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
