/* engine/gguf.h - read-only GGUF (v2/v3) reader over an mmap'd file.
 *
 * On-disk layout (little endian), as written by llama.cpp's tools:
 *
 *   offset  size  field
 *   0       4     magic "GGUF"
 *   4       4     version (u32; 2 or 3 accepted)
 *   8       8     n_tensors (u64)
 *   16      8     n_kv (u64)
 *   24      ...   n_kv metadata pairs:  key (gguf string) | value type (u32) | value
 *           ...   n_tensors tensor infos: name (gguf string) | n_dims (u32) |
 *                 ne[n_dims] (u64 each) | ggml type (u32) | offset (u64, from data start)
 *           pad   to general.alignment (default 32)
 *           ...   tensor data
 *
 *   gguf string = u64 length + bytes (not NUL-terminated). Array value = element type (u32) +
 *   count (u64) + elements.
 *
 * Every read is bounds-checked against the file size; a truncated, corrupt or unsupported
 * file fails eng_gguf_open() with S3_EFORMAT and a message naming the offset, key or tensor.
 *
 * Usage:
 *     struct eng_gguf *g;
 *     if (eng_gguf_open(path, &g, &err) < 0) ...;
 *     uint32_t n_layer; eng_gguf_get_u32(g, "llama.block_count", &n_layer);
 *     const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(g, "token_embd.weight");
 *     eng_gguf_close(g);
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "s3.h"

enum eng_gguf_vtype {
    GGUF_VT_U8 = 0, GGUF_VT_I8 = 1, GGUF_VT_U16 = 2, GGUF_VT_I16 = 3, GGUF_VT_U32 = 4,
    GGUF_VT_I32 = 5, GGUF_VT_F32 = 6, GGUF_VT_BOOL = 7, GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9,
    GGUF_VT_U64 = 10, GGUF_VT_I64 = 11, GGUF_VT_F64 = 12,
};

/* ggml tensor types (numbering is the file format's). */
enum eng_ggml_type {
    GGML_T_F32 = 0, GGML_T_F16 = 1, GGML_T_Q4_0 = 2, GGML_T_Q4_1 = 3, GGML_T_Q5_0 = 6,
    GGML_T_Q5_1 = 7, GGML_T_Q8_0 = 8, GGML_T_Q8_1 = 9, GGML_T_Q2_K = 10, GGML_T_Q3_K = 11,
    GGML_T_Q4_K = 12, GGML_T_Q5_K = 13, GGML_T_Q6_K = 14, GGML_T_Q8_K = 15, GGML_T_BF16 = 30,
};

struct eng_gguf_str {
    const char *ptr; /* borrowed from the mapping; NOT NUL-terminated */
    uint64_t len;
};

struct eng_gguf_kv {
    struct eng_gguf_str key;
    uint32_t type;      /* enum eng_gguf_vtype */
    uint32_t arr_type;  /* element type when type == GGUF_VT_ARRAY */
    uint64_t arr_n;     /* element count when type == GGUF_VT_ARRAY */
    const void *data;   /* borrowed: scalar value, string header, or first array element */
    struct eng_gguf_str *strs; /* owned: decoded elements of a string array, else NULL */
};

struct eng_gguf_tensor {
    char name[96];      /* NUL-terminated copy */
    uint32_t type;      /* enum eng_ggml_type */
    int n_dims;
    int64_t ne[4];      /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint64_t offset;    /* from the start of the data section */
    size_t n_bytes;
    const void *data;   /* borrowed from the mapping */
};

struct eng_gguf;

/* Map and parse a file. On success *out is new; free with eng_gguf_close(). */
int eng_gguf_open(const char *path, struct eng_gguf **out, struct s3_errinfo *err);
void eng_gguf_close(struct eng_gguf *g);

uint32_t eng_gguf_version(const struct eng_gguf *g);
size_t eng_gguf_n_kv(const struct eng_gguf *g);
const struct eng_gguf_kv *eng_gguf_kv_at(const struct eng_gguf *g, size_t i);
const struct eng_gguf_kv *eng_gguf_kv_find(const struct eng_gguf *g, const char *key); /* NULL */

/* Typed getters: 0, S3_ENOTFOUND when the key is absent, S3_EFORMAT on a type that cannot be
 * converted (any integer type converts to u32/i64 if in range; f32/f64 to float). */
int eng_gguf_get_u32(const struct eng_gguf *g, const char *key, uint32_t *out);
int eng_gguf_get_i64(const struct eng_gguf *g, const char *key, int64_t *out);
int eng_gguf_get_f32(const struct eng_gguf *g, const char *key, float *out);
int eng_gguf_get_bool(const struct eng_gguf *g, const char *key, int *out);
int eng_gguf_get_str(const struct eng_gguf *g, const char *key, struct eng_gguf_str *out);

size_t eng_gguf_n_tensors(const struct eng_gguf *g);
const struct eng_gguf_tensor *eng_gguf_tensor_at(const struct eng_gguf *g, size_t i);
const struct eng_gguf_tensor *eng_gguf_tensor_by_name(const struct eng_gguf *g,
                                                      const char *name); /* NULL if absent */

