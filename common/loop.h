/* The upstream event loop: one thread that owns a libcurl multi handle and runs
 * posted tasks and timers. Everything that talks to experts runs on it, so backend
 * and dispatch state needs no locks; other threads hand work over with
 * coe_loop_post, which wakes the loop with curl_multi_wakeup. */
#ifndef COE_LOOP_H
#define COE_LOOP_H

#include <curl/curl.h>

typedef struct coe_loop coe_loop;
typedef struct coe_timer coe_timer;
typedef void (*coe_loop_fn)(void *arg);
/* Called on the loop thread when a transfer added with coe_loop_add ends. */
typedef void (*coe_transfer_done_fn)(void *arg, CURLcode result);

int coe_loop_open(coe_loop **out);
/* Stops the thread and frees the loop; tasks still queued are dropped. Sets *loop to NULL. */
void coe_loop_close(coe_loop **loop);

/* Any thread: runs fn(arg) soon on the loop thread. */
int coe_loop_post(coe_loop *loop, coe_loop_fn fn, void *arg);

/* Loop thread only. The timer is owned by the loop: it is freed after it fires or
 * after cancellation, so a handle must not be used after either. */
coe_timer *coe_loop_after(coe_loop *loop, long ms, coe_loop_fn fn, void *arg);
void coe_loop_cancel(coe_loop *loop, coe_timer *t);

/* Loop thread only: starts an easy handle (borrowed until done fires or it is removed). */
int coe_loop_add(coe_loop *loop, CURL *easy, coe_transfer_done_fn done, void *arg);
/* Loop thread only: stops a running transfer without calling its done function. */
void coe_loop_remove(coe_loop *loop, CURL *easy);

#endif
