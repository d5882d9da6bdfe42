/* Local experts and fusion groups, behind the same backend interface as remote
 * servers. Each local expert's model has one scheduler (experts/sched.h) that decodes
 * the sequences of all its callers together (continuous batching: sequences join
 * between steps, each step reads every weight once for the whole batch). A plain
 * request drives one sequence; a fusion group's request drives its router's and its
 * experts' sequences on their models' schedulers (experts/fusion.h). Results go back
 * to the requests' own loop threads. See docs/design-notes.md. */
#ifndef COE_LOCAL_H
#define COE_LOCAL_H

#include <stdbool.h>

#include "common/buf.h"
#include "experts/engine.h"
#include "experts/fusion.h"

typedef struct coe_local coe_local;

typedef struct coe_local_opts {
    const char *name;          /* the expert's */
    const char *path;          /* the GGUF file */
    int threads;               /* engine threads; 0: one per CPU */
    coe_device device;         /* where the engine computes (auto: a GPU when one is there and the model fits) */
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

/* A fusion group over started local experts (all borrowed: they must outlive it). */
typedef struct coe_fusion coe_fusion;

typedef struct coe_fusion_opts {
    coe_local *const *experts;
    const char *const *names;  /* the experts' names, as the selector was trained with them */
    int n_experts;
    coe_local *router;
    const char *router_name;
    const char *selector_path;
    coe_fusion_mode mode;
    float lambda;              /* with lambda_set; else the selector file's */
    bool lambda_set;
} coe_fusion_opts;

/* Loads the selector and checks that every vocabulary is the router's (else the error
 * names the first token id that differs) and that the selector fits the group. Errors
 * start with the field at fault ("experts: ", "selector: "). */
int coe_fusion_open(coe_fusion **out, const coe_fusion_opts *o, coe_buf *diag);
void coe_fusion_close(coe_fusion **f);

/* Sequences now decoding and waiting, for tests and metrics. */
void coe_local_load(coe_local *l, int *active, int *queued);
/* Appends the local experts' gauges to a Prometheus text page. */
struct coe_config;
void coe_local_metrics(const struct coe_config *c, coe_buf *out);

#endif
