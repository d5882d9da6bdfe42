/* The few Unicode facts the tokenizers need: UTF-8 decoding and encoding, and the
 * general categories of the BPE pre-tokenizers' expressions (\p{L}, \p{N}, \p{P}, \p{S},
 * \p{M}, \s). */
#ifndef COE_UNICODE_H
#define COE_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct coe_cp_range {
    uint32_t lo, hi;
} coe_cp_range;

extern const coe_cp_range coe_unicode_letter[], coe_unicode_number[], coe_unicode_punct[], coe_unicode_symbol[],
    coe_unicode_mark[];
extern const size_t coe_unicode_letter_n, coe_unicode_number_n, coe_unicode_punct_n, coe_unicode_symbol_n,
    coe_unicode_mark_n;

/* The code point at s (n bytes left) and its length in *len; an invalid or cut
 * sequence reads as U+FFFD of one byte, so every byte is consumed exactly once. */
uint32_t coe_utf8_decode(const char *s, size_t n, size_t *len);
/* Writes cp as UTF-8 into out (4 bytes room); returns the length. */
size_t coe_utf8_encode(uint32_t cp, char *out);
/* Bytes at the end of s[0..n) that begin a UTF-8 character not yet complete (0-3). */
size_t coe_utf8_incomplete_tail(const char *s, size_t n);

bool coe_cp_is_letter(uint32_t cp);
bool coe_cp_is_number(uint32_t cp);
bool coe_cp_is_punct(uint32_t cp);
bool coe_cp_is_symbol(uint32_t cp);
bool coe_cp_is_mark(uint32_t cp);
bool coe_cp_is_space(uint32_t cp);

#endif
