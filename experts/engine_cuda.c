#include "experts/engine_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "experts/cuda.h"
#include "experts/quant.h"

/* A layer's small vectors (norms, biases, gates) in device memory; NULL where the
 * model has none. */
typedef struct dev_layer {
    float *attn_norm, *ffn_norm, *attn_norm_b, *ffn_norm_b;
    float *bq, *bk, *bv, *bo, *q_norm, *k_norm, *gate_inp_shexp;
    float *q_a_norm, *kv_a_norm; /* deepseek2 */
} dev_layer;

struct coe_engine_cuda {
    coe_cuda *dev;
    const coe_model *m;
    int n_ctx;
    char where[200];
    uint8_t *d_file; /* the model file: weight w at d_file + (w.data - file base) */
    dev_layer *layers;
    float *output_norm, *output_norm_b, *output_b, *rope_freqs;
    coe_cuda_rope_params rope;
    unsigned long long weight_bytes;
    /* device scratch for batches of up to cap_T tokens */
    int cap_T;
    float *x, *cur, *q, *k, *v, *att, *tmp, *out, *router, *xg, *hg, *hu, *eo, *sg, *su, *so, *z, *sel_w, *scores;
    float *xr; /* a product's input rounded as the CPU rounds it */
    /* deepseek2: the Q bottleneck, heads' rows gathered, absorbed Q, decompressed KV
     * (older files), per-head values, a step's key and value rows (older files) */
    float *ql, *gat, *qa, *kvb, *att2, *kst, *vst;
    int32_t *pos, *slot_tok, *sel_slot, *wanted; /* slot_tok holds sel_slot and sel_w after it: one upload */
    size_t cap_A;
    float **ptrs;     /* per layer: T key rows, T value rows to write, T key caches, T value caches */
    float *mm_scratch; /* the largest matrix as floats: products of many tokens */
    float *logits;     /* cap_out rows of n_vocab */
    int cap_out;
    int att_chunk;     /* tokens per attention call, so that scores fit their scratch */
    /* host scratch */
    float *h_router, *h_sel_w, *h_sel_s;
    int *h_sel, *h_ex_count, *h_ex_first, *h_sel_slot, *h_slot_tok; /* h_slot_tok holds the other two, as slot_tok */
    int32_t *h_wanted, *h_pos;
    float **h_ptrs;
};

/* The matrices of a layer that the CUDA forward reads (data NULL where absent). */
enum { LAYER_MATRICES = 20 };
static void layer_matrices(const coe_layer *l, const coe_weight *out[LAYER_MATRICES])
{
    const coe_weight *w[LAYER_MATRICES] = {
        &l->wq,       &l->wk,       &l->wv,         &l->wo,        &l->gate_inp, &l->gate_exps, &l->up_exps,
        &l->down_exps, &l->gate_shexp, &l->up_shexp, &l->down_shexp, &l->ffn_gate, &l->ffn_up,    &l->ffn_down,
        &l->wq_a,     &l->wq_b,     &l->wkv_a,      &l->wkv_b,     &l->wk_b,     &l->wv_b};
    memcpy(out, w, sizeof w);
}

const char *coe_engine_cuda_refuses(const coe_model *m)
{
    switch (m->arch) {
    case COE_ARCH_LLAMA: case COE_ARCH_QWEN2MOE: case COE_ARCH_OLMOE: case COE_ARCH_QWEN3MOE: case COE_ARCH_GRANITE:
    case COE_ARCH_PHIMOE: case COE_ARCH_DEEPSEEK2:
        break;
    default:
        return "its architecture has no CUDA forward yet";
    }
    const coe_weight *all[] = {&m->tok_embd, &m->output};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (!coe_cuda_type_supported(all[i]->type))
            return "a tensor type has no CUDA kernel";
    for (int il = 0; il < m->n_layer; il++) {
        const coe_weight *w[LAYER_MATRICES];
        layer_matrices(&m->layers[il], w);
        for (int i = 0; i < LAYER_MATRICES; i++)
            if (w[i]->data && !coe_cuda_type_supported(w[i]->type))
                return "a tensor type has no CUDA kernel";
    }
    return NULL;
}

static int upload_vec(coe_engine_cuda *g, const float *h, size_t n, float **d)
{
    *d = NULL;
    if (!h)
        return 0;
    if (!(*d = coe_cuda_alloc(g->dev, n * sizeof **d)))
        return COE_ENOMEM;
    return coe_cuda_upload(g->dev, *d, h, n * sizeof **d);
}

/* Every scratch buffer with its bytes for batches of t tokens, device or host; one list,
 * so that allocating and freeing cannot disagree (as the CPU engine's scratch_list).
 * The MoE plan's three arrays share one buffer (one copy to the device): sel_slot and
 * sel_w point into slot_tok, cap_A apart, and the same on the host. */
typedef struct scratch {
    void **p;
    size_t bytes;
    bool host;
} scratch;

#define N_SCRATCH 39

static size_t max_z(size_t a, size_t b)
{
    return a > b ? a : b;
}

