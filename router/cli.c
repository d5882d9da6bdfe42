#include "router/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/err.h"
#include "router/classifier.h"
#include "router/dataset.h"
#include "router/eval.h"
#include "router/eval_routing.h"
#include "router/report.h"
#include "router/train.h"

static const char train_usage[] =
    "usage: coegate router train --data TRAIN.jsonl [--dev DEV.jsonl] --out ROUTER.gguf [options]\n"
    "\n"
    "Learns the category classifier from JSON Lines with \"text\" and \"category\".\n"
    "Without --dev, a tenth of the training rows (chosen by a hash of their text) is held\n"
    "out for early stopping. Deterministic for a given --seed.\n"
    "  --fine-label FIELD learn a finer label (such as \"intent\") whose values each\n"
    "                     belong to one category, and route on the categories\n"
    "  --dim N            embedding width (64)\n"
    "  --hidden N         hidden layer width, 0 for none (0)\n"
    "  --buckets N        hash buckets, a power of two (262144)\n"
    "  --word-ngrams N    1: words; 2: words and word pairs (2)\n"
    "  --char-ngrams A-B  character n-gram lengths, 0-0 for none (3-5)\n"
    "  --epochs N         most epochs (30)\n"
    "  --patience N       epochs without a better dev accuracy before stopping (5)\n"
    "  --batch N          minibatch size (32)\n"
    "  --lr X             peak learning rate of AdamW, decaying linearly (0.01)\n"
    "  --weight-decay X   AdamW weight decay (0.0001)\n"
    "  --dropout X        share of each row's features dropped in training (0)\n"
    "  --seed N           random seed (1)\n"
    "  --ensemble K       train K members with seeds SEED..SEED+K-1 and average them (1)\n"
    "  --refit            once early stopping has chosen the number of epochs on the\n"
    "                     held-out rows, learn again from all rows for that many\n";

static const char eval_usage[] =
    "usage: coegate router eval --router ROUTER.gguf --data TEST.jsonl [--json FILE] [--report DIR]\n"
    "                           [--train TRAIN.jsonl --models MODELS.json [--max-active B]\n"
    "                            [--budget B] [--strong NAME --weak NAME]]\n"
    "\n"
    "Accuracy, macro-F1, per-category precision/recall/F1, the confusion matrix and the\n"
    "expected calibration error of ROUTER.gguf on TEST.jsonl. When the rows carry\n"
    "per-expert \"scores\" and MODELS.json gives each expert's active parameters\n"
    "(billions), it also builds the category-to-expert table from TRAIN.jsonl for each\n"
    "cost weight and reports, for experts of at most --max-active B, the quality versus\n"
    "mean cost curve, the best accuracy within --budget B, the best single expert, the\n"
    "per-question oracle, and AUC and APGR between --weak and --strong (both within\n"
    "--max-active; otherwise the report says why they are missing). --report DIR writes\n"
    "report.json, report.md, SVG charts (the quality-cost chart on a log cost axis when\n"
    "costs span more than 20 times) and an index.html with the charts and every table.\n";

static const char usage[] =
    "usage: coegate router train --data TRAIN.jsonl [--dev DEV.jsonl] --out ROUTER.gguf [options]\n"
    "       coegate router eval --router ROUTER.gguf --data TEST.jsonl [options]\n"
    "\n"
    "train learns the category classifier, eval measures it (and routing over an expert\n"
    "pool). 'coegate router train --help' and 'coegate router eval --help' list the options.\n";

/* The usage of a verb ("train", "eval"), or of the command. */
static const char *usage_of(const char *verb)
{
    return !strcmp(verb, "train") ? train_usage : !strcmp(verb, "eval") ? eval_usage : usage;
}

static int bad_option(const char *verb, const char *what, const char *value)
{
    fprintf(stderr, "coegate router%s%s: %s", *verb ? " " : "", verb, what);
    if (value && *value)
        fprintf(stderr, " '%s'", value);
    fprintf(stderr, "\n\n%s", usage_of(verb));
    return 2;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi))
        return false;
    *out = (float)v;
    return true;
}

