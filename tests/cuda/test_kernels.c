/* tests/cuda/test_kernels.c - each CUDA kernel against the CPU reference op (kernels.h), with
 * the tolerance stated at each check. Every test skips (passes with a note) when no GPU is
 * present or the build has no CUDA backend. Runs with CK_FORK=no: CUDA is never touched in a
 * forked child. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_int.h"
#include "kernels.h"
#include "s3.h"
#include "testutil.h"

#ifdef S3_HAVE_CUDA
#include "cuda.h"

static struct krn_cuda_dev *g_dev;
static uint64_t g_rng = 88172645463325252ull;

static int have_gpu(void)
{
    if (!g_dev && krn_cuda_device_count() > 0 && krn_cuda_dev_new(0, &g_dev) < 0)
        g_dev = NULL;
    if (!g_dev)
        fprintf(stderr, "SKIP: no CUDA device\n");
    return g_dev != NULL;
}

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) / (float)(1ull << 23) - 1.0f;
}

static float h2f(uint16_t h)
{
    return krn_fp16_to_f32(h);
}

static float round16(float x)
{
    return krn_fp16_to_f32(krn_f32_to_fp16(x));
}

static void *dup_to_dev(const void *h, size_t bytes)
{
    void *d = NULL;
    ck_assert_int_eq(krn_cuda_malloc(g_dev, &d, bytes), 0);
    ck_assert_int_eq(krn_cuda_upload(g_dev, d, h, bytes), 0);
    return d;
}

static void *dev_poisoned(size_t bytes)
{
    void *d = NULL;
    ck_assert_int_eq(krn_cuda_malloc(g_dev, &d, bytes), 0);
    ck_assert_int_eq(krn_cuda_memset(g_dev, d, 0xff, bytes), 0); /* NaN in f16 and f32 */
    return d;
}

/* Expected q8-rounded fp16 of rows x (n, d) f32: the CPU path's own quantiser (krn_qact). */
static void q8_ref(const float *x, int n, int d, uint16_t *out)
{
    struct krn_qact a;
    ck_assert_int_eq(krn_qact_init(&a, n, d), 0);
    krn_qact_quantize(&a, x, 0, n);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++)
            out[t * d + i] = krn_f32_to_fp16(a.d[t * a.nb + i / 32] *
                                             (float)a.qs[(size_t)t * a.nb * 32 + i]);
    krn_qact_deinit(&a);
}

/* got vs want: every value within one quantisation step of its block (the f32 inputs may
 * differ in their last bit: sum order, expf), at least 99% bit-identical. */
static void q8_close(const uint16_t *got, const uint16_t *want, int n, int d)
{
    long same = 0;
    for (int t = 0; t < n; t++)
        for (int b = 0; b < d / 32; b++) {
            float amax = 0.0f;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(h2f(want[t * d + b * 32 + j])));
            for (int j = 0; j < 32; j++) {
                const int i = t * d + b * 32 + j;
                same += got[i] == want[i];
                ck_assert_float_le(fabsf(h2f(got[i]) - h2f(want[i])), amax / 127.0f * 1.01f);
            }
        }
    ck_assert_int_ge(100 * same, 99L * n * d);
}

/* d: 576 and 4096 take the register-cached float4 path, 130 and 9000 the plain loop. q8: the
 * krn_cuda_rmsnorm_q8 flavour, against the CPU's quantiser on the reference rows. */
static void check_rmsnorm(int d, int q8)
{
    const int rows = 7;
    float *x = malloc(sizeof(float) * rows * d), *w = malloc(sizeof(float) * d);
    float *ref = malloc(sizeof(float) * rows * d);
    uint16_t *y = malloc(2u * rows * d), *yw = malloc(2u * rows * d);
    for (int i = 0; i < rows * d; i++)
        x[i] = frand() * (1 + i % 5);
    for (int i = 0; i < d; i++)
        w[i] = frand() * 2;
    float *dx = dup_to_dev(x, sizeof(float) * rows * d), *dw = dup_to_dev(w, sizeof(float) * d);
    uint16_t *dy = dev_poisoned(2u * rows * d);
    ck_assert_int_eq((q8 ? krn_cuda_rmsnorm_q8 : krn_cuda_rmsnorm)(g_dev, dx, dw, rows, d, 1e-5f,
                                                                    dy),
                     0);
    ck_assert_int_eq(krn_cuda_download(g_dev, y, dy, 2u * rows * d), 0);
    for (int r = 0; r < rows; r++)
        krn_rmsnorm(ref + r * d, x + r * d, w, d, 1e-5f);
    if (q8) {
        q8_ref(ref, rows, d, yw);
        q8_close(y, yw, rows, d);
        ck_assert_int_eq(krn_cuda_rmsnorm_q8(g_dev, dx, dw, rows, 130, 1e-5f, dy), S3_EINVAL);
    } else {
        for (int i = 0; i < rows * d; i++) /* fp16 output: half an ulp plus f32 sum order */
            ck_assert_float_le(fabsf(h2f(y[i]) - ref[i]), 1e-3f * fabsf(ref[i]) + 1e-6f);
    }
    krn_cuda_free(dx), krn_cuda_free(dw), krn_cuda_free(dy);
    free(x), free(w), free(ref), free(y), free(yw);
}

START_TEST(test_rmsnorm)
{
    if (!have_gpu())
        return;
    check_rmsnorm(576, 0);
    check_rmsnorm(4096, 0);
    check_rmsnorm(130, 0);
    check_rmsnorm(9000, 0);
}
END_TEST

