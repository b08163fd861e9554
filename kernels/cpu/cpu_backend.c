/* kernels/cpu/cpu_backend.c - the CPU backend of the vtable in kernels_int.h: host memory and
 * the CPU ops of kernels.h, the matrix product and attention spread over a thread pool. */
#include <stdlib.h>
#include <string.h>

#include "kernels_int.h"

struct cpu_be {
    struct krn_pool *pool;
};

static int cpu_buf_alloc(struct krn_backend *be, size_t bytes, void **buf)
{
    const size_t n = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, n);
    if (!p)
        return krn__be_err(be, S3_ENOMEM, "buffer of %zu bytes: out of memory", bytes);
    memset(p, 0, n);
    *buf = p;
    return 0;
}

static void cpu_buf_free(struct krn_backend *be, void *buf)
{
    (void)be;
    free(buf);
}

static int cpu_copy(struct krn_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memmove(dst, src, bytes);
    return 0;
}

static int cpu_weight_new(struct krn_backend *be, uint32_t ggml_type, const void *data,
                          struct krn_weight *w)
{
    struct krn_qmat *q = calloc(1, sizeof(*q));
    if (!q)
        return krn__be_err(be, S3_ENOMEM, "weight: out of memory");
    const int rc = krn_qmat_init(q, ggml_type, data, w->n_rows, w->n_cols);
    if (rc < 0) {
        free(q);
        return krn__be_err(be, rc, "weight of ggml type %u, %d x %d: %s", ggml_type, w->n_rows,
                           w->n_cols, rc == S3_ENOMEM ? "out of memory" : "type not supported");
    }
    w->impl = q;
    return 0;
}

static void cpu_weight_free(struct krn_backend *be, struct krn_weight *w)
{
    (void)be;
    krn_qmat_deinit(w->impl);
    free(w->impl);
}

struct mm_job {
    const struct krn_qmat *w;
    const struct krn_qact *a;
    int n_tok;
    float *y;
};

/* threads take whole row groups of 16 */
static void mm_task(void *ud, int ith, int nth)
{
    const struct mm_job *j = ud;
    const int ng = j->w->n_grp;
    const int g0 = (int)((long long)ng * ith / nth), g1 = (int)((long long)ng * (ith + 1) / nth);
    const int r1 = g1 * 16 < j->w->n_rows ? g1 * 16 : j->w->n_rows;
    if (g0 * 16 < r1)
        krn_qmatmul(j->w, j->a, j->n_tok, j->y, j->w->n_rows, g0 * 16, r1);
}

static int cpu_matmul(struct krn_backend *be, const struct krn_weight *w, const float *x,
                      int n_tok, float *y)
{
    struct cpu_be *c = be->ctx;
    struct krn_qact a;
    if (krn_qact_init(&a, n_tok, w->n_cols) < 0)
        return krn__be_err(be, S3_ENOMEM, "matmul of %d tokens: out of memory", n_tok);
    krn_qact_quantize(&a, x, 0, n_tok);
    struct mm_job j = {.w = w->impl, .a = &a, .n_tok = n_tok, .y = y};
    krn_pool_run(c->pool, mm_task, &j);
    krn_qact_deinit(&a);
    return 0;
}

static int cpu_rmsnorm(struct krn_backend *be, float *y, const float *x, const float *w,
                       int n_rows, int n, float eps)
{
    (void)be;
    for (int r = 0; r < n_rows; r++)
        krn_rmsnorm(y + (size_t)r * n, x + (size_t)r * n, w, n, eps);
    return 0;
}

static int cpu_rope(struct krn_backend *be, float *x, int n_tok, int pos0, int n_heads,
                    int head_dim, int n_rot, float base, int mode)
{
    float *cs = malloc(((size_t)n_rot + 2) * sizeof(float));
    if (!cs)
        return krn__be_err(be, S3_ENOMEM, "rope: out of memory");
    for (int t = 0; t < n_tok; t++) {
        krn_rope_table(cs, pos0 + t, n_rot, base, NULL);
        krn_rope_apply(x + (size_t)t * n_heads * head_dim, n_heads, head_dim, n_rot, cs, mode);
    }
    free(cs);
    return 0;
}

