#include "common/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF files are read in place: a little-endian host is required"
#endif

#define MAX_DEPTH 4          /* arrays of arrays, at most this deep */
#define MAX_NAME 4096        /* longest key or tensor name accepted */

/* ---- type tables ---- */

size_t coe_gguf_type_size(coe_gguf_type t)
{
    static const size_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return (unsigned)t < sizeof sizes / sizeof sizes[0] ? sizes[t] : 0;
}

const char *coe_gguf_type_name(coe_gguf_type t)
{
    static const char *const names[] = {"u8",     "i8",    "u16", "i16", "u32", "i32", "f32",
                                        "bool",   "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

typedef struct layout {
    const char *name;
    uint32_t block, bytes;
} layout;

static const layout layouts[] = {
    [COE_GGML_F32] = {"F32", 1, 4},       [COE_GGML_F16] = {"F16", 1, 2},
    [COE_GGML_Q4_0] = {"Q4_0", 32, 18},   [COE_GGML_Q4_1] = {"Q4_1", 32, 20},
    [COE_GGML_Q5_0] = {"Q5_0", 32, 22},   [COE_GGML_Q5_1] = {"Q5_1", 32, 24},
    [COE_GGML_Q8_0] = {"Q8_0", 32, 34},   [COE_GGML_Q8_1] = {"Q8_1", 32, 36},
    [COE_GGML_Q2_K] = {"Q2_K", 256, 84},  [COE_GGML_Q3_K] = {"Q3_K", 256, 110},
    [COE_GGML_Q4_K] = {"Q4_K", 256, 144}, [COE_GGML_Q5_K] = {"Q5_K", 256, 176},
    [COE_GGML_Q6_K] = {"Q6_K", 256, 210}, [COE_GGML_Q8_K] = {"Q8_K", 256, 292},
    [COE_GGML_I8] = {"I8", 1, 1},         [COE_GGML_I16] = {"I16", 1, 2},
    [COE_GGML_I32] = {"I32", 1, 4},       [COE_GGML_I64] = {"I64", 1, 8},
    [COE_GGML_F64] = {"F64", 1, 8},       [COE_GGML_BF16] = {"BF16", 1, 2},
    /* Known so that a file holding them opens and its tensors are named; the engine
     * computes with the ones experts/quant.h lists. */
    [COE_GGML_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [COE_GGML_IQ2_XS] = {"IQ2_XS", 256, 74},
    [COE_GGML_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [COE_GGML_IQ1_S] = {"IQ1_S", 256, 50},
    [COE_GGML_IQ4_NL] = {"IQ4_NL", 32, 18},    [COE_GGML_IQ3_S] = {"IQ3_S", 256, 110},
    [COE_GGML_IQ2_S] = {"IQ2_S", 256, 82},     [COE_GGML_IQ4_XS] = {"IQ4_XS", 256, 136},
    [COE_GGML_IQ1_M] = {"IQ1_M", 256, 56},     [COE_GGML_TQ1_0] = {"TQ1_0", 256, 54},
    [COE_GGML_TQ2_0] = {"TQ2_0", 256, 66},
};

bool coe_ggml_type_layout(uint32_t t, uint32_t *block, uint32_t *block_bytes)
{
    if (t >= sizeof layouts / sizeof layouts[0] || !layouts[t].name)
        return false;
    *block = layouts[t].block;
    *block_bytes = layouts[t].bytes;
    return true;
}

const char *coe_ggml_type_name(uint32_t t)
{
    return t < sizeof layouts / sizeof layouts[0] && layouts[t].name ? layouts[t].name : "unknown";
}

/* ---- reading ---- */

typedef struct cursor {
    coe_gguf *g;
    size_t off;
    coe_buf *diag;
} cursor;

static bool fail_at(cursor *c, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static bool fail_at(cursor *c, size_t off, const char *fmt, ...)
{
    if (c->diag) {
        coe_buf_printf(c->diag, "%s: byte %zu: ", c->g->path, off);
        va_list ap;
        va_start(ap, fmt);
        coe_buf_vprintf(c->diag, fmt, ap);
        va_end(ap);
        coe_buf_puts(c->diag, "\n");
    }
    return false;
}

static uint64_t left(const cursor *c)
{
    return c->g->size - c->off;
}

static bool need(cursor *c, uint64_t n, const char *what)
{
    if (n > left(c))
        return fail_at(c, c->off, "%s needs %llu bytes but the file ends %llu bytes later (truncated?)", what,
                       (unsigned long long)n, (unsigned long long)left(c));
    return true;
}

static bool rd_u32(cursor *c, uint32_t *v, const char *what)
{
    if (!need(c, 4, what))
        return false;
    memcpy(v, c->g->base + c->off, 4);
    c->off += 4;
    return true;
}

static bool rd_u64(cursor *c, uint64_t *v, const char *what)
{
    if (!need(c, 8, what))
        return false;
    memcpy(v, c->g->base + c->off, 8);
    c->off += 8;
    return true;
}

static bool rd_str(cursor *c, coe_gguf_str *s, const char *what)
{
    size_t start = c->off;
    uint64_t n;
    if (!rd_u64(c, &n, what))
        return false;
    if (n > left(c))
        return fail_at(c, start, "%s of %llu bytes runs past the end of the file (%llu bytes left)", what,
                       (unsigned long long)n, (unsigned long long)left(c));
    s->ptr = (const char *)c->g->base + c->off;
    s->len = n;
    c->off += n;
    return true;
}

/* Keeps a table allocated while reading, to be freed with the file. */
static void *keep(coe_gguf *g, size_t bytes)
{
    void **node = malloc(sizeof(void *) + bytes);
    if (!node)
        return NULL;
    node[0] = g->tables;
    g->tables = node;
    return node + 1;
}

static bool parse_value(cursor *c, coe_gguf_type t, coe_gguf_value *v, int depth, const coe_gguf_str *key)
{
    v->type = t;
    size_t start = c->off;
    if (t == COE_GGUF_STRING)
        return rd_str(c, &v->str, "a string value");
    if (t != COE_GGUF_ARRAY) {
        size_t n = coe_gguf_type_size(t);
        if (n == 0)
            return fail_at(c, start, "key '%.*s': unknown value type %u", (int)key->len, key->ptr, (unsigned)t);
        if (!need(c, n, "a value"))
            return false;
        v->data = c->g->base + c->off;
        c->off += n;
        return true;
    }
    uint32_t et;
    if (depth >= MAX_DEPTH)
        return fail_at(c, start, "key '%.*s': arrays nested more than %d deep", (int)key->len, key->ptr, MAX_DEPTH);
    if (!rd_u32(c, &et, "an array's element type") || !rd_u64(c, &v->count, "an array's length"))
        return false;
    v->elem_type = (coe_gguf_type)et;
    size_t es = coe_gguf_type_size(v->elem_type);
    if (es) {
        if (v->count > left(c) / es)
            return fail_at(c, start, "key '%.*s': array of %llu %s runs past the end of the file", (int)key->len,
                           key->ptr, (unsigned long long)v->count, coe_gguf_type_name(v->elem_type));
        v->data = c->g->base + c->off;
        c->off += v->count * es;
        return true;
    }
    if (et == COE_GGUF_STRING) {
        if (v->count > left(c) / 8) /* every string takes at least its length */
            return fail_at(c, start, "key '%.*s': array of %llu strings runs past the end of the file",
                           (int)key->len, key->ptr, (unsigned long long)v->count);
        coe_gguf_str *s = keep(c->g, (size_t)v->count * sizeof *s);
        if (!s)
            return fail_at(c, start, "key '%.*s': out of memory", (int)key->len, key->ptr);
        for (uint64_t i = 0; i < v->count; i++)
            if (!rd_str(c, &s[i], "a string in an array"))
                return false;
        v->strings = s;
        return true;
    }
    if (et == COE_GGUF_ARRAY) {
        if (v->count > left(c) / 12) /* every array takes at least its type and length */
            return fail_at(c, start, "key '%.*s': array of %llu arrays runs past the end of the file",
                           (int)key->len, key->ptr, (unsigned long long)v->count);
        coe_gguf_value *items = keep(c->g, (size_t)v->count * sizeof *items);
        if (!items)
            return fail_at(c, start, "key '%.*s': out of memory", (int)key->len, key->ptr);
        memset(items, 0, (size_t)v->count * sizeof *items);
        for (uint64_t i = 0; i < v->count; i++)
            if (!parse_value(c, COE_GGUF_ARRAY, &items[i], depth + 1, key))
                return false;
        v->items = items;
        return true;
    }
    return fail_at(c, start, "key '%.*s': unknown array element type %u", (int)key->len, key->ptr, et);
}

static bool str_eq(coe_gguf_str a, coe_gguf_str b)
{
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

static bool parse(coe_gguf *g, coe_buf *diag)
{
    cursor c = {g, 0, diag};
    uint32_t magic;
    if (!rd_u32(&c, &magic, "the GGUF header"))
        return false;
    if (memcmp(&magic, "GGUF", 4) != 0)
        return fail_at(&c, 0, "not a GGUF file (the magic is not 'GGUF')");
    if (!rd_u32(&c, &g->version, "the GGUF header"))
        return false;
    if (g->version != 2 && g->version != 3)
        return fail_at(&c, 4, "GGUF version %u is not supported (2 and 3 are)", g->version);
    if (!rd_u64(&c, &g->n_tensors, "the tensor count") || !rd_u64(&c, &g->n_kvs, "the key count"))
        return false;
    /* Cheap bounds before any allocation: a key takes at least 13 bytes, a tensor 32. */
    if (g->n_kvs > left(&c) / 13)
        return fail_at(&c, 16, "%llu keys cannot fit in the %llu bytes left", (unsigned long long)g->n_kvs,
                       (unsigned long long)left(&c));
    if (g->n_tensors > left(&c) / 32)
        return fail_at(&c, 8, "%llu tensors cannot fit in the %llu bytes left", (unsigned long long)g->n_tensors,
                       (unsigned long long)left(&c));
    g->kvs = calloc(g->n_kvs ? g->n_kvs : 1, sizeof *g->kvs);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kvs || !g->tensors)
        return fail_at(&c, 24, "out of memory");

    g->alignment = 32;
    for (uint64_t i = 0; i < g->n_kvs; i++) {
        coe_gguf_kv *kv = &g->kvs[i];
        size_t at = c.off;
        uint32_t t;
        if (!rd_str(&c, &kv->key, "a key") || !rd_u32(&c, &t, "a value type"))
            return false;
        if (kv->key.len == 0 || kv->key.len > MAX_NAME)
            return fail_at(&c, at, "key %llu has a name of %llu bytes", (unsigned long long)i,
                           (unsigned long long)kv->key.len);
        if (!parse_value(&c, (coe_gguf_type)t, &kv->value, 0, &kv->key))
            return false;
        for (uint64_t k = 0; k < i; k++)
            if (str_eq(g->kvs[k].key, kv->key))
                return fail_at(&c, at, "key '%.*s' appears twice", (int)kv->key.len, kv->key.ptr);
        if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0) {
            uint32_t a = 0;
            if (t != COE_GGUF_U32 || (memcpy(&a, kv->value.data, 4), a == 0) || (a & (a - 1)) != 0)
                return fail_at(&c, at, "key 'general.alignment' must be a u32 power of two");
            g->alignment = a;
        }
    }

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        coe_gguf_tensor *t = &g->tensors[i];
        size_t at = c.off;
        uint32_t type;
        if (!rd_str(&c, &t->name, "a tensor name") || !rd_u32(&c, &t->n_dims, "a tensor's dimension count"))
            return false;
        int nl = (int)(t->name.len < 200 ? t->name.len : 200);
        if (t->name.len == 0 || t->name.len > MAX_NAME)
            return fail_at(&c, at, "tensor %llu has a name of %llu bytes", (unsigned long long)i,
                           (unsigned long long)t->name.len);
        if (t->n_dims < 1 || t->n_dims > 4)
            return fail_at(&c, at, "tensor '%.*s': %u dimensions (1 to 4 allowed)", nl, t->name.ptr, t->n_dims);
        t->n_elements = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if (!rd_u64(&c, &t->dims[d], "a tensor dimension"))
                return false;
            if (t->dims[d] == 0 || t->dims[d] > (uint64_t)INT64_MAX / t->n_elements)
                return fail_at(&c, at, "tensor '%.*s': dimension %u is %llu", nl, t->name.ptr, d,
                               (unsigned long long)t->dims[d]);
            t->n_elements *= t->dims[d];
        }
        for (uint32_t d = t->n_dims; d < 4; d++)
            t->dims[d] = 1;
        if (!rd_u32(&c, &type, "a tensor type") || !rd_u64(&c, &t->offset, "a tensor offset"))
            return false;
        uint32_t block, bytes;
        if (!coe_ggml_type_layout(type, &block, &bytes))
            return fail_at(&c, at, "tensor '%.*s': unsupported tensor type %u", nl, t->name.ptr, type);
        t->type = (coe_ggml_type)type;
        if (t->dims[0] % block != 0)
            return fail_at(&c, at, "tensor '%.*s': its rows of %llu do not split into %s blocks of %u", nl,
                           t->name.ptr, (unsigned long long)t->dims[0], coe_ggml_type_name(type), block);
        t->n_bytes = t->n_elements / block * bytes;
        if (t->offset % g->alignment != 0)
            return fail_at(&c, at, "tensor '%.*s': offset %llu is not a multiple of the alignment %u", nl,
                           t->name.ptr, (unsigned long long)t->offset, g->alignment);
        for (uint64_t k = 0; k < i; k++)
            if (str_eq(g->tensors[k].name, t->name))
                return fail_at(&c, at, "tensor '%.*s' appears twice", nl, t->name.ptr);
    }

    /* The data section starts at the next multiple of the alignment. */
    uint64_t pad = (g->alignment - c.off % g->alignment) % g->alignment;
    g->data_offset = c.off + pad;
    if (g->n_tensors > 0 && g->data_offset > g->size)
        return fail_at(&c, c.off, "the data section would start past the end of the file");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        coe_gguf_tensor *t = &g->tensors[i];
        uint64_t room = g->size - g->data_offset;
        if (t->offset > room || t->n_bytes > room - t->offset)
            return fail_at(&c, (size_t)(g->data_offset + (t->offset < room ? t->offset : room)),
                           "tensor '%.*s': its %llu bytes at data offset %llu run past the end of the file "
                           "(truncated?)",
                           (int)(t->name.len < 200 ? t->name.len : 200), t->name.ptr,
                           (unsigned long long)t->n_bytes, (unsigned long long)t->offset);
        t->data = g->base + g->data_offset + t->offset;
    }
    return true;
}

int coe_gguf_open_memory(coe_gguf **out, const void *data, size_t size, const char *name, coe_buf *diag)
{
    *out = NULL;
    coe_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return COE_ENOMEM;
    g->path = strdup(name ? name : "<memory>");
    g->base = data;
    g->size = size;
    if (!parse(g, diag)) {
        coe_gguf_close(&g);
        return COE_EPARSE;
    }
    *out = g;
    return 0;
}

int coe_gguf_open(coe_gguf **out, const char *path, coe_buf *diag)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (diag)
            coe_buf_printf(diag, "%s: cannot open: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return COE_ENOTFOUND;
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        if (diag)
            coe_buf_printf(diag, "%s: not a regular, non-empty file\n", path);
        close(fd);
        return COE_EINVAL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        if (diag)
            coe_buf_printf(diag, "%s: cannot map: %s\n", path, strerror(errno));
        return COE_EIO;
    }
    int rc = coe_gguf_open_memory(out, map, (size_t)st.st_size, path, diag);
    if (rc) {
        munmap(map, (size_t)st.st_size);
        return rc;
    }
    (*out)->mapped = true;
    return 0;
}

