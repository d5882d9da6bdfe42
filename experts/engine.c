#include "experts/engine.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "experts/cuda.h"
#include "experts/engine_cuda.h"
#include "experts/quant.h"
#include "experts/threads.h"

/* ---- key/value cache ---- */

coe_kv *coe_kv_new(const coe_model *m)
{
    coe_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return NULL;
    kv->n_layer = m->n_layer;
    kv->k_dim = m->kv_k_dim;
    kv->v_dim = m->kv_v_dim;
    kv->k = calloc((size_t)m->n_layer, sizeof *kv->k);
    kv->v = calloc((size_t)m->n_layer, sizeof *kv->v);
    if (!kv->k || !kv->v)
        coe_kv_free(&kv);
    return kv;
}

void coe_kv_free(coe_kv **p)
{
    coe_kv *kv = *p;
    if (!kv)
        return;
    if (kv->release && kv->k && kv->v)
        kv->release(kv);
    for (int l = 0; l < kv->n_layer && kv->k && kv->v && !kv->release; l++) {
        free(kv->k[l]);
        free(kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv);
    *p = NULL;
}

void coe_kv_truncate(coe_kv *kv, int n)
{
    if (n >= 0 && n < kv->n_pos)
        kv->n_pos = n;
}

static int kv_reserve(coe_kv *kv, int n)
{
    if (kv->owner)
        return COE_EINVAL; /* its storage is a GPU engine's */
    if (n <= kv->cap)
        return 0;
    int cap = kv->cap ? kv->cap : 64;
    while (cap < n)
        cap *= 2;
    for (int l = 0; l < kv->n_layer; l++) {
        float *k = realloc(kv->k[l], (size_t)cap * (size_t)kv->k_dim * sizeof *k);
        if (k)
            kv->k[l] = k;
        float *v = kv->v_dim ? realloc(kv->v[l], (size_t)cap * (size_t)kv->v_dim * sizeof *v) : NULL;
        if (v)
            kv->v[l] = v;
        if (!k || (kv->v_dim && !v))
            return COE_ENOMEM;
    }
    kv->cap = cap;
    return 0;
}

/* ---- engine ---- */

/* One matrix product of a job: y[t][r] = W_mat[r] . x[t] for T rows of x. */
typedef struct mm_item {
    const coe_weight *w;
    int mat;
    const uint8_t *xq;   /* x converted to the weight's dot type */
    size_t xq_row;       /* bytes per row of xq */
    int T;
    float *y;
    int y_stride;
    int first_chunk;
} mm_item;

typedef struct mm_job {
    mm_item *items;
    int n_items, n_chunks, chunk_rows;
    atomic_int next;
} mm_job;

struct coe_engine {
    const coe_model *m;
    coe_threads *team;
    int n_ctx;
    const float *rope_freqs; /* the factors for this context (coe_rope_freqs) */
    /* scratch, grown to the largest batch seen */
    int cap_T;
    float *x, *cur, *q, *k, *v, *att, *tmp, *out, *router, *sel_w;
    float *ql, *qa, *gat, *kvb, *att2; /* deepseek2's attention */
    float *sel_s;                      /* one token's expert choice scores, and its groups' */
    float *hg, *hu, *eo, *sg, *su, *so, *scores;
    int *pos, *sel, *sel_slot, *slot_tok, *ex_count, *ex_first;
    uint8_t *xq;
    size_t xq_cap, xq_used;
    mm_item *items;
    int cap_items;
    unsigned long long weight_bytes; /* weight bytes the products have read, in all */
    int cap_pos;                     /* of pos: each token's position in its sequence */
    const coe_engine_backend *be;    /* the forward and its ctx: this engine's own (the CPU), or a device's */
    void *be_ctx;
    char where[32];                  /* "cpu, N threads" */
};

/* The CPU backend: the engine is its own context. */
static const coe_engine_backend cpu_backend;

const coe_model *coe_engine_model(const coe_engine *e)
{
    return e->m;
}

int coe_engine_n_ctx(const coe_engine *e)
{
    return e->n_ctx;
}

unsigned long long coe_engine_weight_bytes(const coe_engine *e)
{
    return e->be->weight_bytes(e->be_ctx);
}

const char *coe_engine_where(const coe_engine *e)
{
    return e->be->where(e->be_ctx);
}

int coe_device_parse(const char *s)
{
    return !strcmp(s, "auto") ? COE_DEVICE_AUTO : !strcmp(s, "cpu") ? COE_DEVICE_CPU
                                                  : !strcmp(s, "cuda") ? COE_DEVICE_CUDA : -1;
}

coe_engine *coe_engine_new(const coe_model *m, int n_threads, int n_ctx)
{
    coe_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->m = m;
    e->n_ctx = n_ctx > 0 ? n_ctx : m->n_ctx_train;
    e->rope_freqs = coe_rope_freqs(m, e->n_ctx);
    e->team = coe_threads_shared(n_threads);
    /* products in one job: two per expert (gate, up), or one per head (deepseek2) */
    e->cap_items = 2 * (m->n_expert > 0 ? m->n_expert : 1) + 8;
    if (e->cap_items < m->n_head + 8)
        e->cap_items = m->n_head + 8;
    e->items = calloc((size_t)e->cap_items, sizeof *e->items);
    e->be = &cpu_backend, e->be_ctx = e;
    if (!e->team || !e->items)
        coe_engine_free(&e);
    else
        snprintf(e->where, sizeof e->where, "cpu, %d threads", coe_threads_count(e->team));
    return e;
}

int coe_engine_open(coe_engine **out, const coe_model *m, coe_device device, int n_threads, int n_ctx,
                    coe_buf *diag)
{
    coe_engine *e = *out = coe_engine_new(m, n_threads, n_ctx);
    if (!e)
        return COE_ENOMEM;
    if (device == COE_DEVICE_CPU || (device == COE_DEVICE_AUTO && coe_cuda_device_count() == 0))
        return 0;
    coe_buf why = COE_BUF_INIT;
    coe_engine_cuda *g = NULL;
    int rc = coe_engine_cuda_new(&g, m, e->n_ctx, &why);
    if (!rc)
        e->be = &coe_engine_cuda_backend, e->be_ctx = g;
    else if (device == COE_DEVICE_CUDA) {
        if (diag)
            coe_buf_printf(diag, "device cuda: %s", why.data ? why.data : "");
        coe_engine_free(out);
    } else {
        if (diag)
            coe_buf_printf(diag, "device auto: on the CPU, since %s", why.data ? why.data : "");
        rc = 0;
    }
    coe_buf_free(&why);
    return rc;
}

/* Every scratch buffer with the bytes it needs for a batch of T tokens; returns how
 * many. One list, so allocating and freeing cannot disagree. */
#define N_SCRATCH 29
typedef struct scratch {
    void **p;
    size_t bytes;
} scratch;

static size_t max_z(size_t a, size_t b)
{
    return a > b ? a : b;
}

static int scratch_list(coe_engine *e, size_t T, scratch *list)
{
    const coe_model *m = e->m;
    size_t H = (size_t)m->n_head, E = (size_t)m->n_embd;
    size_t Qd = H * max_z(max_z((size_t)m->head_dim, (size_t)m->k_mla), (size_t)m->att_dk);
    size_t KVd = max_z((size_t)m->n_head_kv * (size_t)m->head_dim, (size_t)m->kv_k_dim);
    if (m->arch == COE_ARCH_DEEPSEEK2) /* e->k holds wkv_a's output: compressed KV and rotary key */
        KVd = max_z(KVd, (size_t)(m->n_lora_kv + m->rope_dim));
    size_t Vd = max_z((size_t)m->n_head_kv * (size_t)m->head_dim, (size_t)m->kv_v_dim);
    size_t Ad = H * max_z((size_t)m->att_dv, (size_t)m->head_dim);
    /* deepseek2: the Q bottleneck, absorbed Q, one head's rows gathered per head (of
     * no-rope keys or latent values), decompressed KV (older files), per-head values */
    size_t R = (size_t)m->n_lora_kv, nope = m->k_mla ? (size_t)(m->k_mla - m->rope_dim) : 0;
    size_t QL = (size_t)m->n_lora_q, QA = m->mla ? H * (R + (size_t)m->rope_dim) : 0;
    size_t G = m->arch == COE_ARCH_DEEPSEEK2 ? H * max_z(nope, R) : 0;
    size_t KVB = m->arch == COE_ARCH_DEEPSEEK2 && !m->mla ? H * (nope + (size_t)m->v_mla) : 0;
    size_t A2 = m->mla ? H * (size_t)m->v_mla : 0;
    size_t A = T * (size_t)(m->n_expert_used > 0 ? m->n_expert_used : 1); /* expert assignments */
    size_t F = max_z((size_t)m->n_ff_exp, 1), Fs = max_z(max_z((size_t)m->n_ff_shexp, (size_t)m->n_ff), 1);
    size_t nx = max_z((size_t)m->n_expert, 1), nth = e->team ? (size_t)coe_threads_count(e->team) : 1;
    size_t widest = max_z(max_z(max_z(E, Qd), max_z(F, Fs)), max_z(max_z(Ad, A2), max_z(QL, R))), f = sizeof(float),
           i = sizeof(int);
    /* Converted activations of one job, at most: the experts' gate/up job converts
     * the T tokens once per dot type (gate, up and the shared expert's two: 4T) and
     * gathers the A assignments once per experts' dot type (2A); rows of the widest
     * input, never more than 4 bytes a value (F32), plus block slack per row. */
    e->xq_cap = (2 * A + 4 * T) * (widest * 4 + 64) + T * (G * 4 + H * 64);
    scratch l[N_SCRATCH] = {
        {(void **)&e->x, T * E * f},       {(void **)&e->cur, T * E * f},   {(void **)&e->q, T * Qd * f},
        {(void **)&e->k, T * KVd * f},     {(void **)&e->v, T * Vd * f},    {(void **)&e->att, T * Ad * f},
        {(void **)&e->tmp, T * E * f},     {(void **)&e->out, T * E * f},   {(void **)&e->router, T * nx * f},
        {(void **)&e->sel_w, A * f},       {(void **)&e->slot_tok, A * i},  {(void **)&e->hg, A * F * f},
        {(void **)&e->hu, A * F * f},      {(void **)&e->eo, A * E * f},    {(void **)&e->sg, T * Fs * f},
        {(void **)&e->su, T * Fs * f},     {(void **)&e->so, T * E * f},
        {(void **)&e->scores, nth * (size_t)e->n_ctx * f},
        {(void **)&e->sel, A * i},         {(void **)&e->sel_slot, A * i},
        {(void **)&e->ex_count, nx * i},   {(void **)&e->ex_first, nx * i}, {(void **)&e->xq, e->xq_cap},
        {(void **)&e->ql, T * QL * f},     {(void **)&e->qa, T * QA * f},   {(void **)&e->gat, T * G * f},
        {(void **)&e->kvb, T * KVB * f},   {(void **)&e->att2, T * A2 * f},
        {(void **)&e->sel_s, (nx + (size_t)m->n_group) * f},
    };
    memcpy(list, l, sizeof l);
    return N_SCRATCH;
}

static void free_scratch(coe_engine *e)
{
    scratch list[N_SCRATCH];
    int n = scratch_list(e, 0, list);
    for (int k = 0; k < n; k++) {
        free(*list[k].p);
        *list[k].p = NULL;
    }
    e->cap_T = 0;
}

void coe_engine_free(coe_engine **p)
{
    coe_engine *e = *p;
    if (!e)
        return;
    free_scratch(e);
    e->be->free(e->be_ctx);
    coe_threads_free(&e->team);
    free(e->items);
    free(e->pos);
    free(e);
    *p = NULL;
}

static int reserve(coe_engine *e, int T)
{
    if (T <= e->cap_T)
        return 0;
    free_scratch(e);
    scratch list[N_SCRATCH];
    int n = scratch_list(e, (size_t)T, list);
    for (int k = 0; k < n; k++)
        if (!(*list[k].p = malloc(list[k].bytes ? list[k].bytes : 1))) {
            free_scratch(e);
            return COE_ENOMEM;
        }
    e->cap_T = T;
    return 0;
}

/* ---- matrix products, spread over the team in chunks of rows ---- */

static void mm_worker(void *ctx, int ith, int nth)
{
    (void)ith, (void)nth;
    mm_job *j = ctx;
    int item = 0;
    for (;;) {
        int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->n_chunks)
            return;
        while (item + 1 < j->n_items && j->items[item + 1].first_chunk <= c)
            item++;
        while (item > 0 && j->items[item].first_chunk > c)
            item--;
        const mm_item *it = &j->items[item];
        const coe_weight *w = it->w;
        coe_dot_fn dot = coe_vec_dot_fn(w->type);
        coe_dot4_fn dot4 = coe_vec_dot4_fn(w->type);
        int64_t r0 = (int64_t)(c - it->first_chunk) * j->chunk_rows;
        int64_t r1 = r0 + j->chunk_rows < w->rows ? r0 + j->chunk_rows : w->rows;
        const uint8_t *base = w->data + (size_t)it->mat * w->mat_bytes;
        /* Tiles of tokens so a block of weight rows is reused from cache. */
        for (int t0 = 0; t0 < it->T; t0 += 16) {
            int t1 = t0 + 16 < it->T ? t0 + 16 : it->T;
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *row = base + (size_t)r * w->row_bytes;
                int t = t0;
                float four[4];
                for (; dot4 && t + 4 <= t1; t += 4) {
                    dot4(row, it->xq + (size_t)t * it->xq_row, it->xq_row, w->cols, four);
                    for (int k = 0; k < 4; k++)
                        it->y[(size_t)(t + k) * (size_t)it->y_stride + (size_t)r] = four[k];
                }
                for (; t < t1; t++)
                    it->y[(size_t)t * (size_t)it->y_stride + (size_t)r] =
                        dot(row, it->xq + (size_t)t * it->xq_row, w->cols);
            }
        }
    }
}