static void check_rope(int mode, int n_rot)
{
    const int n = 5, pos0 = 3, H = 4, Hkv = 2, hd = 64, n_ctx = 16;
    const int dq = H * hd, dkv = Hkv * hd, ld = dq + 2 * dkv;
    float *qkv = malloc(sizeof(float) * n * ld), *cs = malloc(sizeof(float) * n_ctx * n_rot);
    uint16_t *qo = malloc(2u * n * dq), *kc = malloc(2u * Hkv * n_ctx * hd),
             *vc = malloc(2u * Hkv * n_ctx * hd);
    for (int i = 0; i < n * ld; i++)
        qkv[i] = frand() * 3;
    for (int p = 0; p < n_ctx; p++)
        krn_rope_table(cs + p * n_rot, p, n_rot, 10000.0f, NULL);
    float *dqkv = dup_to_dev(qkv, sizeof(float) * n * ld);
    float *dcs = dup_to_dev(cs, sizeof(float) * n_ctx * n_rot);
    uint16_t *dqo = dev_poisoned(2u * n * dq), *dkc = dev_poisoned(2u * Hkv * n_ctx * hd),
             *dvc = dev_poisoned(2u * Hkv * n_ctx * hd);
    ck_assert_int_eq(krn_cuda_rope_qkv(g_dev, dqkv, ld, n, pos0, H, Hkv, hd, n_rot, dcs, mode, dqo,
                                       dkc, dvc, n_ctx),
                     0);
    ck_assert_int_eq(krn_cuda_download(g_dev, qo, dqo, 2u * n * dq), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, kc, dkc, 2u * Hkv * n_ctx * hd), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, vc, dvc, 2u * Hkv * n_ctx * hd), 0);
    for (int t = 0; t < n; t++) {
        float *row = qkv + t * ld;
        const float *c = cs + (pos0 + t) * n_rot;
        krn_rope_apply(row, H, hd, n_rot, c, mode);
        krn_rope_apply(row + dq, Hkv, hd, n_rot, c, mode);
        /* same f32 arithmetic, then one fp16 rounding: equal bits */
        for (int i = 0; i < dq; i++)
            ck_assert_uint_eq(qo[t * dq + i], krn_f32_to_fp16(row[i]));
        for (int h = 0; h < Hkv; h++)
            for (int i = 0; i < hd; i++) {
                const size_t at = ((size_t)h * n_ctx + pos0 + t) * hd + i;
                ck_assert_uint_eq(kc[at], krn_f32_to_fp16(row[dq + h * hd + i]));
                ck_assert_uint_eq(vc[at], krn_f32_to_fp16(row[dq + dkv + h * hd + i]));
            }
    }
    krn_cuda_free(dqkv), krn_cuda_free(dcs), krn_cuda_free(dqo), krn_cuda_free(dkc),
        krn_cuda_free(dvc);
    free(qkv), free(cs), free(qo), free(kc), free(vc);
}

START_TEST(test_rope)
{
    if (!have_gpu())
        return;
    check_rope(KRN_CUDA_ROPE_NORM, 64);
    check_rope(KRN_CUDA_ROPE_NEOX, 64);
    check_rope(KRN_CUDA_ROPE_NEOX, 32); /* partial rotation */
}
END_TEST

/* attention of n queries at pos0.. over a cache filled for 0..pos0+n-1, vs krn_attn_ref on the
 * same fp16-rounded inputs */
static void check_attn_v(int n, int pos0, int H, int Hkv, int hd, int in_place)
{
    const int n_ctx = pos0 + n + 3, nk = pos0 + n;
    const int dq = H * hd, dkv = Hkv * hd;
    float *q = malloc(sizeof(float) * n * dq), *k = malloc(sizeof(float) * nk * dkv),
          *v = malloc(sizeof(float) * nk * dkv), *ref = malloc(sizeof(float) * n * dq);
    uint16_t *qh = malloc(2u * n * dq), *kc = calloc((size_t)Hkv * n_ctx * hd, 2),
             *vc = calloc((size_t)Hkv * n_ctx * hd, 2), *out = malloc(2u * n * dq);
    for (int i = 0; i < n * dq; i++)
        q[i] = round16(frand() * 2), qh[i] = krn_f32_to_fp16(q[i]);
    for (int j = 0; j < nk; j++)
        for (int i = 0; i < dkv; i++) {
            k[j * dkv + i] = round16(frand() * 2);
            v[j * dkv + i] = round16(frand());
            const size_t at = ((size_t)(i / hd) * n_ctx + j) * hd + i % hd;
            kc[at] = krn_f32_to_fp16(k[j * dkv + i]);
            vc[at] = krn_f32_to_fp16(v[j * dkv + i]);
        }
    /* positions past pos0+n-1 hold garbage that must never be read */
    for (int h = 0; h < Hkv; h++)
        for (int j = nk; j < n_ctx; j++)
            for (int i = 0; i < hd; i++)
                kc[((size_t)h * n_ctx + j) * hd + i] = vc[((size_t)h * n_ctx + j) * hd + i] =
                    0x7e00; /* NaN */
    const float scale = 1.0f / sqrtf((float)hd);
    krn_attn_ref(ref, q, k, v, n, pos0, H, Hkv, hd, scale);
    uint16_t *dq_ = dup_to_dev(qh, 2u * n * dq), *dkc = dup_to_dev(kc, 2u * Hkv * n_ctx * hd),
             *dvc = dup_to_dev(vc, 2u * Hkv * n_ctx * hd),
             *dout = in_place ? dq_ : dev_poisoned(2u * n * dq);
    ck_assert_int_eq(
        krn_cuda_attn(g_dev, dq_, dkc, dvc, n, pos0, H, Hkv, hd, n_ctx, scale, dout), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, out, dout, 2u * n * dq), 0);
    double err2 = 0, ref2 = 0, maxe = 0;
    for (int i = 0; i < n * dq; i++) {
        const double e = fabs((double)h2f(out[i]) - ref[i]);
        ck_assert(!isnan(h2f(out[i])));
        err2 += e * e, ref2 += (double)ref[i] * ref[i];
        maxe = e > maxe ? e : maxe;
    }
    /* probabilities rounded to fp16 before P.V and an fp16 output: relative L2 error < 2e-3,
       no element off by more than 4e-3 (outputs are O(0.1)) */
    fprintf(stderr, "attn v%d bq %d n=%d pos0=%d H=%d/%d hd=%d%s: rel_l2=%.2e max_abs=%.2e\n",
            krn_cuda_attn_variant(g_dev, 0), krn_cuda_attn_block(g_dev, -1), n, pos0, H, Hkv,
            hd, in_place ? " in place" : "", sqrt(err2 / ref2), maxe);
    ck_assert_double_lt(sqrt(err2 / ref2), 2e-3);
    ck_assert_double_lt(maxe, 4e-3);
    if (!in_place) {
        /* the rounded flavour: bit for bit these outputs rounded as the CPU path's 8-bit
           activations (the host's rounding of them) */
        float *f = malloc(sizeof(float) * n * dq);
        uint16_t *want = malloc(2u * n * dq), *got = malloc(2u * n * dq);
        for (int i = 0; i < n * dq; i++)
            f[i] = h2f(out[i]);
        q8_ref(f, n, dq, want);
        ck_assert_int_eq(
            krn_cuda_attn_q8(g_dev, dq_, dkc, dvc, n, pos0, H, Hkv, hd, n_ctx, scale, dout), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, got, dout, 2u * n * dq), 0);
        for (int i = 0; i < n * dq; i++)
            ck_assert_msg(got[i] == want[i], "attn_q8 i=%d got %g want %g", i, h2f(got[i]),
                          h2f(want[i]));
        free(f), free(want), free(got);
    }
    krn_cuda_free(dq_), krn_cuda_free(dkc), krn_cuda_free(dvc);
    if (!in_place)
        krn_cuda_free(dout);
    free(q), free(k), free(v), free(ref), free(qh), free(kc), free(vc), free(out);
}

