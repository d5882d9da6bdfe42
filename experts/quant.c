#include "experts/quant.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define COE_X86 1
#else
#define COE_X86 0
#endif

/* ---- scalar conversions ---- */

float coe_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t coe_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e), half = 1u << (shift - 1);
        uint32_t r = man >> shift, rest = man & ((1u << shift) - 1);
        if (rest > half || (rest == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (r & 1)))
        r++; /* may carry into the exponent, which is right (up to infinity) */
    return (uint16_t)(sign | r);
}

float coe_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t coe_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* ---- layouts ---- */

bool coe_quant_supported(uint32_t type)
{
    switch (type) {
    case COE_GGML_F32: case COE_GGML_F16: case COE_GGML_BF16: case COE_GGML_Q8_0: case COE_GGML_Q4_0:
    case COE_GGML_Q5_0: case COE_GGML_Q4_1: case COE_GGML_Q5_1: case COE_GGML_Q2_K: case COE_GGML_Q3_K:
    case COE_GGML_Q4_K: case COE_GGML_Q5_K: case COE_GGML_Q6_K: case COE_GGML_Q8_K: case COE_GGML_IQ4_NL:
    case COE_GGML_IQ4_XS:
        return true;
    default:
        return false;
    }
}

size_t coe_row_bytes(uint32_t type, int64_t n)
{
    if (type == COE_ACT_Q8_0)
        return (size_t)(n / COE_QK) * sizeof(coe_block_q8_0_act);
    if (type == COE_ACT_Q8_1)
        return (size_t)(n / COE_QK) * sizeof(coe_block_q8_1_act);
    uint32_t block, bytes;
    if (!coe_ggml_type_layout(type, &block, &bytes))
        return 0;
    return (size_t)(n / block) * bytes;
}

uint32_t coe_dot_type(uint32_t type)
{
    switch (type) {
    case COE_GGML_Q8_0: case COE_GGML_Q4_0: case COE_GGML_Q5_0: case COE_GGML_IQ4_NL:
        return COE_ACT_Q8_0;
    case COE_GGML_Q4_1: case COE_GGML_Q5_1:
        return COE_ACT_Q8_1;
    case COE_GGML_Q2_K: case COE_GGML_Q3_K: case COE_GGML_Q4_K: case COE_GGML_Q5_K: case COE_GGML_Q6_K:
    case COE_GGML_IQ4_XS:
        return COE_GGML_Q8_K;
    default:
        return type;
    }
}

/* ---- reference quantizers ---- */

/* Rounded to nearest (ties to even); out-of-range and NaN values (from a damaged
 * model's activations) saturate instead of being undefined. */
static int nearest(float x)
{
    if (!(x > -2147483520.0f))
        return x != x ? 0 : INT32_MIN;
    if (!(x < 2147483520.0f))
        return INT32_MAX;
    return (int)nearbyintf(x);
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Q8_0 blocks, or with act the activation form (the same codes, the scale as float). */
static void quantize_q8_0(const float *x, void *dst, int64_t nb, bool act)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        coe_block_q8_0 tmp, *y = act ? &tmp : (coe_block_q8_0 *)dst + i;
        float amax = 0;
        for (int j = 0; j < COE_QK; j++) {
            float v = fabsf(x[j]);
            amax = v > amax ? v : amax;
        }
        /* The scale is stored as f16; the codes use the exact 127/amax, as llama.cpp's. */
        y->d = coe_f32_to_f16(amax / 127.f);
        float id = amax != 0 ? 127.f / amax : 0;
        for (int j = 0; j < COE_QK; j++)
            y->qs[j] = (int8_t)nearest(x[j] * id);
        if (act) {
            coe_block_q8_0_act *a = (coe_block_q8_0_act *)dst + i;
            a->d = coe_f16_to_f32(y->d);
            memcpy(a->qs, y->qs, COE_QK);
            for (int j = 0; j < COE_QK; j++)
                a->qu[j] = (uint8_t)(y->qs[j] + 128);
        }
    }
}

