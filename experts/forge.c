#include "experts/forge.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/cli.h"
#include "common/err.h"
#include "common/gguf.h"
#include "common/strtab.h"
#include "common/rand.h"
#include "experts/quant.h"
#include "experts/threads.h"

coe_forge_spec coe_forge_small(coe_arch arch)
{
    coe_forge_spec s = {
        .arch = arch, .n_layer = 2, .n_embd = 64, .n_head = 4, .n_head_kv = 2, .n_ff = 64,
        .n_expert = 4, .n_expert_used = 2, .n_vocab = 1024, .n_ctx = 2048, .type = COE_GGML_F32, .seed = 1,
    };
    if (arch == COE_ARCH_QWEN2MOE)
        s.n_ff_shexp = 128;
    if (arch == COE_ARCH_QWEN3MOE)
        s.head_dim = 32;
    if (arch == COE_ARCH_DEEPSEEK2) {
        s.n_head_kv = s.n_head;
        s.n_lora_q = 32, s.n_lora_kv = 32, s.rope_dim = 16, s.head_dim = 32, s.v_head_dim = 32;
        s.n_dense_lead = 1, s.n_shared = 1;
    }
    return s;
}

/* ---- the vocabulary: control tokens, 256 byte tokens, then word pieces ---- */

static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "at", "by",
    "this", "have", "from", "or", "one", "had", "not", "but", "what", "all", "were", "when", "we", "there",
    "can", "an", "your", "which", "their", "said", "if", "do", "will", "each", "about", "how", "up", "out",
    "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has", "more", "her",
    "two", "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who", "now",
    "people", "my", "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long",
    "little", "very", "after", "words", "called", "just", "where", "most", "know", "get", "through", "back",
    "much", "before", "go", "good", "new", "write", "our", "used", "me", "man", "day", "too", "any", "same",
    "right", "look", "think", "also", "around", "another", "came", "come", "work", "three", "word", "must",
    "because", "does", "part", "even", "place", "well", "such", "here", "take", "why", "things", "help",
    "put", "years", "different", "away", "again", "off", "went", "old", "number", "great", "tell", "men",
    "say", "small", "every", "found", "still", "between", "name", "should", "home", "big", "give", "air",
    "line", "set", "own", "under", "read", "last", "never", "us", "left", "end", "along", "while", "might",
    "next", "sound", "below", "saw", "something", "thought", "both", "few", "those", "always", "looked",
    "show", "large", "often", "together", "asked", "house", "world", "going", "want", "school", "important",
    "until", "form", "food", "keep", "children", "feet", "land", "side", "without", "boy", "once", "animals",
    "life", "enough", "took", "sometimes", "four", "head", "above", "kind", "began", "almost", "live", "page",
    "got", "earth", "need", "far", "hand", "high", "year", "mother", "light", "parts", "country", "father",
    "let", "night", "following", "picture", "being", "study", "second", "eyes", "soon", "times", "story",
    "boys", "since", "white", "days", "ever", "paper", "hard", "near", "sentence", "better", "best", "across",
    "during", "today", "others", "however", "sure", "means", "knew", "try", "told", "young", "miles", "sun",
    "ways", "thing", "whole", "hear", "example", "heard", "several", "change", "answer", "room", "sea",
    "against", "top", "turned", "learn", "point", "city", "play", "toward", "five", "using", "himself",
    "usually", "money", "seen", "car", "morning", "code", "data", "model", "expert", "router", "token",
    "function", "return", "value", "number", "list", "string", "file", "error", "test", "query", "answer",
};

typedef struct vocab_builder {
    const char **text;
    char **owned;
    float *score;
    int32_t *type;
    int n, cap, n_owned;
    coe_strtab ids; /* one id per text */
} vocab_builder;

static void text_key(const void *texts, int32_t id, const char **s, size_t *n)
{
    *s = ((const char *const *)texts)[id];
    *n = strlen(*s);
}

static void add(vocab_builder *v, const char *text, int32_t type, float score, bool owned)
{
    if (v->n == v->cap || coe_strtab_find(&v->ids, text_key, v->text, text, strlen(text)) >= 0)
        return;
    char *copy = owned ? strdup(text) : NULL;
    if (owned && !copy)
        return;
    if (copy)
        v->owned[v->n_owned++] = copy;
    v->text[v->n] = copy ? copy : text;
    v->type[v->n] = type;
    v->score[v->n] = score;
    coe_strtab_add(&v->ids, text_key, v->text, v->n);
    v->n++;
}

