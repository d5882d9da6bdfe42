/* The committed real experts (models/) compute what PyTorch computed when it trained
 * them. scripts/train_experts.py wrote PyTorch's logits, on the exported weights
 * (exactly the file's Q8_0 values, dequantized), at every position of the first two
 * dev texts of each domain (models/reference/). This runs the same tokens through the
 * engine twice: on an F32 copy of each model (the file's weights dequantized, made
 * here) and on the Q8_0 file itself. Trained weights have outlier activations that
 * random models never show, so this checks what ../shared/conformance cannot.
 * The texts' tokens must also be what coegate's tokenizer makes of the dev texts, which
 * come from ../shared/corpora (skips, 77, without it). And every dev text must be
 * tokenized as llama.cpp tokenizes it with this vocabulary: its token count and a hash
 * of its ids, recorded by scripts/llama-cpp-tokens.mjs with llama.cpp's own tokenizer,
 * in models/reference/llama-cpp-tokens.jsonl.
 *
 * The Q8_0 file is compared with a second reference: the engine, like llama.cpp, rounds
 * each activation vector to Q8_0 (8 bits a value, a scale per 32) before every product
 * with a Q8_0 matrix, which moves logits by up to a few tenths on these models and can
 * flip a near-tied MoE routing choice. So the script also ran PyTorch with exactly that
 * rounding (codes round-half-even of x * 127/amax, the scale as F16) and kept the 16
 * largest logits of every position; those ids and values must match.
 *
 * Tolerances. F32 copy: 5e-5 on every logit (measured 1.6e-5 at most, over the four
 * models); the only difference from PyTorch is the order of float sums. Q8_0 file: an activation
 * within float noise of a code boundary rounds to one code in PyTorch and the
 * neighbouring one here, and one code step moves later logits measurably (a lot where
 * it flips a MoE routing choice). The script measured, at every position, how far its
 * own logits move when every activation is nudged by 1e-5 (relative) before rounding
 * ("q8_0_noise"); at each position the engine must agree within twice that, and never
 * worse than 1e-2 is asked. The top token must be the same at every position unless
 * the reference's top two are within the tolerance. The printed figures give the
 * measured maxima and the tolerances used. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/gguf.h"
#include "common/hash.h"
#include "experts/engine.h"
#include "experts/nll.h"
#include "experts/quant.h"
#include "experts/tokenizer.h"
#include "tests/conformance/shared.h"

#define TOL 5e-5

static const char *models_dir;
static cJSON *ref;

/* The dev texts of each domain, grouped by row id (so names[group[i]] is row i's id),
 * loaded once. */
static const char *const domains[] = {"math", "code", "writing"};
static coe_textset dev[3];

static void load_dev(const char *corpora)
{
    for (int k = 0; k < 3; k++) {
        char file[4096 + 32]; /* the folder (at most 4095) and a file name */
        coe_buf d = COE_BUF_INIT;
        snprintf(file, sizeof file, "%s/%s.dev.jsonl", corpora, domains[k]);
        if (coe_textset_load(file, "id", 0, &dev[k], &d)) {
            fprintf(stderr, "%s", d.data);
            exit(1);
        }
        coe_buf_free(&d);
    }
}

/* The text of dev row id of domain; fails the test when there is none. */
static const char *dev_text(const char *domain, const char *id)
{
    for (int k = 0; k < 3; k++)
        if (strcmp(domains[k], domain) == 0)
            for (size_t i = 0; i < dev[k].n; i++)
                if (strcmp(dev[k].names[dev[k].group[i]], id) == 0)
                    return dev[k].texts[i];
    fail_msg("../shared/corpora/%s.dev.jsonl has no row '%s'", domain, id);
    return NULL;
}

static cJSON *load_json(const char *path)
{
    coe_buf b = COE_BUF_INIT;
    coe_buf d = COE_BUF_INIT;
    if (coe_buf_read_file(&b, path, 64u << 20, &d))
        fail_msg("%s", d.data);
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    assert_non_null(j);
    coe_buf_free(&b);
    coe_buf_free(&d);
    return j;
}

