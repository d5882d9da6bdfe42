/* The GGUF reader and writer: round trips, and refusal (never a crash) of truncated,
 * corrupted and malformed files, with messages that say what and where. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/gguf.h"

static const float f32_data[6] = {1, 2, 3, 4, 5, 6};
static uint8_t q8_data[2 * 34];
static const uint16_t f16_data[4] = {0x3c00, 0x4000, 0x4200, 0x4400};

/* A file with one key of every type and three tensors. */
static coe_buf sample(uint32_t alignment)
{
    coe_gguf_writer *w = coe_gguf_writer_new(alignment);
    uint8_t u8 = 200;
    int8_t i8 = -5;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint32_t u32 = 4000000000u;
    int32_t i32 = -2000000000;
    float f32 = 0.5f;
    bool b = true;
    uint64_t u64 = 1ull << 60;
    int64_t i64 = -(1ll << 60);
    double f64 = 1e-300;
    coe_gguf_writer_kv_str(w, "general.architecture", "llama");
    coe_gguf_writer_kv(w, "t.u8", COE_GGUF_U8, &u8);
    coe_gguf_writer_kv(w, "t.i8", COE_GGUF_I8, &i8);
    coe_gguf_writer_kv(w, "t.u16", COE_GGUF_U16, &u16);
    coe_gguf_writer_kv(w, "t.i16", COE_GGUF_I16, &i16);
    coe_gguf_writer_kv(w, "t.u32", COE_GGUF_U32, &u32);
    coe_gguf_writer_kv(w, "t.i32", COE_GGUF_I32, &i32);
    coe_gguf_writer_kv(w, "t.f32", COE_GGUF_F32, &f32);
    coe_gguf_writer_kv(w, "t.bool", COE_GGUF_BOOL, &b);
    coe_gguf_writer_kv(w, "t.u64", COE_GGUF_U64, &u64);
    coe_gguf_writer_kv(w, "t.i64", COE_GGUF_I64, &i64);
    coe_gguf_writer_kv(w, "t.f64", COE_GGUF_F64, &f64);
    const float arr[3] = {1.5f, -2.5f, 3.5f};
    coe_gguf_writer_kv_array(w, "t.floats", COE_GGUF_F32, arr, 3);
    const char *const strs[] = {"<s>", "", "w\xC3\xB6rld"};
    coe_gguf_writer_kv_strings(w, "t.strings", strs, 3);
    for (int i = 0; i < 2; i++)
        q8_data[i * 34] = 0x00, q8_data[i * 34 + 1] = 0x3c; /* d = 1.0 */
    coe_gguf_writer_tensor(w, "a.f32", COE_GGML_F32, 2, (const uint64_t[]){3, 2}, f32_data);
    coe_gguf_writer_tensor(w, "b.q8", COE_GGML_Q8_0, 2, (const uint64_t[]){32, 2}, q8_data);
    coe_gguf_writer_tensor(w, "c.f16", COE_GGML_F16, 1, (const uint64_t[]){4}, f16_data);
    coe_buf out = COE_BUF_INIT;
    assert_int_equal(coe_gguf_writer_bytes(w, &out), 0);
    coe_gguf_writer_free(&w);
    return out;
}

static coe_gguf *open_ok(const coe_buf *b)
{
    coe_gguf *g = NULL;
    coe_buf d = COE_BUF_INIT;
    int rc = coe_gguf_open_memory(&g, b->data, b->len, "t.gguf", &d);
    if (rc)
        fail_msg("refused: %s", d.data);
    coe_buf_free(&d);
    return g;
}

