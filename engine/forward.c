/* engine/forward.c - the Llama-family forward pass over a KV cache.
 *
 * One ubatch of n tokens (n <= ENG_MAX_UBATCH) at positions pos..pos+n-1:
 *
 *   x = embed(tokens)                                  (n, d)
 *   for each layer:
 *     xn = rmsnorm(x) -> int8                          (n, d)
 *     q, k, v = Wq xn (+bq), Wk xn (+bk), Wv xn (+bv)  (n, H*hd), (n, Hkv*hd) x2
 *     [Q/K hook: pre-RoPE q, k]
 *     rope(q), rope(k); K, V -> f16 cache at pos..pos+n-1
 *     att = causal softmax(q K^T / sqrt(hd)) V         (n, H*hd), GQA: head h reads kv h/(H/Hkv)
 *     x += Wo att
 *     xn = rmsnorm(x) -> int8
 *     x += Wdown (silu(Wgate xn) * Wup xn)
 *   logits = Wout rmsnorm(x)                           (rows that are asked for)
 *
 * Prefill runs each matrix as a GEMM over the whole ubatch; decode is the same code with
 * n = 1. Every step is one task of the context's thread pool: matrices split by rows,
 * per-token work by tokens, attention by (head, 4 queries); for a few tokens (decode) the
 * per-token steps run on the calling thread, which saves four pool hand-offs per layer.
 * No allocation per token. With device "cpu-f32" (m->f32_act) the matrices are
 * multiplied by the f32 activations instead of their int8 copies (matmul_f32): the reference
 * math, within float rounding of a double computation, for comparing devices. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

enum phase {
    PH_NORM,     /* optional x += tmp; xn = rmsnorm(x, normw); quantise xn */
    PH_MATMUL,   /* y_i = W_i act for up to 3 matrices */
    PH_BIAS,     /* q, k, v += biases */
    PH_ROPE_KV,  /* rotate q, k; store k, v in the cache */
    PH_ATTN,     /* attention items */
    PH_QUANT,    /* quantise src rows into act */
    PH_SWIGLU,   /* gate = silu(gate) * up; quantise into act_ff */
};

struct job {
    struct eng_ctx *c;
    enum phase ph;
    int n, pos0, layer;
    /* PH_NORM */
    int add_tmp;
    const float *normw;
    int t0;              /* first row to normalise (final norm only needs some rows) */
    /* PH_MATMUL */
    int n_mat;
    const struct krn_qmat *w[3];
    float *y[3];
    int ldy[3];
    const struct krn_qact *act;
    const float *xf;     /* the same activations in f32, (n, n_cols) (m->f32_act) */
    /* PH_QUANT */
    const float *src;
    struct krn_qact *qdst;
};

static void split(int n, int ith, int nth, int *a, int *b)
{
    *a = (int)((long long)n * ith / nth);
    *b = (int)((long long)n * (ith + 1) / nth);
}

/* y[t*ldy + r] = W_r . x_t for rows lo <= r < hi, in f32 from the dequantised rows (16 at a
 * time into rows: 16 * n_cols floats): the reference path (device "cpu-f32"). */
static void matmul_f32(const struct krn_qmat *w, const float *x, int n, float *y, int ldy,
                       int lo, int hi, float *rows)
{
    const int nc = w->n_cols;
    for (int r0 = lo; r0 < hi; r0 += 16) {
        const int nr = hi - r0 < 16 ? hi - r0 : 16;
        for (int i = 0; i < nr; i++)
            krn_qmat_row(w, r0 + i, rows + (size_t)i * nc);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * nc;
            for (int i = 0; i < nr; i++)
                y[(size_t)t * ldy + r0 + i] = krn_dot_f32(rows + (size_t)i * nc, xt, nc);
        }
    }
}

static void fp16_store(uint16_t *dst, float v)
{
    *dst = krn_f32_to_fp16(v);
}

