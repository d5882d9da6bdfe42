#include "experts/tokenizer.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"
#include "experts/unicode.h"

/* The text of string id of a GGUF string array (tokens, merges), for coe_strtab. */
static void gguf_key(const void *strings, int32_t id, const char **s, size_t *n)
{
    const coe_gguf_str *x = (const coe_gguf_str *)strings + id;
    *s = x->ptr;
    *n = x->len;
}

int coe_vocab_find(const coe_vocab *v, const char *s, size_t n)
{
    return coe_strtab_find(&v->ids, gguf_key, v->text, s, n);
}

static int token_id(const coe_gguf *g, const char *key, int n)
{
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    uint64_t id;
    return kv && coe_gguf_get_u64(&kv->value, &id) && id < (uint64_t)n ? (int)id : -1;
}

static bool str_is(const coe_gguf_str *s, const char *want)
{
    return s->len == strlen(want) && memcmp(s->ptr, want, s->len) == 0;
}

/* GPT-2's reversible map of bytes to printable code points. */
static void byte_chars(coe_vocab *v)
{
    int extra = 0;
    for (int i = 0; i < 324; i++)
        v->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        v->byte_char[b] = printable ? b : 256 + extra++;
        v->char_byte[v->byte_char[b]] = (int16_t)b;
    }
}

static int by_length_desc(const void *a, const void *b, void *arg)
{
    const coe_vocab *v = arg;
    uint64_t la = v->text[*(const int *)a].len, lb = v->text[*(const int *)b].len;
    return la < lb ? 1 : la > lb ? -1 : *(const int *)a - *(const int *)b;
}

static int find_merge(const coe_vocab *v, const char *s, size_t n)
{
    return coe_strtab_find(&v->ranks, gguf_key, v->merges, s, n);
}

static int load_bpe(coe_vocab *v, const coe_gguf *g, coe_buf *diag)
{
    const coe_gguf_kv *merges = coe_gguf_find_kv(g, "tokenizer.ggml.merges");
    if (!merges || merges->value.type != COE_GGUF_ARRAY || merges->value.elem_type != COE_GGUF_STRING ||
        merges->value.count > (1u << 24)) {
        coe_buf_printf(diag, "%s: key 'tokenizer.ggml.merges' must be an array of strings for a BPE vocabulary\n",
                       g->path);
        return COE_EINVAL;
    }
    v->merges = merges->value.strings;
    v->n_merges = (int)merges->value.count;
    if (!coe_strtab_init(&v->ranks, (size_t)v->n_merges))
        return COE_ENOMEM;
    for (int r = 0; r < v->n_merges; r++)
        coe_strtab_add(&v->ranks, gguf_key, v->merges, r); /* the lower rank of a repeated merge wins */
    byte_chars(v);
    static const struct {
        const char *name;
        coe_pretok pre;
    } pres[] = {
        /* llama.cpp's names, grouped by the expressions they share (llama-vocab.cpp) */
        {"default", COE_PRE_DEFAULT},
        {"gpt-2", COE_PRE_GPT2}, {"phi-2", COE_PRE_GPT2}, {"jina-es", COE_PRE_GPT2}, {"jina-de", COE_PRE_GPT2},
        {"gigachat", COE_PRE_GPT2}, {"jina-v2-es", COE_PRE_GPT2}, {"jina-v2-de", COE_PRE_GPT2},
        {"a.x-4.0", COE_PRE_GPT2}, {"mellum", COE_PRE_GPT2}, {"jina-v1-en", COE_PRE_GPT2},
        {"jina-v2-code", COE_PRE_GPT2}, {"roberta-bpe", COE_PRE_GPT2}, {"mpt", COE_PRE_GPT2}, {"olmo", COE_PRE_GPT2},
        {"jais", COE_PRE_GPT2}, {"trillion", COE_PRE_GPT2}, {"granite-docling", COE_PRE_GPT2},
        {"exaone4", COE_PRE_GPT2},
        {"llama3", COE_PRE_LLAMA3}, {"llama-v3", COE_PRE_LLAMA3}, {"llama-bpe", COE_PRE_LLAMA3},
        {"falcon3", COE_PRE_LLAMA3}, {"falcon-h1", COE_PRE_LLAMA3}, {"pixtral", COE_PRE_LLAMA3},
        {"midm-2.0", COE_PRE_LLAMA3}, {"lfm2", COE_PRE_LLAMA3},
        {"dbrx", COE_PRE_DBRX}, {"smaug-bpe", COE_PRE_DBRX}, {"glm4", COE_PRE_DBRX}, {"chatglm-bpe", COE_PRE_DBRX},
        {"qwen2", COE_PRE_QWEN2}, {"deepseek-r1-qwen", COE_PRE_QWEN2}, {"kormo", COE_PRE_QWEN2},
        {"stablelm2", COE_PRE_QWEN2}, {"megrez", COE_PRE_QWEN2}, {"hunyuan", COE_PRE_QWEN2},
        {"grok-2", COE_PRE_QWEN2}, {"qwen35", COE_PRE_QWEN35}, {"deepseek-llm", COE_PRE_DEEPSEEK_LLM},
        {"f2llmv2", COE_PRE_QWEN2}, {"solar-open", COE_PRE_QWEN2}, {"jina-v5-nano", COE_PRE_LLAMA3},
        {"kanana2", COE_PRE_GPT4O}, {"talkie", COE_PRE_GPT4O}, {"modern-bert", COE_PRE_GPT2},
        {"mellum2", COE_PRE_STARCODER}, {"hy_v4", COE_PRE_DEEPSEEK3}, {"joyai-llm", COE_PRE_DEEPSEEK3},
        {"gemma4", COE_PRE_LINES}, {"granite-embed-multi-311m", COE_PRE_LINES}, {"sarvam-moe", COE_PRE_LINES},
        {"laguna", COE_PRE_LAGUNA}, {"ufakzeka", COE_PRE_UFAKZEKA}, {"whitespace", COE_PRE_WHITESPACE},
        {"minicpm5", COE_PRE_MINICPM5}, {"spark2_5", COE_PRE_SPARK}, {"jais-2", COE_PRE_JAIS2},
        {"exaone-moe", COE_PRE_EXAONE_MOE}, {"tiny_aya", COE_PRE_TINY_AYA}, {"cohere2moe", COE_PRE_TINY_AYA},
        {"youtu", COE_PRE_YOUTU}, {"granite-embed-multi-97m", COE_PRE_GRANITE_EMB},
        {"deepseek-coder", COE_PRE_DEEPSEEK_CODER},
        {"starcoder", COE_PRE_STARCODER}, {"refact", COE_PRE_STARCODER}, {"command-r", COE_PRE_STARCODER},
        {"smollm", COE_PRE_STARCODER}, {"codeshell", COE_PRE_STARCODER}, {"exaone", COE_PRE_STARCODER},
        {"minerva-7b", COE_PRE_STARCODER},
        {"falcon", COE_PRE_FALCON},
        {"poro-chat", COE_PRE_BLOOM}, {"bloom", COE_PRE_BLOOM}, {"gpt3-finnish", COE_PRE_BLOOM},
        {"viking", COE_PRE_VIKING},
        {"tekken", COE_PRE_TEKKEN},
        {"gpt-4o", COE_PRE_GPT4O}, {"llama4", COE_PRE_GPT4O}, {"minimax-m2", COE_PRE_GPT4O},
        {"deepseek-v3", COE_PRE_DEEPSEEK3}, {"hunyuan-dense", COE_PRE_DEEPSEEK3},
        {"seed-coder", COE_PRE_SEED_CODER},
        /* bailingmoe's \s*[\r\n] ends at the run's last newline too: qwen2's expression */
        {"bailingmoe", COE_PRE_QWEN2}, {"bailingmoe2", COE_PRE_QWEN2}, {"llada-moe", COE_PRE_QWEN2},
    };
    const coe_gguf_kv *pre = coe_gguf_find_kv(g, "tokenizer.ggml.pre");
    v->pre = COE_PRE_DEFAULT;
    if (pre && pre->value.type == COE_GGUF_STRING) {
        size_t i = 0;
        while (i < sizeof pres / sizeof pres[0] && !str_is(&pre->value.str, pres[i].name))
            i++;
        if (i == sizeof pres / sizeof pres[0]) {
            coe_buf_printf(diag, "%s: pre-tokenizer '%.*s' (key 'tokenizer.ggml.pre') is not supported (see the "
                                 "README: chameleon, kimi-k2, superbpe and afmoe are refused, and so is any "
                                 "name llama.cpp does not know)\n",
                           g->path, (int)(pre->value.str.len < 64 ? pre->value.str.len : 64), pre->value.str.ptr);
            return COE_EUNSUPPORTED;
        }
        v->pre = pres[i].pre;
    }
    return 0;
}