static void test_round_trip(void **state)
{
    (void)state;
    coe_buf b = sample(32);
    coe_gguf *g = open_ok(&b);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kvs, 14);
    assert_int_equal(g->n_tensors, 3);
    assert_int_equal(g->data_offset % 32, 0);
    const coe_gguf_kv *kv = coe_gguf_find_kv(g, "general.architecture");
    assert_non_null(kv);
    assert_int_equal(kv->value.type, COE_GGUF_STRING);
    assert_int_equal(kv->value.str.len, 5);
    assert_memory_equal(kv->value.str.ptr, "llama", 5);
    uint64_t u;
    int64_t i;
    double d;
    bool flag;
    assert_true(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.u8")->value, &u) && u == 200);
    assert_true(coe_gguf_get_i64(&coe_gguf_find_kv(g, "t.i8")->value, &i) && i == -5);
    assert_false(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.i8")->value, &u)); /* negative */
    assert_true(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.u16")->value, &u) && u == 60000);
    assert_true(coe_gguf_get_i64(&coe_gguf_find_kv(g, "t.i16")->value, &i) && i == -30000);
    assert_true(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.u32")->value, &u) && u == 4000000000u);
    assert_true(coe_gguf_get_i64(&coe_gguf_find_kv(g, "t.i32")->value, &i) && i == -2000000000);
    assert_true(coe_gguf_get_f64(&coe_gguf_find_kv(g, "t.f32")->value, &d) && d == 0.5);
    assert_false(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.f32")->value, &u)); /* no float to int */
    assert_true(coe_gguf_get_bool(&coe_gguf_find_kv(g, "t.bool")->value, &flag) && flag);
    assert_true(coe_gguf_get_u64(&coe_gguf_find_kv(g, "t.u64")->value, &u) && u == 1ull << 60);
    assert_true(coe_gguf_get_i64(&coe_gguf_find_kv(g, "t.i64")->value, &i) && i == -(1ll << 60));
    assert_true(coe_gguf_get_f64(&coe_gguf_find_kv(g, "t.f64")->value, &d) && d == 1e-300);
    assert_true(coe_gguf_get_f64(&coe_gguf_find_kv(g, "t.u32")->value, &d) && d == 4e9); /* int to float */
    const coe_gguf_value *arr = &coe_gguf_find_kv(g, "t.floats")->value;
    assert_int_equal(arr->type, COE_GGUF_ARRAY);
    assert_int_equal(arr->count, 3);
    assert_true(coe_gguf_array_f64(arr, 1, &d) && d == -2.5);
    assert_false(coe_gguf_array_f64(arr, 3, &d));
    const coe_gguf_value *s = &coe_gguf_find_kv(g, "t.strings")->value;
    assert_int_equal(s->count, 3);
    assert_int_equal(s->strings[1].len, 0);
    assert_memory_equal(s->strings[2].ptr, "w\xC3\xB6rld", 6);
    assert_null(coe_gguf_find_kv(g, "t.missing"));

    const coe_gguf_tensor *t = coe_gguf_find_tensor(g, "a.f32");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 3);
    assert_int_equal(t->dims[1], 2);
    assert_int_equal(t->dims[2], 1);
    assert_int_equal(t->n_elements, 6);
    assert_int_equal(t->n_bytes, 24);
    assert_memory_equal(t->data, f32_data, 24);
    t = coe_gguf_find_tensor(g, "b.q8");
    assert_int_equal(t->type, COE_GGML_Q8_0);
    assert_int_equal(t->n_bytes, 68);
    assert_int_equal(t->offset % 32, 0);
    assert_memory_equal(t->data, q8_data, 68);
    t = coe_gguf_find_tensor(g, "c.f16");
    assert_memory_equal(t->data, f16_data, 8);
    assert_int_equal(((uintptr_t)t->data - (uintptr_t)b.data) % 32, 0);
    coe_gguf_close(&g);
    assert_null(g);
    coe_buf_free(&b);
}

static void test_file_and_alignment(void **state)
{
    (void)state;
    coe_gguf_writer *w = coe_gguf_writer_new(64);
    coe_gguf_writer_tensor(w, "x", COE_GGML_F32, 1, (const uint64_t[]){6}, f32_data);
    coe_gguf_writer_tensor(w, "y", COE_GGML_F32, 1, (const uint64_t[]){3}, f32_data);
    char path[] = "/tmp/coegate-test-XXXXXX.gguf";
    int fd = mkstemps(path, 5);
    close(fd);
    coe_buf d = COE_BUF_INIT;
    assert_int_equal(coe_gguf_writer_save(w, path, &d), 0);
    coe_gguf_writer_free(&w);
    coe_gguf *g = NULL;
    assert_int_equal(coe_gguf_open(&g, path, &d), 0);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(coe_gguf_find_tensor(g, "y")->offset, 64);
    assert_memory_equal(coe_gguf_find_tensor(g, "y")->data, f32_data, 12);
    coe_gguf_close(&g);
    unlink(path);
    assert_int_equal(coe_gguf_open(&g, path, &d), COE_ENOTFOUND);
    assert_non_null(strstr(d.data, "cannot open"));
    coe_buf_free(&d);
}

/* Every prefix shorter than the end of the last tensor's data is refused with a
 * message; longer ones (only the last tensor's padding missing) are fine. */
static void test_every_truncation(void **state)
{
    (void)state;
    coe_buf b = sample(32);
    coe_gguf *g = open_ok(&b);
    const coe_gguf_tensor *last = &g->tensors[g->n_tensors - 1];
    size_t needed = (size_t)(g->data_offset + last->offset + last->n_bytes);
    coe_gguf_close(&g);
    for (size_t n = 0; n <= b.len; n++) {
        coe_buf d = COE_BUF_INIT;
        char *copy = malloc(n ? n : 1); /* exactly n bytes: ASan sees any overread */
        memcpy(copy, b.data, n);
        int rc = coe_gguf_open_memory(&g, copy, n, "t.gguf", &d);
        if (n < needed) {
            if (rc == 0)
                fail_msg("a file cut at %zu of %zu bytes was accepted", n, b.len);
            assert_null(g);
            assert_true(d.len > 0);
            assert_true(strncmp(d.data, "t.gguf: byte ", 13) == 0);
        } else if (rc) {
            fail_msg("a file cut at %zu (past the data) was refused: %s", n, d.data);
        }
        coe_gguf_close(&g);
        coe_buf_free(&d);
        free(copy);
    }
    coe_buf_free(&b);
}

/* Any single corrupted byte of the header and metadata gives a file or a message. */
static void test_corrupted_bytes(void **state)
{
    (void)state;
    coe_buf b = sample(32);
    coe_gguf *g = open_ok(&b);
    size_t meta = (size_t)g->data_offset;
    coe_gguf_close(&g);
    static const uint8_t values[] = {0x00, 0xff, 0x7f};
    for (size_t at = 0; at < meta; at++)
        for (size_t v = 0; v < sizeof values; v++) {
            char *copy = malloc(b.len);
            memcpy(copy, b.data, b.len);
            copy[at] = (char)values[v];
            coe_buf d = COE_BUF_INIT;
            int rc = coe_gguf_open_memory(&g, copy, b.len, "t.gguf", &d);
            assert_true(rc == 0 ? g != NULL : (g == NULL && d.len > 0));
            coe_gguf_close(&g);
            coe_buf_free(&d);
            free(copy);
        }
    coe_buf_free(&b);
}

/* Builds a file by hand from pieces, for the malformed cases. */
static void raw_u32(coe_buf *b, uint32_t v) { coe_buf_append(b, &v, 4); }
static void raw_u64(coe_buf *b, uint64_t v) { coe_buf_append(b, &v, 8); }
static void raw_str(coe_buf *b, const char *s) { raw_u64(b, strlen(s)); coe_buf_append(b, s, strlen(s)); }

static void header(coe_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kvs)
{
    coe_buf_append(b, "GGUF", 4);
    raw_u32(b, version);
    raw_u64(b, n_tensors);
    raw_u64(b, n_kvs);
}

static void refused(coe_buf *b, const char *expect)
{
    coe_buf_append(b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16); /* some slack at the end */
    coe_gguf *g = NULL;
    coe_buf d = COE_BUF_INIT;
    assert_int_not_equal(coe_gguf_open_memory(&g, b->data, b->len, "m.gguf", &d), 0);
    assert_null(g);
    if (!d.data || !strstr(d.data, expect))
        fail_msg("expected '%s' in '%s'", expect, d.data ? d.data : "");
    coe_buf_free(&d);
    coe_buf_free(b);
}

static void test_malformed(void **state)
{
    (void)state;
    coe_buf b = COE_BUF_INIT;
    coe_buf_append(&b, "GGML\3\0\0\0", 8);
    refused(&b, "m.gguf: byte 0: not a GGUF file");
    header(&b, 1, 0, 0);
    refused(&b, "byte 4: GGUF version 1 is not supported");
    header(&b, 3, 0, 1ull << 40);
    refused(&b, "byte 16: 1099511627776 keys cannot fit");
    header(&b, 3, 1ull << 40, 0);
    refused(&b, "byte 8: 1099511627776 tensors cannot fit");
    header(&b, 3, 0, 1);
    raw_u64(&b, 1ull << 62);
    refused(&b, "byte 24: a key of 4611686018427387904 bytes runs past the end of the file (16 bytes left)");
    header(&b, 3, 0, 1);
    raw_str(&b, "k");
    raw_u32(&b, 13);
    refused(&b, "byte 37: key 'k': unknown value type 13");
    header(&b, 3, 0, 1);
    raw_str(&b, "k");
    raw_u32(&b, COE_GGUF_ARRAY);
    raw_u32(&b, COE_GGUF_U32);
    raw_u64(&b, 1ull << 40);
    refused(&b, "key 'k': array of 1099511627776 u32 runs past the end");
    header(&b, 3, 0, 1);
    raw_str(&b, "k");
    raw_u32(&b, COE_GGUF_ARRAY);
    raw_u32(&b, COE_GGUF_STRING);
    raw_u64(&b, 1000);
    refused(&b, "key 'k': array of 1000 strings runs past the end");
    header(&b, 3, 0, 1);
    raw_str(&b, "k");
    raw_u32(&b, COE_GGUF_ARRAY);
    for (int i = 0; i < 6; i++) /* an array of one array of one array of ... */
        raw_u32(&b, COE_GGUF_ARRAY), raw_u64(&b, 1);
    refused(&b, "key 'k': arrays nested more than 4 deep");
    header(&b, 3, 0, 2);
    raw_str(&b, "k"), raw_u32(&b, COE_GGUF_U8), coe_buf_append(&b, "x", 1);
    raw_str(&b, "k"), raw_u32(&b, COE_GGUF_U8), coe_buf_append(&b, "y", 1);
    refused(&b, "key 'k' appears twice");
    header(&b, 3, 0, 1);
    raw_str(&b, "general.alignment"), raw_u32(&b, COE_GGUF_U32), raw_u32(&b, 48);
    refused(&b, "key 'general.alignment' must be a u32 power of two");

    const struct {
        uint32_t n_dims, type;
        uint64_t d0, offset;
        const char *expect;
    } tensors[] = {
        {5, 0, 4, 0, "tensor 't': 5 dimensions (1 to 4 allowed)"},
        {1, 0, 0, 0, "tensor 't': dimension 0 is 0"},
        {1, 99, 4, 0, "tensor 't': unsupported tensor type 99"},
        {1, COE_GGML_Q8_0, 40, 0, "tensor 't': its rows of 40 do not split into Q8_0 blocks of 32"},
        {1, 0, 4, 8, "tensor 't': offset 8 is not a multiple of the alignment 32"},
        {1, 0, 1000, 0, "tensor 't': its 4000 bytes at data offset 0 run past the end of the file"},
        {1, 0, 4, 1ull << 62, "run past the end of the file"},
    };
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        header(&b, 3, 1, 0);
        raw_str(&b, "t");
        raw_u32(&b, tensors[i].n_dims);
        for (uint32_t d = 0; d < tensors[i].n_dims; d++)
            raw_u64(&b, d == 0 ? tensors[i].d0 : 1);
        raw_u32(&b, tensors[i].type);
        raw_u64(&b, tensors[i].offset);
        refused(&b, tensors[i].expect);
    }
    header(&b, 3, 2, 0);
    for (int i = 0; i < 2; i++)
        raw_str(&b, "t"), raw_u32(&b, 1), raw_u64(&b, 4), raw_u32(&b, 0), raw_u64(&b, 0);
    refused(&b, "tensor 't' appears twice");
}

static void test_nested_arrays(void **state)
{
    (void)state;
    coe_buf b = COE_BUF_INIT;
    header(&b, 3, 0, 1);
    raw_str(&b, "n");
    raw_u32(&b, COE_GGUF_ARRAY);
    raw_u32(&b, COE_GGUF_ARRAY), raw_u64(&b, 2);          /* two arrays: */
    raw_u32(&b, COE_GGUF_U8), raw_u64(&b, 2), coe_buf_append(&b, "\1\2", 2);
    raw_u32(&b, COE_GGUF_STRING), raw_u64(&b, 1), raw_str(&b, "hi");
    coe_gguf *g = open_ok(&b);
    const coe_gguf_value *v = &coe_gguf_find_kv(g, "n")->value;
    assert_int_equal(v->count, 2);
    int64_t x;
    assert_true(coe_gguf_array_i64(&v->items[0], 1, &x) && x == 2);
    assert_int_equal(v->items[1].strings[0].len, 2);
    assert_memory_equal(v->items[1].strings[0].ptr, "hi", 2);
    coe_gguf_close(&g);
    coe_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_file_and_alignment),
        cmocka_unit_test(test_nested_arrays),
        cmocka_unit_test(test_every_truncation), cmocka_unit_test(test_corrupted_bytes),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests_name("gguf", tests, NULL, NULL);
}
