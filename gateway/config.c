#include "gateway/config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "backends/local.h"
#include "common/err.h"
#include "common/jsonx.h"
#include "common/log.h"
#include "gateway/request.h"
#include "experts/cuda.h"
#include "router/batcher.h"
#include "router/classifier.h"
#include "router/classifier_cuda.h"

const char coe_config_demo_json[] =
    "{\n"
    "  \"server\": {\"host\": \"127.0.0.1\", \"port\": 8080},\n"
    "  \"experts\": {\n"
    "    \"echo\": {\"kind\": \"echo\", \"delay_ms\": 20}\n"
    "  },\n"
    "  \"routes\": {\"auto\": {\"default\": \"echo\"}}\n"
    "}\n";

/* Validation context: where diagnostics go and how many errors were seen. */
typedef struct vctx {
    coe_buf *diag;
    const char *file;
    coe_config_mode mode;
    int errors;
} vctx;

static void diag(vctx *v, bool warning, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void diag(vctx *v, bool warning, const char *path, const char *fmt, ...)
{
    if (!warning)
        v->errors++;
    if (!v->diag)
        return;
    coe_buf_printf(v->diag, "%s%s: %s: ", warning ? "warning: " : "", v->file, path);
    va_list ap;
    va_start(ap, fmt);
    coe_buf_vprintf(v->diag, fmt, ap);
    va_end(ap);
    coe_buf_puts(v->diag, "\n");
}

#define verr(v, path, ...) diag(v, false, path, __VA_ARGS__)

/* Child path "parent.key", or parent["key"] when key is not a plain word. */
static void child_path(char *out, size_t n, const char *parent, const char *key)
{
    bool plain = *key != '\0';
    for (const char *p = key; *p; p++)
        if (!(*p == '_' || *p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z')))
            plain = false;
    if (plain)
        snprintf(out, n, "%s%s%s", parent, *parent ? "." : "", key);
    else
        snprintf(out, n, "%s[\"%s\"]", parent, key);
}

static const char *type_name(const cJSON *j)
{
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    return "an unknown value";
}

/* Reports keys of obj not in allowed (NULL-terminated; NULL allows any key) and
 * keys given twice, which cJSON would otherwise silently accept. */
static void check_keys(vctx *v, const cJSON *obj, const char *path, const char *const *allowed)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        char p[512];
        child_path(p, sizeof p, path, it->string);
        bool ok = allowed == NULL;
        for (const char *const *a = allowed; a && *a; a++)
            if (strcmp(*a, it->string) == 0)
                ok = true;
        if (!ok) {
            coe_buf list = COE_BUF_INIT;
            for (const char *const *a = allowed; *a; a++)
                coe_buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
            verr(v, p, "unknown key (allowed here: %s)", list.data ? list.data : "none");
            coe_buf_free(&list);
        }
        for (const cJSON *prev = obj->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0) {
                verr(v, p, "key given more than once");
                break;
            }
    }
}

static const cJSON *get(const cJSON *obj, const char *key)
{
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static bool safe_text(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* Reads an optional string; required ones report their absence. Returns a copy. */
static char *get_string(vctx *v, const cJSON *obj, const char *path, const char *key, bool required,
                        const char *dflt)
{
    char p[512];
    child_path(p, sizeof p, path, key);
    const cJSON *j = get(obj, key);
    if (!j) {
        if (required)
            verr(v, p, "missing (a string is required)");
        return dflt ? strdup(dflt) : NULL;
    }
    if (!cJSON_IsString(j)) {
        verr(v, p, "expected a string, found %s", type_name(j));
        return NULL;
    }
    if (!safe_text(j->valuestring)) {
        verr(v, p, "control characters are not allowed");
        return NULL;
    }
    return strdup(j->valuestring);
}

static long get_int(vctx *v, const cJSON *obj, const char *path, const char *key, long lo, long hi,
                    long dflt)
{
    char p[512];
    child_path(p, sizeof p, path, key);
    const cJSON *j = get(obj, key);
    if (!j)
        return dflt;
    if (!coe_json_is_int_in(j, (double)lo, (double)hi)) {
        if (cJSON_IsNumber(j))
            verr(v, p, "expected an integer from %ld to %ld, found %g", lo, hi, j->valuedouble);
        else
            verr(v, p, "expected an integer from %ld to %ld, found %s", lo, hi, type_name(j));
        return dflt;
    }
    return (long)j->valuedouble;
}

static double get_number(vctx *v, const cJSON *obj, const char *path, const char *key, double lo,
                         double hi, double dflt)
{
    char p[512];
    child_path(p, sizeof p, path, key);
    const cJSON *j = get(obj, key);
    if (!j)
        return dflt;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < lo || j->valuedouble > hi) {
        verr(v, p, "expected a number from %g to %g", lo, hi);
        return dflt;
    }
    return j->valuedouble;
}

static bool get_bool(vctx *v, const cJSON *obj, const char *path, const char *key, bool dflt)
{
    char p[512];
    child_path(p, sizeof p, path, key);
    const cJSON *j = get(obj, key);
    if (!j)
        return dflt;
    if (!cJSON_IsBool(j)) {
        verr(v, p, "expected true or false, found %s", type_name(j));
        return dflt;
    }
    return cJSON_IsTrue(j);
}

/* Names of experts and routes: they travel in headers and URLs, so keep them plain. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > COE_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!(*s == '_' || *s == '-' || *s == '.' || *s == ':' || *s == '/' || (*s >= '0' && *s <= '9') ||
              (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

static bool valid_header_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(*s == '-' || *s == '_' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

/* Splits a comma-separated list of keys from the environment. */
static int split_keys(const char *s, char ***out)
{
    int n = 0;
    char **keys = NULL;
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if (t > p) {
            char **k = realloc(keys, sizeof *keys * (size_t)(n + 1));
            if (!k)
                break;
            keys = k;
            keys[n++] = strndup(p, (size_t)(t - p));
        }
        p = e;
    }
    *out = keys;
    return n;
}

static const char *const server_keys[] = {
    "host", "port", "api_keys_env", "max_body_bytes", "stream_buffer_bytes", "max_json_depth",
    "connection_timeout_s", "headers_timeout_s", "body_timeout_s", "max_connections", "max_connections_per_ip",
    "threads", "max_inflight", "shutdown_grace_ms", "access_log", NULL};

static void parse_server(vctx *v, const cJSON *j, coe_server_cfg *s)
{
    const char *path = "server";
    if (j && !cJSON_IsObject(j)) {
        verr(v, path, "expected an object, found %s", type_name(j));
        j = NULL;
    }
    if (j)
        check_keys(v, j, path, server_keys);
    s->host = get_string(v, j, path, "host", false, "127.0.0.1");
    s->port = (int)get_int(v, j, path, "port", 0, 65535, 8080);
    s->max_body_bytes = (size_t)get_int(v, j, path, "max_body_bytes", 1024, 1L << 30, 4L << 20);
    s->stream_buffer_bytes = (size_t)get_int(v, j, path, "stream_buffer_bytes", 65536, 1L << 30, 16L << 20);
    s->max_json_depth = (int)get_int(v, j, path, "max_json_depth", 2, 512, 64);
    s->connection_timeout_s = (int)get_int(v, j, path, "connection_timeout_s", 1, 3600, 30);
    s->headers_timeout_s = (int)get_int(v, j, path, "headers_timeout_s", 1, 3600, 10);
    s->body_timeout_s = (int)get_int(v, j, path, "body_timeout_s", 1, 86400, 60);
    s->max_connections = (int)get_int(v, j, path, "max_connections", 1, 1000000, 4096);
    s->max_connections_per_ip = (int)get_int(v, j, path, "max_connections_per_ip", 0, 1000000, 1024);
    s->threads = (int)get_int(v, j, path, "threads", 0, 1024, 0);
    s->max_inflight = (int)get_int(v, j, path, "max_inflight", 1, 1000000, 2048);
    s->shutdown_grace_ms = get_int(v, j, path, "shutdown_grace_ms", 0, 3600000, 10000);
    s->access_log = get_bool(v, j, path, "access_log", true);
    s->api_keys_env = get_string(v, j, path, "api_keys_env", false, NULL);
    if (s->api_keys_env) {
        const char *val = getenv(s->api_keys_env);
        if (val)
            s->n_api_keys = split_keys(val, &s->api_keys);
        if (s->n_api_keys == 0)
            diag(v, v->mode == COE_CONFIG_CHECK, "server.api_keys_env",
                 "environment variable %s is unset or holds no key, so every request would be refused",
                 s->api_keys_env);
    }
}

/* A file named in the configuration: relative paths are taken from the
 * configuration file's folder. */
static void resolve_path(const vctx *v, const char *name, char *full, size_t size)
{
    const char *slash = strrchr(v->file, '/');
    if (name[0] != '/' && slash && v->file[0] != '<')
        snprintf(full, size, "%.*s/%s", (int)(slash - v->file), v->file, name);
    else
        snprintf(full, size, "%s", name);
}

/* Loads a local expert's model with the configuration, so a bad file is refused at
 * load (or reload) time with the path, not at the first request. */
static void open_local(vctx *v, const char *path, coe_expert_cfg *e)
{
    char full[4096], p[512];
    resolve_path(v, e->path, full, sizeof full);
    coe_local_opts o = {e->name,          full,         e->threads,      (coe_device)e->device,
                        e->context,       e->max_batch, e->max_queue,    e->chat_template};
    coe_buf why = COE_BUF_INIT;
    if (coe_local_open(&e->local, &o, v->mode == COE_CONFIG_SERVE, &why)) {
        size_t n = why.len;
        while (n > 0 && why.data[n - 1] == '\n')
            why.data[--n] = '\0';
        const char *said = why.data ? why.data : "";
        child_path(p, sizeof p, path, e->chat_template && strstr(said, "chat_template") == said ? "chat_template"
                                      : strncmp(said, "device ", 7) == 0                        ? "device"
                                                                                                : "path");
        if (strncmp(said, "device ", 7) == 0)
            verr(v, p, "%s", said + 7); /* "cuda: why not" */
        else
            verr(v, p, "cannot load the model: %s", why.data ? why.data : "unknown error");
    }
    coe_buf_free(&why);
}

/* What a request may ask of the expert (coe_cap_names): a remote one serves all it
 * is not told otherwise; local and echo experts serve none of them. */
static void parse_capabilities(vctx *v, const cJSON *j, const char *path, coe_expert_cfg *e)
{
    e->capabilities = e->kind == COE_EXPERT_REMOTE  ? COE_CAP_ALL
                      : e->kind == COE_EXPERT_LOCAL ? COE_CAP_RESPONSE_FORMAT | COE_CAP_JSON_SCHEMA /* constrained decoding */
                                                    : 0;
    const cJSON *caps = get(j, "capabilities");
    if (!caps || e->kind != COE_EXPERT_REMOTE)
        return;
    char p[600];
    child_path(p, sizeof p, path, "capabilities");
    if (!cJSON_IsArray(caps)) {
        verr(v, p, "expected an array of capability names (tools, response_format, n, images, embeddings, "
                   "json_schema), found %s",
             type_name(caps));
        return;
    }
    e->capabilities = 0;
    int k = 0;
    for (const cJSON *c = caps->child; c; c = c->next, k++) {
        char cp[640];
        snprintf(cp, sizeof cp, "%s[%d]", p, k);
        int bit = -1;
        for (int i = 0; cJSON_IsString(c) && i < COE_CAP_COUNT; i++)
            if (strcmp(c->valuestring, coe_cap_names[i]) == 0)
                bit = i;
        if (bit < 0)
            verr(v, cp, "expected one of tools, response_format, n, images, embeddings, json_schema");
        else
            e->capabilities |= 1u << bit;
    }
}

static const char *const expert_keys[] = {
    "kind", "base_url", "model", "api_key_env", "headers", "connect_timeout_ms",
    "first_byte_timeout_ms", "chunk_timeout_ms", "stream_timeout_ms", "retries", "retry_backoff_ms",
    "max_retry_after_ms", "breaker_failures", "breaker_cooldown_ms", "max_concurrency", "max_tokens", "cost",
    "fallbacks", "delay_ms", "path", "threads", "device", "context", "max_batch", "max_queue", "chat_template",
    "max_tokens_field", "capabilities", NULL};

static void parse_headers(vctx *v, const cJSON *j, const char *path, coe_expert_cfg *e)
{
    char p[512];
    child_path(p, sizeof p, path, "headers");
    if (!j)
        return;
    if (!cJSON_IsObject(j)) {
        verr(v, p, "expected an object of header names to values, found %s", type_name(j));
        return;
    }
    e->headers = calloc((size_t)cJSON_GetArraySize(j) + 1, sizeof *e->headers);
    for (const cJSON *h = j->child; h && e->headers; h = h->next) {
        char hp[640];
        child_path(hp, sizeof hp, p, h->string);
        if (!valid_header_name(h->string)) {
            verr(v, hp, "not a valid header name (letters, digits, '-' and '_' only)");
            continue;
        }
        if (strcasecmp(h->string, "authorization") == 0 && e->api_key_env) {
            verr(v, hp, "conflicts with api_key_env, which sets Authorization");
            continue;
        }
        if (!cJSON_IsString(h)) {
            verr(v, hp, "expected a string, found %s", type_name(h));
            continue;
        }
        if (!safe_text(h->valuestring)) {
            verr(v, hp, "control characters (such as CR or LF) are not allowed in a header value");
            continue;
        }
        size_t n = strlen(h->string) + strlen(h->valuestring) + 3;
        char *line = malloc(n);
        if (line) {
            snprintf(line, n, "%s: %s", h->string, h->valuestring);
            e->headers[e->n_headers++] = line;
        }
    }
}

/* The common start of a named entry (an expert, a route): copies and checks the
 * name, then the entry's keys. False when the entry is not an object at all. */
static bool named_entry(vctx *v, const cJSON *j, const char *path, const char *what, char *name,
                        const char *const *keys)
{
    snprintf(name, COE_NAME_MAX + 1, "%s", j->string);
    /* Categories come from training data ("computer science"): any printable text. */
    bool category = strcmp(what, "a category") == 0;
    if (category ? (!*j->string || strlen(j->string) > COE_NAME_MAX || !safe_text(j->string))
                 : !valid_name(j->string))
        verr(v, path, category ? "%s name must be 1-%d printable characters"
                               : "%s name must be 1-%d characters of letters, digits and _ - . : /",
             what, COE_NAME_MAX);
    if (!cJSON_IsObject(j)) {
        verr(v, path, "expected an object, found %s", type_name(j));
        return false;
    }
    check_keys(v, j, path, keys);
    return true;
}

static void parse_expert(vctx *v, const cJSON *j, const char *path, coe_expert_cfg *e)
{
    if (!named_entry(v, j, path, "an expert", e->name, expert_keys))
        return;
    char p[512];
    char *kind = get_string(v, j, path, "kind", true, NULL);
    child_path(p, sizeof p, path, "kind");
    /* Keys that only one kind takes are checked only once the kind is known. */
    bool known = true;
    e->kind = COE_EXPERT_ECHO;
    if (kind && strcmp(kind, "remote") == 0) {
        e->kind = COE_EXPERT_REMOTE;
    } else if (kind && strcmp(kind, "echo") == 0) {
        e->kind = COE_EXPERT_ECHO;
    } else if (kind && strcmp(kind, "local") == 0) {
        e->kind = COE_EXPERT_LOCAL;
    } else if (kind) {
        verr(v, p, "unknown kind \"%s\" (expected \"remote\", \"local\" or \"echo\")", kind);
    }
    if (!kind || (strcmp(kind, "remote") != 0 && strcmp(kind, "echo") != 0 && strcmp(kind, "local") != 0))
        known = false;
    free(kind);

    bool remote = e->kind == COE_EXPERT_REMOTE;
    e->base_url = get_string(v, j, path, "base_url", remote, NULL);
    if (e->base_url) {
        child_path(p, sizeof p, path, "base_url");
        bool usable = false;
        if (strncmp(e->base_url, "http://", 7) != 0 && strncmp(e->base_url, "https://", 8) != 0)
            verr(v, p, "must start with http:// or https://");
        else if (strchr(e->base_url, ' '))
            verr(v, p, "must not contain spaces");
        else
            usable = remote;
        size_t n = strlen(e->base_url);
        while (n > 0 && e->base_url[n - 1] == '/')
            e->base_url[--n] = '\0';
        const char *host = strstr(e->base_url, "://");
        if (usable && (!host || !host[3] || host[3] == '/')) {
            verr(v, p, "has no host");
            usable = false;
        }
        /* The usual mistakes: the endpoint's URL, or the server's without its API root. */
        static const char *const endpoints[] = {"/chat/completions", "/completions", "/models", NULL};
        for (const char *const *ep = endpoints; usable && *ep; ep++)
            if (n >= strlen(*ep) && strcmp(e->base_url + n - strlen(*ep), *ep) == 0) {
                verr(v, p, "ends with the endpoint %s: give the API root (such as http://127.0.0.1:8000/v1), "
                           "to which coegate adds the endpoint", *ep);
                usable = false;
            }
        if (usable && !strchr(host + 3, '/'))
            diag(v, true, p, "has no path: vLLM, Ollama and OpenAI serve the API under /v1 (such as "
                             "http://127.0.0.1:8000/v1); only llama.cpp's server also answers at the root");
    }
    e->model = get_string(v, j, path, "model", false, e->name);
    e->api_key_env = get_string(v, j, path, "api_key_env", false, NULL);
    if (e->api_key_env) {
        child_path(p, sizeof p, path, "api_key_env");
        const char *val = getenv(e->api_key_env);
        if (!val || !*val)
            diag(v, v->mode == COE_CONFIG_CHECK, p, "environment variable %s is unset or empty",
                 e->api_key_env);
        else if (!safe_text(val))
            verr(v, p, "environment variable %s holds control characters", e->api_key_env);
        else
            e->api_key = strdup(val);
    }
    parse_headers(v, get(j, "headers"), path, e);
    e->connect_timeout_ms = get_int(v, j, path, "connect_timeout_ms", 1, 600000, 5000);
    e->first_byte_timeout_ms = get_int(v, j, path, "first_byte_timeout_ms", 1, 3600000, 60000);
    e->chunk_timeout_ms = get_int(v, j, path, "chunk_timeout_ms", 1, 3600000, 60000);
    e->stream_timeout_ms = get_int(v, j, path, "stream_timeout_ms", 0, 86400000, 0);
    e->retries = (int)get_int(v, j, path, "retries", 0, 10, 2);
    e->retry_backoff_ms = get_int(v, j, path, "retry_backoff_ms", 0, 60000, 100);
    e->max_retry_after_ms = get_int(v, j, path, "max_retry_after_ms", 0, 600000, 5000);
    e->max_concurrency = (int)get_int(v, j, path, "max_concurrency", 0, 1000000, 0);
    e->breaker_failures = (int)get_int(v, j, path, "breaker_failures", 0, 1000, 5);
    e->breaker_cooldown_ms = get_int(v, j, path, "breaker_cooldown_ms", 1, 3600000, 10000);
    e->max_tokens = get_int(v, j, path, "max_tokens", 0, 100000000, 0);
    char *field = get_string(v, j, path, "max_tokens_field", false, "max_tokens");
    if (field && strcmp(field, "max_tokens") != 0 && strcmp(field, "max_completion_tokens") != 0) {
        char p[512];
        child_path(p, sizeof p, path, "max_tokens_field");
        verr(v, p, "unknown field \"%s\" (expected \"max_tokens\" or \"max_completion_tokens\")", field);
    }
    e->send_max_completion_tokens = field && strcmp(field, "max_completion_tokens") == 0;
    free(field);
    parse_capabilities(v, j, path, e);
    e->cost = get_number(v, j, path, "cost", 0, 1e12, 1.0);
    e->delay_ms = get_int(v, j, path, "delay_ms", 0, 10000, 0);
    bool local = e->kind == COE_EXPERT_LOCAL;
    e->path = get_string(v, j, path, "path", local && known, NULL);
    e->threads = (int)get_int(v, j, path, "threads", 0, 1024, 0);
    char *device = get_string(v, j, path, "device", false, NULL);
    e->device = device ? coe_device_parse(device) : COE_DEVICE_AUTO;
    if (e->device < 0) {
        child_path(p, sizeof p, path, "device");
        verr(v, p, "must be \"auto\", \"cpu\" or \"cuda\", not \"%s\"", device);
    }
    free(device);
    e->context = (int)get_int(v, j, path, "context", 0, 1 << 20, 0);
    e->max_batch = (int)get_int(v, j, path, "max_batch", 1, 256, 8);
    e->max_queue = (int)get_int(v, j, path, "max_queue", 0, 100000, 64);
    e->chat_template = get_string(v, j, path, "chat_template", false, NULL);
    static const char *const remote_only[] = {"base_url", "api_key_env", "headers", "max_tokens_field",
                                              "capabilities", NULL};
    static const char *const local_only[] = {"path", "threads", "device", "context", "max_batch", "max_queue",
                                             "chat_template", NULL};
    for (const char *const *k = remote_only; known && !remote && *k; k++)
        if (get(j, *k)) {
            child_path(p, sizeof p, path, *k);
            verr(v, p, "only remote experts take this key");
        }
    for (const char *const *k = local_only; known && !local && *k; k++)
        if (get(j, *k)) {
            child_path(p, sizeof p, path, *k);
            verr(v, p, "only local experts take this key");
        }
    if (local && known && e->path)
        open_local(v, path, e);
}

/* Second pass: fallbacks name other experts. */
static void resolve_fallbacks(vctx *v, const cJSON *experts, coe_config *c)
{
    int i = 0;
    for (const cJSON *j = experts->child; j; j = j->next, i++) {
        coe_expert_cfg *e = &c->experts[i];
        char path[512], p[640];
        child_path(path, sizeof path, "experts", j->string);
        child_path(p, sizeof p, path, "fallbacks");
        const cJSON *fb = get(j, "fallbacks");
        if (!fb)
            continue;
        if (!cJSON_IsArray(fb)) {
            verr(v, p, "expected an array of expert names, found %s", type_name(fb));
            continue;
        }
        e->fallbacks = calloc((size_t)cJSON_GetArraySize(fb) + 1, sizeof *e->fallbacks);
        int k = 0;
        for (const cJSON *f = fb->child; f && e->fallbacks; f = f->next, k++) {
            char fp[700];
            snprintf(fp, sizeof fp, "%s[%d]", p, k);
            if (!cJSON_IsString(f)) {
                verr(v, fp, "expected an expert name, found %s", type_name(f));
                continue;
            }
            int idx = coe_config_find_expert(c, f->valuestring);
            if (idx < 0)
                verr(v, fp, "no expert named \"%s\"", f->valuestring);
            else if (idx == i)
                verr(v, fp, "an expert cannot be its own fallback");
            else
                e->fallbacks[e->n_fallbacks++] = idx;
        }
    }
    /* Fallbacks are one level deep (a fallback's own fallbacks are not tried), so a
     * cycle cannot loop; but it usually means a chain was meant: say so. */
    i = 0;
    for (const cJSON *j = experts->child; j; j = j->next, i++) {
        const coe_expert_cfg *e = &c->experts[i];
        for (int k = 0; k < e->n_fallbacks; k++) {
            const coe_expert_cfg *f = &c->experts[e->fallbacks[k]];
            for (int b = 0; b < f->n_fallbacks; b++)
                if (f->fallbacks[b] == i && e->fallbacks[k] > i) { /* each pair once */
                    char path[512], p[640];
                    child_path(path, sizeof path, "experts", j->string);
                    child_path(p, sizeof p, path, "fallbacks");
                    diag(v, true, p, "'%s' and '%s' fall back to each other; fallbacks are not chained (only "
                                     "an expert's own list is tried), so neither reaches the other's fallbacks",
                         e->name, f->name);
                }
        }
    }
}

static const char *const fusion_keys[] = {"experts", "router", "selector", "mode", "lambda", "max_tokens",
                                          "max_concurrency", "cost", NULL};

/* The local expert named by string j (at path p), or -1 (reported). */
static int local_member(vctx *v, const coe_config *c, const cJSON *j, const char *p)
{
    if (!cJSON_IsString(j)) {
        verr(v, p, "expected the name of a local expert, found %s", type_name(j));
        return -1;
    }
    int idx = coe_config_find_expert(c, j->valuestring);
    if (idx < 0)
        verr(v, p, "no expert named \"%s\"", j->valuestring);
    else if (c->experts[idx].kind != COE_EXPERT_LOCAL)
        verr(v, p, "\"%s\" is not a local expert: fusion runs local models in step", j->valuestring);
    return idx >= 0 && c->experts[idx].kind == COE_EXPERT_LOCAL ? idx : -1;
}

/* A fusion group, served as an expert of kind fusion under its name. */
static void parse_fusion(vctx *v, const cJSON *j, const char *path, coe_config *c, coe_expert_cfg *e)
{
    e->kind = COE_EXPERT_FUSION;
    e->capabilities = COE_CAP_RESPONSE_FORMAT | COE_CAP_JSON_SCHEMA; /* constrained decoding, as local experts */
    e->router_expert = -1;
    if (!named_entry(v, j, path, "a fusion group", e->name, fusion_keys))
        return;
    if (coe_config_find_expert(c, e->name) >= 0)
        verr(v, path, "an expert or fusion group has this name already");
    char p[512], q[640];
    int errors = v->errors;
    child_path(p, sizeof p, path, "experts");
    const cJSON *ex = get(j, "experts");
    int n = cJSON_IsArray(ex) ? cJSON_GetArraySize(ex) : 0;
    if (n < 1 || n > COE_FUSION_MAX_EXPERTS) {
        verr(v, p, "expected an array of 1 to %d local expert names", COE_FUSION_MAX_EXPERTS);
    } else if ((e->members = calloc((size_t)n, sizeof *e->members))) {
        int i = 0;
        for (const cJSON *m = ex->child; m; m = m->next, i++) {
            snprintf(q, sizeof q, "%s[%d]", p, i);
            int idx = local_member(v, c, m, q);
            for (int k = 0; idx >= 0 && k < e->n_members; k++)
                if (e->members[k] == idx) {
                    verr(v, q, "\"%s\" is listed twice", m->valuestring);
                    idx = -1;
                }
            if (idx >= 0)
                e->members[e->n_members++] = idx;
        }
    }
    child_path(p, sizeof p, path, "router");
    const cJSON *router = get(j, "router");
    if (!router)
        verr(v, p, "missing: the local expert whose model routes (its hidden state feeds the selector)");
    else
        e->router_expert = local_member(v, c, router, p);
    char *sel = get_string(v, j, path, "selector", true, NULL);
    if (sel) {
        char full[4096];
        resolve_path(v, sel, full, sizeof full);
        e->selector_path = strdup(full);
        free(sel);
    }
    char *mode = get_string(v, j, path, "mode", false, "fusionroute");
    coe_fusion_mode fm = COE_FUSION_ROUTE;
    if (mode && !coe_fusion_mode_from_name(mode, &fm)) {
        child_path(p, sizeof p, path, "mode");
        verr(v, p, "unknown mode \"%s\" (expected \"fusionroute\", \"select\" or \"mix\")", mode);
    }
    free(mode);
    e->fusion_mode = (int)fm;
    e->lambda_set = get(j, "lambda") != NULL;
    e->lambda = get_number(v, j, path, "lambda", 0, 100, 0);
    e->max_tokens = get_int(v, j, path, "max_tokens", 0, 100000000, 0);
    e->max_concurrency = (int)get_int(v, j, path, "max_concurrency", 0, 1000000, 0);
    e->cost = get_number(v, j, path, "cost", 0, 1e12, 1.0);
    if (v->errors != errors || !e->selector_path || e->router_expert < 0)
        return;
    coe_local *members[COE_FUSION_MAX_EXPERTS];
    const char *names[COE_FUSION_MAX_EXPERTS];
    for (int k = 0; k < e->n_members; k++) {
        members[k] = c->experts[e->members[k]].local;
        names[k] = c->experts[e->members[k]].name;
        if (!members[k])
            return; /* its model did not load: reported there */
    }
    const coe_expert_cfg *r = &c->experts[e->router_expert];
    if (!r->local)
        return;
    coe_fusion_opts o = {members, names, e->n_members, r->local, r->name, e->selector_path, fm, (float)e->lambda,
                         e->lambda_set};
    coe_buf why = COE_BUF_INIT;
    if (coe_fusion_open(&e->fusion, &o, &why)) {
        /* "experts: ..." or "selector: ...": the field, then what is wrong with it. */
        char *msg = why.data ? why.data : "unknown error";
        char *colon = strstr(msg, ": ");
        size_t n_msg = strlen(msg);
        while (n_msg > 0 && msg[n_msg - 1] == '\n')
            msg[--n_msg] = '\0';
        for (char *nl = strchr(msg, '\n'); nl; nl = strchr(nl, '\n'))
            *nl = ' ';
        if (colon && (strncmp(msg, "experts", 7) == 0 || strncmp(msg, "selector", 8) == 0)) {
            *colon = '\0';
            child_path(p, sizeof p, path, msg);
            verr(v, p, "%s", colon + 2);
        } else {
            verr(v, path, "%s", msg);
        }
    }
    coe_buf_free(&why);
}

static const char *const category_keys[] = {"experts", NULL};

static void parse_category(vctx *v, const cJSON *j, const char *path, coe_config *c, coe_category_cfg *cat)
{
    if (!named_entry(v, j, path, "a category", cat->name, category_keys))
        return;
    char p[512];
    child_path(p, sizeof p, path, "experts");
    const cJSON *ex = get(j, "experts");
    if (!cJSON_IsObject(ex) || !ex->child) {
        verr(v, p, "expected an object of expert names to quality scores, with at least one expert");
        return;
    }
    int n = cJSON_GetArraySize(ex);
    cat->experts = calloc((size_t)n, sizeof *cat->experts);
    cat->quality = calloc((size_t)n, sizeof *cat->quality);
    if (!cat->experts || !cat->quality)
        return;
    check_keys(v, ex, p, NULL);
    for (const cJSON *e = ex->child; e; e = e->next) {
        char ep[640];
        child_path(ep, sizeof ep, p, e->string);
        int idx = coe_config_find_expert(c, e->string);
        if (idx < 0)
            verr(v, ep, "no expert named \"%s\"", e->string);
        else if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble))
            verr(v, ep, "expected a quality score (a number), found %s", type_name(e));
        else {
            cat->experts[cat->n_experts] = idx;
            cat->quality[cat->n_experts++] = e->valuedouble;
        }
    }
}

