/* The local engine's parts: number formats, every optimized kernel against its naive
 * reference, the thread team, model loading errors, batched against one-by-one
 * decoding on forged models of each architecture, sampling, chat templates and the
 * forged vocabulary's tokenizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/err.h"
#include "common/rand.h"
#include "experts/chat.h"
#include "experts/cuda.h"
#include "experts/engine.h"
#include "experts/forge.h"
#include "experts/quant.h"
#include "experts/sample.h"
#include "experts/threads.h"
#include "experts/tokenizer.h"
#include "experts/unicode.h"
#include "tmpdir.h"

static uint64_t rng = 12345;

static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 24)) * 2 - 1;
}

/* ---- number formats ---- */

static void test_f16_round_trip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = coe_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(coe_f32_to_f16(f), h);
    }
    assert_int_equal(coe_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(coe_f32_to_f16(65520.0f), 0x7c00);          /* rounds up to infinity */
    assert_int_equal(coe_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00); /* a tie goes to even */
    assert_int_equal(coe_f32_to_f16(5.96e-8f), 0x0001);           /* smallest subnormal */
    assert_true(coe_f16_to_f32(0x7e00) != coe_f16_to_f32(0x7e00)); /* NaN */
    assert_int_equal(coe_f32_to_bf16(1.0f), 0x3f80);
    assert_true(coe_bf16_to_f32(coe_f32_to_bf16(3.140625f)) == 3.140625f);
}

static void test_utf8_tail(void **state)
{
    (void)state;
    assert_int_equal(coe_utf8_incomplete_tail("abc", 3), 0);
    assert_int_equal(coe_utf8_incomplete_tail("a\xC3", 2), 1);
    assert_int_equal(coe_utf8_incomplete_tail("a\xC3\xA9", 3), 0);
    assert_int_equal(coe_utf8_incomplete_tail("\xE4\xBD", 2), 2);
    assert_int_equal(coe_utf8_incomplete_tail("\xF0\x9F\x98", 3), 3);
    assert_int_equal(coe_utf8_incomplete_tail("\xF0\x9F\x98\x80", 4), 0);
    size_t len;
    assert_int_equal(coe_utf8_decode("\xC0\xAF", 2, &len), 0xFFFD); /* overlong */
    assert_int_equal(len, 1);
    assert_int_equal(coe_utf8_decode("\xED\xA0\x80", 3, &len), 0xFFFD); /* surrogate */
    assert_true(coe_cp_is_letter(0x4E2D) && coe_cp_is_number(0x0663) && coe_cp_is_punct(0x3002));
    assert_false(coe_cp_is_letter('1') || coe_cp_is_punct('$'));
}

/* ---- kernels ---- */

static const uint32_t types[] = {COE_GGML_F32,  COE_GGML_F16,  COE_GGML_BF16, COE_GGML_Q8_0,
                                 COE_GGML_Q4_0, COE_GGML_Q5_0, COE_GGML_Q4_1, COE_GGML_Q5_1,
                                 COE_GGML_IQ4_NL, COE_GGML_IQ4_XS, COE_GGML_Q2_K, COE_GGML_Q3_K, COE_GGML_Q4_K,
                                 COE_GGML_Q5_K, COE_GGML_Q6_K};

/* Each quantizer's worst error relative to a block's largest value. */
static double quant_bound(uint32_t t)
{
    switch (t) {
    case COE_GGML_F32: return 0;
    case COE_GGML_F16: return 1e-3;
    case COE_GGML_BF16: return 8e-3;
    case COE_GGML_Q8_0: return 1.0 / 127;
    case COE_GGML_Q6_K: return 1.0 / 31 + 1.0 / 127;
    case COE_GGML_Q5_K: case COE_GGML_Q5_0: case COE_GGML_Q5_1: return 2.0 / 31 + 2.0 / 63;
    case COE_GGML_Q3_K: return 1.0 / 4 + 1.0 / 31; /* codes -4..3 of the block's largest / 4 */
    case COE_GGML_Q2_K: return 2.0 / 3 + 2.0 / 15; /* 2 bits over the whole range (twice the largest) */
    default: return 2.0 / 15 + 2.0 / 63; /* 4-bit */
    }
}

static void test_quantize_round_trip(void **state)
{
    (void)state;
    enum { N = 1024 };
    float x[N], y[N];
    uint8_t buf[N * 4];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        for (int i = 0; i < N; i++)
            x[i] = frand() * (i % 7 + 1);
        coe_quantize_row(types[k], x, buf, N);
        coe_dequantize_row(types[k], buf, y, N);
        double worst = 0;
        for (int i = 0; i < N; i++)
            worst = fmax(worst, fabs(x[i] - y[i]));
        if (worst > quant_bound(types[k]) * 7 * 1.01 + 1e-6)
            fail_msg("%s: round trip error %g", coe_ggml_type_name(types[k]), worst);
    }
}

/* A damaged model can feed infinities and NaNs to the quantizers: they must give
 * some codes, never undefined behaviour (the sanitizer suite checks). */
static void test_quantize_hostile_values(void **state)
{
    (void)state;
    float x[256], y[256];
    uint8_t buf[256 * 4], act[256 * 4];
    for (int i = 0; i < 256; i++)
        x[i] = i % 4 == 0 ? INFINITY : i % 4 == 1 ? -INFINITY : i % 4 == 2 ? NAN : 3e38f;
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        coe_quantize_row(types[k], x, buf, 256);
        coe_dequantize_row(types[k], buf, y, 256);
        coe_quantize_row(coe_dot_type(types[k]), x, act, 256);
    }
    coe_quantize_row(COE_GGML_Q8_K, x, buf, 256);
}

/* The optimized dot (SIMD when the CPU has it, else portable C; the suite runs both)
 * against the naive reference, on the very same bits. */
static void test_dots_match_reference(void **state)
{
    (void)state;
    enum { N = 2048 };
    float w[N], a[N];
    uint8_t wq[N * 4], aq[N * 4];
    print_message("kernels: %s\n", coe_quant_kernels());
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k], dt = coe_dot_type(t);
        for (int round = 0; round < 20; round++) {
            uint32_t block, bytes;
            coe_ggml_type_layout(t, &block, &bytes);
            int n = round % 2 ? N : 256 * (1 + round % 4);
            if (round == 3 && block == 32)
                n = 7 * 32; /* an odd number of blocks */
            double scale = 0;
            for (int i = 0; i < n; i++) {
                w[i] = frand();
                a[i] = frand() * 3;
                scale += fabs(w[i] * a[i]);
            }
            coe_quantize_row(t, w, wq, n);
            coe_quantize_row(dt, a, aq, n);
            float fast = coe_vec_dot(t, wq, aq, n), ref = coe_vec_dot_ref(t, wq, aq, n);
            if (fabs(fast - ref) > 1e-5 * scale + 1e-6)
                fail_msg("%s n=%d: optimized %.7g, reference %.7g", coe_ggml_type_name(t), n, fast, ref);
            /* The four-row kernel gives the single kernel's bits for each row. */
            coe_dot4_fn dot4 = coe_vec_dot4_fn(t);
            if (dot4) {
                size_t stride = coe_row_bytes(dt, n);
                uint8_t *four = malloc(4 * stride);
                float out[4];
                for (int r = 0; r < 4; r++) {
                    for (int i = 0; i < n; i++)
                        a[i] = frand();
                    coe_quantize_row(dt, a, four + (size_t)r * stride, n);
                }
                dot4(wq, four, stride, n, out);
                for (int r = 0; r < 4; r++) {
                    float one = coe_vec_dot(t, wq, four + (size_t)r * stride, n);
                    assert_memory_equal(&out[r], &one, sizeof one);
                }
                free(four);
            }
        }
    }
}

/* The CUDA dequantizer's code for one value, run on the CPU, against the reference:
 * every bit layout checked here on machines without a GPU (the gpu suite checks the
 * kernel). Random bytes reach scales, minimums and high bits that a quantizer's
 * output may not; only F16 scales are kept finite. */