void coe_gguf_close(coe_gguf **gp)
{
    coe_gguf *g = *gp;
    *gp = NULL;
    if (!g)
        return;
    if (g->mapped)
        munmap((void *)g->base, g->size);
    while (g->tables) {
        void **node = g->tables;
        g->tables = node[0];
        free(node);
    }
    free(g->kvs);
    free(g->tensors);
    free(g->path);
    free(g);
}

const coe_gguf_kv *coe_gguf_find_kv(const coe_gguf *g, const char *key)
{
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kvs; i++)
        if (g->kvs[i].key.len == n && memcmp(g->kvs[i].key.ptr, key, n) == 0)
            return &g->kvs[i];
    return NULL;
}

const coe_gguf_tensor *coe_gguf_find_tensor(const coe_gguf *g, const char *name)
{
    size_t n = strlen(name);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name.len == n && memcmp(g->tensors[i].name.ptr, name, n) == 0)
            return &g->tensors[i];
    return NULL;
}

/* ---- typed reads ---- */

/* A scalar of type t at p, as integer (*is_int) or double. */
static bool scalar(coe_gguf_type t, const uint8_t *p, int64_t *i, uint64_t *u, double *d, int *kind)
{
    switch (t) {
    case COE_GGUF_U8: *u = p[0]; *kind = 0; return true;
    case COE_GGUF_BOOL: *u = p[0] != 0; *kind = 0; return true;
    case COE_GGUF_I8: { int8_t v; memcpy(&v, p, 1); *i = v; *kind = 1; return true; }
    case COE_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *u = v; *kind = 0; return true; }
    case COE_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *i = v; *kind = 1; return true; }
    case COE_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *u = v; *kind = 0; return true; }
    case COE_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *i = v; *kind = 1; return true; }
    case COE_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); *u = v; *kind = 0; return true; }
    case COE_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *i = v; *kind = 1; return true; }
    case COE_GGUF_F32: { float v; memcpy(&v, p, 4); *d = v; *kind = 2; return true; }
    case COE_GGUF_F64: { double v; memcpy(&v, p, 8); *d = v; *kind = 2; return true; }
    default: return false;
    }
}

