#include "gateway/http_parse.h"

#include <string.h>
#include <strings.h>

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A field value's bytes: visible characters, obs-text, space and tab. */
static bool is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int hex_digit(unsigned char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Past the empty lines before a request line: each CRLF or LF. */
static size_t skip_empty_lines(const char *buf, size_t len)
{
    size_t p = 0;
    for (;;) {
        if (p < len && buf[p] == '\n')
            p++;
        else if (p + 1 < len && buf[p] == '\r' && buf[p + 1] == '\n')
            p += 2;
        else
            return p;
    }
}

size_t coe_http_head_length(const char *buf, size_t len)
{
    size_t p = skip_empty_lines(buf, len);
    for (const char *lf; p < len && (lf = memchr(buf + p, '\n', len - p));) {
        size_t i = (size_t)(lf - buf) + 1;
        if (i < len && buf[i] == '\n')
            return i + 1;
        if (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
            return i + 2;
        p = i;
    }
    return 0;
}

/* The line starting at *p: its length without the line end; *p moves past the end. */
static size_t next_line(const char *buf, size_t len, size_t *p, const char **line)
{
    const char *start = buf + *p, *lf = memchr(start, '\n', len - *p);
    size_t n = lf ? (size_t)(lf - start) : len - *p;
    *p += n + (lf != NULL);
    if (n > 0 && start[n - 1] == '\r')
        n--;
    *line = start;
    return n;
}

static bool token_is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

/* Decodes %XX in place; cuts the query and fragment. Returns false on a bad escape or
 * an encoded NUL. */
static bool decode_path(char *s)
{
    char *out = s;
    for (char *in = s; *in && *in != '?' && *in != '#'; in++) {
        if (*in != '%') {
            *out++ = *in;
            continue;
        }
        int hi = hex_digit((unsigned char)in[1]), lo = hi < 0 ? -1 : hex_digit((unsigned char)in[2]);
        if (lo < 0 || (hi == 0 && lo == 0))
            return false;
        *out++ = (char)(hi * 16 + lo);
        in += 2;
    }
    *out = '\0';
    return true;
}

static int refuse(const char **why, int status, const char *reason)
{
    *why = reason;
    return status;
}

/* The request line: method SP target SP version. */
static int parse_request_line(char *line, size_t n, coe_http_head *h, const char **why)
{
    size_t m = 0;
    while (m < n && is_tchar((unsigned char)line[m]))
        m++;
    if (m == 0 || m > 32 || m >= n || line[m] != ' ')
        return refuse(why, 400, "malformed request line (method)");
    size_t t0 = m + 1, t = t0;
    while (t < n && line[t] > 0x20 && line[t] < 0x7f)
        t++;
    if (t == t0 || t >= n || line[t] != ' ')
        return refuse(why, 400, "malformed request line (target)");
    const char *v = line + t + 1;
    size_t vn = n - t - 1;
    if (vn == 8 && memcmp(v, "HTTP/1.", 7) == 0 && (v[7] == '0' || v[7] == '1'))
        h->minor = v[7] - '0';
    else if (vn == 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' &&
             v[7] <= '9')
        return refuse(why, 505, "only HTTP/1.0 and HTTP/1.1 are served");
    else
        return refuse(why, 400, "malformed request line (version)");
    line[m] = '\0';
    line[t] = '\0';
    h->method = line;
    char *target = line + t0;
    if (strncasecmp(target, "http://", 7) == 0 || strncasecmp(target, "https://", 8) == 0) {
        /* absolute-form: the path is what follows the authority */
        char *slash = strchr(target + (target[4] == ':' ? 7 : 8), '/');
        if (!slash)
            target[0] = '/', target[1] = '\0';
        else
            target = slash;
    }
    if (target[0] != '/')
        return refuse(why, 400, "the request target is not a path");
    if (!decode_path(target))
        return refuse(why, 400, "the request path has a malformed or NUL percent-escape");
    h->path = target;
    return 0;
}

/* Transfer-Encoding: exactly "chunked" is served; another list of codings gets 501. */
static int check_coding(const char *v, size_t n, coe_http_head *h, const char **why)
{
    if (token_is(v, n, "chunked")) {
        h->chunked = true;
        return 0;
    }
    size_t tokens = 0;
    for (size_t i = 0; i < n;) {
        size_t k = i;
        while (k < n && is_tchar((unsigned char)v[k]))
            k++;
        if (k == i)
            return refuse(why, 400, "Transfer-Encoding is malformed");
        tokens++;
        while (k < n && (v[k] == ' ' || v[k] == '\t'))
            k++;
        if (k < n && v[k] != ',')
            return refuse(why, 400, "Transfer-Encoding is malformed");
        if (k < n)
            k++;
        while (k < n && (v[k] == ' ' || v[k] == '\t'))
            k++;
        i = k;
    }
    if (!tokens)
        return refuse(why, 400, "Transfer-Encoding is malformed");
    return refuse(why, 501, "only the chunked transfer coding is supported");
}

/* Connection: a comma-separated list of options; "close" and "keep-alive" count. */
static void read_connection(const char *v, size_t n, coe_http_head *h)
{
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t k = i;
        while (k < n && v[k] != ',' && v[k] != ' ' && v[k] != '\t')
            k++;
        if (token_is(v + i, k - i, "close"))
            h->keep_alive = false;
        else if (token_is(v + i, k - i, "keep-alive") && h->minor == 0)
            h->keep_alive = true;
        i = k;
    }
}

int coe_http_parse_head(char *buf, size_t len, coe_http_head *h, const char **why)
{
    memset(h, 0, sizeof *h);
    h->content_length = -1;
    *why = NULL;
    size_t p = skip_empty_lines(buf, len);
    const char *line;
    size_t n = next_line(buf, len, &p, &line);
    int rc = parse_request_line((char *)line, n, h, why);
    if (rc)
        return rc;
    int n_length = 0, n_coding = 0, n_host = 0;
    const char *length = NULL;
    for (;;) {
        char *f;
        n = next_line(buf, len, &p, &line);
        f = (char *)line;
        if (n == 0)
            break;
        if (f[0] == ' ' || f[0] == '\t')
            return refuse(why, 400, "a folded header line (obs-fold)");
        size_t c = 0;
        while (c < n && is_tchar((unsigned char)f[c]))
            c++;
        if (c == 0 || c >= n || f[c] != ':')
            return refuse(why, 400, "a header name is not a token (or has space before its colon)");
        size_t v0 = c + 1, v1 = n;
        while (v0 < v1 && (f[v0] == ' ' || f[v0] == '\t'))
            v0++;
        while (v1 > v0 && (f[v1 - 1] == ' ' || f[v1 - 1] == '\t'))
            v1--;
        for (size_t i = v0; i < v1; i++)
            if (!is_value_char((unsigned char)f[i]))
                return refuse(why, 400, "a header value holds a control character (NUL, bare CR)");
        if (h->n_fields == COE_HTTP_MAX_FIELDS)
            return refuse(why, 431, "more than 100 header fields");
        f[c] = '\0';
        f[v1] = '\0'; /* a space, tab, CR or LF of this line: already read past */
        coe_http_field *fd = &h->fields[h->n_fields++];
        fd->name = f;
        fd->value = f + v0;
        fd->value_len = v1 - v0;
        if (strcasecmp(f, "Content-Length") == 0) {
            n_length++;
            length = fd->value;
        } else if (strcasecmp(f, "Transfer-Encoding") == 0) {
            n_coding++;
        } else if (strcasecmp(f, "Host") == 0) {
            n_host++;
        }
    }
    h->keep_alive = h->minor == 1;
    if (n_length && n_coding)
        return refuse(why, 400, "both Content-Length and Transfer-Encoding");
    if (n_length > 1)
        return refuse(why, 400, "more than one Content-Length");
    if (n_coding > 1)
        return refuse(why, 400, "more than one Transfer-Encoding");
    if (h->minor == 1 ? n_host != 1 : n_host > 1)
        return refuse(why, 400, "HTTP/1.1 needs exactly one Host header");
    if (length) {
        if (!*length || strspn(length, "0123456789") != strlen(length))
            return refuse(why, 400, "Content-Length is not a number");
        long long v = 0;
        for (const char *d = length; *d; d++) {
            if (v >= 100000000000000000LL) { /* one more digit would pass 10^18 */
                v = 1000000000000000000LL;
                break;
            }
            v = v * 10 + (*d - '0');
        }
        h->content_length = v;
    }
    for (int i = 0; i < h->n_fields; i++) {
        const coe_http_field *fd = &h->fields[i];
        if (strcasecmp(fd->name, "Transfer-Encoding") == 0) {
            if (h->minor == 0)
                return refuse(why, 400, "Transfer-Encoding in an HTTP/1.0 request");
            if ((rc = check_coding(fd->value, fd->value_len, h, why)))
                return rc;
        } else if (strcasecmp(fd->name, "Connection") == 0) {
            read_connection(fd->value, fd->value_len, h);
        } else if (strcasecmp(fd->name, "Expect") == 0) {
            if (!token_is(fd->value, fd->value_len, "100-continue"))
                return refuse(why, 417, "only 'Expect: 100-continue' is understood");
            h->expect_continue = h->minor == 1;
        }
    }
    return 0;
}

const char *coe_http_head_field(const coe_http_head *h, const char *name)
{
    for (int i = 0; i < h->n_fields; i++)
        if (strcasecmp(h->fields[i].name, name) == 0)
            return h->fields[i].value;
    return NULL;
}

/* ---- chunked bodies ---- */

enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_TRAILER, C_TRAILER_LINE, C_TRAILER_LF, C_END_LF };

