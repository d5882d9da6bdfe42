/* Remote experts: any server that speaks OpenAI's chat/completions API, reached
 * with libcurl on the loop thread. Streams are parsed as they arrive and re-emitted
 * as deltas; failures are classified so that dispatch can retry or fall back. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "backends/backend.h"
#include "backends/sse.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"

#define MAX_EVENT_BYTES (4u << 20)
#define MAX_BODY_BYTES (64u << 20)
#define MAX_ERROR_BODY 16384

typedef struct remote_call {
    coe_loop *loop;
    coe_sink sink;
    const coe_expert_cfg *e;
    const coe_request *req;
    CURL *easy;
    struct curl_slist *headers;
    char *body;               /* what was sent, kept until the transfer ends */
    long status;              /* HTTP status, once the body starts */
    bool sse;                 /* the response is an event stream */
    coe_sse parser;
    coe_buf in;               /* a JSON body, or an error body */
    long long started_ms;
    bool paused;               /* not reading: the client is slow (backpressure) */
    long long last_content_ms; /* 0 until the first content: a body byte, or a stream's event (comments,
                                  such as keep-alive pings, and headers do not count) */
    long retry_after_ms;
    bool saw_done;            /* data: [DONE] */
    bool saw_finish;          /* a choice finished */
    bool failed;              /* pending holds why the transfer was stopped */
    coe_failure pending;
    coe_timer *deadline;
} remote_call;

static void call_free(remote_call *c)
{
    if (c->deadline)
        coe_loop_cancel(c->loop, c->deadline);
    if (c->easy)
        coe_loop_easy_put(c->loop, c->easy);
    curl_slist_free_all(c->headers);
    free(c->body);
    coe_sse_free(&c->parser);
    coe_buf_free(&c->in);
    free(c);
}

/* Never let the key reach a message, whatever the upstream echoed back. */
static void scrub_key(const coe_expert_cfg *e, char *msg)
{
    if (!e->api_key || strlen(e->api_key) < 4)
        return;
    size_t klen = strlen(e->api_key);
    char *p;
    while ((p = strstr(msg, e->api_key))) {
        static const char red[] = "[redacted]";
        size_t rest = strlen(p + klen);
        if (klen >= sizeof red - 1) {
            memcpy(p, red, sizeof red - 1);
            memmove(p + sizeof red - 1, p + klen, rest + 1);
        } else {
            memset(p, '*', klen);
        }
    }
}

/* The request body for the upstream: the client's, with the upstream model name, the
 * limit on generated tokens (the smallest of the request's and the expert's) under the
 * one name the upstream reads (max_tokens, which every OpenAI-compatible server
 * reads, unless the expert names max_completion_tokens), and usage asked for on
 * streams. */