static void test_cuda_dequantizer_layouts(void **state)
{
    (void)state;
    enum { N = 1024 };
    float x[N], want[N], got[N];
    uint8_t buf[N * 4];
    uint64_t bits = 7;
    memset(buf, 0, sizeof buf);
    if (coe_cuda_dequantize_on_cpu(COE_GGML_Q8_0, buf, 32, got) == COE_EUNSUPPORTED)
        skip(); /* no CUDA in this build */
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k];
        for (int round = 0; round < 2; round++) {
            size_t n_bytes = coe_row_bytes(t, N);
            if (round == 0) {
                for (int i = 0; i < N; i++)
                    x[i] = frand() * (float)(i % 5 + 1);
                coe_quantize_row(t, x, buf, N);
            } else {
                for (size_t i = 0; i < n_bytes; i++)
                    buf[i] = (uint8_t)(coe_splitmix64(&bits) >> 56);
                if (t == COE_GGML_F32 || t == COE_GGML_F16 || t == COE_GGML_BF16)
                    continue; /* raw bits of floats are NaNs and infinities: nothing of a layout */
            }
            coe_dequantize_row(t, buf, want, N);
            assert_int_equal(coe_cuda_dequantize_on_cpu(t, buf, N, got), 0);
            for (int i = 0; i < N; i++)
                if (memcmp(&got[i], &want[i], sizeof got[i]) && !(isnan(got[i]) && isnan(want[i])))
                    fail_msg("%s value %d (%s bytes): %.9g, reference %.9g", coe_ggml_type_name(t), i,
                             round ? "random" : "quantized", got[i], want[i]);
        }
    }
}

/* The attention's weighted sum against the plain loop (FMA rounds once, so close, not equal). */
static void test_axpy_matches_reference(void **state)
{
    (void)state;
    float x[131], y[131], ref[131];
    for (int n = 1; n <= 131; n += 13) {
        for (int i = 0; i < n; i++) {
            x[i] = frand();
            y[i] = ref[i] = frand();
        }
        float a = frand() * 2;
        coe_axpy(y, a, x, n);
        for (int i = 0; i < n; i++) {
            ref[i] += a * x[i];
            assert_true(fabsf(y[i] - ref[i]) <= 1e-6f * (1 + fabsf(ref[i])));
        }
    }
}

/* ---- against ggml (tests/reference/ggml-kernels.txt, made by scripts/ggml-oracle.c) ---- */

static uint64_t fnv64(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The random block bytes of the oracle: splitmix bytes, each F16 field a finite half. */
static void oracle_blocks(uint32_t type, uint64_t seed, uint8_t *w, size_t bytes)
{
    static const struct {
        uint32_t type;
        int f16[2];
    } fields[] = {{COE_GGML_Q4_0, {0, -1}}, {COE_GGML_Q4_1, {0, 2}},   {COE_GGML_Q5_0, {0, -1}},
                  {COE_GGML_Q5_1, {0, 2}},  {COE_GGML_Q8_0, {0, -1}},  {COE_GGML_IQ4_NL, {0, -1}},
                  {COE_GGML_IQ4_XS, {0, -1}}, {COE_GGML_Q2_K, {80, 82}}, {COE_GGML_Q3_K, {108, -1}},
                  {COE_GGML_Q4_K, {0, 2}},  {COE_GGML_Q5_K, {0, 2}},   {COE_GGML_Q6_K, {208, -1}}};
    uint32_t block, size;
    coe_ggml_type_layout(type, &block, &size);
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)coe_splitmix64(&seed);
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++)
        for (size_t b = 0; fields[k].type == type && b < bytes / size; b++)
            for (int f = 0; f < 2; f++)
                if (fields[k].f16[f] >= 0) {
                    uint64_t r = coe_splitmix64(&seed);
                    uint16_t h = (uint16_t)(((r & 1) << 15) | ((8 + (r >> 1) % 7) << 10) | ((r >> 8) & 0x3ff));
                    memcpy(w + b * size + (size_t)fields[k].f16[f], &h, 2);
                }
}

static uint32_t type_named(const char *name)
{
    for (uint32_t t = 0; t < 64; t++)
        if (coe_quant_supported(t) && strcmp(coe_ggml_type_name(t), name) == 0)
            return t;
    fail_msg("no type named %s", name);
    return 0;
}

/* Every dequantizer bit for bit, every dot within float rounding (its sums run in
 * another order), RoPE (plain, linear, YaRN) bit for bit. */
static void test_ggml_reference(void **state)
{
    (void)state;
    FILE *f = fopen(COE_REFERENCE_DIR "/ggml-kernels.txt", "r");
    assert_non_null(f);
    enum { N = 1024 };
    char line[512];
    int n_dequant = 0, n_dot = 0, n_rope = 0;
    static uint8_t w[N * 4], act[N * 4];
    while (fgets(line, sizeof line, f)) {
        char name[16];
        unsigned long long seed, want;
        float x[N], y[N];
        if (sscanf(line, "dequant %15s %llu %llx", name, &seed, &want) == 3) {
            uint32_t t = type_named(name);
            oracle_blocks(t, seed, w, coe_row_bytes(t, N));
            coe_dequantize_row(t, w, y, N);
            if (fnv64(y, sizeof y) != want)
                fail_msg("%s: dequantized values differ from ggml's (y[0] %.9g)", name, y[0]);
            n_dequant++;
        } else if (sscanf(line, "dot %15s %llu %f", name, &seed, &x[0]) == 3) {
            uint32_t t = type_named(name), dt = coe_dot_type(t);
            float ref = x[0];
            oracle_blocks(t, seed - 1000, w, coe_row_bytes(t, N)); /* the dequant line's weights */
            uint64_t s = seed;
            for (int i = 0; i < N; i++)
                x[i] = coe_uniform(&s, 3);
            coe_quantize_row(dt, x, act, N);
            float got = coe_vec_dot(t, w, act, N);
            coe_dequantize_row(t, w, y, N);
            double scale = 0;
            for (int i = 0; i < N; i++)
                scale += fabs((double)y[i] * x[i]);
            if (fabs(got - ref) > 2e-6 * scale)
                fail_msg("%s: dot %.9g, ggml's %.9g", name, got, ref);
            n_dot++;
        } else {
            int mode, n_dims, n_ctx_orig;
            float base, freq_scale, ext, attn, fast, slow;
            if (sscanf(line, "rope %d %d %d %f %f %f %f %f %f %llu %llx", &mode, &n_dims, &n_ctx_orig, &base,
                       &freq_scale, &ext, &attn, &fast, &slow, &seed, &want) != 11)
                continue;
            enum { HD = 64, NH = 4, NT = 6 };
            static float v[HD * NH * NT];
            const int pos[NT] = {0, 1, 7, 100, 1000, 20000};
            uint64_t s = seed;
            for (int i = 0; i < HD * NH * NT; i++)
                v[i] = coe_uniform(&s, 1);
            coe_model m = {.rope_dim = n_dims, .rope_base = base, .rope_freq_scale = freq_scale, .rope_neox = mode == 2};
            coe_rope_yarn(&m, n_ctx_orig, ext, attn, fast, slow);
            for (int t = 0; t < NT; t++)
                coe_rope(&m, m.rope_freqs, v + t * HD * NH, NH, HD, pos[t]);
            if (fnv64(v, sizeof v) != want)
                fail_msg("rope mode %d dims %d scale %g ext %g: differs from ggml's (v[773] %.9g)", mode, n_dims,
                         freq_scale, ext, v[773]);
            n_rope++;
        }
    }
    fclose(f);
    assert_int_equal(n_dequant, 12);
    assert_int_equal(n_dot, 12);
    assert_int_equal(n_rope, 5);
}

/* ---- threads ---- */

typedef struct count_job {
    atomic_int calls;
    atomic_int seen[8];
} count_job;

