#include "common/loop.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/err.h"
#include "common/log.h"

typedef struct task {
    coe_loop_fn fn;
    void *arg;
    struct task *next;
} task;

struct coe_timer {
    long long due_ms;
    unsigned long long seq; /* equal deadlines fire in the order they were set */
    coe_loop_fn fn;         /* NULL once cancelled */
    void *arg;
};

typedef struct transfer {
    coe_transfer_done_fn done;
    void *arg;
} transfer;

struct coe_loop {
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu; /* guards the task queue and stop */
    task *head, *tail;
    bool stop;
    /* timers: a binary min-heap, touched by the loop thread alone */
    coe_timer **heap;
    size_t n_heap, cap_heap;
    unsigned long long seq;
};

static bool timer_before(const coe_timer *a, const coe_timer *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void heap_up(coe_loop *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_before(l->heap[i], l->heap[p]))
            break;
        coe_timer *t = l->heap[i];
        l->heap[i] = l->heap[p];
        l->heap[p] = t;
        i = p;
    }
}

static void heap_down(coe_loop *l, size_t i)
{
    for (;;) {
        size_t a = 2 * i + 1, b = a + 1, m = i;
        if (a < l->n_heap && timer_before(l->heap[a], l->heap[m]))
            m = a;
        if (b < l->n_heap && timer_before(l->heap[b], l->heap[m]))
            m = b;
        if (m == i)
            break;
        coe_timer *t = l->heap[i];
        l->heap[i] = l->heap[m];
        l->heap[m] = t;
        i = m;
    }
}

coe_timer *coe_loop_after(coe_loop *l, long ms, coe_loop_fn fn, void *arg)
{
    if (l->n_heap == l->cap_heap) {
        size_t cap = l->cap_heap ? l->cap_heap * 2 : 64;
        coe_timer **h = realloc(l->heap, cap * sizeof *h);
        if (!h)
            return NULL;
        l->heap = h;
        l->cap_heap = cap;
    }
    coe_timer *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    t->due_ms = coe_now_ms() + (ms > 0 ? ms : 0);
    t->seq = l->seq++;
    t->fn = fn;
    t->arg = arg;
    l->heap[l->n_heap++] = t;
    heap_up(l, l->n_heap - 1);
    return t;
}

void coe_loop_cancel(coe_loop *l, coe_timer *t)
{
    (void)l;
    if (t)
        t->fn = NULL; /* freed when it reaches the top of the heap */
}

/* Runs due timers; returns ms until the next one (or max_wait). */
static long run_timers(coe_loop *l, long max_wait)
{
    for (;;) {
        if (l->n_heap == 0)
            return max_wait;
        coe_timer *t = l->heap[0];
        long long now = coe_now_ms();
        if (t->fn && t->due_ms > now) {
            long wait = (long)(t->due_ms - now);
            return wait < max_wait ? wait : max_wait;
        }
        l->heap[0] = l->heap[--l->n_heap];
        heap_down(l, 0);
        if (t->fn)
            t->fn(t->arg);
        free(t);
    }
}

int coe_loop_post(coe_loop *l, coe_loop_fn fn, void *arg)
{
    task *t = malloc(sizeof *t);
    if (!t)
        return COE_ENOMEM;
    t->fn = fn;
    t->arg = arg;
    t->next = NULL;
    pthread_mutex_lock(&l->mu);
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    pthread_mutex_unlock(&l->mu);
    curl_multi_wakeup(l->multi);
    return 0;
}

int coe_loop_add(coe_loop *l, CURL *easy, coe_transfer_done_fn done, void *arg)
{
    transfer *x = malloc(sizeof *x);
    if (!x)
        return COE_ENOMEM;
    x->done = done;
    x->arg = arg;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
    if (curl_multi_add_handle(l->multi, easy) != CURLM_OK) {
        free(x);
        return COE_EIO;
    }
    return 0;
}

void coe_loop_remove(coe_loop *l, CURL *easy)
{
    transfer *x = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(l->multi, easy);
    free(x);
}

/* Runs queued tasks; returns whether there were any. */
static bool run_tasks(coe_loop *l, bool *stop)
{
    pthread_mutex_lock(&l->mu);
    task *t = l->head;
    l->head = l->tail = NULL;
    *stop = l->stop;
    pthread_mutex_unlock(&l->mu);
    bool any = t != NULL;
    while (t) {
        task *next = t->next;
        if (!*stop)
            t->fn(t->arg);
        free(t);
        t = next;
    }
    return any;
}

static void *loop_main(void *arg)
{
    coe_loop *l = arg;
    for (;;) {
        bool stop;
        bool busy = run_tasks(l, &stop);
        if (stop)
            break;
        long wait = run_timers(l, 1000);
        int running = 0;
        curl_multi_perform(l->multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(l->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *easy = msg->easy_handle;
            CURLcode result = msg->data.result;
            transfer *x = NULL;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(l->multi, easy);
            if (x) {
                coe_transfer_done_fn done = x->done;
                void *darg = x->arg;
                free(x);
                done(darg, result); /* may add new transfers or free easy */
            }
            busy = true;
        }
        if (!busy)
            curl_multi_poll(l->multi, NULL, 0, (int)wait, NULL);
    }
    return NULL;
}

int coe_loop_open(coe_loop **out)
{
    *out = NULL;
    coe_loop *l = calloc(1, sizeof *l);
    if (!l)
        return COE_ENOMEM;
    l->multi = curl_multi_init();
    if (!l->multi) {
        free(l);
        return COE_ENOMEM;
    }
    pthread_mutex_init(&l->mu, NULL);
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        curl_multi_cleanup(l->multi);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return COE_EIO;
    }
    *out = l;
    return 0;
}

void coe_loop_close(coe_loop **lp)
{
    coe_loop *l = *lp;
    *lp = NULL;
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_mutex_unlock(&l->mu);
    curl_multi_wakeup(l->multi);
    pthread_join(l->thread, NULL);
    run_tasks(l, &(bool){false}); /* frees what is left, without running it */
    for (size_t i = 0; i < l->n_heap; i++)
        free(l->heap[i]);
    free(l->heap);
    curl_multi_cleanup(l->multi);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
