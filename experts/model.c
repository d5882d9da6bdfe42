#include "experts/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "experts/quant.h"

static const struct {
    const char *name;
    coe_arch arch;
} archs[] = {
    {"llama", COE_ARCH_LLAMA},
    {"qwen2moe", COE_ARCH_QWEN2MOE},
    {"olmoe", COE_ARCH_OLMOE},
    {"qwen3moe", COE_ARCH_QWEN3MOE},
    {"granitemoe", COE_ARCH_GRANITE},
    {"granite", COE_ARCH_GRANITE},
    {"deepseek2", COE_ARCH_DEEPSEEK2},
    {"phimoe", COE_ARCH_PHIMOE},
};

const char *coe_arch_name(coe_arch a)
{
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (archs[i].arch == a)
            return archs[i].name;
    return "?";
}

typedef struct loader {
    coe_model *m;
    coe_gguf *g;
    coe_buf *diag;
    int rc;
    bool *used;    /* per tensor of g: read by the loader */
    /* the rotation's magnitude as llama.cpp's context sets it (before ggml's own YaRN factor),
     * and deepseek2's YaRN log multiplier: for deepseek2's kq scale */
    float yarn_attn, yarn_log_mul;
} loader;

static void fail(loader *L, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(loader *L, int rc, const char *fmt, ...)
{
    if (L->rc)
        return; /* the first problem is the one reported */
    L->rc = rc;
    coe_buf_printf(L->diag, "%s: ", L->g->path);
    va_list ap;
    va_start(ap, fmt);
    coe_buf_vprintf(L->diag, fmt, ap);
    va_end(ap);
    coe_buf_puts(L->diag, "\n");
}

/* ARCH.suffix as a positive integer below limit; def where absent (-1: required). */
static int hparam(loader *L, const char *suffix, long long def, long long limit)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->arch_name, suffix);
    const coe_gguf_kv *kv = coe_gguf_find_kv(L->g, key);
    uint64_t v;
    if (!kv) {
        if (def < 0)
            fail(L, COE_EINVAL, "key '%s' is missing", key);
        return def < 0 ? 0 : (int)def;
    }
    if (!coe_gguf_get_u64(&kv->value, &v) || v == 0 || v > (uint64_t)limit) {
        fail(L, COE_EINVAL, "key '%s' must be an integer from 1 to %lld", key, limit);
        return 0;
    }
    return (int)v;
}

static float hparam_f(loader *L, const char *suffix, double def)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->arch_name, suffix);
    const coe_gguf_kv *kv = coe_gguf_find_kv(L->g, key);
    double v = def;
    if (kv && (!coe_gguf_get_f64(&kv->value, &v) || !(v > 0) || v > 1e12))
        fail(L, COE_EINVAL, "key '%s' must be a positive number", key);
    return (float)v;
}

/* An optional number ARCH.suffix: def where absent; false (and a failure) when it is
 * not a finite number. */
static bool optional_f(loader *L, const char *suffix, double def, double *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->arch_name, suffix);
    const coe_gguf_kv *kv = coe_gguf_find_kv(L->g, key);
    *out = def;
    if (kv && (!coe_gguf_get_f64(&kv->value, out) || !isfinite(*out) || fabs(*out) > 1e12)) {
        fail(L, COE_EINVAL, "key '%s' must be a number", key);
        return false;
    }
    return true;
}

/* ggml's YaRN correction dimension: the pair index whose wavelength fits n_rot turns
 * in the original context (in its float operations). */
static float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base)
{
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2 * 3.14159265358979323846f)) / (2 * logf(base));
}

void coe_rope_yarn(coe_model *m, int n_ctx_orig, float ext_factor, float attn_factor, float beta_fast,
                   float beta_slow)
{
    m->rope_ext_factor = ext_factor;
    m->rope_mscale = attn_factor;
    if (ext_factor != 0)
        m->rope_mscale *= 1.0f + 0.1f * logf(1.0f / m->rope_freq_scale);
    /* ggml takes the rotated dimensions as n_dims. */
    float start = floorf(yarn_corr_dim(m->rope_dim, n_ctx_orig, beta_fast, m->rope_base));
    float end = ceilf(yarn_corr_dim(m->rope_dim, n_ctx_orig, beta_slow, m->rope_base));
    m->rope_corr_dims[0] = fmaxf(0, start);
    m->rope_corr_dims[1] = fminf((float)(m->rope_dim - 1), end);
}

/* YaRN as llama.cpp sets it up from the file: ext_factor 1 (or the file's
 * rope.scaling.yarn_ext_factor), beta_fast 32 and beta_slow 1 (or the file's), the
 * original context (rope.scaling.original_context_length, else the training one),
 * and the rotation's magnitude rope.scaling.attn_factor times 1 + 0.1 ln(factor)
 * (llama.cpp's context and ggml's kernel together). */