static void check_attn(int n, int pos0, int H, int Hkv, int hd)
{
    check_attn_v(n, pos0, H, Hkv, hd, 0);
}

START_TEST(test_attn)
{
    if (!have_gpu())
        return;
    /* variant 3 (the Hopper kernel) falls back to 2 where the build or the device lacks it */
    for (int var = 1; var <= 3; var++) {
        krn_cuda_attn_variant(g_dev, var);
        check_attn(200, 0, 4, 2, 128);  /* tensor-core path, prefill from 0, partial tiles */
        check_attn(130, 70, 6, 2, 64);  /* tensor-core path over cached keys */
        check_attn(300, 0, 2, 1, 128);  /* several blocks and tiles: pipeline, block order */
        check_attn(1, 300, 4, 1, 128);  /* decode (variant 2: split over 2 blocks of keys) */
        check_attn(3, 9, 2, 2, 96);     /* short batch, odd head size */
        check_attn(20, 5, 2, 1, 96);    /* plain path (hd 96, n >= 16) */
        check_attn(16, 0, 2, 1, 64);    /* one key tile */
        check_attn(2176, 0, 3, 1, 64);  /* a scan pass of the default shape (2048 + 128) */
        check_attn(520, 0, 2, 1, 128);  /* 5 blocks: a warpgroup's rows all past n */
        check_attn_v(150, 10, 4, 2, 64, 1);
    }
    krn_cuda_attn_variant(g_dev, 2);
    /* variant 2 with each block size forced (the default: 128 queries over tiles of 128 keys;
       64 over tiles of 128 for hd 64, of 64 for hd 128) */
    for (int bq = 64; bq <= 128; bq += 64) {
        krn_cuda_attn_block(g_dev, bq);
        check_attn(200, 0, 4, 2, 128);
        check_attn(130, 70, 6, 2, 64);
        check_attn(300, 0, 2, 1, 128);
        check_attn_v(150, 10, 4, 2, 64, 1);
    }
    ck_assert_int_eq(krn_cuda_attn_block(g_dev, 0), 128);
    /* variant 2 only: split-KV decode over many splits, a batch of queries, every head size */
    check_attn(1, 5000, 4, 2, 128);
    check_attn(7, 1000, 6, 3, 64);
    check_attn(2, 40, 2, 1, 32);
    check_attn(1, 700, 2, 1, 256);
    /* out == q */
    check_attn_v(150, 10, 4, 2, 64, 1);
    check_attn_v(3, 600, 4, 2, 128, 1);
    ck_assert_int_eq(krn_cuda_attn_variant(g_dev, 0), 2);
}
END_TEST