/* A copy of g (in memory) with every matrix dequantized to F32. */
static void f32_copy(const coe_gguf *g, coe_buf *out)
{
    coe_gguf_writer *w = coe_gguf_writer_new(g->alignment);
    assert_non_null(w);
    for (uint64_t i = 0; i < g->n_kvs; i++) {
        const coe_gguf_kv *kv = &g->kvs[i];
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
        const coe_gguf_value *v = &kv->value;
        int rc = 0;
        if (v->type == COE_GGUF_STRING) {
            char *s = strndup(v->str.ptr, v->str.len);
            rc = coe_gguf_writer_kv_str(w, key, s);
            free(s);
        } else if (v->type == COE_GGUF_ARRAY && v->elem_type == COE_GGUF_STRING) {
            char **s = calloc(v->count, sizeof *s);
            for (uint64_t k = 0; k < v->count; k++)
                s[k] = strndup(v->strings[k].ptr, v->strings[k].len);
            rc = coe_gguf_writer_kv_strings(w, key, (const char *const *)s, v->count);
            for (uint64_t k = 0; k < v->count; k++)
                free(s[k]);
            free(s);
        } else if (v->type == COE_GGUF_ARRAY) {
            rc = coe_gguf_writer_kv_array(w, key, v->elem_type, v->data, v->count);
        } else {
            rc = coe_gguf_writer_kv(w, key, v->type, v->data);
        }
        assert_int_equal(rc, 0);
    }
    float **blobs = calloc(g->n_tensors, sizeof *blobs);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const coe_gguf_tensor *t = &g->tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        blobs[i] = malloc(t->n_elements * sizeof(float));
        int64_t cols = (int64_t)t->dims[0], rows = (int64_t)(t->n_elements / t->dims[0]);
        size_t row_bytes = coe_row_bytes(t->type, cols);
        for (int64_t r = 0; r < rows; r++)
            coe_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * row_bytes, blobs[i] + r * cols, cols);
        assert_int_equal(coe_gguf_writer_tensor(w, name, COE_GGML_F32, t->n_dims, t->dims, blobs[i]), 0);
    }
    assert_int_equal(coe_gguf_writer_bytes(w, out), 0);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        free(blobs[i]);
    free(blobs);
    coe_gguf_writer_free(&w);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Runs every reference text through m and compares with the reference: all logits
 * (want: texts x positions x V) or, with top16 (per text, per position, 16 [id, value]
 * pairs), those. */
static void compare(const char *name, const char *kind, coe_model *m, const float *want, const cJSON *top16,
                    const cJSON *noise)
{
    double tol_max = 0, tol_sum = 0;
    coe_engine *e = coe_engine_new(m, 0, 256);
    assert_non_null(e);
    int V = m->n_vocab;
    const cJSON *texts = cJSON_GetObjectItem(ref, "texts");
    double worst = 0;
    int n_pos = 0, top_diff = 0, text_no = 0;
    size_t off = 0;
    for (const cJSON *t = texts->child; t; t = t->next) {
        const cJSON *toks = cJSON_GetObjectItem(t, "tokens");
        int n = cJSON_GetArraySize(toks);
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        coe_kv **seq = malloc((size_t)n * sizeof *seq);
        bool *all = malloc((size_t)n * sizeof *all);
        float *got = malloc((size_t)n * (size_t)V * sizeof *got);
        coe_kv *kv = coe_kv_new(m);
        for (int i = 0; i < n; i++) {
            ids[i] = (int32_t)cJSON_GetArrayItem(toks, i)->valuedouble;
            seq[i] = kv;
            all[i] = true;
        }
        coe_batch b = {n, ids, seq, all, NULL};
        coe_buf d = COE_BUF_INIT;
        if (coe_engine_forward(e, &b, got, &d))
            fail_msg("%s", d.data);
        const cJSON *text_top = top16 ? cJSON_GetArrayItem(top16, text_no) : NULL;
        for (int p = 0; p < n; p++, n_pos++) {
            const float *g = got + (size_t)p * (size_t)V;
            int a = argmax(g, V), w;
            if (!top16) {
                const float *r = want + off + (size_t)p * (size_t)V;
                for (int i = 0; i < V; i++) {
                    double diff = fabs((double)g[i] - r[i]);
                    if (!(diff <= TOL))
                        fail_msg("%s (%s), text %s position %d token %d: %.6f, PyTorch %.6f", name, kind,
                                 cJSON_GetObjectItem(t, "id")->valuestring, p, i, g[i], r[i]);
                    worst = diff > worst ? diff : worst;
                }
                w = argmax(r, V);
                if (a != w && r[w] - r[a] > TOL)
                    fail_msg("%s (%s), position %d: top token %d, PyTorch's %d", name, kind, p, a, w);
            } else {
                const cJSON *pos = cJSON_GetArrayItem(text_top, p);
                const cJSON *nz = cJSON_GetArrayItem(cJSON_GetArrayItem(noise, text_no), p);
                assert_true(cJSON_IsNumber(nz) && nz->valuedouble >= 0 && isfinite(nz->valuedouble));
                double tol_q8 = fmax(1e-2, 2 * nz->valuedouble);
                tol_max = fmax(tol_max, tol_q8);
                tol_sum += tol_q8;
                assert_int_equal(cJSON_GetArraySize(pos), 16);
                double top_val = 0;
                w = -1;
                for (const cJSON *pair = pos->child; pair; pair = pair->next) {
                    int id = (int)cJSON_GetArrayItem(pair, 0)->valuedouble;
                    double ref_val = cJSON_GetArrayItem(pair, 1)->valuedouble;
                    assert_true(id >= 0 && id < V);
                    if (w < 0) {
                        w = id;
                        top_val = ref_val;
                    }
                    double diff = fabs((double)g[id] - ref_val);
                    if (!(diff <= tol_q8))
                        fail_msg("%s (%s), text %s position %d token %d: %.6f, PyTorch %.6f", name, kind,
                                 cJSON_GetObjectItem(t, "id")->valuestring, p, id, g[id], ref_val);
                    worst = diff > worst ? diff : worst;
                }
                if (a != w && top_val - g[a] > tol_q8)
                    fail_msg("%s (%s), position %d: top token %d, PyTorch's %d", name, kind, p, a, w);
            }
            top_diff += a != w;
        }
        text_no++;
        off += (size_t)n * (size_t)V;
        coe_buf_free(&d);
        coe_kv_free(&kv);
        free(ids);
        free(seq);
        free(all);
        free(got);
    }
    if (top16)
        print_message("%s %s: %d positions x 16 logits, max |difference| %.2e (tolerance per position: mean %.2e, "
                      "max %.2e); top token differs at %d (near-ties)\n",
                      name, kind, n_pos, worst, tol_sum / n_pos, tol_max, top_diff);
    else
        print_message("%s %s: %d positions x %d logits, max |difference| %.2e (tolerance %.0e); top token differs "
                      "at %d (near-ties)\n",
                      name, kind, n_pos, V, worst, TOL, top_diff);
    coe_engine_free(&e);
}