static void count(void *ctx, int ith, int nth)
{
    count_job *j = ctx;
    assert_true(ith < nth);
    atomic_fetch_add(&j->calls, 1);
    atomic_fetch_add(&j->seen[ith], 1);
}

static void test_threads_run_every_member(void **state)
{
    (void)state;
    coe_threads *t = coe_threads_new(4);
    assert_non_null(t);
    count_job j = {0};
    for (int r = 0; r < 2000; r++)
        coe_threads_run(t, count, &j);
    usleep(20000); /* past the spinning: the next runs wake sleepers */
    for (int r = 0; r < 10; r++)
        coe_threads_run(t, count, &j);
    assert_int_equal(atomic_load(&j.calls), 2010 * coe_threads_count(t));
    for (int i = 0; i < coe_threads_count(t); i++)
        assert_int_equal(atomic_load(&j.seen[i]), 2010);
    coe_threads_free(&t);
}

/* ---- forged models ---- */

static char dir[64];

static void forged(coe_arch arch, uint32_t type, char *path, size_t n)
{
    coe_forge_spec s = coe_forge_small(arch);
    s.type = type;
    uint32_t block, bytes;
    coe_ggml_type_layout(type, &block, &bytes);
    if (block == 256) { /* K-quants need rows of 256 */
        s.n_embd = s.n_ff = 256;
        s.n_ff_shexp = s.n_ff_shexp ? 256 : 0;
        s.n_head = 8;
        s.head_dim = arch == COE_ARCH_QWEN3MOE ? 64 : 0; /* a head size of its own, not 256 / 8 */
    }
    if (arch == COE_ARCH_LLAMA && type == COE_GGML_Q4_K)
        s.n_expert = s.n_expert_used = 0; /* the dense llama, no experts */
    if (arch == COE_ARCH_DEEPSEEK2 && type == COE_GGML_F16)
        s.kv_b = true, s.n_lora_q = 0; /* the older layout, without the Q bottleneck */
    if (arch == COE_ARCH_DEEPSEEK2 && type == COE_GGML_Q4_0) /* V3's routing */
        s.sigmoid = s.norm_w = true, s.n_group = 2, s.n_group_used = 1, s.weights_scale = 2.5f, s.n_layer = 3;
    snprintf(path, n, "%s/%s-%s.gguf", dir, coe_arch_name(arch), coe_ggml_type_name(type));
    coe_buf d = COE_BUF_INIT;
    if (coe_forge_write(&s, path, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
}

static coe_model *open_forged(coe_arch arch, uint32_t type)
{
    char path[256];
    forged(arch, type, path, sizeof path);
    coe_model *m;
    coe_buf d = COE_BUF_INIT;
    if (coe_model_open(&m, path, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
    return m;
}

static void forward(coe_engine *e, coe_kv **seqs, const int32_t *toks, const bool *want, int n, float *out)
{
    coe_batch b = {n, toks, seqs, want, NULL};
    coe_buf d = COE_BUF_INIT;
    if (coe_engine_forward(e, &b, out, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
}

/* A prompt as one batch and token by token, and two sequences interleaved in one
 * batch: the same logits, bit for bit (each row's products do not depend on the batch). */
static void check_batching(coe_arch arch, uint32_t type)
{
    coe_model *m = open_forged(arch, type);
    coe_engine *e = coe_engine_new(m, 3, 64);
    const int V = m->n_vocab, n = 9;
    int32_t toks[9] = {1, 300, 301, 450, 17, 600, 999, 5, 42};
    bool all[9] = {true, true, true, true, true, true, true, true, true};
    float *batched = malloc((size_t)n * (size_t)V * sizeof(float)), *single = malloc((size_t)n * (size_t)V * sizeof(float));
    coe_kv *a = coe_kv_new(m), *b = coe_kv_new(m);
    coe_kv *seq_a[9] = {a, a, a, a, a, a, a, a, a};
    forward(e, seq_a, toks, all, n, batched);
    assert_int_equal(a->n_pos, n);
    for (int i = 0; i < n; i++)
        forward(e, &b, toks + i, all, 1, single + (size_t)i * (size_t)V);
    assert_memory_equal(batched, single, (size_t)n * (size_t)V * sizeof(float));
    /* Interleaved with another sequence, only the last token of each wanted. */
    coe_kv *c = coe_kv_new(m), *d = coe_kv_new(m);
    int32_t mix[18];
    coe_kv *seq[18];
    bool want[18] = {0};
    for (int i = 0; i < n; i++) {
        mix[2 * i] = toks[i], seq[2 * i] = c;
        mix[2 * i + 1] = toks[n - 1 - i], seq[2 * i + 1] = d;
    }
    want[16] = want[17] = true;
    float two[2 * 8192];
    assert_true((size_t)V * 2 <= sizeof two / sizeof two[0]);
    forward(e, seq, mix, want, 18, two);
    assert_memory_equal(two, batched + (size_t)(n - 1) * (size_t)V, (size_t)V * sizeof(float));
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(two[V + i]));
    /* A token outside the vocabulary is refused without touching the cache. */
    int32_t bad = V;
    coe_batch bb = {1, &bad, &c, all, NULL};
    coe_buf diag = COE_BUF_INIT;
    assert_int_not_equal(coe_engine_forward(e, &bb, two, &diag), 0);
    assert_non_null(strstr(diag.data, "outside the vocabulary"));
    assert_int_equal(c->n_pos, n);
    coe_buf_free(&diag);
    coe_kv_free(&a), coe_kv_free(&b), coe_kv_free(&c), coe_kv_free(&d);
    free(batched);
    free(single);
    coe_engine_free(&e);
    coe_model_close(&m);
}

static void test_batching_llama(void **state)
{
    (void)state;
    check_batching(COE_ARCH_LLAMA, COE_GGML_Q8_0); /* Mixtral-style experts */
    check_batching(COE_ARCH_LLAMA, COE_GGML_Q4_K); /* dense */
    coe_model *m = open_forged(COE_ARCH_LLAMA, COE_GGML_Q4_K);
    assert_int_equal(m->n_expert, 0);
    assert_non_null(m->layers[0].ffn_gate.data);
    coe_model_close(&m);
}

static void test_batching_qwen2moe(void **state)
{
    (void)state;
    check_batching(COE_ARCH_QWEN2MOE, COE_GGML_F16);
}

static void test_batching_olmoe(void **state)
{
    (void)state;
    check_batching(COE_ARCH_OLMOE, COE_GGML_BF16);
}

static void test_batching_deepseek2(void **state)
{
    (void)state;
    check_batching(COE_ARCH_DEEPSEEK2, COE_GGML_Q8_0); /* latent attention */
    check_batching(COE_ARCH_DEEPSEEK2, COE_GGML_F16);  /* decompressed before attention */
    check_batching(COE_ARCH_DEEPSEEK2, COE_GGML_Q4_0);
    coe_model *m = open_forged(COE_ARCH_DEEPSEEK2, COE_GGML_Q8_0);
    assert_true(m->mla);
    assert_int_equal(m->kv_v_dim, 0); /* one cached row per position: the values are in it */
    assert_int_equal(m->kv_k_dim, m->n_lora_kv + m->rope_dim);
    assert_null(m->layers[0].gate_inp.data); /* the leading dense layer */
    assert_non_null(m->layers[1].gate_inp.data);
    coe_model_close(&m);
    m = open_forged(COE_ARCH_DEEPSEEK2, COE_GGML_F16);
    assert_false(m->mla);
    assert_int_equal(m->kv_k_dim, m->n_head * m->k_mla);
    coe_model_close(&m);
    /* Shapes that stretch the scratch: more heads than products per expert job (one per
     * head; V3 has 128 heads), and one head whose decompressed keys are narrower than
     * the compressed KV (older layout). */
    for (int shape = 0; shape < 2; shape++) {
        coe_forge_spec s = coe_forge_small(COE_ARCH_DEEPSEEK2);
        if (shape == 0)
            s.n_head = s.n_head_kv = 40, s.n_expert = 2, s.n_expert_used = 1;
        else
            s.n_head = s.n_head_kv = 1, s.n_lora_kv = 256, s.kv_b = true, s.n_lora_q = 0;
        char path[256];
        snprintf(path, sizeof path, "%s/deepseek2-shape.gguf", dir);
        coe_buf d = COE_BUF_INIT;
        if (coe_forge_write(&s, path, &d) || coe_model_open(&m, path, &d))
            fail_msg("%s", d.data);
        coe_engine *e = coe_engine_new(m, 2, 16);
        coe_kv *kv = coe_kv_new(m), *seq[3] = {kv, kv, kv};
        int32_t toks[3] = {1, 300, 301};
        bool all[3] = {true, true, true};
        float *out = malloc(3 * (size_t)m->n_vocab * sizeof *out);
        forward(e, seq, toks, all, 3, out);
        for (int i = 0; i < 3 * m->n_vocab; i++)
            assert_true(isfinite(out[i]));
        free(out);
        coe_kv_free(&kv);
        coe_engine_free(&e);
        coe_model_close(&m);
        coe_buf_free(&d);
    }
}

static void test_batching_phimoe(void **state)
{
    (void)state;
    check_batching(COE_ARCH_PHIMOE, COE_GGML_Q8_0);
    coe_model *m = open_forged(COE_ARCH_PHIMOE, COE_GGML_Q8_0);
    assert_true(m->q_prescale);
    assert_non_null(m->rope_freqs_long);
    /* LongRoPE's factors by the context: short up to the original one, long beyond */
    assert_ptr_equal(coe_rope_freqs(m, m->n_ctx_orig), m->rope_freqs);
    assert_ptr_equal(coe_rope_freqs(m, m->n_ctx_orig + 1), m->rope_freqs_long);
    coe_model_close(&m);
}

static void test_batching_qwen3moe(void **state)
{
    (void)state;
    check_batching(COE_ARCH_QWEN3MOE, COE_GGML_Q6_K);
    check_batching(COE_ARCH_QWEN3MOE, COE_GGML_Q5_K);
    check_batching(COE_ARCH_QWEN3MOE, COE_GGML_Q4_0);
    check_batching(COE_ARCH_OLMOE, COE_GGML_Q5_0);
    check_batching(COE_ARCH_QWEN2MOE, COE_GGML_Q4_1);
    check_batching(COE_ARCH_OLMOE, COE_GGML_Q5_1);
    check_batching(COE_ARCH_QWEN2MOE, COE_GGML_IQ4_NL);
    check_batching(COE_ARCH_OLMOE, COE_GGML_IQ4_XS);
    check_batching(COE_ARCH_QWEN3MOE, COE_GGML_Q2_K);
    check_batching(COE_ARCH_LLAMA, COE_GGML_Q3_K);
}

/* The context limit is a clear error, not an overflow. */
static void test_context_limit(void **state)
{
    (void)state;
    coe_model *m = open_forged(COE_ARCH_LLAMA, COE_GGML_F32);
    coe_engine *e = coe_engine_new(m, 1, 4);
    coe_kv *kv = coe_kv_new(m);
    int32_t toks[5] = {1, 2, 3, 4, 5};
    coe_kv *seq[5] = {kv, kv, kv, kv, kv};
    bool want[5] = {0, 0, 0, 0, 1};
    float *out = malloc((size_t)m->n_vocab * sizeof(float));
    coe_batch b = {5, toks, seq, want, NULL};
    coe_buf d = COE_BUF_INIT;
    assert_int_not_equal(coe_engine_forward(e, &b, out, &d), 0);
    assert_non_null(strstr(d.data, "context of 4"));
    assert_int_equal(kv->n_pos, 0);
    b.n = 4;
    assert_int_equal(coe_engine_forward(e, &b, out, &d), 0);
    coe_buf_free(&d);
    free(out);
    coe_kv_free(&kv);
    coe_engine_free(&e);
    coe_model_close(&m);
}

/* RoPE variants of one forged llama (the same weights): the logits of 6 tokens. NULL
 * with the loader's message in why when the model is refused. */
static float *rope_logits(const char *scaling, float factor, float freqs, coe_buf *why)
{
    coe_forge_spec s = coe_forge_small(COE_ARCH_LLAMA);
    s.type = COE_GGML_F32;
    s.seed = 77;
    s.rope_scaling = scaling, s.rope_factor = factor, s.rope_freqs = freqs;
    char path[256];
    snprintf(path, sizeof path, "%s/rope.gguf", dir);
    coe_buf d = COE_BUF_INIT;
    if (coe_forge_write(&s, path, &d))
        fail_msg("%s", d.data);
    coe_model *m;
    if (coe_model_open(&m, path, why))
        return NULL;
    coe_engine *e = coe_engine_new(m, 1, 16);
    coe_kv *kv = coe_kv_new(m);
    int32_t toks[6] = {1, 300, 301, 450, 17, 600};
    bool all[6] = {1, 1, 1, 1, 1, 1};
    coe_kv *seq[6] = {kv, kv, kv, kv, kv, kv};
    float *out = malloc(6 * (size_t)m->n_vocab * sizeof *out);
    forward(e, seq, toks, all, 6, out);
    coe_kv_free(&kv);
    coe_engine_free(&e);
    coe_model_close(&m);
    coe_buf_free(&d);
    return out;
}

/* Linear scaling divides every angle by its factor, rope_freqs.weight divides each
 * pair's by its entry (ggml's rope): no scaling, factor 1 (linear or YaRN), "none"
 * with any factor and factors of 1 give the plain angles bit for bit; factors of 2
 * give what linear scaling by 2 gives, bit for bit (both halve the same float
 * exactly); the first position (angle 0) never changes while the others do. YaRN
 * changes both; LongRoPE is refused by name, never run as something else. */
static void test_rope_scaling(void **state)
{
    (void)state;
    coe_buf why = COE_BUF_INIT;
    float *plain = rope_logits(NULL, 0, 0, &why);
    assert_non_null(plain);
    coe_forge_spec s = coe_forge_small(COE_ARCH_LLAMA);
    const size_t V = (size_t)s.n_vocab, all = 6 * V * sizeof(float), first = V * sizeof(float);
    float *same[4] = {rope_logits("linear", 1, 0, &why), rope_logits("none", 4, 0, &why),
                      rope_logits(NULL, 0, 1, &why), rope_logits("yarn", 1, 0, &why)};
    for (int i = 0; i < 4; i++) {
        assert_non_null(same[i]);
        assert_memory_equal(same[i], plain, all);
        free(same[i]);
    }
    float *linear2 = rope_logits("linear", 2, 0, &why), *freqs2 = rope_logits(NULL, 0, 2, &why);
    float *linear4 = rope_logits(NULL, 4, 0, &why); /* the type defaults to linear, as in llama.cpp */
    assert_non_null(linear2), assert_non_null(freqs2), assert_non_null(linear4);
    assert_memory_equal(linear2, freqs2, all);
    assert_memory_equal(linear4, plain, first);
    assert_memory_not_equal(linear4 + V, plain + V, all - first);
    assert_memory_not_equal(linear4 + V, linear2 + V, all - first);
    /* YaRN by 4 loads and computes (test_ggml_reference checks its angles against
     * ggml's): neither the plain angles nor linear scaling's (the first position, alone
     * in its attention, is the same whatever the angles). */
    float *yarn4 = rope_logits("yarn", 4, 0, &why);
    assert_non_null(yarn4);
    assert_memory_equal(yarn4, linear4, first);
    assert_memory_not_equal(yarn4 + V, linear4 + V, all - first);
    assert_memory_not_equal(yarn4 + V, plain + V, all - first);
    free(yarn4);
    free(linear2), free(freqs2), free(linear4);
    /* LongRoPE is linear scaling with its factor tensors (phimoe's, checked against
     * llama.cpp in test_llama_cpp_logits); anything else is refused by name. */
    float *longrope = rope_logits("longrope", 0, 0, &why);
    assert_non_null(longrope);
    assert_memory_equal(longrope, plain, all);
    free(longrope);
    assert_null(rope_logits("dynamic", 0, 0, &why));
    assert_non_null(strstr(why.data, "RoPE scaling 'dynamic'"));
    coe_buf_free(&why);
    free(plain);
}

/* A loaded file altered in memory: each defect is named. */
typedef void (*alter_fn)(coe_gguf *g);

static void check_refused_arch(coe_arch arch, alter_fn alter, const char *want)
{
    char path[256];
    forged(arch, COE_GGML_F32, path, sizeof path);
    coe_gguf *g;
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_gguf_open(&g, path, &d), 0);
    alter(g);
    coe_model *m = NULL;
    assert_int_not_equal(coe_model_from_gguf(&m, g, &d), 0);
    assert_null(m);
    if (!strstr(d.data, want))
        fail_msg("expected '%s' in: %s", want, d.data);
    assert_non_null(strstr(d.data, path));
    coe_buf_free(&d);
}

static void check_refused(alter_fn alter, const char *want)
{
    check_refused_arch(COE_ARCH_QWEN2MOE, alter, want);
}

static coe_gguf_tensor *find(coe_gguf *g, const char *name)
{
    return (coe_gguf_tensor *)coe_gguf_find_tensor(g, name);
}

static void set_u32(coe_gguf *g, const char *key, uint32_t v)
{
    static uint32_t values[8];
    static int n;
    coe_gguf_kv *kv = (coe_gguf_kv *)coe_gguf_find_kv(g, key);
    assert_non_null(kv);
    values[n % 8] = v;
    kv->value.data = (const uint8_t *)&values[n++ % 8];
}

/* deepseek2: gating by softmax over the chosen experts' logits only (3), not computed */
static void ds_gating(coe_gguf *g)
{
    set_u32(g, "deepseek2.expert_gating_func", 3);
}

/* latent attention caches one head */
static void ds_kv_heads(coe_gguf *g)
{
    set_u32(g, "deepseek2.attention.head_count_kv", 2);
}

static void ds_drop_k_b(coe_gguf *g)
{
    find(g, "blk.1.attn_k_b.weight")->name = (coe_gguf_str){"blk.1.renamed", 13};
}

static void drop_tensor(coe_gguf *g)
{
    find(g, "blk.1.ffn_down_exps.weight")->name = (coe_gguf_str){"blk.1.renamed", 13};
}

static void bad_shape(coe_gguf *g)
{
    find(g, "blk.0.attn_k.weight")->dims[1] = 16;
}

static void bad_type(coe_gguf *g)
{
    find(g, "blk.0.attn_q.weight")->type = COE_GGML_IQ2_XXS;
}

static void bad_arch(coe_gguf *g)
{
    ((coe_gguf_kv *)coe_gguf_find_kv(g, "general.architecture"))->value.str = (coe_gguf_str){"mamba", 5};
}

static void bad_heads(coe_gguf *g)
{
    coe_gguf_kv *kv = (coe_gguf_kv *)coe_gguf_find_kv(g, "qwen2moe.attention.head_count_kv");
    static const uint32_t three = 3;
    kv->value.data = (const uint8_t *)&three;
}

/* A key that changes the computation in a way the engine does not implement: the
 * file's RMS epsilon key renamed to gemma-2's final logit softcapping (a float, 1e-6,
 * not the neutral 0). */
static void softcapping_key(coe_gguf *g)
{
    ((coe_gguf_kv *)coe_gguf_find_kv(g, "qwen2moe.attention.layer_norm_rms_epsilon"))->key =
        (coe_gguf_str){"qwen2moe.final_logit_softcapping", 32};
}

static void rope_sections_key(coe_gguf *g)
{
    ((coe_gguf_kv *)coe_gguf_find_kv(g, "qwen2moe.attention.layer_norm_rms_epsilon"))->key =
        (coe_gguf_str){"qwen2moe.rope.dimension_sections", 32};
}

/* The optional head renamed: the engine would tie the head to the embedding and
 * never read the tensor, which must not pass silently. */
static void unknown_tensor(coe_gguf *g)
{
    find(g, "output.weight")->name = (coe_gguf_str){"blk.0.attn_sinks.weight", 23};
}

static void test_model_errors_are_named(void **state)
{
    (void)state;
    check_refused(unknown_tensor, "tensor 'blk.0.attn_sinks.weight' is not one the engine computes with");
    check_refused(drop_tensor, "tensor 'blk.1.ffn_down_exps.weight' is missing");
    check_refused(bad_shape, "tensor 'blk.0.attn_k.weight' has shape [64, 16], expected [64, 32]");
    check_refused(bad_type, "tensor 'blk.0.attn_q.weight' has type IQ2_XXS");
    check_refused(bad_arch, "architecture 'mamba' is not supported");
    check_refused(softcapping_key, "key 'qwen2moe.final_logit_softcapping' asks for final logit softcapping");
    check_refused(rope_sections_key, "key 'qwen2moe.rope.dimension_sections' asks for multi-section RoPE");
    check_refused(bad_heads, "heads do not divide");
    check_refused_arch(COE_ARCH_DEEPSEEK2, ds_gating, "key 'deepseek2.expert_gating_func' is 3");
    check_refused_arch(COE_ARCH_DEEPSEEK2, ds_kv_heads, "latent attention caches one head");
    check_refused_arch(COE_ARCH_DEEPSEEK2, ds_drop_k_b, "tensor 'blk.1.attn_k_b.weight' is missing");
}

/* ---- sampling ---- */

static void test_sampling(void **state)
{
    (void)state;
    enum { V = 5 };
    float logits[V] = {1.0f, 3.0f, 2.9f, -1.0f, 0.0f};
    coe_sampler s;
    coe_sampling p = coe_sampling_default();
    p.temperature = 0;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(coe_sample(&s, logits), 1);
    coe_sampler_free(&s);
    /* top_k 1, a tiny top_p and min_p 1 each leave only the best. */
    coe_sampling narrow[3] = {coe_sampling_default(), coe_sampling_default(), coe_sampling_default()};
    narrow[0].top_k = 1, narrow[1].top_p = 0.01f, narrow[2].min_p = 1;
    for (int k = 0; k < 3; k++) {
        narrow[k].seed = (uint64_t)k;
        assert_int_equal(coe_sampler_init(&s, &narrow[k], V), 0);
        for (int i = 0; i < 50; i++)
            assert_int_equal(coe_sample(&s, logits), 1);
        coe_sampler_free(&s);
    }
    /* Frequencies follow softmax(logits / T); the same seed gives the same draws. */
    p = coe_sampling_default();
    p.temperature = 0.7f;
    p.seed = 99;
    coe_sampler s2;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    assert_int_equal(coe_sampler_init(&s2, &p, V), 0);
    int hits[V] = {0};
    enum { DRAWS = 40000 };
    for (int i = 0; i < DRAWS; i++) {
        int a = coe_sample(&s, logits), b = coe_sample(&s2, logits);
        assert_int_equal(a, b);
        hits[a]++;
    }
    double z = 0, pr[V];
    for (int i = 0; i < V; i++)
        z += exp(logits[i] / 0.7);
    for (int i = 0; i < V; i++) {
        pr[i] = exp(logits[i] / 0.7) / z;
        double sd = sqrt(pr[i] * (1 - pr[i]) / DRAWS);
        if (fabs((double)hits[i] / DRAWS - pr[i]) > 5 * sd + 1e-4)
            fail_msg("token %d drawn %.4f of the time, expected %.4f", i, (double)hits[i] / DRAWS, pr[i]);
    }
    coe_sampler_free(&s);
    coe_sampler_free(&s2);
    /* top_p 0.6: only tokens 1 and 2 (their mass reaches it); never the others. */
    p.top_p = 0.6f;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    for (int i = 0; i < 2000; i++) {
        int t = coe_sample(&s, logits);
        assert_true(t == 1 || t == 2);
    }
    coe_sampler_free(&s);
    /* A large presence penalty stops a greedy repeat. */
    p = coe_sampling_default();
    p.temperature = 0;
    p.presence_penalty = 2;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    assert_int_equal(coe_sample(&s, logits), 1);
    assert_int_equal(coe_sample(&s, logits), 2);
    coe_sampler_free(&s);
    /* logit_bias: -100 bans the best token, +5 lifts token 4 above all; the logits the
     * caller holds are left as they are. */
    p = coe_sampling_default();
    p.seed = 5;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    assert_int_equal(coe_sampler_bias(&s, 1, -100), 0);
    for (int i = 0; i < 2000; i++)
        assert_int_not_equal(coe_sample(&s, logits), 1);
    coe_sampler_free(&s);
    p.temperature = 0;
    assert_int_equal(coe_sampler_init(&s, &p, V), 0);
    assert_int_equal(coe_sampler_bias(&s, 4, 5), 0);
    assert_int_equal(coe_sample(&s, logits), 4);
    assert_true(logits[4] == 0.0f);
    coe_sampler_free(&s);
    /* Log-probabilities. */
    int32_t ids[3];
    float lps[3];
    assert_int_equal(coe_top_logprobs(logits, V, 3, ids, lps), 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 0);
    assert_true(fabsf(lps[0] - coe_logprob(logits, V, 1)) < 1e-6f);
    double total = 0;
    for (int i = 0; i < V; i++)
        total += exp(coe_logprob(logits, V, i));
    assert_true(fabs(total - 1) < 1e-5);
}

/* ---- chat templates ---- */

static void test_chat_templates(void **state)
{
    (void)state;
    static const struct {
        const char *tmpl;
        coe_chat_family f;
        const char *rendered;
    } cases[] = {
        {"{{'<|im_start|>' + message['role']}}", COE_CHAT_CHATML,
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello"
         "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"},
        {"<|start_header_id|>{{ message['role'] }}<|end_header_id|>", COE_CHAT_LLAMA3,
         "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
         "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nAgain<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>", COE_CHAT_LLAMA2,
         "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Again [/INST]"},
        {"{{ '[INST] ' + message['content'] + ' [/INST]' }}", COE_CHAT_MISTRAL,
         "[INST] Be brief.\n\nHi [/INST]Hello</s><s>[INST] Again [/INST]"},
        {"<start_of_turn>user\n", COE_CHAT_GEMMA,
         "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
         "<start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\n"},
        {"{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>'}}", COE_CHAT_PHI3,
         "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|user|>\nAgain<|end|>\n"
         "<|assistant|>\n"},
        {"{{ '<|user|>\\n' + message['content'] + eos_token }}{{ '<|assistant|>' }}", COE_CHAT_ZEPHYR,
         "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nAgain</s>\n<|assistant|>\n"},
        {"{{'### Instruction:\\n' + message['content']}}", COE_CHAT_DEEPSEEK,
         "Be brief.\n### Instruction:\nHi\n### Response:\nHello\n<|EOT|>\n### Instruction:\nAgain\n### Response:\n"},
    };
    cJSON *msgs = cJSON_Parse("[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
                              "{\"role\":\"assistant\",\"content\":\"Hello\"},"
                              "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Again\"}]}]");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        coe_chat_family f;
        assert_true(coe_chat_detect(cases[i].tmpl, strlen(cases[i].tmpl), &f));
        assert_int_equal(f, cases[i].f);
        coe_chat_family g;
        assert_true(coe_chat_family_from_name(coe_chat_family_name(f), &g));
        assert_int_equal(g, f);
        coe_buf out = COE_BUF_INIT;
        char err[128];
        assert_true(coe_chat_render(f, msgs, &out, err, sizeof err));
        assert_string_equal(out.data, cases[i].rendered);
        coe_buf_free(&out);
    }
    coe_chat_family f;
    assert_false(coe_chat_detect("{{ messages | tojson }}", 23, &f));
    assert_false(coe_chat_family_from_name("jinja", &f));
    cJSON *image = cJSON_Parse("[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]");
    coe_buf out = COE_BUF_INIT;
    char err[128];
    assert_false(coe_chat_render(COE_CHAT_CHATML, image, &out, err, sizeof err));
    assert_non_null(strstr(err, "messages[0].content"));
    coe_buf_free(&out);
    cJSON_Delete(image);
    cJSON_Delete(msgs);
}

/* ---- the forged vocabulary ---- */

static void test_forged_vocab(void **state)
{
    (void)state;
    coe_model *m = open_forged(COE_ARCH_LLAMA, COE_GGML_F32);
    coe_vocab v;
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_vocab_load(&v, m->gguf, &d), 0);
    static const char *const texts[] = {"the water is good", "Zebra! 42 \xE4\xB8\xAD\xE6\x96\x87", "  two  spaces\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        assert_int_equal(coe_tokenize(&v, texts[i], strlen(texts[i]), &ids, &n, &cap), 0);
        coe_buf back = COE_BUF_INIT;
        for (size_t k = 0; k < n; k++)
            coe_token_bytes(&v, ids[k], &back);
        assert_true(back.len == strlen(texts[i]) + 1);
        assert_memory_equal(back.data + 1, texts[i], strlen(texts[i])); /* after SentencePiece's space */
        coe_buf_free(&back);
        free(ids);
    }
    /* In a prompt, the template's special tokens are single tokens; in plain text not. */
    const char *chat = "<|im_start|>user\nhi<|im_end|>";
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(coe_tokenize_prompt(&v, chat, strlen(chat), &ids, &n, &cap), 0);
    assert_int_equal(ids[0], v.bos);
    assert_int_equal(ids[1], coe_vocab_find(&v, "<|im_start|>", 12));
    assert_int_equal(ids[n - 1], coe_vocab_find(&v, "<|im_end|>", 10));
    assert_true(coe_token_is_end(&v, ids[n - 1]));
    n = 0;
    assert_int_equal(coe_tokenize(&v, chat, strlen(chat), &ids, &n, &cap), 0);
    for (size_t k = 0; k < n; k++)
        assert_int_not_equal(ids[k], coe_vocab_find(&v, "<|im_start|>", 12));
    free(ids);
    coe_vocab_free(&v);
    coe_buf_free(&d);
    coe_model_close(&m);
}

/* Pieces joined with '|'. */
static void check_split(coe_pretok pre, const char *text, const char *want)
{
    size_t *b, n;
    assert_int_equal(coe_pretokenize(pre, text, strlen(text), &b, &n), 0);
    coe_buf got = COE_BUF_INIT;
    for (size_t i = 0; i + 1 < n; i++) {
        if (i)
            coe_buf_puts(&got, "|");
        coe_buf_append(&got, text + b[i], b[i + 1] - b[i]);
    }
    if (strcmp(got.data ? got.data : "", want) != 0)
        fail_msg("split of '%s': got '%s', want '%s'", text, got.data ? got.data : "", want);
    coe_buf_free(&got);
    free(b);
}

/* The llama-3 and qwen2 expressions, worked out by hand from the regular expression
 * (no test vectors for them in ../shared): contractions in any case, one non-letter
 * joining a word, digits by three (by one for qwen2), punctuation keeping its
 * newlines, spaces giving their last one to the next word, newline runs. */
static void test_pretokenizers(void **state)
{
    (void)state;
    check_split(COE_PRE_LLAMA3, "I'M here, you'll see", "I|'M| here|,| you|'ll| see");
    check_split(COE_PRE_LLAMA3, "$12345 (hello)", "$|123|45| (|hello|)");
    check_split(COE_PRE_LLAMA3, "a   b", "a|  | b");
    check_split(COE_PRE_LLAMA3, "a  \n b\n\n", "a|  \n| b|\n\n");
    check_split(COE_PRE_LLAMA3, "ok!!\n\nnext\tword", "ok|!!\n\n|next|\tword");
    check_split(COE_PRE_LLAMA3, " 42", " |42");
    check_split(COE_PRE_QWEN2, "$12345 (hello)", "$|1|2|3|4|5| (|hello|)");
    check_split(COE_PRE_GPT2, "I'M here  42", "I|'|M| here| | 42");
    check_split(COE_PRE_GPT2, "end   ", "end|   ");
    check_split(COE_PRE_DEEPSEEK_CODER, "x = 10\n\u4e2d\u6587", "x| = |1|0|\n|\u4e2d\u6587"); /* '=' is a symbol, not \p{P} */
    /* starcoder (and refact, command-r, ...): every \p{N} on its own first, '½' too. */
    check_split(COE_PRE_STARCODER, " \u00bd", " |\u00bd");
    check_split(COE_PRE_STARCODER, "x = 10 apples", "x| =| |1|0| apples");
    /* falcon: punctuation and symbols (with the backtick) first, then gpt-2's, then
     * runs of three ASCII digits. */
    check_split(COE_PRE_FALCON, "a`b 1234", "a|`|b| |123|4");
}

/* Every pre-tokenizer against tests/reference/pretok-vectors.jsonl: the pieces
 * llama.cpp's own expressions give on sample texts (English, cases, numbers, scripts,
 * marks, symbols, spaces), computed by JavaScript's regex engine (scripts/pretok-vectors.mjs). */
static void test_pretokenizer_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        coe_pretok pre;
    } pres[] = {{"gpt2", COE_PRE_GPT2},         {"llama3", COE_PRE_LLAMA3},       {"qwen2", COE_PRE_QWEN2},
                {"starcoder", COE_PRE_STARCODER}, {"falcon", COE_PRE_FALCON},     {"default", COE_PRE_DEFAULT},
                {"deepseek_coder", COE_PRE_DEEPSEEK_CODER}, {"bloom", COE_PRE_BLOOM}, {"viking", COE_PRE_VIKING},
                {"tekken", COE_PRE_TEKKEN},       {"gpt4o", COE_PRE_GPT4O},       {"deepseek3", COE_PRE_DEEPSEEK3},
                {"seed_coder", COE_PRE_SEED_CODER}, {"bailing", COE_PRE_QWEN2}, {"qwen35", COE_PRE_QWEN35},
                {"deepseek_llm", COE_PRE_DEEPSEEK_LLM}, {"lines", COE_PRE_LINES}, {"laguna", COE_PRE_LAGUNA},
                {"ufakzeka", COE_PRE_UFAKZEKA}, {"whitespace", COE_PRE_WHITESPACE}, {"minicpm5", COE_PRE_MINICPM5},
                {"spark", COE_PRE_SPARK}, {"jais2", COE_PRE_JAIS2}, {"exaone_moe", COE_PRE_EXAONE_MOE},
                {"tiny_aya", COE_PRE_TINY_AYA}, {"youtu", COE_PRE_YOUTU}, {"granite_emb", COE_PRE_GRANITE_EMB}};
    FILE *f = fopen(COE_REFERENCE_DIR "/pretok-vectors.jsonl", "r");
    assert_non_null(f);
    char line[8192];
    int checked = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *name = cJSON_GetObjectItem(j, "pre")->valuestring, *text = cJSON_GetObjectItem(j, "text")->valuestring;
        coe_pretok pre = COE_PRE_DEFAULT;
        size_t k = 0;
        while (k < sizeof pres / sizeof pres[0] && strcmp(pres[k].name, name) != 0)
            k++;
        assert_true(k < sizeof pres / sizeof pres[0]);
        pre = pres[k].pre;
        coe_buf want = COE_BUF_INIT, got = COE_BUF_INIT;
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(j, "pieces"))
        {
            coe_buf_puts(&want, p->valuestring);
            coe_buf_puts(&want, "|");
        }
        size_t *b, n;
        assert_int_equal(coe_pretokenize(pre, text, strlen(text), &b, &n), 0);
        for (size_t i = 0; i + 1 < n; i++) {
            coe_buf_append(&got, text + b[i], b[i + 1] - b[i]);
            coe_buf_puts(&got, "|");
        }
        if (strcmp(got.data ? got.data : "", want.data ? want.data : "") != 0) {
            print_message("%s on '%s':\n  got  %s\n  want %s\n", name, text, got.data ? got.data : "", want.data);
            failed++;
        }
        checked++;
        free(b);
        coe_buf_free(&want);
        coe_buf_free(&got);
        cJSON_Delete(j);
    }
    fclose(f);
    assert_int_equal(failed, 0);
    assert_true(checked >= 150);
}

