/* A growable byte buffer, always NUL-terminated after len. A failed allocation is
 * sticky: every later append fails too, until reset or free, so a buffer can never
 * hold a text with a piece missing in the middle (a JSON body with a hole). Check err
 * (or any append's result) before sending a buffer out. */
#ifndef COE_BUF_H
#define COE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct coe_buf {
    char *data;  /* owned; NULL until the first append */
    size_t len;
    size_t cap;
    int err;     /* 0, or the first failure (a negative coe_err): sticky */
} coe_buf;

#define COE_BUF_INIT {NULL, 0, 0, 0}

int coe_buf_reserve(coe_buf *b, size_t extra);
int coe_buf_append(coe_buf *b, const void *p, size_t n);
int coe_buf_puts(coe_buf *b, const char *s);
int coe_buf_printf(coe_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int coe_buf_vprintf(coe_buf *b, const char *fmt, va_list ap);
/* Appends s (n bytes) as a quoted JSON string. Invalid UTF-8 bytes become U+FFFD,
 * so the output is always valid JSON whatever an upstream sent. */
int coe_buf_json_string(coe_buf *b, const char *s, size_t n);
/* Appends s (n bytes) as text for HTML and SVG: & < > " escaped. */
int coe_buf_html_text(coe_buf *b, const char *s, size_t n);
/* Drops the first n bytes. */
void coe_buf_consume(coe_buf *b, size_t n);
/* Empties b, keeping its memory, and clears its error. */
void coe_buf_reset(coe_buf *b);
void coe_buf_free(coe_buf *b);
/* Appends the whole file at path to b, refusing a file over max bytes. Problems go
 * to diag (may be NULL) as "PATH: what". Returns 0 or a negative coe_err. */
int coe_buf_read_file(coe_buf *b, const char *path, size_t max, coe_buf *diag);
/* Writes b to path atomically: a temporary file beside it, renamed over it. */
int coe_buf_write_file(const coe_buf *b, const char *path, coe_buf *diag);
/* Hands the data to the caller (who frees it) and empties b. Never NULL on success. */
char *coe_buf_steal(coe_buf *b);

/* For tests: the allocation after the next n ones fails (n < 0: none fails), in every
 * buffer of the process. */
void coe_buf_fail_after(long n);

#endif
