/* kernels/cpu/cpu_ref.c - the CPU backend's plain reference ops (the oracle in tests), weight
 * repacking, activation quantisation and the run-time dispatch to the fast paths.
 *
 * Numerics follow ggml's CPU backend so that results match llama.cpp closely: see
 * kernels.h for each op. The project builds in ISO C mode (no FMA contraction), so the scalar
 * code below rounds exactly as written. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_int.h"
#include "s3.h"

#define QK 32

/* ---- dispatch ------------------------------------------------------------------------------ */

int krn__have_avx512vnni(void)
{
    static int have = -1; /* cache of a CPU property; benign race (same value written) */
    if (have < 0) {
        const char *env = getenv("S3_NO_SIMD");
        int h = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
            __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
        if (env && env[0] == '1')
            h = 0;
        have = h;
    }
    return have;
}

/* ---- small ops ---------------------------------------------------------------------------- */

void krn_rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

void krn__swiglu_ref(float *out, const float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void krn_swiglu(float *out, const float *g, const float *u, int n)
{
    if (krn__have_avx512vnni())
        krn__swiglu_avx512(out, g, u, n);
    else
        krn__swiglu_ref(out, g, u, n);
}

void krn_softmax(float *x, int n)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > max)
            max = x[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

void krn_rope_table(float *cs, int pos, int n_dims, float base, const float *ff)
{
    const float theta_scale = powf(base, -2.0f / (float)n_dims);
    float theta = (float)pos;
    for (int i = 0; i < n_dims / 2; i++) {
        const float t = ff ? theta / ff[i] : theta;
        cs[2 * i] = cosf(t);
        cs[2 * i + 1] = sinf(t);
        theta *= theta_scale;
    }
}

void krn_rope_apply(float *x, int n_heads, int head_dim, int n_dims, const float *cs, int mode)
{
    const int half = n_dims / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const int i0 = mode == KRN_ROPE_NEOX ? i : 2 * i;
            const int i1 = mode == KRN_ROPE_NEOX ? i + half : 2 * i + 1;
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * c - x1 * s;
            xh[i1] = x0 * s + x1 * c;
        }
    }
}

/* ---- quantised weights ---------------------------------------------------------------------- */

