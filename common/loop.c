#include "common/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

#define EASY_POOL_MAX 256
#define MAX_WAIT_MS 1000

typedef struct task {
    coe_loop_fn fn;
    coe_loop_fn drop; /* called instead of fn when the loop closes first, or NULL */
    void *arg;
    struct task *next;
} task;

#define NOT_IN_HEAP ((size_t)-1)

struct coe_timer {
    long long due_ms;
    unsigned long long seq; /* equal deadlines fire in the order they were set */
    size_t idx;             /* position in the heap, NOT_IN_HEAP while it fires */
    coe_loop_fn fn;         /* NULL once cancelled while firing */
    void *arg;
};

typedef enum { WATCH_WAKE, WATCH_CURL, WATCH_USER, WATCH_IO } watch_kind;

struct coe_watch {
    watch_kind kind;
    int fd;
    coe_loop_fn fn;
    coe_loop_io_fn io_fn;   /* WATCH_IO */
    void *arg;
    bool dead;              /* removed; freed once the current batch of events is done */
    struct coe_watch *next_dead;
};

typedef struct transfer {
    coe_transfer_done_fn done;
    void *arg;
} transfer;

struct coe_loop {
    pthread_t thread;
    int epfd;
    coe_watch wake;         /* an eventfd: posted tasks and stop */
    CURLM *multi;
    long long curl_due_ms;  /* libcurl's timeout, -1 when none */
    pthread_mutex_t mu;     /* guards the task queue and stop */
    task *head, *tail;
    bool stop;
    /* loop thread only */
    coe_timer **heap;       /* a binary min-heap of timers */
    size_t n_heap, cap_heap;
    unsigned long long seq;
    coe_watch *dead;
    CURL *pool[EASY_POOL_MAX];
    int n_pool;
};

/* ---- timers ---- */

