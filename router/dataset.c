#include "router/dataset.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/err.h"
#include "common/hash.h"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int find(char *const *v, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return i;
    return -1;
}

static int add_unique(char ***v, int *n, const char *s)
{
    if (find(*v, *n, s) >= 0)
        return 0;
    char **nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
    if (!nv)
        return COE_ENOMEM;
    *v = nv;
    nv[(*n)++] = strdup(s);
    return 0;
}

/* Appends s (a parallel array to another list, so duplicates are fine). */
static int add_unique_at(char ***v, int *n, const char *s)
{
    char **nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
    if (!nv)
        return COE_ENOMEM;
    *v = nv;
    nv[(*n)++] = strdup(s);
    return 0;
}

int coe_dataset_load(const char *path, char *const *categories, int n_categories, const char *fine_field,
                     coe_dataset *out, coe_buf *diag)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        coe_buf_printf(diag, "%s: cannot open: %s\n", path, strerror(errno));
        return COE_ENOTFOUND;
    }
    cJSON **rows = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    long line_no = 0;
    int rc = 0;
    uint64_t hash = COE_FNV_OFFSET;
    char **cats = NULL, **models = NULL, **fines = NULL, **fine_cat_names = NULL;
    int n_cats = 0, n_models = 0, n_fines = 0, n_fine_cats = 0;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        hash = coe_fnv1a64(hash, line, (size_t)len);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
        const cJSON *cat = cJSON_GetObjectItemCaseSensitive(j, "category");
        const cJSON *scores = cJSON_GetObjectItemCaseSensitive(j, "scores");
        const cJSON *fine = fine_field ? cJSON_GetObjectItemCaseSensitive(j, fine_field) : NULL;
        const char *what = !cJSON_IsObject(j)        ? "not a JSON object"
                           : !cJSON_IsString(text)   ? "\"text\" is missing or not a string"
                           : !cJSON_IsString(cat)    ? "\"category\" is missing or not a string"
                           : !*cat->valuestring      ? "\"category\" is empty"
                           : scores && !cJSON_IsObject(scores) ? "\"scores\" is not an object"
                           : fine_field && !cJSON_IsString(fine) ? "the fine-label field is missing or not a string"
                                                      : NULL;
        if (what) {
            coe_buf_printf(diag, "%s:%ld: %s\n", path, line_no, what);
            cJSON_Delete(j);
            rc = COE_EPARSE;
            continue;
        }
        for (const cJSON *s = scores ? scores->child : NULL; s; s = s->next) {
            if (!cJSON_IsNumber(s) || !isfinite(s->valuedouble)) {
                coe_buf_printf(diag, "%s:%ld: scores.%s is not a number\n", path, line_no, s->string);
                rc = COE_EPARSE;
            } else if (add_unique(&models, &n_models, s->string)) {
                rc = COE_ENOMEM;
            }
        }
        if (n_categories <= 0 && add_unique(&cats, &n_cats, cat->valuestring))
            rc = COE_ENOMEM;
        if (fine_field) {
            /* fine_cat_names runs beside fines: the category each fine label came with. */
            int k = find(fines, n_fines, fine->valuestring);
            if (k < 0) {
                if (add_unique(&fines, &n_fines, fine->valuestring) || add_unique_at(&fine_cat_names, &n_fine_cats,
                                                                                       cat->valuestring))
                    rc = COE_ENOMEM;
            } else if (strcmp(fine_cat_names[k], cat->valuestring) != 0) {
                coe_buf_printf(diag, "%s:%ld: %s '%s' has category '%s' here but '%s' before\n", path, line_no,
                               fine_field, fine->valuestring, cat->valuestring, fine_cat_names[k]);
                rc = COE_EPARSE;
            }
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            cJSON **r = realloc(rows, cap * sizeof *r);
            if (!r) {
                cJSON_Delete(j);
                rc = COE_ENOMEM;
                break;
            }
            rows = r;
        }
        rows[n++] = j;
    }
    free(line);
    fclose(f);
    if (!rc && n == 0) {
        coe_buf_printf(diag, "%s: no rows\n", path);
        rc = COE_EINVAL;
    }
    if (!rc) {
        if (n_categories > 0) {
            for (int i = 0; i < n_categories; i++)
                add_unique(&cats, &n_cats, categories[i]);
        } else if (n_cats > 0) {
            qsort(cats, (size_t)n_cats, sizeof *cats, cmp_str);
        }
        if (n_models > 0) /* qsort must not see a NULL array, even an empty one */
            qsort(models, (size_t)n_models, sizeof *models, cmp_str);
        out->texts = calloc(n, sizeof *out->texts);
        out->labels = calloc(n, sizeof *out->labels);
        out->scores = n_models ? malloc(n * (size_t)n_models * sizeof *out->scores) : NULL;
        if (!out->texts || !out->labels || (n_models && !out->scores))
            rc = COE_ENOMEM;
        for (size_t i = 0; i < n && !rc; i++) {
            out->texts[i] = strdup(cJSON_GetObjectItemCaseSensitive(rows[i], "text")->valuestring);
            out->labels[i] = find(cats, n_cats, cJSON_GetObjectItemCaseSensitive(rows[i], "category")->valuestring);
            const cJSON *scores = cJSON_GetObjectItemCaseSensitive(rows[i], "scores");
            for (int m = 0; m < n_models; m++) {
                const cJSON *s = cJSON_GetObjectItemCaseSensitive(scores, models[m]);
                out->scores[i * (size_t)n_models + (size_t)m] = cJSON_IsNumber(s) ? (float)s->valuedouble : NAN;
            }
        }
        if (fine_field && !rc) {
            /* Sorted fine classes, each with its category's index. */
            char **sorted = malloc((size_t)n_fines * sizeof *sorted);
            out->fine_category = malloc((size_t)n_fines * sizeof *out->fine_category);
            out->fine_labels = malloc(n * sizeof *out->fine_labels);
            if (!sorted || !out->fine_category || !out->fine_labels) {
                free(sorted);
                rc = COE_ENOMEM;
            } else {
                if (n_fines > 0) {
                    memcpy(sorted, fines, (size_t)n_fines * sizeof *sorted);
                    qsort(sorted, (size_t)n_fines, sizeof *sorted, cmp_str);
                }
                for (int k = 0; k < n_fines; k++)
                    out->fine_category[k] = find(cats, n_cats, fine_cat_names[find(fines, n_fines, sorted[k])]);
                for (size_t i = 0; i < n; i++)
                    out->fine_labels[i] =
                        find(sorted, n_fines,
                             cJSON_GetObjectItemCaseSensitive(rows[i], fine_field)->valuestring);
                out->fine_names = sorted;
                out->n_fine = n_fines;
                free(fines); /* its strings now belong to fine_names */
                fines = NULL;
                n_fines = 0;
            }
        }
        out->n = n;
        out->categories = cats;
        out->n_categories = n_cats;
        out->models = models;
        out->n_models = n_models;
        out->hash = hash;
        cats = models = NULL;
    }
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(rows[i]);
    free(rows);
    for (int i = 0; i < n_cats && cats; i++)
        free(cats[i]);
    free(cats);
    for (int i = 0; i < n_models && models; i++)
        free(models[i]);
    free(models);
    for (int i = 0; i < n_fines && fines; i++)
        free(fines[i]);
    free(fines);
    for (int i = 0; i < n_fine_cats && fine_cat_names; i++)
        free(fine_cat_names[i]);
    free(fine_cat_names);
    if (rc)
        coe_dataset_free(out);
    return rc;
}