/* One conversion of activations to a dot type, made once per job and shared by
 * every product that needs it (Q, K and V; gate and up; every expert's tokens). */
typedef struct conversion {
    const float *x;
    const int *rows; /* gathered rows of x, or NULL for its first n */
    int n, cols;
    uint32_t type;
    const uint8_t *out;
    size_t row_bytes;
} conversion;

/* Remembered per job; more (one per expert in the down products, whose inputs all
 * differ) are converted without being remembered. */
#define MAX_CONVERSIONS 16

typedef struct job_builder {
    coe_engine *e;
    int n;
    conversion conv[MAX_CONVERSIONS];
    int n_conv;
} job_builder;

static void job_begin(coe_engine *e, job_builder *jb)
{
    jb->e = e;
    jb->n = 0;
    jb->n_conv = 0;
    e->xq_used = 0;
}

/* The first n rows of x (rows NULL), or rows[0..n-1] of x's first x_rows, in dot
 * type `type`: an earlier conversion of the job where one matches (a gather copies
 * rows out of the conversion of the whole x), else converted now. */
static conversion converted(job_builder *jb, uint32_t type, const float *x, int x_rows, const int *rows, int n,
                            int cols)
{
    for (int i = 0; i < jb->n_conv; i++) {
        const conversion *c = &jb->conv[i];
        if (c->x == x && c->rows == rows && c->n == n && c->cols == cols && c->type == type)
            return *c;
    }
    coe_engine *e = jb->e;
    conversion c = {x, rows, n, cols, type, NULL, coe_row_bytes(type, cols)};
    if (rows) {
        conversion whole = converted(jb, type, x, x_rows, NULL, x_rows, cols);
        uint8_t *out = e->xq + e->xq_used;
        for (int i = 0; i < n; i++)
            memcpy(out + (size_t)i * c.row_bytes, whole.out + (size_t)rows[i] * c.row_bytes, c.row_bytes);
        c.out = out;
    } else {
        uint8_t *out = e->xq + e->xq_used;
        for (int t = 0; t < n; t++)
            coe_quantize_row(type, x + (size_t)t * (size_t)cols, out + (size_t)t * c.row_bytes, cols);
        c.out = out;
    }
    e->xq_used += c.row_bytes * (size_t)n;
    if (jb->n_conv < MAX_CONVERSIONS)
        jb->conv[jb->n_conv++] = c;
    return c;
}