static void test_forge_refuses_bad_specs(void **state)
{
    (void)state;
    coe_forge_spec s = coe_forge_small(COE_ARCH_LLAMA);
    s.type = COE_GGML_Q4_K; /* blocks of 256 do not divide an embedding of 64 */
    coe_buf d = COE_BUF_INIT;
    assert_int_not_equal(coe_forge_write(&s, "/nonexistent/x.gguf", &d), 0);
    assert_non_null(strstr(d.data, "Q4_K blocks of 256 values must divide"));
    coe_buf_free(&d);
}

static int setup(void **state)
{
    (void)state;
    return test_tmpdir_make(dir, sizeof dir, "engine");
}

static int teardown(void **state)
{
    (void)state;
    return test_tmpdir_remove(dir);
}

/* llama.cpp's own logits (tests/reference/llama-cpp-logits.jsonl, made by
 * scripts/llama-cpp-logits.mjs with its prebuilt CPU build) on forged models of the
 * weight types, architectures and RoPE variants that have no conformance data: Q2_K,
 * Q3_K, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS (llama with experts, qwen2moe, olmoe),
 * granitemoe's four scales, deepseek2 (latent and decompressed attention, V2's and V3's
 * routing, YaRN with its log multiplier), phimoe (biases, LongRoPE's short and long
 * factors), expert groups on qwen2moe, YaRN, linear scaling and frequency factors;
 * llama.cpp ran with an F32 KV cache, as the engine's. Every one of the 8 largest logits
 * of every position within 5e-5 (some float sums run in another order: 1e-5 seen).
 * Where activations are rounded to a dot type (8 bits, F16), an ulp can meet a value on
 * a rounding boundary and flip it: that position is off (0.04 to 0.14 seen), and so may
 * be every later one, which reads it through the cache. A model with experts may have
 * one such near-tie, in the second half of the sequence; F32 models none. Seen: Q5_0
 * at position 7, deepseek2's Q8_0 at 5 (the activation was 2e-6 from the boundary) and
 * F16 at 5. The engine's three kernel paths give the same bits, so this holds on each. */
