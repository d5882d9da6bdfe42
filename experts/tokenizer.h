/* Tokenizers from GGUF metadata. For now SentencePiece vocabularies
 * (tokenizer.ggml.model "llama"), matching llama.cpp token for token; byte-level BPE
 * is the next step. */
#ifndef COE_TOKENIZER_H
#define COE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/gguf.h"

typedef enum coe_vocab_kind { COE_VOCAB_SPM } coe_vocab_kind;

typedef struct coe_vocab {
    coe_vocab_kind kind;
    int n;                      /* tokens */
    const coe_gguf_str *text;   /* borrowed from the GGUF file */
    float *score;               /* owned */
    int32_t *type;              /* owned: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
    int32_t *slots;             /* owned: open-addressing table of token ids by text */
    uint32_t n_slots;           /* a power of two */
    int byte_token[256];        /* <0xXX> tokens, -1 when absent */
    int unk, bos, eos;          /* -1 when absent */
    bool add_space_prefix;
    bool add_bos;
} coe_vocab;

/* Reads the vocabulary of g (which must outlive it). Errors name the key. */
int coe_vocab_load(coe_vocab *v, const coe_gguf *g, coe_buf *diag);
void coe_vocab_free(coe_vocab *v);
/* The id of a token's text, or -1. */
int coe_vocab_find(const coe_vocab *v, const char *s, size_t n);

/* Tokenizes text (n bytes) without BOS; appends ids to out (n_out, cap grown). */
int coe_tokenize(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap);

#endif