static void quantize_q4_0(const float *x, coe_block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < COE_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -8, id = d != 0 ? 1 / d : 0;
        y[i].d = coe_f32_to_f16(d);
        for (int j = 0; j < COE_QK / 2; j++) {
            int lo = clampi(nearest(floorf(x[j] * id + 8.5f)), 0, 15);
            int hi = clampi(nearest(floorf(x[j + 16] * id + 8.5f)), 0, 15);
            y[i].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* ggml's: the value of largest magnitude maps to -16, codes are x / d + 16.5 cut to
 * 0..31; the low four bits in qs (first half low nibbles), the fifth in qh. */
static void quantize_q5_0(const float *x, coe_block_q5_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < COE_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -16, id = d != 0 ? 1 / d : 0;
        y[i].d = coe_f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < COE_QK / 2; j++) {
            int lo = clampi(nearest(floorf(x[j] * id + 16.5f)), 0, 31);
            int hi = clampi(nearest(floorf(x[j + 16] * id + 16.5f)), 0, 31);
            y[i].qs[j] = (uint8_t)((lo & 15) | (hi & 15) << 4);
            qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

/* Q8_1 activations: Q8_0's codes, and s = F16(d * the sum of the codes) with d the
 * exact amax / 127, as llama.cpp's. */
static void quantize_q8_1_act(const float *x, coe_block_q8_1_act *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        float amax = 0;
        for (int j = 0; j < COE_QK; j++) {
            float v = fabsf(x[j]);
            amax = v > amax ? v : amax;
        }
        float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0;
        int sum = 0;
        for (int j = 0; j < COE_QK; j++) {
            y[i].qs[j] = (int8_t)nearest(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = coe_f16_to_f32(coe_f32_to_f16(d));
        y[i].s = coe_f16_to_f32(coe_f32_to_f16(d * (float)sum));
    }
}

/* Q4_1 and Q5_1 (bits 4 or 5), as ggml's: d = (max - min) / (2^bits - 1), m = min,
 * codes (x - min) / d + 0.5 cut to the range; Q5_1's fifth bits in qh. */
static void quantize_qx_1(const float *x, uint8_t *dst, int64_t nb, int bits)
{
    const int top = (1 << bits) - 1;
    const size_t block = bits == 4 ? sizeof(coe_block_q4_1) : sizeof(coe_block_q5_1);
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < COE_QK; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        float d = (max - min) / (float)top, id = d != 0 ? 1 / d : 0;
        uint16_t hd = coe_f32_to_f16(d), hm = coe_f32_to_f16(min);
        uint8_t *qs = bits == 4 ? ((coe_block_q4_1 *)(dst + (size_t)i * block))->qs
                                : ((coe_block_q5_1 *)(dst + (size_t)i * block))->qs;
        uint32_t qh = 0;
        for (int j = 0; j < COE_QK / 2; j++) {
            int lo = clampi(nearest(floorf((x[j] - min) * id + 0.5f)), 0, top);
            int hi = clampi(nearest(floorf((x[j + 16] - min) * id + 0.5f)), 0, top);
            qs[j] = (uint8_t)((lo & 15) | (hi & 15) << 4);
            qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
        }
        if (bits == 4) {
            coe_block_q4_1 *y = (coe_block_q4_1 *)(dst + (size_t)i * block);
            y->d = hd, y->m = hm;
        } else {
            coe_block_q5_1 *y = (coe_block_q5_1 *)(dst + (size_t)i * block);
            y->d = hd, y->m = hm;
            memcpy(y->qh, &qh, 4);
        }
    }
}

static void quantize_q8_k(const float *x, coe_block_q8_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float amax = 0, max = 0;
        for (int j = 0; j < COE_QKK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        memset(&y[i], 0, sizeof y[i]);
        if (amax == 0)
            continue;
        float iscale = -127.f / max;
        for (int j = 0; j < COE_QKK; j++)
            y[i].qs[j] = (int8_t)clampi(nearest(iscale * x[j]), -127, 127);
        for (int j = 0; j < COE_QKK / 16; j++) {
            int s = 0;
            for (int k = 0; k < 16; k++)
                s += y[i].qs[16 * j + k];
            y[i].bsums[j] = (int16_t)s;
        }
        y[i].d = 1 / iscale;
    }
}

const int8_t coe_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* The table entry nearest v (the first of two as near). */
static int iq4nl_index(float v)
{
    int best = 0;
    for (int k = 1; k < 16; k++)
        if (fabsf(v - coe_iq4nl_values[k]) < fabsf(v - coe_iq4nl_values[best]))
            best = k;
    return best;
}

/* The IQ4 quantizers are for forged models and tests only (the engine never writes
 * weights): a plain nearest-entry search, simpler than llama.cpp's scale search, and
 * any codes it writes mean what the dequantizers say. */
static void quantize_iq4_nl(const float *x, coe_block_iq4_nl *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < COE_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -127, id = d != 0 ? 1 / d : 0;
        y[i].d = coe_f32_to_f16(d);
        for (int j = 0; j < COE_QK / 2; j++)
            y[i].qs[j] = (uint8_t)(iq4nl_index(x[j] * id) | iq4nl_index(x[j + 16] * id) << 4);
    }
}

static void quantize_iq4_xs(const float *x, coe_block_iq4_xs *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float scale[COE_QKK / 32], top = 0;
        for (int b = 0; b < COE_QKK / 32; b++) {
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
                if (fabsf(x[32 * b + j]) > amax) {
                    amax = fabsf(x[32 * b + j]);
                    max = x[32 * b + j];
                }
            scale[b] = max / -127;
            top = fabsf(scale[b]) > fabsf(top) ? scale[b] : top;
        }
        float d = top / -32; /* block scales from -32 d to 31 d */
        y[i].d = coe_f32_to_f16(d);
        float dd = coe_f16_to_f32(y[i].d);
        y[i].scales_h = 0;
        memset(y[i].scales_l, 0, sizeof y[i].scales_l);
        for (int b = 0; b < COE_QKK / 32; b++) {
            int ls = clampi(nearest(dd != 0 ? scale[b] / dd : 0) + 32, 0, 63);
            y[i].scales_l[b / 2] |= (uint8_t)((ls & 15) << 4 * (b % 2));
            y[i].scales_h |= (uint16_t)((ls >> 4) << 2 * b);
            float dl = dd * (float)(ls - 32), id = dl != 0 ? 1 / dl : 0;
            for (int j = 0; j < 16; j++)
                y[i].qs[16 * b + j] = (uint8_t)(iq4nl_index(x[32 * b + j] * id) |
                                                iq4nl_index(x[32 * b + j + 16] * id) << 4);
        }
    }
}

/* Sub-block j's 6-bit scale and min of a Q4_K/Q5_K block. */
static void scale_min_k4(int j, const uint8_t *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Scales and mins for the 8 sub-blocks of 32 of a Q4_K/Q5_K block with codes 0..qmax;
 * writes d, dmin and the packed 12 bytes, and returns per sub-block scale and min. */
static void pack_scales_k4(const float *x, int qmax, uint16_t *d16, uint16_t *dmin16, uint8_t *s, float *sc_f,
                           float *m_f)
{
    float scale[8], minv[8], dmax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        float lo = 0, hi = 0;
        for (int k = 0; k < 32; k++) {
            lo = fminf(lo, x[32 * j + k]);
            hi = fmaxf(hi, x[32 * j + k]);
        }
        scale[j] = (hi - lo) / (float)qmax;
        minv[j] = -lo;
        dmax = fmaxf(dmax, scale[j]);
        mmax = fmaxf(mmax, minv[j]);
    }
    float d = dmax / 63, dmin = mmax / 63;
    *d16 = coe_f32_to_f16(d);
    *dmin16 = coe_f32_to_f16(dmin);
    d = coe_f16_to_f32(*d16);
    dmin = coe_f16_to_f32(*dmin16);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? clampi(nearest(scale[j] / d), 0, 63) : 0;
        m[j] = dmin > 0 ? clampi(nearest(minv[j] / dmin), 0, 63) : 0;
        sc_f[j] = d * (float)sc[j];
        m_f[j] = dmin * (float)m[j];
    }
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
    }
}

static int code_k(float x, float sc, float m, int qmax)
{
    return sc > 0 ? clampi(nearest((x + m) / sc), 0, qmax) : 0;
}

static void quantize_q4_k(const float *x, coe_block_q4_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float sc[8], m[8];
        pack_scales_k4(x, 15, &y[i].d, &y[i].dmin, y[i].scales, sc, m);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = code_k(x[64 * c + l], sc[2 * c], m[2 * c], 15);
                int hi = code_k(x[64 * c + 32 + l], sc[2 * c + 1], m[2 * c + 1], 15);
                y[i].qs[32 * c + l] = (uint8_t)(lo | hi << 4);
            }
    }
}

static void quantize_q5_k(const float *x, coe_block_q5_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float sc[8], m[8];
        pack_scales_k4(x, 31, &y[i].d, &y[i].dmin, y[i].scales, sc, m);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = code_k(x[64 * c + l], sc[2 * c], m[2 * c], 31);
                int hi = code_k(x[64 * c + 32 + l], sc[2 * c + 1], m[2 * c + 1], 31);
                y[i].qs[32 * c + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
                y[i].qh[l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
            }
    }
}

/* Q2_K and Q3_K keep value p (0..255) of a super-block in byte 32 * (p / 128) + p % 32
 * of qs, bits 2 * ((p % 128) / 32) and up; Q3_K's third bit is bit p / 32 of hmask[p % 32]. */
static void k23_pack(uint8_t *qs, const int *low2, int n)
{
    memset(qs, 0, (size_t)n / 4);
    for (int p = 0; p < n; p++)
        qs[32 * (p / 128) + p % 32] |= (uint8_t)(low2[p] << (2 * ((p % 128) / 32)));
}

static int k23_low2(const uint8_t *qs, int p)
{
    return qs[32 * (p / 128) + p % 32] >> (2 * ((p % 128) / 32)) & 3;
}

/* A plain quantizer (not llama.cpp's search for the best scales): per 16 values the
 * range's step and minimum, then the super-block's d and dmin as their largest / 15. */
