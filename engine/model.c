/* engine/model.c - load a Llama-family GGUF model: hyperparameters from "<arch>.*" keys,
 * tensors checked by name, type and shape, matrices repacked for the quantised kernels
 * (kernels.h), small vectors copied to f32. The tokenizer is built from the same file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* Architectures with the plain Llama block (optional q/k/v biases) and their rotary layout,
 * following llama.cpp (llama-model.cpp, llama_model_rope_type). */
static const struct {
    const char *arch;
    int rope_type;
} k_archs[] = {
    {"llama", ENG_ROPE_NORM},
    {"mistral", ENG_ROPE_NORM},
    {"granite", ENG_ROPE_NORM},
    {"qwen2", ENG_ROPE_NEOX},
};

struct loader {
    struct eng_gguf *g;
    struct s3_errinfo *err;
    char arch[32];
};

static int key_u32(struct loader *L, const char *suffix, int required, uint32_t def, int *out)
{
    char key[128];
    uint32_t v = def;
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    int rc = eng_gguf_get_u32(L->g, key, &v);
    if (rc == S3_ENOTFOUND && !required)
        rc = 0, v = def;
    if (rc < 0)
        return s3_errf(L->err, rc == S3_ENOTFOUND ? S3_EFORMAT : rc, "model: key %s %s", key,
                       rc == S3_ENOTFOUND ? "missing" : "has a bad type");
    if (v > (1u << 30))
        return s3_errf(L->err, S3_EFORMAT, "model: key %s out of range (%u)", key, v);
    *out = (int)v;
    return 0;
}

static int key_f32(struct loader *L, const char *suffix, float def, float *out)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    int rc = eng_gguf_get_f32(L->g, key, out);
    if (rc == S3_ENOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc < 0 || !isfinite(*out))
        return s3_errf(L->err, S3_EFORMAT, "model: key %s has a bad type or value", key);
    return 0;
}

static void shape_str(const struct eng_gguf_tensor *t, char *buf, size_t n)
{
    snprintf(buf, n, "[%lld, %lld]", (long long)t->ne[0], (long long)t->ne[1]);
}

/* Find a tensor and check its shape (ne1 = 1 for vectors). required = 0 allows absence. */
static int tensor_get(struct loader *L, const char *name, int64_t ne0, int64_t ne1, int required,
                      const struct eng_gguf_tensor **out)
{
    *out = NULL;
    const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(L->g, name);
    if (!t) {
        if (!required)
            return 0;
        return s3_errf(L->err, S3_EFORMAT, "model: tensor %s missing (expected [%lld, %lld])",
                       name, (long long)ne0, (long long)ne1);
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        char s[64];
        shape_str(t, s, sizeof(s));
        return s3_errf(L->err, S3_EFORMAT, "model: tensor %s has shape %s, expected [%lld, %lld]",
                       name, s, (long long)ne0, (long long)ne1);
    }
    if (!krn_type_supported(t->type) ||
        t->n_bytes < krn_type_row_bytes(t->type, ne0) * (size_t)ne1)
        return s3_errf(L->err, S3_EFORMAT, "model: tensor %s has unsupported type %s", name,
                       eng_ggml_type_name(t->type));
    *out = t;
    return 0;
}

/* A vector tensor as a new f32 array (NULL when optional and absent). */
static int vec_load(struct loader *L, const char *name, int64_t n, int required, float **out)
{
    const struct eng_gguf_tensor *t;
    *out = NULL;
    int rc = tensor_get(L, name, n, 1, required, &t);
    if (rc < 0 || !t)
        return rc;
    float *v = malloc((size_t)n * sizeof(float));
    if (!v)
        return s3_errf(L->err, S3_ENOMEM, "model: out of memory");
    rc = krn_dequant(t->type, t->data, v, n);
    if (rc < 0) {
        free(v);
        return s3_errf(L->err, S3_EFORMAT, "model: tensor %s: cannot convert type %s", name,
                       eng_ggml_type_name(t->type));
    }
    *out = v;
    return 0;
}

static int mat_load(struct loader *L, const char *name, int64_t n_in, int64_t n_out,
                    struct krn_qmat *w)
{
    const struct eng_gguf_tensor *t;
    int rc = tensor_get(L, name, n_in, n_out, 1, &t);
    if (rc < 0)
        return rc;
    rc = krn_qmat_init(w, t->type, t->data, (int)n_out, (int)n_in);
    if (rc < 0)
        return s3_errf(L->err, rc, "model: tensor %s (%s): cannot repack (%s)", name,
                       eng_ggml_type_name(t->type), s3_strerror(rc));
    return 0;
}