static void task(void *ud, int ith, int nth)
{
    struct job *j = ud;
    struct eng_ctx *c = j->c;
    const struct eng_model *m = c->m;
    const struct eng_hparams *hp = &m->hp;
    const int d = hp->n_embd, hd = hp->head_dim;
    const int dq = hp->n_head * hd, dkv = hp->n_head_kv * hd;
    int a, b;
    switch (j->ph) {
    case PH_NORM:
        split(j->n - j->t0, ith, nth, &a, &b);
        a += j->t0, b += j->t0;
        for (int t = a; t < b; t++) {
            float *x = c->x + (size_t)t * d;
            if (j->add_tmp) {
                const float *tmp = c->tmp + (size_t)t * d;
                for (int i = 0; i < d; i++)
                    x[i] += tmp[i];
            }
            krn_rmsnorm(c->xn + (size_t)t * d, x, j->normw, d, hp->rms_eps);
        }
        if (a < b)
            krn_qact_quantize(&c->act_embd, c->xn, a, b);
        break;
    case PH_MATMUL: {
        int total = 0;
        for (int i = 0; i < j->n_mat; i++)
            total += j->w[i]->n_rows;
        /* contiguous share of the concatenated rows, cut at multiples of 16 */
        split(total / 16, ith, nth, &a, &b);
        a *= 16;
        b = ith == nth - 1 ? total : b * 16;
        int base = 0;
        for (int i = 0; i < j->n_mat; i++) {
            const int rows = j->w[i]->n_rows;
            const int lo = a > base ? a - base : 0;
            const int hi = b - base < rows ? b - base : rows;
            if (lo < hi && m->f32_act)
                matmul_f32(j->w[i], j->xf, j->n, j->y[i], j->ldy[i], lo, hi,
                           c->f32_rows + (size_t)ith * 16 * c->f32_cols);
            else if (lo < hi)
                krn_qmatmul(j->w[i], j->act, j->n, j->y[i], j->ldy[i], lo, hi);
            base += rows;
        }
        break;
    }
    case PH_BIAS: {
        const struct eng_layer *ly = &m->layers[j->layer];
        split(j->n, ith, nth, &a, &b);
        for (int t = a; t < b; t++) {
            for (int i = 0; ly->bq && i < dq; i++)
                c->q[(size_t)t * dq + i] += ly->bq[i];
            for (int i = 0; ly->bk && i < dkv; i++)
                c->k[(size_t)t * dkv + i] += ly->bk[i];
            for (int i = 0; ly->bv && i < dkv; i++)
                c->v[(size_t)t * dkv + i] += ly->bv[i];
        }
        break;
    }
    case PH_ROPE_KV: {
        split(j->n, ith, nth, &a, &b);
        const size_t lay_k = (size_t)hp->n_head_kv * hd * c->kv_stride;
        uint16_t *kc = c->kc + (size_t)j->layer * lay_k;
        uint16_t *vc = c->vc + (size_t)j->layer * lay_k;
        for (int t = a; t < b; t++) {
            const int pos = j->pos0 + t;
            const float *cs = c->rope_cs + (size_t)pos * m->n_rot;
            float *q = c->q + (size_t)t * dq, *k = c->k + (size_t)t * dkv;
            const float *v = c->v + (size_t)t * dkv;
            krn_rope_apply(q, hp->n_head, hd, m->n_rot, cs, hp->rope_type);
            krn_rope_apply(k, hp->n_head_kv, hd, m->n_rot, cs, hp->rope_type);
            for (int h = 0; h < hp->n_head_kv; h++) {
                uint16_t *kh = kc + (size_t)h * hd * c->kv_stride;
                uint16_t *vh = vc + (size_t)h * c->kv_stride * hd + (size_t)pos * hd;
                uint16_t kf[256];
                krn_f32_to_f16_row(vh, v + (size_t)h * hd, hd);
                if (hd <= 256) {
                    krn_f32_to_f16_row(kf, k + (size_t)h * hd, hd);
                    for (int i = 0; i < hd; i++)
                        kh[(size_t)i * c->kv_stride + pos] = kf[i];
                } else {
                    for (int i = 0; i < hd; i++)
                        fp16_store(&kh[(size_t)i * c->kv_stride + pos], k[h * hd + i]);
                }
            }
        }
        break;
    }
    case PH_ATTN: {
        const size_t lay_k = (size_t)hp->n_head_kv * hd * c->kv_stride;
        split(krn_attn_n_items(j->n, hp->n_head), ith, nth, &a, &b);
        if (a < b)
            krn_attn_f16(c->att, c->q, c->kc + (size_t)j->layer * lay_k,
                         c->vc + (size_t)j->layer * lay_k, j->n, j->pos0, hp->n_head,
                         hp->n_head_kv, hd, c->kv_stride, 1.0f / sqrtf((float)hd),
                         c->attn_scratch + (size_t)ith * 4 * c->kv_stride, a, b);
        break;
    }
    case PH_QUANT:
        split(j->n, ith, nth, &a, &b);
        if (a < b)
            krn_qact_quantize(j->qdst, j->src, a, b);
        break;
    case PH_SWIGLU:
        split(j->n, ith, nth, &a, &b);
        for (int t = a; t < b; t++) {
            float *g = c->gate + (size_t)t * hp->n_ff;
            krn_swiglu(g, g, c->up + (size_t)t * hp->n_ff, hp->n_ff);
        }
        if (a < b)
            krn_qact_quantize(&c->act_ff, c->gate, a, b);
        break;
    }
}

