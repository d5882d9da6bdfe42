/* The SSE parser must give the same events whatever way the bytes are split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "backends/sse.h"
#include "common/err.h"

typedef struct collected {
    char text[4096]; /* events as "event|data" lines joined with '#' */
    int n;
} collected;

static int collect(void *ctx, const coe_sse_event *ev)
{
    collected *c = ctx;
    size_t len = strlen(c->text);
    snprintf(c->text + len, sizeof c->text - len, "%s|%s#", ev->event, ev->data);
    c->n++;
    return 0;
}

static void parse_in_pieces(const char *stream, size_t n, const size_t *cuts, int n_cuts, collected *out)
{
    coe_sse p;
    coe_sse_init(&p, 1 << 16);
    memset(out, 0, sizeof *out);
    size_t at = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : n;
        assert_int_equal(coe_sse_feed(&p, stream + at, end - at, collect, out), 0);
        at = end;
    }
    coe_sse_free(&p);
}

/* Every split into two pieces, and byte by byte, equals the whole. */
static void check_all_splits(const char *stream, const char *expect, int n_events)
{
    size_t n = strlen(stream);
    collected whole, part;
    parse_in_pieces(stream, n, NULL, 0, &whole);
    assert_string_equal(whole.text, expect);
    assert_int_equal(whole.n, n_events);
    for (size_t cut = 0; cut <= n; cut++) {
        parse_in_pieces(stream, n, &cut, 1, &part);
        if (strcmp(part.text, expect) != 0)
            fail_msg("split at byte %zu gave '%s'", cut, part.text);
    }
    for (size_t a = 0; a <= n; a += 3)
        for (size_t b = a; b <= n; b += 5) {
            size_t cuts[2] = {a, b};
            parse_in_pieces(stream, n, cuts, 2, &part);
            if (strcmp(part.text, expect) != 0)
                fail_msg("split at bytes %zu and %zu gave '%s'", a, b, part.text);
        }
    size_t cuts[4096];
    for (size_t i = 0; i < n && i < 4096; i++)
        cuts[i] = i;
    parse_in_pieces(stream, n, cuts, (int)(n < 4096 ? n : 4096), &part);
    assert_string_equal(part.text, expect);
}

static void test_openai_stream(void **state)
{
    (void)state;
    check_all_splits("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
                     "data: {\"choices\":[{\"delta\":{\"content\":\" \xE4\xB8\xAD\"}}]}\n\n"
                     "data: [DONE]\n\n",
                     "|{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}#"
                     "|{\"choices\":[{\"delta\":{\"content\":\" \xE4\xB8\xAD\"}}]}#|[DONE]#",
                     3);
}

static void test_line_endings(void **state)
{
    (void)state;
    /* CRLF, lone CR and LF all end lines; a CRLF is one line end even when split. */
    check_all_splits("data: a\r\n\r\ndata: b\r\rdata: c\n\n", "|a#|b#|c#", 3);
}

static void test_fields_and_comments(void **state)
{
    (void)state;
    check_all_splits(": keep-alive\n\nevent: error\ndata: x\ndata:y\n\n"
                     "data\n\nid: 7\nretry: 10\ndata:  two spaces\n\n",
                     "error|x\ny#|#| two spaces#", 3);
}

static void test_bom_and_unterminated(void **state)
{
    (void)state;
    /* A leading byte-order mark is dropped; an event without its blank line is not emitted. */
    check_all_splits("\xEF\xBB\xBF" "data: 1\n\ndata: 2\n", "|1#", 1);
}

static void test_event_over_limit(void **state)
{
    (void)state;
    coe_sse p;
    coe_sse_init(&p, 16);
    collected c = {0};
    assert_int_equal(coe_sse_feed(&p, "data: 0123456789abcdefghij\n\n", 28, collect, &c), COE_ERANGE);
    coe_sse_free(&p);
}

static int stop_at_first(void *ctx, const coe_sse_event *ev)
{
    (void)ev;
    (*(int *)ctx)++;
    return 42;
}

static void test_callback_stops(void **state)
{
    (void)state;
    coe_sse p;
    coe_sse_init(&p, 1024);
    int n = 0;
    assert_int_equal(coe_sse_feed(&p, "data: a\n\ndata: b\n\n", 18, stop_at_first, &n), 42);
    assert_int_equal(n, 1);
    coe_sse_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_stream),      cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_fields_and_comments), cmocka_unit_test(test_bom_and_unterminated),
        cmocka_unit_test(test_event_over_limit),   cmocka_unit_test(test_callback_stops),
    };
    return cmocka_run_group_tests_name("sse", tests, NULL, NULL);
}
