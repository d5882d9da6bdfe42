/* A byte-at-a-time recognizer of JSON text (RFC 8259, UTF-8 checked), for constrained
 * decoding: response_format json_object keeps only the tokens whose bytes can continue
 * a JSON object, and json_schema those that can continue an object valid against a
 * schema of the subset below. The state is a value: copy it to try a token. */
#ifndef COE_JSON_GRAMMAR_H
#define COE_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#define COE_JSON_MAX_DEPTH 32 /* deeper nesting is refused (as the request parser's 64 allows) */
#define COE_JSON_MAX_SPACE 16 /* whitespace bytes in a row between tokens of the text: more is
                               * refused, so that a model cannot pad forever instead of writing */

/* A compiled JSON Schema of the subset that constrained decoding enforces: "type"
 * (object, array, string, number, integer, boolean, null, or a list of them),
 * "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
 * "enum" and "const" (of strings), "minimum", "maximum", "exclusiveMinimum" and
 * "exclusiveMaximum" (a bounded number is written with at most 18 digits and no
 * exponent); annotations ("title", "description", "default",
 * "examples", "$schema", "$id") are ignored. Any other keyword is refused, so that what
 * is accepted always validates. Objects hold only their listed properties, each once. */
typedef struct coe_json_schema coe_json_schema;

/* Compiles schema; NULL when it is outside the subset (or memory ran out: *why
 * empty), with why and the JSON path of the part at fault ("" for the root). */
coe_json_schema *coe_json_schema_compile(const cJSON *schema, char *why, size_t why_len, char *path,
                                         size_t path_len);
void coe_json_schema_free(coe_json_schema **s);

typedef struct coe_json_frame {
    uint64_t seen;   /* properties written, by index */
    uint16_t node;   /* the container's schema node */
    uint16_t count;  /* array elements begun */
    uint8_t prop;    /* the property whose value is being written */
} coe_json_frame;

typedef struct coe_json_state {
    const coe_json_schema *schema; /* NULL: any JSON object */
    uint8_t stack[COE_JSON_MAX_DEPTH]; /* '{' or '[' of each open container */
    uint8_t depth;
    uint8_t mode;  /* what may come next */
    uint8_t sub;   /* within a literal, a \u escape or a UTF-8 character */
    bool key;      /* the string being read is an object key */
    uint8_t space; /* whitespace bytes in a row, outside strings */
    bool int_only; /* the number being read must be an integer */
    bool neg, frac;  /* a bounded number: its sign, whether its '.' was read, */
    uint8_t digits;  /* its digits so far (at most 18), those after the '.', */
    uint8_t frac_digits;
    uint64_t mant;   /* and their value */
    uint8_t pos;   /* bytes of a constrained string (a key, an enum value) so far */
    uint64_t cand; /* the names or values it may still be, by index */
    coe_json_frame frames[COE_JSON_MAX_DEPTH]; /* with a schema: each open container's */
} coe_json_state;

/* Expects one JSON object, from its first byte (whitespace may follow it). */
void coe_json_init(coe_json_state *s);
/* The same, valid against schema (borrowed for the state's life). */
void coe_json_init_schema(coe_json_state *s, const coe_json_schema *schema);
/* Copies the live part of a state (to try a token on the copy). */
void coe_json_copy(coe_json_state *dst, const coe_json_state *src);
/* Feeds n bytes; false (s then undefined) when they cannot continue the text. */
bool coe_json_feed(coe_json_state *s, const char *bytes, size_t n);
/* Whether the text so far is a complete object. */
bool coe_json_done(const coe_json_state *s);

#endif
