#include "gateway/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/local.h"
#include "common/err.h"
#include "common/log.h"
#include "gateway/auth.h"
#include "gateway/console.h"
#include "gateway/dispatch.h"
#include "router/features.h"
#include "router/classifier.h"
#include "router/batcher.h"
#include "gateway/exchange.h"
#include "gateway/http.h"
#include "gateway/metrics.h"
#include "gateway/openai.h"
#include "router/route.h"

/* A worker: one thread (its loop) accepting on the listening socket shared with the
 * other workers. Every request stays on the worker that accepted it. */
typedef struct worker {
    coe_server *srv;
    coe_loop *loop;
    coe_http_listener *http;
    int started;              /* what attaching returned */
} worker;

struct coe_server {
    worker *workers;
    int n_workers;
    int listen_fd;            /* shared by every worker's daemon; closed once, here */
    int port;
    coe_http_ip_table *ips;   /* connections per address, across workers */
    pthread_mutex_t cfg_mu;
    coe_config *cfg;          /* the configuration new requests get */
    atomic_int inflight;
    atomic_bool stopping;
    atomic_ullong next_id;
    char id_prefix[9];
};

/* In the order of coe_metric_endpoint, so that one indexes the other. */
typedef enum {
    EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS, EP_RESPONSES, EP_MODELS, EP_MODEL, EP_HEALTH, EP_METRICS, EP_CONSOLE,
    EP_CONSOLE_STATE, EP_UNKNOWN
} endpoint;

/* The endpoints that take a request body (POST); the others answer GET and HEAD. */
static bool takes_post(endpoint ep)
{
    return ep == EP_CHAT || ep == EP_COMPLETIONS || ep == EP_EMBEDDINGS || ep == EP_RESPONSES;
}

/* What one HTTP request carries between the connection's calls. */
typedef struct conn_ctx {
    coe_server *srv;
    worker *w;
    coe_http_conn *conn;      /* referenced: the exchange's wake hook uses it */
    coe_config *cfg;
    endpoint ep;
    char id[40];
    char model[COE_NAME_MAX + 1];
    const char *category;     /* routed: the router's top category (lives with cfg), else NULL */
    char confidence[16];
    const char *rule;
    long long start_us;
    bool counted;             /* holds a place in inflight */
    coe_exchange *ex;         /* once dispatched */
    struct routing *routing;  /* while the route's batcher classifies the request */
    int status;               /* for the access log, when answered here */
    bool close;               /* answer with Connection: close (the framing cannot be trusted) */
    const char *method;
    char path[64];
    char model_id[COE_NAME_MAX + 2]; /* GET /v1/models/{id}: the id, cut past the longest name */
} conn_ctx;

static coe_config *acquire_config(coe_server *s)
{
    pthread_mutex_lock(&s->cfg_mu);
    coe_config *c = coe_config_ref(s->cfg);
    pthread_mutex_unlock(&s->cfg_mu);
    return c;
}

/* ---- responses ---- */

enum { MAX_HEADERS = 12 };

/* The headers every answer carries: the request id, the expert that answered ("none":
 * the gateway itself: an error before any expert, health, models), the routing. */
static int common_headers(coe_http_header *h, const conn_ctx *cx, const char *expert)
{
    int n = 0;
    h[n++] = (coe_http_header){"X-Request-Id", cx->id};
    h[n++] = (coe_http_header){"X-Coegate-Expert", expert && *expert ? expert : "none"};
    if (cx->category) {
        h[n++] = (coe_http_header){"X-Coegate-Category", cx->category};
        h[n++] = (coe_http_header){"X-Coegate-Confidence", cx->confidence};
    }
    return n;
}

static void closing(conn_ctx *cx)
{
    if (cx->close || atomic_load(&cx->srv->stopping))
        coe_http_close_after(cx->conn);
}

