/* kernels/cpu/cpu_ref.c - the CPU backend's plain reference ops (the oracle in tests), weight
 * repacking, activation quantisation and the run-time dispatch to the fast paths.
 *
 * Numerics follow ggml's CPU backend so that results match llama.cpp closely: see
 * kernels.h for each op. The project builds in ISO C mode (no FMA contraction), so the scalar
 * code below rounds exactly as written. */
#include <math.h>
#include <stdlib.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <string.h>

#include "kernels_int.h"
#include "s3.h"
#include "simd_ggml.h"

#define QK 32

/* ---- dispatch ------------------------------------------------------------------------------ */

/* 2: AVX512-VNNI (with BW, VL, DQ, FMA, F16C); 1: AVX2 with FMA and F16C; 0: neither, or
 * S3_NO_SIMD=1. S3_SIMD=avx2 caps the level at 1 (tests and benchmarks of that path). */
static int simd_level(void)
{
    static int level = -1; /* cache of a CPU property; benign race (same value written) */
    if (level < 0) {
        int l = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        unsigned a, b, c, d;
        /* F16C from cpuid leaf 1 (ECX bit 29): clang 14 has no "f16c" in cpu_supports */
        const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
        if (f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            l = 1;
        if (l == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vnni"))
            l = 2;
#endif
        const char *no = getenv("S3_NO_SIMD"), *cap = getenv("S3_SIMD");
        if (cap && strcmp(cap, "avx2") == 0 && l > 1)
            l = 1;
        if ((no && no[0] == '1') || (cap && strcmp(cap, "none") == 0))
            l = 0;
        level = l;
    }
    return level;
}

int krn__have_avx512vnni(void)
{
    return simd_level() >= 2;
}

int krn__have_avx2(void)
{
    return simd_level() >= 1;
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

/* One lane of ggml's AVX512 exp (ggml_v_expf): n = round(x / ln 2) by the 1.5*2^23 trick,
 * b = x - n ln 2 in two parts, exp(b) by a degree-5 polynomial, scaled by 2^n; |n| > 192
 * gives 0 or infinity. fmaf and ldexpf round exactly as vfmadd and vscalefps do. */
#define S_ID(v) (v)
#define S_FNMA(a, b, c) fmaf(-(a), b, c)
#define S_MUL(a, b) ((a) * (b))
#define S_SUB(a, b) ((a) - (b))
#define S_ADD(a, b) ((a) + (b))

float krn__expf_ggml(float x)
{
    KRN_EXPF_GGML_CORE(float, x, n, p, S_ID, fmaf, S_FNMA, S_MUL, S_SUB);
    if (isnan(n))
        return n;
    if (fabsf(n) > 192.0f)
        return n <= 0.0f ? 0.0f : INFINITY;
    return ldexpf(p, (int)n);
}

float krn__sum8(const float *v)
{
    return ((v[4] + v[0]) + (v[6] + v[2])) + ((v[5] + v[1]) + (v[7] + v[3]));
}

float krn__sum16(const float *v)
{
    float r;
    KRN_VSUM16(float, S_ADD, v, r);
    return r;
}

void krn__swiglu_ref(float *out, const float *g, const float *u, int n)
{
    const int nv = n & ~15; /* whole vectors in ggml; the rest goes through libm's expf */
    int i = 0;
    for (; i < nv; i++)
        out[i] = g[i] / (1.0f + krn__expf_ggml(0.0f - g[i])) * u[i];
    for (; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void krn_swiglu(float *out, const float *g, const float *u, int n)
{
    if (krn__have_avx512vnni())
        krn__swiglu_avx512(out, g, u, n);
    else if (krn__have_avx2())
        krn__swiglu_avx2(out, g, u, n);
    else
        krn__swiglu_ref(out, g, u, n);
}

void krn_f32_to_f16_row(uint16_t *dst, const float *src, int n)
{
    if (krn__have_avx512vnni()) {
        krn__f32_to_f16_avx512(dst, src, n);
        return;
    }
    for (int i = 0; i < n; i++)
        dst[i] = krn_f32_to_fp16(src[i]);
}

float krn_dot_f32(const float *x, const float *y, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += x[i + j] * y[i + j];
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++)
        sum += x[i] * y[i];
    return sum;
}

void krn_softmax(float *x, int n)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > max)
            max = x[i];
    double sum = 0.0;
    for (int i = 0; i < n; i += 16) {
        float e[16];
        for (int c = 0; c < 16; c++)
            e[c] = i + c < n ? krn__expf_ggml(x[i + c] - max) : 0.0f;
        for (int c = 0; c < 16 && i + c < n; c++)
            x[i + c] = e[c];
        sum += (double)krn__sum16(e);
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
            /* as GCC contracts ggml's x0*c - x1*s (GNU C mode) */
            xh[i0] = fmaf(x0, c, -(x1 * s));
            xh[i1] = fmaf(x0, s, x1 * c);
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
    free(w->rec);
    memset(w, 0, sizeof(*w));
}

size_t krn_qmat_bytes(const struct krn_qmat *w)
{
    return (size_t)w->n_grp * (size_t)w->nb * w->rec_bytes;
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

static uint8_t *qmat_rec(const struct krn_qmat *w, int g, int b)
{
    return w->rec + ((size_t)g * (size_t)w->nb + (size_t)b) * w->rec_bytes;
}

/* Store row i (< 16) of block b of group g: Q4 from a Q4_1 block (20 bytes), Q8 from 32 int8
 * values and a scale. */
static void rec_put_q4_1(uint8_t *rec, int i, const uint8_t *blk)
{
    for (int c = 0; c < 4; c++)
        memcpy(rec + c * 64 + i * 4, blk + 4 + c * 4, 4);
    memcpy(rec + 256 + i * 2, blk, 2);
    memcpy(rec + 288 + i * 2, blk + 2, 2);
}

static void rec_put_q8(uint8_t *rec, int i, const int8_t *q, float d)
{
    for (int j = 0; j < QK; j++)
        rec[(j / 4) * 64 + i * 4 + j % 4] = (uint8_t)(q[j] + 128);
    memcpy(rec + 512 + i * 4, &d, 4);
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
    w->nb = nb;
    w->n_grp = (n_rows + KRN_QGROUP - 1) / KRN_QGROUP;
    w->rec_bytes = w->qtype == KRN_Q4 ? 320 : 576;
    const size_t bytes = krn_qmat_bytes(w);
    w->rec = aligned_alloc(64, bytes); /* a multiple of 64: rec_bytes is */
    if (!w->rec) {
        rc = S3_ENOMEM;
        goto out;
    }
    memset(w->rec, 0, bytes);
    const size_t src_row = krn_type_row_bytes(ggml_type, n_cols);
    if (ggml_type != T_Q4_1) {
        tmp = malloc((size_t)n_cols * (sizeof(float) + 1));
        if (!tmp) {
            rc = S3_ENOMEM;
            goto out;
        }
    }
    for (int r = 0; r < n_rows; r++) {
        const uint8_t *src = (const uint8_t *)data + (size_t)r * src_row;
        const int g = r / KRN_QGROUP, i = r % KRN_QGROUP;
        if (ggml_type == T_Q4_1) {
            for (int b = 0; b < nb; b++)
                rec_put_q4_1(qmat_rec(w, g, b), i, src + (size_t)b * 20);
        } else if (ggml_type == T_Q8_0) {
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = src + (size_t)b * 34;
                rec_put_q8(qmat_rec(w, g, b), i, (const int8_t *)(blk + 2), rd_half(blk));
            }
        } else {
            int8_t *q = (int8_t *)(tmp + n_cols);
            rc = krn_dequant(ggml_type, src, tmp, n_cols);
            if (rc < 0)
                goto out;
            for (int b = 0; b < nb; b++) {
                const float d = quant_block_q8(tmp + (size_t)b * QK, q);
                rec_put_q8(qmat_rec(w, g, b), i, q, d);
            }
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
    const uint8_t *rec = qmat_rec(w, r / KRN_QGROUP, b);
    const int i = r % KRN_QGROUP;
    if (w->qtype == KRN_Q4)
        return rd_half(rec + 256 + i * 2);
    float d;
    memcpy(&d, rec + 512 + i * 4, 4);
    return d;
}

static float qmat_m(const struct krn_qmat *w, int r, int b)
{
    if (w->qtype != KRN_Q4)
        return 0.0f;
    return rd_half(qmat_rec(w, r / KRN_QGROUP, b) + 288 + (r % KRN_QGROUP) * 2);
}

/* Weight element j of block b of row r as an integer. */
static int qmat_q(const struct krn_qmat *w, int r, int b, int j)
{
    const uint8_t *rec = qmat_rec(w, r / KRN_QGROUP, b);
    const int i = r % KRN_QGROUP;
    if (w->qtype == KRN_Q8)
        return (int)rec[(j / 4) * 64 + i * 4 + j % 4] - 128;
    const int jj = j % 16;
    const uint8_t byte = rec[(jj / 4) * 64 + i * 4 + jj % 4];
    return j < 16 ? byte & 0x0F : byte >> 4;
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
    free(a->d);
    free(a->s);
    free(a->lsum);
    memset(a, 0, sizeof(*a));
}

/* 64-byte aligned, zeroed; n is rounded up to a multiple of 64 for aligned_alloc. */
static void *zalloc64(size_t n)
{
    n = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, n ? n : 64);
    if (p)
        memset(p, 0, n ? n : 64);
    return p;
}

int krn_qact_init(struct krn_qact *a, int n_tok_max, int n_cols)
{
    memset(a, 0, sizeof(*a));
    if (n_tok_max <= 0 || n_tok_max > (1 << 24) || n_cols <= 0 || n_cols % QK != 0)
        return S3_EINVAL;
    const int nb = n_cols / QK;
    a->n_tok_max = n_tok_max;
    a->n_tok_alloc = (n_tok_max + 15) & ~15;
    a->n_cols = n_cols;
    a->nb = nb;
    const size_t n = (size_t)a->n_tok_alloc * (size_t)nb;
    a->qs = zalloc64(n * 32);
    a->d = zalloc64(n * sizeof(float));
    a->s = zalloc64(n * sizeof(float));
    a->lsum = zalloc64(n * 8 * sizeof(int32_t));
    if (!a->qs || !a->d || !a->s || !a->lsum) {
        krn_qact_deinit(a);
        return S3_ENOMEM;
    }
    return 0;
}

void krn_qact_move_row(struct krn_qact *a, int dst, int src)
{
    if (dst == src || dst < 0 || src < 0 || dst >= a->n_tok_max || src >= a->n_tok_max)
        return;
    const size_t nb = (size_t)a->nb;
    memcpy(a->qs + (size_t)dst * nb * 32, a->qs + (size_t)src * nb * 32, nb * 32);
    memcpy(a->d + (size_t)dst * nb, a->d + (size_t)src * nb, nb * sizeof(float));
    memcpy(a->s + (size_t)dst * nb, a->s + (size_t)src * nb, nb * sizeof(float));
    memcpy(a->lsum + (size_t)dst * nb * 8, a->lsum + (size_t)src * nb * 8, nb * 8 * sizeof(int32_t));
}

void krn__qact_quantize_ref(struct krn_qact *a, const float *x, int t0, int t1)
{
    const int nb = a->nb;
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * a->n_cols;
        int8_t *qs = a->qs + (size_t)t * nb * 32;
        float *dt = a->d + (size_t)t * nb;
        float *st = a->s + (size_t)t * nb;
        for (int b = 0; b < nb; b++) {
            const float d = quant_block_q8(xt + (size_t)b * QK, qs + (size_t)b * QK);
            int sum = 0;
            int32_t *ls = a->lsum + ((size_t)t * nb + b) * 8;
            for (int l = 0; l < 8; l++) {
                ls[l] = 0;
                for (int j = 4 * l; j < 4 * l + 4; j++)
                    ls[l] += qs[b * QK + j];
                sum += ls[l];
            }
            dt[b] = round_half(d);
            st[b] = round_half(d * (float)sum);
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
    const int nb = w->nb;
    for (int t = 0; t < n_tok; t++) {
        const int8_t *qa = a->qs + (size_t)t * nb * 32;
        const float *da = a->d + (size_t)t * nb;
        const float *sa = a->s + (size_t)t * nb;
        for (int r = r0; r < r1; r++) {
            float lane[8] = {0}, ms = 0.0f;
            for (int b = 0; b < nb; b++) {
                const float dd = qmat_d(w, r, b) * da[b];
                for (int l = 0; l < 8; l++) {
                    int isum = 0;
                    for (int e = 4 * l; e < 4 * l + 4; e++)
                        isum += qmat_q(w, r, b, e) * qa[b * QK + e];
                    lane[l] = fmaf((float)isum, dd, lane[l]);
                }
                if (w->qtype == KRN_Q4)
                    ms = fmaf(qmat_m(w, r, b), sa[b], ms);
            }
            const float acc = krn__sum8(lane) + ms;
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

void krn_qmatmul(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                 int ldy, int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    if (krn__have_avx512vnni())
        krn__qmatmul_vnni(w, a, n_tok, y, ldy, r0, r1);
    else if (krn__have_avx2())
        krn__qmatmul_avx2(w, a, n_tok, y, ldy, r0, r1);
    else
        krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
}

/* ---- attention, reference ------------------------------------------------------------------------ */

int krn_attn_n_items(int n_q, int n_head)
{
    return n_head * ((n_q + 3) / 4);
}

int krn__kv_pad(int n_kv)
{
    const int n = (n_kv + 31) & ~31;
    return n < 32 ? 32 : n;
}

/* x . y as ggml's f16 vec_dot (one token) over n_pad elements of which the first n are
 * nonzero: 4 x 16 lane chains over steps of 64, reduced (0+2)+(1+3) and then as sum16; the
 * elements past the last multiple of 64 are added in double. Element i of x is x[i*xs], of y
 * y[i]; both already f16 values. */
static float dot_gemv_f16(const float *x, int xs, const float *y, int n, int n_pad)
{
    const int np = n_pad & ~63;
    float acc[64] = {0}, r[16];
    for (int i = 0; i < np && i < n; i++)
        acc[i & 63] = fmaf(x[(size_t)i * xs], y[i], acc[i & 63]);
    for (int c = 0; c < 16; c++)
        r[c] = (acc[c] + acc[32 + c]) + (acc[16 + c] + acc[48 + c]);
    double sum = (double)krn__sum16(r);
    for (int i = np; i < n; i++)
        sum += (double)(x[(size_t)i * xs] * y[i]);
    return (float)sum;
}

/* x . y as llamafile's f16 GEMM (two or more tokens): 16 lane chains, then sum16. */
static float dot_gemm_f16(const float *x, int xs, const float *y, int n)
{
    float lane[16] = {0};
    for (int i = 0; i < n; i++)
        lane[i & 15] = fmaf(x[(size_t)i * xs], y[i], lane[i & 15]);
    return krn__sum16(lane);
}

void krn__attn_f16_ref(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                       int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                       float scale, float *scratch, int it0, int it1)
{
    const int nqg = (n_q + 3) / 4;
    const int group = n_head / n_kv_head;
    const int ld = n_head * head_dim;
    const int gemm_kq = n_q > 1 && head_dim % 16 == 0, gemm_pv = n_q > 1;
    const int n_all = pos0 + n_q;
    float *kf = malloc(((size_t)n_all * 2 + 1) * (size_t)head_dim * sizeof(float));
    if (!kf)
        return;
    float *vf = kf + (size_t)n_all * head_dim, *qh = vf + (size_t)n_all * head_dim;
    float *sc = scratch;
    int hk_f = -1; /* the kv head whose keys and values are in kf, vf */
    for (int it = it0; it < it1; it++) {
        const int h = it / nqg, g = it % nqg;
        const int hk = h / group;
        const uint16_t *kh = kc + (size_t)hk * head_dim * n_ctx;
        const uint16_t *vh = vc + (size_t)hk * n_ctx * head_dim;
        for (int j = 0; hk != hk_f && j < n_all; j++) /* once per kv head, not per item */
            for (int d = 0; d < head_dim; d++) {
                kf[(size_t)j * head_dim + d] = krn_fp16_to_f32(kh[(size_t)d * n_ctx + j]);
                vf[(size_t)j * head_dim + d] = krn_fp16_to_f32(vh[(size_t)j * head_dim + d]);
            }
        hk_f = hk;
        for (int i = g * 4; i < g * 4 + 4 && i < n_q; i++) {
            const float *qi = q + (size_t)i * ld + (size_t)h * head_dim;
            float *oi = out + (size_t)i * ld + (size_t)h * head_dim;
            const int n_kv = pos0 + i + 1;
            for (int d = 0; d < head_dim; d++)
                qh[d] = round_half(qi[d]);
            for (int j = 0; j < n_kv; j++) {
                const float *kj = kf + (size_t)j * head_dim;
                sc[j] = (gemm_kq ? dot_gemm_f16(kj, 1, qh, head_dim)
                                 : dot_gemv_f16(kj, 1, qh, head_dim, head_dim)) *
                        scale;
            }
            krn_softmax(sc, n_kv);
            for (int j = 0; j < n_kv; j++)
                sc[j] = round_half(sc[j]);
            for (int d = 0; d < head_dim; d++)
                oi[d] = gemm_pv ? dot_gemm_f16(vf + d, head_dim, sc, n_kv)
                                : dot_gemv_f16(vf + d, head_dim, sc, n_kv, krn__kv_pad(n_all));
        }
    }
    free(kf);
}

void krn_attn_f16(float *out, const float *q, const uint16_t *kc, const uint16_t *vc, int n_q,
                  int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx, float scale,
                  float *scratch, int it0, int it1)
{
    if (krn__have_avx512vnni() && head_dim % 64 == 0 && head_dim <= 256)
        krn__attn_f16_avx512(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx,
                             scale, scratch, it0, it1);
    else if (krn__have_avx2() && head_dim % 64 == 0 && head_dim <= 256)
        krn__attn_f16_avx2(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx,
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

/* ---- fast-path stand-ins where cpu_avx2.c and cpu_avx512.c compile to nothing (not x86-64
 * GCC/Clang): the dispatcher never calls them ---- */
#if !(defined(__x86_64__) && defined(__GNUC__))

void krn__qmatmul_avx2(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                       int ldy, int r0, int r1)
{
    krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
}

void krn__attn_f16_avx2(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                        int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                        float scale, float *scratch, int it0, int it1)
{
    krn__attn_f16_ref(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx, scale,
                      scratch, it0, it1);
}

void krn__swiglu_avx2(float *out, const float *g, const float *u, int n)
{
    krn__swiglu_ref(out, g, u, n);
}

void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1)
{
    krn__qact_quantize_ref(a, x, t0, t1);
}

void krn__qmatmul_vnni(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                       int ldy, int r0, int r1)
{
    krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
}

void krn__attn_f16_avx512(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                          int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                          float scale, float *scratch, int it0, int it1)
{
    krn__attn_f16_ref(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx, scale,
                      scratch, it0, it1);
}

void krn__swiglu_avx512(float *out, const float *g, const float *u, int n)
{
    krn__swiglu_ref(out, g, u, n);
}

void krn__f32_to_f16_avx512(uint16_t *dst, const float *src, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = krn_f32_to_fp16(src[i]);
}

#endif
