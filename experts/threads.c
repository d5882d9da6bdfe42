#include "experts/threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* Spins this many polls for the next job before sleeping: long enough to bridge the
 * gaps inside a decode step, short enough not to burn a core between requests. */
#define SPIN_POLLS 20000

struct coe_threads {
    int n;
    int refs;              /* shared teams: holders, under shared_mu */
    bool shared;
    pthread_mutex_t run_mu; /* one job at a time: callers of a shared team take turns */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;       /* bumped once per job */
    atomic_int pending;    /* helpers still working on the current job */
    atomic_bool stop;
    coe_threads_fn fn;        /* written before gen is bumped, read after it is seen */
    void *ctx;
};

typedef struct helper_arg {
    coe_threads *p;
    int ith;
} helper_arg;

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *helper(void *arg)
{
    helper_arg a = *(helper_arg *)arg;
    free(arg);
    coe_threads *p = a.p;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int polls = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            if (++polls < SPIN_POLLS) {
                relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
                   !atomic_load_explicit(&p->stop, memory_order_acquire))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        seen = g;
        p->fn(p->ctx, a.ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

coe_threads *coe_threads_new(int n_threads)
{
    n_threads = coe_threads_resolve(n_threads);
    coe_threads *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = n_threads;
    p->refs = 1;
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        helper_arg *a = malloc(sizeof *a);
        if (a) {
            a->p = p;
            a->ith = i;
        }
        if (!a || pthread_create(&p->threads[i], NULL, helper, a) != 0) {
            free(a);
            p->n = i; /* fewer helpers is still correct */
            break;
        }
    }
    return p;
}

int coe_threads_count(const coe_threads *p)
{
    return p->n;
}

void coe_threads_run(coe_threads *p, coe_threads_fn fn, void *ctx)
{
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    for (int polls = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; polls++) {
        if (polls < SPIN_POLLS)
            relax();
        else
            sched_yield();
    }
    pthread_mutex_unlock(&p->run_mu);
}

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static coe_threads *shared_teams[16];
static int n_shared;

int coe_threads_resolve(int n_threads)
{
    if (n_threads > 0)
        return n_threads;
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
}

coe_threads *coe_threads_shared(int n_threads)
{
    n_threads = coe_threads_resolve(n_threads);
    coe_threads *p = NULL;
    pthread_mutex_lock(&shared_mu);
    for (int i = 0; i < n_shared && !p; i++)
        if (shared_teams[i]->n == n_threads) {
            p = shared_teams[i];
            p->refs++;
        }
    if (!p && (p = coe_threads_new(n_threads)) && n_shared < 16) {
        p->shared = true;
        shared_teams[n_shared++] = p;
    }
    pthread_mutex_unlock(&shared_mu);
    return p;
}

void coe_threads_free(coe_threads **pp)
{
    coe_threads *p = *pp;
    *pp = NULL;
    if (!p)
        return;
    if (p->shared) {
        pthread_mutex_lock(&shared_mu);
        bool last = --p->refs == 0;
        for (int i = 0; last && i < n_shared; i++)
            if (shared_teams[i] == p)
                shared_teams[i] = shared_teams[--n_shared];
        pthread_mutex_unlock(&shared_mu);
        if (!last)
            return;
    }
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, true, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
    *pp = NULL;
}
