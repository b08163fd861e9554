/* engine/gguf.c - GGUF v2/v3 reader: mmap, bounds-checked parse, lookups.
 *
 * The file is mapped read-only and never copied: keys, strings, array elements and tensor
 * data are borrowed pointers into the mapping. Parsing walks a cursor that checks every read
 * against the file size; all counts read from the file are checked against the bytes that
 * remain before anything is allocated, and the kv/tensor tables grow with what was actually
 * parsed, so a lying header cannot cause a large allocation. Names are kept in small open
 * addressing hash tables (duplicates are an error, lookups are O(1)). */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

/* values are read from the mapping with memcpy into host integers */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "gguf.c assumes a little-endian host");

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_NAME_CAP 96 /* sizeof(struct eng_gguf_tensor.name) */

struct eng_gguf {
    const uint8_t *base; /* mapping (NULL for an empty file, which never parses) */
    size_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off; /* start of the tensor data section */

    struct eng_gguf_kv *kvs; /* [n_kv] */
    size_t n_kv, cap_kv;
    struct eng_gguf_tensor *tensors; /* [n_tensors] */
    size_t n_tensors, cap_tensors;

    /* open addressing, power-of-two sizes, slots hold index + 1 (0 = empty) */
    uint32_t *kv_hash;
    size_t kv_hash_cap;
    uint32_t *t_hash;
    size_t t_hash_cap;
};

/* ---- type names ------------------------------------------------------------------------- */

static const char *const k_ggml_names[] = {
    [0] = "F32",      [1] = "F16",      [2] = "Q4_0",     [3] = "Q4_1",    [6] = "Q5_0",
    [7] = "Q5_1",     [8] = "Q8_0",     [9] = "Q8_1",     [10] = "Q2_K",   [11] = "Q3_K",
    [12] = "Q4_K",    [13] = "Q5_K",    [14] = "Q6_K",    [15] = "Q8_K",   [16] = "IQ2_XXS",
    [17] = "IQ2_XS",  [18] = "IQ3_XXS", [19] = "IQ1_S",   [20] = "IQ4_NL", [21] = "IQ3_S",
    [22] = "IQ2_S",   [23] = "IQ4_XS",  [24] = "I8",      [25] = "I16",    [26] = "I32",
    [27] = "I64",     [28] = "F64",     [29] = "IQ1_M",   [30] = "BF16",   [34] = "TQ1_0",
    [35] = "TQ2_0",   [39] = "MXFP4",
};

const char *eng_ggml_type_name(uint32_t type)
{
    if (type < sizeof k_ggml_names / sizeof k_ggml_names[0] && k_ggml_names[type])
        return k_ggml_names[type];
    return "?";
}

