/* What a GGUF model file holds, for people: `coegate model info`. */
#ifndef COE_MODEL_INFO_H
#define COE_MODEL_INFO_H

#include <stdbool.h>

#include "common/buf.h"
#include "common/gguf.h"

/* Appends a description of g: format, architecture and shape, parameter counts (total
 * and, for Mixture-of-Experts models, active per token), tensor types, vocabulary and
 * chat template. */
int coe_model_info(const coe_gguf *g, coe_buf *out);

/* Appends the token ids of text in g's vocabulary, space-separated, then a newline:
 * as plain text, or with prompt as a prompt (BOS where the vocabulary asks for it,
 * special tokens' texts read as those tokens); where the vocabulary is refused, the
 * reason goes to diag and its error is returned. */
int coe_model_tokenize(const coe_gguf *g, const char *text, size_t n, bool prompt, coe_buf *out, coe_buf *diag);

#endif
