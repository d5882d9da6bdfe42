/* The engine's forward pass on a CUDA device (experts/engine.h chooses it): the
 * whole model file in device memory, each sequence's cache there too, the same
 * computation as the CPU engine's for the architectures it covers, built of the
 * kernels of experts/cuda.h. The expert routing is the CPU engine's own
 * (coe_moe_assign), on the router's logits brought back to the host. */
#ifndef COE_ENGINE_CUDA_H
#define COE_ENGINE_CUDA_H

#include "common/buf.h"
#include "experts/engine.h"
#include "experts/model.h"

typedef struct coe_engine_cuda coe_engine_cuda;

/* NULL when m's architecture has a CUDA forward, else why not. */
const char *coe_engine_cuda_refuses(const coe_model *m);
/* Opens CUDA device 0 and uploads m, when it fits with room for caches; else the
 * reason in diag. */
int coe_engine_cuda_new(coe_engine_cuda **out, const coe_model *m, int n_ctx, coe_buf *diag);
void coe_engine_cuda_free(coe_engine_cuda **g);
/* "cuda, NAME, X GiB" */
const char *coe_engine_cuda_where(const coe_engine_cuda *g);
/* Weight bytes the products have read, as coe_engine_weight_bytes. */
unsigned long long coe_engine_cuda_weight_bytes(const coe_engine_cuda *g);
/* The batch b, its tokens checked and at positions pos (coe_engine_forward does both
 * and moves each sequence's n_pos after). */
int coe_engine_cuda_forward(coe_engine_cuda *g, const coe_batch *b, const int *pos, float *logits, coe_buf *diag);

#endif
