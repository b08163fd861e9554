/* engine/cuda_forward.c - the Llama-family forward pass on one GPU (see cuda_forward.h).
 *
 * One ubatch of n tokens at positions pos0..pos0+n-1, all on the device's compute stream:
 *
 *   x = embed(tokens)                                   (n, d) f32 residual stream
 *   for each layer:
 *     xn  = rmsnorm(x) * attn_norm                      (n, d) fp16
 *     qkv = xn Wqkv^T (+ bqkv)                          (n, dq + 2 dkv) f32, one GEMM
 *     [hooked layer: q, k rows -> pinned host buffers, asynchronously]
 *     qr = rope(q) fp16; K cache <- rope(k), V cache <- v  (fp16, at pos0..)
 *     att = flash causal attention(qr, K, V)            (n, dq) fp16
 *     x  += att Wo^T                                    GEMM with beta = 1
 *     xn  = rmsnorm(x) * ffn_norm
 *     gu  = xn [Wgate; Wup]^T                           (n, 2 ff) fp16, one GEMM
 *     a   = silu(gate) * up                             (n, ff) fp16
 *     x  += a Wdown^T                                   GEMM with beta = 1
 *   logits = rmsnorm(x[rows]) Wout^T                    only the rows asked for
 *
 * Weights: every matrix is uploaded once in its file encoding and dequantised to fp16 on the
 * device (Q4_0/Q4_1/Q8_0/F16/BF16/F32), or dequantised on the host first for other types.
 * Q, K, V projections are concatenated into one (dq + 2 dkv, d) matrix, gate and up into one
 * (2 ff, d) matrix, so that a layer is four GEMMs.
 *
 * Scan flavour (eng__cuda_ubatch_scan): the loop ends right after the projection of the
 * highest hooked layer; device hooks get the f32 projection rows in stream order (the SAE
 * encodes keys there without a host round trip). */
#include <stdlib.h>
#include <string.h>

#include "cuda_forward.h"
#include "engine_int.h"
#include "sae.h"

#ifdef S3_HAVE_CUDA

#include <math.h>
#include <stdio.h>

#include "cuda.h"

#define LOGIT_ROWS 64 /* logits computed in slices of this many rows (bounds that buffer) */

struct cuda_layer {
    uint16_t *wqkv;   /* (dq + 2 dkv, d) fp16 */
    uint16_t *wo;     /* (d, dq) */
    uint16_t *wgu;    /* (2 ff, d): gate rows then up rows */
    uint16_t *wdown;  /* (d, ff) */
    float *attn_norm, *ffn_norm; /* (d) */
    float *bqkv;      /* (dq + 2 dkv) or NULL */
};

struct eng_cuda_model {
    struct krn_cuda_dev *dev;    /* owned */
    int ordinal;
    struct cuda_layer *layers;   /* (n_layer), owned */
    uint16_t *tok_embd;          /* (n_vocab, d) fp16 */
    uint16_t *output;            /* (n_vocab, d) fp16; == tok_embd when tied */
    float *output_norm;          /* (d) */
    int n_layer, d, dq, dkv, ff, n_vocab, n_head, n_head_kv, hd, n_rot, rope_mode;
    float eps;
    int q8act;                   /* GEMM inputs rounded as the CPU path's 8-bit activations */
    size_t bytes;                /* device bytes held */
};

enum stage { ST_GEMM, ST_ATTN, ST_OTHER, ST_COPY, ST_LOGITS, ST_HOOKDEV, ST_N };

struct eng_cuda_ctx {
    const struct eng_model *m;       /* borrowed */
    struct eng_cuda_model *cm;       /* borrowed */
    struct krn_cuda_dev *dev;        /* borrowed from cm, or own_dev */
    struct krn_cuda_dev *own_dev;    /* a stream of its own (NULL: cm's) */
    int n_ctx, n_ub;
    uint16_t *kc, *vc;               /* (n_layer, n_head_kv, n_ctx, hd) fp16 */
    float *rope_cs;                  /* (n_ctx, n_rot) */
    int32_t *tok;                    /* (n_ub) */
    float *x;                        /* (n_ub, d) */
    /* scratch A, one allocation taking turns: the f32 projections, then the FFN (gate|up,
       SwiGLU written in place over the gate half, row stride 2 ff), then the logits slice */
    void *big;
    float *qkv;                      /* (n_ub, dq + 2 dkv) = big */
    uint16_t *gu;                    /* (n_ub, 2 ff) = big; act = gu, ld 2 ff */
    float *logits;                   /* (LOGIT_ROWS, n_vocab) = big */
    /* scratch B: normed input (n_ub, d), then rotated q (n_ub, dq), attention output in place */
    uint16_t *xn, *qr, *att;
    int32_t *argmax;                 /* (2) the picked token, and how it was picked */
    size_t bytes;
    /* pinned host side */
    int32_t *h_tok;                  /* (n_ub) */
    float *h_qk;                     /* (n_hook_slots, n_ub, dq + dkv): q rows then k rows */
    int n_hook_slots;
    struct krn_cuda_event **hook_ev; /* (n_layer) */
    /* profiling */
    int profile;
    struct krn_cuda_event **ev;      /* (n_ev_max) */
    int *ev_stage;
    int n_ev, n_ev_max;
    struct eng_cuda_stats stats;
};

static int dev_fail(struct krn_cuda_dev *dev, int rc, struct s3_errinfo *err)
{
    if (rc == S3_EINVAL)
        return s3_errf(err, rc, "cuda: invalid kernel arguments");
    return s3_errf(err, rc, "%s", krn_cuda_errmsg(dev));
}

int eng__cuda_available(void)
{
    return krn_cuda_device_count() > 0;
}

/* ---- weights ------------------------------------------------------------------------------- */

struct uploader {
    struct eng_cuda_model *cm;
    void *stage;          /* device staging buffer for raw tensor bytes */
    size_t stage_bytes;
    float *host_f32;      /* host buffer for types dequantised on the host */
    struct s3_errinfo *err;
};

static int dalloc(struct eng_cuda_model *cm, void **p, size_t bytes, struct s3_errinfo *err)
{
    int rc = krn_cuda_malloc(cm->dev, p, bytes);
    if (rc < 0)
        return s3_errf(err, rc, "cuda: cannot allocate %.1f MiB of device memory (%s)",
                       (double)bytes / 1048576.0, krn_cuda_errmsg(cm->dev));
    cm->bytes += bytes;
    return 0;
}

/* Upload rows of tensor `name` (ne0 = n_cols, n_rows rows) as fp16 into dst. */
static int upload_matrix(struct uploader *U, const struct eng_model *m, const char *name,
                         int n_cols, int n_rows, uint16_t *dst)
{
    struct krn_cuda_dev *dev = U->cm->dev;
    const struct eng_gguf_tensor *t = eng_gguf_tensor_by_name(m->g, name);
    if (!t || t->ne[0] != n_cols || t->ne[1] != n_rows)
        return s3_errf(U->err, S3_EFORMAT, "cuda: tensor %s missing or of another shape", name);
    const size_t row_bytes = krn_type_row_bytes(t->type, n_cols);
    if (row_bytes == 0)
        return s3_errf(U->err, S3_EFORMAT, "cuda: tensor %s: unsupported type", name);
    /* rows per slice so that one slice fits the staging buffer (raw or as f32) */
    const size_t per_row = krn_cuda_dequant_supported(t->type) ? row_bytes
                                                                : (size_t)n_cols * sizeof(float);
    int rows_per = (int)(U->stage_bytes / per_row);
    if (rows_per < 1)
        return s3_errf(U->err, S3_EINTERNAL, "cuda: staging buffer too small for %s", name);
    for (int r0 = 0; r0 < n_rows; r0 += rows_per) {
        const int nr = n_rows - r0 < rows_per ? n_rows - r0 : rows_per;
        const uint8_t *src = (const uint8_t *)t->data + (size_t)r0 * row_bytes;
        const int64_t n_el = (int64_t)nr * n_cols;
        uint16_t *out = dst + (size_t)r0 * n_cols;
        int rc;
        if (krn_cuda_dequant_supported(t->type)) {
            rc = krn_cuda_upload(dev, U->stage, src, (size_t)nr * row_bytes);
            if (rc == 0)
                rc = krn_cuda_dequant(dev, t->type, U->stage, out, n_el);
        } else {
            if (krn_dequant(t->type, src, U->host_f32, n_el) < 0)
                return s3_errf(U->err, S3_EFORMAT, "cuda: tensor %s: cannot dequantise", name);
            rc = krn_cuda_upload(dev, U->stage, U->host_f32, (size_t)n_el * sizeof(float));
            if (rc == 0)
                rc = krn_cuda_f32_to_f16(dev, U->stage, out, n_el);
        }
        if (rc == 0)
            rc = krn_cuda_sync(dev); /* the staging buffer is reused by the next slice */
        if (rc < 0)
            return dev_fail(dev, rc, U->err);
    }
    return 0;
}

static int upload_f32(struct eng_cuda_model *cm, float **dst, const float *src, size_t n,
                      struct s3_errinfo *err)
{
    int rc = dalloc(cm, (void **)dst, n * sizeof(float), err);
    if (rc < 0)
        return rc;
    rc = krn_cuda_upload(cm->dev, *dst, src, n * sizeof(float));
    return rc < 0 ? dev_fail(cm->dev, rc, err) : 0;
}

