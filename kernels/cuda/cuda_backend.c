/* kernels/cuda/cuda_backend.c - the CUDA backend of the vtable in kernels_int.h, over the C API
 * of cuda.h: fp16 weights (dequantised on the device where it can), fp16 operands with fp32
 * sums, f32 buffers at the interface (converted to and from fp16 around each op, as the
 * device forward pass rounds its activations). Compiled into s3kernels in CUDA builds. */
#include <stdlib.h>
#include <string.h>

#include "cuda.h"
#include "kernels_int.h"

enum { SCR_A, SCR_B, SCR_C, SCR_KC, SCR_VC, SCR_CS, SCR_N };

struct cuda_be {
    struct krn_cuda_dev *dev;
    void *scr[SCR_N]; /* device scratch, grown on demand */
    size_t scr_bytes[SCR_N];
};

static int fail(struct krn_backend *be, int rc, const char *what)
{
    struct cuda_be *c = be->ctx;
    return krn__be_err(be, rc, "%s: %s", what,
                       rc == S3_EDEVICE ? krn_cuda_errmsg(c->dev)
                       : rc == S3_ENOMEM ? "out of device memory"
                                         : "bad arguments");
}

/* Device scratch slot i of at least bytes, or NULL (message in be->err). */
static void *scratch(struct krn_backend *be, int i, size_t bytes)
{
    struct cuda_be *c = be->ctx;
    if (c->scr_bytes[i] >= bytes)
        return c->scr[i];
    krn_cuda_sync(c->dev); /* ops in flight may still read the old one */
    krn_cuda_free(c->scr[i]);
    c->scr[i] = NULL, c->scr_bytes[i] = 0;
    int rc = krn_cuda_malloc(c->dev, &c->scr[i], bytes);
    if (rc < 0) {
        fail(be, rc, "scratch");
        return NULL;
    }
    c->scr_bytes[i] = bytes;
    return c->scr[i];
}

static int cu_buf_alloc(struct krn_backend *be, size_t bytes, void **buf)
{
    struct cuda_be *c = be->ctx;
    int rc = krn_cuda_malloc(c->dev, buf, bytes);
    if (rc == 0 && (rc = krn_cuda_memset(c->dev, *buf, 0, bytes)) < 0) {
        krn_cuda_free(*buf);
        *buf = NULL;
    }
    return rc < 0 ? fail(be, rc, "buffer") : 0;
}

static void cu_buf_free(struct krn_backend *be, void *buf)
{
    struct cuda_be *c = be->ctx;
    krn_cuda_sync(c->dev);
    krn_cuda_free(buf);
}

static int cu_upload(struct krn_backend *be, void *buf, const void *src, size_t bytes)
{
    struct cuda_be *c = be->ctx;
    const int rc = krn_cuda_upload(c->dev, buf, src, bytes);
    return rc < 0 ? fail(be, rc, "upload") : 0;
}

static int cu_download(struct krn_backend *be, void *dst, const void *buf, size_t bytes)
{
    struct cuda_be *c = be->ctx;
    const int rc = krn_cuda_download(c->dev, dst, buf, bytes);
    return rc < 0 ? fail(be, rc, "download") : 0;
}

static int cu_synchronize(struct krn_backend *be)
{
    struct cuda_be *c = be->ctx;
    const int rc = krn_cuda_sync(c->dev);
    return rc < 0 ? fail(be, rc, "synchronize") : 0;
}

