/* Local experts: a GGUF model run inside the gateway (experts/engine.h), behind the
 * same backend interface as remote servers. Each local expert has one scheduler
 * thread that decodes all its active requests together (continuous batching: new
 * requests join between steps, each step reads every weight once for the whole
 * batch) on the engine's thread team; results go back to the requests' own loop
 * threads. See docs/design-notes.md. */
#ifndef COE_LOCAL_H
#define COE_LOCAL_H

#include <stdbool.h>

#include "common/buf.h"

typedef struct coe_local coe_local;

typedef struct coe_local_opts {
    const char *name;          /* the expert's */
    const char *path;          /* the GGUF file */
    int threads;               /* engine threads; 0: one per CPU */
    int context;               /* positions per sequence; 0: the model's, at most 4096 */
    int max_batch;             /* sequences decoded together */
    int max_queue;             /* requests waiting beyond max_batch; more are refused (503) */
    const char *chat_template; /* a family name overriding the model's template, or NULL */
} coe_local_opts;

/* Loads the model, vocabulary and chat template (errors name the file and what is
 * wrong). With start, also starts the engine and the scheduler thread; without, the
 * result only describes the model (config check).
 *
 * Started experts live in a runtime registry keyed by expert name, file identity
 * (device, inode, size, modification time) and options: opening one that is already
 * loaded (a reload that left it unchanged) shares it, mapping nothing and starting no
 * thread. The last close stops it on a thread of its own, so that no caller (a worker
 * releasing the previous configuration) waits for its scheduler. */
int coe_local_open(coe_local **out, const coe_local_opts *o, bool start, coe_buf *diag);
void coe_local_close(coe_local **l);
/* Waits until experts being stopped are gone (before the process exits). */
void coe_local_wait_closed(void);

/* Sequences now decoding and waiting, for tests and metrics. */
void coe_local_load(coe_local *l, int *active, int *queued);
/* Appends the local experts' gauges to a Prometheus text page. */
struct coe_config;
void coe_local_metrics(const struct coe_config *c, coe_buf *out);

#endif
