/* A fixed team of threads for the engine's parallel loops. The caller of run is
 * thread 0 and works too; the others spin briefly between jobs (a decode step runs a
 * few hundred short jobs) and then sleep. One run at a time per team. */
#ifndef COE_THREADS_H
#define COE_THREADS_H

typedef struct coe_threads coe_threads;

typedef void (*coe_threads_fn)(void *ctx, int ith, int nth);

/* n_threads in all, counting the caller; 0 means one per online CPU. NULL on failure. */
coe_threads *coe_threads_new(int n_threads);
/* A team shared by every caller asking for the same size (0: one per CPU): the
 * engines of one process then take turns job by job on the same threads instead of
 * spinning against each other's. Freed by the last coe_threads_free. */
coe_threads *coe_threads_shared(int n_threads);
/* The team size a request for n_threads gets (0: one per online CPU). */
int coe_threads_resolve(int n_threads);
/* Sets *p to NULL. */
void coe_threads_free(coe_threads **p);
int coe_threads_count(const coe_threads *p);
/* Calls fn(ctx, i, n) once on each thread and returns when all have returned; callers
 * on other threads wait their turn. */
void coe_threads_run(coe_threads *p, coe_threads_fn fn, void *ctx);

#endif
