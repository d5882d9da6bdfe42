#include "experts/nll.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/cli.h"
#include "common/err.h"
#include "experts/sample.h"

/* Tokens one engine call takes at most: several windows share the weights' reads. */
#define BATCH_TOKENS 2048

/* One window: len tokens of text's token sequence, from ids on. */
typedef struct window {
    size_t text;
    int32_t *ids;  /* borrowed from the text's tokens */
    int len;
} window;

/* Frees the tokens of texts [*from, to): no pending window refers to them any more. */
static void release(int32_t **ids, size_t *from, size_t to)
{
    for (; *from < to; ++*from) {
        free(ids[*from]);
        ids[*from] = NULL;
    }
}

static int run_windows(coe_engine *e, const window *w, int n_w, coe_nll *acc, float *logits, coe_buf *diag)
{
    int T = 0;
    for (int i = 0; i < n_w; i++)
        T += w[i].len;
    const coe_model *m = coe_engine_model(e);
    int32_t *tokens = malloc((size_t)T * sizeof *tokens);
    coe_kv **seq = calloc((size_t)T, sizeof *seq);
    bool *want = malloc((size_t)T * sizeof *want);
    coe_kv **kvs = calloc((size_t)n_w, sizeof *kvs);
    int rc = tokens && seq && want && kvs ? 0 : COE_ENOMEM;
    for (int i = 0, t = 0; !rc && i < n_w; i++) {
        if (!(kvs[i] = coe_kv_new(m))) {
            rc = COE_ENOMEM;
            break;
        }
        for (int k = 0; k < w[i].len; k++, t++) {
            tokens[t] = w[i].ids[k];
            seq[t] = kvs[i];
            want[t] = k + 1 < w[i].len; /* the last token predicts nothing here */
        }
    }
    if (!rc) {
        coe_batch b = {T, tokens, seq, want, NULL};
        rc = coe_engine_forward(e, &b, logits, diag);
    }
    for (int i = 0, row = 0; !rc && i < n_w; i++)
        for (int k = 0; k + 1 < w[i].len; k++, row++) {
            acc[w[i].text].sum -= coe_logprob_d(logits + (size_t)row * (size_t)m->n_vocab, m->n_vocab, w[i].ids[k + 1]);
            acc[w[i].text].tokens++;
        }
    for (int i = 0; kvs && i < n_w; i++)
        coe_kv_free(&kvs[i]);
    free(kvs);
    free(tokens);
    free(seq);
    free(want);
    return rc;
}

int coe_nll_tokens(const coe_vocab *v, const char *text, int32_t **ids, size_t *n, size_t *cap)
{
    if (v->add_bos && v->bos >= 0) {
        if (*n == *cap) {
            size_t c = *cap ? *cap * 2 : 16;
            int32_t *p = realloc(*ids, c * sizeof *p);
            if (!p)
                return COE_ENOMEM;
            *ids = p;
            *cap = c;
        }
        (*ids)[(*n)++] = v->bos;
    }
    return coe_tokenize(v, text, strlen(text), ids, n, cap);
}

int coe_nll_texts(coe_engine *e, const coe_vocab *v, const char *const *texts, size_t n, int ctx, coe_nll *acc,
                  coe_buf *diag)
{
    if (ctx < 2 || ctx > coe_engine_n_ctx(e) || ctx > BATCH_TOKENS) {
        coe_buf_printf(diag, "window of %d tokens: must be 2 to %d\n", ctx,
                       coe_engine_n_ctx(e) < BATCH_TOKENS ? coe_engine_n_ctx(e) : BATCH_TOKENS);
        return COE_ERANGE;
    }
    const coe_model *m = coe_engine_model(e);
    float *logits = malloc((size_t)BATCH_TOKENS * (size_t)m->n_vocab * sizeof *logits);
    window *w = malloc((BATCH_TOKENS / 2 + 1) * sizeof *w);
    int32_t **ids = calloc(n ? n : 1, sizeof *ids);
    int rc = logits && w && ids ? 0 : COE_ENOMEM;
    int n_w = 0, batch = 0;
    size_t live = 0; /* texts before it have no window pending */
    for (size_t i = 0; !rc && i < n; i++) {
        size_t n_ids = 0, cap = 0;
        if ((rc = coe_nll_tokens(v, texts[i], &ids[i], &n_ids, &cap))) {
            coe_buf_printf(diag, "text %zu: cannot tokenize: %s\n", i + 1, coe_strerror(rc));
            break;
        }
        for (size_t start = 0; !rc && start + 1 < n_ids; start += (size_t)ctx - 1) {
            int len = (int)(n_ids - start < (size_t)ctx ? n_ids - start : (size_t)ctx);
            if (batch + len > BATCH_TOKENS) {
                rc = run_windows(e, w, n_w, acc, logits, diag);
                n_w = batch = 0;
                release(ids, &live, i);
            }
            w[n_w++] = (window){i, ids[i] + start, len};
            batch += len;
        }
    }
    if (!rc && n_w)
        rc = run_windows(e, w, n_w, acc, logits, diag);
    for (size_t i = 0; ids && i < n; i++)
        free(ids[i]);
    free(ids);
    free(w);
    free(logits);
    return rc;
}

