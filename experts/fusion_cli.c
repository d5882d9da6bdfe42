/* `coegate fusion train` and `coegate fusion eval`: the selector learned from
 * teacher-forced runs of the router and every expert over text, and the measures of
 * every way of combining them. Both read text by the protocol of experts/nll.h
 * (windows of --ctx tokens overlapping by one, each from an empty cache), so their
 * perplexities are comparable with `coegate model nll`. */
#include "experts/fusion_cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "common/adamw.h"
#include "common/err.h"
#include "common/rand.h"
#include "experts/engine.h"
#include "experts/fusion.h"
#include "experts/nll.h"
#include "experts/sample.h"
#include "experts/tokenizer.h"
#include "router/classifier.h"

#define MAX_DATA 16
#define MAX_LAMBDAS 16

static const char usage[] =
    "usage: coegate fusion train --router MODEL --expert NAME=MODEL... --data FILE.jsonl... -o SELECTOR.gguf\n"
    "       coegate fusion eval  --router MODEL --expert NAME=MODEL... --selector FILE --data FILE.jsonl...\n"
    "\n"
    "A fusion group's router model reads the text; its selector (a linear softmax layer\n"
    "over the router's final hidden state) picks an expert for every next token.\n"
    "\n"
    "train: runs the router and every expert teacher-forced over the texts, labels each\n"
    "position with the expert that gives the true next token the highest probability,\n"
    "learns the selector (AdamW, early stopping on a held-out share of the texts) and\n"
    "chooses lambda, the router logits' weight in fusionroute, on that held-out share.\n"
    "eval: per group of texts (--group-by, default \"domain\"), the per-token NLL and\n"
    "perplexity of each expert alone, the router alone, sequence-level routing (with\n"
    "--category-router), select, fusionroute, mix and the per-token oracle; how often\n"
    "the selector picks the oracle's expert; each expert's share of tokens; decode\n"
    "tokens/s of each mode.\n"
    "\n"
    "  --router MODEL        the router model (GGUF); its vocabulary must be every expert's\n"
    "  --expert NAME=MODEL   an expert, in the group's order (1 to 8)\n"
    "  --data FILE           JSON Lines with \"text\" (repeatable)\n"
    "  --group-by FIELD      group rows by this string field (default domain)\n"
    "  --limit N             at most N rows per group and file (default 0: all)\n"
    "  --ctx N               window in tokens (default 256, at most the models' context)\n"
    "  --threads N           engine threads (default: one per CPU)\n"
    "train:\n"
    "  -o FILE               the selector to write\n"
    "  --holdout F           share of the texts held out for early stopping and lambda (default 0.1)\n"
    "  --epochs N            at most (default 40)   --patience N  (default 4)\n"
    "  --lr X                AdamW's learning rate (default 0.01)  --batch N (default 256)\n"
    "  --lambdas X,Y,...     lambda's candidates (default 0,0.05,0.1,0.2,0.3,0.5,0.75,1)\n"
    "  --seed N              shuffles (default 1)\n"
    "eval:\n"
    "  --selector FILE       the trained selector\n"
    "  --lambda X            instead of the selector's\n"
    "  --category-router F   a category router (coegate router train) whose categories name experts\n"
    "  --decode-tokens N     tokens each mode decodes for the speed measure (default 64; 0: skip)\n"
    "  --json FILE           the results as JSON (default: standard output)\n"
    "  --markdown FILE       a Markdown table\n"
    "  --html FILE           a page with SVG charts and one document coloured by expert\n";

typedef struct opts {
    const char *router;
    const char *names[COE_FUSION_MAX_EXPERTS], *paths[COE_FUSION_MAX_EXPERTS];
    int n_experts;
    const char *data[MAX_DATA];
    int n_data;
    const char *group_by;
    size_t limit;
    int ctx, threads;
    const char *out, *selector, *category_router, *json, *markdown, *html;
    double holdout, lr, lambda;
    bool lambda_set;
    int epochs, patience, batch, decode_tokens;
    double lambdas[MAX_LAMBDAS];
    int n_lambdas;
    uint64_t seed;
} opts;

/* ---- the models ---- */

typedef struct group_models {
    int K;                       /* experts */
    coe_model *m[1 + COE_FUSION_MAX_EXPERTS]; /* [0] the router */
    coe_engine *e[1 + COE_FUSION_MAX_EXPERTS];
    coe_vocab vocab;             /* the router's (every one's) */
    bool have_vocab;
} group_models;

static void close_models(group_models *g)
{
    for (int i = 0; i <= g->K; i++) {
        coe_engine_free(&g->e[i]);
        coe_model_close(&g->m[i]);
    }
    if (g->have_vocab)
        coe_vocab_free(&g->vocab);
}

static int open_models(const opts *o, group_models *g, coe_buf *diag)
{
    memset(g, 0, sizeof *g);
    g->K = o->n_experts;
    int rc = 0;
    for (int i = 0; !rc && i <= g->K; i++) {
        const char *path = i ? o->paths[i - 1] : o->router;
        if ((rc = coe_model_open(&g->m[i], path, diag)))
            break;
        coe_vocab v;
        if ((rc = coe_vocab_load(&v, g->m[i]->gguf, diag)))
            break;
        if (i == 0) {
            g->vocab = v;
            g->have_vocab = true;
        } else {
            int d = coe_vocab_first_difference(&g->vocab, &v);
            if (d >= 0) {
                coe_buf_printf(diag, "%s: its vocabulary differs from the router's (%s) at token id %d\n", path,
                               o->router, d);
                rc = COE_EINVAL;
            }
            coe_vocab_free(&v);
        }
        if (!rc && o->ctx > g->m[i]->n_ctx_train) {
            coe_buf_printf(diag, "%s: --ctx %d is over the model's context of %d\n", path, o->ctx,
                           g->m[i]->n_ctx_train);
            rc = COE_ERANGE;
        }
        if (!rc && !(g->e[i] = coe_engine_new(g->m[i], o->threads, o->ctx)))
            rc = COE_ENOMEM;
    }
    if (rc)
        close_models(g);
    return rc;
}

