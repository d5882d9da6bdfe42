#include "gateway/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/err.h"
#include "common/log.h"
#include "gateway/auth.h"
#include "gateway/dispatch.h"
#include "gateway/exchange.h"
#include "gateway/openai.h"
#include "router/route.h"

#define SWEEP_MS 200

struct coe_server {
    struct MHD_Daemon *daemon;
    coe_loop *loop;
    int port;
    pthread_mutex_t cfg_mu;
    coe_config *cfg;          /* the configuration new requests get */
    atomic_int inflight;
    atomic_bool stopping;
    atomic_bool sweeping;     /* the hang-up sweep timer is armed */
    atomic_ullong next_id;
    char id_prefix[9];
    pthread_mutex_t live_mu;  /* guards live: exchanges waiting on an expert */
    coe_exchange *live;
};

typedef enum { EP_CHAT, EP_COMPLETIONS, EP_MODELS, EP_HEALTH, EP_UNKNOWN } endpoint;

/* What one HTTP request carries between libmicrohttpd's calls. */
typedef struct conn_ctx {
    coe_server *srv;
    coe_config *cfg;
    endpoint ep;
    char id[40];
    char model[COE_NAME_MAX + 1];
    long long start_us;
    coe_buf body;
    bool too_large;
    bool counted;             /* holds a place in inflight */
    coe_exchange *ex;         /* once dispatched */
    int status;               /* for the access log, when answered here */
    const char *method;
    char path[64];
} conn_ctx;

static coe_config *acquire_config(coe_server *s)
{
    pthread_mutex_lock(&s->cfg_mu);
    coe_config *c = coe_config_ref(s->cfg);
    pthread_mutex_unlock(&s->cfg_mu);
    return c;
}

static void live_add(coe_server *s, coe_exchange *ex)
{
    coe_exchange_ref(ex);
    pthread_mutex_lock(&s->live_mu);
    ex->prev = NULL;
    ex->next = s->live;
    if (s->live)
        s->live->prev = ex;
    s->live = ex;
    pthread_mutex_unlock(&s->live_mu);
}

static void live_remove(coe_server *s, coe_exchange *ex)
{
    pthread_mutex_lock(&s->live_mu);
    if (ex->prev)
        ex->prev->next = ex->next;
    else if (s->live == ex)
        s->live = ex->next;
    if (ex->next)
        ex->next->prev = ex->prev;
    ex->prev = ex->next = NULL;
    pthread_mutex_unlock(&s->live_mu);
    coe_exchange_unref(&ex);
}

/* Loop thread, every SWEEP_MS: a suspended connection is not watched by
 * libmicrohttpd, so a client hanging up while its expert is silent would go unseen
 * until the next byte. Look for hang-ups here and cancel the expert at once. */
static void sweep(void *arg)
{
    coe_server *s = arg;
    enum { BATCH = 256 };
    struct pollfd fds[BATCH];
    coe_exchange *exs[BATCH];
    int n = 0;
    pthread_mutex_lock(&s->live_mu);
    for (coe_exchange *ex = s->live; ex && n < BATCH; ex = ex->next) {
        pthread_mutex_lock(&ex->mu);
        if (ex->suspended && ex->client_fd >= 0 && !ex->client_gone) {
            fds[n].fd = ex->client_fd;
            fds[n].events = POLLRDHUP;
            fds[n].revents = 0;
            exs[n++] = coe_exchange_ref(ex);
        }
        pthread_mutex_unlock(&ex->mu);
    }
    pthread_mutex_unlock(&s->live_mu);
    if (n > 0 && poll(fds, (nfds_t)n, 0) > 0) {
        for (int i = 0; i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
                coe_exchange_abort(exs[i]);
                coe_dispatch_cancel_now(exs[i]);
            }
    }
    for (int i = 0; i < n; i++)
        coe_exchange_unref(&exs[i]);
    if (!atomic_load(&s->stopping))
        coe_loop_after(s->loop, SWEEP_MS, sweep, s);
    else
        atomic_store(&s->sweeping, false);
}

