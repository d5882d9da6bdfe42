/* HTTP/1.1 connections on a worker's event loop: accepting (with connection limits),
 * reading and framing requests strictly (gateway/http_parse.h), deadlines, writing
 * whole and streamed responses, keep-alive and pipelining, lingering close.
 * The endpoints are the handler's (gateway/server.c): this file knows no URL.
 *
 * Everything runs on the listener's loop thread, except coe_http_wake and the
 * reference counting, which any thread may call. */
#ifndef COE_HTTP_H
#define COE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/loop.h"
#include "gateway/http_parse.h"

typedef struct coe_http_conn coe_http_conn;
typedef struct coe_http_listener coe_http_listener;
typedef struct coe_http_ip_table coe_http_ip_table;

typedef struct coe_http_limits {
    int max_connections;         /* of this listener; at the limit it stops accepting until one closes */
    int max_connections_per_ip;  /* of the whole server (the table is shared) */
    int idle_timeout_s;          /* no byte received (or, writing, sent) for this long: closed */
    int headers_timeout_s;       /* a request head, from its first byte */
    int body_timeout_s;          /* a request body, from the end of its head */
} coe_http_limits;

/* The handler. A request's calls come in this order: on_head, then (if it asked for
 * the body) on_body, then any number of on_wake, then on_end exactly once. */
typedef struct coe_http_handler {
    /* A request head arrived. status != 0: it cannot be served as framed (why says
     * why; the connection closes after the answer) and h may be partly filled (method
     * and path can be NULL). The handler answers now (coe_http_respond) or leaves the
     * request waiting; then a request with a body reads it and calls on_body. */
    void (*on_head)(void *arg, coe_http_conn *c, const coe_http_head *h, int status, const char *why);
    /* The whole body (status 0), or it crossed coe_http_set_body_limit (413), or was
     * malformed (400, why) or memory ran out (503). The handler answers now or later. */
    void (*on_body)(void *arg, coe_http_conn *c, const char *body, size_t len, int status, const char *why);
    /* coe_http_wake was called while the request waits for an answer or its stream
     * waits for bytes. */
    void (*on_wake)(void *arg, coe_http_conn *c);
    /* The request is over. outcome 0: its response was written whole; otherwise why
     * not: 408 a deadline passed (or the client stopped reading), 499 the client left,
     * 503 the server stopped or memory ran out. */
    void (*on_end)(void *arg, coe_http_conn *c, int outcome);
} coe_http_handler;

/* A shared per-address count, for max_connections_per_ip across listeners. */
coe_http_ip_table *coe_http_ip_table_new(void);
void coe_http_ip_table_free(coe_http_ip_table **t);

/* On loop's thread: accepts on listen_fd (non-blocking, shared with other
 * listeners: one of them takes each connection). */
int coe_http_listen(coe_http_listener **out, coe_loop *loop, int listen_fd, const coe_http_limits *limits,
                    coe_http_ip_table *ips, const coe_http_handler *handler, void *arg);
/* On the loop's thread: stops accepting; open connections go on. */
void coe_http_quiesce(coe_http_listener *l);
/* On the loop's thread: closes every connection (on_end for each open request) and
 * frees the listener. */
void coe_http_close(coe_http_listener **l);

/* ---- for the handler, on the loop's thread ---- */

typedef struct coe_http_header {
    const char *name, *value;
} coe_http_header;

/* The handler's pointer for the current request. */
void coe_http_set_user(coe_http_conn *c, void *user);
void *coe_http_user(const coe_http_conn *c);
/* The client's address, printable. */
const char *coe_http_client(const coe_http_conn *c);
/* The most body bytes this request may send (set in on_head; default 0). */
void coe_http_set_body_limit(coe_http_conn *c, size_t limit);
/* Answer with Connection: close, and close after it. */
void coe_http_close_after(coe_http_conn *c);
/* A whole response (the body is copied; a HEAD request gets none). */
int coe_http_respond(coe_http_conn *c, int status, const coe_http_header *hdrs, int n, const char *body,
                     size_t len);

/* A streamed response's source: copies up to max bytes into buf and returns how
 * many; 0 when none is ready yet (the source calls coe_http_wake when there are);
 * COE_HTTP_END at the end; COE_HTTP_ABORT to cut the response short. */
#define COE_HTTP_END (-1)
#define COE_HTTP_ABORT (-2)
typedef ssize_t (*coe_http_pull_fn)(void *arg, char *buf, size_t max);
int coe_http_stream(coe_http_conn *c, int status, const coe_http_header *hdrs, int n, coe_http_pull_fn pull,
                    void *arg);

/* ---- any thread ---- */

coe_http_conn *coe_http_conn_ref(coe_http_conn *c);
void coe_http_conn_unref(coe_http_conn **c);
/* Brings the waiting request back to the loop: on_wake, or its stream pulls again. */
void coe_http_wake(coe_http_conn *c);

#endif
