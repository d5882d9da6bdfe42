/* The HTTP/1.x request parser: heads and chunked bodies, what is accepted and what is
 * refused with which status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "gateway/http_parse.h"

/* Parses text as a whole head; returns the status (0: accepted). */
static int parse(const char *text, coe_http_head *h, char *store, size_t cap)
{
    size_t n = strlen(text);
    assert_true(n < cap);
    memcpy(store, text, n + 1);
    size_t hl = coe_http_head_length(store, n);
    assert_int_equal(hl, n);
    const char *why = NULL;
    int rc = coe_http_parse_head(store, hl, h, &why);
    if (rc)
        assert_non_null(why);
    return rc;
}

static void test_a_request_head(void **state)
{
    (void)state;
    char buf[512];
    coe_http_head h;
    assert_int_equal(parse("\r\nPOST /v1/chat%2Fcompletions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length:  12 \r\n"
                           "X-Empty:\r\nAuthorization: Bearer k\r\n\r\n",
                           &h, buf, sizeof buf),
                     0);
    assert_string_equal(h.method, "POST");
    assert_string_equal(h.path, "/v1/chat/completions");
    assert_int_equal(h.minor, 1);
    assert_int_equal(h.content_length, 12);
    assert_false(h.chunked);
    assert_true(h.keep_alive);
    assert_string_equal(coe_http_head_field(&h, "content-length"), "12");
    assert_string_equal(coe_http_head_field(&h, "x-empty"), "");
    assert_string_equal(coe_http_head_field(&h, "AUTHORIZATION"), "Bearer k");
    assert_null(coe_http_head_field(&h, "X-Missing"));
    assert_int_equal(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", &h, buf,
                           sizeof buf),
                     0);
    assert_int_equal(h.content_length, 1000000000000000000LL); /* read as "too large", never overflowing */
    assert_int_equal(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000000007\r\n\r\n", &h, buf,
                           sizeof buf),
                     0);
    assert_int_equal(h.content_length, 7);
}

