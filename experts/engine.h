/* The CPU forward pass of experts/model.h: a batch of tokens from any number of
 * sequences in one call, so that each weight is read once for the whole batch
 * (prompt processing and continuous batching are the same call). Each sequence owns
 * its key/value cache. Not thread-safe: one caller at a time per engine; the work is
 * spread over the engine's threads. */
#ifndef COE_ENGINE_H
#define COE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "experts/model.h"

/* One sequence's key/value cache (F32), grown as positions are added, in the memory
 * of the engine that first extends it (the CPU's, or a GPU's). */
typedef struct coe_kv {
    int n_pos;        /* positions already in the cache */
    int cap;
    float **k, **v;   /* per layer: [cap][k_dim] and [cap][v_dim] (v NULL where v_dim is 0:
                         the model's values are part of its keys) */
    int n_layer, k_dim, v_dim;
    /* A GPU engine's cache: k and v point into its device memory, owner is that
     * engine's device side and release frees them; NULL, NULL for host memory. */
    const void *owner;
    void (*release)(struct coe_kv *kv);
} coe_kv;

coe_kv *coe_kv_new(const coe_model *m);
void coe_kv_free(coe_kv **kv);
/* Forgets positions from n on (n <= n_pos), keeping the memory. */
void coe_kv_truncate(coe_kv *kv, int n);

typedef struct coe_engine coe_engine;

/* n_threads 0: one per CPU. n_ctx: the most positions a sequence may hold. */
coe_engine *coe_engine_new(const coe_model *m, int n_threads, int n_ctx);

/* Where an engine computes: the CPU, a CUDA device, or auto (CUDA when a GPU is there,
 * the architecture has a CUDA forward and the model fits in the GPU's memory; else
 * the CPU). */
typedef enum coe_device { COE_DEVICE_AUTO, COE_DEVICE_CPU, COE_DEVICE_CUDA } coe_device;
/* "auto", "cpu" or "cuda" to its value; -1 for anything else. */
int coe_device_parse(const char *s);
/* An engine on device (CUDA: device 0). cuda that cannot be had fails with the reason
 * in diag; auto says in diag why it stayed on the CPU, if it did, and succeeds. */
int coe_engine_open(coe_engine **out, const coe_model *m, coe_device device, int n_threads, int n_ctx,
                    coe_buf *diag);
/* "cpu, N threads" or "cuda, NAME, X GiB". */
const char *coe_engine_where(const coe_engine *e);
void coe_engine_free(coe_engine **e);
const coe_model *coe_engine_model(const coe_engine *e);
int coe_engine_n_ctx(const coe_engine *e);
/* Weight bytes the matrix products have read since the engine was made (each
 * matrix once per call, however many tokens it served): the memory traffic a batch
 * costs, for benchmarks. */
unsigned long long coe_engine_weight_bytes(const coe_engine *e);

typedef struct coe_batch {
    int n;                  /* tokens */
    const int32_t *tokens;
    coe_kv *const *seq;     /* per token: the sequence it extends, at its next position */
    const bool *want;       /* per token: compute its logits */
    float *hidden;          /* NULL, or one row of n_embd per wanted token: the final
                               hidden state (after the output norm) the logits come from */
} coe_batch;

/* Runs the batch. Tokens of one sequence must appear in order; each takes the next
 * position of its sequence. logits gets one row of n_vocab per token with want set,
 * in batch order. Fails (without touching any cache) on a token id out of range or a
 * sequence that would exceed n_ctx, with a message in diag. */
int coe_engine_forward(coe_engine *e, const coe_batch *b, float *logits, coe_buf *diag);

/* One layer's expert choices for a batch: per assignment (token t's j-th expert is
 * assignment t k + j) the expert and its weight; per expert its count of assignments
 * and the first of its slots, slots grouping each expert's assignments together; per
 * assignment its slot, and per slot its token. */
typedef struct coe_moe_plan {
    int *sel;
    float *sel_w;
    int *ex_count, *ex_first;
    int *sel_slot, *slot_tok;
} coe_moe_plan;

/* One token's experts from the router's logits p (overwritten by the scores), as
 * llama.cpp's MoE chooses them; s: scratch of n_expert + n_group floats. */
void coe_moe_route(const coe_model *m, const coe_layer *l, float *p, float *s, int *sel, float *w);
/* Routes T tokens (logits: T rows of n_expert, overwritten) and fills plan (sel and
 * sel_w T k long, ex_count and ex_first n_expert, sel_slot and slot_tok T k). */
void coe_moe_assign(const coe_model *m, const coe_layer *l, int T, float *logits, float *s, coe_moe_plan *plan);

/* Rotates the first rope_dim values of each of n_heads heads (head_dim apart) for
 * position pos, as m's RoPE says (scaling, YaRN), with freqs the frequency factors
 * (coe_rope_freqs) or NULL. */
void coe_rope(const coe_model *m, const float *freqs, float *x, int n_heads, int head_dim, int pos);
/* The frequency factors m's RoPE uses with a context of n_ctx positions, or NULL. */
const float *coe_rope_freqs(const coe_model *m, int n_ctx);

#endif
