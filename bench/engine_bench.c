/* Local engine benchmark on one GGUF model, all in one run so the figures compare
 * (decode ratios are medians of rounds that measure bandwidth and decode together):
 * the machine's memory read bandwidth (a read of a buffer far larger than the
 * caches, on every thread), prompt processing, single-sequence decode against its
 * bandwidth bound (bandwidth / weight bytes one token reads), and decode with 4
 * concurrent sequences. Tokens are random, so the experts vary as in real use.
 * With "cuda": the same on CUDA device 0, the bandwidth a copy kernel measures there,
 * prompts of 512 and 1, 8 and 32 concurrent sequences.
 * usage: engine-bench MODEL.gguf [THREADS] [cuda] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "experts/cuda.h"
#include "experts/engine.h"
#include "experts/quant.h"
#include "experts/threads.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct read_job {
    const uint8_t *buf;
    size_t n;
    uint64_t sink[64];
} read_job;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n)
{
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        acc0 = _mm256_xor_si256(acc0, _mm256_loadu_si256((const __m256i *)(p + i)));
        acc1 = _mm256_xor_si256(acc1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        acc2 = _mm256_xor_si256(acc2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        acc3 = _mm256_xor_si256(acc3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(acc0, acc1), _mm256_xor_si256(acc2, acc3));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}
#endif

static void read_part(void *ctx, int ith, int nth)
{
    read_job *j = ctx;
    size_t part = j->n / (size_t)nth / 128 * 128;
    const uint8_t *p = j->buf + part * (size_t)ith;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        j->sink[ith] ^= read_avx2(p, part);
        return;
    }
#endif
    uint64_t x = 0;
    for (size_t i = 0; i < part; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        x ^= v;
    }
    j->sink[ith] ^= x;
}

/* Best of a few full reads with every thread of the model's own mapping (the very
 * pages decode reads: page-cache memory, which may be slower than fresh anonymous
 * memory with huge pages) when it is over 1 GiB, else of a 1 GiB buffer. */
