/* Token-level fusion: the fused logits, the sequence API's lazy catch-up, the selector
 * file and the vocabulary check of fusion groups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "experts/engine.h"
#include "experts/forge.h"
#include "experts/fusion.h"
#include "experts/sched.h"
#include "gateway/config.h"
#include "tmpdir.h"

static char dir[64];

static void forge(const char *name, int n_vocab, uint64_t seed, char *path, size_t n)
{
    coe_forge_spec s = coe_forge_small(COE_ARCH_LLAMA);
    s.n_vocab = n_vocab;
    s.seed = seed;
    snprintf(path, n, "%s/%s.gguf", dir, name);
    coe_buf d = COE_BUF_INIT;
    if (coe_forge_write(&s, path, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
}

static int setup(void **state)
{
    (void)state;
    return test_tmpdir_make(dir, sizeof dir, "fusion");
}

static int teardown(void **state)
{
    (void)state;
    return test_tmpdir_remove(dir);
}

/* fusionroute is z_k + lambda z_router, select is z_k, both bit for bit; mix is
 * log sum_k p_k softmax(z_k), checked against a plain double computation. */
static void test_fused_logits(void **state)
{
    (void)state;
    enum { V = 1000, K = 3 };
    float *z[K], router[V], out[V], expect[V];
    uint64_t x = 12345;
    for (int k = 0; k < K; k++) {
        z[k] = malloc(V * sizeof(float));
        for (int v = 0; v < V; v++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            z[k][v] = (float)((double)(x >> 11) / 9007199254740992.0 * 20 - 10);
        }
    }
    for (int v = 0; v < V; v++)
        router[v] = z[0][(v * 7) % V] * 0.5f - 1;
    const float *rows[K] = {z[0], z[1], z[2]};
    float probs[K] = {0.2f, 0.5f, 0.3f};
    const float lambda = 0.37f;
    coe_fusion_logits(COE_FUSION_ROUTE, lambda, V, K, rows, probs, 1, router, out);
    for (int v = 0; v < V; v++)
        expect[v] = z[1][v] + lambda * router[v];
    assert_memory_equal(out, expect, sizeof out);
    /* select reads only the selected row */
    const float *only[K] = {NULL, NULL, z[2]};
    coe_fusion_logits(COE_FUSION_SELECT, lambda, V, K, only, probs, 2, router, out);
    assert_memory_equal(out, z[2], sizeof out);
    coe_fusion_logits(COE_FUSION_MIX, lambda, V, K, rows, probs, 1, router, out);
    double total = 0;
    for (int v = 0; v < V; v++) {
        double p = 0;
        for (int k = 0; k < K; k++) {
            double max = -INFINITY, sum = 0;
            for (int u = 0; u < V; u++)
                max = z[k][u] > max ? z[k][u] : max;
            for (int u = 0; u < V; u++)
                sum += exp(z[k][u] - max);
            p += probs[k] * exp(z[k][v] - max) / sum;
        }
        assert_true(fabs(out[v] - log(p)) < 1e-5 * fabs(log(p)) + 1e-6);
        total += exp(out[v]);
    }
    assert_true(fabs(total - 1) < 1e-5);
    for (int k = 0; k < K; k++)
        free(z[k]);
}

/* The selector: softmax(W h + b) and its argmax, written and read back. */
static void test_selector_file(void **state)
{
    (void)state;
    char *names[3] = {"math", "code", "writing"};
    coe_selector *s;
    assert_int_equal(coe_selector_new(&s, names, 3, 4), 0);
    float w[12] = {1, 0, 0, 0, 0, 2, 0, 0, 0, 0, -1, 3};
    memcpy(s->w, w, sizeof w);
    s->b[0] = 0.5f;
    s->lambda = 0.25f;
    float h[4] = {0.1f, 0.2f, 0.3f, 0.4f}, probs[3], again[3];
    int best = coe_selector_probs(s, h, probs);
    assert_int_equal(best, 2); /* z = (0.6, 0.4, 0.9) */
    assert_true(fabs(probs[0] + probs[1] + probs[2] - 1) < 1e-6);
    char path[128];
    snprintf(path, sizeof path, "%s/sel.gguf", dir);
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_selector_save(s, path, "unit test", &d), 0);
    coe_selector *r;
    if (coe_selector_open(&r, path, &d))
        fail_msg("%s", d.data);
    assert_int_equal(r->n_experts, 3);
    assert_string_equal(r->experts[2], "writing");
    assert_true(r->lambda == 0.25f);
    assert_int_equal(coe_selector_probs(r, h, again), 2);
    assert_memory_equal(probs, again, sizeof probs);
    /* A model file is not a selector. */
    char model[128];
    forge("not-a-selector", 512, 1, model, sizeof model);
    coe_selector *bad = NULL;
    coe_buf_reset(&d);
    assert_int_not_equal(coe_selector_open(&bad, model, &d), 0);
    assert_non_null(strstr(d.data, "not a fusion selector"));
    coe_buf_free(&d);
    coe_selector_close(&s);
    coe_selector_close(&r);
}

