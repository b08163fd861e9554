/* kernels/backend.c - the public backend API of kernels.h: argument checks common to every
 * backend, then the backend's vtable slot (kernels_int.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_int.h"

int krn__be_err(struct krn_backend *be, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err, sizeof(be->err), fmt, ap);
    va_end(ap);
    return code;
}

int krn_backend_new(const char *name, int n_threads, struct krn_backend **out,
                    struct s3_errinfo *err)
{
    *out = NULL;
    if (!name)
        return s3_errf(err, S3_EINVAL, "backend name missing (cpu or cuda)");
    const int cpu = strcmp(name, "cpu") == 0, cuda = strcmp(name, "cuda") == 0;
    if (!cpu && !cuda)
        return s3_errf(err, S3_EINVAL, "unknown backend '%s' (cpu or cuda)", name);
#ifndef S3_HAVE_CUDA
    if (cuda)
        return s3_errf(err, S3_EDEVICE, "backend cuda: this build has no CUDA (S3_CUDA=OFF)");
#endif
    struct krn_backend *be = calloc(1, sizeof(*be));
    if (!be)
        return s3_errf(err, S3_ENOMEM, "backend %s: out of memory", name);
    int rc;
#ifdef S3_HAVE_CUDA
    rc = cpu ? krn__backend_cpu_init(be, n_threads) : krn__backend_cuda_init(be);
#else
    rc = krn__backend_cpu_init(be, n_threads);
#endif
    if (rc < 0) {
        s3_errf(err, rc, "backend %s: %s", name, be->err[0] ? be->err : "out of memory");
        free(be);
        return rc;
    }
    *out = be;
    return 0;
}

void krn_backend_free(struct krn_backend *be)
{
    if (!be)
        return;
    be->destroy(be);
    free(be);
}

const char *krn_backend_name(const struct krn_backend *be)
{
    return be->name;
}

const char *krn_backend_errmsg(const struct krn_backend *be)
{
    return be->err;
}

int krn_buf_alloc(struct krn_backend *be, size_t bytes, void **buf)
{
    *buf = NULL;
    if (bytes == 0)
        return krn__be_err(be, S3_EINVAL, "buffer of 0 bytes");
    return be->buf_alloc(be, bytes, buf);
}

void krn_buf_free(struct krn_backend *be, void *buf)
{
    if (buf)
        be->buf_free(be, buf);
}

int krn_upload(struct krn_backend *be, void *buf, const void *src, size_t bytes)
{
    if (!buf || !src)
        return krn__be_err(be, S3_EINVAL, "upload: NULL buffer");
    return bytes ? be->upload(be, buf, src, bytes) : 0;
}

int krn_download(struct krn_backend *be, void *dst, const void *buf, size_t bytes)
{
    if (!buf || !dst)
        return krn__be_err(be, S3_EINVAL, "download: NULL buffer");
    return bytes ? be->download(be, dst, buf, bytes) : 0;
}

int krn_synchronize(struct krn_backend *be)
{
    return be->synchronize(be);
}

int krn_weight_new(struct krn_backend *be, uint32_t ggml_type, const void *data, int n_rows,
                   int n_cols, struct krn_weight **out)
{
    *out = NULL;
    if (!data || n_rows <= 0 || n_cols <= 0 || n_cols % 32)
        return krn__be_err(be, S3_EINVAL,
                           "weight %d x %d: rows and columns must be positive, columns a "
                           "multiple of 32",
                           n_rows, n_cols);
    struct krn_weight *w = calloc(1, sizeof(*w));
    if (!w)
        return krn__be_err(be, S3_ENOMEM, "weight: out of memory");
    w->n_rows = n_rows, w->n_cols = n_cols;
    const int rc = be->weight_new(be, ggml_type, data, w);
    if (rc < 0) {
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void krn_weight_free(struct krn_backend *be, struct krn_weight *w)
{
    if (!w)
        return;
    be->weight_free(be, w);
    free(w);
}

int krn_be_matmul(struct krn_backend *be, const struct krn_weight *w, const float *x, int n_tok,
                  float *y)
{
    if (!w || !x || !y || n_tok <= 0)
        return krn__be_err(be, S3_EINVAL, "matmul: no weight or buffer, or %d tokens", n_tok);
    return be->matmul(be, w, x, n_tok, y);
}

int krn_be_rmsnorm(struct krn_backend *be, float *y, const float *x, const float *w, int n_rows,
                   int n, float eps)
{
    if (!y || !x || !w || n_rows <= 0 || n <= 0 || !(eps > 0.0f))
        return krn__be_err(be, S3_EINVAL, "rmsnorm: %d rows of %d, eps %g", n_rows, n,
                           (double)eps);
    return be->rmsnorm(be, y, x, w, n_rows, n, eps);
}

int krn_be_rope(struct krn_backend *be, float *x, int n_tok, int pos0, int n_heads,
                int head_dim, int n_rot, float base, int mode)
{
    if (!x || n_tok <= 0 || pos0 < 0 || n_heads <= 0 || head_dim <= 0 || n_rot < 0 ||
        n_rot > head_dim || n_rot % 2 || !(base > 0.0f) ||
        (mode != KRN_ROPE_NORM && mode != KRN_ROPE_NEOX))
        return krn__be_err(be, S3_EINVAL,
                           "rope: %d tokens from %d, %d heads of %d, %d rotated dims, base %g, "
                           "mode %d",
                           n_tok, pos0, n_heads, head_dim, n_rot, (double)base, mode);
    return be->rope(be, x, n_tok, pos0, n_heads, head_dim, n_rot, base, mode);
}

int krn_be_attention(struct krn_backend *be, float *out, const float *q, const float *k,
                     const float *v, int n_q, int pos0, int n_head, int n_kv_head,
                     int head_dim, float scale)
{
    if (!out || !q || !k || !v || n_q <= 0 || pos0 < 0 || n_kv_head <= 0 ||
        n_head % n_kv_head || n_head <= 0 || head_dim <= 0 || head_dim % 32 || head_dim > 256)
        return krn__be_err(be, S3_EINVAL,
                           "attention: %d queries from %d, %d heads over %d kv heads of %d "
                           "(a multiple of 32 up to 256)",
                           n_q, pos0, n_head, n_kv_head, head_dim);
    return be->attention(be, out, q, k, v, n_q, pos0, n_head, n_kv_head, head_dim, scale);
}

int krn_be_softmax(struct krn_backend *be, float *x, int n_rows, int n)
{
    if (!be->softmax)
        return krn__be_err(be, S3_EINVAL, "softmax: the %s backend has no softmax", be->name);
    if (!x || n_rows <= 0 || n <= 0)
        return krn__be_err(be, S3_EINVAL, "softmax: %d rows of %d", n_rows, n);
    return be->softmax(be, x, n_rows, n);
}
