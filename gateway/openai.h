/* OpenAI wire shapes for responses: stream chunks, final bodies, errors. Chunks are
 * written with the escaper in common/buf.h, not built as cJSON trees per token. */
#ifndef COE_OPENAI_H
#define COE_OPENAI_H

#include "backends/backend.h"
#include "common/buf.h"
#include "gateway/request.h"

/* What every chunk and body of one response repeats. */
typedef struct coe_reply_ctx {
    coe_endpoint endpoint;
    char id[48];               /* chatcmpl-... or cmpl-... */
    long long created;         /* Unix seconds */
    char model[COE_NAME_MAX + 1];
    bool include_usage;        /* stream chunks carry "usage": null until the last */
} coe_reply_ctx;

/* Appends one "data: {...}\n\n" event for d. */
int coe_openai_chunk(coe_buf *b, const coe_reply_ctx *c, const coe_delta *d);
/* The final usage chunk (empty choices), as OpenAI sends for include_usage. */
int coe_openai_usage_chunk(coe_buf *b, const coe_reply_ctx *c, const coe_usage *u);
int coe_openai_done(coe_buf *b);
/* A whole non-streamed body around the raw choices array. */
int coe_openai_body(coe_buf *b, const coe_reply_ctx *c, const char *choices, size_t len,
                    const coe_usage *u);
/* {"error":{...}}; as an SSE event ("data: ...\n\n") when event is true. */
int coe_openai_error(coe_buf *b, const coe_api_error *e, bool event);

/* What to send when building the answer ran out of memory (no allocation needed): a
 * 503 body, and for a stream whose head is out, an error event then [DONE]. */
extern const char coe_openai_oom_body[];
extern const char coe_openai_oom_events[];

#endif