typedef struct tty_report {
    bool tty;
} tty_report;

static void report(void *ctx, const coe_train_progress *p)
{
    tty_report *r = ctx;
    double per_epoch = p->seconds / p->epoch;
    if (r->tty) {
        int width = 24, done = p->epoch * width / p->max_epochs;
        fprintf(stderr, "\r[%.*s%*s] epoch %d/%d  loss %.4f  dev %.4f (best %.4f at %d)  %.1fs, at most %.0fs left ",
                done, "########################", width - done, "", p->epoch, p->max_epochs, p->loss,
                p->dev_accuracy, p->best_dev_accuracy, p->best_epoch, p->seconds,
                per_epoch * (p->max_epochs - p->epoch));
    } else {
        fprintf(stderr, "epoch %d/%d loss %.4f dev_accuracy %.4f best %.4f at %d elapsed %.1fs\n", p->epoch,
                p->max_epochs, p->loss, p->dev_accuracy, p->best_dev_accuracy, p->best_epoch, p->seconds);
    }
}

static int cmd_train(int argc, char **argv)
{
    const char *data = NULL, *dev_path = NULL, *out = NULL, *fine = NULL;
    bool refit = false;
    long ensemble = 1;
    coe_train_params tp = coe_train_defaults();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(a, "--refit")) {
            refit = true;
            continue;
        }
        if (!v)
            return bad_option("train", "this option needs a value:", a);
        i++;
        if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--dev")) dev_path = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--fine-label")) {
            if (strlen(v) > COE_FIELD_MAX)
                return bad_option("train", "--fine-label: a field name of at most 64 bytes, got", v);
            fine = v;
        }
        else if (!strcmp(a, "--dim")) { if (!parse_long(v, 1, 1024, &n)) return bad_option("train", "--dim: expected 1-1024, got", v); tp.dim = (int)n; }
        else if (!strcmp(a, "--hidden")) { if (!parse_long(v, 0, 4096, &n)) return bad_option("train", "--hidden: expected 0-4096, got", v); tp.hidden = (int)n; }
        else if (!strcmp(a, "--buckets")) { if (!parse_long(v, 2, 1L << 24, &n) || (n & (n - 1))) return bad_option("train", "--buckets: expected a power of two up to 16777216, got", v); tp.features.buckets = (uint32_t)n; }
        else if (!strcmp(a, "--word-ngrams")) { if (!parse_long(v, 1, 2, &n)) return bad_option("train", "--word-ngrams: expected 1 or 2, got", v); tp.features.word_ngrams = (int)n; }
        else if (!strcmp(a, "--char-ngrams")) {
            int lo, hi;
            char tail;
            if (sscanf(v, "%d-%d%c", &lo, &hi, &tail) != 2 || lo < 0 || hi < lo || hi > 16 || (lo == 0) != (hi == 0))
                return bad_option("train", "--char-ngrams: expected A-B with 1 <= A <= B <= 16, or 0-0, got", v);
            tp.features.char_min = lo;
            tp.features.char_max = hi;
        }
        else if (!strcmp(a, "--epochs")) { if (!parse_long(v, 1, 1000, &n)) return bad_option("train", "--epochs: expected 1-1000, got", v); tp.max_epochs = (int)n; }
        else if (!strcmp(a, "--patience")) { if (!parse_long(v, 1, 1000, &n)) return bad_option("train", "--patience: expected 1-1000, got", v); tp.patience = (int)n; }
        else if (!strcmp(a, "--batch")) { if (!parse_long(v, 1, 65536, &n)) return bad_option("train", "--batch: expected 1-65536, got", v); tp.batch = (int)n; }
        else if (!strcmp(a, "--lr")) { if (!parse_float(v, 1e-7, 10, &tp.lr)) return bad_option("train", "--lr: expected a number from 1e-7 to 10, got", v); }
        else if (!strcmp(a, "--weight-decay")) { if (!parse_float(v, 0, 1, &tp.weight_decay)) return bad_option("train", "--weight-decay: expected 0-1, got", v); }
        else if (!strcmp(a, "--ensemble")) { if (!parse_long(v, 1, 16, &ensemble)) return bad_option("train", "--ensemble: expected 1-16, got", v); }
        else if (!strcmp(a, "--dropout")) { if (!parse_float(v, 0, 0.95, &tp.feature_dropout)) return bad_option("train", "--dropout: expected 0-0.95, got", v); }
        else if (!strcmp(a, "--seed")) { if (!parse_long(v, 0, 1L << 62, &n)) return bad_option("train", "--seed: expected a non-negative integer, got", v); tp.seed = (uint64_t)n; }
        else return bad_option("train", "unknown option", a);
    }
    if (!data || !out)
        return bad_option("train", "--data and --out are required", "");
    coe_buf diag = COE_BUF_INIT;
    coe_dataset all = {0}, dev_file = {0}, train = {0}, dev = {0};
    int rc = coe_dataset_load(data, NULL, 0, fine, &all, &diag);
    if (!rc && dev_path)
        rc = coe_dataset_load(dev_path, all.categories, all.n_categories, NULL, &dev_file, &diag);
    if (rc) {
        fputs(diag.data, stderr);
        coe_buf_free(&diag);
        coe_dataset_free(&all);
        coe_dataset_free(&dev_file);
        return 1;
    }
    const coe_dataset *tr = &all, *dv = &dev_file;
    if (!dev_path) {
        coe_dataset_split(&all, 0.1, &train, &dev);
        tr = &train;
        dv = &dev;
    }
    fprintf(stderr, "training on %zu rows, %d categories; early stopping on %zu %s rows\n", tr->n,
            all.n_categories, dv->n, dev_path ? "dev" : "held-out");
    tty_report r = {isatty(2) != 0};
    coe_router *m = NULL;
    for (long k = 0; k < ensemble && !rc; k++) {
        coe_train_params member = tp;
        member.seed = tp.seed + (uint64_t)k;
        if (ensemble > 1)
            fprintf(stderr, "member %ld of %ld (seed %llu)\n", k + 1, ensemble, (unsigned long long)member.seed);
        coe_router *one = NULL;
        int best_epoch = 0;
        rc = coe_router_train(tr, dv, &member, all.hash, report, &r, &one, &best_epoch);
        if (r.tty)
            fputs("\n", stderr);
        if (!rc && refit && !dev_path) {
            /* The epoch count is chosen: learn again from every training row. */
            fprintf(stderr, "refitting on all %zu rows for %d epochs\n", all.n, best_epoch);
            coe_router_close(&one);
            coe_train_params again = member;
            again.max_epochs = best_epoch;
            again.schedule_epochs = member.max_epochs; /* the same learning rates as the run that chose */
            coe_dataset none = {0};
            rc = coe_router_train(&all, &none, &again, all.hash, report, &r, &one, NULL);
            if (r.tty)
                fputs("\n", stderr);
        }
        if (!rc && !m)
            m = one, one = NULL;
        else if (!rc)
            rc = coe_router_adopt(m, &one);
        coe_router_close(&one);
    }
    if (!rc && fine)
        snprintf(m->output_field, sizeof m->output_field, "%s", fine);
    if (!rc)
        rc = coe_router_save(m, out, &diag);
    if (rc)
        fprintf(stderr, "coegate router train: %s%s\n", diag.len ? diag.data : "", coe_strerror(rc));
    else
        fprintf(stderr, "wrote %s\n", out);
    coe_router_close(&m);
    if (!dev_path) {
        coe_dataset_free_split(&train);
        coe_dataset_free_split(&dev);
    }
    coe_dataset_free(&all);
    coe_dataset_free(&dev_file);
    coe_buf_free(&diag);
    return rc ? 1 : 0;
}