static int scratch_list(coe_engine_cuda *g, size_t t, scratch *list)
{
    const coe_model *m = g->m;
    const size_t E = (size_t)m->n_embd, H = (size_t)m->n_head;
    /* widths as the CPU engine's scratch_list: deepseek2's heads, latent rows and values included */
    const size_t hd = (size_t)m->head_dim, R = (size_t)m->n_lora_kv, r = (size_t)m->rope_dim;
    const size_t nope = m->k_mla ? (size_t)m->k_mla - r : 0, dv = (size_t)m->v_mla;
    const size_t Qd = H * max_z(max_z(hd, (size_t)m->k_mla), (size_t)m->att_dk);
    const size_t KVd = max_z(max_z((size_t)m->n_head_kv * hd, (size_t)m->kv_k_dim), R + r);
    const size_t Ad = H * max_z((size_t)m->att_dv, hd), Vd = max_z((size_t)m->n_head_kv * hd, (size_t)m->kv_v_dim);
    const size_t k = max_z((size_t)m->n_expert_used, 1), A = t * k, nx = max_z((size_t)m->n_expert, 1);
    const size_t F = max_z((size_t)m->n_ff_exp, 1), Fs = max_z(max_z((size_t)m->n_ff_shexp, (size_t)m->n_ff), 1);
    const size_t L = (size_t)m->n_layer, f = sizeof(float), i = sizeof(int32_t);
    const bool ds = m->arch == COE_ARCH_DEEPSEEK2, older = ds && !m->mla;
    const size_t QL = (size_t)m->n_lora_q, G = ds ? H * max_z(nope, R) : 1;
    size_t widest = max_z(max_z(A * E, A * F), max_z(max_z(t * Qd, t * Fs), max_z(t * E, t * Ad)));
    widest = max_z(widest, max_z(t * QL, max_z(t * G, t * H * dv)));
    const size_t scores = (size_t)g->att_chunk * H * (size_t)g->n_ctx;
    scratch l[N_SCRATCH] = {
        {(void **)&g->x, t * E * f, 0},          {(void **)&g->cur, t * E * f, 0},
        {(void **)&g->q, t * Qd * f, 0},         {(void **)&g->k, t * KVd * f, 0},
        {(void **)&g->v, t * Vd * f, 0},         {(void **)&g->att, t * Ad * f, 0},
        {(void **)&g->tmp, t * E * f, 0},        {(void **)&g->out, t * E * f, 0},
        {(void **)&g->router, t * nx * f, 0},    {(void **)&g->xg, A * E * f, 0},
        {(void **)&g->hg, A * F * f, 0},         {(void **)&g->hu, A * F * f, 0},
        {(void **)&g->eo, A * E * f, 0},         {(void **)&g->sg, t * Fs * f, 0},
        {(void **)&g->su, t * Fs * f, 0},        {(void **)&g->so, t * E * f, 0},
        {(void **)&g->z, t * f, 0},              {(void **)&g->scores, scores * f, 0},
        {(void **)&g->pos, t * i, 0},            {(void **)&g->wanted, t * i, 0},
        {(void **)&g->slot_tok, 3 * A * i, 0},   {(void **)&g->ptrs, 4 * L * t * sizeof(float *), 0},
        {(void **)&g->xr, widest * f, 0},        {(void **)&g->ql, max_z(t * QL, 1) * f, 0},
        {(void **)&g->gat, t * G * f, 0},        {(void **)&g->qa, max_z(m->mla ? t * H * (R + r) : 0, 1) * f, 0},
        {(void **)&g->kvb, max_z(older ? t * H * (nope + dv) : 0, 1) * f, 0},
        {(void **)&g->att2, max_z(m->mla ? t * H * dv : 0, 1) * f, 0},
        {(void **)&g->kst, max_z(older ? t * (size_t)m->kv_k_dim : 0, 1) * f, 0},
        {(void **)&g->vst, max_z(older ? t * (size_t)m->kv_v_dim : 0, 1) * f, 0},
        {(void **)&g->h_router, t * nx * f, 1},  {(void **)&g->h_sel_s, (nx + (size_t)m->n_group + 1) * f, 1},
        {(void **)&g->h_sel, A * i, 1},          {(void **)&g->h_ex_count, nx * i, 1},
        {(void **)&g->h_ex_first, nx * i, 1},    {(void **)&g->h_slot_tok, 3 * A * i, 1},
        {(void **)&g->h_wanted, t * i, 1},       {(void **)&g->h_pos, t * i, 1},
        {(void **)&g->h_ptrs, 4 * L * t * sizeof(float *), 1},
    };
    memcpy(list, l, sizeof l);
    return N_SCRATCH;
}

static void free_scratch(coe_engine_cuda *g)
{
    scratch list[N_SCRATCH];
    int n = scratch_list(g, 0, list);
    for (int k = 0; k < n; k++) {
        if (list[k].host)
            free(*list[k].p);
        else
            coe_cuda_release(g->dev, *list[k].p);
        *list[k].p = NULL;
    }
    g->sel_slot = g->h_sel_slot = NULL;
    g->sel_w = g->h_sel_w = NULL;
    g->cap_T = 0;
}

