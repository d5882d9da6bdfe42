#include "router/classifier.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "common/err.h"

#define ARCH "coegate-router"

static size_t n_weights(const coe_features_params *fp, int dim, int hidden, int n_outputs)
{
    int z = hidden > 0 ? hidden : dim;
    return (size_t)fp->buckets * (size_t)dim + (size_t)hidden * (size_t)dim + (size_t)hidden +
           (size_t)n_outputs * (size_t)z + (size_t)n_outputs;
}

/* Copies the finer outputs into m (outputs NULL: they are the categories). */
static int set_outputs(coe_router *m, char *const *outputs, const int *output_category, int n_outputs)
{
    m->n_outputs = outputs ? n_outputs : m->n_classes;
    if (!outputs)
        return 0;
    m->outputs = calloc((size_t)n_outputs, sizeof *m->outputs);
    m->output_category = malloc((size_t)n_outputs * sizeof *m->output_category);
    if (!m->outputs || !m->output_category)
        return COE_ENOMEM;
    for (int i = 0; i < n_outputs; i++) {
        m->outputs[i] = strdup(outputs[i]);
        m->output_category[i] = output_category[i];
    }
    return 0;
}

int coe_router_new(coe_router **out, const coe_features_params *fp, int dim, int hidden, char *const *categories,
                   int n_classes, char *const *outputs, const int *output_category, int n_outputs)
{
    *out = NULL;
    coe_router *m = calloc(1, sizeof *m);
    if (!m)
        return COE_ENOMEM;
    m->fp = *fp;
    m->dim = dim;
    m->hidden = hidden;
    m->n_classes = n_classes;
    m->categories = calloc((size_t)n_classes, sizeof *m->categories);
    int rc = m->categories ? set_outputs(m, outputs, output_category, n_outputs) : COE_ENOMEM;
    m->owned = rc ? NULL : calloc(n_weights(fp, dim, hidden, m->n_outputs), sizeof(float));
    if (!m->owned || !m->categories) {
        coe_router_close(&m);
        return COE_ENOMEM;
    }
    for (int i = 0; i < n_classes; i++)
        m->categories[i] = strdup(categories[i]);
    float *p = m->owned;
    m->embd = p, p += (size_t)fp->buckets * (size_t)dim;
    m->w1 = p, p += (size_t)hidden * (size_t)dim;
    m->b1 = p, p += hidden;
    m->w2 = p, p += (size_t)m->n_outputs * (size_t)coe_router_z(m);
    m->b2 = p;
    *out = m;
    return 0;
}

void coe_router_close(coe_router **mp)
{
    coe_router *m = *mp;
    *mp = NULL;
    if (!m)
        return;
    for (int i = 0; i < m->n_classes && m->categories; i++)
        free(m->categories[i]);
    free(m->categories);
    for (int i = 0; i < m->n_outputs && m->outputs; i++)
        free(m->outputs[i]);
    free(m->outputs);
    free(m->output_category);
    for (int k = 0; k < m->n_more; k++)
        free(m->more[k].owned);
    free(m->more);
    free(m->owned);
    coe_gguf_close(&m->file);
    free(m);
}

/* ---- ensembles ---- */

/* Member k of m, as a router of its own (k = 0: m itself). A shallow copy: only for reading. */
static coe_router member(const coe_router *m, int k)
{
    coe_router v = *m;
    if (k > 0) {
        const coe_router_member *w = &m->more[k - 1];
        v.embd = w->embd, v.w1 = w->w1, v.b1 = w->b1, v.w2 = w->w2, v.b2 = w->b2;
    }
    v.n_more = 0;
    return v;
}

int coe_router_adopt(coe_router *m, coe_router **mp)
{
    coe_router *o = *mp;
    if (!o->owned || o->dim != m->dim || o->hidden != m->hidden || o->n_outputs != m->n_outputs ||
        o->fp.buckets != m->fp.buckets)
        return COE_EINVAL;
    coe_router_member *more = realloc(m->more, (size_t)(m->n_more + 1) * sizeof *more);
    if (!more)
        return COE_ENOMEM;
    m->more = more;
    more[m->n_more++] = (coe_router_member){o->embd, o->w1, o->b1, o->w2, o->b2, o->owned};
    o->owned = NULL;
    coe_router_close(mp);
    return 0;
}

/* ---- inference ---- */