static void check_model(const char *name)
{
    const cJSON *entry = cJSON_GetObjectItem(cJSON_GetObjectItem(ref, "models"), name);
    if (!entry)
        fail_msg("models/reference/reference.json has no model '%s'", name);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", models_dir, cJSON_GetObjectItem(entry, "logits")->valuestring);
    coe_buf logits = COE_BUF_INIT;
    assert_int_equal(coe_buf_read_file(&logits, path, 256u << 20, NULL), 0);
    snprintf(path, sizeof path, "%s/%s", models_dir, cJSON_GetObjectItem(entry, "gguf")->valuestring);
    coe_buf d = COE_BUF_INIT;
    coe_model *m = NULL;
    if (coe_model_open(&m, path, &d))
        fail_msg("%s", d.data);

    /* The texts' tokens are coegate's own tokenization of the dev texts. */
    coe_vocab v;
    if (coe_vocab_load(&v, m->gguf, &d))
        fail_msg("%s", d.data);
    const cJSON *texts = cJSON_GetObjectItem(ref, "texts");
    size_t expect = 0;
    for (const cJSON *t = texts->child; t; t = t->next) {
        const char *id = cJSON_GetObjectItem(t, "id")->valuestring;
        const char *text = dev_text(cJSON_GetObjectItem(t, "domain")->valuestring, id);
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        assert_int_equal(coe_tokenize_prompt(&v, text, strlen(text), &ids, &n, &cap), 0);
        const cJSON *toks = cJSON_GetObjectItem(t, "tokens");
        int k = cJSON_GetArraySize(toks);
        assert_true((size_t)k <= n);
        for (int i = 0; i < k; i++)
            if (ids[i] != (int32_t)cJSON_GetArrayItem(toks, i)->valuedouble)
                fail_msg("%s: token %d of %s is %d, the training script's %d", name, i, id, ids[i],
                         (int)cJSON_GetArrayItem(toks, i)->valuedouble);
        expect += (size_t)k * (size_t)m->n_vocab * sizeof(float);
        free(ids);
    }
    assert_int_equal(logits.len, expect);
    coe_vocab_free(&v);

    coe_buf f32 = COE_BUF_INIT;
    f32_copy(m->gguf, &f32);
    coe_gguf *g = NULL;
    coe_model *mf = NULL;
    if (coe_gguf_open_memory(&g, f32.data, f32.len, "f32 copy", &d) || coe_model_from_gguf(&mf, g, &d))
        fail_msg("%s", d.data);
    compare(name, "F32 copy", mf, (const float *)logits.data, NULL, 0);
    coe_model_close(&mf);
    const cJSON *top16 = cJSON_GetObjectItem(entry, "q8_0_top16");
    assert_int_equal(cJSON_GetArraySize(top16), cJSON_GetArraySize(texts));
    const cJSON *noise = cJSON_GetObjectItem(entry, "q8_0_noise");
    assert_int_equal(cJSON_GetArraySize(noise), cJSON_GetArraySize(texts));
    compare(name, "Q8_0 file", m, NULL, top16, noise);
    coe_model_close(&m);
    coe_buf_free(&f32);
    coe_buf_free(&logits);
    coe_buf_free(&d);
}

