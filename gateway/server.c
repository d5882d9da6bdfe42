#include "gateway/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "backends/local.h"
#include "common/err.h"
#include "common/log.h"
#include "gateway/auth.h"
#include "gateway/dispatch.h"
#include "gateway/exchange.h"
#include "gateway/metrics.h"
#include "gateway/openai.h"
#include "router/route.h"

#define SWEEP_MS 200

/* A worker: one thread (its loop) running one libmicrohttpd daemon in external
 * epoll mode, on one listening socket shared with the other workers.
 * Every request stays on the worker that accepted it. */
typedef struct worker {
    coe_server *srv;
    coe_loop *loop;
    struct MHD_Daemon *daemon;
    coe_watch *watch;         /* the daemon's epoll fd */
    coe_timer *mhd_timer;     /* libmicrohttpd's next timeout */
    coe_timer *sweep_timer;
    coe_exchange *live;       /* exchanges waiting on an expert; worker thread only */
    bool closed_in_run;       /* a connection closed during the current MHD_run */
    struct conn_watch *watches; /* every open connection of this worker's daemon */
} worker;

/* A connection's progress through a request, for the total deadlines on receiving
 * headers and body (libmicrohttpd's own timeout is an idle timer only, which a client
 * sending a byte every few seconds never trips). Worker thread only. */
typedef enum { STAGE_HEADERS, STAGE_BODY, STAGE_ANSWER, STAGE_CUT } conn_stage;

typedef struct conn_watch {
    int fd;
    conn_stage stage;
    long long since_us;       /* start of the stage */
    struct conn_watch *prev, *next;
} conn_watch;

struct coe_server {
    worker *workers;
    int n_workers;
    int listen_fd;            /* shared by every worker's daemon; closed once, here */
    int port;
    int headers_timeout_s, body_timeout_s; /* as started: they need a restart */
    pthread_mutex_t cfg_mu;
    coe_config *cfg;          /* the configuration new requests get */
    atomic_int inflight;
    atomic_bool stopping;
    atomic_ullong next_id;
    char id_prefix[9];
};

/* In the order of coe_metric_endpoint, so that one indexes the other. */
typedef enum { EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS, EP_MODELS, EP_MODEL, EP_HEALTH, EP_METRICS, EP_UNKNOWN } endpoint;

/* The endpoints that take a request body (POST); the others answer GET and HEAD. */
static bool takes_post(endpoint ep)
{
    return ep == EP_CHAT || ep == EP_COMPLETIONS || ep == EP_EMBEDDINGS;
}

/* What one HTTP request carries between libmicrohttpd's calls. */
typedef struct conn_ctx {
    coe_server *srv;
    worker *w;
    coe_config *cfg;
    endpoint ep;
    char id[40];
    char model[COE_NAME_MAX + 1];
    const char *category;     /* routed: the router's top category (lives with cfg), else NULL */
    char confidence[16];
    const char *rule;
    long long start_us;
    coe_buf body;
    bool out_of_memory;
    bool counted;             /* holds a place in inflight */
    coe_exchange *ex;         /* once dispatched */
    int status;               /* for the access log, when answered here */
    bool close;               /* answer with Connection: close (the framing cannot be trusted) */
    const char *method;
    char path[64];
    char model_id[COE_NAME_MAX + 2]; /* GET /v1/models/{id}: the id, cut past the longest name */
} conn_ctx;

static void set_stage(struct MHD_Connection *conn, conn_stage stage)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_watch *cw = ci ? ci->socket_context : NULL;
    if (cw && cw->stage != STAGE_CUT) {
        cw->stage = stage;
        cw->since_us = coe_now_us();
    }
}

static coe_config *acquire_config(coe_server *s)
{
    pthread_mutex_lock(&s->cfg_mu);
    coe_config *c = coe_config_ref(s->cfg);
    pthread_mutex_unlock(&s->cfg_mu);
    return c;
}

static void live_add(worker *w, coe_exchange *ex)
{
    coe_exchange_ref(ex);
    ex->prev = NULL;
    ex->next = w->live;
    if (w->live)
        w->live->prev = ex;
    w->live = ex;
}

static void live_remove(worker *w, coe_exchange *ex)
{
    if (ex->prev)
        ex->prev->next = ex->next;
    else if (w->live == ex)
        w->live = ex->next;
    if (ex->next)
        ex->next->prev = ex->prev;
    ex->prev = ex->next = NULL;
    coe_exchange_unref(&ex);
}

static void cut_slow_connections(worker *w);

/* Every SWEEP_MS: a suspended connection is not watched by libmicrohttpd, so a
 * client hanging up while its expert is silent would go unseen until the next
 * byte. Look for hang-ups here and stop the expert at once. */
