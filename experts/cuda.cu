/* CUDA kernels of the engine (experts/cuda.h). Dequantization mirrors
 * coe_dequantize_row operation for operation, with explicitly rounded products and
 * sums (__fmul_rn, __fadd_rn) so that nvcc's contraction into fused multiply-adds
 * cannot change a bit; the products are then summed in a different order from the
 * CPU's, which the gpu suite bounds. */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/cuda_internal.h"
extern "C" {
#include "common/err.h"
#include "experts/quant.h"
}

/* Each thread over a strided share of n. */
#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

int coe_cuda_fail(coe_cuda *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    return err;
}

int coe_cuda_check(coe_cuda *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    return coe_cuda_fail(c, e == cudaErrorMemoryAllocation ? COE_ENOMEM : COE_EIO, "%s: %s", what,
                         cudaGetErrorString(e));
}

/* A kernel launch: its configuration errors now, its faults at the next sync. */
static int launched(coe_cuda *c, const char *what)
{
    return coe_cuda_check(c, cudaGetLastError(), what);
}

extern "C" int coe_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no device: clear the sticky error */
        return 0;
    }
    return n;
}

extern "C" int coe_cuda_open(coe_cuda **out, int device, char *why, size_t n)
{
    *out = NULL;
    int count = coe_cuda_device_count();
    if (device < 0 || device >= count) {
        snprintf(why, n, "no CUDA device %d (%d found)", device, count);
        return COE_ENOTFOUND;
    }
    coe_cuda *c = (coe_cuda *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, n, "out of memory");
        return COE_ENOMEM;
    }
    c->device = device;
    cudaDeviceProp p;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&p, device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        snprintf(why, n, "CUDA device %d: %s", device, cudaGetErrorString(e));
        free(c);
        return COE_EIO;
    }
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetStream(c->blas, c->stream);
    if (s == CUBLAS_STATUS_SUCCESS) /* full single precision: no TF32 */
        s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, n, "cuBLAS on device %d: %s", device, cublasGetStatusString(s));
        cudaStreamDestroy(c->stream);
        free(c);
        return COE_EIO;
    }
    snprintf(c->name, sizeof c->name, "%.100s, %.1f GiB", p.name, (double)p.totalGlobalMem / (1 << 30));
    *out = c;
    return 0;
}

extern "C" void coe_cuda_close(coe_cuda **pc)
{
    coe_cuda *c = *pc;
    if (!c)
        return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);
    cublasDestroy(c->blas);
    cudaStreamDestroy(c->stream);
    free(c);
    *pc = NULL;
}

extern "C" const char *coe_cuda_name(const coe_cuda *c)
{
    return c->name;
}

extern "C" const char *coe_cuda_last_error(const coe_cuda *c)
{
    return c->error;
}