static float yarn_get_mscale(float scale, float mscale)
{
    return scale <= 1.0f ? 1.0f : 0.1f * mscale * logf(scale) + 1.0f;
}

static void rope_yarn(loader *L)
{
    double ext, attn, fast, slow, log_mul = 0;
    if (!optional_f(L, "rope.scaling.yarn_ext_factor", 1, &ext) || !optional_f(L, "rope.scaling.attn_factor", 1, &attn) ||
        !optional_f(L, "rope.scaling.yarn_beta_fast", 32, &fast) || !optional_f(L, "rope.scaling.yarn_beta_slow", 1, &slow) ||
        (L->m->arch == COE_ARCH_DEEPSEEK2 && !optional_f(L, "rope.scaling.yarn_log_multiplier", 0, &log_mul)))
        return;
    int n_ctx_orig = hparam(L, "rope.scaling.original_context_length", L->m->n_ctx_train, 1 << 24);
    /* llama.cpp's context: the magnitude YaRN's mscale gives (for deepseek2, the ratio of
     * its two mscales, which the file stores divided by 10), divided by the factor ggml's
     * kernel applies again, times the file's attn_factor; in its float operations */
    const float factor = 1.0f / L->m->rope_freq_scale;
    float a = 1;
    L->yarn_log_mul = (float)log_mul / 0.1f;
    if (ext != 0) {
        if (L->yarn_log_mul != 0) {
            float mscale = L->m->arch == COE_ARCH_DEEPSEEK2 && L->yarn_log_mul != 1.0f ? L->yarn_log_mul : 1.0f;
            a = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, L->yarn_log_mul);
        } else {
            a = yarn_get_mscale(factor, 1.0f);
        }
        a *= 1.0f / (1.0f + 0.1f * logf(factor));
    }
    a *= (float)attn;
    L->yarn_attn = a;
    coe_rope_yarn(L->m, n_ctx_orig, (float)ext, a, (float)fast, (float)slow);
}

/* Keys llama.cpp reads that change what a model computes, in ways the engine does
 * not (softcapping, extra scales, clamping, gating functions, multi-section RoPE):
 * refused by name when their value is not the neutral one, never ignored. */
static void refuse_unimplemented_keys(loader *L)
{
    const unsigned granite = 1u << COE_ARCH_GRANITE, deepseek2 = 1u << COE_ARCH_DEEPSEEK2;
    const unsigned phimoe = 1u << COE_ARCH_PHIMOE;
    static const struct {
        const char *suffix;
        double neutral[2]; /* values that change nothing (NAN: none) */
        const char *what;
        unsigned computed_for; /* architectures (bits of coe_arch) that do compute it */
    } keys[] = {
        {"attention.scale", {0, NAN}, "a custom attention scale", granite},
        {"logit_scale", {0, 1}, "scaled output logits", granite},
        {"embedding_scale", {0, 1}, "a scaled embedding", granite},
        {"residual_scale", {0, 1}, "scaled residuals", granite},
        {"attn_logit_softcapping", {0, NAN}, "attention logit softcapping", 0},
        {"final_logit_softcapping", {0, NAN}, "final logit softcapping", 0},
        {"attention.clamp_kqv", {0, NAN}, "clamped Q, K and V", 0},
        {"expert_weights_scale", {0, 1}, "scaled expert weights", deepseek2 | phimoe},
        {"expert_gating_func", {0, 1}, "a gating function other than softmax", deepseek2},
        {"rope.scaling.yarn_log_multiplier", {0, NAN}, "YaRN's attention log multiplier (DeepSeek-V2)", deepseek2},
        {"attention.temperature_length", {0, NAN}, "attention temperature tuning", 0},
        {"attention.temperature_scale", {0, NAN}, "attention temperature tuning", 0},
        {"expert_group_scale", {0, 1}, "scaled expert groups", 0},
        {"nextn_predict_layers", {0, NAN}, "multi-token prediction layers", 0},
    };
    char key[128];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && !L->rc; i++) {
        if (keys[i].computed_for & (1u << L->m->arch))
            continue;
        snprintf(key, sizeof key, "%s.%s", L->m->arch_name, keys[i].suffix);
        const coe_gguf_kv *kv = coe_gguf_find_kv(L->g, key);
        double v;
        if (kv && (!coe_gguf_get_f64(&kv->value, &v) || (v != keys[i].neutral[0] && v != keys[i].neutral[1])))
            fail(L, COE_EUNSUPPORTED, "key '%s' asks for %s, which the engine does not compute; refused rather than "
                 "ignored", key, keys[i].what);
    }
    snprintf(key, sizeof key, "%s.rope.dimension_sections", L->m->arch_name);
    if (!L->rc && coe_gguf_find_kv(L->g, key))
        fail(L, COE_EUNSUPPORTED, "key '%s' asks for multi-section RoPE, which the engine does not compute; refused "
             "rather than ignored", key);
}

