/* Features of a conversation for the category router: word unigrams and bigrams and
 * character n-grams, hashed into a fixed number of buckets (fastText-style). Text is
 * lower-cased (ASCII), split into words (runs of letters, digits and non-ASCII
 * characters) and single punctuation marks; character n-grams are taken over code
 * points of "<word>", so UTF-8 is never cut. */
#ifndef COE_FEATURES_H
#define COE_FEATURES_H

#include <stddef.h>
#include <stdint.h>

typedef struct coe_features_params {
    uint32_t buckets;        /* a power of two */
    int word_ngrams;         /* 1: unigrams; 2: and bigrams */
    int char_min, char_max;  /* character n-gram lengths; char_max 0 for none */
    float history_weight;    /* weight of turns before the last user message */
    uint32_t max_features;   /* per text, so that a huge prompt costs bounded time */
} coe_features_params;

typedef struct coe_features {
    uint32_t *ids;
    float *w;
    size_t n, cap;
} coe_features;

/* The defaults the router is trained with unless told otherwise. */
coe_features_params coe_features_defaults(void);

/* Appends the features of text (n bytes) with weight w. Returns 0 or COE_ENOMEM. */
int coe_features_add_text(const coe_features_params *p, const char *text, size_t n, float w, coe_features *out);
void coe_features_reset(coe_features *f);
void coe_features_free(coe_features *f);

#endif
