/* The gpu suite: the router's classifier on CUDA against the CPU's batched classifier
 * (coe_router_classify_batch): every probability within 1e-5 (the bound; the
 * embedding bag is bit-exact, the dense layers differ in the order of float sums),
 * the same top category. On the demo router over the shared routing data's test
 * queries (where ../shared is present), and on random routers of every shape: a
 * hidden layer or none, finer outputs folded into categories, an ensemble of three.
 * Skips, saying why, without a GPU. */
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
#include "router/classifier.h"
#include "router/classifier_cuda.h"
#include "gateway/config.h"
#include "gateway/request.h"
#include "router/dataset.h"
#include "router/features.h"
#include "router/route.h"

static uint64_t seed = 99;

/* Classifies texts on both sides in batches of up to 1024; fails on any probability
 * more than 1e-5 apart or a different top category. */
static void compare(const coe_router *m, char *const *texts, size_t n, const char *what)
{
    enum { BATCH = 1024 };
    coe_buf diag = COE_BUF_INIT;
    coe_router_gpu *g = NULL;
    if (coe_router_gpu_open(&g, m, 0, BATCH, (size_t)BATCH * 4096, &diag))
        fail_msg("%s", diag.data);
    coe_features *f = calloc(BATCH, sizeof *f);
    const coe_features **fp = calloc(BATCH, sizeof *fp);
    size_t C = (size_t)m->n_classes;
    float *cpu = malloc(BATCH * C * sizeof *cpu), *gpu = malloc(BATCH * C * sizeof *gpu);
    double worst = 0;
    for (size_t at = 0; at < n; at += BATCH) {
        int b = (int)(n - at < BATCH ? n - at : BATCH);
        for (int i = 0; i < b; i++) {
            coe_features_reset(&f[i]);
            assert_int_equal(coe_features_add_text(&m->fp, texts[at + (size_t)i], strlen(texts[at + (size_t)i]), 1.0f,
                                                   &f[i]),
                             0);
            fp[i] = &f[i];
        }
        assert_int_equal(coe_router_classify_batch(m, fp, b, cpu), 0);
        if (coe_router_gpu_classify(g, fp, b, gpu, &diag))
            fail_msg("%s", diag.data);
        for (int i = 0; i < b; i++) {
            int top_c = 0, top_g = 0;
            for (size_t c = 0; c < C; c++) {
                double d = fabs((double)cpu[i * C + c] - (double)gpu[i * C + c]);
                worst = d > worst ? d : worst;
                if (!(d <= 1e-5))
                    fail_msg("%s, query %zu, category %zu: CPU %.8f, GPU %.8f", what, at + (size_t)i, c,
                             cpu[i * C + c], gpu[i * C + c]);
                top_c = cpu[i * C + c] > cpu[i * C + (size_t)top_c] ? (int)c : top_c;
                top_g = gpu[i * C + c] > gpu[i * C + (size_t)top_g] ? (int)c : top_g;
            }
            /* the same route, unless the two best are closer than the bound */
            if (top_c != top_g && fabsf(cpu[i * C + (size_t)top_c] - cpu[i * C + (size_t)top_g]) > 2e-5f)
                fail_msg("%s, query %zu: category %d on the CPU, %d on the GPU", what, at + (size_t)i, top_c, top_g);
        }
    }
    print_message("%s: %zu queries, largest difference %.3g (%s)\n", what, n, worst, coe_router_gpu_device(g));
    for (int i = 0; i < BATCH; i++)
        coe_features_free(&f[i]);
    free(f);
    free(fp);
    free(cpu);
    free(gpu);
    coe_router_gpu_close(&g);
    coe_buf_free(&diag);
}

/* Random sentences from a small vocabulary, 1 to 100 words. */
static char **random_texts(size_t n)
{
    static const char *words[] = {"integral", "python", "sonnet", "the", "of", "derivative", "compile", "verse",
                                  "matrix", "loop", "rhyme", "proof", "function", "story", "prime", "array"};
    char **t = calloc(n, sizeof *t);
    for (size_t i = 0; i < n; i++) {
        int len = 1 + (int)(coe_splitmix64(&seed) % 100);
        t[i] = calloc((size_t)len * 12 + 1, 1);
        for (int w = 0; w < len; w++) {
            strcat(t[i], words[coe_splitmix64(&seed) % 16]);
            strcat(t[i], " ");
        }
    }
    t[n - 1][0] = '\0'; /* and an empty query: no features */
    return t;
}