/* llama3-style frequency divisors, when the file has the factor keys but no rope_freqs. */
static void llama3_factors(float *ff, int n, float base, int n_rot, float factor, float lo,
                           float hi, int orig_ctx)
{
    const float lo_wavelen = (float)orig_ctx / lo, hi_wavelen = (float)orig_ctx / hi;
    for (int i = 0; i < n; i++) {
        const float freq = powf(base, -2.0f * (float)i / (float)n_rot);
        const float wavelen = 2.0f * (float)M_PI / freq;
        if (wavelen < hi_wavelen) {
            ff[i] = 1.0f;
        } else if (wavelen > lo_wavelen) {
            ff[i] = factor;
        } else {
            const float smooth = ((float)orig_ctx / wavelen - lo) / (hi - lo);
            ff[i] = 1.0f / ((1.0f - smooth) / factor + smooth);
        }
    }
}

static int load_hparams(struct loader *L, struct eng_model *m)
{
    struct eng_hparams *hp = &m->hp;
    struct eng_gguf_str s;
    int rc = eng_gguf_get_str(L->g, "general.architecture", &s);
    if (rc < 0)
        return s3_errf(L->err, S3_EFORMAT, "model: general.architecture missing");
    if (s.len == 0 || s.len >= sizeof(L->arch))
        return s3_errf(L->err, S3_EFORMAT, "model: bad architecture name");
    memcpy(L->arch, s.ptr, s.len);
    L->arch[s.len] = '\0';
    snprintf(hp->arch, sizeof(hp->arch), "%s", L->arch);
    int found = 0;
    for (size_t i = 0; i < sizeof(k_archs) / sizeof(k_archs[0]); i++)
        if (strcmp(k_archs[i].arch, L->arch) == 0) {
            hp->rope_type = k_archs[i].rope_type;
            found = 1;
        }
    if (!found)
        return s3_errf(L->err, S3_EFORMAT, "model: unsupported architecture '%s'", L->arch);
    if ((rc = key_u32(L, "block_count", 1, 0, &hp->n_layer)) < 0 ||
        (rc = key_u32(L, "embedding_length", 1, 0, &hp->n_embd)) < 0 ||
        (rc = key_u32(L, "feed_forward_length", 1, 0, &hp->n_ff)) < 0 ||
        (rc = key_u32(L, "attention.head_count", 1, 0, &hp->n_head)) < 0 ||
        (rc = key_u32(L, "context_length", 0, 2048, &hp->n_ctx_train)) < 0)
        return rc;
    if ((rc = key_u32(L, "attention.head_count_kv", 0, (uint32_t)hp->n_head, &hp->n_head_kv)) < 0)
        return rc;
    if (hp->n_layer < 1 || hp->n_layer > 512 || hp->n_embd < 32 || hp->n_head < 1 ||
        hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv != 0 || hp->n_embd % hp->n_head != 0 ||
        hp->n_ff < 32 || hp->n_ctx_train < 1)
        return s3_errf(L->err, S3_EFORMAT,
                       "model: inconsistent hyperparameters (layers %d, embd %d, heads %d/%d, "
                       "ff %d)", hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_ff);
    if ((rc = key_u32(L, "attention.key_length", 0, (uint32_t)(hp->n_embd / hp->n_head),
                      &hp->head_dim)) < 0 ||
        (rc = key_u32(L, "rope.dimension_count", 0, (uint32_t)hp->head_dim, &m->n_rot)) < 0)
        return rc;
    if (hp->head_dim < 2 || hp->head_dim % 32 != 0 || m->n_rot > hp->head_dim || m->n_rot % 2)
        return s3_errf(L->err, S3_EFORMAT, "model: head_dim %d / rope dims %d not supported",
                       hp->head_dim, m->n_rot);
    if ((rc = key_f32(L, "rope.freq_base", 10000.0f, &hp->rope_base)) < 0 ||
        (rc = key_f32(L, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps)) < 0 ||
        (rc = key_f32(L, "rope.scaling.factor", 0.0f, &hp->rope_scale_factor)) < 0 ||
        (rc = key_f32(L, "rope.scaling.low_freq_factor", 1.0f, &hp->rope_low_freq_factor)) < 0 ||
        (rc = key_f32(L, "rope.scaling.high_freq_factor", 4.0f, &hp->rope_high_freq_factor)) < 0 ||
        (rc = key_u32(L, "rope.scaling.original_context_length", 0, 8192, &hp->rope_orig_ctx)) < 0)
        return rc;
    if (hp->rope_base <= 0.0f || hp->rms_eps <= 0.0f)
        return s3_errf(L->err, S3_EFORMAT, "model: bad rope base or rms eps");
    return 0;
}