void coe_router_embed(const coe_router *m, const coe_features *f, float *x)
{
    int d = m->dim;
    memset(x, 0, (size_t)d * sizeof *x);
    float total = 0;
    for (size_t i = 0; i < f->n; i++) {
        const float *row = m->embd + (size_t)f->ids[i] * (size_t)d;
        float w = f->w[i];
        for (int k = 0; k < d; k++)
            x[k] += w * row[k];
        total += w;
    }
    if (total > 0)
        for (int k = 0; k < d; k++)
            x[k] /= total;
}

static void softmax(float *v, int n)
{
    float mx = v[0];
    for (int i = 1; i < n; i++)
        mx = v[i] > mx ? v[i] : mx;
    float s = 0;
    for (int i = 0; i < n; i++)
        s += v[i] = expf(v[i] - mx);
    for (int i = 0; i < n; i++)
        v[i] /= s;
}

static void head_q(const coe_router *m, const float *z, float *q);

void coe_router_head(const coe_router *m, const float *x, float *probs, float *scratch)
{
    const float *z = x;
    if (m->hidden > 0) {
        // W1 (hidden, dim) @ x (dim,) + b1 -> relu -> z (hidden,)
        for (int h = 0; h < m->hidden; h++) {
            const float *row = m->w1 + (size_t)h * (size_t)m->dim;
            float s = m->b1[h];
            for (int k = 0; k < m->dim; k++)
                s += row[k] * x[k];
            scratch[h] = s > 0 ? s : 0;
        }
        z = scratch;
    }
    // W2 (outputs, zn) @ z (zn,) + b2 -> q (outputs,) -> probs (classes,)
    float *q = m->output_category ? scratch + (m->hidden > 0 ? m->hidden : 0) : probs;
    head_q(m, z, q);
    coe_router_fold(m, q, probs);
}

/* q = softmax(W2 z + b2). */
static void head_q(const coe_router *m, const float *z, float *q)
{
    int zn = coe_router_z(m);
    for (int o = 0; o < m->n_outputs; o++) {
        const float *row = m->w2 + (size_t)o * (size_t)zn;
        float s = m->b2[o];
        for (int k = 0; k < zn; k++)
            s += row[k] * z[k];
        q[o] = s;
    }
    softmax(q, m->n_outputs);
}

int coe_router_classify_outputs(const coe_router *m, const char *text, size_t n, float *q, float *probs)
{
    coe_features f = {0};
    float x[1024], scratch[8192];
    int rc = m->dim > 1024 || m->hidden > 8192 ? COE_EINVAL : coe_features_add_text(&m->fp, text, n, 1.0f, &f);
    for (int k = 0; !rc && k <= m->n_more; k++) {
        coe_router v = member(m, k);
        coe_router_embed(&v, &f, x);
        coe_router_head(&v, x, probs, scratch);
        /* coe_router_head left q in scratch after the hidden layer, or in probs. */
        const float *qk = m->output_category ? scratch + (m->hidden > 0 ? m->hidden : 0) : probs;
        for (int o = 0; o < m->n_outputs; o++)
            q[o] = (k ? q[o] : 0) + qk[o] / (float)(m->n_more + 1);
    }
    if (!rc)
        coe_router_fold(m, q, probs);
    coe_features_free(&f);
    return rc;
}

void coe_router_fold(const coe_router *m, const float *q, float *probs)
{
    if (!m->output_category) {
        if (q != probs)
            memcpy(probs, q, (size_t)m->n_classes * sizeof *probs);
        return;
    }
    memset(probs, 0, (size_t)m->n_classes * sizeof *probs);
    for (int o = 0; o < m->n_outputs; o++)
        probs[m->output_category[o]] += q[o];
}

int coe_router_classify(const coe_router *m, const coe_features *f, float *probs)
{
    float x[1024], scratch[8192], pk[4096];
    if (m->dim > 1024 || m->hidden + m->n_outputs > 8192 || m->n_classes > 4096)
        return coe_router_classify_batch(m, (const coe_features *const[]){f}, 1, probs);
    for (int k = 0; k <= m->n_more; k++) {
        coe_router v = member(m, k);
        coe_router_embed(&v, f, x);
        coe_router_head(&v, x, k ? pk : probs, scratch);
        for (int c = 0; k && c < m->n_classes; c++)
            probs[c] += pk[c];
    }
    for (int c = 0; m->n_more && c < m->n_classes; c++)
        probs[c] /= (float)(m->n_more + 1);
    return 0;
}