static const char *const route_keys[] = {"default", "router", "threshold", "fallback", "cost_weight", NULL};

/* An expert named by key of route j, or -1 (reported when required). */
static int route_expert(vctx *v, const cJSON *j, const char *path, const char *key, bool required, coe_config *c)
{
    char *name = get_string(v, j, path, key, required, NULL);
    int idx = -1;
    if (name) {
        char p[512];
        child_path(p, sizeof p, path, key);
        idx = coe_config_find_expert(c, name);
        if (idx < 0)
            verr(v, p, "no expert named \"%s\"", name);
    }
    free(name);
    return idx;
}

static void parse_route(vctx *v, const cJSON *j, const char *path, coe_config *c, coe_route_cfg *r)
{
    r->default_expert = r->fallback_expert = -1;
    if (!named_entry(v, j, path, "a route", r->name, route_keys))
        return;
    r->default_expert = route_expert(v, j, path, "default", true, c);
    if (coe_config_find_expert(c, r->name) >= 0)
        verr(v, path, "a route cannot have the name of an expert: clients could not tell them apart");
    r->router_path = get_string(v, j, path, "router", false, NULL);
    r->threshold = get_number(v, j, path, "threshold", 0, 1, 0);
    r->cost_weight = get_number(v, j, path, "cost_weight", 0, 1e12, 0);
    r->fallback_expert = route_expert(v, j, path, "fallback", false, c);
    if (r->fallback_expert < 0)
        r->fallback_expert = r->default_expert;
    char p[512];
    if (!r->router_path) {
        static const char *const needs_router[] = {"threshold", "fallback", "cost_weight", NULL};
        for (const char *const *k = needs_router; *k; k++)
            if (get(j, *k)) {
                child_path(p, sizeof p, path, *k);
                verr(v, p, "takes effect only with a router");
            }
        return;
    }
    /* The router is loaded with the configuration; a relative path is taken from the
     * configuration file's folder. */
    child_path(p, sizeof p, path, "router");
    char full[4096];
    resolve_path(v, r->router_path, full, sizeof full);
    coe_buf why = COE_BUF_INIT;
    if (coe_router_open(&r->router, full, &why)) {
        size_t n = why.len;
        while (n > 0 && why.data[n - 1] == '\n')
            why.data[--n] = '\0';
        verr(v, p, "cannot load the router: %s", why.data ? why.data : "unknown error");
        coe_buf_free(&why);
        return;
    }
    coe_buf_free(&why);
    r->category_of_class = malloc((size_t)r->router->n_classes * sizeof *r->category_of_class);
    int mapped = 0;
    for (int k = 0; r->category_of_class && k < r->router->n_classes; k++) {
        r->category_of_class[k] = coe_config_find_category(c, r->router->categories[k]);
        mapped += r->category_of_class[k] >= 0;
    }
    if (mapped == 0)
        diag(v, true, p, "none of the router's %d categories is configured under \"categories\": every request "
                         "goes to the default expert", r->router->n_classes);
}

