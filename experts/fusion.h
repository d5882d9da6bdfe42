/* Token-level fusion of experts that share a vocabulary (FusionRoute): at every
 * decoding step a router model reads the text so far; a selector (a linear softmax
 * layer over the router's final hidden state) picks an expert, and the next token is
 * drawn from a fused distribution:
 *
 *   fusionroute: z = z_expert[k] + lambda * z_router      k = argmax selector(h)
 *   select:      z = z_expert[k]
 *   mix:         p = sum_k selector(h)_k softmax(z_expert[k])   (every expert, every token)
 *
 * This file holds the arithmetic, the selector file and its training; the decoding
 * that drives the models is in backends/local.c (serving) and experts/fusion_eval.c
 * (offline). */
#ifndef COE_FUSION_H
#define COE_FUSION_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/gguf.h"
#include "experts/tokenizer.h"

#define COE_FUSION_MAX_EXPERTS 8

typedef enum coe_fusion_mode { COE_FUSION_ROUTE, COE_FUSION_SELECT, COE_FUSION_MIX } coe_fusion_mode;

/* "fusionroute", "select", "mix". */
const char *coe_fusion_mode_name(coe_fusion_mode m);
bool coe_fusion_mode_from_name(const char *s, coe_fusion_mode *out);

/* The selector: probs = softmax(W h + b), W (n_experts, n_embd). */
typedef struct coe_selector {
    int n_experts, n_embd;
    char **experts;    /* owned: the expert names it was trained for, in order */
    float *w, *b;      /* in the mapping when opened, or in owned */
    float lambda;      /* the complementary logit's weight chosen at training */
    coe_gguf *file;
    float *owned;
} coe_selector;

/* A zeroed selector to train. */
int coe_selector_new(coe_selector **out, char *const *experts, int n_experts, int n_embd);
/* Errors name the file and the key or tensor. */
int coe_selector_open(coe_selector **out, const char *path, coe_buf *diag);
/* provenance: free text stored under coegate.fusion.provenance (may be NULL). */
int coe_selector_save(const coe_selector *s, const char *path, const char *provenance, coe_buf *diag);
void coe_selector_close(coe_selector **s);

/* probs (n_experts) for hidden (n_embd); returns the most probable expert (the lowest
 * index among equals). */
int coe_selector_probs(const coe_selector *s, const float *hidden, float *probs);

/* The fused logits out (n_vocab) of one step. expert_logits[k] is expert k's row; only
 * the selected one is read except in mix, which reads all n_experts with weights probs.
 * mix's logits are log-probabilities. */
void coe_fusion_logits(coe_fusion_mode mode, float lambda, int n_vocab, int n_experts, const float *const *expert_logits,
                       const float *probs, int selected, const float *router_logits, float *out);

/* -1 when a and b are the same vocabulary (every token's text and type), else the
 * first token id that differs (the shorter one's size when one is a prefix). */
int coe_vocab_first_difference(const coe_vocab *a, const coe_vocab *b);

#endif