/* granite's scales (llama.cpp reads them for granite and granitemoe only); 0 or
 * absent means none, as there. */
static void granite_scales(loader *L)
{
    coe_model *m = L->m;
    double embd = 0, residual = 0, attn = 0, logit = 0;
    if (m->arch == COE_ARCH_GRANITE &&
        (!optional_f(L, "embedding_scale", 0, &embd) || !optional_f(L, "residual_scale", 0, &residual) ||
         !optional_f(L, "attention.scale", 0, &attn) || !optional_f(L, "logit_scale", 0, &logit)))
        return;
    m->embd_scale = embd ? (float)embd : 1;
    m->residual_scale = residual ? (float)residual : 1;
    m->attn_scale = (float)attn;
    m->logit_scale = logit ? (float)logit : 1;
}

/* RoPE scaling as llama.cpp reads it: rope.scaling.type (default linear) with
 * rope.scaling.factor (or the older rope.scale_linear) dividing every angle; "none"
 * ignores the factor; "yarn" as rope_yarn; "longrope" as linear, its frequency factors
 * being tensors (phimoe's rope_factors_short/long, chosen by the context). Anything
 * else changes the angles in ways the engine does not compute, so it is refused by
 * name rather than silently run as linear. Outside YaRN, rope.scaling.attn_factor
 * scales the rotation, as llama.cpp's context passes it to ggml. */
static void rope_scaling(loader *L)
{
    coe_model *m = L->m;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch_name);
    const coe_gguf_kv *t = coe_gguf_find_kv(L->g, key);
    char type[32] = "linear";
    if (t && t->value.type != COE_GGUF_STRING) {
        fail(L, COE_EINVAL, "key '%s' must be a string", key);
        return;
    }
    if (t)
        snprintf(type, sizeof type, "%.*s", (int)(t->value.str.len < 31 ? t->value.str.len : 31), t->value.str.ptr);
    /* The factor; 0 or absent means none, as in llama.cpp. */
    double factor = 0;
    static const char *const factor_keys[] = {"rope.scaling.factor", "rope.scale_linear"};
    for (int i = 0; i < 2 && factor == 0; i++) {
        snprintf(key, sizeof key, "%s.%s", m->arch_name, factor_keys[i]);
        const coe_gguf_kv *f = coe_gguf_find_kv(L->g, key);
        if (f && (!coe_gguf_get_f64(&f->value, &factor) || !(factor >= 0) || factor > 1e6)) {
            fail(L, COE_EINVAL, "key '%s' must be a number from 0 to 1e6", key);
            return;
        }
    }
    if (factor == 0)
        factor = 1;
    m->rope_freq_scale = strcmp(type, "none") == 0 ? 1.0f : 1.0f / (float)factor; /* in float, as llama.cpp */
    /* Outside YaRN, llama.cpp scales the rotation by rope.scaling.attn_factor as it is. */
    double attn = 1;
    if (!optional_f(L, "rope.scaling.attn_factor", 1, &attn))
        return;
    m->rope_mscale = L->yarn_attn = (float)attn;
    if (strcmp(type, "yarn") == 0)
        rope_yarn(L);
    else if (strcmp(type, "none") != 0 && strcmp(type, "linear") != 0 && strcmp(type, "longrope") != 0)
        fail(L, COE_EUNSUPPORTED,
             "RoPE scaling '%s' (key '%s.rope.scaling.type') is not supported (none, linear, yarn and longrope are)",
             type, m->arch_name);
}

/* An optional count ARCH.suffix (0 allowed): def where absent. */
static int optional_count(loader *L, const char *suffix, int def, int limit)
{
    double v;
    if (!optional_f(L, suffix, def, &v))
        return 0;
    if (v < 0 || v > limit || v != floor(v)) {
        fail(L, COE_EINVAL, "key '%s.%s' must be an integer from 0 to %d", L->m->arch_name, suffix, limit);
        return 0;
    }
    return (int)v;
}

/* deepseek2's attention and routing, as llama.cpp reads them. Files converted since
 * mid-2025 store each head's key and value decompression apart (attn_k_b, attn_v_b;
 * attention.key_length_mla and value_length_mla present) and cache the compressed KV
 * once per position; older ones store them together (attn_kv_b) and cache every head's
 * keys and values. Both are computed as llama.cpp computes each. */
