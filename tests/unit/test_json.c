/* The JSON recognizer of constrained decoding (experts/json_grammar.h): valid objects
 * are accepted whole and byte by byte, and every prefix of one is accepted but not
 * complete; invalid texts are refused at the first byte that cannot continue them; and
 * whatever it accepts as complete, cJSON parses as an object. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
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

/* ---- schemas ---- */

static const char *const SCHEMA =
    "{\"type\":\"object\",\"$schema\":\"http://json-schema.org/draft-07/schema#\",\"additionalProperties\":false,"
    "\"required\":[\"name\",\"age\",\"tags\"],\"properties\":{"
    "\"name\":{\"type\":\"string\",\"description\":\"who\"},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
    "\"score\":{\"type\":[\"number\",\"null\"],\"exclusiveMinimum\":0,\"maximum\":1},"
    "\"big\":{\"type\":\"integer\",\"minimum\":-9007199254740991,\"maximum\":9007199254740991},"
    "\"ok\":{\"type\":\"boolean\"},"
    "\"kind\":{\"type\":\"string\",\"enum\":[\"cat\",\"catfish\",\"dog\"]},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":1,\"maxItems\":2},"
    "\"extra\":{\"type\":\"object\"},"
    "\"pos\":{\"type\":\"object\",\"required\":[\"x\"],\"properties\":{\"x\":{\"type\":\"number\"}}}}}";

static coe_json_schema *compile(const char *text, char *why, char *path)
{
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    coe_json_schema *s = coe_json_schema_compile(j, why, 256, path, 256);
    cJSON_Delete(j);
    return s;
}

/* How far the schema-constrained recognizer takes t: its length when all of it, and
 * whether it is then complete. */
static size_t feed_schema(const coe_json_schema *schema, const char *t, bool *done)
{
    coe_json_state s;
    coe_json_init_schema(&s, schema);
    size_t k = 0;
    while (t[k]) {
        coe_json_state copy;
        coe_json_copy(&copy, &s);
        if (!coe_json_feed(&copy, t + k, 1))
            break;
        coe_json_copy(&s, &copy);
        k++;
    }
    *done = coe_json_done(&s);
    return k;
}

static void test_schema_texts(void **state)
{
    (void)state;
    char why[256], path[256];
    coe_json_schema *schema = compile(SCHEMA, why, path);
    assert_non_null(schema);
    static const char *const valid_texts[] = {
        "{\"name\":\"a\\n\\u00e9\",\"age\":-0,\"tags\":[\"x\"],\"big\":-9007199254740991}",
        "{ \"tags\" : [ \"x\" , \"y\" ] , \"age\" : 0 , \"name\" : \"\" , \"score\" : null }",
        "{\"name\":\"a\",\"age\":150,\"tags\":[\"x\"],\"score\":0.25,\"ok\":true,\"kind\":\"catfish\","
        "\"extra\":{\"any\":[1,{\"b\":null}]},\"pos\":{\"x\":2}}",
        "{\"name\":\"a\",\"age\":1,\"tags\":[\"x\"],\"kind\":\"cat\"}",
    };
    for (size_t i = 0; i < sizeof valid_texts / sizeof valid_texts[0]; i++) {
        bool done;
        size_t k = feed_schema(schema, valid_texts[i], &done);
        if (k != strlen(valid_texts[i]) || !done)
            fail_msg("'%s': stopped at byte %zu (done %d)", valid_texts[i], k, done);
    }
    static const struct {
        const char *text;
        size_t bad_at;
    } refused[] = {
        {"{\"name\":\"a\",\"age\":1}", 19},                             /* tags is required */
        {"{\"nam\":", 5},                                               /* no such property */
        {"{\"name\":\"a\",\"name\":", 13},                              /* each once */
        {"{\"age\":1.5", 8},                                            /* an integer */
        {"{\"age\":\"1\"", 7},                                          /* not a string */
        {"{\"kind\":\"cow\"", 10},                                      /* not in the enum */
        {"{\"kind\":\"catf\"", 13},                                     /* a prefix only */
        {"{\"tags\":[]", 9},                                            /* minItems 1 */
        {"{\"tags\":[\"a\",\"b\",", 16},                                /* maxItems 2 */
        {"{\"pos\":{}", 8},                                             /* x is required there */
        {"{\"ok\":null", 6},                                            /* a boolean */
        {"{\"score\":true", 9},
        {"{\"age\":-1", 8},                                           /* minimum 0 */
        {"{\"age\":151", 9},                                          /* maximum 150 */
        {"{\"age\":1000", 10},
        {"{\"score\":0,", 10},                                        /* exclusiveMinimum 0 */
        {"{\"score\":0.0,", 12},
        {"{\"score\":1.5", 11},                                       /* maximum 1 */
        {"{\"score\":1e0", 10},                                       /* no exponent when bounded */
        {"{\"big\":9007199254740992", 22},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        bool done;
        size_t k = feed_schema(schema, refused[i].text, &done);
        if (k != refused[i].bad_at)
            fail_msg("'%s': refused at byte %zu, expected %zu", refused[i].text, k, refused[i].bad_at);
    }
    coe_json_schema_free(&schema);
}