static float rd_half(const uint8_t *p)
{
    return krn_fp16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

static float round_half(float x)
{
    return krn_fp16_to_f32(krn_f32_to_fp16(x));
}

void krn_qmat_deinit(struct krn_qmat *w)
{
    if (!w)
        return;
    free(w->q);
    free(w->d);
    free(w->d16);
    free(w->m16);
    memset(w, 0, sizeof(*w));
}

size_t krn_qmat_bytes(const struct krn_qmat *w)
{
    size_t n = (size_t)w->n_rows * w->q_row_bytes;
    if (w->d)
        n += (size_t)w->n_rows * (size_t)w->nbp * sizeof(float);
    if (w->d16)
        n += (size_t)w->n_rows * (size_t)w->nbp * sizeof(uint16_t);
    if (w->m16)
        n += (size_t)w->n_rows * (size_t)w->nbm * sizeof(uint16_t);
    return n;
}

/* Quantise 32 floats to int8 with a per-block scale (d = amax/127, kept in f32). */
static float quant_block_q8(const float *x, int8_t *q)
{
    float amax = 0.0f;
    for (int j = 0; j < QK; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < QK; j++)
        q[j] = (int8_t)nearbyintf(x[j] * id);
    return d;
}

int krn_qmat_init(struct krn_qmat *w, uint32_t ggml_type, const void *data, int n_rows,
                  int n_cols)
{
    enum { T_F32 = 0, T_Q4_1 = 3, T_Q8_0 = 8 };
    int rc = 0;
    float *tmp = NULL;
    memset(w, 0, sizeof(*w));
    if (n_rows <= 0 || n_cols <= 0 || n_cols % QK != 0 || !krn_type_supported(ggml_type) ||
        (ggml_type != T_F32 && krn_type_block_size(ggml_type) > 1 &&
         n_cols % krn_type_block_size(ggml_type) != 0))
        return S3_EINVAL;
    const int nb = n_cols / QK;
    w->qtype = ggml_type == T_Q4_1 ? KRN_Q4 : KRN_Q8;
    w->n_rows = n_rows;
    w->n_cols = n_cols;
    w->nbp = (nb + 1) & ~1;
    w->nbm = (nb + 15) & ~15;
    w->q_row_bytes = (size_t)w->nbp * (w->qtype == KRN_Q4 ? 16 : 32);
    w->q = calloc((size_t)n_rows, w->q_row_bytes);
    if (w->qtype == KRN_Q4) {
        w->d16 = calloc((size_t)n_rows * (size_t)w->nbp, sizeof(uint16_t));
        w->m16 = calloc((size_t)n_rows * (size_t)w->nbm, sizeof(uint16_t));
    } else {
        w->d = calloc((size_t)n_rows * (size_t)w->nbp, sizeof(float));
    }
    if (!w->q || (w->qtype == KRN_Q4 ? !w->d16 || !w->m16 : !w->d)) {
        rc = S3_ENOMEM;
        goto out;
    }
    const size_t src_row = krn_type_row_bytes(ggml_type, n_cols);
    if (ggml_type != T_Q4_1 && ggml_type != T_Q8_0) {
        tmp = malloc((size_t)n_cols * sizeof(float));
        if (!tmp) {
            rc = S3_ENOMEM;
            goto out;
        }
    }
    for (int r = 0; r < n_rows; r++) {
        const uint8_t *src = (const uint8_t *)data + (size_t)r * src_row;
        uint8_t *q = w->q + (size_t)r * w->q_row_bytes;
        if (ggml_type == T_Q4_1) {
            uint16_t *d16 = w->d16 + (size_t)r * w->nbp;
            uint16_t *m16 = w->m16 + (size_t)r * w->nbm;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = src + (size_t)b * 20;
                d16[b] = (uint16_t)(blk[0] | (blk[1] << 8));
                m16[b] = (uint16_t)(blk[2] | (blk[3] << 8));
                uint8_t *qp = q + (size_t)(b / 2) * 32;
                const int shift = (b & 1) ? 4 : 0;
                for (int j = 0; j < 16; j++) {
                    qp[j] |= (uint8_t)((blk[4 + j] & 0x0F) << shift);
                    qp[16 + j] |= (uint8_t)((blk[4 + j] >> 4) << shift);
                }
            }
        } else if (ggml_type == T_Q8_0) {
            float *d = w->d + (size_t)r * w->nbp;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = src + (size_t)b * 34;
                d[b] = rd_half(blk);
                memcpy(q + (size_t)b * 32, blk + 2, 32);
            }
        } else {
            rc = krn_dequant(ggml_type, src, tmp, n_cols);
            if (rc < 0)
                goto out;
            float *d = w->d + (size_t)r * w->nbp;
            for (int b = 0; b < nb; b++)
                d[b] = quant_block_q8(tmp + (size_t)b * QK, (int8_t *)(q + (size_t)b * 32));
        }
    }
out:
    free(tmp);
    if (rc < 0)
        krn_qmat_deinit(w);
    return rc;
}

/* Block b of row r: its scale d and minimum m (0 for Q8). */
static float qmat_d(const struct krn_qmat *w, int r, int b)
{
    const size_t i = (size_t)r * w->nbp + (size_t)b;
    return w->d16 ? krn_fp16_to_f32(w->d16[i]) : w->d[i];
}

static float qmat_m(const struct krn_qmat *w, int r, int b)
{
    return w->m16 ? krn_fp16_to_f32(w->m16[(size_t)r * w->nbm + b]) : 0.0f;
}

/* Weight element j of block b of row r as an integer. */
static int qmat_q(const struct krn_qmat *w, int r, int b, int j)
{
    const uint8_t *q = w->q + (size_t)r * w->q_row_bytes;
    if (w->qtype == KRN_Q8)
        return ((const int8_t *)q)[(size_t)b * 32 + j];
    const uint8_t byte = q[(size_t)(b / 2) * 32 + j];
    return (b & 1) ? byte >> 4 : byte & 0x0F;
}