static bool as_u64(coe_gguf_type t, const uint8_t *p, uint64_t *out)
{
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    int kind;
    if (!scalar(t, p, &i, &u, &d, &kind) || kind == 2 || (kind == 1 && i < 0))
        return false;
    *out = kind == 0 ? u : (uint64_t)i;
    return true;
}

static bool as_i64(coe_gguf_type t, const uint8_t *p, int64_t *out)
{
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    int kind;
    if (!scalar(t, p, &i, &u, &d, &kind) || kind == 2 || (kind == 0 && u > (uint64_t)INT64_MAX))
        return false;
    *out = kind == 1 ? i : (int64_t)u;
    return true;
}

static bool as_f64(coe_gguf_type t, const uint8_t *p, double *out)
{
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    int kind;
    if (!scalar(t, p, &i, &u, &d, &kind))
        return false;
    *out = kind == 2 ? d : kind == 1 ? (double)i : (double)u;
    return true;
}

bool coe_gguf_get_u64(const coe_gguf_value *v, uint64_t *out)
{
    return v->data && v->type != COE_GGUF_ARRAY && as_u64(v->type, v->data, out);
}

bool coe_gguf_get_i64(const coe_gguf_value *v, int64_t *out)
{
    return v->data && v->type != COE_GGUF_ARRAY && as_i64(v->type, v->data, out);
}

