/* The category classifier: an embedding bag over hashed features, an optional
 * hidden layer (ReLU), softmax over the categories. Stored as GGUF with its
 * categories, feature settings and a hash of its training data.
 *
 *   x = sum_i w_i E[id_i] / sum_i w_i        E (buckets, dim)
 *   z = relu(W1 x + b1)  or  z = x           W1 (hidden, dim)
 *   q = softmax(W2 z + b2)                   W2 (outputs, hidden or dim)
 *   p[c] = sum of q over the outputs of category c
 *
 * The outputs are the categories, or finer classes (an intent, a source) that each
 * belong to one category: learning the finer distinctions often separates the
 * categories better. */
#ifndef COE_CLASSIFIER_H
#define COE_CLASSIFIER_H

#include <stdbool.h>

#include "common/buf.h"
#include "common/gguf.h"
#include "router/features.h"

#define COE_FIELD_MAX 64

/* The weights of one ensemble member. */
typedef struct coe_router_member {
    float *embd, *w1, *b1, *w2, *b2;
    float *owned;           /* when built here: the block holding them */
} coe_router_member;

typedef struct coe_router {
    coe_features_params fp;
    int dim, hidden, n_classes;
    char **categories;      /* owned, n_classes */
    int n_outputs;          /* n_classes, or the number of finer classes */
    char **outputs;         /* owned; the finer classes' names, NULL when they are the categories */
    int *output_category;   /* owned; the category of each output, NULL when they are the categories */
    char output_field[COE_FIELD_MAX + 1]; /* the data field the finer classes came from, "" when none */
    float *embd, *w1, *b1, *w2, *b2;
    char data_hash[17];     /* hex FNV-1a of the training file */
    coe_gguf *file;         /* when loaded: the weights point into its mapping */
    float *owned;           /* when built here: one block holding every weight */
    /* An ensemble: members after the first (whose weights are the fields above);
     * their output probabilities are averaged. */
    coe_router_member *more; /* owned */
    int n_more;
} coe_router;

/* Moves member's weights into m as one more ensemble member (same shape needed);
 * closes member. */
int coe_router_adopt(coe_router *m, coe_router **member);

/* Allocates a model with zeroed weights (training fills them). outputs and
 * output_category (both n_outputs long) may be NULL when the outputs are the categories. */
int coe_router_new(coe_router **out, const coe_features_params *fp, int dim, int hidden, char *const *categories,
                   int n_classes, char *const *outputs, const int *output_category, int n_outputs);
/* Loads a router file; a missing key, bad shape or wrong type is refused with a
 * message naming the file and the key or tensor. */
int coe_router_open(coe_router **out, const char *path, coe_buf *diag);
int coe_router_save(const coe_router *m, const char *path, coe_buf *diag);
void coe_router_close(coe_router **m);

/* Width of z: hidden, or dim without a hidden layer. */
static inline int coe_router_z(const coe_router *m)
{
    return m->hidden > 0 ? m->hidden : m->dim;
}

/* x (dim) from features. An empty feature set gives zeros. */
void coe_router_embed(const coe_router *m, const coe_features *f, float *x);
/* probs (n_classes) from x; scratch holds at least hidden + n_outputs floats. */
void coe_router_head(const coe_router *m, const float *x, float *probs, float *scratch);
/* Output probabilities q (n_outputs) and category probabilities (n_classes) of one
 * text; scratch as for coe_router_head. */
int coe_router_classify_outputs(const coe_router *m, const char *text, size_t n, float *q, float *probs);
/* Category probabilities (n_classes) from output probabilities q (n_outputs). */
void coe_router_fold(const coe_router *m, const float *q, float *probs);
/* Category probabilities for one feature set (no BLAS: lowest latency for one). */
int coe_router_classify(const coe_router *m, const coe_features *f, float *probs);
/* The whole way, for one text (n bytes). */
int coe_router_classify_text(const coe_router *m, const char *text, size_t n, float *probs);
/* n feature sets at once: the hidden and output layers as matrix products
 * (OpenBLAS); probs is n x n_classes. */
int coe_router_classify_batch(const coe_router *m, const coe_features *const *f, int n, float *probs);

#endif