static void add_item(job_builder *jb, const coe_weight *w, int mat, conversion c, float *y, int y_stride)
{
    if (jb->n == jb->e->cap_items)
        abort(); /* cap_items counts every job's products: a bug, not an input */
    jb->e->items[jb->n++] = (mm_item){w, mat, c.out, c.row_bytes, c.n, y, y_stride, 0};
}

/* Adds y = W_mat x for the first T rows of x. */
static void job_add(job_builder *jb, const coe_weight *w, int mat, const float *x, int T, float *y, int y_stride)
{
    if (T > 0 && w->data)
        add_item(jb, w, mat, converted(jb, coe_dot_type(w->type), x, T, NULL, T, (int)w->cols), y, y_stride);
}

/* Adds y = W_mat x for rows[0..n-1] of x's first x_rows (an expert's tokens). */
static void job_add_rows(job_builder *jb, const coe_weight *w, int mat, const float *x, int x_rows, const int *rows,
                         int n, float *y, int y_stride)
{
    if (n > 0 && w->data)
        add_item(jb, w, mat, converted(jb, coe_dot_type(w->type), x, x_rows, rows, n, (int)w->cols), y, y_stride);
}

static void job_run(job_builder *jb)
{
    coe_engine *e = jb->e;
    if (jb->n == 0)
        return;
    int64_t rows = 0;
    for (int i = 0; i < jb->n; i++)
        rows += e->items[i].w->rows;
    int nth = coe_threads_count(e->team);
    int64_t chunk = rows / ((int64_t)nth * 8);
    chunk = chunk < 1 ? 1 : chunk > 64 ? 64 : chunk;
    mm_job j = {e->items, jb->n, 0, (int)chunk, 0};
    for (int i = 0; i < jb->n; i++) {
        e->weight_bytes += e->items[i].w->mat_bytes;
        e->items[i].first_chunk = j.n_chunks;
        j.n_chunks += (int)((e->items[i].w->rows + chunk - 1) / chunk);
    }
    atomic_init(&j.next, 0);
    coe_threads_run(e->team, mm_worker, &j);
}

