/* tests/engine/test_gguf.c - GGUF reader: exact read-back of files written here, every error
 * path (truncation at each byte, corruption, lying counts), and the real model when present. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "quant.h"
#include "s3.h"
#include "testutil.h"

/* ---- a tiny GGUF writer ----------------------------------------------------------------- */

struct wb {
    uint8_t *p;
    size_t n, cap;
};

static void wb_put(struct wb *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        ck_assert_ptr_nonnull(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void wb_u8(struct wb *b, uint8_t v) { wb_put(b, &v, 1); }
static void wb_u16(struct wb *b, uint16_t v) { wb_put(b, &v, 2); } /* host is little endian */
static void wb_u32(struct wb *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(struct wb *b, uint64_t v) { wb_put(b, &v, 8); }
static void wb_f32(struct wb *b, float v) { wb_put(b, &v, 4); }
static void wb_f64(struct wb *b, double v) { wb_put(b, &v, 8); }

static void wb_str(struct wb *b, const char *s)
{
    wb_u64(b, strlen(s));
    wb_put(b, s, strlen(s));
}

static void wb_pad(struct wb *b, size_t align)
{
    while (b->n % align)
        wb_u8(b, 0);
}

static void wb_hdr(struct wb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    wb_put(b, "GGUF", 4);
    wb_u32(b, version);
    wb_u64(b, n_tensors);
    wb_u64(b, n_kv);
}

static void wb_key(struct wb *b, const char *key, uint32_t type)
{
    wb_str(b, key);
    wb_u32(b, type);
}

static void wb_tinfo(struct wb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                     uint32_t type, uint64_t offset)
{
    wb_str(b, name);
    wb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        wb_u64(b, ne[i]);
    wb_u32(b, type);
    wb_u64(b, offset);
}

static char g_path[512];

static void make_tmp_path(void)
{
    s3t_tmp_path(g_path, sizeof g_path, "s3_test_gguf_");
}

static void write_file(const void *p, size_t n)
{
    FILE *f = fopen(g_path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

/* Write b to the temp file and open it. */
static int open_buf(const struct wb *b, struct eng_gguf **g, struct s3_errinfo *err)
{
    write_file(b->p, b->n);
    memset(err, 0, sizeof *err);
    return eng_gguf_open(g_path, g, err);
}

/* Expect S3_EFORMAT with a message containing `want`. */
static void expect_fail(const struct wb *b, const char *want)
{
    struct eng_gguf *g = (struct eng_gguf *)1;
    struct s3_errinfo err;
    int rc = open_buf(b, &g, &err);
    ck_assert_msg(rc == S3_EFORMAT, "want EFORMAT (%s), got %d: %s", want, rc, err.msg);
    ck_assert_ptr_null(g);
    ck_assert_int_eq(err.code, S3_EFORMAT);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message '%s' lacks '%s'", err.msg, want);
}

static void setup(void) { make_tmp_path(); }
static void teardown(void) { unlink(g_path); }

/* ---- the reference file ----------------------------------------------------------------- */

#define ALIGN 64

/* tensor data patterns */
static const float k_a[8] = {1.5f, -2.0f, 0.0f, 3.25f, -0.0f, 1e-3f, 100.0f, -7.0f};

static void fill_q8(uint8_t *blk, int i)
{
    blk[0] = 0x00, blk[1] = 0x3c; /* d = 1 */
    for (int j = 0; j < 32; j++)
        blk[2 + j] = (uint8_t)(int8_t)(j - 16 + i);
}

/* A file of the given version with every metadata type and four tensors, data section
 * aligned to ALIGN, written by the engine's writer (the version patched in afterwards).
 * Returns the offset where the data section starts in *data_off. */
static void build_reference(struct wb *b, uint32_t version, size_t *data_off)
{
    struct eng_gguf_writer *w = NULL;
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    const uint8_t u8 = 200, b1 = 1, b0 = 0;
    const int8_t i8 = -100;
    const uint16_t u16 = 60000;
    const int16_t i16 = -30000;
    const uint64_t u64 = (1ull << 40) + 5;
    const int64_t i64 = -(1ll << 40);
    const double f64 = 1.0 / 3.0;
    const int32_t ai32[] = {1, -2, 3};
    const char *const astr[] = {"a", "", "ccc"};
    const float af32[] = {-1.25f, 2.5f};
    eng_gguf_writer_add_scalar(w, "t.u8", GGUF_VT_U8, &u8);
    eng_gguf_writer_add_scalar(w, "t.i8", GGUF_VT_I8, &i8);
    eng_gguf_writer_add_scalar(w, "t.u16", GGUF_VT_U16, &u16);
    eng_gguf_writer_add_scalar(w, "t.i16", GGUF_VT_I16, &i16);
    eng_gguf_writer_add_u32(w, "t.u32", 4000000000u);
    eng_gguf_writer_add_i32(w, "t.i32", -2000000000);
    eng_gguf_writer_add_f32(w, "t.f32", 3.5f);
    eng_gguf_writer_add_scalar(w, "t.bool", GGUF_VT_BOOL, &b1);
    eng_gguf_writer_add_str(w, "t.str", "hello, gguf");
    eng_gguf_writer_add_scalar(w, "t.u64", GGUF_VT_U64, &u64);
    eng_gguf_writer_add_scalar(w, "t.i64", GGUF_VT_I64, &i64);
    eng_gguf_writer_add_scalar(w, "t.f64", GGUF_VT_F64, &f64);
    eng_gguf_writer_add_arr(w, "t.arr_i32", GGUF_VT_I32, ai32, 3);
    eng_gguf_writer_add_strs(w, "t.arr_str", astr, 3);
    eng_gguf_writer_add_arr(w, "t.arr_f32", GGUF_VT_F32, af32, 2);
    eng_gguf_writer_add_arr(w, "t.arr_empty", GGUF_VT_U8, NULL, 0);
    eng_gguf_writer_add_str(w, "t.empty_str", "");
    eng_gguf_writer_add_u32(w, "general.alignment", ALIGN);
    eng_gguf_writer_add_u32(w, "llama.block_count", 30);
    eng_gguf_writer_add_bool(w, "t.bool0", b0);

    /* a: F32 {4, 2} 32 B @0; b: Q8_0 {64} 68 B @64; c: F16 {3} 6 B @192; d: Q4_1 {32, 2}
     * 40 B @256 (last: no padding after it, so every truncation cuts real data) */
    uint8_t q8[68], f16[6], q41[40];
    for (int i = 0; i < 2; i++)
        fill_q8(q8 + 34 * i, i);
    const uint16_t h[3] = {0x3c00, 0xc000, 0x7c00}; /* 1, -2, inf */
    memcpy(f16, h, sizeof f16);
    for (int i = 0; i < 40; i++)
        q41[i] = (uint8_t)(i * 7);
    const int64_t ne_a[] = {4, 2}, ne_b[] = {64}, ne_c[] = {3}, ne_d[] = {32, 2};
    eng_gguf_writer_add_tensor(w, "a", GGML_T_F32, 2, ne_a, k_a);
    eng_gguf_writer_add_tensor(w, "blk.0.b", GGML_T_Q8_0, 1, ne_b, q8);
    eng_gguf_writer_add_tensor(w, "c", GGML_T_F16, 1, ne_c, f16);
    eng_gguf_writer_add_tensor(w, "d.weight", GGML_T_Q4_1, 2, ne_d, q41);
    ck_assert_int_eq(eng_gguf_writer_write_mem(w, NULL, NULL, &b->p, &b->n), 0);
    eng_gguf_writer_free(w);
    b->cap = b->n;
    ck_assert_uint_ge(b->n, 24 + 296);
    *data_off = b->n - 296;
    memcpy(b->p + 4, &version, 4);
}

static void check_reference(const struct eng_gguf *g, uint32_t version, size_t data_off,
                            size_t file_size)
{
    ck_assert_uint_eq(eng_gguf_version(g), version);
    ck_assert_uint_eq(eng_gguf_n_kv(g), 20);
    ck_assert_uint_eq(eng_gguf_n_tensors(g), 4);

    uint32_t u32;
    int64_t i64;
    float f;
    int bv;
    struct eng_gguf_str s;
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.u8", &u32), 0);
    ck_assert_uint_eq(u32, 200);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.i8", &i64), 0);
    ck_assert_int_eq(i64, -100);
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.i8", &u32), S3_EFORMAT); /* negative */
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.u16", &u32), 0);
    ck_assert_uint_eq(u32, 60000);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.i16", &i64), 0);
    ck_assert_int_eq(i64, -30000);
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.u32", &u32), 0);
    ck_assert_uint_eq(u32, 4000000000u);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.u32", &i64), 0);
    ck_assert_int_eq(i64, 4000000000);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.i32", &i64), 0);
    ck_assert_int_eq(i64, -2000000000);
    ck_assert_int_eq(eng_gguf_get_f32(g, "t.f32", &f), 0);
    ck_assert(f == 3.5f);
    ck_assert_int_eq(eng_gguf_get_bool(g, "t.bool", &bv), 0);
    ck_assert_int_eq(bv, 1);
    ck_assert_int_eq(eng_gguf_get_bool(g, "t.bool0", &bv), 0);
    ck_assert_int_eq(bv, 0);
    ck_assert_int_eq(eng_gguf_get_str(g, "t.str", &s), 0);
    ck_assert_uint_eq(s.len, 11);
    ck_assert_int_eq(memcmp(s.ptr, "hello, gguf", 11), 0);
    ck_assert_int_eq(eng_gguf_get_str(g, "t.empty_str", &s), 0);
    ck_assert_uint_eq(s.len, 0);
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.u64", &u32), S3_EFORMAT); /* out of range */
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.u64", &i64), 0);
    ck_assert_int_eq(i64, (1ll << 40) + 5);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.i64", &i64), 0);
    ck_assert_int_eq(i64, -(1ll << 40));
    ck_assert_int_eq(eng_gguf_get_f32(g, "t.f64", &f), 0);
    ck_assert(f == (float)(1.0 / 3.0));
    ck_assert_int_eq(eng_gguf_get_u32(g, "llama.block_count", &u32), 0);
    ck_assert_uint_eq(u32, 30);
    ck_assert_int_eq(eng_gguf_get_u32(g, "general.alignment", &u32), 0);
    ck_assert_uint_eq(u32, ALIGN);
    /* wrong types, absent keys */
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.str", &u32), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.f32", &u32), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_u32(g, "t.bool", &u32), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_f32(g, "t.u32", &f), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_str(g, "t.u32", &s), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_bool(g, "t.u8", &bv), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_i64(g, "t.arr_i32", &i64), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_u32(g, "nope", &u32), S3_ENOTFOUND);
    ck_assert_int_eq(eng_gguf_get_str(g, "t.st", &s), S3_ENOTFOUND);
    ck_assert_ptr_null(eng_gguf_kv_find(g, "t.u8x"));

    /* arrays */
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, "t.arr_i32");
    ck_assert_ptr_nonnull(kv);
    ck_assert_uint_eq(kv->type, GGUF_VT_ARRAY);
    ck_assert_uint_eq(kv->arr_type, GGUF_VT_I32);
    ck_assert_uint_eq(kv->arr_n, 3);
    ck_assert_ptr_null(kv->strs);
    int32_t iv[3];
    memcpy(iv, kv->data, sizeof iv);
    ck_assert(iv[0] == 1 && iv[1] == -2 && iv[2] == 3);
    kv = eng_gguf_kv_find(g, "t.arr_str");
    ck_assert_ptr_nonnull(kv);
    ck_assert_uint_eq(kv->arr_type, GGUF_VT_STRING);
    ck_assert_uint_eq(kv->arr_n, 3);
    ck_assert_ptr_nonnull(kv->strs);
    ck_assert(kv->strs[0].len == 1 && kv->strs[0].ptr[0] == 'a');
    ck_assert_uint_eq(kv->strs[1].len, 0);
    ck_assert(kv->strs[2].len == 3 && memcmp(kv->strs[2].ptr, "ccc", 3) == 0);
    kv = eng_gguf_kv_find(g, "t.arr_f32");
    float fv[2];
    memcpy(fv, kv->data, sizeof fv);
    ck_assert(kv->arr_n == 2 && fv[0] == -1.25f && fv[1] == 2.5f);
    kv = eng_gguf_kv_find(g, "t.arr_empty");
    ck_assert(kv->arr_type == GGUF_VT_U8 && kv->arr_n == 0);
    /* order is the file's */
    kv = eng_gguf_kv_at(g, 0);
    ck_assert(kv->key.len == 4 && memcmp(kv->key.ptr, "t.u8", 4) == 0);
    ck_assert_uint_eq(kv->type, GGUF_VT_U8);
    ck_assert_uint_eq(*(const uint8_t *)kv->data, 200);
    ck_assert_ptr_null(eng_gguf_kv_at(g, 20));

    /* tensors */
    size_t fsize;
    const uint8_t *base = eng_gguf_file_data(g, &fsize);
    ck_assert_uint_eq(fsize, file_size);
    const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(g, "a");
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_eq(t, eng_gguf_tensor_at(g, 0));
    ck_assert_str_eq(t->name, "a");
    ck_assert_uint_eq(t->type, GGML_T_F32);
    ck_assert_int_eq(t->n_dims, 2);
    ck_assert(t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
    ck_assert_uint_eq(t->offset, 0);
    ck_assert_uint_eq(t->n_bytes, 32);
    ck_assert_ptr_eq(t->data, base + data_off);
    ck_assert_int_eq(memcmp(t->data, k_a, 32), 0);

    t = eng_gguf_tensor_by_name(g, "blk.0.b");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->type, GGML_T_Q8_0);
    ck_assert(t->n_dims == 1 && t->ne[0] == 64 && t->ne[1] == 1);
    ck_assert_uint_eq(t->n_bytes, 68);
    ck_assert_ptr_eq(t->data, base + data_off + 64);
    float y[64];
    ck_assert_int_eq(krn_dequant(t->type, t->data, y, 64), 0);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 32; j++)
            ck_assert(y[i * 32 + j] == (float)(j - 16 + i));

    t = eng_gguf_tensor_by_name(g, "c");
    ck_assert(t && t->type == GGML_T_F16 && t->n_bytes == 6 && t->offset == 192);
    ck_assert_int_eq(krn_dequant(t->type, t->data, y, 3), 0);
    ck_assert(y[0] == 1.0f && y[1] == -2.0f && isinf(y[2]));

    t = eng_gguf_tensor_by_name(g, "d.weight");
    ck_assert(t && t->type == GGML_T_Q4_1 && t->n_bytes == 40 && t->ne[1] == 2);
    ck_assert_ptr_eq(eng_gguf_tensor_at(g, 3), t);
    ck_assert_ptr_eq((const uint8_t *)t->data + 40, base + file_size);
    ck_assert_uint_eq(((const uint8_t *)t->data)[39], (uint8_t)(39 * 7));

    ck_assert_ptr_null(eng_gguf_tensor_by_name(g, "d"));
    ck_assert_ptr_null(eng_gguf_tensor_by_name(g, "d.weightx"));
    ck_assert_ptr_null(eng_gguf_tensor_at(g, 4));
}

START_TEST(test_read_back)
{
    for (uint32_t version = 2; version <= 3; version++) {
        struct wb b = {0};
        size_t data_off;
        build_reference(&b, version, &data_off);
        ck_assert_uint_eq(data_off % ALIGN, 0);
        struct eng_gguf *g = NULL;
        struct s3_errinfo err;
        int rc = open_buf(&b, &g, &err);
        ck_assert_msg(rc == 0, "open: %s", err.msg);
        check_reference(g, version, data_off, b.n);
        eng_gguf_close(g);
        free(b.p);
    }
    eng_gguf_close(NULL);
}
END_TEST

/* Default alignment 32 when the key is absent; a file with no tensors. */
START_TEST(test_default_alignment)
{
    struct wb b = {0};
    const uint64_t ne[] = {8};
    wb_hdr(&b, 3, 2, 1);
    wb_key(&b, "x", GGUF_VT_U8), wb_u8(&b, 1);
    wb_tinfo(&b, "t0", 1, ne, GGML_T_F32, 0);
    wb_tinfo(&b, "t1", 1, ne, GGML_T_F32, 32);
    wb_pad(&b, 32);
    size_t data_off = b.n;
    for (int i = 0; i < 16; i++)
        wb_f32(&b, (float)i);
    struct eng_gguf *g;
    struct s3_errinfo err;
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    size_t n;
    const uint8_t *base = eng_gguf_file_data(g, &n);
    ck_assert_ptr_eq(eng_gguf_tensor_by_name(g, "t1")->data, base + data_off + 32);
    eng_gguf_close(g);

    /* a header and nothing else */
    b.n = 0;
    wb_hdr(&b, 3, 0, 0);
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    ck_assert_uint_eq(eng_gguf_n_tensors(g), 0);
    ck_assert_uint_eq(eng_gguf_n_kv(g), 0);
    ck_assert_ptr_null(eng_gguf_kv_find(g, "x"));
    ck_assert_ptr_null(eng_gguf_tensor_by_name(g, "t0"));
    eng_gguf_close(g);
    free(b.p);
}
END_TEST

/* Every proper prefix of the reference file must fail cleanly. */
START_TEST(test_truncation)
{
    struct wb b = {0};
    size_t data_off;
    build_reference(&b, 3, &data_off);
    write_file(b.p, b.n);
    for (size_t len = b.n; len-- > 0;) {
        ck_assert_int_eq(truncate(g_path, (off_t)len), 0);
        struct eng_gguf *g = (struct eng_gguf *)1;
        struct s3_errinfo err = {0};
        int rc = eng_gguf_open(g_path, &g, &err);
        ck_assert_msg(rc == S3_EFORMAT, "len %zu: rc %d (%s)", len, rc, err.msg);
        ck_assert_ptr_null(g);
        ck_assert_msg(strncmp(err.msg, "gguf: ", 6) == 0, "len %zu: '%s'", len, err.msg);
        if (len >= data_off)
            ck_assert_msg(strstr(err.msg, "lies outside the file"), "len %zu: %s", len, err.msg);
        else /* inside the infos: an offset is named; inside the padding: the data range */
            ck_assert_msg(strstr(err.msg, "offset") || strstr(err.msg, "lies outside the file"),
                          "len %zu: %s", len, err.msg);
    }
    free(b.p);
}
END_TEST

/* Flip bits in the header and tensor infos: any result but a crash or a non-EFORMAT error. */
START_TEST(test_corruption)
{
    struct wb b = {0};
    size_t data_off;
    build_reference(&b, 3, &data_off);
    static const uint8_t masks[] = {0xff, 0x80, 0x01, 0x10};
    int n_ok = 0, n_fail = 0;
    for (size_t m = 0; m < sizeof masks; m++) {
        for (size_t i = 0; i < data_off; i++) {
            b.p[i] ^= masks[m];
            struct eng_gguf *g = NULL;
            struct s3_errinfo err;
            int rc = open_buf(&b, &g, &err);
            ck_assert_msg(rc == 0 || rc == S3_EFORMAT, "byte %zu ^ %02x: rc %d", i, masks[m], rc);
            if (rc == 0) {
                /* whatever parsed must be self-consistent */
                for (size_t k = 0; k < eng_gguf_n_tensors(g); k++) {
                    const struct eng_gguf_tensor *t = eng_gguf_tensor_at(g, k);
                    size_t fs;
                    const uint8_t *base = eng_gguf_file_data(g, &fs);
                    ck_assert((const uint8_t *)t->data >= base + data_off - ALIGN);
                    ck_assert((const uint8_t *)t->data + t->n_bytes <= base + fs);
                }
                eng_gguf_close(g);
                n_ok++;
            } else {
                n_fail++;
            }
            b.p[i] ^= masks[m];
        }
    }
    ck_assert_int_gt(n_fail, 0);
    ck_assert_int_gt(n_ok, 0); /* e.g. flips inside string values */
    free(b.p);
}
END_TEST

START_TEST(test_bad_header)
{
    struct wb b = {0};
    size_t data_off;
    build_reference(&b, 3, &data_off);
    b.p[0] = 'G', b.p[1] = 'G', b.p[2] = 'M', b.p[3] = 'L';
    expect_fail(&b, "bad magic");
    b.p[2] = 'U', b.p[3] = 'F';
    for (uint32_t v = 0; v < 8; v++) {
        if (v == 2 || v == 3)
            continue;
        memcpy(b.p + 4, &v, 4);
        expect_fail(&b, "unsupported version");
    }
    uint32_t be3 = 0x03000000;
    memcpy(b.p + 4, &be3, 4);
    expect_fail(&b, "big-endian");
    uint32_t v3 = 3;
    memcpy(b.p + 4, &v3, 4);

    /* lying counts: fail before allocating anything of that size */
    uint64_t huge[] = {UINT64_MAX, 1ull << 62, 1ull << 40, 1000000};
    for (size_t i = 0; i < 4; i++) {
        memcpy(b.p + 16, &huge[i], 8);
        expect_fail(&b, "n_kv");
    }
    uint64_t n20 = 20;
    memcpy(b.p + 16, &n20, 8);
    for (size_t i = 0; i < 4; i++) {
        memcpy(b.p + 8, &huge[i], 8);
        expect_fail(&b, "n_tensors");
    }
    /* one more tensor than there are infos: the data bytes get read as a tensor info */
    uint64_t n5 = 5;
    memcpy(b.p + 8, &n5, 8);
    struct eng_gguf *g;
    struct s3_errinfo err;
    ck_assert_int_eq(open_buf(&b, &g, &err), S3_EFORMAT);
    /* one more kv than written: the first tensor info is read as a key */
    uint64_t n4 = 4, n21 = 21;
    memcpy(b.p + 8, &n4, 8);
    memcpy(b.p + 16, &n21, 8);
    ck_assert_int_eq(open_buf(&b, &g, &err), S3_EFORMAT);

    /* too short for a header at all */
    b.n = 10;
    expect_fail(&b, "truncated at offset 10");
    b.n = 0;
    expect_fail(&b, "truncated at offset 0");
    free(b.p);
}
END_TEST

START_TEST(test_bad_kv)
{
    struct wb b = {0};
    /* truncated value: message names the key and the offset */
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "llama.block_count", GGUF_VT_U32);
    wb_u16(&b, 30);
    expect_fail(&b, "truncated at offset 53 reading key 'llama.block_count'");

    /* unknown value type */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "k", 13), wb_u64(&b, 0);
    expect_fail(&b, "key 'k' at offset 24 has unknown type 13");

    /* duplicate key */
    b.n = 0;
    wb_hdr(&b, 3, 0, 2);
    wb_key(&b, "dup", GGUF_VT_U8), wb_u8(&b, 1);
    wb_key(&b, "dup", GGUF_VT_U32), wb_u32(&b, 1);
    expect_fail(&b, "duplicate key 'dup'");

    /* string longer than the file */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "s", GGUF_VT_STRING), wb_u64(&b, 1ull << 60), wb_put(&b, "abc", 3);
    expect_fail(&b, "string length 1152921504606846976 at offset 37 reading key 's'");

    /* key name longer than the file */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_u64(&b, UINT64_MAX - 3), wb_put(&b, "keykeykeykeykey", 15);
    expect_fail(&b, "the name of key #0");

    /* nested arrays */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "nest", GGUF_VT_ARRAY), wb_u32(&b, GGUF_VT_ARRAY), wb_u64(&b, 1);
    wb_u32(&b, GGUF_VT_U8), wb_u64(&b, 1), wb_u8(&b, 7);
    expect_fail(&b, "nested array");

    /* array with an unknown element type */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "ua", GGUF_VT_ARRAY), wb_u32(&b, 99), wb_u64(&b, 1), wb_u64(&b, 0);
    expect_fail(&b, "unknown element type 99");

    /* huge array lengths, both fixed-size and string elements */
    static const uint32_t et[] = {GGUF_VT_U8, GGUF_VT_F64, GGUF_VT_STRING, GGUF_VT_BOOL};
    for (size_t i = 0; i < 4; i++) {
        b.n = 0;
        wb_hdr(&b, 3, 0, 1);
        wb_key(&b, "big", GGUF_VT_ARRAY), wb_u32(&b, et[i]), wb_u64(&b, UINT64_MAX / 2 + 7);
        wb_u64(&b, 1), wb_u64(&b, 2);
        expect_fail(&b, "exceeds the file");
    }
    /* string array whose third element runs off the end */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "sa", GGUF_VT_ARRAY), wb_u32(&b, GGUF_VT_STRING), wb_u64(&b, 3);
    wb_str(&b, "x"), wb_str(&b, "yy"), wb_u64(&b, 100), wb_put(&b, "zzz", 3);
    expect_fail(&b, "reading key 'sa'");

    /* alignment: wrong type, zero, not a power of two */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "general.alignment", GGUF_VT_U64), wb_u64(&b, 32);
    expect_fail(&b, "general.alignment' has type u64");
    static const uint32_t bad_align[] = {0, 3, 48, 100, 0x80000001u};
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
        b.n = 0;
        wb_hdr(&b, 3, 0, 1);
        wb_key(&b, "general.alignment", GGUF_VT_U32), wb_u32(&b, bad_align[i]);
        expect_fail(&b, "not a power of two");
    }
    /* non-printable key bytes are not copied raw into the message */
    b.n = 0;
    wb_hdr(&b, 3, 0, 1);
    wb_key(&b, "a\nb\x01", GGUF_VT_U32);
    expect_fail(&b, "key 'a?b?'");
    free(b.p);
}
END_TEST

