/* Route resolution: which expert answers a request. A request's model names an
 * expert (no routing) or a route. A route without a router sends everything to its
 * default expert; with one, it classifies the conversation into categories and
 * picks, for the most probable category, the capable expert with the best quality
 * minus cost_weight times cost, or its fallback when the classifier is unsure. */
#ifndef COE_ROUTE_H
#define COE_ROUTE_H

#include "gateway/config.h"
#include "gateway/request.h"
#include "router/features.h"

#define COE_ROUTE_TOP 3

typedef struct coe_route_decision {
    int expert;          /* index into cfg->experts */
    int route;           /* index into cfg->routes, or -1 when the model named an expert */
    const char *rule;    /* static: "direct", "default", "threshold", "policy" or "unconfigured" */
    /* With a router: */
    int category;        /* the router's class index of the top category, -1 without a router */
    const char *category_name; /* borrowed from the router */
    float confidence;    /* its probability */
    int n_top;
    int top[COE_ROUTE_TOP];      /* the most probable classes, best first */
    float top_p[COE_ROUTE_TOP];
    double score;        /* the chosen expert's quality - cost_weight * cost, for "policy" */
    unsigned missing;    /* with COE_EUNSUPPORTED: a capability (COE_CAP_*) no candidate has */
} coe_route_decision;

/* Only experts that have the capabilities the request needs (coe_request.needs) are
 * chosen: the best capable one of the category, else the route's fallback, else its
 * default. Returns 0, COE_ENOTFOUND when model names neither an expert nor a route,
 * COE_EUNSUPPORTED when no expert it may choose can serve the request (out->missing
 * says what), or COE_ENOMEM. */
int coe_route_resolve(const coe_config *cfg, const coe_request *req, coe_route_decision *out);

/* coe_route_resolve in two halves, for a caller that classifies elsewhere (the
 * gateway hands the features to the route's batcher and goes on serving): begin
 * returns COE_ROUTE_CLASSIFY with f filled when the route's router must classify
 * them (into probs of its n_classes) before finish; else what coe_route_resolve
 * returns, the decision made. */
#define COE_ROUTE_CLASSIFY 1
int coe_route_begin(const coe_config *cfg, const coe_request *req, coe_route_decision *out, coe_features *f);
int coe_route_finish(const coe_config *cfg, const coe_request *req, const float *probs, coe_route_decision *out);
/* The route's router classifies f here, on the CPU, then coe_route_finish: where no
 * batcher serves the route, or its device failed. */
int coe_route_classify(const coe_config *cfg, const coe_request *req, const coe_features *f, coe_route_decision *out);
/* The same for a bare text, on route r (for `coegate route`). */
int coe_route_text(const coe_config *cfg, int r, const char *text, coe_route_decision *out);

#endif