static int build_vocab(vocab_builder *v, int n)
{
    v->cap = n;
    v->text = calloc((size_t)n, sizeof *v->text);
    v->owned = calloc((size_t)n, sizeof *v->owned);
    v->score = calloc((size_t)n, sizeof *v->score);
    v->type = calloc((size_t)n, sizeof *v->type);
    if (!coe_strtab_init(&v->ids, (size_t)n) || !v->text || !v->owned || !v->score || !v->type)
        return COE_ENOMEM;
    add(v, "<unk>", 2, 0, false);
    add(v, "<s>", 3, 0, false);
    add(v, "</s>", 3, 0, false);
    add(v, "<|im_start|>", 3, 0, false);
    add(v, "<|im_end|>", 3, 0, false);
    char t[64];
    for (int b = 0; b < 256; b++) {
        snprintf(t, sizeof t, "<0x%02X>", b);
        add(v, t, 6, 0, true);
    }
    /* Longer pieces score higher, so SentencePiece prefers whole words. */
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        snprintf(t, sizeof t, "\xE2\x96\x81%s", words[i]);
        add(v, t, 1, -(float)i * 0.001f, true);
        add(v, words[i], 1, -1 - (float)i * 0.001f, false);
    }
    for (int c = 32; c < 127; c++) {
        t[0] = (char)c, t[1] = 0;
        if (c == ' ')
            snprintf(t, sizeof t, "\xE2\x96\x81");
        add(v, t, 1, -5, true);
        if (c != ' ') {
            snprintf(t, sizeof t, "\xE2\x96\x81%c", c);
            add(v, t, 1, -4, true);
        }
    }
    for (int a = 'a'; a <= 'z' && v->n < v->cap; a++)
        for (int b = 'a'; b <= 'z' && v->n < v->cap; b++) {
            snprintf(t, sizeof t, "%c%c", a, b);
            add(v, t, 1, -3, true);
        }
    /* Filler up to the size asked for: made-up words of two or three syllables, so
     * that forged text reads as (pronounceable) gibberish. */
    static const char consonants[] = "bdfgklmnprstvz", vowels[] = "aeiou";
    const int n_syl = (int)(sizeof consonants - 1) * (int)(sizeof vowels - 1);
    for (int i = n_syl; v->n < v->cap; i++) { /* i's digits in base n_syl, one syllable each: all distinct */
        size_t len = (size_t)snprintf(t, sizeof t, "\xE2\x96\x81");
        for (int k = i; k > 0 && len + 2 < sizeof t; k /= n_syl, len += 2) {
            t[len] = consonants[k % n_syl / 5];
            t[len + 1] = vowels[k % n_syl % 5];
        }
        t[len] = 0;
        add(v, t, 1, -6, true);
    }
    return 0;
}

static void free_vocab(vocab_builder *v)
{
    for (int i = 0; i < v->n_owned; i++)
        free(v->owned[i]);
    free(v->owned);
    free(v->text);
    free(v->score);
    free(v->type);
    coe_strtab_free(&v->ids);
}

/* ---- tensors ---- */

typedef struct forge {
    coe_gguf_writer *w;
    coe_threads *team; /* fills a tensor's rows in parallel (every thread its share of the one stream) */
    uint64_t rng;
    void **blobs;
    int n_blobs, cap_blobs;
    int rc;
    coe_buf *diag;
} forge;

static void *keep(forge *f, size_t n)
{
    if (f->n_blobs == f->cap_blobs) {
        int cap = f->cap_blobs ? f->cap_blobs * 2 : 64;
        void **p = realloc(f->blobs, (size_t)cap * sizeof *p);
        if (!p)
            return NULL;
        f->blobs = p;
        f->cap_blobs = cap;
    }
    void *b = malloc(n ? n : 1);
    if (b)
        f->blobs[f->n_blobs++] = b;
    return b;
}

/* A tensor of rows x cols (x n_mat), uniform in [-a, a) around center, of type. */
/* Rows of center + uniform(a) values, quantized: one draw of the stream per value, row
 * after row, so each thread starts its share of rows that many draws on. */
typedef struct fill_job {
    uint8_t *data;
    size_t row_bytes, n_rows;
    int64_t cols;
    uint32_t type;
    float center, a;
    uint64_t rng;
    atomic_int failed;
} fill_job;

static void fill_rows(void *ctx, int ith, int nth)
{
    fill_job *j = ctx;
    size_t r0 = j->n_rows * (size_t)ith / (size_t)nth, r1 = j->n_rows * (size_t)(ith + 1) / (size_t)nth;
    if (r0 == r1)
        return;
    float *row = malloc((size_t)j->cols * sizeof *row);
    if (!row) {
        atomic_store(&j->failed, 1);
        return;
    }
    uint64_t rng = j->rng;
    coe_splitmix64_skip(&rng, (uint64_t)r0 * (uint64_t)j->cols);
    for (size_t r = r0; r < r1; r++) {
        for (int64_t c = 0; c < j->cols; c++)
            row[c] = j->center + coe_uniform(&rng, j->a);
        coe_quantize_row(j->type, row, j->data + r * j->row_bytes, j->cols);
    }
    free(row);
}

