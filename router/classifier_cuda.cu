/* The category classifier on a CUDA device (router/classifier_cuda.h). The embedding
 * bag sums each query's rows in the CPU's order with explicitly rounded operations,
 * so its output is the CPU's bit for bit; the dense layers differ from OpenBLAS's
 * only in the order of their float sums. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "experts/cuda_internal.h"
extern "C" {
#include "common/buf.h"
#include "common/err.h"
#include "router/classifier.h"
}
#include "router/classifier_cuda.h"

struct member_dev {
    float *embd, *w1, *b1, *w2, *b2;
};

struct coe_router_gpu {
    coe_cuda *dev;
    const coe_router *m;  /* shape and the fold of outputs into categories */
    int n_members, max_batch;
    size_t max_features;
    member_dev *members;
    int32_t *d_offsets;   /* max_batch + 1 */
    uint32_t *d_ids;      /* max_features */
    float *d_w;           /* max_features */
    float *d_x, *d_h, *d_q, *d_sum;
    int32_t *offsets;     /* host staging */
    uint32_t *ids;
    float *w, *sum;
};

/* One block per query; thread k sums column k over the query's features in order. */
__global__ void embed_kernel(const float *embd, int dim, const int32_t *offsets, const uint32_t *ids, const float *w,
                             float *x)
{
    int q = blockIdx.x;
    for (int k = threadIdx.x; k < dim; k += blockDim.x) {
        float acc = 0, total = 0;
        for (int i = offsets[q]; i < offsets[q + 1]; i++) {
            acc = __fadd_rn(acc, __fmul_rn(w[i], embd[(size_t)ids[i] * (size_t)dim + (size_t)k]));
            total = __fadd_rn(total, w[i]);
        }
        x[(size_t)q * (size_t)dim + (size_t)k] = total > 0 ? __fdiv_rn(acc, total) : acc;
    }
}

/* y[r][j] = b[j] for n rows of width. */
__global__ void rows_of_kernel(float *y, const float *b, int n, int width)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n * (size_t)width;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = b[i % (size_t)width];
}

__global__ void relu_kernel(float *y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = y[i] > 0 ? y[i] : 0;
}

/* One block per row: q = softmax(q), then sum = q (first member) or sum += q. */
__global__ void softmax_add_kernel(float *q, float *sum, int width, bool first)
{
    __shared__ float red[32];
    float *v = q + (size_t)blockIdx.x * (size_t)width, *s = sum + (size_t)blockIdx.x * (size_t)width;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        mx = fmaxf(mx, v[i]);
    for (int o = 16; o > 0; o /= 2)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0)
        red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < warps; i++)
        mx = fmaxf(mx, red[i]);
    __syncthreads();
    float total = 0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        v[i] = expf(v[i] - mx);
        total += v[i];
    }
    for (int o = 16; o > 0; o /= 2)
        total += __shfl_xor_sync(0xffffffffu, total, o);
    if (lane == 0)
        red[warp] = total;
    __syncthreads();
    total = 0;
    for (int i = 0; i < warps; i++)
        total += red[i];
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        s[i] = first ? v[i] / total : s[i] + v[i] / total;
}

static unsigned grid(size_t n)
{
    size_t g = (n + 255) / 256;
    return (unsigned)(g < 1 ? 1 : g > 65535 ? 65535 : g);
}

static void *upload(coe_cuda *dev, const void *src, size_t bytes, int *rc)
{
    void *d = coe_cuda_alloc(dev, bytes);
    if (!d)
        *rc = COE_ENOMEM;
    else if (src && !*rc)
        *rc = coe_cuda_upload(dev, d, src, bytes);
    return d;
}

extern "C" void coe_router_gpu_close(coe_router_gpu **pg)
{
    coe_router_gpu *g = *pg;
    if (!g)
        return;
    for (int k = 0; g->members && k < g->n_members; k++) {
        member_dev *d = &g->members[k];
        float *all[] = {d->embd, d->w1, d->b1, d->w2, d->b2};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            coe_cuda_release(g->dev, all[i]);
    }
    void *bufs[] = {g->d_offsets, g->d_ids, g->d_w, g->d_x, g->d_h, g->d_q, g->d_sum};
    for (size_t i = 0; g->dev && i < sizeof bufs / sizeof *bufs; i++)
        coe_cuda_release(g->dev, bufs[i]);
    free(g->members);
    free(g->offsets);
    free(g->ids);
    free(g->w);
    free(g->sum);
    coe_cuda_close(&g->dev);
    free(g);
    *pg = NULL;
}

