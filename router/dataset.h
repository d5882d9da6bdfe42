/* Labeled query sets: JSON Lines, one object a line with at least "text" and
 * "category"; "scores" (an object of expert name to 0/1, or a number) is kept for
 * offline routing evaluation. */
#ifndef COE_DATASET_H
#define COE_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct coe_dataset {
    char **texts;         /* owned */
    int *labels;          /* index into categories; -1 for a category the caller did not know */
    size_t n;
    char **categories;    /* owned; sorted, unless given by the caller */
    int n_categories;
    char **models;        /* owned; names found in "scores", sorted */
    int n_models;
    float *scores;        /* owned; n x n_models, NAN where a row has no score */
    uint64_t hash;        /* FNV-1a of the file's bytes */
    /* With a fine-label field: finer classes, each inside one category. */
    int *fine_labels;     /* owned; index into fine_names */
    char **fine_names;    /* owned; sorted */
    int *fine_category;   /* owned; the category of each fine class */
    int n_fine;
} coe_dataset;

/* Reads path. With categories (n_categories > 0) labels index that list, and rows of
 * other categories get -1; otherwise the sorted set of categories seen is used. With
 * fine_field (a string field such as "intent"), its values become finer classes; each
 * must always come with the same category. Problems are appended to diag as
 * "PATH:LINE: what"; returns 0 or a negative coe_err. */
int coe_dataset_load(const char *path, char *const *categories, int n_categories, const char *fine_field,
                     coe_dataset *out, coe_buf *diag);
void coe_dataset_free(coe_dataset *d);

/* A deterministic split by a hash of each text: rows whose hash falls in the first
 * fraction go to b, the rest to a. Texts are shared (borrowed by a and b from d). */
void coe_dataset_split(const coe_dataset *d, double fraction, coe_dataset *a, coe_dataset *b);
/* Frees a split made by coe_dataset_split (not the texts). */
void coe_dataset_free_split(coe_dataset *d);

#endif
