/* The engine on a CUDA device against the CPU engine: forged models of each
 * architecture the CUDA forward covers (prompts of several sequences, prompts past the
 * matrix-vector kernel's tokens, decode steps of sequences together) and every model
 * of ../shared/conformance (where present): logits and 16 greedy tokens.
 *
 * Built twice. In the unit suite (COE_HOST_DEVICE) it is linked with the host
 * emulation of experts/cuda.h (host_device.c), so the CUDA forward's orchestration is
 * checked on machines without a GPU, and also the choice of device (auto, cuda that
 * cannot be had, caches that belong to another engine). In the gpu suite it runs on
 * the real device, and skips without one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dirent.h>

#include "coe_build.h"
#include "common/err.h"
#include "experts/cuda.h"
#include "experts/engine.h"
#include "experts/forge.h"
#include "experts/model.h"
#include "tmpdir.h"
#ifdef COE_HOST_DEVICE
#include "host_device.h"
#define DEVICE_NAME "cuda, host emulation"
#define ALL_RELEASED() assert_int_equal(host_device_live(), 0) /* every device buffer released */
#else
#define DEVICE_NAME "cuda, "
#define ALL_RELEASED() (void)0
#endif

static char dir[64];

/* The small forged model of arch; the variant (true): for llama without experts, for
 * deepseek2 the older layout (attn_kv_b, no Q bottleneck) with V3's routing (sigmoid
 * scores, the selection bias, expert groups, the weight scale). */
