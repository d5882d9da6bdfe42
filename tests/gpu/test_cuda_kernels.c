/* The gpu suite: every CUDA kernel of experts/cuda.h against its CPU reference on
 * random inputs of awkward shapes (rows and tokens that are not multiples of a warp
 * or a tile, rows of one block, a prompt beyond the matrix-vector kernel). Skips,
 * saying why, without a GPU or without CUDA in the build.
 *
 * Measure: normalised mean squared error, sum (gpu - cpu)^2 / sum cpu^2, as
 * llama.cpp's test-backend-ops. The bounds, and why:
 *  - dequantization, activations rounded through a dot type, scale, bias and
 *    residual adds, row gathers and copies: none; the same float operations, each
 *    rounded explicitly, give the same bits. The experts' combination: 1e-6
 *    relative (the shared expert's gate takes CUDA's expf).
 *  - products of a weight matrix and float activations, every type: 1e-10. Both
 *    sides multiply the same dequantized values; only the order of the float sums
 *    differs (the CPU reference sums in double), a relative error of a few float
 *    epsilons (1.2e-7) per output, so about 1e-13 in squares, with a wide margin for
 *    cancellation in rows whose sum is near zero.
 *  - RMSNorm, SiLU, RoPE and attention: 1e-10; expf, powf, cosf and sinf of CUDA are
 *    within 2 ulp of glibc's, and the sums are reordered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coe_build.h"
#include "common/err.h"
#include "common/rand.h"
#include "experts/cuda.h"
#include "experts/engine.h"
#include "experts/model.h"
#include "experts/quant.h"
#include "../unit/reference_ops.h"

static coe_cuda *dev;
static uint64_t seed = 20261130;

static void fill(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++)
        x[i] = coe_uniform(&seed, a);
}

static double nmse(const float *got, const float *want, size_t n)
{
    double err = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        err += d * d;
        ref += (double)want[i] * (double)want[i];
    }
    return ref > 0 ? err / ref : err;
}

/* A device copy of n bytes of host memory. */
static void *up(const void *src, size_t n)
{
    void *d = coe_cuda_alloc(dev, n);
    assert_non_null(d);
    assert_int_equal(coe_cuda_upload(dev, d, src, n), 0);
    return d;
}

static void down(void *dst, const void *d_src, size_t n)
{
    int rc = coe_cuda_download(dev, dst, d_src, n);
    if (rc)
        fail_msg("%s", coe_cuda_last_error(dev));
}

static void ok(int rc)
{
    if (rc)
        fail_msg("%s", coe_cuda_last_error(dev));
}

static const uint32_t types[] = {
    COE_GGML_F32, COE_GGML_F16, COE_GGML_BF16, COE_GGML_Q8_0, COE_GGML_Q4_0, COE_GGML_Q4_1,
    COE_GGML_Q5_0, COE_GGML_Q5_1, COE_GGML_IQ4_NL, COE_GGML_IQ4_XS, COE_GGML_Q2_K, COE_GGML_Q3_K,
    COE_GGML_Q4_K, COE_GGML_Q5_K, COE_GGML_Q6_K,
};
#define N_TYPES (sizeof types / sizeof *types)

static int block_of(uint32_t type)
{
    uint32_t block, bytes;
    assert_true(coe_ggml_type_layout(type, &block, &bytes));
    return (int)block;
}

/* rows x cols of type, quantized from random values by the CPU's quantizer. */
static uint8_t *random_matrix(uint32_t type, int64_t rows, int64_t cols)
{
    size_t rb = coe_row_bytes(type, cols);
    uint8_t *w = malloc(rb * (size_t)rows);
    float *row = malloc((size_t)cols * sizeof *row);
    assert_non_null(w);
    assert_non_null(row);
    for (int64_t r = 0; r < rows; r++) {
        fill(row, (size_t)cols, 1.0f + (float)(r % 7));
        coe_quantize_row(type, row, w + rb * (size_t)r, cols);
    }
    free(row);
    return w;
}