/* A category that no route's router can produce never receives a request: a name
 * spelt differently from the router's, or a router trained without it. */
static void check_categories_reachable(vctx *v, const coe_config *c)
{
    bool any_router = false;
    for (int r = 0; r < c->n_routes; r++)
        any_router |= c->routes[r].router && c->routes[r].category_of_class;
    for (int k = 0; any_router && k < c->n_categories; k++) {
        bool reached = false;
        for (int r = 0; r < c->n_routes && !reached; r++) {
            const coe_route_cfg *rt = &c->routes[r];
            for (int i = 0; rt->router && rt->category_of_class && i < rt->router->n_classes && !reached; i++)
                reached = rt->category_of_class[i] == k;
        }
        if (reached)
            continue;
        char path[512];
        child_path(path, sizeof path, "categories", c->categories[k].name);
        coe_buf known = COE_BUF_INIT;
        /* Each name once: routes may share a router, and finer classes their category. */
        for (int r = 0; r < c->n_routes; r++)
            for (int i = 0; c->routes[r].router && i < c->routes[r].router->n_classes; i++) {
                const char *name = c->routes[r].router->categories[i];
                bool seen = false;
                for (int r2 = 0; r2 <= r && !seen; r2++)
                    for (int j = 0; c->routes[r2].router && j < (r2 < r ? c->routes[r2].router->n_classes : i) && !seen;
                         j++)
                        seen = strcmp(c->routes[r2].router->categories[j], name) == 0;
                if (!seen)
                    coe_buf_printf(&known, "%s%s", known.len ? ", " : "", name);
            }
        diag(v, true, path, "no route's router produces this category (they produce: %s): no request reaches it",
             known.data ? known.data : "");
        coe_buf_free(&known);
    }
}

