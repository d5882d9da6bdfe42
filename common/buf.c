#include "common/buf.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

static _Atomic long fail_countdown = -1;

void coe_buf_fail_after(long n)
{
    fail_countdown = n;
}

static bool injected_failure(void)
{
    long n = fail_countdown;
    while (n >= 0 && !atomic_compare_exchange_weak(&fail_countdown, &n, n - 1))
        ;
    return n == 0;
}

int coe_buf_reserve(coe_buf *b, size_t extra)
{
    if (b->err)
        return b->err;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > ((size_t)-1) / 2)
            return b->err = COE_ENOMEM;
        cap *= 2;
    }
    char *p = injected_failure() ? NULL : realloc(b->data, cap);
    if (!p)
        return b->err = COE_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int coe_buf_append(coe_buf *b, const void *p, size_t n)
{
    int rc = coe_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int coe_buf_puts(coe_buf *b, const char *s)
{
    return coe_buf_append(b, s, strlen(s));
}

int coe_buf_vprintf(coe_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return COE_EINVAL;
    int rc = coe_buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int coe_buf_printf(coe_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = coe_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    else if ((c & 0xE0) == 0xC0)
        len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

int coe_buf_html_text(coe_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': coe_buf_puts(b, "&amp;"); break;
        case '<': coe_buf_puts(b, "&lt;"); break;
        case '>': coe_buf_puts(b, "&gt;"); break;
        case '"': coe_buf_puts(b, "&quot;"); break;
        default: coe_buf_append(b, s + i, 1);
        }
    }
    return b->err;
}

int coe_buf_json_string(coe_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = coe_buf_reserve(b, n + 2);
    if (rc)
        return rc;
    b->data[b->len++] = '"';
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            if ((rc = coe_buf_append(b, p + i, run - i)))
                return rc;
            i = run;
            continue;
        }
        unsigned c = p[i];
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            } else {
                size_t len = utf8_seq_len(p + i, n - i);
                if (len) {
                    rc = coe_buf_append(b, p + i, len);
                } else {
                    len = 1;
                    rc = coe_buf_append(b, "\xEF\xBF\xBD", 3);
                }
                if (rc)
                    return rc;
                i += len;
                continue;
            }
        }
        if ((rc = coe_buf_append(b, esc, elen)))
            return rc;
        i++;
    }
    return coe_buf_append(b, "\"", 1);
}

void coe_buf_consume(coe_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void coe_buf_reset(coe_buf *b)
{
    b->err = 0;
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void coe_buf_free(coe_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->err = 0;
}

char *coe_buf_steal(coe_buf *b)
{
    if (b->err) {
        coe_buf_free(b);
        return NULL;
    }
    if (!b->data && coe_buf_reserve(b, 0))
        return NULL;
    char *p = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

int coe_buf_read_file(coe_buf *b, const char *path, size_t max, coe_buf *diag)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (diag)
            coe_buf_printf(diag, "%s: cannot open: %s\n", path, strerror(errno));
        return COE_ENOTFOUND;
    }
    char chunk[65536];
    size_t n, total = 0;
    int rc = 0;
    while (!rc && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if ((total += n) > max) {
            if (diag)
                coe_buf_printf(diag, "%s: larger than the limit of %zu bytes for this kind of file\n", path, max);
            rc = COE_ERANGE;
        } else {
            rc = coe_buf_append(b, chunk, n);
        }
    }
    if (!rc && ferror(f)) {
        if (diag)
            coe_buf_printf(diag, "%s: read error: %s\n", path, strerror(errno));
        rc = COE_EIO;
    }
    fclose(f);
    return rc;
}

int coe_buf_write_file(const coe_buf *b, const char *path, coe_buf *diag)
{
    coe_buf tmp = COE_BUF_INIT;
    coe_buf_printf(&tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp.data, "wb");
    int ok = f && fwrite(b->data ? b->data : "", 1, b->len, f) == b->len;
    ok = (f && fclose(f) == 0) && ok;
    int rc = 0;
    if (!ok || rename(tmp.data, path) != 0) {
        if (diag)
            coe_buf_printf(diag, "%s: cannot write: %s\n", path, strerror(errno));
        unlink(tmp.data);
        rc = COE_EIO;
    }
    coe_buf_free(&tmp);
    return rc;
}
