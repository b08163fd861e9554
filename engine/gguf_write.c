/* engine/gguf_write.c - GGUF v3 writer (API and layout in gguf.h).
 *
 * Metadata pairs are serialised as they are added into one growable buffer; tensor infos are
 * kept as records and laid out at write time, when the alignment is final. The file and the
 * memory output share one emitter over a small sink. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

#define GW_DEFAULT_ALIGN 32u
#define GW_ALIGN_KEY     "general.alignment"

struct gw_buf {
    uint8_t *p;
    size_t n, cap;
};

struct gw_tensor {
    char name[96];
    uint32_t type;
    int n_dims;
    int64_t ne[4];
    size_t n_bytes;
    uint64_t offset;  /* from the data section start, set at write time */
    const void *data; /* borrowed until the write; NULL: ask the fill callback */
};

struct eng_gguf_writer {
    int rc;              /* sticky: once negative every call is a no-op returning it */
    uint32_t align;      /* data alignment */
    uint64_t n_kv;
    struct gw_buf kv;    /* serialised metadata pairs */
    struct gw_tensor *t; /* (n_t) */
    size_t n_t, cap_t;
};

static int buf_put(struct gw_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n > SIZE_MAX / 2 - b->n)
        return S3_ENOMEM;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return S3_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

/* ---- the metadata buffer (sticky w->rc) ------------------------------------------------------- */

static void put(struct eng_gguf_writer *w, const void *p, size_t n)
{
    if (w->rc == 0)
        w->rc = buf_put(&w->kv, p, n);
}

/* n (1..8) low bytes of v, little endian */
static void put_le(struct eng_gguf_writer *w, uint64_t v, size_t n)
{
    uint8_t b[8];
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, n);
}

static void put_str(struct eng_gguf_writer *w, const char *s, size_t n)
{
    put_le(w, n, 8);
    put(w, s, n);
}

/* A host-order fixed-size value of type vt, written little endian. */
static void put_host_value(struct eng_gguf_writer *w, uint32_t vt, const void *v)
{
    const size_t n = eng_gguf_vtype_size(vt);
    uint64_t u = 0;
    if (n == 1) {
        uint8_t x;
        memcpy(&x, v, 1);
        u = x;
    } else if (n == 2) {
        uint16_t x;
        memcpy(&x, v, 2);
        u = x;
    } else if (n == 4) {
        uint32_t x;
        memcpy(&x, v, 4);
        u = x;
    } else {
        memcpy(&u, v, 8);
    }
    put_le(w, u, n);
}

/* Start a pair: key and value type. Returns 0 when the caller should write the value. */
static int kv_begin(struct eng_gguf_writer *w, const char *key, size_t key_len, uint32_t vt)
{
    if (w->rc < 0)
        return w->rc;
    if (!key) {
        w->rc = S3_EINVAL;
        return w->rc;
    }
    put_str(w, key, key_len);
    put_le(w, vt, 4);
    w->n_kv++;
    return w->rc;
}

/* "general.alignment" as u32 sets the data alignment (a power of two). */
static void note_alignment(struct eng_gguf_writer *w, const char *key, size_t key_len,
                           uint32_t vt, uint32_t v)
{
    if (w->rc < 0 || vt != GGUF_VT_U32 || key_len != strlen(GW_ALIGN_KEY) ||
        memcmp(key, GW_ALIGN_KEY, key_len) != 0)
        return;
    if (v == 0 || (v & (v - 1)) != 0)
        w->rc = S3_EINVAL;
    else
        w->align = v;
}

/* ---- public: lifetime and metadata -------------------------------------------------------------- */

int eng_gguf_writer_new(struct eng_gguf_writer **out)
{
    struct eng_gguf_writer *w = calloc(1, sizeof *w);
    *out = w;
    if (!w)
        return S3_ENOMEM;
    w->align = GW_DEFAULT_ALIGN;
    return 0;
}

void eng_gguf_writer_free(struct eng_gguf_writer *w)
{
    if (!w)
        return;
    free(w->kv.p);
    free(w->t);
    free(w);
}

int eng_gguf_writer_add_scalar(struct eng_gguf_writer *w, const char *key, uint32_t vtype,
                               const void *v)
{
    if (w->rc == 0 && (eng_gguf_vtype_size(vtype) == 0 || !v))
        w->rc = S3_EINVAL;
    if (kv_begin(w, key, key ? strlen(key) : 0, vtype) < 0)
        return w->rc;
    put_host_value(w, vtype, v);
    if (vtype == GGUF_VT_U32) {
        uint32_t u;
        memcpy(&u, v, 4);
        note_alignment(w, key, strlen(key), vtype, u);
    }
    return w->rc;
}

int eng_gguf_writer_add_u32(struct eng_gguf_writer *w, const char *key, uint32_t v)
{
    return eng_gguf_writer_add_scalar(w, key, GGUF_VT_U32, &v);
}

