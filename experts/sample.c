#include "experts/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rand.h"

coe_sampling coe_sampling_default(void)
{
    return (coe_sampling){.temperature = 1, .top_p = 1};
}

/* xoshiro256**, seeded through splitmix64: fast, and the same stream for a seed everywhere. */
static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1). */
static double uniform(uint64_t *s)
{
    return (double)(next(s) >> 11) * 0x1.0p-53;
}

int coe_sampler_init(coe_sampler *s, const coe_sampling *p, int n_vocab)
{
    memset(s, 0, sizeof *s);
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = coe_splitmix64(&x);
    s->count = calloc((size_t)n_vocab, sizeof *s->count);
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->order = malloc((size_t)n_vocab * sizeof *s->order);
    if (!s->count || !s->work || !s->order) {
        coe_sampler_free(s);
        return COE_ENOMEM;
    }
    return 0;
}

int coe_sampler_bias(coe_sampler *s, int id, float b)
{
    if (!s->bias && !(s->bias = calloc((size_t)s->n_vocab, sizeof *s->bias)))
        return COE_ENOMEM;
    s->bias[id] += b;
    return 0;
}

void coe_sampler_free(coe_sampler *s)
{
    free(s->bias);
    free(s->count);
    free(s->work);
    free(s->order);
    memset(s, 0, sizeof *s);
}

static int by_key_desc(const void *a, const void *b, void *keys)
{
    const float *key = keys;
    float x = key[*(const int32_t *)a], y = key[*(const int32_t *)b];
    return x < y ? 1 : x > y ? -1 : *(const int32_t *)a - *(const int32_t *)b;
}

/* Moves the k largest of order[0..n) (by key) to the front, sorted; O(n log k). */
static void top_k_sorted(int32_t *order, int n, int k, const float *key)
{
    if (k > n)
        k = n;
    /* A min-heap of the best k seen so far, in order[0..k). */
    for (int i = 0; i < n; i++) {
        int32_t id = order[i];
        int size = i < k ? i : k;
        if (i < k) {
            int c = size;
            order[c] = id;
            while (c > 0 && key[order[(c - 1) / 2]] > key[order[c]]) {
                int32_t t = order[c];
                order[c] = order[(c - 1) / 2];
                order[(c - 1) / 2] = t;
                c = (c - 1) / 2;
            }
            continue;
        }
        if (key[id] <= key[order[0]])
            continue;
        order[i] = order[0];
        order[0] = id;
        for (int c = 0;;) {
            int l = 2 * c + 1, r = l + 1, m = c;
            if (l < k && key[order[l]] < key[order[m]])
                m = l;
            if (r < k && key[order[r]] < key[order[m]])
                m = r;
            if (m == c)
                break;
            int32_t t = order[c];
            order[c] = order[m];
            order[m] = t;
            c = m;
        }
    }
    qsort_r(order, (size_t)k, sizeof *order, by_key_desc, (void *)key);
}

int coe_sample(coe_sampler *s, const float *logits)
{
    const int V = s->n_vocab;
    float *w = s->work;
    for (int i = 0; i < V; i++) {
        float l = s->bias ? logits[i] + s->bias[i] : logits[i];
        if (s->count[i])
            l -= s->p.presence_penalty + s->p.frequency_penalty * (float)s->count[i];
        w[i] = l;
    }
    int best = 0;
    for (int i = 1; i < V; i++)
        if (w[i] > w[best])
            best = i;
    int pick = best;
    if (s->p.temperature > 0 && s->p.top_k != 1) {
        /* Probabilities at the temperature. */
        float inv_t = 1.0f / s->p.temperature, max = w[best] * inv_t;
        double sum = 0;
        for (int i = 0; i < V; i++) {
            w[i] = expf(w[i] * inv_t - max);
            sum += w[i];
        }
        float floor = s->p.min_p > 0 ? s->p.min_p * w[best] : 0;
        int n = 0;
        for (int i = 0; i < V; i++)
            if (w[i] >= floor && w[i] > 0)
                s->order[n++] = i;
        if (s->p.top_k > 0 || s->p.top_p < 1) {
            /* Sort only as far as needed: the top k, or enough mass for top_p. */
            int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
            if (s->p.top_k <= 0)
                for (int want = 256;; want *= 4) {
                    int m = want < n ? want : n;
                    top_k_sorted(s->order, n, m, w);
                    double mass = 0;
                    int i = 0;
                    while (i < m && mass < s->p.top_p * sum)
                        mass += w[s->order[i++]];
                    if (mass >= s->p.top_p * sum || m == n) {
                        k = i > 0 ? i : 1;
                        break;
                    }
                }
            else
                top_k_sorted(s->order, n, k, w);
            if (s->p.top_p < 1 && s->p.top_k > 0) {
                double mass = 0, total = 0;
                for (int i = 0; i < k; i++)
                    total += w[s->order[i]];
                int i = 0;
                while (i < k && mass < s->p.top_p * total)
                    mass += w[s->order[i++]];
                k = i > 0 ? i : 1;
            }
            n = k;
        }
        double total = 0;
        for (int i = 0; i < n; i++)
            total += w[s->order[i]];
        double r = uniform(s->rng) * total, acc = 0;
        pick = s->order[n - 1];
        for (int i = 0; i < n; i++) {
            acc += w[s->order[i]];
            if (r < acc) {
                pick = s->order[i];
                break;
            }
        }
    }
    s->count[pick]++;
    return pick;
}

static double log_sum_exp(const float *x, int n, float *max_out)
{
    float max = x[0];
    for (int i = 1; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)x[i] - max);
    *max_out = max;
    return log(sum);
}

double coe_logprob_d(const float *logits, int n, int id)
{
    float max;
    double lse = log_sum_exp(logits, n, &max);
    return (double)logits[id] - max - lse;
}

float coe_logprob(const float *logits, int n, int id)
{
    return (float)coe_logprob_d(logits, n, id);
}

int coe_top_logprobs(const float *logits, int n_vocab, int n, int32_t *ids, float *logprobs)
{
    if (n > 20)
        n = 20;
    if (n > n_vocab)
        n = n_vocab;
    /* A small insertion list is enough for n <= 20. */
    int have = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (have == n && logits[i] <= logits[ids[n - 1]])
            continue;
        int at = have < n ? have++ : n - 1;
        while (at > 0 && logits[ids[at - 1]] < logits[i]) {
            ids[at] = ids[at - 1];
            at--;
        }
        ids[at] = i;
    }
    float max;
    double lse = log_sum_exp(logits, n_vocab, &max);
    for (int i = 0; i < have; i++)
        logprobs[i] = (float)((double)logits[ids[i]] - max - lse);
    return have;
}
