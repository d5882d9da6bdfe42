/* The category router's parts: features, training, the model file. */
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

#include "common/err.h"
#include "common/gguf.h"
#include <pthread.h>

#include "router/batcher.h"
#include "router/classifier.h"
#include "router/dataset.h"
#include "router/train.h"

static void test_features(void **state)
{
    (void)state;
    coe_features_params p = coe_features_defaults();
    coe_features a = {0}, b = {0};
    const char *t = "Hello, W\xC3\xB6rld!";
    assert_int_equal(coe_features_add_text(&p, t, strlen(t), 1.0f, &a), 0);
    assert_int_equal(coe_features_add_text(&p, "hello, w\xC3\xB6rld!", strlen(t), 1.0f, &b), 0);
    /* ASCII case does not matter; the same text gives the same features. */
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    /* words: hello , world ! -> 4 unigrams, 3 bigrams; char n-grams of <hello> (7 code
     * points: 5+4+3) and <wörld> (7: 5+4+3). */
    assert_int_equal(a.n, 4 + 3 + 12 + 12);
    for (size_t i = 0; i < a.n; i++)
        assert_true(a.ids[i] < p.buckets);
    /* A cut UTF-8 sequence at the end is not read past. */
    coe_features_reset(&a);
    assert_int_equal(coe_features_add_text(&p, "ab\xC3", 3, 0.5f, &a), 0);
    assert_true(a.n > 0);
    assert_true(a.w[0] == 0.5f);
    /* max_features bounds the work on a huge text. */
    p.max_features = 10;
    coe_features_reset(&a);
    char big[4000];
    memset(big, 'a', sizeof big);
    for (size_t i = 5; i < sizeof big; i += 6)
        big[i] = ' ';
    assert_int_equal(coe_features_add_text(&p, big, sizeof big, 1.0f, &a), 0);
    assert_true(a.n < 40);
    coe_features_free(&a);
    coe_features_free(&b);
}

/* A separable toy task: which animal a sentence is about. */
static void toy(coe_dataset *d, size_t n, uint64_t seed)
{
    static const char *const animals[] = {"cat", "dog", "fish"};
    static const char *const filler[] = {"the", "a", "big", "small", "quick", "lazy", "my", "your"};
    memset(d, 0, sizeof *d);
    d->n = n;
    d->texts = calloc(n, sizeof *d->texts);
    d->labels = calloc(n, sizeof *d->labels);
    d->n_categories = 3;
    d->categories = calloc(3, sizeof *d->categories);
    for (int c = 0; c < 3; c++)
        d->categories[c] = strdup(animals[c]);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        int c = (int)((seed >> 33) % 3);
        char t[128];
        snprintf(t, sizeof t, "%s %s %s sat", filler[(seed >> 20) % 8], filler[(seed >> 40) % 8], animals[c]);
        d->texts[i] = strdup(t);
        d->labels[i] = c;
    }
}

static coe_router *train_toy(uint64_t seed, int hidden)
{
    coe_dataset tr, dv;
    toy(&tr, 300, 1);
    toy(&dv, 60, 2);
    coe_train_params p = coe_train_defaults();
    p.features.buckets = 1 << 12;
    p.dim = 16;
    p.hidden = hidden;
    p.max_epochs = 20;
    p.lr = 0.05f; /* a tiny task: few steps per epoch */
    p.seed = seed;
    coe_router *m = NULL;
    assert_int_equal(coe_router_train(&tr, &dv, &p, 0x1234, NULL, NULL, &m, NULL), 0);
    coe_dataset_free(&tr);
    coe_dataset_free(&dv);
    return m;
}

static void test_training_learns_and_is_deterministic(void **state)
{
    (void)state;
    for (int hidden = 0; hidden <= 8; hidden += 8) {
        coe_router *a = train_toy(7, hidden), *b = train_toy(7, hidden);
        float pa[3], pb[3];
        const char *q = "my lazy dog sat";
        assert_int_equal(coe_router_classify_text(a, q, strlen(q), pa), 0);
        assert_int_equal(coe_router_classify_text(b, q, strlen(q), pb), 0);
        assert_memory_equal(pa, pb, sizeof pa); /* same seed, same bits */
        assert_true(pa[1] > 0.9f);
        /* The batched path (OpenBLAS) agrees with the single one. */
        coe_features f[2] = {{0}, {0}};
        coe_features_add_text(&a->fp, q, strlen(q), 1.0f, &f[0]);
        coe_features_add_text(&a->fp, "a big fish sat", 14, 1.0f, &f[1]);
        float batch[6];
        assert_int_equal(coe_router_classify_batch(a, (const coe_features *const[]){&f[0], &f[1]}, 2, batch), 0);
        for (int c = 0; c < 3; c++)
            assert_true(fabsf(batch[c] - pa[c]) < 1e-5f);
        assert_true(batch[3 + 2] > 0.9f);
        coe_features_free(&f[0]);
        coe_features_free(&f[1]);
        coe_router_close(&a);
        coe_router_close(&b);
    }
}

