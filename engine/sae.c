/* engine/sae.c - SAE file format (load, verify, save) and the reference and fast encoders.
 * The format is documented at the top of sae.h. */
#include "sae.h"
#include "sae_int.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the SAE file reader assumes a little-endian host"
#endif

#define SAE_MAGIC       "S3SAE\x1a\n"          /* 7 chars + NUL = 8 bytes */
#define SAE_FIXED_BYTES 256
#define SAE_SUM_BYTES   64
#define SAE_MAX_FILE    ((uint64_t)4 << 30)    /* 4 GiB */
#define SAE_MAX_HEADS   1024
#define SAE_MAX_NLAYER  4096

struct eng_sae {
    struct eng_sae_info info;
    unsigned char *buf;      /* whole file image (header, tensors, checksum) */
    size_t buf_bytes;
    size_t header_bytes;     /* offset of the tensors */
    size_t unit_floats;      /* floats per (slot, head) SAE */
    float *stats;            /* (n_idx, n_head_kv, ENG_SAE_N_STATS), inside buf */
    float *tensors;          /* inside buf at header_bytes */
};

/* ---- little-endian field access ------------------------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int32_t get_i32(const unsigned char *p)
{
    uint32_t u = get_u32(p);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* ---- layout ---------------------------------------------------------------------------------- */

/* Check header dimensions; on failure write a reason into why and return -1. */
static int dims_check(const struct eng_sae_info *in, char *why, size_t why_n)
{
    if (in->n_layer < 1 || in->n_layer > SAE_MAX_NLAYER)
        return snprintf(why, why_n, "n_layer %d out of range", in->n_layer), -1;
    if (in->n_head < 1 || in->n_head > SAE_MAX_HEADS)
        return snprintf(why, why_n, "n_head %d out of range", in->n_head), -1;
    if (in->n_head_kv < 1 || in->n_head_kv > in->n_head || in->n_head % in->n_head_kv != 0)
        return snprintf(why, why_n, "n_head_kv %d does not divide n_head %d", in->n_head_kv,
                        in->n_head),
               -1;
    if (in->d_head < 1 || in->d_head > ENG_SAE_MAX_DHEAD)
        return snprintf(why, why_n, "d_head %d out of range", in->d_head), -1;
    if (in->n_dict < 1 || in->n_dict > ENG_SAE_MAX_DICT)
        return snprintf(why, why_n, "dictionary size %d out of range 1..%d", in->n_dict,
                        ENG_SAE_MAX_DICT),
               -1;
    if (in->k < 1 || in->k > ENG_SAE_MAX_K || in->k > in->n_dict)
        return snprintf(why, why_n, "k %d out of range for dictionary %d", in->k, in->n_dict),
               -1;
    if (in->n_idx < 1 || in->n_idx > ENG_SAE_MAX_LAYERS)
        return snprintf(why, why_n, "%d indexed layers (1..%d allowed)", in->n_idx,
                        ENG_SAE_MAX_LAYERS),
               -1;
    for (int i = 0; i < in->n_idx; i++) {
        int l = in->layers[i];
        if (l < 0 || l >= in->n_layer || l >= ENG_SAE_MAX_LAYERS)
            return snprintf(why, why_n, "indexed layer %d out of range (model has %d)", l,
                            in->n_layer),
                   -1;
        if (i > 0 && l <= in->layers[i - 1])
            return snprintf(why, why_n, "indexed layers not strictly ascending"), -1;
    }
    return 0;
}

static size_t round_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* Sizes of a valid header (dims_check passed: no overflow possible below 2^63). */
static void layout(const struct eng_sae_info *in, size_t *header_bytes, size_t *unit_floats,
                   uint64_t *file_bytes)
{
    size_t hb = SAE_FIXED_BYTES + 4 * (size_t)in->n_idx +
                4 * (size_t)ENG_SAE_N_STATS * (size_t)in->n_idx * (size_t)in->n_head_kv;
    hb = round_up(hb, 64);
    size_t uf = 2 * (size_t)in->n_dict * (size_t)in->d_head + (size_t)in->n_dict +
                (size_t)in->d_head;
    *header_bytes = hb;
    *unit_floats = uf;
    *file_bytes = (uint64_t)hb + (uint64_t)uf * 4 * (uint64_t)in->n_idx * (uint64_t)in->n_head_kv +
                  SAE_SUM_BYTES;
}