static char *upstream_body(const coe_expert_cfg *e, const coe_request *req)
{
    cJSON *b = cJSON_Duplicate(req->body, 1);
    if (!b)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(b, "model");
    cJSON_AddStringToObject(b, "model", e->model);
    if (req->endpoint == COE_EP_EMBEDDINGS)
        goto print; /* nothing generated: no limit, no stream */
    long mt = coe_effective_max_tokens(e, req);
    cJSON_DeleteItemFromObjectCaseSensitive(b, "max_tokens");
    cJSON_DeleteItemFromObjectCaseSensitive(b, "max_completion_tokens");
    if (mt > 0)
        cJSON_AddNumberToObject(b, e->send_max_completion_tokens ? "max_completion_tokens" : "max_tokens", (double)mt);
    if (req->stream) {
        cJSON *so = cJSON_GetObjectItemCaseSensitive(b, "stream_options");
        if (!cJSON_IsObject(so)) {
            cJSON_DeleteItemFromObjectCaseSensitive(b, "stream_options");
            so = cJSON_AddObjectToObject(b, "stream_options");
        }
        if (so) {
            cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
            cJSON_AddTrueToObject(so, "include_usage");
        }
    }
print:;
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static void stop_with(remote_call *c, coe_failure_kind kind, int status, const char *fmt, const char *arg)
{
    if (c->failed)
        return;
    c->failed = true;
    coe_failure_set(&c->pending, kind, status, fmt, c->e->name, arg);
}

static void read_usage(remote_call *c, const cJSON *u)
{
    if (!cJSON_IsObject(u))
        return;
    coe_usage usage = {0};
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(u, "total_tokens");
    usage.prompt_tokens = cJSON_IsNumber(p) ? (long)p->valuedouble : 0;
    usage.completion_tokens = cJSON_IsNumber(k) ? (long)k->valuedouble : 0;
    usage.total_tokens = cJSON_IsNumber(t) ? (long)t->valuedouble : usage.prompt_tokens + usage.completion_tokens;
    c->sink.ops->usage(c->sink.ctx, &usage);
}

static const char *str_or_null(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* The members of o other than those named in known, as raw JSON ("k":v,...), or
 * NULL when there are none (the caller frees). */
static char *other_members(const cJSON *o, const char *const *known)
{
    coe_buf b = COE_BUF_INIT;
    for (const cJSON *m = cJSON_IsObject(o) ? o->child : NULL; m; m = m->next) {
        bool skip = false;
        for (const char *const *k = known; *k && !skip; k++)
            skip = strcmp(*k, m->string) == 0;
        if (skip)
            continue;
        char *v = cJSON_PrintUnformatted(m);
        if (!v) {
            coe_buf_free(&b);
            return NULL;
        }
        if (b.len)
            coe_buf_puts(&b, ",");
        coe_buf_json_string(&b, m->string, strlen(m->string));
        coe_buf_printf(&b, ":%s", v);
        free(v);
    }
    if (b.err)
        coe_buf_free(&b);
    return b.len ? coe_buf_steal(&b) : NULL;
}

/* Reports one choice of the upstream's answer: of a chunk (key "delta") or of a whole
 * answer (key "message"), as a delta, or as the whole choice when the client did not
 * stream. Members coegate does not know are passed on as they are. */
static void emit_choice(remote_call *c, const cJSON *ch, const char *key)
{
    static const char *const choice_known[] = {"index", "message", "delta", "text", "logprobs", "finish_reason", NULL};
    static const char *const message_known[] = {"role", "content", "reasoning_content", "tool_calls", NULL};
    if (!cJSON_IsObject(ch))
        return;
    coe_delta d = {0};
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
    d.index = cJSON_IsNumber(idx) && idx->valuedouble >= 0 && idx->valuedouble < 1024 ? (int)idx->valuedouble : 0;
    char *tool_calls = NULL, *logprobs = NULL, *extra = NULL, *message_extra = NULL;
    if (c->req->endpoint == COE_EP_CHAT) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, key);
        d.role = str_or_null(m, "role");
        d.content = str_or_null(m, "content");
        d.reasoning = str_or_null(m, "reasoning_content");
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (cJSON_IsArray(tc))
            d.tool_calls = tool_calls = cJSON_PrintUnformatted(tc);
        d.message_extra = message_extra = other_members(m, message_known);
    } else {
        d.content = str_or_null(ch, "text");
    }
    if (d.content)
        d.content_len = strlen(d.content);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(ch, "logprobs");
    if (lp && !cJSON_IsNull(lp))
        d.logprobs = logprobs = cJSON_PrintUnformatted(lp);
    d.finish_reason = str_or_null(ch, "finish_reason");
    d.extra = extra = other_members(ch, choice_known);
    if (d.finish_reason)
        c->saw_finish = true;
    if (!c->req->stream)
        c->sink.ops->choice(c->sink.ctx, &d);
    else if (d.role || d.content || d.reasoning || d.tool_calls || d.logprobs || d.finish_reason || d.message_extra)
        c->sink.ops->delta(c->sink.ctx, &d);
    free(tool_calls);
    free(logprobs);
    free(extra);
    free(message_extra);
}

/* The upstream's message, key scrubbed, cut to 200 bytes (at a character boundary).
 * Scrubbed before it is cut: a key straddling the cut would otherwise survive in part. */
static void upstream_error_message(remote_call *c, const cJSON *err, char *out, size_t n)
{
    const char *m = cJSON_IsObject(err) ? str_or_null(err, "message") : cJSON_IsString(err) ? err->valuestring : NULL;
    char *msg = strdup(m ? m : "no message");
    if (!msg) {
        snprintf(out, n, "no message");
        return;
    }
    scrub_key(c->e, msg);
    size_t len = strlen(msg), max = n - 1 < 200 ? n - 1 : 200;
    if (len > max)
        for (len = max; len > 0 && ((unsigned char)msg[len] & 0xC0) == 0x80; len--)
            ;
    memcpy(out, msg, len);
    out[len] = '\0';
    free(msg);
}

