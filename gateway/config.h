/* The configuration: one JSON file, validated whole, shared read-only and
 * reference-counted so that a reload (SIGHUP) never pulls it from under a request. */
#ifndef COE_CONFIG_H
#define COE_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "gateway/breaker.h"

#define COE_NAME_MAX 64

typedef enum coe_expert_kind {
    COE_EXPERT_REMOTE, /* an OpenAI-compatible server, over libcurl */
    COE_EXPERT_ECHO,   /* answers with the last user message; for demos and health checks */
    COE_EXPERT_LOCAL,  /* a GGUF model run in-process (backends/local.h) */
    COE_EXPERT_FUSION, /* a fusion group over local experts, from "fusions" (experts/fusion.h) */
} coe_expert_kind;

struct coe_local;
struct coe_fusion;

typedef struct coe_expert_cfg {
    char name[COE_NAME_MAX + 1];
    coe_expert_kind kind;
    /* remote */
    char *base_url;       /* owned; e.g. http://127.0.0.1:8000/v1, no trailing slash */
    char *model;          /* owned; upstream model name (defaults to the expert's name) */
    char *api_key_env;    /* owned; NULL when the upstream needs no key */
    char *api_key;        /* owned; read from api_key_env at load; never logged */
    char **headers;       /* owned; "Name: value" lines */
    int n_headers;
    long connect_timeout_ms;
    long first_byte_timeout_ms; /* request sent -> first content (a body byte; for streams an event, not a comment) */
    long chunk_timeout_ms;      /* longest time without content once it has started */
    long stream_timeout_ms;     /* request sent -> the whole answer; 0: no limit */
    int retries;                /* extra attempts on this expert before its fallbacks */
    long retry_backoff_ms;      /* base of the jittered exponential backoff */
    long max_retry_after_ms;    /* a longer Retry-After skips to the fallbacks */
    bool send_max_completion_tokens; /* the upstream reads max_completion_tokens, not max_tokens */
    unsigned capabilities;      /* COE_CAP_* it can serve: remote, as configured (all by default); others none */
    /* echo */
    long delay_ms;              /* pause between streamed words */
    /* local */
    char *path;                 /* owned; the GGUF file, relative paths from the config's folder */
    int threads;                /* engine threads; 0: one per CPU */
    int device;                 /* coe_device: where the engine computes */
    int context;                /* positions per sequence; 0: the model's, at most 4096 */
    int max_batch;              /* sequences decoded together */
    int max_queue;              /* requests waiting beyond max_batch */
    char *chat_template;        /* owned; a family name overriding the model's template, or NULL */
    struct coe_local *local;    /* owned; the loaded model (and, to serve, its scheduler) */
    /* fusion: a group in "fusions", served like an expert under its name */
    int *members;               /* owned; indexes of its local experts */
    int n_members;
    int router_expert;          /* index of the local expert whose model routes */
    char *selector_path;        /* owned */
    int fusion_mode;            /* coe_fusion_mode */
    double lambda;              /* with lambda_set; else the selector's */
    bool lambda_set;
    struct coe_fusion *fusion;  /* owned; NULL for config check */
    /* all kinds */
    int max_concurrency;        /* 0: unlimited */
    long max_tokens;            /* cap on max_tokens; 0: none */
    double cost;                /* relative cost per request, for routing policies */
    int *fallbacks;             /* owned; indexes into coe_config.experts */
    int n_fallbacks;
    int breaker_failures;       /* failed attempts in a row that open the circuit; 0: never */
    long breaker_cooldown_ms;   /* how long an open circuit stays open before a trial */
    atomic_int inflight;        /* runtime: requests now being answered */
    coe_breaker breaker;        /* runtime */
} coe_expert_cfg;

struct coe_router;

/* A category's experts with their quality scores (higher is better). */
typedef struct coe_category_cfg {
    char name[COE_NAME_MAX + 1];
    int *experts;               /* owned; indexes into coe_config.experts */
    double *quality;            /* owned */
    int n_experts;
} coe_category_cfg;

