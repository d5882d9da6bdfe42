#include "gateway/console.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "coe_build.h"
#include "common/err.h"
#include "common/log.h"
#include "gateway/metrics.h"
#include "gateway/request.h"

#define RING 200

static pthread_mutex_t ring_mu = PTHREAD_MUTEX_INITIALIZER;
static coe_console_entry ring[RING];
static unsigned long long n_recorded;

void coe_console_record(const coe_console_entry *e)
{
    pthread_mutex_lock(&ring_mu);
    ring[n_recorded++ % RING] = *e;
    pthread_mutex_unlock(&ring_mu);
}

static void str(coe_buf *b, const char *key, const char *v)
{
    coe_buf_printf(b, "\"%s\":", key);
    if (v && *v)
        coe_buf_json_string(b, v, strlen(v));
    else
        coe_buf_puts(b, "null");
}

static void requests_json(coe_buf *b)
{
    /* Copied out under the lock, written after. */
    coe_console_entry *copy = malloc(RING * sizeof *copy);
    if (!copy) {
        b->err = b->err ? b->err : COE_ENOMEM; /* the document must not go out with a hole */
        return;
    }
    pthread_mutex_lock(&ring_mu);
    unsigned long long n = n_recorded;
    int count = n < RING ? (int)n : RING;
    for (int i = 0; i < count; i++)
        copy[i] = ring[(n - 1 - (unsigned long long)i) % RING];
    pthread_mutex_unlock(&ring_mu);
    coe_buf_puts(b, "\"requests\":[");
    for (int i = 0; i < count; i++) {
        const coe_console_entry *e = &copy[i];
        coe_buf_puts(b, i ? ",{" : "{");
        str(b, "id", e->id);
        coe_buf_printf(b, ",\"at_ms\":%lld", e->at_ms);
        const struct {
            const char *key, *value;
        } texts[] = {{"method", e->method}, {"path", e->path},             {"model", e->model},
                     {"rule", e->rule},     {"category", e->category},     {"confidence", e->confidence},
                     {"expert", e->expert}};
        for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
            coe_buf_puts(b, ",");
            str(b, texts[k].key, texts[k].value);
        }
        coe_buf_printf(b, ",\"status\":%d,\"ms\":%.2f", e->status, e->ms);
        if (e->prompt_tokens >= 0)
            coe_buf_printf(b, ",\"prompt_tokens\":%ld,\"completion_tokens\":%ld}", e->prompt_tokens,
                           e->completion_tokens);
        else
            coe_buf_puts(b, ",\"prompt_tokens\":null,\"completion_tokens\":null}");
    }
    coe_buf_puts(b, "]");
    free(copy);
}

static const char *kind_name(coe_expert_kind k)
{
    return k == COE_EXPERT_REMOTE ? "remote" : k == COE_EXPERT_LOCAL ? "local" : k == COE_EXPERT_FUSION ? "fusion"
                                                                                                        : "echo";
}

static void experts_json(coe_buf *b, const coe_config *cfg)
{
    long long now = coe_now_ms();
    coe_buf_puts(b, "\"experts\":[");
    for (int i = 0; i < cfg->n_experts; i++) {
        coe_expert_cfg *e = &cfg->experts[i];
        coe_buf_puts(b, i ? ",{" : "{");
        str(b, "name", e->name);
        coe_buf_puts(b, ",");
        str(b, "kind", kind_name(e->kind));
        coe_buf_printf(b, ",\"inflight\":%d,\"max_concurrency\":%d,\"circuit_open\":%s,\"capabilities\":[",
                       atomic_load(&e->inflight), e->max_concurrency,
                       e->kind == COE_EXPERT_REMOTE && e->breaker_failures > 0 && coe_breaker_is_open(&e->breaker, now)
                           ? "true"
                           : "false");
        for (int c = 0, first = 1; c < COE_CAP_COUNT; c++)
            if (e->capabilities & (1u << c)) {
                coe_buf_printf(b, "%s\"%s\"", first ? "" : ",", coe_cap_names[c]);
                first = 0;
            }
        static const char *const events[] = {"answered", "failed", "retried", "fell_back", "circuit_opened",
                                             "short_circuited", "prompt_tokens", "completion_tokens"};
        coe_buf_puts(b, "]");
        for (int ev = 0; ev < COE_EXPERT_N_EVENTS; ev++)
            coe_buf_printf(b, ",\"%s\":%llu", events[ev], coe_metrics_expert_count(e->name, (coe_expert_event)ev));
        coe_buf_puts(b, "}");
    }
    coe_buf_puts(b, "]");
}

static void expert_name(coe_buf *b, const coe_config *cfg, int i)
{
    if (i >= 0 && i < cfg->n_experts)
        coe_buf_json_string(b, cfg->experts[i].name, strlen(cfg->experts[i].name));
    else
        coe_buf_puts(b, "null");
}

static void routes_json(coe_buf *b, const coe_config *cfg)
{
    coe_buf_puts(b, "\"routes\":[");
    for (int r = 0; r < cfg->n_routes; r++) {
        const coe_route_cfg *rt = &cfg->routes[r];
        coe_buf_puts(b, r ? ",{" : "{");
        str(b, "name", rt->name);
        coe_buf_puts(b, ",\"default\":");
        expert_name(b, cfg, rt->default_expert);
        coe_buf_puts(b, ",\"router\":");
        if (rt->router) {
            coe_buf_json_string(b, rt->router_path, strlen(rt->router_path));
            coe_buf_puts(b, ",\"fallback\":");
            expert_name(b, cfg, rt->fallback_expert);
            coe_buf_printf(b, ",\"threshold\":%g,\"cost_weight\":%g", rt->threshold, rt->cost_weight);
        } else {
            coe_buf_puts(b, "null");
        }
        coe_buf_puts(b, "}");
    }
    coe_buf_puts(b, "],\"categories\":[");
    for (int c = 0; c < cfg->n_categories; c++) {
        const coe_category_cfg *cat = &cfg->categories[c];
        coe_buf_puts(b, c ? ",{" : "{");
        str(b, "name", cat->name);
        coe_buf_puts(b, ",\"experts\":[");
        for (int k = 0; k < cat->n_experts; k++) {
            coe_buf_puts(b, k ? ",{\"name\":" : "{\"name\":");
            expert_name(b, cfg, cat->experts[k]);
            coe_buf_printf(b, ",\"quality\":%g,\"cost\":%g}", cat->quality[k], cfg->experts[cat->experts[k]].cost);
        }
        coe_buf_puts(b, "]}");
    }
    coe_buf_puts(b, "]");
}

int coe_console_state(coe_buf *b, const coe_config *cfg, int inflight)
{
    coe_buf_printf(b, "{\"version\":\"%s\",\"now_ms\":%lld,\"inflight\":%d,", COE_VERSION, coe_wall_ms(),
                   inflight);
    requests_json(b);
    coe_buf_puts(b, ",");
    experts_json(b, cfg);
    coe_buf_puts(b, ",");
    routes_json(b, cfg);
    return coe_buf_puts(b, "}");
}
