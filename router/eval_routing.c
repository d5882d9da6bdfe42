#include "router/eval_routing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/err.h"

#define WEIGHT_STEPS 400
#define WEIGHT_MAX 0.2   /* accuracies differ by at most 1, costs by 1B or more: 0.2 covers it */
#define LEVELS 100       /* cost levels for AUC and APGR */

int coe_pool_load(const char *path, coe_pool *out, coe_buf *diag)
{
    memset(out, 0, sizeof *out);
    coe_buf text = COE_BUF_INIT;
    int rc = coe_buf_read_file(&text, path, 16u << 20, diag);
    if (rc) {
        coe_buf_free(&text);
        return rc;
    }
    cJSON *j = cJSON_ParseWithLength(text.data ? text.data : "", text.len);
    coe_buf_free(&text);
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(j, "models");
    if (!cJSON_IsArray(models) || !models->child) {
        coe_buf_printf(diag, "%s: expected {\"models\": [{\"name\": ..., \"active_params_b\": ...}, ...]}\n", path);
        cJSON_Delete(j);
        return COE_EPARSE;
    }
    int count = cJSON_GetArraySize(models);
    out->names = calloc((size_t)count, sizeof *out->names);
    out->cost = calloc((size_t)count, sizeof *out->cost);
    rc = out->names && out->cost ? 0 : COE_ENOMEM;
    int i = 0;
    for (const cJSON *m = models->child; m && !rc; m = m->next, i++) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        const cJSON *cost = cJSON_GetObjectItemCaseSensitive(m, "active_params_b");
        if (!cJSON_IsString(name) || !cJSON_IsNumber(cost) || !(cost->valuedouble > 0)) {
            coe_buf_printf(diag, "%s: models[%d]: needs a string \"name\" and a positive \"active_params_b\"\n", path,
                           i);
            rc = COE_EPARSE;
            break;
        }
        out->names[out->n] = strdup(name->valuestring);
        out->cost[out->n++] = cost->valuedouble;
    }
    cJSON_Delete(j);
    if (rc)
        coe_pool_free(out);
    return rc;
}

void coe_pool_free(coe_pool *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->names[i]);
    free(p->names);
    free(p->cost);
    memset(p, 0, sizeof *p);
}

static int column_of(const coe_dataset *d, const char *name)
{
    for (int i = 0; i < d->n_models; i++)
        if (strcmp(d->models[i], name) == 0)
            return i;
    return -1;
}

static double score(const coe_dataset *d, size_t row, int col)
{
    float s = d->scores[row * (size_t)d->n_models + (size_t)col];
    return isnan(s) ? 0 : s;
}

/* The table for one cost weight: per category, the expert with the best train
 * accuracy minus weight x cost. acc is n_categories x n_experts. */
static void build_table(const coe_routing_eval *r, const coe_pool *pool, const double *acc, int n_cat, double weight,
                        int *table)
{
    for (int c = 0; c < n_cat; c++) {
        int best = 0;
        double best_v = -INFINITY;
        for (int e = 0; e < r->n_experts; e++) {
            double v = acc[(size_t)c * (size_t)r->n_experts + (size_t)e] - weight * pool->cost[r->expert[e]];
            if (v > best_v + 1e-12) {
                best_v = v;
                best = e;
            }
        }
        table[c] = best;
    }
}

/* Best accuracy reachable with a mean cost <= level, on the efficient curve. */
static double envelope(const coe_routing_eval *r, double level)
{
    double best = -1;
    for (int i = 0; i < r->n_curve; i++)
        if (r->curve[i].cost <= level + 1e-9 && r->curve[i].accuracy > best)
            best = r->curve[i].accuracy;
    return best;
}