static const char *vtype_name(uint32_t t)
{
    static const char *const names[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}


/* ---- hashing ---------------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int hash_grow(uint32_t **tab, size_t *cap, size_t n_used)
{
    /* keep load <= 1/2 */
    if (*tab && (n_used + 1) * 2 <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    while ((n_used + 1) * 2 > ncap)
        ncap *= 2;
    uint32_t *nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return S3_ENOMEM;
    free(*tab);
    *tab = nt;
    *cap = ncap;
    return 1; /* caller must rehash */
}

/* ---- cursor ----------------------------------------------------------------------------- */

struct cur {
    const uint8_t *p;
    size_t size;
    size_t off;
    struct s3_errinfo *err;
    char what[160]; /* what is being read, for messages: "key 'x'", "tensor #3 name" */
};

/* Printable, bounded copy of a name from the file, for messages. */
static void name_for_msg(char *dst, size_t cap, const void *src, uint64_t len)
{
    const uint8_t *s = src;
    size_t n = len < cap - 4 ? (size_t)len : cap - 4;
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (n < len) {
        memcpy(dst + i, "...", 3);
        i += 3;
    }
    dst[i] = '\0';
}

static int cur_truncated(struct cur *c)
{
    return s3_errf(c->err, S3_EFORMAT, "gguf: truncated at offset %zu reading %s (file size %zu)",
                   c->off, c->what, c->size);
}

static int cur_need(struct cur *c, uint64_t n)
{
    if (n > c->size - c->off)
        return cur_truncated(c);
    return 0;
}

static int cur_u32(struct cur *c, uint32_t *v)
{
    if (cur_need(c, 4) < 0)
        return S3_EFORMAT;
    const uint8_t *q = c->p + c->off;
    *v = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
    c->off += 4;
    return 0;
}

static int cur_u64(struct cur *c, uint64_t *v)
{
    if (cur_need(c, 8) < 0)
        return S3_EFORMAT;
    const uint8_t *q = c->p + c->off;
    uint64_t r = 0;
    for (int i = 7; i >= 0; i--)
        r = r << 8 | q[i];
    *v = r;
    c->off += 8;
    return 0;
}

static int cur_str(struct cur *c, struct eng_gguf_str *s)
{
    uint64_t len;
    size_t at = c->off;
    if (cur_u64(c, &len) < 0)
        return S3_EFORMAT;
    if (len > c->size - c->off) {
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: string length %llu at offset %zu reading %s exceeds the file "
                       "(size %zu)",
                       (unsigned long long)len, at, c->what, c->size);
    }
    s->ptr = (const char *)(c->p + c->off);
    s->len = len;
    c->off += (size_t)len;
    return 0;
}

/* ---- metadata --------------------------------------------------------------------------- */

static int kv_hash_insert(struct eng_gguf *g, size_t idx)
{
    const struct eng_gguf_kv *kv = &g->kvs[idx];
    size_t mask = g->kv_hash_cap - 1;
    size_t h = (size_t)hash_bytes(kv->key.ptr, (size_t)kv->key.len) & mask;
    while (g->kv_hash[h]) {
        const struct eng_gguf_kv *o = &g->kvs[g->kv_hash[h] - 1];
        if (o->key.len == kv->key.len && memcmp(o->key.ptr, kv->key.ptr, kv->key.len) == 0)
            return 1; /* duplicate */
        h = (h + 1) & mask;
    }
    g->kv_hash[h] = (uint32_t)(idx + 1);
    return 0;
}

static int kv_index_add(struct eng_gguf *g, size_t idx)
{
    int r = hash_grow(&g->kv_hash, &g->kv_hash_cap, idx);
    if (r < 0)
        return r;
    if (r == 1)
        for (size_t i = 0; i < idx; i++)
            kv_hash_insert(g, i);
    return kv_hash_insert(g, idx);
}

/* Array value: element type, count, elements. String elements are decoded into kv->strs. */
static int parse_array(struct cur *c, struct eng_gguf_kv *kv)
{
    uint32_t et;
    uint64_t n;
    size_t at = c->off;
    if (cur_u32(c, &et) < 0 || cur_u64(c, &n) < 0)
        return S3_EFORMAT;
    if (et == GGUF_VT_ARRAY)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: nested array at offset %zu in %s is not supported", at, c->what);
    kv->arr_type = et;
    kv->arr_n = n;
    kv->data = c->p + c->off;
    size_t es = eng_gguf_vtype_size(et);
    if (es) {
        if (n > (c->size - c->off) / es)
            return s3_errf(c->err, S3_EFORMAT,
                           "gguf: array of %llu %s at offset %zu in %s exceeds the file "
                           "(size %zu)",
                           (unsigned long long)n, vtype_name(et), at, c->what, c->size);
        c->off += (size_t)n * es;
        return 0;
    }
    if (et != GGUF_VT_STRING)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: array at offset %zu in %s has unknown element type %u", at, c->what,
                       et);
    /* each string takes at least its 8-byte length: bound n before allocating */
    if (n > (c->size - c->off) / 8)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: array of %llu strings at offset %zu in %s exceeds the file "
                       "(size %zu)",
                       (unsigned long long)n, at, c->what, c->size);
    /* walk first, so the table is only allocated for strings that are really there */
    size_t start = c->off;
    struct eng_gguf_str s;
    for (uint64_t i = 0; i < n; i++)
        if (cur_str(c, &s) < 0)
            return S3_EFORMAT;
    kv->strs = malloc((n ? (size_t)n : 1) * sizeof *kv->strs);
    if (!kv->strs)
        return s3_errf(c->err, S3_ENOMEM, "gguf: out of memory for %s", c->what);
    c->off = start;
    for (uint64_t i = 0; i < n; i++)
        cur_str(c, &kv->strs[i]); /* cannot fail: checked above */
    return 0;
}

