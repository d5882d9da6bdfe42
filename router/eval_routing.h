/* Offline evaluation of routing with a real expert pool: rows carry each expert's
 * score on them (1 if it answered right), and a models file gives each expert's
 * cost (active parameters, in billions). A category-to-expert table is built from
 * training rows for each cost weight, test rows are routed by predicted category,
 * and the quality-versus-mean-cost curve comes out. */
#ifndef COE_EVAL_ROUTING_H
#define COE_EVAL_ROUTING_H

#include "common/buf.h"
#include "router/dataset.h"
#include "router/classifier.h"
#include "router/eval.h"

typedef struct coe_pool {
    int n;
    char **names;     /* owned */
    double *cost;     /* active parameters, billions */
} coe_pool;

/* Reads {"models":[{"name","active_params_b"},...]}. */
int coe_pool_load(const char *path, coe_pool *out, coe_buf *diag);
void coe_pool_free(coe_pool *p);

typedef struct coe_curve_point {
    double weight;    /* cost weight: score = accuracy on train - weight x cost */
    double accuracy;  /* on test */
    double cost;      /* mean cost per test row */
} coe_curve_point;

typedef struct coe_routing_eval {
    int n_experts;            /* the eligible experts (cost <= max_active) */
    int *expert;              /* index into the pool */
    int *column;              /* index into the dataset's score columns */
    double *alone;            /* test accuracy of each eligible expert alone */
    int best_single;          /* index into expert[] */
    double oracle;            /* a row counts when any eligible expert got it right */
    coe_curve_point *curve;   /* the efficient points, by increasing cost */
    int n_curve;
    double budget;            /* the best point with mean cost <= budget: */
    int at_budget;            /* index into curve, -1 if none */
    int *table_at_budget;     /* per category: index into expert[] */
    int strong, weak;         /* indexes into expert[], -1 when not named */
    double auc, apgr;         /* between weak and strong (RouteLLM's summary numbers) */
    bool has_apgr;            /* strong and weak named, strong costlier and more accurate */
    char apgr_note[200];      /* why there is no AUC/APGR when they were asked for, or "" */
    bool fine;                /* routed on the router's finer classes */
} coe_routing_eval;

/* classes: m's predictions on test. train and test must have been loaded with the
 * router's categories; when m has finer classes and train was loaded with their
 * field, routing uses them. strong and weak may be NULL; a name not in the pool is an
 * error, one over max_active only leaves AUC and APGR out (apgr_note says why). */
int coe_eval_routing(const coe_router *m, const coe_eval *classes, const coe_dataset *train, const coe_dataset *test,
                     const coe_pool *pool, double max_active, double budget, const char *strong,
                     const char *weak, coe_routing_eval *out, coe_buf *diag);
void coe_routing_eval_free(coe_routing_eval *r);
int coe_routing_markdown(const coe_routing_eval *r, const coe_pool *pool, const coe_eval *classes, coe_buf *out);
int coe_routing_json(const coe_routing_eval *r, const coe_pool *pool, coe_buf *out);

#endif