int eng_gguf_writer_add_i32(struct eng_gguf_writer *w, const char *key, int32_t v)
{
    return eng_gguf_writer_add_scalar(w, key, GGUF_VT_I32, &v);
}

int eng_gguf_writer_add_f32(struct eng_gguf_writer *w, const char *key, float v)
{
    return eng_gguf_writer_add_scalar(w, key, GGUF_VT_F32, &v);
}

int eng_gguf_writer_add_bool(struct eng_gguf_writer *w, const char *key, int v)
{
    const uint8_t b = v ? 1 : 0;
    return eng_gguf_writer_add_scalar(w, key, GGUF_VT_BOOL, &b);
}

int eng_gguf_writer_add_str(struct eng_gguf_writer *w, const char *key, const char *v)
{
    if (w->rc == 0 && !v)
        w->rc = S3_EINVAL;
    if (kv_begin(w, key, key ? strlen(key) : 0, GGUF_VT_STRING) < 0)
        return w->rc;
    put_str(w, v, strlen(v));
    return w->rc;
}

int eng_gguf_writer_add_arr(struct eng_gguf_writer *w, const char *key, uint32_t elem_type,
                            const void *v, size_t n)
{
    const size_t eb = eng_gguf_vtype_size(elem_type);
    if (w->rc == 0 && (eb == 0 || (!v && n > 0)))
        w->rc = S3_EINVAL;
    if (kv_begin(w, key, key ? strlen(key) : 0, GGUF_VT_ARRAY) < 0)
        return w->rc;
    put_le(w, elem_type, 4);
    put_le(w, n, 8);
    for (size_t i = 0; i < n; i++)
        put_host_value(w, elem_type, (const uint8_t *)v + i * eb);
    return w->rc;
}

int eng_gguf_writer_add_strs(struct eng_gguf_writer *w, const char *key, const char *const *v,
                             size_t n)
{
    if (w->rc == 0 && !v && n > 0)
        w->rc = S3_EINVAL;
    for (size_t i = 0; i < n && w->rc == 0; i++)
        if (!v[i])
            w->rc = S3_EINVAL;
    if (kv_begin(w, key, key ? strlen(key) : 0, GGUF_VT_ARRAY) < 0)
        return w->rc;
    put_le(w, GGUF_VT_STRING, 4);
    put_le(w, n, 8);
    for (size_t i = 0; i < n; i++)
        put_str(w, v[i], strlen(v[i]));
    return w->rc;
}

int eng_gguf_writer_add_kv_copy(struct eng_gguf_writer *w, const struct eng_gguf_kv *kv)
{
    if (w->rc == 0 && !kv)
        w->rc = S3_EINVAL;
    if (w->rc < 0)
        return w->rc;
    /* the reader's bytes are already little endian: copied as they are */
    if (kv->type == GGUF_VT_STRING) {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++)
            n |= (uint64_t)((const uint8_t *)kv->data)[i] << (8 * i);
        if (kv_begin(w, kv->key.ptr, (size_t)kv->key.len, kv->type) == 0)
            put_str(w, (const char *)kv->data + 8, (size_t)n);
    } else if (kv->type == GGUF_VT_ARRAY) {
        const size_t eb = eng_gguf_vtype_size(kv->arr_type);
        if (kv->arr_type != GGUF_VT_STRING && eb == 0)
            w->rc = S3_EINVAL; /* nested arrays: llama.cpp's tools do not write them */
        if (kv_begin(w, kv->key.ptr, (size_t)kv->key.len, kv->type) < 0)
            return w->rc;
        put_le(w, kv->arr_type, 4);
        put_le(w, kv->arr_n, 8);
        if (kv->arr_type == GGUF_VT_STRING) {
            for (uint64_t i = 0; i < kv->arr_n; i++)
                put_str(w, kv->strs[i].ptr, (size_t)kv->strs[i].len);
        } else {
            put(w, kv->data, eb * (size_t)kv->arr_n);
        }
    } else {
        const size_t eb = eng_gguf_vtype_size(kv->type);
        if (eb == 0)
            w->rc = S3_EINVAL;
        if (kv_begin(w, kv->key.ptr, (size_t)kv->key.len, kv->type) < 0)
            return w->rc;
        put(w, kv->data, eb);
        if (kv->type == GGUF_VT_U32) {
            const uint8_t *b = kv->data;
            const uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                               (uint32_t)b[3] << 24;
            note_alignment(w, kv->key.ptr, (size_t)kv->key.len, kv->type, u);
        }
    }
    return w->rc;
}

/* ---- tensors ------------------------------------------------------------------------------------ */