/* fusion: the X-Coegate-Fusion header's value, or NULL. */
static int send_body(conn_ctx *cx, int status, const char *ctype, const char *body, size_t len, const char *expert,
                      long retry_after_s, const char *fusion)
{
    coe_http_header h[MAX_HEADERS];
    int n = 0;
    h[n++] = (coe_http_header){"Content-Type", ctype};
    n += common_headers(h + n, cx, expert);
    if (fusion && *fusion)
        h[n++] = (coe_http_header){"X-Coegate-Fusion", fusion};
    char retry[24];
    if (retry_after_s > 0) {
        snprintf(retry, sizeof retry, "%ld", retry_after_s);
        h[n++] = (coe_http_header){"Retry-After", retry};
    }
    if (status == 405)
        h[n++] = (coe_http_header){"Allow", takes_post(cx->ep) ? "POST" : "GET, HEAD"};
    if (status == 401)
        h[n++] = (coe_http_header){"WWW-Authenticate", "Bearer"};
    closing(cx);
    cx->status = status;
    return coe_http_respond(cx->conn, status, h, n, body, len);
}

/* The console's page: its script and style are inline, and it may load nothing else. */
static int send_console(conn_ctx *cx)
{
    coe_http_header h[MAX_HEADERS];
    int n = 0;
    h[n++] = (coe_http_header){"Content-Type", "text/html; charset=utf-8"};
    h[n++] = (coe_http_header){"Content-Security-Policy",
                               "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'none'"};
    h[n++] = (coe_http_header){"Cache-Control", "no-cache"};
    n += common_headers(h + n, cx, NULL);
    closing(cx);
    cx->status = 200;
    return coe_http_respond(cx->conn, 200, h, n, coe_console_html, coe_console_html_len);
}

/* A body built in b, or a fixed 503 when building it ran out of memory. */
static int send_built(conn_ctx *cx, int status, const char *ctype, const coe_buf *b, long retry_after_s)
{
    if (b->err)
        return send_body(cx, 503, "application/json", coe_openai_oom_body, strlen(coe_openai_oom_body), NULL, 1,
                         NULL);
    return send_body(cx, status, ctype, b->data ? b->data : "", b->len, NULL, retry_after_s, NULL);
}

static int send_error(conn_ctx *cx, const coe_api_error *e)
{
    coe_buf b = COE_BUF_INIT;
    coe_openai_error(&b, e, false);
    int rc = send_built(cx, e->status, "application/json", &b, e->status == 503 ? 1 : 0);
    coe_buf_free(&b);
    return rc;
}

static int fail(conn_ctx *cx, int status, const char *code, const char *param, const char *msg)
{
    coe_api_error e;
    coe_api_error_set(&e, status, coe_error_type(status), code, param, "%s", msg);
    return send_error(cx, &e);
}

static ssize_t read_stream(void *arg, char *buf, size_t max)
{
    ssize_t n = coe_exchange_read(arg, buf, max);
    return n == COE_EXCHANGE_END ? COE_HTTP_END : n == COE_EXCHANGE_ABORT ? COE_HTTP_ABORT : n;
}

/* The exchange has its head: answer with it. */
static int send_exchange(conn_ctx *cx)
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
    if (gone) {
        /* the server is stopping: no answer; the connection closes */
        return coe_http_stream(cx->conn, 503, NULL, 0, read_stream, ex);
    }
    if (!sse) {
        int rc = send_body(cx, status, "application/json", body.data ? body.data : "", body.len, expert, retry_after,
                           fusion);
        coe_buf_free(&body);
        return rc;
    }
    coe_http_header h[MAX_HEADERS];
    int n = 0;
    h[n++] = (coe_http_header){"Content-Type", "text/event-stream"};
    h[n++] = (coe_http_header){"Cache-Control", "no-cache"};
    h[n++] = (coe_http_header){"X-Accel-Buffering", "no"};
    n += common_headers(h + n, cx, expert);
    closing(cx);
    cx->status = status;
    return coe_http_stream(cx->conn, status, h, n, read_stream, ex);
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

static int send_models(conn_ctx *cx)
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
    int rc = send_built(cx, 200, "application/json", &b, 0);
    coe_buf_free(&b);
    return rc;
}