static void start_sweep(void *arg)
{
    coe_server *s = arg;
    coe_loop_after(s->loop, SWEEP_MS, sweep, s);
}

/* ---- responses ---- */

static void common_headers(struct MHD_Response *r, const conn_ctx *cx, const char *expert)
{
    MHD_add_response_header(r, "X-Request-Id", cx->id);
    if (expert && *expert)
        MHD_add_response_header(r, "X-Coegate-Expert", expert);
}

static enum MHD_Result send_body(struct MHD_Connection *conn, conn_ctx *cx, int status, const char *ctype,
                                 const char *body, size_t len, const char *expert, long retry_after_s)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    common_headers(r, cx, expert);
    if (retry_after_s > 0) {
        char v[24];
        snprintf(v, sizeof v, "%ld", retry_after_s);
        MHD_add_response_header(r, "Retry-After", v);
    }
    if (status == 405)
        MHD_add_response_header(r, "Allow", cx->ep == EP_MODELS || cx->ep == EP_HEALTH ? "GET" : "POST");
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (atomic_load(&cx->srv->stopping))
        MHD_add_response_header(r, "Connection", "close");
    cx->status = status;
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, conn_ctx *cx, const coe_api_error *e)
{
    coe_buf b = COE_BUF_INIT;
    coe_openai_error(&b, e, false);
    enum MHD_Result ret = send_body(conn, cx, e->status, "application/json", b.data, b.len, NULL,
                                    e->status == 503 ? 1 : 0);
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
    char expert[COE_NAME_MAX + 1];
    snprintf(expert, sizeof expert, "%s", ex->expert);
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
                                      expert, retry_after);
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

static enum MHD_Result send_models(struct MHD_Connection *conn, conn_ctx *cx)
{
    const coe_config *c = cx->cfg;
    coe_buf b = COE_BUF_INIT;
    long long now = coe_wall_s();
    coe_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < c->n_routes + c->n_experts; i++) {
        bool route = i < c->n_routes;
        const char *name = route ? c->routes[i].name : c->experts[i - c->n_routes].name;
        coe_buf_printf(&b, "%s{\"id\":", i ? "," : "");
        coe_buf_json_string(&b, name, strlen(name));
        coe_buf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"coegate\",\"coegate_type\":\"%s\"}",
                       now, route ? "route" : "expert");
    }
    coe_buf_puts(&b, "]}");
    enum MHD_Result r = send_body(conn, cx, 200, "application/json", b.data, b.len, NULL, 0);
    coe_buf_free(&b);
    return r;
}

/* ---- request handling ---- */

static endpoint classify(const char *url)
{
    if (strcmp(url, "/v1/chat/completions") == 0)
        return EP_CHAT;
    if (strcmp(url, "/v1/completions") == 0)
        return EP_COMPLETIONS;
    if (strcmp(url, "/v1/models") == 0)
        return EP_MODELS;
    if (strcmp(url, "/health") == 0)
        return EP_HEALTH;
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

static conn_ctx *new_ctx(coe_server *s, struct MHD_Connection *conn, const char *url, const char *method)
{
    conn_ctx *cx = calloc(1, sizeof *cx);
    if (!cx)
        return NULL;
    cx->srv = s;
    cx->cfg = acquire_config(s);
    cx->ep = classify(url);
    cx->start_us = coe_now_us();
    cx->method = strcmp(method, "GET") == 0 ? "GET" : strcmp(method, "POST") == 0 ? "POST" : "OTHER";
    snprintf(cx->path, sizeof cx->path, "%s", cx->ep == EP_UNKNOWN ? "-" : url);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && valid_request_id(rid))
        snprintf(cx->id, sizeof cx->id, "%s", rid);
    else
        snprintf(cx->id, sizeof cx->id, "%s%08llx", s->id_prefix,
                 (unsigned long long)atomic_fetch_add(&s->next_id, 1) & 0xffffffffULL);
    return cx;
}