/* Saves w (freed) to path and expects coe_router_open to refuse it with expect. */
static void expect_refused(coe_gguf_writer **w, const char *path, const char *expect)
{
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_gguf_writer_save(*w, path, &d), 0);
    coe_gguf_writer_free(w);
    coe_router *r = NULL;
    assert_int_not_equal(coe_router_open(&r, path, &d), 0);
    assert_null(r);
    if (!d.data || !strstr(d.data, expect))
        fail_msg("expected '%s' in '%s'", expect, d.data ? d.data : "");
    coe_buf_free(&d);
}

static void test_file_round_trip_and_refusals(void **state)
{
    (void)state;
    coe_router *m = train_toy(3, 8);
    char path[] = "/tmp/coegate-router-XXXXXX.gguf";
    close(mkstemps(path, 5));
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_router_save(m, path, &d), 0);
    coe_router *r = NULL;
    assert_int_equal(coe_router_open(&r, path, &d), 0);
    assert_int_equal(r->n_classes, 3);
    assert_string_equal(r->categories[2], "fish");
    assert_int_equal(r->hidden, 8);
    assert_string_equal(r->data_hash, "0000000000001234");
    float p1[3], p2[3];
    assert_int_equal(coe_router_classify_text(m, "the cat sat", 11, p1), 0);
    assert_int_equal(coe_router_classify_text(r, "the cat sat", 11, p2), 0);
    assert_memory_equal(p1, p2, sizeof p1);
    coe_router_close(&r);

    /* A file with a missing key, and one with a tensor of the wrong shape. */
    coe_gguf_writer *w = coe_gguf_writer_new(32);
    coe_gguf_writer_kv_str(w, "general.architecture", "coegate-router");
    const char *const cats[] = {"a", "b"};
    coe_gguf_writer_kv_strings(w, "router.categories", cats, 2);
    expect_refused(&w, path, "key 'router.features.buckets' is missing");

    w = coe_gguf_writer_new(32);
    coe_gguf_writer_kv_str(w, "general.architecture", "coegate-router");
    coe_gguf_writer_kv_strings(w, "router.categories", cats, 2);
    uint32_t v = 16, one = 1, zero = 0, three = 3;
    float hw = 0.3f;
    coe_gguf_writer_kv(w, "router.features.buckets", COE_GGUF_U32, &v);
    coe_gguf_writer_kv(w, "router.features.word_ngrams", COE_GGUF_U32, &one);
    coe_gguf_writer_kv(w, "router.features.char_min", COE_GGUF_U32, &three);
    coe_gguf_writer_kv(w, "router.features.char_max", COE_GGUF_U32, &three);
    coe_gguf_writer_kv(w, "router.features.max_features", COE_GGUF_U32, &v);
    coe_gguf_writer_kv(w, "router.features.history_weight", COE_GGUF_F32, &hw);
    coe_gguf_writer_kv(w, "router.hidden", COE_GGUF_U32, &zero);
    static float weights[16 * 4];
    coe_gguf_writer_tensor(w, "router.embd", COE_GGML_F32, 2, (const uint64_t[]){4, 16}, weights);
    coe_gguf_writer_tensor(w, "router.w2", COE_GGML_F32, 2, (const uint64_t[]){4, 3}, weights); /* 3 != 2 classes */
    coe_gguf_writer_tensor(w, "router.b2", COE_GGML_F32, 1, (const uint64_t[]){2}, weights);
    expect_refused(&w, path, "tensor 'router.w2' is F32 with shape [4, 3]; F32 [4, 2] is needed");
    /* Not a router at all. */
    w = coe_gguf_writer_new(32);
    coe_gguf_writer_kv_str(w, "general.architecture", "llama");
    expect_refused(&w, path, "not a router file (general.architecture must be 'coegate-router')");
    coe_router_close(&m);
    unlink(path);
    coe_buf_free(&d);
}