static int parse_kv(struct cur *c, struct eng_gguf *g, uint64_t i)
{
    struct eng_gguf_kv *kv = &g->kvs[g->n_kv];
    memset(kv, 0, sizeof *kv);
    size_t key_at = c->off;
    snprintf(c->what, sizeof c->what, "the name of key #%llu", (unsigned long long)i);
    if (cur_str(c, &kv->key) < 0)
        return S3_EFORMAT;
    g->n_kv++; /* from here kv->strs is owned by g */
    char name[72];
    name_for_msg(name, sizeof name, kv->key.ptr, kv->key.len);
    snprintf(c->what, sizeof c->what, "key '%s'", name);
    if (cur_u32(c, &kv->type) < 0)
        return S3_EFORMAT;
    size_t es = eng_gguf_vtype_size(kv->type);
    if (es) {
        if (cur_need(c, es) < 0)
            return S3_EFORMAT;
        kv->data = c->p + c->off;
        c->off += es;
    } else if (kv->type == GGUF_VT_STRING) {
        struct eng_gguf_str s;
        kv->data = c->p + c->off;
        if (cur_str(c, &s) < 0)
            return S3_EFORMAT;
    } else if (kv->type == GGUF_VT_ARRAY) {
        int rc = parse_array(c, kv);
        if (rc < 0)
            return rc;
    } else {
        return s3_errf(c->err, S3_EFORMAT, "gguf: key '%s' at offset %zu has unknown type %u",
                       name, key_at, kv->type);
    }
    int r = kv_index_add(g, g->n_kv - 1);
    if (r < 0)
        return s3_errf(c->err, S3_ENOMEM, "gguf: out of memory");
    if (r == 1)
        return s3_errf(c->err, S3_EFORMAT, "gguf: duplicate key '%s' at offset %zu", name,
                       key_at);
    return 0;
}

/* ---- tensors ---------------------------------------------------------------------------- */

static int t_hash_insert(struct eng_gguf *g, size_t idx)
{
    const char *nm = g->tensors[idx].name;
    size_t mask = g->t_hash_cap - 1;
    size_t h = (size_t)hash_bytes(nm, strlen(nm)) & mask;
    while (g->t_hash[h]) {
        if (strcmp(g->tensors[g->t_hash[h] - 1].name, nm) == 0)
            return 1;
        h = (h + 1) & mask;
    }
    g->t_hash[h] = (uint32_t)(idx + 1);
    return 0;
}

static int t_index_add(struct eng_gguf *g, size_t idx)
{
    int r = hash_grow(&g->t_hash, &g->t_hash_cap, idx);
    if (r < 0)
        return r;
    if (r == 1)
        for (size_t i = 0; i < idx; i++)
            t_hash_insert(g, i);
    return t_hash_insert(g, idx);
}