static void header_write(struct eng_sae *s)
{
    unsigned char *p = s->buf;
    const struct eng_sae_info *in = &s->info;
    memset(p, 0, SAE_FIXED_BYTES);
    memcpy(p, SAE_MAGIC, 8);
    put_u32(p + 8, ENG_SAE_VERSION);
    put_u32(p + 12, (uint32_t)s->header_bytes);
    put_u64(p + 16, (uint64_t)s->buf_bytes);
    memcpy(p + 24, in->model_sha256, 64);
    memcpy(p + 88, in->arch, strnlen(in->arch, 31));
    put_u32(p + 120, (uint32_t)in->n_layer);
    put_u32(p + 124, (uint32_t)in->n_head);
    put_u32(p + 128, (uint32_t)in->n_head_kv);
    put_u32(p + 132, (uint32_t)in->d_head);
    put_u32(p + 136, (uint32_t)in->n_dict);
    put_u32(p + 140, (uint32_t)in->k);
    put_u32(p + 144, (uint32_t)in->n_idx);
    put_u32(p + 148, 0);
    put_u64(p + 152, in->n_tokens_trained);
    put_u64(p + 160, in->seed);
    for (int i = 0; i < in->n_idx; i++)
        put_u32(p + SAE_FIXED_BYTES + 4 * (size_t)i, (uint32_t)in->layers[i]);
}

static void checksum_write(struct eng_sae *s)
{
    char hex[65];
    s3_sha256_hex(s->buf, s->buf_bytes - SAE_SUM_BYTES, hex);
    memcpy(s->buf + s->buf_bytes - SAE_SUM_BYTES, hex, SAE_SUM_BYTES);
}

/* Allocate s for a checked header; buf zeroed. */
static int sae_alloc(const struct eng_sae_info *in, struct eng_sae **out, struct s3_errinfo *err)
{
    size_t hb, uf;
    uint64_t fb;
    layout(in, &hb, &uf, &fb);
    if (fb > SAE_MAX_FILE)
        return s3_errf(err, S3_ETOOBIG, "SAE of %llu bytes exceeds the %llu byte limit",
                       (unsigned long long)fb, (unsigned long long)SAE_MAX_FILE);
    struct eng_sae *s = calloc(1, sizeof(*s));
    if (!s)
        return s3_errf(err, S3_ENOMEM, "out of memory");
    s->buf = calloc(1, (size_t)fb);
    if (!s->buf) {
        free(s);
        return s3_errf(err, S3_ENOMEM, "out of memory for a %llu byte SAE",
                       (unsigned long long)fb);
    }
    s->info = *in;
    s->info.model_sha256[64] = 0;
    s->info.arch[31] = 0;
    s->buf_bytes = (size_t)fb;
    s->header_bytes = hb;
    s->unit_floats = uf;
    s->stats = (float *)(void *)(s->buf + SAE_FIXED_BYTES + 4 * (size_t)in->n_idx);
    s->tensors = (float *)(void *)(s->buf + hb);
    *out = s;
    return 0;
}

int eng_sae_new(const struct eng_sae_info *info, struct eng_sae **out, struct s3_errinfo *err)
{
    char why[160];
    *out = NULL;
    if (!info)
        return s3_errf(err, S3_EINVAL, "no SAE header given");
    if (dims_check(info, why, sizeof(why)) < 0)
        return s3_errf(err, S3_EINVAL, "SAE: %s", why);
    return sae_alloc(info, out, err);
}

void eng_sae_free(struct eng_sae *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s);
}

int eng_sae_check_model(const struct eng_sae *s, const struct eng_hparams *hp,
                        struct s3_errinfo *err)
{
    const struct eng_sae_info *in = &s->info;
    if (strncmp(in->model_sha256, hp->model_sha256, 64) != 0)
        return s3_errf(err, S3_EINVAL,
                       "SAE was trained for model sha256 %.12s..., this model is %.12s...",
                       in->model_sha256, hp->model_sha256);
    if (strcmp(in->arch, hp->arch) != 0)
        return s3_errf(err, S3_EINVAL, "SAE arch '%s' but the model is '%s'", in->arch,
                       hp->arch);
    if (in->n_layer != hp->n_layer)
        return s3_errf(err, S3_EINVAL, "SAE expects %d layers, the model has %d", in->n_layer,
                       hp->n_layer);
    if (in->n_head != hp->n_head || in->n_head_kv != hp->n_head_kv)
        return s3_errf(err, S3_EINVAL, "SAE expects %d/%d query/kv heads, the model has %d/%d",
                       in->n_head, in->n_head_kv, hp->n_head, hp->n_head_kv);
    if (in->d_head != hp->head_dim)
        return s3_errf(err, S3_EINVAL, "SAE d_head %d but the model's head_dim is %d",
                       in->d_head, hp->head_dim);
    return 0;
}