/* ---- teacher-forced positions ---- */

/* Every predicted position of a set of texts: what train and eval need of it. */
typedef struct positions {
    int K, E, L;            /* experts, hidden width, lambdas */
    size_t n, cap;
    float *hidden;          /* n x E: the router's final hidden state */
    float *lp_router;       /* n: log p(true next token) */
    float *lp_expert;       /* n x K */
    float *lp_route;        /* n x K x L: under z_k + lambda_l z_router; NULL when not asked */
    int32_t *text;          /* n: the text it belongs to */
    int32_t *token;         /* n: the true next token */
} positions;

static void free_positions(positions *p)
{
    free(p->hidden);
    free(p->lp_router);
    free(p->lp_expert);
    free(p->lp_route);
    free(p->text);
    free(p->token);
    memset(p, 0, sizeof *p);
}

static int grow(positions *p, size_t more)
{
    if (p->n + more <= p->cap)
        return 0;
    size_t cap = (p->n + more) * 2;
#define GROW(field, per)                                                                   \
    do {                                                                                   \
        void *q = realloc(p->field, cap * (size_t)(per) * sizeof *p->field);               \
        if (!q)                                                                            \
            return COE_ENOMEM;                                                             \
        p->field = q;                                                                      \
    } while (0)
    GROW(hidden, p->E);
    GROW(lp_router, 1);
    GROW(lp_expert, p->K);
    if (p->L)
        GROW(lp_route, p->K * p->L);
    GROW(text, 1);
    GROW(token, 1);
#undef GROW
    p->cap = cap;
    return 0;
}

/* log softmax(z)[y] with the sum in double. */
static double lp_of(const float *z, int V, int y)
{
    return coe_logprob_d(z, V, y);
}

/* log softmax(a + lambda b)[y]. */
static double lp_fused(const float *a, const float *b, float lambda, int V, int y)
{
    float max = -INFINITY;
    for (int v = 0; v < V; v++) {
        float z = a[v] + lambda * b[v];
        max = z > max ? z : max;
    }
    double sum = 0;
    for (int v = 0; v < V; v++)
        sum += exp((double)(a[v] + lambda * b[v] - max));
    return (double)(a[y] + lambda * b[y] - max) - log(sum);
}

/* Runs every model over window ids[0..len) and appends its len - 1 positions. */
static int run_window(group_models *g, const int32_t *ids, int len, int32_t text, const double *lambdas, bool fuse,
                      positions *p, float **logits, float *hidden, coe_buf *diag)
{
    const int V = g->m[0]->n_vocab, E = g->m[0]->n_embd, K = g->K, T = len - 1;
    bool want[2048];
    coe_kv *seq[2048];
    for (int t = 0; t < len; t++)
        want[t] = t + 1 < len;
    int rc = grow(p, (size_t)T);
    for (int i = 0; !rc && i <= K; i++) {
        coe_kv *kv = coe_kv_new(g->m[i]);
        if (!kv)
            return COE_ENOMEM;
        for (int t = 0; t < len; t++)
            seq[t] = kv;
        coe_batch b = {len, ids, seq, want, i == 0 ? hidden : NULL};
        rc = coe_engine_forward(g->e[i], &b, logits[i], diag);
        coe_kv_free(&kv);
    }
    if (rc)
        return rc;
    for (int t = 0; t < T; t++) {
        size_t n = p->n++;
        int y = ids[t + 1];
        const float *zr = logits[0] + (size_t)t * (size_t)V;
        memcpy(p->hidden + n * (size_t)E, hidden + (size_t)t * (size_t)E, (size_t)E * sizeof *hidden);
        p->lp_router[n] = (float)lp_of(zr, V, y);
        for (int k = 0; k < K; k++) {
            const float *zk = logits[1 + k] + (size_t)t * (size_t)V;
            p->lp_expert[n * (size_t)K + (size_t)k] = (float)lp_of(zk, V, y);
            for (int l = 0; l < p->L; l++)
                p->lp_route[(n * (size_t)K + (size_t)k) * (size_t)p->L + (size_t)l] =
                    fuse ? (float)lp_fused(zk, zr, (float)lambdas[l], V, y) : 0;
        }
        p->text[n] = text;
        p->token[n] = y;
    }
    return 0;
}

/* Positions of texts[0..n), with lambdas[0..L) fused for the texts where fuse is set
 * (NULL: all); the fused values cost a pass over the vocabulary per expert and lambda. */
static int collect(group_models *g, char *const *texts, size_t n, int ctx, const double *lambdas, int L,
                   const bool *fuse, positions *p, const char *what, coe_buf *diag)
{
    memset(p, 0, sizeof *p);
    p->K = g->K;
    p->E = g->m[0]->n_embd;
    p->L = L;
    const int V = g->m[0]->n_vocab;
    float *logits[1 + COE_FUSION_MAX_EXPERTS] = {0};
    float *hidden = malloc((size_t)ctx * (size_t)p->E * sizeof *hidden);
    int rc = hidden ? 0 : COE_ENOMEM;
    for (int i = 0; !rc && i <= g->K; i++)
        if (!(logits[i] = malloc((size_t)ctx * (size_t)V * sizeof(float))))
            rc = COE_ENOMEM;
    time_t last = time(NULL);
    for (size_t i = 0; !rc && i < n; i++) {
        int32_t *ids = NULL;
        size_t n_ids = 0, cap = 0;
        if ((rc = coe_nll_tokens(&g->vocab, texts[i], &ids, &n_ids, &cap))) {
            coe_buf_printf(diag, "%s text %zu: cannot tokenize: %s\n", what, i + 1, coe_strerror(rc));
            free(ids);
            break;
        }
        for (size_t start = 0; !rc && start + 1 < n_ids; start += (size_t)ctx - 1) {
            int len = (int)(n_ids - start < (size_t)ctx ? n_ids - start : (size_t)ctx);
            rc = run_window(g, ids + start, len, (int32_t)i, lambdas, !fuse || fuse[i], p, logits, hidden, diag);
        }
        free(ids);
        if (time(NULL) - last >= 5 || i + 1 == n) {
            last = time(NULL);
            fprintf(stderr, "%s: %zu of %zu texts, %zu positions\n", what, i + 1, n, p->n);
        }
    }
    for (int i = 0; i <= g->K; i++)
        free(logits[i]);
    free(hidden);
    return rc;
}