static void free_texts(char **t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
}

static void test_demo_router(void **state)
{
    (void)state;
    coe_router *m = NULL;
    coe_buf diag = COE_BUF_INIT;
    /* the checkout: COEGATE_ROOT where the tests run elsewhere than they were built */
    const char *root = getenv("COEGATE_ROOT") ? getenv("COEGATE_ROOT") : COE_SOURCE_DIR;
    char demo[4096];
    snprintf(demo, sizeof demo, "%s/configs/demo-router.gguf", root);
    if (coe_router_open(&m, demo, &diag))
        fail_msg("%s", diag.data);
    size_t n = 3000;
    char **t = random_texts(n);
    compare(m, t, n, "demo router, random queries");
    free_texts(t, n);
    const char *shared = getenv("COEGATE_SHARED");
    const char *sets[] = {"clinc150.test.jsonl", "mmlu-pro.test.jsonl", "arena-hard.test.jsonl"};
    for (size_t k = 0; shared && k < 3; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/routing-data/%s", shared, sets[k]);
        coe_dataset d = {0};
        coe_buf_reset(&diag);
        if (coe_dataset_load(path, NULL, 0, NULL, &d, &diag)) {
            print_message("skipped %s: %s", path, diag.data);
            continue;
        }
        compare(m, d.texts, d.n, sets[k]);
        coe_dataset_free(&d);
    }
    coe_router_close(&m);
    coe_buf_free(&diag);
}

static void fill(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++)
        x[i] = coe_uniform(&seed, a);
}

static coe_router *random_router(int dim, int hidden, bool fine)
{
    char *cats[] = {"math", "code", "writing"};
    char *outs[] = {"algebra", "geometry", "c", "python", "rust", "poetry", "prose"};
    int out_cat[] = {0, 0, 1, 1, 1, 2, 2};
    coe_features_params fp = coe_features_defaults();
    fp.buckets = 1u << 14;
    coe_router *m = NULL;
    assert_int_equal(coe_router_new(&m, &fp, dim, hidden, cats, 3, fine ? outs : NULL, fine ? out_cat : NULL,
                                    fine ? 7 : 3),
                     0);
    int zn = coe_router_z(m);
    fill(m->embd, (size_t)fp.buckets * (size_t)dim, 1);
    if (hidden) {
        fill(m->w1, (size_t)hidden * (size_t)dim, 0.5f);
        fill(m->b1, (size_t)hidden, 0.1f);
    }
    fill(m->w2, (size_t)m->n_outputs * (size_t)zn, 0.5f);
    fill(m->b2, (size_t)m->n_outputs, 0.1f);
    return m;
}

static void test_random_routers(void **state)
{
    (void)state;
    size_t n = 2500; /* more than two batches */
    char **t = random_texts(n);
    const struct {
        int dim, hidden;
        bool fine;
        int members;
    } shapes[] = {{64, 0, false, 1}, {100, 37, true, 1}, {256, 128, true, 3}, {33, 0, false, 2}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        coe_router *m = random_router(shapes[k].dim, shapes[k].hidden, shapes[k].fine);
        for (int j = 1; j < shapes[k].members; j++) {
            coe_router *more = random_router(shapes[k].dim, shapes[k].hidden, shapes[k].fine);
            assert_int_equal(coe_router_adopt(m, &more), 0);
        }
        char what[96];
        snprintf(what, sizeof what, "random router %zu (dim %d, hidden %d, %s, %d members)", k, shapes[k].dim,
                 shapes[k].hidden, shapes[k].fine ? "finer outputs" : "categories", shapes[k].members);
        compare(m, t, n, what);
        coe_router_close(&m);
    }
    free_texts(t, n);
}