/* llama.cpp's token attributes that no GGUF key holds: it sets them by the model's
 * name. For Phi-3 ("phi-3" or "phi3" in general.name, any case), every special token
 * but <unk>, <s> and <|endoftext|> strips the whitespace after it, so "<|user|>\nhi"
 * reads as <|user|> then "hi". (Its LSTRIP rules are for BERT vocabularies, which
 * coegate does not load.) */
static int set_strip_attributes(coe_vocab *v, const coe_gguf *g)
{
    const coe_gguf_kv *name = coe_gguf_find_kv(g, "general.name");
    if (!name || name->value.type != COE_GGUF_STRING)
        return 0;
    char lower[256];
    size_t n = name->value.str.len < sizeof lower - 1 ? name->value.str.len : sizeof lower - 1;
    for (size_t i = 0; i < n; i++)
        lower[i] = (char)tolower((unsigned char)name->value.str.ptr[i]);
    lower[n] = '\0';
    if (!strstr(lower, "phi-3") && !strstr(lower, "phi3"))
        return 0;
    if (!(v->rstrip = calloc((size_t)v->n, 1)))
        return COE_ENOMEM;
    for (int i = 0; i < v->n_special; i++)
        v->rstrip[v->special[i]] = 1;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    int eos_text = coe_vocab_find(v, "</s>", 4);
    if (eos_text >= 0)
        v->rstrip[eos_text] = 1;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        int id = coe_vocab_find(v, keep[i], strlen(keep[i]));
        if (id >= 0)
            v->rstrip[id] = 0;
    }
    return 0;
}

int coe_vocab_load(coe_vocab *v, const coe_gguf *g, coe_buf *diag)
{
    memset(v, 0, sizeof *v);
    const coe_gguf_kv *model = coe_gguf_find_kv(g, "tokenizer.ggml.model");
    if (!model || model->value.type != COE_GGUF_STRING) {
        coe_buf_printf(diag, "%s: key 'tokenizer.ggml.model' is missing\n", g->path);
        return COE_EINVAL;
    }
    if (str_is(&model->value.str, "llama")) {
        v->kind = COE_VOCAB_SPM;
    } else if (str_is(&model->value.str, "gpt2")) {
        v->kind = COE_VOCAB_BPE;
    } else {
        coe_buf_printf(diag, "%s: tokenizer '%.*s' (key 'tokenizer.ggml.model') is not supported "
                             "(SentencePiece 'llama' and byte-level BPE 'gpt2' are)\n", g->path,
                       (int)(model->value.str.len < 64 ? model->value.str.len : 64), model->value.str.ptr);
        return COE_EUNSUPPORTED;
    }
    const coe_gguf_kv *tokens = coe_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tokens || tokens->value.type != COE_GGUF_ARRAY || tokens->value.elem_type != COE_GGUF_STRING ||
        tokens->value.count == 0 || tokens->value.count > (1u << 24)) {
        coe_buf_printf(diag, "%s: key 'tokenizer.ggml.tokens' must be a non-empty array of strings\n", g->path);
        return COE_EINVAL;
    }
    v->n = (int)tokens->value.count;
    v->text = tokens->value.strings;
    const coe_gguf_kv *scores = coe_gguf_find_kv(g, "tokenizer.ggml.scores");
    const coe_gguf_kv *types = coe_gguf_find_kv(g, "tokenizer.ggml.token_type");
    if ((scores && scores->value.count != tokens->value.count) || (types && types->value.count != tokens->value.count)) {
        coe_buf_printf(diag, "%s: keys 'tokenizer.ggml.scores' and 'token_type' must have one entry per token\n",
                       g->path);
        return COE_EINVAL;
    }
    v->score = calloc((size_t)v->n, sizeof *v->score);
    v->type = calloc((size_t)v->n, sizeof *v->type);
    v->special = calloc((size_t)v->n, sizeof *v->special);
    if (!coe_strtab_init(&v->ids, (size_t)v->n) || !v->score || !v->type || !v->special) {
        coe_vocab_free(v);
        return COE_ENOMEM;
    }
    for (int i = 0; i < 256; i++)
        v->byte_token[i] = -1;
    for (int id = 0; id < v->n; id++) {
        double s = 0;
        int64_t t = 1;
        if (scores)
            coe_gguf_array_f64(&scores->value, (uint64_t)id, &s);
        if (types)
            coe_gguf_array_i64(&types->value, (uint64_t)id, &t);
        v->score[id] = (float)s;
        v->type[id] = (int32_t)t;
        const coe_gguf_str *x = &v->text[id];
        coe_strtab_add(&v->ids, gguf_key, v->text, id); /* the first of duplicate texts wins */
        unsigned b;
        if (t == 6 && x->len == 6 && sscanf(x->ptr, "<0x%2X>", &b) == 1 && b < 256)
            v->byte_token[b] = id;
        if ((t == 2 || t == 3 || t == 4) && x->len > 0) {
            v->special[v->n_special++] = id;
            unsigned char c = (unsigned char)x->ptr[0];
            v->special_first[c / 8] |= (uint8_t)(1u << (c % 8));
        }
    }
    qsort_r(v->special, (size_t)v->n_special, sizeof *v->special, by_length_desc, v);
    v->unk = token_id(g, "tokenizer.ggml.unknown_token_id", v->n);
    v->bos = token_id(g, "tokenizer.ggml.bos_token_id", v->n);
    v->eos = token_id(g, "tokenizer.ggml.eos_token_id", v->n);
    v->eot = token_id(g, "tokenizer.ggml.eot_token_id", v->n);
    static const char *const turn_ends[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|EOT|>"};
    for (size_t i = 0; v->eot < 0 && i < sizeof turn_ends / sizeof turn_ends[0]; i++)
        v->eot = coe_vocab_find(v, turn_ends[i], strlen(turn_ends[i]));
    if (set_strip_attributes(v, g)) {
        coe_vocab_free(v);
        return COE_ENOMEM;
    }
    /* SentencePiece adds a space prefix and BOS unless told otherwise; BPE neither,
     * except the llama-3 and tekken pre-tokenizers' vocabularies (BOS), as llama.cpp. */
    v->add_space_prefix = v->kind == COE_VOCAB_SPM;
    const coe_gguf_kv *asp = coe_gguf_find_kv(g, "tokenizer.ggml.add_space_prefix");
    if (asp)
        coe_gguf_get_bool(&asp->value, &v->add_space_prefix);
    if (v->kind == COE_VOCAB_BPE) {
        int rc = load_bpe(v, g, diag);
        if (rc) {
            coe_vocab_free(v);
            return rc;
        }
    }
    v->add_bos = v->kind == COE_VOCAB_SPM || v->pre == COE_PRE_LLAMA3 || v->pre == COE_PRE_TEKKEN;
    const coe_gguf_kv *ab = coe_gguf_find_kv(g, "tokenizer.ggml.add_bos_token");
    if (ab)
        coe_gguf_get_bool(&ab->value, &v->add_bos);
    return 0;
}