/* The expert that gives position i's true token the highest probability. */
static int oracle(const positions *p, size_t i)
{
    int best = 0;
    for (int k = 1; k < p->K; k++)
        if (p->lp_expert[i * (size_t)p->K + (size_t)k] > p->lp_expert[i * (size_t)p->K + (size_t)best])
            best = k;
    return best;
}

/* ---- training the selector ---- */

static double accuracy(const coe_selector *s, const positions *p, const size_t *idx, size_t n)
{
    float probs[COE_FUSION_MAX_EXPERTS];
    size_t right = 0;
    for (size_t j = 0; j < n; j++)
        right += coe_selector_probs(s, p->hidden + idx[j] * (size_t)p->E, probs) == oracle(p, idx[j]);
    return n ? (double)right / (double)n : 0;
}

static int train_selector(const opts *o, const positions *p, const size_t *tr, size_t n_tr, const size_t *ho,
                          size_t n_ho, coe_selector *s)
{
    const int K = p->K, E = p->E;
    const coe_adamw weights = {0.9f, 0.999f, 1e-8f, 1e-4f}, biases = {0.9f, 0.999f, 1e-8f, 0};
    size_t n_par = (size_t)K * (size_t)(E + 1);
    float *mom = calloc(n_par, sizeof *mom), *vel = calloc(n_par, sizeof *vel), *grad = malloc(n_par * sizeof *grad);
    float *best = malloc(n_par * sizeof *best);
    size_t *order = malloc((n_tr ? n_tr : 1) * sizeof *order);
    if (!mom || !vel || !grad || !best || !order) {
        free(mom), free(vel), free(grad), free(best), free(order);
        return COE_ENOMEM;
    }
    memcpy(order, tr, n_tr * sizeof *order);
    uint64_t rng = o->seed;
    double best_acc = -1;
    int best_epoch = 0, step = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int epoch = 1; epoch <= o->epochs; epoch++) {
        for (size_t i = n_tr; i > 1; i--) { /* Fisher-Yates, seeded */
            size_t j = (size_t)(coe_splitmix64(&rng) % i);
            size_t t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
        double loss = 0;
        for (size_t b0 = 0; b0 < n_tr; b0 += (size_t)o->batch) {
            size_t b1 = b0 + (size_t)o->batch < n_tr ? b0 + (size_t)o->batch : n_tr;
            memset(grad, 0, n_par * sizeof *grad);
            for (size_t j = b0; j < b1; j++) {
                const float *h = p->hidden + order[j] * (size_t)E;
                float probs[COE_FUSION_MAX_EXPERTS];
                coe_selector_probs(s, h, probs);
                int y = oracle(p, order[j]);
                loss -= log(probs[y] > 1e-30f ? probs[y] : 1e-30f);
                for (int k = 0; k < K; k++) {
                    float d = (probs[k] - (k == y)) / (float)(b1 - b0);
                    float *gw = grad + (size_t)k * (size_t)E;
                    for (int i = 0; i < E; i++)
                        gw[i] += d * h[i];
                    grad[(size_t)K * (size_t)E + (size_t)k] += d;
                }
            }
            step++;
            float c1 = 1 - powf(0.9f, (float)step), c2 = 1 - powf(0.999f, (float)step);
            for (size_t i = 0; i < (size_t)K * (size_t)E; i++)
                coe_adamw_step(&weights, &s->w[i], &mom[i], &vel[i], grad[i], (float)o->lr, c1, c2);
            for (int k = 0; k < K; k++) {
                size_t i = (size_t)K * (size_t)E + (size_t)k;
                coe_adamw_step(&biases, &s->b[k], &mom[i], &vel[i], grad[i], (float)o->lr, c1, c2);
            }
        }
        double acc = accuracy(s, p, ho, n_ho);
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        fprintf(stderr, "epoch %d/%d: loss %.4f, held-out agreement with the oracle %.4f (best %.4f)  %.1fs\n", epoch,
                o->epochs, n_tr ? loss / (double)n_tr : 0, acc, acc > best_acc ? acc : best_acc,
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        if (acc > best_acc) {
            best_acc = acc;
            best_epoch = epoch;
            memcpy(best, s->w, (size_t)K * (size_t)E * sizeof *best);
            memcpy(best + (size_t)K * (size_t)E, s->b, (size_t)K * sizeof *best);
        } else if (epoch - best_epoch >= o->patience) {
            break;
        }
    }
    memcpy(s->w, best, (size_t)K * (size_t)E * sizeof *best);
    memcpy(s->b, best + (size_t)K * (size_t)E, (size_t)K * sizeof *best);
    fprintf(stderr, "kept epoch %d (held-out agreement %.4f)\n", best_epoch, best_acc);
    free(mom), free(vel), free(grad), free(best), free(order);
    return 0;
}

/* ---- options ---- */

static bool parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static int parse_opts(int argc, char **argv, bool train, opts *o)
{
    memset(o, 0, sizeof *o);
    o->group_by = "domain";
    o->ctx = 256;
    o->holdout = 0.1;
    o->lr = 0.01;
    o->epochs = 40;
    o->patience = 4;
    o->batch = 256;
    o->decode_tokens = 64;
    o->seed = 1;
    const double grid[] = {0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1};
    memcpy(o->lambdas, grid, sizeof grid);
    o->n_lambdas = 8;
    const char *verb = train ? "train" : "eval";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        double x = 0;
        bool ok = val != NULL;
        i++;
        if (strcmp(a, "--router") == 0) {
            o->router = val;
        } else if (strcmp(a, "--expert") == 0) {
            const char *eq = val ? strchr(val, '=') : NULL;
            ok = eq && eq > val && eq[1] && o->n_experts < COE_FUSION_MAX_EXPERTS;
            if (ok) {
                o->names[o->n_experts] = strndup(val, (size_t)(eq - val));
                o->paths[o->n_experts++] = eq + 1;
            }
        } else if (strcmp(a, "--data") == 0) {
            ok = ok && o->n_data < MAX_DATA;
            if (ok)
                o->data[o->n_data++] = val;
        } else if (strcmp(a, "--group-by") == 0) {
            o->group_by = val;
        } else if (strcmp(a, "--limit") == 0) {
            ok = parse_num(val, 0, 1e12, &x);
            o->limit = (size_t)x;
        } else if (strcmp(a, "--ctx") == 0) {
            ok = parse_num(val, 2, 2048, &x) && x == floor(x);
            o->ctx = (int)x;
        } else if (strcmp(a, "--threads") == 0) {
            ok = parse_num(val, 0, 1024, &x) && x == floor(x);
            o->threads = (int)x;
        } else if (train && strcmp(a, "-o") == 0) {
            o->out = val;
        } else if (train && strcmp(a, "--holdout") == 0) {
            ok = parse_num(val, 0.01, 0.9, &o->holdout);
        } else if (train && strcmp(a, "--epochs") == 0) {
            ok = parse_num(val, 1, 100000, &x) && x == floor(x);
            o->epochs = (int)x;
        } else if (train && strcmp(a, "--patience") == 0) {
            ok = parse_num(val, 1, 100000, &x) && x == floor(x);
            o->patience = (int)x;
        } else if (train && strcmp(a, "--batch") == 0) {
            ok = parse_num(val, 1, 1 << 20, &x) && x == floor(x);
            o->batch = (int)x;
        } else if (train && strcmp(a, "--lr") == 0) {
            ok = parse_num(val, 1e-7, 10, &o->lr);
        } else if (train && strcmp(a, "--seed") == 0) {
            ok = parse_num(val, 0, 1e15, &x) && x == floor(x);
            o->seed = (uint64_t)x;
        } else if (train && strcmp(a, "--lambdas") == 0) {
            o->n_lambdas = 0;
            char *copy = val ? strdup(val) : NULL, *save = NULL;
            for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t && ok; t = strtok_r(NULL, ",", &save))
                ok = o->n_lambdas < MAX_LAMBDAS && parse_num(t, 0, 100, &o->lambdas[o->n_lambdas++]);
            ok = ok && o->n_lambdas > 0;
            free(copy);
        } else if (!train && strcmp(a, "--selector") == 0) {
            o->selector = val;
        } else if (!train && strcmp(a, "--lambda") == 0) {
            ok = parse_num(val, 0, 100, &o->lambda);
            o->lambda_set = true;
        } else if (!train && strcmp(a, "--category-router") == 0) {
            o->category_router = val;
        } else if (!train && strcmp(a, "--decode-tokens") == 0) {
            ok = parse_num(val, 0, 100000, &x) && x == floor(x);
            o->decode_tokens = (int)x;
        } else if (!train && strcmp(a, "--json") == 0) {
            o->json = val;
        } else if (!train && strcmp(a, "--markdown") == 0) {
            o->markdown = val;
        } else if (!train && strcmp(a, "--html") == 0) {
            o->html = val;
        } else {
            fprintf(stderr, "coegate fusion %s: unknown option %s\n%s", verb, a, usage);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "coegate fusion %s: %s: %s\n", verb, a, val ? "invalid value" : "needs a value");
            return 2;
        }
    }
    if (!o->router || !o->n_experts || !o->n_data || (train && !o->out) || (!train && !o->selector)) {
        fprintf(stderr, "coegate fusion %s: give --router, at least one --expert and --data, and %s\n%s", verb,
                train ? "-o" : "--selector", usage);
        return 2;
    }
    return 0;
}