static void sweep(void *arg)
{
    worker *w = arg;
    enum { BATCH = 256 };
    struct pollfd fds[BATCH];
    coe_exchange *exs[BATCH];
    w->sweep_timer = NULL;
    coe_exchange *ex = w->live;
    while (ex) {
        int n = 0;
        for (; ex && n < BATCH; ex = ex->next) {
            pthread_mutex_lock(&ex->mu);
            if (ex->suspended && ex->client_fd >= 0 && !ex->client_gone) {
                fds[n].fd = ex->client_fd;
                fds[n].events = POLLRDHUP;
                fds[n].revents = 0;
                exs[n++] = coe_exchange_ref(ex);
            }
            pthread_mutex_unlock(&ex->mu);
        }
        if (n > 0 && poll(fds, (nfds_t)n, 0) > 0)
            for (int i = 0; i < n; i++)
                if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
                    coe_exchange_abort(exs[i]);
                    coe_dispatch_cancel(exs[i]);
                }
        for (int i = 0; i < n; i++)
            coe_exchange_unref(&exs[i]);
    }
    cut_slow_connections(w);
    w->sweep_timer = coe_loop_after(w->loop, SWEEP_MS, sweep, w);
}

/* libmicrohttpd, driven by the worker's loop: when its epoll fd is readable and
 * when its own timeout (idle connections, pending work) comes due. */
static void on_daemon_timer(void *arg);

static void run_daemon(worker *w)
{
    w->closed_in_run = false;
    MHD_run(w->daemon);
    coe_loop_cancel(w->loop, w->mhd_timer);
    w->mhd_timer = NULL;
    MHD_UNSIGNED_LONG_LONG ms;
    long delay = -1;
    if (MHD_get_timeout(w->daemon, &ms) == MHD_YES)
        delay = ms > 60000 ? 60000 : (long)ms;
    /* At its connection limit libmicrohttpd takes the listening socket out of its epoll
     * set, and puts it back only at the start of a later run once a slot is free. When
     * the last connections close (time out) in this run, no event and no timeout would
     * ever bring that run: the gateway would stop accepting for good. So run again. */
    if (w->closed_in_run)
        delay = 0;
    if (delay >= 0)
        w->mhd_timer = coe_loop_after(w->loop, delay, on_daemon_timer, w);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    worker *w = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn_watch *cw = calloc(1, sizeof *cw);
        if (!cw || !ci) {
            free(cw);
            return; /* not watched: only the idle timeout applies */
        }
        cw->fd = ci->connect_fd;
        cw->stage = STAGE_HEADERS;
        cw->since_us = coe_now_us();
        cw->next = w->watches;
        if (w->watches)
            w->watches->prev = cw;
        w->watches = cw;
        *socket_ctx = cw;
        return;
    }
    w->closed_in_run = true;
    conn_watch *cw = *socket_ctx;
    if (!cw)
        return;
    if (cw->prev)
        cw->prev->next = cw->next;
    else
        w->watches = cw->next;
    if (cw->next)
        cw->next->prev = cw->prev;
    free(cw);
    *socket_ctx = NULL;
}

/* Cuts connections past their deadline for headers or body: shutting the socket down
 * makes libmicrohttpd see the end of it and close the connection. */
static void cut_slow_connections(worker *w)
{
    const coe_server *s = w->srv;
    long long now = coe_now_us();
    for (conn_watch *cw = w->watches; cw; cw = cw->next) {
        long long limit_s = cw->stage == STAGE_HEADERS ? s->headers_timeout_s
                            : cw->stage == STAGE_BODY  ? s->body_timeout_s
                                                       : 0;
        if (limit_s && now - cw->since_us > limit_s * 1000000LL) {
            coe_warn("closed a connection that took over %lld s to send its request %s", limit_s,
                     cw->stage == STAGE_HEADERS ? "headers" : "body");
            cw->stage = STAGE_CUT;
            shutdown(cw->fd, SHUT_RDWR);
        }
    }
}

static void on_daemon_ready(void *arg)
{
    run_daemon(arg);
}

/* A connection of this worker was resumed: run the daemon soon (coalesced). */
static void kick_daemon(void *arg)
{
    worker *w = arg;
    coe_loop_cancel(w->loop, w->mhd_timer);
    w->mhd_timer = coe_loop_after(w->loop, 0, on_daemon_timer, w);
}

static void on_daemon_timer(void *arg)
{
    worker *w = arg;
    w->mhd_timer = NULL; /* this one is firing: the loop frees it */
    run_daemon(w);
}

/* ---- responses ---- */

static void common_headers(struct MHD_Response *r, const conn_ctx *cx, const char *expert)
{
    MHD_add_response_header(r, "X-Request-Id", cx->id);
    /* "none": answered by the gateway itself (an error before any expert, health, models). */
    MHD_add_response_header(r, "X-Coegate-Expert", expert && *expert ? expert : "none");
    if (cx->category) {
        MHD_add_response_header(r, "X-Coegate-Category", cx->category);
        MHD_add_response_header(r, "X-Coegate-Confidence", cx->confidence);
    }
}