static void test_dequantize(void **state)
{
    (void)state;
    for (size_t k = 0; k < N_TYPES; k++) {
        uint32_t type = types[k];
        int64_t n = (int64_t)block_of(type) * (block_of(type) == 1 ? 1001 : 37);
        uint8_t *w = random_matrix(type, 1, n);
        float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
        coe_dequantize_row(type, w, want, n);
        void *d_w = up(w, coe_row_bytes(type, n));
        float *d_y = coe_cuda_alloc(dev, (size_t)n * sizeof *d_y);
        ok(coe_cuda_dequantize(dev, type, d_w, n, d_y));
        down(got, d_y, (size_t)n * sizeof *got);
        for (int64_t i = 0; i < n; i++)
            if (memcmp(&got[i], &want[i], sizeof *got))
                fail_msg("type %u, value %lld: %.9g on the GPU, %.9g on the CPU", type, (long long)i, got[i],
                         want[i]);
        coe_cuda_release(dev, d_w);
        coe_cuda_release(dev, d_y);
        free(w);
        free(want);
        free(got);
    }
    /* Not whole blocks: refused with the reason, nothing run. */
    assert_int_equal(coe_cuda_dequantize(dev, COE_GGML_Q4_K, NULL, 100, NULL), COE_EINVAL);
    assert_non_null(strstr(coe_cuda_last_error(dev), "whole blocks"));
}

/* y[t][r] in double from the CPU's dequantized rows. */
static void matmul_ref(uint32_t type, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int T,
                       float *y)
{
    ref_matmul(type, w, rows, cols, x, T, y, rows);
}

static void test_matmul(void **state)
{
    (void)state;
    const int64_t shapes[][2] = {{1, 1}, {5, 3}, {67, 17}, {300, 8}}; /* rows, cols in blocks */
    const int tokens[] = {1, 3, 8, 11, 40};
    for (size_t k = 0; k < N_TYPES; k++) {
        uint32_t type = types[k];
        int block = block_of(type) == 1 ? 32 : block_of(type);
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1] * block + (block_of(type) == 1 ? s : 0);
            uint8_t *w = random_matrix(type, rows, cols);
            void *d_w = up(w, coe_row_bytes(type, cols) * (size_t)rows);
            float *d_scratch = coe_cuda_alloc(dev, (size_t)(rows * cols) * sizeof(float));
            for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++) {
                int T = tokens[ti];
                size_t nx = (size_t)T * (size_t)cols, ny = (size_t)T * (size_t)rows;
                float *x = malloc(nx * sizeof *x), *want = malloc(ny * sizeof *want), *got = malloc(ny * sizeof *got);
                fill(x, nx, 1.0f);
                matmul_ref(type, w, rows, cols, x, T, want);
                float *d_x = up(x, nx * sizeof *x), *d_y = coe_cuda_alloc(dev, ny * sizeof *d_y);
                ok(coe_cuda_matmul(dev, type, d_w, rows, cols, d_x, T, d_y, rows, d_scratch));
                down(got, d_y, ny * sizeof *got);
                double e = nmse(got, want, ny);
                if (!(e <= 1e-10))
                    fail_msg("type %u, %lld x %lld, %d tokens: NMSE %.3g", type, (long long)rows, (long long)cols, T,
                             e);
                coe_cuda_release(dev, d_x);
                coe_cuda_release(dev, d_y);
                free(x);
                free(want);
                free(got);
            }
            coe_cuda_release(dev, d_w);
            coe_cuda_release(dev, d_scratch);
            free(w);
        }
    }
}

/* The output stride: a product written into every other row of a wider buffer,
 * the rows between untouched, by both paths. */
