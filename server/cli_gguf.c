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
 * Files are written by the engine's GGUF writer (engine/gguf.h) as v3 with 32-byte alignment. */
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

struct synth_fill {
    const char *const *names; /* (n_tensors) */
    const int64_t *ne0;       /* (n_tensors) fan-in of each matrix */
    const uint32_t *types;    /* (n_tensors) */
    uint64_t seed;
};

/* eng_gguf_fill_fn: norm weights are ones, matrices random blocks */
static int synth_fill(void *ud, size_t i, void *buf, size_t n_bytes)
{
    struct synth_fill *f = ud;
    uint8_t *p = buf;
    if (f->types[i] == GGML_T_F32) {
        const float one = 1.0f;
        for (size_t j = 0; j < n_bytes / 4; j++)
            memcpy(p + 4 * j, &one, 4);
    } else {
        /* 1/sqrt(fan_in): keeps every projection's output at the input's scale */
        float sd = 1.0f / sqrtf((float)f->ne0[i]);
        if (strcmp(f->names[i], "token_embd.weight") == 0)
            sd = 1.0f;
        fill_matrix(p, f->types[i], n_bytes, sd, &f->seed);
    }
    return 0;
}

static int write_synth(const struct shape *s, uint32_t type, int n_layer, int n_vocab,
                       uint64_t seed, const char *out)
{
    int rc = 0;
    struct eng_gguf_writer *w = NULL;
    const size_t n_t = 3 + 9 * (size_t)n_layer;
    char (*names)[96] = calloc(n_t, sizeof(*names));
    const char **name_p = calloc(n_t, sizeof(*name_p));
    int64_t *ne0 = calloc(n_t, sizeof(*ne0));
    uint32_t *types = calloc(n_t, sizeof(*types));
    char (*toks)[16] = calloc((size_t)n_vocab, sizeof(*toks));
    const char **tok_p = calloc((size_t)n_vocab, sizeof(*tok_p));
    size_t nt = 0;
    if (!names || !name_p || !ne0 || !types || !toks || !tok_p ||
        eng_gguf_writer_new(&w) < 0) {
        rc = S3_ENOMEM;
        goto out;
    }
    const int d = s->n_embd, hd = s->n_embd / s->n_head;
    const int dkv = s->n_head_kv * hd;
    eng_gguf_writer_add_str(w, "general.architecture", "llama");
    eng_gguf_writer_add_str(w, "general.name", s->name);
    eng_gguf_writer_add_u32(w, "general.alignment", GW_ALIGN);
    eng_gguf_writer_add_u32(w, "llama.block_count", (uint32_t)n_layer);
    eng_gguf_writer_add_u32(w, "llama.context_length", (uint32_t)s->n_ctx);
    eng_gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)d);
    eng_gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)s->n_ff);
    eng_gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)s->n_head);
    eng_gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv);
    eng_gguf_writer_add_f32(w, "llama.rope.freq_base", s->rope_base);
    eng_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    eng_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    eng_gguf_writer_add_str(w, "tokenizer.ggml.pre", "");
    for (int i = 0; i < n_vocab; i++) { /* tokens: "t0".."t{V-1}" */
        snprintf(toks[i], sizeof(toks[i]), "t%d", i);
        tok_p[i] = toks[i];
    }
    eng_gguf_writer_add_strs(w, "tokenizer.ggml.tokens", tok_p, (size_t)n_vocab);
    eng_gguf_writer_add_strs(w, "tokenizer.ggml.merges", NULL, 0);
    eng_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0);
    eng_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 1);
    eng_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 0);
    eng_gguf_writer_add_str(w, "general.description", "generated weights (s3serve gguf-synth)");
#define ADD(nm_fmt, idx, ty, e0, e1)                                                               \
    do {                                                                                       \
        const int64_t ne_[2] = {(e0), (e1)};                                                   \
        snprintf(names[nt], sizeof(names[nt]), nm_fmt, idx);                                   \
        name_p[nt] = names[nt], ne0[nt] = (e0), types[nt] = (ty);                              \
        eng_gguf_writer_add_tensor(w, names[nt], (ty), (e1) > 1 ? 2 : 1, ne_, NULL);           \
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
    struct synth_fill f = {name_p, ne0, types, seed};
    rc = eng_gguf_writer_write_file(w, out, synth_fill, &f);
out:
    eng_gguf_writer_free(w);
    free(names);
    free(name_p);
    free(ne0);
    free(types);
    free(toks);
    free(tok_p);
    return rc;
}

/* ---- layer slice of a real file ----------------------------------------------------------------- */

static int keep_tensor(const char *name, int n_keep)
{
    if (strncmp(name, "blk.", 4) != 0)
        return 1;
    return atol(name + 4) < n_keep;
}

static int write_slice(const char *in, int n_keep, const char *out, struct s3_errinfo *err)
{
    struct eng_gguf *g = NULL;
    struct eng_gguf_writer *w = NULL;
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
    if (eng_gguf_writer_new(&w) < 0) {
        rc = s3_errf(err, S3_ENOMEM, "gguf-synth: out of memory");
        goto out;
    }
    const size_t n_kv = eng_gguf_n_kv(g);
    int has_align = 0;
    for (size_t i = 0; i < n_kv; i++) {
        const struct eng_gguf_kv *kv = eng_gguf_kv_at(g, i);
        if (kv->key.len == strlen(bc_key) && memcmp(kv->key.ptr, bc_key, kv->key.len) == 0) {
            eng_gguf_writer_add_u32(w, bc_key, (uint32_t)n_keep);
        } else if (kv->key.len == 17 && memcmp(kv->key.ptr, "general.alignment", 17) == 0) {
            eng_gguf_writer_add_u32(w, "general.alignment", GW_ALIGN);
            has_align = 1;
        } else {
            eng_gguf_writer_add_kv_copy(w, kv);
        }
    }
    if (!has_align)
        eng_gguf_writer_add_u32(w, "general.alignment", GW_ALIGN);
    const size_t n_all = eng_gguf_n_tensors(g);
    for (size_t i = 0; i < n_all; i++) {
        const struct eng_gguf_tensor *s = eng_gguf_tensor_at(g, i);
        if (!keep_tensor(s->name, n_keep))
            continue;
        if (s->n_dims > 2 || s->ne[2] != 1 || s->ne[3] != 1) {
            rc = s3_errf(err, S3_EFORMAT, "gguf-synth: tensor %s has more than 2 dims", s->name);
            goto out;
        }
        eng_gguf_writer_add_tensor(w, s->name, s->type, s->n_dims, s->ne, s->data);
    }
    rc = eng_gguf_writer_write_file(w, out, NULL, NULL);
    if (rc < 0)
        rc = s3_errf(err, rc, "gguf-synth: cannot write %s", out);
out:
    eng_gguf_writer_free(w);
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
