/* Continuous batching over sequences: see experts/sched.h. The schedulers whose
 * engines share a thread team (experts/threads.h) share one driver thread: their steps
 * could not overlap anyway, and one thread stepping them in turn keeps a fusion group
 * in step (the router's batch of every fused sequence, then each expert's batch of the
 * sequences that selected it) where separate threads would each wake for whichever
 * sequence came back first. The driver's lock guards the lists and each sequence's
 * pending tokens; the engine call and the callbacks run without it, so callers (on their
 * own threads or in callbacks) can feed while a step runs. */
#include "experts/sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "experts/engine.h"
#include "experts/threads.h"

#define PREFILL_PER_STEP 512 /* prompt tokens per step, so decoding sequences keep going */

typedef struct driver {
    int threads;          /* the team size it serves; under drivers_mu with refs */
    int refs;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* work or stop */
    pthread_cond_t idle;  /* a step has ended (closers wait for theirs) */
    bool stop;
    coe_sched **list;     /* under mu */
    int n, cap;
    int next;             /* under mu: where the next search for work starts */
    coe_sched *running;   /* under mu: the scheduler whose step is under way */
} driver;

struct coe_seq {
    coe_sched *s;
    coe_kv *kv;
    coe_seq_fn fn;
    coe_seq_release_fn release;
    void *ctx;
    atomic_bool closed;
    atomic_int len;       /* positions held or fed */
    /* under the driver's mu */
    int32_t *pending;
    int n_pending, cap_pending;
    bool busy;            /* a feed has not had its callback yet */
    /* driver thread only */
    int row;              /* logits row in this step, -1 for none */
    bool in_step;
};

struct coe_sched {
    const coe_model *m;
    coe_engine *engine;
    driver *d;
    int n_ctx, max_batch, max_queue;
    coe_seq **admitted;   /* under mu: decoding */
    int n_admitted;
    coe_seq **waiting;    /* under mu: oldest first */
    int n_waiting;
    int next_first;       /* under mu: where the next step starts taking prompt tokens */
    atomic_int batch_max;
    atomic_long steps;
    /* driver thread only */
    int32_t *tokens;
    coe_kv **kvs;
    bool *want;
    float *logits, *hidden;
    coe_seq **in_batch;
    coe_seq **freeing;
};

static void seq_free(coe_seq *q)
{
    coe_kv_free(&q->kv);
    free(q->pending);
    coe_seq_release_fn release = q->release;
    void *ctx = q->ctx;
    free(q);
    if (release)
        release(ctx);
}

/* Under mu: moves closed sequences out of the lists into s->freeing; their count. */
static int take_closed(coe_sched *s)
{
    int n = 0;
    for (int i = 0; i < s->n_admitted; i++)
        if (atomic_load(&s->admitted[i]->closed)) {
            s->freeing[n++] = s->admitted[i];
            memmove(s->admitted + i, s->admitted + i + 1, (size_t)(s->n_admitted - i - 1) * sizeof *s->admitted);
            s->n_admitted--, i--;
        }
    for (int i = 0; i < s->n_waiting; i++)
        if (atomic_load(&s->waiting[i]->closed)) {
            s->freeing[n++] = s->waiting[i];
            memmove(s->waiting + i, s->waiting + i + 1, (size_t)(s->n_waiting - i - 1) * sizeof *s->waiting);
            s->n_waiting--, i--;
        }
    while (s->n_waiting > 0 && s->n_admitted < s->max_batch) {
        s->admitted[s->n_admitted++] = s->waiting[0];
        memmove(s->waiting, s->waiting + 1, (size_t)--s->n_waiting * sizeof *s->waiting);
    }
    return n;
}

/* Under mu: the step's batch from the admitted sequences' pending tokens. A sequence's
 * feed is wanted (its logits computed) when its last token is in. Decoding tokens go
 * first; prompts share what is left of the budget, starting where the last step stopped. */