static void test_matmul_stride(void **state)
{
    (void)state;
    const int64_t rows = 33, cols = 64, ld = 50;
    uint8_t *w = random_matrix(COE_GGML_Q8_0, rows, cols);
    void *d_w = up(w, coe_row_bytes(COE_GGML_Q8_0, cols) * (size_t)rows);
    float *d_scratch = coe_cuda_alloc(dev, (size_t)(rows * cols) * sizeof(float));
    for (int T = 2; T <= 20; T += 18) {
        float x[20 * 64], want[20 * 33], got[20 * 50];
        fill(x, (size_t)T * cols, 1);
        matmul_ref(COE_GGML_Q8_0, w, rows, cols, x, T, want);
        for (size_t i = 0; i < sizeof got / sizeof *got; i++)
            got[i] = -7;
        float *d_x = up(x, (size_t)T * cols * sizeof *x), *d_y = up(got, sizeof got);
        ok(coe_cuda_matmul(dev, COE_GGML_Q8_0, d_w, rows, cols, d_x, T, d_y, ld, d_scratch));
        down(got, d_y, sizeof got);
        for (int t = 0; t < T; t++) {
            assert_true(nmse(got + t * ld, want + t * rows, (size_t)rows) <= 1e-10);
            for (int64_t r = rows; r < ld; r++)
                assert_true(got[t * ld + r] == -7);
        }
        coe_cuda_release(dev, d_x);
        coe_cuda_release(dev, d_y);
    }
    assert_int_equal(coe_cuda_matmul(dev, COE_GGML_Q8_0, d_w, rows, cols, NULL, 1, NULL, rows - 1, NULL), COE_EINVAL);
    assert_int_equal(coe_cuda_matmul(dev, COE_GGML_Q8_1, d_w, rows, cols, NULL, 1, NULL, rows, NULL),
                     COE_EUNSUPPORTED);
    coe_cuda_release(dev, d_w);
    coe_cuda_release(dev, d_scratch);
    free(w);
}

/* Activations through each weight type's dot type and back: the CPU's bits. */
static void test_round_activations(void **state)
{
    (void)state;
    enum { T = 3, COLS = 512 };
    float x[T * COLS], want[T * COLS], got[T * COLS];
    fill(x, T * COLS, 4);
    x[7] = 0, x[300] = -1e-30f, x[301] = 65504.5f; /* zero, a denormal's neighbour, past F16's range */
    for (int i = 0; i < 32; i++)
        x[COLS + 64 + i] = 0; /* a block of zeros */
    float *d_x = up(x, sizeof x), *d_y = coe_cuda_alloc(dev, sizeof got);
    uint8_t q[T * COLS * 4];
    for (size_t k = 0; k < N_TYPES; k++) {
        uint32_t type = types[k], dt = coe_dot_type(type);
        for (int t = 0; t < T; t++) {
            coe_quantize_row(dt, x + t * COLS, q, COLS);
            coe_dequantize_row(dt, q, want + t * COLS, COLS);
        }
        ok(coe_cuda_round_activations(dev, type, d_x, d_y, T, COLS));
        down(got, d_y, sizeof got);
        for (int i = 0; i < T * COLS; i++)
            if (memcmp(&got[i], &want[i], sizeof got[i]) && !(isnan(got[i]) && isnan(want[i])))
                fail_msg("type %u, value %d (%.9g): %.9g on the GPU, %.9g on the CPU", type, i, x[i], got[i], want[i]);
    }
    coe_cuda_release(dev, d_x);
    coe_cuda_release(dev, d_y);
}

