/* server/cli_gguf.c - `s3serve gguf-synth`: write GGUF files for tests and benchmarks.
 *
 *   s3serve gguf-synth --shape llama3-8b|smollm2-135m --out F [--type q4_1|q8_0|f16]
 *                      [--layers N] [--vocab V] [--seed S]
 *       A Llama-architecture model with generated weights of that shape (performance does not
 *       depend on weight values) and a placeholder gpt2 tokenizer of V tokens ("t0", "t1",
 *       ...). Matrices are written directly as random blocks of the chosen type, scaled so
 *       activations stay in range; norms are ones.
 *
 *   s3serve gguf-synth --slice N --model IN --out F
 *       The first N layers of a real model file: every metadata key copied verbatim (the
 *       tokenizer included) except <arch>.block_count = N; token_embd, output_norm, output
 *       and rope_freqs kept; blk.i.* kept for i < N; tensor bytes copied unchanged.
 *
 * The writer emits GGUF v3 (layout in engine/gguf.h) with 32-byte alignment. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "gguf.h"
#include "quant.h"

int cli_gguf_synth(int argc, char **argv);

#define GW_ALIGN 32
#define GW_MAX_TENSORS 4096

struct gw_tensor {
    char name[96];
    uint32_t type;
    int n_dims;
    int64_t ne[2];
    size_t n_bytes;
    uint64_t offset;
};

struct gw {
    FILE *f;
    int rc;               /* sticky: once negative every write is a no-op */
};

static void gw_bytes(struct gw *w, const void *p, size_t n)
{
    if (w->rc < 0 || n == 0)
        return;
    if (fwrite(p, 1, n, w->f) != n)
        w->rc = S3_EIO;
}

static void gw_u32(struct gw *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gw_bytes(w, b, 4);
}

static void gw_u64(struct gw *w, uint64_t v)
{
    gw_u32(w, (uint32_t)v);
    gw_u32(w, (uint32_t)(v >> 32));
}

static void gw_str(struct gw *w, const char *s, size_t n)
{
    gw_u64(w, n);
    gw_bytes(w, s, n);
}

static void gw_f32(struct gw *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    gw_u32(w, u);
}

static void gw_pad(struct gw *w, uint64_t at)
{
    static const uint8_t zeros[GW_ALIGN];
    const uint64_t r = at % GW_ALIGN;
    if (r)
        gw_bytes(w, zeros, (size_t)(GW_ALIGN - r));
}

/* key-value helpers (value types as in enum eng_gguf_vtype) */
static void kv_u32(struct gw *w, const char *k, uint32_t v)
{
    gw_str(w, k, strlen(k));
    gw_u32(w, GGUF_VT_U32);
    gw_u32(w, v);
}

static void kv_f32(struct gw *w, const char *k, float v)
{
    gw_str(w, k, strlen(k));
    gw_u32(w, GGUF_VT_F32);
    gw_f32(w, v);
}

static void kv_string(struct gw *w, const char *k, const char *v)
{
    gw_str(w, k, strlen(k));
    gw_u32(w, GGUF_VT_STRING);
    gw_str(w, v, strlen(v));
}

static void kv_bool(struct gw *w, const char *k, int v)
{
    uint8_t b = v ? 1 : 0;
    gw_str(w, k, strlen(k));
    gw_u32(w, GGUF_VT_BOOL);
    gw_bytes(w, &b, 1);
}

static void gw_tensor_infos(struct gw *w, const struct gw_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        gw_str(w, t[i].name, strlen(t[i].name));
        gw_u32(w, (uint32_t)t[i].n_dims);
        for (int d = 0; d < t[i].n_dims; d++)
            gw_u64(w, (uint64_t)t[i].ne[d]);
        gw_u32(w, t[i].type);
        gw_u64(w, t[i].offset);
    }
}

/* Assign data offsets (each tensor aligned); returns the data section size. */
static uint64_t gw_layout(struct gw_tensor *t, size_t n)
{
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        off = (off + GW_ALIGN - 1) / GW_ALIGN * GW_ALIGN;
        t[i].offset = off;
        off += t[i].n_bytes;
    }
    return off;
}

/* ---- generated weights ------------------------------------------------------------------------ */

struct shape {
    const char *name;
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_base;
};

static const struct shape k_shapes[] = {
    {"llama3-8b", 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0f},
    {"smollm2-135m", 30, 576, 9, 3, 1536, 49152, 8192, 100000.0f},
};

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fill n_bytes of a matrix of `type` with random blocks whose values have roughly standard
 * deviation `sd`. Block-quantised types get a fixed scale per block and random codes. */