/* One-tensor file with the given info; data of n_data bytes at the aligned start. */
static void one_tensor(struct wb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset, size_t n_data)
{
    b->n = 0;
    wb_hdr(b, 3, 1, 0);
    wb_tinfo(b, name, n_dims, ne, type, offset);
    wb_pad(b, 32);
    for (size_t i = 0; i < n_data; i++)
        wb_u8(b, 0);
}

START_TEST(test_bad_tensor)
{
    struct wb b = {0};
    struct eng_gguf *g;
    struct s3_errinfo err;
    const uint64_t ne32[] = {32, 1, 1, 1, 1};

    one_tensor(&b, "ok", 1, ne32, GGML_T_Q4_0, 0, 18);
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    eng_gguf_close(g);

    one_tensor(&b, "x", 1, ne32, 17, 0, 1000);
    expect_fail(&b, "tensor 'x' has unsupported type 17 (IQ2_XS)");
    one_tensor(&b, "x", 1, ne32, 4, 0, 1000);
    expect_fail(&b, "unsupported type 4 (?)");
    one_tensor(&b, "x", 1, ne32, GGML_T_Q8_K, 0, 1000);
    expect_fail(&b, "unsupported type 15 (Q8_K)");

    /* data beyond the end of the file */
    one_tensor(&b, "blk.0.attn_q.weight", 1, ne32, GGML_T_Q4_0, 0, 17);
    expect_fail(&b, "tensor 'blk.0.attn_q.weight' data [96, 114) lies outside the file (size 113)");
    one_tensor(&b, "far", 1, ne32, GGML_T_F32, 1ull << 40, 128);
    expect_fail(&b, "lies outside the file");
    one_tensor(&b, "far", 1, ne32, GGML_T_F32, UINT64_MAX - 15, 128);
    expect_fail(&b, "not a multiple of the alignment"); /* checked first */
    one_tensor(&b, "far", 1, ne32, GGML_T_F32, UINT64_MAX - 31, 128);
    expect_fail(&b, "lies outside the file");
    one_tensor(&b, "mis", 1, ne32, GGML_T_F32, 16, 256);
    expect_fail(&b, "tensor 'mis' data offset 16 is not a multiple of the alignment 32");

    /* shapes */
    one_tensor(&b, "d5", 5, ne32, GGML_T_F32, 0, 128);
    expect_fail(&b, "tensor 'd5' at offset 24 has n_dims 5");
    one_tensor(&b, "d0", 0, ne32, GGML_T_F32, 0, 128);
    expect_fail(&b, "n_dims 0");
    const uint64_t ne_zero[] = {32, 0};
    one_tensor(&b, "z", 2, ne_zero, GGML_T_F32, 0, 128);
    expect_fail(&b, "bad shape (ne[1] = 0)");
    const uint64_t ne_neg[] = {(uint64_t)-32};
    one_tensor(&b, "n", 1, ne_neg, GGML_T_F32, 0, 128);
    expect_fail(&b, "bad shape");
    const uint64_t ne_ovf[] = {1ull << 31, 1ull << 31, 4};
    one_tensor(&b, "ovf", 3, ne_ovf, GGML_T_F32, 0, 128);
    expect_fail(&b, "bad shape (ne[2] = 4)");
    const uint64_t ne_bytes[] = {1ull << 31, 1ull << 31};
    one_tensor(&b, "bytes", 2, ne_bytes, GGML_T_F32, 0, 128); /* 2^62 elements, 2^64 bytes */
    expect_fail(&b, "larger than the file");
    const uint64_t ne_row[] = {33};
    one_tensor(&b, "row", 1, ne_row, GGML_T_Q8_0, 0, 128);
    expect_fail(&b, "row length 33 is not a multiple of the Q8_0 block size 32");

    /* names */
    char longname[200];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    one_tensor(&b, longname, 1, ne32, GGML_T_F32, 0, 128);
    expect_fail(&b, "is too long");
    one_tensor(&b, "", 1, ne32, GGML_T_F32, 0, 128);
    expect_fail(&b, "empty name");

    /* duplicate tensor names; overlapping data */
    b.n = 0;
    wb_hdr(&b, 3, 2, 0);
    wb_tinfo(&b, "w", 1, ne32, GGML_T_F32, 0);
    wb_tinfo(&b, "w", 1, ne32, GGML_T_F32, 128);
    wb_pad(&b, 32);
    for (int i = 0; i < 256; i++)
        wb_u8(&b, 0);
    expect_fail(&b, "duplicate tensor name 'w'");
    b.n = 0;
    wb_hdr(&b, 3, 3, 0);
    wb_tinfo(&b, "u", 1, ne32, GGML_T_F32, 256);
    wb_tinfo(&b, "v", 1, ne32, GGML_T_F32, 0);
    wb_tinfo(&b, "w", 1, ne32, GGML_T_F32, 96); /* [96, 224) meets v [0, 128) */
    wb_pad(&b, 32);
    for (int i = 0; i < 512; i++)
        wb_u8(&b, 0);
    expect_fail(&b, "tensors 'v' and 'w' overlap");
    free(b.p);
}
END_TEST