extern "C" int coe_cuda_memory(coe_cuda *c, size_t *free_bytes, size_t *total_bytes)
{
    cudaSetDevice(c->device);
    return coe_cuda_check(c, cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

extern "C" void *coe_cuda_alloc(coe_cuda *c, size_t bytes)
{
    void *d = NULL;
    cudaSetDevice(c->device);
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        coe_cuda_fail(c, COE_ENOMEM, "cudaMalloc of %zu bytes failed", bytes);
        return NULL;
    }
    return d;
}

extern "C" void coe_cuda_release(coe_cuda *c, void *d)
{
    if (d) {
        cudaSetDevice(c->device);
        cudaFree(d);
    }
}

extern "C" int coe_cuda_upload(coe_cuda *c, void *d_dst, const void *src, size_t bytes)
{
    cudaSetDevice(c->device);
    int rc = coe_cuda_check(c, cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
    /* src may be freed or reused when this returns. */
    return rc ? rc : coe_cuda_check(c, cudaStreamSynchronize(c->stream), "upload");
}

extern "C" int coe_cuda_download(coe_cuda *c, void *dst, const void *d_src, size_t bytes)
{
    cudaSetDevice(c->device);
    int rc = coe_cuda_check(c, cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
    return rc ? rc : coe_cuda_check(c, cudaStreamSynchronize(c->stream), "download");
}

extern "C" int coe_cuda_sync(coe_cuda *c)
{
    cudaSetDevice(c->device);
    return coe_cuda_check(c, cudaStreamSynchronize(c->stream), "kernel");
}

/* ---- bandwidth: 16 bytes per thread per step ---- */

__global__ void copy_kernel(const float4 *src, float4 *dst, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

extern "C" int coe_cuda_copy_bandwidth(coe_cuda *c, size_t bytes, int reps, double *bytes_per_s)
{
    *bytes_per_s = 0;
    bytes = bytes / sizeof(float4) * sizeof(float4);
    void *a = coe_cuda_alloc(c, bytes), *b = a ? coe_cuda_alloc(c, bytes) : NULL;
    if (!b) {
        coe_cuda_release(c, a);
        return COE_ENOMEM;
    }
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    int rc = coe_cuda_check(c, cudaMemsetAsync(a, 1, bytes, c->stream), "memset");
    size_t n = bytes / sizeof(float4);
    for (int r = 0; !rc && r < reps + 1; r++) {
        cudaEventRecord(t0, c->stream);
        copy_kernel<<<132 * 8, 512, 0, c->stream>>>((const float4 *)a, (float4 *)b, n);
        cudaEventRecord(t1, c->stream);
        rc = coe_cuda_check(c, cudaEventSynchronize(t1), "copy");
        float ms = 0;
        cudaEventElapsedTime(&ms, t0, t1);
        double rate = 2.0 * (double)bytes / ((double)ms / 1e3);
        if (r > 0 && rate > *bytes_per_s) /* the first one warms up */
            *bytes_per_s = rate;
    }
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    coe_cuda_release(c, a);
    coe_cuda_release(c, b);
    return rc;
}

/* ---- dequantization: element e of a row, as coe_dequantize_row ----
 * Host and device code both: the unit suite runs it on the CPU against the reference
 * (coe_cuda_dequantize_on_cpu), so the bit layouts are checked on machines without a
 * GPU; the gpu suite checks the kernel itself. */

#define HD __host__ __device__ __forceinline__

#ifdef __CUDA_ARCH__
#define MUL(a, b) __fmul_rn(a, b)
#define ADD(a, b) __fadd_rn(a, b)
#define SUB(a, b) __fsub_rn(a, b)
#else /* separate products and sums on the host too (C++17 does not contract) */
#define MUL(a, b) ((a) * (b))
#define ADD(a, b) ((a) + (b))
#define SUB(a, b) ((a) - (b))
#endif

__constant__ int8_t iq4nl_device[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

HD int iq4nl(int q)
{
#ifdef __CUDA_ARCH__
    return iq4nl_device[q];
#else
    return coe_iq4nl_values[q];
#endif
}

HD float f16(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

HD float bf16(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Q4_K and Q5_K: sub-block j's 6-bit scale and minimum (quant.c's scale_min_k4). */
HD void scale_min_k4(int j, const uint8_t *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* The low two bits of value p of a Q2_K or Q3_K super-block. */
HD int k23_low2(const uint8_t *qs, int p)
{
    return qs[32 * (p / 128) + p % 32] >> (2 * ((p % 128) / 32)) & 3;
}

/* Value j's five-bit code of a Q5_0 or Q5_1 block. */
HD int q5_code(const uint8_t *qs, const uint8_t *qh, int j)
{
    uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    int low = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
    return low | (int)(h >> j & 1) << 4;
}

/* The nibble of value j of a block of 32 packed as Q4_0 (low nibbles first). */
HD int nibble(const uint8_t *qs, int j)
{
    return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
}

/* d * a * b - dmin * m, rounded as the C reference computes it. */
HD float k_value(float d, int a, int b, float dmin, int m)
{
    return SUB(MUL(MUL(d, (float)a), (float)b), MUL(dmin, (float)m));
}

/* Element e of a row of type `type` that starts at row. */
HD float element(uint32_t type, const uint8_t *row, int64_t e)
{
    switch (type) {
    case COE_GGML_F32: return ((const float *)row)[e];
    case COE_GGML_F16: return f16(((const uint16_t *)row)[e]);
    case COE_GGML_BF16: return bf16(((const uint16_t *)row)[e]);
    case COE_GGML_Q8_0: {
        const coe_block_q8_0 *b = (const coe_block_q8_0 *)row + e / COE_QK;
        return MUL(f16(b->d), (float)b->qs[e % COE_QK]);
    }
    case COE_GGML_Q4_0: {
        const coe_block_q4_0 *b = (const coe_block_q4_0 *)row + e / COE_QK;
        return MUL(f16(b->d), (float)(nibble(b->qs, (int)(e % COE_QK)) - 8));
    }
    case COE_GGML_Q4_1: {
        const coe_block_q4_1 *b = (const coe_block_q4_1 *)row + e / COE_QK;
        return ADD(MUL((float)nibble(b->qs, (int)(e % COE_QK)), f16(b->d)), f16(b->m));
    }
    case COE_GGML_Q5_0: {
        const coe_block_q5_0 *b = (const coe_block_q5_0 *)row + e / COE_QK;
        return MUL(f16(b->d), (float)(q5_code(b->qs, b->qh, (int)(e % COE_QK)) - 16));
    }
    case COE_GGML_Q5_1: {
        const coe_block_q5_1 *b = (const coe_block_q5_1 *)row + e / COE_QK;
        return ADD(MUL((float)q5_code(b->qs, b->qh, (int)(e % COE_QK)), f16(b->d)), f16(b->m));
    }
    case COE_GGML_IQ4_NL: {
        const coe_block_iq4_nl *b = (const coe_block_iq4_nl *)row + e / COE_QK;
        return MUL(f16(b->d), (float)iq4nl(nibble(b->qs, (int)(e % COE_QK))));
    }
    case COE_GGML_IQ4_XS: {
        const coe_block_iq4_xs *b = (const coe_block_iq4_xs *)row + e / COE_QKK;
        int p = (int)(e % COE_QKK), ib = p / 32;
        int sc = (b->scales_l[ib / 2] >> 4 * (ib % 2) & 15) | (b->scales_h >> 2 * ib & 3) << 4;
        return MUL(MUL(f16(b->d), (float)(sc - 32)), (float)iq4nl(nibble(b->qs + 16 * ib, p % 32)));
    }
    case COE_GGML_Q2_K: {
        const coe_block_q2_k *b = (const coe_block_q2_k *)row + e / COE_QKK;
        int p = (int)(e % COE_QKK), sc = b->scales[p / 16];
        return k_value(f16(b->d), sc & 15, k23_low2(b->qs, p), f16(b->dmin), sc >> 4);
    }
    case COE_GGML_Q3_K: {
        const coe_block_q3_k *b = (const coe_block_q3_k *)row + e / COE_QKK;
        int p = (int)(e % COE_QKK), j = p / 16;
        int low = j < 8 ? b->scales[j] & 15 : b->scales[j - 8] >> 4;
        int sc = (low | (b->scales[8 + j % 4] >> (2 * (j / 4)) & 3) << 4) - 32;
        int q = k23_low2(b->qs, p) - (b->hmask[p % 32] >> (p / 32) & 1 ? 0 : 4);
        return MUL(MUL(f16(b->d), (float)sc), (float)q);
    }
    case COE_GGML_Q4_K:
    case COE_GGML_Q5_K: {
        const bool five = type == COE_GGML_Q5_K;
        const coe_block_q4_k *b4 = (const coe_block_q4_k *)row + e / COE_QKK;
        const coe_block_q5_k *b5 = (const coe_block_q5_k *)row + e / COE_QKK;
        const uint8_t *scales = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
        int p = (int)(e % COE_QKK), c = p / 64, high = p % 64 >= 32, l = p % 32, sc, m;
        scale_min_k4(2 * c + high, scales, &sc, &m);
        int q = high ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
        if (five)
            q |= ((b5->qh[l] >> (2 * c + high)) & 1) << 4;
        return k_value(f16(five ? b5->d : b4->d), sc, q, f16(five ? b5->dmin : b4->dmin), m);
    }
    case COE_GGML_Q6_K: {
        const coe_block_q6_k *b = (const coe_block_q6_k *)row + e / COE_QKK;
        int p = (int)(e % COE_QKK), chunk = p / 128, r = p % 128, group = r / 32, l = r % 32;
        int ql = chunk * 64 + l + (group & 1) * 32, qh = chunk * 32 + l;
        int q = (((b->ql[ql] >> (group >= 2 ? 4 : 0)) & 15) | ((b->qh[qh] >> (2 * group)) & 3) << 4) - 32;
        return MUL(MUL(f16(b->d), (float)b->scales[p / 16]), (float)q);
    }
    default: return 0;
    }
}

extern "C" bool coe_cuda_type_supported(uint32_t type)
{
    switch (type) {
    case COE_GGML_F32: case COE_GGML_F16: case COE_GGML_BF16: case COE_GGML_Q8_0: case COE_GGML_Q4_0:
    case COE_GGML_Q4_1: case COE_GGML_Q5_0: case COE_GGML_Q5_1: case COE_GGML_IQ4_NL: case COE_GGML_IQ4_XS:
    case COE_GGML_Q2_K: case COE_GGML_Q3_K: case COE_GGML_Q4_K: case COE_GGML_Q5_K: case COE_GGML_Q6_K:
        return true;
    default:
        return false;
    }
}

/* A supported type, and n values that are whole blocks of it. */
static int check_type(coe_cuda *c, uint32_t type, int64_t n)
{
    uint32_t block, bytes;
    if (!coe_cuda_type_supported(type) || !coe_ggml_type_layout(type, &block, &bytes))
        return coe_cuda_fail(c, COE_EUNSUPPORTED, "tensor type %u has no CUDA kernel", type);
    if (n < 0 || n % block)
        return coe_cuda_fail(c, COE_EINVAL, "%lld values are not whole blocks of %u (tensor type %u)", (long long)n, block,
                    type);
    return 0;
}

__global__ void dequantize_kernel(uint32_t type, const uint8_t *w, int64_t n, float *y)
{
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
        y[e] = element(type, w, e);
}

static unsigned grid_for(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    return (unsigned)(g < 1 ? 1 : g > 65535 ? 65535 : g);
}

extern "C" int coe_cuda_dequantize(coe_cuda *c, uint32_t type, const void *d_w, int64_t n, float *d_y)
{
    int rc = check_type(c, type, n);
    if (rc || n == 0)
        return rc;
    cudaSetDevice(c->device);
    dequantize_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(type, (const uint8_t *)d_w, n, d_y);
    return launched(c, "dequantize");
}

extern "C" int coe_cuda_dequantize_on_cpu(uint32_t type, const void *w, int64_t n, float *y)
{
    uint32_t block, bytes;
    if (!coe_cuda_type_supported(type) || !coe_ggml_type_layout(type, &block, &bytes) || n % block)
        return COE_EINVAL;
    for (int64_t e = 0; e < n; e++)
        y[e] = element(type, (const uint8_t *)w, e);
    return 0;
}

/* ---- activations through the dot type and back ---- */

/* Rounded to nearest, ties to even; NaN 0 and out of range saturated (quant.c's nearest). */
__device__ __forceinline__ int nearest(float x)
{
    return __float2int_rn(x);
}

/* One thread per block of a row: Q8_0 / Q8_1 codes (blocks of 32) or Q8_K (256). */
__global__ void round_blocks_kernel(int kind, const float *x, float *y, int64_t n_blocks)
{
    const int QK = kind == 2 ? COE_QKK : COE_QK;
    GRID_STRIDE(b, n_blocks)
    {
        const float *xb = x + (size_t)b * QK;
        float *yb = y + (size_t)b * QK;
        if (kind == 2) { /* Q8_K: by the signed value of largest magnitude */
            float amax = 0, max = 0;
            for (int j = 0; j < QK; j++)
                if (fabsf(xb[j]) > amax) {
                    amax = fabsf(xb[j]);
                    max = xb[j];
                }
            if (amax == 0) {
                for (int j = 0; j < QK; j++)
                    yb[j] = 0;
                continue;
            }
            float iscale = __fdiv_rn(-127.f, max), d = __fdiv_rn(1.0f, iscale);
            for (int j = 0; j < QK; j++) {
                int q = nearest(__fmul_rn(iscale, xb[j]));
                q = q < -127 ? -127 : q > 127 ? 127 : q;
                yb[j] = __fmul_rn(d, (float)q);
            }
            continue;
        }
        float amax = 0;
        for (int j = 0; j < QK; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        /* the scale as its F16 (kind 0: Q8_0's d; kind 1: Q8_1's, the same value) */
        float d = __half2float(__float2half_rn(__fdiv_rn(amax, 127.f)));
        float id = amax != 0 ? __fdiv_rn(127.f, amax) : 0;
        for (int j = 0; j < QK; j++)
            yb[j] = __fmul_rn(d, (float)(int8_t)nearest(__fmul_rn(xb[j], id)));
    }
}

__global__ void round_half_kernel(bool brain, const float *x, float *y, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        if (brain) { /* to BF16, nearest even, as coe_f32_to_bf16 (NaN stays NaN) */
            uint32_t u = __float_as_uint(x[i]);
            uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
            y[i] = __uint_as_float(r & 0xffff0000u);
        } else {
            y[i] = __half2float(__float2half_rn(x[i]));
        }
    }
}

extern "C" int coe_cuda_round_activations(coe_cuda *c, uint32_t wtype, const float *d_x, float *d_y, int T,
                                          int64_t cols)
{
    int rc = check_type(c, wtype, cols);
    if (rc || T <= 0)
        return rc;
    int64_t n = (int64_t)T * cols;
    uint32_t dt = coe_dot_type(wtype);
    cudaSetDevice(c->device);
    if (dt == COE_GGML_F32)
        return coe_cuda_copy(c, d_y, d_x, (size_t)n * sizeof *d_x);
    if (dt == COE_GGML_F16 || dt == COE_GGML_BF16)
        round_half_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dt == COE_GGML_BF16, d_x, d_y, n);
    else {
        int kind = dt == COE_ACT_Q8_0 ? 0 : dt == COE_ACT_Q8_1 ? 1 : 2, QK = kind == 2 ? COE_QKK : COE_QK;
        if (cols % QK)
            return coe_cuda_fail(c, COE_EINVAL, "%lld values are not whole blocks of %d", (long long)cols, QK);
        round_blocks_kernel<<<grid_for(n / QK, 128), 128, 0, c->stream>>>(kind, d_x, d_y, n / QK);
    }
    return launched(c, "round_activations");
}

/* ---- matrix times a few vectors: one warp per row, lanes along the row ---- */

enum { WARP = 32, ROWS_PER_BLOCK = 4 };

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = WARP / 2; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int T>
__global__ void matvec_kernel(uint32_t type, const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols,
                              const float *x, float *y, int64_t ld_y)
{
    int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (r >= rows)
        return;
    const uint8_t *row = w + (size_t)r * row_bytes;
    float acc[T];
    for (int t = 0; t < T; t++)
        acc[t] = 0;
    /* Adjacent lanes read adjacent values of one block, whose scales they share. */
    for (int64_t k = lane; k < cols; k += WARP) {
        float v = element(type, row, k);
        for (int t = 0; t < T; t++)
            acc[t] = fmaf(v, x[(size_t)t * (size_t)cols + (size_t)k], acc[t]);
    }
    for (int t = 0; t < T; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0)
            y[(size_t)t * (size_t)ld_y + (size_t)r] = s;
    }
}

template <int T>
static void launch_matvec(coe_cuda *c, uint32_t type, const void *w, int64_t rows, int64_t cols, const float *x,
                          float *y, int64_t ld_y)
{
    unsigned blocks = (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    matvec_kernel<T><<<blocks, ROWS_PER_BLOCK * WARP, 0, c->stream>>>(
        type, (const uint8_t *)w, coe_row_bytes(type, cols), rows, cols, x, y, ld_y);
}

extern "C" int coe_cuda_matmul(coe_cuda *c, uint32_t type, const void *d_w, int64_t rows, int64_t cols,
                               const float *d_x, int T, float *d_y, int64_t ld_y, float *d_scratch)
{
    int rc = check_type(c, type, cols);
    if (rc)
        return rc;
    if (T <= 0 || rows <= 0)
        return 0;
    if (ld_y < rows)
        return coe_cuda_fail(c, COE_EINVAL, "matmul: output stride %lld below %lld rows", (long long)ld_y, (long long)rows);
    if (rows > 65535LL * ROWS_PER_BLOCK || rows > INT32_MAX || cols > INT32_MAX)
        return coe_cuda_fail(c, COE_ERANGE, "matmul: %lld x %lld is too large", (long long)rows, (long long)cols);
    cudaSetDevice(c->device);
    if (T > COE_CUDA_MATVEC_MAX_T && d_scratch) {
        /* Prompts and large batches: W as floats once, then cuBLAS (no TF32). Column-major
         * view: y^T (rows x T) = W^T^T ... i.e. C = A^T B with A = W (cols x rows). */
        if ((rc = coe_cuda_dequantize(c, type, d_w, rows * cols, d_scratch)))
            return rc;
        const float one = 1, zero = 0;
        cublasStatus_t s = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, T, (int)cols, &one, d_scratch,
                                       (int)cols, d_x, (int)cols, &zero, d_y, (int)ld_y);
        if (s != CUBLAS_STATUS_SUCCESS)
            return coe_cuda_fail(c, COE_EIO, "cublasSgemm: %s", cublasGetStatusString(s));
        return 0;
    }
    for (int t0 = 0; t0 < T; t0 += COE_CUDA_MATVEC_MAX_T) {
        int n = T - t0 < COE_CUDA_MATVEC_MAX_T ? T - t0 : COE_CUDA_MATVEC_MAX_T;
        const float *x = d_x + (size_t)t0 * (size_t)cols;
        float *y = d_y + (size_t)t0 * (size_t)ld_y;
        switch (n) {
        case 1: launch_matvec<1>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 2: launch_matvec<2>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 3: launch_matvec<3>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 4: launch_matvec<4>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 5: launch_matvec<5>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 6: launch_matvec<6>(c, type, d_w, rows, cols, x, y, ld_y); break;
        case 7: launch_matvec<7>(c, type, d_w, rows, cols, x, y, ld_y); break;
        default: launch_matvec<8>(c, type, d_w, rows, cols, x, y, ld_y); break;
        }
        if ((rc = launched(c, "matvec")))
            return rc;
    }
    return 0;
}

/* ---- element-wise pieces ---- */

/* One block per row; the sum of squares in double as the CPU engine's. */
__global__ void rms_norm_kernel(const float *x, const float *w, float *y, int n, int64_t stride, float eps)
{
    __shared__ double part[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)stride;
    float *yr = y + (size_t)blockIdx.x * (size_t)stride;
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += (double)__fmul_rn(xr[i], xr[i]);
    for (int o = WARP / 2; o > 0; o /= 2)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % WARP == 0)
        part[threadIdx.x / WARP] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0;
        for (int i = 0; i < (int)(blockDim.x / WARP); i++)
            total += part[i];
        part[0] = total;
    }
    __syncthreads();
    float mean = (float)(part[0] / n);
    float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

extern "C" int coe_cuda_rms_norm_rows(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n,
                                      int64_t stride, float eps)
{
    if (T <= 0)
        return 0;
    cudaSetDevice(c->device);
    rms_norm_kernel<<<(unsigned)T, 256, 0, c->stream>>>(d_x, d_w, d_y, n, stride, eps);
    return launched(c, "rms_norm");
}

extern "C" int coe_cuda_rms_norm(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n,
                                 float eps)
{
    return coe_cuda_rms_norm_rows(c, d_x, d_w, d_y, T, n, n, eps);
}

__global__ void silu_mul_kernel(float *g, const float *u, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = g[i];
        g[i] = __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), u[i]);
    }
}

extern "C" int coe_cuda_silu_mul(coe_cuda *c, float *d_g, const float *d_u, int64_t n)
{
    if (n <= 0)
        return 0;
    cudaSetDevice(c->device);
    silu_mul_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(d_g, d_u, n);
    return launched(c, "silu_mul");
}

__global__ void add_kernel(float *y, const float *x, int64_t n, float s)
{
    GRID_STRIDE(i, n)
    y[i] = __fadd_rn(y[i], s != 1 ? __fmul_rn(x[i], s) : x[i]);
}

extern "C" int coe_cuda_add(coe_cuda *c, float *d_y, const float *d_x, int64_t n, float s)
{
    if (n <= 0)
        return 0;
    cudaSetDevice(c->device);
    add_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(d_y, d_x, n, s);
    return launched(c, "add");
}

__global__ void scale_kernel(float *x, int64_t n, float s)
{
    GRID_STRIDE(i, n)
    x[i] = __fmul_rn(x[i], s);
}

extern "C" int coe_cuda_scale(coe_cuda *c, float *d_x, int64_t n, float s)
{
    if (n <= 0)
        return 0;
    cudaSetDevice(c->device);
    scale_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(d_x, n, s);
    return launched(c, "scale");
}

__global__ void add_rows_kernel(float *y, const float *b, int64_t total, int n)
{
    GRID_STRIDE(i, total)
    y[i] = __fadd_rn(y[i], b[i % n]);
}

extern "C" int coe_cuda_add_rows(coe_cuda *c, float *d_y, const float *d_b, int rows, int n)
{
    if (rows <= 0 || n <= 0)
        return 0;
    int64_t total = (int64_t)rows * n;
    cudaSetDevice(c->device);
    add_rows_kernel<<<grid_for(total, 256), 256, 0, c->stream>>>(d_y, d_b, total, n);
    return launched(c, "add_rows");
}

__global__ void gather_rows_kernel(float *dst, const float *src, const int32_t *idx, int64_t total, int width)
{
    GRID_STRIDE(i, total)
    dst[i] = src[(size_t)idx[i / width] * (size_t)width + (size_t)(i % width)];
}

extern "C" int coe_cuda_gather_rows(coe_cuda *c, float *d_dst, const float *d_src, const int32_t *d_idx, int n,
                                    int width)
{
    if (n <= 0 || width <= 0)
        return 0;
    int64_t total = (int64_t)n * width;
    cudaSetDevice(c->device);
    gather_rows_kernel<<<grid_for(total, 256), 256, 0, c->stream>>>(d_dst, d_src, d_idx, total, width);
    return launched(c, "gather_rows");
}

__global__ void scatter_rows_kernel(float *const *dst, const float *src, int64_t total, int width)
{
    GRID_STRIDE(i, total)
    dst[i / width][i % width] = src[i];
}

extern "C" int coe_cuda_scatter_rows(coe_cuda *c, float *const *d_dst, const float *d_src, int n, int width)
{
    if (n <= 0 || width <= 0)
        return 0;
    int64_t total = (int64_t)n * width;
    cudaSetDevice(c->device);
    scatter_rows_kernel<<<grid_for(total, 256), 256, 0, c->stream>>>(d_dst, d_src, total, width);
    return launched(c, "scatter_rows");
}

__global__ void copy_rows_kernel(float *dst, int64_t dst_stride, const float *src, int64_t src_outer,
                                 int64_t src_inner, int n_inner, int width, int64_t total)
{
    GRID_STRIDE(e, total)
    {
        int64_t row = e / width, o = row / n_inner, i = row % n_inner;
        dst[row * dst_stride + e % width] = src[o * src_outer + i * src_inner + e % width];
    }
}

extern "C" int coe_cuda_copy_rows(coe_cuda *c, float *d_dst, int64_t dst_stride, const float *d_src,
                                  int64_t src_outer, int64_t src_inner, int n_outer, int n_inner, int width)
{
    int64_t total = (int64_t)n_outer * n_inner * width;
    if (total <= 0)
        return 0;
    cudaSetDevice(c->device);
    copy_rows_kernel<<<grid_for(total, 256), 256, 0, c->stream>>>(d_dst, dst_stride, d_src, src_outer, src_inner,
                                                                  n_inner, width, total);
    return launched(c, "copy_rows");
}

extern "C" int coe_cuda_copy(coe_cuda *c, void *d_dst, const void *d_src, size_t bytes)
{
    if (bytes == 0)
        return 0;
    cudaSetDevice(c->device);
    return coe_cuda_check(c, cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, c->stream), "copy");
}