static void test_ensemble(void **state)
{
    (void)state;
    coe_router *a = train_toy(11, 8), *b = train_toy(12, 8), *other = train_toy(13, 0);
    const char *q = "a quick fish sat";
    float pa[3], pb[3], pe[3], pf[3];
    assert_int_equal(coe_router_classify_text(a, q, strlen(q), pa), 0);
    assert_int_equal(coe_router_classify_text(b, q, strlen(q), pb), 0);
    assert_int_equal(coe_router_adopt(a, &b), 0);
    assert_null(b);
    assert_int_equal(a->n_more, 1);
    assert_int_equal(coe_router_adopt(a, &other), COE_EINVAL); /* another shape: refused */
    assert_int_equal(coe_router_classify_text(a, q, strlen(q), pe), 0);
    for (int c = 0; c < 3; c++)
        assert_true(fabsf(pe[c] - (pa[c] + pb[c]) / 2) < 1e-6f);
    /* The file keeps both members; the batched path averages the same way. */
    char path[] = "/tmp/coegate-ens-XXXXXX.gguf";
    close(mkstemps(path, 5));
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_router_save(a, path, &d), 0);
    coe_router *r = NULL;
    assert_int_equal(coe_router_open(&r, path, &d), 0);
    assert_int_equal(r->n_more, 1);
    assert_int_equal(coe_router_classify_text(r, q, strlen(q), pf), 0);
    assert_memory_equal(pe, pf, sizeof pe);
    coe_features f = {0};
    coe_features_add_text(&r->fp, q, strlen(q), 1.0f, &f);
    float pbatch[3];
    assert_int_equal(coe_router_classify_batch(r, (const coe_features *const[]){&f}, 1, pbatch), 0);
    for (int c = 0; c < 3; c++)
        assert_true(fabsf(pbatch[c] - pe[c]) < 1e-5f);
    coe_features_free(&f);
    coe_router_close(&r);
    coe_router_close(&a);
    coe_router_close(&other);
    unlink(path);
    coe_buf_free(&d);
}

/* The batcher, over the CPU's batched classifier: threads at once, each query's
 * probabilities its own (as the single-query path's, within 1e-5), queries gathered
 * into batches no larger than max_batch. */
typedef struct asker {
    coe_router_batcher *b;
    const coe_router *m;
    int id, bad;
} asker;

static int classify_batch(void *ctx, const coe_features *const *f, int n, float *probs, coe_buf *diag)
{
    (void)diag;
    return coe_router_classify_batch(ctx, f, n, probs);
}

static void *ask(void *arg)
{
    asker *a = arg;
    static const char *const words[] = {"quick", "fish", "sat", "cat", "dog", "ran", "blue", "sky"};
    for (int i = 0; i < 100; i++) {
        char q[128];
        snprintf(q, sizeof q, "%s %s %s", words[(a->id + i) % 8], words[(a->id * 3 + i * 5) % 8], words[i % 8]);
        coe_features f = {0};
        coe_features_add_text(&a->m->fp, q, strlen(q), 1.0f, &f);
        float got[3], want[3];
        if (coe_router_batcher_classify(a->b, &f, got) || coe_router_classify(a->m, &f, want))
            a->bad++;
        for (int c = 0; c < 3; c++)
            a->bad += !(fabsf(got[c] - want[c]) < 1e-5f);
        coe_features_free(&f);
    }
    return NULL;
}

static void test_batcher(void **state)
{
    (void)state;
    coe_router *m = train_toy(11, 8);
    for (int window = 0; window <= 2000; window += 2000) {
        coe_router_batcher *b = NULL;
        assert_int_equal(coe_router_batcher_open(&b, classify_batch, m, m->n_classes, window, 5), 0);
        enum { N = 12 };
        pthread_t t[N];
        asker a[N];
        for (int i = 0; i < N; i++) {
            a[i] = (asker){b, m, i, 0};
            assert_int_equal(pthread_create(&t[i], NULL, ask, &a[i]), 0);
        }
        for (int i = 0; i < N; i++) {
            pthread_join(t[i], NULL);
            assert_int_equal(a[i].bad, 0);
        }
        coe_batcher_stats st;
        coe_router_batcher_stats(b, &st);
        assert_int_equal(st.queries, N * 100);
        assert_true(st.largest >= 1 && st.largest <= 5);
        assert_true(st.batches >= N * 100 / 5);
        print_message("window %d us: %lld queries in %lld batches, largest %d\n", window, st.queries, st.batches,
                      st.largest);
        coe_router_batcher_close(&b);
        assert_null(b);
    }
    coe_router_close(&m);
}

static void test_dataset_errors(void **state)
{
    (void)state;
    char path[] = "/tmp/coegate-data-XXXXXX.jsonl";
    int fd = mkstemps(path, 6);
    const char *text = "{\"text\":\"a\",\"category\":\"x\"}\n\n[1]\n{\"text\":3,\"category\":\"x\"}\n"
                       "{\"text\":\"b\"}\n{\"text\":\"c\",\"category\":\"y\",\"scores\":{\"m\":\"yes\"}}\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    coe_dataset ds;
    coe_buf d = COE_BUF_INIT;
    assert_int_not_equal(coe_dataset_load(path, NULL, 0, NULL, &ds, &d), 0);
    char expect[512];
    snprintf(expect, sizeof expect,
             "%s:3: not a JSON object\n%s:4: \"text\" is missing or not a string\n"
             "%s:5: \"category\" is missing or not a string\n%s:6: scores.m is not a number\n",
             path, path, path, path);
    assert_string_equal(d.data, expect);
    unlink(path);
    coe_buf_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features),
        cmocka_unit_test(test_training_learns_and_is_deterministic),
        cmocka_unit_test(test_file_round_trip_and_refusals),
        cmocka_unit_test(test_ensemble),
        cmocka_unit_test(test_batcher),
        cmocka_unit_test(test_dataset_errors),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