static const char *const top_keys[] = {"server", "router", "experts", "fusions", "categories", "routes", NULL};
static const char *const router_keys[] = {"device", "batch_window_us", "max_batch", NULL};

/* Where the routers classify; the batching window is set, or -1 for the default:
 * 200 us on a GPU, 0 (no batching) on the CPU, where a single query is cheaper. */
static void parse_router_settings(vctx *v, const cJSON *j, coe_router_settings *r)
{
    r->device = COE_DEVICE_AUTO;
    r->batch_window_us = -1;
    r->max_batch = 1024;
    if (!j)
        return;
    if (!cJSON_IsObject(j)) {
        verr(v, "router", "expected an object, found %s", type_name(j));
        return;
    }
    check_keys(v, j, "router", router_keys);
    char *device = get_string(v, j, "router", "device", false, NULL);
    if (device && (r->device = coe_device_parse(device)) < 0)
        verr(v, "router.device", "must be \"auto\", \"cpu\" or \"cuda\", not \"%s\"", device);
    free(device);
    r->batch_window_us = (int)get_int(v, j, "router", "batch_window_us", 0, 100000, -1);
    r->max_batch = (int)get_int(v, j, "router", "max_batch", 1, 65536, 1024);
    if (r->device == COE_DEVICE_CUDA && coe_cuda_device_count() == 0)
        verr(v, "router.device", "cuda: no CUDA device is found (no GPU, driver or CUDA build)");
}