/* GET /v1/models/{id}: what the list says of one route or expert. */
static int send_model(conn_ctx *cx)
{
    const coe_config *c = cx->cfg;
    for (int i = 0; i < c->n_routes + c->n_experts; i++)
        if (strcmp(cx->model_id, i < c->n_routes ? c->routes[i].name : c->experts[i - c->n_routes].name) == 0) {
            coe_buf b = COE_BUF_INIT;
            model_json(&b, c, i, coe_wall_s());
            int rc = send_built(cx, 200, "application/json", &b, 0);
            coe_buf_free(&b);
            return rc;
        }
    char msg[160];
    snprintf(msg, sizeof msg, "the model '%.64s' is neither an expert nor a route; see GET /v1/models", cx->model_id);
    return fail(cx, 404, "model_not_found", "model", msg);
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
    if (strcmp(url, "/v1/responses") == 0)
        return EP_RESPONSES;
    if (strcmp(url, "/v1/models") == 0)
        return EP_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11])
        return EP_MODEL;
    if (strcmp(url, "/health") == 0)
        return EP_HEALTH;
    if (strcmp(url, "/metrics") == 0)
        return EP_METRICS;
    if (strcmp(url, "/console") == 0 || strcmp(url, "/console/") == 0)
        return EP_CONSOLE;
    if (strcmp(url, "/console/api/state") == 0)
        return EP_CONSOLE_STATE;
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
    case EP_RESPONSES: return COE_METRIC_RESPONSES;
    case EP_MODELS: case EP_MODEL: return COE_METRIC_MODELS;
    case EP_HEALTH: return COE_METRIC_HEALTH;
    case EP_METRICS: return COE_METRIC_METRICS;
    case EP_CONSOLE: case EP_CONSOLE_STATE: return COE_METRIC_CONSOLE;
    default: return COE_METRIC_OTHER;
    }
}

static conn_ctx *new_ctx(worker *w, coe_http_conn *conn, const coe_http_head *h)
{
    const char *url = h->path ? h->path : "-", *method = h->method ? h->method : "-";
    coe_server *s = w->srv;
    conn_ctx *cx = calloc(1, sizeof *cx);
    if (!cx)
        return NULL;
    cx->srv = s;
    cx->w = w;
    cx->conn = coe_http_conn_ref(conn);
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
    const char *rid = coe_http_head_field(h, "X-Request-Id");
    if (rid && valid_request_id(rid))
        snprintf(cx->id, sizeof cx->id, "%s", rid);
    else
        snprintf(cx->id, sizeof cx->id, "%s%08llx", s->id_prefix,
                 (unsigned long long)atomic_fetch_add(&s->next_id, 1) & 0xffffffffULL);
    return cx;
}

/* A request's head: everything that can be refused before the body. */
static int check_head(conn_ctx *cx, const coe_http_head *h)
{
    const coe_server_cfg *sc = &cx->cfg->server;
    if (cx->ep == EP_UNKNOWN)
        return fail(cx, 404, "not_found", NULL, "unknown path; see GET /v1/models");
    bool want_get = !takes_post(cx->ep);
    /* HEAD asks what GET would answer; the connection leaves the body out. */
    if (strcmp(h->method, want_get ? "GET" : "POST") != 0 && !(want_get && strcmp(h->method, "HEAD") == 0))
        return fail(cx, 405, "method_not_allowed", NULL, want_get ? "use GET here" : "use POST here");
    /* The console's page holds nothing secret: it asks for the key its calls need. */
    if (cx->ep != EP_HEALTH && cx->ep != EP_CONSOLE && !coe_auth_check(sc, coe_http_head_field(h, "Authorization")))
        return fail(cx, 401, "invalid_api_key", NULL, "missing or wrong API key: send 'Authorization: Bearer KEY'");
    coe_http_set_body_limit(cx->conn, takes_post(cx->ep) ? sc->max_body_bytes : 0);
    return 0;
}

/* The exchange's wake hook (any thread). */
static void wake_conn(void *arg)
{
    coe_http_wake(arg);
}

/* ---- routing that waits for a batch ---- */

static int routed(conn_ctx *cx, coe_request *req, const coe_route_decision *d, int route_rc);