static void test_llama_cpp_logits(void **state)
{
    (void)state;
    FILE *f = fopen(COE_REFERENCE_DIR "/llama-cpp-logits.jsonl", "r");
    assert_non_null(f);
    static char line[1 << 16];
    int models = 0, failed = 0;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        char path[256];
        snprintf(path, sizeof path, "%s/oracle.gguf", dir);
        char *argv[96] = {"forge", "-o", path};
        int argc = 3;
        const cJSON *a;
        assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "forge")) < 96 - 3);
        cJSON_ArrayForEach(a, cJSON_GetObjectItem(j, "forge")) argv[argc++] = a->valuestring;
        assert_int_equal(coe_forge_main(argc - 1, argv + 1), 0);
        coe_model *m;
        coe_buf d = COE_BUF_INIT;
        if (coe_model_open(&m, path, &d))
            fail_msg("%s", d.data);
        const cJSON *jt = cJSON_GetObjectItem(j, "tokens"), *top = cJSON_GetObjectItem(j, "top8");
        int n = cJSON_GetArraySize(jt), V = m->n_vocab;
        int32_t toks[64];
        bool want[64];
        coe_kv *kv = coe_kv_new(m), *seq[64];
        for (int i = 0; i < n; i++)
            toks[i] = cJSON_GetArrayItem(jt, i)->valueint, want[i] = true, seq[i] = kv;
        coe_engine *e = coe_engine_new(m, 1, 256); /* llama.cpp's context: LongRoPE chooses by it */
        float *out = malloc((size_t)n * (size_t)V * sizeof *out);
        forward(e, seq, toks, want, n, out);
        double model_worst = 0;
        int off = 0, first_off = n;
        for (int p = 0; p < n; p++) {
            double pos_worst = 0;
            const cJSON *pair;
            cJSON_ArrayForEach(pair, cJSON_GetArrayItem(top, p))
            {
                int id = cJSON_GetArrayItem(pair, 0)->valueint;
                double ref = cJSON_GetArrayItem(pair, 1)->valuedouble, diff = fabs(out[(size_t)p * V + id] - ref);
                pos_worst = fmax(pos_worst, diff);
            }
            if (pos_worst > 5e-5) {
                off++;
                first_off = first_off < p ? first_off : p;
            } else if (p < first_off) {
                model_worst = fmax(model_worst, pos_worst);
            }
        }
        worst = fmax(worst, model_worst);
        char *spec = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "forge"));
        /* a near-tie, only where activations are rounded to a dot type: from a position in
         * the second half on (the later ones read it through the cache) */
        bool rounded = m->layers[0].wo.type != COE_GGML_F32;
        bool ok = off == 0 || (rounded && m->n_expert > 0 && first_off >= n / 2);
        print_message("%s: largest difference %.2e%s\n", spec, model_worst, off ? " before a near-tie" : "");
        if (off)
            print_message("  first position off: %d (%d off)\n", first_off, off);
        if (!ok)
            failed++;
        free(spec);
        free(out);
        coe_engine_free(&e);
        coe_kv_free(&kv);
        coe_model_close(&m);
        coe_buf_free(&d);
        cJSON_Delete(j);
        models++;
    }
    fclose(f);
    print_message("%d models, largest difference from llama.cpp %.2e (near-tie positions aside)\n", models, worst);
    assert_int_equal(models, 22);
    assert_int_equal(failed, 0);
}