static double bandwidth(coe_threads *t, const uint8_t *model, size_t model_bytes, const char **what)
{
    size_t n = (size_t)1 << 30;
    uint8_t *buf = NULL;
    if (model_bytes >= n) {
        n = model_bytes;
        *what = "the model's mapped file";
    } else {
        buf = aligned_alloc(64, n);
        if (!buf)
            return 0;
        memset(buf, 1, n);
        *what = "a 1 GiB buffer";
    }
    read_job j = {buf ? buf : model, n, {0}};
    double best = 0;
    for (int r = 0; r < 2; r++) {
        double t0 = now();
        coe_threads_run(t, read_part, &j);
        double gbs = (double)n / (now() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    free(buf);
    return best;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

static uint64_t seed = 88172645463325252ull;

static int32_t random_token(int n_vocab)
{
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    return (int32_t)(seed % (uint64_t)(n_vocab - 16)) + 16;
}

static void run(coe_engine *e, int n, const int32_t *tok, coe_kv *const *seq, const bool *want, float *logits)
{
    coe_batch b = {n, tok, seq, want, NULL};
    coe_buf d = COE_BUF_INIT;
    if (coe_engine_forward(e, &b, logits, &d)) {
        fprintf(stderr, "engine-bench: %s", d.data);
        exit(1);
    }
    coe_buf_free(&d);
}

/* Decodes steps tokens on each of n sequences together; tokens per second in all.
 * *bytes_per_step: the weight bytes one step read (distinct experts of the batch). */
static double decode(coe_engine *e, const coe_model *m, int n, int prompt, int steps, float *logits,
                     double *bytes_per_step)
{
    coe_kv *kv[64];
    int32_t tok[512];
    coe_kv *seq[512];
    bool want[512];
    for (int s = 0; s < n; s++) {
        kv[s] = coe_kv_new(m);
        for (int i = 0; i < prompt; i++) {
            tok[i] = random_token(m->n_vocab);
            seq[i] = kv[s];
            want[i] = i == prompt - 1;
        }
        run(e, prompt, tok, seq, want, logits);
    }
    double t0 = now();
    unsigned long long b0 = coe_engine_weight_bytes(e);
    for (int step = 0; step < steps; step++) {
        for (int s = 0; s < n; s++) {
            tok[s] = random_token(m->n_vocab);
            seq[s] = kv[s];
            want[s] = true;
        }
        run(e, n, tok, seq, want, logits);
    }
    double rate = (double)(n * steps) / (now() - t0);
    if (bytes_per_step)
        *bytes_per_step = (double)(coe_engine_weight_bytes(e) - b0) / steps;
    for (int s = 0; s < n; s++)
        coe_kv_free(&kv[s]);
    return rate;
}

/* Prompt processing: n tokens (at most 512) of one sequence in one batch, best of 3. */
static double prompt_rate(coe_engine *e, const coe_model *m, int n, float *logits)
{
    int32_t tok[512];
    coe_kv *seq[512];
    bool want[512];
    double best = 0;
    for (int r = 0; r < 3; r++) {
        coe_kv *kv = coe_kv_new(m);
        for (int i = 0; i < n; i++) {
            tok[i] = random_token(m->n_vocab);
            seq[i] = kv;
            want[i] = i == n - 1;
        }
        double t0 = now();
        run(e, n, tok, seq, want, logits);
        double rate = n / (now() - t0);
        best = rate > best ? rate : best;
        coe_kv_free(&kv);
    }
    return best;
}

/* The model on CUDA device 0: copy bandwidth, the bound, prompts, 1, 8 and 32 sequences. */
static int gpu_main(const coe_model *m)
{
    coe_engine *e = NULL;
    coe_buf d = COE_BUF_INIT;
    if (coe_engine_open(&e, m, COE_DEVICE_CUDA, 1, 4096, &d)) {
        fprintf(stderr, "engine-bench: %s", d.data);
        return 1;
    }
    char why[256];
    coe_cuda *c = NULL;
    double bw = 0;
    if (coe_cuda_open(&c, 0, why, sizeof why) || coe_cuda_copy_bandwidth(c, (size_t)2 << 30, 5, &bw)) {
        fprintf(stderr, "engine-bench: no bandwidth: %s\n", c ? coe_cuda_last_error(c) : why);
        return 1;
    }
    coe_cuda_close(&c);
    float *logits = malloc(64 * (size_t)m->n_vocab * sizeof *logits);
    enum { PROMPT = 512 };
    decode(e, m, 1, 8, 8, logits, NULL); /* warm-up: scratch, the products' float copies */
    double pp = prompt_rate(e, m, PROMPT, logits);
    const double bytes = (double)m->bytes_per_token, bound = bw / bytes;
    printf("## Local engine on CUDA (%s, %d layers, embedding %d, %d experts top-%d, %s)\n\n", m->arch_name,
           m->n_layer, m->n_embd, m->n_expert, m->n_expert_used, coe_engine_where(e));
    printf("| measure | value | ratio |\n|---|---|---|\n");
    printf("| device memory bandwidth (our copy kernel, read + written) | %.0f GB/s | |\n", bw / 1e9);
    printf("| weight bytes read per decoded token | %.1f MB | |\n", bytes / 1e6);
    printf("| bandwidth bound for one sequence | %.1f tokens/s | 1.00 |\n", bound);
    printf("| prompt processing (%d tokens, one batch) | %.0f tokens/s | |\n", PROMPT, pp);
    const int seqs[] = {1, 8, 32};
    double one = 0;
    for (int k = 0; k < 3; k++) {
        double step_bytes = 0, rate = decode(e, m, seqs[k], 32, 64, logits, &step_bytes);
        one = k == 0 ? rate : one;
        if (k == 0)
            printf("| decode, 1 sequence | %.1f tokens/s | **%.2f of the bound** |\n", rate, rate / bound);
        else
            printf("| decode, %d concurrent sequences | %.1f tokens/s | %.2fx one; %.2f of their bound (%.0f MB a step) |\n",
                   seqs[k], rate, rate / one, rate / (seqs[k] * bw / step_bytes), step_bytes / 1e6);
    }
    free(logits);
    coe_engine_free(&e);
    coe_buf_free(&d);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: engine-bench MODEL.gguf [THREADS] [cuda]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    coe_model *m;
    coe_buf d = COE_BUF_INIT;
    if (coe_model_open(&m, argv[1], &d)) {
        fputs(d.data, stderr);
        return 1;
    }
    /* Bring the whole file into the page cache first: decode reads from memory, not disk. */
    volatile uint8_t x = 0;
    for (size_t i = 0; i < m->gguf->size; i += 4096)
        x ^= m->gguf->base[i];
    (void)x;
    if (argc > 3 && strcmp(argv[3], "cuda") == 0) {
        int rc = gpu_main(m);
        coe_model_close(&m);
        return rc;
    }
    coe_engine *e = coe_engine_new(m, threads, 4096);
    coe_threads *team = coe_threads_new(threads);
    int n_threads = coe_threads_count(team);
    const char *bw_what = "";
    float *logits = malloc(4 * (size_t)m->n_vocab * sizeof *logits);

    double pp = prompt_rate(e, m, 256, logits);
    decode(e, m, 1, 8, 8, logits, NULL); /* warm-up */
    /* Rounds of bandwidth, one sequence, four sequences, back to back, so that each
     * ratio compares figures taken together (this machine's speed drifts); medians. */
    enum { ROUNDS = 5 };
    double bws[ROUNDS], ones[ROUNDS], fours[ROUNDS], fracs[ROUNDS], gains[ROUNDS], four_bytes = 0;
    double bytes = (double)m->bytes_per_token;
    for (int r = 0; r < ROUNDS; r++) {
        bws[r] = bandwidth(team, m->gguf->base, m->gguf->size, &bw_what);
        ones[r] = decode(e, m, 1, 32, 96, logits, NULL);
        fours[r] = decode(e, m, 4, 32, 96, logits, &four_bytes);
        fracs[r] = ones[r] / (bws[r] * 1e9 / bytes);
        gains[r] = fours[r] / ones[r];
    }
    coe_threads_free(&team);
    double bw = median(bws, ROUNDS), one = median(ones, ROUNDS), four = median(fours, ROUNDS);
    double frac = median(fracs, ROUNDS), gain = median(gains, ROUNDS);
    double four_bound = 4 * bw * 1e9 / four_bytes, bound = bw * 1e9 / bytes;
    printf("## Local engine (%s, %d layers, embedding %d, %d experts top-%d, %s kernels, %d threads)\n\n",
           m->arch_name, m->n_layer, m->n_embd, m->n_expert, m->n_expert_used, coe_quant_kernels(),
           n_threads);
    printf("| measure | value | ratio |\n|---|---|---|\n");
    printf("| memory read bandwidth (%s, all threads) | %.2f GB/s | |\n", bw_what, bw);
    printf("| weight bytes read per decoded token | %.1f MB | |\n", bytes / 1e6);
    printf("| bandwidth bound for one sequence | %.2f tokens/s | 1.00 |\n", bound);
    printf("| prompt processing (256 tokens, one batch) | %.1f tokens/s | %.2fx the bound |\n", pp, pp / bound);
    printf("| decode, 1 sequence | %.2f tokens/s | **%.0f%% of the bound** |\n", one, 100 * frac);
    printf("| decode, 4 concurrent sequences | %.2f tokens/s | **%.2fx one sequence** |\n", four, gain);
    printf("| weight bytes one step of 4 sequences reads (their experts differ) | %.1f MB | %.2fx one token's |\n",
           four_bytes / 1e6, four_bytes / bytes);
    printf("| bandwidth bound for 4 sequences | %.2f tokens/s | %.2fx one sequence; reached %.0f%% |\n", four_bound,
           four_bound / one, 100 * four / four_bound);
    free(logits);
    coe_engine_free(&e);
    coe_model_close(&m);
    coe_buf_free(&d);
    return 0;
}