static int parse_tensor_info(struct cur *c, struct eng_gguf *g, uint64_t i)
{
    struct eng_gguf_tensor *t = &g->tensors[g->n_tensors];
    memset(t, 0, sizeof *t);
    size_t at = c->off;
    struct eng_gguf_str nm;
    snprintf(c->what, sizeof c->what, "the name of tensor #%llu", (unsigned long long)i);
    if (cur_str(c, &nm) < 0)
        return S3_EFORMAT;
    char mname[72];
    name_for_msg(mname, sizeof mname, nm.ptr, nm.len);
    if (nm.len >= GGUF_NAME_CAP)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: tensor '%s' at offset %zu: name of %llu bytes is too long (max %d)",
                       mname, at, (unsigned long long)nm.len, GGUF_NAME_CAP - 1);
    if (nm.len == 0 || memchr(nm.ptr, 0, (size_t)nm.len))
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: tensor #%llu at offset %zu has an empty name or one with a NUL byte",
                       (unsigned long long)i, at);
    memcpy(t->name, nm.ptr, (size_t)nm.len);
    t->name[nm.len] = '\0';
    snprintf(c->what, sizeof c->what, "tensor '%s'", mname);

    uint32_t n_dims;
    if (cur_u32(c, &n_dims) < 0)
        return S3_EFORMAT;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: tensor '%s' at offset %zu has n_dims %u (must be 1..%d)", mname,
                       at, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if (cur_u64(c, &ne) < 0)
            return S3_EFORMAT;
        if (ne == 0 || ne > (uint64_t)INT64_MAX || n_el > (uint64_t)INT64_MAX / ne)
            return s3_errf(c->err, S3_EFORMAT,
                           "gguf: tensor '%s' at offset %zu has a bad shape (ne[%u] = %llu)",
                           mname, at, d, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
        n_el *= ne;
    }
    if (cur_u32(c, &t->type) < 0 || cur_u64(c, &t->offset) < 0)
        return S3_EFORMAT;
    if (!krn_type_supported(t->type))
        return s3_errf(c->err, S3_EFORMAT, "gguf: tensor '%s' has unsupported type %u (%s)",
                       mname, t->type, eng_ggml_type_name(t->type));
    int bs = krn_type_block_size(t->type);
    if (t->ne[0] % bs != 0)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: tensor '%s': row length %lld is not a multiple of the %s block "
                       "size %d",
                       mname, (long long)t->ne[0], eng_ggml_type_name(t->type), bs);
    size_t row = krn_type_row_bytes(t->type, t->ne[0]);
    uint64_t rows = n_el / (uint64_t)t->ne[0];
    if (row == 0 || rows > SIZE_MAX / row || (uint64_t)row * rows > c->size)
        return s3_errf(c->err, S3_EFORMAT,
                       "gguf: tensor '%s' (%s, %llu elements) is larger than the file (size "
                       "%zu)",
                       mname, eng_ggml_type_name(t->type), (unsigned long long)n_el, c->size);
    t->n_bytes = row * (size_t)rows;

    g->n_tensors++;
    int r = t_index_add(g, g->n_tensors - 1);
    if (r < 0)
        return s3_errf(c->err, S3_ENOMEM, "gguf: out of memory");
    if (r == 1)
        return s3_errf(c->err, S3_EFORMAT, "gguf: duplicate tensor name '%s' at offset %zu",
                       mname, at);
    return 0;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct eng_gguf_tensor *x = *(const struct eng_gguf_tensor *const *)a;
    const struct eng_gguf_tensor *y = *(const struct eng_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Place tensor data: aligned, inside the file, pairwise disjoint. */
static int place_tensors(struct eng_gguf *g, struct s3_errinfo *err)
{
    int rc = 0;
    struct eng_gguf_tensor **order = NULL;
    for (size_t i = 0; i < g->n_tensors; i++) {
        struct eng_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return s3_errf(err, S3_EFORMAT,
                           "gguf: tensor '%s' data offset %llu is not a multiple of the "
                           "alignment %u",
                           t->name, (unsigned long long)t->offset, g->alignment);
        uint64_t avail = g->data_off <= g->size ? g->size - g->data_off : 0;
        if (g->data_off > g->size || t->offset > avail || t->n_bytes > avail - t->offset)
            return s3_errf(err, S3_EFORMAT,
                           "gguf: tensor '%s' data [%llu, %llu) lies outside the file (size "
                           "%zu)",
                           t->name, (unsigned long long)(g->data_off + t->offset),
                           (unsigned long long)(g->data_off + t->offset + t->n_bytes), g->size);
        t->data = g->base + g->data_off + t->offset;
    }
    if (g->n_tensors < 2)
        return 0;
    order = malloc(g->n_tensors * sizeof *order);
    if (!order)
        return s3_errf(err, S3_ENOMEM, "gguf: out of memory");
    for (size_t i = 0; i < g->n_tensors; i++)
        order[i] = &g->tensors[i];
    qsort(order, g->n_tensors, sizeof *order, cmp_by_offset);
    for (size_t i = 1; i < g->n_tensors; i++) {
        const struct eng_gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->n_bytes > b->offset) {
            rc = s3_errf(err, S3_EFORMAT, "gguf: tensors '%s' and '%s' overlap in the data "
                         "section (offsets %llu+%zu and %llu)",
                         a->name, b->name, (unsigned long long)a->offset, a->n_bytes,
                         (unsigned long long)b->offset);
            goto out;
        }
    }
out:
    free(order);
    return rc;
}