int coe_eval_routing(const coe_router *m, const coe_eval *classes, const coe_dataset *train, const coe_dataset *test,
                     const coe_pool *pool,
                     double max_active, double budget, const char *strong, const char *weak, coe_routing_eval *r,
                     coe_buf *diag)
{
    memset(r, 0, sizeof *r);
    r->strong = r->weak = r->at_budget = -1;
    r->budget = budget;
    int n_cat = classes->n_classes;
    if (!test->n_models || !train->n_models) {
        coe_buf_printf(diag, "routing evaluation needs \"scores\" in both the training and the test rows\n");
        return COE_EINVAL;
    }
    r->expert = calloc((size_t)pool->n, sizeof *r->expert);
    r->column = calloc((size_t)pool->n, sizeof *r->column);
    int *train_col = calloc((size_t)pool->n, sizeof *train_col);
    if (!r->expert || !r->column || !train_col) {
        free(train_col);
        return COE_ENOMEM;
    }
    for (int i = 0; i < pool->n; i++) {
        int tc = column_of(test, pool->names[i]), rc = column_of(train, pool->names[i]);
        if (tc < 0 || rc < 0) {
            coe_buf_printf(diag, "expert '%s' of the models file has no scores in the %s rows\n", pool->names[i],
                           tc < 0 ? "test" : "training");
            free(train_col);
            return COE_EINVAL;
        }
        if (pool->cost[i] <= max_active) {
            train_col[r->n_experts] = rc;
            r->column[r->n_experts] = tc;
            r->expert[r->n_experts++] = i;
        }
    }
    if (r->n_experts == 0) {
        coe_buf_printf(diag, "no expert has at most %g B active parameters\n", max_active);
        free(train_col);
        return COE_EINVAL;
    }
    for (int e = 0; e < r->n_experts; e++) {
        if (strong && !strcmp(pool->names[r->expert[e]], strong))
            r->strong = e;
        if (weak && !strcmp(pool->names[r->expert[e]], weak))
            r->weak = e;
    }
    const char *names[2] = {strong, weak}, *roles[2] = {"strong", "weak"};
    for (int k = 0; k < 2; k++) {
        int in_pool = -1;
        for (int i = 0; names[k] && i < pool->n; i++)
            if (!strcmp(pool->names[i], names[k]))
                in_pool = i;
        if (names[k] && in_pool < 0) {
            coe_buf_printf(diag, "the %s expert '%s' is not in the models file\n", roles[k], names[k]);
            free(train_col);
            return COE_EINVAL;
        }
        if (names[k] && (k == 0 ? r->strong : r->weak) < 0 && !r->apgr_note[0])
            snprintf(r->apgr_note, sizeof r->apgr_note,
                     "no AUC or APGR: the %s expert '%.60s' has %g B active parameters, over --max-active %g B",
                     roles[k], names[k], pool->cost[in_pool], max_active);
    }

    /* Route on the router's finer classes when it has them and the training rows
     * carry their field: the classes whose probabilities weigh each expert. */
    int *out_of_fine = NULL; /* train fine label -> router output */
    r->fine = classes->q && train->n_fine > 0;
    if (r->fine) {
        out_of_fine = malloc((size_t)train->n_fine * sizeof *out_of_fine);
        for (int k = 0; out_of_fine && k < train->n_fine; k++) {
            out_of_fine[k] = -1;
            for (int o = 0; o < m->n_outputs; o++)
                if (!strcmp(m->outputs[o], train->fine_names[k]))
                    out_of_fine[k] = o;
        }
    }
    int n_cls = r->fine ? m->n_outputs : n_cat;
    const float *probs = r->fine ? classes->q : classes->probs;

    /* Train accuracy of each eligible expert on each true class. */
    double *acc = calloc((size_t)n_cls * (size_t)r->n_experts, sizeof *acc);
    long *rows = calloc((size_t)n_cls, sizeof *rows);
    r->alone = calloc((size_t)r->n_experts, sizeof *r->alone);
    r->curve = calloc(WEIGHT_STEPS + 2, sizeof *r->curve);
    r->table_at_budget = calloc((size_t)n_cat, sizeof *r->table_at_budget);
    int *table = calloc((size_t)n_cls, sizeof *table);
    coe_curve_point *all = calloc(WEIGHT_STEPS + 2, sizeof *all);
    if (!acc || !rows || !r->alone || !r->curve || !r->table_at_budget || !table || !all) {
        free(acc), free(rows), free(table), free(all), free(train_col);
        return COE_ENOMEM;
    }
    for (size_t i = 0; i < train->n; i++) {
        int c = r->fine ? (out_of_fine ? out_of_fine[train->fine_labels[i]] : -1) : train->labels[i];
        if (c < 0)
            continue;
        rows[c]++;
        for (int e = 0; e < r->n_experts; e++)
            acc[(size_t)c * (size_t)r->n_experts + (size_t)e] += score(train, i, train_col[e]);
    }
    for (int c = 0; c < n_cls; c++)
        for (int e = 0; e < r->n_experts && rows[c]; e++)
            acc[(size_t)c * (size_t)r->n_experts + (size_t)e] /= (double)rows[c];
    free(out_of_fine);

    /* Experts alone and the oracle, on test. */
    size_t oracle = 0;
    for (size_t i = 0; i < test->n; i++) {
        bool any = false;
        for (int e = 0; e < r->n_experts; e++) {
            double s = score(test, i, r->column[e]);
            r->alone[e] += s;
            any |= s > 0;
        }
        oracle += any;
    }
    for (int e = 0; e < r->n_experts; e++) {
        r->alone[e] /= (double)test->n;
        if (r->alone[e] > r->alone[r->best_single])
            r->best_single = e;
    }
    r->oracle = (double)oracle / (double)test->n;

    /* The curve: one point per cost weight. Each row goes to the expert with the best
     * expected accuracy under the classifier's category probabilities, less the
     * weighted cost: sum_c p(c) acc[c][e] - w cost[e]. With a confident classifier this
     * is the category table; when it hesitates, the expert good at both candidates wins. */
    int n_all = 0;
    double *expect = malloc((size_t)r->n_experts * sizeof *expect);
    for (int k = 0; k <= WEIGHT_STEPS + 1 && expect; k++) {
        double w = k <= WEIGHT_STEPS ? WEIGHT_MAX * k / WEIGHT_STEPS : 1e9; /* the last: the cheapest */
        double right = 0, cost = 0;
        for (size_t i = 0; i < test->n; i++) {
            const float *p = probs + i * (size_t)n_cls;
            int best = 0;
            for (int e = 0; e < r->n_experts; e++) {
                double v = -w * pool->cost[r->expert[e]];
                for (int c = 0; c < n_cls; c++)
                    v += p[c] * acc[(size_t)c * (size_t)r->n_experts + (size_t)e];
                expect[e] = v;
                if (v > expect[best] + 1e-12)
                    best = e;
            }
            right += score(test, i, r->column[best]);
            cost += pool->cost[r->expert[best]];
        }
        all[n_all++] = (coe_curve_point){w, right / (double)test->n, cost / (double)test->n};
    }
    free(expect);
    /* Keep the efficient points: none cheaper is at least as accurate. */
    for (int i = 0; i < n_all; i++) {
        bool dominated = false;
        for (int k = 0; k < n_all && !dominated; k++)
            dominated = k != i && ((all[k].cost < all[i].cost - 1e-9 && all[k].accuracy >= all[i].accuracy) ||
                                   (fabs(all[k].cost - all[i].cost) < 1e-9 && all[k].accuracy > all[i].accuracy) ||
                                   (k < i && fabs(all[k].cost - all[i].cost) < 1e-9 &&
                                    all[k].accuracy == all[i].accuracy));
        if (!dominated)
            r->curve[r->n_curve++] = all[i];
    }
    for (int i = 1; i < r->n_curve; i++) /* by increasing cost */
        for (int k = i; k > 0 && r->curve[k].cost < r->curve[k - 1].cost; k--) {
            coe_curve_point t = r->curve[k];
            r->curve[k] = r->curve[k - 1];
            r->curve[k - 1] = t;
        }
    for (int i = 0; i < r->n_curve; i++)
        if (r->curve[i].cost <= budget + 1e-9 && (r->at_budget < 0 || r->curve[i].accuracy > r->curve[r->at_budget].accuracy))
            r->at_budget = i;
    if (r->at_budget >= 0 && !r->fine)
        build_table(r, pool, acc, n_cat, r->curve[r->at_budget].weight, r->table_at_budget);

    /* RouteLLM-style summary between weak and strong: over LEVELS mean costs from the
     * weak expert's to the strong one's, the best reachable accuracy; AUC is its mean,
     * APGR the mean of (accuracy - weak) / (strong - weak). */
    r->has_apgr = r->strong >= 0 && r->weak >= 0 && r->alone[r->strong] > r->alone[r->weak] &&
                  pool->cost[r->expert[r->strong]] > pool->cost[r->expert[r->weak]];
    if (r->has_apgr) {
        double cw = pool->cost[r->expert[r->weak]], cs = pool->cost[r->expert[r->strong]];
        double aw = r->alone[r->weak], as = r->alone[r->strong];
        for (int l = 0; l < LEVELS; l++) {
            double level = cw + (cs - cw) * (l + 0.5) / LEVELS;
            double a = envelope(r, level);
            if (a < aw)
                a = aw; /* the weak expert alone is always reachable at its cost */
            r->auc += a / LEVELS;
            r->apgr += (a - aw) / (as - aw) / LEVELS;
        }
    }
    free(acc);
    free(rows);
    free(table);
    free(all);
    free(train_col);
    return 0;
}