START_TEST(test_gemm)
{
    if (!have_gpu())
        return;
    const int m = 33, n = 77, k = 96;
    uint16_t *x = malloc(2u * m * k), *w = malloc(2u * n * k), *y16 = malloc(2u * m * n);
    float *y = malloc(sizeof(float) * m * n), *y0 = malloc(sizeof(float) * m * n);
    for (int i = 0; i < m * k; i++)
        x[i] = krn_f32_to_fp16(frand());
    for (int i = 0; i < n * k; i++)
        w[i] = krn_f32_to_fp16(frand());
    for (int i = 0; i < m * n; i++)
        y0[i] = frand();
    /* x w^T in double from the fp16 values: the reference of every check below */
    double *ref = malloc(sizeof(double) * m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int l = 0; l < k; l++)
                s += (double)h2f(x[i * k + l]) * h2f(w[j * k + l]);
            ref[i * n + j] = s;
        }
    uint16_t *dx = dup_to_dev(x, 2u * m * k), *dw = dup_to_dev(w, 2u * n * k);
    float *dy = dup_to_dev(y0, sizeof(float) * m * n);
    uint16_t *dy16 = dev_poisoned(2u * m * n);
    ck_assert_int_eq(krn_cuda_gemm(g_dev, m, n, k, dx, dw, dy, n, 1.0f, KRN_CUDA_F32), 0);
    ck_assert_int_eq(krn_cuda_gemm(g_dev, m, n, k, dx, dw, dy16, n, 0.0f, KRN_CUDA_F16), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, y, dy, sizeof(float) * m * n), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, y16, dy16, 2u * m * n), 0);
    for (int i = 0; i < m * n; i++) {
        /* fp32 accumulation of exact fp16 products: |err| < 1e-5 * k */
        ck_assert_double_lt(fabs(y[i] - (ref[i] + y0[i])), 1e-3);
        ck_assert_double_lt(fabs(h2f(y16[i]) - ref[i]), 1e-3 * fabs(ref[i]) + 2e-3);
    }
    ck_assert_int_eq(krn_cuda_gemm(g_dev, m, n, k, dx, dw, dy16, n, 1.0f, KRN_CUDA_F16), S3_EINVAL);
    /* the shape tuned (the fastest of cuBLAS's default and cuBLASLt's candidates kept): the
     * same products, within the same bound of the reference */
    {
        struct krn_cuda_gemm_trial tr[20];
        int nt = -1;
        ck_assert_int_eq(krn_cuda_gemm_tune(g_dev, m, n, k, dx, k, dw, dy, n, 1.0f,
                                            KRN_CUDA_F32, tr, 20, &nt), 0);
        ck_assert_int_ge(nt, 1);
        ck_assert_int_eq(tr[0].algo, -1); /* cuBLAS's default comes first */
        for (int i = 0; i < nt; i++)
            ck_assert(tr[i].ms > 0.0f);
        ck_assert_int_eq(krn_cuda_gemm_tune(g_dev, m, n, k, dx, k, dw, dy, n, 0.5f,
                                            KRN_CUDA_F32, NULL, 0, NULL), S3_EINVAL);
        ck_assert_int_eq(krn_cuda_gemm_tune(g_dev, m, n, k, dx, k, dw, dy16, n, 1.0f,
                                            KRN_CUDA_F16, NULL, 0, NULL), S3_EINVAL);
        ck_assert_int_eq(krn_cuda_upload(g_dev, dy, y0, sizeof(float) * m * n), 0);
        ck_assert_int_eq(krn_cuda_gemm(g_dev, m, n, k, dx, dw, dy, n, 1.0f, KRN_CUDA_F32), 0);
        float *yt = malloc(sizeof(float) * m * n);
        ck_assert_int_eq(krn_cuda_download(g_dev, yt, dy, sizeof(float) * m * n), 0);
        for (int i = 0; i < m * n; i++)
            ck_assert_double_lt(fabs(yt[i] - (ref[i] + y0[i])), 1e-3);
        free(yt);
    }
    /* x rows k + 8 apart (the padding holds NaN that must not be read) */
    {
        const int ldx = k + 8;
        uint16_t *xp = malloc(2u * m * ldx);
        for (int i = 0; i < m * ldx; i++)
            xp[i] = i % ldx < k ? x[(i / ldx) * k + i % ldx] : 0x7e00;
        uint16_t *dxp = dup_to_dev(xp, 2u * m * ldx);
        ck_assert_int_eq(krn_cuda_gemm_ld(g_dev, m, n, k, dxp, ldx, dw, dy16, n, 0.0f,
                                          KRN_CUDA_F16), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, y16, dy16, 2u * m * n), 0);
        for (int i = 0; i < m * n; i++)
            ck_assert_double_lt(fabs(h2f(y16[i]) - ref[i]), 1e-3 * fabs(ref[i]) + 2e-3);
        ck_assert_int_eq(krn_cuda_gemm_ld(g_dev, m, n, k, dxp, k - 1, dw, dy16, n, 0.0f,
                                          KRN_CUDA_F16), S3_EINVAL);
        krn_cuda_free(dxp);
        free(xp);
    }
    krn_cuda_free(dx), krn_cuda_free(dw), krn_cuda_free(dy), krn_cuda_free(dy16);
    free(x), free(w), free(y16), free(y), free(y0), free(ref);
}
END_TEST

/* ---- 8-bit activation rounding (the CPU path's GEMM inputs) ------------------------------- */

START_TEST(test_q8_act)
{
    if (!have_gpu())
        return;
    /* in place from fp16 values: bit-identical; a zero block, a block with one large value */
    const int n = 5, d = 128;
    uint16_t *h = malloc(2u * n * d), *got = malloc(2u * n * d), *want = malloc(2u * n * d);
    float *f = malloc(sizeof(float) * n * d);
    for (int i = 0; i < n * d; i++)
        h[i] = krn_f32_to_fp16(frand() * (1 + i % 7));
    for (int j = 0; j < 32; j++)
        h[32 + j] = 0;
    h[2 * d + 70] = krn_f32_to_fp16(3000.0f);
    for (int i = 0; i < n * d; i++)
        f[i] = h2f(h[i]);
    q8_ref(f, n, d, want);
    uint16_t *dh = dup_to_dev(h, 2u * n * d);
    ck_assert_int_eq(krn_cuda_q8_round(g_dev, dh, n, d), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, got, dh, 2u * n * d), 0);
    for (int i = 0; i < n * d; i++)
        ck_assert_msg(got[i] == want[i], "i=%d got %g want %g", i, h2f(got[i]), h2f(want[i]));
    ck_assert_uint_eq(got[32], 0);
    ck_assert_int_eq(krn_cuda_q8_round(g_dev, dh, n, 100), S3_EINVAL);
    krn_cuda_free(dh);
    free(h), free(got), free(want), free(f);

    /* RMSNorm then rounding from its f32 values: the float4 path (576, 4096) and the plain
       loop (9024); widths that are no multiple of 32 are refused */
    check_rmsnorm(576, 1);
    check_rmsnorm(4096, 1);
    check_rmsnorm(9024, 1);

    /* SwiGLU in place over the gate half, rounded from its f32 products */
    const int rows = 3, ff = 320;
    uint16_t *gu = malloc(2u * rows * 2 * ff), *back = malloc(2u * rows * 2 * ff);
    uint16_t *o = malloc(2u * rows * ff), *ow = malloc(2u * rows * ff);
    float *g = malloc(sizeof(float) * ff), *u = malloc(sizeof(float) * ff),
          *r = malloc(sizeof(float) * rows * ff);
    for (int i = 0; i < rows * 2 * ff; i++)
        gu[i] = krn_f32_to_fp16(frand() * 6);
    uint16_t *dgu = dup_to_dev(gu, 2u * rows * 2 * ff);
    ck_assert_int_eq(krn_cuda_swiglu_q8(g_dev, dgu, rows, ff, dgu, 2 * ff), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, back, dgu, 2u * rows * 2 * ff), 0);
    for (int t = 0; t < rows; t++) {
        for (int i = 0; i < ff; i++)
            g[i] = h2f(gu[t * 2 * ff + i]), u[i] = h2f(gu[t * 2 * ff + ff + i]);
        krn_swiglu(r + t * ff, g, u, ff);
        for (int i = 0; i < ff; i++) {
            o[t * ff + i] = back[t * 2 * ff + i];
            ck_assert_uint_eq(back[t * 2 * ff + ff + i], gu[t * 2 * ff + ff + i]);
        }
    }
    q8_ref(r, rows, ff, ow);
    q8_close(o, ow, rows, ff);
    ck_assert_int_eq(krn_cuda_swiglu_q8(g_dev, dgu, rows, 300, dgu, 600), S3_EINVAL);
    krn_cuda_free(dgu);
    free(gu), free(back), free(o), free(ow), free(g), free(u), free(r);
}
END_TEST