static coe_model *forged(coe_arch arch, uint32_t type, bool variant)
{
    coe_forge_spec s = coe_forge_small(arch);
    s.type = type;
    if (variant && arch == COE_ARCH_DEEPSEEK2)
        s.kv_b = true, s.n_lora_q = 0, s.sigmoid = s.norm_w = true, s.n_group = 2, s.n_group_used = 1,
        s.weights_scale = 2.5f;
    else if (variant)
        s.n_expert = s.n_expert_used = 0;
    uint32_t block, bytes;
    coe_ggml_type_layout(type, &block, &bytes);
    if (block == 256) { /* K-quants need rows of 256 */
        s.n_embd = s.n_ff = 256;
        s.n_ff_shexp = s.n_ff_shexp ? 256 : 0;
        s.n_head = 8;
        s.head_dim = arch == COE_ARCH_QWEN3MOE ? 64 : 0;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/%s-%s%s.gguf", dir, coe_arch_name(arch), coe_ggml_type_name(type),
             variant ? "-variant" : "");
    coe_buf d = COE_BUF_INIT;
    coe_model *m = NULL;
    if (coe_forge_write(&s, path, &d) || coe_model_open(&m, path, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
    return m;
}

/* The logits of a script of batches, every token wanted: two prompts together (9
 * and 3 tokens: more than the matrix-vector kernel takes), then 4 steps of both. */
enum { ROWS = 9 + 3 + 4 * 2 };

static void run(coe_engine *e, const coe_model *m, float *logits)
{
    coe_kv *a = coe_kv_new(m), *b = coe_kv_new(m);
    int32_t toks[12] = {1, 300, 301, 450, 17, 600, 999, 5, 42, 7, 77, 500}; /* two different beginnings */
    coe_kv *seqs[12];
    bool want[12];
    for (int i = 0; i < 12; i++)
        seqs[i] = i < 9 ? a : b, want[i] = true;
    coe_buf d = COE_BUF_INIT;
    coe_batch batch = {12, toks, seqs, want, NULL};
    if (coe_engine_forward(e, &batch, logits, &d))
        fail_msg("%s", d.data);
    float *at = logits + (size_t)12 * (size_t)m->n_vocab;
    for (int step = 0; step < 4; step++) {
        int32_t two[2] = {100 + step, 900 - step};
        coe_kv *s2[2] = {a, b};
        coe_batch bb = {2, two, s2, want, NULL};
        if (coe_engine_forward(e, &bb, at, &d))
            fail_msg("%s", d.data);
        at += 2 * (size_t)m->n_vocab;
    }
    assert_int_equal(a->n_pos, 13);
    assert_int_equal(b->n_pos, 7);
    coe_kv_free(&a);
    coe_kv_free(&b);
    coe_buf_free(&d);
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        best = v[i] > v[best] ? i : best;
    return best;
}

/* The bounds. The device rounds each product's activations as the CPU does (Q8_0's
 * codes for Q8_0 weights, F16 for F16, ...), so both multiply the same values and
 * differ in the order of float sums: 1e-5 relative at most, NMSE below EXACT (1e-10;
 * measured up to 3.8e-13). F32 activations are not rounded, so every F32 row is that
 * close. With rounded activations a sum's order can, rarely, move one value across a
 * rounding boundary (a near-tie: x * 127 / amax within 1e-7 of a half), one code or
 * F16 unit apart, and that carries on through the sequence's cache (a flip measured:
 * the same 9.4e-5 as the device's products moved by one ulp each). Measured up to
 * 2.7e-4 on such rows, so quantized rows are held at 1e-3 (ROUNDED), and at least a
 * quarter of the rows must still be EXACT (leaving the activations unrounded puts
 * every row near 3.5e-4). Q4_1 and Q5_1 (Q8_1's sum term rounded to F16 on the CPU,
 * as llama.cpp's; exact on the device): up to 4.1e-4 on every row. */
#define EXACT 1e-10
#define ROUNDED 1e-3

/* The device engine's logits against the CPU engine's: every row's NMSE within bound,
 * at least min_exact rows within EXACT, and the same greedy token unless the CPU's two
 * best are within near. */
static void compare(coe_arch arch, uint32_t type, bool variant, double bound, int min_exact, float near)
{
    coe_model *m = forged(arch, type, variant);
    const int V = m->n_vocab;
    float *cpu = malloc((size_t)ROWS * (size_t)V * sizeof *cpu), *dev = malloc((size_t)ROWS * (size_t)V * sizeof *dev);
    coe_engine *e = coe_engine_new(m, 2, 64);
    run(e, m, cpu);
    coe_engine_free(&e);
    coe_buf d = COE_BUF_INIT;
    if (coe_engine_open(&e, m, COE_DEVICE_CUDA, 1, 64, &d))
        fail_msg("%s", d.data);
    assert_non_null(strstr(coe_engine_where(e), DEVICE_NAME));
    run(e, m, dev);
    double worst = 0;
    int exact = 0;
    const char *name = coe_arch_name(arch), *tname = coe_ggml_type_name(type), *how = variant ? " variant" : "";
    for (int r = 0; r < ROWS; r++) {
        const float *c = cpu + (size_t)r * (size_t)V, *g = dev + (size_t)r * (size_t)V;
        double err = 0, ref = 0;
        for (int i = 0; i < V; i++) {
            err += ((double)g[i] - c[i]) * ((double)g[i] - c[i]);
            ref += (double)c[i] * c[i];
        }
        double nmse = err / ref;
        worst = nmse > worst ? nmse : worst;
        exact += nmse <= EXACT;
        if (!(nmse <= bound))
            fail_msg("%s %s%s, row %d: NMSE %.3g above %.3g", name, tname, how, r, nmse, bound);
        int tc = argmax(c, V), tg = argmax(g, V);
        if (tc != tg && fabsf(c[tc] - c[tg]) > near)
            fail_msg("%s %s%s, row %d: greedy token %d on the CPU, %d on the device", name, tname, how, r, tc, tg);
    }
    if (exact < min_exact)
        fail_msg("%s %s%s: %d rows within %.0e, fewer than %d", name, tname, how, exact, EXACT, min_exact);
    print_message("%s %s%s: largest NMSE %.3g, %d of %d rows within %.0e\n", name, tname, how, worst, exact, ROWS,
                  EXACT);
    coe_engine_free(&e);
    coe_model_close(&m);
    free(cpu);
    free(dev);
    coe_buf_free(&d);
    ALL_RELEASED();
}

#define ALL ROWS
#define QUARTER (ROWS / 4)

static void test_llama(void **state)
{
    (void)state;
    compare(COE_ARCH_LLAMA, COE_GGML_F32, false, EXACT, ALL, 1e-4f);
    compare(COE_ARCH_LLAMA, COE_GGML_F32, true, EXACT, ALL, 1e-4f);
    const uint32_t quantized[] = {COE_GGML_Q8_0, COE_GGML_Q4_0, COE_GGML_IQ4_NL, COE_GGML_Q4_K, COE_GGML_Q6_K,
                                  COE_GGML_Q3_K, COE_GGML_Q2_K, COE_GGML_IQ4_XS, COE_GGML_Q5_0};
    for (size_t i = 0; i < sizeof quantized / sizeof *quantized; i++)
        compare(COE_ARCH_LLAMA, quantized[i], i % 2, ROUNDED, QUARTER, 1e-3f);
    compare(COE_ARCH_LLAMA, COE_GGML_F16, false, ROUNDED, QUARTER, 1e-3f);
    compare(COE_ARCH_LLAMA, COE_GGML_BF16, true, ROUNDED, QUARTER, 1e-3f);
    compare(COE_ARCH_LLAMA, COE_GGML_Q5_1, false, ROUNDED, 0, 0.05f);
    compare(COE_ARCH_LLAMA, COE_GGML_Q4_1, true, ROUNDED, 0, 0.05f);
}

static void test_qwen2moe(void **state)
{
    (void)state;
    compare(COE_ARCH_QWEN2MOE, COE_GGML_F32, false, EXACT, ALL, 1e-4f);
    compare(COE_ARCH_QWEN2MOE, COE_GGML_Q8_0, false, ROUNDED, QUARTER, 1e-3f);
    compare(COE_ARCH_QWEN2MOE, COE_GGML_Q5_K, false, ROUNDED, QUARTER, 1e-3f);
}

static void test_olmoe_qwen3moe_granite_phimoe_deepseek2(void **state)
{
    (void)state;
    const coe_arch archs[] = {COE_ARCH_OLMOE, COE_ARCH_QWEN3MOE, COE_ARCH_GRANITE, COE_ARCH_PHIMOE, COE_ARCH_DEEPSEEK2};
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++) {
        compare(archs[i], COE_GGML_F32, false, EXACT, ALL, 1e-4f);
        compare(archs[i], COE_GGML_Q8_0, false, ROUNDED, QUARTER, 1e-3f);
    }
    compare(COE_ARCH_DEEPSEEK2, COE_GGML_F32, true, EXACT, ALL, 1e-4f); /* the older layout, V3's routing */
    compare(COE_ARCH_DEEPSEEK2, COE_GGML_Q8_0, true, ROUNDED, QUARTER, 1e-3f);
}

/* Greedy decoding of n tokens after the prompt on one engine. */
static void greedy(coe_engine *e, const coe_model *m, const int32_t *prompt, int n_prompt, int n, int32_t *out,
                   float *gaps)
{
    const int V = m->n_vocab;
    coe_kv *kv = coe_kv_new(m);
    coe_kv **seqs = malloc((size_t)n_prompt * sizeof *seqs);
    bool *want = calloc((size_t)n_prompt, sizeof *want);
    float *logits = malloc((size_t)V * sizeof *logits);
    for (int i = 0; i < n_prompt; i++)
        seqs[i] = kv;
    want[n_prompt - 1] = true;
    coe_buf d = COE_BUF_INIT;
    coe_batch b = {n_prompt, prompt, seqs, want, NULL};
    for (int step = 0; step < n; step++) {
        if (coe_engine_forward(e, &b, logits, &d))
            fail_msg("%s", d.data);
        int best = argmax(logits, V);
        float second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (i != best && logits[i] > second)
                second = logits[i];
        out[step] = best;
        gaps[step] = logits[best] - second;
        b = (coe_batch){1, &out[step], seqs, &want[n_prompt - 1], NULL};
    }
    coe_kv_free(&kv);
    free(seqs);
    free(want);
    free(logits);
    coe_buf_free(&d);
}

/* The models of ../shared/conformance: the logits of a prompt by NMSE and, for
 * F32, by the largest difference (1e-3); then 16 greedy tokens, equal until the
 * first place where the CPU's two best are within near of each other. */
static void test_conformance_models(void **state)
{
    (void)state;
    const char *shared = getenv("COEGATE_SHARED");
    char dirname[4096];
    snprintf(dirname, sizeof dirname, "%s/conformance/models", shared ? shared : "");
    DIR *dd = shared ? opendir(dirname) : NULL;
    if (!dd) {
        print_message("skipped: no conformance models at %s\n", shared ? dirname : "(COEGATE_SHARED unset)");
        skip();
    }
    const int32_t prompt[13] = {1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889};
    int seen = 0;
    for (struct dirent *de; (de = readdir(dd));) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 5, ".gguf"))
            continue;
        char path[4352];
        snprintf(path, sizeof path, "%s/%s", dirname, de->d_name);
        coe_model *m = NULL;
        coe_buf d = COE_BUF_INIT;
        if (coe_model_open(&m, path, &d))
            fail_msg("%s", d.data);
        const bool f32 = strstr(de->d_name, "f32") != NULL;
        const double bound = f32 ? EXACT : ROUNDED;
        const int V = m->n_vocab;
        int32_t toks[13];
        for (int i = 0; i < 13; i++)
            toks[i] = prompt[i] % V;
        coe_engine *cpu = coe_engine_new(m, 2, 128), *dev = NULL;
        if (coe_engine_open(&dev, m, COE_DEVICE_CUDA, 1, 128, &d))
            fail_msg("%s: %s", de->d_name, d.data);
        float *a = malloc((size_t)13 * (size_t)V * sizeof *a), *b = malloc((size_t)13 * (size_t)V * sizeof *b);
        bool all[13];
        for (int i = 0; i < 13; i++)
            all[i] = true;
        coe_engine *both[2] = {cpu, dev};
        float *out[2] = {a, b};
        for (int k = 0; k < 2; k++) {
            coe_kv *kv = coe_kv_new(m), *seqs[13];
            for (int i = 0; i < 13; i++)
                seqs[i] = kv;
            coe_batch batch = {13, toks, seqs, all, NULL};
            if (coe_engine_forward(both[k], &batch, out[k], &d))
                fail_msg("%s: %s", de->d_name, d.data);
            coe_kv_free(&kv);
        }
        double err = 0, ref = 0, most = 0;
        for (size_t i = 0; i < (size_t)13 * (size_t)V; i++) {
            double diff = (double)b[i] - a[i];
            err += diff * diff;
            ref += (double)a[i] * a[i];
            most = fabs(diff) > most ? fabs(diff) : most;
        }
        if (!(err / ref <= bound) || (f32 && !(most <= 1e-3)))
            fail_msg("%s: NMSE %.3g (bound %.3g), largest difference %.3g", de->d_name, err / ref, bound, most);
        int32_t ga[16], gb[16];
        float gaps[16], unused[16];
        greedy(cpu, m, toks, 13, 16, ga, gaps);
        greedy(dev, m, toks, 13, 16, gb, unused);
        int same = 0;
        while (same < 16 && ga[same] == gb[same])
            same++;
        if (same < 16 && gaps[same] > (f32 ? 1e-3f : 0.05f))
            fail_msg("%s: greedy token %d is %d on the CPU, %d on the device (the CPU's two best %.4f apart)",
                     de->d_name, same, ga[same], gb[same], gaps[same]);
        print_message("%s: NMSE %.3g, largest difference %.3g, %d of 16 greedy tokens equal%s\n", de->d_name,
                      err / ref, most, same, same < 16 ? " (then a near-tie)" : "");
        coe_engine_free(&cpu);
        coe_engine_free(&dev);
        coe_model_close(&m);
        free(a);
        free(b);
        coe_buf_free(&d);
        ALL_RELEASED();
        seen++;
    }
    closedir(dd);
    assert_true(seen > 0);
}

