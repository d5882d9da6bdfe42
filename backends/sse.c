#include "backends/sse.h"

#include <string.h>

#include "common/err.h"

void coe_sse_init(coe_sse *p, size_t max_event)
{
    memset(p, 0, sizeof *p);
    p->max_event = max_event;
}

void coe_sse_free(coe_sse *p)
{
    coe_buf_free(&p->line);
    coe_buf_free(&p->data);
    coe_buf_free(&p->event);
}

static int dispatch(coe_sse *p, coe_sse_fn fn, void *ctx)
{
    int rc = 0;
    if (p->has_data) {
        if (p->data.len && p->data.data[p->data.len - 1] == '\n')
            p->data.data[--p->data.len] = '\0';
        coe_sse_event ev = {p->event.data ? p->event.data : "", p->data.data ? p->data.data : "",
                            p->data.len};
        rc = fn(ctx, &ev);
    }
    coe_buf_reset(&p->data);
    coe_buf_reset(&p->event);
    p->has_data = false;
    return rc;
}

static int process_line(coe_sse *p, coe_sse_fn fn, void *ctx)
{
    const char *s = p->line.data ? p->line.data : "";
    size_t n = p->line.len;
    if (n == 0)
        return dispatch(p, fn, ctx);
    if (s[0] == ':')
        return 0; /* comment, often a keep-alive */
    const char *colon = memchr(s, ':', n);
    size_t name_len = colon ? (size_t)(colon - s) : n;
    const char *value = colon ? colon + 1 : s + n;
    if (colon && *value == ' ')
        value++;
    size_t value_len = (size_t)(s + n - value);
    int rc = 0;
    if (name_len == 4 && memcmp(s, "data", 4) == 0) {
        if (p->data.len + value_len + 1 > p->max_event)
            return COE_ERANGE;
        if ((rc = coe_buf_append(&p->data, value, value_len)) || (rc = coe_buf_append(&p->data, "\n", 1)))
            return rc;
        p->has_data = true;
    } else if (name_len == 5 && memcmp(s, "event", 5) == 0) {
        coe_buf_reset(&p->event);
        rc = coe_buf_append(&p->event, value, value_len);
    }
    /* id and retry do not matter to a client that never reconnects; others are ignored. */
    return rc;
}

int coe_sse_feed(coe_sse *p, const char *bytes, size_t n, coe_sse_fn fn, void *ctx)
{
    size_t i = 0;
    if (!p->started && n > 0) {
        /* A UTF-8 byte-order mark may open the stream; it can arrive split. */
        static const char bom[] = "\xEF\xBB\xBF";
        size_t have = p->line.len;
        while (i < n && have < 3 && bytes[i] == bom[have]) {
            coe_buf_append(&p->line, bytes + i, 1);
            have++;
            i++;
        }
        if (have == 3) {
            coe_buf_reset(&p->line);
            p->started = true;
        } else if (i < n) {
            p->started = true; /* not a BOM: what was held back is ordinary text */
        } else {
            return 0; /* still could be a BOM */
        }
    }
    while (i < n) {
        char c = bytes[i];
        if (p->after_cr) {
            p->after_cr = false;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            p->after_cr = c == '\r';
            int rc = process_line(p, fn, ctx);
            coe_buf_reset(&p->line);
            if (rc)
                return rc;
            i++;
            continue;
        }
        /* Copy up to the next line end in one go. */
        size_t j = i;
        while (j < n && bytes[j] != '\r' && bytes[j] != '\n')
            j++;
        if (p->line.len + (j - i) > p->max_event)
            return COE_ERANGE;
        int rc = coe_buf_append(&p->line, bytes + i, j - i);
        if (rc)
            return rc;
        i = j;
    }
    return 0;
}