int eng_gguf_writer_add_tensor(struct eng_gguf_writer *w, const char *name, uint32_t type,
                               int n_dims, const int64_t *ne, const void *data)
{
    if (w->rc < 0)
        return w->rc;
    if (!name || strlen(name) >= sizeof w->t[0].name || n_dims < 1 || n_dims > 4 || !ne) {
        w->rc = S3_EINVAL;
        return w->rc;
    }
    if (w->n_t == w->cap_t) {
        const size_t cap = w->cap_t ? w->cap_t * 2 : 16;
        struct gw_tensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) {
            w->rc = S3_ENOMEM;
            return w->rc;
        }
        w->t = nt;
        w->cap_t = cap;
    }
    struct gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    size_t rows = 1;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] < 1) {
            w->rc = S3_EINVAL;
            return w->rc;
        }
        if (d > 0) {
            if ((uint64_t)t->ne[d] > SIZE_MAX / rows) {
                w->rc = S3_EINVAL;
                return w->rc;
            }
            rows *= (size_t)t->ne[d];
        }
    }
    const size_t row = krn_type_row_bytes(type, t->ne[0]);
    if (row == 0 || rows > SIZE_MAX / row) {
        w->rc = S3_EINVAL;
        return w->rc;
    }
    t->n_bytes = row * rows;
    t->data = data;
    w->n_t++;
    return 0;
}

size_t eng_gguf_writer_tensor_bytes(const struct eng_gguf_writer *w, size_t i)
{
    return i < w->n_t ? w->t[i].n_bytes : 0;
}

/* ---- output --------------------------------------------------------------------------------------- */

struct gw_sink {
    FILE *f;          /* file output, or */
    struct gw_buf *b; /* memory output */
    uint64_t at;      /* bytes written so far */
    int rc;           /* sticky */
};

static void sink_put(struct gw_sink *s, const void *p, size_t n)
{
    if (s->rc < 0 || n == 0)
        return;
    if (s->f)
        s->rc = fwrite(p, 1, n, s->f) == n ? 0 : S3_EIO;
    else
        s->rc = buf_put(s->b, p, n);
    s->at += n;
}

static void sink_le(struct gw_sink *s, uint64_t v, size_t n)
{
    uint8_t b[8];
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    sink_put(s, b, n);
}

/* zeros up to the next multiple of align (from the file start) */
static void sink_pad(struct gw_sink *s, uint32_t align)
{
    static const uint8_t zeros[64];
    size_t left = (size_t)((align - s->at % align) % align);
    while (left > 0) {
        const size_t n = left < sizeof zeros ? left : sizeof zeros;
        sink_put(s, zeros, n);
        left -= n;
    }
}

static int emit(struct eng_gguf_writer *w, struct gw_sink *s, eng_gguf_fill_fn fill, void *ud)
{
    uint8_t *scratch = NULL;
    size_t scratch_n = 0;
    if (w->rc < 0)
        return w->rc;
    /* layout: each tensor at the next aligned offset of the data section */
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        off = (off + w->align - 1) / w->align * w->align;
        w->t[i].offset = off;
        off += w->t[i].n_bytes;
    }
    sink_put(s, "GGUF", 4);
    sink_le(s, 3, 4);
    sink_le(s, w->n_t, 8);
    sink_le(s, w->n_kv, 8);
    sink_put(s, w->kv.p, w->kv.n);
    for (size_t i = 0; i < w->n_t; i++) {
        const struct gw_tensor *t = &w->t[i];
        sink_le(s, strlen(t->name), 8);
        sink_put(s, t->name, strlen(t->name));
        sink_le(s, (uint64_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims; d++)
            sink_le(s, (uint64_t)t->ne[d], 8);
        sink_le(s, t->type, 4);
        sink_le(s, t->offset, 8);
    }
    for (size_t i = 0; i < w->n_t && s->rc == 0; i++) {
        const struct gw_tensor *t = &w->t[i];
        sink_pad(s, w->align);
        const void *data = t->data;
        if (!data) {
            if (!fill) {
                s->rc = S3_EINVAL;
                break;
            }
            if (t->n_bytes > scratch_n) {
                free(scratch);
                scratch_n = t->n_bytes;
                scratch = malloc(scratch_n);
                if (!scratch) {
                    s->rc = S3_ENOMEM;
                    break;
                }
            }
            const int frc = fill(ud, i, scratch, t->n_bytes);
            if (frc < 0) {
                s->rc = frc;
                break;
            }
            data = scratch;
        }
        sink_put(s, data, t->n_bytes);
    }
    free(scratch);
    return s->rc;
}

int eng_gguf_writer_write_file(struct eng_gguf_writer *w, const char *path,
                               eng_gguf_fill_fn fill, void *ud)
{
    if (w->rc < 0)
        return w->rc;
    struct gw_sink s = {0};
    s.f = fopen(path, "wb");
    if (!s.f)
        return S3_EIO;
    int rc = emit(w, &s, fill, ud);
    if (fclose(s.f) != 0 && rc == 0)
        rc = S3_EIO;
    return rc;
}

int eng_gguf_writer_write_mem(struct eng_gguf_writer *w, eng_gguf_fill_fn fill, void *ud,
                              uint8_t **out, size_t *n_bytes)
{
    *out = NULL;
    *n_bytes = 0;
    struct gw_buf b = {0};
    struct gw_sink s = {0};
    s.b = &b;
    int rc = emit(w, &s, fill, ud);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *n_bytes = b.n;
    return 0;
}
