#include "gateway/dispatch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "common/err.h"
#include "common/log.h"
#include "common/rand.h"
#include "gateway/metrics.h"
#include "gateway/openai.h"

typedef struct dispatch {
    coe_loop *loop;
    coe_config *cfg;
    coe_request *req;
    coe_exchange *ex;
    coe_reply reply;
    int candidates[65]; /* the expert, then its fallbacks */
    int n_candidates;
    int cand;           /* index into candidates */
    int attempt;        /* attempts on candidates[cand] so far */
    const coe_backend_ops *backend;
    void *call;         /* the running backend call, or NULL */
    coe_timer *retry;   /* pending retry, or NULL */
    bool holds_slot;    /* counted in the current expert's inflight */
    bool committed;     /* something reached the client: no more retries */
    coe_failure last;
    coe_choices choices; /* a non-streamed answer, until done */
    coe_buf result;     /* a non-streamed answer for embeddings, until done */
    coe_failure first;  /* the chosen expert's failure, once it has fallen back */
    coe_buf then;       /* "; then 'b': why" for each fallback that failed too */
    coe_usage usage;
    bool have_usage;
    coe_sink sink;
    bool cut;           /* the stream cannot go on (see end_cut): it ends with an error */
    bool cut_oom;       /* why: memory ran out while writing it (else the client was too slow) */
    coe_timer *cut_timer; /* ends it, outside the backend's callback */
    bool trial;         /* this attempt is its expert's half-open circuit trial */
    bool paused;        /* the backend stopped taking in the answer: the client is slow */
    coe_timer *resume;  /* resumes it, outside the client's read */
} dispatch;

const char *coe_error_type(int status)
{
    switch (status) {
    case 400: case 404: case 405: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "upstream_error" : "invalid_request_error";
    }
}

void coe_failure_set(coe_failure *f, coe_failure_kind kind, int status, const char *fmt, ...)
{
    f->kind = kind;
    f->status = status;
    f->retry_after_ms = -1;
    f->param[0] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
}

/* Circuit breakers guard remote experts: a local or echo expert's failures are its
 * own load or the request's, not a dead upstream. */
static bool guarded(const coe_expert_cfg *e)
{
    return e->kind == COE_EXPERT_REMOTE && e->breaker_failures > 0;
}

void coe_dispatch_metrics(coe_config *cfg, coe_buf *out)
{
    coe_buf_puts(out, "# HELP coegate_expert_circuit_open Per remote expert: 1 while its circuit breaker is open.\n"
                      "# TYPE coegate_expert_circuit_open gauge\n");
    long long now = coe_now_ms();
    for (int i = 0; i < cfg->n_experts; i++)
        if (guarded(&cfg->experts[i]))
            coe_buf_printf(out, "coegate_expert_circuit_open{expert=\"%s\"} %d\n", cfg->experts[i].name,
                           coe_breaker_is_open(&cfg->experts[i].breaker, now) ? 1 : 0);
}

const coe_backend_ops *coe_backend_for(const coe_expert_cfg *e)
{
    switch (e->kind) {
    case COE_EXPERT_REMOTE: return &coe_remote_backend;
    case COE_EXPERT_LOCAL: return &coe_local_backend;
    case COE_EXPERT_FUSION: return &coe_fusion_backend;
    default: return &coe_echo_backend;
    }
}

long coe_effective_max_tokens(const coe_expert_cfg *e, const coe_request *req)
{
    if (e->max_tokens > 0 && (req->max_tokens < 0 || req->max_tokens > e->max_tokens))
        return e->max_tokens;
    return req->max_tokens;
}

static coe_expert_cfg *current_expert(dispatch *d)
{
    return &d->cfg->experts[d->candidates[d->cand]];
}

static void release_slot(dispatch *d)
{
    if (d->holds_slot) {
        atomic_fetch_sub(&current_expert(d)->inflight, 1);
        d->holds_slot = false;
    }
}