START_TEST(test_swiglu_argmax_embed)
{
    if (!have_gpu())
        return;
    const int rows = 3, ff = 300;
    uint16_t *gu = malloc(2u * rows * 2 * ff), *o = malloc(2u * rows * ff);
    float *g = malloc(sizeof(float) * ff), *u = malloc(sizeof(float) * ff),
          *r = malloc(sizeof(float) * ff);
    for (int i = 0; i < rows * 2 * ff; i++)
        gu[i] = krn_f32_to_fp16(frand() * 6);
    uint16_t *dgu = dup_to_dev(gu, 2u * rows * 2 * ff), *dout = dev_poisoned(2u * rows * ff);
    ck_assert_int_eq(krn_cuda_swiglu(g_dev, dgu, rows, ff, dout), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, o, dout, 2u * rows * ff), 0);
    for (int t = 0; t < rows; t++) {
        for (int i = 0; i < ff; i++)
            g[i] = h2f(gu[t * 2 * ff + i]), u[i] = h2f(gu[t * 2 * ff + ff + i]);
        krn_swiglu(r, g, u, ff);
        for (int i = 0; i < ff; i++) /* one fp16 rounding + expf ulps */
            ck_assert_float_le(fabsf(h2f(o[t * ff + i]) - r[i]), 1e-3f * fabsf(r[i]) + 1e-5f);
    }
    /* in place over the gate half (16-byte path: ff a multiple of 8), rows 2 ff apart */
    {
        const int ff8 = 304;
        uint16_t *gu8 = malloc(2u * rows * 2 * ff8), *back = malloc(2u * rows * 2 * ff8);
        float *g8 = malloc(sizeof(float) * ff8), *u8 = malloc(sizeof(float) * ff8),
              *r8 = malloc(sizeof(float) * ff8);
        for (int i = 0; i < rows * 2 * ff8; i++)
            gu8[i] = krn_f32_to_fp16(frand() * 6);
        uint16_t *d8 = dup_to_dev(gu8, 2u * rows * 2 * ff8);
        ck_assert_int_eq(krn_cuda_swiglu_ld(g_dev, d8, rows, ff8, d8, ff8), S3_EINVAL);
        ck_assert_int_eq(krn_cuda_swiglu_ld(g_dev, d8, rows, ff8, d8, 2 * ff8), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, back, d8, 2u * rows * 2 * ff8), 0);
        for (int t = 0; t < rows; t++) {
            for (int i = 0; i < ff8; i++)
                g8[i] = h2f(gu8[t * 2 * ff8 + i]), u8[i] = h2f(gu8[t * 2 * ff8 + ff8 + i]);
            krn_swiglu(r8, g8, u8, ff8);
            for (int i = 0; i < ff8; i++) {
                ck_assert_float_le(fabsf(h2f(back[t * 2 * ff8 + i]) - r8[i]),
                                   1e-3f * fabsf(r8[i]) + 1e-5f);
                ck_assert_uint_eq(back[t * 2 * ff8 + ff8 + i], gu8[t * 2 * ff8 + ff8 + i]);
            }
        }
        krn_cuda_free(d8);
        free(gu8), free(back), free(g8), free(u8), free(r8);
    }
    /* argmax: ties go to the lowest index, NaN never wins */
    const int n = 5000;
    float *x = malloc(sizeof(float) * 2 * n);
    for (int i = 0; i < 2 * n; i++)
        x[i] = frand();
    x[4000] = 7.0f, x[123] = 7.0f, x[77] = NAN;
    x[n + 4999] = 3.0f;
    float *dxx = dup_to_dev(x, sizeof(float) * 2 * n);
    int32_t *dres = dev_poisoned(8), res[2];
    ck_assert_int_eq(krn_cuda_argmax(g_dev, dxx, 2, n, dres), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, res, dres, 8), 0);
    ck_assert_int_eq(res[0], 123);
    ck_assert_int_eq(res[1], 4999);
    /* embed: rows of an fp16 table, out-of-range ids give zeros */
    const int V = 10, d = 40;
    uint16_t *tab = malloc(2u * V * d);
    for (int i = 0; i < V * d; i++)
        tab[i] = krn_f32_to_fp16(frand());
    const int32_t ids[3] = {9, 0, 4};
    uint16_t *dtab = dup_to_dev(tab, 2u * V * d);
    int32_t *dids = dup_to_dev(ids, sizeof ids);
    float *demb = dev_poisoned(sizeof(float) * 3 * d), emb[3 * 40];
    ck_assert_int_eq(krn_cuda_embed(g_dev, dtab, V, dids, 3, d, demb), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, emb, demb, sizeof emb), 0);
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < d; i++)
            ck_assert_float_eq(emb[t * d + i], h2f(tab[ids[t] * d + i]));
    krn_cuda_free(dgu), krn_cuda_free(dout), krn_cuda_free(dxx), krn_cuda_free(dres);
    krn_cuda_free(dtab), krn_cuda_free(dids), krn_cuda_free(demb);
    free(gu), free(o), free(g), free(u), free(r), free(x), free(tab);
}
END_TEST

