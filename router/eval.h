/* Offline evaluation of the category classifier on labeled rows. */
#ifndef COE_EVAL_H
#define COE_EVAL_H

#include "common/buf.h"
#include "router/classifier.h"
#include "router/dataset.h"

#define COE_ECE_BINS 15

typedef struct coe_eval {
    int n_classes;
    char **categories;        /* borrowed from the router */
    size_t n;                 /* rows evaluated */
    size_t unknown;           /* rows whose category the router does not know (counted wrong) */
    double accuracy, macro_f1, ece;
    double *precision, *recall, *f1;   /* per category */
    long *confusion;          /* n_classes x n_classes: [true][predicted] */
    int *predicted;           /* per row, -1 never */
    float *confidence;        /* per row: the top probability */
    float *probs;             /* per row: every category's probability (n x n_classes) */
    int n_outputs;            /* the router's outputs: categories, or finer classes */
    float *q;                 /* per row, with finer classes: their probabilities (n x n_outputs) */
    long bin_count[COE_ECE_BINS];
    double bin_confidence[COE_ECE_BINS], bin_accuracy[COE_ECE_BINS];
} coe_eval;

int coe_eval_classifier(const coe_router *m, const coe_dataset *d, coe_eval *out);
void coe_eval_free(coe_eval *e);
int coe_eval_markdown(const coe_eval *e, coe_buf *out);
int coe_eval_json(const coe_eval *e, coe_buf *out);

#endif