static int cpu_batch(void *router, const coe_features *const *f, int n, float *probs, coe_buf *diag)
{
    (void)diag;
    return coe_router_classify_batch(router, f, n, probs);
}

/* Serving: the route's router on the GPU (router.device) behind a batcher, or on the
 * CPU, batched only when a window is set; auto stays on the CPU, saying why, when the
 * GPU cannot be had. */
static void route_device(vctx *v, const coe_router_settings *s, coe_route_cfg *r)
{
    if (v->mode != COE_CONFIG_SERVE)
        return;
    if (s->device != COE_DEVICE_CPU && coe_cuda_device_count() > 0) {
        coe_buf why = COE_BUF_INIT;
        int rc = coe_router_gpu_open(&r->gpu, r->router, 0, s->max_batch, (size_t)s->max_batch * 4096, &why);
        const char *said = why.data ? why.data : coe_strerror(rc);
        if (rc && s->device == COE_DEVICE_CUDA)
            verr(v, "router.device", "cuda: %s", said);
        else if (rc)
            coe_info("route '%s': its router stays on the CPU: %s", r->name, said);
        coe_buf_free(&why);
    }
    int window = s->batch_window_us >= 0 ? s->batch_window_us : r->gpu ? 200 : 0;
    if (r->gpu)
        coe_router_batcher_open(&r->batcher, coe_router_gpu_batch, r->gpu, r->router->n_classes, window,
                                s->max_batch);
    else if (window > 0)
        coe_router_batcher_open(&r->batcher, cpu_batch, r->router, r->router->n_classes, window, s->max_batch);
    if (r->batcher)
        coe_info("route '%s': classifies on %s, up to %d requests together within %d us", r->name,
                 r->gpu ? coe_router_gpu_device(r->gpu) : "the CPU", s->max_batch, window);
}

