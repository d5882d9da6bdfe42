#include "gateway/request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/jsonx.h"

void coe_api_error_set(coe_api_error *e, int status, const char *type, const char *code,
                       const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

#define BAD(err, param, ...) \
    (coe_api_error_set(err, 400, "invalid_request_error", "invalid_value", param, __VA_ARGS__), COE_EINVAL)

static const cJSON *field(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* Optional number within [lo, hi] (integer when want_int). */
static int check_number(const cJSON *body, const char *key, double lo, double hi, bool want_int,
                        coe_api_error *err)
{
    const cJSON *j = field(body, key);
    if (!j || cJSON_IsNull(j))
        return 0;
    if (want_int ? !coe_json_is_int_in(j, lo, hi)
                 : (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < lo ||
                    j->valuedouble > hi))
        return BAD(err, key, "'%s' must be %s from %g to %g", key, want_int ? "an integer" : "a number",
                   lo, hi);
    return 0;
}

static int check_bool(const cJSON *body, const char *key, coe_api_error *err)
{
    const cJSON *j = field(body, key);
    if (j && !cJSON_IsNull(j) && !cJSON_IsBool(j))
        return BAD(err, key, "'%s' must be true or false", key);
    return 0;
}

static int check_stop(const cJSON *body, coe_api_error *err)
{
    const cJSON *j = field(body, "stop");
    if (!j || cJSON_IsNull(j) || cJSON_IsString(j))
        return 0;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) > 4)
        return BAD(err, "stop", "'stop' must be a string or an array of at most 4 strings");
    for (const cJSON *s = j->child; s; s = s->next)
        if (!cJSON_IsString(s))
            return BAD(err, "stop", "'stop' must be a string or an array of at most 4 strings");
    return 0;
}

static int check_messages(const cJSON *body, coe_api_error *err)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", "function", NULL};
    const cJSON *msgs = field(body, "messages");
    if (!msgs)
        return BAD(err, "messages", "'messages' is required");
    if (!cJSON_IsArray(msgs) || !msgs->child)
        return BAD(err, "messages", "'messages' must be a non-empty array");
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++) {
        char p[64];
        snprintf(p, sizeof p, "messages[%d]", i);
        if (!cJSON_IsObject(m))
            return BAD(err, p, "'%s' must be an object", p);
        const cJSON *role = field(m, "role");
        snprintf(p, sizeof p, "messages[%d].role", i);
        if (!cJSON_IsString(role))
            return BAD(err, p, "'%s' is required and must be a string", p);
        bool known = false;
        for (const char *const *r = roles; *r; r++)
            known |= strcmp(*r, role->valuestring) == 0;
        if (!known)
            return BAD(err, p, "'%s' must be one of system, developer, user, assistant, tool; got '%.40s'",
                       p, role->valuestring);
        const cJSON *content = field(m, "content");
        snprintf(p, sizeof p, "messages[%d].content", i);
        bool assistant = strcmp(role->valuestring, "assistant") == 0;
        if (!content) {
            if (!assistant)
                return BAD(err, p, "'%s' is required", p);
        } else if (cJSON_IsArray(content)) {
            int k = 0;
            for (const cJSON *part = content->child; part; part = part->next, k++) {
                snprintf(p, sizeof p, "messages[%d].content[%d].type", i, k);
                if (!cJSON_IsObject(part) || !cJSON_IsString(field(part, "type")))
                    return BAD(err, p, "each content part must be an object with a string 'type'");
            }
        } else if (!cJSON_IsString(content) && !(cJSON_IsNull(content) && assistant)) {
            return BAD(err, p, "'%s' must be a string or an array of content parts", p);
        }
    }
    return 0;
}

const char *const coe_cap_names[COE_CAP_COUNT] = {"tools", "response_format", "n", "images", "embeddings",
                                                  "json_schema"};

static double number_or(const cJSON *body, const char *key, double def)
{
    const cJSON *j = field(body, key);
    return cJSON_IsNumber(j) ? j->valuedouble : def;
}

