/* GGUF (v2 and v3, little-endian): the one file format for model weights, router
 * weights and fusion selectors. The reader maps the file and checks every count,
 * length, offset, size and shape against it before anything is used, so a truncated
 * or hostile file is refused with a message, never read out of bounds. Tensor data
 * is used in place, never copied. The writer makes small files (tests, router
 * weights, `coegate forge`). */
#ifndef COE_GGUF_H
#define COE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* Value types of metadata. */
typedef enum coe_gguf_type {
    COE_GGUF_U8 = 0, COE_GGUF_I8 = 1, COE_GGUF_U16 = 2, COE_GGUF_I16 = 3, COE_GGUF_U32 = 4,
    COE_GGUF_I32 = 5, COE_GGUF_F32 = 6, COE_GGUF_BOOL = 7, COE_GGUF_STRING = 8, COE_GGUF_ARRAY = 9,
    COE_GGUF_U64 = 10, COE_GGUF_I64 = 11, COE_GGUF_F64 = 12,
} coe_gguf_type;

/* Tensor element types (ggml's numbering). */
typedef enum coe_ggml_type {
    COE_GGML_F32 = 0, COE_GGML_F16 = 1, COE_GGML_Q4_0 = 2, COE_GGML_Q4_1 = 3, COE_GGML_Q5_0 = 6,
    COE_GGML_Q5_1 = 7, COE_GGML_Q8_0 = 8, COE_GGML_Q8_1 = 9, COE_GGML_Q2_K = 10, COE_GGML_Q3_K = 11,
    COE_GGML_Q4_K = 12, COE_GGML_Q5_K = 13, COE_GGML_Q6_K = 14, COE_GGML_Q8_K = 15, COE_GGML_IQ2_XXS = 16,
    COE_GGML_IQ2_XS = 17, COE_GGML_IQ3_XXS = 18, COE_GGML_IQ1_S = 19, COE_GGML_IQ4_NL = 20, COE_GGML_IQ3_S = 21,
    COE_GGML_IQ2_S = 22, COE_GGML_IQ4_XS = 23, COE_GGML_I8 = 24, COE_GGML_I16 = 25, COE_GGML_I32 = 26,
    COE_GGML_I64 = 27, COE_GGML_F64 = 28, COE_GGML_IQ1_M = 29, COE_GGML_BF16 = 30, COE_GGML_TQ1_0 = 34,
    COE_GGML_TQ2_0 = 35,
} coe_ggml_type;

/* A string inside the mapping: not NUL-terminated. */
typedef struct coe_gguf_str {
    const char *ptr;
    uint64_t len;
} coe_gguf_str;

typedef struct coe_gguf_value {
    coe_gguf_type type;
    const uint8_t *data;                  /* scalars: the value's bytes; arrays of scalars: the elements */
    coe_gguf_str str;                     /* COE_GGUF_STRING */
    coe_gguf_type elem_type;              /* COE_GGUF_ARRAY */
    uint64_t count;                       /* COE_GGUF_ARRAY: number of elements */
    const coe_gguf_str *strings;          /* arrays of strings: one per element */
    const struct coe_gguf_value *items;   /* arrays of arrays: one per element */
} coe_gguf_value;

typedef struct coe_gguf_kv {
    coe_gguf_str key;
    coe_gguf_value value;
} coe_gguf_kv;

typedef struct coe_gguf_tensor {
    coe_gguf_str name;
    uint32_t n_dims;
    uint64_t dims[4];                     /* dims[0] is the contiguous one */
    coe_ggml_type type;
    uint64_t offset;                      /* within the data section */
    uint64_t n_elements;
    uint64_t n_bytes;
    const void *data;                     /* in the mapping, aligned as the file says */
} coe_gguf_tensor;

typedef struct coe_gguf {
    char *path;                           /* owned: for messages */
    uint32_t version;
    uint32_t alignment;
    const uint8_t *base;                  /* the mapping (or the caller's buffer) */
    size_t size;
    uint64_t data_offset;                 /* start of the data section */
    coe_gguf_kv *kvs;                     /* owned */
    uint64_t n_kvs;
    coe_gguf_tensor *tensors;             /* owned */
    uint64_t n_tensors;
    bool mapped;
    void *tables;                         /* owned: string and item tables of arrays */
} coe_gguf;

/* Maps and checks path. On failure returns a negative coe_err and appends one line to
 * diag: "PATH: what is wrong" with the byte offset, key or tensor concerned. */
int coe_gguf_open(coe_gguf **out, const char *path, coe_buf *diag);
/* The same over a buffer the caller keeps alive while the result is used. */
int coe_gguf_open_memory(coe_gguf **out, const void *data, size_t size, const char *name, coe_buf *diag);
void coe_gguf_close(coe_gguf **g);

/* Lookups by exact name; NULL when absent. */
const coe_gguf_kv *coe_gguf_find_kv(const coe_gguf *g, const char *key);
const coe_gguf_tensor *coe_gguf_find_tensor(const coe_gguf *g, const char *name);

/* Typed reads of a value, with the conversions GGUF writers differ on: any integer
 * type widens to the wanted one when it fits, F32/F64 convert. False on a type that
 * does not convert. */
bool coe_gguf_get_u64(const coe_gguf_value *v, uint64_t *out);
bool coe_gguf_get_i64(const coe_gguf_value *v, int64_t *out);
bool coe_gguf_get_f64(const coe_gguf_value *v, double *out);
bool coe_gguf_get_bool(const coe_gguf_value *v, bool *out);
/* Element i of an array of numbers, read as above. */
bool coe_gguf_array_f64(const coe_gguf_value *v, uint64_t i, double *out);
bool coe_gguf_array_i64(const coe_gguf_value *v, uint64_t i, int64_t *out);

/* Bytes of one scalar of a metadata type (0 for string and array). */
size_t coe_gguf_type_size(coe_gguf_type t);
const char *coe_gguf_type_name(coe_gguf_type t);
/* Elements per block and bytes per block of a tensor type; false when unknown. */
bool coe_ggml_type_layout(uint32_t t, uint32_t *block, uint32_t *block_bytes);
const char *coe_ggml_type_name(uint32_t t);

/* ---- writing ---- */

typedef struct coe_gguf_writer coe_gguf_writer;

coe_gguf_writer *coe_gguf_writer_new(uint32_t alignment);
void coe_gguf_writer_free(coe_gguf_writer **w);
/* A scalar of type t (not string or array) from val's bytes. */
int coe_gguf_writer_kv(coe_gguf_writer *w, const char *key, coe_gguf_type t, const void *val);
int coe_gguf_writer_kv_str(coe_gguf_writer *w, const char *key, const char *s);
/* An array of n scalars of type t (not string or array). */
int coe_gguf_writer_kv_array(coe_gguf_writer *w, const char *key, coe_gguf_type t, const void *vals, uint64_t n);
int coe_gguf_writer_kv_strings(coe_gguf_writer *w, const char *key, const char *const *s, uint64_t n);
/* A tensor; data (n_bytes, as its type and shape need) is borrowed until the write. */
int coe_gguf_writer_tensor(coe_gguf_writer *w, const char *name, coe_ggml_type t, uint32_t n_dims,
                           const uint64_t *dims, const void *data);
/* The whole file, in memory (caller frees out) or to path (replaced atomically). */
int coe_gguf_writer_bytes(coe_gguf_writer *w, coe_buf *out);
int coe_gguf_writer_save(coe_gguf_writer *w, const char *path, coe_buf *diag);

#endif