static void fill_matrix(uint8_t *p, uint32_t type, size_t n_bytes, float sd, uint64_t *seed)
{
    size_t i = 0;
    if (type == GGML_T_Q4_1) { /* 20-byte blocks: d, m (fp16), 16 bytes of nibbles */
        const uint16_t d = krn_f32_to_fp16(sd / 4.6f), m = krn_f32_to_fp16(-7.5f * sd / 4.6f);
        for (; i + 20 <= n_bytes; i += 20) {
            p[i] = (uint8_t)d, p[i + 1] = (uint8_t)(d >> 8);
            p[i + 2] = (uint8_t)m, p[i + 3] = (uint8_t)(m >> 8);
            const uint64_t a = rng_next(seed), b = rng_next(seed);
            memcpy(p + i + 4, &a, 8);
            memcpy(p + i + 12, &b, 8);
        }
    } else if (type == GGML_T_Q8_0) { /* 34-byte blocks: d (fp16), 32 int8 */
        const uint16_t d = krn_f32_to_fp16(sd / 73.0f);
        for (; i + 34 <= n_bytes; i += 34) {
            p[i] = (uint8_t)d, p[i + 1] = (uint8_t)(d >> 8);
            for (int j = 0; j < 32; j += 8) {
                const uint64_t a = rng_next(seed);
                memcpy(p + i + 2 + j, &a, 8);
            }
        }
    } else { /* F16: uniform in [-sqrt(3) sd, sqrt(3) sd] */
        for (; i + 2 <= n_bytes; i += 2) {
            const float u = (float)(rng_next(seed) >> 40) / (float)(1ull << 24) * 2.0f - 1.0f;
            const uint16_t h = krn_f32_to_fp16(u * 1.7320508f * sd);
            p[i] = (uint8_t)h, p[i + 1] = (uint8_t)(h >> 8);
        }
    }
}

