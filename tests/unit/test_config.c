/* Configuration validation: every problem is reported, with the file, the JSON
 * path and what is wrong, in exactly these words. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "gateway/config.h"

static coe_config *parse(const char *text, coe_config_mode mode, coe_buf *diag)
{
    coe_config *c = NULL;
    coe_buf_reset(diag);
    coe_config_parse(text, strlen(text), "t.json", mode, &c, diag);
    return c;
}

/* Expects text to be refused with exactly the diagnostics in expect. */
static void refused(const char *text, const char *expect)
{
    coe_buf d = COE_BUF_INIT;
    coe_config *c = parse(text, COE_CONFIG_SERVE, &d);
    assert_null(c);
    assert_string_equal(d.data ? d.data : "", expect);
    coe_buf_free(&d);
}

static void test_minimal_and_defaults(void **state)
{
    (void)state;
    coe_buf d = COE_BUF_INIT;
    coe_config *c = parse("{\"experts\":{\"e\":{\"kind\":\"echo\"}}}", COE_CONFIG_SERVE, &d);
    assert_non_null(c);
    assert_int_equal(d.len, 0);
    assert_string_equal(c->server.host, "127.0.0.1");
    assert_int_equal(c->server.port, 8080);
    assert_int_equal(c->server.max_body_bytes, 4 << 20);
    assert_int_equal(c->n_experts, 1);
    assert_int_equal(c->experts[0].kind, COE_EXPERT_ECHO);
    assert_int_equal(c->n_routes, 0);
    coe_config_unref(&c);
    assert_null(c);
    coe_buf_free(&d);
}

static void test_full(void **state)
{
    (void)state;
    setenv("COE_TEST_KEY", "sk-secret-1234", 1);
    setenv("COE_TEST_CLIENT_KEYS", " k1, k2 ,", 1);
    coe_buf d = COE_BUF_INIT;
    coe_config *c = parse("{\"server\":{\"host\":\"::1\",\"port\":0,\"api_keys_env\":\"COE_TEST_CLIENT_KEYS\"},"
                          "\"experts\":{"
                          "\"big\":{\"kind\":\"remote\",\"base_url\":\"http://127.0.0.1:9/v1/\",\"model\":\"m-70b\","
                          "\"api_key_env\":\"COE_TEST_KEY\",\"headers\":{\"X-Team\":\"a\"},\"fallbacks\":[\"small\"],"
                          "\"max_tokens\":100,\"retries\":1,\"cost\":4.5},"
                          "\"small\":{\"kind\":\"echo\"}},"
                          "\"routes\":{\"auto\":{\"default\":\"big\"}}}",
                          COE_CONFIG_SERVE, &d);
    assert_non_null(c);
    assert_string_equal(d.data ? d.data : "", "");
    const coe_expert_cfg *e = &c->experts[coe_config_find_expert(c, "big")];
    assert_string_equal(e->base_url, "http://127.0.0.1:9/v1"); /* trailing slash dropped */
    assert_string_equal(e->model, "m-70b");
    assert_string_equal(e->api_key, "sk-secret-1234");
    assert_int_equal(e->n_headers, 1);
    assert_string_equal(e->headers[0], "X-Team: a");
    assert_int_equal(e->n_fallbacks, 1);
    assert_int_equal(e->fallbacks[0], coe_config_find_expert(c, "small"));
    assert_int_equal(c->server.n_api_keys, 2);
    assert_string_equal(c->server.api_keys[1], "k2");
    assert_int_equal(c->routes[0].default_expert, 0);
    assert_int_equal(coe_config_find_route(c, "auto"), 0);
    assert_int_equal(coe_config_find_route(c, "big"), -1);
    coe_config_unref(&c);
    coe_buf_free(&d);
}

static void test_json_syntax(void **state)
{
    (void)state;
    /* cJSON places the error just past the stray comma (byte 16). */
    refused("{\n  \"experts\": {,}\n}", "t.json:2:16: invalid JSON near byte 17\n");
    refused("[]", "t.json: $: the configuration must be a JSON object, found an array\n");
}