/* ---- open / close ----------------------------------------------------------------------- */

static int read_alignment(struct eng_gguf *g, struct s3_errinfo *err)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, "general.alignment");
    if (!kv)
        return 0;
    if (kv->type != GGUF_VT_U32)
        return s3_errf(err, S3_EFORMAT, "gguf: key 'general.alignment' has type %s (want u32)",
                       vtype_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return s3_errf(err, S3_EFORMAT,
                       "gguf: key 'general.alignment' = %u is not a power of two", a);
    g->alignment = a;
    return 0;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return S3_ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

static int parse(struct eng_gguf *g, struct s3_errinfo *err)
{
    struct cur c = {.p = g->base, .size = g->size, .off = 0, .err = err};
    int rc;
    snprintf(c.what, sizeof c.what, "the header");
    if (cur_need(&c, 4) < 0)
        return S3_EFORMAT;
    if (memcmp(g->base, "GGUF", 4) != 0)
        return s3_errf(err, S3_EFORMAT,
                       "gguf: bad magic %02x %02x %02x %02x at offset 0 (want \"GGUF\")",
                       g->base[0], g->base[1], g->base[2], g->base[3]);
    c.off = 4;
    if ((rc = cur_u32(&c, &g->version)) < 0)
        return rc;
    if (g->version != 2 && g->version != 3) {
        const char *hint = (g->version & 0xffff) == 0 ? " (big-endian file?)" : "";
        return s3_errf(err, S3_EFORMAT, "gguf: unsupported version %u at offset 4%s",
                       g->version, hint);
    }
    uint64_t n_tensors, n_kv;
    if ((rc = cur_u64(&c, &n_tensors)) < 0 || (rc = cur_u64(&c, &n_kv)) < 0)
        return rc;
    /* minimum encodings: kv = key len 8 + type 4 + 1 byte value; tensor info = name len 8 +
     * 1 byte name + n_dims 4 + ne 8 + type 4 + offset 8 */
    if (n_kv > (g->size - c.off) / 13 || n_kv > UINT32_MAX - 1)
        return s3_errf(err, S3_EFORMAT, "gguf: n_kv %llu at offset 16 is impossible for a file "
                       "of %zu bytes", (unsigned long long)n_kv, g->size);
    if (n_tensors > (g->size - c.off) / 33 || n_tensors > UINT32_MAX - 1)
        return s3_errf(err, S3_EFORMAT, "gguf: n_tensors %llu at offset 8 is impossible for a "
                       "file of %zu bytes", (unsigned long long)n_tensors, g->size);

    for (uint64_t i = 0; i < n_kv; i++) {
        if (grow((void **)&g->kvs, &g->cap_kv, g->n_kv + 1, sizeof *g->kvs) < 0)
            return s3_errf(err, S3_ENOMEM, "gguf: out of memory");
        if ((rc = parse_kv(&c, g, i)) < 0)
            return rc;
    }
    if ((rc = read_alignment(g, err)) < 0)
        return rc;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (grow((void **)&g->tensors, &g->cap_tensors, g->n_tensors + 1, sizeof *g->tensors) <
            0)
            return s3_errf(err, S3_ENOMEM, "gguf: out of memory");
        if ((rc = parse_tensor_info(&c, g, i)) < 0)
            return rc;
    }
    /* data section starts at the next multiple of the alignment after the tensor infos */
    g->data_off = ((uint64_t)c.off + g->alignment - 1) / g->alignment * g->alignment;
    return place_tensors(g, err);
}

