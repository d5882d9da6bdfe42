/* Incremental Server-Sent Events parser (WHATWG rules): bytes may arrive split
 * anywhere, including inside a CRLF or a UTF-8 character. */
#ifndef COE_SSE_H
#define COE_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

typedef struct coe_sse_event {
    const char *event; /* the event field, "" when absent */
    const char *data;  /* data lines joined with '\n', NUL-terminated */
    size_t data_len;
} coe_sse_event;

/* Returns 0 to go on, anything else to stop feeding (returned by coe_sse_feed). */
typedef int (*coe_sse_fn)(void *ctx, const coe_sse_event *ev);

typedef struct coe_sse {
    coe_buf line;
    coe_buf data;
    coe_buf event;
    bool has_data;
    bool after_cr;  /* the last byte seen was CR: a following LF belongs to it */
    bool started;   /* past a possible leading byte-order mark */
    size_t max_event;
} coe_sse;

/* max_event bounds one line and one event's data; beyond it feed fails. */
void coe_sse_init(coe_sse *p, size_t max_event);
/* Feeds n bytes; calls fn for each complete event. Returns 0, COE_ERANGE when an
 * event is over the bound, COE_ENOMEM, or what fn returned. */
int coe_sse_feed(coe_sse *p, const char *bytes, size_t n, coe_sse_fn fn, void *ctx);
void coe_sse_free(coe_sse *p);

#endif