static void free_dispatch(dispatch *d)
{
    release_slot(d);
    if (d->retry)
        coe_loop_cancel(d->loop, d->retry);
    if (d->cut_timer)
        coe_loop_cancel(d->loop, d->cut_timer);
    if (d->resume)
        coe_loop_cancel(d->loop, d->resume);
    coe_exchange_on_drained(d->ex, NULL, NULL);
    d->ex->owner = NULL;
    coe_exchange_unref(&d->ex);
    coe_request_free(&d->req);
    coe_config_unref(&d->cfg);
    coe_choices_free(&d->choices);
    coe_buf_free(&d->result);
    coe_reply_free(&d->reply);
    coe_buf_free(&d->then);
    free(d);
}

/* A stream that cannot go on (the client's backlog hit its bound, or memory ran out
 * while writing it): an error event, [DONE], and a non-200 status in the access log
 * (507, 500); the expert is stopped. Nothing is dropped silently. */
static void end_cut(dispatch *d)
{
    if (d->cut_oom) {
        coe_log(COE_LOG_ERROR, "out of memory while streaming from expert '%s'; stream ended",
                current_expert(d)->name);
        coe_exchange_end_with_error(d->ex, coe_openai_oom_events, strlen(coe_openai_oom_events), 500);
        return;
    }
    coe_log(COE_LOG_WARN, "the client of a stream from expert '%s' read too slowly: over %zu bytes waited; stream "
            "ended", current_expert(d)->name, d->ex->max_pending);
    coe_api_error e;
    coe_api_error_set(&e, 507, "server_error", "client_too_slow", NULL,
                      "the client read the stream too slowly: over %zu bytes were waiting for it", d->ex->max_pending);
    coe_buf b = COE_BUF_INIT;
    coe_reply_stream_error(&b, &d->reply, &e);
    if (b.err)
        coe_exchange_end_with_error(d->ex, coe_openai_oom_events, strlen(coe_openai_oom_events), 507);
    else
        coe_exchange_end_with_error(d->ex, b.data, b.len, 507);
    coe_buf_free(&b);
}

static void cut_fire(void *arg)
{
    dispatch *d = arg;
    d->cut_timer = NULL;
    if (d->call)
        d->backend->cancel(d->loop, d->call);
    d->call = NULL;
    end_cut(d);
    free_dispatch(d);
}

static void resume_fire(void *arg)
{
    dispatch *d = arg;
    d->resume = NULL;
    if (d->paused && d->call)
        d->backend->pause(d->loop, d->call, false);
    d->paused = false;
}

/* The client caught up: take in the answer again (from the loop, not its read). */
static void on_drained(void *arg)
{
    dispatch *d = arg;
    if (!d->resume)
        d->resume = coe_loop_after(d->loop, 0, resume_fire, d);
}

/* Sends out what b holds; the client may have gone meanwhile, which is fine. Past a
 * quarter of the client's bound, a backend that can pause stops taking in the answer
 * until the client has read most of it (backpressure); past the bound, the stream
 * ends with an error. */
static void send_buf(dispatch *d, coe_buf *b)
{
    if (b->err && !d->cut) {
        /* A chunk with a piece missing must not go out: end the stream instead. */
        d->cut_oom = d->cut = true;
        d->cut_timer = coe_loop_after(d->loop, 0, cut_fire, d);
    } else if (b->len && !d->cut) {
        if (coe_exchange_write(d->ex, b->data, b->len) == COE_ERANGE) {
            /* Stop the expert from the loop, not from within its own callback. */
            d->cut = true;
            d->cut_timer = coe_loop_after(d->loop, 0, cut_fire, d);
        } else if (!d->paused && d->call && d->backend->pause &&
                   coe_exchange_backlog(d->ex) > d->ex->max_pending / 4) {
            d->paused = true;
            d->backend->pause(d->loop, d->call, true);
            coe_exchange_on_drained(d->ex, on_drained, d);
        }
    }
    coe_buf_free(b);
}

/* The answer is this expert's from now on: no more retries. A stream's head goes
 * out at once; a whole body goes out with its head when it is complete. */
static void commit(dispatch *d)
{
    if (d->committed)
        return;
    d->committed = true;
    snprintf(d->reply.model, sizeof d->reply.model, "%s", current_expert(d)->name);
    if (d->req->stream)
        coe_exchange_head(d->ex, 200, true, current_expert(d)->name, 0);
}

