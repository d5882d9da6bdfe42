/* Router speed on the CPU: single-query latency for a 100-word query (p50, p99) and
 * batched throughput. usage: router-bench ROUTER.gguf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "common/log.h"
#include "router/classifier.h"

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
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
    free(t);
    free(queries);
    coe_router_close(&m);
    return 0;
}
