/* The category classifier (router/classifier.h) on a CUDA device: every ensemble
 * member's weights uploaded once, then batches of queries classified together: the
 * embedding bag by a gather kernel, the dense layers by cuBLAS, the softmax and the
 * members' average on the device; the fold of finer classes into categories on the
 * host. Probabilities as coe_router_classify_batch's, within float rounding. Built
 * from router/classifier_cuda.cu when nvcc is found; otherwise opening fails with the
 * reason. */
#ifndef COE_CLASSIFIER_CUDA_H
#define COE_CLASSIFIER_CUDA_H

#include "common/buf.h"
#include "router/classifier.h"
#include "router/features.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct coe_router_gpu coe_router_gpu;

/* Uploads m (which must outlive nothing: the device keeps its own copy) to CUDA
 * device `device`, with room for batches of max_batch queries of up to
 * max_features features in all. */
int coe_router_gpu_open(coe_router_gpu **out, const coe_router *m, int device, int max_batch, size_t max_features,
                        coe_buf *diag);
void coe_router_gpu_close(coe_router_gpu **g);
/* "NAME, X GiB" of the device. */
const char *coe_router_gpu_device(const coe_router_gpu *g);

/* n queries' features (n <= max_batch, their features together <= max_features) into
 * probs: n rows of the model's n_classes. */
int coe_router_gpu_classify(coe_router_gpu *g, const coe_features *const *f, int n, float *probs, coe_buf *diag);

/* coe_router_gpu_classify for a batch of any size (router/batcher.h's coe_batch_fn,
 * ctx the coe_router_gpu): in parts that the device's buffers hold; a query with more
 * features than they hold alone is classified on the CPU. */
int coe_router_gpu_batch(void *gpu, const coe_features *const *f, int n, float *probs, coe_buf *diag);

#ifdef __cplusplus
}
#endif

#endif