static void quantize_q2_k(const float *x, coe_block_q2_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float step[16], low[16], smax = 0, mmax = 0;
        for (int j = 0; j < 16; j++) {
            float lo = 0, hi = 0;
            for (int k = 0; k < 16; k++) {
                lo = fminf(lo, x[16 * j + k]);
                hi = fmaxf(hi, x[16 * j + k]);
            }
            step[j] = (hi - lo) / 3;
            low[j] = -lo;
            smax = fmaxf(smax, step[j]);
            mmax = fmaxf(mmax, low[j]);
        }
        y[i].d = coe_f32_to_f16(smax / 15);
        y[i].dmin = coe_f32_to_f16(mmax / 15);
        float d = coe_f16_to_f32(y[i].d), dmin = coe_f16_to_f32(y[i].dmin);
        int codes[COE_QKK];
        for (int j = 0; j < 16; j++) {
            int sc = d > 0 ? clampi(nearest(step[j] / d), 0, 15) : 0;
            int m = dmin > 0 ? clampi(nearest(low[j] / dmin), 0, 15) : 0;
            y[i].scales[j] = (uint8_t)(sc | m << 4);
            float s = d * (float)sc, off = dmin * (float)m;
            for (int k = 0; k < 16; k++)
                codes[16 * j + k] = s > 0 ? clampi(nearest((x[16 * j + k] + off) / s), 0, 3) : 0;
        }
        k23_pack(y[i].qs, codes, COE_QKK);
    }
}

/* The scale of each 16 values of a super-block of 256 (their largest magnitude / top,
 * top the largest code), and the largest of them (Q3_K, Q6_K). */
static float scales16(const float *x, float top, float scale[16])
{
    float smax = 0;
    for (int j = 0; j < 16; j++) {
        float amax = 0;
        for (int k = 0; k < 16; k++)
            amax = fmaxf(amax, fabsf(x[16 * j + k]));
        scale[j] = amax / top;
        smax = fmaxf(smax, scale[j]);
    }
    return smax;
}

static void quantize_q3_k(const float *x, coe_block_q3_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float scale[16], smax = scales16(x, 4, scale);
        y[i].d = coe_f32_to_f16(smax / 31);
        float d = coe_f16_to_f32(y[i].d);
        memset(y[i].scales, 0, sizeof y[i].scales);
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        int low2[COE_QKK];
        for (int j = 0; j < 16; j++) {
            int sc = d > 0 ? clampi(nearest(scale[j] / d), -32, 31) : 0, l = sc + 32;
            if (j < 8)
                y[i].scales[j] = (uint8_t)(l & 15);
            else
                y[i].scales[j - 8] |= (uint8_t)((l & 15) << 4);
            y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            float s = d * (float)sc;
            for (int k = 0; k < 16; k++) {
                int p = 16 * j + k, q = (s != 0 ? clampi(nearest(x[p] / s), -4, 3) : 0) + 4;
                if (q > 3)
                    y[i].hmask[p % 32] |= (uint8_t)(1 << (p / 32));
                low2[p] = q & 3;
            }
        }
        k23_pack(y[i].qs, low2, COE_QKK);
    }
}

/* The 16 scales of a Q3_K super-block, -32..31. */
static void q3_k_scales(const uint8_t packed[12], int out[16])
{
    for (int j = 0; j < 16; j++) {
        int low = j < 8 ? packed[j] & 15 : packed[j - 8] >> 4;
        out[j] = (low | (packed[8 + j % 4] >> (2 * (j / 4)) & 3) << 4) - 32;
    }
}

/* Where value p (0..255) of a Q6_K block keeps its bits. */
static void q6_k_at(int p, int *ql, int *high_nibble, int *qh, int *shift)
{
    int chunk = p / 128, q = p % 128, group = q / 32, l = q % 32;
    *ql = chunk * 64 + l + (group & 1) * 32;
    *high_nibble = group >= 2;
    *qh = chunk * 32 + l;
    *shift = 2 * group;
}

static void quantize_q6_k(const float *x, coe_block_q6_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += COE_QKK) {
        float scale[16], smax = scales16(x, 31, scale);
        y[i].d = coe_f32_to_f16(smax / 127);
        float d = coe_f16_to_f32(y[i].d);
        memset(y[i].ql, 0, sizeof y[i].ql);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int j = 0; j < 16; j++)
            y[i].scales[j] = (int8_t)(d > 0 ? clampi(nearest(scale[j] / d), -128, 127) : 0);
        for (int p = 0; p < COE_QKK; p++) {
            float s = d * y[i].scales[p / 16];
            int q = (s != 0 ? clampi(nearest(x[p] / s), -32, 31) : 0) + 32;
            int ql, hn, qh, shift;
            q6_k_at(p, &ql, &hn, &qh, &shift);
            y[i].ql[ql] |= (uint8_t)((q & 15) << (hn ? 4 : 0));
            y[i].qh[qh] |= (uint8_t)((q >> 4) << shift);
        }
    }
}

void coe_quantize_row(uint32_t type, const float *x, void *dst, int64_t n)
{
    switch (type) {
    case COE_GGML_F32:
        memcpy(dst, x, (size_t)n * sizeof *x);
        break;
    case COE_GGML_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = coe_f32_to_f16(x[i]);
        break;
    case COE_GGML_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = coe_f32_to_bf16(x[i]);
        break;
    case COE_GGML_Q8_0: quantize_q8_0(x, dst, n / COE_QK, false); break;
    case COE_ACT_Q8_0: quantize_q8_0(x, dst, n / COE_QK, true); break;
    case COE_GGML_Q4_0: quantize_q4_0(x, dst, n / COE_QK); break;
    case COE_GGML_Q5_0: quantize_q5_0(x, dst, n / COE_QK); break;
    case COE_GGML_IQ4_NL: quantize_iq4_nl(x, dst, n / COE_QK); break;
    case COE_GGML_IQ4_XS: quantize_iq4_xs(x, dst, n / COE_QKK); break;
    case COE_ACT_Q8_1: quantize_q8_1_act(x, dst, n / COE_QK); break;
    case COE_GGML_Q4_1: quantize_qx_1(x, dst, n / COE_QK, 4); break;
    case COE_GGML_Q5_1: quantize_qx_1(x, dst, n / COE_QK, 5); break;
    case COE_GGML_Q8_K: quantize_q8_k(x, dst, n / COE_QKK); break;
    case COE_GGML_Q4_K: quantize_q4_k(x, dst, n / COE_QKK); break;
    case COE_GGML_Q5_K: quantize_q5_k(x, dst, n / COE_QKK); break;
    case COE_GGML_Q6_K: quantize_q6_k(x, dst, n / COE_QKK); break;
    case COE_GGML_Q2_K: quantize_q2_k(x, dst, n / COE_QKK); break;
    case COE_GGML_Q3_K: quantize_q3_k(x, dst, n / COE_QKK); break;
    default: break;
    }
}

/* The 32 five-bit codes (0..31) of a Q5_0 or Q5_1 block: value j's low four bits in qs
 * (the low nibbles for j < 16, the high ones after), its fifth bit j of qh. */
static inline void q5_codes(const uint8_t *qs, const uint8_t *qh_bytes, int codes[COE_QK])
{
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < COE_QK / 2; j++) {
        codes[j] = (qs[j] & 15) | (int)(qh >> j & 1) << 4;
        codes[j + 16] = (qs[j] >> 4) | (int)(qh >> (j + 16) & 1) << 4;
    }
}

/* The 6-bit scale (0..63, 32 meaning zero) of an IQ4_XS super-block's 32-value block ib. */
static inline int iq4_xs_scale(const coe_block_iq4_xs *b, int ib)
{
    return (b->scales_l[ib / 2] >> 4 * (ib % 2) & 15) | (b->scales_h >> 2 * ib & 3) << 4;
}