/* fp16 matrix: dequantised on the device for the types it knows, else on the host. */
static int cu_weight_new(struct krn_backend *be, uint32_t ggml_type, const void *data,
                         struct krn_weight *w)
{
    struct cuda_be *c = be->ctx;
    const int64_t n = (int64_t)w->n_rows * w->n_cols;
    const size_t raw = krn_type_row_bytes(ggml_type, n);
    if (raw == 0)
        return krn__be_err(be, S3_EINVAL, "weight: ggml type %u not supported", ggml_type);
    uint16_t *d_w = NULL;
    int rc = krn_cuda_malloc(c->dev, (void **)&d_w, (size_t)n * sizeof(uint16_t));
    if (rc < 0)
        return fail(be, rc, "weight");
    if (krn_cuda_dequant_supported(ggml_type)) {
        void *d_raw = scratch(be, SCR_A, raw);
        if (!d_raw || (rc = krn_cuda_upload(c->dev, d_raw, data, raw)) < 0 ||
            (rc = krn_cuda_dequant(c->dev, ggml_type, d_raw, d_w, n)) < 0 ||
            (rc = krn_cuda_sync(c->dev)) < 0) {
            krn_cuda_free(d_w);
            return d_raw ? fail(be, rc, "weight") : S3_ENOMEM;
        }
    } else {
        float *f = malloc((size_t)n * sizeof(float));
        uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
        rc = f && h ? krn_dequant(ggml_type, data, f, n) : S3_ENOMEM;
        if (rc == 0) {
            for (int64_t i = 0; i < n; i++)
                h[i] = krn_f32_to_fp16(f[i]);
            rc = krn_cuda_upload(c->dev, d_w, h, (size_t)n * sizeof(uint16_t));
        }
        free(f), free(h);
        if (rc < 0) {
            krn_cuda_free(d_w);
            return fail(be, rc, "weight");
        }
    }
    w->impl = d_w;
    return 0;
}

static void cu_weight_free(struct krn_backend *be, struct krn_weight *w)
{
    cu_buf_free(be, w->impl);
}

static int cu_matmul(struct krn_backend *be, const struct krn_weight *w, const float *x,
                     int n_tok, float *y)
{
    struct cuda_be *c = be->ctx;
    const int64_t nx = (int64_t)n_tok * w->n_cols;
    uint16_t *x16 = scratch(be, SCR_B, (size_t)nx * sizeof(uint16_t));
    if (!x16)
        return S3_ENOMEM;
    int rc = krn_cuda_f32_to_f16(c->dev, x, x16, nx);
    if (rc == 0)
        rc = krn_cuda_gemm(c->dev, n_tok, w->n_rows, w->n_cols, x16, w->impl, y, w->n_rows,
                           0.0f, KRN_CUDA_F32);
    return rc < 0 ? fail(be, rc, "matmul") : 0;
}

static int cu_rmsnorm(struct krn_backend *be, float *y, const float *x, const float *w,
                      int n_rows, int n, float eps)
{
    struct cuda_be *c = be->ctx;
    const int64_t ne = (int64_t)n_rows * n;
    uint16_t *y16 = scratch(be, SCR_B, (size_t)ne * sizeof(uint16_t));
    if (!y16)
        return S3_ENOMEM;
    int rc = krn_cuda_rmsnorm(c->dev, x, w, n_rows, n, eps, y16);
    if (rc == 0)
        rc = krn_cuda_f16_to_f32(c->dev, y16, y, ne);
    return rc < 0 ? fail(be, rc, "rmsnorm") : 0;
}

/* cos/sin of positions 0..n_pos-1 (krn_rope_table rows) on the device. */
static float *rope_table(struct krn_backend *be, int n_pos, int n_rot, float base)
{
    struct cuda_be *c = be->ctx;
    const size_t bytes = ((size_t)n_pos * n_rot + 2) * sizeof(float);
    float *h = malloc(bytes), *d = scratch(be, SCR_CS, bytes);
    if (!h || !d) {
        free(h);
        if (!h)
            krn__be_err(be, S3_ENOMEM, "rope table: out of memory");
        return NULL;
    }
    for (int p = 0; p < n_pos; p++)
        krn_rope_table(h + (size_t)p * n_rot, p, n_rot, base, NULL);
    const int rc = krn_cuda_upload(c->dev, d, h, bytes);
    free(h);
    if (rc < 0) {
        fail(be, rc, "rope table");
        return NULL;
    }
    return d;
}