extern "C" int coe_router_gpu_open(coe_router_gpu **out, const coe_router *m, int device, int max_batch,
                                   size_t max_features, coe_buf *diag)
{
    *out = NULL;
    if (max_batch <= 0 || max_features == 0) {
        coe_buf_printf(diag, "router on CUDA: batches of %d queries and %zu features cannot hold a query\n",
                       max_batch, max_features);
        return COE_EINVAL;
    }
    coe_router_gpu *g = (coe_router_gpu *)calloc(1, sizeof *g);
    if (!g)
        return COE_ENOMEM;
    char why[256];
    int rc = coe_cuda_open(&g->dev, device, why, sizeof why);
    if (rc) {
        coe_buf_printf(diag, "router on CUDA: %s\n", why);
        free(g);
        return rc;
    }
    g->m = m;
    g->n_members = m->n_more + 1;
    g->max_batch = max_batch;
    g->max_features = max_features;
    g->members = (member_dev *)calloc((size_t)g->n_members, sizeof *g->members);
    g->offsets = (int32_t *)malloc(((size_t)max_batch + 1) * sizeof *g->offsets);
    g->ids = (uint32_t *)malloc(max_features * sizeof *g->ids);
    g->w = (float *)malloc(max_features * sizeof *g->w);
    int zn = coe_router_z(m), c = m->n_outputs;
    g->sum = (float *)malloc((size_t)max_batch * (size_t)c * sizeof *g->sum);
    if (!g->members || !g->offsets || !g->ids || !g->w || !g->sum)
        rc = COE_ENOMEM;
    size_t dim = (size_t)m->dim, hid = (size_t)(m->hidden > 0 ? m->hidden : 0);
    for (int k = 0; !rc && k < g->n_members; k++) {
        const float *embd = k ? m->more[k - 1].embd : m->embd, *w1 = k ? m->more[k - 1].w1 : m->w1,
                    *b1 = k ? m->more[k - 1].b1 : m->b1, *w2 = k ? m->more[k - 1].w2 : m->w2,
                    *b2 = k ? m->more[k - 1].b2 : m->b2;
        member_dev *d = &g->members[k];
        d->embd = (float *)upload(g->dev, embd, (size_t)m->fp.buckets * dim * sizeof(float), &rc);
        if (hid) {
            d->w1 = (float *)upload(g->dev, w1, hid * dim * sizeof(float), &rc);
            d->b1 = (float *)upload(g->dev, b1, hid * sizeof(float), &rc);
        }
        d->w2 = (float *)upload(g->dev, w2, (size_t)c * (size_t)zn * sizeof(float), &rc);
        d->b2 = (float *)upload(g->dev, b2, (size_t)c * sizeof(float), &rc);
    }
    size_t B = (size_t)max_batch;
    g->d_offsets = (int32_t *)upload(g->dev, NULL, (B + 1) * sizeof(int32_t), &rc);
    g->d_ids = (uint32_t *)upload(g->dev, NULL, max_features * sizeof(uint32_t), &rc);
    g->d_w = (float *)upload(g->dev, NULL, max_features * sizeof(float), &rc);
    g->d_x = (float *)upload(g->dev, NULL, B * dim * sizeof(float), &rc);
    g->d_h = hid ? (float *)upload(g->dev, NULL, B * hid * sizeof(float), &rc) : NULL;
    g->d_q = (float *)upload(g->dev, NULL, B * (size_t)c * sizeof(float), &rc);
    g->d_sum = (float *)upload(g->dev, NULL, B * (size_t)c * sizeof(float), &rc);
    if (rc) {
        coe_buf_printf(diag, "router on CUDA (%s): %s\n", coe_cuda_name(g->dev),
                       rc == COE_ENOMEM ? "out of memory" : coe_cuda_last_error(g->dev));
        coe_router_gpu_close(&g);
        return rc;
    }
    *out = g;
    return 0;
}

extern "C" int coe_router_gpu_batch(void *gpu, const coe_features *const *f, int n, float *probs, coe_buf *diag)
{
    coe_router_gpu *g = (coe_router_gpu *)gpu;
    const int C = g->m->n_classes;
    int rc = 0;
    for (int at = 0; !rc && at < n;) {
        if (f[at]->n > g->max_features) { /* alone, and too big for the device's buffers */
            rc = coe_router_classify_batch(g->m, f + at, 1, probs + (size_t)at * (size_t)C);
            at++;
            continue;
        }
        int k = 0;
        size_t total = 0;
        while (at + k < n && k < g->max_batch && f[at + k]->n <= g->max_features - total)
            total += f[at + k++]->n;
        rc = coe_router_gpu_classify(g, f + at, k, probs + (size_t)at * (size_t)C, diag);
        at += k;
    }
    return rc;
}

