/* FNV-1a, 64 bits: the one hash for features, data fingerprints and lookup tables.
 * Feature buckets depend on it, so trained routers do too: never change it. */
#ifndef COE_HASH_H
#define COE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define COE_FNV_OFFSET 0xcbf29ce484222325ULL

/* Continues hash h over n bytes at p (start with COE_FNV_OFFSET, or another seed). */
static inline uint64_t coe_fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ULL;
    return h;
}

#endif