static void test_schema_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *schema, *path, *why;
    } cases[] = {
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"pattern\":\"x\"}}}", ".properties.a",
         "'pattern' is outside"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":2,\"exclusiveMaximum\":2}}}",
         ".properties.a", "no number"},
        {"{\"type\":\"array\"}", "", "root must be of type object"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "", "'required' names 'b'"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[\"x\\\"y\"]}}}", ".properties.a", "a quote"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[1,2]}}}", ".properties.a", "strings only"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"date\"}}}", ".properties.a", "not a JSON Schema type"},
        {"{\"type\":\"object\",\"anyOf\":[]}", "", "'anyOf' is outside"},
        {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "", "additionalProperties"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}}}",
         ".properties.a", "below"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char why[256], path[256];
        coe_json_schema *s = compile(cases[i].schema, why, path);
        if (s || strcmp(path, cases[i].path) != 0 || !strstr(why, cases[i].why))
            fail_msg("case %zu: compiled %d, path '%s', why '%s'", i, s != NULL, path, why);
    }
}

/* The subset's validation, written independently of the recognizer. */
static bool validates(const cJSON *v, const cJSON *schema)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    bool any_type = !type;
    for (const cJSON *t = cJSON_IsArray(type) ? type->child : type; t; t = cJSON_IsArray(type) ? t->next : NULL) {
        const char *n = t->valuestring;
        bool is_int = cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble);
        any_type |= (!strcmp(n, "object") && cJSON_IsObject(v)) || (!strcmp(n, "array") && cJSON_IsArray(v)) ||
                    (!strcmp(n, "string") && cJSON_IsString(v)) || (!strcmp(n, "number") && cJSON_IsNumber(v)) ||
                    (!strcmp(n, "integer") && is_int) || (!strcmp(n, "boolean") && cJSON_IsBool(v)) ||
                    (!strcmp(n, "null") && cJSON_IsNull(v));
    }
    if (!any_type)
        return false;
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    if (en) {
        bool in = false;
        for (const cJSON *e = en->child; e; e = e->next)
            in |= cJSON_IsString(v) && strcmp(e->valuestring, v->valuestring) == 0;
        if (!in)
            return false;
    }
    if (cJSON_IsNumber(v)) {
        const cJSON *b;
        if (((b = cJSON_GetObjectItemCaseSensitive(schema, "minimum")) && v->valuedouble < b->valuedouble) ||
            ((b = cJSON_GetObjectItemCaseSensitive(schema, "maximum")) && v->valuedouble > b->valuedouble) ||
            ((b = cJSON_GetObjectItemCaseSensitive(schema, "exclusiveMinimum")) && v->valuedouble <= b->valuedouble) ||
            ((b = cJSON_GetObjectItemCaseSensitive(schema, "exclusiveMaximum")) && v->valuedouble >= b->valuedouble))
            return false;
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    if (cJSON_IsObject(v) && props) {
        for (const cJSON *m = v->child; m; m = m->next) {
            const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, m->string);
            if (!ps || !validates(m, ps))
                return false;
        }
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring))
                return false;
    }
    if (cJSON_IsArray(v)) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(schema, "minItems");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(schema, "maxItems");
        int n = cJSON_GetArraySize(v);
        if ((mn && n < mn->valueint) || (mx && n > mx->valueint))
            return false;
        for (const cJSON *e = v->child; e && items; e = e->next)
            if (!validates(e, items))
                return false;
    }
    return true;
}

/* Random walks through what the schema allows, a byte at a time: every text it takes
 * to completion parses and validates. */
static void test_schema_walks_validate(void **state)
{
    (void)state;
    char why[256], path[256];
    coe_json_schema *schema = compile(SCHEMA, why, path);
    cJSON *sj = cJSON_Parse(SCHEMA);
    static const char alphabet[] = "{}[]:,\" 0123-.eEtrufalsnxyzcatfishdogmeg\\";
    uint64_t rng = 11;
    int complete = 0;
    for (int walk = 0; walk < 3000; walk++) {
        coe_json_state s;
        coe_json_init_schema(&s, schema);
        char t[600];
        size_t n = 0;
        while (n < sizeof t - 1 && !coe_json_done(&s)) {
            char ok[sizeof alphabet];
            int n_ok = 0;
            for (size_t a = 0; a < sizeof alphabet - 1; a++) {
                coe_json_state c;
                coe_json_copy(&c, &s);
                if (coe_json_feed(&c, &alphabet[a], 1))
                    ok[n_ok++] = alphabet[a];
            }
            if (!n_ok)
                break;
            /* Closing bytes are favoured, so that walks end. */
            char pick = ok[coe_splitmix64(&rng) % (uint64_t)n_ok];
            for (int i = 0; i < n_ok; i++)
                if ((ok[i] == '}' || ok[i] == ']' || ok[i] == '"') && coe_splitmix64(&rng) % 3 == 0)
                    pick = ok[i];
            assert_true(coe_json_feed(&s, &pick, 1));
            t[n++] = pick;
        }
        t[n] = '\0';
        if (!coe_json_done(&s))
            continue;
        complete++;
        cJSON *j = cJSON_Parse(t);
        if (!j || !validates(j, sj))
            fail_msg("accepted '%s', which does not validate", t);
        cJSON_Delete(j);
    }
    assert_true(complete > 100);
    cJSON_Delete(sj);
    coe_json_schema_free(&schema);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_valid),           cmocka_unit_test(test_invalid),
                                       cmocka_unit_test(test_agrees_with_cjson), cmocka_unit_test(test_schema_texts),
                                       cmocka_unit_test(test_schema_refusals),
                                       cmocka_unit_test(test_schema_walks_validate)};
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