typedef struct coe_route_cfg {
    char name[COE_NAME_MAX + 1];
    int default_expert;         /* index into coe_config.experts: no router, or a category with no experts */
    /* The learned policy, when the route has a router: */
    char *router_path;          /* owned */
    struct coe_router *router;  /* owned; loaded with the configuration */
    struct coe_router_gpu *gpu; /* owned; the router on a GPU (serving, router.device), or NULL */
    struct coe_router_batcher *batcher; /* owned; gathers concurrent requests' classifications, or NULL */
    int *category_of_class;     /* owned; router class -> index into coe_config.categories, or -1 */
    double threshold;           /* below this top probability, the fallback answers */
    int fallback_expert;        /* index into coe_config.experts */
    double cost_weight;         /* expert score = quality - cost_weight * cost */
} coe_route_cfg;

typedef struct coe_server_cfg {
    char *host;                 /* owned */
    int port;                   /* 0: any free port, printed at start */
    char *api_keys_env;         /* owned; NULL: no authentication */
    char **api_keys;            /* owned; from api_keys_env, comma-separated */
    int n_api_keys;
    size_t max_body_bytes;
    size_t stream_buffer_bytes; /* a stream's bytes waiting for a slow client, at most; beyond, it ends with an error */
    int max_json_depth;
    int connection_timeout_s;   /* idle connections are closed after this */
    int headers_timeout_s;      /* a request's headers must be in within this, however steadily they trickle */
    int body_timeout_s;         /* and its body within this, from the end of its headers */
    int max_connections;
    int max_connections_per_ip;
    int threads;                /* HTTP worker threads; 0: one per core */
    int max_inflight;           /* requests being answered at once; 503 beyond */
    long shutdown_grace_ms;     /* SIGTERM: how long in-flight requests may finish */
    bool access_log;
} coe_server_cfg;

/* Where the routes' routers classify ("router" in the file). */
typedef struct coe_router_settings {
    int device;                 /* coe_device: auto (a GPU when there is one), cpu or cuda */
    int batch_window_us;        /* how long a routed request waits for others to be classified with */
    int max_batch;              /* the most classified together */
} coe_router_settings;

typedef struct coe_config {
    atomic_int refs;
    char *path;                 /* owned; "<built-in demo>" for the built-in one */
    coe_server_cfg server;
    coe_router_settings router;
    coe_expert_cfg *experts;    /* owned, n_experts: the experts, then the fusion groups */
    int n_experts;
    coe_route_cfg *routes;      /* owned, n_routes */
    int n_routes;
    coe_category_cfg *categories; /* owned, n_categories */
    int n_categories;
} coe_config;

/* How strictly the environment is checked: serve needs every named variable set,
 * config check only warns, since it may run on another machine. */
typedef enum { COE_CONFIG_SERVE = 0, COE_CONFIG_CHECK = 1 } coe_config_mode;

/* Parses and validates text (len bytes) read from file name. On success *out is a new
 * config with one reference. Every problem found is appended to diag, one line each,
 * as "NAME: json.path: what is wrong"; warnings are prefixed "warning: ". Returns 0,
 * or COE_EPARSE / COE_EINVAL when there were errors. */
int coe_config_parse(const char *text, size_t len, const char *name, coe_config_mode mode,
                     coe_config **out, coe_buf *diag);
/* Reads path and parses it as above. */
int coe_config_load(const char *path, coe_config_mode mode, coe_config **out, coe_buf *diag);
/* The built-in demo configuration, used when serve is given no --config. */
extern const char coe_config_demo_json[];

coe_config *coe_config_ref(coe_config *c);
/* Drops a reference; frees on the last one and sets *c to NULL. */
void coe_config_unref(coe_config **c);

/* Index of the expert, route or category named name, or -1. */
int coe_config_find_expert(const coe_config *c, const char *name);
int coe_config_find_route(const coe_config *c, const char *name);
int coe_config_find_category(const coe_config *c, const char *name);

/* "4 experts, 1 fusion group, 1 route": what a configuration serves, for messages. */
void coe_config_summary(const coe_config *c, char *out, size_t n);

#endif