/* One thread per value of a token's row: the experts in the CPU's order, then the
 * shared expert. */
__global__ void moe_combine_kernel(float *out, const float *eo, const int32_t *slot, const float *w, int T, int k,
                                   int width, const float *so, const float *z)
{
    GRID_STRIDE(i, (int64_t)T * width)
    {
        int t = (int)(i / width), d = (int)(i % width);
        float o = 0;
        for (int s = 0; s < k; s++)
            o = __fadd_rn(o, __fmul_rn(eo[(size_t)slot[t * k + s] * (size_t)width + (size_t)d], w[t * k + s]));
        if (so) {
            float gate = z ? __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-z[t]))) : 1.0f;
            o = __fadd_rn(o, __fmul_rn(so[i], gate));
        }
        out[i] = o;
    }
}

extern "C" int coe_cuda_moe_combine(coe_cuda *c, float *d_out, const float *d_eo, const int32_t *d_slot,
                                    const float *d_w, int T, int k, int width, const float *d_so, const float *d_z)
{
    if (T <= 0 || width <= 0)
        return 0;
    cudaSetDevice(c->device);
    moe_combine_kernel<<<grid_for((int64_t)T * width, 256), 256, 0, c->stream>>>(d_out, d_eo, d_slot, d_w, T, k,
                                                                                 width, d_so, d_z);
    return launched(c, "moe_combine");
}