/* ---- reference dequantizers ---- */

void coe_dequantize_row(uint32_t type, const void *src, float *y, int64_t n)
{
    switch (type) {
    case COE_GGML_F32:
        memcpy(y, src, (size_t)n * sizeof *y);
        return;
    case COE_GGML_F16:
        for (int64_t i = 0; i < n; i++)
            y[i] = coe_f16_to_f32(((const uint16_t *)src)[i]);
        return;
    case COE_GGML_BF16:
        for (int64_t i = 0; i < n; i++)
            y[i] = coe_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    case COE_GGML_Q8_0:
        for (int64_t i = 0; i < n / COE_QK; i++) {
            const coe_block_q8_0 *b = (const coe_block_q8_0 *)src + i;
            float d = coe_f16_to_f32(b->d);
            for (int j = 0; j < COE_QK; j++)
                *y++ = d * (float)b->qs[j];
        }
        return;
    case COE_ACT_Q8_0:
        for (int64_t i = 0; i < n / COE_QK; i++) {
            const coe_block_q8_0_act *b = (const coe_block_q8_0_act *)src + i;
            for (int j = 0; j < COE_QK; j++)
                *y++ = b->d * (float)b->qs[j];
        }
        return;
    case COE_GGML_Q4_0:
        for (int64_t i = 0; i < n / COE_QK; i++, y += COE_QK) {
            const coe_block_q4_0 *b = (const coe_block_q4_0 *)src + i;
            float d = coe_f16_to_f32(b->d);
            for (int j = 0; j < COE_QK / 2; j++) {
                y[j] = d * (float)((b->qs[j] & 15) - 8);
                y[j + 16] = d * (float)((b->qs[j] >> 4) - 8);
            }
        }
        return;
    case COE_GGML_IQ4_NL:
        for (int64_t i = 0; i < n / COE_QK; i++, y += COE_QK) {
            const coe_block_iq4_nl *b = (const coe_block_iq4_nl *)src + i;
            float d = coe_f16_to_f32(b->d);
            for (int j = 0; j < COE_QK / 2; j++) {
                y[j] = d * (float)coe_iq4nl_values[b->qs[j] & 15];
                y[j + 16] = d * (float)coe_iq4nl_values[b->qs[j] >> 4];
            }
        }
        return;
    case COE_GGML_IQ4_XS:
        for (int64_t i = 0; i < n / COE_QKK; i++) {
            const coe_block_iq4_xs *b = (const coe_block_iq4_xs *)src + i;
            float d = coe_f16_to_f32(b->d);
            for (int ib = 0; ib < COE_QKK / 32; ib++, y += 32) {
                float dl = d * (float)(iq4_xs_scale(b, ib) - 32);
                for (int j = 0; j < 16; j++) {
                    y[j] = dl * (float)coe_iq4nl_values[b->qs[16 * ib + j] & 15];
                    y[j + 16] = dl * (float)coe_iq4nl_values[b->qs[16 * ib + j] >> 4];
                }
            }
        }
        return;
    case COE_ACT_Q8_1:
        for (int64_t i = 0; i < n / COE_QK; i++) {
            const coe_block_q8_1_act *b = (const coe_block_q8_1_act *)src + i;
            for (int j = 0; j < COE_QK; j++)
                *y++ = b->d * (float)b->qs[j];
        }
        return;
    case COE_GGML_Q4_1:
        for (int64_t i = 0; i < n / COE_QK; i++, y += COE_QK) {
            const coe_block_q4_1 *b = (const coe_block_q4_1 *)src + i;
            float d = coe_f16_to_f32(b->d), m = coe_f16_to_f32(b->m);
            for (int j = 0; j < COE_QK / 2; j++) {
                y[j] = (float)(b->qs[j] & 15) * d + m;
                y[j + 16] = (float)(b->qs[j] >> 4) * d + m;
            }
        }
        return;
    case COE_GGML_Q5_1:
        for (int64_t i = 0; i < n / COE_QK; i++, y += COE_QK) {
            const coe_block_q5_1 *b = (const coe_block_q5_1 *)src + i;
            float d = coe_f16_to_f32(b->d), m = coe_f16_to_f32(b->m);
            int q[COE_QK];
            q5_codes(b->qs, b->qh, q);
            for (int j = 0; j < COE_QK; j++)
                y[j] = (float)q[j] * d + m;
        }
        return;
    case COE_GGML_Q5_0:
        for (int64_t i = 0; i < n / COE_QK; i++, y += COE_QK) {
            const coe_block_q5_0 *b = (const coe_block_q5_0 *)src + i;
            float d = coe_f16_to_f32(b->d);
            int q[COE_QK];
            q5_codes(b->qs, b->qh, q);
            for (int j = 0; j < COE_QK; j++)
                y[j] = d * (float)(q[j] - 16);
        }
        return;
    case COE_GGML_Q8_K:
        for (int64_t i = 0; i < n / COE_QKK; i++) {
            const coe_block_q8_k *b = (const coe_block_q8_k *)src + i;
            for (int j = 0; j < COE_QKK; j++)
                *y++ = b->d * (float)b->qs[j];
        }
        return;
    case COE_GGML_Q4_K:
    case COE_GGML_Q5_K:
        for (int64_t i = 0; i < n / COE_QKK; i++, y += COE_QKK) {
            const bool five = type == COE_GGML_Q5_K;
            const coe_block_q4_k *b4 = (const coe_block_q4_k *)src + i;
            const coe_block_q5_k *b5 = (const coe_block_q5_k *)src + i;
            float d = coe_f16_to_f32(five ? b5->d : b4->d), dmin = coe_f16_to_f32(five ? b5->dmin : b4->dmin);
            const uint8_t *scales = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
            for (int c = 0; c < 4; c++) {
                int sc0, m0, sc1, m1;
                scale_min_k4(2 * c, scales, &sc0, &m0);
                scale_min_k4(2 * c + 1, scales, &sc1, &m1);
                for (int l = 0; l < 32; l++) {
                    int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
                    if (five) {
                        lo |= ((b5->qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((b5->qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    y[64 * c + l] = d * (float)sc0 * (float)lo - dmin * (float)m0;
                    y[64 * c + 32 + l] = d * (float)sc1 * (float)hi - dmin * (float)m1;
                }
            }
        }
        return;
    case COE_GGML_Q2_K:
        for (int64_t i = 0; i < n / COE_QKK; i++, y += COE_QKK) {
            const coe_block_q2_k *b = (const coe_block_q2_k *)src + i;
            float d = coe_f16_to_f32(b->d), dmin = coe_f16_to_f32(b->dmin);
            for (int p = 0; p < COE_QKK; p++) {
                int sc = b->scales[p / 16];
                y[p] = d * (float)(sc & 15) * (float)k23_low2(b->qs, p) - dmin * (float)(sc >> 4);
            }
        }
        return;
    case COE_GGML_Q3_K:
        for (int64_t i = 0; i < n / COE_QKK; i++, y += COE_QKK) {
            const coe_block_q3_k *b = (const coe_block_q3_k *)src + i;
            float d = coe_f16_to_f32(b->d);
            int sc[16];
            q3_k_scales(b->scales, sc);
            for (int p = 0; p < COE_QKK; p++) {
                int q = k23_low2(b->qs, p) - (b->hmask[p % 32] >> (p / 32) & 1 ? 0 : 4);
                y[p] = d * (float)sc[p / 16] * (float)q;
            }
        }
        return;
    case COE_GGML_Q6_K:
        for (int64_t i = 0; i < n / COE_QKK; i++, y += COE_QKK) {
            const coe_block_q6_k *b = (const coe_block_q6_k *)src + i;
            float d = coe_f16_to_f32(b->d);
            for (int p = 0; p < COE_QKK; p++) {
                int ql, hn, qh, shift;
                q6_k_at(p, &ql, &hn, &qh, &shift);
                int q = (((b->ql[ql] >> (hn ? 4 : 0)) & 15) | ((b->qh[qh] >> shift) & 3) << 4) - 32;
                y[p] = d * (float)b->scales[p / 16] * (float)q;
            }
        }
        return;
    default:
        return;
    }
}

float coe_vec_dot_ref(uint32_t type, const void *w, const void *x, int64_t n)
{
    float wf[COE_QKK], xf[COE_QKK];
    double s = 0;
    size_t wb = coe_row_bytes(type, COE_QKK), xb = coe_row_bytes(coe_dot_type(type), COE_QKK);
    int64_t step = n % COE_QKK == 0 ? COE_QKK : COE_QK;
    if (step == COE_QK) {
        wb = coe_row_bytes(type, COE_QK);
        xb = coe_row_bytes(coe_dot_type(type), COE_QK);
    }
    for (int64_t i = 0; i < n; i += step) {
        coe_dequantize_row(type, (const uint8_t *)w + (size_t)(i / step) * wb, wf, step);
        coe_dequantize_row(coe_dot_type(type), (const uint8_t *)x + (size_t)(i / step) * xb, xf, step);
        for (int64_t j = 0; j < step; j++)
            s += (double)wf[j] * xf[j];
    }
    if (coe_dot_type(type) == COE_ACT_Q8_1) {
        /* The minimum's term uses the activation's stored sum s (an F16 of d * the sum of
         * the codes) instead of the sum of its values: m * (s - sum), per block. */
        uint32_t block, bytes;
        coe_ggml_type_layout(type, &block, &bytes);
        for (int64_t i = 0; i < n / COE_QK; i++) {
            const coe_block_q8_1_act *a = (const coe_block_q8_1_act *)x + i;
            uint16_t m;
            memcpy(&m, (const uint8_t *)w + (size_t)i * bytes + 2, 2); /* after d, in Q4_1 and Q5_1 */
            double sum = 0;
            for (int j = 0; j < COE_QK; j++)
                sum += (double)a->d * a->qs[j];
            s += (double)coe_f16_to_f32(m) * (a->s - sum);
        }
    }
    return (float)s;
}

/* ---- optimized dots: portable C ---- */

/* The float dots and axpy below do the AVX2 kernels' operations in their order (8
 * lanes, fused multiply-adds, the same final reduction), so that both paths give the
 * same bits: the activations that follow are quantized to 8 bits, where one ulp can
 * move a code, and an F32 or F16 model's answer then depends on the CPU otherwise. */

/* The AVX2 kernels' horizontal sum of 8 lanes. */
static float hsum8_c(const float v[8])
{
    float a = v[0] + v[4], b = v[1] + v[5], c = v[2] + v[6], d = v[3] + v[7];
    return (a + c) + (b + d);
}

static float dot_f32(const void *w, const void *x, int64_t n)
{
    const float *a = w, *b = x;
    float acc[4][8] = {{0}};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < 8; k++)
                acc[r][k] = fmaf(a[i + 8 * r + k], b[i + 8 * r + k], acc[r][k]);
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[0][k] = fmaf(a[i + k], b[i + k], acc[0][k]);
    float v[8];
    for (int k = 0; k < 8; k++)
        v[k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    float s = hsum8_c(v);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float dot_f16(const void *w, const void *x, int64_t n)
{
    const uint16_t *a = w, *b = x;
    float acc[2][8] = {{0}};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < 8; k++)
                acc[r][k] = fmaf(coe_f16_to_f32(a[i + 8 * r + k]), coe_f16_to_f32(b[i + 8 * r + k]), acc[r][k]);
    float v[8];
    for (int k = 0; k < 8; k++)
        v[k] = acc[0][k] + acc[1][k];
    float s = hsum8_c(v);
    for (; i < n; i++)
        s += coe_f16_to_f32(a[i]) * coe_f16_to_f32(b[i]);
    return s;
}

static float dot_bf16(const void *w, const void *x, int64_t n)
{
    const uint16_t *a = w, *b = x;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(coe_bf16_to_f32(a[i + k]), coe_bf16_to_f32(b[i + k]), acc[k]);
    float s = hsum8_c(acc);
    for (; i < n; i++)
        s += coe_bf16_to_f32(a[i]) * coe_bf16_to_f32(b[i]);
    return s;
}

/* As the AVX2 kernels: per block, 8 integer lanes of 4 products each, each turned to
 * float and fused into lane accumulators (even and odd blocks apart for Q8_0). */
static float dot_q8_0(const void *w, const void *x, int64_t n)
{
    const coe_block_q8_0 *a = w;
    const coe_block_q8_0_act *b = x;
    float acc[2][8] = {{0}};
    for (int64_t i = 0; i < n / COE_QK; i++) {
        float d = coe_f16_to_f32(a[i].d) * b[i].d;
        for (int k = 0; k < 8; k++) {
            int lane = 0;
            for (int j = 4 * k; j < 4 * k + 4; j++)
                lane += a[i].qs[j] * b[i].qs[j];
            acc[i & 1][k] = fmaf(d, (float)lane, acc[i & 1][k]);
        }
    }
    float v[8];
    for (int k = 0; k < 8; k++)
        v[k] = acc[0][k] + acc[1][k];
    return hsum8_c(v);
}

static float dot_q4_0(const void *w, const void *x, int64_t n)
{
    const coe_block_q4_0 *a = w;
    const coe_block_q8_0_act *b = x;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / COE_QK; i++) {
        float d = coe_f16_to_f32(a[i].d) * b[i].d;
        for (int k = 0; k < 8; k++) {
            int lane = 0;
            for (int j = 4 * k; j < 4 * k + 4; j++)
                lane += ((j < 16 ? a[i].qs[j] & 15 : a[i].qs[j - 16] >> 4) - 8) * b[i].qs[j];
            acc[k] = fmaf(d, (float)lane, acc[k]);
        }
    }
    return hsum8_c(acc);
}

/* As ggml's: an integer sum per block, then d_w * d_x * sum. */
static float dot_q5_0(const void *w, const void *x, int64_t n)
{
    const coe_block_q5_0 *a = w;
    const coe_block_q8_0_act *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QK; i++) {
        int q[COE_QK], sum = 0;
        q5_codes(a[i].qs, a[i].qh, q);
        for (int j = 0; j < COE_QK; j++)
            sum += (q[j] - 16) * b[i].qs[j];
        s += coe_f16_to_f32(a[i].d) * b[i].d * (float)sum;
    }
    return s;
}

/* As ggml's: an integer sum of table values times codes per block, times d_x * d_w. */
static float dot_iq4_nl(const void *w, const void *x, int64_t n)
{
    const coe_block_iq4_nl *a = w;
    const coe_block_q8_0_act *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QK; i++) {
        float d = b[i].d * coe_f16_to_f32(a[i].d);
        int s1 = 0, s2 = 0;
        for (int j = 0; j < COE_QK / 2; j++) {
            s1 += b[i].qs[j] * coe_iq4nl_values[a[i].qs[j] & 15];
            s2 += b[i].qs[j + 16] * coe_iq4nl_values[a[i].qs[j] >> 4];
        }
        s += d * (float)(s1 + s2);
    }
    return s;
}

/* As ggml's: per 32, (d_w * d_x) * (scale - 32) times the integer sum. */
static float dot_iq4_xs(const void *w, const void *x, int64_t n)
{
    const coe_block_iq4_xs *a = w;
    const coe_block_q8_k *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QKK; i++) {
        const float d4d8 = coe_f16_to_f32(a[i].d) * b[i].d;
        const uint8_t *qs = a[i].qs;
        const int8_t *q8 = b[i].qs;
        for (int ib = 0; ib < COE_QKK / 32; ib++, qs += 16, q8 += 32) {
            int ls = iq4_xs_scale(&a[i], ib), s1 = 0, s2 = 0;
            for (int j = 0; j < 16; j++) {
                s1 += q8[j] * coe_iq4nl_values[qs[j] & 15];
                s2 += q8[j + 16] * coe_iq4nl_values[qs[j] >> 4];
            }
            s += d4d8 * (float)(ls - 32) * (float)(s1 + s2);
        }
    }
    return s;
}

/* As ggml's: d_w * d_x * the integer sum, plus m_w * s_x (the minimum times the sum of
 * the activation's values). */
static float dot_q4_1(const void *w, const void *x, int64_t n)
{
    const coe_block_q4_1 *a = w;
    const coe_block_q8_1_act *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QK; i++) {
        int sum = 0;
        for (int j = 0; j < COE_QK / 2; j++)
            sum += (a[i].qs[j] & 15) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        s += coe_f16_to_f32(a[i].d) * b[i].d * (float)sum + coe_f16_to_f32(a[i].m) * b[i].s;
    }
    return s;
}