/* A request whose features the route's batcher classifies (on a GPU, with others):
 * held by its connection and by the batcher until both let go. */
typedef struct routing {
    atomic_int refs;
    coe_http_conn *conn; /* referenced: the batcher wakes it */
    coe_config *cfg;     /* referenced: the batcher lives in it */
    coe_request *req;    /* owned until routed */
    coe_route_decision dec;
    coe_features f;
    float *probs;
    atomic_int rc;
    atomic_bool classified;
} routing;

static void routing_unref(routing *rt)
{
    if (atomic_fetch_sub(&rt->refs, 1) != 1)
        return;
    coe_request_free(&rt->req);
    coe_features_free(&rt->f);
    free(rt->probs);
    coe_http_conn_unref(&rt->conn);
    coe_config_unref(&rt->cfg);
    free(rt);
}

/* On the batcher's thread. */
static void on_classified(void *arg, int rc)
{
    routing *rt = arg;
    atomic_store(&rt->rc, rc);
    atomic_store(&rt->classified, true);
    coe_http_wake(rt->conn);
    routing_unref(rt);
}

/* Hands the request to its route's batcher; 0, or an error with everything still the
 * caller's. The features move into the routing. */
static int classify_later(conn_ctx *cx, coe_request **req, const coe_route_decision *dec, coe_features *f)
{
    routing *rt = calloc(1, sizeof *rt);
    const coe_route_cfg *r = &cx->cfg->routes[dec->route];
    if (!rt || !(rt->probs = malloc((size_t)r->router->n_classes * sizeof *rt->probs))) {
        free(rt);
        return COE_ENOMEM;
    }
    atomic_init(&rt->refs, 2);
    atomic_init(&rt->rc, 0);
    atomic_init(&rt->classified, false);
    rt->conn = coe_http_conn_ref(cx->conn);
    rt->cfg = coe_config_ref(cx->cfg);
    rt->dec = *dec;
    rt->f = *f;
    if (coe_router_batcher_submit(r->batcher, &rt->f, rt->probs, on_classified, rt)) {
        *f = rt->f; /* back to the caller */
        rt->f = (coe_features){0};
        atomic_store(&rt->refs, 1);
        routing_unref(rt);
        return COE_ECANCELED;
    }
    *f = (coe_features){0};
    rt->req = *req;
    *req = NULL;
    cx->routing = rt;
    return 0;
}

/* On the connection's loop, once classified: the policy and the dispatch. */
static void finish_routing(conn_ctx *cx)
{
    routing *rt = cx->routing;
    cx->routing = NULL;
    coe_route_decision dec = rt->dec;
    int rc = atomic_load(&rt->rc);
    /* the batcher's device failed: the CPU classifies */
    rc = rc ? coe_route_classify(cx->cfg, rt->req, &rt->f, &dec) : coe_route_finish(cx->cfg, rt->req, rt->probs, &dec);
    coe_request *req = rt->req;
    rt->req = NULL;
    routing_unref(rt);
    routed(cx, req, &dec, rc);
}