/* fusion: the X-Coegate-Fusion header's value, or NULL. */
static enum MHD_Result send_body(struct MHD_Connection *conn, conn_ctx *cx, int status, const char *ctype,
                                 const char *body, size_t len, const char *expert, long retry_after_s,
                                 const char *fusion)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    common_headers(r, cx, expert);
    if (fusion && *fusion)
        MHD_add_response_header(r, "X-Coegate-Fusion", fusion);
    if (retry_after_s > 0) {
        char v[24];
        snprintf(v, sizeof v, "%ld", retry_after_s);
        MHD_add_response_header(r, "Retry-After", v);
    }
    if (status == 405)
        MHD_add_response_header(r, "Allow", takes_post(cx->ep) ? "POST" : "GET, HEAD");
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (cx->close || atomic_load(&cx->srv->stopping))
        MHD_add_response_header(r, "Connection", "close");
    cx->status = status;
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* A body built in b, or a fixed 503 when building it ran out of memory. */
static enum MHD_Result send_built(struct MHD_Connection *conn, conn_ctx *cx, int status, const char *ctype,
                                  const coe_buf *b, long retry_after_s)
{
    if (b->err)
        return send_body(conn, cx, 503, "application/json", coe_openai_oom_body, strlen(coe_openai_oom_body),
                         NULL, 1, NULL);
    return send_body(conn, cx, status, ctype, b->data ? b->data : "", b->len, NULL, retry_after_s, NULL);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, conn_ctx *cx, const coe_api_error *e)
{
    coe_buf b = COE_BUF_INIT;
    coe_openai_error(&b, e, false);
    enum MHD_Result ret = send_built(conn, cx, e->status, "application/json", &b, e->status == 503 ? 1 : 0);
    coe_buf_free(&b);
    return ret;
}

static enum MHD_Result fail(struct MHD_Connection *conn, conn_ctx *cx, int status, const char *code,
                            const char *param, const char *msg)
{
    coe_api_error e;
    coe_api_error_set(&e, status, coe_error_type(status), code, param, "%s", msg);
    return send_error(conn, cx, &e);
}

static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    return coe_exchange_read(cls, buf, max);
}

static void free_stream(void *cls)
{
    coe_exchange *ex = cls;
    coe_exchange_unref(&ex);
}

/* The exchange has its head: answer with it. */
static enum MHD_Result send_exchange(struct MHD_Connection *conn, conn_ctx *cx)
{
    coe_exchange *ex = cx->ex;
    pthread_mutex_lock(&ex->mu);
    bool gone = ex->client_gone;
    bool sse = ex->sse;
    int status = ex->status;
    long retry_after = ex->retry_after_s;
    char expert[COE_NAME_MAX + 1], fusion[sizeof ex->fusion];
    snprintf(expert, sizeof expert, "%s", ex->expert);
    snprintf(fusion, sizeof fusion, "%s", ex->fusion);
    coe_buf body = COE_BUF_INIT;
    if (!sse && !gone) {
        body = ex->out; /* the whole body: ex is finished, nothing writes any more */
        ex->out = (coe_buf)COE_BUF_INIT;
    }
    pthread_mutex_unlock(&ex->mu);
    if (gone)
        return MHD_NO;
    if (!sse) {
        enum MHD_Result r = send_body(conn, cx, status, "application/json", body.data ? body.data : "", body.len,
                                      expert, retry_after, fusion);
        coe_buf_free(&body);
        return r;
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, read_stream, coe_exchange_ref(ex), free_stream);
    if (!r) {
        coe_exchange_unref(&ex);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    common_headers(r, cx, expert);
    cx->status = status;
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* One entry of /v1/models: route or expert i (routes first). */
static void model_json(coe_buf *b, const coe_config *c, int i, long long now)
{
    bool route = i < c->n_routes;
    const char *name = route ? c->routes[i].name : c->experts[i - c->n_routes].name;
    coe_buf_puts(b, "{\"id\":");
    coe_buf_json_string(b, name, strlen(name));
    coe_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"coegate\",\"coegate_type\":\"%s\"}", now,
                   route ? "route" : c->experts[i - c->n_routes].kind == COE_EXPERT_FUSION ? "fusion" : "expert");
}

static enum MHD_Result send_models(struct MHD_Connection *conn, conn_ctx *cx)
{
    const coe_config *c = cx->cfg;
    coe_buf b = COE_BUF_INIT;
    long long now = coe_wall_s();
    coe_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < c->n_routes + c->n_experts; i++) {
        if (i)
            coe_buf_puts(&b, ",");
        model_json(&b, c, i, now);
    }
    coe_buf_puts(&b, "]}");
    enum MHD_Result r = send_built(conn, cx, 200, "application/json", &b, 0);
    coe_buf_free(&b);
    return r;
}