/* Getter range checks at the limits of each type. */
START_TEST(test_getter_ranges)
{
    struct wb b = {0};
    wb_hdr(&b, 2, 0, 7);
    wb_key(&b, "f64.big", GGUF_VT_F64), wb_f64(&b, 1e300);
    wb_key(&b, "f64.inf", GGUF_VT_F64), wb_f64(&b, -INFINITY);
    wb_key(&b, "i64.min", GGUF_VT_I64), wb_u64(&b, (uint64_t)INT64_MIN);
    wb_key(&b, "u64.max", GGUF_VT_U64), wb_u64(&b, UINT64_MAX);
    wb_key(&b, "u64.i64max", GGUF_VT_U64), wb_u64(&b, (uint64_t)INT64_MAX);
    wb_key(&b, "u32.max", GGUF_VT_U32), wb_u32(&b, UINT32_MAX);
    wb_key(&b, "i32.min", GGUF_VT_I32), wb_u32(&b, (uint32_t)INT32_MIN);
    struct eng_gguf *g;
    struct s3_errinfo err;
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    float f;
    int64_t i64;
    uint32_t u32;
    ck_assert_int_eq(eng_gguf_get_f32(g, "f64.big", &f), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_f32(g, "f64.inf", &f), 0);
    ck_assert(isinf(f) && f < 0);
    ck_assert_int_eq(eng_gguf_get_i64(g, "i64.min", &i64), 0);
    ck_assert(i64 == INT64_MIN);
    ck_assert_int_eq(eng_gguf_get_u32(g, "i64.min", &u32), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_i64(g, "u64.max", &i64), S3_EFORMAT);
    ck_assert_int_eq(eng_gguf_get_i64(g, "u64.i64max", &i64), 0);
    ck_assert(i64 == INT64_MAX);
    ck_assert_int_eq(eng_gguf_get_u32(g, "u32.max", &u32), 0);
    ck_assert_uint_eq(u32, UINT32_MAX);
    ck_assert_int_eq(eng_gguf_get_i64(g, "i32.min", &i64), 0);
    ck_assert(i64 == INT32_MIN);
    eng_gguf_close(g);
    free(b.p);
}
END_TEST