/* First call for a request: everything that can be refused before the body. */
static enum MHD_Result on_headers(struct MHD_Connection *conn, conn_ctx *cx, const char *method)
{
    const coe_server_cfg *sc = &cx->cfg->server;
    if (cx->ep == EP_UNKNOWN)
        return fail(conn, cx, 404, "not_found", NULL, "unknown path; see GET /v1/models");
    bool want_get = cx->ep == EP_MODELS || cx->ep == EP_HEALTH;
    if (strcmp(method, want_get ? "GET" : "POST") != 0)
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
    if (cx->too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", sc->max_body_bytes);
        return fail(conn, cx, 413, "request_too_large", NULL, msg);
    }
    if (cx->ep == EP_HEALTH)
        return send_body(conn, cx, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL, 0);
    if (cx->ep == EP_MODELS)
        return send_models(conn, cx);
    if (atomic_load(&s->stopping))
        return fail(conn, cx, 503, "shutting_down", NULL, "the gateway is shutting down");
    coe_api_error err;
    coe_request *req = NULL;
    coe_endpoint ep = cx->ep == EP_CHAT ? COE_EP_CHAT : COE_EP_COMPLETIONS;
    if (coe_request_parse(cx->body.data, cx->body.len, ep, sc->max_json_depth, &req, &err))
        return send_error(conn, cx, &err);
    coe_buf_free(&cx->body);
    snprintf(cx->model, sizeof cx->model, "%s", req->model);
    coe_route_decision dec;
    if (coe_route_resolve(cx->cfg, req, &dec)) {
        char msg[160];
        snprintf(msg, sizeof msg, "the model '%.64s' is neither an expert nor a route; see GET /v1/models",
                 req->model);
        coe_request_free(&req);
        return fail(conn, cx, 404, "model_not_found", "model", msg);
    }
    if (atomic_fetch_add(&s->inflight, 1) >= sc->max_inflight) {
        atomic_fetch_sub(&s->inflight, 1);
        coe_request_free(&req);
        return fail(conn, cx, 503, "overloaded", NULL, "the gateway is at its limit of requests in flight");
    }
    cx->counted = true;
    cx->ex = coe_exchange_new(conn);
    if (!cx->ex || coe_dispatch_start(s->loop, cx->cfg, req, dec.expert, cx->id, cx->ex)) {
        coe_request_free(&req);
        return fail(conn, cx, 500, "internal_error", NULL, "out of memory");
    }
    live_add(s, cx->ex);
    if (!coe_exchange_wait_head(cx->ex))
        return MHD_YES; /* suspended until the expert answers */
    return send_exchange(conn, cx);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    coe_server *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) {
        cx = new_ctx(s, conn, url, method);
        if (!cx)
            return MHD_NO;
        *con_cls = cx;
        return on_headers(conn, cx, method);
    }
    if (*upload_size) {
        size_t max = cx->cfg->server.max_body_bytes;
        if (!cx->too_large && cx->body.len + *upload_size <= max)
            coe_buf_append(&cx->body, upload, *upload_size);
        else
            cx->too_large = true; /* keep reading, and refuse at the end */
        *upload_size = 0;
        return MHD_YES;
    }
    if (cx->ex) {
        /* Resumed: the expert has answered, or the client went away. */
        if (!coe_exchange_wait_head(cx->ex))
            return MHD_YES;
        return send_exchange(conn, cx);
    }
    return on_body(conn, cx);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    coe_server *s = cls;
    conn_ctx *cx = *con_cls;
    *con_cls = NULL;
    if (!cx)
        return;
    coe_usage usage = {-1, -1, -1};
    char expert[COE_NAME_MAX + 1] = "-";
    if (cx->ex) {
        if (coe_exchange_detach(cx->ex)) {
            coe_dispatch_cancel(s->loop, cx->ex);
            if (!cx->status || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                cx->status = 499; /* the client closed the request, nginx's convention */
        }
        pthread_mutex_lock(&cx->ex->mu);
        if (cx->ex->have_usage)
            usage = cx->ex->usage;
        if (cx->ex->expert[0])
            snprintf(expert, sizeof expert, "%s", cx->ex->expert);
        pthread_mutex_unlock(&cx->ex->mu);
        live_remove(s, cx->ex);
        coe_exchange_unref(&cx->ex);
    }
    if (cx->counted)
        atomic_fetch_sub(&s->inflight, 1);
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
        coe_info("access id=%s client=%s method=%s path=%s model=%s expert=%s status=%d ms=%.2f %s", cx->id, ip,
                 cx->method, cx->path, cx->model[0] ? cx->model : "-", expert, cx->status,
                 (double)(coe_now_us() - cx->start_us) / 1000.0, tokens);
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

int coe_server_open(coe_server **out, coe_config *cfg, coe_loop *loop)
{
    *out = NULL;
    const coe_server_cfg *sc = &cfg->server;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%d", sc->port);
    int gai = getaddrinfo(sc->host, port, &hints, &ai);
    if (gai) {
        coe_error("server.host: '%s' is not a numeric IPv4 or IPv6 address (%s)", sc->host, gai_strerror(gai));
        return COE_EINVAL;
    }
    coe_server *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        return COE_ENOMEM;
    }
    s->loop = loop;
    s->cfg = coe_config_ref(cfg);
    pthread_mutex_init(&s->cfg_mu, NULL);
    pthread_mutex_init(&s->live_mu, NULL);
    unsigned char rnd[4] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        long long t = coe_now_us();
        memcpy(rnd, &t, sizeof rnd);
    }
    snprintf(s->id_prefix, sizeof s->id_prefix, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = sc->threads > 0 ? (unsigned)sc->threads : (unsigned)(ncpu > 0 ? ncpu : 1);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_SOCK_ADDR, 0, ai->ai_addr},
        {MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)sc->max_connections, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)sc->connection_timeout_s, NULL},
        {MHD_OPTION_PER_IP_CONNECTION_LIMIT, (intptr_t)sc->max_connections_per_ip, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)(64 * 1024), NULL},
        {MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    s->daemon = MHD_start_daemon(flags, (uint16_t)sc->port, NULL, NULL, on_request, s, MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                                 NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        coe_error("cannot listen on %s:%d (address in use, or not an address of this machine?)", sc->host, sc->port);
        coe_config_unref(&s->cfg);
        free(s);
        return COE_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : sc->port;
    atomic_store(&s->sweeping, true);
    coe_loop_post(loop, start_sweep, s);
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
        a->connection_timeout_s != b->connection_timeout_s)
        coe_warn("reload: server.host, port, threads, max_connections, max_connections_per_ip and "
                 "connection_timeout_s take effect only after a restart");
    coe_config *c = coe_config_ref(cfg);
    pthread_mutex_lock(&s->cfg_mu);
    coe_config *old = s->cfg;
    s->cfg = c;
    pthread_mutex_unlock(&s->cfg_mu);
    coe_config_unref(&old);
}

void coe_server_quiesce(coe_server *s)
{
    atomic_store(&s->stopping, true);
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

int coe_server_inflight(coe_server *s)
{
    return atomic_load(&s->inflight);
}

void coe_server_stop(coe_server *s)
{
    atomic_store(&s->stopping, true);
    /* libmicrohttpd refuses to stop with suspended connections: wake every one, and
     * make sure none can be suspended again, before stopping. */
    pthread_mutex_lock(&s->live_mu);
    for (coe_exchange *ex = s->live; ex; ex = ex->next) {
        coe_exchange_abort(ex);
        coe_dispatch_cancel(s->loop, ex);
    }
    pthread_mutex_unlock(&s->live_mu);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}

void coe_server_close(coe_server **sp)
{
    coe_server *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    if (s->daemon)
        coe_server_stop(s);
    coe_config_unref(&s->cfg);
    pthread_mutex_destroy(&s->cfg_mu);
    pthread_mutex_destroy(&s->live_mu);
    free(s);
}
