#include "router/report.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"

/* Text for SVG and HTML. */
static void esc(coe_buf *b, const char *s)
{
    coe_buf_html_text(b, s, strlen(s));
}

static void svg_open(coe_buf *b, int w, int h, const char *title)
{
    coe_buf_printf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                      "<text x=\"%d\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">",
                   w, h, w, h, w / 2);
    esc(b, title);
    coe_buf_puts(b, "</text>\n");
}

/* Rows are true categories, columns predictions; cells shaded by the share of the row. */
static void confusion_svg(const coe_eval *e, coe_buf *b)
{
    int C = e->n_classes, cell = C > 20 ? 14 : 28, left = 150, top = 40;
    int w = left + C * cell + 80, h = top + C * cell + 120;
    svg_open(b, w, h, "Confusion matrix (rows: true, columns: predicted)");
    for (int r = 0; r < C; r++) {
        long total = 0;
        for (int c = 0; c < C; c++)
            total += e->confusion[(size_t)r * (size_t)C + (size_t)c];
        coe_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", left - 6, top + r * cell + cell / 2 + 4);
        esc(b, e->categories[r]);
        coe_buf_puts(b, "</text>\n");
        for (int c = 0; c < C; c++) {
            long v = e->confusion[(size_t)r * (size_t)C + (size_t)c];
            double share = total ? (double)v / (double)total : 0;
            int shade = 255 - (int)(share * 200);
            coe_buf_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"rgb(%d,%d,255)\" "
                              "stroke=\"#ddd\"><title>%ld</title></rect>\n",
                           left + c * cell, top + r * cell, cell, cell, shade, shade, v);
            if (cell >= 28 && v)
                coe_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\">%ld</text>\n",
                               left + c * cell + cell / 2, top + r * cell + cell / 2 + 3, v);
        }
    }
    for (int c = 0; c < C; c++) {
        int x = left + c * cell + cell / 2, y = top + C * cell + 8;
        coe_buf_printf(b, "<text x=\"%d\" y=\"%d\" transform=\"rotate(60 %d %d)\">", x, y, x, y);
        esc(b, e->categories[c]);
        coe_buf_puts(b, "</text>\n");
    }
    coe_buf_puts(b, "</svg>\n");
}

/* A square plot area with axes from 0 (or xmin, on a log scale) to xmax and ymin to ymax. */
typedef struct plot {
    int x0, y0, size;
    double xmax, ymin, ymax;
    bool logx;
    double xmin; /* with logx */
} plot;

static double px(const plot *p, double x)
{
    if (p->logx)
        return p->x0 + (log10(x) - log10(p->xmin)) / (log10(p->xmax) - log10(p->xmin)) * p->size;
    return p->x0 + x / p->xmax * p->size;
}
static double py(const plot *p, double y) { return p->y0 + p->size - (y - p->ymin) / (p->ymax - p->ymin) * p->size; }

static void axes(coe_buf *b, const plot *p, const char *xlabel, const char *ylabel)
{
    coe_buf_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", p->x0,
                   p->y0, p->size, p->size);
    for (int i = 0; i <= 4; i++) {
        double yv = p->ymin + (p->ymax - p->ymin) * i / 4;
        coe_buf_printf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", p->x0 - 4, py(p, yv) + 4, yv);
        if (!p->logx)
            coe_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.3g</text>\n", px(p, p->xmax * i / 4),
                           p->y0 + p->size + 14, p->xmax * i / 4);
    }
    /* A log axis: 1, 2 and 5 of each decade in range. */
    for (double dec = pow(10, floor(log10(p->xmin))); p->logx && dec <= p->xmax; dec *= 10)
        for (int m = 1; m <= 5; m += m == 1 ? 1 : 3) {
            double xv = dec * m;
            if (xv < p->xmin || xv > p->xmax)
                continue;
            coe_buf_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#333\"/>\n", px(p, xv),
                           p->y0 + p->size, px(p, xv), p->y0 + p->size + 4);
            coe_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", px(p, xv),
                           p->y0 + p->size + 16, xv);
        }
    coe_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", p->x0 + p->size / 2,
                   p->y0 + p->size + 32, xlabel);
    coe_buf_printf(b, "<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">%s</text>\n",
                   p->y0 + p->size / 2, p->y0 + p->size / 2, ylabel);
}

