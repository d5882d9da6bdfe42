/* A model's scheduler: continuous batching over the sequences its callers open (open a
 * sequence, feed tokens, get the last one's logits, close). Every step takes the
 * pending tokens of all admitted sequences (prompts in chunks, so that decoding
 * sequences keep going) into one engine call, which reads each weight once for the
 * whole batch. A plain local expert drives one sequence per request; a
 * fusion group drives its router's and its experts' sequences, on their own models'
 * schedulers, in step. See docs/design-notes.md. */
#ifndef COE_SCHED_H
#define COE_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "experts/engine.h"
#include "experts/model.h"

typedef struct coe_sched coe_sched;
typedef struct coe_seq coe_seq;

typedef struct coe_sched_opts {
    int threads;   /* engine threads; 0: one per CPU */
    int n_ctx;     /* positions a sequence may hold */
    int max_batch; /* sequences admitted (decoding) at once */
    int max_queue; /* sequences waiting for admission beyond max_batch; more are refused */
    coe_device device; /* where the engine computes */
} coe_sched_opts;

/* Starts the engine over m (borrowed: it must outlive the scheduler) and joins the
 * driver thread of its thread team, which steps the team's schedulers in turn. A
 * device that cannot be had is refused with the reason in diag; auto notes there why
 * it stayed on the CPU, if it did. */
int coe_sched_open(coe_sched **out, const coe_model *m, const coe_sched_opts *o, coe_buf *diag);
/* Where its engine computes (coe_engine_where). */
const char *coe_sched_where(const coe_sched *s);
/* Leaves the driver once no step of s is under way (the last one out stops it);
 * sequences still open are released (their release callbacks run). */
void coe_sched_close(coe_sched **s);
const coe_model *coe_sched_model(const coe_sched *s);
int coe_sched_n_ctx(const coe_sched *s);

/* Called on the driver thread, without its lock, when a feed has run: logits
 * (n_vocab) and hidden (n_embd, the final hidden state) of the last token fed, valid
 * for the call only. On failure both are NULL and error says why; the sequence is then
 * of no further use. The callback may feed this or any other sequence. */
typedef void (*coe_seq_fn)(void *ctx, coe_seq *q, const float *logits, const float *hidden, const char *error);
/* Called once, on any thread, when the scheduler lets go of a closed sequence: the last
 * call that touches ctx. */
typedef void (*coe_seq_release_fn)(void *ctx);

/* Opens a sequence on s; COE_EBUSY when max_batch + max_queue are already open. */
int coe_seq_open(coe_sched *s, coe_seq **out, coe_seq_fn fn, coe_seq_release_fn release, void *ctx);
/* Appends tokens (copied) to the sequence; fn runs once they are all in its cache.
 * One feed at a time: COE_EBUSY while one is pending; COE_ERANGE when the sequence
 * would exceed the context (nothing is appended then). */
int coe_seq_feed(coe_seq *q, const int32_t *tokens, int n);
/* Positions the sequence holds or has been fed (pending ones included). */
int coe_seq_len(const coe_seq *q);
/* Any thread. The sequence is freed at the scheduler's next step; fn may still run
 * once if it was already under way, and release follows. */
void coe_seq_close(coe_seq *q);

/* Admitted and waiting sequences, and totals for metrics. */
typedef struct coe_sched_stats {
    int active, queued;
    int batch_max; /* the most sequences one step has run together */
    long steps;
} coe_sched_stats;
void coe_sched_stats_get(coe_sched *s, coe_sched_stats *out);

#endif