/* GET /v1/models/{id}: what the list says of one route or expert. */
static enum MHD_Result send_model(struct MHD_Connection *conn, conn_ctx *cx)
{
    const coe_config *c = cx->cfg;
    for (int i = 0; i < c->n_routes + c->n_experts; i++)
        if (strcmp(cx->model_id, i < c->n_routes ? c->routes[i].name : c->experts[i - c->n_routes].name) == 0) {
            coe_buf b = COE_BUF_INIT;
            model_json(&b, c, i, coe_wall_s());
            enum MHD_Result r = send_built(conn, cx, 200, "application/json", &b, 0);
            coe_buf_free(&b);
            return r;
        }
    char msg[160];
    snprintf(msg, sizeof msg, "the model '%.64s' is neither an expert nor a route; see GET /v1/models", cx->model_id);
    return fail(conn, cx, 404, "model_not_found", "model", msg);
}

/* ---- request handling ---- */

static endpoint classify(const char *url)
{
    if (strcmp(url, "/v1/chat/completions") == 0)
        return EP_CHAT;
    if (strcmp(url, "/v1/completions") == 0)
        return EP_COMPLETIONS;
    if (strcmp(url, "/v1/embeddings") == 0)
        return EP_EMBEDDINGS;
    if (strcmp(url, "/v1/models") == 0)
        return EP_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11])
        return EP_MODEL;
    if (strcmp(url, "/health") == 0)
        return EP_HEALTH;
    if (strcmp(url, "/metrics") == 0)
        return EP_METRICS;
    return EP_UNKNOWN;
}

static bool valid_request_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 36)
        return false;
    for (; *s; s++)
        if (!(*s == '-' || *s == '_' || *s == '.' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z')))
            return false;
    return true;
}

/* What the client sent (a path, a model name), as one printable word of the access
 * log, cut to n - 1 bytes: a client must not be able to forge or split log lines. */
static void log_word(char *out, size_t n, const char *in)
{
    size_t k = 0;
    for (; *in && k < n - 1; in++)
        out[k++] = (*in > 0x20 && *in < 0x7f) ? *in : '?';
    out[k] = '\0';
}

/* The metrics' name of an endpoint (one model and the list count as models). */
static coe_metric_endpoint metric_endpoint(endpoint ep)
{
    switch (ep) {
    case EP_CHAT: return COE_METRIC_CHAT;
    case EP_COMPLETIONS: return COE_METRIC_COMPLETIONS;
    case EP_EMBEDDINGS: return COE_METRIC_EMBEDDINGS;
    case EP_MODELS: case EP_MODEL: return COE_METRIC_MODELS;
    case EP_HEALTH: return COE_METRIC_HEALTH;
    case EP_METRICS: return COE_METRIC_METRICS;
    default: return COE_METRIC_OTHER;
    }
}

static conn_ctx *new_ctx(worker *w, struct MHD_Connection *conn, const char *url, const char *method)
{
    coe_server *s = w->srv;
    conn_ctx *cx = calloc(1, sizeof *cx);
    if (!cx)
        return NULL;
    cx->srv = s;
    cx->w = w;
    cx->cfg = acquire_config(s);
    cx->ep = classify(url);
    cx->start_us = coe_now_us();
    cx->method = strcmp(method, "GET") == 0    ? "GET"
                 : strcmp(method, "POST") == 0 ? "POST"
                 : strcmp(method, "HEAD") == 0 ? "HEAD"
                                               : "OTHER";
    log_word(cx->path, sizeof cx->path, url);
    if (cx->ep == EP_MODEL)
        snprintf(cx->model_id, sizeof cx->model_id, "%s", url + 11);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && valid_request_id(rid))
        snprintf(cx->id, sizeof cx->id, "%s", rid);
    else
        snprintf(cx->id, sizeof cx->id, "%s%08llx", s->id_prefix,
                 (unsigned long long)atomic_fetch_add(&s->next_id, 1) & 0xffffffffULL);
    return cx;
}

/* How a request frames itself, from its headers. */
typedef struct framing {
    int n_length, n_coding, n_host;
    const char *length, *coding;
    size_t coding_len;
    bool bad_name, bad_value;
} framing;

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size)
{
    (void)kind;
    framing *f = cls;
    if (!key_size)
        f->bad_name = true;
    for (size_t i = 0; i < key_size; i++)
        if (!is_tchar((unsigned char)key[i]))
            f->bad_name = true;
    for (size_t i = 0; value && i < value_size; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            f->bad_value = true;
    }
    if (strcasecmp(key, "Content-Length") == 0) {
        f->n_length++;
        f->length = value;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->n_coding++;
        f->coding = value;
        f->coding_len = value_size;
    } else if (strcasecmp(key, "Host") == 0) {
        f->n_host++;
    }
    return MHD_YES;
}

/* Requests whose framing two HTTP parsers could read differently (the way requests
 * are smuggled past a proxy) are refused with 400 and the connection closed, as nginx
 * and Envoy do: nothing after them on the connection is read as a request. */