/* The device rope of q (no kv heads), then back to f32. */
static int cu_rope(struct krn_backend *be, float *x, int n_tok, int pos0, int n_heads,
                   int head_dim, int n_rot, float base, int mode)
{
    struct cuda_be *c = be->ctx;
    const int64_t ne = (int64_t)n_tok * n_heads * head_dim;
    float *cs = rope_table(be, pos0 + n_tok, n_rot, base);
    uint16_t *q16 = cs ? scratch(be, SCR_B, (size_t)ne * sizeof(uint16_t)) : NULL;
    if (!q16)
        return be->err[0] ? S3_EDEVICE : S3_ENOMEM;
    int rc = krn_cuda_rope_qkv(c->dev, x, n_heads * head_dim, n_tok, pos0, n_heads, 0, head_dim,
                               n_rot, cs,
                               mode == KRN_ROPE_NEOX ? KRN_CUDA_ROPE_NEOX : KRN_CUDA_ROPE_NORM,
                               q16, NULL, NULL, pos0 + n_tok);
    if (rc == 0)
        rc = krn_cuda_f16_to_f32(c->dev, q16, x, ne);
    return rc < 0 ? fail(be, rc, "rope") : 0;
}

static int cu_attention(struct krn_backend *be, float *out, const float *q, const float *k,
                        const float *v, int n_q, int pos0, int n_head, int n_kv_head,
                        int head_dim, float scale)
{
    struct cuda_be *c = be->ctx;
    const int n_ctx = pos0 + n_q;
    const int64_t nq = (int64_t)n_q * n_head * head_dim;
    const size_t cache = (size_t)n_kv_head * n_ctx * head_dim * sizeof(uint16_t);
    uint16_t *q16 = scratch(be, SCR_B, (size_t)nq * sizeof(uint16_t));
    uint16_t *o16 = q16 ? scratch(be, SCR_C, (size_t)nq * sizeof(uint16_t)) : NULL;
    uint16_t *kc = o16 ? scratch(be, SCR_KC, cache) : NULL;
    uint16_t *vc = kc ? scratch(be, SCR_VC, cache) : NULL;
    if (!vc)
        return S3_ENOMEM;
    int rc = krn_cuda_f32_to_f16(c->dev, q, q16, nq);
    if (rc == 0)
        rc = krn_cuda_kv_rows(c->dev, k, n_ctx, 0, n_kv_head, head_dim, kc, n_ctx);
    if (rc == 0)
        rc = krn_cuda_kv_rows(c->dev, v, n_ctx, 0, n_kv_head, head_dim, vc, n_ctx);
    if (rc == 0)
        rc = krn_cuda_attn(c->dev, q16, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx,
                           scale, o16);
    if (rc == 0)
        rc = krn_cuda_f16_to_f32(c->dev, o16, out, nq);
    return rc < 0 ? fail(be, rc, "attention") : 0;
}

static int cu_softmax(struct krn_backend *be, float *x, int n_rows, int n)
{
    struct cuda_be *c = be->ctx;
    const int rc = krn_cuda_softmax_rows(c->dev, x, n_rows, n);
    return rc < 0 ? fail(be, rc, "softmax") : 0;
}

static void cu_destroy(struct krn_backend *be)
{
    struct cuda_be *c = be->ctx;
    if (!c)
        return;
    if (c->dev) {
        krn_cuda_sync(c->dev);
        for (int i = 0; i < SCR_N; i++)
            krn_cuda_free(c->scr[i]);
        krn_cuda_dev_free(c->dev);
    }
    free(c);
}

int krn__backend_cuda_init(struct krn_backend *be)
{
    struct cuda_be *c = calloc(1, sizeof(*c));
    if (!c)
        return krn__be_err(be, S3_ENOMEM, "out of memory");
    if (krn_cuda_dev_new(0, &c->dev) < 0) {
        free(c);
        return krn__be_err(be, S3_EDEVICE, "no usable CUDA device (%d found)",
                           krn_cuda_device_count());
    }
    be->name = "cuda";
    be->ctx = c;
    be->buf_alloc = cu_buf_alloc;
    be->buf_free = cu_buf_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->weight_new = cu_weight_new;
    be->weight_free = cu_weight_free;
    be->matmul = cu_matmul;
    be->rmsnorm = cu_rmsnorm;
    be->rope = cu_rope;
    be->attention = cu_attention;
    be->softmax = cu_softmax;
    be->synchronize = cu_synchronize;
    be->destroy = cu_destroy;
    return 0;
}