int coe_config_parse(const char *text, size_t len, const char *name, coe_config_mode mode,
                     coe_config **out, coe_buf *d)
{
    *out = NULL;
    vctx v = {d, name, mode, 0};
    size_t off = 0;
    int depth = coe_json_depth(text, len, 64);
    if (depth > 64) {
        verr(&v, "$", "nested more than 64 levels deep");
        return COE_EPARSE;
    }
    cJSON *root = coe_json_parse(text, len, &off);
    if (!root) {
        int line, col;
        coe_json_line_col(text, len, off, &line, &col);
        if (d)
            coe_buf_printf(d, "%s:%d:%d: invalid JSON near byte %zu\n", name, line, col, off);
        return COE_EPARSE;
    }
    coe_config *c = calloc(1, sizeof *c);
    if (!c) {
        cJSON_Delete(root);
        return COE_ENOMEM;
    }
    atomic_init(&c->refs, 1);
    c->path = strdup(name);
    if (!cJSON_IsObject(root)) {
        verr(&v, "$", "the configuration must be a JSON object, found %s", type_name(root));
        goto done;
    }
    check_keys(&v, root, "", top_keys);
    parse_server(&v, get(root, "server"), &c->server);
    parse_router_settings(&v, get(root, "router"), &c->router);

    const cJSON *experts = get(root, "experts");
    if (!experts) {
        verr(&v, "experts", "missing: at least one expert is required");
    } else if (!cJSON_IsObject(experts)) {
        verr(&v, "experts", "expected an object of expert names to experts, found %s", type_name(experts));
    } else if (!experts->child) {
        verr(&v, "experts", "empty: at least one expert is required");
    } else {
        c->n_experts = cJSON_GetArraySize(experts);
        const cJSON *fusions = get(root, "fusions");
        int n_fusions = cJSON_IsObject(fusions) ? cJSON_GetArraySize(fusions) : 0;
        c->experts = calloc((size_t)(c->n_experts + n_fusions), sizeof *c->experts);
        if (!c->experts) {
            c->n_experts = 0;
            verr(&v, "experts", "out of memory");
            goto done;
        }
        check_keys(&v, experts, "experts", NULL);
        int i = 0;
        for (const cJSON *j = experts->child; j; j = j->next, i++) {
            char path[512];
            child_path(path, sizeof path, "experts", j->string);
            parse_expert(&v, j, path, &c->experts[i]);
        }
        resolve_fallbacks(&v, experts, c);
        if (fusions && !cJSON_IsObject(fusions))
            verr(&v, "fusions", "expected an object of group names to fusion groups, found %s", type_name(fusions));
        else if (fusions)
            check_keys(&v, fusions, "fusions", NULL);
        for (const cJSON *j = n_fusions ? fusions->child : NULL; j; j = j->next) {
            char path[512];
            child_path(path, sizeof path, "fusions", j->string);
            parse_fusion(&v, j, path, c, &c->experts[c->n_experts]);
            c->n_experts++;
        }
    }

    const cJSON *cats = get(root, "categories");
    if (cats && !cJSON_IsObject(cats)) {
        verr(&v, "categories", "expected an object of category names to categories, found %s", type_name(cats));
    } else if (cats && c->n_experts > 0) {
        check_keys(&v, cats, "categories", NULL);
        c->n_categories = cJSON_GetArraySize(cats);
        c->categories = calloc((size_t)c->n_categories + 1, sizeof *c->categories);
        int i = 0;
        for (const cJSON *j = cats->child; j && c->categories; j = j->next, i++) {
            char path[512];
            child_path(path, sizeof path, "categories", j->string);
            parse_category(&v, j, path, c, &c->categories[i]);
        }
    }

    const cJSON *routes = get(root, "routes");
    if (routes && !cJSON_IsObject(routes)) {
        verr(&v, "routes", "expected an object of route names to routes, found %s", type_name(routes));
    } else if (routes && c->n_experts > 0) {
        check_keys(&v, routes, "routes", NULL);
        c->n_routes = cJSON_GetArraySize(routes);
        c->routes = calloc((size_t)c->n_routes + 1, sizeof *c->routes);
        int i = 0;
        for (const cJSON *j = routes->child; j && c->routes; j = j->next, i++) {
            char path[512];
            child_path(path, sizeof path, "routes", j->string);
            parse_route(&v, j, path, c, &c->routes[i]);
            if (c->routes[i].router)
                route_device(&v, &c->router, &c->routes[i]);
        }
    }
    check_categories_reachable(&v, c);
done:
    cJSON_Delete(root);
    if (v.errors) {
        coe_config_unref(&c);
        return COE_EINVAL;
    }
    *out = c;
    return 0;
}