/* Accuracy against confidence per bin; the diagonal is perfect calibration. */
static void reliability_svg(const coe_eval *e, coe_buf *b)
{
    plot p = {60, 40, 320, 1, 0, 1, false, 0};
    svg_open(b, 420, 420, "Reliability diagram");
    axes(b, &p, "confidence", "accuracy");
    coe_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#aaa\" stroke-dasharray=\"4\"/>\n",
                   px(&p, 0), py(&p, 0), px(&p, 1), py(&p, 1));
    for (int i = 0; i < COE_ECE_BINS; i++) {
        if (!e->bin_count[i])
            continue;
        double x0 = (double)i / COE_ECE_BINS, x1 = (double)(i + 1) / COE_ECE_BINS;
        coe_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#4a7fd6\" "
                          "fill-opacity=\"0.7\"><title>%ld rows, confidence %.3f, accuracy %.3f</title></rect>\n",
                       px(&p, x0) + 1, py(&p, e->bin_accuracy[i]), px(&p, x1) - px(&p, x0) - 2,
                       py(&p, 0) - py(&p, e->bin_accuracy[i]), e->bin_count[i], e->bin_confidence[i],
                       e->bin_accuracy[i]);
    }
    coe_buf_printf(b, "<text x=\"%d\" y=\"%d\">ECE %.4f</text>\n</svg>\n", p.x0 + 8, p.y0 + 16, e->ece);
}

/* A label placed on a chart, for keeping labels apart. */
typedef struct label {
    double x, y, w;
} label;

/* The efficient routing points, each expert alone, the per-question oracle and the
 * budget; on a log cost axis when costs span more than 20 times. Expert labels that
 * would overlap another label or a point are moved down, with a line back to theirs. */
static void curve_svg(const coe_routing_eval *r, const coe_pool *pool, coe_buf *b)
{
    double xmin = INFINITY, xmax = 0, ymin = fmin(1, r->oracle), ymax = r->oracle;
    for (int e = 0; e < r->n_experts; e++) {
        double c = pool->cost[r->expert[e]];
        xmax = fmax(xmax, c);
        if (c > 0)
            xmin = fmin(xmin, c);
        ymin = fmin(ymin, r->alone[e]);
        ymax = fmax(ymax, r->alone[e]);
    }
    for (int i = 0; i < r->n_curve; i++) {
        ymin = fmin(ymin, r->curve[i].accuracy);
        ymax = fmax(ymax, r->curve[i].accuracy);
        if (r->curve[i].cost > 0)
            xmin = fmin(xmin, r->curve[i].cost);
    }
    bool logx = isfinite(xmin) && xmax / xmin > 20;
    plot p = {60, 40, 360, xmax * (logx ? 1.5 : 1.1), fmax(0, ymin - 0.02), fmin(1, ymax + 0.02), logx, xmin / 1.5};
    svg_open(b, 640, 470, "Quality versus mean active parameters");
    axes(b, &p, logx ? "mean active parameters (B, log scale)" : "mean active parameters (B)", "accuracy");
    coe_buf_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#2a9d5c\" stroke-dasharray=\"6 3\">"
                      "<title>per-question oracle %.4f</title></line>\n",
                   p.x0, py(&p, r->oracle), p.x0 + p.size, py(&p, r->oracle), r->oracle);
    coe_buf_puts(b, "<polyline fill=\"none\" stroke=\"#d6604a\" stroke-width=\"2\" points=\"");
    for (int i = 0; i < r->n_curve; i++)
        if (!logx || r->curve[i].cost > 0)
            coe_buf_printf(b, "%.1f,%.1f ", px(&p, r->curve[i].cost), py(&p, r->curve[i].accuracy));
    coe_buf_puts(b, "\"/>\n");
    /* Points first (labels must not cover them), then labels from the top down. */
    label *placed = calloc((size_t)r->n_experts * 2, sizeof *placed);
    int *order = calloc((size_t)r->n_experts, sizeof *order);
    int n_placed = 0, n_order = 0;
    for (int e = 0; e < r->n_experts; e++) {
        double c = pool->cost[r->expert[e]];
        if (logx && c <= 0)
            continue;
        double x = px(&p, c), y = py(&p, r->alone[e]);
        coe_buf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#333\"><title>%.4f at %g B</title></circle>\n",
                       x, y, r->alone[e], c);
        if (placed && order) {
            placed[n_placed++] = (label){x - 5, y + 4, 10};
            int k = n_order++;
            while (k > 0 && r->alone[order[k - 1]] < r->alone[e]) {
                order[k] = order[k - 1];
                k--;
            }
            order[k] = e;
        }
    }
    for (int i = 0; i < n_order; i++) {
        int e = order[i];
        double x = px(&p, pool->cost[r->expert[e]]), y = py(&p, r->alone[e]);
        const char *name = pool->names[r->expert[e]];
        double w = 6.2 * (double)strlen(name), lx = x + 6, ly = y - 4;
        for (bool moved = true; moved;) {
            moved = false;
            for (int k = 0; k < n_placed; k++)
                if (fabs(placed[k].y - ly) < 11 && lx < placed[k].x + placed[k].w && placed[k].x < lx + w) {
                    ly = placed[k].y + 11;
                    moved = true;
                }
        }
        placed[n_placed++] = (label){lx, ly, w};
        if (ly > y - 4 + 0.5)
            coe_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#bbb\"/>\n", x, y, lx,
                           ly - 4);
        coe_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\">", lx, ly);
        esc(b, name);
        coe_buf_puts(b, "</text>\n");
    }
    free(order);
    free(placed);
    if (r->budget < p.xmax && (!logx || r->budget > p.xmin))
        coe_buf_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#999\" stroke-dasharray=\"3\"/>\n",
                       px(&p, r->budget), p.y0, px(&p, r->budget), p.y0 + p.size);
    /* The legend, right of the plot. */
    int lx = p.x0 + p.size + 16, ly = p.y0 + 10;
    coe_buf_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#d6604a\" stroke-width=\"2\"/>"
                      "<text x=\"%d\" y=\"%d\">routed (best per cost)</text>\n",
                   lx, ly, lx + 22, ly, lx + 28, ly + 4);
    ly += 18;
    coe_buf_printf(b, "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"#333\"/><text x=\"%d\" y=\"%d\">an expert alone</text>\n",
                   lx + 11, ly, lx + 28, ly + 4);
    ly += 18;
    coe_buf_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#2a9d5c\" stroke-dasharray=\"6 3\"/>"
                      "<text x=\"%d\" y=\"%d\">oracle %.4f</text>\n",
                   lx, ly, lx + 22, ly, lx + 28, ly + 4, r->oracle);
    ly += 18;
    coe_buf_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#999\" stroke-dasharray=\"3\"/>"
                      "<text x=\"%d\" y=\"%d\">budget %g B</text>\n</svg>\n",
                   lx, ly, lx + 22, ly, lx + 28, ly + 4, r->budget);
}

