/* Request validation: every refusal names the field and says what was wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "gateway/request.h"

static coe_request *ok(coe_endpoint ep, const char *body)
{
    coe_request *r = NULL;
    coe_api_error e = {0};
    int rc = coe_request_parse(body, strlen(body), ep, 32, &r, &e);
    if (rc)
        fail_msg("refused '%s': %s", body, e.message);
    return r;
}

/* Expects a 400 naming param, with a message containing text. */
static void bad(coe_endpoint ep, const char *body, const char *param, const char *text)
{
    coe_request *r = NULL;
    coe_api_error e = {0};
    int rc = coe_request_parse(body, strlen(body), ep, 32, &r, &e);
    assert_int_not_equal(rc, 0);
    assert_null(r);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.type, "invalid_request_error");
    assert_string_equal(e.param, param);
    if (!strstr(e.message, text))
        fail_msg("message '%s' lacks '%s'", e.message, text);
}

static void test_valid_chat(void **state)
{
    (void)state;
    coe_request *r = ok(COE_EP_CHAT,
                        "{\"model\":\"auto\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                        "\"max_tokens\":12,\"temperature\":0.5,\"stop\":[\"a\",\"b\"],\"vendor_field\":{\"x\":1},"
                        "\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]},"
                        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
                        "{\"role\":\"user\",\"content\":\"last one\"}]}");
    assert_string_equal(r->model, "auto");
    assert_true(r->stream);
    assert_true(r->include_usage);
    assert_int_equal(r->max_tokens, 12);
    assert_string_equal(coe_request_last_user_text(r), "last one");
    /* Unknown fields are kept for the upstream. */
    assert_non_null(cJSON_GetObjectItemCaseSensitive(r->body, "vendor_field"));
    coe_request_free(&r);
    assert_null(r);
}

static void test_defaults(void **state)
{
    (void)state;
    coe_request *r = ok(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                     "\"max_completion_tokens\":7,\"max_tokens\":9}");
    assert_string_equal(r->model, "auto");
    assert_false(r->stream);
    assert_false(r->include_usage);
    assert_int_equal(r->max_tokens, 7); /* the smaller wins, whichever name it has */
    coe_request_free(&r);
    r = ok(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                        "\"max_completion_tokens\":9,\"max_tokens\":7}");
    assert_int_equal(r->max_tokens, 7);
    coe_request_free(&r);
    r = ok(COE_EP_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"once upon\",\"logprobs\":2}");
    assert_string_equal(coe_request_last_user_text(r), "once upon");
    assert_int_equal(r->max_tokens, -1);
    coe_request_free(&r);
}

/* The decoding fields, read once by the parser for the experts that decode. */
static void test_decoding_fields(void **state)
{
    (void)state;
    coe_request *r = ok(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    const coe_decoding *d = &r->decoding;
    assert_true(d->temperature == 1 && d->top_p == 1 && d->top_k == 0 && d->min_p == 0);
    assert_false(d->has_seed || d->logprobs || d->fusion_trace);
    assert_int_equal(d->n_stop + d->n_bias, 0);
    assert_int_equal(d->format, COE_FORMAT_TEXT);
    coe_request_free(&r);
    r = ok(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.25,\"top_k\":5,"
                        "\"seed\":-3,\"logprobs\":true,\"top_logprobs\":4,\"stop\":[\"a\",\"\",\"b\"],"
                        "\"logit_bias\":{\"17\":-100,\"300\":2.5},\"coegate_fusion_trace\":true,"
                        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\","
                        "\"schema\":{\"type\":\"object\"}}}}");
    d = &r->decoding;
    assert_true(d->temperature == 0.25 && d->top_k == 5 && d->has_seed && d->seed == -3);
    assert_true(d->logprobs && d->top_logprobs == 4 && d->fusion_trace);
    assert_int_equal(d->n_stop, 2); /* an empty stop string stops nothing */
    assert_string_equal(d->stop[1], "b");
    assert_int_equal(d->n_bias, 2);
    assert_true(d->bias_ids[1] == 300 && d->bias[1] == 2.5f && d->bias[0] == -100.0f);
    assert_int_equal(d->format, COE_FORMAT_JSON_SCHEMA);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(d->schema, "type"));
    coe_request_free(&r);
    r = ok(COE_EP_COMPLETIONS, "{\"prompt\":\"p\",\"logprobs\":3,\"stop\":\"end\","
                               "\"response_format\":{\"type\":\"json_object\"}}");
    d = &r->decoding;
    assert_true(d->logprobs && d->top_logprobs == 3);
    assert_int_equal(d->n_stop, 1);
    assert_string_equal(d->stop[0], "end");
    assert_int_equal(d->format, COE_FORMAT_JSON_OBJECT);
    coe_request_free(&r);
}

