/* Every GGUF file of ../shared/conformance opens, with the shapes its README gives.
 * Skips (exit 77) with a message where ../shared is absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"
#include "tests/conformance/shared.h"

static const char *shared;

static coe_gguf *open_shared(const char *rel)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/conformance/%s", shared, rel);
    coe_gguf *g = NULL;
    coe_buf d = COE_BUF_INIT;
    if (coe_gguf_open(&g, path, &d))
        fail_msg("%s", d.data);
    coe_buf_free(&d);
    return g;
}

static void expect_str(const coe_gguf *g, const char *key, const char *want)
{
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    assert_non_null(kv);
    assert_int_equal(kv->value.type, COE_GGUF_STRING);
    assert_int_equal(kv->value.str.len, strlen(want));
    assert_memory_equal(kv->value.str.ptr, want, strlen(want));
}

static uint64_t u64_of(const coe_gguf *g, const char *key)
{
    uint64_t v = 0;
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, key);
    assert_non_null(kv);
    assert_true(coe_gguf_get_u64(&kv->value, &v));
    return v;
}

typedef struct model_case {
    const char *file, *arch, *tokenizer;
    uint64_t n_vocab, n_expert;
    coe_ggml_type weights;
} model_case;

static void test_models(void **state)
{
    (void)state;
    static const model_case cases[] = {
        {"mixtral-tiny-f32.gguf", "llama", "llama", 32000, 4, COE_GGML_F32},
        {"mixtral-tiny-q8_0.gguf", "llama", "llama", 32000, 4, COE_GGML_Q8_0},
        {"qwen2moe-tiny-f32.gguf", "qwen2moe", "gpt2", 32256, 8, COE_GGML_F32},
        {"qwen2moe-tiny-f16.gguf", "qwen2moe", "gpt2", 32256, 8, COE_GGML_F16},
        {"olmoe-tiny-f32.gguf", "olmoe", "gpt2", 50432, 8, COE_GGML_F32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const model_case *c = &cases[i];
        char rel[256];
        snprintf(rel, sizeof rel, "models/%s", c->file);
        coe_gguf *g = open_shared(rel);
        expect_str(g, "general.architecture", c->arch);
        expect_str(g, "tokenizer.ggml.model", c->tokenizer);
        char key[128];
        snprintf(key, sizeof key, "%s.embedding_length", c->arch);
        assert_int_equal(u64_of(g, key), 64);
        snprintf(key, sizeof key, "%s.block_count", c->arch);
        assert_int_equal(u64_of(g, key), 2);
        snprintf(key, sizeof key, "%s.expert_count", c->arch);
        assert_int_equal(u64_of(g, key), c->n_expert);
        assert_int_equal(coe_gguf_find_kv(g, "tokenizer.ggml.tokens")->value.count, c->n_vocab);
        const coe_gguf_tensor *emb = coe_gguf_find_tensor(g, "token_embd.weight");
        assert_non_null(emb);
        assert_int_equal(emb->dims[0], 64);
        assert_int_equal(emb->dims[1], c->n_vocab);
        assert_int_equal(emb->type, c->weights);
        const coe_gguf_tensor *up = coe_gguf_find_tensor(g, "blk.1.ffn_up_exps.weight");
        assert_non_null(up);
        assert_int_equal(up->n_dims, 3);
        assert_int_equal(up->dims[2], c->n_expert);
        coe_gguf_close(&g);
    }
}

static void test_vocab_files(void **state)
{
    (void)state;
    static const char *const files[] = {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf",
                                        "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-phi-3.gguf",
                                        "ggml-vocab-gpt-neox.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "tokenizer/%s", files[i]);
        coe_gguf *g = open_shared(rel);
        const coe_gguf_kv *tokens = coe_gguf_find_kv(g, "tokenizer.ggml.tokens");
        assert_non_null(tokens);
        assert_int_equal(tokens->value.elem_type, COE_GGUF_STRING);
        assert_true(tokens->value.count > 30000);
        coe_gguf_close(&g);
    }
}

int main(void)
{
    shared = shared_dir_or_skip("conformance/models");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_models), cmocka_unit_test(test_vocab_files)};
    return cmocka_run_group_tests_name("gguf-shared", tests, NULL, NULL);
}