int coe_router_classify_text(const coe_router *m, const char *text, size_t n, float *probs)
{
    coe_features f = {0};
    int rc = coe_features_add_text(&m->fp, text, n, 1.0f, &f);
    if (!rc)
        rc = coe_router_classify(m, &f, probs);
    coe_features_free(&f);
    return rc;
}

static int batch_one(const coe_router *m, const coe_features *const *f, int n, float *probs)
{
    int d = m->dim, zn = coe_router_z(m), c = m->n_outputs;
    float *x = malloc((size_t)n * (size_t)d * sizeof *x);
    float *h = m->hidden > 0 ? malloc((size_t)n * (size_t)m->hidden * sizeof *h) : NULL;
    float *q = malloc((size_t)n * (size_t)c * sizeof *q);
    if (!x || !q || (m->hidden > 0 && !h)) {
        free(x);
        free(h);
        free(q);
        return COE_ENOMEM;
    }
    for (int i = 0; i < n; i++)
        coe_router_embed(m, f[i], x + (size_t)i * (size_t)d);
    const float *z = x;
    if (m->hidden > 0) {
        // X (n, dim) @ W1^T (dim, hidden) -> H (n, hidden), then + b1, relu
        for (int i = 0; i < n; i++)
            memcpy(h + (size_t)i * (size_t)m->hidden, m->b1, (size_t)m->hidden * sizeof *h);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m->hidden, d, 1.0f, x, d, m->w1, d, 1.0f, h,
                    m->hidden);
        for (size_t i = 0; i < (size_t)n * (size_t)m->hidden; i++)
            h[i] = h[i] > 0 ? h[i] : 0;
        z = h;
    }
    // Z (n, zn) @ W2^T (zn, outputs) + b2 -> logits (n, outputs)
    for (int i = 0; i < n; i++)
        memcpy(q + (size_t)i * (size_t)c, m->b2, (size_t)c * sizeof *q);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, c, zn, 1.0f, z, zn, m->w2, zn, 1.0f, q, c);
    for (int i = 0; i < n; i++) {
        softmax(q + (size_t)i * (size_t)c, c);
        coe_router_fold(m, q + (size_t)i * (size_t)c, probs + (size_t)i * (size_t)m->n_classes);
    }
    free(x);
    free(h);
    free(q);
    return 0;
}

int coe_router_classify_batch(const coe_router *m, const coe_features *const *f, int n, float *probs)
{
    coe_router v = member(m, 0);
    int rc = batch_one(&v, f, n, probs);
    if (rc || m->n_more == 0)
        return rc;
    size_t total = (size_t)n * (size_t)m->n_classes;
    float *pk = malloc(total * sizeof *pk);
    if (!pk)
        return COE_ENOMEM;
    for (int k = 1; k <= m->n_more && !rc; k++) {
        v = member(m, k);
        if (!(rc = batch_one(&v, f, n, pk)))
            for (size_t i = 0; i < total; i++)
                probs[i] += pk[i];
    }
    for (size_t i = 0; i < total; i++)
        probs[i] /= (float)(m->n_more + 1);
    free(pk);
    return rc;
}

/* ---- files ---- */