/* The decoding fields of a checked chat or completions body (see coe_decoding). */
static int read_decoding(coe_request *r)
{
    const cJSON *body = r->body;
    coe_decoding *d = &r->decoding;
    d->temperature = number_or(body, "temperature", 1);
    d->top_p = number_or(body, "top_p", 1);
    d->top_k = (int)number_or(body, "top_k", 0);
    d->min_p = number_or(body, "min_p", 0);
    d->presence_penalty = number_or(body, "presence_penalty", 0);
    d->frequency_penalty = number_or(body, "frequency_penalty", 0);
    const cJSON *seed = field(body, "seed");
    d->has_seed = cJSON_IsNumber(seed);
    d->seed = d->has_seed ? (long long)seed->valuedouble : 0;
    const cJSON *lp = field(body, "logprobs");
    if (r->endpoint == COE_EP_CHAT) {
        d->logprobs = cJSON_IsTrue(lp);
        d->top_logprobs = (int)number_or(body, "top_logprobs", 0);
    } else if (cJSON_IsNumber(lp)) {
        d->logprobs = true;
        d->top_logprobs = (int)lp->valuedouble;
    }
    const cJSON *stop = field(body, "stop");
    for (const cJSON *x = cJSON_IsArray(stop) ? stop->child : stop; x && d->n_stop < 4;
         x = cJSON_IsArray(stop) ? x->next : NULL)
        if (cJSON_IsString(x) && *x->valuestring)
            d->stop[d->n_stop++] = x->valuestring;
    const cJSON *rf = field(body, "response_format");
    const cJSON *type = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "json_object") == 0)
        d->format = COE_FORMAT_JSON_OBJECT;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "json_schema") == 0) {
        d->format = COE_FORMAT_JSON_SCHEMA;
        const cJSON *js = field(rf, "json_schema");
        d->schema = cJSON_IsObject(js) && cJSON_IsObject(field(js, "schema")) ? field(js, "schema") : NULL;
    }
    d->fusion_trace = cJSON_IsTrue(field(body, "coegate_fusion_trace"));
    const cJSON *bias = field(body, "logit_bias");
    int n = cJSON_IsObject(bias) ? cJSON_GetArraySize(bias) : 0;
    if (n > 0) {
        d->bias_ids = malloc((size_t)n * sizeof *d->bias_ids);
        d->bias = malloc((size_t)n * sizeof *d->bias);
        if (!d->bias_ids || !d->bias)
            return COE_ENOMEM;
        for (const cJSON *b = bias->child; b; b = b->next, d->n_bias++) {
            d->bias_ids[d->n_bias] = strtol(b->string, NULL, 10);
            d->bias[d->n_bias] = (float)b->valuedouble;
        }
    }
    return 0;
}

/* What r needs of its expert (see coe_request.needs); r->body has been checked. */
static void needs_of(coe_request *r)
{
    if (r->endpoint == COE_EP_EMBEDDINGS) {
        r->needs = COE_CAP_EMBEDDINGS;
        return;
    }
    const cJSON *tools = field(r->body, "tools");
    if (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0)
        r->needs |= COE_CAP_TOOLS;
    const cJSON *rf = field(r->body, "response_format");
    const cJSON *type = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "text") != 0)
        r->needs |= strcmp(type->valuestring, "json_object") == 0 ? COE_CAP_RESPONSE_FORMAT : COE_CAP_JSON_SCHEMA;
    const cJSON *n = field(r->body, "n");
    if (cJSON_IsNumber(n) && n->valuedouble > 1)
        r->needs |= COE_CAP_N;
    const cJSON *msgs = r->endpoint == COE_EP_CHAT ? field(r->body, "messages") : NULL;
    int i = 0;
    for (const cJSON *m = msgs ? msgs->child : NULL; m && !(r->needs & COE_CAP_IMAGES); m = m->next, i++) {
        const cJSON *content = field(m, "content");
        int k = 0;
        for (const cJSON *part = cJSON_IsArray(content) ? content->child : NULL; part; part = part->next, k++) {
            const char *t = field(part, "type")->valuestring;
            if (strcmp(t, "image_url") == 0 || strcmp(t, "input_image") == 0 || strcmp(t, "image") == 0) {
                r->needs |= COE_CAP_IMAGES;
                snprintf(r->image_param, sizeof r->image_param, "messages[%d].content[%d]", i, k);
                break;
            }
        }
    }
}