static int on_event(void *ctx, const coe_sse_event *ev)
{
    remote_call *c = ctx;
    c->last_content_ms = coe_now_ms();
    if (strcmp(ev->data, "[DONE]") == 0) {
        c->saw_done = true;
        return 0;
    }
    cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        stop_with(c, COE_FAIL_RETRY, 502, "expert '%s' sent a malformed stream event%s", "");
        return COE_EPARSE;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (err && !cJSON_IsNull(err)) {
        char msg[256];
        upstream_error_message(c, err, msg, sizeof msg);
        stop_with(c, COE_FAIL_RETRY, 502, "expert '%s' reported an error in its stream: %s", msg);
        cJSON_Delete(j);
        return COE_EIO;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    for (const cJSON *ch = cJSON_IsArray(choices) ? choices->child : NULL; ch; ch = ch->next)
        emit_choice(c, ch, "delta");
    read_usage(c, cJSON_GetObjectItemCaseSensitive(j, "usage"));
    cJSON_Delete(j);
    return 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    remote_call *c = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        char v[128];
        size_t k = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
        memcpy(v, p + 12, k);
        v[k] = '\0';
        char *end;
        long secs = strtol(v, &end, 10);
        if (end != v && secs >= 0 && secs < 86400) {
            c->retry_after_ms = secs * 1000;
        } else {
            time_t when = curl_getdate(v, NULL);
            if (when > 0)
                c->retry_after_ms = when > time(NULL) ? (long)(when - time(NULL)) * 1000 : 0;
        }
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    remote_call *c = arg;
    size_t len = size * n;
    if (!c->status) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
        const char *ct = NULL;
        curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct);
        c->sse = c->status < 300 && ct && strncasecmp(ct, "text/event-stream", 17) == 0;
        /* Its events would reach a client that waits for one JSON body. Another expert
         * may answer as asked. */
        if (c->sse && !c->req->stream)
            stop_with(c, COE_FAIL_NEXT, 502, "expert '%s' answered a request without \"stream\" with an event "
                      "stream%s", "");
    }
    if (c->failed)
        return CURL_WRITEFUNC_ERROR;
    if (c->sse) { /* content is counted per event (on_event), not per byte */
        int rc = coe_sse_feed(&c->parser, p, len, on_event, c);
        if (rc == COE_ERANGE)
            stop_with(c, COE_FAIL_RETRY, 502, "expert '%s' sent a stream event over the size limit%s", "");
        return rc ? CURL_WRITEFUNC_ERROR : len;
    }
    c->last_content_ms = coe_now_ms();
    size_t cap = c->status >= 300 ? MAX_ERROR_BODY : MAX_BODY_BYTES;
    if (c->in.len + len > cap) {
        if (c->status >= 300)
            return len; /* an error body is only read for its message: keep the start */
        stop_with(c, COE_FAIL_FINAL, 502, "expert '%s' sent a response body over the size limit%s", "");
        return CURL_WRITEFUNC_ERROR;
    }
    coe_buf_append(&c->in, p, len);
    return len;
}

/* A whole (not streamed) answer: its choices, reported whole, or as deltas when the
 * client streams (some servers ignore stream: true); for embeddings, the whole object
 * with its "data" array, named by the model the client asked for (as every answer is). */
static bool handle_json_body(remote_call *c)
{
    bool embeddings = c->req->endpoint == COE_EP_EMBEDDINGS;
    cJSON *j = cJSON_ParseWithLength(c->in.data ? c->in.data : "", c->in.len);
    const cJSON *part = cJSON_GetObjectItemCaseSensitive(j, embeddings ? "data" : "choices");
    if (!cJSON_IsObject(j) || !cJSON_IsArray(part)) {
        cJSON_Delete(j);
        return false;
    }
    if (!embeddings) {
        for (const cJSON *ch = part->child; ch; ch = ch->next)
            emit_choice(c, ch, "message");
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(j, "model");
        cJSON_AddStringToObject(j, "model", c->req->model);
        char *s = cJSON_PrintUnformatted(j);
        if (s)
            c->sink.ops->result(c->sink.ctx, s, strlen(s));
        free(s);
    }
    read_usage(c, cJSON_GetObjectItemCaseSensitive(j, "usage"));
    cJSON_Delete(j);
    return true;
}