static void test_every_error_reported(void **state)
{
    (void)state;
    /* where a local expert computes: auto, cpu or cuda, and only local experts say */
    refused("{\"experts\":{\"x\":{\"kind\":\"echo\",\"device\":\"gpu\"}}}",
            "t.json: experts.x.device: must be \"auto\", \"cpu\" or \"cuda\", not \"gpu\"\n"
            "t.json: experts.x.device: only local experts take this key\n");
    unsetenv("COE_TEST_MISSING");
    refused("{\"server\":{\"port\":70000,\"bogus\":1,\"access_log\":\"yes\"},"
            "\"experts\":{"
            "\"a\":{\"kind\":\"remote\",\"base_url\":\"ftp://x\",\"timeout\":5,\"api_key_env\":\"COE_TEST_MISSING\"},"
            "\"b c\":{\"kind\":\"echo\",\"fallbacks\":[\"zz\",\"b c\"],\"base_url\":\"http://x\"},"
            "\"d\":{\"kind\":\"quantum\"},"
            "\"e\":{\"kind\":\"remote\",\"headers\":{\"X-Ok\":\"a\\r\\nInjected: 1\"},\"max_tokens_field\":\"n\"},"
            "\"f\":{\"kind\":\"remote\",\"base_url\":\"http://h:1/v1/chat/completions/\"},"
            "\"g\":{\"kind\":\"remote\",\"base_url\":\"http://h:1\"},"
            "\"h\":{\"kind\":\"remote\",\"base_url\":\"https:///\"}},"
            "\"routes\":{\"auto\":{\"default\":\"nobody\"},\"a\":{\"default\":\"a\"}},"
            "\"extra\":true}",
            "t.json: extra: unknown key (allowed here: server, router, experts, fusions, categories, routes)\n"
            "t.json: server.bogus: unknown key (allowed here: host, port, api_keys_env, max_body_bytes, "
            "stream_buffer_bytes, max_json_depth, connection_timeout_s, headers_timeout_s, body_timeout_s, "
            "max_connections, max_connections_per_ip, threads, max_inflight, shutdown_grace_ms, access_log)\n"
            "t.json: server.port: expected an integer from 0 to 65535, found 70000\n"
            "t.json: server.access_log: expected true or false, found a string\n"
            "t.json: experts.a.timeout: unknown key (allowed here: kind, base_url, model, api_key_env, headers, "
            "connect_timeout_ms, first_byte_timeout_ms, chunk_timeout_ms, stream_timeout_ms, retries, "
            "retry_backoff_ms, max_retry_after_ms, breaker_failures, breaker_cooldown_ms, max_concurrency, "
            "max_tokens, cost, fallbacks, delay_ms, path, threads, device, context, max_batch, max_queue, chat_template, "
            "max_tokens_field, capabilities)\n"
            "t.json: experts.a.base_url: must start with http:// or https://\n"
            "t.json: experts.a.api_key_env: environment variable COE_TEST_MISSING is unset or empty\n"
            "t.json: experts[\"b c\"]: an expert name must be 1-64 characters of letters, digits and _ - . : /\n"
            "t.json: experts[\"b c\"].base_url: only remote experts take this key\n"
            "t.json: experts.d.kind: unknown kind \"quantum\" (expected \"remote\", \"local\" or \"echo\")\n"
            "t.json: experts.e.base_url: missing (a string is required)\n"
            "t.json: experts.e.headers.X-Ok: control characters (such as CR or LF) are not allowed in a header value\n"
            "t.json: experts.e.max_tokens_field: unknown field \"n\" (expected \"max_tokens\" or "
            "\"max_completion_tokens\")\n"
            "t.json: experts.f.base_url: ends with the endpoint /chat/completions: give the API root (such as "
            "http://127.0.0.1:8000/v1), to which coegate adds the endpoint\n"
            "warning: t.json: experts.g.base_url: has no path: vLLM, Ollama and OpenAI serve the API under /v1 (such as "
            "http://127.0.0.1:8000/v1); only llama.cpp's server also answers at the root\n"
            "t.json: experts.h.base_url: has no host\n"
            "t.json: experts[\"b c\"].fallbacks[0]: no expert named \"zz\"\n"
            "t.json: experts[\"b c\"].fallbacks[1]: an expert cannot be its own fallback\n"
            "t.json: routes.auto.default: no expert named \"nobody\"\n"
            "t.json: routes.a: a route cannot have the name of an expert: clients could not tell them apart\n");
}