/* Many keys and tensors: the hash tables grow, lookups still hit. */
START_TEST(test_many)
{
    struct wb b = {0};
    enum { N_KV = 300, N_T = 200 };
    wb_hdr(&b, 3, N_T, N_KV);
    char name[64];
    for (int i = 0; i < N_KV; i++) {
        snprintf(name, sizeof name, "key.%d", i);
        wb_key(&b, name, GGUF_VT_I32), wb_u32(&b, (uint32_t)(i * 3));
    }
    const uint64_t ne[] = {8};
    for (int i = 0; i < N_T; i++) {
        snprintf(name, sizeof name, "blk.%d.w", i);
        wb_tinfo(&b, name, 1, ne, GGML_T_F32, (uint64_t)(N_T - 1 - i) * 32);
    }
    wb_pad(&b, 32);
    for (int i = 0; i < N_T * 8; i++)
        wb_f32(&b, (float)i);
    struct eng_gguf *g;
    struct s3_errinfo err;
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    for (int i = 0; i < N_KV; i++) {
        snprintf(name, sizeof name, "key.%d", i);
        int64_t v;
        ck_assert_int_eq(eng_gguf_get_i64(g, name, &v), 0);
        ck_assert_int_eq(v, i * 3);
    }
    for (int i = 0; i < N_T; i++) {
        snprintf(name, sizeof name, "blk.%d.w", i);
        const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(g, name);
        ck_assert_ptr_eq(t, eng_gguf_tensor_at(g, (size_t)i));
        float f0;
        memcpy(&f0, t->data, 4);
        ck_assert(f0 == (float)((N_T - 1 - i) * 8));
    }
    eng_gguf_close(g);
    free(b.p);
}
END_TEST