/* One product alone. */
static void matmul(coe_engine *e, const coe_weight *w, int mat, const float *x, int T, float *y)
{
    job_builder jb;
    job_begin(e, &jb);
    job_add(&jb, w, mat, x, T, y, (int)w->rows);
    job_run(&jb);
}

/* ---- element-wise pieces, as llama.cpp computes them ---- */

static void rms_norm(const float *x, const float *weight, float *y, int n, float eps)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    float mean = (float)(sum / n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * scale * weight[i];
}

/* LongRoPE's long factors beyond the original context, as llama.cpp chooses. */
const float *coe_rope_freqs(const coe_model *m, int n_ctx)
{
    return m->rope_freqs_long && n_ctx > m->n_ctx_orig ? m->rope_freqs_long : m->rope_freqs;
}

/* ggml's rope: pair i turns by freq_scale * (pos * base^(-2i/rope_dim) / freqs[i]),
 * mixed with the unscaled angle by YaRN's ramp, the rotation scaled by mscale, in the
 * same float operations, so that no scaling and no factors give the plain angle bit
 * for bit. */
void coe_rope(const coe_model *m, const float *freqs, float *x, int n_heads, int head_dim, int pos)
{
    const int rope_dim = m->rope_dim;
    const bool neox = m->rope_neox;
    const float ext = m->rope_ext_factor, low = m->rope_corr_dims[0], high = m->rope_corr_dims[1];
    float theta_scale = powf(m->rope_base, -2.0f / (float)rope_dim);
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * (size_t)head_dim;
        float theta = (float)pos;
        for (int i = 0; i < rope_dim; i += 2, theta *= theta_scale) {
            float ff = freqs ? freqs[i / 2] : 1.0f;
            float extrap = theta / ff, angle = m->rope_freq_scale * extrap;
            if (ext != 0) {
                float y = ((float)(i / 2) - low) / fmaxf(0.001f, high - low);
                float mix = (1 - fminf(1, fmaxf(0, y))) * ext;
                angle = angle * (1 - mix) + extrap * mix;
            }
            float c = cosf(angle) * m->rope_mscale, s = sinf(angle) * m->rope_mscale;
            int a = neox ? i / 2 : i, b = neox ? i / 2 + rope_dim / 2 : i + 1;
            float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* ---- attention, spread over (token, head) pairs ---- */

/* Each token's n_head query rows of att_dk (q) against its sequence's cached keys
 * and values, into e->att (n_head rows of att_dv per token). */
typedef struct att_job {
    coe_engine *e;
    coe_kv *const *seq;
    const float *q;
    int layer, T;
    atomic_int next;
} att_job;

static void att_worker(void *ctx, int ith, int nth)
{
    (void)nth;
    att_job *j = ctx;
    coe_engine *e = j->e;
    const coe_model *m = e->m;
    const int dk = m->att_dk, dv = m->att_dv, kd = m->kv_k_dim, group = m->n_head / m->n_head_kv;
    const bool v_in_k = m->kv_v_dim == 0;
    const int vd = v_in_k ? kd : m->kv_v_dim;
    float scale = m->attn_scale ? m->attn_scale : 1.0f / sqrtf((float)dk);
    float *s = e->scores + (size_t)ith * (size_t)e->n_ctx;
    coe_dot_fn dot = coe_vec_dot_fn(COE_GGML_F32);
    for (;;) {
        int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->T * m->n_head)
            return;
        int t = c / m->n_head, h = c % m->n_head, kvh = h / group, p = e->pos[t];
        const float *q = j->q + ((size_t)t * (size_t)m->n_head + (size_t)h) * (size_t)dk;
        const float *K = j->seq[t]->k[j->layer] + (size_t)kvh * (size_t)dk;
        const float *V = (v_in_k ? j->seq[t]->k[j->layer] : j->seq[t]->v[j->layer]) + (size_t)kvh * (size_t)dv;
        float max = -INFINITY;
        for (int i = 0; i <= p; i++) {
            s[i] = dot(q, K + (size_t)i * (size_t)kd, dk) * scale;
            max = s[i] > max ? s[i] : max;
        }
        double sum = 0;
        for (int i = 0; i <= p; i++) {
            s[i] = expf(s[i] - max);
            sum += s[i];
        }
        float inv = (float)(1.0 / sum);
        float *o = e->att + ((size_t)t * (size_t)m->n_head + (size_t)h) * (size_t)dv;
        memset(o, 0, (size_t)dv * sizeof *o);
        for (int i = 0; i <= p; i++)
            coe_axpy(o, s[i] * inv, V + (size_t)i * (size_t)vd, dv);
    }
}

static void attend(coe_engine *e, const coe_batch *b, int il, const float *q, int T)
{
    att_job aj = {e, b->seq, q, il, T, 0};
    atomic_init(&aj.next, 0);
    coe_threads_run(e->team, att_worker, &aj);
}

/* ---- feed-forward ---- */

static void ffn_dense(coe_engine *e, const coe_layer *l, int T)
{
    const coe_model *m = e->m;
    job_builder jb;
    job_begin(e, &jb);
    job_add(&jb, &l->ffn_gate, 0, e->cur, T, e->sg, m->n_ff);
    job_add(&jb, &l->ffn_up, 0, e->cur, T, e->su, m->n_ff);
    job_run(&jb);
    for (size_t i = 0; i < (size_t)T * (size_t)m->n_ff; i++)
        e->sg[i] = silu(e->sg[i]) * e->su[i];
    matmul(e, &l->ffn_down, 0, e->sg, T, e->out);
}

/* The n largest of v[0..n_v-1] (not -inf), largest first, lowest index on ties. */
static void top_n(const float *v, int n_v, int n, int *out)
{
    for (int s = 0; s < n; s++) {
        int best = -1;
        for (int i = 0; i < n_v; i++) {
            bool taken = false;
            for (int r = 0; r < s; r++)
                taken = taken || out[r] == i;
            if (!taken && (best < 0 || v[i] > v[best]))
                best = i;
        }
        out[s] = best;
    }
}

/* One token's experts from the router's logits p (overwritten by the scores), as
 * llama.cpp's MoE: softmax or sigmoid scores; the choice on the scores plus the
 * selection bias, within the best groups where the model has them; the weights the
 * unbiased scores, renormalized (the sum clamped as there) and scaled. s: scratch of
 * n_expert + n_group. */
void coe_moe_route(const coe_model *m, const coe_layer *l, float *p, float *s, int *sel, float *w)
{
    const int nx = m->n_expert, k = m->n_expert_used;
    if (m->gating == COE_GATING_SIGMOID) {
        for (int i = 0; i < nx; i++)
            p[i] = 1.0f / (1.0f + expf(-p[i]));
    } else {
        float max = -INFINITY;
        for (int i = 0; i < nx; i++)
            max = p[i] > max ? p[i] : max;
        double sum = 0;
        for (int i = 0; i < nx; i++) {
            p[i] = expf(p[i] - max);
            sum += p[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < nx; i++)
            p[i] *= inv;
    }
    const float *choice = p;
    if (l->exp_probs_b || m->n_group > 1) {
        for (int i = 0; i < nx; i++)
            s[i] = l->exp_probs_b ? p[i] + l->exp_probs_b[i] : p[i];
        if (m->n_group > 1) {
            const int per = nx / m->n_group;
            float *group = s + nx;
            int two[2], used[64];
            for (int g = 0; g < m->n_group; g++) {
                top_n(s + g * per, per, 2, two);
                group[g] = s[g * per + two[0]] + s[g * per + two[1]];
            }
            int n_used = m->n_group_used < 64 ? m->n_group_used : 64;
            top_n(group, m->n_group, n_used, used);
            for (int g = 0; g < m->n_group; g++) {
                bool keep = false;
                for (int u = 0; u < n_used; u++)
                    keep = keep || used[u] == g;
                for (int i = 0; !keep && i < per; i++)
                    s[g * per + i] = -INFINITY;
            }
        }
        choice = s;
    }
    top_n(choice, nx, k, sel);
    double sum = 0;
    for (int j = 0; j < k; j++) {
        w[j] = p[sel[j]];
        sum += w[j];
    }
    if (m->norm_topk) {
        float clamped = fmaxf((float)sum, 6.103515625e-5f);
        for (int j = 0; j < k; j++)
            w[j] /= clamped;
    }
    if (m->expert_weights_scale != 1)
        for (int j = 0; j < k; j++)
            w[j] *= m->expert_weights_scale;
}

void coe_moe_assign(const coe_model *m, const coe_layer *l, int T, float *logits, float *s, coe_moe_plan *p)
{
    const int k = m->n_expert_used, nx = m->n_expert;
    memset(p->ex_count, 0, (size_t)nx * sizeof *p->ex_count);
    for (int t = 0; t < T; t++)
        coe_moe_route(m, l, logits + (size_t)t * (size_t)nx, s, p->sel + t * k, p->sel_w + t * k);
    for (int a = 0; a < T * k; a++)
        p->ex_count[p->sel[a]]++;
    for (int i = 0, at = 0; i < nx; i++) {
        p->ex_first[i] = at;
        at += p->ex_count[i];
        p->ex_count[i] = 0;
    }
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int x = p->sel[t * k + j], a = p->ex_first[x] + p->ex_count[x]++;
            p->sel_slot[t * k + j] = a;
            p->slot_tok[a] = t;
        }
}

static void ffn_moe(coe_engine *e, const coe_layer *l, int T)
{
    const coe_model *m = e->m;
    const int E = m->n_embd, k = m->n_expert_used, nx = m->n_expert, F = m->n_ff_exp, Fs = m->n_ff_shexp;
    matmul(e, &l->gate_inp, 0, e->cur, T, e->router);
    /* Each expert's tokens together so its weights are read once. */
    coe_moe_plan plan = {e->sel, e->sel_w, e->ex_count, e->ex_first, e->sel_slot, e->slot_tok};
    coe_moe_assign(m, l, T, e->router, e->sel_s, &plan);
    job_builder jb;
    job_begin(e, &jb);
    for (int i = 0; i < nx; i++) {
        if (!e->ex_count[i])
            continue;
        const int *toks = e->slot_tok + e->ex_first[i];
        float *g = e->hg + (size_t)e->ex_first[i] * (size_t)F, *u = e->hu + (size_t)e->ex_first[i] * (size_t)F;
        job_add_rows(&jb, &l->gate_exps, i, e->cur, T, toks, e->ex_count[i], g, F);
        job_add_rows(&jb, &l->up_exps, i, e->cur, T, toks, e->ex_count[i], u, F);
    }
    if (Fs) {
        job_add(&jb, &l->gate_shexp, 0, e->cur, T, e->sg, Fs);
        job_add(&jb, &l->up_shexp, 0, e->cur, T, e->su, Fs);
    }
    job_run(&jb);
    size_t A = (size_t)T * (size_t)k;
    for (size_t i = 0; i < A * (size_t)F; i++)
        e->hg[i] = silu(e->hg[i]) * e->hu[i];
    for (size_t i = 0; Fs && i < (size_t)T * (size_t)Fs; i++)
        e->sg[i] = silu(e->sg[i]) * e->su[i];
    job_begin(e, &jb);
    for (int i = 0; i < nx; i++)
        if (e->ex_count[i])
            job_add(&jb, &l->down_exps, i, e->hg + (size_t)e->ex_first[i] * (size_t)F, e->ex_count[i],
                    e->eo + (size_t)e->ex_first[i] * (size_t)E, E);
    if (Fs)
        job_add(&jb, &l->down_shexp, 0, e->sg, T, e->so, E);
    job_run(&jb);
    for (int t = 0; t < T; t++) {
        float *o = e->out + (size_t)t * (size_t)E;
        memset(o, 0, (size_t)E * sizeof *o);
        for (int s = 0; s < k; s++) {
            const float *eo = e->eo + (size_t)e->sel_slot[t * k + s] * (size_t)E;
            float w = e->sel_w[t * k + s];
            for (int d = 0; d < E; d++)
                o[d] += eo[d] * w;
        }
        if (Fs) {
            float gate = 1;
            if (l->gate_inp_shexp) {
                const float *c = e->cur + (size_t)t * (size_t)E;
                float z = coe_vec_dot(COE_GGML_F32, l->gate_inp_shexp, c, E);
                gate = 1.0f / (1.0f + expf(-z));
            }
            const float *so = e->so + (size_t)t * (size_t)E;
            for (int d = 0; d < E; d++)
                o[d] += so[d] * gate;
        }
    }
}

static void add_bias(float *y, const float *b, int T, int n)
{
    if (!b)
        return;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++)
            y[(size_t)t * (size_t)n + (size_t)i] += b[i];
}

