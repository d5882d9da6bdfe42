#include "gateway/openai.h"

#include <string.h>

static int head(coe_buf *b, const coe_reply_ctx *c, const char *object)
{
    coe_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", c->id, object,
                   c->created);
    return coe_buf_json_string(b, c->model, strlen(c->model));
}

static void usage_json(coe_buf *b, const coe_usage *u)
{
    coe_buf_printf(b, "{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld}",
                   u->prompt_tokens, u->completion_tokens, u->total_tokens);
}

int coe_openai_chunk(coe_buf *b, const coe_reply_ctx *c, const coe_delta *d)
{
    bool chat = c->endpoint == COE_EP_CHAT;
    coe_buf_puts(b, "data: ");
    head(b, c, chat ? "chat.completion.chunk" : "text_completion");
    coe_buf_printf(b, ",\"choices\":[{\"index\":%d,", d->index);
    if (chat) {
        coe_buf_puts(b, "\"delta\":{");
        const char *sep = "";
        if (d->role) {
            coe_buf_puts(b, "\"role\":");
            coe_buf_json_string(b, d->role, strlen(d->role));
            sep = ",";
        }
        if (d->content) {
            coe_buf_printf(b, "%s\"content\":", sep);
            coe_buf_json_string(b, d->content, d->content_len);
            sep = ",";
        }
        if (d->reasoning) {
            coe_buf_printf(b, "%s\"reasoning_content\":", sep);
            coe_buf_json_string(b, d->reasoning, strlen(d->reasoning));
            sep = ",";
        }
        if (d->tool_calls)
            coe_buf_printf(b, "%s\"tool_calls\":%s", sep, d->tool_calls);
        coe_buf_puts(b, "},");
    } else {
        coe_buf_puts(b, "\"text\":");
        coe_buf_json_string(b, d->content ? d->content : "", d->content ? d->content_len : 0);
        coe_buf_puts(b, ",");
    }
    coe_buf_printf(b, "\"logprobs\":%s,\"finish_reason\":", d->logprobs ? d->logprobs : "null");
    if (d->finish_reason)
        coe_buf_json_string(b, d->finish_reason, strlen(d->finish_reason));
    else
        coe_buf_puts(b, "null");
    if (d->extra)
        coe_buf_printf(b, ",%s", d->extra);
    coe_buf_puts(b, "}]");
    if (c->include_usage)
        coe_buf_puts(b, ",\"usage\":null");
    return coe_buf_puts(b, "}\n\n");
}

int coe_openai_usage_chunk(coe_buf *b, const coe_reply_ctx *c, const coe_usage *u)
{
    coe_buf_puts(b, "data: ");
    head(b, c, c->endpoint == COE_EP_CHAT ? "chat.completion.chunk" : "text_completion");
    coe_buf_puts(b, ",\"choices\":[],\"usage\":");
    usage_json(b, u);
    return coe_buf_puts(b, "}\n\n");
}

int coe_openai_done(coe_buf *b)
{
    return coe_buf_puts(b, "data: [DONE]\n\n");
}

int coe_openai_body(coe_buf *b, const coe_reply_ctx *c, const char *choices, size_t len,
                    const coe_usage *u)
{
    head(b, c, c->endpoint == COE_EP_CHAT ? "chat.completion" : "text_completion");
    coe_buf_puts(b, ",\"choices\":");
    coe_buf_append(b, choices, len);
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
    coe_buf_json_string(b, e->message, strlen(e->message));
    coe_buf_puts(b, ",\"type\":");
    coe_buf_json_string(b, e->type, strlen(e->type));
    coe_buf_puts(b, ",\"param\":");
    if (e->param[0])
        coe_buf_json_string(b, e->param, strlen(e->param));
    else
        coe_buf_puts(b, "null");
    coe_buf_puts(b, ",\"code\":");
    if (e->code)
        coe_buf_json_string(b, e->code, strlen(e->code));
    else
        coe_buf_puts(b, "null");
    return coe_buf_puts(b, event ? "}}\n\n" : "}}");
}

#define OOM_ERROR "{\"error\":{\"message\":\"the gateway is out of memory\",\"type\":\"server_error\",\"param\":null," \
                  "\"code\":\"overloaded\"}}"
const char coe_openai_oom_body[] = OOM_ERROR;
const char coe_openai_oom_events[] = "data: " OOM_ERROR "\n\ndata: [DONE]\n\n";