static void tensor(forge *f, const char *name, uint32_t type, int64_t cols, int64_t rows, int64_t n_mat, float center,
                   float a)
{
    if (f->rc)
        return;
    uint32_t block, bytes;
    coe_ggml_type_layout(type, &block, &bytes);
    if (cols % block) {
        coe_buf_printf(f->diag, "forge: tensor '%s' has rows of %lld values, which %s blocks of %u do not divide\n", name,
                       (long long)cols, coe_ggml_type_name(type), block);
        f->rc = COE_EINVAL;
        return;
    }
    size_t row_bytes = coe_row_bytes(type, cols), n_rows = (size_t)(rows * n_mat);
    fill_job j = {keep(f, row_bytes * n_rows), row_bytes, n_rows, cols, type, center, a, f->rng, 0};
    if (!j.data) {
        f->rc = COE_ENOMEM;
        return;
    }
    coe_threads_run(f->team, fill_rows, &j);
    if (j.failed) {
        f->rc = COE_ENOMEM;
        return;
    }
    coe_splitmix64_skip(&f->rng, (uint64_t)n_rows * (uint64_t)cols);
    uint64_t dims[3] = {(uint64_t)cols, (uint64_t)rows, (uint64_t)n_mat};
    uint32_t n_dims = n_mat > 1 ? 3 : rows > 1 ? 2 : 1;
    f->rc = coe_gguf_writer_tensor(f->w, name, type, n_dims, dims, j.data);
}

/* deepseek2's attention of layer l, in the layout llama.cpp reads: rows that the
 * type's blocks do not divide (the small latent ones) fall back to Q8_0, or F32, as
 * llama.cpp's quantizer falls back to another type. */
static void forge_deepseek2_attention(forge *f, const coe_forge_spec *s, int l)
{
    const int E = s->n_embd, H = s->n_head, R = s->n_lora_kv, r = s->rope_dim, kq = s->head_dim, nope = kq - r;
    const int dv = s->v_head_dim;
    char name[128];
#define A(n) sqrtf(3.0f / (float)(n))
#define W(suffix, cols, rows, n_mat, a)                                                                                \
    do {                                                                                                               \
        uint32_t block, bytes, type = s->type;                                                                         \
        coe_ggml_type_layout(type, &block, &bytes);                                                                    \
        if ((cols) % (int)block)                                                                                       \
            type = (cols) % 32 ? COE_GGML_F32 : COE_GGML_Q8_0;                                                         \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                                                           \
        tensor(f, name, type, cols, rows, n_mat, 0, a);                                                                \
    } while (0)
#define NORM(suffix, n)                                                                                                \
    do {                                                                                                               \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                                                           \
        tensor(f, name, COE_GGML_F32, n, 1, 1, 1, 0.1f);                                                               \
    } while (0)
    if (s->n_lora_q) {
        W("attn_q_a.weight", E, s->n_lora_q, 1, A(E));
        NORM("attn_q_a_norm.weight", s->n_lora_q);
        W("attn_q_b.weight", s->n_lora_q, H * kq, 1, A(s->n_lora_q));
    } else {
        W("attn_q.weight", E, H * kq, 1, A(E));
    }
    W("attn_kv_a_mqa.weight", E, R + r, 1, A(E));
    NORM("attn_kv_a_norm.weight", R);
    if (s->kv_b) {
        W("attn_kv_b.weight", R, H * (nope + dv), 1, A(R));
    } else {
        W("attn_k_b.weight", nope, R, H, A(nope));
        W("attn_v_b.weight", R, dv, H, A(R));
    }
    W("attn_output.weight", H * dv, E, 1, A(H * dv));
#undef W
#undef NORM
#undef A
}