int coe_router_save(const coe_router *m, const char *path, coe_buf *diag)
{
    coe_gguf_writer *w = coe_gguf_writer_new(32);
    if (!w)
        return COE_ENOMEM;
    uint32_t v;
    float fv;
    coe_gguf_writer_kv_str(w, "general.architecture", ARCH);
    coe_gguf_writer_kv_strings(w, "router.categories", (const char *const *)m->categories, (uint64_t)m->n_classes);
    v = m->fp.buckets, coe_gguf_writer_kv(w, "router.features.buckets", COE_GGUF_U32, &v);
    v = (uint32_t)m->fp.word_ngrams, coe_gguf_writer_kv(w, "router.features.word_ngrams", COE_GGUF_U32, &v);
    v = (uint32_t)m->fp.char_min, coe_gguf_writer_kv(w, "router.features.char_min", COE_GGUF_U32, &v);
    v = (uint32_t)m->fp.char_max, coe_gguf_writer_kv(w, "router.features.char_max", COE_GGUF_U32, &v);
    v = m->fp.max_features, coe_gguf_writer_kv(w, "router.features.max_features", COE_GGUF_U32, &v);
    fv = m->fp.history_weight, coe_gguf_writer_kv(w, "router.features.history_weight", COE_GGUF_F32, &fv);
    v = (uint32_t)m->hidden, coe_gguf_writer_kv(w, "router.hidden", COE_GGUF_U32, &v);
    coe_gguf_writer_kv_str(w, "router.training_data_fnv1a", m->data_hash);
    if (m->outputs) {
        coe_gguf_writer_kv_strings(w, "router.outputs", (const char *const *)m->outputs, (uint64_t)m->n_outputs);
        coe_gguf_writer_kv_array(w, "router.output_category", COE_GGUF_I32, m->output_category,
                                 (uint64_t)m->n_outputs);
        if (m->output_field[0])
            coe_gguf_writer_kv_str(w, "router.output_field", m->output_field);
    }
    int zn = coe_router_z(m);
    coe_gguf_writer_tensor(w, "router.embd", COE_GGML_F32, 2, (const uint64_t[]){(uint64_t)m->dim, m->fp.buckets},
                           m->embd);
    if (m->hidden > 0) {
        coe_gguf_writer_tensor(w, "router.w1", COE_GGML_F32, 2,
                               (const uint64_t[]){(uint64_t)m->dim, (uint64_t)m->hidden}, m->w1);
        coe_gguf_writer_tensor(w, "router.b1", COE_GGML_F32, 1, (const uint64_t[]){(uint64_t)m->hidden}, m->b1);
    }
    coe_gguf_writer_tensor(w, "router.w2", COE_GGML_F32, 2,
                           (const uint64_t[]){(uint64_t)zn, (uint64_t)m->n_outputs}, m->w2);
    coe_gguf_writer_tensor(w, "router.b2", COE_GGML_F32, 1, (const uint64_t[]){(uint64_t)m->n_outputs}, m->b2);
    /* Ensemble members after the first: the same tensors, suffixed .1, .2, ... */
    v = (uint32_t)(m->n_more + 1), coe_gguf_writer_kv(w, "router.members", COE_GGUF_U32, &v);
    for (int k = 1; k <= m->n_more; k++) {
        const coe_router_member *mm = &m->more[k - 1];
        char name[64];
        snprintf(name, sizeof name, "router.embd.%d", k);
        coe_gguf_writer_tensor(w, name, COE_GGML_F32, 2, (const uint64_t[]){(uint64_t)m->dim, m->fp.buckets}, mm->embd);
        if (m->hidden > 0) {
            snprintf(name, sizeof name, "router.w1.%d", k);
            coe_gguf_writer_tensor(w, name, COE_GGML_F32, 2, (const uint64_t[]){(uint64_t)m->dim, (uint64_t)m->hidden},
                                   mm->w1);
            snprintf(name, sizeof name, "router.b1.%d", k);
            coe_gguf_writer_tensor(w, name, COE_GGML_F32, 1, (const uint64_t[]){(uint64_t)m->hidden}, mm->b1);
        }
        snprintf(name, sizeof name, "router.w2.%d", k);
        coe_gguf_writer_tensor(w, name, COE_GGML_F32, 2, (const uint64_t[]){(uint64_t)zn, (uint64_t)m->n_outputs},
                               mm->w2);
        snprintf(name, sizeof name, "router.b2.%d", k);
        coe_gguf_writer_tensor(w, name, COE_GGML_F32, 1, (const uint64_t[]){(uint64_t)m->n_outputs}, mm->b2);
    }
    int rc = coe_gguf_writer_save(w, path, diag);
    coe_gguf_writer_free(&w);
    return rc;
}

