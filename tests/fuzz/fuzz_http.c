/* HTTP request parser: no crash; an accepted head holds no control character in a
 * value; and a chunked body decodes the same whatever way its bytes are split (the
 * first byte picks the split points). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "gateway/http_parse.h"

static int decode(const char *p, size_t n, size_t step, coe_buf *body, size_t *rest)
{
    coe_http_chunked st = {0};
    size_t at = 0;
    int rc = 0;
    while (at < n && rc == 0) {
        size_t used;
        const char *why;
        rc = coe_http_chunked_feed(&st, p + at, n - at < step ? n - at : step, body, 4096, &used, &why);
        at += used;
    }
    *rest = n - at;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    size_t hl = coe_http_head_length(in, n);
    if (hl) {
        char *copy = malloc(hl + 1);
        if (!copy)
            return 0;
        memcpy(copy, in, hl);
        copy[hl] = '\0';
        coe_http_head h;
        const char *why;
        if (coe_http_parse_head(copy, hl, &h, &why) == 0) {
            if (!h.method || !h.path || h.path[0] != '/')
                abort();
            for (int i = 0; i < h.n_fields; i++)
                for (size_t k = 0; k < h.fields[i].value_len; k++) {
                    unsigned char c = (unsigned char)h.fields[i].value[k];
                    if ((c < 0x20 && c != '\t') || c == 0x7f)
                        abort();
                }
        }
        free(copy);
        in += hl;
        n -= hl;
    }
    coe_buf whole = COE_BUF_INIT, split = COE_BUF_INIT;
    size_t rest_a, rest_b;
    int a = decode(in, n, n ? n : 1, &whole, &rest_a);
    int b = decode(in, n, step, &split, &rest_b);
    bool same = whole.len == split.len && (whole.len == 0 || memcmp(whole.data, split.data, whole.len) == 0);
    if (a != b || (a == 1 && (!same || rest_a != rest_b))) {
        fprintf(stderr, "split every %zu bytes changed the chunked body (%d vs %d)\n", step, a, b);
        abort();
    }
    coe_buf_free(&whole);
    coe_buf_free(&split);
    return 0;
}