static int write_synth(const struct shape *s, uint32_t type, int n_layer, int n_vocab,
                       uint64_t seed, const char *out)
{
    int rc = 0;
    struct gw w = {0};
    struct gw_tensor *t = calloc(GW_MAX_TENSORS, sizeof(*t));
    uint8_t *buf = NULL;
    size_t nt = 0, buf_n = 0;
    if (!t)
        return S3_ENOMEM;
    const int d = s->n_embd, hd = s->n_embd / s->n_head;
    const int dkv = s->n_head_kv * hd;
#define ADD(nm_fmt, idx, ty, e0, e1)                                                               \
    do {                                                                                       \
        snprintf(t[nt].name, sizeof(t[nt].name), nm_fmt, idx);                                 \
        t[nt].type = (ty), t[nt].ne[0] = (e0), t[nt].ne[1] = (e1);                            \
        t[nt].n_dims = (e1) > 1 ? 2 : 1;                                                       \
        t[nt].n_bytes = krn_type_row_bytes((ty), (e0)) * (size_t)(e1);                        \
        nt++;                                                                                  \
    } while (0)
    ADD("token_embd.weight%.0d", 0, type, d, n_vocab);
    ADD("output_norm.weight%.0d", 0, GGML_T_F32, d, 1);
    ADD("output.weight%.0d", 0, type, d, n_vocab);
    for (int il = 0; il < n_layer; il++) {
        ADD("blk.%d.attn_norm.weight", il, GGML_T_F32, d, 1);
        ADD("blk.%d.ffn_norm.weight", il, GGML_T_F32, d, 1);
        ADD("blk.%d.attn_q.weight", il, type, d, d);
        ADD("blk.%d.attn_k.weight", il, type, d, dkv);
        ADD("blk.%d.attn_v.weight", il, type, d, dkv);
        ADD("blk.%d.attn_output.weight", il, type, d, d);
        ADD("blk.%d.ffn_gate.weight", il, type, d, s->n_ff);
        ADD("blk.%d.ffn_up.weight", il, type, d, s->n_ff);
        ADD("blk.%d.ffn_down.weight", il, type, s->n_ff, d);
    }
#undef ADD
    for (size_t i = 0; i < nt; i++)
        if (t[i].n_bytes == 0) {
            rc = S3_EINVAL;
            goto out;
        }
    gw_layout(t, nt);
    w.f = fopen(out, "wb");
    if (!w.f) {
        rc = S3_EIO;
        goto out;
    }
    gw_bytes(&w, "GGUF", 4);
    gw_u32(&w, 3);
    gw_u64(&w, nt);
    gw_u64(&w, 19);
    kv_string(&w, "general.architecture", "llama");
    kv_string(&w, "general.name", s->name);
    kv_u32(&w, "general.alignment", GW_ALIGN);
    kv_u32(&w, "llama.block_count", (uint32_t)n_layer);
    kv_u32(&w, "llama.context_length", (uint32_t)s->n_ctx);
    kv_u32(&w, "llama.embedding_length", (uint32_t)d);
    kv_u32(&w, "llama.feed_forward_length", (uint32_t)s->n_ff);
    kv_u32(&w, "llama.attention.head_count", (uint32_t)s->n_head);
    kv_u32(&w, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv);
    kv_f32(&w, "llama.rope.freq_base", s->rope_base);
    kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_string(&w, "tokenizer.ggml.model", "gpt2");
    kv_string(&w, "tokenizer.ggml.pre", "");
    /* tokens: "t0".."t{V-1}" */
    gw_str(&w, "tokenizer.ggml.tokens", strlen("tokenizer.ggml.tokens"));
    gw_u32(&w, GGUF_VT_ARRAY);
    gw_u32(&w, GGUF_VT_STRING);
    gw_u64(&w, (uint64_t)n_vocab);
    for (int i = 0; i < n_vocab; i++) {
        char tok[16];
        const int n = snprintf(tok, sizeof(tok), "t%d", i);
        gw_str(&w, tok, (size_t)n);
    }
    gw_str(&w, "tokenizer.ggml.merges", strlen("tokenizer.ggml.merges"));
    gw_u32(&w, GGUF_VT_ARRAY);
    gw_u32(&w, GGUF_VT_STRING);
    gw_u64(&w, 0);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 0);
    kv_u32(&w, "tokenizer.ggml.eos_token_id", 1);
    kv_bool(&w, "tokenizer.ggml.add_bos_token", 0);
    kv_string(&w, "general.description", "generated weights (s3serve gguf-synth)");
    gw_tensor_infos(&w, t, nt);
    if (w.rc < 0) {
        rc = w.rc;
        goto out;
    }
    long here = ftell(w.f);
    if (here < 0) {
        rc = S3_EIO;
        goto out;
    }
    gw_pad(&w, (uint64_t)here);
    uint64_t at = 0;
    for (size_t i = 0; i < nt && w.rc == 0; i++) {
        gw_pad(&w, at);
        at = t[i].offset;
        if (t[i].n_bytes > buf_n) {
            free(buf);
            buf_n = t[i].n_bytes;
            buf = malloc(buf_n);
            if (!buf) {
                rc = S3_ENOMEM;
                goto out;
            }
        }
        if (t[i].type == GGML_T_F32) { /* norm weights: ones */
            const float one = 1.0f;
            for (size_t j = 0; j < t[i].n_bytes / 4; j++)
                memcpy(buf + 4 * j, &one, 4);
        } else {
            /* 1/sqrt(fan_in): keeps every projection's output at the input's scale */
            float sd = 1.0f / sqrtf((float)t[i].ne[0]);
            if (strcmp(t[i].name, "token_embd.weight") == 0)
                sd = 1.0f;
            fill_matrix(buf, t[i].type, t[i].n_bytes, sd, &seed);
        }
        gw_bytes(&w, buf, t[i].n_bytes);
        at += t[i].n_bytes;
    }
    rc = w.rc;
out:
    if (w.f && fclose(w.f) != 0 && rc == 0)
        rc = S3_EIO;
    free(buf);
    free(t);
    return rc;
}

/* ---- layer slice of a real file ----------------------------------------------------------------- */

static size_t scalar_bytes(uint32_t vt)
{
    switch (vt) {
    case GGUF_VT_U8: case GGUF_VT_I8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_U16: case GGUF_VT_I16: return 2;
    case GGUF_VT_U32: case GGUF_VT_I32: case GGUF_VT_F32: return 4;
    case GGUF_VT_U64: case GGUF_VT_I64: case GGUF_VT_F64: return 8;
    default: return 0;
    }
}