/* ---- the sequence API ---- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    float *logits; /* copy of the last callback's */
    int n_vocab;
    int released;
} waiter;

static void on_logits(void *ctx, coe_seq *q, const float *logits, const float *hidden, const char *error)
{
    (void)q, (void)hidden;
    waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    if (!error)
        memcpy(w->logits, logits, (size_t)w->n_vocab * sizeof *logits);
    w->done++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void on_release(void *ctx)
{
    waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->released++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Holds the driver thread inside a sequence's callback until the test opens it, so
 * that feeds made meanwhile are certainly still pending. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inside, open, released;
} gate;

static void on_gate(void *ctx, coe_seq *q, const float *logits, const float *hidden, const char *error)
{
    (void)q, (void)logits, (void)hidden, (void)error;
    gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->inside = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void on_gate_release(void *ctx)
{
    gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->released = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait(gate *g, int *flag)
{
    pthread_mutex_lock(&g->mu);
    while (!*flag)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void wait_done(waiter *w, int n)
{
    pthread_mutex_lock(&w->mu);
    while (w->done < n)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* A sequence stepped one token at a time (eager) and one that skips steps and catches
 * up on what it missed in one feed (lazy), on the same scheduler: the same logits,
 * bit for bit, at every point where both have read the same tokens. */
static void test_lazy_catch_up(void **state)
{
    (void)state;
    char path[128];
    forge("seq", 512, 3, path, sizeof path);
    coe_model *m;
    coe_buf d = COE_BUF_INIT;
    if (coe_model_open(&m, path, &d))
        fail_msg("%s", d.data);
    coe_sched_opts o = {2, 64, 4, 4, COE_DEVICE_CPU};
    coe_sched *s;
    assert_int_equal(coe_sched_open(&s, m, &o, NULL), 0);
    const int V = m->n_vocab;
    waiter eager = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, malloc(V * sizeof(float)), V, 0};
    waiter lazy = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, malloc(V * sizeof(float)), V, 0};
    coe_seq *a, *b;
    assert_int_equal(coe_seq_open(s, &a, on_logits, on_release, &eager), 0);
    assert_int_equal(coe_seq_open(s, &b, on_logits, on_release, &lazy), 0);
    int32_t toks[12] = {1, 300, 301, 450, 17, 60, 99, 5, 42, 7, 8, 9};
    /* The driver held in a third sequence's callback: feeds wait. */
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    coe_seq *held;
    assert_int_equal(coe_seq_open(s, &held, on_gate, on_gate_release, &g), 0);
    assert_int_equal(coe_seq_feed(held, toks, 1), 0);
    gate_wait(&g, &g.inside);
    /* The prompt (4 tokens) to both; then b reads the rest in catch-ups of 3, 1 and 4. */
    assert_int_equal(coe_seq_feed(a, toks, 4), 0);
    assert_int_equal(coe_seq_feed(b, toks, 4), 0);
    assert_int_equal(coe_seq_feed(b, toks, 1), COE_EBUSY); /* one feed at a time */
    pthread_mutex_lock(&g.mu);
    g.open = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    coe_seq_close(held);
    gate_wait(&g, &g.released);
    wait_done(&eager, 1);
    wait_done(&lazy, 1);
    assert_memory_equal(eager.logits, lazy.logits, V * sizeof(float));
    const int stops[3] = {7, 8, 12};
    int fed_b = 4;
    for (int i = 4, stop = 0; i < 12; i++) {
        assert_int_equal(coe_seq_feed(a, toks + i, 1), 0);
        wait_done(&eager, i - 2);
        if (i + 1 == stops[stop]) {
            assert_int_equal(coe_seq_feed(b, toks + fed_b, i + 1 - fed_b), 0);
            wait_done(&lazy, 2 + stop);
            fed_b = i + 1;
            stop++;
            assert_memory_equal(eager.logits, lazy.logits, V * sizeof(float));
        }
    }
    assert_int_equal(coe_seq_len(a), 12);
    assert_int_equal(coe_seq_len(b), 12);
    /* Past the context: refused, nothing appended. */
    int32_t many[60] = {0};
    assert_int_equal(coe_seq_feed(a, many, 60), COE_ERANGE);
    assert_int_equal(coe_seq_len(a), 12);
    coe_sched_stats st;
    coe_sched_stats_get(s, &st);
    assert_int_equal(st.active, 2);
    coe_seq_close(a);
    coe_seq_close(b);
    pthread_mutex_lock(&eager.mu);
    while (!eager.released)
        pthread_cond_wait(&eager.cv, &eager.mu);
    pthread_mutex_unlock(&eager.mu);
    coe_sched_close(&s);
    assert_int_equal(lazy.released, 1);
    free(eager.logits);
    free(lazy.logits);
    coe_model_close(&m);
    coe_buf_free(&d);
}

/* Beyond max_batch + max_queue open sequences: busy. Closing the scheduler releases
 * what is still open. */
static void test_busy_and_close(void **state)
{
    (void)state;
    char path[128];
    forge("busy", 512, 4, path, sizeof path);
    coe_model *m;
    coe_buf d = COE_BUF_INIT;
    if (coe_model_open(&m, path, &d))
        fail_msg("%s", d.data);
    coe_sched_opts o = {1, 32, 1, 1, COE_DEVICE_CPU};
    coe_sched *s;
    assert_int_equal(coe_sched_open(&s, m, &o, NULL), 0);
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, malloc(m->n_vocab * sizeof(float)),
                m->n_vocab, 0};
    coe_seq *a, *b, *c;
    assert_int_equal(coe_seq_open(s, &a, on_logits, on_release, &w), 0);
    assert_int_equal(coe_seq_open(s, &b, on_logits, on_release, &w), 0);
    assert_int_equal(coe_seq_open(s, &c, on_logits, on_release, &w), COE_EBUSY);
    coe_sched_stats st;
    coe_sched_stats_get(s, &st);
    assert_int_equal(st.active, 1);
    assert_int_equal(st.queued, 1);
    coe_sched_close(&s);
    assert_int_equal(w.released, 2);
    free(w.logits);
    coe_model_close(&m);
    coe_buf_free(&d);
}

/* A fusion group whose expert has another vocabulary is refused, naming the token id. */
static void test_vocabulary_mismatch(void **state)
{
    (void)state;
    char r[128], same[128], other[128], sel[128];
    forge("router", 512, 5, r, sizeof r);
    forge("same", 512, 6, same, sizeof same);
    forge("other", 600, 7, other, sizeof other);
    char *names[2] = {"same", "other"};
    coe_selector *s;
    assert_int_equal(coe_selector_new(&s, names, 2, 64), 0);
    snprintf(sel, sizeof sel, "%s/group.gguf", dir);
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_selector_save(s, sel, NULL, &d), 0);
    coe_selector_close(&s);
    char text[2048];
    snprintf(text, sizeof text,
             "{\"experts\": {\"router\": {\"kind\": \"local\", \"path\": \"%s\"},"
             " \"same\": {\"kind\": \"local\", \"path\": \"%s\"}, \"other\": {\"kind\": \"local\", \"path\": \"%s\"}},"
             " \"fusions\": {\"group\": {\"experts\": [\"same\", \"other\"], \"router\": \"router\","
             " \"selector\": \"%s\"}}}", r, same, other, sel);
    coe_config *c = NULL;
    assert_int_not_equal(coe_config_parse(text, strlen(text), "t.json", COE_CONFIG_CHECK, &c, &d), 0);
    assert_non_null(strstr(d.data, "t.json: fusions.group.experts: the vocabulary of 'other' differs from the "
                                   "router 'router''s at token id 512"));
    /* The same group without the odd one loads, and is served as an expert of kind fusion. */
    coe_buf_reset(&d);
    char *one[1] = {"same"};
    assert_int_equal(coe_selector_new(&s, one, 1, 64), 0);
    assert_int_equal(coe_selector_save(s, sel, NULL, &d), 0);
    coe_selector_close(&s);
    snprintf(text, sizeof text,
             "{\"experts\": {\"router\": {\"kind\": \"local\", \"path\": \"%s\"},"
             " \"same\": {\"kind\": \"local\", \"path\": \"%s\"}},"
             " \"fusions\": {\"group\": {\"experts\": [\"same\"], \"router\": \"router\", \"selector\": \"%s\","
             " \"mode\": \"select\"}}}", r, same, sel);
    if (coe_config_parse(text, strlen(text), "t.json", COE_CONFIG_CHECK, &c, &d))
        fail_msg("%s", d.data);
    int i = coe_config_find_expert(c, "group");
    assert_true(i >= 0);
    assert_int_equal(c->experts[i].kind, COE_EXPERT_FUSION);
    assert_int_equal(c->experts[i].fusion_mode, COE_FUSION_SELECT);
    coe_config_unref(&c);
    /* A mode that does not exist, and an expert that is not local. */
    coe_buf_reset(&d);
    snprintf(text, sizeof text,
             "{\"experts\": {\"router\": {\"kind\": \"local\", \"path\": \"%s\"}, \"e\": {\"kind\": \"echo\"}},"
             " \"fusions\": {\"group\": {\"experts\": [\"e\"], \"router\": \"router\", \"selector\": \"%s\","
             " \"mode\": \"vote\"}}}", r, sel);
    assert_int_not_equal(coe_config_parse(text, strlen(text), "t.json", COE_CONFIG_CHECK, &c, &d), 0);
    assert_non_null(strstr(d.data, "t.json: fusions.group.experts[0]: \"e\" is not a local expert"));
    assert_non_null(strstr(d.data, "t.json: fusions.group.mode: unknown mode \"vote\""));
    coe_buf_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fused_logits),
        cmocka_unit_test(test_selector_file),
        cmocka_unit_test(test_lazy_catch_up),
        cmocka_unit_test(test_busy_and_close),
        cmocka_unit_test(test_vocabulary_mismatch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