const char *coe_request_cap_param(const coe_request *r, unsigned cap)
{
    return cap == COE_CAP_IMAGES       ? r->image_param
           : cap == COE_CAP_TOOLS      ? "tools"
           : cap == COE_CAP_N          ? "n"
           : cap == COE_CAP_EMBEDDINGS ? "model"
                                       : "response_format";
}

/* logit_bias: {"token id": bias from -100 to 100}, as OpenAI takes it. */
static int check_logit_bias(const cJSON *body, coe_api_error *err)
{
    const cJSON *j = field(body, "logit_bias");
    if (!j || cJSON_IsNull(j))
        return 0;
    if (!cJSON_IsObject(j) || cJSON_GetArraySize(j) > 1024)
        return BAD(err, "logit_bias", "'logit_bias' must be an object of at most 1024 token ids to biases");
    for (const cJSON *b = j->child; b; b = b->next) {
        const char *k = b->string;
        if (!*k || strlen(k) > 9 || strspn(k, "0123456789") != strlen(k))
            return BAD(err, "logit_bias", "'logit_bias': '%.20s' is not a token id", k);
        if (!cJSON_IsNumber(b) || b->valuedouble < -100 || b->valuedouble > 100)
            return BAD(err, "logit_bias", "'logit_bias': the bias of token %s must be a number from -100 to 100", k);
    }
    return 0;
}

/* Embeddings: "input" is a string, or a non-empty array of strings, of token ids, or
 * of arrays of token ids (OpenAI's forms); the rest goes to the expert as it is. */
static int check_input(const cJSON *body, coe_api_error *err)
{
    int rc = check_bool(body, "stream", err);
    if (!rc && cJSON_IsTrue(field(body, "stream")))
        rc = BAD(err, "stream", "embeddings are not streamed");
    const cJSON *in = field(body, "input");
    if (rc || cJSON_IsString(in))
        return rc;
    if (!in)
        return BAD(err, "input", "'input' is required");
    bool ok = cJSON_IsArray(in) && in->child;
    for (const cJSON *x = ok ? in->child : NULL; x && ok; x = x->next)
        ok = cJSON_IsString(x) ? cJSON_IsString(in->child)
             : cJSON_IsNumber(x) ? cJSON_IsNumber(in->child)
                                 : cJSON_IsArray(x) && cJSON_IsArray(in->child);
    if (!ok)
        return BAD(err, "input", "'input' must be a string, or a non-empty array of strings, of token ids or of "
                                 "arrays of token ids");
    return 0;
}

static int check_prompt(const cJSON *body, coe_api_error *err)
{
    const cJSON *p = field(body, "prompt");
    if (!p)
        return BAD(err, "prompt", "'prompt' is required");
    if (cJSON_IsString(p))
        return 0;
    if (cJSON_IsArray(p) && p->child) {
        /* An array of strings, or token arrays: pass them on, but check the shape. */
        bool strings = cJSON_IsString(p->child);
        for (const cJSON *x = p->child; x; x = x->next) {
            bool ok = strings ? cJSON_IsString(x) : (cJSON_IsNumber(x) || cJSON_IsArray(x));
            if (!ok)
                return BAD(err, "prompt", "'prompt' must be a string, an array of strings or of tokens");
        }
        return 0;
    }
    return BAD(err, "prompt", "'prompt' must be a string, an array of strings or of tokens");
}

