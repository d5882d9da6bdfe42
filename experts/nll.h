/* Per-token negative log-likelihood of texts under a model: `coegate model nll`, the
 * measure that the experts' training script reports and that the fusion evaluation
 * builds on.
 *
 * Protocol (scripts/train_experts.py follows the same): a text is tokenized as a
 * plain prompt (BOS where the vocabulary asks for it, then the text as plain text,
 * special-token text not parsed); the tokens are cut into windows of at most ctx
 * tokens that overlap by one, each run from an empty cache, so every token but the
 * first is predicted exactly once. Perplexity is exp(sum of NLL / predicted tokens). */
#ifndef COE_NLL_H
#define COE_NLL_H

#include <stddef.h>

#include "common/buf.h"
#include "experts/engine.h"
#include "experts/tokenizer.h"

typedef struct coe_nll {
    double sum;         /* nats */
    long long tokens;   /* predicted tokens */
} coe_nll;

/* The protocol's tokens of text (NUL-terminated): BOS where the vocabulary asks for it,
 * then the text as plain text; appended to *ids (n, cap grown). */
int coe_nll_tokens(const coe_vocab *v, const char *text, int32_t **ids, size_t *n, size_t *cap);

/* Scores texts[0..n) (NUL-terminated, borrowed) with engine e and vocabulary v in
 * windows of ctx tokens (2 to the engine's n_ctx), adding text i's totals to
 * acc[i]. Windows of several texts share an engine call. Errors name the text. */
int coe_nll_texts(coe_engine *e, const coe_vocab *v, const char *const *texts, size_t n, int ctx, coe_nll *acc,
                  coe_buf *diag);

/* Texts of a JSON Lines file: each line an object with a string "text"; with
 * group_field, rows are grouped by that string field (rows without it go to group
 * "all"). At most limit rows per group when limit > 0, in file order. */
typedef struct coe_textset {
    char **texts;        /* owned */
    int *group;          /* owned: per text, an index into names */
    size_t n;
    char **names;        /* owned: groups in order of first appearance */
    int n_groups;
} coe_textset;

/* Problems are appended to diag as "PATH:LINE: what"; returns 0 or a negative coe_err. */
int coe_textset_load(const char *path, const char *group_field, size_t limit, coe_textset *out, coe_buf *diag);
void coe_textset_free(coe_textset *t);

/* The `coegate model nll` command line. */
int coe_nll_main(int argc, char **argv);

#endif