/* One thread per rotated pair of one head of one token (blockIdx.y = token). theta
 * is built by the CPU's repeated products, so both take the same angle. */
__global__ void rope_kernel(coe_cuda_rope_params p, const float *freqs, float *x, int n_heads, int head_dim,
                            const int32_t *pos)
{
    int pairs = p.rope_dim / 2, idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_heads * pairs)
        return;
    int h = idx / pairs, k = idx % pairs, i = 2 * k;
    float theta_scale = powf(p.base, -2.0f / (float)p.rope_dim), theta = (float)pos[blockIdx.y];
    for (int j = 0; j < k; j++)
        theta = __fmul_rn(theta, theta_scale);
    float ff = freqs ? freqs[k] : 1.0f;
    float extrap = __fdiv_rn(theta, ff), angle = __fmul_rn(p.freq_scale, extrap);
    if (p.ext_factor != 0) {
        float yv = __fdiv_rn((float)k - p.corr_low, fmaxf(0.001f, p.corr_high - p.corr_low));
        float mix = __fmul_rn(1 - fminf(1, fmaxf(0, yv)), p.ext_factor);
        angle = __fadd_rn(__fmul_rn(angle, 1 - mix), __fmul_rn(extrap, mix));
    }
    float cs = __fmul_rn(cosf(angle), p.mscale), sn = __fmul_rn(sinf(angle), p.mscale);
    float *v = x + ((size_t)blockIdx.y * (size_t)n_heads + (size_t)h) * (size_t)head_dim;
    int a = p.neox ? k : i, b = p.neox ? k + pairs : i + 1;
    float x0 = v[a], x1 = v[b];
    v[a] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
    v[b] = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
}