int coe_request_parse(const char *text, size_t len, coe_endpoint ep, int max_depth, coe_request **out,
                      coe_api_error *err)
{
    *out = NULL;
    if (len == 0)
        return BAD(err, "", "the request body is empty; expected a JSON object");
    if (coe_json_depth(text, len, max_depth) > max_depth)
        return BAD(err, "", "the request body is nested more than %d levels deep", max_depth);
    size_t off = 0;
    cJSON *body = coe_json_parse(text, len, &off);
    if (!body)
        return BAD(err, "", "the request body is not valid JSON (error near byte %zu)", off);
    int rc = 0;
    if (!cJSON_IsObject(body)) {
        rc = BAD(err, "", "the request body must be a JSON object");
        goto fail;
    }
    const cJSON *model = field(body, "model");
    if (model && !cJSON_IsString(model)) {
        rc = BAD(err, "model", "'model' must be a string");
        goto fail;
    }
    const cJSON *so = field(body, "stream_options");
    if (ep == COE_EP_EMBEDDINGS) {
        if ((rc = check_input(body, err)))
            goto fail;
        goto checked;
    }
    if ((rc = ep == COE_EP_CHAT ? check_messages(body, err) : check_prompt(body, err)))
        goto fail;
    rc = ep == COE_EP_CHAT ? check_bool(body, "logprobs", err) : check_number(body, "logprobs", 0, 5, true, err);
    if (rc || (rc = check_bool(body, "stream", err)) ||
        (rc = check_number(body, "temperature", 0, 2, false, err)) ||
        (rc = check_number(body, "top_p", 0, 1, false, err)) ||
        (rc = check_number(body, "min_p", 0, 1, false, err)) ||
        (rc = check_number(body, "top_k", -1, 1e6, true, err)) ||
        (rc = check_number(body, "presence_penalty", -2, 2, false, err)) ||
        (rc = check_number(body, "frequency_penalty", -2, 2, false, err)) ||
        (rc = check_number(body, "n", 1, 128, true, err)) ||
        (rc = check_number(body, "max_tokens", 1, 1e9, true, err)) ||
        (rc = check_number(body, "max_completion_tokens", 1, 1e9, true, err)) ||
        (rc = check_number(body, "seed", -9.2e18, 9.2e18, true, err)) ||
        (rc = check_number(body, "top_logprobs", 0, 20, true, err)) || (rc = check_stop(body, err)) ||
        (rc = check_logit_bias(body, err)))
        goto fail;
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            rc = BAD(err, "stream_options", "'stream_options' must be an object");
            goto fail;
        }
        const cJSON *iu = field(so, "include_usage");
        if (iu && !cJSON_IsBool(iu)) {
            rc = BAD(err, "stream_options.include_usage", "'stream_options.include_usage' must be true or false");
            goto fail;
        }
    }

checked:;
    coe_request *r = calloc(1, sizeof *r);
    if (!r) {
        coe_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        rc = COE_ENOMEM;
        goto fail;
    }
    r->endpoint = ep;
    r->body = body;
    r->model = cJSON_IsString(model) ? model->valuestring : "auto";
    r->stream = cJSON_IsTrue(field(body, "stream"));
    r->include_usage = r->stream && so && cJSON_IsTrue(field(so, "include_usage"));
    /* Newer clients send max_completion_tokens (OpenAI's name since o1), older ones
     * max_tokens; with both, the smaller wins. */
    needs_of(r);
    if (ep != COE_EP_EMBEDDINGS && read_decoding(r)) {
        coe_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        coe_request_free(&r);
        return COE_ENOMEM;
    }
    r->max_tokens = -1;
    const char *const limits[] = {"max_tokens", "max_completion_tokens"};
    for (int i = 0; i < 2; i++) {
        const cJSON *mt = field(body, limits[i]);
        if (cJSON_IsNumber(mt) && (r->max_tokens < 0 || (long)mt->valuedouble < r->max_tokens))
            r->max_tokens = (long)mt->valuedouble;
    }
    *out = r;
    return 0;
fail:
    cJSON_Delete(body);
    return rc;
}

/* ---- POST /v1/responses ---- */