static int upload_layer(struct uploader *U, const struct eng_model *m, int il)
{
    struct eng_cuda_model *cm = U->cm;
    struct cuda_layer *L = &cm->layers[il];
    const struct eng_layer *ly = &m->layers[il];
    const int d = cm->d, dq = cm->dq, dkv = cm->dkv, ff = cm->ff;
    char name[96];
    int rc;
#define TN(suffix) (snprintf(name, sizeof(name), "blk.%d.%s", il, suffix), name)
    if ((rc = dalloc(cm, (void **)&L->wqkv, (size_t)(dq + 2 * dkv) * d * 2, U->err)) < 0 ||
        (rc = dalloc(cm, (void **)&L->wo, (size_t)d * dq * 2, U->err)) < 0 ||
        (rc = dalloc(cm, (void **)&L->wgu, (size_t)2 * ff * d * 2, U->err)) < 0 ||
        (rc = dalloc(cm, (void **)&L->wdown, (size_t)d * ff * 2, U->err)) < 0)
        return rc;
    if ((rc = upload_matrix(U, m, TN("attn_q.weight"), d, dq, L->wqkv)) < 0 ||
        (rc = upload_matrix(U, m, TN("attn_k.weight"), d, dkv, L->wqkv + (size_t)dq * d)) < 0 ||
        (rc = upload_matrix(U, m, TN("attn_v.weight"), d, dkv,
                            L->wqkv + (size_t)(dq + dkv) * d)) < 0 ||
        (rc = upload_matrix(U, m, TN("attn_output.weight"), dq, d, L->wo)) < 0 ||
        (rc = upload_matrix(U, m, TN("ffn_gate.weight"), d, ff, L->wgu)) < 0 ||
        (rc = upload_matrix(U, m, TN("ffn_up.weight"), d, ff, L->wgu + (size_t)ff * d)) < 0 ||
        (rc = upload_matrix(U, m, TN("ffn_down.weight"), ff, d, L->wdown)) < 0)
        return rc;
#undef TN
    if ((rc = upload_f32(cm, &L->attn_norm, ly->attn_norm, (size_t)d, U->err)) < 0 ||
        (rc = upload_f32(cm, &L->ffn_norm, ly->ffn_norm, (size_t)d, U->err)) < 0)
        return rc;
    if (ly->bq || ly->bk || ly->bv) {
        float *b = calloc((size_t)(dq + 2 * dkv), sizeof(float));
        if (!b)
            return s3_errf(U->err, S3_ENOMEM, "cuda: out of memory");
        if (ly->bq)
            memcpy(b, ly->bq, (size_t)dq * sizeof(float));
        if (ly->bk)
            memcpy(b + dq, ly->bk, (size_t)dkv * sizeof(float));
        if (ly->bv)
            memcpy(b + dq + dkv, ly->bv, (size_t)dkv * sizeof(float));
        rc = upload_f32(cm, &L->bqkv, b, (size_t)(dq + 2 * dkv), U->err);
        free(b);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int eng__cuda_model_new(const struct eng_model *m, int ordinal, struct eng_cuda_model **out,
                        struct s3_errinfo *err)
{
    int rc = 0;
    struct uploader U = {.err = err};
    *out = NULL;
    if (!m)
        return s3_errf(err, S3_EINVAL, "cuda: no model");
    const struct eng_hparams *hp = &m->hp;
    if (hp->head_dim % 32 || hp->head_dim > 256)
        return s3_errf(err, S3_EINVAL, "cuda: head_dim %d not supported", hp->head_dim);
    struct eng_cuda_model *cm = calloc(1, sizeof(*cm));
    if (!cm)
        return s3_errf(err, S3_ENOMEM, "cuda: out of memory");
    U.cm = cm;
    cm->n_layer = hp->n_layer;
    cm->d = hp->n_embd;
    cm->hd = hp->head_dim;
    cm->n_head = hp->n_head;
    cm->n_head_kv = hp->n_head_kv;
    cm->dq = hp->n_head * hp->head_dim;
    cm->dkv = hp->n_head_kv * hp->head_dim;
    cm->ff = hp->n_ff;
    cm->n_vocab = hp->n_vocab;
    cm->n_rot = m->n_rot;
    cm->rope_mode = hp->rope_type == ENG_ROPE_NEOX ? KRN_CUDA_ROPE_NEOX : KRN_CUDA_ROPE_NORM;
    cm->eps = hp->rms_eps;
    /* the CPU path (like llama.cpp's) quantises every GEMM's activations to 8 bits per block
       of 32; the device rounds its fp16 operands the same way so that both give the same
       keys (S3_CUDA_Q8ACT=0: plain fp16 operands, for comparison) */
    const char *q8 = getenv("S3_CUDA_Q8ACT");
    cm->q8act = !(q8 && strcmp(q8, "0") == 0) && cm->d % 32 == 0 && cm->dq % 32 == 0 &&
                cm->ff % 32 == 0;
    cm->ordinal = ordinal;
    if ((rc = krn_cuda_dev_new(ordinal, &cm->dev)) < 0) {
        rc = s3_errf(err, S3_EDEVICE, "cuda: cannot open device %d%s%s", ordinal,
                     cm->dev ? ": " : "", cm->dev ? krn_cuda_errmsg(cm->dev) : "");
        goto out;
    }
    cm->layers = calloc((size_t)cm->n_layer, sizeof(*cm->layers));
    if (!cm->layers) {
        rc = s3_errf(err, S3_ENOMEM, "cuda: out of memory");
        goto out;
    }
    /* staging: 64 MiB, enough for several rows of any matrix */
    U.stage_bytes = (size_t)64 << 20;
    if ((size_t)cm->ff * sizeof(float) * 4 > U.stage_bytes)
        U.stage_bytes = (size_t)cm->ff * sizeof(float) * 4;
    if ((rc = krn_cuda_malloc(cm->dev, &U.stage, U.stage_bytes)) < 0) {
        rc = dev_fail(cm->dev, rc, err);
        goto out;
    }
    U.host_f32 = malloc(U.stage_bytes);
    if (!U.host_f32) {
        rc = s3_errf(err, S3_ENOMEM, "cuda: out of memory");
        goto out;
    }
    const size_t emb = (size_t)cm->n_vocab * cm->d;
    if ((rc = dalloc(cm, (void **)&cm->tok_embd, emb * 2, err)) < 0 ||
        (rc = upload_matrix(&U, m, "token_embd.weight", cm->d, cm->n_vocab, cm->tok_embd)) < 0)
        goto out;
    if (hp->tied_output) {
        cm->output = cm->tok_embd;
    } else if ((rc = dalloc(cm, (void **)&cm->output, emb * 2, err)) < 0 ||
               (rc = upload_matrix(&U, m, "output.weight", cm->d, cm->n_vocab, cm->output)) < 0) {
        goto out;
    }
    if ((rc = upload_f32(cm, &cm->output_norm, m->output_norm, (size_t)cm->d, err)) < 0)
        goto out;
    for (int il = 0; il < cm->n_layer; il++)
        if ((rc = upload_layer(&U, m, il)) < 0)
            goto out;
    S3_LOG(S3_LOG_INFO, "event=cuda_model_upload device=\"%s\" weights_mib=%.1f",
           krn_cuda_dev_name(cm->dev), (double)cm->bytes / 1048576.0);
out:
    if (U.stage)
        krn_cuda_free(U.stage);
    free(U.host_f32);
    if (rc < 0) {
        eng__cuda_model_free(cm);
        return rc;
    }
    *out = cm;
    return 0;
}

void eng__cuda_model_free(struct eng_cuda_model *cm)
{
    if (!cm)
        return;
    if (cm->dev)
        krn_cuda_sync(cm->dev);
    if (cm->layers) {
        for (int il = 0; il < cm->n_layer; il++) {
            struct cuda_layer *L = &cm->layers[il];
            krn_cuda_free(L->wqkv);
            krn_cuda_free(L->wo);
            krn_cuda_free(L->wgu);
            krn_cuda_free(L->wdown);
            krn_cuda_free(L->attn_norm);
            krn_cuda_free(L->ffn_norm);
            krn_cuda_free(L->bqkv);
        }
        free(cm->layers);
    }
    if (cm->output != cm->tok_embd)
        krn_cuda_free(cm->output);
    krn_cuda_free(cm->tok_embd);
    krn_cuda_free(cm->output_norm);
    krn_cuda_dev_free(cm->dev);
    free(cm);
}

size_t eng__cuda_model_bytes(const struct eng_cuda_model *cm)
{
    return cm ? cm->bytes : 0;
}

/* ---- context -------------------------------------------------------------------------------- */

static int calloc_dev(struct eng_cuda_ctx *dc, void **p, size_t bytes, struct s3_errinfo *err)
{
    int rc = krn_cuda_malloc(dc->dev, p, bytes);
    if (rc < 0)
        return s3_errf(err, rc, "cuda: cannot allocate %.1f MiB for a context (%s)",
                       (double)bytes / 1048576.0, krn_cuda_errmsg(dc->dev));
    dc->bytes += bytes;
    rc = krn_cuda_memset(dc->dev, *p, 0, bytes);
    return rc < 0 ? dev_fail(dc->dev, rc, err) : 0;
}

/* Tune the projections of a layer (and the k rows alone) for batches of n_ub rows, the scan's
 * chunk (cuBLASLt candidates timed against cuBLAS's default on this context's buffers and
 * layer 0's weights; see krn_cuda_gemm_tune): once per device and shape, before any graph
 * captures them. S3_CUDA_GEMM_TUNE=0 keeps cuBLAS's default everywhere (comparisons). */
static int tune_gemms(struct eng_cuda_ctx *dc)
{
    const struct eng_cuda_model *cm = dc->cm;
    const char *env = getenv("S3_CUDA_GEMM_TUNE");
    if ((env && strcmp(env, "0") == 0) || dc->n_ub < 64)
        return 0;
    const struct cuda_layer *L = &cm->layers[0];
    const int m = dc->n_ub, d = cm->d, dq = cm->dq, ff = cm->ff, ldqkv = dq + 2 * cm->dkv;
    int rc = krn_cuda_fill_f16(dc->dev, dc->xn, (int64_t)m * (dq > d ? dq : d), 1);
    if (rc == 0)
        rc = krn_cuda_fill_f16(dc->dev, dc->gu, (int64_t)m * 2 * ff, 2);
    if (rc == 0) /* the projections as enqueue_layers calls them */
        rc = krn_cuda_gemm_tune(dc->dev, m, ldqkv, d, dc->xn, d, L->wqkv, dc->qkv, ldqkv, 0.0f,
                                KRN_CUDA_F32, NULL, 0, NULL);
    if (rc == 0) /* k alone (a scan's last layer) */
        rc = krn_cuda_gemm_tune(dc->dev, m, cm->dkv, d, dc->xn, d, L->wqkv + (size_t)dq * d,
                                dc->qkv + dq, ldqkv, 0.0f, KRN_CUDA_F32, NULL, 0, NULL);
    if (rc == 0)
        rc = krn_cuda_gemm_tune(dc->dev, m, d, dq, dc->att, dq, L->wo, dc->x, d, 1.0f,
                                KRN_CUDA_F32, NULL, 0, NULL);
    if (rc == 0)
        rc = krn_cuda_gemm_tune(dc->dev, m, d, ff, dc->gu, 2 * ff, L->wdown, dc->x, d, 1.0f,
                                KRN_CUDA_F32, NULL, 0, NULL);
    if (rc == 0) /* last: it overwrites the operand of the one above */
        rc = krn_cuda_gemm_tune(dc->dev, m, 2 * ff, d, dc->xn, d, L->wgu, dc->gu, 2 * ff, 0.0f,
                                KRN_CUDA_F16, NULL, 0, NULL);
    return rc;
}

/* own_stream: the context queues its work on a stream (and cuBLAS handles, workspace, tuned
 * GEMMs) of its own instead of the model's, so that it runs beside other contexts. */
static int ctx_new(const struct eng_model *m, struct eng_cuda_model *cm, int n_ctx, int n_ub,
                   int own_stream, struct eng_cuda_ctx **out, struct s3_errinfo *err)
{
    int rc = 0;
    *out = NULL;
    if (!m || !cm || n_ctx < 1 || n_ctx > (1 << 22) || n_ub < 1)
        return s3_errf(err, S3_EINVAL, "cuda: bad context size (n_ctx %d, n_ub %d)", n_ctx, n_ub);
    if (n_ub > n_ctx)
        n_ub = n_ctx;
    struct eng_cuda_ctx *dc = calloc(1, sizeof(*dc));
    if (!dc)
        return s3_errf(err, S3_ENOMEM, "cuda: out of memory");
    dc->m = m;
    dc->cm = cm;
    dc->dev = cm->dev;
    if (own_stream) {
        if ((rc = krn_cuda_dev_new(cm->ordinal, &dc->own_dev)) < 0) {
            free(dc);
            return s3_errf(err, S3_EDEVICE, "cuda: cannot open a stream on device %d",
                           cm->ordinal);
        }
        dc->dev = dc->own_dev;
    }
    dc->n_ctx = n_ctx;
    dc->n_ub = n_ub;
    const size_t u = (size_t)n_ub, kv = (size_t)cm->n_layer * cm->dkv * (size_t)n_ctx;
    size_t big_bytes = u * (size_t)(cm->dq + 2 * cm->dkv) * 4;
    if (u * 2 * (size_t)cm->ff * 2 > big_bytes)
        big_bytes = u * 2 * (size_t)cm->ff * 2;
    if ((size_t)LOGIT_ROWS * cm->n_vocab * 4 > big_bytes)
        big_bytes = (size_t)LOGIT_ROWS * cm->n_vocab * 4;
    float *cs_host = NULL;
    if ((rc = calloc_dev(dc, (void **)&dc->kc, kv * 2, err)) < 0 ||
        (rc = calloc_dev(dc, (void **)&dc->vc, kv * 2, err)) < 0 ||
        (rc = calloc_dev(dc, (void **)&dc->rope_cs, (size_t)n_ctx * (cm->n_rot + 1) * 4, err)) <
            0 ||
        (rc = calloc_dev(dc, (void **)&dc->tok, u * 4, err)) < 0 ||
        (rc = calloc_dev(dc, (void **)&dc->x, u * cm->d * 4, err)) < 0 ||
        (rc = calloc_dev(dc, &dc->big, big_bytes, err)) < 0 ||
        (rc = calloc_dev(dc, (void **)&dc->xn, u * (size_t)(cm->dq > cm->d ? cm->dq : cm->d) * 2,
                         err)) < 0 ||
        (rc = calloc_dev(dc, (void **)&dc->argmax, 2 * sizeof(int32_t), err)) < 0)
        goto out;
    dc->qkv = dc->big;
    dc->gu = dc->big;
    dc->logits = dc->big;
    dc->qr = dc->att = dc->xn;
    if ((rc = krn_cuda_host_alloc(dc->dev, (void **)&dc->h_tok, u * 4)) < 0) {
        rc = dev_fail(dc->dev, rc, err);
        goto out;
    }
    dc->hook_ev = calloc((size_t)cm->n_layer, sizeof(*dc->hook_ev));
    if (!dc->hook_ev) {
        rc = s3_errf(err, S3_ENOMEM, "cuda: out of memory");
        goto out;
    }
    for (int il = 0; il < cm->n_layer; il++)
        if ((rc = krn_cuda_event_new(dc->dev, &dc->hook_ev[il])) < 0) {
            rc = dev_fail(dc->dev, rc, err);
            goto out;
        }
    /* rotary table: the CPU's own function, so both paths rotate by the same angles */
    cs_host = malloc((size_t)n_ctx * (cm->n_rot + 1) * sizeof(float));
    if (!cs_host) {
        rc = s3_errf(err, S3_ENOMEM, "cuda: out of memory");
        goto out;
    }
    for (int p = 0; p < n_ctx; p++)
        krn_rope_table(cs_host + (size_t)p * cm->n_rot, p, cm->n_rot, m->hp.rope_base,
                       m->rope_ff);
    if ((rc = krn_cuda_upload(dc->dev, dc->rope_cs, cs_host,
                              (size_t)n_ctx * cm->n_rot * sizeof(float))) < 0)
        rc = dev_fail(dc->dev, rc, err);
    else if (own_stream && (rc = krn_cuda_gemm_copy_plans(dc->dev, cm->dev)) < 0)
        rc = dev_fail(dc->dev, rc, err); /* own_stream: the model stream's GEMM choices, so
                                            that every context computes alike */
    else if (!own_stream && tune_gemms(dc) < 0) /* cuBLAS's default algorithms then */
        S3_LOG(S3_LOG_WARN, "event=cuda_gemm_tune_failed msg=\"%s\"", krn_cuda_errmsg(dc->dev));
out:
    free(cs_host);
    if (rc < 0) {
        eng__cuda_ctx_free(dc);
        return rc;
    }
    *out = dc;
    return 0;
}

int eng__cuda_ctx_new(const struct eng_model *m, struct eng_cuda_model *cm, int n_ctx, int n_ub,
                      struct eng_cuda_ctx **out, struct s3_errinfo *err)
{
    return ctx_new(m, cm, n_ctx, n_ub, 0, out, err);
}

static void free_events(struct eng_cuda_ctx *dc)
{
    for (int i = 0; dc->ev && i < dc->n_ev_max; i++)
        krn_cuda_event_free(dc->ev[i]);
    free(dc->ev);
    free(dc->ev_stage);
    dc->ev = NULL;
    dc->ev_stage = NULL;
    dc->n_ev_max = 0;
}

void eng__cuda_ctx_free(struct eng_cuda_ctx *dc)
{
    if (!dc)
        return;
    krn_cuda_sync(dc->dev);
    krn_cuda_free(dc->kc);
    krn_cuda_free(dc->vc);
    krn_cuda_free(dc->rope_cs);
    krn_cuda_free(dc->tok);
    krn_cuda_free(dc->x);
    krn_cuda_free(dc->xn);
    krn_cuda_free(dc->big);
    krn_cuda_free(dc->argmax);
    krn_cuda_host_free(dc->h_tok);
    krn_cuda_host_free(dc->h_qk);
    for (int il = 0; dc->hook_ev && il < dc->cm->n_layer; il++)
        krn_cuda_event_free(dc->hook_ev[il]);
    free(dc->hook_ev);
    free_events(dc);
    krn_cuda_dev_free(dc->own_dev);
    free(dc);
}

size_t eng__cuda_ctx_bytes(const struct eng_cuda_ctx *dc)
{
    return dc ? dc->bytes : 0;
}

struct krn_cuda_dev *eng__cuda_ctx_dev(const struct eng_cuda_ctx *dc)
{
    return dc ? dc->dev : NULL;
}

void eng__cuda_ctx_set_profile(struct eng_cuda_ctx *dc, int on)
{
    if (!dc)
        return;
    dc->profile = 0;
    if (on && !dc->ev) {
        const int n = 12 * dc->cm->n_layer + 16;
        dc->ev = calloc((size_t)n, sizeof(*dc->ev));
        dc->ev_stage = calloc((size_t)n, sizeof(int));
        if (!dc->ev || !dc->ev_stage) {
            free_events(dc);
            return;
        }
        dc->n_ev_max = n;
        for (int i = 0; i < n; i++)
            if (krn_cuda_event_new(dc->dev, &dc->ev[i]) < 0) {
                free_events(dc);
                return;
            }
    }
    dc->profile = on && dc->ev;
}

void eng__cuda_ctx_stats(const struct eng_cuda_ctx *dc, struct eng_cuda_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (dc)
        *out = dc->stats;
}

/* Mark the end of a stage (profiling only). */
static int mark(struct eng_cuda_ctx *dc, int stage)
{
    if (!dc->profile || dc->n_ev >= dc->n_ev_max)
        return 0;
    dc->ev_stage[dc->n_ev] = stage;
    return krn_cuda_event_record(dc->dev, dc->ev[dc->n_ev++]);
}

static int collect_profile(struct eng_cuda_ctx *dc)
{
    if (!dc->profile || dc->n_ev < 2)
        return 0;
    double per[ST_N] = {0};
    float ms, total;
    int rc;
    for (int i = 1; i < dc->n_ev; i++) {
        if ((rc = krn_cuda_event_ms(dc->dev, dc->ev[i - 1], dc->ev[i], &ms)) < 0)
            return rc;
        per[dc->ev_stage[i]] += ms;
    }
    if ((rc = krn_cuda_event_ms(dc->dev, dc->ev[0], dc->ev[dc->n_ev - 1], &total)) < 0)
        return rc;
    dc->stats.gemm_ms += per[ST_GEMM];
    dc->stats.attn_ms += per[ST_ATTN];
    dc->stats.other_ms += per[ST_OTHER];
    dc->stats.copy_ms += per[ST_COPY];
    dc->stats.logits_ms += per[ST_LOGITS];
    dc->stats.hook_dev_ms += per[ST_HOOKDEV];
    dc->stats.total_ms += total;
    return 0;
}

/* ---- forward -------------------------------------------------------------------------------- */

/* The host hook and scan options of one ubatch, merged. */
struct hooks {
    eng_qk_hook_fn fn;
    void *ud;
    uint64_t mask;
    const volatile int *cancel;
    int scan_only, no_q;
    eng_cuda_dev_hook_fn dev_fn;
    void *dev_ud;
};

static struct hooks merge_hooks(const struct eng_cuda_hook *h, const struct eng_cuda_scan *sc)
{
    struct hooks m = {0};
    if (h) {
        m.fn = h->fn;
        m.ud = h->ud;
        m.mask = h->mask;
        m.cancel = h->cancel;
    }
    if (sc) {
        m.scan_only = !sc->full;
        m.no_q = sc->no_q;
        m.dev_fn = sc->dev_fn;
        m.dev_ud = sc->dev_ud;
    }
    return m;
}

static int hooked(const struct hooks *hook, int il)
{
    return hook && (hook->fn || hook->dev_fn) && il < 64 && ((hook->mask >> il) & 1);
}

/* Host copies for this layer (a host hook is set). */
static int host_hooked(const struct hooks *hook, int il)
{
    return hooked(hook, il) && hook->fn;
}

/* Last layer to run: all of them, or in the scan flavour the highest hooked one. */
static int last_layer(const struct eng_cuda_ctx *dc, const struct hooks *hook)
{
    if (!hook || !hook->scan_only)
        return dc->cm->n_layer - 1;
    for (int il = dc->cm->n_layer - 1; il >= 0; il--)
        if (hooked(hook, il))
            return il;
    return -1;
}

/* Pinned buffers for the hooked layers of this call (allocated on first use of a mask; at
 * most one slot per layer, so bounded by the model). */
static int hook_buffers(struct eng_cuda_ctx *dc, const struct hooks *hook,
                        struct s3_errinfo *err)
{
    int need = 0;
    for (int il = 0; il < dc->cm->n_layer; il++)
        need += host_hooked(hook, il);
    if (need <= dc->n_hook_slots)
        return 0;
    krn_cuda_host_free(dc->h_qk);
    dc->h_qk = NULL;
    dc->n_hook_slots = 0;
    const size_t bytes =
        (size_t)need * dc->n_ub * (size_t)(dc->cm->dq + dc->cm->dkv) * sizeof(float);
    int rc = krn_cuda_host_alloc(dc->dev, (void **)&dc->h_qk, bytes);
    if (rc < 0)
        return dev_fail(dc->dev, rc, err);
    dc->n_hook_slots = need;
    return 0;
}

#define TRY(call)                                                                              \
    do {                                                                                       \
        if ((rc = (call)) < 0)                                                                 \
            goto fail;                                                                         \
    } while (0)

/* RMSNorm of n rows of the residual stream into the fp16 GEMM operand y, on dc's stream (a
 * context may have one of its own). */
static int rmsnorm(const struct eng_cuda_ctx *dc, const float *x, const float *w, int n,
                   uint16_t *y)
{
    const struct eng_cuda_model *cm = dc->cm;
    return (cm->q8act ? krn_cuda_rmsnorm_q8 : krn_cuda_rmsnorm)(dc->dev, x, w, n, cm->d, cm->eps,
                                                                y);
}

/* Enqueue the layers; with want_rows > 0 also the final norm and logits of the last
 * want_rows rows (only the last LOGIT_ROWS rows at most go into dc->logits in one pass). */
static int enqueue_layers(struct eng_cuda_ctx *dc, int n, int pos0,
                          const struct hooks *hook, int *n_hooked)
{
    struct eng_cuda_model *cm = dc->cm;
    struct krn_cuda_dev *dev = dc->dev;
    const int d = cm->d, dq = cm->dq, dkv = cm->dkv, ff = cm->ff, ldqkv = dq + 2 * dkv;
    const size_t lay = (size_t)cm->n_head_kv * dc->n_ctx * cm->hd;
    const float scale = 1.0f / sqrtf((float)cm->hd);
    int rc = 0, slot = 0;
    const int last = last_layer(dc, hook);
    TRY(krn_cuda_embed(dev, cm->tok_embd, cm->n_vocab, dc->tok, n, d, dc->x));
    TRY(mark(dc, ST_OTHER));
    for (int il = 0; il <= last; il++) {
        const struct cuda_layer *L = &cm->layers[il];
        if (hook && hook->cancel && *hook->cancel) {
            rc = S3_ECANCELED;
            goto fail;
        }
        TRY(rmsnorm(dc, dc->x, L->attn_norm, n, dc->xn));
        TRY(mark(dc, ST_OTHER));
        /* the scan's last layer with nobody reading q: the k rows alone (wqkv's rows dq..) */
        const int k_only = il == last && hook && hook->scan_only && hook->no_q;
        const int c0 = k_only ? dq : 0, nc = k_only ? dkv : ldqkv;
        TRY(krn_cuda_gemm(dev, n, nc, d, dc->xn, L->wqkv + (size_t)c0 * d, dc->qkv + c0, ldqkv,
                          0.0f, KRN_CUDA_F32));
        TRY(mark(dc, ST_GEMM));
        if (L->bqkv)
            TRY(krn_cuda_add_bias(dev, dc->qkv + c0, n, nc, ldqkv, L->bqkv + c0));
        if (hooked(hook, il) && hook->dev_fn) {
            if (hook->dev_fn(hook->dev_ud, dev, il, pos0, n, k_only ? NULL : dc->qkv,
                             dc->qkv + dq, ldqkv) != 0) {
                rc = S3_ECANCELED;
                goto fail;
            }
            TRY(mark(dc, ST_HOOKDEV));
        }
        if (host_hooked(hook, il)) {
            float *hq = dc->h_qk + (size_t)slot * dc->n_ub * (dq + dkv);
            float *hk = hq + (size_t)n * dq;
            if (!hook->no_q)
                TRY(krn_cuda_download_rows_async(dev, hq, dc->qkv, (size_t)ldqkv * 4,
                                                 (size_t)dq * 4, n));
            TRY(krn_cuda_download_rows_async(dev, hk, dc->qkv + dq, (size_t)ldqkv * 4,
                                             (size_t)dkv * 4, n));
            TRY(krn_cuda_event_record(dev, dc->hook_ev[il]));
            TRY(mark(dc, ST_COPY));
            slot++;
        }
        if (il == last && hook && hook->scan_only)
            break; /* the scan needs nothing past this projection */
        TRY(krn_cuda_rope_qkv(dev, dc->qkv, ldqkv, n, pos0, cm->n_head, cm->n_head_kv, cm->hd,
                              cm->n_rot, dc->rope_cs, cm->rope_mode, dc->qr, dc->kc + il * lay,
                              dc->vc + il * lay, dc->n_ctx));
        TRY(mark(dc, ST_OTHER));
        /* in place; rounded as 8-bit activations where the CPU path's GEMMs round them */
        TRY((cm->q8act ? krn_cuda_attn_q8 : krn_cuda_attn)(dev, dc->qr, dc->kc + il * lay,
                                                           dc->vc + il * lay, n, pos0,
                                                           cm->n_head, cm->n_head_kv, cm->hd,
                                                           dc->n_ctx, scale, dc->att));
        TRY(mark(dc, ST_ATTN));
        TRY(krn_cuda_gemm(dev, n, d, dq, dc->att, L->wo, dc->x, d, 1.0f, KRN_CUDA_F32));
        TRY(mark(dc, ST_GEMM));
        TRY(rmsnorm(dc, dc->x, L->ffn_norm, n, dc->xn));
        TRY(mark(dc, ST_OTHER));
        TRY(krn_cuda_gemm(dev, n, 2 * ff, d, dc->xn, L->wgu, dc->gu, 2 * ff, 0.0f, KRN_CUDA_F16));
        TRY(mark(dc, ST_GEMM));
        TRY((cm->q8act ? krn_cuda_swiglu_q8 : krn_cuda_swiglu_ld)(dev, dc->gu, n, ff, dc->gu,
                                                                  2 * ff)); /* in place, gate half */
        TRY(mark(dc, ST_OTHER));
        TRY(krn_cuda_gemm_ld(dev, n, d, ff, dc->gu, 2 * ff, L->wdown, dc->x, d, 1.0f,
                             KRN_CUDA_F32));
        TRY(mark(dc, ST_GEMM));
    }
fail:
    *n_hooked = slot;
    return rc;
}

/* Logits of rows r0..r0+nr-1 (nr <= LOGIT_ROWS) into dc->logits. */
static int enqueue_logits(struct eng_cuda_ctx *dc, int r0, int nr)
{
    struct eng_cuda_model *cm = dc->cm;
    int rc;
    if ((rc = rmsnorm(dc, dc->x + (size_t)r0 * cm->d, cm->output_norm, nr, dc->xn)) < 0)
        return rc;
    if ((rc = krn_cuda_gemm(dc->dev, nr, cm->n_vocab, cm->d, dc->xn, cm->output, dc->logits,
                            cm->n_vocab, 0.0f, KRN_CUDA_F32)) < 0)
        return rc;
    return mark(dc, ST_LOGITS);
}

/* Call the hooks in layer order as their copies complete. */
static int run_hooks(struct eng_cuda_ctx *dc, int n, int pos0, const struct hooks *hook)
{
    const int dq = dc->cm->dq;
    int slot = 0;
    const int last = last_layer(dc, hook);
    for (int il = 0; il <= last; il++) {
        if (!host_hooked(hook, il))
            continue;
        int rc = krn_cuda_event_wait_host(dc->dev, dc->hook_ev[il]);
        if (rc < 0)
            return rc;
        const float *hq = dc->h_qk + (size_t)slot * dc->n_ub * (dq + dc->cm->dkv);
        if (hook->fn(hook->ud, il, pos0, n, hook->no_q ? NULL : hq, hq + (size_t)n * dq) != 0)
            return S3_ECANCELED;
        slot++;
    }
    return 0;
}

/* 0, or S3_EINVAL naming the first token id outside the vocabulary. */
static int check_tokens(const struct eng_cuda_ctx *dc, const int32_t *tokens, int n,
                        struct s3_errinfo *err)
{
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= dc->cm->n_vocab)
            return s3_errf(err, S3_EINVAL, "cuda: token id %d out of range", tokens[t]);
    return 0;
}

/* Validate a ubatch and queue its token upload. h_pinned: the tokens already in pinned host
 * memory that stays untouched until the upload has run (the pipelined scan), or NULL: they
 * are copied into dc->h_tok (the caller syncs before the next ubatch). */
static int begin_ex(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                    const struct hooks *hook, const int32_t *h_pinned, struct s3_errinfo *err)
{
    if (!dc || !tokens || n < 1 || n > dc->n_ub || pos0 < 0 || pos0 + n > dc->n_ctx)
        return s3_errf(err, S3_EINVAL, "cuda: bad ubatch (n %d at %d)", n, pos0);
    int rc = check_tokens(dc, tokens, n, err);
    if (rc == 0)
        rc = hook_buffers(dc, hook, err);
    if (rc < 0)
        return rc;
    dc->n_ev = 0;
    if ((rc = mark(dc, ST_OTHER)) < 0)
        return dev_fail(dc->dev, rc, err);
    if (!h_pinned) {
        memcpy(dc->h_tok, tokens, (size_t)n * sizeof(int32_t));
        h_pinned = dc->h_tok;
    }
    if ((rc = krn_cuda_upload_async(dc->dev, dc->tok, h_pinned, (size_t)n * 4)) < 0)
        return dev_fail(dc->dev, rc, err);
    return 0;
}

static int begin(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                 const struct hooks *hook, struct s3_errinfo *err)
{
    return begin_ex(dc, tokens, n, pos0, hook, NULL, err);
}

static int finish(struct eng_cuda_ctx *dc, int n, int rc, struct s3_errinfo *err)
{
    const int rs = krn_cuda_sync(dc->dev);
    if (rc == S3_ECANCELED)
        return s3_errf(err, rc, "cuda: forward cancelled");
    if (rc == 0 && rs < 0)
        rc = rs;
    if (rc == 0 && (rc = collect_profile(dc)) == 0) {
        dc->stats.n_tokens += n;
        dc->stats.n_ubatch++;
    }
    return rc < 0 ? dev_fail(dc->dev, rc, err) : 0;
}

static int ubatch(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                  float *logits_last, float *logits_all, const struct hooks *hook,
                  struct s3_errinfo *err)
{
    int rc = begin(dc, tokens, n, pos0, hook, err), n_hooked = 0;
    if (rc < 0)
        return rc;
    const int nv = dc->cm->n_vocab;
    rc = enqueue_layers(dc, n, pos0, hook, &n_hooked);
    if (rc == 0 && !logits_all && logits_last)
        rc = enqueue_logits(dc, n - 1, 1);
    /* hooks run while the GPU works through the later layers */
    if (rc == 0 && n_hooked)
        rc = run_hooks(dc, n, pos0, hook);
    if (rc == 0 && !logits_all && logits_last)
        rc = krn_cuda_download(dc->dev, logits_last, dc->logits, (size_t)nv * sizeof(float));
    for (int r0 = 0; rc == 0 && logits_all && r0 < n; r0 += LOGIT_ROWS) {
        const int nr = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
        rc = enqueue_logits(dc, r0, nr);
        if (rc == 0)
            rc = krn_cuda_download(dc->dev, logits_all + (size_t)r0 * nv, dc->logits,
                                   (size_t)nr * nv * sizeof(float));
    }
    if (rc == 0 && logits_all && logits_last)
        memcpy(logits_last, logits_all + (size_t)(n - 1) * nv, (size_t)nv * sizeof(float));
    return finish(dc, n, rc, err);
}

int eng__cuda_ubatch(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                     float *logits_last, float *logits_all, const struct eng_cuda_hook *hook,
                     struct s3_errinfo *err)
{
    const struct hooks hs = merge_hooks(hook, NULL);
    return ubatch(dc, tokens, n, pos0, logits_last, logits_all, &hs, err);
}

int eng__cuda_ubatch_scan(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_cuda_hook *hook, const struct eng_cuda_scan *sc,
                          struct s3_errinfo *err)
{
    const struct hooks hs = merge_hooks(hook, sc);
    return ubatch(dc, tokens, n, pos0, NULL, NULL, &hs, err);
}

int eng__cuda_ubatch_pick(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_sample_params *sp, double u,
                          const struct eng_cuda_hook *hook, int32_t *next, int *how,
                          struct s3_errinfo *err)
{
    const struct hooks hs = merge_hooks(hook, NULL);
    int rc = begin(dc, tokens, n, pos0, &hs, err), n_hooked = 0;
    if (rc < 0)
        return rc;
    const int nv = dc->cm->n_vocab;
    /* a vocabulary over the sampler's: the host draws from the logits */
    const int on_device = !sp || nv <= KRN_CUDA_SAMPLE_MAX_N;
    int32_t out[2] = {0, ENG_CUDA_PICK_HOST};
    rc = enqueue_layers(dc, n, pos0, &hs, &n_hooked);
    if (rc == 0)
        rc = enqueue_logits(dc, n - 1, 1);
    if (rc == 0 && n_hooked)
        rc = run_hooks(dc, n, pos0, &hs);
    if (rc == 0 && !sp)
        rc = krn_cuda_argmax(dc->dev, dc->logits, 1, nv, dc->argmax);
    else if (rc == 0 && on_device)
        rc = krn_cuda_sample(dc->dev, dc->logits, nv,
                             &(struct krn_cuda_sample_params){sp->temperature, sp->top_p,
                                                              sp->top_k},
                             u, dc->argmax);
    if (rc == 0 && on_device)
        rc = krn_cuda_download(dc->dev, out, dc->argmax, (sp ? 2 : 1) * sizeof(int32_t));
    if ((rc = finish(dc, n, rc, err)) < 0)
        return rc;
    *next = out[0];
    if (how)
        *how = sp ? out[1] : ENG_CUDA_PICK_NO_DRAW;
    return 0;
}

int eng__cuda_ubatch_argmax(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                            int32_t *next, struct s3_errinfo *err)
{
    return eng__cuda_ubatch_pick(dc, tokens, n, pos0, NULL, 0.0, NULL, next, NULL, err);
}

int eng__cuda_last_logits(struct eng_cuda_ctx *dc, float *out, struct s3_errinfo *err)
{
    int rc = krn_cuda_download(dc->dev, out, dc->logits, (size_t)dc->cm->n_vocab * sizeof(float));
    return rc < 0 ? dev_fail(dc->dev, rc, err) : 0;
}

/* ---- device SAE scan -------------------------------------------------------------------------- */

/* Most device memory two scan contexts with their buffers may take for a scan to run its
 * passes two at a time, each on its own stream (small models: SmolLM2-135M's pass leaves the
 * GPU partly idle; an 8B context alone takes 0.4 GiB). */
#define ENG_CUDA_SCAN_TWO_BYTES ((size_t)256 << 20)

#define SCAN_GRAPHS 2 /* graphs kept per buffer set: the steady pass, a document's first */
#define SCAN_SEEN   4 /* plainly queued shapes remembered per buffer set */

struct scan_graph {
    struct krn_cuda_graph *g;        /* NULL: empty slot */
    int n, prefix;
    unsigned long long used;         /* stamp of its last launch */
};

struct eng_cuda_sae_scan {
    struct eng_ctx *c;               /* borrowed */
    struct eng_cuda_ctx *dc;         /* borrowed (c->cuda) */
    struct krn_cuda_dev *dev;        /* borrowed (dc's) */
    const struct eng_sae *sae;       /* borrowed */
    int n_kv, hd, n_dict, k, n_rows, n_unit;
    uint64_t mask;                   /* indexed layers */
    float *d_w;                      /* per unit: W_enc split for the tensor cores (n_dict, 2 hd)
                                        fp16 (krn_cuda_sae_split), b_enc (n_dict), b_dec (hd) */
    float *w_inv;                    /* (n_unit) krn_cuda_sae_split's scale, owned */
    size_t unit_floats;
    /* per buffer set: the context (and so the stream) its passes run on, the encoder scratch
       (n_ub, hd + n_dict) and the records of the pass being computed (n_unit, n_rows, k).
       Set 0 has dc; set 1 a context of its own where both fit ENG_CUDA_SCAN_TWO_BYTES (two
       passes then run at once), else set 0's context and buffers */
    struct eng_cuda_ctx *set_dc[2];
    struct eng_cuda_ctx *own;        /* set 1's own context, or NULL */
    float *d_scr[2];
    uint16_t *d_ids[2];
    float *d_acts[2];
    /* two sets of pinned host buffers, used in turn by successive passes */
    int32_t *h_tok[2];               /* (n_ctx) tokens of the pass */
    uint16_t *h_ids[2];              /* (n_unit, n_rows, k) */
    float *h_acts[2];
    struct krn_cuda_event *ev[2];    /* records of that set copied */
    int n_out[2];
    int head, n_flight;              /* oldest set in flight, passes in flight */
    /* state of the pass being queued (read by the device hook) */
    int set, prefix, cur_out, hook_rc;
    /* CUDA graphs (S3_CUDA_GRAPHS=0 turns them off; never while profiling): per buffer set,
     * up to SCAN_GRAPHS pass shapes (n, prefix) captured once, then replayed. A shape is
     * captured when it comes again among the set's last SCAN_SEEN plainly queued shapes: the
     * steady pass of a scan within its first passes, a document's first pass (no prefix)
     * once a set has started two documents; a document's last, shorter chunk rarely repeats
     * and is queued plainly. A new capture replaces the set's least recently used graph. */
    int graphs;                      /* 1 on, 0 off (also after a failed capture) */
    struct scan_graph gs[2][SCAN_GRAPHS];
    int seen_n[2][SCAN_SEEN], seen_prefix[2][SCAN_SEEN], seen_next[2]; /* n 0: none */
    unsigned long long stamp;        /* graph launches so far (least recently used) */
};

int eng__cuda_ctx_on_device(const struct eng_ctx *c)
{
    return c && c->cuda;
}

/* Set 1 on set 0's context and buffers, its own (if any) freed. */
static void share_set0(struct eng_cuda_sae_scan *ss)
{
    if (ss->own) {
        krn_cuda_free(ss->d_scr[1]), krn_cuda_free(ss->d_ids[1]);
        krn_cuda_free(ss->d_acts[1]);
        eng__cuda_ctx_free(ss->own);
        ss->own = NULL;
    }
    ss->set_dc[1] = ss->set_dc[0];
    ss->d_scr[1] = ss->d_scr[0];
    ss->d_ids[1] = ss->d_ids[0];
    ss->d_acts[1] = ss->d_acts[0];
}

void eng__cuda_sae_scan_free(struct eng_cuda_sae_scan *ss)
{
    if (!ss)
        return;
    eng__cuda_sae_scan_drain(ss);
    share_set0(ss);
    krn_cuda_free(ss->d_w);
    free(ss->w_inv);
    krn_cuda_free(ss->d_scr[0]);
    krn_cuda_free(ss->d_ids[0]);
    krn_cuda_free(ss->d_acts[0]);
    for (int i = 0; i < 2; i++) {
        krn_cuda_host_free(ss->h_tok[i]);
        krn_cuda_host_free(ss->h_ids[i]);
        krn_cuda_host_free(ss->h_acts[i]);
        krn_cuda_event_free(ss->ev[i]);
        for (int j = 0; j < SCAN_GRAPHS; j++)
            krn_cuda_graph_free(ss->gs[i][j].g);
    }
    free(ss);
}

/* Set i's device buffers on its context's stream: encoder scratch and records. */
static int set_buffers(struct eng_cuda_sae_scan *ss, int i, size_t scr_bytes, size_t nrec)
{
    struct krn_cuda_dev *dev = ss->set_dc[i]->dev;
    int rc;
    if ((rc = krn_cuda_malloc(dev, (void **)&ss->d_scr[i], scr_bytes)) < 0 ||
        (rc = krn_cuda_malloc(dev, (void **)&ss->d_ids[i], nrec * sizeof(uint16_t))) < 0 ||
        (rc = krn_cuda_malloc(dev, (void **)&ss->d_acts[i], nrec * sizeof(float))) < 0)
        return rc;
    return 0;
}

int eng__cuda_sae_scan_new(struct eng_ctx *c, const struct eng_sae *s, int n_rows, int k,
                           struct eng_cuda_sae_scan **out, struct s3_errinfo *err)
{
    int rc = 0;
    float *host = NULL;
    *out = NULL;
    if (!c || !c->cuda)
        return s3_errf(err, S3_EDEVICE, "cuda scan: the context is not on a device");
    if (!s)
        return s3_errf(err, S3_EINVAL, "cuda scan: no SAE");
    const struct eng_sae_info *in = eng_sae_get_info(s);
    struct eng_cuda_ctx *dc = c->cuda;
    if (in->d_head != dc->cm->hd || in->n_head_kv != dc->cm->n_head_kv ||
        in->layers[in->n_idx - 1] >= dc->cm->n_layer || in->layers[in->n_idx - 1] >= 64)
        return s3_errf(err, S3_EINVAL, "cuda scan: the SAE does not fit the model");
    if (n_rows < 1 || n_rows > dc->n_ctx || k < 1 || k > in->k)
        return s3_errf(err, S3_EINVAL, "cuda scan: bad sizes (rows %d, k %d)", n_rows, k);
    struct eng_cuda_sae_scan *ss = calloc(1, sizeof(*ss));
    if (!ss)
        return s3_errf(err, S3_ENOMEM, "cuda scan: out of memory");
    ss->c = c;
    ss->dc = dc;
    ss->dev = dc->dev;
    ss->sae = s;
    ss->n_kv = in->n_head_kv;
    ss->hd = in->d_head;
    ss->n_dict = in->n_dict;
    ss->k = k;
    ss->n_rows = n_rows;
    {
        const char *g = getenv("S3_CUDA_GRAPHS");
        ss->graphs = !(g && g[0] == '0');
    }
    ss->n_unit = in->n_idx * in->n_head_kv;
    ss->mask = eng_sae_layer_mask(s);
    const size_t nd = (size_t)ss->n_dict, hd = (size_t)ss->hd;
    ss->unit_floats = nd * hd + nd + hd;
    const size_t nrec = (size_t)ss->n_unit * (size_t)n_rows * (size_t)k;
    const size_t scr_bytes = krn_cuda_sae_scratch_bytes(dc->n_ub, ss->hd, ss->n_dict);
    ss->set_dc[0] = ss->set_dc[1] = dc;
    if ((rc = krn_cuda_malloc(ss->dev, (void **)&ss->d_w,
                              (size_t)ss->n_unit * ss->unit_floats * sizeof(float))) < 0 ||
        (rc = set_buffers(ss, 0, scr_bytes, nrec)) < 0)
        goto fail;
    /* a second context for set 1 where both sets' contexts and buffers are small (the model's
       work per pass too: its kernels leave the GPU part idle, which the other pass fills) */
    const size_t set_bytes = eng__cuda_ctx_bytes(dc) + scr_bytes + nrec * 6 + KRN_CUDA_WS_BYTES;
    const char *streams = getenv("S3_CUDA_SCAN_STREAMS");
    int two = 0;
    if (!(streams && streams[0] == '1') && 2 * set_bytes <= ENG_CUDA_SCAN_TWO_BYTES) {
        struct s3_errinfo e2 = {0};
        int trc = ctx_new(dc->m, dc->cm, dc->n_ctx, dc->n_ub, 1, &ss->own, &e2);
        if (trc == 0) {
            ss->set_dc[1] = ss->own;
            if ((trc = set_buffers(ss, 1, scr_bytes, nrec)) < 0)
                s3_errf(&e2, trc, "%s", krn_cuda_errmsg(ss->own->dev));
        }
        if (trc < 0) /* one context for both sets, as where they do not fit */
            S3_LOG(S3_LOG_WARN, "event=cuda_scan_one_stream msg=\"%s\"", e2.msg);
        two = trc == 0;
    }
    if (!two)
        share_set0(ss);
    for (int i = 0; i < 2; i++)
        if ((rc = krn_cuda_host_alloc(ss->dev, (void **)&ss->h_tok[i],
                                      (size_t)dc->n_ctx * sizeof(int32_t))) < 0 ||
            (rc = krn_cuda_host_alloc(ss->dev, (void **)&ss->h_ids[i],
                                      nrec * sizeof(uint16_t))) < 0 ||
            (rc = krn_cuda_host_alloc(ss->dev, (void **)&ss->h_acts[i],
                                      nrec * sizeof(float))) < 0 ||
            (rc = krn_cuda_event_new(ss->dev, &ss->ev[i])) < 0)
            goto fail;
    host = malloc(ss->unit_floats * sizeof(float));
    ss->w_inv = malloc((size_t)ss->n_unit * sizeof(float));
    if (!host || !ss->w_inv) {
        rc = s3_errf(err, S3_ENOMEM, "cuda scan: out of memory");
        goto out;
    }
    for (int u = 0; u < ss->n_unit; u++) {
        struct eng_sae_unit un;
        /* eng_sae_get_unit only looks the tensors up; they are read here, not written */
        if (eng_sae_get_unit((struct eng_sae *)(uintptr_t)s, u / ss->n_kv, u % ss->n_kv, &un) <
            0) {
            rc = s3_errf(err, S3_EINTERNAL, "cuda scan: SAE unit %d missing", u);
            goto out;
        }
        ss->w_inv[u] = krn_cuda_sae_split(un.w_enc, ss->n_dict, ss->hd, (uint16_t *)host);
        memcpy(host + nd * hd, un.b_enc, nd * sizeof(float));
        memcpy(host + nd * hd + nd, un.b_dec, hd * sizeof(float));
        if ((rc = krn_cuda_upload(ss->dev, ss->d_w + (size_t)u * ss->unit_floats, host,
                                  ss->unit_floats * sizeof(float))) < 0)
            goto fail;
    }
    goto out;
fail:
    rc = s3_errf(err, rc == S3_ENOMEM ? S3_ENOMEM : S3_EDEVICE,
                 "cuda scan: cannot set up the device encoder (%s)", krn_cuda_errmsg(ss->dev));
out:
    free(host);
    if (rc < 0) {
        eng__cuda_sae_scan_free(ss);
        return rc;
    }
    *out = ss;
    return 0;
}

/* Device hook: encode the keys of this layer's rows past the prefix, every kv head, into the
 * pass's records (unit-major, rows of the pass after the prefix). */
static int sae_scan_hook(void *ud, struct krn_cuda_dev *dev, int layer, int pos0, int n,
                         const float *d_q, const float *d_k, int ld)
{
    struct eng_cuda_sae_scan *ss = ud;
    (void)d_q;
    const int slot = eng_sae_slot_of_layer(ss->sae, layer);
    if (slot < 0)
        return 0;
    const int r0 = ss->prefix > pos0 ? ss->prefix - pos0 : 0;
    if (r0 >= n)
        return 0;
    const int row0 = pos0 + r0 - ss->prefix;
    const size_t nd = (size_t)ss->n_dict, hd = (size_t)ss->hd;
    for (int h = 0; h < ss->n_kv; h++) {
        const int u = slot * ss->n_kv + h;
        const float *w = ss->d_w + (size_t)u * ss->unit_floats;
        const size_t rec = ((size_t)u * (size_t)ss->cur_out + (size_t)row0) * (size_t)ss->k;
        int rc = krn_cuda_sae_encode(dev, d_k + (size_t)r0 * (size_t)ld + (size_t)h * hd, ld,
                                     n - r0, ss->hd, (const uint16_t *)w, ss->w_inv[u],
                                     w + nd * hd, w + nd * hd + nd,
                                     ss->n_dict, ss->k, ss->d_scr[ss->set],
                                     ss->d_ids[ss->set] + rec, ss->d_acts[ss->set] + rec);
        if (rc < 0) {
            ss->hook_rc = rc;
            return 1;
        }
    }
    return 0;
}

void eng__cuda_sae_scan_drain(struct eng_cuda_sae_scan *ss)
{
    if (!ss)
        return;
    for (int i = 0; i < 2; i++)
        if (ss->set_dc[i])
            krn_cuda_sync(ss->set_dc[i]->dev);
    ss->n_flight = 0;
    ss->head = 0;
}

int eng__cuda_sae_scan_in_flight(const struct eng_cuda_sae_scan *ss)
{
    return ss ? ss->n_flight : 0;
}

int eng__cuda_sae_scan_streams(const struct eng_cuda_sae_scan *ss)
{
    return !ss ? 0 : ss->own ? 2 : 1;
}

/* Queue one pass: the token upload, the layers with the SAE hook and the records' copies (the
 * set's event is recorded by the caller, outside any capture: an event recorded during a
 * capture is not one the host can wait for). */
static int enqueue_pass(struct eng_cuda_sae_scan *ss, int set, const int32_t *ids, int n,
                        struct s3_errinfo *err)
{
    struct eng_cuda_ctx *dc = ss->set_dc[set];
    int rc = 0, n_hooked = 0;
    const struct hooks hs = {.mask = ss->mask, .cancel = ss->c->cancel, .scan_only = 1,
                             .no_q = 1, .dev_fn = sae_scan_hook, .dev_ud = ss};
    for (int pos0 = 0; pos0 < n; pos0 += dc->n_ub) {
        const int nb = n - pos0 < dc->n_ub ? n - pos0 : dc->n_ub;
        if ((rc = begin_ex(dc, ids + pos0, nb, pos0, &hs, ss->h_tok[set] + pos0, err)) < 0)
            return rc;
        if ((rc = enqueue_layers(dc, nb, pos0, &hs, &n_hooked)) < 0) {
            if (rc == S3_ECANCELED && ss->hook_rc < 0)
                rc = ss->hook_rc;
            return rc == S3_ECANCELED ? s3_errf(err, rc, "cuda scan: cancelled")
                                      : dev_fail(dc->dev, rc, err);
        }
    }
    const size_t nrec = (size_t)ss->n_unit * (size_t)ss->cur_out * (size_t)ss->k;
    if ((rc = krn_cuda_download_async(dc->dev, ss->h_ids[set], ss->d_ids[set],
                                      nrec * sizeof(uint16_t))) < 0 ||
        (rc = krn_cuda_download_async(dc->dev, ss->h_acts[set], ss->d_acts[set],
                                      nrec * sizeof(float))) < 0)
        return dev_fail(dc->dev, rc, err);
    return 0;
}

/* The pass queued as a graph: replayed when the set's graph has this shape; captured (in the
 * graph's place) when the set's previous pass had this shape too (so it ran plainly once:
 * lazy allocations happen outside a capture); else queued plainly. A capture that fails
 * turns graphs off and queues the pass plainly. */
static int enqueue_pass_graph(struct eng_cuda_sae_scan *ss, int set, const int32_t *ids, int n,
                              int prefix, struct s3_errinfo *err)
{
    struct krn_cuda_dev *dev = ss->set_dc[set]->dev;
    struct scan_graph *gs = ss->gs[set], *slot = &gs[0];
    for (int i = 0; i < SCAN_GRAPHS; i++)
        if (gs[i].g && gs[i].n == n && gs[i].prefix == prefix) {
            int rc = check_tokens(ss->dc, ids, n, err); /* as begin_ex on a plain pass */
            if (rc < 0)
                return rc;
            gs[i].used = ++ss->stamp;
            rc = krn_cuda_graph_launch(dev, gs[i].g);
            return rc < 0 ? dev_fail(dev, rc, err) : 0;
        }
    int seen = 0;
    for (int j = 0; j < SCAN_SEEN; j++)
        seen |= ss->seen_n[set][j] == n && ss->seen_prefix[set][j] == prefix;
    if (!seen) {
        ss->seen_n[set][ss->seen_next[set]] = n;
        ss->seen_prefix[set][ss->seen_next[set]] = prefix;
        ss->seen_next[set] = (ss->seen_next[set] + 1) % SCAN_SEEN;
        return enqueue_pass(ss, set, ids, n, err);
    }
    for (int i = 1; i < SCAN_GRAPHS && slot->g; i++) /* an empty slot, or the oldest */
        if (!gs[i].g || gs[i].used < slot->used)
            slot = &gs[i];
    krn_cuda_graph_free(slot->g);
    slot->g = NULL;
    if (krn_cuda_capture_begin(dev) < 0) {
        ss->graphs = 0;
        return enqueue_pass(ss, set, ids, n, err);
    }
    struct s3_errinfo cerr = {0};
    const int prc = enqueue_pass(ss, set, ids, n, &cerr);
    struct krn_cuda_graph *g = NULL;
    const int grc = krn_cuda_capture_end(dev, &g);
    if (prc < 0 && prc != S3_EDEVICE) { /* bad input or cancelled: not the capture's fault */
        krn_cuda_graph_free(g);
        if (err)
            *err = cerr;
        return prc;
    }
    if (prc < 0 || grc < 0) {
        krn_cuda_graph_free(g);
        S3_LOG(S3_LOG_WARN, "event=cuda_graph_off why=\"%s\"",
               prc < 0 ? cerr.msg : krn_cuda_errmsg(dev));
        ss->graphs = 0;
        return enqueue_pass(ss, set, ids, n, err);
    }
    *slot = (struct scan_graph){g, n, prefix, ++ss->stamp};
    const int rc = krn_cuda_graph_launch(dev, g);
    return rc < 0 ? dev_fail(dev, rc, err) : 0;
}

int eng__cuda_sae_scan_submit(struct eng_cuda_sae_scan *ss, const int32_t *ids, int n,
                              int prefix, struct s3_errinfo *err)
{
    if (!ss || !ids || n < 1 || prefix < 0 || prefix >= n || n - prefix > ss->n_rows ||
        n > ss->dc->n_ctx)
        return s3_errf(err, S3_EINVAL, "cuda scan: bad pass (n %d, prefix %d)", n, prefix);
    if (ss->n_flight >= 2)
        return s3_errf(err, S3_EBUSY, "cuda scan: two passes in flight already");
    const int set = (ss->head + ss->n_flight) & 1;
    struct eng_cuda_ctx *dc = ss->set_dc[set];
    /* the set's previous pass was waited for: its tokens and records are free */
    memcpy(ss->h_tok[set], ids, (size_t)n * sizeof(int32_t));
    ss->set = set;
    ss->prefix = prefix;
    ss->cur_out = n - prefix;
    ss->hook_rc = 0;
    int rc = ss->graphs && !dc->profile ? enqueue_pass_graph(ss, set, ids, n, prefix, err)
                                        : enqueue_pass(ss, set, ids, n, err);
    if (rc == 0 && (rc = krn_cuda_event_record(dc->dev, ss->ev[set])) < 0)
        rc = dev_fail(dc->dev, rc, err);
    if (rc < 0) {
        eng__cuda_sae_scan_drain(ss);
        return rc;
    }
    ss->n_out[set] = ss->cur_out;
    ss->n_flight++;
    ss->dc->stats.n_tokens += n; /* both sets' passes counted on the scan's context */
    ss->dc->stats.n_ubatch += (n + dc->n_ub - 1) / dc->n_ub;
    return 0;
}

int eng__cuda_sae_scan_wait(struct eng_cuda_sae_scan *ss, const uint16_t **ids,
                            const float **acts, int *n_out, struct s3_errinfo *err)
{
    if (!ss || ss->n_flight < 1)
        return s3_errf(err, S3_EINVAL, "cuda scan: no pass in flight");
    const int set = ss->head;
    struct krn_cuda_dev *dev = ss->set_dc[set]->dev;
    int rc = krn_cuda_event_wait_host(dev, ss->ev[set]);
    if (rc < 0) {
        rc = dev_fail(dev, rc, err);
        eng__cuda_sae_scan_drain(ss);
        return rc;
    }
    ss->head ^= 1;
    ss->n_flight--;
    *ids = ss->h_ids[set];
    *acts = ss->h_acts[set];
    *n_out = ss->n_out[set];
    return 0;
}

#else /* !S3_HAVE_CUDA: the device path is not built */

static int no_cuda(struct s3_errinfo *err)
{
    return s3_errf(err, S3_EDEVICE, "cuda: not built with CUDA (configure with -DS3_CUDA=ON)");
}

int eng__cuda_available(void)
{
    return 0;
}

int eng__cuda_model_new(const struct eng_model *m, int ordinal, struct eng_cuda_model **out,
                        struct s3_errinfo *err)
{
    (void)m, (void)ordinal;
    *out = NULL;
    return no_cuda(err);
}

void eng__cuda_model_free(struct eng_cuda_model *cm)
{
    (void)cm;
}

size_t eng__cuda_model_bytes(const struct eng_cuda_model *cm)
{
    (void)cm;
    return 0;
}

int eng__cuda_ctx_new(const struct eng_model *m, struct eng_cuda_model *cm, int n_ctx, int n_ub,
                      struct eng_cuda_ctx **out, struct s3_errinfo *err)
{
    (void)m, (void)cm, (void)n_ctx, (void)n_ub;
    *out = NULL;
    return no_cuda(err);
}

void eng__cuda_ctx_free(struct eng_cuda_ctx *dc)
{
    (void)dc;
}

size_t eng__cuda_ctx_bytes(const struct eng_cuda_ctx *dc)
{
    (void)dc;
    return 0;
}

int eng__cuda_ubatch(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                     float *logits_last, float *logits_all, const struct eng_cuda_hook *hook,
                     struct s3_errinfo *err)
{
    (void)dc, (void)tokens, (void)n, (void)pos0, (void)logits_last, (void)logits_all, (void)hook;
    return no_cuda(err);
}

int eng__cuda_ubatch_scan(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_cuda_hook *hook, const struct eng_cuda_scan *sc,
                          struct s3_errinfo *err)
{
    (void)dc, (void)tokens, (void)n, (void)pos0, (void)hook, (void)sc;
    return no_cuda(err);
}

int eng__cuda_ubatch_pick(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_sample_params *sp, double u,
                          const struct eng_cuda_hook *hook, int32_t *next, int *how,
                          struct s3_errinfo *err)
{
    (void)dc, (void)tokens, (void)n, (void)pos0, (void)sp, (void)u, (void)hook, (void)next,
        (void)how;
    return no_cuda(err);
}

int eng__cuda_ubatch_argmax(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                            int32_t *next, struct s3_errinfo *err)
{
    (void)dc, (void)tokens, (void)n, (void)pos0, (void)next;
    return no_cuda(err);
}

int eng__cuda_last_logits(struct eng_cuda_ctx *dc, float *out, struct s3_errinfo *err)
{
    (void)dc, (void)out;
    return no_cuda(err);
}

struct krn_cuda_dev *eng__cuda_ctx_dev(const struct eng_cuda_ctx *dc)
{
    (void)dc;
    return NULL;
}

void eng__cuda_ctx_set_profile(struct eng_cuda_ctx *dc, int on)
{
    (void)dc, (void)on;
}

void eng__cuda_ctx_stats(const struct eng_cuda_ctx *dc, struct eng_cuda_stats *out)
{
    (void)dc;
    memset(out, 0, sizeof(*out));
}

int eng__cuda_ctx_on_device(const struct eng_ctx *c)
{
    (void)c;
    return 0;
}

int eng__cuda_sae_scan_new(struct eng_ctx *c, const struct eng_sae *s, int n_rows, int k,
                           struct eng_cuda_sae_scan **out, struct s3_errinfo *err)
{
    (void)c, (void)s, (void)n_rows, (void)k;
    *out = NULL;
    return no_cuda(err);
}

void eng__cuda_sae_scan_free(struct eng_cuda_sae_scan *ss)
{
    (void)ss;
}

int eng__cuda_sae_scan_submit(struct eng_cuda_sae_scan *ss, const int32_t *ids, int n,
                              int prefix, struct s3_errinfo *err)
{
    (void)ss, (void)ids, (void)n, (void)prefix;
    return no_cuda(err);
}

int eng__cuda_sae_scan_wait(struct eng_cuda_sae_scan *ss, const uint16_t **ids,
                            const float **acts, int *n_out, struct s3_errinfo *err)
{
    (void)ss;
    *ids = NULL;
    *acts = NULL;
    *n_out = 0;
    return no_cuda(err);
}

void eng__cuda_sae_scan_drain(struct eng_cuda_sae_scan *ss)
{
    (void)ss;
}

int eng__cuda_sae_scan_in_flight(const struct eng_cuda_sae_scan *ss)
{
    (void)ss;
    return 0;
}

int eng__cuda_sae_scan_streams(const struct eng_cuda_sae_scan *ss)
{
    (void)ss;
    return 0;
}

#endif
