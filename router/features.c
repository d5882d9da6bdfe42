#include "router/features.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"

coe_features_params coe_features_defaults(void)
{
    coe_features_params p = {1u << 18, 2, 3, 5, 0.3f, 20000};
    return p;
}

void coe_features_reset(coe_features *f)
{
    f->n = 0;
}

void coe_features_free(coe_features *f)
{
    free(f->ids);
    free(f->w);
    memset(f, 0, sizeof *f);
}

static int push(coe_features *f, uint64_t h, uint32_t buckets, float w)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 256;
        uint32_t *ids = realloc(f->ids, cap * sizeof *ids);
        float *ws = ids ? realloc(f->w, cap * sizeof *ws) : NULL;
        if (!ids || !ws) {
            if (ids)
                f->ids = ids;
            return COE_ENOMEM;
        }
        f->ids = ids;
        f->w = ws;
        f->cap = cap;
    }
    f->ids[f->n] = (uint32_t)(h & (buckets - 1));
    f->w[f->n] = w;
    f->n++;
    return 0;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t h = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* Seeds, so that the feature kinds hash apart. */
#define SEED_WORD COE_FNV_OFFSET
#define SEED_CHAR 0x84222325cbf29ce4ULL

static bool is_word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* Length of the UTF-8 sequence starting with c (1 for stray bytes). */
static size_t seq_len(unsigned char c)
{
    return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

int coe_features_add_text(const coe_features_params *p, const char *text, size_t n, float w, coe_features *out)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t start_n = out->n;
    uint64_t prev = 0;
    bool have_prev = false;
    char word[256 + 2];
    size_t i = 0;
    while (i < n && out->n - start_n < p->max_features) {
        unsigned char c = s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            i++;
            continue;
        }
        size_t len = 0;
        bool punct = !is_word_byte(c);
        if (punct) {
            word[0] = (char)c;
            len = 1;
            i++;
        } else {
            /* A word: lower-cased ASCII, other bytes as they are, whole UTF-8 sequences. */
            while (i < n && is_word_byte(s[i])) {
                size_t k = s[i] < 0x80 ? 1 : seq_len(s[i]);
                if (i + k > n)
                    k = n - i;
                if (len + k <= 256) {
                    for (size_t j = 0; j < k; j++) {
                        unsigned char b = s[i + j];
                        word[len++] = (char)(b >= 'A' && b <= 'Z' ? b + 32 : b);
                    }
                }
                i += k;
            }
        }
        uint64_t h = coe_fnv1a64(SEED_WORD, word, len);
        int rc = push(out, h, p->buckets, w);
        if (!rc && p->word_ngrams >= 2 && have_prev)
            rc = push(out, mix(prev, h), p->buckets, w);
        if (rc)
            return rc;
        prev = h;
        have_prev = true;
        if (punct || p->char_max <= 0)
            continue;
        /* Character n-grams of "<word>", by code point. */
        char wrapped[256 + 2];
        wrapped[0] = '<';
        memcpy(wrapped + 1, word, len);
        wrapped[len + 1] = '>';
        size_t wl = len + 2;
        size_t starts[260];
        size_t n_cp = 0;
        for (size_t j = 0; j < wl; j += seq_len((unsigned char)wrapped[j]))
            starts[n_cp++] = j;
        starts[n_cp] = wl;
        for (size_t a = 0; a < n_cp; a++)
            for (int g = p->char_min; g <= p->char_max && a + (size_t)g <= n_cp; g++) {
                if (g == (int)n_cp) /* the whole "<word>" is the unigram already */
                    continue;
                size_t from = starts[a], to = starts[a + (size_t)g];
                if ((rc = push(out, coe_fnv1a64(SEED_CHAR, wrapped + from, to - from), p->buckets, w)))
                    return rc;
            }
    }
    return 0;
}
