#include "experts/model_info.h"

#include "experts/tokenizer.h"

#include <stdio.h>
#include <string.h>

#include "experts/chat.h"

/* The string value of key, or NULL. */
static const coe_gguf_str *str_kv(const coe_gguf *g, const char *key)
{
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    return kv && kv->value.type == COE_GGUF_STRING ? &kv->value.str : NULL;
}

/* The integer value of ARCH.suffix, or -1. */
static long long arch_int(const coe_gguf *g, const coe_gguf_str *arch, const char *suffix)
{
    char key[256];
    snprintf(key, sizeof key, "%.*s.%s", (int)(arch ? arch->len : 0), arch ? arch->ptr : "", suffix);
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    uint64_t v;
    return kv && coe_gguf_get_u64(&kv->value, &v) ? (long long)v : -1;
}

/* A count that may be unknown (-1), for printing. */
static const char *num(long long v, char *buf, size_t n)
{
    if (v < 0)
        return "?";
    snprintf(buf, n, "%lld", v);
    return buf;
}

static void human(coe_buf *b, double n, const char *unit)
{
    static const char *const prefixes[] = {"", "K", "M", "G", "T"};
    int p = 0;
    while (n >= 1000 && p < 4)
        n /= 1000, p++;
    coe_buf_printf(b, p ? "%.2f %s%s" : "%.0f%s%s", n, prefixes[p], unit);
}