/* The device sampler against the host's (engine/sample.c) on the same logits and the same
 * uniform draw: the same token, every time; a cut in an over-full bin is left to the host. */
static void sample_case(const float *x, int n, float *dx, int32_t *dout, float *buf, float t,
                        float top_p, int top_k, int want_how, int *n_cases)
{
    struct eng_sample_params sp = {.temperature = t, .top_p = top_p, .top_k = top_k,
                                   .seed = (uint64_t)n * 31u + (uint64_t)top_k};
    struct eng_sampler *s = NULL;
    ck_assert_int_eq(eng_sampler_new(&sp, n, &s), 0);
    ck_assert_int_eq(krn_cuda_upload(g_dev, dx, x, sizeof(float) * (size_t)n), 0);
    for (int d = 0; d < 8; d++) {
        uint64_t saved[4];
        const double u = eng__sampler_draw(s, saved);
        eng__sampler_undraw(s, saved); /* the host's own draw below takes the same u */
        memcpy(buf, x, sizeof(float) * (size_t)n);
        const int32_t host = eng_sampler_sample(s, buf);
        const struct krn_cuda_sample_params kp = {t, top_p, top_k};
        int32_t out[2] = {-1, -1};
        ck_assert_int_eq(krn_cuda_sample(g_dev, dx, n, &kp, u, dout), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, out, dout, sizeof out), 0);
        ck_assert_msg(out[1] == want_how, "n %d T %.2f top_p %.3f top_k %d: how %d, want %d", n,
                      (double)t, (double)top_p, top_k, out[1], want_how);
        if (want_how != 2)
            ck_assert_msg(out[0] == host,
                          "n %d T %.2f top_p %.3f top_k %d draw %d (u %.6f): device %d, host %d",
                          n, (double)t, (double)top_p, top_k, d, u, out[0], host);
        ++*n_cases;
    }
    eng_sampler_free(s);
}

START_TEST(test_sample)
{
    if (!have_gpu())
        return;
    enum { NMAX = 128256 };
    float *x = malloc(sizeof(float) * NMAX), *buf = malloc(sizeof(float) * NMAX);
    float *dx = NULL;
    int32_t *dout = dev_poisoned(8);
    ck_assert_int_eq(krn_cuda_malloc(g_dev, (void **)&dx, sizeof(float) * NMAX), 0);
    static const struct {
        float t, p;
        int k;
    } ps[] = {{1.0f, 1.0f, 0},    {0.7f, 0.9f, 0},    {0.8f, 1.0f, 40},  {1.3f, 0.95f, 40},
              {0.5f, 0.5f, 1000}, {1.0f, 0.999f, 0},  {2.0f, 0.0f, 0},   {0.01f, 1.0f, 0},
              {1.0f, 0.3f, 7}};
    const int sizes[] = {5, 300, 49152, NMAX};
    int n_cases = 0;
    for (int si = 0; si < 4; si++)
        for (int shape = 0; shape < 3; shape++) {
            const int n = sizes[si];
            /* (no bin of 1/16 nat holds over 4096 of the 128k: the device sorts every cut) */
            const float spread = shape == 0 ? 3.0f : shape == 1 ? 1.0f : 2.0f;
            for (int i = 0; i < n; i++) {
                x[i] = (frand() + frand() + frand()) * spread;
                if (shape == 2)
                    x[i] = floorf(x[i] * 16.0f) / 16.0f; /* ties */
            }
            x[(7 * n) / 9] = 6.0f * spread;
            if (n > 10)
                x[n / 3] = NAN, x[n / 2] = -INFINITY;
            for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++)
                sample_case(x, n, dx, dout, buf, ps[pi].t, ps[pi].p, ps[pi].k, 1, &n_cases);
            /* greedy: the argmax, no draw */
            sample_case(x, n, dx, dout, buf, 0.0f, 1.0f, 0, 0, &n_cases);
            sample_case(x, n, dx, dout, buf, 1.0f, 0.9f, 1, 0, &n_cases);
        }
    /* no finite logit: the first (all -inf), or 0 (all NaN); no draw */
    for (int i = 0; i < 300; i++)
        x[i] = -INFINITY;
    sample_case(x, 300, dx, dout, buf, 1.0f, 0.9f, 0, 0, &n_cases);
    for (int i = 0; i < 300; i++)
        x[i] = NAN;
    sample_case(x, 300, dx, dout, buf, 1.0f, 1.0f, 0, 0, &n_cases);
    /* 10000 logits in one bin of 1/16 nat, top-p cutting inside it: the host's */
    for (int i = 0; i < 10000; i++)
        x[i] = 1.0f + 0.03f * (float)(i % 97) / 97.0f;
    sample_case(x, 10000, dx, dout, buf, 1.0f, 0.5f, 0, 2, &n_cases);
    /* but the whole bin kept needs no sort */
    sample_case(x, 10000, dx, dout, buf, 1.0f, 1.0f, 0, 1, &n_cases);
    const struct krn_cuda_sample_params kp = {1.0f, 1.0f, 0};
    ck_assert_int_eq(krn_cuda_sample(g_dev, dx, KRN_CUDA_SAMPLE_MAX_N + 1, &kp, 0.5, dout),
                     S3_EINVAL);
    ck_assert_int_eq(krn_cuda_sample(g_dev, dx, 0, &kp, 0.5, dout), S3_EINVAL);
    fprintf(stderr, "sample: %d draws, device and host the same token\n", n_cases);
    krn_cuda_free(dx), krn_cuda_free(dout);
    free(x), free(buf);
}
END_TEST