extern "C" const char *coe_router_gpu_device(const coe_router_gpu *g)
{
    return coe_cuda_name(g->dev);
}

static int blas(coe_router_gpu *g, cublasStatus_t s, coe_buf *diag)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    coe_buf_printf(diag, "router on CUDA: cuBLAS: %s\n", cublasGetStatusString(s));
    (void)g;
    return COE_EIO;
}

extern "C" int coe_router_gpu_classify(coe_router_gpu *g, const coe_features *const *f, int n, float *probs,
                                       coe_buf *diag)
{
    const coe_router *m = g->m;
    if (n <= 0)
        return 0;
    if (n > g->max_batch) {
        coe_buf_printf(diag, "router on CUDA: a batch of %d queries, more than the %d it was opened for\n", n,
                       g->max_batch);
        return COE_ERANGE;
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        g->offsets[i] = (int32_t)at;
        if (f[i]->n > g->max_features - at) {
            coe_buf_printf(diag, "router on CUDA: the batch's features pass the %zu it was opened for\n",
                           g->max_features);
            return COE_ERANGE;
        }
        for (size_t j = 0; j < f[i]->n; j++) {
            g->ids[at + j] = f[i]->ids[j] % m->fp.buckets; /* ids are already below buckets; a bad one stays inside */
            g->w[at + j] = f[i]->w[j];
        }
        at += f[i]->n;
    }
    g->offsets[n] = (int32_t)at;
    coe_cuda *dev = g->dev;
    int rc = coe_cuda_upload(dev, g->d_offsets, g->offsets, ((size_t)n + 1) * sizeof *g->offsets);
    if (!rc && at)
        rc = coe_cuda_upload(dev, g->d_ids, g->ids, at * sizeof *g->ids);
    if (!rc && at)
        rc = coe_cuda_upload(dev, g->d_w, g->w, at * sizeof *g->w);
    const int dim = m->dim, hid = m->hidden > 0 ? m->hidden : 0, zn = coe_router_z(m), c = m->n_outputs;
    const float one = 1;
    cudaStream_t st = dev->stream;
    cudaSetDevice(dev->device);
    for (int k = 0; !rc && k < g->n_members; k++) {
        const member_dev *d = &g->members[k];
        embed_kernel<<<(unsigned)n, dim < 256 ? 32 * ((dim + 31) / 32) : 256, 0, st>>>(d->embd, dim, g->d_offsets,
                                                                                      g->d_ids, g->d_w, g->d_x);
        const float *z = g->d_x;
        if (hid) {
            rows_of_kernel<<<grid((size_t)n * (size_t)hid), 256, 0, st>>>(g->d_h, d->b1, n, hid);
            if ((rc = blas(g, cublasSgemm(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, hid, n, dim, &one, d->w1, dim, g->d_x,
                                          dim, &one, g->d_h, hid),
                           diag)))
                break;
            relu_kernel<<<grid((size_t)n * (size_t)hid), 256, 0, st>>>(g->d_h, (size_t)n * (size_t)hid);
            z = g->d_h;
        }
        rows_of_kernel<<<grid((size_t)n * (size_t)c), 256, 0, st>>>(g->d_q, d->b2, n, c);
        if ((rc = blas(g, cublasSgemm(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, c, n, zn, &one, d->w2, zn, z, zn, &one,
                                      g->d_q, c),
                       diag)))
            break;
        softmax_add_kernel<<<(unsigned)n, 128, 0, st>>>(g->d_q, g->d_sum, c, k == 0);
        rc = coe_cuda_check(dev, cudaGetLastError(), "router kernels");
    }
    if (!rc)
        rc = coe_cuda_download(dev, g->sum, g->d_sum, (size_t)n * (size_t)c * sizeof *g->sum);
    if (rc) {
        if (!diag->len)
            coe_buf_printf(diag, "router on CUDA: %s\n", coe_cuda_last_error(dev));
        return rc;
    }
    for (int i = 0; i < n; i++) {
        float *q = g->sum + (size_t)i * (size_t)c;
        for (int o = 0; o < c; o++)
            q[o] /= (float)g->n_members;
        coe_router_fold(m, q, probs + (size_t)i * (size_t)m->n_classes);
    }
    return 0;
}
