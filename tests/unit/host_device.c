/* experts/cuda.h emulated on the host, for the unit suite: the CUDA engine's
 * orchestration (experts/engine_cuda.c: uploads, scratch, caches, routing, the order
 * of its kernels) runs and is compared with the CPU engine on machines without a
 * GPU. Its "device memory" is host memory that the emulation registers, and every
 * pointer a call names as device memory must lie in a live allocation, so passing a
 * host pointer where the device's is wanted fails the test. Kernels are plain loops
 * (products in double), the definitions the real kernels are tested against in the
 * gpu suite. Linked instead of the CUDA library by the tests that want it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "experts/cuda.h"
#include "experts/engine.h"
#include "experts/quant.h"
#include "host_device.h"
#include "reference_ops.h"

struct coe_cuda {
    int open;
};

static coe_cuda the_device;
size_t host_device_free_bytes = (size_t)8 << 30;
int host_device_count = 1;

typedef struct allocation {
    const uint8_t *p;
    size_t n;
} allocation;

static allocation live[4096];
static int n_live;

/* Whether [p, p + n) lies inside one live allocation. */
static int inside(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (int i = 0; i < n_live; i++)
        if (b >= live[i].p && b + n <= live[i].p + live[i].n)
            return 1;
    return 0;
}

#define DEVICE(p, n)                                                                                                   \
    do {                                                                                                               \
        if ((n) != 0 && !inside((p), (n))) {                                                                              \
            fprintf(stderr, "host device: %s: %p (%zu bytes) is not device memory\n", __func__, (const void *)(p),     \
                    (size_t)(n));                                                                                      \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

int host_device_live(void)
{
    return n_live;
}

int coe_cuda_device_count(void)
{
    return host_device_count;
}

int coe_cuda_open(coe_cuda **out, int device, char *why, size_t n)
{
    if (device != 0 || host_device_count == 0) {
        snprintf(why, n, "no CUDA device %d (the host emulation)", device);
        *out = NULL;
        return COE_ENOTFOUND;
    }
    the_device.open++;
    *out = &the_device;
    return 0;
}

void coe_cuda_close(coe_cuda **c)
{
    if (*c)
        (*c)->open--;
    *c = NULL;
}

const char *coe_cuda_name(const coe_cuda *c)
{
    (void)c;
    return "host emulation, 8.0 GiB";
}

const char *coe_cuda_last_error(const coe_cuda *c)
{
    (void)c;
    return "";
}

int coe_cuda_memory(coe_cuda *c, size_t *free_bytes, size_t *total_bytes)
{
    (void)c;
    *free_bytes = host_device_free_bytes;
    *total_bytes = (size_t)8 << 30;
    return 0;
}

void *coe_cuda_alloc(coe_cuda *c, size_t bytes)
{
    (void)c;
    if (n_live == (int)(sizeof live / sizeof *live))
        abort();
    uint8_t *p = malloc(bytes ? bytes : 1);
    if (p) {
        memset(p, 0xa5, bytes); /* device memory starts with no meaning */
        live[n_live++] = (allocation){p, bytes ? bytes : 1};
    }
    return p;
}

void coe_cuda_release(coe_cuda *c, void *d)
{
    (void)c;
    if (!d)
        return;
    for (int i = 0; i < n_live; i++)
        if (live[i].p == d) {
            live[i] = live[--n_live];
            free(d);
            return;
        }
    fprintf(stderr, "host device: release of %p, which is not device memory\n", d);
    abort();
}

int coe_cuda_upload(coe_cuda *c, void *d_dst, const void *src, size_t bytes)
{
    (void)c;
    DEVICE(d_dst, bytes);
    memcpy(d_dst, src, bytes);
    return 0;
}

int coe_cuda_download(coe_cuda *c, void *dst, const void *d_src, size_t bytes)
{
    (void)c;
    DEVICE(d_src, bytes);
    memcpy(dst, d_src, bytes);
    return 0;
}

int coe_cuda_sync(coe_cuda *c)
{
    (void)c;
    return 0;
}

int coe_cuda_copy_bandwidth(coe_cuda *c, size_t bytes, int reps, double *bytes_per_s)
{
    (void)c, (void)bytes, (void)reps;
    *bytes_per_s = 1e9;
    return 0;
}

bool coe_cuda_type_supported(uint32_t type)
{
    uint32_t block, bytes;
    return type != COE_GGML_Q8_1 && type != COE_GGML_Q8_K && coe_ggml_type_layout(type, &block, &bytes) &&
           coe_quant_supported(type);
}

int coe_cuda_dequantize_on_cpu(uint32_t type, const void *w, int64_t n, float *y)
{
    coe_dequantize_row(type, w, y, n);
    return 0;
}

int coe_cuda_dequantize(coe_cuda *c, uint32_t type, const void *d_w, int64_t n, float *d_y)
{
    (void)c;
    DEVICE(d_w, coe_row_bytes(type, n));
    DEVICE(d_y, (size_t)n * sizeof *d_y);
    coe_dequantize_row(type, d_w, d_y, n);
    return 0;
}

int coe_cuda_round_activations(coe_cuda *c, uint32_t wtype, const float *d_x, float *d_y, int T, int64_t cols)
{
    (void)c;
    DEVICE(d_x, (size_t)T * (size_t)cols * 4);
    DEVICE(d_y, (size_t)T * (size_t)cols * 4);
    uint32_t dt = coe_dot_type(wtype);
    uint8_t *q = malloc(coe_row_bytes(dt, cols) + (size_t)cols * 4);
    for (int t = 0; t < T; t++) {
        coe_quantize_row(dt, d_x + (size_t)t * (size_t)cols, q, cols);
        coe_dequantize_row(dt, q, d_y + (size_t)t * (size_t)cols, cols);
    }
    free(q);
    return 0;
}

int coe_cuda_matmul(coe_cuda *c, uint32_t type, const void *d_w, int64_t rows, int64_t cols, const float *d_x,
                    int T, float *d_y, int64_t ld_y, float *d_scratch)
{
    (void)c;
    size_t rb = coe_row_bytes(type, cols);
    DEVICE(d_w, rb * (size_t)rows);
    DEVICE(d_x, (size_t)T * (size_t)cols * sizeof *d_x);
    if (T > 0)
        DEVICE(d_y, ((size_t)(T - 1) * (size_t)ld_y + (size_t)rows) * sizeof *d_y);
    if (T > COE_CUDA_MATVEC_MAX_T && d_scratch)
        DEVICE(d_scratch, (size_t)rows * (size_t)cols * sizeof *d_scratch);
    ref_matmul(type, d_w, rows, cols, d_x, T, d_y, ld_y);
    return 0;
}

int coe_cuda_rms_norm_rows(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, int64_t stride,
                           float eps)
{
    (void)c;
    DEVICE(d_w, (size_t)n * 4);
    for (int t = 0; t < T; t++) {
        DEVICE(d_x + (size_t)t * (size_t)stride, (size_t)n * 4);
        DEVICE(d_y + (size_t)t * (size_t)stride, (size_t)n * 4);
        ref_rms_norm(d_x + (size_t)t * (size_t)stride, d_w, d_y + (size_t)t * (size_t)stride, n, eps);
    }
    return 0;
}

int coe_cuda_rms_norm(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, float eps)
{
    return coe_cuda_rms_norm_rows(c, d_x, d_w, d_y, T, n, n, eps);
}

int coe_cuda_silu_mul(coe_cuda *c, float *d_g, const float *d_u, int64_t n)
{
    (void)c;
    DEVICE(d_g, (size_t)n * 4);
    DEVICE(d_u, (size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        d_g[i] = d_g[i] / (1.0f + expf(-d_g[i])) * d_u[i];
    return 0;
}

int coe_cuda_add(coe_cuda *c, float *d_y, const float *d_x, int64_t n, float s)
{
    (void)c;
    DEVICE(d_y, (size_t)n * 4);
    DEVICE(d_x, (size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        d_y[i] += s != 1 ? d_x[i] * s : d_x[i];
    return 0;
}

int coe_cuda_scale(coe_cuda *c, float *d_x, int64_t n, float s)
{
    (void)c;
    DEVICE(d_x, (size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        d_x[i] *= s;
    return 0;
}

int coe_cuda_add_rows(coe_cuda *c, float *d_y, const float *d_b, int rows, int n)
{
    (void)c;
    DEVICE(d_y, (size_t)rows * (size_t)n * 4);
    DEVICE(d_b, (size_t)n * 4);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            d_y[(size_t)r * (size_t)n + (size_t)i] += d_b[i];
    return 0;
}

int coe_cuda_gather_rows(coe_cuda *c, float *d_dst, const float *d_src, const int32_t *d_idx, int n, int width)
{
    (void)c;
    DEVICE(d_dst, (size_t)n * (size_t)width * 4);
    DEVICE(d_idx, (size_t)n * sizeof *d_idx);
    for (int i = 0; i < n; i++) {
        DEVICE(d_src + (size_t)d_idx[i] * (size_t)width, (size_t)width * 4);
        memcpy(d_dst + (size_t)i * (size_t)width, d_src + (size_t)d_idx[i] * (size_t)width, (size_t)width * 4);
    }
    return 0;
}

int coe_cuda_scatter_rows(coe_cuda *c, float *const *d_dst, const float *d_src, int n, int width)
{
    (void)c;
    DEVICE(d_dst, (size_t)n * sizeof *d_dst);
    DEVICE(d_src, (size_t)n * (size_t)width * 4);
    for (int i = 0; i < n; i++) {
        DEVICE(d_dst[i], (size_t)width * 4);
        memcpy(d_dst[i], d_src + (size_t)i * (size_t)width, (size_t)width * 4);
    }
    return 0;
}

int coe_cuda_copy_rows(coe_cuda *c, float *d_dst, int64_t dst_stride, const float *d_src, int64_t src_outer,
                       int64_t src_inner, int n_outer, int n_inner, int width)
{
    (void)c;
    for (int o = 0; o < n_outer; o++)
        for (int i = 0; i < n_inner; i++) {
            const float *s = d_src + (int64_t)o * src_outer + (int64_t)i * src_inner;
            float *d = d_dst + ((int64_t)o * n_inner + i) * dst_stride;
            DEVICE(s, (size_t)width * 4);
            DEVICE(d, (size_t)width * 4);
            memmove(d, s, (size_t)width * 4);
        }
    return 0;
}

int coe_cuda_copy(coe_cuda *c, void *d_dst, const void *d_src, size_t bytes)
{
    (void)c;
    DEVICE(d_dst, bytes);
    DEVICE(d_src, bytes);
    memmove(d_dst, d_src, bytes);
    return 0;
}

int coe_cuda_moe_combine(coe_cuda *c, float *d_out, const float *d_eo, const int32_t *d_slot, const float *d_w,
                         int T, int k, int width, const float *d_so, const float *d_z)
{
    (void)c;
    DEVICE(d_out, (size_t)T * (size_t)width * 4);
    DEVICE(d_slot, (size_t)T * (size_t)k * 4);
    DEVICE(d_w, (size_t)T * (size_t)k * 4);
    if (d_so)
        DEVICE(d_so, (size_t)T * (size_t)width * 4);
    if (d_z)
        DEVICE(d_z, (size_t)T * 4);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < width; d++) {
            float o = 0;
            for (int s = 0; s < k; s++) {
                const float *eo = d_eo + (size_t)d_slot[t * k + s] * (size_t)width;
                DEVICE(eo, (size_t)width * 4);
                o += eo[d] * d_w[t * k + s];
            }
            if (d_so)
                o += d_so[(size_t)t * (size_t)width + (size_t)d] * (d_z ? 1.0f / (1.0f + expf(-d_z[t])) : 1.0f);
            d_out[(size_t)t * (size_t)width + (size_t)d] = o;
        }
    return 0;
}

int coe_cuda_rope(coe_cuda *c, const coe_cuda_rope_params *p, const float *d_freqs, float *d_x, int T, int n_heads,
                  int head_dim, const int32_t *d_pos)
{
    (void)c;
    DEVICE(d_x, (((size_t)T * (size_t)n_heads - 1) * (size_t)head_dim + (size_t)p->rope_dim) * 4);
    DEVICE(d_pos, (size_t)T * 4);
    if (d_freqs)
        DEVICE(d_freqs, (size_t)p->rope_dim / 2 * 4);
    coe_model m;
    memset(&m, 0, sizeof m);
    m.rope_dim = p->rope_dim, m.rope_neox = p->neox, m.rope_base = p->base, m.rope_freq_scale = p->freq_scale;
    m.rope_ext_factor = p->ext_factor, m.rope_corr_dims[0] = p->corr_low, m.rope_corr_dims[1] = p->corr_high;
    m.rope_mscale = p->mscale;
    for (int t = 0; t < T; t++)
        coe_rope(&m, d_freqs, d_x + (size_t)t * (size_t)n_heads * (size_t)head_dim, n_heads, head_dim, d_pos[t]);
    return 0;
}

int coe_cuda_attention(coe_cuda *c, const coe_cuda_attention_shape *s, const float *d_q,
                       const float *const *d_k_cache, const float *const *d_v_cache, const int32_t *d_pos, int T,
                       float *d_scratch, float *d_out)
{
    (void)c;
    DEVICE(d_q, (size_t)T * (size_t)s->n_head * (size_t)s->dk * 4);
    DEVICE(d_k_cache, (size_t)T * sizeof *d_k_cache);
    DEVICE(d_v_cache, (size_t)T * sizeof *d_v_cache);
    DEVICE(d_pos, (size_t)T * 4);
    DEVICE(d_scratch, (size_t)T * (size_t)s->n_head * (size_t)s->n_ctx * 4);
    DEVICE(d_out, (size_t)T * (size_t)s->n_head * (size_t)s->dv * 4);
    for (int t = 0; t < T; t++) {
        DEVICE(d_k_cache[t], ((size_t)d_pos[t] + 1) * (size_t)s->k_stride * 4);
        DEVICE(d_v_cache[t], ((size_t)d_pos[t] + 1) * (size_t)s->v_stride * 4);
    }
    ref_attention(s, d_q, d_k_cache, d_v_cache, d_pos, T, d_out);
    return 0;
}