static void test_duplicates_and_types(void **state)
{
    (void)state;
    refused("{\"experts\":{\"a\":{\"kind\":\"echo\"},\"a\":{\"kind\":\"echo\"}}}",
            "t.json: experts.a: key given more than once\n");
    refused("{\"experts\":{}}", "t.json: experts: empty: at least one expert is required\n");
    refused("{\"server\":[]}",
            "t.json: server: expected an object, found an array\n"
            "t.json: experts: missing: at least one expert is required\n");
    refused("{\"experts\":{\"a\":{\"kind\":\"echo\",\"cost\":-1,\"fallbacks\":\"b\"}}}",
            "t.json: experts.a.cost: expected a number from 0 to 1e+12\n"
            "t.json: experts.a.fallbacks: expected an array of expert names, found a string\n");
    refused("{\"experts\":{\"a\":{\"kind\":\"local\"}}}", "t.json: experts.a.path: missing (a string is required)\n");
    refused("{\"experts\":{\"a\":{\"kind\":\"local\",\"path\":\"/nonexistent/m.gguf\",\"max_batch\":0}}}",
            "t.json: experts.a.max_batch: expected an integer from 1 to 256, found 0\n"
            "t.json: experts.a.path: cannot load the model: /nonexistent/m.gguf: cannot open: No such file or directory\n");
}

static void test_env_only_warns_in_check(void **state)
{
    (void)state;
    unsetenv("COE_TEST_MISSING");
    const char *text = "{\"server\":{\"api_keys_env\":\"COE_TEST_MISSING\"},\"experts\":{\"a\":{\"kind\":\"echo\"}}}";
    coe_buf d = COE_BUF_INIT;
    coe_config *c = parse(text, COE_CONFIG_CHECK, &d);
    assert_non_null(c);
    assert_string_equal(d.data, "warning: t.json: server.api_keys_env: environment variable COE_TEST_MISSING is "
                                "unset or holds no key, so every request would be refused\n");
    coe_config_unref(&c);
    c = parse(text, COE_CONFIG_SERVE, &d);
    assert_null(c);
    coe_buf_free(&d);
}

/* Two experts that fall back to each other load, with a warning: fallbacks are not
 * chained, which a cycle usually means the author expected. */
static void test_fallback_cycle_warns(void **state)
{
    (void)state;
    coe_buf d = COE_BUF_INIT;
    coe_config *c = parse("{\"experts\":{\"a\":{\"kind\":\"echo\",\"fallbacks\":[\"b\"]},"
                          "\"b\":{\"kind\":\"echo\",\"fallbacks\":[\"a\",\"c\"]},\"c\":{\"kind\":\"echo\"}}}",
                          COE_CONFIG_CHECK, &d);
    assert_non_null(c);
    assert_string_equal(d.data, "warning: t.json: experts.a.fallbacks: 'a' and 'b' fall back to each other; "
                                "fallbacks are not chained (only an expert's own list is tried), so neither "
                                "reaches the other's fallbacks\n");
    coe_config_unref(&c);
    coe_buf_free(&d);
}

static void test_load_file(void **state)
{
    (void)state;
    coe_buf d = COE_BUF_INIT;
    coe_config *c = NULL;
    assert_int_equal(coe_config_load("/nonexistent/x.json", COE_CONFIG_SERVE, &c, &d), COE_ENOTFOUND);
    assert_string_equal(d.data, "/nonexistent/x.json: cannot open: No such file or directory\n");
    coe_buf_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_and_defaults), cmocka_unit_test(test_full),
        cmocka_unit_test(test_json_syntax),          cmocka_unit_test(test_every_error_reported),
        cmocka_unit_test(test_duplicates_and_types), cmocka_unit_test(test_env_only_warns_in_check),
        cmocka_unit_test(test_fallback_cycle_warns),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