static void deepseek2_params(loader *L)
{
    coe_model *m = L->m;
    const int big = 1 << 16;
    m->n_lora_q = optional_count(L, "attention.q_lora_rank", 0, big);
    m->n_lora_kv = hparam(L, "attention.kv_lora_rank", -1, big);
    m->n_dense_lead = optional_count(L, "leading_dense_block_count", 0, m->n_layer);
    int key_mla = optional_count(L, "attention.key_length_mla", 0, big);
    int value_mla = optional_count(L, "attention.value_length_mla", 0, big);
    int value_length = hparam(L, "attention.value_length", m->head_dim, big);
    int shared = hparam(L, "expert_shared_count", -1, 64);
    double gating = 0;
    if (!optional_f(L, "expert_gating_func", 0, &gating) || L->rc)
        return;
    if (gating == 0) /* absent: softmax, but for GLM-4.7-Flash, whose files lack the key (as llama.cpp) */
        gating = (m->n_layer == 47 || m->n_layer == 48) && m->n_vocab == 154880 ? 2 : 1;
    if (gating != 1 && gating != 2) {
        fail(L, COE_EUNSUPPORTED, "key '%s.expert_gating_func' is %g; softmax (1) and sigmoid (2) are supported",
             m->arch_name, gating);
        return;
    }
    m->gating = gating == 2 ? COE_GATING_SIGMOID : COE_GATING_SOFTMAX;
    m->mla = key_mla && value_mla;
    const int R = m->n_lora_kv, r = m->rope_dim;
    m->k_mla = m->mla ? key_mla : m->head_dim;
    m->v_mla = m->mla ? value_mla : value_length;
    if ((key_mla != 0) != (value_mla != 0))
        fail(L, COE_EINVAL, "keys '%s.attention.key_length_mla' and 'value_length_mla' come together", m->arch_name);
    else if (m->k_mla <= r)
        fail(L, COE_EINVAL, "each head's key length %d must exceed the rotary dimension %d", m->k_mla, r);
    else if (m->mla && (m->n_head_kv != 1 || m->head_dim != R + r || value_length != R))
        fail(L, COE_EINVAL, "latent attention caches one head of key length kv_lora_rank + rotary dimension (%d) and "
             "value length kv_lora_rank (%d); the file has %d heads of %d and %d", R + r, R, m->n_head_kv,
             m->head_dim, value_length);
    else if (!m->mla && m->n_head_kv != m->n_head)
        fail(L, COE_EINVAL, "attention without key_length_mla has as many key/value heads as heads (%d, not %d)",
             m->n_head, m->n_head_kv);
    if (m->n_expert) {
        m->n_ff_exp = hparam(L, "expert_feed_forward_length", -1, big);
        m->n_ff_shexp = m->n_ff_exp * shared;
    }
    /* llama.cpp's graph: the attention scale of YaRN's magnitude and log multiplier,
     * over each head's decompressed key length */
    const float fs = m->rope_freq_scale;
    const float attn_factor_org = L->yarn_attn * (1.0f + 0.1f * logf(1.0f / fs));
    const float mscale = attn_factor_org * (1.0f + 0.1f * L->yarn_log_mul * logf(1.0f / fs));
    m->attn_scale = 1.0f * mscale * mscale / sqrtf((float)m->k_mla);
    if (m->mla) {
        m->att_dk = R + r, m->att_dv = R;
        m->kv_k_dim = R + r, m->kv_v_dim = 0;
    } else {
        m->att_dk = m->k_mla, m->att_dv = m->v_mla;
        m->kv_k_dim = m->n_head * m->k_mla, m->kv_v_dim = m->n_head * m->v_mla;
    }
}

/* The tensor name, checked for presence, shape {d0, d1, d2} (0: that dimension
 * absent) and a type the engine computes with. NULL when absent and optional. */
static const coe_gguf_tensor *tensor(loader *L, const char *name, bool required, int64_t d0, int64_t d1, int64_t d2)
{
    const coe_gguf_tensor *t = coe_gguf_find_tensor(L->g, name);
    if (!t) {
        if (required)
            fail(L, COE_EINVAL, "tensor '%s' is missing", name);
        return NULL;
    }
    if (L->used)
        L->used[t - L->g->tensors] = true;
    int64_t want[3] = {d0, d1, d2};
    uint32_t n_want = d2 ? 3 : d1 ? 2 : 1;
    bool ok = true;
    /* A vector may be stored as {n, 1}; trailing 1s are the same shape. */
    for (uint32_t i = 0; i < 4; i++) {
        uint64_t have = i < t->n_dims ? t->dims[i] : 1;
        uint64_t need = i < n_want ? (uint64_t)want[i] : 1;
        ok = ok && have == need;
    }
    if (!ok) {
        char have[96] = "", need[96] = "";
        for (uint32_t i = 0; i < t->n_dims; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%llu", i ? ", " : "",
                     (unsigned long long)t->dims[i]);
        for (uint32_t i = 0; i < n_want; i++)
            snprintf(need + strlen(need), sizeof need - strlen(need), "%s%lld", i ? ", " : "", (long long)want[i]);
        fail(L, COE_EINVAL, "tensor '%s' has shape [%s], expected [%s]", name, have, need);
        return NULL;
    }
    if (!coe_quant_supported(t->type) || t->type == COE_GGML_Q8_K) {
        fail(L, COE_EUNSUPPORTED, "tensor '%s' has type %s, which the engine does not compute with "
             "(F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS are supported)", name, coe_ggml_type_name(t->type));
        return NULL;
    }
    uint32_t block, bytes;
    coe_ggml_type_layout(t->type, &block, &bytes);
    if (t->dims[0] % block) {
        fail(L, COE_EINVAL, "tensor '%s': rows of %llu values do not fill blocks of %u", name,
             (unsigned long long)t->dims[0], block);
        return NULL;
    }
    return t;
}