static int load_rope_freqs(struct loader *L, struct eng_model *m)
{
    const struct eng_hparams *hp = &m->hp;
    const int n = m->n_rot / 2;
    int rc = vec_load(L, "rope_freqs.weight", n, 0, &m->rope_ff);
    if (rc < 0 || m->rope_ff)
        return rc;
    char key[128];
    struct eng_gguf_str type = {0};
    snprintf(key, sizeof(key), "%s.rope.scaling.type", L->arch);
    eng_gguf_get_str(L->g, key, &type);
    const int is_linear = type.len == 6 && memcmp(type.ptr, "linear", 6) == 0;
    const int is_llama3 = type.len == 6 && memcmp(type.ptr, "llama3", 6) == 0;
    if (hp->rope_scale_factor <= 1.0f || !(is_linear || is_llama3))
        return 0; /* no scaling (yarn and others are not supported: ignored) */
    m->rope_ff = malloc((size_t)n * sizeof(float));
    if (!m->rope_ff)
        return s3_errf(L->err, S3_ENOMEM, "model: out of memory");
    if (is_linear) {
        for (int i = 0; i < n; i++)
            m->rope_ff[i] = hp->rope_scale_factor;
    } else {
        llama3_factors(m->rope_ff, n, hp->rope_base, m->n_rot, hp->rope_scale_factor,
                       hp->rope_low_freq_factor, hp->rope_high_freq_factor, hp->rope_orig_ctx);
    }
    return 0;
}

static int load_layer(struct loader *L, struct eng_model *m, int il)
{
    const struct eng_hparams *hp = &m->hp;
    struct eng_layer *ly = &m->layers[il];
    const int64_t d = hp->n_embd, dq = (int64_t)hp->n_head * hp->head_dim,
                  dkv = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
    char name[96];
    int rc;
#define TN(suffix) (snprintf(name, sizeof(name), "blk.%d.%s", il, suffix), name)
    if ((rc = vec_load(L, TN("attn_norm.weight"), d, 1, &ly->attn_norm)) < 0 ||
        (rc = vec_load(L, TN("ffn_norm.weight"), d, 1, &ly->ffn_norm)) < 0 ||
        (rc = vec_load(L, TN("attn_q.bias"), dq, 0, &ly->bq)) < 0 ||
        (rc = vec_load(L, TN("attn_k.bias"), dkv, 0, &ly->bk)) < 0 ||
        (rc = vec_load(L, TN("attn_v.bias"), dkv, 0, &ly->bv)) < 0 ||
        (rc = mat_load(L, TN("attn_q.weight"), d, dq, &ly->wq)) < 0 ||
        (rc = mat_load(L, TN("attn_k.weight"), d, dkv, &ly->wk)) < 0 ||
        (rc = mat_load(L, TN("attn_v.weight"), d, dkv, &ly->wv)) < 0 ||
        (rc = mat_load(L, TN("attn_output.weight"), dq, d, &ly->wo)) < 0 ||
        (rc = mat_load(L, TN("ffn_gate.weight"), d, ff, &ly->w_gate)) < 0 ||
        (rc = mat_load(L, TN("ffn_up.weight"), d, ff, &ly->w_up)) < 0 ||
        (rc = mat_load(L, TN("ffn_down.weight"), ff, d, &ly->w_down)) < 0)
        return rc;
#undef TN
    m->weight_bytes += krn_qmat_bytes(&ly->wq) + krn_qmat_bytes(&ly->wk) +
                       krn_qmat_bytes(&ly->wv) + krn_qmat_bytes(&ly->wo) +
                       krn_qmat_bytes(&ly->w_gate) + krn_qmat_bytes(&ly->w_up) +
                       krn_qmat_bytes(&ly->w_down);
    return 0;
}

