#include "gateway/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "gateway/config.h"
#include "router/batcher.h"

static const int statuses[] = {200, 400, 401, 404, 405, 413, 429, 499, 500, 502, 503, 504};
#define N_STATUS (sizeof statuses / sizeof statuses[0])
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])
#define MAX_EXPERTS 1024

static const char *const endpoint_names[] = {"chat_completions", "completions", "embeddings", "responses", "models",
                                             "health",           "metrics",     "console",   "other"};
static const char *const event_names[] = {"answered",        "failed",          "retried",      "fell_back",
                                          "circuit_opened",  "short_circuited", "prompt_tokens", "completion_tokens"};

static atomic_ullong requests[COE_METRIC_N_ENDPOINTS][N_STATUS + 1]; /* last: any other status */
static atomic_ullong latency_le[COE_METRIC_N_ENDPOINTS][N_BUCKETS];  /* not cumulative; summed at render */
static atomic_ullong latency_count[COE_METRIC_N_ENDPOINTS];
static atomic_ullong latency_sum_us[COE_METRIC_N_ENDPOINTS];

typedef struct expert_counters {
    char name[COE_NAME_MAX + 1];
    atomic_ullong n[COE_EXPERT_N_EVENTS];
} expert_counters;

static expert_counters experts[MAX_EXPERTS];
static atomic_int n_experts; /* published after the name is written */
static pthread_mutex_t add_mu = PTHREAD_MUTEX_INITIALIZER;

void coe_metrics_request(coe_metric_endpoint ep, int status, double seconds)
{
    size_t s = N_STATUS;
    for (size_t i = 0; i < N_STATUS; i++)
        if (statuses[i] == status)
            s = i;
    atomic_fetch_add_explicit(&requests[ep][s], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < N_BUCKETS && seconds > buckets[b])
        b++;
    if (b < N_BUCKETS)
        atomic_fetch_add_explicit(&latency_le[ep][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&latency_count[ep], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&latency_sum_us[ep], (unsigned long long)(seconds * 1e6), memory_order_relaxed);
}

static expert_counters *find_expert(const char *name)
{
    int n = atomic_load_explicit(&n_experts, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (strcmp(experts[i].name, name) == 0)
            return &experts[i];
    pthread_mutex_lock(&add_mu);
    n = atomic_load_explicit(&n_experts, memory_order_acquire);
    expert_counters *e = NULL;
    for (int i = 0; i < n && !e; i++)
        if (strcmp(experts[i].name, name) == 0)
            e = &experts[i];
    if (!e && n < MAX_EXPERTS) {
        e = &experts[n];
        strncpy(e->name, name, COE_NAME_MAX);
        atomic_store_explicit(&n_experts, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&add_mu);
    return e;
}

void coe_metrics_expert(const char *expert, coe_expert_event ev, long n)
{
    expert_counters *e = n > 0 ? find_expert(expert) : NULL;
    if (e)
        atomic_fetch_add_explicit(&e->n[ev], (unsigned long long)n, memory_order_relaxed);
}

unsigned long long coe_metrics_expert_count(const char *expert, coe_expert_event ev)
{
    int n = atomic_load_explicit(&n_experts, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (strcmp(experts[i].name, expert) == 0)
            return atomic_load_explicit(&experts[i].n[ev], memory_order_relaxed);
    return 0;
}

int coe_metrics_render(coe_buf *b, int inflight)
{
    coe_buf_puts(b, "# HELP coegate_requests_total HTTP requests answered, by endpoint and status.\n"
                    "# TYPE coegate_requests_total counter\n");
    for (int ep = 0; ep < COE_METRIC_N_ENDPOINTS; ep++)
        for (size_t s = 0; s <= N_STATUS; s++) {
            unsigned long long v = atomic_load(&requests[ep][s]);
            if (!v)
                continue;
            if (s < N_STATUS)
                coe_buf_printf(b, "coegate_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", endpoint_names[ep],
                               statuses[s], v);
            else
                coe_buf_printf(b, "coegate_requests_total{endpoint=\"%s\",status=\"other\"} %llu\n",
                               endpoint_names[ep], v);
        }
    coe_buf_puts(b, "# HELP coegate_request_duration_seconds Time from request to last byte.\n"
                    "# TYPE coegate_request_duration_seconds histogram\n");
    for (int ep = 0; ep < COE_METRIC_N_ENDPOINTS; ep++) {
        unsigned long long count = atomic_load(&latency_count[ep]);
        if (!count)
            continue;
        unsigned long long cum = 0;
        for (size_t i = 0; i < N_BUCKETS; i++) {
            cum += atomic_load(&latency_le[ep][i]);
            coe_buf_printf(b, "coegate_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n",
                           endpoint_names[ep], buckets[i], cum);
        }
        coe_buf_printf(b,
                       "coegate_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n"
                       "coegate_request_duration_seconds_sum{endpoint=\"%s\"} %.6f\n"
                       "coegate_request_duration_seconds_count{endpoint=\"%s\"} %llu\n",
                       endpoint_names[ep], count, endpoint_names[ep], (double)atomic_load(&latency_sum_us[ep]) / 1e6,
                       endpoint_names[ep], count);
    }
    coe_buf_printf(b, "# HELP coegate_inflight_requests Requests being answered now.\n"
                      "# TYPE coegate_inflight_requests gauge\ncoegate_inflight_requests %d\n",
                   inflight);
    int n = atomic_load_explicit(&n_experts, memory_order_acquire);
    for (int ev = 0; ev < COE_EXPERT_N_EVENTS; ev++) {
        coe_buf_printf(b, "# HELP coegate_expert_%s_total Per expert: %s.\n# TYPE coegate_expert_%s_total counter\n",
                       event_names[ev], event_names[ev], event_names[ev]);
        for (int i = 0; i < n; i++)
            coe_buf_printf(b, "coegate_expert_%s_total{expert=\"%s\"} %llu\n", event_names[ev], experts[i].name,
                           atomic_load(&experts[i].n[ev]));
    }
    return 0;
}

void coe_metrics_routes(const coe_config *c, coe_buf *b)
{
    static const struct {
        const char *name, *type, *help;
    } families[3] = {
        {"coegate_router_batches_total", "counter", "Per route with batching: batches classified."},
        {"coegate_router_batched_queries_total", "counter", "Per route with batching: queries classified in them."},
        {"coegate_router_batch_max", "gauge", "Per route with batching: the most classified together."},
    };
    for (int k = 0; k < 3; k++)
        for (int i = 0, shown = 0; i < c->n_routes; i++) {
            if (!c->routes[i].batcher)
                continue;
            if (!shown++)
                coe_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", families[k].name, families[k].help,
                               families[k].name, families[k].type);
            coe_batcher_stats st;
            coe_router_batcher_stats(c->routes[i].batcher, &st);
            coe_buf_printf(b, "%s{route=\"%s\"} %lld\n", families[k].name, c->routes[i].name,
                           k == 0 ? st.batches : k == 1 ? st.queries : (long long)st.largest);
        }
}
