#include "gateway/exchange.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

coe_exchange *coe_exchange_new(void (*wake)(void *arg), void *wake_arg)
{
    coe_exchange *ex = calloc(1, sizeof *ex);
    if (!ex)
        return NULL;
    pthread_mutex_init(&ex->mu, NULL);
    atomic_init(&ex->refs, 1);
    ex->wake = wake;
    ex->wake_arg = wake_arg;
    ex->max_pending = 16u << 20;
    return ex;
}

coe_exchange *coe_exchange_ref(coe_exchange *ex)
{
    atomic_fetch_add(&ex->refs, 1);
    return ex;
}

void coe_exchange_unref(coe_exchange **exp)
{
    coe_exchange *ex = *exp;
    *exp = NULL;
    if (!ex || atomic_fetch_sub(&ex->refs, 1) != 1)
        return;
    coe_buf_free(&ex->out);
    pthread_mutex_destroy(&ex->mu);
    free(ex);
}

/* Under mu. */
static void wake(coe_exchange *ex)
{
    if (ex->waiting && ex->wake) {
        ex->waiting = false;
        ex->wake(ex->wake_arg);
    }
}

/* Under mu. */
static void set_head(coe_exchange *ex, int status, bool sse, const char *expert, long retry_after_s)
{
    if (ex->head_ready)
        return;
    ex->head_ready = true;
    ex->status = status;
    ex->sse = sse;
    ex->retry_after_s = retry_after_s;
    snprintf(ex->expert, sizeof ex->expert, "%s", expert ? expert : "");
}

void coe_exchange_head(coe_exchange *ex, int status, bool sse, const char *expert, long retry_after_s)
{
    pthread_mutex_lock(&ex->mu);
    set_head(ex, status, sse, expert, retry_after_s);
    wake(ex);
    pthread_mutex_unlock(&ex->mu);
}

void coe_exchange_respond(coe_exchange *ex, int status, const char *expert, long retry_after_s,
                          const char *body, size_t len)
{
    pthread_mutex_lock(&ex->mu);
    if (!ex->head_ready && !ex->finished) {
        set_head(ex, status, false, expert, retry_after_s);
        coe_buf_append(&ex->out, body, len);
        ex->finished = true;
    }
    wake(ex);
    pthread_mutex_unlock(&ex->mu);
}

void coe_exchange_abort(coe_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    ex->client_gone = true;
    wake(ex);
    pthread_mutex_unlock(&ex->mu);
}

int coe_exchange_write(coe_exchange *ex, const char *p, size_t n)
{
    int rc = 0;
    pthread_mutex_lock(&ex->mu);
    if (ex->finished || ex->client_gone)
        rc = COE_ECANCELED;
    else if (ex->out.len + n > ex->max_pending)
        rc = COE_ERANGE;
    else if ((rc = coe_buf_append(&ex->out, p, n)) == 0)
        wake(ex);
    pthread_mutex_unlock(&ex->mu);
    return rc;
}

void coe_exchange_end_with_error(coe_exchange *ex, const char *p, size_t n, int log_status)
{
    pthread_mutex_lock(&ex->mu);
    if (!ex->finished && !ex->client_gone) {
        coe_buf_append(&ex->out, p, n);
        ex->log_status = log_status;
    }
    ex->finished = true;
    wake(ex);
    pthread_mutex_unlock(&ex->mu);
}

size_t coe_exchange_backlog(coe_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    size_t n = ex->out.len;
    pthread_mutex_unlock(&ex->mu);
    return n;
}

void coe_exchange_on_drained(coe_exchange *ex, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&ex->mu);
    ex->drained = fn;
    ex->drained_arg = arg;
    pthread_mutex_unlock(&ex->mu);
}

void coe_exchange_finish(coe_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    ex->finished = true;
    wake(ex);
    pthread_mutex_unlock(&ex->mu);
}

void coe_exchange_set_usage(coe_exchange *ex, const coe_usage *u)
{
    pthread_mutex_lock(&ex->mu);
    ex->usage = *u;
    ex->have_usage = true;
    pthread_mutex_unlock(&ex->mu);
}

bool coe_exchange_wait_head(coe_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    bool ready = ex->head_ready || ex->client_gone;
    if (!ready)
        ex->waiting = true;
    pthread_mutex_unlock(&ex->mu);
    return ready;
}

ssize_t coe_exchange_read(coe_exchange *ex, char *buf, size_t max)
{
    ssize_t n;
    void (*drained)(void *) = NULL;
    void *drained_arg = NULL;
    pthread_mutex_lock(&ex->mu);
    if (ex->client_gone) {
        n = COE_EXCHANGE_ABORT;
    } else if (ex->out.len > 0) {
        size_t k = ex->out.len < max ? ex->out.len : max;
        memcpy(buf, ex->out.data, k);
        coe_buf_consume(&ex->out, k);
        n = (ssize_t)k;
        if (ex->drained && ex->out.len <= ex->max_pending / 8) {
            drained = ex->drained;
            drained_arg = ex->drained_arg;
            ex->drained = NULL;
        }
    } else if (ex->finished) {
        n = COE_EXCHANGE_END;
    } else {
        ex->waiting = true; /* nothing yet: woken by the next write */
        n = 0;
    }
    pthread_mutex_unlock(&ex->mu);
    if (drained)
        drained(drained_arg);
    return n;
}

bool coe_exchange_detach(coe_exchange *ex)
{
    pthread_mutex_lock(&ex->mu);
    bool early = !ex->finished || ex->out.len > 0;
    if (early)
        ex->client_gone = true;
    ex->wake = NULL;
    ex->waiting = false;
    pthread_mutex_unlock(&ex->mu);
    return early;
}

void coe_exchange_set_fusion(coe_exchange *ex, const char *value)
{
    pthread_mutex_lock(&ex->mu);
    snprintf(ex->fusion, sizeof ex->fusion, "%s", value);
    pthread_mutex_unlock(&ex->mu);
}