static enum MHD_Result check_framing(struct MHD_Connection *conn, conn_ctx *cx, const char *version)
{
    framing f = {0};
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_header, &f);
    const char *why = f.bad_name                     ? "a header name is not a token (or has space before its colon)"
                      : f.bad_value                  ? "a header value holds a control character (NUL, bare CR)"
                      : f.n_length && f.n_coding     ? "both Content-Length and Transfer-Encoding"
                      : f.n_length > 1               ? "more than one Content-Length"
                      : f.n_coding > 1               ? "more than one Transfer-Encoding"
                      : f.length && (!*f.length || strspn(f.length, "0123456789") != strlen(f.length))
                          ? "Content-Length is not a number"
                      : strcmp(version, "HTTP/1.1") == 0 && f.n_host != 1 ? "HTTP/1.1 needs exactly one Host header"
                                                                          : NULL;
    int status = 400;
    if (!why && f.coding && !(f.coding_len == 7 && strncasecmp(f.coding, "chunked", 7) == 0)) {
        /* A folded (obs-fold) value arrives joined with spaces. */
        bool odd = strpbrk(f.coding, " \t,") != NULL || !*f.coding;
        why = odd ? "Transfer-Encoding is malformed" : "only the chunked transfer coding is supported";
        status = odd ? 400 : 501;
    }
    if (!why)
        return MHD_YES;
    cx->close = true;
    return fail(conn, cx, status, status == 501 ? "not_implemented" : "bad_request", NULL, why);
}

/* First call for a request: everything that can be refused before the body. */
static enum MHD_Result on_headers(struct MHD_Connection *conn, conn_ctx *cx, const char *method, const char *version)
{
    const coe_server_cfg *sc = &cx->cfg->server;
    enum MHD_Result framed = check_framing(conn, cx, version);
    if (cx->close)
        return framed;
    if (cx->ep == EP_UNKNOWN)
        return fail(conn, cx, 404, "not_found", NULL, "unknown path; see GET /v1/models");
    bool want_get = !takes_post(cx->ep);
    /* HEAD asks what GET would answer; libmicrohttpd leaves the body out. */
    if (strcmp(method, want_get ? "GET" : "POST") != 0 && !(want_get && strcmp(method, "HEAD") == 0))
        return fail(conn, cx, 405, "method_not_allowed", NULL, want_get ? "use GET here" : "use POST here");
    if (cx->ep != EP_HEALTH &&
        !coe_auth_check(sc, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)))
        return fail(conn, cx, 401, "invalid_api_key", NULL,
                    "missing or wrong API key: send 'Authorization: Bearer KEY'");
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > sc->max_body_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", sc->max_body_bytes);
        return fail(conn, cx, 413, "request_too_large", NULL, msg);
    }
    return MHD_YES;
}

/* The whole body is in: parse, route and hand over to dispatch. */
static enum MHD_Result on_body(struct MHD_Connection *conn, conn_ctx *cx)
{
    coe_server *s = cx->srv;
    const coe_server_cfg *sc = &cx->cfg->server;
    if (cx->out_of_memory)
        return fail(conn, cx, 503, "overloaded", NULL, "the gateway is out of memory");
    if (cx->ep == EP_HEALTH)
        return send_body(conn, cx, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL, 0, NULL);
    if (cx->ep == EP_MODELS)
        return send_models(conn, cx);
    if (cx->ep == EP_MODEL)
        return send_model(conn, cx);
    if (cx->ep == EP_METRICS) {
        coe_buf b = COE_BUF_INIT;
        coe_metrics_render(&b, atomic_load(&s->inflight));
        coe_local_metrics(cx->cfg, &b);
        coe_dispatch_metrics(cx->cfg, &b);
        enum MHD_Result r = send_built(conn, cx, 200, "text/plain; version=0.0.4", &b, 0);
        coe_buf_free(&b);
        return r;
    }
    if (atomic_load(&s->stopping))
        return fail(conn, cx, 503, "shutting_down", NULL, "the gateway is shutting down");
    coe_api_error err;
    coe_request *req = NULL;
    coe_endpoint ep = cx->ep == EP_CHAT ? COE_EP_CHAT : cx->ep == EP_EMBEDDINGS ? COE_EP_EMBEDDINGS : COE_EP_COMPLETIONS;
    if (coe_request_parse(cx->body.data, cx->body.len, ep, sc->max_json_depth, &req, &err))
        return send_error(conn, cx, &err);
    coe_buf_free(&cx->body);
    log_word(cx->model, sizeof cx->model, req->model);
    coe_route_decision dec;
    int route_rc = coe_route_resolve(cx->cfg, req, &dec);
    if (route_rc == COE_ENOMEM) {
        coe_request_free(&req);
        return fail(conn, cx, 503, "overloaded", NULL, "the gateway is out of memory");
    }
    if (route_rc == COE_ENOTFOUND) {
        char msg[160];
        snprintf(msg, sizeof msg, "the model '%.64s' is neither an expert nor a route; see GET /v1/models",
                 req->model);
        coe_request_free(&req);
        return fail(conn, cx, 404, "model_not_found", "model", msg);
    }
    if (route_rc == COE_EUNSUPPORTED) {
        char msg[300];
        const char *cap = coe_cap_names[__builtin_ctz(dec.missing)];
        if (dec.route < 0)
            snprintf(msg, sizeof msg, "expert '%.64s' cannot serve '%s' (local experts and fusion groups serve "
                     "response_format json_object only, echo none; a remote one what its \"capabilities\" list)",
                     req->model, cap);
        else
            snprintf(msg, sizeof msg, "no expert that route '%.64s' may choose (its category's, its fallback, its "
                     "default) can serve '%s'", req->model, cap);
        char param[64];
        snprintf(param, sizeof param, "%s", coe_request_cap_param(req, dec.missing));
        coe_request_free(&req);
        return fail(conn, cx, 400, "unsupported_capability", param, msg);
    }
    if (route_rc) {
        /* The route exists; its router failed. Not the client's fault, not a 404. */
        char msg[160];
        snprintf(msg, sizeof msg, "route '%.64s' could not classify the request: %s", req->model,
                 coe_strerror(route_rc));
        coe_log(COE_LOG_ERROR, "%s", msg);
        coe_request_free(&req);
        return fail(conn, cx, 500, "routing_failed", NULL, msg);
    }
    cx->rule = dec.rule;
    if (dec.category_name) {
        cx->category = dec.category_name;
        snprintf(cx->confidence, sizeof cx->confidence, "%.4f", dec.confidence);
    }
    if (atomic_fetch_add(&s->inflight, 1) >= sc->max_inflight) {
        atomic_fetch_sub(&s->inflight, 1);
        coe_request_free(&req);
        return fail(conn, cx, 503, "overloaded", NULL, "the gateway is at its limit of requests in flight");
    }
    cx->counted = true;
    cx->ex = coe_exchange_new(conn);
    if (cx->ex) {
        cx->ex->max_pending = sc->stream_buffer_bytes;
        cx->ex->kick = kick_daemon;
        cx->ex->kick_arg = cx->w;
    }
    if (!cx->ex || coe_dispatch_start(cx->w->loop, cx->cfg, req, dec.expert, cx->id, cx->ex)) {
        coe_request_free(&req);
        return fail(conn, cx, 500, "internal_error", NULL, "out of memory");
    }
    live_add(cx->w, cx->ex);
    if (!coe_exchange_wait_head(cx->ex))
        return MHD_YES; /* suspended until the expert answers */
    return send_exchange(conn, cx);
}