START_TEST(test_dequant)
{
    if (!have_gpu())
        return;
    /* types: Q4_0 = 2 (18-byte blocks), Q4_1 = 3 (20), Q8_0 = 8 (34); random payloads with
       sane fp16 scales */
    static const struct {
        uint32_t type;
        int bb;
        int n_half;
    } types[] = {{2, 18, 1}, {3, 20, 2}, {8, 34, 1}};
    const int nb = 64, n = nb * 32;
    float *ref = malloc(sizeof(float) * n);
    uint16_t *out = malloc(2u * n);
    for (size_t ti = 0; ti < 3; ti++) {
        const int bb = types[ti].bb;
        uint8_t *blk = malloc((size_t)nb * bb);
        for (int b = 0; b < nb; b++) {
            for (int j = 0; j < bb; j++)
                blk[b * bb + j] = (uint8_t)(frand() * 128 + 128);
            for (int hh = 0; hh < types[ti].n_half; hh++) {
                const uint16_t s = krn_f32_to_fp16(frand() * 0.05f);
                blk[b * bb + 2 * hh] = (uint8_t)s, blk[b * bb + 2 * hh + 1] = (uint8_t)(s >> 8);
            }
        }
        ck_assert_int_eq(krn_dequant(types[ti].type, blk, ref, n), 0);
        void *dblk = dup_to_dev(blk, (size_t)nb * bb);
        uint16_t *dout = dev_poisoned(2u * n);
        ck_assert_int_eq(krn_cuda_dequant(g_dev, types[ti].type, dblk, dout, n), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, out, dout, 2u * n), 0);
        for (int i = 0; i < n; i++) /* the CPU value rounded once to fp16: equal bits */
            ck_assert_uint_eq(out[i], krn_f32_to_fp16(ref[i]));
        krn_cuda_free(dblk), krn_cuda_free(dout);
        free(blk);
    }
    ck_assert_int_eq(krn_cuda_dequant(g_dev, 12 /* Q4_K */, NULL, NULL, 256), S3_EINVAL);
    free(ref), free(out);
}
END_TEST

static void check_sae(int nd, int k, int tie_rows)
{
    const int n = 37, d = 64, ldx = 100;
    float *x = malloc(sizeof(float) * n * ldx), *we = malloc(sizeof(float) * nd * d),
          *be = malloc(sizeof(float) * nd), *bd = malloc(sizeof(float) * d),
          *acts = malloc(sizeof(float) * n * k), *pre = malloc(sizeof(double) * nd * 2);
    uint16_t *ids = malloc(2u * n * k);
    for (int i = 0; i < n * ldx; i++)
        x[i] = frand();
    for (int i = 0; i < nd * d; i++)
        we[i] = frand() * 0.2f;
    for (int i = 0; i < nd; i++)
        be[i] = frand() * 0.1f - (i % 3 == 0 ? 5.0f : 0.0f); /* some latents never fire */
    for (int i = 0; i < d; i++)
        bd[i] = frand() * 0.1f;
    if (tie_rows) {
        /* rows equal to b_dec: pre = b_enc exactly; b_enc with repeated values and fewer than
           k positives, so ties (and zeros) are ranked by id; tie_rows 2: every strong latent
           in one lane of the warp kernel (ids 5 mod 32), with ties, so that lane wins every
           round and lists its next candidates again and again */
        for (int i = 0; i < nd; i++)
            be[i] = tie_rows == 2 ? (i % 32 == 5 ? 3.0f + (float)(i % 3) : -1.0f)
                    : i % 37 == 0 ? 0.5f : i % 50 == 0 ? 0.25f : -1.0f;
        for (int t = 0; t < 3; t++)
            for (int i = 0; i < d; i++)
                x[t * ldx + i] = bd[i];
    }
    /* the split: head + remainder within 2^-21 of W s, s a power of two */
    uint16_t *hilo = malloc(sizeof(float) * nd * d);
    const float inv = krn_cuda_sae_split(we, nd, d, hilo);
    ck_assert_float_eq(inv, ldexpf(1.0f, (int)lroundf(log2f(inv))));
    for (int j = 0; j < nd; j++)
        for (int i = 0; i < d; i++) {
            const double hi = krn_fp16_to_f32(hilo[j * 2 * d + i]),
                         lo = krn_fp16_to_f32(hilo[j * 2 * d + d + i]), w = we[j * d + i];
            ck_assert_double_le(fabs((hi + lo) * inv - w), fabs(w) * 0x1p-21 + 1e-12);
            ck_assert_float_le(fabsf(we[j * d + i]) / inv, 16384.0f);
        }
    float *dx = dup_to_dev(x, sizeof(float) * n * ldx), *dbe = dup_to_dev(be, sizeof(float) * nd),
          *dbd = dup_to_dev(bd, sizeof(float) * d);
    uint16_t *dwe = dup_to_dev(hilo, sizeof(float) * nd * d);
    float *dscr = dev_poisoned(krn_cuda_sae_scratch_bytes(n, d, nd)),
          *dacts = dev_poisoned(sizeof(float) * n * k);
    uint16_t *dids = dev_poisoned(2u * n * k);
    ck_assert_int_eq(krn_cuda_sae_encode(g_dev, dx, ldx, n, d, dwe, 0.0f, dbe, dbd, nd, k, dscr,
                                         dids, dacts),
                     S3_EINVAL);
    ck_assert_int_eq(krn_cuda_sae_encode(g_dev, dx, ldx, n, d, dwe, inv, dbe, dbd, nd, k, dscr,
                                         dids, dacts),
                     0);
    ck_assert_int_eq(krn_cuda_download(g_dev, ids, dids, 2u * n * k), 0);
    ck_assert_int_eq(krn_cuda_download(g_dev, acts, dacts, sizeof(float) * n * k), 0);
    {
        /* the other selection kernel on the same pre-activations: identical picks and order */
        uint16_t *ids1 = malloc(2u * n * k);
        float *acts1 = malloc(sizeof(float) * n * k);
        const int was = krn_cuda_sae_variant(g_dev, 1);
        ck_assert_int_eq(krn_cuda_sae_encode(g_dev, dx, ldx, n, d, dwe, inv, dbe, dbd, nd, k,
                                             dscr, dids, dacts),
                         0);
        krn_cuda_sae_variant(g_dev, was);
        ck_assert_int_eq(krn_cuda_download(g_dev, ids1, dids, 2u * n * k), 0);
        ck_assert_int_eq(krn_cuda_download(g_dev, acts1, dacts, sizeof(float) * n * k), 0);
        ck_assert_int_eq(memcmp(ids1, ids, 2u * n * k), 0);
        ck_assert_int_eq(memcmp(acts1, acts, sizeof(float) * n * k), 0);
        free(ids1), free(acts1);
    }
    double *a = (double *)pre;
    int agree = 0;
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < nd; j++) {
            double s = be[j];
            for (int i = 0; i < d; i++)
                s += (double)we[j * d + i] * ((double)x[t * ldx + i] - bd[i]);
            a[j] = s > 0 ? s : 0;
        }
        for (int r = 0; r < k; r++) { /* r-th largest by (value desc, id asc) */
            int best = -1;
            for (int j = 0; j < nd; j++)
                if (a[j] >= 0 && (best < 0 || a[j] > a[best]))
                    best = j;
            agree += ids[t * k + r] == best;
            if (tie_rows && t < 3) /* exact ties: the lowest id first, every time */
                ck_assert_int_eq(ids[t * k + r], best);
            /* split fp16 GEMM vs double: activations within 1e-5 (an fp32 GEMM's accuracy;
               the heads alone would be ~1e-3 off) */
            ck_assert_double_lt(fabs(acts[t * k + r] - a[best]), 1e-5);
            if (r > 0)
                ck_assert_float_ge(acts[t * k + r - 1], acts[t * k + r]);
            a[best] = -1;
        }
    }
    /* ids equal except where two activations are within f32 rounding: >= 99% */
    ck_assert_int_ge(agree * 100, 99 * n * k);
    krn_cuda_free(dx), krn_cuda_free(dwe), krn_cuda_free(dbe), krn_cuda_free(dbd);
    krn_cuda_free(dscr), krn_cuda_free(dacts), krn_cuda_free(dids);
    free(x), free(we), free(be), free(bd), free(acts), free(pre), free(ids), free(hilo);
}

