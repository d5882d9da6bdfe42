#include "gateway/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

#define HEAD_MAX (32 * 1024)       /* a request head, at most (as libmicrohttpd's default pool) */
#define READ_CHUNK (16 * 1024)
#define WRITE_AHEAD (64 * 1024)    /* a stream's bytes queued ahead of the socket, at most */
#define LINGER_MS 2000
#define LINGER_BYTES (4u << 20)
#define ACCEPT_BATCH 64
#define ACCEPT_PAUSE_MS 100        /* out of file descriptors: try again after this */

/* ---- connections per address ---- */

typedef struct ip_entry {
    unsigned char key[17];
    int count;
    struct ip_entry *next;
} ip_entry;

#define IP_BUCKETS 1024

struct coe_http_ip_table {
    pthread_mutex_t mu;
    ip_entry *buckets[IP_BUCKETS];
};

coe_http_ip_table *coe_http_ip_table_new(void)
{
    coe_http_ip_table *t = calloc(1, sizeof *t);
    if (t)
        pthread_mutex_init(&t->mu, NULL);
    return t;
}

void coe_http_ip_table_free(coe_http_ip_table **tp)
{
    coe_http_ip_table *t = *tp;
    *tp = NULL;
    if (!t)
        return;
    for (int i = 0; i < IP_BUCKETS; i++)
        while (t->buckets[i]) {
            ip_entry *e = t->buckets[i];
            t->buckets[i] = e->next;
            free(e);
        }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static unsigned ip_bucket(const unsigned char *key)
{
    unsigned h = 2166136261u;
    for (int i = 0; i < 17; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % IP_BUCKETS;
}

/* Counts one more connection from key; false (and no count) past limit. */
static bool ip_take(coe_http_ip_table *t, const unsigned char *key, int limit)
{
    if (!t || limit <= 0)
        return true;
    pthread_mutex_lock(&t->mu);
    ip_entry **head = &t->buckets[ip_bucket(key)], *e = *head;
    while (e && memcmp(e->key, key, 17) != 0)
        e = e->next;
    bool ok = true;
    if (!e) {
        if ((e = calloc(1, sizeof *e))) {
            memcpy(e->key, key, 17);
            e->next = *head;
            *head = e;
        }
    }
    if (!e || e->count >= limit)
        ok = false;
    else
        e->count++;
    pthread_mutex_unlock(&t->mu);
    return ok;
}

static void ip_give(coe_http_ip_table *t, const unsigned char *key)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    for (ip_entry **pe = &t->buckets[ip_bucket(key)]; *pe; pe = &(*pe)->next)
        if (memcmp((*pe)->key, key, 17) == 0) {
            ip_entry *e = *pe;
            if (--e->count <= 0) {
                *pe = e->next;
                free(e);
            }
            break;
        }
    pthread_mutex_unlock(&t->mu);
}

/* ---- state ---- */

typedef enum {
    S_HEAD,   /* reading a request head */
    S_BODY,   /* reading its body */
    S_WAIT,   /* the handler has the request; no response yet */
    S_WRITE,  /* writing the response */
    S_LINGER, /* answered and closing: our side shut, draining what the client still sends */
    S_CLOSED
} conn_state;

struct coe_http_listener {
    coe_loop *loop;
    int listen_fd;
    coe_watch *watch;         /* NULL while not accepting */
    coe_timer *retry;         /* accepting again after running out of descriptors */
    bool quiesced;
    coe_http_limits lim;
    coe_http_ip_table *ips;
    coe_http_handler h;
    void *arg;
    int n_conns;
    coe_http_conn *conns;
};

struct coe_http_conn {
    atomic_int refs;
    atomic_bool wake_pending;
    coe_loop *loop;           /* outlives the connection (any thread reads it) */
    coe_http_listener *l;     /* while not closed */
    int fd;
    unsigned char ip_key[17];
    char client[INET6_ADDRSTRLEN];
    coe_watch *watch;
    unsigned events;          /* what the watch waits for now */
    coe_timer *timer;
    long long timer_due_us;
    conn_state state;
    bool in_advance;
    /* reading */
    coe_buf rbuf;
    long long last_io_us;     /* for the idle timeout */
    long long deadline_us;    /* of the current stage (headers, body, lingering), 0: none */
    size_t lingered;
    /* the request */
    coe_buf head_text;
    coe_http_head head;
    bool in_request;          /* on_head was called, on_end not yet */
    void *user;
    size_t body_limit;
    bool has_body, body_read;
    long long body_left;
    bool chunked;
    coe_http_chunked chunk_state;
    coe_buf body;
    bool head_only;           /* HEAD: no response body */
    bool http10;
    bool keep_alive;
    bool close_after;
    /* writing */
    coe_buf wbuf;
    size_t wpos;
    bool responded;           /* a response is queued */
    coe_http_pull_fn pull;    /* a stream's source, NULL once it ended (or for a whole response) */
    void *pull_arg;
    bool chunked_out;
    bool stream_idle;         /* the source had nothing: wait for coe_http_wake */
    struct coe_http_conn *prev, *next;
};

static void advance(coe_http_conn *c);
static void resume_accepting(coe_http_listener *l);

coe_http_conn *coe_http_conn_ref(coe_http_conn *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void coe_http_conn_unref(coe_http_conn **cp)
{
    coe_http_conn *c = *cp;
    *cp = NULL;
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    coe_buf_free(&c->rbuf);
    coe_buf_free(&c->head_text);
    coe_buf_free(&c->body);
    coe_buf_free(&c->wbuf);
    free(c);
}

static void unref_task(void *arg)
{
    coe_http_conn *c = arg;
    coe_http_conn_unref(&c);
}

/* ---- watching and deadlines ---- */

static void set_events(coe_http_conn *c, unsigned events)
{
    if (c->state != S_CLOSED && c->events != events && coe_loop_watch_set(c->loop, c->watch, events) == 0)
        c->events = events;
}

static void on_timer(void *arg);

/* The next moment something may be due: the stage's deadline, or the idle timeout
 * while the connection waits for the client (to send, or to read what is queued). */
static long long next_due(const coe_http_conn *c)
{
    long long due = c->deadline_us;
    bool idle = c->state == S_HEAD || c->state == S_BODY || c->state == S_LINGER ||
                (c->state == S_WRITE && c->wpos < c->wbuf.len);
    if (idle && c->l->lim.idle_timeout_s > 0) {
        long long t = c->last_io_us + c->l->lim.idle_timeout_s * 1000000LL;
        if (!due || t < due)
            due = t;
    }
    return due;
}

/* Keeps a timer armed no later than the next due moment (it re-checks when it fires,
 * so activity that pushes the moment back needs no re-arming). */
static void arm_timer(coe_http_conn *c)
{
    long long due = next_due(c);
    if (!due || (c->timer && c->timer_due_us <= due))
        return;
    if (c->timer)
        coe_loop_cancel(c->loop, c->timer);
    long long ms = (due - coe_now_us() + 999) / 1000;
    c->timer = coe_loop_after(c->loop, ms > 0 ? ms : 0, on_timer, c);
    c->timer_due_us = due;
}

/* ---- closing ---- */

/* Ends the connection; an open request ends with outcome (408, 499, 503). */
static void conn_close(coe_http_conn *c, int outcome)
{
    if (c->state == S_CLOSED)
        return;
    coe_http_listener *l = c->l;
    if (c->in_request) {
        c->in_request = false;
        l->h.on_end(l->arg, c, outcome);
        c->user = NULL;
    }
    c->state = S_CLOSED;
    coe_loop_unwatch(c->loop, c->watch);
    c->watch = NULL;
    if (c->timer)
        coe_loop_cancel(c->loop, c->timer);
    c->timer = NULL;
    close(c->fd);
    c->fd = -1;
    ip_give(l->ips, c->ip_key);
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->l = NULL;
    l->n_conns--;
    if (!l->watch && !l->retry && !l->quiesced && l->n_conns < l->lim.max_connections)
        resume_accepting(l);
    coe_http_conn_unref(&c);
}

static void on_timer(void *arg)
{
    coe_http_conn *c = arg;
    c->timer = NULL; /* firing: the loop frees it */
    c->timer_due_us = 0;
    long long now = coe_now_us();
    const coe_http_limits *lim = &c->l->lim;
    if (c->deadline_us && now >= c->deadline_us) {
        if (c->state == S_HEAD || c->state == S_BODY)
            coe_warn("closed a connection from %s that took over %d s to send its request %s", c->client,
                     c->state == S_HEAD ? lim->headers_timeout_s : lim->body_timeout_s,
                     c->state == S_HEAD ? "headers" : "body");
        conn_close(c, 408);
        return;
    }
    long long due = next_due(c);
    if (due && now >= due) {
        conn_close(c, 408); /* idle: the client neither sent nor read for idle_timeout_s */
        return;
    }
    arm_timer(c);
}

/* The response is written whole: the request is over. */
static void end_request(coe_http_conn *c)
{
    coe_http_listener *l = c->l;
    c->in_request = false;
    l->h.on_end(l->arg, c, 0);
    c->user = NULL;
    c->responded = false;
    c->pull = NULL;
    c->stream_idle = false;
    coe_buf_reset(&c->body);
    if (c->body.cap > (1u << 20))
        coe_buf_free(&c->body);
    if (c->close_after || !c->keep_alive || (c->has_body && !c->body_read)) {
        /* Lingering close (as nginx's): closing a socket with unread input answers
         * the client with a reset, which can destroy the response it has not read
         * yet. So our side is shut, and input is read and dropped for a while. */
        shutdown(c->fd, SHUT_WR);
        c->state = S_LINGER;
        c->deadline_us = coe_now_us() + LINGER_MS * 1000LL;
        c->lingered = c->rbuf.len;
        coe_buf_reset(&c->rbuf);
        return;
    }
    c->state = S_HEAD;
    c->deadline_us = 0;
    c->last_io_us = coe_now_us();
}

/* ---- reading ---- */

/* Reads what the socket has; false when the connection ended. */
static bool do_read(coe_http_conn *c)
{
    if (c->state == S_LINGER) {
        char buf[READ_CHUNK];
        for (;;) {
            ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0 && (c->lingered += (size_t)n) < LINGER_BYTES)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return true;
            conn_close(c, 0); /* the client closed, an error, or enough */
            return false;
        }
    }
    if (coe_buf_reserve(&c->rbuf, READ_CHUNK)) {
        conn_close(c, 503);
        return false;
    }
    ssize_t n = recv(c->fd, c->rbuf.data + c->rbuf.len, READ_CHUNK, MSG_DONTWAIT);
    if (n > 0) {
        c->rbuf.len += (size_t)n;
        c->rbuf.data[c->rbuf.len] = '\0';
        c->last_io_us = coe_now_us();
        return true;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return true;
    conn_close(c, 499); /* the client closed (or reset) the connection */
    return false;
}

/* ---- writing ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

/* The Date header's value, formatted once a second per thread. */
static const char *http_date(void)
{
    static _Thread_local time_t last;
    static _Thread_local char text[64];
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return text;
}

static void write_head(coe_http_conn *c, int status, const coe_http_header *hdrs, int n, const char *framing)
{
    coe_buf *w = &c->wbuf;
    coe_buf_printf(w, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, reason_phrase(status), http_date());
    if (framing)
        coe_buf_printf(w, "%s\r\n", framing);
    for (int i = 0; i < n; i++)
        if (hdrs[i].value)
            coe_buf_printf(w, "%s: %s\r\n", hdrs[i].name, hdrs[i].value);
    bool closing = c->close_after || !c->keep_alive || (c->has_body && !c->body_read);
    coe_buf_puts(w, closing ? "Connection: close\r\n\r\n" : c->http10 ? "Connection: keep-alive\r\n\r\n" : "\r\n");
}

/* Writes what is queued; false when the connection ended. */
static bool flush(coe_http_conn *c)
{
    while (c->wpos < c->wbuf.len) {
        ssize_t n = send(c->fd, c->wbuf.data + c->wpos, c->wbuf.len - c->wpos, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->wpos += (size_t)n;
            c->last_io_us = coe_now_us();
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return true;
        conn_close(c, 499);
        return false;
    }
    c->wpos = 0;
    coe_buf_reset(&c->wbuf);
    if (c->wbuf.cap > (1u << 20))
        coe_buf_free(&c->wbuf); /* a big answer's memory goes back */
    return true;
}

/* Tops a stream's queue up from its source. false: the source aborted (connection
 * closed). */
static bool fill(coe_http_conn *c)
{
    char buf[READ_CHUNK];
    c->stream_idle = false;
    while (c->pull && c->wbuf.len - c->wpos < WRITE_AHEAD) {
        ssize_t n = c->head_only ? COE_HTTP_END : c->pull(c->pull_arg, buf, sizeof buf);
        if (n == COE_HTTP_ABORT) {
            conn_close(c, 499);
            return false;
        }
        if (n == COE_HTTP_END) {
            c->pull = NULL;
            if (c->chunked_out)
                coe_buf_puts(&c->wbuf, "0\r\n\r\n");
            break;
        }
        if (n == 0) {
            c->stream_idle = true;
            break;
        }
        if (c->chunked_out)
            coe_buf_printf(&c->wbuf, "%zx\r\n", (size_t)n);
        coe_buf_append(&c->wbuf, buf, (size_t)n);
        if (c->chunked_out)
            coe_buf_puts(&c->wbuf, "\r\n");
    }
    if (c->wbuf.err) {
        conn_close(c, 503); /* a hole in the stream is worse than its end */
        return false;
    }
    return true;
}

int coe_http_respond(coe_http_conn *c, int status, const coe_http_header *hdrs, int n, const char *body, size_t len)
{
    if (c->state == S_CLOSED || c->responded)
        return COE_EINVAL;
    char framing[48];
    snprintf(framing, sizeof framing, "Content-Length: %zu", len);
    write_head(c, status, hdrs, n, framing);
    if (!c->head_only)
        coe_buf_append(&c->wbuf, body, len);
    if (c->wbuf.err) {
        conn_close(c, 503);
        return COE_ENOMEM;
    }
    c->responded = true;
    c->state = S_WRITE;
    if (!c->in_advance)
        advance(c);
    return 0;
}

int coe_http_stream(coe_http_conn *c, int status, const coe_http_header *hdrs, int n, coe_http_pull_fn pull,
                    void *arg)
{
    if (c->state == S_CLOSED || c->responded)
        return COE_EINVAL;
    /* HTTP/1.0 has no chunked coding: the end of the stream is the end of the connection. */
    c->chunked_out = !c->http10;
    if (c->http10)
        c->close_after = true;
    write_head(c, status, hdrs, n, c->chunked_out ? "Transfer-Encoding: chunked" : NULL);
    if (c->wbuf.err) {
        conn_close(c, 503);
        return COE_ENOMEM;
    }
    c->pull = pull;
    c->pull_arg = arg;
    c->responded = true;
    c->state = S_WRITE;
    if (!c->in_advance)
        advance(c);
    return 0;
}

/* ---- requests ---- */

static void start_request(coe_http_conn *c)
{
    size_t hl = coe_http_head_length(c->rbuf.data, c->rbuf.len);
    int status = 0;
    const char *why = NULL;
    coe_buf_reset(&c->head_text);
    if (!hl || hl > HEAD_MAX) {
        status = 431;
        why = "the request head is over 32 KiB";
        memset(&c->head, 0, sizeof c->head);
        c->head.content_length = -1;
    } else if (coe_buf_append(&c->head_text, c->rbuf.data, hl)) {
        conn_close(c, 503);
        return;
    } else {
        coe_buf_consume(&c->rbuf, hl);
        status = coe_http_parse_head(c->head_text.data, hl, &c->head, &why);
    }
    const coe_http_head *h = &c->head;
    c->in_request = true;
    c->user = NULL;
    c->body_limit = 0;
    c->responded = false;
    c->http10 = status ? true : h->minor == 0;
    c->keep_alive = !status && h->keep_alive;
    c->close_after = status != 0;
    c->head_only = !status && strcmp(h->method, "HEAD") == 0;
    c->chunked = !status && h->chunked;
    c->has_body = !status && (h->chunked || h->content_length > 0);
    c->body_read = false;
    c->body_left = h->content_length > 0 ? h->content_length : 0;
    memset(&c->chunk_state, 0, sizeof c->chunk_state);
    coe_buf_reset(&c->body);
    c->state = S_WAIT;
    c->deadline_us = 0;
    coe_http_listener *l = c->l;
    l->h.on_head(l->arg, c, h, status, why);
    if (c->state != S_WAIT)
        return; /* answered (or closed) at once */
    if (status) {
        coe_http_respond(c, status, NULL, 0, "", 0); /* the handler should have said why */
        return;
    }
    if (!c->has_body) {
        c->body_read = true;
        l->h.on_body(l->arg, c, "", 0, 0, NULL);
        return;
    }
    if (c->body_left > 0 && (unsigned long long)c->body_left > c->body_limit) {
        c->close_after = true;
        l->h.on_body(l->arg, c, NULL, 0, 413, NULL);
        return;
    }
    if (h->expect_continue)
        coe_buf_puts(&c->wbuf, "HTTP/1.1 100 Continue\r\n\r\n");
    c->state = S_BODY;
    c->deadline_us = l->lim.body_timeout_s > 0 ? coe_now_us() + l->lim.body_timeout_s * 1000000LL : 0;
}

/* Moves body bytes from the read buffer into the body. */
static void take_body(coe_http_conn *c)
{
    coe_http_listener *l = c->l;
    int status = 0;
    const char *why = NULL;
    bool done;
    if (c->chunked) {
        size_t used = 0;
        int rc = coe_http_chunked_feed(&c->chunk_state, c->rbuf.data, c->rbuf.len, &c->body, c->body_limit, &used,
                                       &why);
        coe_buf_consume(&c->rbuf, used);
        done = rc != 0;
        status = rc == 1 ? 0 : rc;
    } else {
        size_t n = c->rbuf.len < (unsigned long long)c->body_left ? c->rbuf.len : (size_t)c->body_left;
        if (coe_buf_append(&c->body, c->rbuf.data, n))
            status = 503;
        coe_buf_consume(&c->rbuf, n);
        c->body_left -= (long long)n;
        done = status || c->body_left == 0;
    }
    if (!done)
        return;
    c->state = S_WAIT;
    c->deadline_us = 0;
    if (status)
        c->close_after = true;
    else
        c->body_read = true;
    l->h.on_body(l->arg, c, c->body.data ? c->body.data : "", c->body.len, status, why);
}

/* Runs the connection as far as it goes without waiting, then says what to wait for. */
static void advance(coe_http_conn *c)
{
    coe_http_conn_ref(c);
    c->in_advance = true;
    for (;;) {
        if (c->state == S_CLOSED)
            break;
        if (c->wpos < c->wbuf.len && !flush(c))
            break;
        if (c->state == S_HEAD) {
            if (c->rbuf.len == 0) {
                c->deadline_us = 0; /* before its first byte a request is bound by the idle timeout only */
                set_events(c, COE_IO_IN);
                break;
            }
            if (!c->deadline_us && c->l->lim.headers_timeout_s > 0)
                c->deadline_us = coe_now_us() + c->l->lim.headers_timeout_s * 1000000LL;
            if (coe_http_head_length(c->rbuf.data, c->rbuf.len) == 0 && c->rbuf.len <= HEAD_MAX) {
                set_events(c, COE_IO_IN);
                break;
            }
            start_request(c);
            continue;
        }
        if (c->state == S_BODY) {
            if (c->rbuf.len)
                take_body(c);
            if (c->state == S_BODY) {
                set_events(c, c->wpos < c->wbuf.len ? COE_IO_IN | COE_IO_OUT : COE_IO_IN);
                break;
            }
            continue;
        }
        if (c->state == S_WAIT) {
            set_events(c, 0); /* hang-ups only: a pipelined request waits in the socket */
            break;
        }
        if (c->state == S_WRITE) {
            if (!fill(c) || !flush(c))
                break;
            if (c->wpos < c->wbuf.len) {
                set_events(c, COE_IO_OUT);
                break;
            }
            if (c->pull) {
                if (c->stream_idle) {
                    set_events(c, 0);
                    break;
                }
                continue;
            }
            end_request(c);
            continue;
        }
        if (c->state == S_LINGER) {
            set_events(c, COE_IO_IN);
            break;
        }
    }
    if (c->state != S_CLOSED)
        arm_timer(c);
    c->in_advance = false;
    coe_http_conn_unref(&c);
}

static void on_io(void *arg, unsigned events)
{
    coe_http_conn *c = arg;
    if (c->state == S_CLOSED)
        return;
    if ((events & COE_IO_HUP) && (c->state == S_WAIT || c->state == S_WRITE)) {
        conn_close(c, 499); /* the client left before its answer was written */
        return;
    }
    if ((events & (COE_IO_IN | COE_IO_HUP)) && !do_read(c))
        return;
    advance(c);
}

static void on_woken(void *arg)
{
    coe_http_conn *c = arg;
    atomic_store(&c->wake_pending, false);
    if (c->state == S_WAIT) {
        c->in_advance = true;
        c->l->h.on_wake(c->l->arg, c);
        c->in_advance = false;
        advance(c);
    } else if (c->state == S_WRITE && c->stream_idle) {
        advance(c);
    }
    coe_http_conn_unref(&c);
}

void coe_http_wake(coe_http_conn *c)
{
    if (atomic_exchange(&c->wake_pending, true))
        return;
    coe_http_conn_ref(c);
    if (coe_loop_post_or_drop(c->loop, on_woken, unref_task, c)) {
        atomic_store(&c->wake_pending, false);
        coe_http_conn_unref(&c);
    }
}

/* ---- accepting ---- */

static void on_accept(void *arg, unsigned events);

static void resume_accepting(coe_http_listener *l)
{
    l->watch = coe_loop_watch_io(l->loop, l->listen_fd, COE_IO_IN, 1, on_accept, l);
}

static void retry_accept(void *arg)
{
    coe_http_listener *l = arg;
    l->retry = NULL; /* firing: the loop frees it */
    if (!l->watch && !l->quiesced && l->n_conns < l->lim.max_connections)
        resume_accepting(l);
}

static void stop_accepting(coe_http_listener *l)
{
    coe_loop_unwatch(l->loop, l->watch);
    l->watch = NULL;
}

static void address_of(coe_http_conn *c, const struct sockaddr_storage *sa)
{
    memset(c->ip_key, 0, sizeof c->ip_key);
    c->ip_key[0] = (unsigned char)sa->ss_family;
    snprintf(c->client, sizeof c->client, "-");
    if (sa->ss_family == AF_INET) {
        const struct in_addr *a = &((const struct sockaddr_in *)sa)->sin_addr;
        memcpy(c->ip_key + 1, a, 4);
        inet_ntop(AF_INET, a, c->client, sizeof c->client);
    } else if (sa->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        memcpy(c->ip_key + 1, a, 16);
        inet_ntop(AF_INET6, a, c->client, sizeof c->client);
    }
}

static void on_accept(void *arg, unsigned events)
{
    (void)events;
    coe_http_listener *l = arg;
    for (int i = 0; i < ACCEPT_BATCH && l->watch; i++) {
        if (l->n_conns >= l->lim.max_connections) {
            stop_accepting(l); /* back when one closes */
            return;
        }
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(l->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                coe_warn("cannot accept a connection: %s; trying again in %d ms", strerror(errno), ACCEPT_PAUSE_MS);
                stop_accepting(l);
                l->retry = coe_loop_after(l->loop, ACCEPT_PAUSE_MS, retry_accept, l);
            }
            return; /* EAGAIN: another worker took it, or none is left */
        }
        coe_http_conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        address_of(c, &sa);
        if (!ip_take(l->ips, c->ip_key, l->lim.max_connections_per_ip)) {
            coe_debug("refused a connection from %s: at max_connections_per_ip", c->client);
            close(fd);
            free(c);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* stream chunks go out as they come */
        atomic_init(&c->refs, 1);
        atomic_init(&c->wake_pending, false);
        c->loop = l->loop;
        c->l = l;
        c->fd = fd;
        c->state = S_HEAD;
        c->last_io_us = coe_now_us();
        c->events = COE_IO_IN;
        c->watch = coe_loop_watch_io(l->loop, fd, COE_IO_IN, 0, on_io, c);
        if (!c->watch) {
            ip_give(l->ips, c->ip_key);
            close(fd);
            free(c);
            continue;
        }
        c->next = l->conns;
        if (l->conns)
            l->conns->prev = c;
        l->conns = c;
        l->n_conns++;
        arm_timer(c);
    }
}

int coe_http_listen(coe_http_listener **out, coe_loop *loop, int listen_fd, const coe_http_limits *limits,
                    coe_http_ip_table *ips, const coe_http_handler *handler, void *arg)
{
    *out = NULL;
    coe_http_listener *l = calloc(1, sizeof *l);
    if (!l)
        return COE_ENOMEM;
    l->loop = loop;
    l->listen_fd = listen_fd;
    l->lim = *limits;
    if (l->lim.max_connections <= 0)
        l->lim.max_connections = 1;
    l->ips = ips;
    l->h = *handler;
    l->arg = arg;
    resume_accepting(l);
    if (!l->watch) {
        free(l);
        return COE_EIO;
    }
    *out = l;
    return 0;
}

void coe_http_quiesce(coe_http_listener *l)
{
    l->quiesced = true;
    stop_accepting(l);
    if (l->retry)
        coe_loop_cancel(l->loop, l->retry);
    l->retry = NULL;
}

void coe_http_close(coe_http_listener **lp)
{
    coe_http_listener *l = *lp;
    *lp = NULL;
    if (!l)
        return;
    coe_http_quiesce(l);
    while (l->conns)
        conn_close(l->conns, 503);
    free(l);
}

/* ---- small accessors ---- */

void coe_http_set_user(coe_http_conn *c, void *user)
{
    c->user = user;
}

void *coe_http_user(const coe_http_conn *c)
{
    return c->user;
}

const char *coe_http_client(const coe_http_conn *c)
{
    return c->client;
}

void coe_http_set_body_limit(coe_http_conn *c, size_t limit)
{
    c->body_limit = limit;
}

void coe_http_close_after(coe_http_conn *c)
{
    c->close_after = true;
}