int eng_gguf_open(const char *path, struct eng_gguf **out, struct s3_errinfo *err)
{
    int rc = 0, fd = -1;
    struct eng_gguf *g = NULL;
    *out = NULL;
    if (!path)
        return s3_errf(err, S3_EINVAL, "gguf: no path");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        rc = s3_errf(err, e == ENOENT ? S3_ENOTFOUND : S3_EIO, "gguf: cannot open %s: %s", path,
                     strerror(e));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = s3_errf(err, S3_EIO, "gguf: %s is not a readable regular file", path);
        goto out;
    }
    g = calloc(1, sizeof *g);
    if (!g) {
        rc = s3_errf(err, S3_ENOMEM, "gguf: out of memory");
        goto out;
    }
    g->size = (size_t)st.st_size;
    if (g->size < 24) {
        rc = s3_errf(err, S3_EFORMAT, "gguf: truncated at offset %zu reading the header "
                     "(file size %zu, need 24)", g->size, g->size);
        goto out;
    }
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
        rc = s3_errf(err, S3_EIO, "gguf: mmap of %s (%zu bytes) failed: %s", path, g->size,
                     strerror(errno));
        goto out;
    }
    g->base = m;
    rc = parse(g, err);
out:
    if (fd >= 0)
        close(fd);
    if (rc < 0) {
        eng_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

void eng_gguf_close(struct eng_gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_kv; i++)
        free(g->kvs[i].strs);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_hash);
    free(g->t_hash);
    if (g->base)
        munmap((void *)g->base, g->size);
    free(g);
}

/* ---- accessors -------------------------------------------------------------------------- */

uint32_t eng_gguf_version(const struct eng_gguf *g) { return g->version; }
size_t eng_gguf_n_kv(const struct eng_gguf *g) { return g->n_kv; }
size_t eng_gguf_n_tensors(const struct eng_gguf *g) { return g->n_tensors; }