static void test_bad_json(void **state)
{
    (void)state;
    bad(COE_EP_CHAT, "", "", "empty");
    bad(COE_EP_CHAT, "{\"model\":", "", "not valid JSON");
    bad(COE_EP_CHAT, "{} trailing", "", "near byte 3");
    bad(COE_EP_CHAT, "[1,2]", "", "must be a JSON object");
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    coe_request *r = NULL;
    coe_api_error e;
    assert_int_not_equal(coe_request_parse(deep, sizeof deep, COE_EP_CHAT, 32, &r, &e), 0);
    assert_non_null(strstr(e.message, "nested more than 32"));
}

static void test_bad_fields(void **state)
{
    (void)state;
    bad(COE_EP_CHAT, "{\"model\":3,\"messages\":[]}", "model", "must be a string");
    bad(COE_EP_CHAT, "{\"model\":\"a\"}", "messages", "is required");
    bad(COE_EP_CHAT, "{\"messages\":[]}", "messages", "non-empty array");
    bad(COE_EP_CHAT, "{\"messages\":[\"hi\"]}", "messages[0]", "must be an object");
    bad(COE_EP_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role", "is required");
    bad(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"robot\",\"content\":\"x\"}]}",
        "messages[1].role", "got 'robot'");
    bad(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "is required");
    bad(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", "string or an array");
    bad(COE_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}", "messages[0].content[0].type",
        "string 'type'");
    /* A valid chat body with one more field. */
    static const struct {
        const char *field, *param, *text;
    } cases[] = {
        {"\"stream\":\"yes\"", "stream", "true or false"},
        {"\"temperature\":3", "temperature", "from 0 to 2"},
        {"\"max_tokens\":0", "max_tokens", "an integer from 1"},
        {"\"max_tokens\":2.5", "max_tokens", "an integer"},
        {"\"n\":1000", "n", "from 1 to 128"},
        {"\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop", "at most 4"},
        {"\"stream_options\":{\"include_usage\":1}", "stream_options.include_usage", "true or false"},
        {"\"logprobs\":3", "logprobs", "true or false"},
        {"\"logit_bias\":[1]", "logit_bias", "an object"},
        {"\"logit_bias\":{\"-3\":1}", "logit_bias", "'-3' is not a token id"},
        {"\"logit_bias\":{\"7\":101}", "logit_bias", "from -100 to 100"},
        {"\"logit_bias\":{\"7\":\"x\"}", "logit_bias", "from -100 to 100"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char b[256];
        snprintf(b, sizeof b, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s}", cases[i].field);
        bad(COE_EP_CHAT, b, cases[i].param, cases[i].text);
    }
    bad(COE_EP_COMPLETIONS, "{\"model\":\"m\"}", "prompt", "is required");
    bad(COE_EP_COMPLETIONS, "{\"prompt\":{}}", "prompt", "must be a string");
    bad(COE_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs", "an integer from 0 to 5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_chat),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_decoding_fields),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_fields),
    };
    return cmocka_run_group_tests_name("request", tests, NULL, NULL);
}
