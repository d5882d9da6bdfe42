/* Evaluation reports: JSON for machines, Markdown for people, SVG charts (confusion
 * matrix, reliability diagram, quality-cost curve) and one HTML page with them all. */
#ifndef COE_REPORT_H
#define COE_REPORT_H

#include "common/buf.h"
#include "router/eval.h"
#include "router/eval_routing.h"

/* The classifier's figures, and the routing ones when r is not NULL:
 * {"classifier": {...}, "routing": {...}} or the classifier object alone. */
int coe_report_json(const coe_eval *e, const coe_routing_eval *r, const coe_pool *pool, coe_buf *out);
/* Writes report.json, report.md, confusion.svg, reliability.svg, quality-cost.svg
 * (with r) and index.html into dir, which is created when missing. */
int coe_report_write(const char *dir, const coe_eval *e, const coe_routing_eval *r, const coe_pool *pool,
                     coe_buf *diag);

#endif