static float dot_q5_1(const void *w, const void *x, int64_t n)
{
    const coe_block_q5_1 *a = w;
    const coe_block_q8_1_act *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QK; i++) {
        int q[COE_QK], sum = 0;
        q5_codes(a[i].qs, a[i].qh, q);
        for (int j = 0; j < COE_QK; j++)
            sum += q[j] * b[i].qs[j];
        s += coe_f16_to_f32(a[i].d) * b[i].d * (float)sum + coe_f16_to_f32(a[i].m) * b[i].s;
    }
    return s;
}

/* The K-quant dots are integer sums per sub-block, written so the compiler vectorizes
 * them; the mins come out of the activation's per-16 sums (bsums). Q4_K and Q5_K
 * differ only in Q5_K's fifth bits (qh). */
static inline float dot_k4(const uint8_t *w, bool five, const void *x, int64_t n)
{
    const coe_block_q8_k *b = x;
    const size_t block_bytes = five ? sizeof(coe_block_q5_k) : sizeof(coe_block_q4_k);
    const size_t qs_at = five ? offsetof(coe_block_q5_k, qs) : offsetof(coe_block_q4_k, qs);
    float s = 0;
    for (int64_t i = 0; i < n / COE_QKK; i++, w += block_bytes) {
        const coe_block_q4_k *head = (const coe_block_q4_k *)w; /* d, dmin and scales lie alike in both */
        const uint8_t *qs = w + qs_at, *qh = five ? w + offsetof(coe_block_q5_k, qh) : NULL;
        int sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++) {
            int sc0, m0, sc1, m1, lo = 0, hi = 0;
            scale_min_k4(2 * c, head->scales, &sc0, &m0);
            scale_min_k4(2 * c + 1, head->scales, &sc1, &m1);
            const uint8_t *q = qs + 32 * c;
            const int8_t *y = b[i].qs + 64 * c;
            if (qh)
                for (int l = 0; l < 32; l++) {
                    lo += ((q[l] & 15) | ((qh[l] >> (2 * c)) & 1) << 4) * y[l];
                    hi += ((q[l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4) * y[l + 32];
                }
            else
                for (int l = 0; l < 32; l++) {
                    lo += (q[l] & 15) * y[l];
                    hi += (q[l] >> 4) * y[l + 32];
                }
            sumi += sc0 * lo + sc1 * hi;
            summ += m0 * (b[i].bsums[4 * c] + b[i].bsums[4 * c + 1]) + m1 * (b[i].bsums[4 * c + 2] + b[i].bsums[4 * c + 3]);
        }
        s += b[i].d * (coe_f16_to_f32(head->d) * (float)sumi - coe_f16_to_f32(head->dmin) * (float)summ);
    }
    return s;
}

static float dot_q4_k(const void *w, const void *x, int64_t n)
{
    return dot_k4(w, false, x, n);
}

static float dot_q5_k(const void *w, const void *x, int64_t n)
{
    return dot_k4(w, true, x, n);
}

/* As llama.cpp: integer sums per 16 values, the minimums through Q8_K's block sums. */
static float dot_q2_k(const void *w, const void *x, int64_t n)
{
    const coe_block_q2_k *a = w;
    const coe_block_q8_k *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QKK; i++) {
        int summs = 0, isum = 0;
        for (int j = 0; j < 16; j++)
            summs += b[i].bsums[j] * (a[i].scales[j] >> 4);
        for (int j = 0; j < 16; j++) {
            int g = 0;
            for (int k = 0; k < 16; k++)
                g += b[i].qs[16 * j + k] * k23_low2(a[i].qs, 16 * j + k);
            isum += (a[i].scales[j] & 15) * g;
        }
        float dall = b[i].d * coe_f16_to_f32(a[i].d), dmin = b[i].d * coe_f16_to_f32(a[i].dmin);
        s += dall * (float)isum - dmin * (float)summs;
    }
    return s;
}