static bool timer_before(const coe_timer *a, const coe_timer *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void heap_up(coe_loop *l, size_t i);
static void heap_down(coe_loop *l, size_t i);

static void heap_swap(coe_loop *l, size_t a, size_t b)
{
    coe_timer *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->idx = a;
    l->heap[b]->idx = b;
}

/* Takes the timer at i out of the heap. */
static void heap_remove(coe_loop *l, size_t i)
{
    coe_timer *t = l->heap[i];
    t->idx = NOT_IN_HEAP;
    if (i != --l->n_heap) {
        l->heap[i] = l->heap[l->n_heap];
        l->heap[i]->idx = i;
        heap_down(l, i);
        heap_up(l, i);
    }
}

static void heap_up(coe_loop *l, size_t i)
{
    while (i > 0 && timer_before(l->heap[i], l->heap[(i - 1) / 2])) {
        heap_swap(l, i, (i - 1) / 2);
        i = (i - 1) / 2;
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
            return;
        heap_swap(l, i, m);
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
    t->idx = l->n_heap;
    l->heap[l->n_heap++] = t;
    heap_up(l, t->idx);
    return t;
}

void coe_loop_cancel(coe_loop *l, coe_timer *t)
{
    if (!t)
        return;
    if (t->idx == NOT_IN_HEAP) {
        t->fn = NULL; /* firing right now: freed once its function returns */
        return;
    }
    heap_remove(l, t->idx);
    free(t);
}

/* Runs due timers; returns the ms until the next one, at most max_wait. */
static long run_timers(coe_loop *l, long max_wait)
{
    while (l->n_heap > 0) {
        coe_timer *t = l->heap[0];
        long long now = coe_now_ms();
        if (t->due_ms > now) {
            long wait = (long)(t->due_ms - now);
            return wait < max_wait ? wait : max_wait;
        }
        heap_remove(l, 0);
        t->fn(t->arg);
        free(t);
    }
    return max_wait;
}

/* ---- tasks ---- */

int coe_loop_post(coe_loop *l, coe_loop_fn fn, void *arg)
{
    return coe_loop_post_or_drop(l, fn, NULL, arg);
}

int coe_loop_post_or_drop(coe_loop *l, coe_loop_fn fn, coe_loop_fn drop, void *arg)
{
    task *t = malloc(sizeof *t);
    if (!t)
        return COE_ENOMEM;
    t->fn = fn;
    t->drop = drop;
    t->arg = arg;
    t->next = NULL;
    pthread_mutex_lock(&l->mu);
    bool was_empty = l->head == NULL;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    pthread_mutex_unlock(&l->mu);
    if (was_empty) {
        /* An empty queue means the loop may sleep; one wake-up covers what follows. */
        uint64_t one = 1;
        ssize_t n = write(l->wake.fd, &one, sizeof one);
        (void)n;
    }
    return 0;
}

typedef struct call {
    coe_loop_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} call;

static void call_trampoline(void *arg)
{
    call *c = arg;
    c->fn(c->arg);
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

int coe_loop_call(coe_loop *l, coe_loop_fn fn, void *arg)
{
    call c = {fn, arg, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
    int rc = coe_loop_post(l, call_trampoline, &c);
    if (rc)
        return rc;
    pthread_mutex_lock(&c.mu);
    while (!c.done)
        pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    return 0;
}

int coe_loop_is_current(const coe_loop *l)
{
    return pthread_equal(pthread_self(), l->thread);
}

/* Runs queued tasks; returns false once the loop is told to stop. */
static bool run_tasks(coe_loop *l, bool run)
{
    pthread_mutex_lock(&l->mu);
    task *t = l->head;
    l->head = l->tail = NULL;
    bool stop = l->stop;
    pthread_mutex_unlock(&l->mu);
    while (t) {
        task *next = t->next;
        if (run && !stop)
            t->fn(t->arg);
        else if (t->drop)
            t->drop(t->arg);
        free(t);
        t = next;
    }
    return !stop;
}

/* ---- fd watches ---- */

static coe_watch *watch_add(coe_loop *l, watch_kind kind, int fd, uint32_t events)
{
    coe_watch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->kind = kind;
    w->fd = fd;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

static void watch_remove(coe_loop *l, coe_watch *w)
{
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL); /* may fail if already closed: fine */
    w->dead = true;
    w->next_dead = l->dead;
    l->dead = w;
}

coe_watch *coe_loop_watch(coe_loop *l, int fd, coe_loop_fn fn, void *arg)
{
    coe_watch *w = watch_add(l, WATCH_USER, fd, EPOLLIN);
    if (w) {
        w->fn = fn;
        w->arg = arg;
    }
    return w;
}

static uint32_t epoll_events(unsigned events)
{
    return (events & COE_IO_IN ? EPOLLIN : 0u) | (events & COE_IO_OUT ? EPOLLOUT : 0u) | EPOLLRDHUP;
}

coe_watch *coe_loop_watch_io(coe_loop *l, int fd, unsigned events, int exclusive, coe_loop_io_fn fn, void *arg)
{
    /* EPOLLEXCLUSIVE takes no EPOLLRDHUP (a listening socket has no peer anyway). */
    uint32_t ev = exclusive ? (epoll_events(events) & ~(uint32_t)EPOLLRDHUP) | EPOLLEXCLUSIVE : epoll_events(events);
    coe_watch *w = watch_add(l, WATCH_IO, fd, ev);
    if (w) {
        w->io_fn = fn;
        w->arg = arg;
    }
    return w;
}

int coe_loop_watch_set(coe_loop *l, coe_watch *w, unsigned events)
{
    struct epoll_event ev = {.events = epoll_events(events), .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev) == 0 ? 0 : COE_EIO;
}

void coe_loop_unwatch(coe_loop *l, coe_watch *w)
{
    if (w)
        watch_remove(l, w);
}

/* ---- libcurl ---- */

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    coe_loop *l = userp;
    coe_watch *w = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            watch_remove(l, w);
            curl_multi_assign(l->multi, s, NULL);
        }
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    if (!w) {
        w = watch_add(l, WATCH_CURL, s, events);
        if (!w)
            return -1;
        curl_multi_assign(l->multi, s, w);
    } else {
        struct epoll_event ev = {.events = events, .data.ptr = w};
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev);
    }
    return 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    coe_loop *l = userp;
    l->curl_due_ms = timeout_ms < 0 ? -1 : coe_now_ms() + timeout_ms;
    return 0;
}

/* Reports finished transfers. */
static void curl_finished(coe_loop *l)
{
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
            void *arg = x->arg;
            free(x);
            done(arg, result); /* may add new transfers or give easy back */
        }
    }
}

