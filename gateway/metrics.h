/* Prometheus metrics: request counts and latencies, and per-expert outcomes.
 * Counters are atomics, cheap on the hot path; experts are keyed by name, so their
 * counts survive a configuration reload. Never records a key or request content. */
#ifndef COE_METRICS_H
#define COE_METRICS_H

#include "common/buf.h"

typedef enum coe_metric_endpoint {
    COE_METRIC_CHAT, COE_METRIC_COMPLETIONS, COE_METRIC_EMBEDDINGS, COE_METRIC_RESPONSES, COE_METRIC_MODELS,
    COE_METRIC_HEALTH,
    COE_METRIC_METRICS, COE_METRIC_CONSOLE, COE_METRIC_OTHER, COE_METRIC_N_ENDPOINTS
} coe_metric_endpoint;

typedef enum coe_expert_event {
    COE_EXPERT_ANSWERED,    /* the expert's answer reached the client whole */
    COE_EXPERT_FAILED,      /* an attempt failed (before or after the first byte) */
    COE_EXPERT_RETRIED,     /* a retry of this expert was scheduled */
    COE_EXPERT_FELL_BACK,   /* this expert gave up and a fallback was tried */
    COE_EXPERT_CIRCUIT_OPENED, /* its circuit breaker opened */
    COE_EXPERT_SHORT_CIRCUITED, /* an attempt skipped it: its circuit was open */
    COE_EXPERT_PROMPT_TOKENS,
    COE_EXPERT_COMPLETION_TOKENS,
    COE_EXPERT_N_EVENTS
} coe_expert_event;

/* One finished HTTP request. */
void coe_metrics_request(coe_metric_endpoint ep, int status, double seconds);
/* n occurrences of ev for the expert named expert (borrowed). */
void coe_metrics_expert(const char *expert, coe_expert_event ev, long n);

struct coe_config;
/* The batched routes' batchers: batches, queries classified in them, the largest. */
void coe_metrics_routes(const struct coe_config *c, coe_buf *b);
/* The count of ev for the expert named expert so far (0 when none). */
unsigned long long coe_metrics_expert_count(const char *expert, coe_expert_event ev);
/* Appends the exposition text (Prometheus format 0.0.4). */
int coe_metrics_render(coe_buf *out, int inflight);

#endif