/* Every text of every --data file, with its group index into *names. */
typedef struct corpus {
    char **texts;     /* borrowed from sets */
    int *group;
    size_t n;
    char **names;     /* borrowed from sets */
    int n_groups;
    coe_textset sets[MAX_DATA];
    int n_sets;
} corpus;

static void free_corpus(corpus *c)
{
    for (int s = 0; s < c->n_sets; s++)
        coe_textset_free(&c->sets[s]);
    free(c->texts);
    free(c->group);
    free(c->names);
}

static int load_corpus(const opts *o, corpus *c, coe_buf *diag)
{
    memset(c, 0, sizeof *c);
    int rc = 0;
    size_t total = 0;
    for (int s = 0; !rc && s < o->n_data; s++, c->n_sets++)
        if (!(rc = coe_textset_load(o->data[s], o->group_by, o->limit, &c->sets[s], diag)))
            total += c->sets[s].n;
    if (rc)
        return rc;
    c->texts = malloc((total ? total : 1) * sizeof *c->texts);
    c->group = malloc((total ? total : 1) * sizeof *c->group);
    c->names = malloc(64 * sizeof *c->names);
    if (!c->texts || !c->group || !c->names)
        return COE_ENOMEM;
    for (int s = 0; s < c->n_sets; s++)
        for (size_t i = 0; i < c->sets[s].n; i++) {
            const char *name = c->sets[s].names[c->sets[s].group[i]];
            int g = 0;
            while (g < c->n_groups && strcmp(c->names[g], name) != 0)
                g++;
            if (g == c->n_groups) {
                if (g == 64) {
                    coe_buf_printf(diag, "%s: more than 64 groups of --group-by %s\n", o->data[s], o->group_by);
                    return COE_ERANGE;
                }
                c->names[c->n_groups++] = c->sets[s].names[c->sets[s].group[i]];
            }
            c->texts[c->n] = c->sets[s].texts[i];
            c->group[c->n++] = g;
        }
    if (c->n == 0) {
        coe_buf_printf(diag, "no texts in the --data files\n");
        return COE_EINVAL;
    }
    return 0;
}