void coe_routing_eval_free(coe_routing_eval *r)
{
    free(r->expert);
    free(r->column);
    free(r->alone);
    free(r->curve);
    free(r->table_at_budget);
    memset(r, 0, sizeof *r);
}

int coe_routing_markdown(const coe_routing_eval *r, const coe_pool *pool, const coe_eval *classes, coe_buf *b)
{
    coe_buf_puts(b, "\n# Routing with the expert pool\n\n| expert alone | accuracy | active B |\n|---|---|---|\n");
    for (int e = 0; e < r->n_experts; e++)
        coe_buf_printf(b, "| %s%s | %.4f | %.1f |\n", pool->names[r->expert[e]], e == r->best_single ? " (best)" : "",
                       r->alone[e], pool->cost[r->expert[e]]);
    coe_buf_printf(b, "\nper-question oracle over these experts: %.4f\n", r->oracle);
    if (r->at_budget >= 0) {
        const coe_curve_point *p = &r->curve[r->at_budget];
        coe_buf_printf(b, "\nrouted by predicted %s, mean active <= %g B: **accuracy %.4f at %.2f B** "
                          "(cost weight %.4f)\n",
                       r->fine ? "finer class" : "category", r->budget, p->accuracy, p->cost, p->weight);
        if (!r->fine) {
            coe_buf_puts(b, "\n| category | expert (when the classifier is sure) |\n|---|---|\n");
            for (int c = 0; c < classes->n_classes; c++)
                coe_buf_printf(b, "| %s | %s |\n", classes->categories[c],
                               pool->names[r->expert[r->table_at_budget[c]]]);
        }
    } else {
        coe_buf_printf(b, "\nno routing reaches a mean active of %g B or less\n", r->budget);
    }
    if (r->has_apgr)
        coe_buf_printf(b, "\nbetween %s (weak) and %s (strong): AUC %.4f, APGR %.4f\n", pool->names[r->expert[r->weak]],
                       pool->names[r->expert[r->strong]], r->auc, r->apgr);
    else if (r->apgr_note[0])
        coe_buf_printf(b, "\n%s\n", r->apgr_note);
    else if (r->strong >= 0 && r->weak >= 0)
        coe_buf_puts(b, "\nAUC and APGR need a strong expert both costlier and more accurate than the weak one\n");
    coe_buf_puts(b, "\n## Quality versus mean cost\n\n| cost weight | accuracy | mean active B |\n|---|---|---|\n");
    for (int i = 0; i < r->n_curve; i++)
        coe_buf_printf(b, "| %.4f | %.4f | %.2f |\n", r->curve[i].weight, r->curve[i].accuracy, r->curve[i].cost);
    return 0;
}