#define MAX_CHUNK_LINE 4096
#define MAX_TRAILERS 8192

int coe_http_chunked_feed(coe_http_chunked *st, const char *in, size_t len, coe_buf *body, size_t limit,
                          size_t *used, const char **why)
{
    size_t p = 0;
    int rc = 0;
    *why = NULL;
    while (p < len && rc == 0) {
        unsigned char c = (unsigned char)in[p];
        switch (st->state) {
        case C_SIZE: {
            int d = hex_digit(c);
            if (d >= 0) {
                if (++st->digits > 15) {
                    rc = refuse(why, 400, "a chunk size is too long");
                    break;
                }
                st->left = st->left * 16 + (unsigned)d;
                p++;
            } else if (st->digits && (c == ';' || c == '\r')) {
                st->state = c == ';' ? C_EXT : C_SIZE_LF;
                st->line = 0;
                p++;
            } else {
                rc = refuse(why, 400, "malformed chunk size");
            }
            break;
        }
        case C_EXT:
            if (c == '\r') {
                st->state = C_SIZE_LF;
            } else if (!is_value_char(c) || ++st->line > MAX_CHUNK_LINE) {
                rc = refuse(why, 400, "malformed chunk extension");
                break;
            }
            p++;
            break;
        case C_SIZE_LF:
            if (c != '\n') {
                rc = refuse(why, 400, "a chunk size line does not end with CRLF");
                break;
            }
            p++;
            st->digits = 0;
            st->state = st->left ? C_DATA : C_TRAILER;
            break;
        case C_DATA: {
            size_t n = len - p < st->left ? len - p : (size_t)st->left;
            if (body->len + n > limit) {
                rc = 413;
                break;
            }
            if (coe_buf_append(body, in + p, n)) {
                rc = 503;
                break;
            }
            p += n;
            st->left -= n;
            if (!st->left)
                st->state = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
        case C_DATA_LF:
            if (c != (st->state == C_DATA_CR ? '\r' : '\n')) {
                rc = refuse(why, 400, "chunk data does not end with CRLF");
                break;
            }
            p++;
            st->state = st->state == C_DATA_CR ? C_DATA_LF : C_SIZE;
            break;
        case C_TRAILER:
            if (c == '\r') {
                st->state = C_END_LF;
                p++;
            } else {
                st->state = C_TRAILER_LINE;
            }
            break;
        case C_TRAILER_LINE:
            if (c == '\r')
                st->state = C_TRAILER_LF;
            else if (!is_value_char(c) || ++st->trailers > MAX_TRAILERS)
                rc = refuse(why, 400, "malformed or oversized trailer");
            if (!rc)
                p++;
            break;
        case C_TRAILER_LF:
        case C_END_LF:
            if (c != '\n') {
                rc = refuse(why, 400, "a chunked body line does not end with CRLF");
                break;
            }
            p++;
            if (st->state == C_END_LF)
                rc = 1;
            else
                st->state = C_TRAILER;
            break;
        }
    }
    *used = p;
    return rc;
}