/* How an HTTP error from the upstream is passed on: classified by its status, or by
 * its body where that says the request is invalid (some servers answer 500 to a
 * request they cannot serve), with the upstream's message, key scrubbed, after ours. */
static void http_failure(remote_call *c, coe_failure *f)
{
    char detail[256] = "";
    bool invalid = false;
    cJSON *j = cJSON_ParseWithLength(c->in.data ? c->in.data : "", c->in.len);
    const cJSON *err = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "error") : NULL;
    if (err) {
        upstream_error_message(c, err, detail, sizeof detail);
        const char *type = str_or_null(err, "type");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
        invalid = (type && strcmp(type, "invalid_request_error") == 0) ||
                  (cJSON_IsNumber(code) && code->valuedouble >= 400 && code->valuedouble < 500 &&
                   code->valuedouble != 401 && code->valuedouble != 403 && code->valuedouble != 429);
    }
    cJSON_Delete(j);
    long s = c->status;
    const char *name = c->e->name;
    char why[300];
    snprintf(why, sizeof why, "%s%s", detail[0] ? ": " : "", detail);
    if (s == 400 || s == 422 || s == 413 || (s >= 500 && invalid))
        coe_failure_set(f, COE_FAIL_FINAL, s == 413 ? 413 : 400, "expert '%s' rejected the request: %s", name,
                        detail[0] ? detail : "bad request");
    else if (s == 401 || s == 403)
        coe_failure_set(f, COE_FAIL_NEXT, 502, "expert '%s' refused the gateway's credentials (HTTP %ld)%s", name, s,
                        why);
    else if (s == 404)
        coe_failure_set(f, COE_FAIL_NEXT, 502, "expert '%s' does not know model '%s' or the path (HTTP 404)%s", name,
                        c->e->model, why);
    else if (s == 429)
        coe_failure_set(f, COE_FAIL_RETRY, 429, "expert '%s' is rate-limited (HTTP 429)%s", name, why);
    else if (s == 504 || s == 408)
        coe_failure_set(f, COE_FAIL_RETRY, 504, "expert '%s' timed out upstream (HTTP %ld)%s", name, s, why);
    else if (s >= 500 || s == 409)
        coe_failure_set(f, COE_FAIL_RETRY, 502, "expert '%s' failed (HTTP %ld)%s", name, s, why);
    else
        coe_failure_set(f, COE_FAIL_NEXT, 502, "expert '%s' answered with unexpected HTTP status %ld%s", name, s, why);
    f->retry_after_ms = c->retry_after_ms;
}

static void on_transfer_done(void *arg, CURLcode result)
{
    remote_call *c = arg;
    coe_failure f;
    const char *name = c->e->name;
    const coe_sink sink = c->sink;
    if (c->failed) {
        f = c->pending;
    } else if (result != CURLE_OK) {
        if (result == CURLE_OPERATION_TIMEDOUT)
            coe_failure_set(&f, COE_FAIL_RETRY, 504, "expert '%s' did not accept a connection within %ld ms", name,
                            c->e->connect_timeout_ms);
        else
            coe_failure_set(&f, COE_FAIL_RETRY, 502, "expert '%s' could not be reached: %s", name,
                            curl_easy_strerror(result));
    } else if (c->status >= 300 || c->status == 0) {
        if (!c->status)
            curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
        http_failure(c, &f);
    } else if (c->sse) {
        if (c->saw_done || c->saw_finish) {
            call_free(c);
            sink.ops->done(sink.ctx);
            return;
        }
        coe_failure_set(&f, COE_FAIL_RETRY, 502, "expert '%s' ended its stream before it finished%s", name, "");
    } else if (handle_json_body(c)) {
        call_free(c);
        sink.ops->done(sink.ctx);
        return;
    } else {
        coe_failure_set(&f, COE_FAIL_RETRY, 502, "expert '%s' sent a response that is not a completion%s", name, "");
    }
    call_free(c);
    sink.ops->fail(sink.ctx, &f);
}

/* First-content, between-content and whole-answer deadlines; re-armed lazily for what
 * is left. Comments do not count as content, so an upstream that only sends keep-alive
 * pings cannot hold a request forever. */