bool coe_gguf_get_f64(const coe_gguf_value *v, double *out)
{
    return v->data && v->type != COE_GGUF_ARRAY && as_f64(v->type, v->data, out);
}

bool coe_gguf_get_bool(const coe_gguf_value *v, bool *out)
{
    uint64_t u;
    if (v->type != COE_GGUF_BOOL || !coe_gguf_get_u64(v, &u))
        return false;
    *out = u != 0;
    return true;
}

bool coe_gguf_array_f64(const coe_gguf_value *v, uint64_t i, double *out)
{
    size_t es = coe_gguf_type_size(v->elem_type);
    return v->type == COE_GGUF_ARRAY && es && i < v->count && as_f64(v->elem_type, v->data + i * es, out);
}

bool coe_gguf_array_i64(const coe_gguf_value *v, uint64_t i, int64_t *out)
{
    size_t es = coe_gguf_type_size(v->elem_type);
    return v->type == COE_GGUF_ARRAY && es && i < v->count && as_i64(v->elem_type, v->data + i * es, out);
}

/* ---- writing ---- */

typedef struct wtensor {
    char *name;
    coe_ggml_type type;
    uint32_t n_dims;
    uint64_t dims[4];
    const void *data;
    uint64_t n_bytes;
} wtensor;

struct coe_gguf_writer {
    uint32_t alignment;
    coe_buf kv;        /* serialised key-value pairs */
    uint64_t n_kv;
    wtensor *tensors;
    uint64_t n_tensors;
    int err;           /* first error, reported by the write */
};