/* Lingering close (as nginx's): a socket closed with unread input answers the client
 * with a reset, which can destroy the response it has not read yet. So after an early
 * refusal a duplicate of the socket stays open, reading and dropping what still
 * arrives, until the client closes, LINGER_MS pass or LINGER_BYTES were dropped. */
#define LINGER_MS 2000
#define LINGER_BYTES (4u << 20)

typedef struct lingering {
    worker *w;
    int fd;
    size_t dropped;
    coe_watch *watch;
    coe_timer *timer;
} lingering;

static void linger_end(lingering *l)
{
    if (l->watch)
        coe_loop_unwatch(l->w->loop, l->watch);
    if (l->timer)
        coe_loop_cancel(l->w->loop, l->timer);
    close(l->fd);
    free(l);
}

static void linger_timeout(void *arg)
{
    lingering *l = arg;
    l->timer = NULL; /* firing: the loop frees it */
    linger_end(l);
}

static void linger_read(void *arg)
{
    lingering *l = arg;
    char buf[16384];
    for (;;) {
        ssize_t n = recv(l->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0 && (l->dropped += (size_t)n) < LINGER_BYTES)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        linger_end(l); /* the client closed, an error, or enough */
        return;
    }
}

static void linger_start(worker *w, int fd)
{
    lingering *l = fd >= 0 ? calloc(1, sizeof *l) : NULL;
    if (!l) {
        if (fd >= 0)
            close(fd);
        return;
    }
    *l = (lingering){w, fd, 0, NULL, NULL};
    l->watch = coe_loop_watch(w->loop, fd, linger_read, l);
    l->timer = coe_loop_after(w->loop, LINGER_MS, linger_timeout, l);
    if (!l->watch || !l->timer)
        linger_end(l);
}

/* A body that crosses max_body_bytes while it arrives (a chunked body announces no
 * length): refused at once, since reading the rest only to refuse it would let a client
 * make the gateway read without end. libmicrohttpd 0.9.75 cannot queue a response
 * while a body arrives, so the 413 is written on the socket here (nothing of this
 * response has gone out), our side shut, and the connection dropped. */