static void on_deadline(void *arg)
{
    remote_call *c = arg;
    c->deadline = NULL;
    long long now = coe_now_ms();
    if (c->paused)
        c->last_content_ms = now; /* the silence is the client's, not the expert's */
    long long due = c->last_content_ms ? c->last_content_ms + c->e->chunk_timeout_ms
                                       : c->started_ms + c->e->first_byte_timeout_ms;
    long long whole = c->e->stream_timeout_ms ? c->started_ms + c->e->stream_timeout_ms : due;
    if (now < due && now < whole) {
        c->deadline = coe_loop_after(c->loop, (long)((due < whole ? due : whole) - now), on_deadline, c);
        return;
    }
    coe_failure f;
    if (now >= whole && c->e->stream_timeout_ms)
        coe_failure_set(&f, COE_FAIL_RETRY, 504, "expert '%s' did not finish its answer within %ld ms", c->e->name,
                        c->e->stream_timeout_ms);
    else if (c->last_content_ms)
        coe_failure_set(&f, COE_FAIL_RETRY, 504, "expert '%s' stalled: no data for %ld ms", c->e->name,
                        c->e->chunk_timeout_ms);
    else
        coe_failure_set(&f, COE_FAIL_RETRY, 504, "expert '%s' did not answer within %ld ms", c->e->name,
                        c->e->first_byte_timeout_ms);
    coe_loop_remove(c->loop, c->easy);
    const coe_sink sink = c->sink;
    call_free(c);
    sink.ops->fail(sink.ctx, &f);
}

static int remote_start(coe_loop *loop, const coe_expert_cfg *e, const coe_request *req, const coe_sink *sink,
                        void **out)
{
    remote_call *c = calloc(1, sizeof *c);
    if (!c)
        return COE_ENOMEM;
    c->loop = loop;
    c->sink = *sink;
    c->e = e;
    c->req = req;
    c->retry_after_ms = -1;
    coe_sse_init(&c->parser, MAX_EVENT_BYTES);
    c->body = upstream_body(e, req);
    c->easy = coe_loop_easy_get(loop);
    if (!c->body || !c->easy) {
        call_free(c);
        return COE_ENOMEM;
    }
    char url[2048];
    snprintf(url, sizeof url, "%s%s", e->base_url,
             req->endpoint == COE_EP_CHAT ? "/chat/completions" : req->endpoint == COE_EP_EMBEDDINGS ? "/embeddings"
                                                                                                   : "/completions");
    c->headers = curl_slist_append(c->headers, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, req->stream ? "Accept: text/event-stream" : "Accept: application/json");
    c->headers = curl_slist_append(c->headers, "Expect:");
    if (e->api_key) {
        coe_buf auth = COE_BUF_INIT;
        coe_buf_printf(&auth, "Authorization: Bearer %s", e->api_key);
        c->headers = curl_slist_append(c->headers, auth.data);
        memset(auth.data, 0, auth.len);
        coe_buf_free(&auth);
    }
    for (int i = 0; i < e->n_headers; i++)
        c->headers = curl_slist_append(c->headers, e->headers[i]);
    CURL *h = c->easy;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(c->body));
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, e->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    c->started_ms = coe_now_ms();
    long first = e->stream_timeout_ms && e->stream_timeout_ms < e->first_byte_timeout_ms ? e->stream_timeout_ms
                                                                                       : e->first_byte_timeout_ms;
    c->deadline = coe_loop_after(loop, first, on_deadline, c);
    int rc = c->deadline ? coe_loop_add(loop, h, on_transfer_done, c) : COE_ENOMEM;
    if (rc) {
        call_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

static void remote_cancel(coe_loop *loop, void *call)
{
    remote_call *c = call;
    /* Removing an unfinished transfer closes its connection, which the upstream
     * sees as the client going away. */
    coe_loop_remove(loop, c->easy);
    call_free(c);
}

static void remote_pause(coe_loop *loop, void *call, bool paused)
{
    (void)loop;
    remote_call *c = call;
    if (c->paused == paused)
        return;
    c->paused = paused;
    c->last_content_ms = coe_now_ms();
    curl_easy_pause(c->easy, paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
}

const coe_backend_ops coe_remote_backend = {"remote", remote_start, remote_cancel, remote_pause};
