#include "router/route.h"

#include <string.h>

#include "common/err.h"
#include "router/batcher.h"
#include "router/classifier.h"

/* The text of a message's content: a string, or its text parts joined. */
static void add_content(const coe_features_params *fp, const cJSON *content, float w, coe_features *f)
{
    if (cJSON_IsString(content)) {
        coe_features_add_text(fp, content->valuestring, strlen(content->valuestring), w, f);
        return;
    }
    for (const cJSON *part = cJSON_IsArray(content) ? content->child : NULL; part; part = part->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t))
            coe_features_add_text(fp, t->valuestring, strlen(t->valuestring), w, f);
    }
}

/* The last user message at weight 1, every earlier turn at the history weight. */
static void request_features(const coe_router *m, const coe_request *req, coe_features *f)
{
    if (req->endpoint == COE_EP_COMPLETIONS) {
        const char *t = coe_request_last_user_text(req);
        coe_features_add_text(&m->fp, t, strlen(t), 1.0f, f);
        return;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req->body, "messages");
    const cJSON *last = NULL;
    for (const cJSON *msg = msgs->child; msg; msg = msg->next)
        if (strcmp(cJSON_GetObjectItemCaseSensitive(msg, "role")->valuestring, "user") == 0)
            last = msg;
    for (const cJSON *msg = msgs->child; msg; msg = msg->next) {
        float w = msg == last ? 1.0f : m->fp.history_weight;
        if (w > 0)
            add_content(&m->fp, cJSON_GetObjectItemCaseSensitive(msg, "content"), w, f);
    }
}

static bool capable(const coe_config *cfg, int expert, unsigned need)
{
    return expert >= 0 && (need & ~cfg->experts[expert].capabilities) == 0;
}

/* The policy, once the probabilities are known; need: what the request needs. */
static void decide(const coe_config *cfg, const coe_route_cfg *r, const float *probs, unsigned need,
                   coe_route_decision *d)
{
    const coe_router *m = r->router;
    d->n_top = 0;
    for (int k = 0; k < COE_ROUTE_TOP && k < m->n_classes; k++) {
        int best = -1;
        for (int c = 0; c < m->n_classes; c++) {
            bool taken = false;
            for (int t = 0; t < k; t++)
                taken |= d->top[t] == c;
            if (!taken && (best < 0 || probs[c] > probs[best]))
                best = c;
        }
        d->top[k] = best;
        d->top_p[k] = probs[best];
        d->n_top++;
    }
    d->category = d->top[0];
    d->category_name = m->categories[d->category];
    d->confidence = d->top_p[0];
    if (d->confidence < r->threshold) {
        d->expert = r->fallback_expert;
        d->rule = "threshold";
        return;
    }
    int ci = r->category_of_class ? r->category_of_class[d->category] : -1;
    if (ci < 0) {
        d->expert = r->default_expert;
        d->rule = "unconfigured";
        return;
    }
    const coe_category_cfg *cat = &cfg->categories[ci];
    int best = -1;
    for (int i = 0; i < cat->n_experts; i++) {
        if (!capable(cfg, cat->experts[i], need))
            continue;
        double score = cat->quality[i] - r->cost_weight * cfg->experts[cat->experts[i]].cost;
        if (best < 0 || score > d->score) {
            best = cat->experts[i];
            d->score = score;
        }
    }
    if (best < 0 && need && cat->n_experts > 0) {
        d->expert = r->fallback_expert; /* none of the category's experts can serve it */
        d->rule = "capability";
        return;
    }
    d->expert = best >= 0 ? best : r->default_expert;
    d->rule = best >= 0 ? "policy" : "unconfigured";
}

/* When the expert chosen cannot serve what the request needs: the route's fallback,
 * then its default; COE_EUNSUPPORTED when neither can. */
static int make_capable(const coe_config *cfg, const coe_route_cfg *r, unsigned need, coe_route_decision *d)
{
    if (capable(cfg, d->expert, need))
        return 0;
    int alt[2] = {r ? r->fallback_expert : -1, r ? r->default_expert : -1};
    for (int i = 0; i < 2; i++)
        if (capable(cfg, alt[i], need)) {
            d->expert = alt[i];
            d->rule = "capability";
            return 0;
        }
    unsigned lacking = d->expert >= 0 ? need & ~cfg->experts[d->expert].capabilities : need;
    d->missing = lacking & (~lacking + 1); /* the lowest bit */
    return COE_EUNSUPPORTED;
}

static void init(coe_route_decision *d, int route)
{
    memset(d, 0, sizeof *d);
    d->route = route;
    d->category = -1;
}

int coe_route_begin(const coe_config *cfg, const coe_request *req, coe_route_decision *out, coe_features *f)
{
    int r = coe_config_find_route(cfg, req->model);
    if (r < 0) {
        int e = coe_config_find_expert(cfg, req->model);
        if (e < 0)
            return COE_ENOTFOUND;
        init(out, -1);
        out->expert = e;
        out->rule = "direct";
        return make_capable(cfg, NULL, req->needs, out);
    }
    init(out, r);
    const coe_route_cfg *rc = &cfg->routes[r];
    /* Embeddings are not classified: the route's categories are of conversations. */
    if (!rc->router || req->endpoint == COE_EP_EMBEDDINGS) {
        out->expert = rc->default_expert;
        out->rule = "default";
        return make_capable(cfg, rc, req->needs, out);
    }
    request_features(rc->router, req, f);
    return COE_ROUTE_CLASSIFY;
}

int coe_route_finish(const coe_config *cfg, const coe_request *req, const float *probs, coe_route_decision *out)
{
    const coe_route_cfg *rc = &cfg->routes[out->route];
    decide(cfg, rc, probs, req->needs, out);
    return make_capable(cfg, rc, req->needs, out);
}

int coe_route_classify(const coe_config *cfg, const coe_request *req, const coe_features *f, coe_route_decision *out)
{
    const coe_router *router = cfg->routes[out->route].router;
    float probs[4096];
    int rc = router->n_classes <= 4096 ? coe_router_classify(router, f, probs) : COE_EINVAL;
    return rc ? rc : coe_route_finish(cfg, req, probs, out);
}

int coe_route_resolve(const coe_config *cfg, const coe_request *req, coe_route_decision *out)
{
    coe_features f = {0};
    int rc = coe_route_begin(cfg, req, out, &f);
    if (rc == COE_ROUTE_CLASSIFY) {
        const coe_route_cfg *r = &cfg->routes[out->route];
        float probs[4096];
        if (r->batcher && r->router->n_classes <= 4096 && !coe_router_batcher_classify(r->batcher, &f, probs))
            rc = coe_route_finish(cfg, req, probs, out);
        else /* no batcher, or its device failed */
            rc = coe_route_classify(cfg, req, &f, out);
    }
    coe_features_free(&f);
    return rc;
}

int coe_route_text(const coe_config *cfg, int r, const char *text, coe_route_decision *out)
{
    init(out, r);
    const coe_route_cfg *rc = &cfg->routes[r];
    if (!rc->router) {
        out->expert = rc->default_expert;
        out->rule = "default";
        return 0;
    }
    float probs[4096];
    if (rc->router->n_classes > 4096)
        return COE_EINVAL;
    int err = coe_router_classify_text(rc->router, text, strlen(text), probs);
    if (!err)
        decide(cfg, rc, probs, 0, out);
    return err;
}
