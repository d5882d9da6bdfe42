/* splitmix64: the one small pseudo-random generator for weights (router training,
 * `coegate forge`) and for seeding the sampler. A seed gives the same numbers on
 * every machine; trained routers depend on that, so never change it. */
#ifndef COE_RAND_H
#define COE_RAND_H

#include <stdint.h>

static inline uint64_t coe_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The state n draws later: each draw adds the same constant, so a stream can be split
 * into parts drawn apart (in parallel) and still give the same numbers. */
static inline void coe_splitmix64_skip(uint64_t *state, uint64_t n)
{
    *state += n * 0x9e3779b97f4a7c15ULL;
}

/* Uniform in [-a, a). */
static inline float coe_uniform(uint64_t *state, float a)
{
    return ((float)(coe_splitmix64(state) >> 40) / (float)(1ull << 24) * 2.0f - 1.0f) * a;
}

#endif