void coe_engine_cuda_free(coe_engine_cuda **pg)
{
    coe_engine_cuda *g = *pg;
    if (!g)
        return;
    if (g->dev) {
        free_scratch(g);
        coe_cuda_release(g->dev, g->mm_scratch);
        coe_cuda_release(g->dev, g->logits);
        for (int il = 0; g->layers && il < g->m->n_layer; il++) {
            dev_layer *d = &g->layers[il];
            float *v[] = {d->attn_norm, d->ffn_norm, d->attn_norm_b, d->ffn_norm_b, d->bq,
                          d->bk,        d->bv,       d->bo,          d->q_norm,     d->k_norm,
                          d->gate_inp_shexp, d->q_a_norm, d->kv_a_norm};
            for (size_t i = 0; i < sizeof v / sizeof *v; i++)
                coe_cuda_release(g->dev, v[i]);
        }
        float *v[] = {g->output_norm, g->output_norm_b, g->output_b, g->rope_freqs};
        for (size_t i = 0; i < sizeof v / sizeof *v; i++)
            coe_cuda_release(g->dev, v[i]);
        coe_cuda_release(g->dev, g->d_file);
        coe_cuda_close(&g->dev);
    }
    free(g->layers);
    free(g);
    *pg = NULL;
}

/* The largest matrix of the model, in values: the scratch of many-token products. */
static int64_t largest_matrix(const coe_model *m)
{
    int64_t most = m->output.rows * m->output.cols;
    for (int il = 0; il < m->n_layer; il++) {
        const coe_weight *w[LAYER_MATRICES];
        layer_matrices(&m->layers[il], w);
        for (int i = 0; i < LAYER_MATRICES; i++)
            if (w[i]->data && w[i]->rows * w[i]->cols > most)
                most = w[i]->rows * w[i]->cols;
    }
    return most;
}

int coe_engine_cuda_new(coe_engine_cuda **out, const coe_model *m, int n_ctx, coe_buf *diag)
{
    *out = NULL;
    const char *why = coe_engine_cuda_refuses(m);
    if (why) {
        coe_buf_printf(diag, "the model cannot run on CUDA: %s\n", why);
        return COE_EUNSUPPORTED;
    }
    coe_engine_cuda *g = calloc(1, sizeof *g);
    if (!g)
        return COE_ENOMEM;
    g->m = m;
    g->n_ctx = n_ctx;
    char reason[256];
    int rc = coe_cuda_open(&g->dev, 0, reason, sizeof reason);
    if (rc) {
        coe_buf_printf(diag, "%s\n", reason);
        free(g);
        return rc;
    }
    snprintf(g->where, sizeof g->where, "cuda, %s", coe_cuda_name(g->dev));
    /* The file, a float copy of the largest matrix for prompts, and caches for a few
     * full contexts must fit, with a margin for the rest of the scratch. */
    size_t free_b = 0, total_b = 0;
    coe_cuda_memory(g->dev, &free_b, &total_b);
    size_t cache = (size_t)m->n_layer * (size_t)n_ctx * (size_t)(m->kv_k_dim + m->kv_v_dim) * sizeof(float);
    size_t need = m->gguf->size + (size_t)largest_matrix(m) * sizeof(float) + 4 * cache + ((size_t)256 << 20);
    if (need > free_b) {
        coe_buf_printf(diag, "the model needs about %.1f GiB of %s, %.1f GiB are free\n", (double)need / (1 << 30),
                       coe_cuda_name(g->dev), (double)free_b / (1 << 30));
        coe_engine_cuda_free(&g);
        return COE_ENOMEM;
    }
    g->d_file = coe_cuda_alloc(g->dev, m->gguf->size);
    rc = g->d_file ? coe_cuda_upload(g->dev, g->d_file, m->gguf->base, m->gguf->size) : COE_ENOMEM;
    const size_t E = (size_t)m->n_embd, Qd = (size_t)m->n_head * (size_t)m->head_dim,
                 KVd = (size_t)m->n_head_kv * (size_t)m->head_dim;
    if (!rc && !(g->layers = calloc((size_t)m->n_layer, sizeof *g->layers)))
        rc = COE_ENOMEM;
    for (int il = 0; !rc && il < m->n_layer; il++) {
        const coe_layer *l = &m->layers[il];
        dev_layer *d = &g->layers[il];
        bool whole = m->arch == COE_ARCH_OLMOE; /* else per head (qwen3moe) */
        rc = upload_vec(g, l->attn_norm, E, &d->attn_norm);
        rc = rc ? rc : upload_vec(g, l->ffn_norm, E, &d->ffn_norm);
        rc = rc ? rc : upload_vec(g, l->attn_norm_b, E, &d->attn_norm_b);
        rc = rc ? rc : upload_vec(g, l->ffn_norm_b, E, &d->ffn_norm_b);
        rc = rc ? rc : upload_vec(g, l->bq, Qd, &d->bq);
        rc = rc ? rc : upload_vec(g, l->bk, KVd, &d->bk);
        rc = rc ? rc : upload_vec(g, l->bv, KVd, &d->bv);
        rc = rc ? rc : upload_vec(g, l->bo, E, &d->bo);
        rc = rc ? rc : upload_vec(g, l->q_norm, whole ? Qd : (size_t)m->head_dim, &d->q_norm);
        rc = rc ? rc : upload_vec(g, l->k_norm, whole ? KVd : (size_t)m->head_dim, &d->k_norm);
        rc = rc ? rc : upload_vec(g, l->gate_inp_shexp, E, &d->gate_inp_shexp);
        rc = rc ? rc : upload_vec(g, l->q_a_norm, (size_t)m->n_lora_q, &d->q_a_norm);
        rc = rc ? rc : upload_vec(g, l->kv_a_norm, (size_t)m->n_lora_kv, &d->kv_a_norm);
    }
    rc = rc ? rc : upload_vec(g, m->output_norm, E, &g->output_norm);
    rc = rc ? rc : upload_vec(g, m->output_norm_b, E, &g->output_norm_b);
    rc = rc ? rc : upload_vec(g, m->output_b, (size_t)m->n_vocab, &g->output_b);
    rc = rc ? rc : upload_vec(g, coe_rope_freqs(m, n_ctx), (size_t)m->rope_dim / 2, &g->rope_freqs);
    if (rc) {
        coe_buf_printf(diag, "uploading the model to %s: %s\n", coe_cuda_name(g->dev),
                       rc == COE_ENOMEM ? "out of device memory" : coe_cuda_last_error(g->dev));
        coe_engine_cuda_free(&g);
        return rc;
    }
    g->rope = (coe_cuda_rope_params){m->rope_dim, m->rope_neox, m->rope_base, m->rope_freq_scale,
                                     m->rope_ext_factor, m->rope_corr_dims[0], m->rope_corr_dims[1], m->rope_mscale};
    *out = g;
    return 0;
}