/* The engine's small movers: exact. */
static void test_rows_and_moe_combine(void **state)
{
    (void)state;
    enum { T = 5, W = 37, K = 3, A = T * K };
    float x[A * W], b[W], y[A * W], want[A * W];
    fill(x, A * W, 2);
    fill(b, W, 1);
    float *d_x = up(x, sizeof x), *d_b = up(b, sizeof b), *d_y = coe_cuda_alloc(dev, sizeof y);
    /* scale, add_rows, add with a scale, copy */
    ok(coe_cuda_copy(dev, d_y, d_x, sizeof x));
    ok(coe_cuda_scale(dev, d_y, A * W, 0.25f));
    ok(coe_cuda_add_rows(dev, d_y, d_b, A, W));
    ok(coe_cuda_add(dev, d_y, d_x, A * W, 1.5f));
    for (int i = 0; i < A * W; i++)
        want[i] = (x[i] * 0.25f + b[i % W]) + x[i] * 1.5f;
    down(y, d_y, sizeof y);
    assert_memory_equal(y, want, sizeof y);
    /* gather rows 4, 0, 4 and scatter them to rows 1, 2, 3 of y */
    int32_t idx[3] = {4, 0, 4};
    int32_t *d_idx = up(idx, sizeof idx);
    float *d_g = coe_cuda_alloc(dev, 3 * W * sizeof(float));
    ok(coe_cuda_gather_rows(dev, d_g, d_x, d_idx, 3, W));
    float *dst[3] = {d_y + W, d_y + 2 * W, d_y + 3 * W};
    void *d_dst = up(dst, sizeof dst);
    ok(coe_cuda_scatter_rows(dev, d_dst, d_g, 3, W));
    down(y, d_y, sizeof y);
    for (int r = 0; r < 3; r++)
        assert_memory_equal(y + (r + 1) * W, x + idx[r] * W, W * sizeof(float));
    /* copy_rows: each of 5 "tokens" rows' 3 "heads" of 4 values (at 6 apart in rows of 37), gathered head by head */
    float rows[3 * 5 * 4];
    float *d_rows = coe_cuda_alloc(dev, sizeof rows);
    ok(coe_cuda_copy_rows(dev, d_rows, 4, d_x + 1, 6, W, 3, 5, 4));
    down(rows, d_rows, sizeof rows);
    for (int h = 0; h < 3; h++)
        for (int t = 0; t < 5; t++)
            assert_memory_equal(rows + (h * 5 + t) * 4, x + 1 + h * 6 + t * W, 4 * sizeof(float));
    coe_cuda_release(dev, d_rows);
    /* RMSNorm of the first 20 of rows 37 apart, in place: the rest untouched */
    ok(coe_cuda_copy(dev, d_y, d_x, sizeof x));
    ok(coe_cuda_rms_norm_rows(dev, d_y, d_b, d_y, A, 20, W, 1e-5f));
    down(y, d_y, sizeof y);
    for (int t = 0; t < A; t++) {
        ref_rms_norm(x + t * W, b, want + t * W, 20, 1e-5f);
        assert_true(nmse(y + t * W, want + t * W, 20) <= 1e-10);
        assert_memory_equal(y + t * W + 20, x + t * W + 20, (W - 20) * sizeof(float));
    }
    /* combine: each token's K experts' rows (slots) weighted, then the shared expert gated */
    int32_t slot[A];
    float w[A], z[T], out[T * W];
    for (int a = 0; a < A; a++)
        slot[a] = (a * 7) % A, w[a] = 0.1f * (float)(a % 4 + 1);
    fill(z, T, 3);
    int32_t *d_slot = up(slot, sizeof slot);
    float *d_w = up(w, sizeof w), *d_z = up(z, sizeof z), *d_out = coe_cuda_alloc(dev, sizeof out);
    for (int gated = 0; gated < 3; gated++) {
        const float *so = gated ? d_x : NULL; /* x's first T rows as the shared expert's */
        ok(coe_cuda_moe_combine(dev, d_out, d_x, d_slot, d_w, T, K, W, so, gated == 2 ? d_z : NULL));
        down(out, d_out, sizeof out);
        for (int t = 0; t < T; t++)
            for (int d = 0; d < W; d++) {
                float o = 0;
                for (int s = 0; s < K; s++)
                    o += x[slot[t * K + s] * W + d] * w[t * K + s];
                if (gated)
                    o += x[t * W + d] * (gated == 2 ? 1.0f / (1.0f + expf(-z[t])) : 1.0f);
                if (fabsf(out[t * W + d] - o) > 1e-6f * (fabsf(o) + 1))
                    fail_msg("combine %d, token %d, value %d: %.9g on the GPU, %.9g on the CPU", gated, t, d,
                             out[t * W + d], o);
            }
    }
    void *all[] = {d_x, d_b, d_y, d_idx, d_g, d_dst, d_slot, d_w, d_z, d_out};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        coe_cuda_release(dev, all[i]);
}