/* Rows below which the per-token phases (norm, bias, rope, quantise, SwiGLU) run on the
 * calling thread: for a few tokens they cost less than a hand-off to the pool. */
#define SMALL_N 4

static void run(struct eng_ctx *c, struct job *j, enum phase ph)
{
    j->ph = ph;
    if (ph != PH_MATMUL && ph != PH_ATTN && j->n - (ph == PH_NORM ? j->t0 : 0) <= SMALL_N)
        task(j, 0, 1);
    else
        krn_pool_run(c->pool, task, j);
}

static void run_matmul(struct eng_ctx *c, struct job *j, const struct krn_qact *act,
                       const float *xf, int n_mat, const struct krn_qmat *w0, float *y0,
                       const struct krn_qmat *w1, float *y1, const struct krn_qmat *w2, float *y2)
{
    j->act = act;
    j->xf = xf;
    j->n_mat = n_mat;
    j->w[0] = w0, j->y[0] = y0, j->ldy[0] = w0->n_rows;
    if (w1)
        j->w[1] = w1, j->y[1] = y1, j->ldy[1] = w1->n_rows;
    if (w2)
        j->w[2] = w2, j->y[2] = y2, j->ldy[2] = w2->n_rows;
    run(c, j, PH_MATMUL);
}

/* One ubatch. logits_last: n_vocab floats for the last token, or NULL; logits_all:
 * (n, n_vocab) or NULL. */
/* The device path's view of c's hook and cancel flag. */
static struct eng_cuda_hook cuda_hook(const struct eng_ctx *c)
{
    return (struct eng_cuda_hook){c->hook, c->hook_ud, c->hook_mask, c->cancel};
}

