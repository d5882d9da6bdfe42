#include "router/eval.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

int coe_eval_classifier(const coe_router *m, const coe_dataset *d, coe_eval *e)
{
    memset(e, 0, sizeof *e);
    int C = m->n_classes;
    e->n_classes = C;
    e->categories = m->categories;
    e->n = d->n;
    e->precision = calloc((size_t)C, sizeof(double));
    e->recall = calloc((size_t)C, sizeof(double));
    e->f1 = calloc((size_t)C, sizeof(double));
    e->confusion = calloc((size_t)C * (size_t)C, sizeof(long));
    e->predicted = calloc(d->n ? d->n : 1, sizeof(int));
    e->confidence = calloc(d->n ? d->n : 1, sizeof(float));
    e->probs = calloc((d->n ? d->n : 1) * (size_t)C, sizeof(float));
    e->n_outputs = m->n_outputs;
    e->q = m->output_category ? calloc((d->n ? d->n : 1) * (size_t)m->n_outputs, sizeof(float)) : NULL;
    if (!e->precision || !e->recall || !e->f1 || !e->confusion || !e->predicted || !e->confidence || !e->probs ||
        (m->output_category && !e->q)) {
        coe_eval_free(e);
        return COE_ENOMEM;
    }
    size_t right = 0;
    for (size_t i = 0; i < d->n; i++) {
        float *probs = e->probs + i * (size_t)C;
        int rc = e->q ? coe_router_classify_outputs(m, d->texts[i], strlen(d->texts[i]),
                                                    e->q + i * (size_t)m->n_outputs, probs)
                      : coe_router_classify_text(m, d->texts[i], strlen(d->texts[i]), probs);
        if (rc) {
            coe_eval_free(e);
            return rc;
        }
        int best = 0;
        for (int c = 1; c < C; c++)
            if (probs[c] > probs[best])
                best = c;
        e->predicted[i] = best;
        e->confidence[i] = probs[best];
        int y = d->labels[i];
        bool ok = y == best;
        right += ok;
        if (y < 0)
            e->unknown++;
        else
            e->confusion[(size_t)y * (size_t)C + (size_t)best]++;
        int bin = (int)(probs[best] * COE_ECE_BINS);
        bin = bin >= COE_ECE_BINS ? COE_ECE_BINS - 1 : bin;
        e->bin_count[bin]++;
        e->bin_confidence[bin] += probs[best];
        e->bin_accuracy[bin] += ok;
    }
    e->accuracy = d->n ? (double)right / (double)d->n : 0;
    for (int c = 0; c < C; c++) {
        long tp = e->confusion[(size_t)c * (size_t)C + (size_t)c], pred = 0, truth = 0;
        for (int k = 0; k < C; k++) {
            pred += e->confusion[(size_t)k * (size_t)C + (size_t)c];
            truth += e->confusion[(size_t)c * (size_t)C + (size_t)k];
        }
        e->precision[c] = pred ? (double)tp / (double)pred : 0;
        e->recall[c] = truth ? (double)tp / (double)truth : 0;
        double s = e->precision[c] + e->recall[c];
        e->f1[c] = s > 0 ? 2 * e->precision[c] * e->recall[c] / s : 0;
        e->macro_f1 += e->f1[c] / C;
    }
    for (int b = 0; b < COE_ECE_BINS; b++)
        if (e->bin_count[b]) {
            e->bin_confidence[b] /= (double)e->bin_count[b];
            e->bin_accuracy[b] /= (double)e->bin_count[b];
            double gap = e->bin_confidence[b] - e->bin_accuracy[b];
            e->ece += (gap < 0 ? -gap : gap) * (double)e->bin_count[b] / (double)(d->n ? d->n : 1);
        }
    return 0;
}

void coe_eval_free(coe_eval *e)
{
    free(e->precision);
    free(e->recall);
    free(e->f1);
    free(e->confusion);
    free(e->predicted);
    free(e->confidence);
    free(e->probs);
    free(e->q);
    memset(e, 0, sizeof *e);
}

int coe_eval_markdown(const coe_eval *e, coe_buf *b)
{
    coe_buf_printf(b, "# Router evaluation\n\n| rows | accuracy | macro-F1 | ECE |\n|---|---|---|---|\n"
                      "| %zu | %.4f | %.4f | %.4f |\n\n",
                   e->n, e->accuracy, e->macro_f1, e->ece);
    if (e->unknown)
        coe_buf_printf(b, "%zu rows have a category the router does not know; they count as wrong.\n\n", e->unknown);
    coe_buf_puts(b, "| category | precision | recall | F1 | rows |\n|---|---|---|---|---|\n");
    for (int c = 0; c < e->n_classes; c++) {
        long truth = 0;
        for (int k = 0; k < e->n_classes; k++)
            truth += e->confusion[(size_t)c * (size_t)e->n_classes + (size_t)k];
        coe_buf_printf(b, "| %s | %.4f | %.4f | %.4f | %ld |\n", e->categories[c], e->precision[c], e->recall[c],
                       e->f1[c], truth);
    }
    coe_buf_puts(b, "\n## Confusion matrix (rows: true category, columns: predicted)\n\n|  |");
    for (int c = 0; c < e->n_classes; c++)
        coe_buf_printf(b, " %d |", c);
    coe_buf_puts(b, "\n|---|");
    for (int c = 0; c < e->n_classes; c++)
        coe_buf_puts(b, "---|");
    coe_buf_puts(b, "\n");
    for (int r = 0; r < e->n_classes; r++) {
        coe_buf_printf(b, "| %d %s |", r, e->categories[r]);
        for (int c = 0; c < e->n_classes; c++)
            coe_buf_printf(b, " %ld |", e->confusion[(size_t)r * (size_t)e->n_classes + (size_t)c]);
        coe_buf_puts(b, "\n");
    }
    return 0;
}

int coe_eval_json(const coe_eval *e, coe_buf *b)
{
    coe_buf_printf(b, "{\"rows\":%zu,\"unknown_category_rows\":%zu,\"accuracy\":%.6f,\"macro_f1\":%.6f,\"ece\":%.6f,"
                      "\"categories\":[",
                   e->n, e->unknown, e->accuracy, e->macro_f1, e->ece);
    for (int c = 0; c < e->n_classes; c++) {
        coe_buf_printf(b, "%s{\"name\":", c ? "," : "");
        coe_buf_json_string(b, e->categories[c], strlen(e->categories[c]));
        coe_buf_printf(b, ",\"precision\":%.6f,\"recall\":%.6f,\"f1\":%.6f}", e->precision[c], e->recall[c],
                       e->f1[c]);
    }
    coe_buf_puts(b, "],\"confusion\":[");
    for (int r = 0; r < e->n_classes; r++) {
        coe_buf_printf(b, "%s[", r ? "," : "");
        for (int c = 0; c < e->n_classes; c++)
            coe_buf_printf(b, "%s%ld", c ? "," : "", e->confusion[(size_t)r * (size_t)e->n_classes + (size_t)c]);
        coe_buf_puts(b, "]");
    }
    coe_buf_puts(b, "],\"reliability\":[");
    for (int i = 0; i < COE_ECE_BINS; i++)
        coe_buf_printf(b, "%s{\"bin\":%d,\"rows\":%ld,\"confidence\":%.6f,\"accuracy\":%.6f}", i ? "," : "", i,
                       e->bin_count[i], e->bin_confidence[i], e->bin_accuracy[i]);
    return coe_buf_puts(b, "]}\n");
}
