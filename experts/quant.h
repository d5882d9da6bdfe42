/* Tensor element types of the local engine: block layouts, conversions and the dot
 * products the matrix kernels are made of. Every weight type has a reference
 * dequantizer (plain C, the definition of what the bits mean) and an optimized dot
 * product against activations converted to its "dot type", as llama.cpp does: F32
 * weights meet F32 activations, F16 meet F16, BF16 meet BF16, Q8_0, Q4_0 and Q5_0 meet Q8_0,
 * Q4_1 and Q5_1 meet Q8_1, IQ4_NL meets Q8_0 and IQ4_XS Q8_K
 * (as COE_ACT_Q8_0), the K-quants (Q2_K to Q6_K) meet Q8_K. The optimized dots use AVX2 when the CPU has it (checked once
 * at run time) and portable C otherwise. */
#ifndef COE_QUANT_H
#define COE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/gguf.h"

#define COE_QK 32   /* values per Q8_0 / Q4_0 block */
#define COE_QKK 256 /* values per K-quant super-block */

typedef struct coe_block_q8_0 {
    uint16_t d;
    int8_t qs[COE_QK];
} coe_block_q8_0;

/* Activations for Q8_0 and Q4_0 weights: Q8_0's codes and rounding, with the scale
 * kept as the float value of its F16 (the same numbers, but the hot loops need not
 * convert it again for every weight row). Not a file type. */
#define COE_ACT_Q8_0 1000u

typedef struct coe_block_q8_0_act {
    float d;
    int8_t qs[COE_QK];
    uint8_t qu[COE_QK]; /* qs + 128: the unsigned codes VNNI's four-row kernel multiplies directly */
} coe_block_q8_0_act;

/* Activations for Q4_1 and Q5_1 weights: Q8_1's codes (as Q8_0's) with s, the F16 of
 * d times the sum of the codes, both kept as floats. Not a file type. */
#define COE_ACT_Q8_1 1001u

typedef struct coe_block_q8_1_act {
    float d, s;
    int8_t qs[COE_QK];
} coe_block_q8_1_act;

typedef struct coe_block_q4_0 {
    uint16_t d;
    uint8_t qs[COE_QK / 2];
} coe_block_q4_0;

/* Q5_0: Q4_0's nibbles and a fifth bit per value in qh (value j: bit j), codes 0..31
 * centred on 16. What llama.cpp writes for Q4_K tensors whose rows 256 does not divide. */
typedef struct coe_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[COE_QK / 2];
} coe_block_q5_0;

/* Q4_1 and Q5_1: unsigned codes with a minimum, x = d * q + m. */
typedef struct coe_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[COE_QK / 2];
} coe_block_q4_1;

typedef struct coe_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[COE_QK / 2];
} coe_block_q5_1;

/* IQ4_NL and IQ4_XS: 4-bit indexes into a fixed non-linear table (coe_iq4nl_values);
 * IQ4_NL in blocks of 32 with an F16 scale (dot type Q8_0), IQ4_XS in super-blocks of
 * 256 with a 6-bit scale per 32 (dot type Q8_K). */
typedef struct coe_block_iq4_nl {
    uint16_t d;
    uint8_t qs[COE_QK / 2];
} coe_block_iq4_nl;

typedef struct coe_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;            /* the high 2 bits of each 32's scale */
    uint8_t scales_l[COE_QKK / 64]; /* the low 4 bits, two per byte */
    uint8_t qs[COE_QKK / 2];
} coe_block_iq4_xs;

extern const int8_t coe_iq4nl_values[16];

/* Q2_K: 2-bit codes per 16 values with a 4-bit scale and a 4-bit minimum each,
 * x = d * scale * q - dmin * min. */
typedef struct coe_block_q2_k {
    uint8_t scales[COE_QKK / 16]; /* scale in the low nibble, minimum in the high one */
    uint8_t qs[COE_QKK / 4];
    uint16_t d, dmin;
} coe_block_q2_k;

/* Q3_K: 3-bit codes (2 low bits in qs, the third in hmask) per 16 values with a 6-bit
 * signed scale each (packed in 12 bytes), x = d * (scale - 32) * (q - 4). */
typedef struct coe_block_q3_k {
    uint8_t hmask[COE_QKK / 8];
    uint8_t qs[COE_QKK / 4];
    uint8_t scales[12];
    uint16_t d;
} coe_block_q3_k;

typedef struct coe_block_q4_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[COE_QKK / 2];
} coe_block_q4_k;

typedef struct coe_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[COE_QKK / 8];
    uint8_t qs[COE_QKK / 2];
} coe_block_q5_k;

typedef struct coe_block_q6_k {
    uint8_t ql[COE_QKK / 2];
    uint8_t qh[COE_QKK / 4];
    int8_t scales[COE_QKK / 16];
    uint16_t d;
} coe_block_q6_k;

typedef struct coe_block_q8_k {
    float d;
    int8_t qs[COE_QKK];
    int16_t bsums[COE_QKK / 16];
} coe_block_q8_k;

float coe_f16_to_f32(uint16_t h);
uint16_t coe_f32_to_f16(float f);  /* round to nearest even */
float coe_bf16_to_f32(uint16_t h);
uint16_t coe_f32_to_bf16(float f); /* round to nearest even */

/* The weight types the engine computes with. */
bool coe_quant_supported(uint32_t type);
/* Bytes of a row of n values (n a multiple of the type's block). */
size_t coe_row_bytes(uint32_t type, int64_t n);
/* The type activations are converted to before a dot product with weights of type. */
uint32_t coe_dot_type(uint32_t type);

/* Reference conversions, one row of n values. quantize writes any supported type
 * (the writer of `coe_forge` and of activations), dequantize reads any. */
void coe_quantize_row(uint32_t type, const float *x, void *dst, int64_t n);
void coe_dequantize_row(uint32_t type, const void *src, float *y, int64_t n);

/* The optimized dot product of a weight row of type with activations already
 * converted to coe_dot_type(type); n values. */
float coe_vec_dot(uint32_t type, const void *w, const void *x, int64_t n);
/* The same as a function to call in a loop; NULL for a type without one. */
typedef float (*coe_dot_fn)(const void *w, const void *x, int64_t n);
coe_dot_fn coe_vec_dot_fn(uint32_t type);
/* One weight row against four activation rows stride bytes apart, into out[4]; the
 * same numbers as four calls of the single dot. NULL where a type has none. */
typedef void (*coe_dot4_fn)(const void *w, const void *x, size_t stride, int64_t n, float *out);
coe_dot4_fn coe_vec_dot4_fn(uint32_t type);
/* The naive reference of the same: both sides dequantized, summed in double (for Q8_1
 * activations, the minimum's term taken with their stored sums, as the dot defines it). */
float coe_vec_dot_ref(uint32_t type, const void *w, const void *x, int64_t n);

/* y += a x over n floats (attention's weighted sum of values). */
void coe_axpy(float *y, float a, const float *x, int64_t n);

/* Whether the AVX2 kernels are in use, and which kernels, in words (for logs and
 * benchmarks). COEGATE_NO_SIMD=1 in the environment forces the portable kernels,
 * COEGATE_NO_SIMD=vnni the AVX2 ones without VNNI. */
bool coe_quant_simd(void);
const char *coe_quant_kernels(void);

#endif
