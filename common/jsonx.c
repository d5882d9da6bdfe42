#include "common/jsonx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int coe_json_depth(const char *s, size_t n, int max_depth)
{
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
            if (max > max_depth)
                return max;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return max;
}

cJSON *coe_json_parse(const char *s, size_t n, size_t *err_offset)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, &end, false);
    if (!j) {
        /* cJSON reports the error position through a global; ParseWithLengthOpts
         * also sets end on failure in 1.7.15, which is thread-safe, so prefer it. */
        const char *e = end ? end : cJSON_GetErrorPtr();
        *err_offset = (e && e >= s && e <= s + n) ? (size_t)(e - s) : 0;
        return NULL;
    }
    size_t off = (size_t)(end - s);
    while (off < n && (s[off] == ' ' || s[off] == '\t' || s[off] == '\n' || s[off] == '\r'))
        off++;
    if (off < n) {
        cJSON_Delete(j);
        *err_offset = off;
        return NULL;
    }
    return j;
}

void coe_json_line_col(const char *s, size_t n, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < n; i++) {
        if (s[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

bool coe_json_is_int_in(const cJSON *item, double lo, double hi)
{
    if (!cJSON_IsNumber(item))
        return false;
    double v = item->valuedouble;
    return isfinite(v) && v == floor(v) && v >= lo && v <= hi;
}
