/* The JSON recognizer of constrained decoding (experts/json_grammar.h): valid objects
 * are accepted whole and byte by byte, and every prefix of one is accepted but not
 * complete; invalid texts are refused at the first byte that cannot continue them; and
 * whatever it accepts as complete, cJSON parses as an object. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <cJSON.h>

#include "common/rand.h"
#include "experts/json_grammar.h"

static const char *const valid[] = {
    "{}",
    "{\"a\":1} \n",
    "{\"a\":[1,2.5e-3,-0,1E+9,true,false,null,\"x\\u00e9\\n\\\"\"],\"b\":{\"c\":{}},\"d\":[]}",
    "{\"caf\xC3\xA9\":\"\xE4\xB8\xAD\xF0\x9F\x98\x80\"}",
    "{ \"k\" : [ [ ] , { } ] }",
};

static const struct {
    const char *text;
    size_t bad_at; /* the first byte refused */
} invalid[] = {
    {"[1]", 0},                 /* an object is required */
    {" {}", 0},                 /* from the first byte */
    {"{\"a\":01}", 6},          /* no leading zeros */
    {"{\"a\":1,}", 7},          /* no trailing comma */
    {"{a:1}", 1},               /* keys are strings */
    {"{\"a\":\"\x01\"}", 6},    /* control characters are escaped */
    {"{\"a\":\"\xFF\"}", 6},    /* not UTF-8 */
    {"{\"a\":\"\xC3(\"}", 7},   /* a broken UTF-8 character */
    {"{\"a\":1}}", 7},          /* one object only */
    {"{\"a\":tru }", 8},
    {"{\"a\":1.}", 7},
    {"{\"a\":\"\\x\"}", 7},     /* unknown escape */
};

static void test_valid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        const char *t = valid[i];
        coe_json_state s;
        coe_json_init(&s);
        assert_true(coe_json_feed(&s, t, strlen(t)));
        assert_true(coe_json_done(&s));
        /* Byte by byte: every proper prefix that ends before the closing brace is
         * accepted and not complete. */
        coe_json_init(&s);
        const char *close = strrchr(t, '}');
        for (const char *p = t; *p; p++) {
            assert_true(coe_json_feed(&s, p, 1));
            if (p < close)
                assert_false(coe_json_done(&s));
        }
        assert_true(coe_json_done(&s));
    }
}

static void test_invalid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        const char *t = invalid[i].text;
        coe_json_state s;
        coe_json_init(&s);
        size_t k = 0;
        while (t[k] && coe_json_feed(&s, t + k, 1))
            k++;
        if (k != invalid[i].bad_at)
            fail_msg("'%s': refused at byte %zu, expected %zu", t, k, invalid[i].bad_at);
    }
    /* Nesting past the limit. */
    coe_json_state s;
    coe_json_init(&s);
    assert_true(coe_json_feed(&s, "{\"a\":", 5));
    int depth = 1;
    while (coe_json_feed(&s, "[", 1))
        depth++;
    assert_int_equal(depth, COE_JSON_MAX_DEPTH);
    /* Whitespace between tokens, at most COE_JSON_MAX_SPACE in a row; in strings, any. */
    char pad[64];
    memset(pad, ' ', sizeof pad);
    coe_json_init(&s);
    assert_true(coe_json_feed(&s, "{", 1));
    assert_true(coe_json_feed(&s, pad, COE_JSON_MAX_SPACE));
    assert_false(coe_json_feed(&s, " ", 1));
    coe_json_init(&s);
    assert_true(coe_json_feed(&s, "{\"", 2));
    assert_true(coe_json_feed(&s, pad, sizeof pad));
    assert_true(coe_json_feed(&s, "\":", 2));
    assert_true(coe_json_feed(&s, pad, COE_JSON_MAX_SPACE));
    assert_true(coe_json_feed(&s, "1", 1));
    assert_true(coe_json_feed(&s, pad, COE_JSON_MAX_SPACE));
    assert_true(coe_json_feed(&s, "}", 1));
    assert_true(coe_json_done(&s));
}

/* Random texts over JSON's own characters: each one the recognizer accepts as
 * complete is an object for cJSON too (no false acceptance). */
static void test_agrees_with_cjson(void **state)
{
    (void)state;
    static const char alphabet[] = "{}[]:,\" 0123-.eEtrufalsn\\u";
    uint64_t rng = 7;
    int complete = 0;
    for (int round = 0; round < 200000; round++) {
        char t[24];
        int n = 2 + (int)(coe_splitmix64(&rng) % 20);
        t[0] = '{';
        for (int i = 1; i < n; i++)
            t[i] = alphabet[coe_splitmix64(&rng) % (sizeof alphabet - 1)];
        t[n] = '\0';
        coe_json_state s;
        coe_json_init(&s);
        if (!coe_json_feed(&s, t, (size_t)n) || !coe_json_done(&s))
            continue;
        complete++;
        cJSON *j = cJSON_ParseWithLength(t, (size_t)n);
        if (!cJSON_IsObject(j))
            fail_msg("accepted '%s', which is not a JSON object", t);
        cJSON_Delete(j);
    }
    assert_true(complete > 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_valid), cmocka_unit_test(test_invalid),
                                       cmocka_unit_test(test_agrees_with_cjson)};
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