static const char chatml_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static int check_spec(const coe_forge_spec *s, coe_buf *diag)
{
#define NEED(cond, ...)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            coe_buf_printf(diag, "forge: " __VA_ARGS__);                                                               \
            coe_buf_puts(diag, "\n");                                                                                  \
            return COE_EINVAL;                                                                                         \
        }                                                                                                              \
    } while (0)
    NEED(s->n_layer >= 1 && s->n_layer <= 1024, "--layers must be 1 to 1024");
    NEED(s->n_embd >= 32 && s->n_embd <= 65536 && s->n_embd % 32 == 0, "--embd must be a multiple of 32 up to 65536");
    NEED(s->n_head >= 1 && s->n_head_kv >= 1 && s->n_head % s->n_head_kv == 0,
         "--heads must be a multiple of --kv-heads");
    NEED(s->head_dim > 0 || s->n_embd % s->n_head == 0, "--heads must divide --embd");
    NEED(s->n_ff >= 32 && s->n_ff % 32 == 0, "--ff must be a multiple of 32");
    NEED(s->n_expert == 0 || (s->n_expert_used >= 1 && s->n_expert_used <= s->n_expert),
         "--experts-used must be 1 to --experts");
    NEED(s->n_expert > 0 || s->arch == COE_ARCH_LLAMA, "%s models have experts: give --experts", coe_arch_name(s->arch));
    NEED(s->n_vocab >= 512 && s->n_vocab <= 1000000, "--vocab must be 512 to 1000000");
    NEED(coe_quant_supported(s->type) && s->type != COE_GGML_Q8_K,
         "--type must be one of f32, f16, bf16, q8_0, q4_0, q5_0, q4_1, q5_1, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k");
    NEED(s->n_group == 0 || (s->n_expert % s->n_group == 0 && s->n_expert / s->n_group >= 2 &&
                             s->n_group_used >= 1 && s->n_group_used < s->n_group),
         "--groups must divide --experts into groups of 2 or more, --groups-used fewer");
    if (s->arch == COE_ARCH_DEEPSEEK2) {
        NEED(s->n_lora_kv >= 2 && s->n_lora_kv % 2 == 0 && s->rope_dim >= 2 && s->rope_dim % 2 == 0 &&
                 s->head_dim > s->rope_dim && s->v_head_dim >= 1 && s->n_lora_q >= 0,
             "deepseek2 needs even --kv-lora and --rope-dim, --head-dim above --rope-dim, and --v-head-dim");
        NEED(s->n_expert >= 1 && s->n_dense_lead < s->n_layer && s->n_shared >= 1,
             "deepseek2 needs experts, a shared one, and fewer --dense-lead than --layers");
    }
    uint32_t block, bytes;
    coe_ggml_type_layout(s->type, &block, &bytes);
    int hd = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
    NEED(s->n_embd % (int)block == 0 && s->n_ff % (int)block == 0 && (s->n_head * hd) % (int)block == 0 &&
             (s->n_ff_shexp % (int)block) == 0,
         "%s blocks of %u values must divide --embd, --ff, --ff-shared and heads x head size",
         coe_ggml_type_name(s->type), block);
#undef NEED
    return 0;
}

