/* The wire shapes of answers, in one place: chat and text completions (OpenAI's
 * chunks and bodies) and the Responses API (its events and response object), built
 * from what backends report as data (coe_delta), plus errors. Chunks are written with
 * the escaper in common/buf.h, not built as cJSON trees per token. */
#ifndef COE_OPENAI_H
#define COE_OPENAI_H

#include <stdint.h>

#include "backends/backend.h"
#include "common/buf.h"
#include "gateway/request.h"

/* A non-streamed answer's choices, kept (copied) until the answer is written. */
typedef struct coe_choices {
    coe_delta *items;
    int n, cap;
    int err;                   /* sticky: a copy failed */
} coe_choices;

int coe_choices_add(coe_choices *cs, const coe_delta *whole);
void coe_choices_free(coe_choices *cs);

/* One answer being written: what every chunk and body repeats, and for a Responses
 * stream, where it is. */
typedef struct coe_reply {
    coe_endpoint endpoint;
    const cJSON *responses;    /* the Responses request (borrowed), or NULL: chat or completions */
    char id[48];               /* chatcmpl-..., cmpl-... or resp_... */
    long long created;         /* Unix seconds */
    char model[COE_NAME_MAX + 1];
    bool include_usage;        /* chat and completion chunks carry "usage": null until the last */
    uint64_t roles_sent;       /* chat streams: choices (by index, below 64) whose role went out */
    /* Responses streams */
    long seq;                  /* sequence_number of the next event */
    bool opened;               /* the opening events went out */
    coe_buf text;              /* the output text so far */
    bool incomplete;           /* finish_reason "length" */
} coe_reply;

void coe_reply_init(coe_reply *r, const coe_request *req, const char *request_id);
void coe_reply_free(coe_reply *r);

/* Streams. Each appends events to b. */
int coe_reply_delta(coe_buf *b, coe_reply *r, const coe_delta *d);
/* The end: chat and completions, the usage chunk (when asked) and [DONE]; Responses,
 * the closing events and response.completed (or .incomplete) with usage. */
int coe_reply_stream_end(coe_buf *b, coe_reply *r, const coe_usage *u);
/* An error that ends a stream whose head is out. */
int coe_reply_stream_error(coe_buf *b, coe_reply *r, const coe_api_error *e);

/* A whole non-streamed body. u may be NULL (unknown). */
int coe_reply_body(coe_buf *b, const coe_reply *r, const coe_choices *cs, const coe_usage *u);

/* {"error":{...}}; as an SSE event ("data: ...\n\n") when event is true. */
int coe_openai_error(coe_buf *b, const coe_api_error *e, bool event);

/* What to send when building the answer ran out of memory (no allocation needed): a
 * 503 body, and for a stream whose head is out, an error event then [DONE] (which
 * the Responses clients read too). */
extern const char coe_openai_oom_body[];
extern const char coe_openai_oom_events[];

#endif