/* One input content part as a chat content part (added to parts). */
static int responses_part(const cJSON *part, const char *p, cJSON *parts, coe_api_error *err)
{
    const cJSON *type = field(part, "type");
    if (!cJSON_IsObject(part) || !cJSON_IsString(type))
        return BAD(err, p, "'%s' must be an object with a string 'type'", p);
    const char *t = type->valuestring;
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return COE_ENOMEM;
    cJSON_AddItemToArray(parts, out);
    if (strcmp(t, "input_text") == 0 || strcmp(t, "output_text") == 0) {
        const cJSON *text = field(part, "text");
        if (!cJSON_IsString(text))
            return BAD(err, p, "'%s.text' must be a string", p);
        cJSON_AddStringToObject(out, "type", "text");
        cJSON_AddStringToObject(out, "text", text->valuestring);
        return 0;
    }
    if (strcmp(t, "input_image") == 0) {
        const cJSON *url = field(part, "image_url");
        if (!cJSON_IsString(url))
            return BAD(err, p, "'%s.image_url' must be a URL string (file ids are not served)", p);
        cJSON_AddStringToObject(out, "type", "image_url");
        cJSON *iu = cJSON_AddObjectToObject(out, "image_url");
        cJSON_AddStringToObject(iu, "url", url->valuestring);
        const cJSON *detail = field(part, "detail");
        if (cJSON_IsString(detail))
            cJSON_AddStringToObject(iu, "detail", detail->valuestring);
        return 0;
    }
    return BAD(err, p, "'%s' of type '%.40s' is not served (input_text, output_text and input_image are)", p, t);
}

/* input (a string, or an array of messages) as chat messages (added to msgs). */
static int responses_input(const cJSON *input, cJSON *msgs, coe_api_error *err)
{
    if (cJSON_IsString(input)) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", input->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(input) || !input->child)
        return BAD(err, "input", "'input' must be a string or a non-empty array of messages");
    int i = 0;
    for (const cJSON *item = input->child; item; item = item->next, i++) {
        char p[64];
        snprintf(p, sizeof p, "input[%d]", i);
        if (!cJSON_IsObject(item))
            return BAD(err, p, "'%s' must be an object", p);
        const cJSON *type = field(item, "type");
        if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "message") == 0))
            return BAD(err, p, "'%s' of type '%.40s' is not served (messages are)", p,
                       cJSON_IsString(type) ? type->valuestring : "?");
        const cJSON *role = field(item, "role");
        static const char *const roles[] = {"user", "assistant", "system", "developer", NULL};
        bool known = false;
        for (const char *const *r = roles; cJSON_IsString(role) && *r; r++)
            known |= strcmp(*r, role->valuestring) == 0;
        if (!known) {
            snprintf(p, sizeof p, "input[%d].role", i);
            return BAD(err, p, "'%s' must be one of user, assistant, system, developer", p);
        }
        cJSON *m = cJSON_CreateObject();
        if (!m)
            return COE_ENOMEM;
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", role->valuestring);
        const cJSON *content = field(item, "content");
        snprintf(p, sizeof p, "input[%d].content", i);
        if (cJSON_IsString(content)) {
            cJSON_AddStringToObject(m, "content", content->valuestring);
        } else if (cJSON_IsArray(content)) {
            cJSON *parts = cJSON_AddArrayToObject(m, "content");
            int k = 0;
            for (const cJSON *part = content->child; part; part = part->next, k++) {
                char pp[80];
                snprintf(pp, sizeof pp, "%s[%d]", p, k);
                int rc = responses_part(part, pp, parts, err);
                if (rc)
                    return rc;
            }
        } else {
            return BAD(err, p, "'%s' must be a string or an array of content parts", p);
        }
    }
    return 0;
}