int eng_sae_load_mem(const void *data, size_t n, const struct eng_hparams *expect,
                     struct eng_sae **out, struct s3_errinfo *err)
{
    const unsigned char *p = data;
    struct eng_sae_info in;
    struct eng_sae *s = NULL;
    char why[160];
    int rc = 0;

    *out = NULL;
    if (n < 8 || memcmp(p, SAE_MAGIC, 8) != 0)
        return s3_errf(err, S3_EFORMAT, "not an SAE file (bad magic)");
    if (n < SAE_FIXED_BYTES + SAE_SUM_BYTES)
        return s3_errf(err, S3_EFORMAT, "SAE file truncated: %zu bytes, header alone is %d", n,
                       SAE_FIXED_BYTES + SAE_SUM_BYTES);
    uint32_t version = get_u32(p + 8);
    if (version != ENG_SAE_VERSION)
        return s3_errf(err, S3_EFORMAT, "SAE file version %u not supported (this build reads %d)",
                       version, ENG_SAE_VERSION);
    uint64_t file_bytes = get_u64(p + 16);
    if (file_bytes > n)
        return s3_errf(err, S3_EFORMAT, "SAE file truncated: %zu of %llu bytes", n,
                       (unsigned long long)file_bytes);
    if (file_bytes < n)
        return s3_errf(err, S3_EFORMAT, "SAE file has %llu trailing bytes",
                       (unsigned long long)(n - file_bytes));

    memset(&in, 0, sizeof(in));
    memcpy(in.model_sha256, p + 24, 64);
    memcpy(in.arch, p + 88, 31);
    in.n_layer = get_i32(p + 120);
    in.n_head = get_i32(p + 124);
    in.n_head_kv = get_i32(p + 128);
    in.d_head = get_i32(p + 132);
    in.n_dict = get_i32(p + 136);
    in.k = get_i32(p + 140);
    in.n_idx = get_i32(p + 144);
    int32_t dtype = get_i32(p + 148);
    in.n_tokens_trained = get_u64(p + 152);
    in.seed = get_u64(p + 160);
    if (in.n_idx >= 1 && in.n_idx <= ENG_SAE_MAX_LAYERS &&
        (size_t)SAE_FIXED_BYTES + 4 * (size_t)in.n_idx <= n)
        for (int i = 0; i < in.n_idx; i++)
            in.layers[i] = get_i32(p + SAE_FIXED_BYTES + 4 * (size_t)i);
    if (dims_check(&in, why, sizeof(why)) < 0)
        return s3_errf(err, S3_EFORMAT, "SAE file has bad dimensions: %s", why);
    if (dtype != 0)
        return s3_errf(err, S3_EFORMAT, "SAE tensor type %d not supported", dtype);
    for (int i = 0; i < 64; i++) {
        char c = in.model_sha256[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return s3_errf(err, S3_EFORMAT, "SAE file has a malformed model hash");
    }
    size_t hb, uf;
    uint64_t fb;
    layout(&in, &hb, &uf, &fb);
    if (get_u32(p + 12) != hb || fb != file_bytes)
        return s3_errf(err, S3_EFORMAT,
                       "SAE file sizes do not match its dimensions (header %u/%zu, file "
                       "%llu/%llu bytes)",
                       get_u32(p + 12), hb, (unsigned long long)file_bytes,
                       (unsigned long long)fb);
    char hex[65];
    s3_sha256_hex(p, n - SAE_SUM_BYTES, hex);
    if (memcmp(hex, p + n - SAE_SUM_BYTES, SAE_SUM_BYTES) != 0)
        return s3_errf(err, S3_EFORMAT, "SAE file is corrupt (checksum mismatch)");

    rc = sae_alloc(&in, &s, err);
    if (rc < 0)
        goto out;
    memcpy(s->buf, p, n);
    if (expect) {
        rc = eng_sae_check_model(s, expect, err);
        if (rc < 0)
            goto out;
    }
out:
    if (rc < 0)
        eng_sae_free(s);
    else
        *out = s;
    return rc;
}

int eng_sae_load(const char *path, const struct eng_hparams *expect, struct eng_sae **out,
                 struct s3_errinfo *err)
{
    char *data = NULL;
    size_t n = 0;
    *out = NULL;
    int rc = s3_read_file(path, (size_t)SAE_MAX_FILE, &data, &n, err);
    if (rc < 0)
        return rc;
    rc = eng_sae_load_mem(data, n, expect, out, err);
    if (rc < 0 && err) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        s3_errf(err, rc, "%s: %s", path, msg);
    }
    free(data);
    return rc;
}