/* Limits: a batch beyond what the device was opened for is refused, not overrun. */
static void test_limits(void **state)
{
    (void)state;
    coe_router *m = random_router(16, 0, false);
    coe_router_gpu *g = NULL;
    coe_buf diag = COE_BUF_INIT;
    assert_int_equal(coe_router_gpu_open(&g, m, 0, 2, 8, &diag), 0);
    coe_features f = {0};
    const coe_features *fp[3] = {&f, &f, &f};
    float probs[9];
    assert_int_equal(coe_router_gpu_classify(g, fp, 3, probs, &diag), COE_ERANGE);
    assert_non_null(strstr(diag.data, "more than the 2"));
    coe_buf_reset(&diag);
    const char *text = "a query with rather more than eight features in it";
    assert_int_equal(coe_features_add_text(&m->fp, text, strlen(text), 1.0f, &f), 0);
    assert_int_equal(coe_router_gpu_classify(g, fp, 1, probs, &diag), COE_ERANGE);
    coe_features_free(&f);
    coe_router_gpu_close(&g);
    coe_router_close(&m);
    coe_buf_free(&diag);
}

/* The gateway's routing: the same configuration served with its router on the GPU
 * (batched) and on the CPU decides every request alike (expert, rule, category), the
 * confidences within 1e-5. */
static coe_config *served(const char *device)
{
    const char *root = getenv("COEGATE_ROOT") ? getenv("COEGATE_ROOT") : COE_SOURCE_DIR;
    char text[2048];
    snprintf(text, sizeof text,
             "{\"router\": {\"device\": \"%s\", \"batch_window_us\": 200},"
             "\"experts\": {\"m\": {\"kind\": \"echo\"}, \"c\": {\"kind\": \"echo\"}, \"w\": {\"kind\": \"echo\"},"
             "\"g\": {\"kind\": \"echo\", \"cost\": 0.2}},"
             "\"categories\": {\"math\": {\"experts\": {\"m\": 0.9, \"g\": 0.5}}, \"code\": {\"experts\": {\"c\": 0.9}},"
             "\"writing\": {\"experts\": {\"w\": 0.9}}},"
             "\"routes\": {\"auto\": {\"router\": \"%s/configs/demo-router.gguf\", \"default\": \"g\", \"threshold\": 0.5,"
             "\"cost_weight\": 0.1}}}",
             device, root);
    coe_config *c = NULL;
    coe_buf d = COE_BUF_INIT;
    if (coe_config_parse(text, strlen(text), "gpu-test.json", COE_CONFIG_SERVE, &c, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
    return c;
}

static void test_gateway_routes_alike(void **state)
{
    (void)state;
    coe_config *gpu = served("cuda"), *cpu = served("cpu");
    assert_non_null(gpu->routes[0].gpu);
    assert_null(cpu->routes[0].gpu);
    size_t n = 500;
    char **t = random_texts(n);
    for (size_t i = 0; i < n; i++) {
        char body[4096];
        snprintf(body, sizeof body, "{\"model\": \"auto\", \"messages\": [{\"role\": \"user\", \"content\": \"%s\"}]}",
                 t[i]);
        coe_request *req = NULL;
        coe_api_error err;
        assert_int_equal(coe_request_parse(body, strlen(body), COE_EP_CHAT, 64, &req, &err), 0);
        coe_route_decision a, b;
        assert_int_equal(coe_route_resolve(gpu, req, &a), 0);
        assert_int_equal(coe_route_resolve(cpu, req, &b), 0);
        if (a.expert != b.expert || strcmp(a.rule, b.rule) || a.category != b.category ||
            fabsf(a.confidence - b.confidence) > 1e-5f)
            fail_msg("query %zu: GPU %d %s %d %.6f, CPU %d %s %d %.6f", i, a.expert, a.rule, a.category,
                     a.confidence, b.expert, b.rule, b.category, b.confidence);
        coe_request_free(&req);
    }
    free_texts(t, n);
    coe_config_unref(&gpu);
    coe_config_unref(&cpu);
}

int main(void)
{
    if (coe_cuda_device_count() == 0) {
        printf("skipped: %s\n", COE_HAVE_CUDA ? "no GPU: CUDA finds no device" : "this build has no CUDA (no nvcc)");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo_router),
        cmocka_unit_test(test_random_routers),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_gateway_routes_alike),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