static const char *where(const void *ctx)
{
    return ((const coe_engine_cuda *)ctx)->where; /* "cuda, NAME, X GiB" */
}

static unsigned long long weight_bytes(const void *ctx)
{
    return ((const coe_engine_cuda *)ctx)->weight_bytes;
}

/* Device and host scratch for batches of T tokens. */
static int reserve(coe_engine_cuda *g, int T)
{
    if (T <= g->cap_T)
        return 0;
    free_scratch(g);
    /* attention scores: at most 64 Mi floats at once */
    size_t per_token = (size_t)g->m->n_head * (size_t)g->n_ctx;
    g->att_chunk = (int)(((size_t)64 << 20) / per_token);
    g->att_chunk = g->att_chunk < 1 ? 1 : g->att_chunk > T ? T : g->att_chunk;
    scratch list[N_SCRATCH];
    int n = scratch_list(g, (size_t)T, list);
    for (int k = 0; k < n; k++)
        if (!(*list[k].p = list[k].host ? malloc(list[k].bytes ? list[k].bytes : 1)
                                        : coe_cuda_alloc(g->dev, list[k].bytes))) {
            free_scratch(g);
            return COE_ENOMEM;
        }
    const size_t A = (size_t)T * (g->m->n_expert_used > 0 ? (size_t)g->m->n_expert_used : 1);
    g->cap_A = A;
    g->sel_slot = g->slot_tok + A, g->sel_w = (float *)(g->slot_tok + 2 * A);
    g->h_sel_slot = g->h_slot_tok + A, g->h_sel_w = (float *)(g->h_slot_tok + 2 * A);
    g->cap_T = T;
    return 0;
}

/* The device cache of a sequence, grown to n positions (copied over when it moves). */
static void kv_release(coe_kv *kv)
{
    coe_cuda *dev = (coe_cuda *)((const coe_engine_cuda *)kv->owner)->dev;
    for (int l = 0; l < kv->n_layer; l++) {
        coe_cuda_release(dev, kv->k[l]);
        coe_cuda_release(dev, kv->v[l]);
        kv->k[l] = kv->v[l] = NULL;
    }
}

static int kv_reserve(coe_engine_cuda *g, coe_kv *kv, int n)
{
    if (kv->cap && kv->owner != g)
        return COE_EINVAL;
    if (n <= kv->cap)
        return 0;
    int cap = kv->cap ? kv->cap : 64;
    while (cap < n)
        cap *= 2;
    cap = cap > g->n_ctx ? g->n_ctx : cap;
    for (int l = 0; l < kv->n_layer; l++) {
        float *k = coe_cuda_alloc(g->dev, (size_t)cap * (size_t)kv->k_dim * sizeof *k);
        float *v = kv->v_dim ? coe_cuda_alloc(g->dev, (size_t)cap * (size_t)kv->v_dim * sizeof *v) : NULL;
        int rc = !k || (kv->v_dim && !v) ? COE_ENOMEM : 0;
        if (!rc && kv->cap)
            rc = coe_cuda_copy(g->dev, k, kv->k[l], (size_t)kv->n_pos * (size_t)kv->k_dim * sizeof *k);
        if (!rc && kv->cap && kv->v_dim)
            rc = coe_cuda_copy(g->dev, v, kv->v[l], (size_t)kv->n_pos * (size_t)kv->v_dim * sizeof *v);
        if (rc) {
            coe_cuda_release(g->dev, k);
            coe_cuda_release(g->dev, v);
            return rc;
        }
        coe_cuda_release(g->dev, kv->k[l]);
        coe_cuda_release(g->dev, kv->v[l]);
        kv->k[l] = k;
        kv->v[l] = v;
    }
    kv->cap = cap;
    kv->owner = g;
    kv->release = kv_release;
    return 0;
}