/* Write one KV value (type tag included) copied from the source mapping. */
static void copy_kv_value(struct gw *w, const struct eng_gguf_kv *kv)
{
    gw_u32(w, kv->type);
    if (kv->type == GGUF_VT_STRING) {
        struct eng_gguf_str s;
        uint64_t n;
        memcpy(&n, kv->data, 8);
        s.ptr = (const char *)kv->data + 8;
        s.len = n;
        gw_str(w, s.ptr, (size_t)s.len);
    } else if (kv->type == GGUF_VT_ARRAY) {
        gw_u32(w, kv->arr_type);
        gw_u64(w, kv->arr_n);
        if (kv->arr_type == GGUF_VT_STRING) {
            for (uint64_t i = 0; i < kv->arr_n; i++)
                gw_str(w, kv->strs[i].ptr, (size_t)kv->strs[i].len);
        } else {
            const size_t eb = scalar_bytes(kv->arr_type);
            if (eb == 0)
                w->rc = S3_EFORMAT; /* nested arrays are not written by llama.cpp's tools */
            else
                gw_bytes(w, kv->data, eb * (size_t)kv->arr_n);
        }
    } else {
        const size_t eb = scalar_bytes(kv->type);
        if (eb == 0)
            w->rc = S3_EFORMAT;
        else
            gw_bytes(w, kv->data, eb);
    }
}

static int keep_tensor(const char *name, int n_keep)
{
    if (strncmp(name, "blk.", 4) != 0)
        return 1;
    return atol(name + 4) < n_keep;
}

static int write_slice(const char *in, int n_keep, const char *out, struct s3_errinfo *err)
{
    struct eng_gguf *g = NULL;
    struct gw w = {0};
    struct gw_tensor *t = NULL;
    const struct eng_gguf_tensor **src = NULL;
    size_t nt = 0;
    char bc_key[96] = "";
    int rc = eng_gguf_open(in, &g, err);
    if (rc < 0)
        return rc;
    struct eng_gguf_str arch;
    if (eng_gguf_get_str(g, "general.architecture", &arch) < 0 || arch.len > 48) {
        rc = s3_errf(err, S3_EFORMAT, "gguf-synth: %s has no architecture", in);
        goto out;
    }
    snprintf(bc_key, sizeof(bc_key), "%.*s.block_count", (int)arch.len, arch.ptr);
    uint32_t n_layer = 0;
    if (eng_gguf_get_u32(g, bc_key, &n_layer) < 0 || n_keep < 1 || (uint32_t)n_keep > n_layer) {
        rc = s3_errf(err, S3_EINVAL, "gguf-synth: --slice %d out of range (model has %u layers)",
                     n_keep, n_layer);
        goto out;
    }
    const size_t n_all = eng_gguf_n_tensors(g);
    t = calloc(n_all ? n_all : 1, sizeof(*t));
    src = calloc(n_all ? n_all : 1, sizeof(*src));
    if (!t || !src) {
        rc = s3_errf(err, S3_ENOMEM, "gguf-synth: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_all; i++) {
        const struct eng_gguf_tensor *s = eng_gguf_tensor_at(g, i);
        if (!keep_tensor(s->name, n_keep))
            continue;
        snprintf(t[nt].name, sizeof(t[nt].name), "%s", s->name);
        t[nt].type = s->type;
        t[nt].n_dims = s->n_dims < 2 ? s->n_dims : 2;
        t[nt].ne[0] = s->ne[0];
        t[nt].ne[1] = s->ne[1];
        if (s->n_dims > 2 || s->ne[2] != 1 || s->ne[3] != 1) {
            rc = s3_errf(err, S3_EFORMAT, "gguf-synth: tensor %s has more than 2 dims", s->name);
            goto out;
        }
        t[nt].n_bytes = s->n_bytes;
        src[nt] = s;
        nt++;
    }
    gw_layout(t, nt);
    w.f = fopen(out, "wb");
    if (!w.f) {
        rc = s3_errf(err, S3_EIO, "gguf-synth: cannot create %s", out);
        goto out;
    }
    const size_t n_kv = eng_gguf_n_kv(g);
    int has_align = 0;
    for (size_t i = 0; i < n_kv; i++) {
        const struct eng_gguf_kv *kv = eng_gguf_kv_at(g, i);
        if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0)
            has_align = 1;
    }
    gw_bytes(&w, "GGUF", 4);
    gw_u32(&w, 3);
    gw_u64(&w, nt);
    gw_u64(&w, n_kv + (has_align ? 0 : 1));
    for (size_t i = 0; i < n_kv; i++) {
        const struct eng_gguf_kv *kv = eng_gguf_kv_at(g, i);
        gw_str(&w, kv->key.ptr, (size_t)kv->key.len);
        if (kv->key.len == strlen(bc_key) && memcmp(kv->key.ptr, bc_key, kv->key.len) == 0) {
            gw_u32(&w, GGUF_VT_U32);
            gw_u32(&w, (uint32_t)n_keep);
        } else if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0) {
            gw_u32(&w, GGUF_VT_U32);
            gw_u32(&w, GW_ALIGN);
        } else {
            copy_kv_value(&w, kv);
        }
    }
    if (!has_align)
        kv_u32(&w, "general.alignment", GW_ALIGN);
    gw_tensor_infos(&w, t, nt);
    long here = w.rc == 0 ? ftell(w.f) : -1;
    if (here < 0) {
        rc = s3_errf(err, w.rc < 0 ? w.rc : S3_EIO, "gguf-synth: cannot write %s", out);
        goto out;
    }
    gw_pad(&w, (uint64_t)here);
    uint64_t at = 0;
    for (size_t i = 0; i < nt; i++) {
        gw_pad(&w, at);
        gw_bytes(&w, src[i]->data, t[i].n_bytes);
        at = t[i].offset + t[i].n_bytes;
    }
    if (w.rc < 0)
        rc = s3_errf(err, w.rc, "gguf-synth: cannot write %s", out);
