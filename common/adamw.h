/* AdamW (decoupled weight decay), the one update rule of coegate's trainers: the
 * category classifier (router/train.c) and the fusion selector (experts/fusion_cli.c). */
#ifndef COE_ADAMW_H
#define COE_ADAMW_H

#include <math.h>

typedef struct coe_adamw {
    float beta1, beta2, eps;
    float weight_decay;
} coe_adamw;

/* Updates parameter *p by gradient g at learning rate lr; m and v are its moments;
 * c1 and c2 the step's bias corrections, 1 - beta1^step and 1 - beta2^step. */
static inline void coe_adamw_step(const coe_adamw *a, float *p, float *m, float *v, float g, float lr, float c1, float c2)
{
    *m = a->beta1 * *m + (1 - a->beta1) * g;
    *v = a->beta2 * *v + (1 - a->beta2) * g * g;
    float mhat = *m / c1, vhat = *v / c2;
    *p -= lr * (mhat / (sqrtf(vhat) + a->eps) + a->weight_decay * *p);
}

#endif