int eng_sae_image(struct eng_sae *s, const void **data, size_t *n)
{
    header_write(s);
    checksum_write(s);
    *data = s->buf;
    *n = s->buf_bytes;
    return 0;
}

int eng_sae_save(struct eng_sae *s, const char *path, struct s3_errinfo *err)
{
    int rc = 0;
    char tmp[4096];
    FILE *f = NULL;
    const void *data;
    size_t n;

    eng_sae_image(s, &data, &n);
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return s3_errf(err, S3_EINVAL, "path too long: %s", path);
    f = fopen(tmp, "wb");
    if (!f)
        return s3_errf(err, S3_EIO, "cannot create %s: %s", tmp, strerror(errno));
    if (fwrite(data, 1, n, f) != n) {
        rc = s3_errf(err, S3_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fclose(f) != 0) {
        f = NULL;
        rc = s3_errf(err, S3_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        rc = s3_errf(err, S3_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
out:
    if (f)
        fclose(f);
    if (rc < 0)
        remove(tmp);
    return rc;
}

/* ---- accessors ------------------------------------------------------------------------------- */

const struct eng_sae_info *eng_sae_get_info(const struct eng_sae *s)
{
    return &s->info;
}

int eng_sae_slot_of_layer(const struct eng_sae *s, int layer)
{
    for (int i = 0; i < s->info.n_idx; i++)
        if (s->info.layers[i] == layer)
            return i;
    return -1;
}

uint64_t eng_sae_layer_mask(const struct eng_sae *s)
{
    uint64_t m = 0;
    for (int i = 0; i < s->info.n_idx; i++)
        m |= (uint64_t)1 << s->info.layers[i];
    return m;
}

int eng_sae_kv_of_q_head(const struct eng_sae *s, int q_head)
{
    if (q_head < 0 || q_head >= s->info.n_head)
        return -1;
    return q_head / (s->info.n_head / s->info.n_head_kv);
}

static int unit_ok(const struct eng_sae *s, int slot, int head)
{
    return slot >= 0 && slot < s->info.n_idx && head >= 0 && head < s->info.n_head_kv;
}

float *eng_sae_stats(struct eng_sae *s, int slot, int head)
{
    if (!unit_ok(s, slot, head))
        return NULL;
    return s->stats + ((size_t)slot * (size_t)s->info.n_head_kv + (size_t)head) * ENG_SAE_N_STATS;
}

const float *eng_sae_stats_c(const struct eng_sae *s, int slot, int head)
{
    return eng_sae_stats((struct eng_sae *)s, slot, head);
}

void eng_sae_set_trained(struct eng_sae *s, uint64_t n_tokens, uint64_t seed)
{
    s->info.n_tokens_trained = n_tokens;
    s->info.seed = seed;
}

/* Const view of one unit. */
struct unit_c {
    const float *w_enc, *b_enc, *w_dec, *b_dec;
};

static struct unit_c unit_get(const struct eng_sae *s, int slot, int head)
{
    size_t nd = (size_t)s->info.n_dict, d = (size_t)s->info.d_head;
    const float *base =
        s->tensors + ((size_t)slot * (size_t)s->info.n_head_kv + (size_t)head) * s->unit_floats;
    struct unit_c u;
    u.w_enc = base;
    u.b_enc = base + nd * d;
    u.w_dec = u.b_enc + nd;
    u.b_dec = u.w_dec + nd * d;
    return u;
}

int eng_sae_get_unit(struct eng_sae *s, int slot, int head, struct eng_sae_unit *u)
{
    if (!unit_ok(s, slot, head))
        return S3_EINVAL;
    struct unit_c c = unit_get(s, slot, head);
    u->w_enc = (float *)c.w_enc;
    u->b_enc = (float *)c.b_enc;
    u->w_dec = (float *)c.w_dec;
    u->b_dec = (float *)c.b_dec;
    return 0;
}

/* ---- encoders -------------------------------------------------------------------------------- */

/* The contract's exact pre-activation of one latent (xc = x - b_dec, in float). */
static inline float pre_exact(const float *w, const float *xc, int d, float b)
{
    double acc = 0.0;
    for (int i = 0; i < d; i++)
        acc += (double)w[i] * (double)xc[i];
    return (float)(acc + (double)b);
}

int eng__sae_sel_insert(float *vals, int32_t *ids, int n, int cap, float v, int32_t id)
{
    if (n == cap) {
        if (!(v > vals[n - 1]))
            return n;
        n--;
    }
    int i = n;
    while (i > 0 && v > vals[i - 1]) {
        vals[i] = vals[i - 1];
        ids[i] = ids[i - 1];
        i--;
    }
    vals[i] = v;
    ids[i] = id;
    return n + 1;
}

int eng_sae_encode_ref(const struct eng_sae *s, int slot, int head, const float *x, size_t ldx,
                       int n, uint16_t *ids, float *acts)
{
    const int d = s->info.d_head, nd = s->info.n_dict, k = s->info.k;
    if (!unit_ok(s, slot, head) || n < 0 || (n > 0 && (!x || !ids || !acts)) ||
        (n > 1 && ldx < (size_t)d))
        return S3_EINVAL;
    struct unit_c u = unit_get(s, slot, head);
    float *xc = malloc(sizeof(float) * (size_t)d);
    float *vals = malloc(sizeof(float) * (size_t)k);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)k);
    int rc = 0;
    if (!xc || !vals || !sel) {
        rc = S3_ENOMEM;
        goto out;
    }
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * ldx;
        for (int i = 0; i < d; i++)
            xc[i] = xr[i] - u.b_dec[i];
        int m = 0;
        for (int j = 0; j < nd; j++) {
            float p = pre_exact(u.w_enc + (size_t)j * (size_t)d, xc, d, u.b_enc[j]);
            float a = p > 0.0f ? p : 0.0f;
            m = eng__sae_sel_insert(vals, sel, m, k, a, j);
        }
        for (int j = 0; j < k; j++) {
            ids[(size_t)r * (size_t)k + (size_t)j] = (uint16_t)sel[j];
            acts[(size_t)r * (size_t)k + (size_t)j] = vals[j];
        }
    }
out:
    free(xc);
    free(vals);
    free(sel);
    return rc;
}

struct eng_sae_enc {
    const struct eng_sae *s;
    int max_rows;
    float *xc;        /* (max_rows, d) */
    float *pre;       /* (max_rows, n_dict) */
    float *heap;      /* (k) */
    float *vals;      /* (k) */
    int32_t *sel;     /* (k) */
    uint8_t *taken;   /* (n_dict) */
    float *wmax;      /* (n_idx * n_head_kv): largest encoder row norm */
    float *bmax;      /* (n_idx * n_head_kv): largest |b_enc| */
};

void eng_sae_enc_free(struct eng_sae_enc *e)
{
    if (!e)
        return;
    free(e->xc);
    free(e->pre);
    free(e->heap);
    free(e->vals);
    free(e->sel);
    free(e->taken);
    free(e->wmax);
    free(e->bmax);
    free(e);
}

int eng_sae_enc_new(const struct eng_sae *s, int max_rows, struct eng_sae_enc **out)
{
    *out = NULL;
    if (!s || max_rows < 1 || max_rows > (1 << 20))
        return S3_EINVAL;
    const size_t d = (size_t)s->info.d_head, nd = (size_t)s->info.n_dict,
                 k = (size_t)s->info.k, nu = (size_t)s->info.n_idx * (size_t)s->info.n_head_kv;
    struct eng_sae_enc *e = calloc(1, sizeof(*e));
    if (!e)
        return S3_ENOMEM;
    e->s = s;
    e->max_rows = max_rows;
    e->xc = malloc(sizeof(float) * (size_t)max_rows * d);
    e->pre = malloc(sizeof(float) * (size_t)max_rows * nd);
    e->heap = malloc(sizeof(float) * k);
    e->vals = malloc(sizeof(float) * k);
    e->sel = malloc(sizeof(int32_t) * k);
    e->taken = calloc(nd, 1);
    e->wmax = malloc(sizeof(float) * nu);
    e->bmax = malloc(sizeof(float) * nu);
    if (!e->xc || !e->pre || !e->heap || !e->vals || !e->sel || !e->taken || !e->wmax ||
        !e->bmax) {
        eng_sae_enc_free(e);
        return S3_ENOMEM;
    }
    for (int slot = 0; slot < s->info.n_idx; slot++)
        for (int h = 0; h < s->info.n_head_kv; h++) {
            struct unit_c u = unit_get(s, slot, h);
            double wm = 0.0, bm = 0.0;
            for (size_t j = 0; j < nd; j++) {
                double ss = 0.0;
                for (size_t i = 0; i < d; i++)
                    ss += (double)u.w_enc[j * d + i] * (double)u.w_enc[j * d + i];
                if (ss > wm)
                    wm = ss;
                if (fabs((double)u.b_enc[j]) > bm)
                    bm = fabs((double)u.b_enc[j]);
            }
            size_t ui = (size_t)slot * (size_t)s->info.n_head_kv + (size_t)h;
            /* round up so the margin stays an upper bound */
            e->wmax[ui] = (float)(sqrt(wm) * (1.0 + 1e-6));
            e->bmax[ui] = (float)(bm * (1.0 + 1e-6));
        }
    *out = e;
    return 0;
}

/* Min-heap of the k largest values seen; returns the k-th largest (the root). */
static float kth_largest(const float *v, int n, float *heap, int k)
{
    for (int i = 0; i < k; i++) {
        /* push v[i] */
        int c = i;
        float x = v[i];
        while (c > 0) {
            int p = (c - 1) / 2;
            if (!(x < heap[p]))
                break;
            heap[c] = heap[p];
            c = p;
        }
        heap[c] = x;
    }
    for (int i = k; i < n; i++) {
        float x = v[i];
        if (!(x > heap[0]))
            continue;
        /* replace the root and sift down */
        int c = 0;
        for (;;) {
            int l = 2 * c + 1, r = l + 1, m = c;
            float mv = x;
            if (l < k && heap[l] < mv) {
                m = l;
                mv = heap[l];
            }
            if (r < k && heap[r] < mv)
                m = r;
            if (m == c)
                break;
            heap[c] = heap[m];
            c = m;
        }
        heap[c] = x;
    }
    return heap[0];
}

int eng_sae_encode(struct eng_sae_enc *e, int slot, int head, const float *x, size_t ldx, int n,
                   uint16_t *ids, float *acts)
{
    const struct eng_sae *s = e ? e->s : NULL;
    if (!s || !unit_ok(s, slot, head) || n < 0 || (n > 0 && (!x || !ids || !acts)) ||
        (n > 1 && ldx < (size_t)s->info.d_head))
        return S3_EINVAL;
    const int d = s->info.d_head, nd = s->info.n_dict, k = s->info.k;
    struct unit_c u = unit_get(s, slot, head);
    const size_t ui = (size_t)slot * (size_t)s->info.n_head_kv + (size_t)head;
    const double wmax = e->wmax[ui], bmax = e->bmax[ui];

    for (int r0 = 0; r0 < n; r0 += e->max_rows) {
        const int nb = n - r0 < e->max_rows ? n - r0 : e->max_rows;
        for (int r = 0; r < nb; r++) {
            const float *xr = x + (size_t)(r0 + r) * ldx;
            float *xc = e->xc + (size_t)r * (size_t)d;
            for (int i = 0; i < d; i++)
                xc[i] = xr[i] - u.b_dec[i];
        }
        /* pre (nb, n_dict) = xc (nb, d) . W_enc^T */
        krn_sgemm(0, 1, nb, nd, d, 1.0f, e->xc, d, u.w_enc, d, 0.0f, e->pre, nd);
        for (int r = 0; r < nb; r++) {
            float *pr = e->pre + (size_t)r * (size_t)nd;
            const float *xc = e->xc + (size_t)r * (size_t)d;
            uint16_t *ro = ids + (size_t)(r0 + r) * (size_t)k;
            float *ra = acts + (size_t)(r0 + r) * (size_t)k;
            double xn = 0.0;
            for (int i = 0; i < d; i++)
                xn += (double)xc[i] * (double)xc[i];
            xn = sqrt(xn);
            for (int j = 0; j < nd; j++)
                pr[j] += u.b_enc[j];
            const float t = kth_largest(pr, nd, e->heap, k);
            /* |fast - exact| <= delta: GEMM error <= d*u*|w||x|, plus the roundings of the
             * bias add and of the exact value (each <= u * magnitude); FLT_EPSILON = 2u. */
            const double delta = ((double)d + 4.0) * FLT_EPSILON * (wmax * xn + bmax);
            const double thr = (double)t - 2.0 * delta;
            int m = 0;
            for (int j = 0; j < nd; j++) {
                if (!((double)pr[j] >= thr))
                    continue;
                float p = pre_exact(u.w_enc + (size_t)j * (size_t)d, xc, d, u.b_enc[j]);
                if (p > 0.0f)
                    m = eng__sae_sel_insert(e->vals, e->sel, m, k, p, j);
            }
            /* fewer than k positive: the rest are the lowest ids with activation 0 */
            for (int j = 0; j < m; j++)
                e->taken[e->sel[j]] = 1;
            for (int j = 0, f = m; f < k && j < nd; j++)
                if (!e->taken[j]) {
                    e->vals[f] = 0.0f;
                    e->sel[f++] = j;
                }
            for (int j = 0; j < m; j++)
                e->taken[e->sel[j]] = 0;
            for (int j = 0; j < k; j++) {
                ro[j] = (uint16_t)e->sel[j];
                ra[j] = e->vals[j];
            }
        }
    }
    return 0;
}

int eng_sae_decode(const struct eng_sae *s, int slot, int head, const uint16_t *ids,
                   const float *acts, float *out)
{
    if (!unit_ok(s, slot, head))
        return S3_EINVAL;
    const int d = s->info.d_head, k = s->info.k;
    struct unit_c u = unit_get(s, slot, head);
    for (int i = 0; i < d; i++)
        out[i] = u.b_dec[i];
    for (int j = 0; j < k; j++) {
        if (ids[j] >= s->info.n_dict)
            return S3_EINVAL;
        const float a = acts[j];
        if (a == 0.0f)
            continue;
        const float *w = u.w_dec + (size_t)ids[j] * (size_t)d;
        for (int i = 0; i < d; i++)
            out[i] += a * w[i];
    }
    return 0;
}

int eng_sae_fvu(struct eng_sae_enc *e, int slot, int head, const float *x, size_t ldx, int n,
                double *fvu)
{
    const struct eng_sae *s = e ? e->s : NULL;
    if (!s || !unit_ok(s, slot, head) || n < 1 || !x || (n > 1 && ldx < (size_t)s->info.d_head))
        return S3_EINVAL;
    const int d = s->info.d_head, k = s->info.k, blk = 256;
    int rc = 0;
    uint16_t *ids = malloc(sizeof(uint16_t) * (size_t)blk * (size_t)k);
    float *acts = malloc(sizeof(float) * (size_t)blk * (size_t)k);
    float *rec = malloc(sizeof(float) * (size_t)d);
    double *sum = calloc((size_t)d, sizeof(double));
    double err2 = 0.0, sq = 0.0;
    if (!ids || !acts || !rec || !sum) {
        rc = S3_ENOMEM;
        goto out;
    }
    for (int r0 = 0; r0 < n; r0 += blk) {
        int nb = n - r0 < blk ? n - r0 : blk;
        rc = eng_sae_encode(e, slot, head, x + (size_t)r0 * ldx, ldx, nb, ids, acts);
        if (rc < 0)
            goto out;
        for (int r = 0; r < nb; r++) {
            const float *xr = x + (size_t)(r0 + r) * ldx;
            eng_sae_decode(s, slot, head, ids + (size_t)r * (size_t)k,
                           acts + (size_t)r * (size_t)k, rec);
            for (int i = 0; i < d; i++) {
                double dv = (double)xr[i] - (double)rec[i];
                err2 += dv * dv;
                sum[i] += xr[i];
                sq += (double)xr[i] * (double)xr[i];
            }
        }
    }
    double var = sq;
    for (int i = 0; i < d; i++)
        var -= sum[i] * sum[i] / n;
    *fvu = var > 0.0 ? err2 / var : (err2 > 0.0 ? INFINITY : 0.0);
out:
    free(ids);
    free(acts);
    free(rec);
    free(sum);
    return rc;
}