static float dot_q3_k(const void *w, const void *x, int64_t n)
{
    const coe_block_q3_k *a = w;
    const coe_block_q8_k *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QKK; i++) {
        int sc[16], isum = 0;
        q3_k_scales(a[i].scales, sc);
        for (int j = 0; j < 16; j++) {
            int g = 0;
            for (int k = 0; k < 16; k++) {
                int p = 16 * j + k;
                g += b[i].qs[p] * (k23_low2(a[i].qs, p) - (a[i].hmask[p % 32] >> (p / 32) & 1 ? 0 : 4));
            }
            isum += sc[j] * g;
        }
        s += coe_f16_to_f32(a[i].d) * b[i].d * (float)isum;
    }
    return s;
}

static float dot_q6_k(const void *w, const void *x, int64_t n)
{
    const coe_block_q6_k *a = w;
    const coe_block_q8_k *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / COE_QKK; i++) {
        int sumi = 0;
        for (int chunk = 0; chunk < 2; chunk++) {
            const uint8_t *ql = a[i].ql + 64 * chunk, *qh = a[i].qh + 32 * chunk;
            const int8_t *y = b[i].qs + 128 * chunk, *sc = a[i].scales + 8 * chunk;
            int g[8] = {0}; /* per 16-value sub-block */
            for (int l = 0; l < 32; l++) {
                int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                int h = l / 16;
                g[h] += q1 * y[l];
                g[h + 2] += q2 * y[l + 32];
                g[h + 4] += q3 * y[l + 64];
                g[h + 6] += q4 * y[l + 96];
            }
            for (int k = 0; k < 8; k++)
                sumi += sc[k] * g[k];
        }
        s += coe_f16_to_f32(a[i].d) * b[i].d * (float)sumi;
    }
    return s;
}