static coe_weight weight(loader *L, const char *name, bool required, int64_t cols, int64_t rows, int64_t n_mat)
{
    coe_weight w = {0};
    const coe_gguf_tensor *t = tensor(L, name, required, cols, rows, n_mat > 1 ? n_mat : 0);
    if (!t)
        return w;
    w.data = t->data;
    w.type = t->type;
    w.cols = cols;
    w.rows = rows;
    w.n_mat = n_mat;
    w.row_bytes = coe_row_bytes(t->type, cols);
    w.mat_bytes = w.row_bytes * (size_t)rows;
    return w;
}

/* A vector tensor copied out as F32 (norms and biases are small). */
static float *vec(loader *L, const char *name, bool required, int64_t n)
{
    const coe_gguf_tensor *t = tensor(L, name, required, n, 0, 0);
    if (!t)
        return NULL;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) {
        fail(L, COE_ENOMEM, "out of memory");
        return NULL;
    }
    coe_dequantize_row(t->type, t->data, v, n);
    return v;
}

static void load_layer(loader *L, int il)
{
    coe_model *m = L->m;
    coe_layer *l = &m->layers[il];
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, il), n)
    int64_t q_dim = (int64_t)m->n_head * m->head_dim, kv_dim = (int64_t)m->n_head_kv * m->head_dim;
    l->attn_norm = vec(L, NAME("attn_norm.weight"), true, m->n_embd);
    if (m->arch == COE_ARCH_DEEPSEEK2) {
        const int64_t H = m->n_head, R = m->n_lora_kv, r = m->rope_dim, nope = m->k_mla - r, qk = H * m->k_mla;
        if (m->n_lora_q) {
            l->wq_a = weight(L, NAME("attn_q_a.weight"), true, m->n_embd, m->n_lora_q, 1);
            l->q_a_norm = vec(L, NAME("attn_q_a_norm.weight"), true, m->n_lora_q);
            l->wq_b = weight(L, NAME("attn_q_b.weight"), true, m->n_lora_q, qk, 1);
        } else {
            l->wq = weight(L, NAME("attn_q.weight"), true, m->n_embd, qk, 1);
        }
        l->wkv_a = weight(L, NAME("attn_kv_a_mqa.weight"), true, m->n_embd, R + r, 1);
        l->kv_a_norm = vec(L, NAME("attn_kv_a_norm.weight"), true, R);
        if (m->mla) {
            l->wk_b = weight(L, NAME("attn_k_b.weight"), true, nope, R, H);
            l->wv_b = weight(L, NAME("attn_v_b.weight"), true, R, m->v_mla, H);
        } else {
            l->wkv_b = weight(L, NAME("attn_kv_b.weight"), true, R, H * (nope + m->v_mla), 1);
        }
        l->wo = weight(L, NAME("attn_output.weight"), true, H * m->v_mla, m->n_embd, 1);
    } else {
        l->wq = weight(L, NAME("attn_q.weight"), true, m->n_embd, q_dim, 1);
        l->wk = weight(L, NAME("attn_k.weight"), true, m->n_embd, kv_dim, 1);
        l->wv = weight(L, NAME("attn_v.weight"), true, m->n_embd, kv_dim, 1);
        l->wo = weight(L, NAME("attn_output.weight"), true, q_dim, m->n_embd, 1);
    }
    bool biases = m->arch == COE_ARCH_QWEN2MOE;
    l->bq = vec(L, NAME("attn_q.bias"), biases, q_dim);
    l->bk = vec(L, NAME("attn_k.bias"), biases, kv_dim);
    l->bv = vec(L, NAME("attn_v.bias"), biases, kv_dim);
    l->bo = vec(L, NAME("attn_output.bias"), false, m->n_embd);
    if (m->arch == COE_ARCH_OLMOE) {
        l->q_norm = vec(L, NAME("attn_q_norm.weight"), true, q_dim);
        l->k_norm = vec(L, NAME("attn_k_norm.weight"), true, kv_dim);
    } else if (m->arch == COE_ARCH_QWEN3MOE) {
        l->q_norm = vec(L, NAME("attn_q_norm.weight"), true, m->head_dim);
        l->k_norm = vec(L, NAME("attn_k_norm.weight"), true, m->head_dim);
    }
    l->ffn_norm = vec(L, NAME("ffn_norm.weight"), true, m->n_embd);
    if (m->arch == COE_ARCH_PHIMOE) {
        l->attn_norm_b = vec(L, NAME("attn_norm.bias"), true, m->n_embd);
        l->ffn_norm_b = vec(L, NAME("ffn_norm.bias"), true, m->n_embd);
    }
    if (m->n_expert == 0 || il < m->n_dense_lead) {
        l->ffn_gate = weight(L, NAME("ffn_gate.weight"), true, m->n_embd, m->n_ff, 1);
        l->ffn_up = weight(L, NAME("ffn_up.weight"), true, m->n_embd, m->n_ff, 1);
        l->ffn_down = weight(L, NAME("ffn_down.weight"), true, m->n_ff, m->n_embd, 1);
    } else {
        l->gate_inp = weight(L, NAME("ffn_gate_inp.weight"), true, m->n_embd, m->n_expert, 1);
        l->gate_exps = weight(L, NAME("ffn_gate_exps.weight"), true, m->n_embd, m->n_ff_exp, m->n_expert);
        l->up_exps = weight(L, NAME("ffn_up_exps.weight"), true, m->n_embd, m->n_ff_exp, m->n_expert);
        l->down_exps = weight(L, NAME("ffn_down_exps.weight"), true, m->n_ff_exp, m->n_embd, m->n_expert);
        l->exp_probs_b = vec(L, NAME("exp_probs_b.bias"), false, m->n_expert);
        if (m->n_ff_shexp) {
            l->gate_shexp = weight(L, NAME("ffn_gate_shexp.weight"), true, m->n_embd, m->n_ff_shexp, 1);
            l->up_shexp = weight(L, NAME("ffn_up_shexp.weight"), true, m->n_embd, m->n_ff_shexp, 1);
            l->down_shexp = weight(L, NAME("ffn_down_shexp.weight"), true, m->n_ff_shexp, m->n_embd, 1);
            l->gate_inp_shexp = vec(L, NAME("ffn_gate_inp_shexp.weight"), m->arch == COE_ARCH_QWEN2MOE, m->n_embd);
        }
    }