/* The device address of matrix mat of w. */
static const void *dw(const coe_engine_cuda *g, const coe_weight *w, int mat)
{
    return g->d_file + (w->data - g->m->gguf->base) + (size_t)mat * w->mat_bytes;
}

/* y (T rows, ld apart) = W_mat x, x rounded first as the CPU engine's products round
 * it (to Q8_0's codes for Q8_0 weights, and so on), so that the two engines agree up to
 * the order of float sums, as the CPU agrees with llama.cpp. */
static int mm(coe_engine_cuda *g, const coe_weight *w, int mat, const float *x, int T, float *y, int64_t ld)
{
    if (T <= 0 || !w->data)
        return 0;
    if (coe_dot_type(w->type) != COE_GGML_F32) {
        int rc = coe_cuda_round_activations(g->dev, w->type, x, g->xr, T, w->cols);
        if (rc)
            return rc;
        x = g->xr;
    }
    if (T > COE_CUDA_MATVEC_MAX_T && !g->mm_scratch &&
        !(g->mm_scratch = coe_cuda_alloc(g->dev, (size_t)largest_matrix(g->m) * sizeof(float))))
        return COE_ENOMEM;
    g->weight_bytes += w->mat_bytes;
    return coe_cuda_matmul(g->dev, w->type, dw(g, w, mat), w->rows, w->cols, x, T, y, ld, g->mm_scratch);
}

static int attention(coe_engine_cuda *g, const dev_layer *d, const coe_layer *l, int il, int T)
{
    const coe_model *m = g->m;
    coe_cuda *dev = g->dev;
    const int E = m->n_embd, hd = m->head_dim, Qd = m->n_head * hd, KVd = m->n_head_kv * hd;
    int rc = mm(g, &l->wq, 0, g->cur, T, g->q, Qd);
    rc = rc ? rc : mm(g, &l->wk, 0, g->cur, T, g->k, KVd);
    rc = rc ? rc : mm(g, &l->wv, 0, g->cur, T, g->v, KVd);
    if (!rc && d->bq)
        rc = coe_cuda_add_rows(dev, g->q, d->bq, T, Qd);
    if (!rc && d->bk)
        rc = coe_cuda_add_rows(dev, g->k, d->bk, T, KVd);
    if (!rc && d->bv)
        rc = coe_cuda_add_rows(dev, g->v, d->bv, T, KVd);
    if (!rc && m->arch == COE_ARCH_OLMOE) {
        rc = coe_cuda_rms_norm(dev, g->q, d->q_norm, g->q, T, Qd, m->eps);
        rc = rc ? rc : coe_cuda_rms_norm(dev, g->k, d->k_norm, g->k, T, KVd, m->eps);
    } else if (!rc && m->arch == COE_ARCH_QWEN3MOE) {
        rc = coe_cuda_rms_norm(dev, g->q, d->q_norm, g->q, T * m->n_head, hd, m->eps);
        rc = rc ? rc : coe_cuda_rms_norm(dev, g->k, d->k_norm, g->k, T * m->n_head_kv, hd, m->eps);
    }
    rc = rc ? rc : coe_cuda_rope(dev, &g->rope, g->rope_freqs, g->q, T, m->n_head, hd, g->pos);
    rc = rc ? rc : coe_cuda_rope(dev, &g->rope, g->rope_freqs, g->k, T, m->n_head_kv, hd, g->pos);
    if (!rc && m->q_prescale)
        rc = coe_cuda_scale(dev, g->q, (int64_t)T * Qd, 1.0f / sqrtf((float)hd));
    /* this layer's rows of the pointer table: where each token's key and value go,
     * then each token's key and value caches */
    float **p = g->ptrs + (size_t)il * 4 * (size_t)T;
    rc = rc ? rc : coe_cuda_scatter_rows(dev, p, g->k, T, KVd);
    rc = rc ? rc : coe_cuda_scatter_rows(dev, p + T, g->v, T, KVd);
    coe_cuda_attention_shape s = {m->n_head, m->n_head_kv, hd, hd, KVd, KVd, g->n_ctx,
                                  m->attn_scale ? m->attn_scale : 1.0f / sqrtf((float)hd)};
    for (int t0 = 0; !rc && t0 < T; t0 += g->att_chunk) {
        int n = T - t0 < g->att_chunk ? T - t0 : g->att_chunk;
        rc = coe_cuda_attention(dev, &s, g->q + (size_t)t0 * (size_t)Qd, (const float *const *)p + 2 * T + t0,
                                (const float *const *)p + 3 * T + t0, g->pos + t0, n, g->scores,
                                g->att + (size_t)t0 * (size_t)Qd);
    }
    rc = rc ? rc : mm(g, &l->wo, 0, g->att, T, g->tmp, E);
    if (!rc && d->bo)
        rc = coe_cuda_add_rows(dev, g->tmp, d->bo, T, E);
    return rc;
}