int coe_forge_write(const coe_forge_spec *s, const char *path, coe_buf *diag)
{
    int rc = check_spec(s, diag);
    if (rc)
        return rc;
    forge f = {coe_gguf_writer_new(32), coe_threads_shared(0), s->seed, NULL, 0, 0, 0, diag};
    vocab_builder vb = {0};
    if (!f.w || !f.team || (rc = build_vocab(&vb, s->n_vocab))) {
        coe_gguf_writer_free(&f.w);
        coe_threads_free(&f.team);
        free_vocab(&vb);
        return rc ? rc : COE_ENOMEM;
    }
    const char *arch = coe_arch_name(s->arch);
    char key[128], name[128];
#define KV_U32(suffix, val)                                                                                            \
    do {                                                                                                               \
        uint32_t x_ = (uint32_t)(val);                                                                                 \
        snprintf(key, sizeof key, "%s.%s", arch, suffix);                                                              \
        coe_gguf_writer_kv(f.w, key, COE_GGUF_U32, &x_);                                                               \
    } while (0)
#define KV_F32(suffix, val)                                                                                            \
    do {                                                                                                               \
        float x_ = (val);                                                                                              \
        snprintf(key, sizeof key, "%s.%s", arch, suffix);                                                              \
        coe_gguf_writer_kv(f.w, key, COE_GGUF_F32, &x_);                                                               \
    } while (0)
    coe_gguf_writer_kv_str(f.w, "general.architecture", arch);
    const int kv_heads = s->arch != COE_ARCH_DEEPSEEK2 ? s->n_head_kv : s->kv_b ? s->n_head : 1;
    snprintf(name, sizeof name, "coegate-forge-%s-%dx%d", arch, s->n_expert, s->n_ff);
    coe_gguf_writer_kv_str(f.w, "general.name", name);
    int hd = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
    KV_U32("context_length", s->n_ctx);
    KV_U32("embedding_length", s->n_embd);
    KV_U32("block_count", s->n_layer);
    KV_U32("feed_forward_length", s->n_ff);
    KV_U32("attention.head_count", s->n_head);
    KV_U32("attention.head_count_kv", kv_heads);
    if (s->arch == COE_ARCH_DEEPSEEK2) {
        if (s->kv_b) {
            KV_U32("attention.key_length", hd);
            KV_U32("attention.value_length", s->v_head_dim);
        } else { /* one cached head: the compressed KV and the rotary key */
            KV_U32("attention.key_length", s->n_lora_kv + s->rope_dim);
            KV_U32("attention.value_length", s->n_lora_kv);
            KV_U32("attention.key_length_mla", hd);
            KV_U32("attention.value_length_mla", s->v_head_dim);
        }
        KV_U32("attention.q_lora_rank", s->n_lora_q);
        KV_U32("attention.kv_lora_rank", s->n_lora_kv);
        KV_U32("rope.dimension_count", s->rope_dim);
        KV_U32("leading_dense_block_count", s->n_dense_lead);
        KV_U32("expert_shared_count", s->n_shared);
        KV_U32("expert_gating_func", s->sigmoid ? 2 : 1);
        if (s->weights_scale)
            KV_F32("expert_weights_scale", s->weights_scale);
        bool norm = s->norm_w;
        snprintf(key, sizeof key, "%s.expert_weights_norm", arch);
        coe_gguf_writer_kv(f.w, key, COE_GGUF_BOOL, &norm);
    } else if (s->head_dim) {
        KV_U32("attention.key_length", hd);
        KV_U32("attention.value_length", hd);
    }
    KV_F32("rope.freq_base", 10000.0f);
    if (s->rope_scaling) {
        snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
        coe_gguf_writer_kv_str(f.w, key, s->rope_scaling);
    }
    if (s->rope_factor)
        KV_F32("rope.scaling.factor", s->rope_factor);
    if (s->yarn_log_mul)
        KV_F32("rope.scaling.yarn_log_multiplier", s->yarn_log_mul);
    if (s->rope_orig)
        KV_U32("rope.scaling.original_context_length", s->rope_orig);
    if (s->arch == COE_ARCH_PHIMOE) /* Phi-3.5-MoE's LongRoPE magnitude */
        KV_F32("rope.scaling.attn_factor", 1.1902381f);
    if (s->arch == COE_ARCH_GRANITE) { /* granite-3.0-1b-a400m's scales */
        KV_F32("embedding_scale", 12.0f);
        KV_F32("residual_scale", 0.22f);
        KV_F32("attention.scale", 0.015625f);
        KV_F32("logit_scale", 6.0f);
    }
    KV_F32("attention.layer_norm_rms_epsilon", 1e-6f);
    if (s->n_expert) {
        KV_U32("expert_count", s->n_expert);
        KV_U32("expert_used_count", s->n_expert_used);
        KV_U32("expert_feed_forward_length", s->n_ff);
    }
    if (s->n_ff_shexp)
        KV_U32("expert_shared_feed_forward_length", s->n_ff_shexp);
    if (s->n_group) {
        KV_U32("expert_group_count", s->n_group);
        KV_U32("expert_group_used_count", s->n_group_used);
    }
    coe_gguf_writer_kv_str(f.w, "tokenizer.ggml.model", "llama");
    coe_gguf_writer_kv_strings(f.w, "tokenizer.ggml.tokens", vb.text, (uint64_t)vb.n);
    coe_gguf_writer_kv_array(f.w, "tokenizer.ggml.scores", COE_GGUF_F32, vb.score, (uint64_t)vb.n);
    coe_gguf_writer_kv_array(f.w, "tokenizer.ggml.token_type", COE_GGUF_I32, vb.type, (uint64_t)vb.n);
    uint32_t ids[3] = {1, 2, 0};
    coe_gguf_writer_kv(f.w, "tokenizer.ggml.bos_token_id", COE_GGUF_U32, &ids[0]);
    coe_gguf_writer_kv(f.w, "tokenizer.ggml.eos_token_id", COE_GGUF_U32, &ids[1]);
    coe_gguf_writer_kv(f.w, "tokenizer.ggml.unknown_token_id", COE_GGUF_U32, &ids[2]);
    coe_gguf_writer_kv_str(f.w, "tokenizer.chat_template", chatml_template);

    /* Uniform in +-sqrt(3/n) has variance 1/n: activations keep their scale. */
    const uint32_t t = s->type;
    const int E = s->n_embd, Q = s->n_head * hd, KV = s->n_head_kv * hd;
#define A(n) sqrtf(3.0f / (float)(n))
    tensor(&f, "token_embd.weight", t, E, s->n_vocab, 1, 0, 1.0f);
    tensor(&f, "output_norm.weight", COE_GGML_F32, E, 1, 1, 1, 0.1f);
    /* A sharper head than 1/sqrt(n), so that sampling is not near-uniform. */
    tensor(&f, "output.weight", t, E, s->n_vocab, 1, 0, 4 * A(E));
    if (s->arch == COE_ARCH_PHIMOE) {
        tensor(&f, "output_norm.bias", COE_GGML_F32, E, 1, 1, 0, 0.1f);
        tensor(&f, "output.bias", COE_GGML_F32, s->n_vocab, 1, 1, 0, 0.5f);
        /* LongRoPE's factors: short ones near 1, long ones larger */
        tensor(&f, "rope_factors_short.weight", COE_GGML_F32, hd / 2, 1, 1, 1.05f, 0.05f);
        tensor(&f, "rope_factors_long.weight", COE_GGML_F32, hd / 2, 1, 1, 8, 6);
    }
    for (int l = 0; l < s->n_layer && !f.rc; l++) {
#define T(suffix, type, cols, rows, n_mat, center, a)                                                                  \
    do {                                                                                                               \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                                                           \
        tensor(&f, name, type, cols, rows, n_mat, center, a);                                                          \
    } while (0)
        T("attn_norm.weight", COE_GGML_F32, E, 1, 1, 1, 0.1f);
        if (s->arch == COE_ARCH_DEEPSEEK2) {
            forge_deepseek2_attention(&f, s, l);
        } else {
            T("attn_q.weight", t, E, Q, 1, 0, A(E));
            T("attn_k.weight", t, E, KV, 1, 0, A(E));
            T("attn_v.weight", t, E, KV, 1, 0, A(E));
            T("attn_output.weight", t, Q, E, 1, 0, A(Q));
        }
        if (s->arch == COE_ARCH_PHIMOE) {
            T("attn_norm.bias", COE_GGML_F32, E, 1, 1, 0, 0.1f);
            T("attn_output.bias", COE_GGML_F32, E, 1, 1, 0, 0.1f);
        }
        if (s->arch == COE_ARCH_QWEN2MOE || s->arch == COE_ARCH_PHIMOE) {
            T("attn_q.bias", COE_GGML_F32, Q, 1, 1, 0, 0.1f);
            T("attn_k.bias", COE_GGML_F32, KV, 1, 1, 0, 0.1f);
            T("attn_v.bias", COE_GGML_F32, KV, 1, 1, 0, 0.1f);
        }
        if (s->arch == COE_ARCH_OLMOE) {
            T("attn_q_norm.weight", COE_GGML_F32, Q, 1, 1, 1, 0.1f);
            T("attn_k_norm.weight", COE_GGML_F32, KV, 1, 1, 1, 0.1f);
        }
        if (s->arch == COE_ARCH_QWEN3MOE) {
            T("attn_q_norm.weight", COE_GGML_F32, hd, 1, 1, 1, 0.1f);
            T("attn_k_norm.weight", COE_GGML_F32, hd, 1, 1, 1, 0.1f);
        }
        T("ffn_norm.weight", COE_GGML_F32, E, 1, 1, 1, 0.1f);
        if (s->arch == COE_ARCH_PHIMOE)
            T("ffn_norm.bias", COE_GGML_F32, E, 1, 1, 0, 0.1f);
        if (s->n_expert && l >= s->n_dense_lead) {
            T("ffn_gate_inp.weight", COE_GGML_F32, E, s->n_expert, 1, 0, A(E));
            if (s->sigmoid) /* small, so that it changes some choices and not all */
                T("exp_probs_b.bias", COE_GGML_F32, s->n_expert, 1, 1, 0, 0.05f);
            T("ffn_gate_exps.weight", t, E, s->n_ff, s->n_expert, 0, A(E));
            T("ffn_up_exps.weight", t, E, s->n_ff, s->n_expert, 0, A(E));
            T("ffn_down_exps.weight", t, s->n_ff, E, s->n_expert, 0, A(s->n_ff));
            if (s->arch == COE_ARCH_DEEPSEEK2) {
                const int F = s->n_ff * s->n_shared;
                T("ffn_gate_shexp.weight", t, E, F, 1, 0, A(E));
                T("ffn_up_shexp.weight", t, E, F, 1, 0, A(E));
                T("ffn_down_shexp.weight", t, F, E, 1, 0, A(F));
            } else if (s->n_ff_shexp) {
                T("ffn_gate_inp_shexp.weight", COE_GGML_F32, E, 1, 1, 0, A(E));
                T("ffn_gate_shexp.weight", t, E, s->n_ff_shexp, 1, 0, A(E));
                T("ffn_up_shexp.weight", t, E, s->n_ff_shexp, 1, 0, A(E));
                T("ffn_down_shexp.weight", t, s->n_ff_shexp, E, 1, 0, A(s->n_ff_shexp));
            }
        } else {
            T("ffn_gate.weight", t, E, s->n_ff, 1, 0, A(E));
            T("ffn_up.weight", t, E, s->n_ff, 1, 0, A(E));
            T("ffn_down.weight", t, s->n_ff, E, 1, 0, A(s->n_ff));
        }
#undef T
    }
    /* Last, so that the other weights are the same with it and without. */
    if (s->rope_freqs)
        tensor(&f, "rope_freqs.weight", COE_GGML_F32, (s->arch == COE_ARCH_DEEPSEEK2 ? s->rope_dim : hd) / 2, 1, 1,
               s->rope_freqs, 0);
#undef A
#undef KV_U32
#undef KV_F32
    rc = f.rc ? f.rc : coe_gguf_writer_save(f.w, path, diag);
    coe_gguf_writer_free(&f.w);
    coe_threads_free(&f.team);
    for (int i = 0; i < f.n_blobs; i++)
        free(f.blobs[i]);
    free(f.blobs);
    free_vocab(&vb);
    return rc;
}