/* The whole body is in: parse, route and hand over to dispatch. */
static int handle_body(conn_ctx *cx, const char *body, size_t len)
{
    coe_server *s = cx->srv;
    const coe_server_cfg *sc = &cx->cfg->server;
    if (cx->ep == EP_HEALTH)
        return send_body(cx, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL, 0, NULL);
    if (cx->ep == EP_MODELS)
        return send_models(cx);
    if (cx->ep == EP_MODEL)
        return send_model(cx);
    if (cx->ep == EP_CONSOLE)
        return send_console(cx);
    if (cx->ep == EP_CONSOLE_STATE) {
        coe_buf b = COE_BUF_INIT;
        coe_console_state(&b, cx->cfg, atomic_load(&s->inflight));
        int rc = send_built(cx, 200, "application/json", &b, 0);
        coe_buf_free(&b);
        return rc;
    }
    if (cx->ep == EP_METRICS) {
        coe_buf b = COE_BUF_INIT;
        coe_metrics_render(&b, atomic_load(&s->inflight));
        coe_local_metrics(cx->cfg, &b);
        coe_dispatch_metrics(cx->cfg, &b);
        coe_metrics_routes(cx->cfg, &b);
        int rc = send_built(cx, 200, "text/plain; version=0.0.4", &b, 0);
        coe_buf_free(&b);
        return rc;
    }
    if (atomic_load(&s->stopping))
        return fail(cx, 503, "shutting_down", NULL, "the gateway is shutting down");
    coe_api_error err;
    coe_request *req = NULL;
    coe_endpoint ep = cx->ep == EP_COMPLETIONS ? COE_EP_COMPLETIONS : cx->ep == EP_EMBEDDINGS ? COE_EP_EMBEDDINGS
                                                                                              : COE_EP_CHAT;
    if (cx->ep == EP_RESPONSES ? coe_request_parse_responses(body, len, sc->max_json_depth, &req, &err)
                               : coe_request_parse(body, len, ep, sc->max_json_depth, &req, &err))
        return send_error(cx, &err);
    log_word(cx->model, sizeof cx->model, req->model);
    coe_route_decision dec;
    coe_features f = {0};
    int route_rc = coe_route_begin(cx->cfg, req, &dec, &f);
    if (route_rc == COE_ROUTE_CLASSIFY) {
        if (cx->cfg->routes[dec.route].batcher && classify_later(cx, &req, &dec, &f) == 0)
            return 0; /* woken when classified */
        route_rc = coe_route_classify(cx->cfg, req, &f, &dec);
    }
    coe_features_free(&f);
    return routed(cx, req, &dec, route_rc);
}

/* Everything after routing: the errors it can give, then the dispatch. */
static int routed(conn_ctx *cx, coe_request *req, const coe_route_decision *d, int route_rc)
{
    coe_server *s = cx->srv;
    const coe_server_cfg *sc = &cx->cfg->server;
    coe_route_decision dec = *d;
    if (route_rc == COE_ENOMEM) {
        coe_request_free(&req);
        return fail(cx, 503, "overloaded", NULL, "the gateway is out of memory");
    }
    if (route_rc == COE_ENOTFOUND) {
        char msg[160];
        snprintf(msg, sizeof msg, "the model '%.64s' is neither an expert nor a route; see GET /v1/models",
                 req->model);
        coe_request_free(&req);
        return fail(cx, 404, "model_not_found", "model", msg);
    }
    if (route_rc == COE_EUNSUPPORTED) {
        char msg[300];
        const char *cap = coe_cap_names[__builtin_ctz(dec.missing)];
        if (dec.route < 0)
            snprintf(msg, sizeof msg, "expert '%.64s' cannot serve '%s' (local experts and fusion groups serve "
                     "response_format and json_schema only, echo none; a remote one what its \"capabilities\" list)",
                     req->model, cap);
        else
            snprintf(msg, sizeof msg, "no expert that route '%.64s' may choose (its category's, its fallback, its "
                     "default) can serve '%s'", req->model, cap);
        char param[64];
        snprintf(param, sizeof param, "%s", coe_request_cap_param(req, dec.missing));
        coe_request_free(&req);
        return fail(cx, 400, "unsupported_capability", param, msg);
    }
    if (route_rc) {
        /* The route exists; its router failed. Not the client's fault, not a 404. */
        char msg[160];
        snprintf(msg, sizeof msg, "route '%.64s' could not classify the request: %s", req->model,
                 coe_strerror(route_rc));
        coe_log(COE_LOG_ERROR, "%s", msg);
        coe_request_free(&req);
        return fail(cx, 500, "routing_failed", NULL, msg);
    }
    cx->rule = dec.rule;
    if (dec.category_name) {
        cx->category = dec.category_name;
        snprintf(cx->confidence, sizeof cx->confidence, "%.4f", dec.confidence);
    }
    if (atomic_fetch_add(&s->inflight, 1) >= sc->max_inflight) {
        atomic_fetch_sub(&s->inflight, 1);
        coe_request_free(&req);
        return fail(cx, 503, "overloaded", NULL, "the gateway is at its limit of requests in flight");
    }
    cx->counted = true;
    cx->ex = coe_exchange_new(wake_conn, cx->conn);
    if (cx->ex)
        cx->ex->max_pending = sc->stream_buffer_bytes;
    if (!cx->ex || coe_dispatch_start(cx->w->loop, cx->cfg, req, dec.expert, cx->id, cx->ex)) {
        coe_request_free(&req);
        return fail(cx, 500, "internal_error", NULL, "out of memory");
    }
    if (!coe_exchange_wait_head(cx->ex))
        return 0; /* woken when the expert answers */
    return send_exchange(cx);
}