/* text.format as the chat request's response_format (added to chat). */
static int responses_format(const cJSON *text, cJSON *chat, coe_api_error *err)
{
    if (!text || cJSON_IsNull(text))
        return 0;
    const cJSON *format = field(text, "format");
    if (!cJSON_IsObject(text) || (format && !cJSON_IsNull(format) && !cJSON_IsObject(format)))
        return BAD(err, "text.format", "'text.format' must be an object");
    const cJSON *type = field(format, "type");
    if (!format || cJSON_IsNull(format))
        return 0;
    if (!cJSON_IsString(type))
        return BAD(err, "text.format.type", "'text.format.type' must be text, json_object or json_schema");
    if (strcmp(type->valuestring, "text") == 0)
        return 0;
    cJSON *rf = cJSON_AddObjectToObject(chat, "response_format");
    if (strcmp(type->valuestring, "json_object") == 0) {
        cJSON_AddStringToObject(rf, "type", "json_object");
        return 0;
    }
    if (strcmp(type->valuestring, "json_schema") != 0)
        return BAD(err, "text.format.type", "'text.format.type' must be text, json_object or json_schema");
    const cJSON *name = field(format, "name"), *schema = field(format, "schema"), *strict = field(format, "strict");
    if (!cJSON_IsString(name))
        return BAD(err, "text.format.name", "'text.format.name' is required with json_schema");
    if (!cJSON_IsObject(schema))
        return BAD(err, "text.format.schema", "'text.format.schema' must be an object");
    cJSON_AddStringToObject(rf, "type", "json_schema");
    cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
    cJSON_AddStringToObject(js, "name", name->valuestring);
    cJSON_AddItemToObject(js, "schema", cJSON_Duplicate(schema, true));
    if (cJSON_IsBool(strict))
        cJSON_AddBoolToObject(js, "strict", cJSON_IsTrue(strict));
    return 0;
}

/* The chat request's name of a Responses field, for errors found in the translation. */
static void responses_param(coe_api_error *err)
{
    static const char *const names[][2] = {{"max_tokens", "max_output_tokens"}, {"response_format", "text.format"},
                                           {"messages", "input"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i][0]);
        if (strncmp(err->param, names[i][0], n) == 0 && (err->param[n] == '\0' || err->param[n] == '.' ||
                                                         err->param[n] == '[')) {
            char rest[96];
            snprintf(rest, sizeof rest, "%s", err->param + n);
            snprintf(err->param, sizeof err->param, "%s%s", names[i][1], rest);
            return;
        }
    }
}