void krn_qmat_row(const struct krn_qmat *w, int r, float *out)
{
    const int nb = w->n_cols / QK;
    for (int b = 0; b < nb; b++) {
        const float d = qmat_d(w, r, b);
        const float m = qmat_m(w, r, b);
        for (int j = 0; j < QK; j++)
            out[b * QK + j] = (float)qmat_q(w, r, b, j) * d + m;
    }
}

/* ---- quantised activations ------------------------------------------------------------------ */

void krn_qact_deinit(struct krn_qact *a)
{
    if (!a)
        return;
    free(a->qs);
    free(a->dexp);
    free(a->s);
    memset(a, 0, sizeof(*a));
}

int krn_qact_init(struct krn_qact *a, int n_tok_max, int n_cols)
{
    memset(a, 0, sizeof(*a));
    if (n_tok_max <= 0 || n_cols <= 0 || n_cols % QK != 0)
        return S3_EINVAL;
    const int nb = n_cols / QK;
    a->n_tok_max = n_tok_max;
    a->n_cols = n_cols;
    a->nbp = (nb + 1) & ~1;
    a->nbm = (nb + 15) & ~15;
    a->qs = aligned_alloc(64, (size_t)n_tok_max * (size_t)a->nbp * 32);
    a->dexp = aligned_alloc(64, (size_t)n_tok_max * (size_t)a->nbp * 8 * sizeof(float));
    a->s = aligned_alloc(64, (size_t)n_tok_max * (size_t)a->nbm * sizeof(float));
    if (!a->qs || !a->dexp || !a->s) {
        krn_qact_deinit(a);
        return S3_ENOMEM;
    }
    memset(a->qs, 0, (size_t)n_tok_max * (size_t)a->nbp * 32);
    memset(a->dexp, 0, (size_t)n_tok_max * (size_t)a->nbp * 8 * sizeof(float));
    memset(a->s, 0, (size_t)n_tok_max * (size_t)a->nbm * sizeof(float));
    return 0;
}

void krn__qact_quantize_ref(struct krn_qact *a, const float *x, int t0, int t1)
{
    const int nb = a->n_cols / QK;
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * a->n_cols;
        int8_t *qs = a->qs + (size_t)t * a->nbp * 32;
        float *dexp = a->dexp + (size_t)t * a->nbp * 8;
        float *s = a->s + (size_t)t * a->nbm;
        for (int b = 0; b < nb; b++) {
            const float d = quant_block_q8(xt + (size_t)b * QK, qs + (size_t)b * QK);
            int sum = 0;
            for (int j = 0; j < QK; j++)
                sum += qs[b * QK + j];
            const float dh = round_half(d);
            for (int j = 0; j < 8; j++)
                dexp[b * 8 + j] = dh;
            s[b] = round_half(d * (float)sum);
        }
    }
}

void krn_qact_quantize(struct krn_qact *a, const float *x, int t0, int t1)
{
    if (krn__have_avx512vnni())
        krn__qact_quantize_avx512(a, x, t0, t1);
    else
        krn__qact_quantize_ref(a, x, t0, t1);
}

/* ---- quantised matmul, reference ---------------------------------------------------------------- */

void krn_qmatmul_ref(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                     int ldy, int r0, int r1)
{
    const int nb = w->n_cols / QK;
    for (int t = 0; t < n_tok; t++) {
        const int8_t *qa = a->qs + (size_t)t * a->nbp * 32;
        const float *da = a->dexp + (size_t)t * a->nbp * 8;
        const float *sa = a->s + (size_t)t * a->nbm;
        for (int r = r0; r < r1; r++) {
            float acc = 0.0f, macc = 0.0f;
            for (int b = 0; b < nb; b++) {
                int isum = 0;
                for (int j = 0; j < QK; j++)
                    isum += qmat_q(w, r, b, j) * qa[b * QK + j];
                acc += (qmat_d(w, r, b) * da[b * 8]) * (float)isum;
                macc += qmat_m(w, r, b) * sa[b];
            }
            y[(size_t)t * ldy + r] = acc + macc;
        }
    }
}