static void on_head(void *arg, coe_http_conn *conn, const coe_http_head *h, int status, const char *why)
{
    conn_ctx *cx = new_ctx(arg, conn, h);
    if (!cx) {
        coe_http_close_after(conn);
        coe_http_respond(conn, 503, NULL, 0, coe_openai_oom_body, strlen(coe_openai_oom_body));
        return;
    }
    coe_http_set_user(conn, cx);
    if (status) {
        /* Framing two parsers could read differently (the way requests are smuggled
         * past a proxy): refused, and nothing after it on the connection is read. */
        cx->close = true;
        fail(cx, status, status == 501 ? "not_implemented" : status == 413 ? "request_too_large" : "bad_request", NULL,
             why);
        return;
    }
    check_head(cx, h);
}

static void on_body(void *arg, coe_http_conn *conn, const char *body, size_t len, int status, const char *why)
{
    (void)arg;
    conn_ctx *cx = coe_http_user(conn);
    if (!cx)
        return;
    if (status == 413) {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", cx->cfg->server.max_body_bytes);
        fail(cx, 413, "request_too_large", NULL, msg);
    } else if (status == 503) {
        fail(cx, 503, "overloaded", NULL, "the gateway is out of memory");
    } else if (status) {
        cx->close = true;
        fail(cx, status, "bad_request", NULL, why ? why : "malformed request body");
    } else {
        handle_body(cx, body, len);
    }
}

/* The expert has answered, or the client went away. */
static void on_wake(void *arg, coe_http_conn *conn)
{
    (void)arg;
    conn_ctx *cx = coe_http_user(conn);
    if (cx && cx->routing && atomic_load(&cx->routing->classified))
        finish_routing(cx);
    else if (cx && cx->ex && coe_exchange_wait_head(cx->ex))
        send_exchange(cx);
}

