/* JSON helpers for the edges: bounded parsing of untrusted text with positions. */
#ifndef COE_JSONX_H
#define COE_JSONX_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

/* Nesting depth of the JSON text s (n bytes), counting brackets outside strings;
 * stops counting once max_depth is exceeded. Cheap, and done before cJSON sees
 * untrusted input, so a deep body is refused before it can recurse. */
int coe_json_depth(const char *s, size_t n, int max_depth);

/* Parses s (n bytes, not necessarily NUL-terminated) as one JSON value with nothing
 * but whitespace after it. On failure returns NULL and sets *err_offset to the byte
 * offset of the error. The result is owned by the caller (cJSON_Delete). */
cJSON *coe_json_parse(const char *s, size_t n, size_t *err_offset);

/* 1-based line and column of byte offset off in s. */
void coe_json_line_col(const char *s, size_t n, size_t off, int *line, int *col);

/* True when item is a number holding an integer within [lo, hi]. */
bool coe_json_is_int_in(const cJSON *item, double lo, double hi);

#endif