coe_gguf_writer *coe_gguf_writer_new(uint32_t alignment)
{
    coe_gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->alignment = alignment && !(alignment & (alignment - 1)) ? alignment : 32;
    if (w && w->alignment != 32) {
        uint32_t a = w->alignment;
        coe_gguf_writer_kv(w, "general.alignment", COE_GGUF_U32, &a);
    }
    return w;
}

void coe_gguf_writer_free(coe_gguf_writer **wp)
{
    coe_gguf_writer *w = *wp;
    *wp = NULL;
    if (!w)
        return;
    coe_buf_free(&w->kv);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

static void put_u32(coe_buf *b, uint32_t v)
{
    coe_buf_append(b, &v, 4);
}

static void put_u64(coe_buf *b, uint64_t v)
{
    coe_buf_append(b, &v, 8);
}

static void put_str(coe_buf *b, const char *s)
{
    uint64_t n = strlen(s);
    put_u64(b, n);
    coe_buf_append(b, s, n);
}

static int begin_kv(coe_gguf_writer *w, const char *key, coe_gguf_type t)
{
    if (!key || !*key)
        return w->err = COE_EINVAL;
    put_str(&w->kv, key);
    put_u32(&w->kv, (uint32_t)t);
    w->n_kv++;
    return 0;
}

int coe_gguf_writer_kv(coe_gguf_writer *w, const char *key, coe_gguf_type t, const void *val)
{
    size_t n = coe_gguf_type_size(t);
    if (!n)
        return w->err = COE_EINVAL;
    int rc = begin_kv(w, key, t);
    return rc ? rc : coe_buf_append(&w->kv, val, n);
}

int coe_gguf_writer_kv_str(coe_gguf_writer *w, const char *key, const char *s)
{
    int rc = begin_kv(w, key, COE_GGUF_STRING);
    if (!rc)
        put_str(&w->kv, s);
    return rc;
}

int coe_gguf_writer_kv_array(coe_gguf_writer *w, const char *key, coe_gguf_type t, const void *vals, uint64_t n)
{
    size_t es = coe_gguf_type_size(t);
    if (!es)
        return w->err = COE_EINVAL;
    int rc = begin_kv(w, key, COE_GGUF_ARRAY);
    if (rc)
        return rc;
    put_u32(&w->kv, (uint32_t)t);
    put_u64(&w->kv, n);
    return coe_buf_append(&w->kv, vals, (size_t)n * es);
}

int coe_gguf_writer_kv_strings(coe_gguf_writer *w, const char *key, const char *const *s, uint64_t n)
{
    int rc = begin_kv(w, key, COE_GGUF_ARRAY);
    if (rc)
        return rc;
    put_u32(&w->kv, COE_GGUF_STRING);
    put_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++)
        put_str(&w->kv, s[i]);
    return 0;
}

