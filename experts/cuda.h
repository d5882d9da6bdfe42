/* The engine's GPU side: a CUDA device, buffers in its memory, and the kernels a
 * forward pass is made of. Each kernel has a CPU reference (the dequantizers of
 * experts/quant.c, the engine's own norm, rope and attention), and the gpu suite
 * (tests/gpu/) compares the two on random inputs of awkward shapes.
 *
 * Built from experts/cuda.cu when nvcc is found; otherwise experts/cuda_none.c
 * answers that there is no device, so callers need no #if. Pointers named d_* are
 * device memory. Kernels are queued on the device's stream in call order;
 * coe_cuda_download waits for them. Every call returns 0 or a coe_err, with the CUDA
 * or cuBLAS error's text in the device's last_error. */
#ifndef COE_CUDA_H
#define COE_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Devices usable now: 0 without a GPU, without a driver, or without CUDA in this build. */
int coe_cuda_device_count(void);

typedef struct coe_cuda coe_cuda;

/* Opens device `device` with its own stream and cuBLAS handle; on failure writes
 * why into why (n bytes) and returns an error. */
int coe_cuda_open(coe_cuda **out, int device, char *why, size_t n);
void coe_cuda_close(coe_cuda **c);
/* "NAME, X GiB" of the open device. */
const char *coe_cuda_name(const coe_cuda *c);
/* The text of the last failed call, "" when none. */
const char *coe_cuda_last_error(const coe_cuda *c);
/* Free and total device memory in bytes. */
int coe_cuda_memory(coe_cuda *c, size_t *free_bytes, size_t *total_bytes);

/* Device memory: NULL when out of memory (last_error says how much was asked). */
void *coe_cuda_alloc(coe_cuda *c, size_t bytes);
void coe_cuda_release(coe_cuda *c, void *d);
int coe_cuda_upload(coe_cuda *c, void *d_dst, const void *src, size_t bytes);
/* Waits for every kernel queued before it. */
int coe_cuda_download(coe_cuda *c, void *dst, const void *d_src, size_t bytes);
int coe_cuda_sync(coe_cuda *c);

/* The device memory's bandwidth as a copy kernel of ours sees it: bytes read plus
 * bytes written per second, the best of reps copies of bytes (benchmarks). */
int coe_cuda_copy_bandwidth(coe_cuda *c, size_t bytes, int reps, double *bytes_per_s);

/* Weight types the kernels read: every type the CPU engine reads. */
bool coe_cuda_type_supported(uint32_t type);

/* y (n floats) = the values of n elements of type (n a whole number of its blocks),
 * bit for bit as coe_dequantize_row. */
int coe_cuda_dequantize(coe_cuda *c, uint32_t type, const void *d_w, int64_t n, float *d_y);

/* The dequantize kernel's code for one value, run on the CPU: what the unit suite
 * checks against coe_dequantize_row on machines without a GPU. COE_EUNSUPPORTED in
 * builds without CUDA. */
int coe_cuda_dequantize_on_cpu(uint32_t type, const void *w, int64_t n, float *y);

/* The activations x (T rows of cols) as the CPU engine's products see them against
 * weights of type wtype: through the weights' dot type (coe_dot_type: Q8_0's codes and
 * scale for Q8_0, Q4_0, Q5_0 and IQ4_NL; Q8_1's for Q4_1 and Q5_1; Q8_K's for the
 * K-quants and IQ4_XS; F16 or BF16 for those) and back, bit for bit as
 * coe_quantize_row then coe_dequantize_row of that type; F32 weights: a copy. So a
 * product of the rounded rows equals the CPU's up to the order of its float sums. */
int coe_cuda_round_activations(coe_cuda *c, uint32_t wtype, const float *d_x, float *d_y, int T, int64_t cols);

/* y[t * ld_y + r] = sum over k of W[r][k] x[t * cols + k], for the T rows of x
 * (float) and the rows of W (rows x cols of type, row-major). Few tokens (decode)
 * read W once for all of them in one kernel; more dequantize W to floats in
 * d_scratch (rows * cols floats, or NULL for the kernel alone) and multiply with
 * cuBLAS in single precision. */
int coe_cuda_matmul(coe_cuda *c, uint32_t type, const void *d_w, int64_t rows, int64_t cols, const float *d_x,
                    int T, float *d_y, int64_t ld_y, float *d_scratch);
/* The largest T that coe_cuda_matmul multiplies without the scratch. */
#define COE_CUDA_MATVEC_MAX_T 8

