/* Shared pieces: the JSON string escaper, the depth pre-check, bearer-key checks
 * and the loop's timers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/jsonx.h"
#include "common/loop.h"
#include "gateway/auth.h"

static void escapes(const char *in, size_t n, const char *expect)
{
    coe_buf b = COE_BUF_INIT;
    assert_int_equal(coe_buf_json_string(&b, in, n), 0);
    assert_string_equal(b.data, expect);
    /* What we write must parse back as a string. */
    cJSON *j = cJSON_Parse(b.data);
    assert_true(cJSON_IsString(j));
    cJSON_Delete(j);
    coe_buf_free(&b);
}

static void test_json_escaper(void **state)
{
    (void)state;
    escapes("plain", 5, "\"plain\"");
    escapes("a\"b\\c\n\r\t\b\f", 10, "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\"");
    escapes("\x01\x1f", 2, "\"\\u0001\\u001f\"");
    escapes("\0x", 2, "\"\\u0000x\"");
    escapes("w\xC3\xB6rld \xF0\x9F\x8E\x89", 11, "\"w\xC3\xB6rld \xF0\x9F\x8E\x89\"");
    /* Invalid UTF-8 (a lone continuation, a truncated sequence, an overlong form,
     * a surrogate) becomes U+FFFD so the output stays valid JSON. */
    escapes("a\x80z", 3, "\"a\xEF\xBF\xBDz\"");
    escapes("\xE4\xB8", 2, "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");
    escapes("\xC0\xAF", 2, "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");
    escapes("\xED\xA0\x80", 3, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
}

static void test_json_depth(void **state)
{
    (void)state;
    assert_int_equal(coe_json_depth("{}", 2, 10), 1);
    assert_int_equal(coe_json_depth("{\"a\":[[1]]}", 11, 10), 3);
    assert_int_equal(coe_json_depth("{\"a\":\"[[[[\\\"[[\"}", 16, 10), 1); /* brackets in strings do not count */
    assert_true(coe_json_depth("[[[[[[", 6, 3) > 3);
    size_t off = 0;
    assert_null(coe_json_parse("{\"a\":1} x", 9, &off));
    assert_int_equal(off, 8);
    cJSON *j = coe_json_parse("{\"a\":1}  \n", 10, &off);
    assert_non_null(j);
    cJSON_Delete(j);
}

static void test_auth(void **state)
{
    (void)state;
    char *keys[] = {"alpha-key", "beta"};
    coe_server_cfg s = {0};
    assert_true(coe_auth_check(&s, NULL)); /* no keys configured: open */
    s.api_keys_env = "X";
    s.api_keys = keys;
    s.n_api_keys = 2;
    assert_true(coe_auth_check(&s, "Bearer alpha-key"));
    assert_true(coe_auth_check(&s, "bearer beta"));
    assert_false(coe_auth_check(&s, NULL));
    assert_false(coe_auth_check(&s, "Bearer alpha-ke"));
    assert_false(coe_auth_check(&s, "Bearer alpha-keyy"));
    assert_false(coe_auth_check(&s, "Bearer "));
    assert_false(coe_auth_check(&s, "Basic alpha-key"));
    s.n_api_keys = 0; /* a variable named but empty refuses everything */
    assert_false(coe_auth_check(&s, "Bearer beta"));
}

typedef struct order {
    pthread_mutex_t mu;
    char seen[16];
    int n;
} order;

static void mark(void *arg)
{
    order *o = *(order **)arg;
    pthread_mutex_lock(&o->mu);
    o->seen[o->n++] = ((char *)arg)[sizeof(order *)];
    pthread_mutex_unlock(&o->mu);
}

typedef struct tagged {
    order *o;
    char tag;
} tagged;

static coe_loop *the_loop;
static tagged ta, tb, tc, td;

static void arm(void *arg)
{
    (void)arg;
    coe_loop_after(the_loop, 60, mark, &tc);
    coe_loop_after(the_loop, 20, mark, &ta);
    coe_timer *t = coe_loop_after(the_loop, 40, mark, &td);
    coe_loop_after(the_loop, 20, mark, &tb);
    coe_loop_cancel(the_loop, t);
}

static void test_loop_timers(void **state)
{
    (void)state;
    order o = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};
    ta = (tagged){&o, 'a'};
    tb = (tagged){&o, 'b'};
    tc = (tagged){&o, 'c'};
    td = (tagged){&o, 'd'};
    assert_int_equal(coe_loop_open(&the_loop), 0);
    assert_int_equal(coe_loop_post(the_loop, arm, NULL), 0);
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&o.mu);
        int n = o.n;
        pthread_mutex_unlock(&o.mu);
        if (n >= 3)
            break;
        usleep(10000);
    }
    coe_loop_close(&the_loop);
    assert_null(the_loop);
    /* Earliest first, ties in the order set, a cancelled timer never fires. */
    assert_string_equal(o.seen, "abc");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escaper),
        cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_loop_timers),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