/* ---- command line ---- */

static const char usage[] =
    "usage: coegate forge -o FILE [--arch llama|qwen2moe|olmoe|qwen3moe|granitemoe|deepseek2|phimoe]\n"
    "                     [--type TYPE] [--layers N] [--embd N] [--heads N] [--kv-heads N]\n"
    "                     [--head-dim N] [--ff N] [--experts N] [--experts-used K] [--ff-shared N]\n"
    "                     [--vocab N] [--context N] [--seed N]\n"
    "                     [--rope-scaling none|linear|yarn|longrope] [--rope-factor F]\n"
    "                     [--rope-freqs F] [--rope-orig N]\n"
    "  deepseek2:         [--q-lora N] [--kv-lora N] [--rope-dim N] [--v-head-dim N]\n"
    "                     [--dense-lead N] [--shared-experts N] [--gating softmax|sigmoid]\n"
    "                     [--groups N] [--groups-used N] [--weights-scale F] [--weights-norm 0|1]\n"
    "                     [--layout split|kv_b] [--yarn-log-mul F]\n"
    "\n"
    "Writes a random-weight GGUF model of a supported architecture, with a built-in\n"
    "SentencePiece vocabulary and a ChatML chat template. Weights are random, so text\n"
    "is gibberish; shapes, types, speed and the serving path are real. TYPE is one of\n"
    "f32 f16 bf16 q8_0 q4_0 q5_0 q4_1 q5_1 iq4_nl q2_k q3_k q4_k q5_k q6_k iq4_xs (default f32).\n"
    "Defaults: a 2-layer model of embedding 64 with 4 experts, 2 used. --ff is each\n"
    "expert's width (or the dense one with --experts 0); --ff-shared adds qwen2moe's\n"
    "shared expert (default 128 there). --rope-scaling and --rope-factor write those keys;\n"
    "--rope-freqs F adds a rope_freqs.weight tensor of F everywhere; --rope-orig writes\n"
    "rope.scaling.original_context_length. phimoe has biases and LongRoPE's short and long\n"
    "factors (the long ones for contexts beyond --rope-orig). deepseek2 (default: Q\n"
    "and KV ranks 32, rotary 16, key head 32, value head 32, one dense layer, one shared\n"
    "expert, softmax): --gating sigmoid adds the selection bias; --layout kv_b writes the\n"
    "older attn_kv_b instead of attn_k_b and attn_v_b.\n";