static int forward_ubatch(struct eng_ctx *c, const int32_t *tokens, int n, float *logits_last,
                          float *logits_all)
{
    const struct eng_model *m = c->m;
    const struct eng_hparams *hp = &m->hp;
    const int d = hp->n_embd;
    const int pos0 = c->pos;
    struct job j = {.c = c, .n = n, .pos0 = pos0};

    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= hp->n_vocab)
            return S3_EINVAL;
    /* scan mode: nothing past the last hooked layer is needed */
    const int scan = c->scan_only && !logits_last && !logits_all && c->hook && c->hook_mask;
    const int n_run = scan ? 64 - __builtin_clzll(c->hook_mask) : hp->n_layer;
    if (c->cuda) {
        const struct eng_cuda_hook h = cuda_hook(c);
        int rc = scan ? eng__cuda_ubatch_scan(c->cuda, tokens, n, pos0, &h,
                                              &(struct eng_cuda_scan){.full = 0}, NULL)
                      : eng__cuda_ubatch(c->cuda, tokens, n, pos0, logits_last, logits_all, &h,
                                         NULL);
        if (rc == 0)
            c->pos += n;
        return rc;
    }
    for (int t = 0; t < n; t++) {
        const size_t rb = krn_type_row_bytes(m->tok_embd->type, d);
        const uint8_t *row = (const uint8_t *)m->tok_embd->data + (size_t)tokens[t] * rb;
        if (krn_dequant(m->tok_embd->type, row, c->x + (size_t)t * d, d) < 0)
            return S3_EINTERNAL;
    }
    for (int il = 0; il < n_run && il < hp->n_layer; il++) {
        const struct eng_layer *ly = &m->layers[il];
        if (c->cancel && *c->cancel)
            return S3_ECANCELED;
        j.layer = il;
        j.add_tmp = il > 0;
        j.normw = ly->attn_norm;
        j.t0 = 0;
        run(c, &j, PH_NORM);
        run_matmul(c, &j, &c->act_embd, c->xn, 3, &ly->wq, c->q, &ly->wk, c->k, &ly->wv, c->v);
        if (ly->bq || ly->bk || ly->bv)
            run(c, &j, PH_BIAS);
        if (c->hook && il < 64 && (c->hook_mask >> il) & 1) {
            if (c->hook(c->hook_ud, il, pos0, n, c->q, c->k) != 0)
                return S3_ECANCELED;
        }
        if (scan && il == n_run - 1)
            break;
        run(c, &j, PH_ROPE_KV);
        run(c, &j, PH_ATTN);
        j.src = c->att;
        j.qdst = &c->act_att;
        run(c, &j, PH_QUANT);
        run_matmul(c, &j, &c->act_att, c->att, 1, &ly->wo, c->tmp, NULL, NULL, NULL, NULL);
        j.add_tmp = 1;
        j.normw = ly->ffn_norm;
        run(c, &j, PH_NORM);
        run_matmul(c, &j, &c->act_embd, c->xn, 2, &ly->w_gate, c->gate, &ly->w_up, c->up, NULL, NULL);
        run(c, &j, PH_SWIGLU);
        run_matmul(c, &j, &c->act_ff, c->gate, 1, &ly->w_down, c->tmp, NULL, NULL, NULL, NULL);
    }
    if (logits_last || logits_all) {
        /* final norm on the rows asked for, then the head on those rows only */
        j.add_tmp = 1;
        j.normw = m->output_norm;
        j.t0 = logits_all ? 0 : n - 1;
        run(c, &j, PH_NORM);
        const int n_out = n - j.t0;
        /* the head reads activations of rows t0..n-1: move them to the front */
        if (j.t0 > 0)
            krn_qact_move_row(&c->act_embd, 0, j.t0); /* t0 = n-1: one row */
        j.n = n_out;
        run_matmul(c, &j, &c->act_embd, c->xn + (size_t)j.t0 * d, 1, &m->output,
                   logits_all ? logits_all : logits_last,
                   NULL, NULL, NULL, NULL);
        if (logits_all && logits_last)
            memcpy(logits_last, logits_all + (size_t)(n - 1) * hp->n_vocab,
                   (size_t)hp->n_vocab * sizeof(float));
    }
    c->pos += n;
    return 0;
}

int eng_ctx_prefill(struct eng_ctx *c, const int32_t *tokens, size_t n, float *logits,
                    float *logits_all)
{
    if (!c || (!tokens && n > 0))
        return S3_EINVAL;
    if (n == 0)
        return 0;
    if (n > (size_t)(c->n_ctx - c->pos))
        return S3_ETOOBIG;
    const int nv = c->m->hp.n_vocab;
    for (size_t done = 0; done < n;) {
        const int nb = n - done < (size_t)c->n_ub ? (int)(n - done) : c->n_ub;
        const int last = done + (size_t)nb == n;
        int rc = forward_ubatch(c, tokens + done, nb, last ? logits : NULL,
                                logits_all ? logits_all + done * (size_t)nv : NULL);
        if (rc < 0)
            return rc;
        done += (size_t)nb;
    }
    return 0;
}

