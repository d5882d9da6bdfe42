/* What a GGUF model file holds, for people: `coegate model info`. */
#ifndef COE_MODEL_INFO_H
#define COE_MODEL_INFO_H

#include "common/buf.h"
#include "common/gguf.h"

/* Appends a description of g: format, architecture and shape, parameter counts (total
 * and, for Mixture-of-Experts models, active per token), tensor types, vocabulary and
 * chat template. */
int coe_model_info(const coe_gguf *g, coe_buf *out);

#endif