static bool parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v > 100000000)
        return false;
    *out = (int)v;
    return true;
}

int coe_forge_main(int argc, char **argv)
{
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    static const struct {
        const char *name;
        coe_arch arch;
    } archs[] = {{"llama", COE_ARCH_LLAMA}, {"qwen2moe", COE_ARCH_QWEN2MOE}, {"olmoe", COE_ARCH_OLMOE},
                 {"qwen3moe", COE_ARCH_QWEN3MOE}, {"granitemoe", COE_ARCH_GRANITE},
                 {"deepseek2", COE_ARCH_DEEPSEEK2}, {"phimoe", COE_ARCH_PHIMOE}};
    /* The architecture's own defaults first, whatever the order of the options. */
    coe_arch first = COE_ARCH_LLAMA;
    for (int i = 0; i + 1 < argc; i++)
        for (size_t k = 0; strcmp(argv[i], "--arch") == 0 && k < sizeof archs / sizeof archs[0]; k++)
            if (strcmp(argv[i + 1], archs[k].name) == 0)
                first = archs[k].arch;
    coe_forge_spec s = coe_forge_small(first);
    const char *out = NULL;
    bool shexp_set = false;
    static const struct {
        const char *name;
        uint32_t type;
    } types[] = {{"f32", COE_GGML_F32}, {"f16", COE_GGML_F16}, {"bf16", COE_GGML_BF16}, {"q8_0", COE_GGML_Q8_0},
                 {"q4_0", COE_GGML_Q4_0}, {"q5_0", COE_GGML_Q5_0}, {"q4_1", COE_GGML_Q4_1}, {"q5_1", COE_GGML_Q5_1},
                 {"iq4_nl", COE_GGML_IQ4_NL}, {"iq4_xs", COE_GGML_IQ4_XS},
                 {"q2_k", COE_GGML_Q2_K}, {"q3_k", COE_GGML_Q3_K}, {"q4_k", COE_GGML_Q4_K}, {"q5_k", COE_GGML_Q5_K},
                 {"q6_k", COE_GGML_Q6_K}};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            fprintf(stderr, "coegate forge: %s needs a value\n%s", a, usage);
            return 2;
        }
        i++;
        bool ok = true;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            out = val;
        } else if (strcmp(a, "--arch") == 0) {
            size_t k = 0;
            while (k < sizeof archs / sizeof archs[0] && strcmp(val, archs[k].name) != 0)
                k++;
            ok = k < sizeof archs / sizeof archs[0];
            if (ok)
                s.arch = archs[k].arch;
        } else if (strcmp(a, "--type") == 0) {
            size_t k = 0;
            while (k < sizeof types / sizeof types[0] && strcasecmp(val, types[k].name) != 0)
                k++;
            ok = k < sizeof types / sizeof types[0];
            if (ok)
                s.type = types[k].type;
        } else if (strcmp(a, "--layers") == 0) {
            ok = parse_int(val, &s.n_layer);
        } else if (strcmp(a, "--embd") == 0) {
            ok = parse_int(val, &s.n_embd);
        } else if (strcmp(a, "--heads") == 0) {
            ok = parse_int(val, &s.n_head);
        } else if (strcmp(a, "--kv-heads") == 0) {
            ok = parse_int(val, &s.n_head_kv);
        } else if (strcmp(a, "--head-dim") == 0) {
            ok = parse_int(val, &s.head_dim);
        } else if (strcmp(a, "--ff") == 0) {
            ok = parse_int(val, &s.n_ff);
        } else if (strcmp(a, "--experts") == 0) {
            ok = parse_int(val, &s.n_expert);
        } else if (strcmp(a, "--experts-used") == 0) {
            ok = parse_int(val, &s.n_expert_used);
        } else if (strcmp(a, "--ff-shared") == 0) {
            ok = parse_int(val, &s.n_ff_shexp);
            shexp_set = true;
        } else if (strcmp(a, "--vocab") == 0) {
            ok = parse_int(val, &s.n_vocab);
        } else if (strcmp(a, "--context") == 0) {
            ok = parse_int(val, &s.n_ctx);
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            s.seed = strtoull(val, &end, 10);
            ok = *val && !*end;
        } else if (strcmp(a, "--q-lora") == 0) {
            ok = parse_int(val, &s.n_lora_q);
        } else if (strcmp(a, "--kv-lora") == 0) {
            ok = parse_int(val, &s.n_lora_kv);
        } else if (strcmp(a, "--rope-dim") == 0) {
            ok = parse_int(val, &s.rope_dim);
        } else if (strcmp(a, "--v-head-dim") == 0) {
            ok = parse_int(val, &s.v_head_dim);
        } else if (strcmp(a, "--rope-orig") == 0) {
            ok = parse_int(val, &s.rope_orig);
        } else if (strcmp(a, "--dense-lead") == 0) {
            ok = parse_int(val, &s.n_dense_lead);
        } else if (strcmp(a, "--shared-experts") == 0) {
            ok = parse_int(val, &s.n_shared);
        } else if (strcmp(a, "--groups") == 0) {
            ok = parse_int(val, &s.n_group);
        } else if (strcmp(a, "--groups-used") == 0) {
            ok = parse_int(val, &s.n_group_used);
        } else if (strcmp(a, "--gating") == 0) {
            ok = strcmp(val, "softmax") == 0 || strcmp(val, "sigmoid") == 0;
            s.sigmoid = strcmp(val, "sigmoid") == 0;
        } else if (strcmp(a, "--weights-norm") == 0) {
            ok = strcmp(val, "0") == 0 || strcmp(val, "1") == 0;
            s.norm_w = strcmp(val, "1") == 0;
        } else if (strcmp(a, "--layout") == 0) {
            ok = strcmp(val, "split") == 0 || strcmp(val, "kv_b") == 0;
            s.kv_b = strcmp(val, "kv_b") == 0;
        } else if (strcmp(a, "--weights-scale") == 0 || strcmp(a, "--yarn-log-mul") == 0) {
            char *end;
            float v = strtof(val, &end);
            ok = *val && !*end && v > 0 && v < 1e6;
            *(a[2] == 'w' ? &s.weights_scale : &s.yarn_log_mul) = v;
        } else if (strcmp(a, "--rope-scaling") == 0) {
            s.rope_scaling = val;
            ok = strcmp(val, "none") == 0 || strcmp(val, "linear") == 0 || strcmp(val, "yarn") == 0 ||
                 strcmp(val, "longrope") == 0;
        } else if (strcmp(a, "--rope-factor") == 0 || strcmp(a, "--rope-freqs") == 0) {
            char *end;
            float f = strtof(val, &end);
            ok = *val && !*end && f > 0 && f < 1e6;
            if (strcmp(a, "--rope-factor") == 0)
                s.rope_factor = f;
            else
                s.rope_freqs = f;
        } else {
            fprintf(stderr, "coegate forge: unknown option %s\n%s", a, usage);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "coegate forge: %s: invalid value '%s'\n", a, val);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "coegate forge: -o FILE is required\n%s", usage);
        return 2;
    }
    if (!shexp_set)
        s.n_ff_shexp = s.arch == COE_ARCH_QWEN2MOE ? 2 * s.n_ff : 0;
    if (s.arch == COE_ARCH_DEEPSEEK2) /* its key/value heads follow from the layout */
        s.n_head_kv = s.n_head;
    coe_buf diag = COE_BUF_INIT;
    int rc = coe_forge_write(&s, out, &diag);
    if (rc) {
        fputs(diag.data ? diag.data : "coegate forge: failed\n", stderr);
        coe_buf_free(&diag);
        return 1;
    }
    coe_buf_free(&diag);
    printf("wrote %s\n", out);
    return 0;
}