/* ---- attention: into e->tmp, the output projection of each token's heads ---- */

static void attention(coe_engine *e, const coe_layer *l, const coe_batch *b, int il, int T)
{
    const coe_model *m = e->m;
    const int E = m->n_embd, hd = m->head_dim, Qd = m->n_head * hd, KVd = m->n_head_kv * hd;
    job_builder jb;
    job_begin(e, &jb);
    job_add(&jb, &l->wq, 0, e->cur, T, e->q, Qd);
    job_add(&jb, &l->wk, 0, e->cur, T, e->k, KVd);
    job_add(&jb, &l->wv, 0, e->cur, T, e->v, KVd);
    job_run(&jb);
    add_bias(e->q, l->bq, T, Qd);
    add_bias(e->k, l->bk, T, KVd);
    add_bias(e->v, l->bv, T, KVd);
    for (int t = 0; t < T; t++) {
        float *q = e->q + (size_t)t * (size_t)Qd, *k = e->k + (size_t)t * (size_t)KVd;
        if (m->arch == COE_ARCH_OLMOE) {
            rms_norm(q, l->q_norm, q, Qd, m->eps);
            rms_norm(k, l->k_norm, k, KVd, m->eps);
        } else if (m->arch == COE_ARCH_QWEN3MOE) {
            for (int h = 0; h < m->n_head; h++)
                rms_norm(q + h * hd, l->q_norm, q + h * hd, hd, m->eps);
            for (int h = 0; h < m->n_head_kv; h++)
                rms_norm(k + h * hd, l->k_norm, k + h * hd, hd, m->eps);
        }
        coe_rope(m, e->rope_freqs, q, m->n_head, hd, e->pos[t]);
        coe_rope(m, e->rope_freqs, k, m->n_head_kv, hd, e->pos[t]);
        if (m->q_prescale) { /* as ggml_scale, before the products */
            const float s = 1.0f / sqrtf((float)hd);
            for (int i = 0; i < Qd; i++)
                q[i] *= s;
        }
        memcpy(b->seq[t]->k[il] + (size_t)e->pos[t] * (size_t)KVd, k, (size_t)KVd * sizeof(float));
        memcpy(b->seq[t]->v[il] + (size_t)e->pos[t] * (size_t)KVd, e->v + (size_t)t * (size_t)KVd,
               (size_t)KVd * sizeof(float));
    }
    attend(e, b, il, e->q, T);
    matmul(e, &l->wo, 0, e->att, T, e->tmp);
    add_bias(e->tmp, l->bo, T, E);
}