static void test_line_ends_and_connection(void **state)
{
    (void)state;
    char buf[512];
    coe_http_head h;
    /* LF alone ends a line too (RFC 9112 2.2). */
    assert_int_equal(parse("GET /health HTTP/1.1\nHost: a\nConnection: Upgrade, close\n\n", &h, buf, sizeof buf), 0);
    assert_false(h.keep_alive);
    assert_int_equal(h.content_length, -1);
    assert_int_equal(parse("GET /health HTTP/1.0\r\n\r\n", &h, buf, sizeof buf), 0);
    assert_false(h.keep_alive);
    assert_int_equal(parse("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &h, buf, sizeof buf), 0);
    assert_true(h.keep_alive);
    assert_int_equal(parse("GET http://example.com:80/v1/models?a HTTP/1.1\r\nHost: b\r\n\r\n", &h, buf, sizeof buf),
                     0);
    assert_string_equal(h.path, "/v1/models");
    assert_int_equal(parse("POST /x HTTP/1.1\r\nHost: b\r\nExpect: 100-Continue\r\nTransfer-Encoding: Chunked\r\n\r\n",
                           &h, buf, sizeof buf),
                     0);
    assert_true(h.expect_continue);
    assert_true(h.chunked);
}

static void test_incomplete_heads(void **state)
{
    (void)state;
    const char *t = "GET / HTTP/1.1\r\nHost: a\r\n\r";
    assert_int_equal(coe_http_head_length(t, strlen(t)), 0);
    t = "GET / HTTP/1.1\r\nHost: a\r\n";
    assert_int_equal(coe_http_head_length(t, strlen(t)), 0);
    t = "GET / HTTP/1.1\r\n\r\nGET";
    assert_int_equal(coe_http_head_length(t, strlen(t)), 18);
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int status;
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nX-A: a\x01\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nX-A: a\x7f\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        {"POST / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: a\r\nExpect: nothing\r\n\r\n", 417},
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
        {"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400},
        {"GET / http/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /% HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[512];
        coe_http_head h;
        int got = parse(cases[i].head, &h, buf, sizeof buf);
        if (got != cases[i].status)
            fail_msg("case %zu: got %d, want %d", i, got, cases[i].status);
    }
}

static void test_a_nul_in_a_value(void **state)
{
    (void)state;
    static const char head[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n";
    char buf[sizeof head];
    memcpy(buf, head, sizeof head);
    size_t n = sizeof head - 1;
    assert_int_equal(coe_http_head_length(buf, n), n);
    coe_http_head h;
    const char *why;
    assert_int_equal(coe_http_parse_head(buf, n, &h, &why), 400);
}

static void test_too_many_fields(void **state)
{
    (void)state;
    static char buf[8192];
    int k = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < COE_HTTP_MAX_FIELDS; i++)
        k += snprintf(buf + k, sizeof buf - (size_t)k, "X-%d: 1\r\n", i);
    k += snprintf(buf + k, sizeof buf - (size_t)k, "\r\n");
    coe_http_head h;
    const char *why;
    assert_int_equal(coe_http_parse_head(buf, (size_t)k, &h, &why), 431);
}

/* Feeds text in pieces of step bytes; returns the final result, the body in body. */
static int feed(const char *text, size_t n, size_t step, size_t limit, coe_buf *body, size_t *rest)
{
    coe_http_chunked st = {0};
    size_t at = 0;
    int rc = 0;
    while (at < n && rc == 0) {
        size_t piece = n - at < step ? n - at : step, used;
        const char *why;
        rc = coe_http_chunked_feed(&st, text + at, piece, body, limit, &used, &why);
        if (rc == 400)
            assert_non_null(why);
        at += used;
        if (rc == 0)
            assert_int_equal(used, piece);
    }
    *rest = n - at;
    return rc;
}

static void test_chunked_bodies(void **state)
{
    (void)state;
    const char *t = "5;name=\"v\"\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: 1\r\n\r\nGET";
    for (size_t step = 1; step <= strlen(t); step++) {
        coe_buf body = COE_BUF_INIT;
        size_t rest;
        assert_int_equal(feed(t, strlen(t), step, 1 << 20, &body, &rest), 1);
        assert_int_equal(rest, 3); /* the next request's bytes stay unread */
        assert_int_equal(body.len, 15);
        assert_memory_equal(body.data, "hello, world!!!", 15);
        coe_buf_free(&body);
    }
    static const struct {
        const char *text;
        int rc;
    } cases[] = {
        {"5\nhello\r\n0\r\n\r\n", 400},           /* a bare LF */
        {"5 \r\nhello\r\n0\r\n\r\n", 400},        /* space after the size */
        {"x\r\n", 400},
        {"\r\n", 400},                            /* no size */
        {"2\r\nhello\r\n", 400},                  /* data longer than its size */
        {"5\r\nhello\n0\r\n\r\n", 400},
        {"1000000000000000\r\n", 400},            /* 16 hex digits */
        {"0\r\n\r", 0},                           /* not yet complete */
        {"0\r\nX: \x01\r\n\r\n", 400},
        {"0\r\n\r\n", 1},
        {"000\r\n\r\n", 1},
        {"10\r\n0123456789abcdef\r\n0\r\n\r\n", 413}, /* over the limit of 10 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        coe_buf body = COE_BUF_INIT;
        size_t rest;
        int rc = feed(cases[i].text, strlen(cases[i].text), 64, 10, &body, &rest);
        if (rc != cases[i].rc)
            fail_msg("case %zu: got %d, want %d", i, rc, cases[i].rc);
        assert_true(body.len <= 10);
        coe_buf_free(&body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_request_head),  cmocka_unit_test(test_line_ends_and_connection),
        cmocka_unit_test(test_incomplete_heads), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_a_nul_in_a_value), cmocka_unit_test(test_too_many_fields),
        cmocka_unit_test(test_chunked_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