void krn_qmatmul(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                 int ldy, int r0, int r1)
{
    if (krn__have_avx512vnni())
        krn__qmatmul_avx512(w, a, n_tok, y, ldy, r0, r1);
    else
        krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
}

/* ---- attention, reference ------------------------------------------------------------------------ */

int krn_attn_n_items(int n_q, int n_head)
{
    return n_head * ((n_q + 3) / 4);
}

void krn__attn_f16_ref(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                       int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                       float scale, float *scratch, int it0, int it1)
{
    const int nqg = (n_q + 3) / 4;
    const int group = n_head / n_kv_head;
    const int ld = n_head * head_dim;
    for (int it = it0; it < it1; it++) {
        const int h = it / nqg, g = it % nqg;
        const int hk = h / group;
        const uint16_t *kh = kc + (size_t)hk * head_dim * n_ctx;
        const uint16_t *vh = vc + (size_t)hk * n_ctx * head_dim;
        for (int i = g * 4; i < g * 4 + 4 && i < n_q; i++) {
            const float *qi = q + (size_t)i * ld + (size_t)h * head_dim;
            float *oi = out + (size_t)i * ld + (size_t)h * head_dim;
            const int n_kv = pos0 + i + 1;
            float *sc = scratch;
            for (int j = 0; j < n_kv; j++) {
                float s = 0.0f;
                for (int d = 0; d < head_dim; d++)
                    s += round_half(qi[d]) * krn_fp16_to_f32(kh[(size_t)d * n_ctx + j]);
                sc[j] = s * scale;
            }
            krn_softmax(sc, n_kv);
            for (int d = 0; d < head_dim; d++)
                oi[d] = 0.0f;
            for (int j = 0; j < n_kv; j++) {
                const float p = round_half(sc[j]);
                for (int d = 0; d < head_dim; d++)
                    oi[d] += p * krn_fp16_to_f32(vh[(size_t)j * head_dim + d]);
            }
        }
    }
}

void krn_attn_f16(float *out, const float *q, const uint16_t *kc, const uint16_t *vc, int n_q,
                  int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx, float scale,
                  float *scratch, int it0, int it1)
{
    if (krn__have_avx512vnni() && head_dim % 16 == 0 && head_dim <= 256)
        krn__attn_f16_avx512(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx,
                             scale, scratch, it0, it1);
    else
        krn__attn_f16_ref(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx, scale,
                          scratch, it0, it1);
}

void krn_attn_ref(float *out, const float *q, const float *k, const float *v, int n_q, int pos0,
                  int n_head, int n_kv_head, int head_dim, float scale)
{
    const int group = n_head / n_kv_head;
    const int ldq = n_head * head_dim, ldk = n_kv_head * head_dim;
    float *sc = malloc((size_t)(pos0 + n_q) * sizeof(float));
    if (!sc)
        return;
    for (int i = 0; i < n_q; i++) {
        for (int h = 0; h < n_head; h++) {
            const float *qi = q + (size_t)i * ldq + (size_t)h * head_dim;
            const int hk = h / group;
            const int n_kv = pos0 + i + 1;
            for (int j = 0; j < n_kv; j++) {
                const float *kj = k + (size_t)j * ldk + (size_t)hk * head_dim;
                float s = 0.0f;
                for (int d = 0; d < head_dim; d++)
                    s += qi[d] * kj[d];
                sc[j] = s * scale;
            }
            krn_softmax(sc, n_kv);
            float *oi = out + (size_t)i * ldq + (size_t)h * head_dim;
            for (int d = 0; d < head_dim; d++) {
                float acc = 0.0f;
                for (int j = 0; j < n_kv; j++)
                    acc += sc[j] * v[(size_t)j * ldk + (size_t)hk * head_dim + d];
                oi[d] = acc;
            }
        }
    }
    free(sc);
}
