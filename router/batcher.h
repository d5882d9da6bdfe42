/* Concurrent classifications gathered into batches: single queries are cheaper on
 * the CPU, so a GPU classifier is worth its launch only for many at once. Callers
 * (the gateway's worker threads) hand in their query's features and wait; the
 * batcher's thread waits up to a window after the first query of a batch, or until
 * max_batch have come, and classifies them in one call. */
#ifndef COE_BATCHER_H
#define COE_BATCHER_H

#include "common/buf.h"
#include "router/features.h"

typedef struct coe_router_batcher coe_router_batcher;

/* Classifies n queries into probs (n rows of n_classes); 0 or a coe_err with diag. */
typedef int (*coe_batch_fn)(void *ctx, const coe_features *const *f, int n, float *probs, coe_buf *diag);

/* window_us: how long a batch waits for more after its first query (0: not at all). */
int coe_router_batcher_open(coe_router_batcher **out, coe_batch_fn fn, void *ctx, int n_classes, int window_us,
                            int max_batch);
/* Runs what is waiting, then stops the thread. */
void coe_router_batcher_close(coe_router_batcher **b);

/* One query's probabilities (n_classes), classified in the next batch; blocks until then. */
int coe_router_batcher_classify(coe_router_batcher *b, const coe_features *f, float *probs);

/* The same without waiting: f and probs must live until done(arg, rc) is called, on
 * the batcher's thread (where the caller's loop is not: post back to it). Fails, with
 * done not called, when the batcher is stopping or out of memory. */
typedef void (*coe_batch_done_fn)(void *arg, int rc);
int coe_router_batcher_submit(coe_router_batcher *b, const coe_features *f, float *probs, coe_batch_done_fn done,
                              void *arg);

typedef struct coe_batcher_stats {
    long long batches, queries;
    int largest;
} coe_batcher_stats;

void coe_router_batcher_stats(coe_router_batcher *b, coe_batcher_stats *out);

#endif