/* Ends the request with an error before anything was sent. */
/* Answers (not streamed) with the body built in b, or with the fixed out-of-memory 503
 * when building it failed (src marks a second buffer the body was made from). */
static void respond_built(dispatch *d, int status, long retry_after_s, const coe_buf *b, const coe_buf *src)
{
    if (b->err || (src && src->err))
        coe_exchange_respond(d->ex, 503, current_expert(d)->name, 1, coe_openai_oom_body,
                             strlen(coe_openai_oom_body));
    else
        coe_exchange_respond(d->ex, status, current_expert(d)->name, retry_after_s, b->data, b->len);
}

/* then: what the fallbacks said, after f (the chosen expert's failure), or NULL. */
static void fail_request(dispatch *d, const coe_failure *f, const char *then)
{
    coe_api_error e;
    coe_api_error_set(&e, f->status, coe_error_type(f->status), NULL, f->param[0] ? f->param : NULL, "%s%s",
                      f->message, then ? then : "");
    coe_buf b = COE_BUF_INIT;
    coe_openai_error(&b, &e, false);
    long retry_after_s = f->status == 503 ? 1 : f->retry_after_ms > 0 ? (f->retry_after_ms + 999) / 1000 : 0;
    respond_built(d, f->status, retry_after_s, &b, NULL);
    coe_buf_free(&b);
    free_dispatch(d);
}

static const coe_sink_ops sink_ops;
static void try_next(dispatch *d);

static void record_failure(dispatch *d, const coe_failure *f)
{
    coe_expert_cfg *e = current_expert(d);
    if (!guarded(e) || f->kind == COE_FAIL_FINAL)
        return;
    if (coe_breaker_failure(&e->breaker, d->trial, e->breaker_failures, e->breaker_cooldown_ms, coe_now_ms())) {
        coe_log(COE_LOG_WARN, "expert '%s': circuit opened for %ld ms after %s", e->name, e->breaker_cooldown_ms,
                d->trial ? "its trial request failed" : "failures in a row");
        coe_metrics_expert(e->name, COE_EXPERT_CIRCUIT_OPENED, 1);
    }
    d->trial = false;
}

static void attempt_start(dispatch *d)
{
    coe_expert_cfg *e = current_expert(d);
    coe_choices_free(&d->choices); /* of an attempt that failed */
    if (guarded(e) && !coe_breaker_allow(&e->breaker, coe_now_ms(), &d->trial)) {
        /* A retry that finds the circuit open keeps the failure that caused it. */
        if (d->attempt == 0)
            coe_failure_set(&d->last, COE_FAIL_NEXT, 503, "expert '%s' is failing: its circuit is open", e->name);
        coe_metrics_expert(e->name, COE_EXPERT_SHORT_CIRCUITED, 1);
        d->attempt = e->retries + 1; /* no retry while it is open */
        try_next(d);
        return;
    }
    if (e->max_concurrency > 0) {
        if (atomic_fetch_add(&e->inflight, 1) >= e->max_concurrency) {
            atomic_fetch_sub(&e->inflight, 1);
            coe_failure_set(&d->last, COE_FAIL_NEXT, 503, "expert '%s' is at its concurrency limit (%d)",
                            e->name, e->max_concurrency);
            coe_metrics_expert(e->name, COE_EXPERT_FAILED, 1);
            d->attempt = e->retries; /* no point retrying at once */
            try_next(d);
            return;
        }
    } else {
        atomic_fetch_add(&e->inflight, 1);
    }
    d->holds_slot = true;
    d->backend = coe_backend_for(e);
    d->attempt++;
    int rc = d->backend->start(d->loop, e, d->req, &d->sink, &d->call);
    if (rc) {
        release_slot(d);
        d->call = NULL;
        coe_failure_set(&d->last, COE_FAIL_NEXT, 502, "expert '%s' could not start: %s", e->name,
                        coe_strerror(rc));
        coe_metrics_expert(e->name, COE_EXPERT_FAILED, 1);
        record_failure(d, &d->last);
        try_next(d);
    }
}

