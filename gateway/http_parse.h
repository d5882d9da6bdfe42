/* HTTP/1.x request heads and chunked bodies, parsed strictly (RFC 9112): anything
 * two parsers could frame differently (the way requests are smuggled past a proxy)
 * is refused with the status to answer and the reason. No I/O: gateway/http.c feeds
 * these from the socket, and the unit tests and the fuzz target feed them directly. */
#ifndef COE_HTTP_PARSE_H
#define COE_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

#define COE_HTTP_MAX_FIELDS 100

typedef struct coe_http_field {
    const char *name;   /* NUL-terminated, as sent */
    const char *value;  /* NUL-terminated (holds none: NUL is refused), without surrounding spaces */
    size_t value_len;
} coe_http_field;

typedef struct coe_http_head {
    const char *method;       /* as sent: a token */
    const char *path;         /* percent-decoded, without the query */
    int minor;                /* HTTP/1.minor: 0 or 1 */
    int n_fields;
    coe_http_field fields[COE_HTTP_MAX_FIELDS];
    long long content_length; /* -1: none; past 10^18 reads as 10^18 */
    bool chunked;
    bool keep_alive;          /* the client allows another request on the connection */
    bool expect_continue;
} coe_http_head;

/* The length of the complete head at the start of buf, through its empty line (a
 * line ends with LF, or CRLF); 0 while it is incomplete. Empty lines before the
 * request line (RFC 9112 2.2) count as part of it. */
size_t coe_http_head_length(const char *buf, size_t len);

/* Parses a complete head (len bytes from coe_http_head_length) in place: it writes
 * terminators into buf, which h then points into. Returns 0, or the status to refuse
 * it with (400, 417, 431, 501, 505) and sets *why. */
int coe_http_parse_head(char *buf, size_t len, coe_http_head *h, const char **why);

/* The value of the field named name (any case), or NULL. */
const char *coe_http_head_field(const coe_http_head *h, const char *name);

/* A chunked body, decoded incrementally. Zero-initialise. */
typedef struct coe_http_chunked {
    int state;
    unsigned long long left; /* of the current chunk's size or data */
    int digits;
    size_t line;             /* bytes of the current extension or trailer line */
    size_t trailers;         /* bytes of trailers so far */
} coe_http_chunked;

/* Feeds len bytes; appends the data to body, refusing to let it pass limit bytes.
 * Sets *used to the bytes consumed (input after the body's end stays unread).
 * Returns 1 when the body is complete, 0 when it needs more, 413 when the data crosses
 * limit, 400 (with *why) when the framing is malformed, or 503 when body ran out of
 * memory. */
int coe_http_chunked_feed(coe_http_chunked *st, const char *in, size_t len, coe_buf *body, size_t limit,
                          size_t *used, const char **why);

#endif