static int cmd_eval(int argc, char **argv)
{
    const char *router = NULL, *data = NULL, *json = NULL, *train_path = NULL, *models = NULL;
    const char *strong = NULL, *weak = NULL, *report_dir = NULL;
    float max_active = 1e9f, budget = 1e9f;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return bad_option("eval", "this option needs a value:", a);
        i++;
        if (!strcmp(a, "--router")) router = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--train")) train_path = v;
        else if (!strcmp(a, "--report")) report_dir = v;
        else if (!strcmp(a, "--models")) models = v;
        else if (!strcmp(a, "--strong")) strong = v;
        else if (!strcmp(a, "--weak")) weak = v;
        else if (!strcmp(a, "--max-active")) { if (!parse_float(v, 0, 1e9, &max_active)) return bad_option("eval", "--max-active: expected a number of billions, got", v); }
        else if (!strcmp(a, "--budget")) { if (!parse_float(v, 0, 1e9, &budget)) return bad_option("eval", "--budget: expected a number of billions, got", v); }
        else return bad_option("eval", "unknown option", a);
    }
    if (!router || !data)
        return bad_option("eval", "--router and --data are required", "");
    if ((train_path == NULL) != (models == NULL))
        return bad_option("eval", "--train and --models go together: the expert-pool report needs both", NULL);
    coe_buf diag = COE_BUF_INIT;
    coe_router *m = NULL;
    coe_dataset test = {0};
    int rc = coe_router_open(&m, router, &diag);
    if (!rc)
        rc = coe_dataset_load(data, m->categories, m->n_classes, NULL, &test, &diag);
    coe_eval ev = {0};
    coe_dataset train = {0};
    coe_pool pool = {0};
    coe_routing_eval rev = {0};
    bool routing = train_path != NULL;
    if (!rc)
        rc = coe_eval_classifier(m, &test, &ev);
    if (!rc && routing) {
        /* A router with finer classes routes on them: the training rows need that field. */
        rc = coe_dataset_load(train_path, m->categories, m->n_classes, m->output_field[0] ? m->output_field : NULL,
                              &train, &diag);
        if (!rc)
            rc = coe_pool_load(models, &pool, &diag);
        if (!rc)
            rc = coe_eval_routing(m, &ev, &train, &test, &pool, max_active, budget, strong, weak, &rev, &diag);
    }
    if (rc) {
        fprintf(stderr, "%s%s", diag.data ? diag.data : "", diag.len ? "" : coe_strerror(rc));
    } else {
        coe_buf text = COE_BUF_INIT;
        coe_eval_markdown(&ev, &text);
        if (routing)
            coe_routing_markdown(&rev, &pool, &ev, &text);
        fputs(text.data, stdout);
        coe_buf_free(&text);
        if (json) {
            coe_buf j = COE_BUF_INIT;
            coe_report_json(&ev, routing ? &rev : NULL, &pool, &j);
            coe_buf why = COE_BUF_INIT;
            if ((rc = coe_buf_write_file(&j, json, &why)) != 0)
                fprintf(stderr, "coegate router eval: %s", why.data);
            coe_buf_free(&why);
            coe_buf_free(&j);
        }
        if (!rc && report_dir) {
            rc = coe_report_write(report_dir, &ev, routing ? &rev : NULL, &pool, &diag);
            if (rc)
                fputs(diag.data, stderr);
            else
                fprintf(stderr, "wrote %s/index.html (with report.json, report.md and the SVG charts)\n",
                        report_dir);
        }
    }
    coe_eval_free(&ev);
    coe_routing_eval_free(&rev);
    coe_pool_free(&pool);
    coe_dataset_free(&train);
    coe_dataset_free(&test);
    coe_router_close(&m);
    coe_buf_free(&diag);
    return rc ? 1 : 0;
}

int coe_router_cli(int argc, char **argv)
{
    if (argc < 1 || coe_cli_wants_help(argc, argv)) {
        fputs(argc < 1 ? usage : usage_of(argv[0]), argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (!strcmp(argv[0], "train"))
        return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[0], "eval"))
        return cmd_eval(argc - 1, argv + 1);
    return bad_option("", "unknown verb", argv[0]);
}