static void on_end(void *arg, coe_http_conn *conn, int outcome)
{
    (void)arg;
    conn_ctx *cx = coe_http_user(conn);
    if (!cx)
        return;
    coe_http_set_user(conn, NULL);
    if (cx->routing) /* the client left while the batcher classified: it lets go of the rest */
        routing_unref(cx->routing);
    coe_server *s = cx->srv;
    coe_usage usage = {-1, -1, -1};
    char expert[COE_NAME_MAX + 1] = "-";
    if (outcome && (!cx->status || cx->ex))
        cx->status = outcome == 503 ? 503 : outcome == 408 && !cx->status ? 408 : 499;
    if (cx->ex) {
        if (coe_exchange_detach(cx->ex)) {
            coe_dispatch_cancel(cx->ex);
            if (!outcome)
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
        coe_exchange_unref(&cx->ex);
    }
    if (cx->counted)
        atomic_fetch_sub(&s->inflight, 1);
    double seconds = (double)(coe_now_us() - cx->start_us) / 1e6;
    coe_metrics_request(metric_endpoint(cx->ep), cx->status, seconds);
    if (cx->ep != EP_CONSOLE && cx->ep != EP_CONSOLE_STATE) {
        coe_console_entry ce = {.at_ms = coe_wall_ms(), .status = cx->status, .ms = seconds * 1000.0,
                                .prompt_tokens = usage.prompt_tokens, .completion_tokens = usage.completion_tokens};
        snprintf(ce.id, sizeof ce.id, "%s", cx->id);
        snprintf(ce.method, sizeof ce.method, "%s", cx->method);
        snprintf(ce.path, sizeof ce.path, "%s", cx->path);
        snprintf(ce.model, sizeof ce.model, "%s", cx->model);
        snprintf(ce.rule, sizeof ce.rule, "%s", cx->rule ? cx->rule : "");
        snprintf(ce.category, sizeof ce.category, "%s", cx->category ? cx->category : "");
        snprintf(ce.confidence, sizeof ce.confidence, "%s", cx->category ? cx->confidence : "");
        snprintf(ce.expert, sizeof ce.expert, "%s", strcmp(expert, "-") ? expert : "");
        coe_console_record(&ce);
    }
    if (cx->cfg->server.access_log) {
        char tokens[64] = "prompt_tokens=- completion_tokens=-";
        if (usage.prompt_tokens >= 0)
            snprintf(tokens, sizeof tokens, "prompt_tokens=%ld completion_tokens=%ld", usage.prompt_tokens,
                     usage.completion_tokens);
        coe_info("access id=%s client=%s method=%s path=%s model=%s rule=%s category=%s expert=%s status=%d ms=%.2f %s",
                 cx->id, coe_http_client(conn), cx->method, cx->path, cx->model[0] ? cx->model : "-",
                 cx->rule ? cx->rule : "-", cx->category ? cx->category : "-", expert, cx->status, seconds * 1000.0,
                 tokens);
    }
    coe_config_unref(&cx->cfg);
    coe_http_conn_unref(&cx->conn);
    free(cx);
}

/* ---- lifetime ---- */

/* The listening socket, made here so that every worker shares it (a second process
 * asking for the same port fails, as it should). */
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

static const coe_http_handler handler = {on_head, on_body, on_wake, on_end};

/* On the worker's thread: start accepting. */
static void attach(void *arg)
{
    worker *w = arg;
    coe_server *s = w->srv;
    const coe_server_cfg *sc = &s->cfg->server;
    /* The total is shared out: each worker stops accepting at its share. */
    coe_http_limits lim = {
        .max_connections = (sc->max_connections + s->n_workers - 1) / s->n_workers,
        .max_connections_per_ip = sc->max_connections_per_ip,
        .idle_timeout_s = sc->connection_timeout_s,
        .headers_timeout_s = sc->headers_timeout_s,
        .body_timeout_s = sc->body_timeout_s,
    };
    if ((w->started = coe_http_listen(&w->http, w->loop, s->listen_fd, &lim, s->ips, &handler, w)))
        coe_error("worker %d cannot accept connections", (int)(w - s->workers));
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
    s->cfg = coe_config_ref(cfg);
    pthread_mutex_init(&s->cfg_mu, NULL);
    unsigned char rnd[4] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        long long t = coe_now_us();
        memcpy(rnd, &t, sizeof rnd);
    }
    snprintf(s->id_prefix, sizeof s->id_prefix, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);

    s->listen_fd = open_listener(sc, &s->port);
    s->ips = coe_http_ip_table_new();
    int rc = s->listen_fd < 0 ? COE_EIO : !s->ips ? COE_ENOMEM : 0;
    s->n_workers = n;
    for (int i = 0; i < n && !rc; i++) {
        worker *w = &s->workers[i];
        w->srv = s;
        if ((rc = coe_loop_open(&w->loop)) == 0 && (rc = coe_loop_call(w->loop, attach, w)) == 0)
            rc = w->started;
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

/* The worker stops accepting on the shared socket (and will not close it). */
static void quiesce_worker(void *arg)
{
    worker *w = arg;
    if (w->http)
        coe_http_quiesce(w->http);
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

/* On the worker's thread: every connection closes; each open request ends (its
 * expert is cancelled and the access log says 503). */
static void stop_worker(void *arg)
{
    worker *w = arg;
    coe_http_close(&w->http);
}

void coe_server_stop(coe_server *s)
{
    atomic_store(&s->stopping, true);
    for (int i = 0; i < s->n_workers; i++) {
        worker *w = &s->workers[i];
        if (w->loop)
            coe_loop_call(w->loop, stop_worker, w);
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
    coe_http_ip_table_free(&s->ips);
    pthread_mutex_destroy(&s->cfg_mu);
    free(s->workers);
    free(s);
}