/* llama.cpp's tokenizer test vectors on its byte-level BPE vocabularies that
 * ../shared lacks (tests/reference/llama-cpp-vocabs.jsonl, made by
 * scripts/llama-cpp-vocab-reference.py from its models/ folder): each vocabulary cut
 * down to the tokens and merges its texts use, which tokenizes them as the whole one;
 * every text gives llama.cpp's ids. */
static void test_llama_cpp_vocabs(void **state)
{
    (void)state;
    FILE *f = fopen(COE_REFERENCE_DIR "/llama-cpp-vocabs.jsonl", "r");
    assert_non_null(f);
    static char line[1 << 17];
    int vocabs = 0, cases = 0;
    while (fgets(line, sizeof line, f)) {
        assert_non_null(strchr(line, '\n')); /* the whole line was read */
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *name = cJSON_GetObjectItem(j, "name")->valuestring;
        const cJSON *jt = cJSON_GetObjectItem(j, "tokens"), *jy = cJSON_GetObjectItem(j, "types");
        const cJSON *jm = cJSON_GetObjectItem(j, "merges");
        int n = cJSON_GetArraySize(jt), n_merges = cJSON_GetArraySize(jm);
        const char **texts = calloc((size_t)n, sizeof *texts), **merges = calloc((size_t)n_merges + 1, sizeof *merges);
        int32_t *types = calloc((size_t)n, sizeof *types);
        for (int i = 0; i < n; i++) {
            texts[i] = cJSON_GetArrayItem(jt, i)->valuestring;
            types[i] = cJSON_GetArrayItem(jy, i)->valueint;
        }
        for (int i = 0; i < n_merges; i++)
            merges[i] = cJSON_GetArrayItem(jm, i)->valuestring;
        coe_gguf_writer *w = coe_gguf_writer_new(32);
        coe_gguf_writer_kv_str(w, "general.architecture", "llama");
        coe_gguf_writer_kv_str(w, "tokenizer.ggml.model", "gpt2");
        coe_gguf_writer_kv_str(w, "tokenizer.ggml.pre", cJSON_GetObjectItem(j, "pre")->valuestring);
        coe_gguf_writer_kv_strings(w, "tokenizer.ggml.tokens", texts, (uint64_t)n);
        coe_gguf_writer_kv_array(w, "tokenizer.ggml.token_type", COE_GGUF_I32, types, (uint64_t)n);
        coe_gguf_writer_kv_strings(w, "tokenizer.ggml.merges", merges, (uint64_t)n_merges);
        const cJSON *sp;
        cJSON_ArrayForEach(sp, cJSON_GetObjectItem(j, "specials"))
        {
            char key[64];
            uint32_t id = (uint32_t)sp->valueint;
            snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", sp->string);
            coe_gguf_writer_kv(w, key, COE_GGUF_U32, &id);
        }
        char path[256];
        snprintf(path, sizeof path, "%s/vocab-%s.gguf", dir, name);
        coe_buf d = COE_BUF_INIT;
        if (coe_gguf_writer_save(w, path, &d))
            fail_msg("%s", d.data);
        coe_gguf_writer_free(&w);
        coe_gguf *g;
        assert_int_equal(coe_gguf_open(&g, path, &d), 0);
        coe_vocab v;
        if (coe_vocab_load(&v, g, &d))
            fail_msg("%s: %s", name, d.data);
        const cJSON *c;
        int32_t *ids = NULL;
        size_t cap = 0;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
        {
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            const cJSON *want = cJSON_GetObjectItem(c, "ids");
            size_t n_ids = 0;
            assert_int_equal(coe_tokenize(&v, text, strlen(text), &ids, &n_ids, &cap), 0);
            bool same = (int)n_ids == cJSON_GetArraySize(want);
            for (size_t i = 0; same && i < n_ids; i++)
                same = ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
            if (!same)
                fail_msg("%s, case %d ('%s'): %zu ids, not llama.cpp's %d", name, cases, text, n_ids,
                         cJSON_GetArraySize(want));
            cases++;
        }
        free(ids);
        coe_vocab_free(&v);
        coe_gguf_close(&g);
        coe_buf_free(&d);
        free(texts), free(merges), free(types);
        cJSON_Delete(j);
        vocabs++;
    }
    fclose(f);
    print_message("%d vocabularies, %d texts: llama.cpp's ids\n", vocabs, cases);
    assert_int_equal(vocabs, 9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_round_trip),
        cmocka_unit_test(test_utf8_tail),
        cmocka_unit_test(test_quantize_round_trip),
        cmocka_unit_test(test_ggml_reference),
        cmocka_unit_test(test_llama_cpp_logits),
        cmocka_unit_test(test_llama_cpp_vocabs),
        cmocka_unit_test(test_quantize_hostile_values),
        cmocka_unit_test(test_dots_match_reference),
        cmocka_unit_test(test_cuda_dequantizer_layouts),
        cmocka_unit_test(test_axpy_matches_reference),
        cmocka_unit_test(test_threads_run_every_member),
        cmocka_unit_test(test_batching_llama),
        cmocka_unit_test(test_batching_qwen2moe),
        cmocka_unit_test(test_batching_olmoe),
        cmocka_unit_test(test_batching_qwen3moe),
        cmocka_unit_test(test_batching_deepseek2),
        cmocka_unit_test(test_batching_phimoe),
        cmocka_unit_test(test_context_limit),
        cmocka_unit_test(test_rope_scaling),
        cmocka_unit_test(test_model_errors_are_named),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_chat_templates),
        cmocka_unit_test(test_forged_vocab),
        cmocka_unit_test(test_pretokenizers),
        cmocka_unit_test(test_pretokenizer_vectors),
        cmocka_unit_test(test_forge_refuses_bad_specs),
    };
    return cmocka_run_group_tests_name("engine", tests, setup, teardown);
}
