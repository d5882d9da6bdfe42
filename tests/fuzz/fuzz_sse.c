/* SSE parser: no crash, and the same events whatever way the bytes are split
 * (the first byte picks the split points). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/sse.h"
#include "common/buf.h"

static int collect(void *ctx, const coe_sse_event *ev)
{
    coe_buf *b = ctx;
    coe_buf_printf(b, "%zu:", strlen(ev->event));
    coe_buf_puts(b, ev->event);
    coe_buf_printf(b, "%zu:", ev->data_len);
    coe_buf_append(b, ev->data, ev->data_len);
    return 0;
}

static int parse(const uint8_t *p, size_t n, size_t step, coe_buf *out)
{
    coe_sse sse;
    coe_sse_init(&sse, 4096);
    int rc = 0;
    for (size_t at = 0; at < n && !rc; at += step)
        rc = coe_sse_feed(&sse, (const char *)p + at, at + step < n ? step : n - at, collect, out);
    coe_sse_free(&sse);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    coe_buf whole = COE_BUF_INIT, split = COE_BUF_INIT;
    int a = parse(data + 1, size - 1, size, &whole);
    int b = parse(data + 1, size - 1, step, &split);
    /* An event over the limit may be reported at a different place, but both must see it. */
    bool same = whole.len == split.len && (whole.len == 0 || memcmp(whole.data, split.data, whole.len) == 0);
    if ((a == 0) != (b == 0) || (a == 0 && !same)) {
        fprintf(stderr, "split every %zu bytes changed the events\n", step);
        abort();
    }
    coe_buf_free(&whole);
    coe_buf_free(&split);
    return 0;
}
