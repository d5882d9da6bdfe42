/* The backend interface: how dispatch asks an expert for an answer. Local models,
 * remote servers and fusion groups all implement coe_backend_ops, and report what
 * they produce to a coe_sink. Everything here runs on the loop thread (common/loop.h). */
#ifndef COE_BACKEND_H
#define COE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

#include "common/loop.h"
#include "gateway/config.h"
#include "gateway/request.h"

/* One streamed piece of one choice, or (coe_sink_ops.choice) a whole choice: what a
 * backend reports as data; gateway/openai.c writes every wire shape from it. Strings
 * are borrowed for the call only. */
typedef struct coe_delta {
    int index;                  /* choice index */
    const char *role;           /* "assistant" on the first delta, else NULL */
    const char *content;        /* text (chat delta.content or completions text), or NULL */
    size_t content_len;
    const char *reasoning;      /* delta.reasoning_content, or NULL */
    const char *tool_calls;     /* delta.tool_calls as raw JSON text, or NULL */
    const char *logprobs;       /* the choice's logprobs as raw JSON text, or NULL */
    const char *finish_reason;  /* "stop", "length", "tool_calls", ... or NULL */
    const char *extra;          /* more members of the choice as raw JSON ("k":v,...), or NULL */
    const char *message_extra;  /* more members of the message or delta (an upstream's), or NULL */
} coe_delta;

typedef struct coe_usage {
    long prompt_tokens;
    long completion_tokens;
    long total_tokens;
} coe_usage;

/* How dispatch may go on after a failure that came before anything reached the client. */
typedef enum coe_failure_kind {
    COE_FAIL_RETRY,  /* transient: retry this expert (backoff), then its fallbacks */
    COE_FAIL_NEXT,   /* this expert cannot answer (credentials, unknown model): fallbacks */
    COE_FAIL_FINAL,  /* the request itself is at fault: tell the client */
} coe_failure_kind;

typedef struct coe_failure {
    coe_failure_kind kind;
    int status;           /* HTTP status for the client should this failure be the last */
    long retry_after_ms;  /* from the upstream's Retry-After, or -1 */
    char message[320];    /* for the client and the log; never holds a key */
    char param[64];       /* the request field at fault (the error's "param"), "" for none */
} coe_failure;

/* Where a backend call reports. A streamed request (req->stream) gets deltas, any
 * other gets its choices (or, for embeddings, one result); then usage, when known.
 * Each call ends with exactly one done or fail, unless it is cancelled, after which
 * nothing more is reported. */
typedef struct coe_sink_ops {
    void (*delta)(void *ctx, const coe_delta *d);
    /* A non-streamed answer's choice, whole (once per choice). */
    void (*choice)(void *ctx, const coe_delta *whole);
    /* A non-streamed answer for embeddings: the upstream's whole answer object. */
    void (*result)(void *ctx, const char *json, size_t len);
    void (*usage)(void *ctx, const coe_usage *u);
    void (*done)(void *ctx);
    void (*fail)(void *ctx, const coe_failure *f);
    /* Optional: a response header for an answer that is not streamed, before result. */
    void (*note)(void *ctx, const char *header, const char *value);
} coe_sink_ops;

typedef struct coe_sink {
    const coe_sink_ops *ops;
    void *ctx;
} coe_sink;

typedef struct coe_backend_ops {
    const char *kind;
    /* Starts answering req with expert e (both borrowed until the call ends). Reports
     * go to sink, never from inside start itself. *call is the handle for cancel. */
    int (*start)(coe_loop *loop, const coe_expert_cfg *e, const coe_request *req,
                 const coe_sink *sink, void **call);
    /* Stops a call that has not ended; frees it. */
    void (*cancel)(coe_loop *loop, void *call);
    /* Optional (NULL: cannot): stops or resumes taking in the answer while the client
     * reads slowly (backpressure). A paused call's deadlines wait. */
    void (*pause)(coe_loop *loop, void *call, bool paused);
} coe_backend_ops;

extern const coe_backend_ops coe_remote_backend;
extern const coe_backend_ops coe_echo_backend;
extern const coe_backend_ops coe_local_backend;
extern const coe_backend_ops coe_fusion_backend;

/* The backend that serves experts of e's kind. */
const coe_backend_ops *coe_backend_for(const coe_expert_cfg *e);

/* The max_tokens to ask for: the request's, capped by the expert's; -1 for none. */
long coe_effective_max_tokens(const coe_expert_cfg *e, const coe_request *req);

void coe_failure_set(coe_failure *f, coe_failure_kind kind, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
