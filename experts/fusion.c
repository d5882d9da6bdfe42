/* The fusion arithmetic and the selector file: see experts/fusion.h. */
#include "experts/fusion.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define ARCH "coegate-fusion-selector"

const char *coe_fusion_mode_name(coe_fusion_mode m)
{
    return m == COE_FUSION_ROUTE ? "fusionroute" : m == COE_FUSION_SELECT ? "select" : "mix";
}

bool coe_fusion_mode_from_name(const char *s, coe_fusion_mode *out)
{
    for (int m = COE_FUSION_ROUTE; m <= COE_FUSION_MIX; m++)
        if (strcmp(s, coe_fusion_mode_name((coe_fusion_mode)m)) == 0) {
            *out = (coe_fusion_mode)m;
            return true;
        }
    return false;
}

static int selector_alloc(coe_selector **out, int n_experts, int n_embd)
{
    coe_selector *s = calloc(1, sizeof *s);
    if (!s)
        return COE_ENOMEM;
    s->n_experts = n_experts;
    s->n_embd = n_embd;
    s->experts = calloc((size_t)n_experts, sizeof *s->experts);
    if (!s->experts) {
        free(s);
        return COE_ENOMEM;
    }
    *out = s;
    return 0;
}

int coe_selector_new(coe_selector **out, char *const *experts, int n_experts, int n_embd)
{
    *out = NULL;
    coe_selector *s;
    int rc = selector_alloc(&s, n_experts, n_embd);
    if (rc)
        return rc;
    s->owned = calloc((size_t)n_experts * (size_t)(n_embd + 1), sizeof *s->owned);
    rc = s->owned ? 0 : COE_ENOMEM;
    s->w = s->owned;
    s->b = s->owned ? s->owned + (size_t)n_experts * (size_t)n_embd : NULL;
    for (int k = 0; !rc && k < n_experts; k++)
        if (!(s->experts[k] = strdup(experts[k])))
            rc = COE_ENOMEM;
    if (rc) {
        coe_selector_close(&s);
        return rc;
    }
    *out = s;
    return 0;
}

static const float *f32_tensor(const coe_gguf *g, const char *path, const char *name, uint64_t d0, uint64_t d1,
                               coe_buf *diag)
{
    const coe_gguf_tensor *t = coe_gguf_find_tensor(g, name);
    if (!t) {
        coe_buf_printf(diag, "%s: tensor '%s' is missing\n", path, name);
        return NULL;
    }
    uint64_t want1 = d1 ? d1 : 1, got1 = t->n_dims > 1 ? t->dims[1] : 1;
    if (t->type != COE_GGML_F32 || t->dims[0] != d0 || got1 != want1 || t->n_dims > 2) {
        coe_buf_printf(diag, "%s: tensor '%s' should be F32 [%llu, %llu]\n", path, name, (unsigned long long)d0,
                       (unsigned long long)want1);
        return NULL;
    }
    return (const float *)t->data;
}

int coe_selector_open(coe_selector **out, const char *path, coe_buf *diag)
{
    *out = NULL;
    coe_gguf *g;
    int rc = coe_gguf_open(&g, path, diag);
    if (rc)
        return rc;
    const coe_gguf_kv *arch = coe_gguf_find_kv(g, "general.architecture");
    if (!arch || arch->value.type != COE_GGUF_STRING || arch->value.str.len != strlen(ARCH) ||
        memcmp(arch->value.str.ptr, ARCH, strlen(ARCH)) != 0) {
        coe_buf_printf(diag, "%s: not a fusion selector (key 'general.architecture' should be \"%s\")\n", path, ARCH);
        coe_gguf_close(&g);
        return COE_EINVAL;
    }
    const coe_gguf_kv *names = coe_gguf_find_kv(g, "coegate.fusion.experts");
    const coe_gguf_kv *embd = coe_gguf_find_kv(g, "coegate.fusion.n_embd");
    const coe_gguf_kv *lambda = coe_gguf_find_kv(g, "coegate.fusion.lambda");
    uint64_t n_embd = 0;
    double lam = 0;
    if (!names || names->value.type != COE_GGUF_ARRAY || names->value.elem_type != COE_GGUF_STRING ||
        names->value.count < 1 || names->value.count > COE_FUSION_MAX_EXPERTS) {
        coe_buf_printf(diag, "%s: key 'coegate.fusion.experts' should be 1 to %d expert names\n", path,
                       COE_FUSION_MAX_EXPERTS);
        rc = COE_EINVAL;
    } else if (!embd || !coe_gguf_get_u64(&embd->value, &n_embd) || n_embd < 1 || n_embd > 65536) {
        coe_buf_printf(diag, "%s: key 'coegate.fusion.n_embd' should be a width from 1 to 65536\n", path);
        rc = COE_EINVAL;
    } else if (!lambda || !coe_gguf_get_f64(&lambda->value, &lam) || !isfinite(lam)) {
        coe_buf_printf(diag, "%s: key 'coegate.fusion.lambda' should be a finite number\n", path);
        rc = COE_EINVAL;
    }
    coe_selector *s = NULL;
    if (!rc)
        rc = selector_alloc(&s, (int)names->value.count, (int)n_embd);
    if (!rc) {
        s->file = g;
        g = NULL;
        s->lambda = (float)lam;
        const coe_gguf_str *str = names->value.strings;
        for (int k = 0; !rc && k < s->n_experts; k++)
            if (!(s->experts[k] = strndup(str[k].ptr, str[k].len)))
                rc = COE_ENOMEM;
        if (!rc) {
            s->w = (float *)f32_tensor(s->file, path, "selector.weight", n_embd, (uint64_t)s->n_experts, diag);
            s->b = (float *)f32_tensor(s->file, path, "selector.bias", (uint64_t)s->n_experts, 0, diag);
            if (!s->w || !s->b)
                rc = COE_EINVAL;
        }
    }
    coe_gguf_close(&g);
    if (rc) {
        coe_selector_close(&s);
        return rc;
    }
    *out = s;
    return 0;
}