static void axpy_f32(float *y, float a, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            y[i + k] = fmaf(a, x[i + k], y[i + k]);
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* ---- optimized dots: AVX2 ---- */

#if COE_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Sum of products of 32 signed bytes, as 8 int32 lanes turned to float. */
AVX2 static inline __m256 mul_i8(__m256i a, __m256i b)
{
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

AVX2 static float dot_f32_avx2(const void *w, const void *x, int64_t n)
{
    const float *a = w, *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

AVX2 static float dot_f16_avx2(const void *w, const void *x, int64_t n)
{
    const uint16_t *a = w, *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i))), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8))),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8))), s1);
    }
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += coe_f16_to_f32(a[i]) * coe_f16_to_f32(b[i]);
    return s;
}

AVX2 static void axpy_f32_avx2(float *y, float a, const float *x, int64_t n)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

AVX2 static inline __m256 load_bf16(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

AVX2 static float dot_bf16_avx2(const void *w, const void *x, int64_t n)
{
    const uint16_t *a = w, *b = x;
    __m256 s0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(load_bf16(a + i), load_bf16(b + i), s0);
    float s = hsum8(s0);
    for (; i < n; i++)
        s += coe_bf16_to_f32(a[i]) * coe_bf16_to_f32(b[i]);
    return s;
}

/* Q8_0 against Q8_0. PAIRS(aa, s) sums the products of |a| (unsigned) and b signed
 * as a into 8 int32 lanes: AVX2 does it with maddubs and madd, AVX-512 VNNI with one
 * vpdpbusd. Integer sums are exact, so every variant gives the same bits. Blocks go to
 * even and odd float sums (two dependency chains); the four-row kernel loads and makes
 * absolute each weight block once for four activation rows, with the same sums in
 * the same order, so batched and single products agree to the bit. */
AVX2 static inline __m256i pairs_avx2(__m256i aa, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aa, s), _mm256_set1_epi16(1));
}

#define VNNI __attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni")))

VNNI static inline __m256i pairs_vnni(__m256i aa, __m256i s)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aa, s);
}

#define Q8_0_DOTS(ATTR, NAME, PAIRS)                                                                                   \
    ATTR static inline __m256 block_q8_0_##NAME(const coe_block_q8_0 *a, const coe_block_q8_0_act *b, __m256 sum)  \
    {                                                                                                                  \
        __m256i qa = _mm256_loadu_si256((const __m256i *)a->qs);                                                       \
        __m256i s = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)b->qs), qa);                                  \
        __m256 p = _mm256_cvtepi32_ps(PAIRS(_mm256_sign_epi8(qa, qa), s));                                             \
        return _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a->d) * b->d), p, sum);                                        \
    }                                                                                                                  \
    ATTR static float dot_q8_0_##NAME(const void *w, const void *x, int64_t n)                                        \
    {                                                                                                                  \
        const coe_block_q8_0 *a = w;                                                                                   \
        const coe_block_q8_0_act *b = x;                                                                               \
        __m256 even = _mm256_setzero_ps(), odd = even;                                                                 \
        int64_t nb = n / COE_QK, i = 0;                                                                                \
        for (; i + 1 < nb; i += 2) {                                                                                   \
            even = block_q8_0_##NAME(a + i, b + i, even);                                                              \
            odd = block_q8_0_##NAME(a + i + 1, b + i + 1, odd);                                                        \
        }                                                                                                              \
        if (i < nb)                                                                                                    \
            even = block_q8_0_##NAME(a + i, b + i, even);                                                              \
        return hsum8(_mm256_add_ps(even, odd));                                                                        \
    }

/* Q8_0 against four activation rows. */
#define Q8_0_DOT4(ATTR, NAME, PAIRS)                                                                                   \
    /* One weight block against four activation rows, into sums s[0..3]. */                                        \
    ATTR static inline void block4_q8_0_##NAME(const coe_block_q8_0 *a, const coe_block_q8_0_act *const *b,         \
                                               int64_t i, __m256 *s0, __m256 *s1, __m256 *s2, __m256 *s3)           \
    {                                                                                                                  \
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs), aa = _mm256_sign_epi8(qa, qa);                      \
        __m256 dw = _mm256_set1_ps(_cvtsh_ss(a[i].d));                                                                 \
        __m256 *s[4] = {s0, s1, s2, s3};                                                                               \
        for (int t = 0; t < 4; t++) {                                                                                  \
            __m256i q = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)b[t][i].qs), qa);                         \
            __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&b[t][i].d)); /* the single kernel's product */        \
            *s[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(PAIRS(aa, q)), *s[t]);                                   \
        }                                                                                                              \
    }                                                                                                                  \
    /* Even and odd blocks unrolled so the eight sums stay in registers (an index i & 1                                \
     * kept them in memory, a store-to-load chain on every block). */                                                 \
    ATTR static void dot4_q8_0_##NAME(const void *w, const void *x, size_t stride, int64_t n, float *out)             \
    {                                                                                                                  \
        const coe_block_q8_0 *a = w;                                                                                   \
        const coe_block_q8_0_act *b[4];                                                                                \
        for (int t = 0; t < 4; t++)                                                                                    \
            b[t] = (const coe_block_q8_0_act *)((const uint8_t *)x + (size_t)t * stride);                              \
        __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;                \
        int64_t nb = n / COE_QK, i = 0;                                                                                \
        for (; i + 1 < nb; i += 2) {                                                                                   \
            block4_q8_0_##NAME(a, b, i, &e0, &e1, &e2, &e3);                                                           \
            block4_q8_0_##NAME(a, b, i + 1, &o0, &o1, &o2, &o3);                                                       \
        }                                                                                                              \
        if (i < nb)                                                                                                    \
            block4_q8_0_##NAME(a, b, i, &e0, &e1, &e2, &e3);                                                           \
        out[0] = hsum8(_mm256_add_ps(e0, o0));                                                                         \
        out[1] = hsum8(_mm256_add_ps(e1, o1));                                                                         \
        out[2] = hsum8(_mm256_add_ps(e2, o2));                                                                         \
        out[3] = hsum8(_mm256_add_ps(e3, o3));                                                                         \
    }

Q8_0_DOTS(AVX2, avx2, pairs_avx2)
Q8_0_DOT4(AVX2, avx2, pairs_avx2)
Q8_0_DOTS(VNNI, vnni, pairs_vnni)

/* VNNI's four rows: vpdpbusd multiplies unsigned by signed bytes, so the activations'
 * unsigned codes (qu = qs + 128) meet the weights as they are, and the 128 * sum of
 * each 4 weights, once per weight block for the four rows, is taken off first (the
 * sum's start). The int32 lanes are exactly the single kernel's, the float operations
 * too: the same bits, in 4 operations a row and block instead of 5. */