/* ---- texts from JSON Lines ---- */

static int group_index(coe_textset *t, const char *name)
{
    for (int i = 0; i < t->n_groups; i++)
        if (strcmp(t->names[i], name) == 0)
            return i;
    char **names = realloc(t->names, (size_t)(t->n_groups + 1) * sizeof *names);
    if (!names)
        return COE_ENOMEM;
    t->names = names;
    if (!(names[t->n_groups] = strdup(name)))
        return COE_ENOMEM;
    return t->n_groups++;
}

static int add_text(coe_textset *t, size_t *cap, const char *text, int group)
{
    if (t->n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        char **texts = realloc(t->texts, c * sizeof *texts);
        if (texts)
            t->texts = texts;
        int *groups = realloc(t->group, c * sizeof *groups);
        if (groups)
            t->group = groups;
        if (!texts || !groups)
            return COE_ENOMEM;
        *cap = c;
    }
    if (!(t->texts[t->n] = strdup(text)))
        return COE_ENOMEM;
    t->group[t->n++] = group;
    return 0;
}

int coe_textset_load(const char *path, const char *group_field, size_t limit, coe_textset *out, coe_buf *diag)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        coe_buf_printf(diag, "%s: cannot open: %s\n", path, strerror(errno));
        return COE_ENOTFOUND;
    }
    char *line = NULL;
    size_t line_cap = 0, cap = 0;
    size_t *taken = NULL; /* rows kept per group */
    ssize_t len;
    long line_no = 0;
    int rc = 0;
    while (rc != COE_ENOMEM && (len = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
        const cJSON *group = group_field ? cJSON_GetObjectItemCaseSensitive(j, group_field) : NULL;
        const char *what = !j                                ? "not valid JSON"
                           : !cJSON_IsObject(j)              ? "not a JSON object"
                           : !cJSON_IsString(text)           ? "\"text\" is missing or not a string"
                           : group && !cJSON_IsString(group) ? "the group field is not a string"
                           : group && !*group->valuestring   ? "the group field is empty"
                                                             : NULL;
        if (what) {
            coe_buf_printf(diag, "%s:%ld: %s\n", path, line_no, what);
            rc = COE_EPARSE;
        } else {
            int n_before = out->n_groups;
            int g = group_index(out, group ? group->valuestring : "all");
            if (g >= 0 && out->n_groups > n_before) {
                size_t *t = realloc(taken, (size_t)out->n_groups * sizeof *t);
                if (t)
                    (taken = t)[g] = 0;
                else
                    g = COE_ENOMEM;
            }
            if (g < 0)
                rc = g;
            else if (!limit || taken[g] < limit) {
                int r = add_text(out, &cap, text->valuestring, g);
                if (r)
                    rc = r;
                taken[g]++;
            }
        }
        cJSON_Delete(j);
    }
    if (!rc && ferror(f)) {
        coe_buf_printf(diag, "%s: read error: %s\n", path, strerror(errno));
        rc = COE_EIO;
    }
    if (!rc && out->n == 0) {
        coe_buf_printf(diag, "%s: no texts\n", path);
        rc = COE_EINVAL;
    }
    free(line);
    free(taken);
    fclose(f);
    if (rc)
        coe_textset_free(out);
    return rc;
}

void coe_textset_free(coe_textset *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->texts[i]);
    for (int i = 0; i < t->n_groups; i++)
        free(t->names[i]);
    free(t->texts);
    free(t->group);
    free(t->names);
    memset(t, 0, sizeof *t);
}

/* ---- command line ---- */