extern "C" int coe_cuda_rope(coe_cuda *c, const coe_cuda_rope_params *p, const float *d_freqs, float *d_x, int T,
                             int n_heads, int head_dim, const int32_t *d_pos)
{
    if (p->rope_dim <= 0 || p->rope_dim % 2 || p->rope_dim > head_dim)
        return coe_cuda_fail(c, COE_EINVAL, "rope: %d rotated of %d per head", p->rope_dim, head_dim);
    if (T <= 0 || n_heads <= 0)
        return 0;
    if (T > 65535)
        return coe_cuda_fail(c, COE_ERANGE, "rope: %d tokens in one call", T);
    cudaSetDevice(c->device);
    int work = n_heads * (p->rope_dim / 2);
    dim3 grid((unsigned)((work + 127) / 128), (unsigned)T);
    rope_kernel<<<grid, 128, 0, c->stream>>>(*p, d_freqs, d_x, n_heads, head_dim, d_pos);
    return launched(c, "rope");
}

/* One block per (token, head): scores by warps, softmax, then the weighted values. */
__global__ void attention_kernel(coe_cuda_attention_shape s, const float *q, const float *const *k_cache,
                                 const float *const *v_cache, const int32_t *pos, float *scratch, float *out)
{
    __shared__ float red[32];
    int t = blockIdx.x / s.n_head, h = blockIdx.x % s.n_head, kvh = h / (s.n_head / s.n_head_kv);
    int p = pos[t], lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const float *qh = q + (size_t)blockIdx.x * (size_t)s.dk;
    const float *K = k_cache[t] + (size_t)kvh * (size_t)s.dk;
    const float *V = v_cache[t] + (size_t)kvh * (size_t)s.dv;
    float *sc = scratch + (size_t)blockIdx.x * (size_t)s.n_ctx;
    for (int i = warp; i <= p; i += n_warps) {
        const float *k = K + (size_t)i * (size_t)s.k_stride;
        float d = 0;
        for (int j = lane; j < s.dk; j += WARP)
            d = fmaf(qh[j], k[j], d);
        d = warp_sum(d);
        if (lane == 0)
            sc[i] = d * s.scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int i = threadIdx.x; i <= p; i += blockDim.x)
        mx = fmaxf(mx, sc[i]);
    for (int o = WARP / 2; o > 0; o /= 2)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0)
        red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < n_warps; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0;
    for (int i = threadIdx.x; i <= p; i += blockDim.x) {
        float e = expf(sc[i] - mx);
        sc[i] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0)
        red[warp] = sum;
    __syncthreads();
    sum = 0;
    for (int w = 0; w < n_warps; w++)
        sum += red[w];
    float inv = 1.0f / sum;
    float *o = out + (size_t)blockIdx.x * (size_t)s.dv;
    for (int d = threadIdx.x; d < s.dv; d += blockDim.x) {
        float acc = 0;
        for (int i = 0; i <= p; i++)
            acc = fmaf(sc[i] * inv, V[(size_t)i * (size_t)s.v_stride + (size_t)d], acc);
        o[d] = acc;
    }
}

extern "C" int coe_cuda_attention(coe_cuda *c, const coe_cuda_attention_shape *s, const float *d_q,
                                  const float *const *d_k_cache, const float *const *d_v_cache,
                                  const int32_t *d_pos, int T, float *d_scratch, float *d_out)
{
    if (s->n_head <= 0 || s->n_head_kv <= 0 || s->n_head % s->n_head_kv)
        return coe_cuda_fail(c, COE_EINVAL, "attention: %d heads over %d kv heads", s->n_head, s->n_head_kv);
    if (T <= 0)
        return 0;
    if ((int64_t)T * s->n_head > INT32_MAX)
        return coe_cuda_fail(c, COE_ERANGE, "attention: %d tokens of %d heads", T, s->n_head);
    cudaSetDevice(c->device);
    attention_kernel<<<(unsigned)(T * s->n_head), 128, 0, c->stream>>>(*s, d_q, d_k_cache, d_v_cache, d_pos,
                                                                       d_scratch, d_out);
    return launched(c, "attention");
}
