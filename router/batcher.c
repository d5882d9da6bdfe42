#include "router/batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

/* A waiting query: on its caller's stack until done, or (submitted) on the heap until
 * its done function has run. */
typedef struct slot {
    const coe_features *f;
    float *probs;
    int rc;
    bool done;
    coe_batch_done_fn fn;
    void *arg;
} slot;

struct coe_router_batcher {
    coe_batch_fn fn;
    void *ctx;
    int n_classes, window_us, max_batch;
    pthread_mutex_t mu;
    pthread_cond_t work, done; /* work: queries came (or stop); done: a batch finished */
    pthread_t thread;
    bool stop;
    slot **pending; /* max_batch waiting; more callers wait for room */
    int n_pending;
    /* the batcher thread's own */
    slot **taken;
    const coe_features **fs;
    float *probs;
    coe_batcher_stats stats;
};

static void deadline_after(struct timespec *t, int us)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_nsec += (long)us % 1000000 * 1000;
    t->tv_sec += us / 1000000 + t->tv_nsec / 1000000000;
    t->tv_nsec %= 1000000000;
}

static void *drive(void *arg)
{
    coe_router_batcher *b = arg;
    coe_buf diag = COE_BUF_INIT;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->stop && b->n_pending == 0)
            pthread_cond_wait(&b->work, &b->mu);
        if (b->n_pending == 0)
            break; /* stopped, nothing left */
        if (b->window_us > 0 && !b->stop) {
            struct timespec until;
            deadline_after(&until, b->window_us);
            while (!b->stop && b->n_pending < b->max_batch &&
                   pthread_cond_timedwait(&b->work, &b->mu, &until) != ETIMEDOUT) {
            }
        }
        int n = b->n_pending;
        memcpy(b->taken, b->pending, (size_t)n * sizeof *b->taken);
        b->n_pending = 0;
        pthread_cond_broadcast(&b->done); /* room for callers waiting to queue */
        pthread_mutex_unlock(&b->mu);
        for (int i = 0; i < n; i++)
            b->fs[i] = b->taken[i]->f;
        coe_buf_reset(&diag);
        int rc = b->fn(b->ctx, b->fs, n, b->probs, &diag);
        for (int i = 0; i < n; i++) {
            if (!rc)
                memcpy(b->taken[i]->probs, b->probs + (size_t)i * (size_t)b->n_classes,
                       (size_t)b->n_classes * sizeof *b->probs);
            if (b->taken[i]->fn) { /* submitted: its caller is not waiting here */
                b->taken[i]->fn(b->taken[i]->arg, rc);
                free(b->taken[i]);
                b->taken[i] = NULL;
            }
        }
        pthread_mutex_lock(&b->mu);
        for (int i = 0; i < n; i++)
            if (b->taken[i]) {
                b->taken[i]->rc = rc;
                b->taken[i]->done = true;
            }
        b->stats.batches++;
        b->stats.queries += n;
        b->stats.largest = n > b->stats.largest ? n : b->stats.largest;
        pthread_cond_broadcast(&b->done);
    }
    pthread_mutex_unlock(&b->mu);
    coe_buf_free(&diag);
    return NULL;
}

int coe_router_batcher_open(coe_router_batcher **out, coe_batch_fn fn, void *ctx, int n_classes, int window_us,
                            int max_batch)
{
    *out = NULL;
    if (n_classes <= 0 || max_batch <= 0 || window_us < 0)
        return COE_EINVAL;
    coe_router_batcher *b = calloc(1, sizeof *b);
    if (!b)
        return COE_ENOMEM;
    b->fn = fn, b->ctx = ctx, b->n_classes = n_classes, b->window_us = window_us, b->max_batch = max_batch;
    b->pending = calloc((size_t)max_batch, sizeof *b->pending);
    b->taken = calloc((size_t)max_batch, sizeof *b->taken);
    b->fs = calloc((size_t)max_batch, sizeof *b->fs);
    b->probs = malloc((size_t)max_batch * (size_t)n_classes * sizeof *b->probs);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, &ca);
    pthread_cond_init(&b->done, NULL);
    pthread_condattr_destroy(&ca);
    if (!b->pending || !b->taken || !b->fs || !b->probs || pthread_create(&b->thread, NULL, drive, b) != 0) {
        free(b->pending), free(b->taken), free(b->fs), free(b->probs);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->work);
        pthread_cond_destroy(&b->done);
        free(b);
        return COE_ENOMEM;
    }
    *out = b;
    return 0;
}

void coe_router_batcher_close(coe_router_batcher **pb)
{
    coe_router_batcher *b = *pb;
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->done);
    free(b->pending), free(b->taken), free(b->fs), free(b->probs);
    free(b);
    *pb = NULL;
}

int coe_router_batcher_submit(coe_router_batcher *b, const coe_features *f, float *probs, coe_batch_done_fn done,
                              void *arg)
{
    slot *s = malloc(sizeof *s);
    if (!s)
        return COE_ENOMEM;
    *s = (slot){f, probs, 0, false, done, arg};
    pthread_mutex_lock(&b->mu);
    while (!b->stop && b->n_pending == b->max_batch)
        pthread_cond_wait(&b->done, &b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        free(s);
        return COE_ECANCELED;
    }
    b->pending[b->n_pending++] = s;
    pthread_cond_signal(&b->work);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int coe_router_batcher_classify(coe_router_batcher *b, const coe_features *f, float *probs)
{
    slot s = {f, probs, 0, false, NULL, NULL};
    pthread_mutex_lock(&b->mu);
    while (!b->stop && b->n_pending == b->max_batch)
        pthread_cond_wait(&b->done, &b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return COE_ECANCELED;
    }
    b->pending[b->n_pending++] = &s;
    pthread_cond_signal(&b->work);
    while (!s.done)
        pthread_cond_wait(&b->done, &b->mu);
    pthread_mutex_unlock(&b->mu);
    return s.rc;
}

void coe_router_batcher_stats(coe_router_batcher *b, coe_batcher_stats *out)
{
    pthread_mutex_lock(&b->mu);
    *out = b->stats;
    pthread_mutex_unlock(&b->mu);
}