static int build_batch(coe_sched *s, int *n_seq)
{
    int n = 0, rows = 0, budget = PREFILL_PER_STEP, ns = 0;
    for (int j = 0; j < s->n_admitted; j++) {
        coe_seq *q = s->admitted[(s->next_first + j) % s->n_admitted];
        q->row = -1;
        q->in_step = false;
        if (q->n_pending == 0 || atomic_load(&q->closed))
            continue;
        int k = q->n_pending == 1 ? 1 : q->n_pending < budget ? q->n_pending : budget;
        if (k == 0)
            continue;
        for (int i = 0; i < k; i++) {
            s->tokens[n] = q->pending[i];
            s->kvs[n] = q->kv;
            s->want[n] = i == k - 1 && k == q->n_pending;
            n++;
        }
        if (k == q->n_pending)
            q->row = rows++;
        budget -= k < budget ? k : budget;
        memmove(q->pending, q->pending + k, (size_t)(q->n_pending - k) * sizeof *q->pending);
        q->n_pending -= k;
        q->in_step = true;
        s->in_batch[ns++] = q;
    }
    if (s->n_admitted)
        s->next_first = (s->next_first + 1) % s->n_admitted;
    *n_seq = ns;
    return n;
}

/* Driver thread, without the lock: frees what take_closed gathered and runs the step
 * build_batch made, then the callbacks of the sequences whose feeds are complete. */
static void step(coe_sched *s, int n, int n_seq, int n_free)
{
    const int V = s->m->n_vocab, E = s->m->n_embd;
    for (int i = 0; i < n_free; i++)
        seq_free(s->freeing[i]);
    if (n == 0)
        return;
    if (n_seq > atomic_load(&s->batch_max))
        atomic_store(&s->batch_max, n_seq);
    atomic_fetch_add(&s->steps, 1);
    coe_batch b = {n, s->tokens, s->kvs, s->want, s->hidden};
    coe_buf diag = COE_BUF_INIT;
    int rc = coe_engine_forward(s->engine, &b, s->logits, &diag);
    for (int i = 0; i < n_seq; i++) {
        coe_seq *q = s->in_batch[i];
        if (q->row < 0 && !rc)
            continue; /* a prompt that goes on in the next step */
        pthread_mutex_lock(&s->d->mu);
        q->busy = false;
        q->n_pending = 0;
        pthread_mutex_unlock(&s->d->mu);
        if (atomic_load(&q->closed))
            continue;
        if (rc)
            q->fn(q->ctx, q, NULL, NULL, diag.data ? diag.data : coe_strerror(rc));
        else
            q->fn(q->ctx, q, s->logits + (size_t)q->row * (size_t)V, s->hidden + (size_t)q->row * (size_t)E, NULL);
    }
    coe_buf_free(&diag);
}

/* Steps the driver's schedulers in turn, each one step at a time, so that sequences
 * fed by another scheduler's callbacks join the next step of theirs together. */