static const char usage[] =
    "usage: coegate model nll MODEL.gguf... --data FILE.jsonl... [--group-by FIELD]\n"
    "                         [--ctx N] [--limit N] [--threads N] [--json]\n"
    "\n"
    "Measures each model's per-token negative log-likelihood (nats) and perplexity on\n"
    "the texts of JSON Lines files (one object a line with a string \"text\"), per group\n"
    "of rows (the value of --group-by, default \"domain\"; rows without it: \"all\").\n"
    "Each text is tokenized as a plain prompt (BOS, then the text) and scored in\n"
    "windows of --ctx tokens (default: the model's training context, at most 2048)\n"
    "that overlap by one, so every token but BOS is predicted once. --limit keeps the\n"
    "first N rows of each group. --json prints the figures as JSON.\n";

typedef struct nll_opts {
    const char *models[64], *data[64], *group_by;
    int n_models, n_data, ctx, threads;
    size_t limit;
    bool json;
} nll_opts;

static bool parse_count(const char *s, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

static int parse_opts(int argc, char **argv, nll_opts *o)
{
    *o = (nll_opts){.group_by = "domain"};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == 0) {
            if (o->n_models == 64) {
                fprintf(stderr, "coegate model nll: at most 64 models\n");
                return 2;
            }
            o->models[o->n_models++] = a;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        const char *val = i + 1 < argc ? argv[++i] : NULL;
        long n = 0;
        bool ok = val != NULL;
        if (!val) {
        } else if (strcmp(a, "--data") == 0) {
            ok = o->n_data < 64;
            if (ok)
                o->data[o->n_data++] = val;
        } else if (strcmp(a, "--group-by") == 0) {
            o->group_by = val;
        } else if (strcmp(a, "--ctx") == 0) {
            ok = parse_count(val, 1 << 20, &n) && n >= 2;
            o->ctx = (int)n;
        } else if (strcmp(a, "--limit") == 0) {
            ok = parse_count(val, 1L << 40, &n);
            o->limit = (size_t)n;
        } else if (strcmp(a, "--threads") == 0) {
            ok = parse_count(val, 1024, &n);
            o->threads = (int)n;
        } else {
            fprintf(stderr, "coegate model nll: unknown option %s\n%s", a, usage);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "coegate model nll: %s: %s\n", a, val ? "invalid value" : "needs a value");
            return 2;
        }
    }
    if (!o->n_models || !o->n_data) {
        fprintf(stderr, "coegate model nll: give at least one MODEL and one --data FILE\n%s", usage);
        return 2;
    }
    return 0;
}

/* The groups of every file, merged by name, in order of first appearance. */
typedef struct merged {
    coe_textset *sets;
    char **names;
    int n_names;
    int **map; /* per set: its group -> merged group */
} merged;

static int merge_groups(merged *mg, int n_sets)
{
    mg->map = calloc((size_t)n_sets, sizeof *mg->map);
    mg->names = NULL;
    mg->n_names = 0;
    if (!mg->map)
        return COE_ENOMEM;
    for (int s = 0; s < n_sets; s++) {
        coe_textset *t = &mg->sets[s];
        if (!(mg->map[s] = malloc((size_t)t->n_groups * sizeof **mg->map)))
            return COE_ENOMEM;
        for (int g = 0; g < t->n_groups; g++) {
            int k = 0;
            while (k < mg->n_names && strcmp(mg->names[k], t->names[g]) != 0)
                k++;
            if (k == mg->n_names) {
                char **nn = realloc(mg->names, (size_t)(k + 1) * sizeof *nn);
                if (!nn)
                    return COE_ENOMEM;
                (mg->names = nn)[mg->n_names++] = t->names[g]; /* borrowed from the set */
            }
            mg->map[s][g] = k;
        }
    }
    return 0;
}

static int score_model(const nll_opts *o, const char *path, merged *mg, coe_nll *per_group, coe_buf *diag)
{
    coe_model *m = NULL;
    coe_vocab v;
    coe_engine *e = NULL;
    bool have_vocab = false;
    int rc = coe_model_open(&m, path, diag);
    if (!rc && !(rc = coe_vocab_load(&v, m->gguf, diag)))
        have_vocab = true;
    int ctx = o->ctx;
    if (!rc && !ctx)
        ctx = m->n_ctx_train < BATCH_TOKENS ? m->n_ctx_train : BATCH_TOKENS;
    if (!rc && !(e = coe_engine_new(m, o->threads, ctx)))
        rc = COE_ENOMEM;
    for (int s = 0; !rc && s < o->n_data; s++) {
        coe_textset *t = &mg->sets[s];
        coe_nll *acc = calloc(t->n, sizeof *acc);
        if (!acc) {
            rc = COE_ENOMEM;
            break;
        }
        rc = coe_nll_texts(e, &v, (const char *const *)t->texts, t->n, ctx, acc, diag);
        for (size_t i = 0; !rc && i < t->n; i++) {
            coe_nll *g = &per_group[mg->map[s][t->group[i]]];
            g->sum += acc[i].sum;
            g->tokens += acc[i].tokens;
        }
        if (rc)
            coe_buf_printf(diag, "%s on %s: failed\n", path, o->data[s]);
        free(acc);
    }
    coe_engine_free(&e);
    if (have_vocab)
        coe_vocab_free(&v);
    coe_model_close(&m);
    return rc;
}