static void free_names(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void coe_dataset_free(coe_dataset *d)
{
    for (size_t i = 0; i < d->n && d->texts; i++)
        free(d->texts[i]);
    free(d->texts);
    free(d->labels);
    free(d->scores);
    free_names(d->categories, d->n_categories);
    free_names(d->models, d->n_models);
    free_names(d->fine_names, d->n_fine);
    free(d->fine_labels);
    free(d->fine_category);
    memset(d, 0, sizeof *d);
}

void coe_dataset_split(const coe_dataset *d, double fraction, coe_dataset *a, coe_dataset *b)
{
    coe_dataset *parts[2] = {a, b};
    for (int p = 0; p < 2; p++) {
        *parts[p] = *d;
        parts[p]->texts = malloc(d->n * sizeof *d->texts);
        parts[p]->labels = malloc(d->n * sizeof *d->labels);
        parts[p]->scores = d->n_models ? malloc(d->n * (size_t)d->n_models * sizeof *d->scores) : NULL;
        parts[p]->fine_labels = d->n_fine ? malloc(d->n * sizeof *d->fine_labels) : NULL;
        parts[p]->n = 0;
    }
    for (size_t i = 0; i < d->n; i++) {
        uint64_t h = coe_fnv1a64(COE_FNV_OFFSET, d->texts[i], strlen(d->texts[i]));
        coe_dataset *t = (double)(h % 10000) / 10000.0 < fraction ? b : a;
        t->texts[t->n] = d->texts[i];
        t->labels[t->n] = d->labels[i];
        if (d->n_fine)
            t->fine_labels[t->n] = d->fine_labels[i];
        if (d->n_models)
            memcpy(t->scores + t->n * (size_t)d->n_models, d->scores + i * (size_t)d->n_models,
                   (size_t)d->n_models * sizeof *d->scores);
        t->n++;
    }
}

void coe_dataset_free_split(coe_dataset *d)
{
    free(d->texts);
    free(d->labels);
    free(d->scores);
    free(d->fine_labels);
    memset(d, 0, sizeof *d);
}
