// Reference outputs from ggml for coegate's kernel tests (tests/reference/ggml-kernels.txt):
// dequantized blocks, dot products and RoPE (plain, linear, YaRN), on inputs that both
// sides generate from the same seeds. Run by hand; ggml is built outside the project:
//   git clone https://github.com/ggml-org/ggml /tmp/ggml   (the commit the file names)
//   cmake -S /tmp/ggml -B /tmp/ggml/build -DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF \
//     -DGGML_AVX512=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/ggml/build -j
//   gcc -O2 -std=c11 -I/tmp/ggml/include scripts/ggml-oracle.c -L/tmp/ggml/build/src -lggml -lggml-base \
//     -lggml-cpu -lm -Wl,-rpath,/tmp/ggml/build/src -o /tmp/ggml-oracle && /tmp/ggml-oracle
// (the file's header lines are added by hand).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "ggml-cpu.h"

static uint64_t sm(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static float uni(uint64_t *s, float a) { return ((float)(sm(s) >> 40) / (float)(1ull << 24) * 2.0f - 1.0f) * a; }
static uint64_t fnv(const void *p, size_t n) {
    const uint8_t *b = p; uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
    return h;
}
static uint16_t half(uint64_t *s) {
    uint64_t r = sm(s);
    return (uint16_t)(((r & 1) << 15) | ((8 + (r >> 1) % 7) << 10) | ((r >> 8) & 0x3ff));
}
struct spec { int type; const char *name; int f16[2]; };
static const struct spec specs[] = {
    {GGML_TYPE_Q4_0, "Q4_0", {0, -1}}, {GGML_TYPE_Q4_1, "Q4_1", {0, 2}}, {GGML_TYPE_Q5_0, "Q5_0", {0, -1}},
    {GGML_TYPE_Q5_1, "Q5_1", {0, 2}}, {GGML_TYPE_Q8_0, "Q8_0", {0, -1}}, {GGML_TYPE_IQ4_NL, "IQ4_NL", {0, -1}},
    {GGML_TYPE_IQ4_XS, "IQ4_XS", {0, -1}}, {GGML_TYPE_Q2_K, "Q2_K", {80, 82}}, {GGML_TYPE_Q3_K, "Q3_K", {108, -1}},
    {GGML_TYPE_Q4_K, "Q4_K", {0, 2}}, {GGML_TYPE_Q5_K, "Q5_K", {0, 2}}, {GGML_TYPE_Q6_K, "Q6_K", {208, -1}},
};
int main(void) {
    ggml_cpu_init();
    enum { N = 1024 };
    for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++) {
        const struct spec *sp = &specs[k];
        const struct ggml_type_traits *tt = ggml_get_type_traits(sp->type);
        const struct ggml_type_traits_cpu *tc = ggml_get_type_traits_cpu(sp->type);
        size_t nb = N / tt->blck_size, bytes = nb * tt->type_size;
        uint8_t *w = malloc(bytes);
        uint64_t s = 1000 + sp->type;
        for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)sm(&s);
        for (size_t b = 0; b < nb; b++)
            for (int f = 0; f < 2; f++)
                if (sp->f16[f] >= 0) { uint16_t h = half(&s); memcpy(w + b * tt->type_size + sp->f16[f], &h, 2); }
        float y[N];
        tt->to_float(w, y, N);
        printf("dequant %s %llu %016llx %.9g %.9g %.9g %.9g\n", sp->name, (unsigned long long)(1000 + sp->type),
               (unsigned long long)fnv(y, sizeof y), y[0], y[1], y[N / 2], y[N - 1]);
        float x[N];
        uint64_t sx = 2000 + sp->type;
        for (int i = 0; i < N; i++) x[i] = uni(&sx, 3);
        const struct ggml_type_traits *at = ggml_get_type_traits(tc->vec_dot_type);
        uint8_t *a = malloc(N / at->blck_size * at->type_size);
        ggml_get_type_traits_cpu(tc->vec_dot_type)->from_float(x, a, N);
        float dot = 0;
        tc->vec_dot(N, &dot, 0, w, 0, a, 0, 1);
        printf("dot %s %llu %.9g\n", sp->name, (unsigned long long)(2000 + sp->type), dot);
        free(w); free(a);
    }
    // RoPE: head_dim 64, 4 heads, rope dims 64 or 32, positions 0..; plain, linear, YaRN.
    struct { int mode, n_dims, n_ctx_orig; float base, freq_scale, ext, attn, fast, slow; } ropes[] = {
        {0, 64, 4096, 10000, 1, 0, 1, 32, 1}, {2, 64, 4096, 10000, 0.25f, 0, 1, 32, 1},
        {2, 64, 4096, 1000000, 0.25f, 1, 1, 32, 1}, {0, 32, 2048, 10000, 0.125f, 1, 1.0f, 32, 1},
        {2, 64, 8192, 500000, 0.0625f, 1, 0.9f, 16, 2},
    };
    for (size_t k = 0; k < sizeof ropes / sizeof ropes[0]; k++) {
        struct ggml_init_params ip = {64 * 1024 * 1024, NULL, false};
        struct ggml_context *ctx = ggml_init(ip);
        int hd = 64, nh = 4, nt = 6;
        struct ggml_tensor *t = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, nh, nt);
        struct ggml_tensor *pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, nt);
        uint64_t s = 3000 + k;
        for (int i = 0; i < hd * nh * nt; i++) ((float *)t->data)[i] = uni(&s, 1);
        int positions[6] = {0, 1, 7, 100, 1000, 20000};
        memcpy(pos->data, positions, sizeof positions);
        struct ggml_tensor *r = ggml_rope_ext(ctx, t, pos, NULL, ropes[k].n_dims, ropes[k].mode, ropes[k].n_ctx_orig,
                                              ropes[k].base, ropes[k].freq_scale, ropes[k].ext, ropes[k].attn,
                                              ropes[k].fast, ropes[k].slow);
        struct ggml_cgraph *gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, r);
        ggml_graph_compute_with_ctx(ctx, gf, 1);
        const float *o = r->data;
        printf("rope %d %d %d %.9g %.9g %.9g %.9g %.9g %.9g %llu %016llx %.9g %.9g %.9g\n", ropes[k].mode,
               ropes[k].n_dims, ropes[k].n_ctx_orig, ropes[k].base, ropes[k].freq_scale, ropes[k].ext, ropes[k].attn,
               ropes[k].fast, ropes[k].slow, (unsigned long long)(3000 + k),
               (unsigned long long)fnv(o, sizeof(float) * hd * nh * nt), o[hd * nh * 3 + 5], o[hd * nh * 5 + 70],
               o[hd * nh * 5 + 255]);
        ggml_free(ctx);
    }
    return 0;
}