const struct eng_gguf_kv *eng_gguf_kv_at(const struct eng_gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const struct eng_gguf_tensor *eng_gguf_tensor_at(const struct eng_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct eng_gguf_kv *eng_gguf_kv_find(const struct eng_gguf *g, const char *key)
{
    if (!g->kv_hash || !key)
        return NULL;
    size_t len = strlen(key), mask = g->kv_hash_cap - 1;
    size_t h = (size_t)hash_bytes(key, len) & mask;
    while (g->kv_hash[h]) {
        const struct eng_gguf_kv *kv = &g->kvs[g->kv_hash[h] - 1];
        if (kv->key.len == len && memcmp(kv->key.ptr, key, len) == 0)
            return kv;
        h = (h + 1) & mask;
    }
    return NULL;
}

const struct eng_gguf_tensor *eng_gguf_tensor_by_name(const struct eng_gguf *g, const char *name)
{
    if (!g->t_hash || !name)
        return NULL;
    size_t mask = g->t_hash_cap - 1;
    size_t h = (size_t)hash_bytes(name, strlen(name)) & mask;
    while (g->t_hash[h]) {
        const struct eng_gguf_tensor *t = &g->tensors[g->t_hash[h] - 1];
        if (strcmp(t->name, name) == 0)
            return t;
        h = (h + 1) & mask;
    }
    return NULL;
}

void eng_gguf_drop_pages(const struct eng_gguf *g)
{
    if (g && g->base)
        madvise((void *)g->base, g->size, MADV_DONTNEED);
}

const void *eng_gguf_file_data(const struct eng_gguf *g, size_t *n_bytes)
{
    if (n_bytes)
        *n_bytes = g->size;
    return g->base;
}

/* ---- typed getters ---------------------------------------------------------------------- */

/* Integer value of a scalar kv as a sign + magnitude pair; -1 when not an integer type. */
static int kv_int(const struct eng_gguf_kv *kv, int *neg, uint64_t *mag)
{
    const void *p = kv->data;
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed = 1;
    switch (kv->type) {
    case GGUF_VT_U8: { uint8_t v; memcpy(&v, p, 1); u = v; is_signed = 0; break; }
    case GGUF_VT_U16: { uint16_t v; memcpy(&v, p, 2); u = v; is_signed = 0; break; }
    case GGUF_VT_U32: { uint32_t v; memcpy(&v, p, 4); u = v; is_signed = 0; break; }
    case GGUF_VT_U64: { uint64_t v; memcpy(&v, p, 8); u = v; is_signed = 0; break; }
    case GGUF_VT_I8: { int8_t v; memcpy(&v, p, 1); s = v; break; }
    case GGUF_VT_I16: { int16_t v; memcpy(&v, p, 2); s = v; break; }
    case GGUF_VT_I32: { int32_t v; memcpy(&v, p, 4); s = v; break; }
    case GGUF_VT_I64: { int64_t v; memcpy(&v, p, 8); s = v; break; }
    default: return -1;
    }
    if (is_signed) {
        *neg = s < 0;
        *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    } else {
        *neg = 0;
        *mag = u;
    }
    return 0;
}

int eng_gguf_get_u32(const struct eng_gguf *g, const char *key, uint32_t *out)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return S3_ENOTFOUND;
    int neg;
    uint64_t mag;
    if (kv_int(kv, &neg, &mag) < 0 || neg || mag > UINT32_MAX)
        return S3_EFORMAT;
    *out = (uint32_t)mag;
    return 0;
}

int eng_gguf_get_i64(const struct eng_gguf *g, const char *key, int64_t *out)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return S3_ENOTFOUND;
    int neg;
    uint64_t mag;
    if (kv_int(kv, &neg, &mag) < 0)
        return S3_EFORMAT;
    if (!neg && mag > (uint64_t)INT64_MAX)
        return S3_EFORMAT;
    /* a negative magnitude is at most 2^63, which converts back exactly */
    *out = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    return 0;
}

int eng_gguf_get_f32(const struct eng_gguf *g, const char *key, float *out)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return S3_ENOTFOUND;
    if (kv->type == GGUF_VT_F32) {
        memcpy(out, kv->data, 4);
        return 0;
    }
    if (kv->type == GGUF_VT_F64) {
        double d;
        memcpy(&d, kv->data, 8);
        if (isfinite(d) && fabs(d) > FLT_MAX)
            return S3_EFORMAT;
        *out = (float)d;
        return 0;
    }
    return S3_EFORMAT;
}

int eng_gguf_get_bool(const struct eng_gguf *g, const char *key, int *out)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return S3_ENOTFOUND;
    if (kv->type != GGUF_VT_BOOL)
        return S3_EFORMAT;
    *out = *(const uint8_t *)kv->data != 0;
    return 0;
}

int eng_gguf_get_str(const struct eng_gguf *g, const char *key, struct eng_gguf_str *out)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return S3_ENOTFOUND;
    if (kv->type != GGUF_VT_STRING)
        return S3_EFORMAT;
    uint64_t len;
    memcpy(&len, kv->data, 8); /* validated at parse time; little-endian host */
    out->ptr = (const char *)kv->data + 8;
    out->len = len;
    return 0;
}