/* width values of each of H heads of T rows (row_stride apart, the heads head_stride
 * apart within a row) into dst, one head's T rows after another's: the contiguous
 * input of per-head products. */
static void gather_heads(float *dst, const float *src, int T, int H, int row_stride, int head_stride, int width)
{
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++)
            memcpy(dst + ((size_t)h * (size_t)T + (size_t)t) * (size_t)width,
                   src + (size_t)t * (size_t)row_stride + (size_t)h * (size_t)head_stride, (size_t)width * sizeof(float));
}

/* deepseek2: Q through its bottleneck, the compressed KV and the shared rotary key;
 * RoPE on the last rope_dim of each head. Split files (mla): each head's Q absorbs
 * wk_b, the cache holds the normed compressed KV and the rotary key once per position
 * (the values are its first n_lora_kv), and wv_b turns each head's output back. Older
 * files: wkv_b decompresses every head's key and value before attention. */
static void attention_deepseek2(coe_engine *e, const coe_layer *l, const coe_batch *b, int il, int T)
{
    const coe_model *m = e->m;
    const int H = m->n_head, R = m->n_lora_kv, r = m->rope_dim, kq = m->k_mla, nope = kq - r, dv = m->v_mla;
    const int QK = H * kq, KVA = R + r;
    job_builder jb;
    job_begin(e, &jb);
    if (m->n_lora_q)
        job_add(&jb, &l->wq_a, 0, e->cur, T, e->ql, m->n_lora_q);
    else
        job_add(&jb, &l->wq, 0, e->cur, T, e->q, QK);
    job_add(&jb, &l->wkv_a, 0, e->cur, T, e->k, KVA);
    job_run(&jb);
    if (m->n_lora_q) {
        for (int t = 0; t < T; t++) {
            float *q = e->ql + (size_t)t * (size_t)m->n_lora_q;
            rms_norm(q, l->q_a_norm, q, m->n_lora_q, m->eps);
        }
        matmul(e, &l->wq_b, 0, e->ql, T, e->q);
    }
    for (int t = 0; t < T; t++) {
        float *kv = e->k + (size_t)t * (size_t)KVA;
        rms_norm(kv, l->kv_a_norm, kv, R, m->eps);
        coe_rope(m, e->rope_freqs, kv + R, 1, r, e->pos[t]);
        coe_rope(m, e->rope_freqs, e->q + (size_t)t * (size_t)QK + nope, H, kq, e->pos[t]);
    }
    if (m->mla) {
        gather_heads(e->gat, e->q, T, H, QK, kq, nope);
        job_begin(e, &jb);
        for (int h = 0; h < H; h++)
            job_add(&jb, &l->wk_b, h, e->gat + (size_t)h * (size_t)T * (size_t)nope, T, e->qa + (size_t)h * (size_t)KVA,
                    H * KVA);
        job_run(&jb);
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < H; h++)
                memcpy(e->qa + ((size_t)t * (size_t)H + (size_t)h) * (size_t)KVA + R,
                       e->q + (size_t)t * (size_t)QK + (size_t)h * (size_t)kq + nope, (size_t)r * sizeof(float));
            memcpy(b->seq[t]->k[il] + (size_t)e->pos[t] * (size_t)KVA, e->k + (size_t)t * (size_t)KVA,
                   (size_t)KVA * sizeof(float));
        }
        attend(e, b, il, e->qa, T);
        gather_heads(e->gat, e->att, T, H, H * R, R, R);
        job_begin(e, &jb);
        for (int h = 0; h < H; h++)
            job_add(&jb, &l->wv_b, h, e->gat + (size_t)h * (size_t)T * (size_t)R, T, e->att2 + (size_t)h * (size_t)dv,
                    H * dv);
        job_run(&jb);
        matmul(e, &l->wo, 0, e->att2, T, e->tmp);
    } else {
        gather_heads(e->gat, e->k, T, 1, KVA, 0, R);
        matmul(e, &l->wkv_b, 0, e->gat, T, e->kvb);
        for (int t = 0; t < T; t++) {
            const float *kv = e->kvb + (size_t)t * (size_t)H * (size_t)(nope + dv);
            float *K = b->seq[t]->k[il] + (size_t)e->pos[t] * (size_t)QK;
            float *V = b->seq[t]->v[il] + (size_t)e->pos[t] * (size_t)H * (size_t)dv;
            for (int h = 0; h < H; h++) {
                memcpy(K + (size_t)h * (size_t)kq, kv + (size_t)h * (size_t)(nope + dv), (size_t)nope * sizeof(float));
                memcpy(K + (size_t)h * (size_t)kq + nope, e->k + (size_t)t * (size_t)KVA + R, (size_t)r * sizeof(float));
                memcpy(V + (size_t)h * (size_t)dv, kv + (size_t)h * (size_t)(nope + dv) + nope, (size_t)dv * sizeof(float));
            }
        }
        attend(e, b, il, e->q, T);
        matmul(e, &l->wo, 0, e->att, T, e->tmp);
    }
}

