/* Route resolution: which expert answers a request. A request's model names an
 * expert (no routing) or a route; a route picks its expert (for now its default;
 * the learned category policy plugs in here). */
#ifndef COE_ROUTE_H
#define COE_ROUTE_H

#include "gateway/config.h"
#include "gateway/request.h"

typedef struct coe_route_decision {
    int expert;          /* index into cfg->experts */
    int route;           /* index into cfg->routes, or -1 when the model named an expert */
    const char *rule;    /* static: "direct" or "default" */
} coe_route_decision;

/* Returns 0, or COE_ENOTFOUND when model names neither an expert nor a route. */
int coe_route_resolve(const coe_config *cfg, const coe_request *req, coe_route_decision *out);

#endif
