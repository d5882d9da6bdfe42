/* CUDA C++ only: the device context of experts/cuda.h, for the .cu files that add
 * kernels of their own (router/classifier_cuda.cu) on the same stream and cuBLAS
 * handle. */
#ifndef COE_CUDA_INTERNAL_H
#define COE_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "experts/cuda.h"

struct coe_cuda {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    char name[160];
    char error[256];
};

/* Records the message as the context's last error and returns err. */
int coe_cuda_fail(coe_cuda *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* 0, or the CUDA error recorded (what: the step) and returned as a coe_err. */
int coe_cuda_check(coe_cuda *c, cudaError_t e, const char *what);

#endif