static void test_rms_norm(void **state)
{
    (void)state;
    const int widths[] = {1, 7, 4099};
    for (size_t k = 0; k < 3; k++) {
        int n = widths[k], T = 3;
        size_t all = (size_t)T * (size_t)n;
        float *x = malloc(all * sizeof *x), *w = malloc((size_t)n * sizeof *w), *want = malloc(all * sizeof *want),
              *got = malloc(all * sizeof *got);
        fill(x, all, 3);
        fill(w, (size_t)n, 1);
        for (int t = 0; t < T; t++)
            ref_rms_norm(x + (size_t)t * n, w, want + (size_t)t * n, n, 1e-5f);
        float *d_x = up(x, all * sizeof *x), *d_w = up(w, (size_t)n * sizeof *w);
        float *d_y = coe_cuda_alloc(dev, all * sizeof *d_y);
        ok(coe_cuda_rms_norm(dev, d_x, d_w, d_y, T, n, 1e-5f));
        down(got, d_y, all * sizeof *got);
        assert_true(nmse(got, want, all) <= 1e-10);
        coe_cuda_release(dev, d_x);
        coe_cuda_release(dev, d_w);
        coe_cuda_release(dev, d_y);
        free(x);
        free(w);
        free(want);
        free(got);
    }
}

static void test_silu_mul_and_add(void **state)
{
    (void)state;
    const size_t n = 100003;
    float *g = malloc(n * sizeof *g), *u = malloc(n * sizeof *u), *want = malloc(n * sizeof *want),
          *got = malloc(n * sizeof *got);
    fill(g, n, 12);
    fill(u, n, 2);
    float *d_g = up(g, n * sizeof *g), *d_u = up(u, n * sizeof *u);
    for (size_t i = 0; i < n; i++)
        want[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    ok(coe_cuda_silu_mul(dev, d_g, d_u, (int64_t)n));
    down(got, d_g, n * sizeof *got);
    assert_true(nmse(got, want, n) <= 1e-10);
    /* add: exact */
    for (size_t i = 0; i < n; i++)
        want[i] = got[i] + u[i];
    ok(coe_cuda_add(dev, d_g, d_u, (int64_t)n, 1));
    down(got, d_g, n * sizeof *got);
    assert_memory_equal(got, want, n * sizeof *got);
    coe_cuda_release(dev, d_g);
    coe_cuda_release(dev, d_u);
    free(g);
    free(u);
    free(want);
    free(got);
}

static void test_rope(void **state)
{
    (void)state;
    enum { T = 4, HEADS = 3, DIM = 64 };
    const int32_t pos[T] = {0, 1, 17, 4000};
    float freqs[16];
    for (int i = 0; i < 16; i++)
        freqs[i] = 1.0f + (float)i / 4;
    /* plain, neox, partial with frequency factors, YaRN */
    const struct {
        int rope_dim;
        bool neox, factors;
        float freq_scale, ext;
    } cases[] = {{64, false, false, 1, 0}, {64, true, false, 1, 0}, {32, true, true, 0.25f, 0}, {64, false, false, 0.125f, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        coe_model m;
        memset(&m, 0, sizeof m);
        m.rope_dim = cases[k].rope_dim;
        m.rope_neox = cases[k].neox;
        m.rope_base = 10000;
        m.rope_freq_scale = cases[k].freq_scale;
        m.rope_ext_factor = cases[k].ext;
        m.rope_corr_dims[0] = 3.5f;
        m.rope_corr_dims[1] = 21.25f;
        m.rope_mscale = cases[k].ext ? 1.2f : 1;
        coe_cuda_rope_params p = {m.rope_dim, m.rope_neox, m.rope_base, m.rope_freq_scale, m.rope_ext_factor,
                                  m.rope_corr_dims[0], m.rope_corr_dims[1], m.rope_mscale};
        float x[T * HEADS * DIM], want[T * HEADS * DIM], got[T * HEADS * DIM];
        fill(x, sizeof x / sizeof *x, 2);
        memcpy(want, x, sizeof x);
        const float *f = cases[k].factors ? freqs : NULL;
        for (int t = 0; t < T; t++)
            coe_rope(&m, f, want + t * HEADS * DIM, HEADS, DIM, pos[t]);
        float *d_x = up(x, sizeof x), *d_f = up(freqs, sizeof freqs);
        int32_t *d_pos = up(pos, sizeof pos);
        ok(coe_cuda_rope(dev, &p, f ? d_f : NULL, d_x, T, HEADS, DIM, d_pos));
        down(got, d_x, sizeof got);
        double e = nmse(got, want, sizeof got / sizeof *got);
        if (!(e <= 1e-10))
            fail_msg("rope case %zu: NMSE %.3g", k, e);
        coe_cuda_release(dev, d_x);
        coe_cuda_release(dev, d_f);
        coe_cuda_release(dev, d_pos);
    }
}

static void test_attention(void **state)
{
    (void)state;
    /* llama-like grouped heads; DeepSeek-like keys wider than values; one head */
    const coe_cuda_attention_shape shapes[] = {
        {8, 2, 64, 64, 2 * 64, 2 * 64, 300, 0.125f},
        {5, 5, 192, 128, 5 * 192, 5 * 128, 70, 0.07f},
        {1, 1, 16, 16, 16, 16, 3000, 0.25f},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const coe_cuda_attention_shape *s = &shapes[k];
        enum { T = 3 };
        /* two sequences: tokens 0 and 1 decode sequence A, token 2 sequence B */
        int32_t pos[T] = {s->n_ctx - 1, s->n_ctx / 2, 0};
        size_t kn = (size_t)s->n_ctx * s->k_stride, vn = (size_t)s->n_ctx * s->v_stride;
        float *ka = malloc(kn * sizeof *ka), *va = malloc(vn * sizeof *va), *kb = malloc(kn * sizeof *kb),
              *vb = malloc(vn * sizeof *vb);
        fill(ka, kn, 1);
        fill(va, vn, 1);
        fill(kb, kn, 1);
        fill(vb, vn, 1);
        size_t qn = (size_t)T * s->n_head * s->dk, on = (size_t)T * s->n_head * s->dv;
        float *q = malloc(qn * sizeof *q), *want = malloc(on * sizeof *want), *got = malloc(on * sizeof *got);
        fill(q, qn, 3);
        const float *kh[T] = {ka, ka, kb}, *vh[T] = {va, va, vb};
        ref_attention(s, q, kh, vh, pos, T, want);
        float *d_ka = up(ka, kn * 4), *d_va = up(va, vn * 4), *d_kb = up(kb, kn * 4), *d_vb = up(vb, vn * 4);
        const float *kd[T] = {d_ka, d_ka, d_kb}, *vd[T] = {d_va, d_va, d_vb};
        void *d_kp = up(kd, sizeof kd), *d_vp = up(vd, sizeof vd);
        float *d_q = up(q, qn * 4), *d_out = coe_cuda_alloc(dev, on * 4);
        float *d_scratch = coe_cuda_alloc(dev, (size_t)T * s->n_head * s->n_ctx * 4);
        int32_t *d_pos = up(pos, sizeof pos);
        ok(coe_cuda_attention(dev, s, d_q, d_kp, d_vp, d_pos, T, d_scratch, d_out));
        down(got, d_out, on * 4);
        double e = nmse(got, want, on);
        if (!(e <= 1e-10))
            fail_msg("attention shape %zu: NMSE %.3g", k, e);
        void *all[] = {d_ka, d_va, d_kb, d_vb, d_kp, d_vp, d_q, d_out, d_scratch, d_pos};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            coe_cuda_release(dev, all[i]);
        free(ka);
        free(va);
        free(kb);
        free(vb);
        free(q);
        free(want);
        free(got);
    }
}

int main(void)
{
    if (coe_cuda_device_count() == 0) {
        printf("skipped: %s\n", COE_HAVE_CUDA ? "no GPU: CUDA finds no device" : "this build has no CUDA (no nvcc)");
        return 77;
    }
    char why[256];
    if (coe_cuda_open(&dev, 0, why, sizeof why)) {
        printf("%s\n", why);
        return 1;
    }
    printf("device: %s\n", coe_cuda_name(dev));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequantize),  cmocka_unit_test(test_matmul),           cmocka_unit_test(test_matmul_stride),
        cmocka_unit_test(test_rms_norm),    cmocka_unit_test(test_silu_mul_and_add), cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),  cmocka_unit_test(test_round_activations),
        cmocka_unit_test(test_rows_and_moe_combine),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    coe_cuda_close(&dev);
    return failed;
}