struct attn_job {
    float *out;
    const float *q;
    const uint16_t *kc, *vc;
    int n_q, pos0, n_head, n_kv_head, head_dim, n_ctx;
    float scale, *scratch;
};

static void attn_task(void *ud, int ith, int nth)
{
    const struct attn_job *j = ud;
    const int n = krn_attn_n_items(j->n_q, j->n_head);
    const int a = (int)((long long)n * ith / nth), b = (int)((long long)n * (ith + 1) / nth);
    if (a < b)
        krn_attn_f16(j->out, j->q, j->kc, j->vc, j->n_q, j->pos0, j->n_head, j->n_kv_head,
                     j->head_dim, j->n_ctx, j->scale, j->scratch + (size_t)ith * 4 * j->n_ctx,
                     a, b);
}

/* The rows go into the f16 cache layouts of krn_attn_f16 (K transposed), then attention. */
static int cpu_attention(struct krn_backend *be, float *out, const float *q, const float *k,
                         const float *v, int n_q, int pos0, int n_head, int n_kv_head,
                         int head_dim, float scale)
{
    struct cpu_be *c = be->ctx;
    const int n_ctx = pos0 + n_q, nth = krn_pool_n_threads(c->pool);
    const size_t cache = (size_t)n_kv_head * head_dim * n_ctx;
    uint16_t *kc = malloc(cache * sizeof(uint16_t)), *vc = malloc(cache * sizeof(uint16_t));
    float *scratch = malloc((size_t)nth * 4 * n_ctx * sizeof(float));
    if (!kc || !vc || !scratch) {
        free(kc), free(vc), free(scratch);
        return krn__be_err(be, S3_ENOMEM, "attention over %d keys: out of memory", n_ctx);
    }
    const int ld = n_kv_head * head_dim;
    for (int j = 0; j < n_ctx; j++)
        for (int h = 0; h < n_kv_head; h++)
            for (int d = 0; d < head_dim; d++) {
                const size_t src = (size_t)j * ld + (size_t)h * head_dim + d;
                kc[((size_t)h * head_dim + d) * n_ctx + j] = krn_f32_to_fp16(k[src]);
                vc[((size_t)h * n_ctx + j) * head_dim + d] = krn_f32_to_fp16(v[src]);
            }
    struct attn_job j = {.out = out, .q = q, .kc = kc, .vc = vc, .n_q = n_q, .pos0 = pos0,
                         .n_head = n_head, .n_kv_head = n_kv_head, .head_dim = head_dim,
                         .n_ctx = n_ctx, .scale = scale, .scratch = scratch};
    krn_pool_run(c->pool, attn_task, &j);
    free(kc), free(vc), free(scratch);
    return 0;
}

static int cpu_softmax(struct krn_backend *be, float *x, int n_rows, int n)
{
    (void)be;
    for (int r = 0; r < n_rows; r++)
        krn_softmax(x + (size_t)r * n, n);
    return 0;
}

static int cpu_synchronize(struct krn_backend *be)
{
    (void)be;
    return 0;
}

static void cpu_destroy(struct krn_backend *be)
{
    struct cpu_be *c = be->ctx;
    if (c)
        krn_pool_free(c->pool);
    free(c);
}

int krn__backend_cpu_init(struct krn_backend *be, int n_threads)
{
    struct cpu_be *c = calloc(1, sizeof(*c));
    if (!c || krn_pool_new(n_threads, &c->pool) < 0) {
        free(c);
        return krn__be_err(be, S3_ENOMEM, "thread pool: out of memory");
    }
    be->name = "cpu";
    be->ctx = c;
    be->buf_alloc = cpu_buf_alloc;
    be->buf_free = cpu_buf_free;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->weight_new = cpu_weight_new;
    be->weight_free = cpu_weight_free;
    be->matmul = cpu_matmul;
    be->rmsnorm = cpu_rmsnorm;
    be->rope = cpu_rope;
    be->attention = cpu_attention;
    be->softmax = cpu_softmax;
    be->synchronize = cpu_synchronize;
    be->destroy = cpu_destroy;
    return 0;
}