int eng_model_load(const char *path, const struct eng_model_opts *opts, struct eng_model **out,
                   struct s3_errinfo *err)
{
    int rc = 0;
    struct eng_model *m = NULL;
    struct loader L = {.err = err};
    *out = NULL;
    if (!path)
        return s3_errf(err, S3_EINVAL, "model: no path");
    const int want_cuda = opts && opts->device && strcmp(opts->device, "cuda") == 0;
    const int cpu_f32 = opts && opts->device && strcmp(opts->device, "cpu-f32") == 0;
    if (opts && opts->device && strcmp(opts->device, "cpu") != 0 && !want_cuda && !cpu_f32)
        return s3_errf(err, S3_EINVAL, "model: unknown device '%s' (use cpu, cpu-f32 or cuda)",
                       opts->device);
    if (want_cuda && !eng__cuda_available())
        return s3_errf(err, S3_EDEVICE,
                       "model: device cuda requested but no CUDA GPU is available (or this "
                       "build has no CUDA backend; configure with -DS3_CUDA=ON)");
    m = calloc(1, sizeof(*m));
    if (!m)
        return s3_errf(err, S3_ENOMEM, "model: out of memory");
    m->n_threads = opts && opts->n_threads > 0 ? opts->n_threads : krn_n_cpus();
    m->f32_act = cpu_f32;
    if ((rc = eng_gguf_open(path, &m->g, err)) < 0)
        goto out;
    L.g = m->g;
    if ((rc = load_hparams(&L, m)) < 0)
        goto out;
    struct eng_hparams *hp = &m->hp;
    const struct eng_gguf_tensor *te = eng_gguf_tensor_by_name(m->g, "token_embd.weight");
    if (!te || te->ne[0] != hp->n_embd || te->ne[1] < 1 || te->ne[1] > (1 << 24)) {
        rc = s3_errf(err, S3_EFORMAT, "model: tensor token_embd.weight %s (expected [%d, n_vocab])",
                     te ? "has a bad shape" : "missing", hp->n_embd);
        goto out;
    }
    hp->n_vocab = (int)te->ne[1];
    if ((rc = tensor_get(&L, "token_embd.weight", hp->n_embd, hp->n_vocab, 1, &m->tok_embd)) < 0)
        goto out;
    if ((rc = load_rope_freqs(&L, m)) < 0)
        goto out;
    if ((rc = vec_load(&L, "output_norm.weight", hp->n_embd, 1, &m->output_norm)) < 0)
        goto out;
    const struct eng_gguf_tensor *to;
    if ((rc = tensor_get(&L, "output.weight", hp->n_embd, hp->n_vocab, 0, &to)) < 0)
        goto out;
    hp->tied_output = to == NULL;
    if ((rc = mat_load(&L, to ? "output.weight" : "token_embd.weight", hp->n_embd, hp->n_vocab,
                       &m->output)) < 0)
        goto out;
    m->weight_bytes += krn_qmat_bytes(&m->output);
    m->layers = calloc((size_t)hp->n_layer, sizeof(*m->layers));
    if (!m->layers) {
        rc = s3_errf(err, S3_ENOMEM, "model: out of memory");
        goto out;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = load_layer(&L, m, il)) < 0)
            goto out;
    if (want_cuda && (rc = eng__cuda_model_new(m, 0, &m->cuda, err)) < 0)
        goto out;
    if ((rc = eng_tok_new(m->g, &m->tok, err)) < 0)
        goto out;
    size_t n_file = 0;
    const void *file = eng_gguf_file_data(m->g, &n_file);
    s3_sha256_hex(file, n_file, hp->model_sha256);
    /* the matrices were copied into the kernels' layout and the file hashed: the mapped
     * pages need not stay resident (what is read later, embedding rows and vocabulary
     * strings, comes back on demand) */
    eng_gguf_drop_pages(m->g);
    S3_LOG(S3_LOG_INFO,
           "event=model_load arch=%s n_layer=%d n_embd=%d n_head=%d n_head_kv=%d n_ff=%d "
           "n_vocab=%d weights_mb=%.1f threads=%d",
           hp->arch, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_ff, hp->n_vocab,
           (double)m->weight_bytes / 1e6, m->n_threads);
out:
    if (rc < 0) {
        eng_model_free(m);
        m = NULL;
    }
    *out = m;
    return rc;
}

void eng_model_free(struct eng_model *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            struct eng_layer *ly = &m->layers[il];
            free(ly->attn_norm);
            free(ly->ffn_norm);
            free(ly->bq);
            free(ly->bk);
            free(ly->bv);
            krn_qmat_deinit(&ly->wq);
            krn_qmat_deinit(&ly->wk);
            krn_qmat_deinit(&ly->wv);
            krn_qmat_deinit(&ly->wo);
            krn_qmat_deinit(&ly->w_gate);
            krn_qmat_deinit(&ly->w_up);
            krn_qmat_deinit(&ly->w_down);
        }
        free(m->layers);
    }
    krn_qmat_deinit(&m->output);
    free(m->output_norm);
    free(m->rope_ff);
    eng__cuda_model_free(m->cuda);
    eng_tok_free(m->tok);
    eng_gguf_close(m->g);
    free(m);
}

const struct eng_hparams *eng_model_hparams(const struct eng_model *m)
{
    return &m->hp;
}

const struct eng_tokenizer *eng_model_tok(const struct eng_model *m)
{
    return m->tok;
}