int coe_routing_json(const coe_routing_eval *r, const coe_pool *pool, coe_buf *b)
{
    coe_buf_printf(b, "{\"oracle\":%.6f,\"experts\":[", r->oracle);
    for (int e = 0; e < r->n_experts; e++) {
        coe_buf_printf(b, "%s{\"name\":", e ? "," : "");
        coe_buf_json_string(b, pool->names[r->expert[e]], strlen(pool->names[r->expert[e]]));
        coe_buf_printf(b, ",\"accuracy\":%.6f,\"active_b\":%.3f}", r->alone[e], pool->cost[r->expert[e]]);
    }
    coe_buf_puts(b, "],\"curve\":[");
    for (int i = 0; i < r->n_curve; i++)
        coe_buf_printf(b, "%s{\"cost_weight\":%.6f,\"accuracy\":%.6f,\"mean_active_b\":%.4f}", i ? "," : "",
                       r->curve[i].weight, r->curve[i].accuracy, r->curve[i].cost);
    coe_buf_printf(b, "],\"budget_b\":%g", r->budget);
    if (r->at_budget >= 0)
        coe_buf_printf(b, ",\"at_budget\":{\"accuracy\":%.6f,\"mean_active_b\":%.4f}", r->curve[r->at_budget].accuracy,
                       r->curve[r->at_budget].cost);
    if (r->has_apgr)
        coe_buf_printf(b, ",\"auc\":%.6f,\"apgr\":%.6f", r->auc, r->apgr);
    if (r->apgr_note[0]) {
        coe_buf_puts(b, ",\"apgr_note\":");
        coe_buf_json_string(b, r->apgr_note, strlen(r->apgr_note));
    }
    return coe_buf_puts(b, "}");
}