/* ---- train ---- */

static int cmd_train(int argc, char **argv)
{
    opts o;
    int rc = parse_opts(argc, argv, true, &o);
    if (rc)
        return rc;
    coe_buf diag = COE_BUF_INIT;
    corpus c;
    group_models g;
    positions p = {0};
    coe_selector *s = NULL;
    size_t *tr = NULL, *ho = NULL;
    rc = load_corpus(&o, &c, &diag);
    bool have_models = !rc && !(rc = open_models(&o, &g, &diag));
    /* The held-out share: every text whose seeded draw falls under it, so that held-out
     * positions come from whole texts. */
    bool *held = !rc ? calloc(c.n, sizeof *held) : NULL;
    if (!rc && !held)
        rc = COE_ENOMEM;
    uint64_t rng = o.seed ^ 0x5eed;
    for (size_t i = 0; held && i < c.n; i++)
        held[i] = (double)(coe_splitmix64(&rng) >> 11) / 9007199254740992.0 < o.holdout;
    if (!rc)
        rc = collect(&g, c.texts, c.n, o.ctx, o.lambdas, o.n_lambdas, held, &p, "reading", &diag);
    if (!rc)
        rc = coe_selector_new(&s, (char *const *)o.names, o.n_experts, p.E);
    size_t n_tr = 0, n_ho = 0;
    if (!rc && (!(tr = malloc(p.n * sizeof *tr)) || !(ho = malloc(p.n * sizeof *ho))))
        rc = COE_ENOMEM;
    if (!rc) {
        for (size_t i = 0; i < p.n; i++) {
            if (held[p.text[i]])
                ho[n_ho++] = i;
            else
                tr[n_tr++] = i;
        }
        if (!n_tr || !n_ho) {
            coe_buf_printf(&diag, "too few texts: %zu positions to train on and %zu held out\n", n_tr, n_ho);
            rc = COE_EINVAL;
        }
    }
    if (!rc) {
        fprintf(stderr, "%zu positions from %zu texts: %zu to train on, %zu held out\n", p.n, c.n, n_tr, n_ho);
        rc = train_selector(&o, &p, tr, n_tr, ho, n_ho, s);
    }
    if (!rc) {
        /* lambda: the held-out NLL of fusionroute with the selector's picks */
        int best = 0;
        double nll[MAX_LAMBDAS] = {0};
        float probs[COE_FUSION_MAX_EXPERTS];
        for (size_t j = 0; j < n_ho; j++) {
            size_t i = ho[j];
            int k = coe_selector_probs(s, p.hidden + i * (size_t)p.E, probs);
            for (int l = 0; l < o.n_lambdas; l++)
                nll[l] -= p.lp_route[(i * (size_t)p.K + (size_t)k) * (size_t)p.L + (size_t)l];
        }
        for (int l = 0; l < o.n_lambdas; l++) {
            fprintf(stderr, "lambda %.3g: held-out perplexity %.3f\n", o.lambdas[l], exp(nll[l] / (double)n_ho));
            if (nll[l] < nll[best])
                best = l;
        }
        s->lambda = (float)o.lambdas[best];
        fprintf(stderr, "lambda %.3g chosen\n", o.lambdas[best]);
        coe_buf prov = COE_BUF_INIT;
        coe_buf_printf(&prov, "coegate fusion train --router %s", o.router);
        for (int k = 0; k < o.n_experts; k++)
            coe_buf_printf(&prov, " --expert %s=%s", o.names[k], o.paths[k]);
        for (int d = 0; d < o.n_data; d++)
            coe_buf_printf(&prov, " --data %s", o.data[d]);
        coe_buf_printf(&prov, " --limit %zu --ctx %d --holdout %g --seed %llu (%zu positions)", o.limit, o.ctx,
                       o.holdout, (unsigned long long)o.seed, p.n);
        rc = coe_selector_save(s, o.out, prov.data, &diag);
        coe_buf_free(&prov);
        if (!rc)
            printf("wrote %s (%d experts, lambda %.3g)\n", o.out, s->n_experts, (double)s->lambda);
    }
    if (rc)
        fprintf(stderr, "coegate fusion train: %s", diag.data ? diag.data : coe_strerror(rc));
    if (rc && diag.len && diag.data[diag.len - 1] != '\n')
        fputc('\n', stderr);
    if (rc && !diag.len)
        fputc('\n', stderr);
    coe_selector_close(&s);
    free(held);
    free(tr);
    free(ho);
    free_positions(&p);
    if (have_models)
        close_models(&g);
    free_corpus(&c);
    coe_buf_free(&diag);
    for (int k = 0; k < o.n_experts; k++)
        free((char *)o.names[k]);
    return rc ? 1 : 0;
}

/* ---- eval ---- */

enum { M_ROUTER, M_SEQROUTE, M_SELECT, M_FUSIONROUTE, M_MIX, M_ORACLE, N_FIXED };
static const char *const fixed_names[N_FIXED] = {"router", "sequence-routing", "select", "fusionroute", "mix",
                                                 "oracle"};

typedef struct tally {
    double nll[COE_FUSION_MAX_EXPERTS + N_FIXED]; /* experts, then the fixed methods */
    long long tokens;
    long long agree;                              /* selector == oracle */
    long long share[COE_FUSION_MAX_EXPERTS];      /* selector's picks */
} tally;

/* Decode tokens/s of one mode, one sequence, greedy: the serving program's work
 * (router step, selected expert's step with its catch-up, or every expert for mix). */