int eng__ctx_prefill_pick(struct eng_ctx *c, const int32_t *tokens, size_t n,
                          struct eng_sampler *smp, float *logits, int32_t *next)
{
    if (!c || !tokens || n == 0 || !smp || !logits || !next)
        return S3_EINVAL;
    if (!c->cuda) {
        int rc = eng_ctx_prefill(c, tokens, n, logits, NULL);
        if (rc == 0)
            *next = eng_sampler_sample(smp, logits);
        return rc;
    }
    if (n > (size_t)(c->n_ctx - c->pos))
        return S3_ETOOBIG;
    /* every ubatch but the last as eng_ctx_prefill splits them, then the last one picking */
    const size_t done = (n - 1) / (size_t)c->n_ub * (size_t)c->n_ub;
    int rc = eng_ctx_prefill(c, tokens, done, NULL, NULL);
    if (rc < 0)
        return rc;
    const int greedy = eng__sampler_greedy(smp), nb = (int)(n - done);
    uint64_t saved[4];
    const double u = greedy ? 0.0 : eng__sampler_draw(smp, saved);
    const struct eng_cuda_hook h = cuda_hook(c);
    int how = ENG_CUDA_PICK_NO_DRAW;
    rc = eng__cuda_ubatch_pick(c->cuda, tokens + done, nb, c->pos,
                               greedy ? NULL : eng__sampler_params(smp), u, &h, next, &how,
                               NULL);
    if (!greedy && (rc < 0 || how != ENG_CUDA_PICK_DRAW))
        eng__sampler_undraw(smp, saved); /* the host draws, or nobody did */
    if (rc < 0)
        return rc;
    c->pos += nb;
    if (how == ENG_CUDA_PICK_HOST) {
        if ((rc = eng__cuda_last_logits(c->cuda, logits, NULL)) < 0)
            return rc;
        *next = eng_sampler_sample(smp, logits);
    }
    return 0;
}

int eng_ctx_decode(struct eng_ctx *c, int32_t token, float *logits)
{
    if (!c || !logits)
        return S3_EINVAL;
    if (c->pos >= c->n_ctx)
        return S3_ETOOBIG;
    return forward_ubatch(c, &token, 1, logits, NULL);
}

/* ---- context --------------------------------------------------------------------------------- */

static void *zalloc(size_t n_elem, size_t elem)
{
    return calloc(n_elem ? n_elem : 1, elem);
}

