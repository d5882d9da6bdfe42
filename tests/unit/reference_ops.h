/* The plain definitions of the engine's operations that the CUDA kernels are held to:
 * the gpu suite compares the device with them, and the host emulation of the device
 * (host_device.c) computes with them. Products and softmax sums in double. */
#ifndef COE_REFERENCE_OPS_H
#define COE_REFERENCE_OPS_H

#include <math.h>
#include <stdlib.h>

#include "experts/cuda.h"
#include "experts/quant.h"

/* y[t * ld_y + r] = W[r] . x[t], W rows x cols of type. */
static inline void ref_matmul(uint32_t type, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int T,
                              float *y, int64_t ld_y)
{
    float *row = malloc((size_t)cols * sizeof *row);
    size_t rb = coe_row_bytes(type, cols);
    for (int64_t r = 0; r < rows && row; r++) {
        coe_dequantize_row(type, w + rb * (size_t)r, row, cols);
        for (int t = 0; t < T; t++) {
            double s = 0;
            for (int64_t k = 0; k < cols; k++)
                s += (double)row[k] * (double)x[(size_t)t * (size_t)cols + (size_t)k];
            y[(size_t)t * (size_t)ld_y + (size_t)r] = (float)s;
        }
    }
    free(row);
}

/* One row of n, as the CPU engine's rms_norm. */
static inline void ref_rms_norm(const float *x, const float *w, float *y, int n, float eps)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * scale * w[i];
}

/* Causal attention as coe_cuda_attention states it. */
static inline void ref_attention(const coe_cuda_attention_shape *s, const float *q, const float *const *k,
                                 const float *const *v, const int32_t *pos, int T, float *out)
{
    float *sc = malloc((size_t)s->n_ctx * sizeof *sc);
    for (int t = 0; t < T && sc; t++)
        for (int h = 0; h < s->n_head; h++) {
            int g = h / (s->n_head / s->n_head_kv);
            const float *qh = q + ((size_t)t * (size_t)s->n_head + (size_t)h) * (size_t)s->dk;
            float mx = -INFINITY;
            for (int i = 0; i <= pos[t]; i++) {
                double d = 0;
                for (int j = 0; j < s->dk; j++)
                    d += (double)qh[j] * k[t][(size_t)i * (size_t)s->k_stride + (size_t)g * (size_t)s->dk + (size_t)j];
                sc[i] = (float)d * s->scale;
                mx = fmaxf(mx, sc[i]);
            }
            double sum = 0;
            for (int i = 0; i <= pos[t]; i++)
                sum += sc[i] = expf(sc[i] - mx);
            float *o = out + ((size_t)t * (size_t)s->n_head + (size_t)h) * (size_t)s->dv;
            for (int d = 0; d < s->dv; d++) {
                double acc = 0;
                for (int i = 0; i <= pos[t]; i++)
                    acc += sc[i] / sum * v[t][(size_t)i * (size_t)s->v_stride + (size_t)g * (size_t)s->dv + (size_t)d];
                o[d] = (float)acc;
            }
        }
    free(sc);
}

#endif