/* Whole mapping, for hashing. */
const void *eng_gguf_file_data(const struct eng_gguf *g, size_t *n_bytes);
/* Lets the kernel drop the mapping's resident pages (they are read back from the file when
 * touched again): for after a load that has copied what it needs. */
void eng_gguf_drop_pages(const struct eng_gguf *g);

/* Byte size of a fixed-size metadata value type, 0 for string/array/unknown. */
static inline size_t eng_gguf_vtype_size(uint32_t t)
{
    switch (t) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

/* Name of a ggml type ("Q4_1"), or "?" for unknown values. */
const char *eng_ggml_type_name(uint32_t type);

/* ---- writer ---------------------------------------------------------------------------------
 *
 * Builds a GGUF v3 file in the layout above: metadata pairs in the order added, tensor infos
 * in the order added, each tensor's data at the next multiple of the alignment (the value of
 * a "general.alignment" u32 pair when one was added, else 32), no padding after the last
 * tensor. Values are written little endian.
 *
 * Errors are sticky: once an add fails (S3_ENOMEM, or S3_EINVAL for a bad argument such as a
 * NULL key, an unknown value type or a tensor whose shape its type cannot hold) every later
 * add returns that code without doing anything, and so does the final write. A caller may
 * therefore check only the write's result.
 *
 * Usage:
 *     struct eng_gguf_writer *w;
 *     if (eng_gguf_writer_new(&w) < 0) ...;
 *     eng_gguf_writer_add_str(w, "general.architecture", "llama");
 *     const int64_t ne[2] = {576, 576};
 *     eng_gguf_writer_add_tensor(w, "blk.0.attn_q.weight", GGML_T_F32, 2, ne, data);
 *     rc = eng_gguf_writer_write_file(w, path, NULL, NULL);
 *     eng_gguf_writer_free(w);
 *
 * One thread at a time per writer. */
struct eng_gguf_writer;

/* Supplies the data of tensor i (added with data NULL) at write time: fill buf with n_bytes
 * bytes and return 0, or a negative S3_E* that aborts the write. */
typedef int (*eng_gguf_fill_fn)(void *ud, size_t i, void *buf, size_t n_bytes);

/* *out is new; free with eng_gguf_writer_free(). 0 or S3_ENOMEM. */
int eng_gguf_writer_new(struct eng_gguf_writer **out);
void eng_gguf_writer_free(struct eng_gguf_writer *w); /* NULL is a no-op */

/* Metadata pairs. Keys and values are copied. */
int eng_gguf_writer_add_u32(struct eng_gguf_writer *w, const char *key, uint32_t v);
int eng_gguf_writer_add_i32(struct eng_gguf_writer *w, const char *key, int32_t v);
int eng_gguf_writer_add_f32(struct eng_gguf_writer *w, const char *key, float v);
int eng_gguf_writer_add_bool(struct eng_gguf_writer *w, const char *key, int v);
int eng_gguf_writer_add_str(struct eng_gguf_writer *w, const char *key, const char *v);
/* A value of any fixed-size type (not string or array); v points at its host-order value. */
int eng_gguf_writer_add_scalar(struct eng_gguf_writer *w, const char *key, uint32_t vtype,
                               const void *v);
/* Array of n fixed-size elements of elem_type, host order, at v. */
int eng_gguf_writer_add_arr(struct eng_gguf_writer *w, const char *key, uint32_t elem_type,
                            const void *v, size_t n);
/* Array of n NUL-terminated strings. */
int eng_gguf_writer_add_strs(struct eng_gguf_writer *w, const char *key, const char *const *v,
                             size_t n);
/* A pair as read by eng_gguf_open() (borrowed; copied now), key and value unchanged. */
int eng_gguf_writer_add_kv_copy(struct eng_gguf_writer *w, const struct eng_gguf_kv *kv);

/* Tensor info: name (copied; at most 95 bytes), ggml type, n_dims (1..4) dims ne (ne[0] is the
 * row). data is borrowed until the write and must hold the tensor's bytes; NULL means the
 * write asks its fill callback. */
int eng_gguf_writer_add_tensor(struct eng_gguf_writer *w, const char *name, uint32_t type,
                               int n_dims, const int64_t *ne, const void *data);
/* Bytes of tensor i's data (0 for a bad i). */
size_t eng_gguf_writer_tensor_bytes(const struct eng_gguf_writer *w, size_t i);

/* Write the whole file to path (created or truncated): 0, the sticky error, S3_EIO, or what
 * fill returned. fill/ud may be NULL when every tensor has data. */
int eng_gguf_writer_write_file(struct eng_gguf_writer *w, const char *path,
                               eng_gguf_fill_fn fill, void *ud);
/* The same into memory: *out is new (free()), *n_bytes its size. */
int eng_gguf_writer_write_mem(struct eng_gguf_writer *w, eng_gguf_fill_fn fill, void *ud,
                              uint8_t **out, size_t *n_bytes);
