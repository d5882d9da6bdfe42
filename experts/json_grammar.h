/* A byte-at-a-time recognizer of JSON text (RFC 8259, UTF-8 checked), for constrained
 * decoding: response_format json_object keeps only the tokens whose bytes can continue
 * a JSON object. The state is a small value: copy it to try a token. */
#ifndef COE_JSON_GRAMMAR_H
#define COE_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define COE_JSON_MAX_DEPTH 32 /* deeper nesting is refused (as the request parser's 64 allows) */
#define COE_JSON_MAX_SPACE 16 /* whitespace bytes in a row between tokens of the text: more is
                               * refused, so that a model cannot pad forever instead of writing */

typedef struct coe_json_state {
    uint8_t stack[COE_JSON_MAX_DEPTH]; /* '{' or '[' of each open container */
    uint8_t depth;
    uint8_t mode;  /* what may come next */
    uint8_t sub;   /* within a literal, a \u escape or a UTF-8 character */
    bool key;      /* the string being read is an object key */
    uint8_t space; /* whitespace bytes in a row, outside strings */
} coe_json_state;

/* Expects one JSON object, from its first byte (whitespace may follow it). */
void coe_json_init(coe_json_state *s);
/* Feeds n bytes; false (s then undefined) when they cannot continue the text. */
bool coe_json_feed(coe_json_state *s, const char *bytes, size_t n);
/* Whether the text so far is a complete object. */
bool coe_json_done(const coe_json_state *s);

#endif
