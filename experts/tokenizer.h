/* Tokenizers from GGUF metadata, matching llama.cpp token for token: SentencePiece
 * (tokenizer.ggml.model "llama") and byte-level BPE ("gpt2") with the pre-tokenizers
 * of gpt-2, llama-3, qwen2, deepseek-coder, starcoder, falcon and the default one (and
 * the names llama.cpp gives the same rules); special tokens in
 * prompts; detokenization. */
#ifndef COE_TOKENIZER_H
#define COE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/gguf.h"
#include "common/strtab.h"

typedef enum coe_vocab_kind { COE_VOCAB_SPM, COE_VOCAB_BPE } coe_vocab_kind;

/* How byte-level BPE splits text before merging (tokenizer.ggml.pre). */
typedef enum coe_pretok {
    COE_PRE_DEFAULT, COE_PRE_GPT2, COE_PRE_LLAMA3, COE_PRE_QWEN2, COE_PRE_DEEPSEEK_CODER,
    COE_PRE_STARCODER, /* every \p{N} on its own, then gpt-2's */
    COE_PRE_FALCON,
    COE_PRE_DBRX,      /* llama-3's expression, without its whole-piece lookup */
    COE_PRE_BLOOM,     /* ' ?[^(\s|.,!?…。，、।۔،)]+' */
    COE_PRE_VIKING,    /* bloom's, then every \p{N} on its own */
    COE_PRE_TEKKEN,    /* case-aware words, single digits (Mistral's tekken) */
    COE_PRE_GPT4O,     /* case-aware words with contractions, numbers of up to 3 digits */
    COE_PRE_DEEPSEEK3, /* numbers of up to 3 digits, CJK and kana, then words with marks */
    COE_PRE_SEED_CODER,/* qwen2's, punctuation without trailing newlines */
    COE_PRE_QWEN35,    /* qwen2's, marks counted with letters */
    COE_PRE_DEEPSEEK_LLM, /* deepseek-coder's, with its own letter and punctuation lists */
    COE_PRE_LINES,     /* runs of non-newlines and of newlines (gemma4, sarvam-moe) */
    COE_PRE_LAGUNA,    /* lines, then qwen2's */
    COE_PRE_UFAKZEKA,  /* qwen2's without the contractions */
    COE_PRE_WHITESPACE,/* \S+ */
    COE_PRE_MINICPM5,  /* numbers of up to 3 digits, then llama-3's, with its whole-piece lookup */
    COE_PRE_SPARK,     /* deepseek-v3's, punctuation without newlines, one newline at a time, then digits */
    COE_PRE_JAIS2,     /* llama-3's, runs of spaces cut in powers of two */
    COE_PRE_EXAONE_MOE,/* words of letters (with marks) joined by single spaces */
    COE_PRE_TINY_AYA,  /* numbers in threes from the right, then gpt-4o's with caseless letters */
    COE_PRE_YOUTU,     /* CJK and Hangul runs, then tiny_aya's words with single digits */
    COE_PRE_GRANITE_EMB, /* gpt-4o's with marks in the cases */
} coe_pretok;

typedef struct coe_vocab {
    coe_vocab_kind kind;
    int n;                      /* tokens */
    const coe_gguf_str *text;   /* borrowed from the GGUF file */
    float *score;               /* owned */
    int32_t *type;              /* owned: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
    coe_strtab ids;             /* owned: token ids by text */
    int byte_token[256];        /* <0xXX> tokens, -1 when absent */
    int unk, bos, eos;          /* -1 when absent */
    bool add_space_prefix;
    bool add_bos;
    int eot;                    /* end-of-turn token (<|im_end|>, <|eot_id|>, ...), -1 when none */
    int *special;               /* owned: control, user-defined and unknown tokens, longest text first */
    int n_special;
    uint8_t special_first[32];  /* bit b: some special token starts with byte b */
    uint8_t *rstrip;            /* owned, n entries or NULL: a special token that eats the whitespace
                                 * after it in a prompt (llama.cpp's RSTRIP attribute) */
    /* byte-level BPE */
    coe_pretok pre;
    const coe_gguf_str *merges; /* borrowed: "left right", by rank */
    int n_merges;
    coe_strtab ranks;           /* owned: merge ranks by text */
    int byte_char[256];         /* the code point byte b is written as in BPE token texts */
    int16_t char_byte[324];     /* and back, -1 for none */
} coe_vocab;

/* Reads the vocabulary of g (which must outlive it). Errors name the key. */
int coe_vocab_load(coe_vocab *v, const coe_gguf *g, coe_buf *diag);
void coe_vocab_free(coe_vocab *v);
/* The id of a token's text, or -1. */
int coe_vocab_find(const coe_vocab *v, const char *s, size_t n);

/* Tokenizes text (n bytes) without BOS, as plain text; appends ids to out (n_out,
 * cap grown). */
int coe_tokenize(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap);
/* Tokenizes a prompt: BOS where the vocabulary asks for it, and special-token text
 * (such as a chat template's <|im_start|>) read as those tokens. */
int coe_tokenize_prompt(const coe_vocab *v, const char *text, size_t n, int32_t **out, size_t *n_out, size_t *cap);

/* The pieces byte-level BPE splits text into before merging: byte offsets, from 0 to
 * n, in *bounds (caller frees). */
int coe_pretokenize(coe_pretok pre, const char *text, size_t n, size_t **bounds, size_t *n_bounds);

/* Appends the bytes token id stands for to out: control tokens give nothing, byte
 * tokens their byte, SentencePiece's U+2581 a space. */
int coe_token_bytes(const coe_vocab *v, int id, coe_buf *out);
/* Whether generating id ends a turn (end of sequence or of turn). */
bool coe_token_is_end(const coe_vocab *v, int id);

#endif
