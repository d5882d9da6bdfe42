#include "gateway/openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

/* ---- choices ---- */

static char *dup_or_null(const char *s, size_t n, int *err)
{
    if (!s)
        return NULL;
    char *d = malloc(n + 1);
    if (!d) {
        *err = COE_ENOMEM;
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

int coe_choices_add(coe_choices *cs, const coe_delta *w)
{
    if (cs->err)
        return cs->err;
    if (cs->n == cs->cap) {
        int cap = cs->cap ? cs->cap * 2 : 2;
        coe_delta *p = realloc(cs->items, (size_t)cap * sizeof *p);
        if (!p)
            return cs->err = COE_ENOMEM;
        cs->items = p;
        cs->cap = cap;
    }
    coe_delta *c = &cs->items[cs->n++];
    *c = (coe_delta){.index = w->index, .content_len = w->content_len};
    c->content = dup_or_null(w->content, w->content_len, &cs->err);
#define COPY(f) c->f = dup_or_null(w->f, w->f ? strlen(w->f) : 0, &cs->err)
    COPY(reasoning);
    COPY(tool_calls);
    COPY(logprobs);
    COPY(finish_reason);
    COPY(extra);
    COPY(message_extra);
#undef COPY
    return cs->err;
}

void coe_choices_free(coe_choices *cs)
{
    for (int i = 0; i < cs->n; i++) {
        coe_delta *c = &cs->items[i];
        free((char *)c->content);
        free((char *)c->reasoning);
        free((char *)c->tool_calls);
        free((char *)c->logprobs);
        free((char *)c->finish_reason);
        free((char *)c->extra);
        free((char *)c->message_extra);
    }
    free(cs->items);
    *cs = (coe_choices){0};
}

/* ---- pieces ---- */

static void json_str(coe_buf *b, const char *s)
{
    coe_buf_json_string(b, s, strlen(s));
}

static void json_str_or_null(coe_buf *b, const char *s)
{
    if (s)
        json_str(b, s);
    else
        coe_buf_puts(b, "null");
}

static void head(coe_buf *b, const coe_reply *r, const char *object)
{
    coe_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", r->id, object, r->created);
    json_str(b, r->model);
}

static void usage_json(coe_buf *b, const coe_usage *u)
{
    coe_buf_printf(b, "{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld}", u->prompt_tokens,
                   u->completion_tokens, u->total_tokens);
}

/* A chat message or delta's members: role, content, reasoning, tool calls, more. */
static void message_members(coe_buf *b, const coe_delta *d, bool whole)
{
    const char *sep = "";
    if (d->role || whole) {
        coe_buf_puts(b, "\"role\":");
        json_str(b, d->role ? d->role : "assistant");
        sep = ",";
    }
    if (d->content || whole) {
        coe_buf_printf(b, "%s\"content\":", sep);
        if (d->content)
            coe_buf_json_string(b, d->content, d->content_len);
        else
            coe_buf_puts(b, "null");
        sep = ",";
    }
    if (d->reasoning) {
        coe_buf_printf(b, "%s\"reasoning_content\":", sep);
        json_str(b, d->reasoning);
        sep = ",";
    }
    if (d->tool_calls) {
        coe_buf_printf(b, "%s\"tool_calls\":%s", sep, d->tool_calls);
        sep = ",";
    }
    if (d->message_extra)
        coe_buf_printf(b, "%s%s", sep, d->message_extra);
}

/* One choice of a chunk (delta) or of a body (message). */
static void choice_json(coe_buf *b, const coe_reply *r, const coe_delta *d, bool whole)
{
    coe_buf_printf(b, "{\"index\":%d,", d->index);
    if (r->endpoint == COE_EP_CHAT) {
        coe_buf_puts(b, whole ? "\"message\":{" : "\"delta\":{");
        message_members(b, d, whole);
        coe_buf_puts(b, "},");
    } else {
        coe_buf_puts(b, "\"text\":");
        coe_buf_json_string(b, d->content ? d->content : "", d->content ? d->content_len : 0);
        coe_buf_puts(b, ",");
    }
    coe_buf_printf(b, "\"logprobs\":%s,\"finish_reason\":", d->logprobs ? d->logprobs : "null");
    json_str_or_null(b, d->finish_reason);
    if (d->extra)
        coe_buf_printf(b, ",%s", d->extra);
    coe_buf_puts(b, "}");
}

/* ---- the Responses API ---- */

/* A member of the request as sent, or def when absent. */
static void echo(coe_buf *b, const coe_reply *r, const char *key, const char *def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->responses, key);
    char *s = v && !cJSON_IsNull(v) ? cJSON_PrintUnformatted(v) : NULL;
    coe_buf_printf(b, "\"%s\":%s", key, s ? s : def);
    free(s);
}

static void responses_usage(coe_buf *b, const coe_usage *u)
{
    coe_buf_printf(b,
                   "{\"input_tokens\":%ld,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":%ld,"
                   "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":%ld}",
                   u->prompt_tokens, u->completion_tokens, u->total_tokens);
}