static enum MHD_Result refuse_upload(struct MHD_Connection *conn, conn_ctx *cx)
{
    char msg[96];
    snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", cx->cfg->server.max_body_bytes);
    coe_api_error e;
    coe_api_error_set(&e, 413, coe_error_type(413), "request_too_large", NULL, "%s", msg);
    coe_buf body = COE_BUF_INIT, out = COE_BUF_INIT;
    coe_openai_error(&body, &e, false);
    coe_buf_printf(&out,
                   "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\nX-Request-Id: %s\r\nX-Coegate-Expert: none\r\n\r\n",
                   body.len, cx->id);
    coe_buf_append(&out, body.data, body.len);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) {
        /* Out of memory while building it: no answer rather than half of one. */
        if (!body.err && !out.err)
            (void)!send(ci->connect_fd, out.data, out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(ci->connect_fd, SHUT_WR);
        linger_start(cx->w, dup(ci->connect_fd));
    }
    coe_buf_free(&body);
    coe_buf_free(&out);
    cx->status = 413;
    return MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    conn_ctx *cx = *con_cls;
    if (!cx) {
        set_stage(conn, STAGE_BODY);
        cx = new_ctx(cls, conn, url, method);
        if (!cx)
            return MHD_NO;
        *con_cls = cx;
        return on_headers(conn, cx, method, version);
    }
    if (*upload_size) {
        size_t max = cx->cfg->server.max_body_bytes;
        if (cx->body.len + *upload_size > max) {
            *upload_size = 0;
            return refuse_upload(conn, cx);
        }
        if (coe_buf_append(&cx->body, upload, *upload_size))
            cx->out_of_memory = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (cx->ex) {
        /* Resumed: the expert has answered, or the client went away. */
        if (!coe_exchange_wait_head(cx->ex))
            return MHD_YES;
        return send_exchange(conn, cx);
    }
    set_stage(conn, STAGE_ANSWER);
    return on_body(conn, cx);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    conn_ctx *cx = *con_cls;
    *con_cls = NULL;
    set_stage(conn, STAGE_HEADERS); /* of the next request on this connection */
    if (!cx)
        return;
    coe_server *s = cx->srv;
    coe_usage usage = {-1, -1, -1};
    char expert[COE_NAME_MAX + 1] = "-";
    if (cx->ex) {
        if (coe_exchange_detach(cx->ex)) {
            coe_dispatch_cancel(cx->ex);
            if (!cx->status || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                cx->status = 499; /* the client closed the request, nginx's convention */
        }
        pthread_mutex_lock(&cx->ex->mu);
        if (cx->ex->log_status && cx->status != 499)
            cx->status = cx->ex->log_status;
        if (cx->ex->have_usage)
            usage = cx->ex->usage;
        if (cx->ex->expert[0])
            snprintf(expert, sizeof expert, "%s", cx->ex->expert);
        pthread_mutex_unlock(&cx->ex->mu);
        live_remove(cx->w, cx->ex);
        coe_exchange_unref(&cx->ex);
    }
    if (cx->counted)
        atomic_fetch_sub(&s->inflight, 1);
    double seconds = (double)(coe_now_us() - cx->start_us) / 1e6;
    coe_metrics_request(metric_endpoint(cx->ep), cx->status, seconds);
    if (cx->cfg->server.access_log) {
        char ip[INET6_ADDRSTRLEN] = "-";
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
        }
        char tokens[64] = "prompt_tokens=- completion_tokens=-";
        if (usage.prompt_tokens >= 0)
            snprintf(tokens, sizeof tokens, "prompt_tokens=%ld completion_tokens=%ld", usage.prompt_tokens,
                     usage.completion_tokens);
        coe_info("access id=%s client=%s method=%s path=%s model=%s rule=%s category=%s expert=%s status=%d ms=%.2f %s",
                 cx->id, ip, cx->method, cx->path, cx->model[0] ? cx->model : "-", cx->rule ? cx->rule : "-",
                 cx->category ? cx->category : "-", expert, cx->status, seconds * 1000.0, tokens);
    }
    coe_buf_free(&cx->body);
    coe_config_unref(&cx->cfg);
    free(cx);
}

/* ---- lifetime ---- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    coe_debug("libmicrohttpd: %s", msg);
}

/* The listening socket, made here so that every worker's daemon shares it (a
 * second process asking for the same port fails, as it should). */
static int open_listener(const coe_server_cfg *sc, int *port_out)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%d", sc->port);
    int gai = getaddrinfo(sc->host, port, &hints, &ai);
    if (gai) {
        coe_error("server.host: '%s' is not a numeric IPv4 or IPv6 address (%s)", sc->host, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        coe_error("cannot listen on %s:%d: %s", sc->host, sc->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage bound;
    socklen_t len = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &len);
    *port_out = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    return fd;
}

static int start_daemon(worker *w, const coe_server_cfg *sc, int listen_fd, int n_workers)
{
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* Connection limits are per daemon: share them out. */
    unsigned per = (unsigned)((sc->max_connections + n_workers - 1) / n_workers);
    unsigned per_ip = (unsigned)((sc->max_connections_per_ip + n_workers - 1) / n_workers);
    w->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, w, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, per, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)sc->connection_timeout_s,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, w, MHD_OPTION_NOTIFY_CONNECTION, on_connection, w,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!w->daemon) {
        coe_error("cannot start the HTTP daemon of worker %d", (int)(w - w->srv->workers));
        return COE_EIO;
    }
    return 0;
}

/* On the worker's thread: hook its daemon into the loop. */
static void attach(void *arg)
{
    worker *w = arg;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    w->watch = coe_loop_watch(w->loop, di->epoll_fd, on_daemon_ready, w);
    w->sweep_timer = coe_loop_after(w->loop, SWEEP_MS, sweep, w);
    run_daemon(w);
}