VNNI static inline void block4_q8_0_vnni_u(const coe_block_q8_0 *a, const coe_block_q8_0_act *const *b, int64_t i,
                                           __m256 *s0, __m256 *s1, __m256 *s2, __m256 *s3)
{
    __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
    __m256i off = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), qa));
    __m256 dw = _mm256_set1_ps(_cvtsh_ss(a[i].d));
    __m256 *s[4] = {s0, s1, s2, s3};
    for (int t = 0; t < 4; t++) {
        __m256i p = _mm256_dpbusd_epi32(off, _mm256_loadu_si256((const __m256i *)b[t][i].qu), qa);
        __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&b[t][i].d)); /* the single kernel's product */
        *s[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *s[t]);
    }
}

VNNI static void dot4_q8_0_vnni(const void *w, const void *x, size_t stride, int64_t n, float *out)
{
    const coe_block_q8_0 *a = w;
    const coe_block_q8_0_act *b[4];
    for (int t = 0; t < 4; t++)
        b[t] = (const coe_block_q8_0_act *)((const uint8_t *)x + (size_t)t * stride);
    __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
    int64_t nb = n / COE_QK, i = 0;
    for (; i + 1 < nb; i += 2) {
        block4_q8_0_vnni_u(a, b, i, &e0, &e1, &e2, &e3);
        block4_q8_0_vnni_u(a, b, i + 1, &o0, &o1, &o2, &o3);
    }
    if (i < nb)
        block4_q8_0_vnni_u(a, b, i, &e0, &e1, &e2, &e3);
    out[0] = hsum8(_mm256_add_ps(e0, o0));
    out[1] = hsum8(_mm256_add_ps(e1, o1));
    out[2] = hsum8(_mm256_add_ps(e2, o2));
    out[3] = hsum8(_mm256_add_ps(e3, o3));
}

AVX2 static float dot_q4_0_avx2(const void *w, const void *x, int64_t n)
{
    const coe_block_q4_0 *a = w;
    const coe_block_q8_0_act *b = x;
    __m256 acc = _mm256_setzero_ps();
    const __m256i low = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
    for (int64_t i = 0; i < n / COE_QK; i++) {
        __m256 d = _mm256_set1_ps(_cvtsh_ss(a[i].d) * b[i].d);
        __m128i q = _mm_loadu_si128((const __m128i *)a[i].qs);
        __m256i qa = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
        qa = _mm256_sub_epi8(_mm256_and_si256(qa, low), eight);
        acc = _mm256_fmadd_ps(d, mul_i8(qa, _mm256_loadu_si256((const __m256i *)b[i].qs)), acc);
    }
    return hsum8(acc);
}

/* The K-quant dots compiled for AVX2: the same C, vectorized by the compiler. */
AVX2 static float dot_q4_k_avx2(const void *w, const void *x, int64_t n) { return dot_q4_k(w, x, n); }
AVX2 static float dot_q5_k_avx2(const void *w, const void *x, int64_t n) { return dot_q5_k(w, x, n); }
AVX2 static float dot_q6_k_avx2(const void *w, const void *x, int64_t n) { return dot_q6_k(w, x, n); }
AVX2 static float dot_q2_k_avx2(const void *w, const void *x, int64_t n) { return dot_q2_k(w, x, n); }
AVX2 static float dot_q3_k_avx2(const void *w, const void *x, int64_t n) { return dot_q3_k(w, x, n); }
#endif

static struct {
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    coe_dot4_fn q8_0_x4;
    bool vnni;
    coe_dot_fn f32, f16, bf16, q8_0, q4_0, q5_0, q4_1, q5_1, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k;
    bool simd;
} dots;
static pthread_once_t dots_once = PTHREAD_ONCE_INIT;

static void pick_dots(void)
{
    dots.axpy = axpy_f32;
    dots.f32 = dot_f32, dots.f16 = dot_f16, dots.bf16 = dot_bf16, dots.q8_0 = dot_q8_0, dots.q4_0 = dot_q4_0;
    dots.q5_0 = dot_q5_0, dots.q4_1 = dot_q4_1, dots.q5_1 = dot_q5_1, dots.iq4_nl = dot_iq4_nl;
    dots.iq4_xs = dot_iq4_xs;
    dots.q2_k = dot_q2_k, dots.q3_k = dot_q3_k, dots.q4_k = dot_q4_k, dots.q5_k = dot_q5_k, dots.q6_k = dot_q6_k;
#if COE_X86
    __builtin_cpu_init();
    /* COEGATE_NO_SIMD=1 forces the portable kernels, =vnni only leaves VNNI out (tests run each path). */
    const char *no = getenv("COEGATE_NO_SIMD");
    if (no && !*no)
        no = NULL;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && (!no || strcmp(no, "vnni") == 0)) {
        dots.f32 = dot_f32_avx2, dots.f16 = dot_f16_avx2, dots.bf16 = dot_bf16_avx2, dots.q8_0 = dot_q8_0_avx2;
        dots.q4_0 = dot_q4_0_avx2, dots.q4_k = dot_q4_k_avx2, dots.q5_k = dot_q5_k_avx2, dots.q6_k = dot_q6_k_avx2;
        dots.q2_k = dot_q2_k_avx2, dots.q3_k = dot_q3_k_avx2;
        dots.q8_0_x4 = dot4_q8_0_avx2;
        dots.axpy = axpy_f32_avx2;
        dots.simd = true;
        if (__builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && !no) {
            dots.q8_0 = dot_q8_0_vnni;
            dots.q8_0_x4 = dot4_q8_0_vnni;
            dots.vnni = true;
        }
    }
#endif
}

bool coe_quant_simd(void)
{
    pthread_once(&dots_once, pick_dots);
    return dots.simd;
}

const char *coe_quant_kernels(void)
{
    pthread_once(&dots_once, pick_dots);
    return dots.vnni ? "AVX2 + AVX-512 VNNI" : dots.simd ? "AVX2" : "portable C";
}

coe_dot_fn coe_vec_dot_fn(uint32_t type)
{
    pthread_once(&dots_once, pick_dots);
    switch (type) {
    case COE_GGML_F32: return dots.f32;
    case COE_GGML_F16: return dots.f16;
    case COE_GGML_BF16: return dots.bf16;
    case COE_GGML_Q8_0: return dots.q8_0;
    case COE_GGML_Q4_0: return dots.q4_0;
    case COE_GGML_Q5_0: return dots.q5_0;
    case COE_GGML_Q4_1: return dots.q4_1;
    case COE_GGML_Q5_1: return dots.q5_1;
    case COE_GGML_IQ4_NL: return dots.iq4_nl;
    case COE_GGML_IQ4_XS: return dots.iq4_xs;
    case COE_GGML_Q2_K: return dots.q2_k;
    case COE_GGML_Q3_K: return dots.q3_k;
    case COE_GGML_Q4_K: return dots.q4_k;
    case COE_GGML_Q5_K: return dots.q5_k;
    case COE_GGML_Q6_K: return dots.q6_k;
    default: return NULL;
    }
}

void coe_axpy(float *y, float a, const float *x, int64_t n)
{
    pthread_once(&dots_once, pick_dots);
    dots.axpy(y, a, x, n);
}

coe_dot4_fn coe_vec_dot4_fn(uint32_t type)
{
    pthread_once(&dots_once, pick_dots);
    return type == COE_GGML_Q8_0 ? dots.q8_0_x4 : NULL;
}

float coe_vec_dot(uint32_t type, const void *w, const void *x, int64_t n)
{
    coe_dot_fn f = coe_vec_dot_fn(type);
    return f ? f(w, x, n) : 0;
}