int coe_selector_save(const coe_selector *s, const char *path, const char *provenance, coe_buf *diag)
{
    coe_gguf_writer *w = coe_gguf_writer_new(32);
    if (!w)
        return COE_ENOMEM;
    uint32_t v = (uint32_t)s->n_embd;
    float lam = s->lambda;
    coe_gguf_writer_kv_str(w, "general.architecture", ARCH);
    coe_gguf_writer_kv_strings(w, "coegate.fusion.experts", (const char *const *)s->experts, (uint64_t)s->n_experts);
    coe_gguf_writer_kv(w, "coegate.fusion.n_embd", COE_GGUF_U32, &v);
    coe_gguf_writer_kv(w, "coegate.fusion.lambda", COE_GGUF_F32, &lam);
    if (provenance)
        coe_gguf_writer_kv_str(w, "coegate.fusion.provenance", provenance);
    coe_gguf_writer_tensor(w, "selector.weight", COE_GGML_F32, 2,
                           (const uint64_t[]){(uint64_t)s->n_embd, (uint64_t)s->n_experts}, s->w);
    coe_gguf_writer_tensor(w, "selector.bias", COE_GGML_F32, 1, (const uint64_t[]){(uint64_t)s->n_experts}, s->b);
    int rc = coe_gguf_writer_save(w, path, diag);
    coe_gguf_writer_free(&w);
    return rc;
}

void coe_selector_close(coe_selector **sp)
{
    coe_selector *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    for (int k = 0; s->experts && k < s->n_experts; k++)
        free(s->experts[k]);
    free(s->experts);
    free(s->owned);
    coe_gguf_close(&s->file);
    free(s);
}

int coe_selector_probs(const coe_selector *s, const float *hidden, float *probs)
{
    // W (K, E) @ h (E,) + b -> z (K,), then softmax
    int best = 0;
    float max = -INFINITY;
    for (int k = 0; k < s->n_experts; k++) {
        const float *row = s->w + (size_t)k * (size_t)s->n_embd;
        double z = s->b[k];
        for (int i = 0; i < s->n_embd; i++)
            z += (double)row[i] * (double)hidden[i];
        probs[k] = (float)z;
        if (probs[k] > max) {
            max = probs[k];
            best = k;
        }
    }
    double sum = 0;
    for (int k = 0; k < s->n_experts; k++)
        sum += exp((double)(probs[k] - max));
    for (int k = 0; k < s->n_experts; k++)
        probs[k] = (float)(exp((double)(probs[k] - max)) / sum);
    return best;
}

/* log softmax(z) into out, in double for the sum. */
static void log_softmax(const float *z, int n, double *out)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        max = z[i] > max ? z[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)(z[i] - max));
    double lse = (double)max + log(sum);
    for (int i = 0; i < n; i++)
        out[i] = (double)z[i] - lse;
}

void coe_fusion_logits(coe_fusion_mode mode, float lambda, int n_vocab, int n_experts, const float *const *expert_logits,
                       const float *probs, int selected, const float *router_logits, float *out)
{
    if (mode == COE_FUSION_SELECT) {
        memcpy(out, expert_logits[selected], (size_t)n_vocab * sizeof *out);
        return;
    }
    if (mode == COE_FUSION_ROUTE) {
        const float *z = expert_logits[selected];
        for (int v = 0; v < n_vocab; v++)
            out[v] = z[v] + lambda * router_logits[v];
        return;
    }
    /* mix: log sum_k p_k softmax(z_k), one expert at a time into a running sum */
    double *lp = malloc((size_t)n_vocab * sizeof *lp), *acc = calloc((size_t)n_vocab, sizeof *acc);
    if (!lp || !acc) {
        /* Out of memory: the most probable expert alone still gives a distribution. */
        memcpy(out, expert_logits[selected], (size_t)n_vocab * sizeof *out);
        free(lp);
        free(acc);
        return;
    }
    for (int k = 0; k < n_experts; k++) {
        log_softmax(expert_logits[k], n_vocab, lp);
        for (int v = 0; v < n_vocab; v++)
            acc[v] += (double)probs[k] * exp(lp[v]);
    }
    for (int v = 0; v < n_vocab; v++)
        out[v] = acc[v] > 0 ? (float)log(acc[v]) : -INFINITY;
    free(lp);
    free(acc);
}

int coe_vocab_first_difference(const coe_vocab *a, const coe_vocab *b)
{
    int n = a->n < b->n ? a->n : b->n;
    for (int i = 0; i < n; i++)
        if (a->text[i].len != b->text[i].len || memcmp(a->text[i].ptr, b->text[i].ptr, a->text[i].len) != 0 ||
            a->type[i] != b->type[i])
            return i;
    return a->n == b->n ? -1 : n;
}