#undef NAME
}

/* The second dimension of a tensor, or 0 when it is absent. */
static int dim1(const coe_gguf *g, const char *name)
{
    const coe_gguf_tensor *t = coe_gguf_find_tensor(g, name);
    return t && t->n_dims >= 2 && t->dims[1] < (1u << 30) ? (int)t->dims[1] : 0;
}

static size_t weight_bytes(const coe_weight *w)
{
    return w->mat_bytes;
}

int coe_model_from_gguf(coe_model **out, coe_gguf *g, coe_buf *diag)
{
    *out = NULL;
    coe_model *m = calloc(1, sizeof *m);
    if (!m) {
        coe_gguf_close(&g);
        return COE_ENOMEM;
    }
    m->gguf = g;
    loader L = {m, g, diag, 0, calloc(g->n_tensors ? g->n_tensors : 1, sizeof(bool)), 1, 0};
    if (!L.used) {
        fail(&L, COE_ENOMEM, "out of memory");
        goto done;
    }
    const coe_gguf_kv *a = coe_gguf_find_kv(g, "general.architecture");
    if (!a || a->value.type != COE_GGUF_STRING) {
        fail(&L, COE_EINVAL, "key 'general.architecture' is missing");
        goto done;
    }
    bool known = false;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0] && !known; i++)
        if (strlen(archs[i].name) == a->value.str.len && memcmp(archs[i].name, a->value.str.ptr, a->value.str.len) == 0) {
            m->arch = archs[i].arch;
            snprintf(m->arch_name, sizeof m->arch_name, "%s", archs[i].name);
            known = true;
        }
    if (!known) {
        fail(&L, COE_EUNSUPPORTED, "architecture '%.*s' is not supported (llama, qwen2moe, olmoe, qwen3moe, granite, "
             "granitemoe, deepseek2, phimoe are)",
             (int)(a->value.str.len < 64 ? a->value.str.len : 64), a->value.str.ptr);
        goto done;
    }
    const long long big = 1 << 20;
    m->n_embd = hparam(&L, "embedding_length", -1, big);
    m->n_layer = hparam(&L, "block_count", -1, 4096);
    m->n_head = hparam(&L, "attention.head_count", -1, 4096);
    m->n_head_kv = hparam(&L, "attention.head_count_kv", m->n_head, 4096);
    m->n_ctx_train = hparam(&L, "context_length", 4096, 1 << 24);
    m->n_expert = hparam(&L, "expert_count", 0, 4096);
    m->n_expert_used = hparam(&L, "expert_used_count", m->n_expert ? -1 : 0, 4096);
    if (L.rc)
        goto done;
    char key_length[128];
    snprintf(key_length, sizeof key_length, "%s.attention.key_length", m->arch_name);
    m->head_dim = hparam(&L, "attention.key_length", m->n_embd / m->n_head, 65536);
    if (m->n_head % m->n_head_kv || (!coe_gguf_find_kv(g, key_length) && m->n_embd % m->n_head)) {
        fail(&L, COE_EINVAL, "%d heads and %d key/value heads do not divide embedding %d", m->n_head, m->n_head_kv,
             m->n_embd);
        goto done;
    }
    if (m->arch != COE_ARCH_DEEPSEEK2 && hparam(&L, "attention.value_length", m->head_dim, 65536) != m->head_dim) {
        fail(&L, COE_EUNSUPPORTED, "key '%s.attention.value_length' differs from key_length %d, which the engine "
             "computes for deepseek2 only", m->arch_name, m->head_dim);
        goto done;
    }
    m->rope_dim = hparam(&L, "rope.dimension_count", m->head_dim, 65536);
    m->rope_base = hparam_f(&L, "rope.freq_base", 10000);
    m->eps = hparam_f(&L, "attention.layer_norm_rms_epsilon", 1e-6);
    if (m->n_expert_used > m->n_expert) {
        fail(&L, COE_EINVAL, "%s.expert_used_count %d exceeds expert_count %d", m->arch_name, m->n_expert_used,
             m->n_expert);
        goto done;
    }
    if (m->rope_dim > m->head_dim || m->rope_dim % 2) {
        fail(&L, COE_EINVAL, "%s.rope.dimension_count %d must be even and at most the head size %d", m->arch_name,
             m->rope_dim, m->head_dim);
        goto done;
    }
    /* Feed-forward widths: the key where there is one, else the tensor's shape (some
     * converters leave expert_feed_forward_length out). */
    m->n_ff = hparam(&L, "feed_forward_length", 0, big);
    if (m->arch == COE_ARCH_DEEPSEEK2) {
        /* its own keys, in deepseek2_params */
    } else if (m->n_expert) {
        m->n_ff_exp = hparam(&L, "expert_feed_forward_length", dim1(g, "blk.0.ffn_gate_exps.weight"), big);
        m->n_ff_shexp = hparam(&L, "expert_shared_feed_forward_length", dim1(g, "blk.0.ffn_gate_shexp.weight"), big);
        if (!m->n_ff_exp)
            fail(&L, COE_EINVAL, "tensor 'blk.0.ffn_gate_exps.weight' is missing");
    } else if (!m->n_ff) {
        fail(&L, COE_EINVAL, "key '%s.feed_forward_length' is missing", m->arch_name);
    }
    m->rope_neox = m->arch != COE_ARCH_LLAMA && m->arch != COE_ARCH_GRANITE && m->arch != COE_ARCH_DEEPSEEK2;
    rope_scaling(&L);
    refuse_unimplemented_keys(&L);
    granite_scales(&L);
    m->norm_topk = m->arch == COE_ARCH_LLAMA || m->arch == COE_ARCH_QWEN3MOE || m->arch == COE_ARCH_GRANITE ||
                   m->arch == COE_ARCH_PHIMOE;
    m->n_ctx_orig = hparam(&L, "rope.scaling.original_context_length", m->n_ctx_train, 1 << 24);
    if (m->arch == COE_ARCH_PHIMOE) { /* Q scaled before the products, the scores not */
        m->q_prescale = true;
        m->attn_scale = 1.0f;
    }
    if (m->arch == COE_ARCH_QWEN3MOE || m->arch == COE_ARCH_DEEPSEEK2) { /* the file's word over the default */
        char key[128];
        snprintf(key, sizeof key, "%s.expert_weights_norm", m->arch_name);
        const coe_gguf_kv *nw = coe_gguf_find_kv(g, key);
        if (nw && !coe_gguf_get_bool(&nw->value, &m->norm_topk))
            fail(&L, COE_EINVAL, "key '%s' must be a boolean", key);
    }
    if (L.rc)
        goto done;

    const coe_gguf_tensor *emb = coe_gguf_find_tensor(g, "token_embd.weight");
    m->n_vocab = emb && emb->n_dims == 2 && emb->dims[1] < (1u << 24) ? (int)emb->dims[1] : 0;
    if (!m->n_vocab) {
        fail(&L, COE_EINVAL, "tensor 'token_embd.weight' is missing or not a matrix of one row per token");
        goto done;
    }
    /* Expert groups, which llama.cpp reads for every architecture (V3: 8, 4 used). */
    m->n_group = optional_count(&L, "expert_group_count", 0, 64);
    m->n_group_used = optional_count(&L, "expert_group_used_count", 0, m->n_expert);
    if (m->n_group > 1 && (m->n_expert % m->n_group || m->n_group_used < 1 || m->n_group_used >= m->n_group ||
                           m->n_expert / m->n_group < 2))
        fail(&L, COE_EINVAL, "%d expert groups (%d used) do not fit %d experts", m->n_group, m->n_group_used,
             m->n_expert);
    /* 0 or absent: none; other values are refused above where the engine does not scale */
    double weights_scale = 0;
    optional_f(&L, "expert_weights_scale", 0, &weights_scale);
    m->expert_weights_scale = weights_scale ? (float)weights_scale : 1;
    m->att_dk = m->att_dv = m->head_dim;
    m->kv_k_dim = m->kv_v_dim = m->n_head_kv * m->head_dim;
    if (m->arch == COE_ARCH_DEEPSEEK2)
        deepseek2_params(&L);
    if (L.rc)
        goto done;
    m->tok_embd = weight(&L, "token_embd.weight", true, m->n_embd, m->n_vocab, 1);
    m->output_norm = vec(&L, "output_norm.weight", true, m->n_embd);
    if (m->arch != COE_ARCH_PHIMOE) {
        m->rope_freqs = vec(&L, "rope_freqs.weight", false, m->rope_dim / 2); /* Llama-3.1's frequency factors */
    } else { /* LongRoPE's, as llama.cpp reads them for phimoe */
        m->rope_freqs = vec(&L, "rope_factors_short.weight", false, m->rope_dim / 2);
        m->rope_freqs_long = vec(&L, "rope_factors_long.weight", m->rope_freqs != NULL, m->rope_dim / 2);
        m->output_norm_b = vec(&L, "output_norm.bias", true, m->n_embd);
        m->output_b = vec(&L, "output.bias", true, m->n_vocab);
    }
    m->output = weight(&L, "output.weight", false, m->n_embd, m->n_vocab, 1);
    if (!m->output.data && !L.rc)
        m->output = m->tok_embd; /* tied */
    m->layers = calloc((size_t)m->n_layer, sizeof *m->layers);
    if (!m->layers) {
        fail(&L, COE_ENOMEM, "out of memory");
        goto done;
    }
    for (int il = 0; il < m->n_layer && !L.rc; il++)
        load_layer(&L, il);
    /* A tensor the engine does not read may change what the model computes (an
     * attention or RoPE variant, a bias): refused by name, never ignored. */
    for (uint64_t i = 0; i < g->n_tensors && !L.rc; i++)
        if (!L.used[i])
            fail(&L, COE_EUNSUPPORTED, "tensor '%.*s' is not one the engine computes with for %s models; refused "
                 "rather than ignored, as it may change the results", (int)(g->tensors[i].name.len < 96 ?
                 g->tensors[i].name.len : 96), g->tensors[i].name.ptr, m->arch_name);
    if (L.rc)
        goto done;

    size_t per_token = weight_bytes(&m->output);
    for (int il = 0; il < m->n_layer; il++) {
        const coe_layer *l = &m->layers[il];
        per_token += weight_bytes(&l->wq) + weight_bytes(&l->wk) + weight_bytes(&l->wv) + weight_bytes(&l->wo);
        per_token += weight_bytes(&l->wq_a) + weight_bytes(&l->wq_b) + weight_bytes(&l->wkv_a) +
                     (size_t)(l->wk_b.n_mat ? l->wk_b.n_mat : 1) * weight_bytes(&l->wk_b) +
                     (size_t)(l->wv_b.n_mat ? l->wv_b.n_mat : 1) * weight_bytes(&l->wv_b) + weight_bytes(&l->wkv_b);
        per_token += weight_bytes(&l->ffn_gate) + weight_bytes(&l->ffn_up) + weight_bytes(&l->ffn_down);
        per_token += weight_bytes(&l->gate_inp) + weight_bytes(&l->gate_shexp) + weight_bytes(&l->up_shexp) +
                     weight_bytes(&l->down_shexp);
        per_token += (size_t)m->n_expert_used *
                     (weight_bytes(&l->gate_exps) + weight_bytes(&l->up_exps) + weight_bytes(&l->down_exps));
    }
    m->bytes_per_token = per_token;
done:
    free(L.used);
    if (L.rc) {
        coe_model_close(&m);
        return L.rc;
    }
    *out = m;
    return 0;
}

int coe_model_open(coe_model **out, const char *path, coe_buf *diag)
{
    coe_gguf *g;
    int rc = coe_gguf_open(&g, path, diag);
    if (rc)
        return rc;
    return coe_model_from_gguf(out, g, diag);
}

void coe_model_close(coe_model **mp)
{
    coe_model *m = *mp;
    if (!m)
        return;
    for (int il = 0; m->layers && il < m->n_layer; il++) {
        coe_layer *l = &m->layers[il];
        free(l->attn_norm), free(l->ffn_norm), free(l->bq), free(l->bk), free(l->bv), free(l->bo);
        free(l->q_norm), free(l->k_norm), free(l->gate_inp_shexp);
        free(l->q_a_norm), free(l->kv_a_norm), free(l->exp_probs_b), free(l->attn_norm_b), free(l->ffn_norm_b);
    }
    free(m->layers);
    free(m->output_norm);
    free(m->rope_freqs);
    free(m->rope_freqs_long);
    free(m->output_norm_b);
    free(m->output_b);
    coe_gguf_close(&m->gguf);
    free(m);
    *mp = NULL;
}