/* deepseek2, as the CPU engine's attention_deepseek2: Q through its bottleneck, the
 * compressed KV and the shared rotary key; split files absorb wk_b into each head's
 * query and cache the latent row, older ones decompress every head's key and value. */
static int attention_deepseek2(coe_engine_cuda *g, const dev_layer *d, const coe_layer *l, int il, int T)
{
    const coe_model *m = g->m;
    coe_cuda *dev = g->dev;
    const int E = m->n_embd, H = m->n_head, R = m->n_lora_kv, r = m->rope_dim, kq = m->k_mla, nope = kq - r,
              dv = m->v_mla, QK = H * kq, KVA = R + r;
    int rc;
    if (m->n_lora_q) {
        rc = mm(g, &l->wq_a, 0, g->cur, T, g->ql, m->n_lora_q);
        rc = rc ? rc : coe_cuda_rms_norm(dev, g->ql, d->q_a_norm, g->ql, T, m->n_lora_q, m->eps);
        rc = rc ? rc : mm(g, &l->wq_b, 0, g->ql, T, g->q, QK);
    } else {
        rc = mm(g, &l->wq, 0, g->cur, T, g->q, QK);
    }
    rc = rc ? rc : mm(g, &l->wkv_a, 0, g->cur, T, g->k, KVA);
    rc = rc ? rc : coe_cuda_rms_norm_rows(dev, g->k, d->kv_a_norm, g->k, T, R, KVA, m->eps);
    rc = rc ? rc : coe_cuda_rope(dev, &g->rope, g->rope_freqs, g->k + R, T, 1, KVA, g->pos);
    rc = rc ? rc : coe_cuda_rope(dev, &g->rope, g->rope_freqs, g->q + nope, T, H, kq, g->pos);
    float **p = g->ptrs + (size_t)il * 4 * (size_t)T;
    if (m->mla) {
        /* each head's no-rope query rows together, times its wk_b; then its rope part */
        rc = rc ? rc : coe_cuda_copy_rows(dev, g->gat, nope, g->q, kq, QK, H, T, nope);
        for (int h = 0; !rc && h < H; h++)
            rc = mm(g, &l->wk_b, h, g->gat + (size_t)h * (size_t)T * (size_t)nope, T, g->qa + (size_t)h * (size_t)KVA,
                    (int64_t)H * KVA);
        rc = rc ? rc : coe_cuda_copy_rows(dev, g->qa + R, KVA, g->q + nope, QK, kq, T, H, r);
        rc = rc ? rc : coe_cuda_scatter_rows(dev, p, g->k, T, KVA);
        coe_cuda_attention_shape s = {H, 1, KVA, R, KVA, KVA, g->n_ctx, m->attn_scale};
        for (int t0 = 0; !rc && t0 < T; t0 += g->att_chunk) {
            int n = T - t0 < g->att_chunk ? T - t0 : g->att_chunk;
            rc = coe_cuda_attention(dev, &s, g->qa + (size_t)t0 * (size_t)H * (size_t)KVA,
                                    (const float *const *)p + 2 * T + t0, (const float *const *)p + 3 * T + t0,
                                    g->pos + t0, n, g->scores, g->att + (size_t)t0 * (size_t)H * (size_t)R);
        }
        rc = rc ? rc : coe_cuda_copy_rows(dev, g->gat, R, g->att, R, (int64_t)H * R, H, T, R);
        for (int h = 0; !rc && h < H; h++)
            rc = mm(g, &l->wv_b, h, g->gat + (size_t)h * (size_t)T * (size_t)R, T, g->att2 + (size_t)h * (size_t)dv,
                    (int64_t)H * dv);
        return rc ? rc : mm(g, &l->wo, 0, g->att2, T, g->tmp, E);
    }
    /* older files: the compressed KV decompressed, every head's key (its no-rope part
     * and the shared rotary key) and value cached */
    rc = rc ? rc : coe_cuda_copy_rows(dev, g->gat, R, g->k, 0, KVA, 1, T, R);
    rc = rc ? rc : mm(g, &l->wkv_b, 0, g->gat, T, g->kvb, (int64_t)H * (nope + dv));
    rc = rc ? rc : coe_cuda_copy_rows(dev, g->kst, kq, g->kvb, (int64_t)H * (nope + dv), nope + dv, T, H, nope);
    rc = rc ? rc : coe_cuda_copy_rows(dev, g->kst + nope, kq, g->k + R, KVA, 0, T, H, r);
    rc = rc ? rc : coe_cuda_copy_rows(dev, g->vst, dv, g->kvb + nope, (int64_t)H * (nope + dv), nope + dv, T, H, dv);
    rc = rc ? rc : coe_cuda_scatter_rows(dev, p, g->kst, T, QK);
    rc = rc ? rc : coe_cuda_scatter_rows(dev, p + T, g->vst, T, H * dv);
    coe_cuda_attention_shape s = {H, H, kq, dv, QK, H * dv, g->n_ctx, m->attn_scale};
    for (int t0 = 0; !rc && t0 < T; t0 += g->att_chunk) {
        int n = T - t0 < g->att_chunk ? T - t0 : g->att_chunk;
        rc = coe_cuda_attention(dev, &s, g->q + (size_t)t0 * (size_t)QK, (const float *const *)p + 2 * T + t0,
                                (const float *const *)p + 3 * T + t0, g->pos + t0, n, g->scores,
                                g->att + (size_t)t0 * (size_t)H * (size_t)dv);
    }
    return rc ? rc : mm(g, &l->wo, 0, g->att, T, g->tmp, E);
}