/* The routing figures as HTML: each expert alone, the table chosen at the budget,
 * AUC and APGR, and the curve's points. */
static void routing_html(const coe_routing_eval *r, const coe_pool *pool, const coe_eval *e, coe_buf *b)
{
    coe_buf_puts(b, "<h2>Routing with the expert pool</h2>\n<table><tr><th>expert alone</th><th>accuracy</th>"
                    "<th>active B</th></tr>\n");
    for (int k = 0; k < r->n_experts; k++) {
        coe_buf_puts(b, "<tr><td>");
        esc(b, pool->names[r->expert[k]]);
        coe_buf_printf(b, "%s</td><td>%.4f</td><td>%.1f</td></tr>\n", k == r->best_single ? " (best)" : "", r->alone[k],
                       pool->cost[r->expert[k]]);
    }
    coe_buf_printf(b, "</table>\n<p>Per-question oracle over these experts: %.4f.</p>\n", r->oracle);
    if (r->at_budget >= 0) {
        const coe_curve_point *pt = &r->curve[r->at_budget];
        coe_buf_printf(b, "<p>Routed by predicted %s, mean active &le; %g B: accuracy <b>%.4f</b> at %.2f B "
                          "(cost weight %.4f).</p>\n",
                       r->fine ? "finer class" : "category", r->budget, pt->accuracy, pt->cost, pt->weight);
        if (!r->fine) {
            coe_buf_puts(b, "<table><tr><th>category</th><th>expert (when the classifier is sure)</th></tr>\n");
            for (int c = 0; c < e->n_classes; c++) {
                coe_buf_puts(b, "<tr><td>");
                esc(b, e->categories[c]);
                coe_buf_puts(b, "</td><td>");
                esc(b, pool->names[r->expert[r->table_at_budget[c]]]);
                coe_buf_puts(b, "</td></tr>\n");
            }
            coe_buf_puts(b, "</table>\n");
        }
    } else {
        coe_buf_printf(b, "<p>No routing reaches a mean active of %g B or less.</p>\n", r->budget);
    }
    if (r->has_apgr) {
        coe_buf_puts(b, "<p>Between ");
        esc(b, pool->names[r->expert[r->weak]]);
        coe_buf_puts(b, " (weak) and ");
        esc(b, pool->names[r->expert[r->strong]]);
        coe_buf_printf(b, " (strong): AUC <b>%.4f</b>, APGR <b>%.4f</b>.</p>\n", r->auc, r->apgr);
    } else if (r->apgr_note[0]) {
        coe_buf_puts(b, "<p>");
        esc(b, r->apgr_note);
        coe_buf_puts(b, ".</p>\n");
    }
    coe_buf_puts(b, "<h3>Quality versus mean cost</h3>\n<table><tr><th>cost weight</th><th>accuracy</th>"
                    "<th>mean active B</th></tr>\n");
    for (int i = 0; i < r->n_curve; i++)
        coe_buf_printf(b, "<tr><td>%.4f</td><td>%.4f</td><td>%.2f</td></tr>\n", r->curve[i].weight,
                       r->curve[i].accuracy, r->curve[i].cost);
    coe_buf_puts(b, "</table>\n");
}