int coe_config_load(const char *path, coe_config_mode mode, coe_config **out, coe_buf *d)
{
    *out = NULL;
    coe_buf text = COE_BUF_INIT;
    int rc = coe_buf_read_file(&text, path, 16u << 20, d);
    if (!rc)
        rc = coe_config_parse(text.data ? text.data : "", text.len, path, mode, out, d);
    coe_buf_free(&text);
    return rc;
}

coe_config *coe_config_ref(coe_config *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

static void free_strings(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void coe_config_unref(coe_config **cp)
{
    coe_config *c = *cp;
    *cp = NULL;
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    /* Fusion groups first: they borrow the local experts' models. */
    for (int i = 0; i < c->n_experts; i++) {
        coe_fusion_close(&c->experts[i].fusion);
        free(c->experts[i].members);
        free(c->experts[i].selector_path);
    }
    for (int i = 0; i < c->n_experts; i++) {
        coe_expert_cfg *e = &c->experts[i];
        free(e->base_url);
        free(e->model);
        free(e->api_key_env);
        if (e->api_key) {
            /* Scrub the secret before the memory goes back to the allocator. */
            volatile char *k = e->api_key;
            while (*k)
                *k++ = 0;
            free(e->api_key);
        }
        free_strings(e->headers, e->n_headers);
        free(e->fallbacks);
        free(e->path);
        free(e->chat_template);
        coe_local_close(&e->local);
    }
    free(c->experts);
    for (int i = 0; i < c->n_routes && c->routes; i++) {
        free(c->routes[i].router_path);
        coe_router_batcher_close(&c->routes[i].batcher); /* runs what is waiting, on the GPU still */
        coe_router_gpu_close(&c->routes[i].gpu);
        coe_router_close(&c->routes[i].router);
        free(c->routes[i].category_of_class);
    }
    free(c->routes);
    for (int i = 0; i < c->n_categories && c->categories; i++) {
        free(c->categories[i].experts);
        free(c->categories[i].quality);
    }
    free(c->categories);
    free(c->server.host);
    free(c->server.api_keys_env);
    free_strings(c->server.api_keys, c->server.n_api_keys);
    free(c->path);
    free(c);
}

int coe_config_find_expert(const coe_config *c, const char *name)
{
    for (int i = 0; i < c->n_experts; i++)
        if (strcmp(c->experts[i].name, name) == 0)
            return i;
    return -1;
}

int coe_config_find_category(const coe_config *c, const char *name)
{
    for (int i = 0; i < c->n_categories; i++)
        if (strcmp(c->categories[i].name, name) == 0)
            return i;
    return -1;
}

int coe_config_find_route(const coe_config *c, const char *name)
{
    for (int i = 0; i < c->n_routes; i++)
        if (strcmp(c->routes[i].name, name) == 0)
            return i;
    return -1;
}

void coe_config_summary(const coe_config *c, char *out, size_t n)
{
    int fusions = 0;
    for (int i = 0; i < c->n_experts; i++)
        fusions += c->experts[i].kind == COE_EXPERT_FUSION;
    int experts = c->n_experts - fusions;
    char groups[40] = "";
    if (fusions)
        snprintf(groups, sizeof groups, ", %d fusion group%s", fusions, fusions == 1 ? "" : "s");
    snprintf(out, n, "%d expert%s%s, %d route%s", experts, experts == 1 ? "" : "s", groups, c->n_routes,
             c->n_routes == 1 ? "" : "s");
}