/* Every dev text, tokenized by coegate (plain text, no BOS), against llama.cpp's. */
static void llama_cpp_tokenization(void **state)
{
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/generalist.gguf", models_dir);
    coe_buf d = COE_BUF_INIT;
    coe_gguf *g = NULL;
    coe_vocab v;
    if (coe_gguf_open(&g, path, &d) || coe_vocab_load(&v, g, &d))
        fail_msg("%s", d.data);
    snprintf(path, sizeof path, "%s/reference/llama-cpp-tokens.jsonl", models_dir);
    coe_buf raw = COE_BUF_INIT;
    assert_int_equal(coe_buf_read_file(&raw, path, 16u << 20, NULL), 0);
    int n_rows = 0, n_tokens = 0;
    const char *line = raw.data;
    for (int k = 0; k < 3; k++) {
        const coe_textset *want = &dev[k];
        for (size_t i = 0; i < want->n; i++, n_rows++) {
            const char *end = line ? strchr(line, '\n') : NULL;
            if (!end)
                fail_msg("%s ends before %s.dev.jsonl's row %zu", path, domains[k], i + 1);
            cJSON *r = cJSON_ParseWithLength(line, (size_t)(end - line));
            line = end + 1;
            const char *id = want->names[want->group[i]];
            if (!r || strcmp(cJSON_GetObjectItem(r, "id")->valuestring, id) != 0)
                fail_msg("%s: row %d is not %s", path, n_rows + 1, id);
            int32_t *ids = NULL;
            size_t n = 0, cap = 0;
            assert_int_equal(coe_tokenize(&v, want->texts[i], strlen(want->texts[i]), &ids, &n, &cap), 0);
            char hex[17];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)coe_fnv1a64(COE_FNV_OFFSET, ids, n * sizeof *ids));
            int want_n = (int)cJSON_GetObjectItem(r, "n")->valuedouble;
            if ((int)n != want_n || strcmp(hex, cJSON_GetObjectItem(r, "fnv")->valuestring) != 0)
                fail_msg("%s: %zu tokens (hash %s), llama.cpp %d (hash %s)", id, n, hex, want_n,
                         cJSON_GetObjectItem(r, "fnv")->valuestring);
            n_tokens += (int)n;
            free(ids);
            cJSON_Delete(r);
        }
    }
    print_message("%d dev texts, %d tokens: the same as llama.cpp's\n", n_rows, n_tokens);
    coe_buf_free(&raw);
    coe_buf_free(&d);
    coe_vocab_free(&v);
    coe_gguf_close(&g);
}

static void math_expert(void **state)
{
    (void)state;
    check_model("math");
}

static void code_expert(void **state)
{
    (void)state;
    check_model("code");
}

static void writing_expert(void **state)
{
    (void)state;
    check_model("writing");
}

static void generalist(void **state)
{
    (void)state;
    check_model("generalist");
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/corpora", shared_dir_or_skip("corpora"));
    load_dev(dir);
    models_dir = getenv("COEGATE_MODELS");
    assert_non_null(models_dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/reference/reference.json", models_dir);
    ref = load_json(path);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama_cpp_tokenization),
        cmocka_unit_test(math_expert),
        cmocka_unit_test(code_expert),
        cmocka_unit_test(writing_expert),
        cmocka_unit_test(generalist),
    };
    int rc = cmocka_run_group_tests_name("experts-shared", tests, NULL, NULL);
    cJSON_Delete(ref);
    for (int k = 0; k < 3; k++)
        coe_textset_free(&dev[k]);
    return rc;
}