static int ffn_moe(coe_engine_cuda *g, const dev_layer *d, const coe_layer *l, int T)
{
    const coe_model *m = g->m;
    coe_cuda *dev = g->dev;
    const int E = m->n_embd, k = m->n_expert_used, nx = m->n_expert, F = m->n_ff_exp, Fs = m->n_ff_shexp, A = T * k;
    int rc = mm(g, &l->gate_inp, 0, g->cur, T, g->router, nx);
    rc = rc ? rc : coe_cuda_download(dev, g->h_router, g->router, (size_t)T * (size_t)nx * sizeof(float));
    if (rc)
        return rc;
    coe_moe_plan plan = {g->h_sel, g->h_sel_w, g->h_ex_count, g->h_ex_first, g->h_sel_slot, g->h_slot_tok};
    coe_moe_assign(m, l, T, g->h_router, g->h_sel_s, &plan);
    /* the plan in one copy: slots' tokens, assignments' slots, weights (cap_A apart) */
    rc = coe_cuda_upload(dev, g->slot_tok, g->h_slot_tok, (2 * g->cap_A + (size_t)A) * sizeof(int32_t));
    /* each expert's tokens gathered together, then its products over them */
    rc = rc ? rc : coe_cuda_gather_rows(dev, g->xg, g->cur, g->slot_tok, A, E);
    for (int i = 0; !rc && i < nx; i++) {
        int n = g->h_ex_count[i], at = g->h_ex_first[i];
        if (!n)
            continue;
        const float *x = g->xg + (size_t)at * (size_t)E;
        rc = mm(g, &l->gate_exps, i, x, n, g->hg + (size_t)at * (size_t)F, F);
        rc = rc ? rc : mm(g, &l->up_exps, i, x, n, g->hu + (size_t)at * (size_t)F, F);
    }
    rc = rc ? rc : coe_cuda_silu_mul(dev, g->hg, g->hu, (int64_t)A * F);
    for (int i = 0; !rc && i < nx; i++) {
        int n = g->h_ex_count[i], at = g->h_ex_first[i];
        if (n)
            rc = mm(g, &l->down_exps, i, g->hg + (size_t)at * (size_t)F, n, g->eo + (size_t)at * (size_t)E, E);
    }
    if (!rc && Fs) {
        rc = mm(g, &l->gate_shexp, 0, g->cur, T, g->sg, Fs);
        rc = rc ? rc : mm(g, &l->up_shexp, 0, g->cur, T, g->su, Fs);
        rc = rc ? rc : coe_cuda_silu_mul(dev, g->sg, g->su, (int64_t)T * Fs);
        rc = rc ? rc : mm(g, &l->down_shexp, 0, g->sg, T, g->so, E);
        if (!rc && d->gate_inp_shexp) /* the shared expert's gate: one row of F32 */
            rc = coe_cuda_matmul(dev, COE_GGML_F32, d->gate_inp_shexp, 1, E, g->cur, T, g->z, 1, NULL);
    }
    return rc ? rc
              : coe_cuda_moe_combine(dev, g->out, g->eo, g->sel_slot, g->sel_w, T, k, E, Fs ? g->so : NULL,
                                     Fs && d->gate_inp_shexp ? g->z : NULL);
}

static int ffn_dense(coe_engine_cuda *g, const coe_layer *l, int T)
{
    const coe_model *m = g->m;
    int rc = mm(g, &l->ffn_gate, 0, g->cur, T, g->sg, m->n_ff);
    rc = rc ? rc : mm(g, &l->ffn_up, 0, g->cur, T, g->su, m->n_ff);
    rc = rc ? rc : coe_cuda_silu_mul(g->dev, g->sg, g->su, (int64_t)T * m->n_ff);
    return rc ? rc : mm(g, &l->ffn_down, 0, g->sg, T, g->out, m->n_embd);
}

