/* Choosing the next token from logits, with OpenAI's and the common servers'
 * parameters, and the log-probabilities OpenAI's `logprobs` reports. */
#ifndef COE_SAMPLE_H
#define COE_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct coe_sampling {
    float temperature;       /* 0: greedy */
    float top_p;             /* 1: off */
    float min_p;             /* 0: off; keeps tokens with p >= min_p * p(best) */
    int top_k;               /* 0: off */
    float presence_penalty;  /* subtracted once from a token already generated */
    float frequency_penalty; /* subtracted per time a token was generated */
    uint64_t seed;
} coe_sampling;

/* OpenAI's defaults: temperature 1, top_p 1, nothing else. */
coe_sampling coe_sampling_default(void);

typedef struct coe_sampler {
    coe_sampling p;
    uint64_t rng[4];
    int n_vocab;
    int32_t *count;   /* times each token was generated (for the penalties) */
    float *work;      /* n_vocab scratch */
    int32_t *order;   /* n_vocab scratch */
    float *bias;      /* n_vocab, added to the logits (OpenAI's logit_bias); NULL: none */
} coe_sampler;

int coe_sampler_init(coe_sampler *s, const coe_sampling *p, int n_vocab);
void coe_sampler_free(coe_sampler *s);
/* Adds b to token id's logit before every pick (id < n_vocab). */
int coe_sampler_bias(coe_sampler *s, int id, float b);
/* Picks a token from logits (n_vocab, left unchanged) and counts it as generated. */
int coe_sample(coe_sampler *s, const float *logits);

/* log softmax(logits)[id]. */
float coe_logprob(const float *logits, int n, int id);
/* The same in double: log softmax(logits)[id], the sum taken in double. */
double coe_logprob_d(const float *logits, int n, int id);
/* The n best tokens (n <= 20) with their log-probabilities, best first. */
int coe_top_logprobs(const float *logits, int n_vocab, int n, int32_t *ids, float *logprobs);

#endif