static double ppl(coe_nll n)
{
    return n.tokens ? exp(n.sum / (double)n.tokens) : NAN;
}

static void print_results(const nll_opts *o, const merged *mg, coe_nll *res /* models x groups */)
{
    int G = mg->n_names;
    if (o->json) {
        cJSON *root = cJSON_CreateObject(), *models = cJSON_AddArrayToObject(root, "models");
        for (int i = 0; i < o->n_models; i++) {
            cJSON *mj = cJSON_CreateObject(), *groups = cJSON_CreateObject();
            cJSON_AddStringToObject(mj, "model", o->models[i]);
            cJSON_AddItemToObject(mj, "groups", groups);
            coe_nll total = {0};
            for (int g = 0; g < G; g++) {
                coe_nll r = res[i * G + g];
                cJSON *gj = cJSON_CreateObject();
                cJSON_AddNumberToObject(gj, "tokens", (double)r.tokens);
                cJSON_AddNumberToObject(gj, "nll", r.tokens ? r.sum / (double)r.tokens : 0);
                cJSON_AddNumberToObject(gj, "ppl", r.tokens ? ppl(r) : 0);
                cJSON_AddItemToObject(groups, mg->names[g], gj);
                total.sum += r.sum;
                total.tokens += r.tokens;
            }
            cJSON_AddNumberToObject(mj, "tokens", (double)total.tokens);
            cJSON_AddNumberToObject(mj, "nll", total.tokens ? total.sum / (double)total.tokens : 0);
            cJSON_AddItemToArray(models, mj);
        }
        char *s = cJSON_Print(root);
        if (s)
            puts(s);
        free(s);
        cJSON_Delete(root);
        return;
    }
    if (o->ctx)
        printf("perplexity (per-token NLL in nats), windows of %d tokens\n\n| model |", o->ctx);
    else
        printf("perplexity (per-token NLL in nats), windows of each model's training context\n\n| model |");
    for (int g = 0; g < G; g++)
        printf(" %s |", mg->names[g]);
    printf("\n|---|");
    for (int g = 0; g < G; g++)
        printf("---|");
    printf("\n");
    for (int i = 0; i < o->n_models; i++) {
        printf("| %s |", o->models[i]);
        for (int g = 0; g < G; g++) {
            coe_nll r = res[i * G + g];
            printf(" %.2f (%.4f) |", ppl(r), r.tokens ? r.sum / (double)r.tokens : NAN);
        }
        printf("\n");
    }
    printf("\ntokens scored:");
    for (int g = 0; g < G; g++)
        printf(" %s %lld%s", mg->names[g], res[g].tokens, g + 1 < G ? "," : "\n");
}

int coe_nll_main(int argc, char **argv)
{
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    nll_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc;
    coe_buf diag = COE_BUF_INIT;
    merged mg = {calloc((size_t)o.n_data, sizeof *mg.sets), NULL, 0, NULL};
    coe_nll *res = NULL;
    int status = mg.sets ? 0 : 1;
    for (int s = 0; !status && s < o.n_data; s++)
        if (coe_textset_load(o.data[s], o.group_by, o.limit, &mg.sets[s], &diag))
            status = 1;
    if (!status && merge_groups(&mg, o.n_data))
        status = 1;
    if (!status && !(res = calloc((size_t)o.n_models * (size_t)mg.n_names, sizeof *res)))
        status = 1;
    for (int i = 0; !status && i < o.n_models; i++)
        if (score_model(&o, o.models[i], &mg, res + (size_t)i * (size_t)mg.n_names, &diag))
            status = 1;
    if (!status)
        print_results(&o, &mg, res);
    else
        fprintf(stderr, "coegate model nll: %s", diag.len ? diag.data : "out of memory\n");
    for (int s = 0; mg.sets && s < o.n_data; s++) {
        coe_textset_free(&mg.sets[s]);
        if (mg.map)
            free(mg.map[s]);
    }
    free(mg.map);
    free(mg.names);
    free(mg.sets);
    free(res);
    coe_buf_free(&diag);
    return status;
}