static void *drive(void *arg)
{
    driver *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        coe_sched *s = NULL;
        int n = 0, n_seq = 0, n_free = 0;
        for (int k = 0; k < d->n && !s; k++) {
            int i = (d->next + k) % d->n;
            n_free = take_closed(d->list[i]);
            n = build_batch(d->list[i], &n_seq);
            if (n > 0 || n_free > 0) {
                s = d->list[i];
                d->next = (i + 1) % d->n;
            }
        }
        if (!s) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        d->running = s;
        pthread_mutex_unlock(&d->mu);
        step(s, n, n_seq, n_free);
        pthread_mutex_lock(&d->mu);
        d->running = NULL;
        pthread_cond_broadcast(&d->idle);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static pthread_mutex_t drivers_mu = PTHREAD_MUTEX_INITIALIZER;
static driver **drivers;
static int n_drivers;

static void driver_free(driver *d)
{
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    pthread_cond_destroy(&d->idle);
    free(d->list);
    free(d);
}

/* Adds s to the driver of its team size, starting one if there is none. */
static int driver_join(coe_sched *s, int threads)
{
    int rc = 0;
    pthread_mutex_lock(&drivers_mu);
    driver *d = NULL;
    for (int i = 0; i < n_drivers && !d; i++)
        if (drivers[i]->threads == threads)
            d = drivers[i];
    if (!d) {
        driver **grown = realloc(drivers, (size_t)(n_drivers + 1) * sizeof *drivers);
        if (grown)
            drivers = grown;
        if (!grown || !(d = calloc(1, sizeof *d)) || !(d->list = malloc(4 * sizeof *d->list))) {
            free(d);
            pthread_mutex_unlock(&drivers_mu);
            return COE_ENOMEM;
        }
        d->cap = 4; /* so that a new driver always takes its first scheduler */
        d->threads = threads;
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        pthread_cond_init(&d->idle, NULL);
        if (pthread_create(&d->thread, NULL, drive, d) != 0) {
            driver_free(d);
            pthread_mutex_unlock(&drivers_mu);
            return COE_ENOMEM;
        }
        drivers[n_drivers++] = d;
    }
    pthread_mutex_lock(&d->mu);
    if (d->n == d->cap) {
        int cap = 2 * d->cap;
        coe_sched **l = realloc(d->list, (size_t)cap * sizeof *l);
        if (l) {
            d->list = l;
            d->cap = cap;
        } else {
            rc = COE_ENOMEM;
        }
    }
    if (!rc)
        d->list[d->n++] = s;
    pthread_mutex_unlock(&d->mu);
    if (!rc) {
        d->refs++;
        s->d = d;
    }
    pthread_mutex_unlock(&drivers_mu);
    return rc;
}

/* Takes s off its driver once no step of s is under way; the last one out stops it. */
static void driver_leave(coe_sched *s)
{
    driver *d = s->d;
    pthread_mutex_lock(&drivers_mu);
    pthread_mutex_lock(&d->mu);
    for (int i = 0; i < d->n; i++)
        if (d->list[i] == s) {
            memmove(d->list + i, d->list + i + 1, (size_t)(d->n - i - 1) * sizeof *d->list);
            d->n--;
            break;
        }
    d->next = 0;
    while (d->running == s)
        pthread_cond_wait(&d->idle, &d->mu);
    bool last = --d->refs == 0;
    if (last) {
        d->stop = true;
        pthread_cond_broadcast(&d->cv);
        for (int i = 0; i < n_drivers; i++)
            if (drivers[i] == d) {
                drivers[i] = drivers[--n_drivers];
                break;
            }
    }
    pthread_mutex_unlock(&d->mu);
    pthread_mutex_unlock(&drivers_mu);
    if (last) {
        pthread_join(d->thread, NULL);
        driver_free(d);
    }
    s->d = NULL;
}

const char *coe_sched_where(const coe_sched *s)
{
    return coe_engine_where(s->engine);
}

int coe_sched_open(coe_sched **out, const coe_model *m, const coe_sched_opts *o, coe_buf *diag)
{
    *out = NULL;
    coe_sched *s = calloc(1, sizeof *s);
    if (!s)
        return COE_ENOMEM;
    s->m = m;
    s->n_ctx = o->n_ctx;
    s->max_batch = o->max_batch > 0 ? o->max_batch : 8;
    s->max_queue = o->max_queue >= 0 ? o->max_queue : 64;
    int cap = s->max_batch + PREFILL_PER_STEP, all = s->max_batch + s->max_queue;
    int rc = coe_engine_open(&s->engine, m, o->device, o->threads, o->n_ctx, diag);
    if (rc) {
        free(s);
        return rc;
    }
    s->admitted = calloc((size_t)s->max_batch, sizeof *s->admitted);
    s->waiting = calloc((size_t)(s->max_queue + 1), sizeof *s->waiting);
    s->tokens = calloc((size_t)cap, sizeof *s->tokens);
    s->kvs = calloc((size_t)cap, sizeof *s->kvs);
    s->want = calloc((size_t)cap, sizeof *s->want);
    s->logits = malloc((size_t)s->max_batch * (size_t)m->n_vocab * sizeof *s->logits);
    s->hidden = malloc((size_t)s->max_batch * (size_t)m->n_embd * sizeof *s->hidden);
    s->in_batch = calloc((size_t)s->max_batch, sizeof *s->in_batch);
    s->freeing = calloc((size_t)all, sizeof *s->freeing);
    if (!s->engine || !s->admitted || !s->waiting || !s->tokens || !s->kvs || !s->want || !s->logits || !s->hidden ||
        !s->in_batch || !s->freeing || driver_join(s, coe_threads_resolve(o->threads)) != 0) {
        coe_sched_close(&s);
        return COE_ENOMEM;
    }
    *out = s;
    return 0;
}

void coe_sched_close(coe_sched **sp)
{
    coe_sched *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    if (s->d)
        driver_leave(s);
    for (int i = 0; i < s->n_admitted; i++)
        seq_free(s->admitted[i]);
    for (int i = 0; i < s->n_waiting; i++)
        seq_free(s->waiting[i]);
    coe_engine_free(&s->engine);
    free(s->admitted);
    free(s->waiting);
    free(s->tokens);
    free(s->kvs);
    free(s->want);
    free(s->logits);
    free(s->hidden);
    free(s->in_batch);
    free(s->freeing);
    free(s);
}

const coe_model *coe_sched_model(const coe_sched *s)
{
    return s->m;
}

int coe_sched_n_ctx(const coe_sched *s)
{
    return s->n_ctx;
}

int coe_seq_open(coe_sched *s, coe_seq **out, coe_seq_fn fn, coe_seq_release_fn release, void *ctx)
{
    *out = NULL;
    coe_seq *q = calloc(1, sizeof *q);
    if (!q)
        return COE_ENOMEM;
    q->s = s;
    q->fn = fn;
    q->release = release;
    q->ctx = ctx;
    q->row = -1;
    atomic_init(&q->closed, false);
    atomic_init(&q->len, 0);
    if (!(q->kv = coe_kv_new(s->m))) {
        free(q);
        return COE_ENOMEM;
    }
    int rc = 0;
    pthread_mutex_lock(&s->d->mu);
    if (s->n_admitted < s->max_batch && s->n_waiting == 0)
        s->admitted[s->n_admitted++] = q;
    else if (s->n_waiting < s->max_queue)
        s->waiting[s->n_waiting++] = q;
    else
        rc = COE_EBUSY;
    pthread_mutex_unlock(&s->d->mu);
    if (rc) {
        q->release = NULL;
        seq_free(q);
        return rc;
    }
    *out = q;
    return 0;
}

int coe_seq_feed(coe_seq *q, const int32_t *tokens, int n)
{
    coe_sched *s = q->s;
    if (n <= 0)
        return COE_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&s->d->mu);
    if (q->busy) {
        rc = COE_EBUSY;
    } else if (atomic_load(&q->len) + n > s->n_ctx) {
        rc = COE_ERANGE;
    } else if (q->n_pending + n > q->cap_pending) {
        int cap = (q->n_pending + n) * 2;
        int32_t *p = realloc(q->pending, (size_t)cap * sizeof *p);
        if (p) {
            q->pending = p;
            q->cap_pending = cap;
        } else {
            rc = COE_ENOMEM;
        }
    }
    if (!rc) {
        memcpy(q->pending + q->n_pending, tokens, (size_t)n * sizeof *tokens);
        q->n_pending += n;
        q->busy = true;
        atomic_fetch_add(&q->len, n);
        pthread_cond_signal(&s->d->cv);
    }
    pthread_mutex_unlock(&s->d->mu);
    return rc;
}

int coe_seq_len(const coe_seq *q)
{
    return atomic_load(&q->len);
}

void coe_seq_close(coe_seq *q)
{
    if (!q)
        return;
    coe_sched *s = q->s;
    pthread_mutex_lock(&s->d->mu);
    atomic_store(&q->closed, true);
    pthread_cond_signal(&s->d->cv);
    pthread_mutex_unlock(&s->d->mu);
}

void coe_sched_stats_get(coe_sched *s, coe_sched_stats *out)
{
    pthread_mutex_lock(&s->d->mu);
    out->active = s->n_admitted;
    out->queued = s->n_waiting;
    pthread_mutex_unlock(&s->d->mu);
    out->batch_max = atomic_load(&s->batch_max);
    out->steps = atomic_load(&s->steps);
}