/* ---- the forward pass ---- */

/* The CPU's forward of a checked batch at the positions e->pos (= pos). */
static int forward_cpu(void *ctx, const coe_batch *b, const int *pos, float *logits, coe_buf *diag)
{
    coe_engine *e = ctx;
    (void)pos;
    const coe_model *m = e->m;
    const int T = b->n, E = m->n_embd;
    int rc = reserve(e, T);
    if (rc)
        return rc;
    for (int t = 0; t < T; t++)
        if ((rc = kv_reserve(b->seq[t], e->pos[t] + 1))) {
            if (rc == COE_EINVAL)
                coe_buf_printf(diag, "a sequence's cache belongs to a GPU engine\n");
            return rc;
        }

    for (int t = 0; t < T; t++)
        coe_dequantize_row(m->tok_embd.type, m->tok_embd.data + (size_t)b->tokens[t] * m->tok_embd.row_bytes,
                           e->x + (size_t)t * (size_t)E, E);
    if (m->embd_scale != 1)
        for (size_t i = 0; i < (size_t)T * (size_t)E; i++)
            e->x[i] *= m->embd_scale;

    for (int il = 0; il < m->n_layer; il++) {
        const coe_layer *l = &m->layers[il];
        for (int t = 0; t < T; t++)
            rms_norm(e->x + (size_t)t * (size_t)E, l->attn_norm, e->cur + (size_t)t * (size_t)E, E, m->eps);
        add_bias(e->cur, l->attn_norm_b, T, E);
        if (m->arch == COE_ARCH_DEEPSEEK2)
            attention_deepseek2(e, l, b, il, T);
        else
            attention(e, l, b, il, T);
        const float rs = m->residual_scale;
        for (size_t i = 0; i < (size_t)T * (size_t)E; i++)
            e->x[i] += rs != 1 ? e->tmp[i] * rs : e->tmp[i];

        for (int t = 0; t < T; t++)
            rms_norm(e->x + (size_t)t * (size_t)E, l->ffn_norm, e->cur + (size_t)t * (size_t)E, E, m->eps);
        add_bias(e->cur, l->ffn_norm_b, T, E);
        if (l->gate_inp.data)
            ffn_moe(e, l, T);
        else
            ffn_dense(e, l, T);
        for (size_t i = 0; i < (size_t)T * (size_t)E; i++)
            e->x[i] += rs != 1 ? e->out[i] * rs : e->out[i];
    }

    int n_out = 0;
    for (int t = 0; t < T; t++)
        if (b->want[t])
            rms_norm(e->x + (size_t)t * (size_t)E, m->output_norm, e->cur + (size_t)(n_out++) * (size_t)E, E, m->eps);
    add_bias(e->cur, m->output_norm_b, n_out, E);
    if (b->hidden)
        memcpy(b->hidden, e->cur, (size_t)n_out * (size_t)E * sizeof *b->hidden);
    matmul(e, &m->output, 0, e->cur, n_out, logits);
    add_bias(logits, m->output_b, n_out, m->n_vocab);
    if (m->logit_scale != 1) { /* as ggml: times the reciprocal */
        const float inv = 1.0f / m->logit_scale;
        for (size_t i = 0; i < (size_t)n_out * (size_t)m->n_vocab; i++)
            logits[i] *= inv;
    }

    return 0;
}