static bool need_u32(const coe_gguf *g, const char *key, uint32_t lo, uint32_t hi, uint32_t *out, coe_buf *diag)
{
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    uint64_t v;
    if (!kv || !coe_gguf_get_u64(&kv->value, &v) || v < lo || v > hi) {
        coe_buf_printf(diag, "%s: key '%s' is %s (an integer from %u to %u is needed)\n", g->path, key,
                       kv ? "out of range or not an integer" : "missing", lo, hi);
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

/* The tensor name, F32, with exactly these dims; NULL and a message otherwise. */
static const float *need_tensor(const coe_gguf *g, const char *name, uint64_t d0, uint64_t d1, coe_buf *diag)
{
    const coe_gguf_tensor *t = coe_gguf_find_tensor(g, name);
    if (!t) {
        coe_buf_printf(diag, "%s: tensor '%s' is missing\n", g->path, name);
        return NULL;
    }
    uint64_t want_dims = d1 ? 2 : 1;
    if (t->type != COE_GGML_F32 || t->n_dims != want_dims || t->dims[0] != d0 || (d1 && t->dims[1] != d1)) {
        coe_buf_printf(diag, "%s: tensor '%s' is %s with shape [%llu, %llu]; F32 [%llu, %llu] is needed\n", g->path,
                       name, coe_ggml_type_name(t->type), (unsigned long long)t->dims[0],
                       (unsigned long long)t->dims[1], (unsigned long long)d0, (unsigned long long)(d1 ? d1 : 1));
        return NULL;
    }
    return t->data;
}

int coe_router_open(coe_router **out, const char *path, coe_buf *diag)
{
    *out = NULL;
    coe_gguf *g = NULL;
    int rc = coe_gguf_open(&g, path, diag);
    if (rc)
        return rc;
    coe_router *m = calloc(1, sizeof *m);
    if (!m) {
        coe_gguf_close(&g);
        return COE_ENOMEM;
    }
    m->file = g;
    rc = COE_EINVAL;
    const coe_gguf_kv *arch = coe_gguf_find_kv(g, "general.architecture");
    if (!arch || arch->value.type != COE_GGUF_STRING || arch->value.str.len != strlen(ARCH) ||
        memcmp(arch->value.str.ptr, ARCH, strlen(ARCH)) != 0) {
        coe_buf_printf(diag, "%s: not a router file (general.architecture must be '%s')\n", path, ARCH);
        goto fail;
    }
    const coe_gguf_kv *cats = coe_gguf_find_kv(g, "router.categories");
    if (!cats || cats->value.type != COE_GGUF_ARRAY || cats->value.elem_type != COE_GGUF_STRING ||
        cats->value.count < 2 || cats->value.count > 4096) {
        coe_buf_printf(diag, "%s: key 'router.categories' must be an array of 2 to 4096 strings\n", path);
        goto fail;
    }
    uint32_t buckets, ngrams, cmin, cmax, maxf, hidden;
    if (!need_u32(g, "router.features.buckets", 2, 1u << 26, &buckets, diag) ||
        !need_u32(g, "router.features.word_ngrams", 1, 2, &ngrams, diag) ||
        !need_u32(g, "router.features.char_min", 0, 16, &cmin, diag) ||
        !need_u32(g, "router.features.char_max", 0, 16, &cmax, diag) ||
        !need_u32(g, "router.features.max_features", 1, 1u << 24, &maxf, diag) ||
        !need_u32(g, "router.hidden", 0, 4096, &hidden, diag))
        goto fail;
    if (buckets & (buckets - 1)) {
        coe_buf_printf(diag, "%s: key 'router.features.buckets' must be a power of two\n", path);
        goto fail;
    }
    const coe_gguf_kv *hw = coe_gguf_find_kv(g, "router.features.history_weight");
    double hwv;
    if (!hw || !coe_gguf_get_f64(&hw->value, &hwv) || !(hwv >= 0 && hwv <= 1)) {
        coe_buf_printf(diag, "%s: key 'router.features.history_weight' must be a number from 0 to 1\n", path);
        goto fail;
    }
    m->fp = (coe_features_params){buckets, (int)ngrams, (int)cmin, (int)cmax, (float)hwv, maxf};
    m->hidden = (int)hidden;
    m->n_classes = (int)cats->value.count;
    m->n_outputs = m->n_classes;
    const coe_gguf_kv *outs = coe_gguf_find_kv(g, "router.outputs");
    const coe_gguf_kv *oc = coe_gguf_find_kv(g, "router.output_category");
    if (outs || oc) {
        if (!outs || !oc || outs->value.type != COE_GGUF_ARRAY || outs->value.elem_type != COE_GGUF_STRING ||
            oc->value.type != COE_GGUF_ARRAY || oc->value.count != outs->value.count || outs->value.count < 2 ||
            outs->value.count > 65536) {
            coe_buf_printf(diag, "%s: keys 'router.outputs' (strings) and 'router.output_category' (integers) "
                                 "must both be arrays of the same length\n", path);
            goto fail;
        }
        m->n_outputs = (int)outs->value.count;
        m->outputs = calloc((size_t)m->n_outputs, sizeof *m->outputs);
        m->output_category = malloc((size_t)m->n_outputs * sizeof *m->output_category);
        if (!m->outputs || !m->output_category)
            goto fail;
        for (int i = 0; i < m->n_outputs; i++) {
            int64_t c;
            if (!coe_gguf_array_i64(&oc->value, (uint64_t)i, &c) || c < 0 || c >= m->n_classes) {
                coe_buf_printf(diag, "%s: key 'router.output_category': element %d is not a category index\n",
                               path, i);
                goto fail;
            }
            m->output_category[i] = (int)c;
            m->outputs[i] = strndup(outs->value.strings[i].ptr, outs->value.strings[i].len);
        }
        const coe_gguf_kv *field = coe_gguf_find_kv(g, "router.output_field");
        if (field && field->value.type == COE_GGUF_STRING && field->value.str.len <= COE_FIELD_MAX)
            snprintf(m->output_field, sizeof m->output_field, "%.*s", (int)field->value.str.len,
                     field->value.str.ptr);
    }
    const coe_gguf_tensor *e = coe_gguf_find_tensor(g, "router.embd");
    m->dim = e && e->n_dims == 2 && e->dims[0] <= 4096 ? (int)e->dims[0] : 0;
    if (!(m->embd = (float *)need_tensor(g, "router.embd", m->dim ? (uint64_t)m->dim : 1, buckets, diag)))
        goto fail;
    int zn = coe_router_z(m);
    if (hidden > 0 && (!(m->w1 = (float *)need_tensor(g, "router.w1", (uint64_t)m->dim, hidden, diag)) ||
                       !(m->b1 = (float *)need_tensor(g, "router.b1", hidden, 0, diag))))
        goto fail;
    if (!(m->w2 = (float *)need_tensor(g, "router.w2", (uint64_t)zn, (uint64_t)m->n_outputs, diag)) ||
        !(m->b2 = (float *)need_tensor(g, "router.b2", (uint64_t)m->n_outputs, 0, diag)))
        goto fail;
    uint32_t members = 1;
    if (coe_gguf_find_kv(g, "router.members") && !need_u32(g, "router.members", 1, 64, &members, diag))
        goto fail;
    m->more = members > 1 ? calloc(members - 1, sizeof *m->more) : NULL;
    if (members > 1 && !m->more)
        goto fail;
    for (uint32_t k = 1; k < members; k++, m->n_more++) {
        coe_router_member *mm = &m->more[k - 1];
        char n1[64], n2[64], n3[64], n4[64], n5[64];
        snprintf(n1, sizeof n1, "router.embd.%u", k);
        snprintf(n2, sizeof n2, "router.w1.%u", k);
        snprintf(n3, sizeof n3, "router.b1.%u", k);
        snprintf(n4, sizeof n4, "router.w2.%u", k);
        snprintf(n5, sizeof n5, "router.b2.%u", k);
        if (!(mm->embd = (float *)need_tensor(g, n1, (uint64_t)m->dim, buckets, diag)) ||
            (hidden > 0 && (!(mm->w1 = (float *)need_tensor(g, n2, (uint64_t)m->dim, hidden, diag)) ||
                            !(mm->b1 = (float *)need_tensor(g, n3, hidden, 0, diag)))) ||
            !(mm->w2 = (float *)need_tensor(g, n4, (uint64_t)zn, (uint64_t)m->n_outputs, diag)) ||
            !(mm->b2 = (float *)need_tensor(g, n5, (uint64_t)m->n_outputs, 0, diag)))
            goto fail;
    }
    m->categories = calloc((size_t)m->n_classes, sizeof *m->categories);
    if (!m->categories)
        goto fail;
    for (int i = 0; i < m->n_classes; i++) {
        /* Category names travel in a response header: one short printable line. */
        const coe_gguf_str *s = &cats->value.strings[i];
        bool printable = s->len > 0 && s->len <= 64;
        for (uint64_t k = 0; k < s->len && printable; k++)
            printable = (unsigned char)s->ptr[k] >= 0x20 && s->ptr[k] != 0x7f;
        if (!printable) {
            coe_buf_printf(diag, "%s: key 'router.categories': name %d must be 1-64 bytes without control characters\n",
                           path, i);
            goto fail;
        }
        m->categories[i] = strndup(s->ptr, s->len);
    }
    const coe_gguf_kv *hash = coe_gguf_find_kv(g, "router.training_data_fnv1a");
    if (hash && hash->value.type == COE_GGUF_STRING)
        snprintf(m->data_hash, sizeof m->data_hash, "%.*s", (int)hash->value.str.len, hash->value.str.ptr);
    *out = m;
    return 0;
fail:
    coe_router_close(&m);
    return rc;
}
