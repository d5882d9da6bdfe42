#include "experts/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"

static uint32_t hash(const char *s, size_t n)
{
    return (uint32_t)coe_fnv1a64(COE_FNV_OFFSET, s, n);
}

int coe_vocab_find(const coe_vocab *v, const char *s, size_t n)
{
    for (uint32_t i = hash(s, n) & (v->n_slots - 1);; i = (i + 1) & (v->n_slots - 1)) {
        int32_t id = v->slots[i];
        if (id < 0)
            return -1;
        if (v->text[id].len == n && memcmp(v->text[id].ptr, s, n) == 0)
            return id;
    }
}

static int token_id(const coe_gguf *g, const char *key, int n)
{
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    uint64_t id;
    return kv && coe_gguf_get_u64(&kv->value, &id) && id < (uint64_t)n ? (int)id : -1;
}

int coe_vocab_load(coe_vocab *v, const coe_gguf *g, coe_buf *diag)
{
    memset(v, 0, sizeof *v);
    const coe_gguf_kv *model = coe_gguf_find_kv(g, "tokenizer.ggml.model");
    if (!model || model->value.type != COE_GGUF_STRING) {
        coe_buf_printf(diag, "%s: key 'tokenizer.ggml.model' is missing\n", g->path);
        return COE_EINVAL;
    }
    if (model->value.str.len != 5 || memcmp(model->value.str.ptr, "llama", 5) != 0) {
        coe_buf_printf(diag, "%s: tokenizer '%.*s' is not supported yet (SentencePiece 'llama' is)\n", g->path,
                       (int)model->value.str.len, model->value.str.ptr);
        return COE_EUNSUPPORTED;
    }
    v->kind = COE_VOCAB_SPM;
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
    for (v->n_slots = 16; v->n_slots < 2u * (uint32_t)v->n; v->n_slots *= 2)
        ;
    v->slots = malloc(v->n_slots * sizeof *v->slots);
    if (!v->score || !v->type || !v->slots) {
        coe_vocab_free(v);
        return COE_ENOMEM;
    }
    memset(v->slots, 0xff, v->n_slots * sizeof *v->slots);
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
        uint32_t i = hash(x->ptr, x->len) & (v->n_slots - 1);
        while (v->slots[i] >= 0 && !(v->text[v->slots[i]].len == x->len &&
                                     memcmp(v->text[v->slots[i]].ptr, x->ptr, x->len) == 0))
            i = (i + 1) & (v->n_slots - 1);
        if (v->slots[i] < 0)
            v->slots[i] = id; /* the first of duplicate texts wins */
        unsigned b;
        if (t == 6 && x->len == 6 && sscanf(x->ptr, "<0x%2X>", &b) == 1 && b < 256)
            v->byte_token[b] = id;
    }
    v->unk = token_id(g, "tokenizer.ggml.unknown_token_id", v->n);
    v->bos = token_id(g, "tokenizer.ggml.bos_token_id", v->n);
    v->eos = token_id(g, "tokenizer.ggml.eos_token_id", v->n);
    v->add_space_prefix = true; /* SentencePiece's default */
    const coe_gguf_kv *asp = coe_gguf_find_kv(g, "tokenizer.ggml.add_space_prefix");
    if (asp)
        coe_gguf_get_bool(&asp->value, &v->add_space_prefix);
    v->add_bos = true;
    const coe_gguf_kv *ab = coe_gguf_find_kv(g, "tokenizer.ggml.add_bos_token");
    if (ab)
        coe_gguf_get_bool(&ab->value, &v->add_bos);
    return 0;
}

void coe_vocab_free(coe_vocab *v)
{
    free(v->score);
    free(v->type);
    free(v->slots);
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

static int try_bigram(const coe_vocab *v, const char *s, const symbol *sym, int left, int right, heap *h)
{
    if (left < 0 || right < 0)
        return 0;
    size_t len = sym[left].len + sym[right].len;
    int id = coe_vocab_find(v, s + sym[left].at, len);
    if (id < 0)
        return 0;
    return heap_push(h, (bigram){left, right, v->score[id], len});
}

static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static int spm(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    /* Spaces become U+2581; SentencePiece adds one in front. */
    coe_buf s = COE_BUF_INIT;
    if (v->add_space_prefix)
        coe_buf_puts(&s, "\xE2\x96\x81");
    for (size_t i = 0; i < n; i++)
        if (text[i] == ' ')
            coe_buf_puts(&s, "\xE2\x96\x81");
        else
            coe_buf_append(&s, text + i, 1);
    symbol *sym = malloc((s.len + 1) * sizeof *sym);
    heap h = {0};
    int rc = sym ? 0 : COE_ENOMEM;
    int n_sym = 0;
    for (size_t i = 0; i < s.len && !rc;) {
        size_t k = utf8_len((unsigned char)s.data[i]);
        if (i + k > s.len)
            k = s.len - i;
        sym[n_sym] = (symbol){n_sym - 1, -1, i, k};
        if (n_sym > 0)
            sym[n_sym - 1].next = n_sym;
        n_sym++;
        i += k;
    }
    for (int i = 1; i < n_sym && !rc; i++)
        rc = try_bigram(v, s.data, sym, i - 1, i, &h);
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
        if (!(rc = try_bigram(v, s.data, sym, l->prev, b.left, &h)))
            rc = try_bigram(v, s.data, sym, b.left, l->next, &h);
    }
    for (int i = 0; i >= 0 && i < n_sym && !rc; i = sym[i].next) {
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
    free(h.v);
    coe_buf_free(&s);
    return rc;
}

int coe_tokenize(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap)
{
    if (n == 0)
        return 0;
    return spm(v, text, n, out, n_out, cap);
}
