/* A transformer model read from GGUF: hyperparameters and weights, checked against
 * the file before use. Weights stay in the mapping; only the small vectors (norms,
 * biases) are copied out as F32. The compute is in experts/engine.c. */
#ifndef COE_MODEL_H
#define COE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/gguf.h"

typedef enum coe_arch {
    COE_ARCH_LLAMA,    /* dense, or Mixtral-style experts */
    COE_ARCH_QWEN2MOE, /* QKV biases, shared expert with a sigmoid gate */
    COE_ARCH_OLMOE,    /* RMSNorm over the whole Q and K */
    COE_ARCH_QWEN3MOE, /* RMSNorm per head on Q and K, own head size */
    COE_ARCH_GRANITE,  /* granite and granitemoe: llama's layout with four scales */
    COE_ARCH_DEEPSEEK2, /* multi-head latent attention, shared experts, V3 routing */
    COE_ARCH_PHIMOE,   /* Phi-3.5-MoE: biases everywhere, Q scaled before attention, LongRoPE factors */
} coe_arch;

/* How a MoE layer scores its experts: softmax or sigmoid of the router's logits. */
typedef enum coe_gating { COE_GATING_SOFTMAX, COE_GATING_SIGMOID } coe_gating;

/* A matrix (or a stack of n_mat matrices, one per expert) applied as W x: rows
 * outputs of cols inputs each, rows contiguous. */
typedef struct coe_weight {
    const uint8_t *data;
    uint32_t type;
    int64_t cols, rows, n_mat;
    size_t row_bytes, mat_bytes;
} coe_weight;

typedef struct coe_layer {
    float *attn_norm, *ffn_norm;
    float *attn_norm_b, *ffn_norm_b;   /* added after the norms (phimoe), or NULL */
    float *bq, *bk, *bv, *bo;          /* NULL where the model has none */
    float *q_norm, *k_norm;            /* olmoe: whole vector; qwen3moe: per head */
    coe_weight wq, wk, wv, wo;
    coe_weight gate_inp;               /* router: n_expert rows */
    coe_weight gate_exps, up_exps, down_exps;
    coe_weight gate_shexp, up_shexp, down_shexp;
    float *gate_inp_shexp;             /* the shared expert's gate, NULL without one */
    coe_weight ffn_gate, ffn_up, ffn_down; /* dense layers */
    /* deepseek2: Q through a low-rank bottleneck (wq_a, its norm, wq_b; or plain wq),
     * the compressed KV and the shared rotary key from wkv_a, then per head either
     * wk_b and wv_b (absorbed into Q and applied after attention) or wkv_b (the
     * older files: decompressed before attention) */
    coe_weight wq_a, wq_b, wkv_a, wkv_b, wk_b, wv_b;
    float *q_a_norm, *kv_a_norm;
    float *exp_probs_b; /* a bias on the experts' scores for choosing them only, or NULL */
} coe_layer;

typedef struct coe_model {
    coe_gguf *gguf;
    coe_arch arch;
    char arch_name[32];
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ctx_train;
    int n_ff, n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
    int rope_dim;
    float rope_base, eps;
    float rope_freq_scale; /* 1 / the linear scaling factor (rope.scaling.*); 1: none */
    float *rope_freqs;     /* rope_dim / 2 divisors of each pair's angle (rope_freqs.weight), or NULL */
    /* LongRoPE (phimoe): rope_freqs holds the short factors, these the long ones, which a
     * context longer than n_ctx_orig uses instead (as llama.cpp chooses); or NULL */
    float *rope_freqs_long;
    int n_ctx_orig;
    bool q_prescale;  /* Q times 1/sqrt(head size) before attention, scores unscaled (phimoe) */
    /* YaRN (rope.scaling.type yarn), as ggml computes it: each pair's angle mixes the
     * scaled and the unscaled one by a ramp over the pairs between corr_dims, and the
     * rotation is scaled by mscale. ext_factor 0: plain (linear) scaling. */
    float rope_ext_factor, rope_mscale, rope_corr_dims[2];
    bool rope_neox;   /* rotate halves (x[i], x[i+d/2]) instead of adjacent pairs */
    bool norm_topk;   /* renormalize the k selected expert weights to sum 1 */
    /* granite's scales: of the embedding, of each block's output before it is added, of
     * the attention scores (0: 1/sqrt(head size)), and the logits' divisor; else 1, 1, 0, 1 */
    float embd_scale, residual_scale, attn_scale, logit_scale;
    /* Attention as computed: the length of the q.k products and of the values per head,
     * and the floats per position of the key and value caches (v 0: the values are the
     * first att_dv of each key row, as in multi-head latent attention). */
    int att_dk, att_dv, kv_k_dim, kv_v_dim;
    /* deepseek2: ranks of the Q and KV bottlenecks (Q 0: none), each head's key and
     * value length after decompression, and whether wk_b/wv_b are split (absorbed) */
    int n_lora_q, n_lora_kv, k_mla, v_mla;
    bool mla;
    /* expert routing: the first n_dense_lead layers have a dense FFN; scores by gating,
     * weights times expert_weights_scale (1: none); with n_group > 1, only the experts
     * of the n_group_used groups whose two best scores sum highest are chosen */
    int n_dense_lead, n_group, n_group_used;
    coe_gating gating;
    float expert_weights_scale;
    coe_weight tok_embd, output;
    float *output_norm;
    float *output_norm_b, *output_b; /* phimoe's biases, or NULL */
    coe_layer *layers;
    size_t bytes_per_token; /* weights one decoded token reads: attention, router, shared and k experts, head */
} coe_model;

/* Sets up YaRN on m (its rope_dim, rope_base and rope_freq_scale set), as llama.cpp and
 * ggml do for these parameters. */
void coe_rope_yarn(coe_model *m, int n_ctx_orig, float ext_factor, float attn_factor, float beta_fast,
                   float beta_slow);

/* Opens path (the weights; the vocabulary is experts/tokenizer.h's). Errors name the
 * file and the key or tensor, and what is wrong with it. */
int coe_model_open(coe_model **out, const char *path, coe_buf *diag);
/* The same over an already opened GGUF, which the model then owns. */
int coe_model_from_gguf(coe_model **out, coe_gguf *g, coe_buf *diag);
void coe_model_close(coe_model **m);

const char *coe_arch_name(coe_arch a);

#endif
