/* router/classifier_cuda.h in a build without CUDA. */
#include "common/err.h"
#include "router/classifier_cuda.h"

int coe_router_gpu_open(coe_router_gpu **out, const coe_router *m, int device, int max_batch, size_t max_features,
                        coe_buf *diag)
{
    (void)m, (void)max_batch, (void)max_features;
    *out = NULL;
    coe_buf_printf(diag, "no CUDA device %d: this build has no CUDA (nvcc was not found when it was configured)\n",
                   device);
    return COE_EUNSUPPORTED;
}

void coe_router_gpu_close(coe_router_gpu **g)
{
    *g = NULL;
}

int coe_router_gpu_batch(void *gpu, const coe_features *const *f, int n, float *probs, coe_buf *diag)
{
    (void)gpu, (void)f, (void)n, (void)probs;
    coe_buf_printf(diag, "this build has no CUDA\n");
    return COE_EUNSUPPORTED;
}

const char *coe_router_gpu_device(const coe_router_gpu *g)
{
    (void)g;
    return "";
}

int coe_router_gpu_classify(coe_router_gpu *g, const coe_features *const *f, int n, float *probs, coe_buf *diag)
{
    (void)g, (void)f, (void)n, (void)probs;
    coe_buf_printf(diag, "this build has no CUDA\n");
    return COE_EUNSUPPORTED;
}
