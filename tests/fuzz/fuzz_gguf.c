/* tests/fuzz/fuzz_gguf.c - the GGUF reader (eng_gguf_open) on the fuzz input as a file, then
 * every lookup, and a tokenizer built from whatever metadata it holds (eng_tok_new).
 *
 * The file is mapped, so ASan cannot see reads past the input; the properties check the
 * bounds instead: every key, string, fixed-size array and tensor lies inside the mapping,
 * lookups by key and by name find the entries listed, and typed getters agree with the
 * stored type. */
#include "engine.h"
#include "fuzz.h"
#include "gguf.h"

static const char *g_lo, *g_hi; /* the mapping [lo, hi) */

static void check_range(const void *p, uint64_t n, const char *what)
{
    const char *c = p;
    FUZZ_CHECK(n == 0 || (c && c >= g_lo && c <= g_hi && n <= (uint64_t)(g_hi - c)),
               "%s: %llu bytes at offset %lld outside the %lld-byte file", what,
               (unsigned long long)n, c ? (long long)(c - g_lo) : -1LL, (long long)(g_hi - g_lo));
}

static void check_kv(const struct eng_gguf *g, const struct eng_gguf_kv *kv)
{
    check_range(kv->key.ptr, kv->key.len, "key");
    if (kv->type == GGUF_VT_STRING) {
        check_range(kv->data, 8, "string header");
    } else if (kv->type == GGUF_VT_ARRAY) {
        size_t es = eng_gguf_vtype_size(kv->arr_type);
        if (es) {
            FUZZ_CHECK(kv->arr_n <= UINT64_MAX / es, "array of %llu", (unsigned long long)kv->arr_n);
            check_range(kv->data, kv->arr_n * es, "array");
        } else if (kv->arr_type == GGUF_VT_STRING) {
            FUZZ_CHECK(kv->arr_n == 0 || kv->strs, "string array without decoded elements");
            for (uint64_t i = 0; i < kv->arr_n; i++)
                check_range(kv->strs[i].ptr, kv->strs[i].len, "array string");
        }
    } else {
        size_t es = eng_gguf_vtype_size(kv->type);
        FUZZ_CHECK(es > 0, "unknown scalar type %u accepted", kv->type);
        check_range(kv->data, es, "scalar");
    }
    /* lookups by key find an entry with this key (the first of duplicates) */
    if (kv->key.len < 256 && !memchr(kv->key.ptr, 0, (size_t)kv->key.len)) {
        char key[256];
        memcpy(key, kv->key.ptr, (size_t)kv->key.len);
        key[kv->key.len] = 0;
        const struct eng_gguf_kv *f = eng_gguf_kv_find(g, key);
        FUZZ_CHECK(f && f->key.len == kv->key.len && !memcmp(f->key.ptr, key, kv->key.len),
                   "key '%s' not found by eng_gguf_kv_find", key);
        struct eng_gguf_str s;
        uint32_t u;
        int64_t i64;
        float fl;
        int b;
        int rs = eng_gguf_get_str(g, key, &s);
        FUZZ_CHECK((rs == 0) == (f->type == GGUF_VT_STRING), "get_str %d on type %u", rs,
                   f->type);
        if (rs == 0)
            check_range(s.ptr, s.len, "string value");
        (void)eng_gguf_get_u32(g, key, &u);
        (void)eng_gguf_get_i64(g, key, &i64);
        (void)eng_gguf_get_f32(g, key, &fl);
        (void)eng_gguf_get_bool(g, key, &b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0)
        return 0;
    struct eng_gguf *g = NULL;
    struct s3_errinfo err = {0};
    int rc = eng_gguf_open(path, &g, &err);
    close(fd);
    if (rc < 0) {
        FUZZ_CHECK(!g, "handle left after an error");
        FUZZ_CHECK(err.msg[0], "error %d without a message", rc);
        return 0;
    }
    size_t n_bytes = 0;
    g_lo = eng_gguf_file_data(g, &n_bytes);
    g_hi = g_lo + n_bytes;
    FUZZ_CHECK(n_bytes == size, "mapping of %zu bytes for a %zu-byte file", n_bytes, size);
    FUZZ_CHECK(memcmp(g_lo, data, size) == 0, "mapping differs from the file");
    uint32_t ver = eng_gguf_version(g);
    FUZZ_CHECK(ver == 2 || ver == 3, "version %u accepted", ver);
    for (size_t i = 0; i < eng_gguf_n_kv(g); i++)
        check_kv(g, eng_gguf_kv_at(g, i));
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
        const struct eng_gguf_tensor *t = eng_gguf_tensor_at(g, i);
        FUZZ_CHECK(memchr(t->name, 0, sizeof t->name), "tensor name not terminated");
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4, "n_dims %d", t->n_dims);
        for (int d = 0; d < 4; d++)
            FUZZ_CHECK(t->ne[d] >= 1, "ne[%d] = %lld", d, (long long)t->ne[d]);
        check_range(t->data, t->n_bytes, "tensor data");
        /* touch the first and last byte, as a consumer would */
        if (t->n_bytes) {
            volatile char c0 = ((const char *)t->data)[0];
            volatile char c1 = ((const char *)t->data)[t->n_bytes - 1];
            (void)c0;
            (void)c1;
        }
        const struct eng_gguf_tensor *f = eng_gguf_tensor_by_name(g, t->name);
        FUZZ_CHECK(f && !strcmp(f->name, t->name), "tensor '%s' not found by name", t->name);
    }
    /* a tokenizer from arbitrary metadata: must fail cleanly or work */
    struct eng_tokenizer *tok = NULL;
    if (eng_tok_new(g, &tok, &err) == 0) {
        int32_t *ids = NULL;
        size_t n = 0;
        static const char probe[] = "Hello, world! 123 <|im_start|> caf\xc3\xa9\n";
        if (eng_tok_encode(tok, probe, sizeof probe - 1, ENG_TOK_SPECIAL, &ids, &n) == 0) {
            char *dec = NULL;
            size_t dl = 0;
            for (size_t i = 0; i < n; i++)
                FUZZ_CHECK(ids[i] >= 0 && ids[i] < eng_tok_n_vocab(tok), "id %d", (int)ids[i]);
            if (eng_tok_decode(tok, ids, n, ENG_TOK_SPECIAL, &dec, &dl) == 0)
                free(dec);
            free(ids);
        }
        eng_tok_free(tok);
    }
    eng_gguf_close(g);
    return 0;
}