int coe_server_open(coe_server **out, coe_config *cfg)
{
    *out = NULL;
    const coe_server_cfg *sc = &cfg->server;
    coe_server *s = calloc(1, sizeof *s);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = sc->threads > 0 ? sc->threads : (int)(ncpu > 0 ? ncpu : 1);
    if (!s || !(s->workers = calloc((size_t)n, sizeof *s->workers))) {
        free(s);
        return COE_ENOMEM;
    }
    s->listen_fd = -1;
    s->headers_timeout_s = sc->headers_timeout_s;
    s->body_timeout_s = sc->body_timeout_s;
    s->cfg = coe_config_ref(cfg);
    pthread_mutex_init(&s->cfg_mu, NULL);
    unsigned char rnd[4] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        long long t = coe_now_us();
        memcpy(rnd, &t, sizeof rnd);
    }
    snprintf(s->id_prefix, sizeof s->id_prefix, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);

    s->listen_fd = open_listener(sc, &s->port);
    int rc = s->listen_fd < 0 ? COE_EIO : 0;
    for (int i = 0; i < n && !rc; i++) {
        worker *w = &s->workers[i];
        w->srv = s;
        if ((rc = start_daemon(w, sc, s->listen_fd, n)))
            break;
        s->n_workers++;
        if ((rc = coe_loop_open(&w->loop)) == 0)
            rc = coe_loop_call(w->loop, attach, w);
    }
    if (rc) {
        coe_server_close(&s);
        return rc;
    }
    *out = s;
    return 0;
}

int coe_server_port(const coe_server *s)
{
    return s->port;
}

void coe_server_set_config(coe_server *s, coe_config *cfg)
{
    const coe_server_cfg *a = &s->cfg->server, *b = &cfg->server;
    if (strcmp(a->host, b->host) != 0 || a->port != b->port || a->threads != b->threads ||
        a->max_connections != b->max_connections || a->max_connections_per_ip != b->max_connections_per_ip ||
        a->connection_timeout_s != b->connection_timeout_s || a->headers_timeout_s != b->headers_timeout_s ||
        a->body_timeout_s != b->body_timeout_s)
        coe_warn("reload: server.host, port, threads, max_connections, max_connections_per_ip, "
                 "connection_timeout_s, headers_timeout_s and body_timeout_s take effect only after a restart");
    coe_config *c = coe_config_ref(cfg);
    pthread_mutex_lock(&s->cfg_mu);
    coe_config *old = s->cfg;
    s->cfg = c;
    pthread_mutex_unlock(&s->cfg_mu);
    coe_config_unref(&old);
}

/* The daemon stops watching the shared socket (and will not close it). */
static void quiesce_worker(void *arg)
{
    worker *w = arg;
    MHD_quiesce_daemon(w->daemon);
}

static void close_listener(coe_server *s)
{
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    s->listen_fd = -1;
}

void coe_server_quiesce(coe_server *s)
{
    atomic_store(&s->stopping, true);
    for (int i = 0; i < s->n_workers; i++)
        if (s->workers[i].loop)
            coe_loop_call(s->workers[i].loop, quiesce_worker, &s->workers[i]);
    close_listener(s);
}

int coe_server_inflight(coe_server *s)
{
    return atomic_load(&s->inflight);
}

/* On the worker's thread: end what is open, then the daemon. libmicrohttpd refuses
 * to stop with suspended connections, so every one is woken (and can never be
 * suspended again) first. */
static void stop_worker(void *arg)
{
    worker *w = arg;
    for (coe_exchange *ex = w->live; ex; ex = ex->next) {
        coe_exchange_abort(ex);
        coe_dispatch_cancel(ex);
    }
    coe_loop_unwatch(w->loop, w->watch);
    coe_loop_cancel(w->loop, w->mhd_timer);
    coe_loop_cancel(w->loop, w->sweep_timer);
    w->watch = NULL;
    w->mhd_timer = w->sweep_timer = NULL;
    MHD_quiesce_daemon(w->daemon); /* the shared socket is the server's to close */
    MHD_stop_daemon(w->daemon);    /* completion callbacks run here, on this thread */
    w->daemon = NULL;
}

void coe_server_stop(coe_server *s)
{
    atomic_store(&s->stopping, true);
    for (int i = 0; i < s->n_workers; i++) {
        worker *w = &s->workers[i];
        if (w->loop) {
            coe_loop_call(w->loop, stop_worker, w);
        } else if (w->daemon) {
            MHD_quiesce_daemon(w->daemon); /* never attached to a loop */
            MHD_stop_daemon(w->daemon);
        }
        w->daemon = NULL;
        coe_loop_close(&w->loop);
    }
    close_listener(s);
}

void coe_server_close(coe_server **sp)
{
    coe_server *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    coe_server_stop(s);
    coe_config_unref(&s->cfg);
    pthread_mutex_destroy(&s->cfg_mu);
    free(s->workers);
    free(s);
}