/* y = x / sqrt(mean(x^2) + eps) * w, for T rows of n, as the CPU engine's rms_norm. */
int coe_cuda_rms_norm(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, float eps);
/* The same for the first n of T rows stride floats apart (in x and in y). */
int coe_cuda_rms_norm_rows(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, int64_t stride,
                           float eps);

/* g = silu(g) * u over n floats. */
int coe_cuda_silu_mul(coe_cuda *c, float *d_g, const float *d_u, int64_t n);

/* y += x over n floats; with s != 1, y += x * s (the residual's scale). */
int coe_cuda_add(coe_cuda *c, float *d_y, const float *d_x, int64_t n, float s);

/* x *= s over n floats. */
int coe_cuda_scale(coe_cuda *c, float *d_x, int64_t n, float s);

/* Each of rows rows of y (n floats) += b (n floats): a bias. */
int coe_cuda_add_rows(coe_cuda *c, float *d_y, const float *d_b, int rows, int n);

/* dst row i = src row idx[i], for n rows of width floats; idx in device memory. */
int coe_cuda_gather_rows(coe_cuda *c, float *d_dst, const float *d_src, const int32_t *d_idx, int n, int width);

/* Copies src row i (width floats, rows contiguous) to dst[i], for n rows; dst an
 * array of device pointers in device memory (a cache row per token). */
int coe_cuda_scatter_rows(coe_cuda *c, float *const *d_dst, const float *d_src, int n, int width);

/* Rows of width floats between strided places: row (o, i), for o < n_outer and
 * i < n_inner, from src + o * src_outer + i * src_inner to dst + (o * n_inner + i) *
 * dst_stride (strides in floats). Gathers each head's rows together, or one piece of
 * every head's row. */
int coe_cuda_copy_rows(coe_cuda *c, float *d_dst, int64_t dst_stride, const float *d_src, int64_t src_outer,
                       int64_t src_inner, int n_outer, int n_inner, int width);

/* Bytes from device memory to device memory, queued. */
int coe_cuda_copy(coe_cuda *c, void *d_dst, const void *d_src, size_t bytes);

/* The experts' outputs summed per token, as the CPU engine's ffn_moe: out row t =
 * sum over s < k of w[t k + s] * eo row slot[t k + s], then, with a shared expert
 * (so not NULL), + so row t, times sigmoid(z[t]) where z is not NULL. Rows of width. */
int coe_cuda_moe_combine(coe_cuda *c, float *d_out, const float *d_eo, const int32_t *d_slot, const float *d_w,
                         int T, int k, int width, const float *d_so, const float *d_z);

/* Rotary embedding as coe_rope (experts/engine.c) computes it; the fields are the
 * model's rope_* values. freqs: rope_dim / 2 factors in device memory, or NULL. */
typedef struct coe_cuda_rope_params {
    int rope_dim;
    bool neox;
    float base, freq_scale, ext_factor, corr_low, corr_high, mscale;
} coe_cuda_rope_params;

/* Head h of token t starts at x + (t * n_heads + h) * head_dim, and its first
 * rope_dim values turn (nothing past the last head's rope_dim is read or written);
 * token t at position pos[t] (device memory). */
int coe_cuda_rope(coe_cuda *c, const coe_cuda_rope_params *p, const float *d_freqs, float *d_x, int T, int n_heads,
                  int head_dim, const int32_t *d_pos);

/* Causal attention of T tokens over their sequences' caches, as the CPU engine's
 * att_worker: token t's n_head query rows of dk (q, row t * n_head + h) against
 * positions 0..pos[t] of its cache, whose keys are k_cache[t] (rows of k_stride
 * floats, kv head g at g * dk) and values v_cache[t] (rows of v_stride, kv head g at
 * g * dv); query head h reads kv head h / (n_head / n_head_kv). Softmax of the
 * scores times scale; out: row t * n_head + h of dv. k_cache, v_cache and pos are
 * arrays in device memory (of device pointers); scratch holds T * n_head * n_ctx
 * floats, n_ctx above every pos. */
typedef struct coe_cuda_attention_shape {
    int n_head, n_head_kv, dk, dv, k_stride, v_stride, n_ctx;
    float scale;
} coe_cuda_attention_shape;

int coe_cuda_attention(coe_cuda *c, const coe_cuda_attention_shape *s, const float *d_q,
                       const float *const *d_k_cache, const float *const *d_v_cache, const int32_t *d_pos, int T,
                       float *d_scratch, float *d_out);

#ifdef __cplusplus
}
#endif

#endif
