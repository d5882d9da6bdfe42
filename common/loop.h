/* An event loop: one thread, one epoll set, timers, a libcurl multi handle driven
 * through its socket API, and a queue of tasks posted from other threads.
 *
 * The gateway runs one loop per worker, and a request lives on one loop from
 * accept to last byte: the worker's HTTP daemon and the transfers to experts share
 * the thread, so a request crosses no thread boundary (docs/design-notes.md). */
#ifndef COE_LOOP_H
#define COE_LOOP_H

#include <curl/curl.h>

typedef struct coe_loop coe_loop;
typedef struct coe_timer coe_timer;
typedef struct coe_watch coe_watch;
typedef void (*coe_loop_fn)(void *arg);
/* Called on the loop thread when a transfer added with coe_loop_add ends. */
typedef void (*coe_transfer_done_fn)(void *arg, CURLcode result);

/* Starts a loop on a new thread. */
int coe_loop_open(coe_loop **out);
/* Stops the thread and frees the loop; tasks still queued are dropped, transfers
 * still running are abandoned. Sets *loop to NULL. Not from the loop's own thread. */
void coe_loop_close(coe_loop **loop);

/* Any thread: runs fn(arg) soon on the loop thread. */
int coe_loop_post(coe_loop *loop, coe_loop_fn fn, void *arg);
/* The same, and if the loop is closed before fn runs, drop(arg) runs instead (on the
 * closing thread), so that what arg holds is released. */
int coe_loop_post_or_drop(coe_loop *loop, coe_loop_fn fn, coe_loop_fn drop, void *arg);
/* Any thread but the loop's: runs fn(arg) on the loop thread and waits for it. */
int coe_loop_call(coe_loop *loop, coe_loop_fn fn, void *arg);
/* True on the loop's own thread. */
int coe_loop_is_current(const coe_loop *loop);

/* Loop thread only. The timer is owned by the loop: it is freed after it fires or
 * after cancellation, so a handle must not be used after either. */
coe_timer *coe_loop_after(coe_loop *loop, long ms, coe_loop_fn fn, void *arg);
void coe_loop_cancel(coe_loop *loop, coe_timer *t);

/* Loop thread only: calls fn(arg) while fd is readable (level-triggered). */
coe_watch *coe_loop_watch(coe_loop *loop, int fd, coe_loop_fn fn, void *arg);
void coe_loop_unwatch(coe_loop *loop, coe_watch *w);

/* What an I/O watch waits for and reports (level-triggered). COE_IO_HUP is always
 * reported: the peer closed (or half-closed) its side, or the socket failed. */
enum { COE_IO_IN = 1, COE_IO_OUT = 2, COE_IO_HUP = 4 };
typedef void (*coe_loop_io_fn)(void *arg, unsigned events);
/* Loop thread only: calls fn(arg, what happened) while fd is ready for any of events.
 * exclusive: of several loops watching the same fd (a listening socket), one wakes. */
coe_watch *coe_loop_watch_io(coe_loop *loop, int fd, unsigned events, int exclusive, coe_loop_io_fn fn, void *arg);
/* Changes what a (non-exclusive) I/O watch waits for. */
int coe_loop_watch_set(coe_loop *loop, coe_watch *w, unsigned events);

/* Loop thread only: an easy handle from the loop's pool (reset, ready to set up),
 * and back. A fresh handle allocates and clears tens of kilobytes, so they are reused. */
CURL *coe_loop_easy_get(coe_loop *loop);
void coe_loop_easy_put(coe_loop *loop, CURL *easy);
/* Loop thread only: starts an easy handle (borrowed until done fires or it is removed). */
int coe_loop_add(coe_loop *loop, CURL *easy, coe_transfer_done_fn done, void *arg);
/* Loop thread only: stops a running transfer without calling its done function. */
void coe_loop_remove(coe_loop *loop, CURL *easy);

#endif
