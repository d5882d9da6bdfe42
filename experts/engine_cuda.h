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

/* A forward pass over a batch, behind coe_engine (ggml's backend table in small): the
 * CPU's (experts/engine.c) or a device's. The batch's tokens are checked and pos holds
 * their positions; coe_engine_forward moves each sequence's n_pos after. */
typedef struct coe_engine_backend {
    const char *name;
    int (*forward)(void *ctx, const coe_batch *b, const int *pos, float *logits, coe_buf *diag);
    unsigned long long (*weight_bytes)(const void *ctx); /* as coe_engine_weight_bytes */
    const char *(*where)(const void *ctx);              /* as coe_engine_where */
    void (*free)(void *ctx);
} coe_engine_backend;

/* The CUDA engine's table; its ctx a coe_engine_cuda. */
extern const coe_engine_backend coe_engine_cuda_backend;

/* NULL when m's architecture has a CUDA forward, else why not. */
const char *coe_engine_cuda_refuses(const coe_model *m);
/* Opens CUDA device 0 and uploads m, when it fits with room for caches; else the
 * reason in diag. */
int coe_engine_cuda_new(coe_engine_cuda **out, const coe_model *m, int n_ctx, coe_buf *diag);
void coe_engine_cuda_free(coe_engine_cuda **g);

#endif
