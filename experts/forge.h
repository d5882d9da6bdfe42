/* `coegate forge`: small (or benchmark-sized) random-weight GGUF models of any
 * supported architecture and tensor type, with a built-in SentencePiece vocabulary
 * and a ChatML template, so tests, the demo and benchmarks need no downloaded model. */
#ifndef COE_FORGE_H
#define COE_FORGE_H

#include <stdint.h>

#include "common/buf.h"
#include "experts/model.h"

typedef struct coe_forge_spec {
    coe_arch arch;
    int n_layer, n_embd, n_head, n_head_kv;
    int head_dim;        /* 0: n_embd / n_head (qwen3moe may differ) */
    int n_ff;            /* dense width, or each expert's */
    int n_expert, n_expert_used; /* 0 experts: a dense llama */
    int n_ff_shexp;      /* qwen2moe's shared expert; 0 for none */
    int n_vocab;         /* at least 512 */
    int n_ctx;
    uint32_t type;       /* of the matrices; norms, biases and routers stay F32 */
    uint64_t seed;
    const char *rope_scaling; /* the rope.scaling.type key; NULL: not written */
    float rope_factor;   /* the rope.scaling.factor key; 0: not written */
    float rope_freqs;    /* every entry of a rope_freqs.weight tensor; 0: none (the other weights are the same) */
    /* deepseek2: Q and KV bottleneck ranks (Q 0: a plain attn_q), rotary dimension, each
     * head's key (head_dim) and value length, leading dense layers, shared experts,
     * sigmoid scores with a selection bias (else softmax), expert groups (0: none) and
     * groups used, the weight scale (0: none) and renormalization, and the older layout
     * (attn_kv_b) instead of attn_k_b and attn_v_b */
    int n_lora_q, n_lora_kv, rope_dim, v_head_dim, n_dense_lead, n_shared;
    bool sigmoid, norm_w, kv_b;
    int n_group, n_group_used;
    float weights_scale;
    float yarn_log_mul;  /* the rope.scaling.yarn_log_multiplier key (deepseek2); 0: not written */
    int rope_orig;       /* the rope.scaling.original_context_length key; 0: not written */
} coe_forge_spec;

/* A small model of arch that the tests use (2 layers, embedding 64). */
coe_forge_spec coe_forge_small(coe_arch arch);
/* Writes the model to path. Errors (an impossible shape, a type that does not divide
 * the rows) name the setting. */
int coe_forge_write(const coe_forge_spec *s, const char *path, coe_buf *diag);
/* The `coegate forge` command line. */
int coe_forge_main(int argc, char **argv);

#endif