CURL *coe_loop_easy_get(coe_loop *l)
{
    return l->n_pool > 0 ? l->pool[--l->n_pool] : curl_easy_init();
}

void coe_loop_easy_put(coe_loop *l, CURL *easy)
{
    if (l->n_pool < EASY_POOL_MAX) {
        curl_easy_reset(easy);
        l->pool[l->n_pool++] = easy;
    } else {
        curl_easy_cleanup(easy);
    }
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

/* ---- the loop ---- */

static void *loop_main(void *arg)
{
    coe_loop *l = arg;
    struct epoll_event evs[64];
    while (run_tasks(l, true)) {
        long wait = run_timers(l, MAX_WAIT_MS);
        if (l->curl_due_ms >= 0) {
            long long now = coe_now_ms();
            if (now >= l->curl_due_ms) {
                l->curl_due_ms = -1;
                int running;
                curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
                curl_finished(l);
                continue; /* timers and tasks may be due again */
            }
            if (l->curl_due_ms - now < wait)
                wait = (long)(l->curl_due_ms - now);
        }
        int n = epoll_wait(l->epfd, evs, 64, (int)wait);
        for (int i = 0; i < n; i++) {
            coe_watch *w = evs[i].data.ptr;
            if (w->dead)
                continue;
            if (w->kind == WATCH_WAKE) {
                uint64_t v;
                ssize_t r = read(w->fd, &v, sizeof v);
                (void)r;
            } else if (w->kind == WATCH_CURL) {
                uint32_t e = evs[i].events;
                int mask = (e & EPOLLIN ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                           (e & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
                int running;
                curl_multi_socket_action(l->multi, w->fd, mask, &running);
                curl_finished(l);
            } else if (w->kind == WATCH_IO) {
                uint32_t e = evs[i].events;
                w->io_fn(w->arg, (e & EPOLLIN ? COE_IO_IN : 0u) | (e & EPOLLOUT ? COE_IO_OUT : 0u) |
                                     (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) ? COE_IO_HUP : 0u));
            } else {
                w->fn(w->arg);
            }
        }
        while (l->dead) {
            coe_watch *w = l->dead;
            l->dead = w->next_dead;
            free(w);
        }
    }
    return NULL;
}

int coe_loop_open(coe_loop **out)
{
    *out = NULL;
    coe_loop *l = calloc(1, sizeof *l);
    if (!l)
        return COE_ENOMEM;
    l->curl_due_ms = -1;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake.kind = WATCH_WAKE;
    l->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->multi = curl_multi_init();
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->wake};
    if (l->epfd < 0 || l->wake.fd < 0 || !l->multi || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wake.fd, &ev) != 0)
        goto fail;
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
    pthread_mutex_init(&l->mu, NULL);
    if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        pthread_mutex_destroy(&l->mu);
        goto fail;
    }
    *out = l;
    return 0;
fail:
    coe_error("event loop: cannot start: %s", errno ? strerror(errno) : "out of memory");
    if (l->multi)
        curl_multi_cleanup(l->multi);
    if (l->wake.fd >= 0)
        close(l->wake.fd);
    if (l->epfd >= 0)
        close(l->epfd);
    free(l);
    return COE_EIO;
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
    uint64_t one = 1;
    ssize_t n = write(l->wake.fd, &one, sizeof one);
    (void)n;
    pthread_join(l->thread, NULL);
    run_tasks(l, false); /* frees what is left, without running it */
    for (size_t i = 0; i < l->n_heap; i++)
        free(l->heap[i]);
    free(l->heap);
    for (int i = 0; i < l->n_pool; i++)
        curl_easy_cleanup(l->pool[i]);
    curl_multi_cleanup(l->multi); /* closes cached connections, releasing their watches */
    while (l->dead) {
        coe_watch *w = l->dead;
        l->dead = w->next_dead;
        free(w);
    }
    close(l->wake.fd);
    close(l->epfd);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