int coe_gguf_writer_tensor(coe_gguf_writer *w, const char *name, coe_ggml_type t, uint32_t n_dims,
                           const uint64_t *dims, const void *data)
{
    uint32_t block, bytes;
    if (!name || !*name || n_dims < 1 || n_dims > 4 || !coe_ggml_type_layout(t, &block, &bytes))
        return w->err = COE_EINVAL;
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++)
        n *= dims[d];
    if (n == 0 || dims[0] % block != 0)
        return w->err = COE_EINVAL;
    wtensor *tt = realloc(w->tensors, (size_t)(w->n_tensors + 1) * sizeof *tt);
    if (!tt)
        return w->err = COE_ENOMEM;
    w->tensors = tt;
    wtensor *x = &tt[w->n_tensors++];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    x->type = t;
    x->n_dims = n_dims;
    memcpy(x->dims, dims, n_dims * sizeof *dims);
    x->data = data;
    x->n_bytes = n / block * bytes;
    return 0;
}

static void pad_to(coe_buf *b, uint32_t alignment)
{
    static const char zeros[256] = {0};
    size_t pad = (alignment - b->len % alignment) % alignment;
    while (pad > 0) {
        size_t k = pad < sizeof zeros ? pad : sizeof zeros;
        coe_buf_append(b, zeros, k);
        pad -= k;
    }
}

int coe_gguf_writer_bytes(coe_gguf_writer *w, coe_buf *out)
{
    if (w->err)
        return w->err;
    coe_buf_append(out, "GGUF", 4);
    put_u32(out, 3);
    put_u64(out, w->n_tensors);
    put_u64(out, w->n_kv);
    coe_buf_append(out, w->kv.data ? w->kv.data : "", w->kv.len);
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        put_str(out, t->name);
        put_u32(out, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++)
            put_u64(out, t->dims[d]);
        put_u32(out, (uint32_t)t->type);
        put_u64(out, off);
        off += (t->n_bytes + w->alignment - 1) / w->alignment * w->alignment;
    }
    pad_to(out, w->alignment);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        coe_buf_append(out, w->tensors[i].data, (size_t)w->tensors[i].n_bytes);
        pad_to(out, w->alignment);
    }
    return out->data ? 0 : COE_ENOMEM;
}

int coe_gguf_writer_save(coe_gguf_writer *w, const char *path, coe_buf *diag)
{
    coe_buf b = COE_BUF_INIT;
    int rc = coe_gguf_writer_bytes(w, &b);
    if (rc) {
        if (diag)
            coe_buf_printf(diag, "%s: cannot build the file: %s\n", path, coe_strerror(rc));
        coe_buf_free(&b);
        return rc;
    }
    rc = coe_buf_write_file(&b, path, diag);
    coe_buf_free(&b);
    return rc;
}