static unsigned long long cpu_weight_bytes(const void *ctx)
{
    return ((const coe_engine *)ctx)->weight_bytes;
}

static const char *cpu_where(const void *ctx)
{
    return ((const coe_engine *)ctx)->where;
}

static void cpu_free(void *ctx)
{
    (void)ctx; /* coe_engine_free frees the engine's own */
}

static const coe_engine_backend cpu_backend = {"cpu", forward_cpu, cpu_weight_bytes, cpu_where, cpu_free};

int coe_engine_forward(coe_engine *e, const coe_batch *b, float *logits, coe_buf *diag)
{
    const coe_model *m = e->m;
    const int T = b->n;
    if (T <= 0)
        return 0;
    for (int t = 0; t < T; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= m->n_vocab) {
            coe_buf_printf(diag, "token %d at batch index %d is outside the vocabulary of %d\n", b->tokens[t], t,
                           m->n_vocab);
            return COE_EINVAL;
        }
    if (T > e->cap_pos) {
        int *p = realloc(e->pos, (size_t)T * sizeof *p);
        if (!p)
            return COE_ENOMEM;
        e->pos = p;
        e->cap_pos = T;
    }
    /* Positions: each token takes its sequence's next one. */
    for (int t = 0; t < T; t++) {
        int before = 0;
        for (int u = 0; u < t; u++)
            before += b->seq[u] == b->seq[t];
        e->pos[t] = b->seq[t]->n_pos + before;
        if (e->pos[t] >= e->n_ctx) {
            coe_buf_printf(diag, "the sequence would exceed the context of %d positions\n", e->n_ctx);
            return COE_ERANGE;
        }
    }
    int rc = e->be->forward(e->be_ctx, b, e->pos, logits, diag);
    if (rc)
        return rc;
    for (int t = 0; t < T; t++)
        if (e->pos[t] + 1 > b->seq[t]->n_pos)
            b->seq[t]->n_pos = e->pos[t] + 1;
    return 0;
}
