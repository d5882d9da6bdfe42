/* experts/cuda.h in a build without CUDA: no device. coe_cuda_open fails, so the
 * other functions are never reached; they are defined so that callers link. */
#include <stdio.h>

#include "common/err.h"
#include "experts/cuda.h"

int coe_cuda_device_count(void)
{
    return 0;
}

int coe_cuda_open(coe_cuda **out, int device, char *why, size_t n)
{
    *out = NULL;
    snprintf(why, n, "no CUDA device %d: this build has no CUDA (nvcc was not found when it was configured)", device);
    return COE_EUNSUPPORTED;
}

void coe_cuda_close(coe_cuda **c)
{
    *c = NULL;
}

const char *coe_cuda_name(const coe_cuda *c)
{
    (void)c;
    return "";
}

const char *coe_cuda_last_error(const coe_cuda *c)
{
    (void)c;
    return "this build has no CUDA";
}

int coe_cuda_memory(coe_cuda *c, size_t *free_bytes, size_t *total_bytes)
{
    (void)c;
    *free_bytes = *total_bytes = 0;
    return COE_EUNSUPPORTED;
}

void *coe_cuda_alloc(coe_cuda *c, size_t bytes)
{
    (void)c, (void)bytes;
    return NULL;
}

void coe_cuda_release(coe_cuda *c, void *d)
{
    (void)c, (void)d;
}

int coe_cuda_upload(coe_cuda *c, void *d_dst, const void *src, size_t bytes)
{
    (void)c, (void)d_dst, (void)src, (void)bytes;
    return COE_EUNSUPPORTED;
}

int coe_cuda_download(coe_cuda *c, void *dst, const void *d_src, size_t bytes)
{
    (void)c, (void)dst, (void)d_src, (void)bytes;
    return COE_EUNSUPPORTED;
}

int coe_cuda_sync(coe_cuda *c)
{
    (void)c;
    return COE_EUNSUPPORTED;
}

int coe_cuda_copy_bandwidth(coe_cuda *c, size_t bytes, int reps, double *bytes_per_s)
{
    (void)c, (void)bytes, (void)reps;
    *bytes_per_s = 0;
    return COE_EUNSUPPORTED;
}

bool coe_cuda_type_supported(uint32_t type)
{
    (void)type;
    return false;
}

int coe_cuda_dequantize(coe_cuda *c, uint32_t type, const void *d_w, int64_t n, float *d_y)
{
    (void)c, (void)type, (void)d_w, (void)n, (void)d_y;
    return COE_EUNSUPPORTED;
}

int coe_cuda_dequantize_on_cpu(uint32_t type, const void *w, int64_t n, float *y)
{
    (void)type, (void)w, (void)n, (void)y;
    return COE_EUNSUPPORTED;
}

int coe_cuda_round_activations(coe_cuda *c, uint32_t wtype, const float *d_x, float *d_y, int T, int64_t cols)
{
    (void)c, (void)wtype, (void)d_x, (void)d_y, (void)T, (void)cols;
    return COE_EUNSUPPORTED;
}

int coe_cuda_matmul(coe_cuda *c, uint32_t type, const void *d_w, int64_t rows, int64_t cols, const float *d_x,
                    int T, float *d_y, int64_t ld_y, float *d_scratch)
{
    (void)c, (void)type, (void)d_w, (void)rows, (void)cols, (void)d_x, (void)T, (void)d_y, (void)ld_y,
        (void)d_scratch;
    return COE_EUNSUPPORTED;
}

int coe_cuda_rms_norm(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, float eps)
{
    (void)c, (void)d_x, (void)d_w, (void)d_y, (void)T, (void)n, (void)eps;
    return COE_EUNSUPPORTED;
}

int coe_cuda_rms_norm_rows(coe_cuda *c, const float *d_x, const float *d_w, float *d_y, int T, int n, int64_t stride,
                           float eps)
{
    (void)c, (void)d_x, (void)d_w, (void)d_y, (void)T, (void)n, (void)stride, (void)eps;
    return COE_EUNSUPPORTED;
}

int coe_cuda_silu_mul(coe_cuda *c, float *d_g, const float *d_u, int64_t n)
{
    (void)c, (void)d_g, (void)d_u, (void)n;
    return COE_EUNSUPPORTED;
}

int coe_cuda_add(coe_cuda *c, float *d_y, const float *d_x, int64_t n, float s)
{
    (void)c, (void)d_y, (void)d_x, (void)n, (void)s;
    return COE_EUNSUPPORTED;
}

int coe_cuda_scale(coe_cuda *c, float *d_x, int64_t n, float s)
{
    (void)c, (void)d_x, (void)n, (void)s;
    return COE_EUNSUPPORTED;
}

int coe_cuda_add_rows(coe_cuda *c, float *d_y, const float *d_b, int rows, int n)
{
    (void)c, (void)d_y, (void)d_b, (void)rows, (void)n;
    return COE_EUNSUPPORTED;
}

int coe_cuda_gather_rows(coe_cuda *c, float *d_dst, const float *d_src, const int32_t *d_idx, int n, int width)
{
    (void)c, (void)d_dst, (void)d_src, (void)d_idx, (void)n, (void)width;
    return COE_EUNSUPPORTED;
}

int coe_cuda_scatter_rows(coe_cuda *c, float *const *d_dst, const float *d_src, int n, int width)
{
    (void)c, (void)d_dst, (void)d_src, (void)n, (void)width;
    return COE_EUNSUPPORTED;
}

int coe_cuda_copy_rows(coe_cuda *c, float *d_dst, int64_t dst_stride, const float *d_src, int64_t src_outer,
                       int64_t src_inner, int n_outer, int n_inner, int width)
{
    (void)c, (void)d_dst, (void)dst_stride, (void)d_src, (void)src_outer, (void)src_inner, (void)n_outer,
        (void)n_inner, (void)width;
    return COE_EUNSUPPORTED;
}

int coe_cuda_copy(coe_cuda *c, void *d_dst, const void *d_src, size_t bytes)
{
    (void)c, (void)d_dst, (void)d_src, (void)bytes;
    return COE_EUNSUPPORTED;
}

int coe_cuda_moe_combine(coe_cuda *c, float *d_out, const float *d_eo, const int32_t *d_slot, const float *d_w,
                         int T, int k, int width, const float *d_so, const float *d_z)
{
    (void)c, (void)d_out, (void)d_eo, (void)d_slot, (void)d_w, (void)T, (void)k, (void)width, (void)d_so, (void)d_z;
    return COE_EUNSUPPORTED;
}

int coe_cuda_rope(coe_cuda *c, const coe_cuda_rope_params *p, const float *d_freqs, float *d_x, int T, int n_heads,
                  int head_dim, const int32_t *d_pos)
{
    (void)c, (void)p, (void)d_freqs, (void)d_x, (void)T, (void)n_heads, (void)head_dim, (void)d_pos;
    return COE_EUNSUPPORTED;
}

int coe_cuda_attention(coe_cuda *c, const coe_cuda_attention_shape *s, const float *d_q,
                       const float *const *d_k_cache, const float *const *d_v_cache, const int32_t *d_pos, int T,
                       float *d_scratch, float *d_out)
{
    (void)c, (void)s, (void)d_q, (void)d_k_cache, (void)d_v_cache, (void)d_pos, (void)T, (void)d_scratch,
        (void)d_out;
    return COE_EUNSUPPORTED;
}
