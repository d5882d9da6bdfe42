/* Router speed: on the CPU, single-query latency for a 100-word query (p50, p99) and
 * batched throughput; on a CUDA device where there is one, batches of 1024 such
 * queries (featurized on the CPU, timed apart) and the latency of one batch.
 * usage: router-bench ROUTER.gguf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "common/log.h"
#include "experts/cuda.h"
#include "router/classifier.h"
#include "router/classifier_cuda.h"

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Batches of 1024 queries on the GPU: featurizing them (one CPU thread) and
 * classifying them, timed apart; the classification over many batches and one
 * batch's latency (upload, kernels, download). */
static void gpu(const coe_router *m, char (*queries)[1024])
{
    if (coe_cuda_device_count() == 0) {
        printf("| on a GPU | skipped: no CUDA device | |\n");
        return;
    }
    enum { B = 1024, ROUNDS = 200 };
    coe_buf diag = COE_BUF_INIT;
    coe_router_gpu *g = NULL;
    if (coe_router_gpu_open(&g, m, 0, B, (size_t)B * 4096, &diag)) {
        printf("| on a GPU | failed: %s | |\n", diag.data);
        coe_buf_free(&diag);
        return;
    }
    coe_features *f = calloc(B, sizeof *f);
    const coe_features **fp = malloc(B * sizeof *fp);
    float *out = malloc((size_t)B * (size_t)m->n_classes * sizeof *out);
    long long t0 = coe_now_us();
    for (int b = 0; b < B; b++) {
        const char *q = queries[b % 64];
        coe_features_add_text(&m->fp, q, strlen(q), 1.0f, &f[b]);
        fp[b] = &f[b];
    }
    double feat = (double)(coe_now_us() - t0) / 1e6;
    for (int r = 0; r < 10; r++)
        coe_router_gpu_classify(g, fp, B, out, &diag);
    long long best = -1;
    t0 = coe_now_us();
    for (int r = 0; r < ROUNDS; r++) {
        long long t1 = coe_now_us();
        if (coe_router_gpu_classify(g, fp, B, out, &diag)) {
            printf("| on a GPU | failed: %s | |\n", diag.data);
            break;
        }
        long long dt = coe_now_us() - t1;
        best = best < 0 || dt < best ? dt : best;
    }
    double secs = (double)(coe_now_us() - t0) / 1e6;
    printf("| featurizing 100-word queries (CPU, 1 thread) | %.0f queries/s | |\n", B / feat);
    printf("| batches of %d on %s (classification) | %.0f queries/s | one batch %.3f ms (best of %d) |\n", B,
           coe_router_gpu_device(g), (double)B * ROUNDS / secs, (double)best / 1000, ROUNDS);
    for (int b = 0; b < B; b++)
        coe_features_free(&f[b]);
    free(f);
    free(fp);
    free(out);
    coe_router_gpu_close(&g);
    coe_buf_free(&diag);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: router-bench ROUTER.gguf\n");
        return 2;
    }
    openblas_set_num_threads(1);
    coe_buf diag = COE_BUF_INIT;
    coe_router *m = NULL;
    if (coe_router_open(&m, argv[1], &diag)) {
        fputs(diag.data, stderr);
        return 1;
    }
    /* 100 words of an MMLU-style question, varied so that the cache does not flatter. */
    static const char *const words[] = {"the", "reaction", "rate", "of", "a", "first-order", "process", "doubles",
                                        "when", "temperature", "rises", "by", "ten", "kelvin", "what", "is",
                                        "activation", "energy", "in", "kilojoules", "per", "mole", "given",
                                        "constant", "pressure", "and", "ideal", "gas", "behaviour"};
    enum { N = 20000, WORDS = 100 };
    char (*queries)[1024] = malloc(64 * sizeof *queries);
    for (int q = 0; q < 64; q++) {
        size_t len = 0;
        for (int w = 0; w < WORDS; w++)
            len += (size_t)snprintf(queries[q] + len, sizeof queries[q] - len, "%s ",
                                    words[(unsigned)(q * 7 + w * 13) % (sizeof words / sizeof words[0])]);
    }
    float probs[4096];
    long long *t = malloc(N * sizeof *t);
    for (int i = 0; i < 1000; i++)
        coe_router_classify_text(m, queries[i % 64], strlen(queries[i % 64]), probs);
    for (int i = 0; i < N; i++) {
        long long t0 = coe_now_us();
        coe_router_classify_text(m, queries[i % 64], strlen(queries[i % 64]), probs);
        t[i] = coe_now_us() - t0;
    }
    qsort(t, N, sizeof *t, cmp_ll);
    printf("| single query, 100 words (featurize + classify) | p50 %lld us | p99 %lld us |\n", t[N / 2],
           t[N * 99 / 100]);
    for (int batch = 1; batch <= 64; batch *= 4) {
        coe_features *f = calloc((size_t)batch, sizeof *f);
        const coe_features **fp = malloc((size_t)batch * sizeof *fp);
        float *out = malloc((size_t)batch * (size_t)m->n_classes * sizeof *out);
        int rounds = 4000 / batch;
        long long t0 = coe_now_us();
        for (int r = 0; r < rounds; r++) {
            for (int b = 0; b < batch; b++) {
                coe_features_reset(&f[b]);
                const char *q = queries[(r * batch + b) % 64];
                coe_features_add_text(&m->fp, q, strlen(q), 1.0f, &f[b]);
                fp[b] = &f[b];
            }
            coe_router_classify_batch(m, fp, batch, out);
        }
        double secs = (double)(coe_now_us() - t0) / 1e6;
        printf("| batched, %d per call (OpenBLAS, 1 thread) | %.0f queries/s | |\n", batch,
               (double)(rounds * batch) / secs);
        for (int b = 0; b < batch; b++)
            coe_features_free(&f[b]);
        free(f);
        free(fp);
        free(out);
    }
    gpu(m, queries);
    free(t);
    free(queries);
    coe_router_close(&m);
    return 0;
}