/* The writer: sticky errors, alignment from the key, fill callbacks. */
static int fill_seq(void *ud, size_t i, void *buf, size_t n)
{
    int *calls = ud;
    (*calls)++;
    for (size_t j = 0; j < n; j++)
        ((uint8_t *)buf)[j] = (uint8_t)(i * 16 + j);
    return i == 1 && *calls > 2 ? S3_EIO : 0;
}

START_TEST(test_writer)
{
    struct eng_gguf_writer *w = NULL;
    uint8_t *p = NULL;
    size_t n = 0;
    const int64_t ne[] = {8};
    char longname[97];
    memset(longname, 'x', 96);
    longname[96] = '\0';
    /* bad arguments stick: later adds and the write return the first error */
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    ck_assert_int_eq(eng_gguf_writer_add_tensor(w, longname, GGML_T_F32, 1, ne, NULL), S3_EINVAL);
    ck_assert_int_eq(eng_gguf_writer_add_u32(w, "k", 1), S3_EINVAL);
    ck_assert_int_eq(eng_gguf_writer_write_mem(w, NULL, NULL, &p, &n), S3_EINVAL);
    ck_assert_ptr_null(p);
    eng_gguf_writer_free(w);
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    ck_assert_int_eq(eng_gguf_writer_add_u32(w, "general.alignment", 48), S3_EINVAL);
    eng_gguf_writer_free(w);
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    const int64_t ne_q8[] = {33};
    ck_assert_int_eq(eng_gguf_writer_add_tensor(w, "q", GGML_T_Q8_0, 1, ne_q8, NULL), S3_EINVAL);
    eng_gguf_writer_free(w);
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    ck_assert_int_eq(eng_gguf_writer_add_scalar(w, "s", GGUF_VT_STRING, "x"), S3_EINVAL);
    eng_gguf_writer_free(w);
    eng_gguf_writer_free(NULL);

    /* alignment 128 from the key; data from the fill callback, at aligned offsets */
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    ck_assert_int_eq(eng_gguf_writer_add_u32(w, "general.alignment", 128), 0);
    ck_assert_int_eq(eng_gguf_writer_add_tensor(w, "t0", GGML_T_F32, 1, ne, NULL), 0);
    ck_assert_int_eq(eng_gguf_writer_add_tensor(w, "t1", GGML_T_F32, 1, ne, NULL), 0);
    ck_assert_uint_eq(eng_gguf_writer_tensor_bytes(w, 1), 32);
    ck_assert_uint_eq(eng_gguf_writer_tensor_bytes(w, 2), 0);
    ck_assert_int_eq(eng_gguf_writer_write_mem(w, NULL, NULL, &p, &n), S3_EINVAL); /* no fill */
    int calls = 0;
    ck_assert_int_eq(eng_gguf_writer_write_mem(w, fill_seq, &calls, &p, &n), 0);
    ck_assert_int_eq(calls, 2);
    ck_assert_uint_eq(n % 128, 32); /* data section: t0 @0, t1 @128, no tail padding */
    struct wb b = {p, n, n};
    struct eng_gguf *g = NULL;
    struct s3_errinfo err;
    ck_assert_int_eq(open_buf(&b, &g, &err), 0);
    const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(g, "t1");
    ck_assert(t && t->offset == 128 && ((const uint8_t *)t->data)[3] == 19);
    eng_gguf_close(g);
    free(p);
    /* a failing fill aborts the write with its code */
    ck_assert_int_eq(eng_gguf_writer_write_mem(w, fill_seq, &calls, &p, &n), S3_EIO);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(eng_gguf_writer_write_file(w, "no/such/dir/x.gguf", fill_seq, &calls),
                     S3_EIO);
    eng_gguf_writer_free(w);
}
END_TEST