/* The message output item. */
static void output_item(coe_buf *b, const coe_reply *r, const char *status, const char *text, size_t len,
                        bool with_part)
{
    coe_buf_printf(b, "{\"type\":\"message\",\"id\":\"msg_%s\",\"status\":\"%s\",\"role\":\"assistant\",\"content\":[",
                   r->id + 5, status);
    if (with_part) {
        coe_buf_puts(b, "{\"type\":\"output_text\",\"text\":");
        coe_buf_json_string(b, text ? text : "", text ? len : 0);
        coe_buf_puts(b, ",\"annotations\":[],\"logprobs\":[]}");
    }
    coe_buf_puts(b, "]}");
}

/* The response object. text NULL: no output yet (in progress). */
static void response_object(coe_buf *b, const coe_reply *r, const char *status, bool incomplete, const char *text,
                            size_t len, const coe_usage *u)
{
    coe_buf_printf(b, "{\"id\":\"%s\",\"object\":\"response\",\"created_at\":%lld,\"status\":\"%s\",\"error\":null,"
                      "\"incomplete_details\":%s,",
                   r->id, r->created, status, incomplete ? "{\"reason\":\"max_output_tokens\"}" : "null");
    echo(b, r, "instructions", "null");
    coe_buf_puts(b, ",");
    echo(b, r, "max_output_tokens", "null");
    coe_buf_puts(b, ",\"model\":");
    json_str(b, r->model);
    coe_buf_puts(b, ",\"output\":[");
    if (text)
        output_item(b, r, incomplete ? "incomplete" : "completed", text, len, true);
    coe_buf_puts(b, "],\"parallel_tool_calls\":false,\"previous_response_id\":null,"
                    "\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":false,");
    echo(b, r, "temperature", "1");
    coe_buf_puts(b, ",");
    echo(b, r, "text", "{\"format\":{\"type\":\"text\"}}");
    coe_buf_puts(b, ",\"tool_choice\":\"none\",\"tools\":[],");
    echo(b, r, "top_p", "1");
    coe_buf_puts(b, ",\"truncation\":\"disabled\",\"usage\":");
    if (u)
        responses_usage(b, u);
    else
        coe_buf_puts(b, "null");
    coe_buf_puts(b, ",");
    echo(b, r, "user", "null");
    coe_buf_puts(b, ",");
    echo(b, r, "metadata", "{}");
    coe_buf_puts(b, "}");
}

/* Opens a Responses event: the caller appends members, then "}\n\n". */
static void event(coe_buf *b, coe_reply *r, const char *type)
{
    coe_buf_printf(b, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%ld", type, type, r->seq++);
}

static void event_response(coe_buf *b, coe_reply *r, const char *type, const char *status, const coe_usage *u)
{
    event(b, r, type);
    coe_buf_puts(b, ",\"response\":");
    response_object(b, r, status, r->incomplete, strcmp(status, "in_progress") == 0 ? NULL : r->text.data ? r->text.data : "",
                    r->text.len, u);
    coe_buf_puts(b, "}\n\n");
}

static void event_at(coe_buf *b, coe_reply *r, const char *type, bool content)
{
    event(b, r, type);
    coe_buf_printf(b, ",\"item_id\":\"msg_%s\",\"output_index\":0", r->id + 5);
    if (content)
        coe_buf_puts(b, ",\"content_index\":0");
}

static void responses_open(coe_buf *b, coe_reply *r)
{
    if (r->opened)
        return;
    r->opened = true;
    event_response(b, r, "response.created", "in_progress", NULL);
    event_response(b, r, "response.in_progress", "in_progress", NULL);
    event(b, r, "response.output_item.added");
    coe_buf_puts(b, ",\"output_index\":0,\"item\":");
    output_item(b, r, "in_progress", NULL, 0, false);
    coe_buf_puts(b, "}\n\n");
    event_at(b, r, "response.content_part.added", true);
    coe_buf_puts(b, ",\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[],\"logprobs\":[]}}\n\n");
}

/* ---- the answer ---- */

void coe_reply_init(coe_reply *r, const coe_request *req, const char *request_id)
{
    *r = (coe_reply){0};
    r->endpoint = req->endpoint;
    r->responses = req->responses;
    snprintf(r->id, sizeof r->id, "%s%s", req->responses ? "resp_" : req->endpoint == COE_EP_CHAT ? "chatcmpl-" : "cmpl-",
             request_id);
    r->created = coe_wall_s();
    r->include_usage = req->include_usage && !req->responses;
}

void coe_reply_free(coe_reply *r)
{
    coe_buf_free(&r->text);
}

int coe_reply_delta(coe_buf *b, coe_reply *r, const coe_delta *d)
{
    if (r->responses) {
        if (d->index != 0)
            return b->err; /* the Responses API has one output */
        responses_open(b, r);
        if (d->content && d->content_len) {
            coe_buf_append(&r->text, d->content, d->content_len);
            event_at(b, r, "response.output_text.delta", true);
            coe_buf_puts(b, ",\"delta\":");
            coe_buf_json_string(b, d->content, d->content_len);
            coe_buf_puts(b, ",\"logprobs\":[]}\n\n");
        }
        if (d->finish_reason && strcmp(d->finish_reason, "length") == 0)
            r->incomplete = true;
        return r->text.err ? r->text.err : b->err;
    }
    /* Every chat stream's first chunk of a choice says who speaks, whatever the
     * expert sent (llama-server's say nothing). */
    coe_delta with_role;
    if (r->endpoint == COE_EP_CHAT && d->index < 64 && !(r->roles_sent >> d->index & 1)) {
        r->roles_sent |= 1ull << d->index;
        if (!d->role) {
            with_role = *d;
            with_role.role = "assistant";
            d = &with_role;
        }
    }
    coe_buf_puts(b, "data: ");
    head(b, r, r->endpoint == COE_EP_CHAT ? "chat.completion.chunk" : "text_completion");
    coe_buf_puts(b, ",\"choices\":[");
    choice_json(b, r, d, false);
    coe_buf_puts(b, "]");
    if (r->include_usage)
        coe_buf_puts(b, ",\"usage\":null");
    return coe_buf_puts(b, "}\n\n");
}

int coe_reply_stream_end(coe_buf *b, coe_reply *r, const coe_usage *u)
{
    if (r->responses) {
        if (r->text.err && !b->err)
            b->err = r->text.err; /* the text has a piece missing: it must not go out */
        responses_open(b, r);
        const char *text = r->text.data ? r->text.data : "";
        event_at(b, r, "response.output_text.done", true);
        coe_buf_puts(b, ",\"text\":");
        coe_buf_json_string(b, text, r->text.len);
        coe_buf_puts(b, ",\"logprobs\":[]}\n\n");
        event_at(b, r, "response.content_part.done", true);
        coe_buf_puts(b, ",\"part\":{\"type\":\"output_text\",\"text\":");
        coe_buf_json_string(b, text, r->text.len);
        coe_buf_puts(b, ",\"annotations\":[],\"logprobs\":[]}}\n\n");
        event(b, r, "response.output_item.done");
        coe_buf_puts(b, ",\"output_index\":0,\"item\":");
        output_item(b, r, r->incomplete ? "incomplete" : "completed", text, r->text.len, true);
        coe_buf_puts(b, "}\n\n");
        event_response(b, r, r->incomplete ? "response.incomplete" : "response.completed",
                       r->incomplete ? "incomplete" : "completed", u);
        return b->err;
    }
    if (r->include_usage && u) {
        coe_buf_puts(b, "data: ");
        head(b, r, r->endpoint == COE_EP_CHAT ? "chat.completion.chunk" : "text_completion");
        coe_buf_puts(b, ",\"choices\":[],\"usage\":");
        usage_json(b, u);
        coe_buf_puts(b, "}\n\n");
    }
    return coe_buf_puts(b, "data: [DONE]\n\n");
}

int coe_reply_stream_error(coe_buf *b, coe_reply *r, const coe_api_error *e)
{
    if (r->responses) {
        event(b, r, "error");
        coe_buf_puts(b, ",\"code\":");
        json_str_or_null(b, e->code);
        coe_buf_puts(b, ",\"message\":");
        json_str(b, e->message);
        coe_buf_puts(b, ",\"param\":");
        json_str_or_null(b, e->param[0] ? e->param : NULL);
        return coe_buf_puts(b, "}\n\n");
    }
    coe_openai_error(b, e, true);
    return coe_buf_puts(b, "data: [DONE]\n\n");
}

int coe_reply_body(coe_buf *b, const coe_reply *r, const coe_choices *cs, const coe_usage *u)
{
    if (r->responses) {
        const coe_delta *first = NULL;
        for (int i = 0; i < cs->n && !first; i++)
            if (cs->items[i].index == 0)
                first = &cs->items[i];
        bool incomplete = first && first->finish_reason && strcmp(first->finish_reason, "length") == 0;
        const char *text = first && first->content ? first->content : "";
        response_object(b, r, incomplete ? "incomplete" : "completed", incomplete, text,
                        first && first->content ? first->content_len : 0, u);
        return b->err;
    }
    head(b, r, r->endpoint == COE_EP_CHAT ? "chat.completion" : "text_completion");
    coe_buf_puts(b, ",\"choices\":[");
    for (int i = 0; i < cs->n; i++) {
        if (i)
            coe_buf_puts(b, ",");
        choice_json(b, r, &cs->items[i], true);
    }
    coe_buf_puts(b, "]");
    if (u) {
        coe_buf_puts(b, ",\"usage\":");
        usage_json(b, u);
    }
    return coe_buf_puts(b, "}");
}

int coe_openai_error(coe_buf *b, const coe_api_error *e, bool event)
{
    if (event)
        coe_buf_puts(b, "data: ");
    coe_buf_puts(b, "{\"error\":{\"message\":");
    json_str(b, e->message);
    coe_buf_puts(b, ",\"type\":");
    json_str(b, e->type);
    coe_buf_puts(b, ",\"param\":");
    json_str_or_null(b, e->param[0] ? e->param : NULL);
    coe_buf_puts(b, ",\"code\":");
    json_str_or_null(b, e->code);
    return coe_buf_puts(b, event ? "}}\n\n" : "}}");
}

#define OOM_ERROR "{\"error\":{\"message\":\"the gateway is out of memory\",\"type\":\"server_error\",\"param\":null," \
                  "\"code\":\"overloaded\"}}"
const char coe_openai_oom_body[] = OOM_ERROR;
const char coe_openai_oom_events[] = "data: " OOM_ERROR "\n\ndata: [DONE]\n\n";