void coe_vocab_free(coe_vocab *v)
{
    free(v->score);
    free(v->type);
    coe_strtab_free(&v->ids);
    free(v->special);
    free(v->rstrip);
    coe_strtab_free(&v->ranks);
    memset(v, 0, sizeof *v);
}

static int push(int32_t **out, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *p = realloc(*out, c * sizeof *p);
        if (!p)
            return COE_ENOMEM;
        *out = p;
        *cap = c;
    }
    (*out)[(*n)++] = id;
    return 0;
}

/* ---- SentencePiece: merge the adjacent pair whose concatenation is the best-scored
 * token, until none is; what is left and not a token falls back to bytes. ---- */

typedef struct symbol {
    int prev, next;   /* -1 at the ends */
    size_t at, len;   /* in the escaped text; len 0 once merged away */
} symbol;

typedef struct bigram {
    int left, right;
    float score;
    size_t len;
} bigram;

/* Max-heap order: higher score first, then the leftmost. */
static bool before(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct heap {
    bigram *v;
    size_t n, cap;
} heap;

static int heap_push(heap *h, bigram b)
{
    if (h->n == h->cap) {
        size_t c = h->cap ? h->cap * 2 : 64;
        bigram *p = realloc(h->v, c * sizeof *p);
        if (!p)
            return COE_ENOMEM;
        h->v = p;
        h->cap = c;
    }
    size_t i = h->n++;
    h->v[i] = b;
    while (i > 0 && before(&h->v[i], &h->v[(i - 1) / 2])) {
        bigram t = h->v[i];
        h->v[i] = h->v[(i - 1) / 2];
        h->v[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 0;
}

static bigram heap_pop(heap *h)
{
    bigram top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (size_t i = 0;;) {
        size_t a = 2 * i + 1, b = a + 1, m = i;
        if (a < h->n && before(&h->v[a], &h->v[m]))
            m = a;
        if (b < h->n && before(&h->v[b], &h->v[m]))
            m = b;
        if (m == i)
            break;
        bigram t = h->v[i];
        h->v[i] = h->v[m];
        h->v[m] = t;
        i = m;
    }
    return top;
}

/* The score of merging two adjacent symbols into one, or false when they do not
 * merge: SentencePiece takes the joined token's score, BPE minus the merge's rank. */
typedef bool (*pair_score_fn)(const coe_vocab *v, const char *s, const symbol *l, const symbol *r, coe_buf *key,
                              float *score);

static bool spm_score(const coe_vocab *v, const char *s, const symbol *l, const symbol *r, coe_buf *key, float *score)
{
    (void)key;
    int id = coe_vocab_find(v, s + l->at, l->len + r->len);
    if (id >= 0)
        *score = v->score[id];
    return id >= 0;
}

static int find_merge(const coe_vocab *v, const char *s, size_t n);

static bool bpe_score(const coe_vocab *v, const char *s, const symbol *l, const symbol *r, coe_buf *key, float *score)
{
    coe_buf_reset(key);
    coe_buf_append(key, s + l->at, l->len);
    coe_buf_puts(key, " ");
    coe_buf_append(key, s + r->at, r->len);
    int rank = find_merge(v, key->data, key->len);
    if (rank >= 0)
        *score = -(float)rank;
    return rank >= 0;
}

static int try_pair(const coe_vocab *v, const char *s, const symbol *sym, int left, int right, heap *h, coe_buf *key,
                    pair_score_fn score_of)
{
    float score;
    if (left < 0 || right < 0 || !score_of(v, s, &sym[left], &sym[right], key, &score))
        return 0;
    return heap_push(h, (bigram){left, right, score, sym[left].len + sym[right].len});
}

static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Splits s into one symbol per UTF-8 character (as llama.cpp: by the lead byte), then
 * merges the best-scored adjacent pair (leftmost on ties) until none merges. Returns
 * the symbols (caller frees), the first at index 0 and linked by next; NULL when out
 * of memory. */
static symbol *merge_symbols(const coe_vocab *v, const char *s, size_t len, pair_score_fn score_of)
{
    symbol *sym = malloc((len + 1) * sizeof *sym);
    heap h = {0};
    coe_buf key = COE_BUF_INIT;
    int rc = sym ? 0 : COE_ENOMEM;
    int n_sym = 0;
    for (size_t i = 0; i < len && !rc;) {
        size_t k = utf8_len((unsigned char)s[i]);
        if (i + k > len)
            k = len - i;
        sym[n_sym] = (symbol){n_sym - 1, -1, i, k};
        if (n_sym > 0)
            sym[n_sym - 1].next = n_sym;
        n_sym++;
        i += k;
    }
    if (sym && n_sym == 0)
        sym[0] = (symbol){-1, -1, 0, 0};
    for (int i = 1; i < n_sym && !rc; i++)
        rc = try_pair(v, s, sym, i - 1, i, &h, &key, score_of);
    while (!rc && h.n > 0) {
        bigram b = heap_pop(&h);
        symbol *l = &sym[b.left], *r = &sym[b.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != b.len)
            continue; /* stale: one side has changed since */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        if (!(rc = try_pair(v, s, sym, l->prev, b.left, &h, &key, score_of)))
            rc = try_pair(v, s, sym, b.left, l->next, &h, &key, score_of);
    }
    free(h.v);
    coe_buf_free(&key);
    if (rc) {
        free(sym);
        return NULL;
    }
    return sym;
}

static int spm(const coe_vocab *v, const char *text, size_t n, bool prefix, int32_t **out, size_t *n_out,
               size_t *cap)
{
    /* Spaces become U+2581; SentencePiece adds one in front. */
    coe_buf s = COE_BUF_INIT;
    if (prefix && v->add_space_prefix)
        coe_buf_puts(&s, "\xE2\x96\x81");
    for (size_t i = 0; i < n; i++)
        if (text[i] == ' ')
            coe_buf_puts(&s, "\xE2\x96\x81");
        else
            coe_buf_append(&s, text + i, 1);
    symbol *sym = merge_symbols(v, s.data ? s.data : "", s.len, spm_score);
    int rc = sym ? 0 : COE_ENOMEM;
    for (int i = 0; i >= 0 && s.len && !rc; i = sym[i].next) {
        int id = coe_vocab_find(v, s.data + sym[i].at, sym[i].len);
        if (id >= 0) {
            rc = push(out, n_out, cap, id);
            continue;
        }
        for (size_t k = 0; k < sym[i].len && !rc; k++) {
            int b = v->byte_token[(unsigned char)s.data[sym[i].at + k]];
            rc = push(out, n_out, cap, b >= 0 ? b : v->unk >= 0 ? v->unk : 0);
        }
    }
    free(sym);
    coe_buf_free(&s);
    return rc;
}

/* ---- byte-level BPE ---- */

/* Text as code points, each with its byte offset (off[n] is the end). */
typedef struct cps {
    uint32_t *cp;
    size_t *off;
    size_t n;
} cps;

enum { IS_L = 1, IS_N = 2, IS_P = 4, IS_S = 8, IS_SYM = 16, IS_M = 32 };

static int flags(uint32_t c)
{
    return (coe_cp_is_letter(c) ? IS_L : 0) | (coe_cp_is_number(c) ? IS_N : 0) | (coe_cp_is_punct(c) ? IS_P : 0) |
           (coe_cp_is_space(c) ? IS_S : 0) | (coe_cp_is_symbol(c) ? IS_SYM : 0) | (coe_cp_is_mark(c) ? IS_M : 0);
}

/* The expressions of the pre-tokenizers, each matched at one position of a piece
 * [.., end): the length of the match (0: none). */
typedef enum expr {
    X_GPT2,       /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    X_LLAMA3,     /* the llama-3 expression, numbers in runs of up to 3 */
    X_QWEN2,      /* the same, one digit at a time */
    X_NEWLINE,    /* [\r\n] */
    X_S_LETTERS,  /* \s?\p{L}+ */
    X_S_PUNCT,    /* \s?\p{P}+ */
    X_CJK,        /* [一-龥ࠀ-一가-퟿]+ */
    X_NUMBER,     /* \p{N} */
    X_NUMBERS,    /* \p{N}+ */
    X_PUNCT_SYM,  /* [\p{P}\$\+<=>\^~\|]+ */
    X_PUNCT_SYM_TICK, /* [\p{P}\$\+<=>\^~\|`]+ (falcon) */
    X_DIGITS3,    /* [0-9][0-9][0-9] */
    X_BLOOM,      /*  ?[^(\s|.,!?…。，、।۔،)]+ */
    X_TEKKEN,     /* case-aware words (below), \p{N}, punctuation and '/' runs, spaces */
    X_GPT4O,      /* the same with contractions, \p{N}{1,3} */
    X_NUMBERS3,   /* \p{N}{1,3} */
    X_CJK_KANA,   /* [一-龥぀-ゟ゠-ヿ]+ */
    X_DEEPSEEK3,  /* ASCII punctuation with ASCII letters, words with marks, punctuation and symbols, spaces */
    X_SEED_CODER, /* qwen2's, punctuation without trailing newlines */
    X_QWEN35,     /* qwen2's with [\p{L}\p{M}]+ words and [^\s\p{L}\p{M}\p{N}]+ punctuation */
    X_S_DS_LETTERS, /* \s?[deepseek-llm's letters]+ */
    X_S_DS_PUNCT, /* \s?[!-/:-~！-／：-～‘-‟　-。]+ */
    X_SPACES_END, /* \s+$ */
    X_LINES,      /* [^\n]+|[\n]+ */
    X_UFAKZEKA,   /* qwen2's without the contractions */
    X_NONSPACE,   /* \S+ */
    X_SPARK,      /* deepseek-v3's third, punctuation without trailing newlines, [\r\n] alone */
    X_JAIS2,      /* llama-3's, with \s{512}(?!\S)|\s{256}(?!\S)|...|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1} */
    X_GRANITE_EMB, /* gpt-4o's, letters or marks in the cases */
    X_TINY_AYA,   /* gpt-4o's with caseless letters and marks (see upperish) */
    X_YOUTU,      /* the same, digits one at a time */
    X_DIGITS_R3,  /* \d{1,3}(?=(?:\d{3})*\b): ASCII numbers in threes from the right */
    X_YOUTU_CJK,  /* runs of Hangul, of CJK punctuation, of Bopomofo, of CJK and kana */
    X_EXAONE_MOE, /* contractions, [^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+, \p{N},
                     ?[^\s\p{L}\p{N}]+[\r\n/]?, \s*[\r\n], \s+(?!\S), \s+ */
} expr;

/* DeepSeek LLM's letters (its tokenizer's class, as llama.cpp spells it out): the cased
 * letters of an older Unicode, not \p{L}. */
static const uint32_t deepseek_letters[][2] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00B5, 0x00B5}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6}, {0x00F8, 0x01BA},
    {0x01BC, 0x01BF}, {0x01C4, 0x0293}, {0x0295, 0x02AF}, {0x0370, 0x0373}, {0x0376, 0x0377}, {0x037B, 0x037D},
    {0x037F, 0x037F}, {0x0386, 0x0386}, {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5},
    {0x03F7, 0x0481}, {0x048A, 0x052F}, {0x0531, 0x0556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E},
    {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};

static bool in_ranges(uint32_t c, const uint32_t (*r)[2], size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid][0])
            hi = mid;
        else if (c > r[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* youtu's first expression: which of its four runs c belongs to (0: none):
 * [가-힣ㄱ-ㆎ], [！…“”‘’—：；，、-〿︰-﹏], [ㄅ-ㄯ], [一-龥\u3040-ゟ゠-ヿ]. */
static int youtu_class(uint32_t c)
{
    if ((c >= 0xAC00 && c <= 0xD7A3) || (c >= 0x3131 && c <= 0x318E))
        return 1;
    if (c == 0xFF01 || c == 0x2026 || c == 0x201C || c == 0x201D || c == 0x2018 || c == 0x2019 || c == 0x2014 ||
        c == 0xFF1A || c == 0xFF1B || c == 0xFF0C || (c >= 0x3001 && c <= 0x303F) || (c >= 0xFE30 && c <= 0xFE4F))
        return 2;
    if (c >= 0x3105 && c <= 0x312F)
        return 3;
    if ((c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF))
        return 4;
    return 0;
}

static bool deepseek_letter(uint32_t c)
{
    return in_ranges(c, deepseek_letters, sizeof deepseek_letters / sizeof deepseek_letters[0]);
}

static bool deepseek_punct(uint32_t c)
{
    static const uint32_t r[][2] = {{0x21, 0x2F}, {0x3A, 0x7E}, {0x2018, 0x201F}, {0x3000, 0x3002},
                                    {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}};
    return in_ranges(c, r, sizeof r / sizeof r[0]);
}

static size_t run(const cps *t, size_t at, size_t end, int want, int avoid)
{
    size_t i = at;
    while (i < end && (flags(t->cp[i]) & want) && !(flags(t->cp[i]) & avoid))
        i++;
    return i - at;
}

/* [^\s\p{L}\p{N}] */
static bool other(uint32_t c)
{
    return !(flags(c) & (IS_S | IS_L | IS_N));
}

static size_t run_other(const cps *t, size_t at, size_t end)
{
    size_t i = at;
    while (i < end && other(t->cp[i]))
        i++;
    return i - at;
}

static uint32_t lower(uint32_t c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's 't 're 've 'm 'll 'd; case-insensitive for llama-3. */
static size_t contraction(const cps *t, size_t i, size_t end, bool any_case)
{
    if (t->cp[i] != '\'' || i + 1 >= end)
        return 0;
    uint32_t a = any_case ? lower(t->cp[i + 1]) : t->cp[i + 1];
    uint32_t b = i + 2 < end ? (any_case ? lower(t->cp[i + 2]) : t->cp[i + 2]) : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* \s+(?!\S)|\s+ : a run of spaces gives its last one to a following non-space. */
static size_t spaces(const cps *t, size_t i, size_t end)
{
    size_t n = run(t, i, end, IS_S, 0);
    if (n > 1 && i + n < end)
        n--;
    return n;
}

static bool newline(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* \s*[\r\n]+ over the `all` spaces from i: through their last newline, 0 if none. */
static size_t through_last_newline(const cps *t, size_t i, size_t all)
{
    size_t last_nl = 0;
    for (size_t k = 0; k < all; k++)
        if (newline(t->cp[i + k]))
            last_nl = k + 1;
    return last_nl;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ : through the last newline of a run of spaces, else as spaces(). */
static size_t space_tail(const cps *t, size_t i, size_t end)
{
    if (!(flags(t->cp[i]) & IS_S))
        return 0;
    size_t nl = through_last_newline(t, i, run(t, i, end, IS_S, 0));
    return nl ? nl : spaces(t, i, end);
}

/* jais-2's \s*[\r\n]+, else the longest of \s{512}(?!\S), \s{256}(?!\S), ..., \s{4}(?!\S),
 * \s{1,2}(?!\S), \s{1}: a run of spaces cut in powers of two, as its expression does. */
static size_t jais_spaces(const cps *t, size_t i, size_t end)
{
    if (!(flags(t->cp[i]) & IS_S))
        return 0;
    size_t all = run(t, i, end, IS_S, 0), nl = through_last_newline(t, i, all);
    if (nl)
        return nl;
    bool at_end = i + all == end; /* (?!\S) after the whole run */
    for (size_t k = 512; k >= 4; k /= 2)
        if (k < all || (k == all && at_end))
            return k;
    return 2 < all || (all == 2 && at_end) ? 2 : 1;
}

/* A letter that is not [a-z] (upper-ish) or not [A-Z] (lower-ish), as tekken's
 * ((?=[\p{L}])([^a-z])) and ((?=[\p{L}])([^A-Z])); with CASES_MARKS, letters or marks
 * (granite-embed-multi's [\p{L}\p{M}]); with CASES_NONE any letter or mark either way:
 * tiny_aya's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}], which llama.cpp's
 * collapsed expressions read as [\p{L}\p{M}] (every \p{L...} is one letter class there). */
enum { CASES_ASCII, CASES_MARKS, CASES_NONE };
static bool upperish(uint32_t c, int cases)
{
    return cases == CASES_NONE ? (flags(c) & (IS_L | IS_M)) != 0
                               : (flags(c) & (cases == CASES_MARKS ? IS_L | IS_M : IS_L)) && !(c >= 'a' && c <= 'z');
}

static bool lowerish(uint32_t c, int cases)
{
    return cases == CASES_NONE ? (flags(c) & (IS_L | IS_M)) != 0
                               : (flags(c) & (cases == CASES_MARKS ? IS_L | IS_M : IS_L)) && !(c >= 'A' && c <= 'Z');
}

/* [^\r\n\p{L}\p{N}]?U*L+|[^\r\n\p{L}\p{N}]?U+L* with backtracking, from i: the
 * length of the word, 0 if none. U and L as cases says. */
static size_t cased_word(const cps *t, size_t i, size_t end, int cases)
{
    for (int with_prefix = 1; with_prefix >= 0; with_prefix--) {
        size_t j = i;
        if (with_prefix) {
            uint32_t c = t->cp[i];
            if (newline(c) || (flags(c) & (IS_L | IS_N)) || i + 1 >= end)
                continue;
            j = i + 1;
        }
        size_t u = j;
        while (u < end && upperish(t->cp[u], cases))
            u++;
        /* U* then L+: give back upper-ish letters until a lower-ish one can start L+. */
        size_t l = u;
        while (l < end && lowerish(t->cp[l], cases))
            l++;
        if (l > u)
            return l - i;
        for (size_t q = u; q > j; q--)
            if (lowerish(t->cp[q - 1], cases))
                return q - i;
        if (u > j) /* U+ L* */
            return u - i;
    }
    return 0;
}

/* (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])? after a word. */
static size_t optional_contraction(const cps *t, size_t i, size_t end)
{
    return i < end ? contraction(t, i, end, true) : 0;
}

/*  ?[^\s\p{L}\p{N}]+ followed by any of also (a string of ASCII) */
static size_t punct_then(const cps *t, size_t i, size_t end, const char *also)
{
    size_t j = i + (t->cp[i] == ' ' && i + 1 < end);
    if (!(j < end && other(t->cp[j])))
        return 0;
    j += run_other(t, j, end);
    while (j < end && t->cp[j] < 128 && strchr(also, (int)t->cp[j]) && t->cp[j])
        j++;
    return j - i;
}

static bool bloom_char(uint32_t c)
{
    static const uint32_t stop[] = {'(', '|', '.', ',', '!', '?', ')', 0x2026, 0x3002, 0xFF0C, 0x3001, 0x0964, 0x06D4,
                                    0x060C};
    if (flags(c) & IS_S)
        return false;
    for (size_t k = 0; k < sizeof stop / sizeof stop[0]; k++)
        if (c == stop[k])
            return false;
    return true;
}

static bool ascii_punct(uint32_t c)
{
    return c < 128 && c && strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", (int)c);
}

static bool ascii_letter(uint32_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static size_t match(expr x, const cps *t, size_t i, size_t end)
{
    uint32_t c = t->cp[i];
    int f = flags(c);
    size_t n;
    switch (x) {
    case X_GPT2:
        if ((n = contraction(t, i, end, false)))
            return n;
        {
            size_t j = i + (c == ' ' && i + 1 < end);
            int g = j < end ? flags(t->cp[j]) : 0;
            if (g & IS_L)
                return j - i + run(t, j, end, IS_L, 0);
            if (g & IS_N)
                return j - i + run(t, j, end, IS_N, 0);
            if (j < end && other(t->cp[j]))
                return j - i + run_other(t, j, end);
        }
        return spaces(t, i, end);
    case X_LLAMA3:
    case X_QWEN2:
    case X_UFAKZEKA:
    case X_JAIS2:
        if (x != X_UFAKZEKA && (n = contraction(t, i, end, true)))
            return n;
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (f & IS_L)
            return run(t, i, end, IS_L, 0);
        if (!newline(c) && !(f & (IS_L | IS_N)) && i + 1 < end && (flags(t->cp[i + 1]) & IS_L))
            return 1 + run(t, i + 1, end, IS_L, 0);
        if (f & IS_N) {
            n = run(t, i, end, IS_N, 0);
            return x != X_LLAMA3 && x != X_JAIS2 ? 1 : n < 3 ? n : 3;
        }
        /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
        {
            size_t j = i + (c == ' ' && i + 1 < end);
            if (j < end && other(t->cp[j])) {
                j += run_other(t, j, end);
                while (j < end && newline(t->cp[j]))
                    j++;
                return j - i;
            }
        }
        return x == X_JAIS2 ? jais_spaces(t, i, end) : space_tail(t, i, end);
    case X_NEWLINE:
        return newline(c);
    case X_S_LETTERS:
    case X_S_PUNCT: {
        int want = x == X_S_LETTERS ? IS_L : IS_P;
        if ((f & IS_S) && i + 1 < end && (flags(t->cp[i + 1]) & want))
            return 1 + run(t, i + 1, end, want, 0);
        return run(t, i, end, want, 0);
    }
    case X_CJK:
        for (n = 0; i + n < end; n++) {
            uint32_t d = t->cp[i + n];
            if (!((d >= 0x4E00 && d <= 0x9FA5) || (d >= 0x0800 && d <= 0x4E00) || (d >= 0xAC00 && d <= 0xD7FF)))
                break;
        }
        return n;
    case X_NUMBER:
        return (f & IS_N) != 0;
    case X_NUMBERS:
        return run(t, i, end, IS_N, 0);
    case X_PUNCT_SYM:
    case X_PUNCT_SYM_TICK:
        for (n = 0; i + n < end; n++) {
            uint32_t d = t->cp[i + n];
            const char *also = x == X_PUNCT_SYM ? "$+<=>^~|" : "$+<=>^~|`";
            if (!(flags(d) & IS_P) && !strchr(also, (int)(d < 128 && d ? d : 1)))
                break;
        }
        return n;
    case X_DIGITS3:
        for (n = 0; n < 3 && i + n < end && t->cp[i + n] >= '0' && t->cp[i + n] <= '9'; n++)
            ;
        return n == 3 ? 3 : 0;
    case X_BLOOM: {
        size_t j = i + (c == ' ' && i + 1 < end && bloom_char(t->cp[i + 1]));
        for (n = j; n < end && bloom_char(t->cp[n]); n++)
            ;
        return n > j ? n - i : 0;
    }
    case X_TEKKEN:
    case X_GPT4O:
    case X_GRANITE_EMB:
    case X_TINY_AYA:
    case X_YOUTU: {
        int cases = x == X_GRANITE_EMB ? CASES_MARKS : x == X_TINY_AYA || x == X_YOUTU ? CASES_NONE : CASES_ASCII;
        if ((n = cased_word(t, i, end, cases)))
            return x == X_TEKKEN ? n : n + optional_contraction(t, i + n, end);
        if (f & IS_N) {
            n = run(t, i, end, IS_N, 0);
            return x == X_TEKKEN || x == X_YOUTU ? 1 : n < 3 ? n : 3;
        }
        if ((n = punct_then(t, i, end, "\r\n/")))
            return n;
        return space_tail(t, i, end);
    }
    case X_DIGITS_R3: {
        size_t k = 0;
        while (i + k < end && t->cp[i + k] >= '0' && t->cp[i + k] <= '9')
            k++;
        uint32_t after = i + k < end ? t->cp[i + k] : 0;
        bool word = after == '_' || (after < 128 && isalnum((int)after)); /* \b needs a non-word after the run */
        if (k == 0 || (i + k < end && word))
            return 0;
        return k % 3 ? k % 3 : 3;
    }
    case X_YOUTU_CJK: {
        int cls = youtu_class(c);
        if (!cls)
            return 0;
        for (n = 1; i + n < end && youtu_class(t->cp[i + n]) == cls; n++)
            ;
        return n;
    }
    case X_NUMBERS3:
        n = run(t, i, end, IS_N, 0);
        return n < 3 ? n : 3;
    case X_CJK_KANA:
        for (n = 0; i + n < end; n++) {
            uint32_t d = t->cp[i + n];
            if (!((d >= 0x4E00 && d <= 0x9FA5) || (d >= 0x3040 && d <= 0x30FF)))
                break;
        }
        return n;
    case X_DEEPSEEK3:
    case X_SPARK: {
        if (ascii_punct(c) && i + 1 < end && ascii_letter(t->cp[i + 1])) {
            for (n = 1; i + n < end && ascii_letter(t->cp[i + n]); n++)
                ;
            return n;
        }
        /* [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ */
        size_t j = i;
        if (!newline(c) && !(f & (IS_L | IS_P | IS_SYM)) && i + 1 < end && (flags(t->cp[i + 1]) & (IS_L | IS_M)))
            j = i + 1;
        n = run(t, j, end, IS_L | IS_M, 0);
        if (n)
            return j - i + n;
        /*  ?[\p{P}\p{S}]+[\r\n]* (spark: no newlines) */
        j = i + (c == ' ' && i + 1 < end && (flags(t->cp[i + 1]) & (IS_P | IS_SYM)));
        n = run(t, j, end, IS_P | IS_SYM, 0);
        if (n) {
            j += n;
            while (x == X_DEEPSEEK3 && j < end && newline(t->cp[j]))
                j++;
            return j - i;
        }
        if (x == X_SPARK) /* [\r\n]|\s+(?!\S)|\s+ */
            return newline(c) ? 1 : spaces(t, i, end);
        return space_tail(t, i, end);
    }
    case X_QWEN35: {
        if ((n = contraction(t, i, end, true)))
            return n;
        if (f & (IS_L | IS_M))
            return run(t, i, end, IS_L | IS_M, 0);
        if (!newline(c) && !(f & (IS_L | IS_N)) && i + 1 < end && (flags(t->cp[i + 1]) & (IS_L | IS_M)))
            return 1 + run(t, i + 1, end, IS_L | IS_M, 0);
        if (f & IS_N)
            return 1;
        size_t j = i + (c == ' ' && i + 1 < end), k = j;
        while (k < end && !(flags(t->cp[k]) & (IS_S | IS_L | IS_M | IS_N)))
            k++;
        if (k > j) {
            j = k;
            while (j < end && newline(t->cp[j]))
                j++;
            return j - i;
        }
        return space_tail(t, i, end);
    }
    case X_S_DS_LETTERS:
    case X_S_DS_PUNCT: {
        bool (*in)(uint32_t) = x == X_S_DS_LETTERS ? deepseek_letter : deepseek_punct;
        size_t j = i + ((f & IS_S) && i + 1 < end && in(t->cp[i + 1]));
        for (n = j; n < end && in(t->cp[n]); n++)
            ;
        return n > j ? n - i : 0;
    }
    case X_EXAONE_MOE: {
        if ((n = contraction(t, i, end, true)))
            return n;
        size_t j = i + (!newline(c) && !(f & (IS_L | IS_N)) && i + 1 < end && (flags(t->cp[i + 1]) & IS_L));
        if (j < end && (flags(t->cp[j]) & IS_L)) { /* L M* (' '? L M*)* */
            size_t k = j;
            for (;;) {
                k++;
                while (k < end && (flags(t->cp[k]) & IS_M))
                    k++;
                if (k < end && (flags(t->cp[k]) & IS_L))
                    continue;
                if (k + 1 < end && t->cp[k] == ' ' && (flags(t->cp[k + 1]) & IS_L)) {
                    k++;
                    continue;
                }
                return k - i;
            }
        }
        if (f & IS_N)
            return 1;
        j = i + (c == ' ' && i + 1 < end && other(t->cp[i + 1]));
        if (j < end && other(t->cp[j])) {
            j += run_other(t, j, end);
            return j - i + (j < end && (newline(t->cp[j]) || t->cp[j] == '/'));
        }
        return space_tail(t, i, end);
    }
    case X_LINES:
        for (n = i; n < end && (t->cp[n] == '\n') == (c == '\n'); n++)
            ;
        return n - i;
    case X_NONSPACE:
        for (n = i; n < end && !(flags(t->cp[n]) & IS_S); n++)
            ;
        return n - i;
    case X_SPACES_END:
        for (n = i; n < end && (flags(t->cp[n]) & IS_S); n++)
            ;
        return n == end ? end - i : 0;
    case X_SEED_CODER:
        if ((n = contraction(t, i, end, true)))
            return n;
        if (f & IS_L)
            return run(t, i, end, IS_L, 0);
        if (!newline(c) && !(f & (IS_L | IS_N)) && i + 1 < end && (flags(t->cp[i + 1]) & IS_L))
            return 1 + run(t, i + 1, end, IS_L, 0);
        if (f & IS_N)
            return 1;
        if ((n = punct_then(t, i, end, "")))
            return n;
        return space_tail(t, i, end);
    }
    return 0;
}

/* Splits every piece (code point boundaries in cuts, ascending) by expression x:
 * matches and the text between them become pieces. */
static int split(expr x, const cps *t, size_t **cuts, size_t *n_cuts)
{
    size_t cap = *n_cuts * 2 + 16, n = 0;
    size_t *out = malloc(cap * sizeof *out);
    if (!out)
        return COE_ENOMEM;
    out[n++] = 0;
#define CUT(at)                                                                                                        \
    do {                                                                                                               \
        if (out[n - 1] != (at)) {                                                                                      \
            if (n == cap) {                                                                                            \
                size_t *p = realloc(out, (cap *= 2) * sizeof *p);                                                      \
                if (!p) {                                                                                              \
                    free(out);                                                                                         \
                    return COE_ENOMEM;                                                                                 \
                }                                                                                                      \
                out = p;                                                                                               \
            }                                                                                                          \
            out[n++] = (at);                                                                                           \
        }                                                                                                              \
    } while (0)
    for (size_t p = 0; p + 1 < *n_cuts; p++) {
        size_t start = (*cuts)[p], end = (*cuts)[p + 1];
        for (size_t i = start; i < end;) {
            size_t m = match(x, t, i, end);
            if (m == 0) {
                i++;
                continue;
            }
            CUT(i);
            CUT(i + m);
            i += m;
        }
        CUT(end);
    }
#undef CUT
    free(*cuts);
    *cuts = out;
    *n_cuts = n;
    return 0;
}

static int pre_split(coe_pretok pre, const cps *t, size_t **cuts, size_t *n_cuts)
{
    static const expr gpt2[] = {X_GPT2}, llama3[] = {X_LLAMA3}, qwen2[] = {X_QWEN2};
    static const expr deepseek[] = {X_NEWLINE, X_S_LETTERS, X_S_PUNCT, X_CJK, X_NUMBER};
    static const expr dflt[] = {X_PUNCT_SYM, X_GPT2, X_NUMBERS, X_DIGITS3};
    static const expr starcoder[] = {X_NUMBER, X_GPT2}, falcon[] = {X_PUNCT_SYM_TICK, X_GPT2, X_DIGITS3};
    static const expr bloom[] = {X_BLOOM}, viking[] = {X_BLOOM, X_NUMBER}, tekken[] = {X_TEKKEN}, gpt4o[] = {X_GPT4O};
    static const expr deepseek3[] = {X_NUMBERS3, X_CJK_KANA, X_DEEPSEEK3}, seed[] = {X_SEED_CODER};
    static const expr qwen35[] = {X_QWEN35}, lines[] = {X_LINES}, laguna[] = {X_LINES, X_QWEN2};
    static const expr ufakzeka[] = {X_UFAKZEKA}, whitespace[] = {X_NONSPACE}, minicpm5[] = {X_NUMBERS3, X_LLAMA3};
    static const expr spark[] = {X_NUMBERS3, X_CJK_KANA, X_SPARK, X_NUMBER};
    static const expr jais2[] = {X_JAIS2}, exaone_moe[] = {X_EXAONE_MOE};
    static const expr tiny_aya[] = {X_DIGITS_R3, X_TINY_AYA}, youtu[] = {X_YOUTU_CJK, X_YOUTU};
    static const expr granite_emb[] = {X_GRANITE_EMB};
    static const expr deepseek_llm[] = {X_NEWLINE, X_S_DS_LETTERS, X_S_DS_PUNCT, X_SPACES_END, X_CJK, X_NUMBERS};

    const expr *xs;
    size_t n;
    switch (pre) {
    case COE_PRE_GPT2: xs = gpt2, n = 1; break;
    case COE_PRE_LLAMA3: case COE_PRE_DBRX: xs = llama3, n = 1; break;
    case COE_PRE_QWEN2: xs = qwen2, n = 1; break;
    case COE_PRE_DEEPSEEK_CODER: xs = deepseek, n = 5; break;
    case COE_PRE_STARCODER: xs = starcoder, n = 2; break;
    case COE_PRE_FALCON: xs = falcon, n = 3; break;
    case COE_PRE_BLOOM: xs = bloom, n = 1; break;
    case COE_PRE_VIKING: xs = viking, n = 2; break;
    case COE_PRE_TEKKEN: xs = tekken, n = 1; break;
    case COE_PRE_GPT4O: xs = gpt4o, n = 1; break;
    case COE_PRE_DEEPSEEK3: xs = deepseek3, n = 3; break;
    case COE_PRE_SEED_CODER: xs = seed, n = 1; break;
    case COE_PRE_QWEN35: xs = qwen35, n = 1; break;
    case COE_PRE_DEEPSEEK_LLM: xs = deepseek_llm, n = 6; break;
    case COE_PRE_LINES: xs = lines, n = 1; break;
    case COE_PRE_LAGUNA: xs = laguna, n = 2; break;
    case COE_PRE_UFAKZEKA: xs = ufakzeka, n = 1; break;
    case COE_PRE_WHITESPACE: xs = whitespace, n = 1; break;
    case COE_PRE_MINICPM5: xs = minicpm5, n = 2; break;
    case COE_PRE_SPARK: xs = spark, n = 4; break;
    case COE_PRE_JAIS2: xs = jais2, n = 1; break;
    case COE_PRE_EXAONE_MOE: xs = exaone_moe, n = 1; break;
    case COE_PRE_TINY_AYA: xs = tiny_aya, n = 2; break;
    case COE_PRE_YOUTU: xs = youtu, n = 2; break;
    case COE_PRE_GRANITE_EMB: xs = granite_emb, n = 1; break;

    default: xs = dflt, n = 4; break;
    }
    *cuts = malloc(2 * sizeof **cuts);
    if (!*cuts)
        return COE_ENOMEM;
    (*cuts)[0] = 0;
    (*cuts)[1] = t->n;
    *n_cuts = 2;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = split(xs[i], t, cuts, n_cuts);
    return rc;
}

/* One pre-tokenized piece: bytes to GPT-2's alphabet, then merges by rank. */
static int bpe_word(const coe_vocab *v, const char *bytes, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    if (n == 0)
        return 0;
    coe_buf s = COE_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        coe_buf_append(&s, u, coe_utf8_encode((uint32_t)v->byte_char[(unsigned char)bytes[i]], u));
    }
    int rc = 0;
    /* llama-3, tekken, minicpm5, youtu and granite-embed-multi-97m take a piece that is a token
     * as it is (llama.cpp's ignore_merges) */
    int whole = v->pre == COE_PRE_LLAMA3 || v->pre == COE_PRE_TEKKEN || v->pre == COE_PRE_MINICPM5 ||
                        v->pre == COE_PRE_YOUTU || v->pre == COE_PRE_GRANITE_EMB
                    ? coe_vocab_find(v, s.data, s.len)
                    : -1;
    if (whole >= 0) {
        rc = push(out, n_out, cap, whole);
        coe_buf_free(&s);
        return rc;
    }
    symbol *sym = merge_symbols(v, s.data, s.len, bpe_score);
    rc = sym ? 0 : COE_ENOMEM;
    for (int i = 0; i >= 0 && !rc; i = sym[i].next) {
        int id = coe_vocab_find(v, s.data + sym[i].at, sym[i].len);
        if (id >= 0) {
            rc = push(out, n_out, cap, id);
            continue;
        }
        /* Not a token: one token per byte's character, where there is one. */
        for (size_t k = 0; k < sym[i].len && !rc;) {
            size_t len;
            coe_utf8_decode(s.data + sym[i].at + k, sym[i].len - k, &len);
            int b = coe_vocab_find(v, s.data + sym[i].at + k, len);
            if (b >= 0 || v->unk >= 0)
                rc = push(out, n_out, cap, b >= 0 ? b : v->unk);
            k += len;
        }
    }
    free(sym);
    coe_buf_free(&s);
    return rc;
}

int coe_pretokenize(coe_pretok pre, const char *text, size_t n, size_t **bounds, size_t *n_bounds)
{
    cps t = {malloc((n + 1) * sizeof(uint32_t)), malloc((n + 1) * sizeof(size_t)), 0};
    *bounds = NULL;
    *n_bounds = 0;
    int rc = t.cp && t.off ? 0 : COE_ENOMEM;
    for (size_t i = 0; i < n && !rc;) {
        size_t len;
        t.cp[t.n] = coe_utf8_decode(text + i, n - i, &len);
        t.off[t.n++] = i;
        i += len;
    }
    if (!rc) {
        t.off[t.n] = n;
        rc = pre_split(pre, &t, bounds, n_bounds);
    }
    for (size_t p = 0; !rc && p < *n_bounds; p++)
        (*bounds)[p] = t.off[(*bounds)[p]]; /* code points to bytes */
    free(t.cp);
    free(t.off);
    return rc;
}

static int bpe(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    size_t *bounds, n_bounds;
    int rc = coe_pretokenize(v->pre, text, n, &bounds, &n_bounds);
    for (size_t p = 0; !rc && p + 1 < n_bounds; p++)
        rc = bpe_word(v, text + bounds[p], bounds[p + 1] - bounds[p], out, n_out, cap);
    free(bounds);
    return rc;
}

/* ---- detokenization ---- */

int coe_token_bytes(const coe_vocab *v, int id, coe_buf *out)
{
    if (id < 0 || id >= v->n)
        return COE_EINVAL;
    const coe_gguf_str *x = &v->text[id];
    int type = v->type[id];
    if (type == 3 || type == 5)
        return 0; /* control and unused tokens are not text */
    if (v->kind == COE_VOCAB_SPM) {
        unsigned b;
        if (type == 6 && x->len == 6 && sscanf(x->ptr, "<0x%2X>", &b) == 1) {
            char c = (char)b;
            return coe_buf_append(out, &c, 1);
        }
        for (size_t i = 0; i < x->len;) {
            if (i + 3 <= x->len && memcmp(x->ptr + i, "\xE2\x96\x81", 3) == 0) {
                coe_buf_puts(out, " ");
                i += 3;
            } else {
                coe_buf_append(out, x->ptr + i++, 1);
            }
        }
        return 0;
    }
    if (type == 4)
        return coe_buf_append(out, x->ptr, x->len); /* user-defined tokens are plain text */
    for (size_t i = 0; i < x->len;) {
        size_t len;
        uint32_t cp = coe_utf8_decode(x->ptr + i, x->len - i, &len);
        int b = cp < 324 ? v->char_byte[cp] : -1;
        if (b >= 0) {
            char c = (char)b;
            coe_buf_append(out, &c, 1);
        } else {
            coe_buf_append(out, x->ptr + i, len);
        }
        i += len;
    }
    return 0;
}

bool coe_token_is_end(const coe_vocab *v, int id)
{
    return id >= 0 && (id == v->eos || id == v->eot);
}

/* The special token that text starts with, the longest where several do; -1 for
 * none. User-defined tokens always count (llama.cpp's rule); control and unknown
 * tokens only where asked (prompts, not plain text). */
static int special_at(const coe_vocab *v, const char *text, size_t n, bool control)
{
    unsigned char c = (unsigned char)text[0];
    if (!(v->special_first[c / 8] & (1u << (c % 8))))
        return -1; /* most bytes start no special token: skip the list */
    for (int i = 0; i < v->n_special; i++) {
        int id = v->special[i];
        size_t len = v->text[id].len;
        if (len <= n && memcmp(text, v->text[id].ptr, len) == 0 && (control || v->type[id] == 4))
            return id;
    }
    return -1;
}

/* Text split at special tokens; the spans between go to the vocabulary's algorithm. */
static int tokenize_parts(const coe_vocab *v, const char *text, size_t n, bool control, int32_t **out, size_t *n_out,
                          size_t *cap)
{
    int rc = 0;
    bool prev_special = true; /* SentencePiece's space prefix goes after a special token or the start */
    size_t start = 0;
    for (size_t i = 0; i <= n && !rc;) {
        int id = i < n ? special_at(v, text + i, n - i, control) : -1;
        if (id < 0 && i < n) {
            i++;
            continue;
        }
        if (i > start) {
            rc = v->kind == COE_VOCAB_SPM ? spm(v, text + start, i - start, prev_special, out, n_out, cap)
                                          : bpe(v, text + start, i - start, out, n_out, cap);
            prev_special = false;
        }
        if (id < 0)
            break;
        if (!rc)
            rc = push(out, n_out, cap, id);
        prev_special = true;
        i += v->text[id].len;
        if (v->rstrip && v->rstrip[id])
            while (i < n && isspace((unsigned char)text[i]))
                i++;
        start = i;
    }
    return rc;
}

int coe_tokenize(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    return tokenize_parts(v, text, n, false, out, n_out, cap);
}

int coe_tokenize_prompt(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    int rc = 0;
    if (v->add_bos && v->bos >= 0)
        rc = push(out, n_out, cap, v->bos);
    return rc ? rc : tokenize_parts(v, text, n, true, out, n_out, cap);
}