static int write_file(const char *dir, const char *name, const coe_buf *b, coe_buf *diag)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return coe_buf_write_file(b, path, diag);
}

int coe_report_json(const coe_eval *e, const coe_routing_eval *r, const coe_pool *pool, coe_buf *out)
{
    if (!r)
        return coe_eval_json(e, out);
    coe_buf_puts(out, "{\"classifier\":");
    coe_eval_json(e, out);
    out->len--; /* its newline */
    coe_buf_puts(out, ",\"routing\":");
    coe_routing_json(r, pool, out);
    return coe_buf_puts(out, "}\n");
}

int coe_report_write(const char *dir, const coe_eval *e, const coe_routing_eval *r, const coe_pool *pool,
                     coe_buf *diag)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        coe_buf_printf(diag, "%s: cannot create: %s\n", dir, strerror(errno));
        return COE_EIO;
    }
    coe_buf md = COE_BUF_INIT, json = COE_BUF_INIT, conf = COE_BUF_INIT, rel = COE_BUF_INIT, cur = COE_BUF_INIT;
    coe_buf html = COE_BUF_INIT;
    coe_eval_markdown(e, &md);
    coe_report_json(e, r, pool, &json);
    if (r) {
        coe_routing_markdown(r, pool, e, &md);
        curve_svg(r, pool, &cur);
    }
    confusion_svg(e, &conf);
    reliability_svg(e, &rel);
    coe_buf_printf(&html, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>coegate router evaluation"
                          "</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
                          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
                          ".charts{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>\n"
                          "<h1>Router evaluation</h1>\n<p>%zu rows: accuracy <b>%.4f</b>, macro-F1 %.4f, "
                          "ECE %.4f.</p>\n<div class=\"charts\">\n%s%s%s</div>\n<h2>Per category</h2>\n<table>"
                          "<tr><th>category</th><th>precision</th><th>recall</th><th>F1</th></tr>\n",
                   e->n, e->accuracy, e->macro_f1, e->ece, conf.data, rel.data, r ? cur.data : "");
    for (int c = 0; c < e->n_classes; c++) {
        coe_buf_puts(&html, "<tr><td>");
        esc(&html, e->categories[c]);
        coe_buf_printf(&html, "</td><td>%.4f</td><td>%.4f</td><td>%.4f</td></tr>\n", e->precision[c], e->recall[c],
                       e->f1[c]);
    }
    coe_buf_puts(&html, "</table>\n");
    if (r)
        routing_html(r, pool, e, &html);
    coe_buf_puts(&html, "<p>Machine-readable: <a href=\"report.json\">report.json</a>; "
                        "for people: <a href=\"report.md\">report.md</a>.</p>\n</body></html>\n");
    int rc = write_file(dir, "report.md", &md, diag);
    if (!rc)
        rc = write_file(dir, "report.json", &json, diag);
    if (!rc)
        rc = write_file(dir, "confusion.svg", &conf, diag);
    if (!rc)
        rc = write_file(dir, "reliability.svg", &rel, diag);
    if (!rc && r)
        rc = write_file(dir, "quality-cost.svg", &cur, diag);
    if (!rc)
        rc = write_file(dir, "index.html", &html, diag);
    coe_buf_free(&md);
    coe_buf_free(&json);
    coe_buf_free(&conf);
    coe_buf_free(&rel);
    coe_buf_free(&cur);
    coe_buf_free(&html);
    return rc;
}