static double decode_speed(group_models *g, const coe_selector *s, int mode, float lambda, int n_tok, coe_buf *diag)
{
    const int V = g->m[0]->n_vocab, E = g->m[0]->n_embd, K = g->K;
    coe_kv *kv[1 + COE_FUSION_MAX_EXPERTS] = {0};
    float *z[1 + COE_FUSION_MAX_EXPERTS] = {0}, *fused = malloc((size_t)V * sizeof *fused), hidden[4096];
    int32_t *ids = malloc((size_t)(n_tok + 2) * sizeof *ids);
    int fed[1 + COE_FUSION_MAX_EXPERTS] = {0}, n_ids = 0, rc = fused && ids && E <= 4096 ? 0 : COE_ENOMEM;
    for (int i = 0; !rc && i <= K; i++)
        if (!(kv[i] = coe_kv_new(g->m[i])) || !(z[i] = malloc((size_t)V * sizeof(float))))
            rc = COE_ENOMEM;
    if (!rc)
        ids[n_ids++] = g->vocab.bos >= 0 ? g->vocab.bos : 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int made = 0;
    /* mode: 0..K-1 an expert alone, else K + (select, fusionroute, mix) */
    while (!rc && made < n_tok && n_ids < coe_engine_n_ctx(g->e[0])) {
        bool want[2048];
        coe_kv *seq[2048];
        int k_sel = mode < K ? mode : 0;
        float probs[COE_FUSION_MAX_EXPERTS] = {0};
        const float *rows[COE_FUSION_MAX_EXPERTS] = {0};
        int first = 1, last = 0;
        if (mode >= K) {
            for (int t = 0; t < n_ids - fed[0]; t++)
                want[t] = t + 1 == n_ids - fed[0], seq[t] = kv[0];
            coe_batch b = {n_ids - fed[0], ids + fed[0], seq, want, hidden};
            rc = coe_engine_forward(g->e[0], &b, z[0], diag);
            fed[0] = n_ids;
            k_sel = coe_selector_probs(s, hidden, probs);
            first = mode == K + 2 ? 0 : k_sel;
            last = mode == K + 2 ? K - 1 : k_sel;
        } else {
            first = last = mode;
        }
        for (int k = first; !rc && k <= last; k++) {
            int n = n_ids - fed[1 + k];
            for (int t = 0; t < n; t++)
                want[t] = t + 1 == n, seq[t] = kv[1 + k];
            coe_batch b = {n, ids + fed[1 + k], seq, want, NULL};
            rc = coe_engine_forward(g->e[1 + k], &b, z[1 + k], diag);
            fed[1 + k] = n_ids;
            rows[k] = z[1 + k];
        }
        if (rc)
            break;
        if (mode < K)
            memcpy(fused, z[1 + mode], (size_t)V * sizeof *fused);
        else
            coe_fusion_logits(mode == K ? COE_FUSION_SELECT : mode == K + 1 ? COE_FUSION_ROUTE : COE_FUSION_MIX,
                              lambda, V, K, rows, probs, k_sel, z[0], fused);
        int best = 0;
        for (int v = 1; v < V; v++)
            best = fused[v] > fused[best] ? v : best;
        ids[n_ids++] = best;
        made++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int i = 0; i <= K; i++) {
        coe_kv_free(&kv[i]);
        free(z[i]);
    }
    free(fused);
    free(ids);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return rc || sec <= 0 ? -1 : made / sec;
}

static void svg_bars(FILE *f, const char *title, const char *const *labels, const double *values, int n)
{
    double max = 0;
    for (int i = 0; i < n; i++)
        max = isfinite(values[i]) && values[i] > max ? values[i] : max;
    int h = 22 * n + 30;
    fprintf(f, "<h3>%s</h3>\n<svg width=\"640\" height=\"%d\" xmlns=\"http://www.w3.org/2000/svg\">\n", title, h);
    for (int i = 0; i < n; i++) {
        double w = max > 0 && isfinite(values[i]) ? 400 * values[i] / max : 0;
        fprintf(f, "<text x=\"0\" y=\"%d\" font-size=\"13\">%s</text>", 22 * i + 16, labels[i]);
        fprintf(f, "<rect x=\"150\" y=\"%d\" width=\"%.1f\" height=\"16\" fill=\"#4a7bd0\"/>", 22 * i + 4, w);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\">%.3f</text>\n", 156 + w, 22 * i + 16, values[i]);
    }
    fputs("</svg>\n", f);
}

