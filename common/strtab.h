/* An index of strings by id: open addressing over ids, keyed by each id's text,
 * which the caller keeps (a GGUF string array, a list of C strings). One for the
 * tokenizer's vocabulary and merges and for `coegate forge`'s vocabulary. */
#ifndef COE_STRTAB_H
#define COE_STRTAB_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

typedef struct coe_strtab {
    int32_t *slots;   /* ids, -1 for empty */
    uint32_t n_slots; /* a power of two, at least twice the ids */
} coe_strtab;

/* Writes id's text to *s and *n. */
typedef void (*coe_strtab_key_fn)(const void *ctx, int32_t id, const char **s, size_t *n);

/* Room for n ids; false when out of memory. */
static inline int coe_strtab_init(coe_strtab *t, size_t n)
{
    for (t->n_slots = 16; t->n_slots < 2 * n; t->n_slots *= 2)
        ;
    t->slots = malloc(t->n_slots * sizeof *t->slots);
    if (t->slots)
        memset(t->slots, 0xff, t->n_slots * sizeof *t->slots);
    return t->slots != NULL;
}

static inline void coe_strtab_free(coe_strtab *t)
{
    free(t->slots);
    t->slots = NULL;
}

/* The slot holding text s[0..n), or the empty slot where it would go. */
static inline uint32_t coe_strtab_slot(const coe_strtab *t, coe_strtab_key_fn key, const void *ctx, const char *s,
                                       size_t n)
{
    uint32_t i = (uint32_t)coe_fnv1a64(COE_FNV_OFFSET, s, n) & (t->n_slots - 1);
    for (;; i = (i + 1) & (t->n_slots - 1)) {
        if (t->slots[i] < 0)
            return i;
        const char *k;
        size_t kn;
        key(ctx, t->slots[i], &k, &kn);
        if (kn == n && memcmp(k, s, n) == 0)
            return i;
    }
}

/* The id with text s[0..n), or -1. */
static inline int32_t coe_strtab_find(const coe_strtab *t, coe_strtab_key_fn key, const void *ctx, const char *s,
                                      size_t n)
{
    return t->slots[coe_strtab_slot(t, key, ctx, s, n)];
}

/* Adds id unless an id with the same text is there already (the first one stays);
 * returns the id that holds the text. */
static inline int32_t coe_strtab_add(coe_strtab *t, coe_strtab_key_fn key, const void *ctx, int32_t id)
{
    const char *s;
    size_t n;
    key(ctx, id, &s, &n);
    uint32_t i = coe_strtab_slot(t, key, ctx, s, n);
    if (t->slots[i] < 0)
        t->slots[i] = id;
    return t->slots[i];
}

#endif