int coe_model_info(const coe_gguf *g, coe_buf *b)
{
    coe_buf_printf(b, "%s\n  format        GGUF v%u, %llu keys, %llu tensors, alignment %u, ", g->path, g->version,
                   (unsigned long long)g->n_kvs, (unsigned long long)g->n_tensors, g->alignment);
    human(b, (double)g->size, "B");
    coe_buf_puts(b, "\n");

    const coe_gguf_str *arch = str_kv(g, "general.architecture");
    const coe_gguf_str *name = str_kv(g, "general.name");
    coe_buf_printf(b, "  architecture  %.*s", (int)(arch ? arch->len : 7), arch ? arch->ptr : "unknown");
    if (name)
        coe_buf_printf(b, " (\"%.*s\")", (int)(name->len < 80 ? name->len : 80), name->ptr);
    coe_buf_puts(b, "\n");
    long long n_expert = arch ? arch_int(g, arch, "expert_count") : -1;
    long long n_used = arch ? arch_int(g, arch, "expert_used_count") : -1;
    if (arch) {
        char v[6][24];
        coe_buf_printf(b, "  shape         %s blocks, embedding %s, %s heads (%s for keys and values), "
                          "feed-forward %s, context %s\n",
                       num(arch_int(g, arch, "block_count"), v[0], 24),
                       num(arch_int(g, arch, "embedding_length"), v[1], 24),
                       num(arch_int(g, arch, "attention.head_count"), v[2], 24),
                       num(arch_int(g, arch, "attention.head_count_kv"), v[3], 24),
                       num(arch_int(g, arch, "feed_forward_length"), v[4], 24),
                       num(arch_int(g, arch, "context_length"), v[5], 24));
    }
    if (n_expert > 0) {
        char v[24];
        coe_buf_printf(b, "  experts       %lld, %s used per token\n", n_expert, num(n_used, v, sizeof v));
    }

    /* Parameters: every tensor; active per token counts only the used share of the
     * stacked expert tensors (*_exps, whose last dimension is the expert). */
    double total = 0, active = 0;
    double by_type[64] = {0};
    int tensors_by_type[64] = {0};
    double bytes_by_type[64] = {0};
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const coe_gguf_tensor *t = &g->tensors[i];
        double n = (double)t->n_elements;
        total += n;
        bool stacked = n_expert > 0 && n_used > 0 && t->n_dims == 3 && t->dims[2] == (uint64_t)n_expert &&
                       t->name.len > 13 && memmem(t->name.ptr, t->name.len, "_exps", 5);
        active += stacked ? n * (double)n_used / (double)n_expert : n;
        if ((unsigned)t->type < 64) {
            by_type[t->type] += n;
            tensors_by_type[t->type]++;
            bytes_by_type[t->type] += (double)t->n_bytes;
        }
    }
    coe_buf_puts(b, "  parameters    ");
    human(b, total, "");
    if (n_expert > 0) {
        coe_buf_puts(b, " total, ");
        human(b, active, "");
        coe_buf_puts(b, " active per token");
    }
    coe_buf_puts(b, "\n  tensor types ");
    for (int t = 0; t < 64; t++)
        if (tensors_by_type[t]) {
            coe_buf_printf(b, " %s: %d tensors, ", coe_ggml_type_name((uint32_t)t), tensors_by_type[t]);
            human(b, by_type[t], " params, ");
            human(b, bytes_by_type[t], "B;");
        }
    coe_buf_puts(b, "\n");

    const coe_gguf_str *tok = str_kv(g, "tokenizer.ggml.model");
    const coe_gguf_kv *tokens = coe_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (tok) {
        const coe_gguf_str *pre = str_kv(g, "tokenizer.ggml.pre");
        uint64_t bos = 0, eos = 0;
        const coe_gguf_kv *kb = coe_gguf_find_kv(g, "tokenizer.ggml.bos_token_id");
        const coe_gguf_kv *ke = coe_gguf_find_kv(g, "tokenizer.ggml.eos_token_id");
        coe_buf_printf(b, "  vocabulary    %.*s tokenizer, %llu tokens", (int)tok->len, tok->ptr,
                       (unsigned long long)(tokens && tokens->value.type == COE_GGUF_ARRAY ? tokens->value.count : 0));
        if (pre)
            coe_buf_printf(b, ", pre-tokenizer %.*s", (int)pre->len, pre->ptr);
        if (kb && coe_gguf_get_u64(&kb->value, &bos))
            coe_buf_printf(b, ", bos %llu", (unsigned long long)bos);
        if (ke && coe_gguf_get_u64(&ke->value, &eos))
            coe_buf_printf(b, ", eos %llu", (unsigned long long)eos);
        coe_buf_puts(b, "\n");
    } else {
        coe_buf_puts(b, "  vocabulary    none\n");
    }
    const coe_gguf_str *tmpl = str_kv(g, "tokenizer.chat_template");
    if (tmpl) {
        size_t first = 0;
        while (first < tmpl->len && first < 100 && tmpl->ptr[first] != '\n')
            first++;
        coe_chat_family f;
        if (coe_chat_detect(tmpl->ptr, tmpl->len, &f))
            coe_buf_printf(b, "  chat template %s (recognized; %llu characters), beginning: ", coe_chat_family_name(f),
                           (unsigned long long)tmpl->len);
        else
            coe_buf_printf(b, "  chat template not recognized (name the family with the expert's \"chat_template\"; "
                              "%llu characters), beginning: ", (unsigned long long)tmpl->len);
        coe_buf_json_string(b, tmpl->ptr, first);
        coe_buf_puts(b, "\n");
    } else {
        coe_buf_puts(b, "  chat template none (a local expert uses chatml unless told otherwise)\n");
    }
    return 0;
}

int coe_model_tokenize(const coe_gguf *g, const char *text, size_t n, bool prompt, coe_buf *out, coe_buf *diag)
{
    coe_vocab v;
    int rc = coe_vocab_load(&v, g, diag);
    if (rc)
        return rc;
    int32_t *ids = NULL;
    size_t n_ids = 0, cap = 0;
    rc = (prompt ? coe_tokenize_prompt : coe_tokenize)(&v, text, n, &ids, &n_ids, &cap);
    for (size_t i = 0; i < n_ids && !rc; i++)
        coe_buf_printf(out, "%s%d", i ? " " : "", ids[i]);
    if (!rc)
        coe_buf_puts(out, "\n");
    free(ids);
    coe_vocab_free(&v);
    return rc;
}