START_TEST(test_sae_topk)
{
    if (!have_gpu())
        return;
    ck_assert_int_eq(krn_cuda_sae_variant(g_dev, 0), 2);
    check_sae(512, 16, 0);  /* warp kernel, 16 per lane */
    check_sae(2048, 16, 0); /* warp kernel, 64 per lane */
    check_sae(200, 12, 1);  /* warp kernel, partial lanes, exact ties, zeros picked by id */
    check_sae(2048, 16, 2); /* warp kernel, the top latents all in one lane */
    check_sae(3000, 16, 1); /* block kernel (n_dict > 2048) */
}
END_TEST

START_TEST(test_errors)
{
    struct krn_cuda_dev *d = NULL;
    ck_assert_int_eq(krn_cuda_dev_new(4096, &d), S3_EDEVICE);
    ck_assert_ptr_null(d);
    krn_cuda_dev_free(NULL);
    krn_cuda_free(NULL);
    ck_assert_str_eq(krn_cuda_errmsg(NULL), "cuda: no error recorded");
    if (!have_gpu())
        return;
    ck_assert_int_eq(krn_cuda_attn(g_dev, NULL, NULL, NULL, 4, 0, 3, 2, 64, 8, 1.0f, NULL),
                     S3_EINVAL); /* 3 heads over 2 kv heads */
    ck_assert_int_eq(krn_cuda_rope_qkv(g_dev, NULL, 10, 4, 6, 1, 1, 64, 64, NULL, 0, NULL, NULL,
                                       NULL, 8),
                     S3_EINVAL); /* past n_ctx */
    /* a failing runtime call becomes S3_EDEVICE with a message, never an abort */
    void *p = NULL;
    ck_assert_int_eq(krn_cuda_malloc(g_dev, &p, (size_t)1 << 62), S3_ENOMEM);
    ck_assert_ptr_nonnull(strstr(krn_cuda_errmsg(g_dev), "cudaMalloc"));
    ck_assert_int_eq(krn_cuda_sync(g_dev), 0); /* the device is still usable */
}
END_TEST

#else /* no CUDA backend in this build */

START_TEST(test_no_backend)
{
    fprintf(stderr, "SKIP: built without the CUDA backend\n");
}
END_TEST

#endif

static Suite *suite(void)
{
    Suite *s = suite_create("cuda_kernels");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
#ifdef S3_HAVE_CUDA
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_attn);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_swiglu_argmax_embed);
    tcase_add_test(tc, test_q8_act);
    tcase_add_test(tc, test_dequant);
    tcase_add_test(tc, test_sae_topk);
    tcase_add_test(tc, test_sample);
    tcase_add_test(tc, test_errors);
#else
    tcase_add_test(tc, test_no_backend);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const int rc = s3t_run(suite(), CK_NOFORK);
#ifdef S3_HAVE_CUDA
    krn_cuda_dev_free(g_dev);
#endif
    return rc;
}
