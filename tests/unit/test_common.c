/* Shared pieces: the JSON string escaper, the depth pre-check, bearer-key checks
 * and the loop's timers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/jsonx.h"
#include "common/loop.h"
#include "gateway/auth.h"
#include "gateway/openai.h"

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

/* A failed allocation is sticky: a later small append that would fit cannot slip in
 * after a failed large one (the text would have a hole). */
static void test_buf_sticky_error(void **state)
{
    (void)state;
    coe_buf b = COE_BUF_INIT;
    assert_int_equal(coe_buf_puts(&b, "{\"a\":"), 0);
    char big[4096];
    memset(big, 'x', sizeof big);
    coe_buf_fail_after(0);
    assert_int_not_equal(coe_buf_append(&b, big, sizeof big), 0);
    coe_buf_fail_after(-1);
    assert_int_not_equal(coe_buf_puts(&b, "1}"), 0);
    assert_int_not_equal(b.err, 0);
    assert_string_equal(b.data, "{\"a\":");
    assert_null(coe_buf_steal(&b));
    assert_int_equal(coe_buf_puts(&b, "ok"), 0); /* steal emptied it, error and all */
    coe_buf_reset(&b);
    assert_int_equal(b.err, 0);
    assert_int_equal(coe_buf_puts(&b, "fine"), 0);
    assert_string_equal(b.data, "fine");
    coe_buf_free(&b);
}

/* Every data line of SSE text parses as JSON ("[DONE]" aside). */
static void assert_events_parse(const char *text)
{
    for (const char *p = strstr(text, "data: "); p; p = strstr(p, "data: ")) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        if (strncmp(p, "[DONE]", 6) != 0) {
            cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
            assert_non_null(j);
            cJSON_Delete(j);
        }
        p = end;
    }
}

/* The response writers with an allocation failing at each point in turn: the output is
 * marked failed, or it is complete, valid JSON. Never a body with a piece missing. */
static void test_response_writers_out_of_memory(void **state)
{
    (void)state;
    char content[3000];
    memset(content, 'w', sizeof content - 1);
    content[sizeof content - 1] = '\0';
    coe_delta d = {.content = content, .content_len = strlen(content), .finish_reason = "stop"};
    coe_usage u = {5, 7, 12};
    coe_api_error e;
    coe_api_error_set(&e, 400, "invalid_request_error", NULL, "messages", "%s", content);
    cJSON *responses = cJSON_Parse("{\"input\":\"x\",\"temperature\":0.5,\"metadata\":{\"a\":\"b\"}}");
    coe_choices cs = {0};
    assert_int_equal(coe_choices_add(&cs, &d), 0);
    for (int writer = 0; writer < 6; writer++) {
        int failed = 0;
        for (long k = 0; k < 200; k++) {
            coe_reply r = {.endpoint = COE_EP_CHAT, .id = "chatcmpl-1", .created = 1, .model = "m"};
            if (writer >= 3) {
                r.responses = responses;
                snprintf(r.id, sizeof r.id, "resp_1");
            }
            coe_buf b = COE_BUF_INIT;
            coe_buf_fail_after(k);
            int rc = writer == 0   ? coe_reply_delta(&b, &r, &d)
                     : writer == 1 ? coe_reply_body(&b, &r, &cs, &u)
                     : writer == 2 ? coe_openai_error(&b, &e, false)
                     : writer == 3 ? coe_reply_body(&b, &r, &cs, &u)
                     : writer == 4 ? (coe_reply_delta(&b, &r, &d), coe_reply_stream_end(&b, &r, &u))
                                   : (coe_reply_delta(&b, &r, &d), coe_reply_stream_error(&b, &r, &e));
            coe_buf_fail_after(-1);
            if (b.err) {
                assert_int_not_equal(rc, 0);
                failed++;
            } else if (writer == 0 || writer >= 4) {
                assert_events_parse(b.data);
            } else {
                cJSON *j = cJSON_Parse(b.data);
                assert_non_null(j);
                cJSON_Delete(j);
            }
            coe_buf_free(&b);
            coe_reply_free(&r);
        }
        assert_true(failed > 0); /* the failures were really injected */
    }
    coe_choices_free(&cs);
    cJSON_Delete(responses);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escaper),
        cmocka_unit_test(test_buf_sticky_error),
        cmocka_unit_test(test_response_writers_out_of_memory),
        cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_loop_timers),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