int coe_request_parse_responses(const char *text, size_t len, int max_depth, coe_request **out, coe_api_error *err)
{
    *out = NULL;
    if (len == 0)
        return BAD(err, "", "the request body is empty; expected a JSON object");
    if (coe_json_depth(text, len, max_depth) > max_depth)
        return BAD(err, "", "the request body is nested more than %d levels deep", max_depth);
    size_t off = 0;
    cJSON *body = coe_json_parse(text, len, &off);
    if (!body)
        return BAD(err, "", "the request body is not valid JSON (error near byte %zu)", off);
    cJSON *chat = cJSON_CreateObject();
    cJSON *msgs = chat ? cJSON_AddArrayToObject(chat, "messages") : NULL;
    int rc = 0;
    char *chat_text = NULL;
    if (!msgs) {
        rc = COE_ENOMEM;
        goto fail;
    }
    if (!cJSON_IsObject(body)) {
        rc = BAD(err, "", "the request body must be a JSON object");
        goto fail;
    }
    /* Fields the translation carries, those accepted and ignored (coegate stores
     * nothing and has no service tiers), and the rest refused by name. */
    static const char *const carried[] = {"model", "input", "instructions", "stream", "max_output_tokens",
                                          "temperature", "top_p", "text", "user", "seed", NULL};
    static const char *const ignored[] = {"store", "metadata", "parallel_tool_calls", "truncation", "service_tier",
                                          "reasoning", "include", "prompt_cache_key", "safety_identifier",
                                          "top_logprobs", "tool_choice", NULL};
    for (const cJSON *f = body->child; f; f = f->next) {
        bool known = false;
        for (const char *const *k = carried; *k && !known; k++)
            known = strcmp(*k, f->string) == 0;
        for (const char *const *k = ignored; *k && !known; k++)
            known = strcmp(*k, f->string) == 0;
        bool empty = cJSON_IsNull(f) || cJSON_IsFalse(f) || (cJSON_IsArray(f) && !f->child);
        if (!known && !empty) {
            rc = BAD(err, f->string,
                     strcmp(f->string, "tools") == 0 ? "'tools' are not served on /v1/responses; use /v1/chat/completions"
                     : strcmp(f->string, "previous_response_id") == 0 || strcmp(f->string, "conversation") == 0
                         ? "'%s' needs stored responses, which coegate does not keep: send the whole conversation "
                           "in 'input'"
                         : "unknown or unsupported parameter '%s'",
                     f->string);
            goto fail;
        }
    }
    const cJSON *input = field(body, "input"), *instructions = field(body, "instructions");
    if (!input) {
        rc = BAD(err, "input", "'input' is required");
        goto fail;
    }
    if (instructions && !cJSON_IsNull(instructions)) {
        if (!cJSON_IsString(instructions)) {
            rc = BAD(err, "instructions", "'instructions' must be a string");
            goto fail;
        }
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", instructions->valuestring);
    }
    if ((rc = responses_input(input, msgs, err)) || (rc = responses_format(field(body, "text"), chat, err)))
        goto fail;
    static const char *const same[][2] = {{"model", "model"}, {"stream", "stream"}, {"temperature", "temperature"},
                                          {"top_p", "top_p"}, {"user", "user"}, {"seed", "seed"},
                                          {"max_output_tokens", "max_tokens"}};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        const cJSON *v = field(body, same[i][0]);
        if (v && !cJSON_IsNull(v))
            cJSON_AddItemToObject(chat, same[i][1], cJSON_Duplicate(v, true));
    }
    if (cJSON_IsTrue(field(body, "stream"))) {
        cJSON *so = cJSON_AddObjectToObject(chat, "stream_options");
        cJSON_AddTrueToObject(so, "include_usage"); /* the completed event always carries usage */
    }
    chat_text = cJSON_PrintUnformatted(chat);
    if (!chat_text) {
        rc = COE_ENOMEM;
        goto fail;
    }
    if ((rc = coe_request_parse(chat_text, strlen(chat_text), COE_EP_CHAT, max_depth + 2, out, err))) {
        responses_param(err);
        goto fail;
    }
    (*out)->responses = body;
    free(chat_text);
    cJSON_Delete(chat);
    return 0;
fail:
    if (rc == COE_ENOMEM)
        coe_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    free(chat_text);
    cJSON_Delete(chat);
    cJSON_Delete(body);
    return rc;
}

void coe_request_free(coe_request **rp)
{
    coe_request *r = *rp;
    *rp = NULL;
    if (!r)
        return;
    cJSON_Delete(r->body);
    cJSON_Delete(r->responses);
    free(r->decoding.bias_ids);
    free(r->decoding.bias);
    free(r);
}

const char *coe_request_last_user_text(const coe_request *r)
{
    if (r->endpoint == COE_EP_EMBEDDINGS) {
        const cJSON *in = field(r->body, "input");
        const cJSON *first = cJSON_IsArray(in) ? in->child : in;
        return cJSON_IsString(first) ? first->valuestring : "";
    }
    if (r->endpoint == COE_EP_COMPLETIONS) {
        const cJSON *p = field(r->body, "prompt");
        if (cJSON_IsString(p))
            return p->valuestring;
        if (cJSON_IsArray(p) && cJSON_IsString(p->child))
            return p->child->valuestring;
        return "";
    }
    const cJSON *last = NULL;
    for (const cJSON *m = field(r->body, "messages")->child; m; m = m->next)
        if (strcmp(field(m, "role")->valuestring, "user") == 0)
            last = m;
    if (!last)
        return "";
    const cJSON *c = field(last, "content");
    if (cJSON_IsString(c))
        return c->valuestring;
    /* Content parts: the first text part. */
    for (const cJSON *part = cJSON_IsArray(c) ? c->child : NULL; part; part = part->next)
        if (strcmp(field(part, "type")->valuestring, "text") == 0 && cJSON_IsString(field(part, "text")))
            return field(part, "text")->valuestring;
    return "";
}