static int cmd_eval(int argc, char **argv)
{
    opts o;
    int rc = parse_opts(argc, argv, false, &o);
    if (rc)
        return rc;
    coe_buf diag = COE_BUF_INIT;
    corpus c;
    group_models g;
    positions p = {0};
    coe_selector *s = NULL;
    coe_router *cr = NULL;
    tally *t = NULL;
    int *text_expert = NULL;
    rc = load_corpus(&o, &c, &diag);
    bool have_models = !rc && !(rc = open_models(&o, &g, &diag));
    if (!rc && !(rc = coe_selector_open(&s, o.selector, &diag))) {
        if (s->n_experts != o.n_experts || s->n_embd != g.m[0]->n_embd) {
            coe_buf_printf(&diag, "%s: trained for %d experts and hidden width %d; the group has %d and %d\n",
                           o.selector, s->n_experts, s->n_embd, o.n_experts, g.m[0]->n_embd);
            rc = COE_EINVAL;
        }
        for (int k = 0; !rc && k < o.n_experts; k++)
            if (strcmp(s->experts[k], o.names[k]) != 0) {
                coe_buf_printf(&diag, "%s: expert %d was '%s' in training, here '%s'\n", o.selector, k, s->experts[k],
                               o.names[k]);
                rc = COE_EINVAL;
            }
    }
    double lambda = o.lambda_set ? o.lambda : s ? (double)s->lambda : 0;
    if (!rc && o.category_router && !(rc = coe_router_open(&cr, o.category_router, &diag))) {
        /* Sequence-level routing: the category router reads the whole text; its category
         * names the expert. */
        if (!(text_expert = malloc(c.n * sizeof *text_expert)))
            rc = COE_ENOMEM;
        float probs[256];
        for (size_t i = 0; !rc && i < c.n; i++) {
            if (cr->n_classes > 256 ||
                (rc = coe_router_classify_text(cr, c.texts[i], strlen(c.texts[i]), probs)) != 0)
                break;
            int best = 0;
            for (int k = 1; k < cr->n_classes; k++)
                best = probs[k] > probs[best] ? k : best;
            text_expert[i] = -1;
            for (int k = 0; k < o.n_experts; k++)
                if (strcmp(cr->categories[best], o.names[k]) == 0)
                    text_expert[i] = k;
            if (text_expert[i] < 0) {
                coe_buf_printf(&diag, "%s: category '%s' names none of the experts\n", o.category_router,
                               cr->categories[best]);
                rc = COE_EINVAL;
            }
        }
    }
    if (!rc)
        rc = collect(&g, c.texts, c.n, o.ctx, &lambda, 1, NULL, &p, "reading", &diag);
    if (!rc && !(t = calloc((size_t)c.n_groups + 1, sizeof *t)))
        rc = COE_ENOMEM;
    const int K = o.n_experts;
    int8_t *picked = !rc ? malloc(p.n ? p.n : 1) : NULL;
    for (size_t i = 0; !rc && picked && i < p.n; i++) {
        float probs[COE_FUSION_MAX_EXPERTS];
        int k = coe_selector_probs(s, p.hidden + i * (size_t)p.E, probs), orc = oracle(&p, i);
        picked[i] = (int8_t)k;
        const float *lpe = p.lp_expert + i * (size_t)K;
        double mx = -INFINITY, mix = 0;
        for (int j = 0; j < K; j++)
            mx = lpe[j] > mx ? lpe[j] : mx;
        for (int j = 0; j < K; j++)
            mix += (double)probs[j] * exp((double)lpe[j] - mx);
        double m[N_FIXED] = {p.lp_router[i], text_expert ? lpe[text_expert[p.text[i]]] : NAN, lpe[k],
                             p.lp_route[i * (size_t)K + (size_t)k], mx + log(mix), lpe[orc]};
        for (int gi = 0; gi < 2; gi++) {
            tally *tt = &t[gi ? c.n_groups : c.group[p.text[i]]];
            for (int j = 0; j < K; j++)
                tt->nll[j] -= lpe[j];
            for (int j = 0; j < N_FIXED; j++)
                tt->nll[K + j] -= m[j];
            tt->tokens++;
            tt->agree += k == orc;
            tt->share[k]++;
        }
    }
    if (!rc && !picked)
        rc = COE_ENOMEM;
    double speed[COE_FUSION_MAX_EXPERTS + 3] = {0};
    const char *speed_names[COE_FUSION_MAX_EXPERTS + 3];
    for (int m = 0; !rc && m < K + 3; m++) {
        speed_names[m] = m < K ? o.names[m] : m == K ? "select" : m == K + 1 ? "fusionroute" : "mix";
        if (o.decode_tokens > 0)
            speed[m] = decode_speed(&g, s, m, (float)lambda, o.decode_tokens, &diag);
    }
    if (!rc) {
        cJSON *root = cJSON_CreateObject(), *groups = cJSON_AddArrayToObject(root, "groups");
        cJSON_AddStringToObject(root, "selector", o.selector);
        cJSON_AddNumberToObject(root, "lambda", lambda);
        cJSON_AddNumberToObject(root, "ctx", o.ctx);
        for (int gi = 0; gi <= c.n_groups; gi++) {
            const tally *tt = &t[gi];
            cJSON *gj = cJSON_CreateObject(), *ppl = cJSON_CreateObject(), *nll = cJSON_CreateObject(),
                  *share = cJSON_CreateObject();
            cJSON_AddStringToObject(gj, "group", gi < c.n_groups ? c.names[gi] : "all");
            cJSON_AddNumberToObject(gj, "tokens", (double)tt->tokens);
            for (int j = 0; j < K + N_FIXED; j++) {
                const char *name = j < K ? o.names[j] : fixed_names[j - K];
                if (j == K + M_SEQROUTE && !text_expert)
                    continue;
                double mean = tt->tokens ? tt->nll[j] / (double)tt->tokens : 0;
                cJSON_AddNumberToObject(nll, name, mean);
                cJSON_AddNumberToObject(ppl, name, exp(mean));
            }
            for (int k = 0; k < K; k++)
                cJSON_AddNumberToObject(share, o.names[k], tt->tokens ? (double)tt->share[k] / (double)tt->tokens : 0);
            cJSON_AddItemToObject(gj, "nll", nll);
            cJSON_AddItemToObject(gj, "ppl", ppl);
            cJSON_AddNumberToObject(gj, "oracle_agreement", tt->tokens ? (double)tt->agree / (double)tt->tokens : 0);
            cJSON_AddItemToObject(gj, "expert_share", share);
            cJSON_AddItemToArray(groups, gj);
        }
        if (o.decode_tokens > 0) {
            cJSON *sp = cJSON_AddObjectToObject(root, "decode_tokens_per_s");
            for (int m = 0; m < K + 3; m++)
                cJSON_AddNumberToObject(sp, speed_names[m], speed[m]);
        }
        char *text = cJSON_Print(root);
        FILE *f = o.json ? fopen(o.json, "w") : stdout;
        if (f && text) {
            fprintf(f, "%s\n", text);
            if (f != stdout)
                fclose(f);
        } else {
            coe_buf_printf(&diag, "cannot write %s\n", o.json);
            rc = COE_EIO;
        }
        free(text);
        cJSON_Delete(root);
    }
    if (!rc && o.markdown) {
        FILE *f = fopen(o.markdown, "w");
        if (!f) {
            coe_buf_printf(&diag, "cannot write %s\n", o.markdown);
            rc = COE_EIO;
        } else {
            fprintf(f, "Perplexity per token (lambda %.3g, windows of %d tokens)\n\n| method |", lambda, o.ctx);
            for (int gi = 0; gi <= c.n_groups; gi++)
                fprintf(f, " %s |", gi < c.n_groups ? c.names[gi] : "all");
            fputs("\n|---|", f);
            for (int gi = 0; gi <= c.n_groups; gi++)
                fputs("---:|", f);
            fputc('\n', f);
            for (int j = 0; j < K + N_FIXED; j++) {
                if (j == K + M_SEQROUTE && !text_expert)
                    continue;
                fprintf(f, "| %s%s |", j < K ? "expert " : "", j < K ? o.names[j] : fixed_names[j - K]);
                for (int gi = 0; gi <= c.n_groups; gi++)
                    fprintf(f, " %.2f |", t[gi].tokens ? exp(t[gi].nll[j] / (double)t[gi].tokens) : NAN);
                fputc('\n', f);
            }
            fputs("| selector = oracle |", f);
            for (int gi = 0; gi <= c.n_groups; gi++)
                fprintf(f, " %.1f%% |", t[gi].tokens ? 100.0 * (double)t[gi].agree / (double)t[gi].tokens : 0);
            fputc('\n', f);
            for (int k = 0; k < K; k++) {
                fprintf(f, "| share %s |", o.names[k]);
                for (int gi = 0; gi <= c.n_groups; gi++)
                    fprintf(f, " %.1f%% |", t[gi].tokens ? 100.0 * (double)t[gi].share[k] / (double)t[gi].tokens : 0);
                fputc('\n', f);
            }
            if (o.decode_tokens > 0) {
                fputs("\nDecode tokens/s, one sequence, greedy\n\n| mode | tokens/s |\n|---|---:|\n", f);
                for (int m = 0; m < K + 3; m++)
                    fprintf(f, "| %s%s | %.0f |\n", m < K ? "expert " : "", speed_names[m], speed[m]);
            }
            fclose(f);
        }
    }
    if (!rc && o.html) {
        FILE *f = fopen(o.html, "w");
        if (!f) {
            coe_buf_printf(&diag, "cannot write %s\n", o.html);
            rc = COE_EIO;
        } else {
            static const char *const colours[] = {"#f6c85f", "#9dd866", "#6fb0e8", "#f08aa8", "#c49cf0", "#ffa556",
                                                  "#8dddd0", "#cccccc"};
            fputs("<!doctype html><meta charset=\"utf-8\"><title>coegate fusion eval</title>\n"
                  "<body style=\"font-family:sans-serif;max-width:960px\">\n<h1>coegate fusion eval</h1>\n", f);
            fprintf(f, "<p>selector %s, lambda %.3g, windows of %d tokens</p>\n", o.selector, lambda, o.ctx);
            for (int gi = 0; gi <= c.n_groups; gi++) {
                const char *labels[COE_FUSION_MAX_EXPERTS + N_FIXED];
                double vals[COE_FUSION_MAX_EXPERTS + N_FIXED];
                int n = 0;
                for (int j = 0; j < K + N_FIXED; j++) {
                    if (j == K + M_SEQROUTE && !text_expert)
                        continue;
                    labels[n] = j < K ? o.names[j] : fixed_names[j - K];
                    vals[n++] = t[gi].tokens ? exp(t[gi].nll[j] / (double)t[gi].tokens) : NAN;
                }
                char title[256];
                snprintf(title, sizeof title, "Perplexity: %s (%lld tokens)", gi < c.n_groups ? c.names[gi] : "all",
                         t[gi].tokens);
                svg_bars(f, title, labels, vals, n);
            }
            if (o.decode_tokens > 0)
                svg_bars(f, "Decode tokens/s (one sequence)", speed_names, speed, K + 3);
            fputs("<h3>One document, each token coloured by the expert the selector picked</h3>\n<p>", f);
            for (int k = 0; k < K; k++)
                fprintf(f, "<span style=\"background:%s;padding:2px 6px\">%s</span> ", colours[k % 8], o.names[k]);
            fputs("</p>\n<pre style=\"white-space:pre-wrap;line-height:1.5\">", f);
            coe_buf tb = COE_BUF_INIT, html = COE_BUF_INIT;
            for (size_t i = 0; i < p.n && p.text[i] == 0; i++) {
                coe_buf_reset(&tb);
                coe_buf_reset(&html);
                coe_token_bytes(&g.vocab, p.token[i], &tb);
                coe_buf_html_text(&html, tb.data ? tb.data : "", tb.len);
                fprintf(f, "<span style=\"background:%s\">", colours[picked[i] % 8]);
                fwrite(html.data ? html.data : "", 1, html.len, f);
                fputs("</span>", f);
            }
            coe_buf_free(&tb);
            coe_buf_free(&html);
            fputs("</pre>\n</body>\n", f);
            fclose(f);
        }
    }
    if (rc)
        fprintf(stderr, "coegate fusion eval: %s%s", diag.data ? diag.data : coe_strerror(rc), diag.len ? "" : "\n");
    free(picked);
    free(t);
    free(text_expert);
    coe_router_close(&cr);
    coe_selector_close(&s);
    free_positions(&p);
    if (have_models)
        close_models(&g);
    free_corpus(&c);
    coe_buf_free(&diag);
    for (int k = 0; k < o.n_experts; k++)
        free((char *)o.names[k]);
    return rc ? 1 : 0;
}

int coe_fusion_main(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
    if (strcmp(argv[0], "train") == 0)
        return cmd_train(argc - 1, argv + 1);
    if (strcmp(argv[0], "eval") == 0)
        return cmd_eval(argc - 1, argv + 1);
    fprintf(stderr, "coegate fusion: unknown verb '%s' (train or eval)\n%s", argv[0], usage);
    return 2;
}
