/* The mailbox between one HTTP connection and what answers it (the worker's loop,
 * or a compute thread for local experts). The answering side sets the response head,
 * appends body bytes and finishes; the HTTP side waits for the head, then drains
 * bytes. While the HTTP side waits, every change calls its wake hook: no polling. */
#ifndef COE_EXCHANGE_H
#define COE_EXCHANGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "backends/backend.h"
#include "common/buf.h"
#include "gateway/config.h"

typedef struct coe_exchange {
    pthread_mutex_t mu;
    atomic_int refs;
    /* HTTP side, under mu */
    void (*wake)(void *arg);     /* brings the HTTP side back; NULL once it has ended */
    void *wake_arg;
    bool waiting;                /* the HTTP side waits for a change */
    bool client_gone;            /* the client hung up before the end */
    /* response head, under mu; set once */
    bool head_ready;
    int status;
    bool sse;                    /* the body is an event stream */
    long retry_after_s;          /* > 0: send Retry-After */
    char expert[COE_NAME_MAX + 1];
    char fusion[256];            /* X-Coegate-Fusion for an answer that is not streamed, "" for none */
    /* body, under mu */
    coe_buf out;
    bool finished;
    size_t max_pending;          /* bytes the client has not read yet, at most */
    int log_status;              /* when set, the status for the access log (a stream cut short) */
    /* Backpressure: called once, on the connection's thread and outside mu, when the
     * client has read the body down to max_pending / 8; NULL when nobody waits. */
    void (*drained)(void *arg);
    void *drained_arg;
    /* accounting for the access log, under mu */
    coe_usage usage;
    bool have_usage;
    /* loop thread only: the dispatch answering this exchange, NULL when none */
    void *owner;
} coe_exchange;

/* wake(wake_arg) is called (under the exchange's lock, from any thread) when the HTTP
 * side waits and something changes; it must only schedule the HTTP side. */
coe_exchange *coe_exchange_new(void (*wake)(void *arg), void *wake_arg);
coe_exchange *coe_exchange_ref(coe_exchange *ex);
void coe_exchange_unref(coe_exchange **ex);

/* Loop side. Each wakes the connection if it waits. */
void coe_exchange_head(coe_exchange *ex, int status, bool sse, const char *expert, long retry_after_s);
/* Appends bytes; fails with COE_ERANGE when the client lags more than max_pending. */
int coe_exchange_write(coe_exchange *ex, const char *p, size_t n);
void coe_exchange_finish(coe_exchange *ex);
/* Bytes written and not yet read by the client. */
size_t coe_exchange_backlog(coe_exchange *ex);
/* Sets (or clears, with NULL) the drained callback. */
void coe_exchange_on_drained(coe_exchange *ex, void (*fn)(void *arg), void *arg);
/* Ends a stream that cannot go on: appends its closing bytes (an error event, past the
 * bound if need be: they are few) and finishes, with log_status for the access log. */
void coe_exchange_end_with_error(coe_exchange *ex, const char *p, size_t n, int log_status);
/* Head, whole body and finish at once: for answers that are not streamed. */
void coe_exchange_respond(coe_exchange *ex, int status, const char *expert, long retry_after_s,
                          const char *body, size_t len);
/* Any thread: the client is gone or the server is stopping; wake the connection so
 * that it closes. */
void coe_exchange_abort(coe_exchange *ex);
void coe_exchange_set_usage(coe_exchange *ex, const coe_usage *u);
/* The X-Coegate-Fusion header of an answer not yet sent (truncated to fit). */
void coe_exchange_set_fusion(coe_exchange *ex, const char *value);

/* HTTP side, on the connection's thread. */
/* True when the head is ready (or the exchange was aborted); otherwise the HTTP side
 * waits, and is woken at the next change. */
bool coe_exchange_wait_head(coe_exchange *ex);
/* Copies up to max body bytes; 0 when none is ready yet (then the HTTP side is woken
 * at the next change); COE_EXCHANGE_END at the end; COE_EXCHANGE_ABORT when the
 * stream must be cut short (the client is gone, the server stops). */
#define COE_EXCHANGE_END (-1)
#define COE_EXCHANGE_ABORT (-2)
ssize_t coe_exchange_read(coe_exchange *ex, char *buf, size_t max);
/* The connection ended (no wake after this returns); returns true if it ended before
 * the body was finished. */
bool coe_exchange_detach(coe_exchange *ex);

#endif