static void retry_fire(void *arg)
{
    dispatch *d = arg;
    d->retry = NULL;
    attempt_start(d);
}

/* Each worker thread draws its own jitter (a shared state would be a data race). */
static _Thread_local uint64_t jitter_state;

/* Jittered exponential backoff: uniform in [b/2, b] with b = base * 2^(attempt-1). */
static long backoff_ms(const coe_expert_cfg *e, int attempt)
{
    long b = e->retry_backoff_ms << (attempt - 1 < 10 ? attempt - 1 : 10);
    if (b <= 1)
        return b;
    if (!jitter_state)
        jitter_state = (uint64_t)coe_now_us() ^ (uint64_t)(uintptr_t)&jitter_state;
    return b / 2 + (long)(coe_splitmix64(&jitter_state) % (uint64_t)(b / 2 + 1));
}

/* After a failure before commit: retry, fall back, or give up. */
static void try_next(dispatch *d)
{
    coe_expert_cfg *e = current_expert(d);
    if (d->last.kind == COE_FAIL_FINAL) {
        fail_request(d, &d->last, NULL);
        return;
    }
    if (d->last.kind == COE_FAIL_RETRY && d->attempt <= e->retries) {
        long wait = d->last.retry_after_ms >= 0 ? d->last.retry_after_ms : backoff_ms(e, d->attempt);
        if (d->last.retry_after_ms <= e->max_retry_after_ms) {
            coe_debug("expert '%s' failed (%s); retry %d in %ld ms", e->name, d->last.message, d->attempt, wait);
            d->retry = coe_loop_after(d->loop, wait, retry_fire, d);
            if (d->retry) {
                coe_metrics_expert(e->name, COE_EXPERT_RETRIED, 1);
                return;
            }
        }
    }
    /* When every candidate has failed, the client hears the chosen expert's reason
     * first (a fallback's is rarely what went wrong), then each fallback's. */
    if (d->cand == 0)
        d->first = d->last;
    else
        coe_buf_printf(&d->then, "; then fallback %s", d->last.message);
    if (d->cand + 1 < d->n_candidates) {
        coe_metrics_expert(e->name, COE_EXPERT_FELL_BACK, 1);
        coe_info("expert '%s' failed (%s); falling back to '%s'", e->name, d->last.message,
                 d->cfg->experts[d->candidates[d->cand + 1]].name);
        d->cand++;
        d->attempt = 0;
        attempt_start(d);
        return;
    }
    fail_request(d, &d->first, d->then.data);
}

static void on_delta(void *ctx, const coe_delta *delta)
{
    dispatch *d = ctx;
    commit(d);
    coe_buf b = COE_BUF_INIT;
    coe_reply_delta(&b, &d->reply, delta);
    send_buf(d, &b);
}

static void on_choice(void *ctx, const coe_delta *whole)
{
    dispatch *d = ctx;
    coe_choices_add(&d->choices, whole);
}

static void on_result(void *ctx, const char *json, size_t len)
{
    dispatch *d = ctx;
    coe_buf_reset(&d->result);
    coe_buf_append(&d->result, json, len);
}

static void on_usage(void *ctx, const coe_usage *u)
{
    dispatch *d = ctx;
    d->usage = *u;
    d->have_usage = true;
    coe_exchange_set_usage(d->ex, u);
}

