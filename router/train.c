#include "router/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/adamw.h"
#include "common/rand.h"
#include "common/err.h"
#include "common/log.h"

coe_train_params coe_train_defaults(void)
{
    coe_train_params p;
    p.features = coe_features_defaults();
    p.dim = 64;
    p.hidden = 0;
    p.max_epochs = 30;
    p.patience = 5;
    p.batch = 32;
    p.lr = 0.01f;
    p.schedule_epochs = 0;
    p.weight_decay = 1e-4f;
    p.beta1 = 0.9f;
    p.beta2 = 0.999f;
    p.eps = 1e-8f;
    p.feature_dropout = 0.0f;
    p.seed = 1;
    return p;
}


/* Every row's features, computed once. */
typedef struct featurized {
    coe_features *rows;
    size_t n;
} featurized;

static int featurize(const coe_dataset *d, const coe_features_params *fp, featurized *out)
{
    out->n = d->n;
    out->rows = calloc(d->n ? d->n : 1, sizeof *out->rows);
    if (!out->rows)
        return COE_ENOMEM;
    for (size_t i = 0; i < d->n; i++) {
        int rc = coe_features_add_text(fp, d->texts[i], strlen(d->texts[i]), 1.0f, &out->rows[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static void free_featurized(featurized *f)
{
    for (size_t i = 0; i < f->n && f->rows; i++)
        coe_features_free(&f->rows[i]);
    free(f->rows);
}

/* Accuracy on d, and the mean cross-entropy in *loss. */
static double accuracy(const coe_router *m, const featurized *f, const coe_dataset *d, double *loss)
{
    *loss = 0;
    if (d->n == 0)
        return 0;
    float *probs = malloc((size_t)m->n_classes * sizeof *probs);
    if (!probs)
        return 0;
    size_t right = 0;
    for (size_t i = 0; i < d->n; i++) {
        coe_router_classify(m, &f->rows[i], probs);
        int best = 0;
        for (int c = 1; c < m->n_classes; c++)
            if (probs[c] > probs[best])
                best = c;
        right += best == d->labels[i];
        if (d->labels[i] >= 0)
            *loss -= log((double)probs[d->labels[i]] + 1e-12);
    }
    free(probs);
    *loss /= (double)d->n;
    return (double)right / (double)d->n;
}

int coe_router_train(const coe_dataset *train, const coe_dataset *dev, const coe_train_params *tp,
                     uint64_t data_hash, coe_train_report_fn report, void *ctx, coe_router **out,
                     int *best_epoch_out)
{
    *out = NULL;
    /* The output layer: the categories, or the finer classes when the data has them. */
    bool fine = train->n_fine > 0;
    int C = fine ? train->n_fine : train->n_categories, d = tp->dim, H = tp->hidden;
    if (train->n == 0 || train->n_categories < 2 || d < 1 || d > 4096 || H < 0 || H > 4096 || tp->batch < 1)
        return COE_EINVAL;
    coe_router *m = NULL, *best = NULL;
    featurized ft = {0}, fd = {0};
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++)
        rc = coe_router_new(k ? &best : &m, &tp->features, d, H, train->categories, train->n_categories,
                            fine ? train->fine_names : NULL, fine ? train->fine_category : NULL, C);
    if (!rc)
        rc = featurize(train, &tp->features, &ft);
    if (!rc)
        rc = featurize(dev, &tp->features, &fd);
    if (rc)
        goto done;
    snprintf(m->data_hash, sizeof m->data_hash, "%016llx", (unsigned long long)data_hash);

    int Z = coe_router_z(m);
    size_t n_embd = (size_t)tp->features.buckets * (size_t)d;
    size_t n_dense = (size_t)H * (size_t)d + (size_t)H + (size_t)C * (size_t)Z + (size_t)C;
    size_t n_all = n_embd + n_dense;
    /* Moments for every weight; gradients of the dense part; the embedding gradient
     * is kept per touched row (lazy Adam: untouched rows do not move). */
    float *mom = calloc(n_all, sizeof *mom), *vel = calloc(n_all, sizeof *vel);
    float *gdense = calloc(n_dense, sizeof *gdense);
    float *gembd = calloc(n_embd, sizeof *gembd);
    uint32_t *touched = malloc((size_t)tp->features.buckets * sizeof *touched);
    unsigned char *is_touched = calloc(tp->features.buckets, 1);
    size_t *order = malloc(train->n * sizeof *order);
    float *x = malloc((size_t)d * sizeof *x), *z = malloc((size_t)Z * sizeof *z);
    float *pr = malloc((size_t)C * sizeof *pr), *dz = malloc((size_t)Z * sizeof *dz);
    float *dx = malloc((size_t)d * sizeof *dx);
    size_t max_row = 1;
    for (size_t i = 0; i < ft.n; i++)
        max_row = ft.rows[i].n > max_row ? ft.rows[i].n : max_row;
    coe_features drop = {malloc(max_row * sizeof(uint32_t)), malloc(max_row * sizeof(float)), 0, max_row};
    if (!mom || !vel || !gdense || !gembd || !touched || !is_touched || !order || !x || !z || !pr || !dz || !dx ||
        !drop.ids || !drop.w) {
        rc = COE_ENOMEM;
        goto free_all;
    }

    uint64_t rng = tp->seed * 0x9e3779b97f4a7c15ULL + 1;
    /* Small uniform embeddings; Glorot-uniform layers; zero biases. */
    for (size_t i = 0; i < n_embd; i++)
        m->embd[i] = coe_uniform(&rng, 1.0f / (float)d);
    float a1 = sqrtf(6.0f / (float)(d + (H ? H : 1)));
    for (size_t i = 0; i < (size_t)H * (size_t)d; i++)
        m->w1[i] = coe_uniform(&rng, a1);
    float a2 = sqrtf(6.0f / (float)(Z + C));
    for (size_t i = 0; i < (size_t)C * (size_t)Z; i++)
        m->w2[i] = coe_uniform(&rng, a2);
    /* The dense weights (w1, b1, w2, b2) follow the embedding in the model's block, in
     * the order of gdense; without a hidden layer w1 and b1 are empty. */
    float *dense = m->w1;

    for (size_t i = 0; i < train->n; i++)
        order[i] = i;
    long long start = coe_now_ms();
    long step = 0;
    int horizon = tp->schedule_epochs > tp->max_epochs ? tp->schedule_epochs : tp->max_epochs;
    long steps_total = (long)horizon * (long)((train->n + (size_t)tp->batch - 1) / (size_t)tp->batch);
    double best_acc = -1, best_loss = INFINITY;
    int best_epoch = 0;
    for (int epoch = 1; epoch <= tp->max_epochs; epoch++) {
        for (size_t i = train->n - 1; i > 0; i--) {
            size_t j = (size_t)(coe_splitmix64(&rng) % (i + 1));
            size_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        double loss = 0;
        for (size_t b0 = 0; b0 < train->n; b0 += (size_t)tp->batch) {
            size_t b1 = b0 + (size_t)tp->batch < train->n ? b0 + (size_t)tp->batch : train->n;
            float scale = 1.0f / (float)(b1 - b0);
            size_t n_touched = 0;
            memset(gdense, 0, n_dense * sizeof *gdense);
            float *gw1 = gdense, *gb1 = gw1 + (size_t)H * (size_t)d, *gw2 = gb1 + H, *gb2 = gw2 + (size_t)C * (size_t)Z;
            for (size_t bi = b0; bi < b1; bi++) {
                size_t r = order[bi];
                const coe_features *f = &ft.rows[r];
                int y = fine ? train->fine_labels[r] : train->labels[r];
                if (tp->feature_dropout > 0) {
                    /* Keep each feature with probability 1 - dropout (at least one). */
                    drop.n = 0;
                    uint64_t keep_below = (uint64_t)((1.0f - tp->feature_dropout) * 16777216.0f);
                    for (size_t i = 0; i < f->n; i++)
                        if ((coe_splitmix64(&rng) >> 40) < keep_below || (i + 1 == f->n && drop.n == 0)) {
                            drop.ids[drop.n] = f->ids[i];
                            drop.w[drop.n++] = f->w[i];
                        }
                    f = &drop;
                }
                // forward: x, z, logits -> probabilities
                coe_router_embed(m, f, x);
                if (H > 0) {
                    for (int h = 0; h < H; h++) {
                        const float *row = m->w1 + (size_t)h * (size_t)d;
                        float s = m->b1[h];
                        for (int k = 0; k < d; k++)
                            s += row[k] * x[k];
                        z[h] = s > 0 ? s : 0;
                    }
                } else {
                    memcpy(z, x, (size_t)d * sizeof *z);
                }
                float mx = -INFINITY;
                for (int c = 0; c < C; c++) {
                    const float *row = m->w2 + (size_t)c * (size_t)Z;
                    float s = m->b2[c];
                    for (int k = 0; k < Z; k++)
                        s += row[k] * z[k];
                    pr[c] = s;
                    mx = s > mx ? s : mx;
                }
                float sum = 0;
                for (int c = 0; c < C; c++)
                    sum += pr[c] = expf(pr[c] - mx);
                for (int c = 0; c < C; c++)
                    pr[c] /= sum;
                loss -= log((double)pr[y] + 1e-12);
                // backward: dlogits = p - onehot(y)
                memset(dz, 0, (size_t)Z * sizeof *dz);
                for (int c = 0; c < C; c++) {
                    float g = (pr[c] - (c == y ? 1.0f : 0.0f)) * scale;
                    const float *row = m->w2 + (size_t)c * (size_t)Z;
                    float *grow = gw2 + (size_t)c * (size_t)Z;
                    for (int k = 0; k < Z; k++) {
                        grow[k] += g * z[k];
                        dz[k] += g * row[k];
                    }
                    gb2[c] += g;
                }
                if (H > 0) {
                    memset(dx, 0, (size_t)d * sizeof *dx);
                    for (int h = 0; h < H; h++) {
                        if (z[h] <= 0)
                            continue;
                        const float *row = m->w1 + (size_t)h * (size_t)d;
                        float *grow = gw1 + (size_t)h * (size_t)d;
                        for (int k = 0; k < d; k++) {
                            grow[k] += dz[h] * x[k];
                            dx[k] += dz[h] * row[k];
                        }
                        gb1[h] += dz[h];
                    }
                } else {
                    memcpy(dx, dz, (size_t)d * sizeof *dx);
                }
                float total = 0;
                for (size_t i = 0; i < f->n; i++)
                    total += f->w[i];
                if (total <= 0)
                    continue;
                for (size_t i = 0; i < f->n; i++) {
                    uint32_t id = f->ids[i];
                    if (!is_touched[id]) {
                        is_touched[id] = 1;
                        touched[n_touched++] = id;
                    }
                    float w = f->w[i] / total;
                    float *g = gembd + (size_t)id * (size_t)d;
                    for (int k = 0; k < d; k++)
                        g[k] += w * dx[k];
                }
            }
            // AdamW step with linear decay of the learning rate
            step++;
            float lr = tp->lr * (1.0f - (float)(step - 1) / (float)steps_total);
            float c1 = 1.0f - powf(tp->beta1, (float)step), c2 = 1.0f - powf(tp->beta2, (float)step);
            const coe_adamw opt = {tp->beta1, tp->beta2, tp->eps, tp->weight_decay};
            for (size_t i = 0; i < n_dense; i++)
                coe_adamw_step(&opt, &dense[i], &mom[n_embd + i], &vel[n_embd + i], gdense[i], lr, c1, c2);
            for (size_t t = 0; t < n_touched; t++) {
                size_t base = (size_t)touched[t] * (size_t)d;
                for (int k = 0; k < d; k++) {
                    coe_adamw_step(&opt, &m->embd[base + (size_t)k], &mom[base + (size_t)k], &vel[base + (size_t)k],
                                   gembd[base + (size_t)k], lr, c1, c2);
                    gembd[base + (size_t)k] = 0;
                }
                is_touched[touched[t]] = 0;
            }
        }
        double dev_loss;
        double acc = accuracy(m, dev->n ? &fd : &ft, dev->n ? dev : train, &dev_loss);
        /* Better accuracy, or as good with a lower loss (a better calibrated model);
         * without a dev set, simply the latest. */
        if (dev->n == 0 || acc > best_acc || (acc == best_acc && dev_loss < best_loss)) {
            best_acc = acc;
            best_loss = dev_loss;
            best_epoch = epoch;
            memcpy(best->owned, m->owned, (n_embd + n_dense) * sizeof(float));
        }
        if (report) {
            coe_train_progress pg = {epoch, tp->max_epochs, loss / (double)train->n, acc, best_acc, best_epoch,
                                     (double)(coe_now_ms() - start) / 1000.0};
            report(ctx, &pg);
        }
        if (dev->n > 0 && epoch - best_epoch >= tp->patience)
            break;
    }
    memcpy(best->data_hash, m->data_hash, sizeof best->data_hash);
    if (best_epoch_out)
        *best_epoch_out = best_epoch;
    *out = best;
    best = NULL;
free_all:
    coe_features_free(&drop);
    free(mom);
    free(vel);
    free(gdense);
    free(gembd);
    free(touched);
    free(is_touched);
    free(order);
    free(x);
    free(z);
    free(pr);
    free(dz);
    free(dx);
done:
    free_featurized(&ft);
    free_featurized(&fd);
    coe_router_close(&m);
    coe_router_close(&best);
    return rc;
}