#ifdef COE_HOST_DEVICE
static void test_choice_of_device(void **state)
{
    (void)state;
    coe_buf d = COE_BUF_INIT;
    coe_engine *e = NULL;
    coe_model *m = forged(COE_ARCH_LLAMA, COE_GGML_F32, false);
    /* too little device memory: cuda is refused naming why; auto stays on the CPU and says so */
    host_device_free_bytes = 1000;
    coe_buf_reset(&d);
    assert_int_equal(coe_engine_open(&e, m, COE_DEVICE_CUDA, 1, 64, &d), COE_ENOMEM);
    assert_null(e);
    assert_non_null(strstr(d.data, "GiB are free"));
    coe_buf_reset(&d);
    assert_int_equal(coe_engine_open(&e, m, COE_DEVICE_AUTO, 1, 64, &d), 0);
    assert_non_null(strstr(coe_engine_where(e), "cpu"));
    assert_non_null(strstr(d.data, "device auto: on the CPU, since"));
    coe_engine_free(&e);
    host_device_free_bytes = (size_t)8 << 30;
    /* no device: auto is the CPU without a word; cpu is the CPU whatever there is */
    host_device_count = 0;
    coe_buf_reset(&d);
    assert_int_equal(coe_engine_open(&e, m, COE_DEVICE_AUTO, 1, 64, &d), 0);
    assert_non_null(strstr(coe_engine_where(e), "cpu"));
    assert_int_equal(d.len, 0);
    coe_engine_free(&e);
    host_device_count = 1;
    assert_int_equal(coe_engine_open(&e, m, COE_DEVICE_CPU, 1, 64, &d), 0);
    assert_non_null(strstr(coe_engine_where(e), "cpu"));

    /* a cache extended on the device cannot then be extended by the CPU engine */
    coe_engine *g = NULL;
    assert_int_equal(coe_engine_open(&g, m, COE_DEVICE_AUTO, 1, 64, &d), 0);
    assert_non_null(strstr(coe_engine_where(g), "cuda"));
    coe_kv *kv = coe_kv_new(m);
    int32_t tok = 5;
    bool want = true;
    float *logits = malloc((size_t)m->n_vocab * sizeof *logits);
    coe_batch b = {1, &tok, &kv, &want, NULL};
    assert_int_equal(coe_engine_forward(g, &b, logits, &d), 0);
    coe_buf_reset(&d);
    assert_int_equal(coe_engine_forward(e, &b, logits, &d), COE_EINVAL);
    assert_non_null(strstr(d.data, "belongs to a GPU engine"));
    assert_int_equal(kv->n_pos, 1);
    coe_kv_free(&kv);
    coe_engine_free(&g);
    coe_engine_free(&e);
    assert_int_equal(host_device_live(), 0);
    free(logits);
    coe_model_close(&m);
    coe_buf_free(&d);
    assert_int_equal(coe_device_parse("cuda"), COE_DEVICE_CUDA);
    assert_int_equal(coe_device_parse("gpu"), -1);
}
#endif

static int setup(void **state)
{
    (void)state;
    return test_tmpdir_make(dir, sizeof dir, "engine-device");
}

static int teardown(void **state)
{
    (void)state;
    return test_tmpdir_remove(dir);
}

int main(void)
{
#ifndef COE_HOST_DEVICE
    if (coe_cuda_device_count() == 0) {
        printf("skipped: %s\n", COE_HAVE_CUDA ? "no GPU: CUDA finds no device" : "this build has no CUDA (no nvcc)");
        return 77;
    }
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_qwen2moe),
        cmocka_unit_test(test_olmoe_qwen3moe_granite_phimoe_deepseek2),
        cmocka_unit_test(test_conformance_models),
#ifdef COE_HOST_DEVICE
        cmocka_unit_test(test_choice_of_device),
#endif
    };
    return cmocka_run_group_tests_name("engine on a device", tests, setup, teardown);
}