out:
    if (w.f && fclose(w.f) != 0 && rc == 0)
        rc = s3_errf(err, S3_EIO, "gguf-synth: cannot write %s", out);
    free(t);
    free(src);
    eng_gguf_close(g);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: s3serve gguf-synth --shape llama3-8b|smollm2-135m --out F\n"
               "                          [--type q4_1|q8_0|f16] [--layers N] [--vocab V]"
               " [--seed S]\n"
               "       s3serve gguf-synth --slice N [--model IN] --out F\n");
}

int cli_gguf_synth(int argc, char **argv)
{
    const char *shape = NULL, *out = NULL, *model = NULL, *type_s = "q4_1";
    long layers = -1, vocab = -1, slice = -1;
    unsigned long long seed = 1;
    static const struct option lopts[] = {
        {"shape", required_argument, 0, 's'}, {"out", required_argument, 0, 'o'},
        {"type", required_argument, 0, 't'},  {"layers", required_argument, 0, 'l'},
        {"vocab", required_argument, 0, 'v'}, {"seed", required_argument, 0, 'e'},
        {"slice", required_argument, 0, 'n'}, {"model", required_argument, 0, 'm'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case 's': shape = optarg; break;
        case 'o': out = optarg; break;
        case 't': type_s = optarg; break;
        case 'l': layers = strtol(optarg, NULL, 10); break;
        case 'v': vocab = strtol(optarg, NULL, 10); break;
        case 'e': seed = strtoull(optarg, NULL, 10); break;
        case 'n': slice = strtol(optarg, NULL, 10); break;
        case 'm': model = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!out || (!shape && slice < 0)) {
        usage(stderr);
        return 2;
    }
    struct s3_errinfo err = {0};
    int rc;
    if (slice >= 0) {
        rc = write_slice(model ? model : cli_default_model(), (int)slice, out, &err);
    } else {
        const struct shape *s = NULL;
        for (size_t i = 0; i < sizeof(k_shapes) / sizeof(k_shapes[0]); i++)
            if (strcmp(k_shapes[i].name, shape) == 0)
                s = &k_shapes[i];
        uint32_t type = strcmp(type_s, "q8_0") == 0   ? GGML_T_Q8_0
                        : strcmp(type_s, "f16") == 0  ? GGML_T_F16
                        : strcmp(type_s, "q4_1") == 0 ? GGML_T_Q4_1
                                                      : 0;
        if (!s || !type || layers == 0 || layers > 512 || vocab == 0 || vocab > (1 << 24)) {
            fprintf(stderr, "gguf-synth: unknown shape or type, or bad --layers/--vocab\n");
            return 2;
        }
        rc = write_synth(s, type, layers > 0 ? (int)layers : s->n_layer,
                         vocab > 0 ? (int)vocab : s->n_vocab, seed, out);
        if (rc < 0)
            s3_errf(&err, rc, "gguf-synth: cannot write %s", out);
    }
    if (rc < 0) {
        fprintf(stderr, "%s (%s)\n", err.msg, s3_strerror(rc));
        return 1;
    }
    return 0;
}