START_TEST(test_missing_file)
{
    struct eng_gguf *g = (struct eng_gguf *)1;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(eng_gguf_open("no/such/file.gguf", &g, &err), S3_ENOTFOUND);
    ck_assert_ptr_null(g);
    ck_assert_int_eq(eng_gguf_open(".", &g, &err), S3_EIO); /* a directory */
    ck_assert_str_eq(eng_ggml_type_name(GGML_T_Q4_1), "Q4_1");
    ck_assert_str_eq(eng_ggml_type_name(GGML_T_BF16), "BF16");
    ck_assert_str_eq(eng_ggml_type_name(31), "?");
    ck_assert_str_eq(eng_ggml_type_name(UINT32_MAX), "?");
}
END_TEST

/* ---- the real model --------------------------------------------------------------------- */

START_TEST(test_real_model)
{
    char *path = s3t_root_path(S3T_MODEL_REL);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "test_real_model: %s absent, skipped\n", path);
        free(path);
        return;
    }
    struct eng_gguf *g;
    struct s3_errinfo err = {0};
    int rc = eng_gguf_open(path, &g, &err);
    free(path);
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_uint_eq(eng_gguf_version(g), 3);
    ck_assert_uint_eq(eng_gguf_n_tensors(g), 272);
    ck_assert_uint_eq(eng_gguf_n_kv(g), 33);
    uint32_t u;
    ck_assert_int_eq(eng_gguf_get_u32(g, "llama.block_count", &u), 0);
    ck_assert_uint_eq(u, 30);
    ck_assert_int_eq(eng_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    ck_assert_uint_eq(u, 576);
    ck_assert_int_eq(eng_gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
    ck_assert_uint_eq(u, 3);
    float f;
    ck_assert_int_eq(eng_gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    ck_assert(f == 100000.0f);
    struct eng_gguf_str s;
    ck_assert_int_eq(eng_gguf_get_str(g, "general.architecture", &s), 0);
    ck_assert(s.len == 5 && memcmp(s.ptr, "llama", 5) == 0);
    ck_assert_int_eq(eng_gguf_get_str(g, "tokenizer.ggml.pre", &s), 0);
    ck_assert(s.len == 6 && memcmp(s.ptr, "smollm", 6) == 0);
    int bv;
    ck_assert_int_eq(eng_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &bv), 0);
    ck_assert_int_eq(bv, 0);
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, "tokenizer.ggml.tokens");
    ck_assert(kv && kv->arr_type == GGUF_VT_STRING && kv->arr_n == 49152 && kv->strs);
    ck_assert(kv->strs[0].len == 13 && memcmp(kv->strs[0].ptr, "<|endoftext|>", 13) == 0);
    ck_assert(kv->strs[49151].len == 7 && memcmp(kv->strs[49151].ptr, "ectable", 7) == 0);
    kv = eng_gguf_kv_find(g, "tokenizer.ggml.merges");
    ck_assert(kv && kv->arr_n == 48900);

    const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(g, "token_embd.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->type, GGML_T_Q8_0);
    ck_assert(t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152);
    ck_assert_uint_eq(t->n_bytes, 30081024);
    size_t fs;
    const uint8_t *base = eng_gguf_file_data(g, &fs);
    ck_assert_ptr_eq(t->data, base + 1785664);
    /* row 1, first values, as gguf-py dequantises them */
    float y[576];
    ck_assert_int_eq(krn_dequant(t->type, (const uint8_t *)t->data + 18 * 34, y, 576), 0);
    ck_assert(y[0] == -0x1.86p-6f && y[1] == -0x1.04p-6f && y[2] == -0x1.45p-5f &&
              y[3] == 0x1.04p-6f);
    t = eng_gguf_tensor_by_name(g, "blk.0.ffn_down.weight");
    ck_assert(t && t->type == GGML_T_Q4_1 && t->ne[0] == 1536 && t->ne[1] == 576);
    ck_assert_int_eq(krn_dequant(t->type, (const uint8_t *)t->data + 48 * 20, y, 64), 0);
    ck_assert(y[0] == 0x1.61p-3f && y[1] == -0x1.914p-3f && y[2] == 0x1.dcp-7f &&
              y[3] == -0x1.738p-4f);
    t = eng_gguf_tensor_by_name(g, "output_norm.weight");
    ck_assert(t && t->type == GGML_T_F32 && t->n_dims == 1 && t->ne[0] == 576);
    float w[2];
    memcpy(w, t->data, sizeof w);
    ck_assert(w[0] == 1.7578125f && w[1] == 1.8203125f);
    ck_assert_ptr_null(eng_gguf_tensor_by_name(g, "output.weight")); /* tied */
    eng_gguf_close(g);
}
END_TEST

static Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_read_back);
    tcase_add_test(tc, test_default_alignment);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_corruption);
    tcase_add_test(tc, test_bad_header);
    tcase_add_test(tc, test_bad_kv);
    tcase_add_test(tc, test_bad_tensor);
    tcase_add_test(tc, test_getter_ranges);
    tcase_add_test(tc, test_many);
    tcase_add_test(tc, test_writer);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_real_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(gguf_suite(), CK_FORK_GETENV);
}