static int forward(void *ctx, const coe_batch *b, const int *pos, float *logits, coe_buf *diag)
{
    coe_engine_cuda *g = ctx;
    const coe_model *m = g->m;
    coe_cuda *dev = g->dev;
    const int T = b->n, E = m->n_embd, L = m->n_layer;
    int rc = reserve(g, T);
    for (int t = 0; !rc && t < T; t++)
        if ((rc = kv_reserve(g, b->seq[t], pos[t] + 1)) == COE_EINVAL) {
            coe_buf_printf(diag, "a sequence's cache belongs to another engine\n");
            return rc;
        }
    if (rc) {
        coe_buf_printf(diag, "no device memory for a batch of %d tokens on %s\n", T, coe_cuda_name(dev));
        return rc;
    }
    /* positions, and per layer where each token's key and value rows go and its caches
     * (a cache without values of its own keeps them in its keys: multi-head latent attention) */
    const size_t Kd = (size_t)m->kv_k_dim, Vd = (size_t)m->kv_v_dim;
    for (int t = 0; t < T; t++)
        g->h_pos[t] = pos[t];
    rc = coe_cuda_upload(dev, g->pos, g->h_pos, (size_t)T * sizeof(int32_t));
    for (int il = 0; il < L; il++) {
        float **p = g->h_ptrs + (size_t)il * 4 * (size_t)T;
        for (int t = 0; t < T; t++) {
            coe_kv *kv = b->seq[t];
            p[t] = kv->k[il] + (size_t)pos[t] * Kd;
            p[T + t] = Vd ? kv->v[il] + (size_t)pos[t] * Vd : NULL;
            p[2 * T + t] = kv->k[il];
            p[3 * T + t] = Vd ? kv->v[il] : kv->k[il];
        }
    }
    rc = rc ? rc : coe_cuda_upload(dev, g->ptrs, g->h_ptrs, 4 * (size_t)L * (size_t)T * sizeof(float *));
    /* the embeddings of the tokens */
    const coe_weight *te = &m->tok_embd;
    for (int t = 0; !rc && t < T; t++)
        rc = coe_cuda_dequantize(dev, te->type, g->d_file + (te->data - m->gguf->base) + (size_t)b->tokens[t] * te->row_bytes,
                                 E, g->x + (size_t)t * (size_t)E);
    if (!rc && m->embd_scale != 1)
        rc = coe_cuda_scale(dev, g->x, (int64_t)T * E, m->embd_scale);
    for (int il = 0; !rc && il < L; il++) {
        const coe_layer *l = &m->layers[il];
        const dev_layer *d = &g->layers[il];
        rc = coe_cuda_rms_norm(dev, g->x, d->attn_norm, g->cur, T, E, m->eps);
        if (!rc && d->attn_norm_b)
            rc = coe_cuda_add_rows(dev, g->cur, d->attn_norm_b, T, E);
        rc = rc ? rc : m->arch == COE_ARCH_DEEPSEEK2 ? attention_deepseek2(g, d, l, il, T) : attention(g, d, l, il, T);
        rc = rc ? rc : coe_cuda_add(dev, g->x, g->tmp, (int64_t)T * E, m->residual_scale);
        rc = rc ? rc : coe_cuda_rms_norm(dev, g->x, d->ffn_norm, g->cur, T, E, m->eps);
        if (!rc && d->ffn_norm_b)
            rc = coe_cuda_add_rows(dev, g->cur, d->ffn_norm_b, T, E);
        rc = rc ? rc : l->gate_inp.data ? ffn_moe(g, d, l, T) : ffn_dense(g, l, T);
        rc = rc ? rc : coe_cuda_add(dev, g->x, g->out, (int64_t)T * E, m->residual_scale);
    }
    /* the wanted tokens' final norm and logits */
    int n_out = 0;
    for (int t = 0; t < T; t++)
        if (b->want[t])
            g->h_wanted[n_out++] = t;
    rc = rc ? rc : coe_cuda_upload(dev, g->wanted, g->h_wanted, (size_t)n_out * sizeof(int32_t));
    rc = rc ? rc : coe_cuda_gather_rows(dev, g->tmp, g->x, g->wanted, n_out, E);
    rc = rc ? rc : coe_cuda_rms_norm(dev, g->tmp, g->output_norm, g->cur, n_out, E, m->eps);
    if (!rc && g->output_norm_b)
        rc = coe_cuda_add_rows(dev, g->cur, g->output_norm_b, n_out, E);
    if (!rc && b->hidden)
        rc = coe_cuda_download(dev, b->hidden, g->cur, (size_t)n_out * (size_t)E * sizeof(float));
    const int V = m->n_vocab;
    if (!rc && n_out > g->cap_out) {
        coe_cuda_release(dev, g->logits);
        g->cap_out = 0;
        if (!(g->logits = coe_cuda_alloc(dev, (size_t)n_out * (size_t)V * sizeof(float))))
            rc = COE_ENOMEM;
        else
            g->cap_out = n_out;
    }
    rc = rc ? rc : mm(g, &m->output, 0, g->cur, n_out, g->logits, V);
    if (!rc && g->output_b)
        rc = coe_cuda_add_rows(dev, g->logits, g->output_b, n_out, V);
    if (!rc && m->logit_scale != 1) /* as ggml: times the reciprocal */
        rc = coe_cuda_scale(dev, g->logits, (int64_t)n_out * V, 1.0f / m->logit_scale);
    rc = rc ? rc : coe_cuda_download(dev, logits, g->logits, (size_t)n_out * (size_t)V * sizeof(float));
    if (rc)
        coe_buf_printf(diag, "on %s: %s\n", coe_cuda_name(dev),
                       rc == COE_ENOMEM ? "out of device memory" : coe_cuda_last_error(dev));
    return rc;
}

static void free_ctx(void *ctx)
{
    coe_engine_cuda *g = ctx;
    coe_engine_cuda_free(&g);
}

const coe_engine_backend coe_engine_cuda_backend = {"cuda", forward, weight_bytes, where, free_ctx};