static void on_done(void *ctx)
{
    dispatch *d = ctx;
    d->call = NULL;
    if (d->cut) {
        end_cut(d);
        free_dispatch(d);
        return;
    }
    const char *name = current_expert(d)->name;
    if (guarded(current_expert(d)))
        coe_breaker_success(&current_expert(d)->breaker, d->trial);
    d->trial = false;
    coe_metrics_expert(name, COE_EXPERT_ANSWERED, 1);
    if (d->have_usage) {
        coe_metrics_expert(name, COE_EXPERT_PROMPT_TOKENS, d->usage.prompt_tokens);
        coe_metrics_expert(name, COE_EXPERT_COMPLETION_TOKENS, d->usage.completion_tokens);
    }
    coe_buf b = COE_BUF_INIT;
    if (d->req->stream) {
        commit(d);
        coe_reply_stream_end(&b, &d->reply, d->have_usage ? &d->usage : NULL);
        send_buf(d, &b);
        if (d->cut)
            end_cut(d);
        else
            coe_exchange_finish(d->ex);
    } else if (d->req->endpoint == COE_EP_EMBEDDINGS) {
        commit(d);
        respond_built(d, 200, 0, &d->result, NULL); /* the expert's whole answer, as it is */
    } else {
        commit(d);
        if (d->choices.err)
            b.err = d->choices.err;
        else
            coe_reply_body(&b, &d->reply, &d->choices, d->have_usage ? &d->usage : NULL);
        respond_built(d, 200, 0, &b, NULL);
        coe_buf_free(&b);
    }
    free_dispatch(d);
}

static void on_fail(void *ctx, const coe_failure *f)
{
    dispatch *d = ctx;
    d->call = NULL;
    if (d->cut) {
        end_cut(d);
        free_dispatch(d);
        return;
    }
    release_slot(d);
    coe_metrics_expert(current_expert(d)->name, COE_EXPERT_FAILED, 1);
    record_failure(d, f);
    if (!d->committed) {
        d->last = *f;
        try_next(d);
        return;
    }
    /* Headers are out: the error travels in the stream, then [DONE]. */
    coe_log(COE_LOG_WARN, "expert '%s' failed mid-stream: %s", current_expert(d)->name, f->message);
    coe_api_error e;
    coe_api_error_set(&e, f->status, coe_error_type(f->status), NULL, f->param[0] ? f->param : NULL, "%s",
                      f->message);
    coe_buf b = COE_BUF_INIT;
    if (d->req->stream)
        coe_reply_stream_error(&b, &d->reply, &e);
    send_buf(d, &b);
    if (d->cut)
        end_cut(d);
    else
        coe_exchange_finish(d->ex);
    free_dispatch(d);
}

static void on_note(void *ctx, const char *header, const char *value)
{
    dispatch *d = ctx;
    if (strcmp(header, "X-Coegate-Fusion") == 0)
        coe_exchange_set_fusion(d->ex, value);
}

static const coe_sink_ops sink_ops = {on_delta, on_choice, on_result, on_usage, on_done, on_fail, on_note};

static void start_task(void *arg)
{
    dispatch *d = arg;
    d->ex->owner = d;
    attempt_start(d);
}

int coe_dispatch_start(coe_loop *loop, coe_config *cfg, coe_request *req, int expert, const char *id,
                       coe_exchange *ex)
{
    dispatch *d = calloc(1, sizeof *d);
    if (!d)
        return COE_ENOMEM;
    d->loop = loop;
    d->cfg = coe_config_ref(cfg);
    d->req = req;
    d->ex = coe_exchange_ref(ex);
    d->sink.ops = &sink_ops;
    d->sink.ctx = d;
    coe_reply_init(&d->reply, req, id);
    const coe_expert_cfg *e = &cfg->experts[expert];
    d->candidates[d->n_candidates++] = expert;
    for (int i = 0; i < e->n_fallbacks && d->n_candidates < 65; i++)
        if ((req->needs & ~cfg->experts[e->fallbacks[i]].capabilities) == 0) /* one that can serve it */
            d->candidates[d->n_candidates++] = e->fallbacks[i];
    if (coe_loop_is_current(loop)) {
        start_task(d);
        return 0;
    }
    int rc = coe_loop_post(loop, start_task, d);
    if (rc) {
        d->req = NULL; /* still the caller's on failure */
        free_dispatch(d);
    }
    return rc;
}

void coe_dispatch_cancel(coe_exchange *ex)
{
    dispatch *d = ex->owner;
    if (!d)
        return;
    if (d->trial) /* the client left before the trial ended: let another request try */
        atomic_store(&current_expert(d)->breaker.trial, false);
    if (d->call)
        d->backend->cancel(d->loop, d->call);
    d->call = NULL;
    free_dispatch(d);
}