int eng_ctx_new(const struct eng_model *m, const struct eng_ctx_opts *opts, struct eng_ctx **out,
                struct s3_errinfo *err)
{
    int rc = 0;
    *out = NULL;
    if (!m)
        return s3_errf(err, S3_EINVAL, "ctx: no model");
    const struct eng_hparams *hp = &m->hp;
    int n_ctx = opts && opts->n_ctx > 0 ? opts->n_ctx : hp->n_ctx_train;
    if (!(opts && opts->n_ctx > 0) && n_ctx > 8192)
        n_ctx = 8192;
    if (n_ctx > (1 << 20))
        return s3_errf(err, S3_ETOOBIG, "ctx: n_ctx %d too large", n_ctx);
    int n_ub = opts && opts->n_batch > 0 ? opts->n_batch : n_ctx;
    /* the CPU path works in ubatches of at most ENG_MAX_UBATCH tokens; the device path takes
     * a whole scan pass per step: the chunk and its overlap prefix (2048 + 128 tokens by
     * default) when the caller asks for them (n_batch), 2048 tokens otherwise (a ubatch of
     * 128 after each 2048 would run every layer again for a sixteenth of the work) */
    const int ub_max = !m->cuda ? ENG_MAX_UBATCH
                       : opts && opts->n_batch > 0 ? ENG_CUDA_MAX_UBATCH
                                                   : 2048;
    if (n_ub > ub_max)
        n_ub = ub_max;
    if (n_ub > n_ctx)
        n_ub = n_ctx;
    struct eng_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return s3_errf(err, S3_ENOMEM, "ctx: out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_ub = n_ub;
    if (m->cuda) {
        /* device KV cache and scratch only: no CPU buffers */
        rc = eng__cuda_ctx_new(m, m->cuda, n_ctx, n_ub, &c->cuda, err);
        if (rc < 0) {
            free(c);
            return rc;
        }
        *out = c;
        return 0;
    }
    const size_t d = (size_t)hp->n_embd, dq = (size_t)hp->n_head * hp->head_dim,
                 dkv = (size_t)hp->n_head_kv * hp->head_dim, ff = (size_t)hp->n_ff;
    /* cache rows padded to an odd number of 64-byte lines: K is stored transposed, and a
     * stride of a multiple of 4 KiB would put all head_dim rows in one L1 set */
    c->kv_stride = ((n_ctx + 63) & ~63) + 32;
    const size_t kv = (size_t)hp->n_layer * dkv * (size_t)c->kv_stride;
    if ((rc = krn_pool_new(m->n_threads, &c->pool)) < 0)
        goto out;
    const int nth = krn_pool_n_threads(c->pool);
    c->kc = zalloc(kv, sizeof(uint16_t));
    c->vc = zalloc(kv, sizeof(uint16_t));
    c->rope_cs = zalloc((size_t)n_ctx * (size_t)m->n_rot, sizeof(float));
    c->x = zalloc((size_t)n_ub * d, sizeof(float));
    c->xn = zalloc((size_t)n_ub * d, sizeof(float));
    c->tmp = zalloc((size_t)n_ub * d, sizeof(float));
    c->q = zalloc((size_t)n_ub * dq, sizeof(float));
    c->k = zalloc((size_t)n_ub * dkv, sizeof(float));
    c->v = zalloc((size_t)n_ub * dkv, sizeof(float));
    c->att = zalloc((size_t)n_ub * dq, sizeof(float));
    c->gate = zalloc((size_t)n_ub * ff, sizeof(float));
    c->up = zalloc((size_t)n_ub * ff, sizeof(float));
    c->attn_scratch = zalloc((size_t)nth * 4 * (size_t)c->kv_stride, sizeof(float));
    if (m->f32_act) {
        c->f32_cols = (int)(d > dq ? (d > ff ? d : ff) : (dq > ff ? dq : ff));
        c->f32_rows = zalloc((size_t)nth * 16 * (size_t)c->f32_cols, sizeof(float));
    }
    if (!c->kc || !c->vc || !c->rope_cs || !c->x || !c->xn || !c->tmp || !c->q || !c->k ||
        !c->v || !c->att || !c->gate || !c->up || !c->attn_scratch ||
        (m->f32_act && !c->f32_rows)) {
        rc = S3_ENOMEM;
        goto out;
    }
    if ((rc = krn_qact_init(&c->act_embd, n_ub, (int)d)) < 0 ||
        (rc = krn_qact_init(&c->act_att, n_ub, (int)dq)) < 0 ||
        (rc = krn_qact_init(&c->act_ff, n_ub, (int)ff)) < 0)
        goto out;
    for (int p = 0; p < n_ctx; p++)
        krn_rope_table(c->rope_cs + (size_t)p * m->n_rot, p, m->n_rot, hp->rope_base, m->rope_ff);
out:
    if (rc < 0) {
        eng_ctx_free(c);
        return s3_errf(err, rc, "ctx: cannot allocate a context of %d tokens (%s)", n_ctx,
                       s3_strerror(rc));
    }
    *out = c;
    return 0;
}

void eng_ctx_free(struct eng_ctx *c)
{
    if (!c)
        return;
    eng__cuda_ctx_free(c->cuda);
    krn_pool_free(c->pool);
    free(c->kc);
    free(c->vc);
    free(c->rope_cs);
    free(c->x);
    free(c->xn);
    free(c->tmp);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->gate);
    free(c->up);
    free(c->attn_scratch);
    free(c->f32_rows);
    krn_qact_deinit(&c->act_embd);
    krn_qact_deinit(&c->act_att);
    krn_qact_deinit(&c->act_ff);
    free(c);
}

void eng_ctx_set_scan_only(struct eng_ctx *c, int on)
{
    if (c)
        c->scan_only = on != 0;
}

void eng_ctx_reset(struct eng_ctx *c)
{
    if (c)
        c->pos = 0;
}

int eng_ctx_pos(const struct eng_ctx *c)
{
    return c->pos;
}

int eng_ctx_n_ctx(const struct eng_ctx *c)
{
    return c->n_ctx;
}

void eng_ctx_set_qk_hook(struct eng_ctx *c, eng_qk_hook_fn fn, void *ud, uint64_t layer_mask)
{
    c->hook = fn;
    c->hook_ud = ud;
    c->hook_mask = fn ? layer_mask : 0;
}

void eng_ctx_set_cancel(struct eng_ctx *c, const volatile int *cancel)
{
    c->cancel = cancel;
}
