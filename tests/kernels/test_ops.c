/* tests/kernels/test_ops.c - CPU kernels: fast paths against the plain references, and the
 * references against independent f32/f64 math. Tolerances are stated per test. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kernels_int.h"
#include "s3.h"
#include "testutil.h"

static uint64_t rng = 88172645463325252ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static uint16_t h(float f)
{
    return krn_f32_to_fp16(f);
}

/* A Q4_1 matrix (rows x cols) of random blocks, and its exact dequantisation. */
static uint8_t *make_q4_1(int rows, int cols, float *deq)
{
    const int nb = cols / 32;
    uint8_t *buf = malloc((size_t)rows * nb * 20);
    ck_assert_ptr_nonnull(buf);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = buf + ((size_t)r * nb + b) * 20;
            const uint16_t d = h(0.01f + 0.05f * fabsf(frand())), m = h(-0.3f * fabsf(frand()));
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &m, 2);
            for (int j = 0; j < 16; j++)
                blk[4 + j] = (uint8_t)(rng >> (j * 3 % 56)) ^ (uint8_t)(r * 31 + b * 7 + j);
        }
    ck_assert_int_eq(krn_dequant(3, buf, deq, (int64_t)rows * cols), 0);
    return buf;
}

static uint8_t *make_q8_0(int rows, int cols, float *deq)
{
    const int nb = cols / 32;
    uint8_t *buf = malloc((size_t)rows * nb * 34);
    ck_assert_ptr_nonnull(buf);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = buf + ((size_t)r * nb + b) * 34;
            const uint16_t d = h(0.001f + 0.01f * fabsf(frand()));
            memcpy(blk, &d, 2);
            for (int j = 0; j < 32; j++)
                blk[2 + j] = (uint8_t)(int8_t)(frand() * 127.0f);
            if (b == 0)
                blk[2] = (uint8_t)(int8_t)-128; /* extreme value */
        }
    ck_assert_int_eq(krn_dequant(8, buf, deq, (int64_t)rows * cols), 0);
    return buf;
}

/* GEMM of a quantised matrix: every fast path (dispatch, VNNI and AVX2 where the CPU has
 * them) == the
 * reference bit for bit (same integer lane sums, same float steps), and the reference
 * close to f64 math on the dequantised weights and the unquantised activations (int8
 * activation error: |err| <= sum_j |w_j| * d_x/2 per block; we check a bound of 1% of
 * sum |w||x|). */
static void check_qmatmul(uint32_t type, int rows, int cols, int n_tok)
{
    float *deq = malloc((size_t)rows * cols * sizeof(float));
    float *x = malloc((size_t)n_tok * cols * sizeof(float));
    float *y = malloc((size_t)n_tok * rows * sizeof(float));
    float *yr = malloc((size_t)n_tok * rows * sizeof(float));
    float *row = malloc((size_t)cols * sizeof(float));
    ck_assert(deq && x && y && yr && row);
    uint8_t *raw = type == 3 ? make_q4_1(rows, cols, deq) : make_q8_0(rows, cols, deq);
    for (int i = 0; i < n_tok * cols; i++)
        x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
    struct krn_qmat w;
    struct krn_qact a;
    ck_assert_int_eq(krn_qmat_init(&w, type, raw, rows, cols), 0);
    ck_assert_int_eq(krn_qact_init(&a, n_tok, cols), 0);
    krn_qact_quantize(&a, x, 0, n_tok);
    /* the repacked matrix dequantises to exactly the file's values */
    for (int r = 0; r < rows; r += 7) {
        krn_qmat_row(&w, r, row);
        ck_assert_mem_eq(row, deq + (size_t)r * cols, (size_t)cols * sizeof(float));
    }
    krn_qmatmul_ref(&w, &a, n_tok, yr, rows, 0, rows);
    krn_qmatmul(&w, &a, n_tok, y, rows, 0, rows);
    ck_assert_mem_eq(y, yr, (size_t)n_tok * rows * sizeof(float));
    if (krn__have_avx512vnni()) {
        memset(y, 0, (size_t)n_tok * rows * sizeof(float));
        krn__qmatmul_vnni(&w, &a, n_tok, y, rows, 0, rows);
        ck_assert_mem_eq(y, yr, (size_t)n_tok * rows * sizeof(float));
    }
    if (krn__have_avx2()) {
        memset(y, 0, (size_t)n_tok * rows * sizeof(float));
        krn__qmatmul_avx2(&w, &a, n_tok, y, rows, 0, rows);
        ck_assert_mem_eq(y, yr, (size_t)n_tok * rows * sizeof(float));
    }
    for (int t = 0; t < n_tok; t++)
        for (int r = 0; r < rows; r++) {
            double s = 0, sa = 0;
            for (int j = 0; j < cols; j++) {
                s += (double)deq[(size_t)r * cols + j] * x[(size_t)t * cols + j];
                sa += fabs((double)deq[(size_t)r * cols + j] * x[(size_t)t * cols + j]);
            }
            const float rf = yr[(size_t)t * rows + r];
            ck_assert_msg(fabs(rf - s) <= 0.01 * sa + 1e-6, "ref %g f64 %g (sum|wx| %g)", rf, s,
                          sa);
        }
    /* a row range writes only its rows, the same values */
    for (int pass = 0; pass < 3; pass++) {
        for (int i = 0; i < n_tok * rows; i++)
            y[i] = -12345.0f;
        if (pass == 0)
            krn_qmatmul(&w, &a, n_tok, y, rows, 4, rows - 1);
        else if (pass == 1 && krn__have_avx512vnni())
            krn__qmatmul_vnni(&w, &a, n_tok, y, rows, 4, rows - 1);
        else if (pass == 2 && krn__have_avx2())
            krn__qmatmul_avx2(&w, &a, n_tok, y, rows, 4, rows - 1);
        else
            continue;
        for (int t = 0; t < n_tok; t++) {
            ck_assert_float_eq(y[(size_t)t * rows + 3], -12345.0f);
            ck_assert_float_eq(y[(size_t)t * rows + rows - 1], -12345.0f);
            ck_assert_mem_eq(y + (size_t)t * rows + 4, yr + (size_t)t * rows + 4,
                             (size_t)(rows - 5) * sizeof(float));
        }
    }
    krn_qmat_deinit(&w);
    krn_qact_deinit(&a);
    free(raw);
    free(deq);
    free(x);
    free(y);
    free(yr);
    free(row);
}

START_TEST(qmatmul_q4_1)
{
    check_qmatmul(3, 40, 96, 7);  /* odd block count (3): padding; tokens not a multiple of 4 */
    check_qmatmul(3, 36, 576, 1); /* decode shape */
    check_qmatmul(3, 16, 1536, 9);
    check_qmatmul(3, 72, 576, 37); /* odd token count, a partial row group */
    check_qmatmul(3, 48, 1536, 16);
}
END_TEST

START_TEST(qmatmul_q8_0)
{
    check_qmatmul(8, 20, 576, 5);
    check_qmatmul(8, 9, 64, 1);
    check_qmatmul(8, 40, 576, 21);
}
END_TEST

/* Integer-valued operands (weight scales 1, minimum 0; activations integers whose blocks each
 * hold a +-127, so their scale is exactly 1): every path must give the exact integer dot
 * product, computed here independently with 64-bit integers. Covers row-group edges and all
 * VNNI tile shapes. */
static void check_qmatmul_exact_ints(uint32_t type, int rows, int cols, int n_tok)
{
    const int nb = cols / 32;
    const size_t bb = type == 3 ? 20 : 34;
    uint8_t *raw = calloc((size_t)rows * nb, bb);
    int *wi = malloc((size_t)rows * cols * sizeof(int));
    float *x = malloc((size_t)n_tok * cols * sizeof(float));
    float *y = malloc((size_t)n_tok * rows * sizeof(float));
    ck_assert(raw && wi && x && y);
    const uint16_t one = h(1.0f), zero = h(0.0f);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = raw + ((size_t)r * nb + b) * bb;
            memcpy(blk, &one, 2);
            if (type == 3) {
                memcpy(blk + 2, &zero, 2);
                for (int j = 0; j < 16; j++) {
                    const int lo = (int)(rng >> 3) & 15, hi = (int)(rng >> 9) & 15;
                    frand();
                    blk[4 + j] = (uint8_t)(lo | hi << 4);
                    wi[(size_t)r * cols + b * 32 + j] = lo;
                    wi[(size_t)r * cols + b * 32 + j + 16] = hi;
                }
            } else {
                for (int j = 0; j < 32; j++) {
                    const int v = (int)((rng >> 5) & 255) - 128;
                    frand();
                    blk[2 + j] = (uint8_t)(int8_t)v;
                    wi[(size_t)r * cols + b * 32 + j] = v;
                }
            }
        }
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < cols; i++) {
            const int v = i % 32 == (t + i / 32) % 32 ? ((t + i) & 1 ? 127 : -127)
                                                       : (int)(frand() * 127.0f);
            x[(size_t)t * cols + i] = (float)v;
        }
    struct krn_qmat w;
    struct krn_qact a;
    ck_assert_int_eq(krn_qmat_init(&w, type, raw, rows, cols), 0);
    ck_assert_int_eq(krn_qact_init(&a, n_tok, cols), 0);
    krn_qact_quantize(&a, x, 0, n_tok);
    for (int path = 0; path < 4; path++) {
        for (int i = 0; i < n_tok * rows; i++)
            y[i] = -1.0f;
        if (path == 0)
            krn_qmatmul_ref(&w, &a, n_tok, y, rows, 0, rows);
        else if (path == 1)
            krn_qmatmul(&w, &a, n_tok, y, rows, 0, rows);
        else if (path == 2 && krn__have_avx512vnni())
            krn__qmatmul_vnni(&w, &a, n_tok, y, rows, 0, rows);
        else if (path == 3 && krn__have_avx2())
            krn__qmatmul_avx2(&w, &a, n_tok, y, rows, 0, rows);
        else
            continue;
        for (int t = 0; t < n_tok; t++)
            for (int r = 0; r < rows; r++) {
                long long s = 0;
                for (int i = 0; i < cols; i++)
                    s += (long long)wi[(size_t)r * cols + i] * (long long)x[(size_t)t * cols + i];
                ck_assert_msg(y[(size_t)t * rows + r] == (float)s, "path %d t %d r %d: %g != %lld",
                              path, t, r, y[(size_t)t * rows + r], s);
            }
    }
    krn_qmat_deinit(&w);
    krn_qact_deinit(&a);
    free(raw);
    free(wi);
    free(x);
    free(y);
}

START_TEST(qmatmul_exact_integers)
{
    check_qmatmul_exact_ints(3, 40, 96, 1);
    check_qmatmul_exact_ints(3, 40, 96, 35);
    check_qmatmul_exact_ints(3, 80, 576, 17);
    check_qmatmul_exact_ints(8, 24, 64, 6);
    check_qmatmul_exact_ints(8, 33, 576, 19);
}
END_TEST

START_TEST(f16_row_equals_scalar)
{
    /* ties, subnormals, overflow, signed zero; a length that leaves a masked tail */
    enum { N = 61 };
    float x[N];
    uint16_t got[N + 1];
    const float special[] = {0.0f, -0.0f, 1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f,
                             65504.0f, 65520.0f, 1e6f, -1e6f, 5.96e-8f, 2.98e-8f, 1e-10f,
                             6.1e-5f, -3.0e-5f};
    for (int i = 0; i < N; i++)
        x[i] = i < (int)(sizeof(special) / sizeof(special[0])) ? special[i] : frand() * 100.0f;
    got[N] = 0xABCD;
    krn_f32_to_f16_row(got, x, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(got[i] == krn_f32_to_fp16(x[i]), "%d: %g -> %04x, want %04x", i, x[i],
                      got[i], krn_f32_to_fp16(x[i]));
    ck_assert_uint_eq(got[N], 0xABCD); /* nothing written past n */
}
END_TEST

START_TEST(qmat_other_type_and_errors)
{
    /* F32 weights are requantised to 8 bits: within 1/254 of each block's max */
    enum { R = 5, C = 64 };
    float wsrc[R * C], row[C];
    for (int i = 0; i < R * C; i++)
        wsrc[i] = frand();
    struct krn_qmat w;
    ck_assert_int_eq(krn_qmat_init(&w, 0, wsrc, R, C), 0);
    for (int r = 0; r < R; r++) {
        krn_qmat_row(&w, r, row);
        for (int j = 0; j < C; j++)
            ck_assert_float_le(fabsf(row[j] - wsrc[r * C + j]), 1.0f / 254.0f + 1e-6f);
    }
    krn_qmat_deinit(&w);
    krn_qmat_deinit(&w); /* deinit twice is fine */
    ck_assert_int_eq(krn_qmat_init(&w, 3, wsrc, R, 48), S3_EINVAL);  /* not a block multiple */
    ck_assert_int_eq(krn_qmat_init(&w, 999, wsrc, R, C), S3_EINVAL); /* unknown type */
    ck_assert_int_eq(krn_qmat_init(&w, 0, wsrc, 0, C), S3_EINVAL);
    struct krn_qact a;
    ck_assert_int_eq(krn_qact_init(&a, 1, 33), S3_EINVAL);
}
END_TEST

START_TEST(quantize_fast_equals_ref)
{
    enum { T = 3, C = 160 };
    float x[T * C];
    for (int i = 0; i < T * C; i++)
        x[i] = frand() * 3.0f;
    for (int j = 0; j < 32; j++)
        x[C + j] = 0.0f; /* an all-zero block */
    x[5] = 127.5f / 127.0f * 3.0f; /* ties */
    struct krn_qact a, b;
    ck_assert_int_eq(krn_qact_init(&a, T, C), 0);
    ck_assert_int_eq(krn_qact_init(&b, T, C), 0);
    krn_qact_quantize(&a, x, 0, T);
    krn__qact_quantize_ref(&b, x, 0, T);
    ck_assert_mem_eq(a.qs, b.qs, (size_t)T * a.nb * 32);
    ck_assert_mem_eq(a.d, b.d, (size_t)T * a.nb * sizeof(float));
    ck_assert_mem_eq(a.s, b.s, (size_t)T * a.nb * sizeof(float));
    /* q = round(x * 127 / amax): the max element maps to +-127, dequantised error <= d/2 */
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++) {
            const float d = b.d[(size_t)t * b.nb + i / 32];
            const float q = b.qs[(size_t)t * b.nb * 32 + i];
            ck_assert_float_le(fabsf(q * d - x[t * C + i]), d * 0.5f + 2e-3f * d * 127.0f);
        }
    ck_assert_int_eq(b.qs[b.nb * 32 + 3], 0);
    krn_qact_deinit(&a);
    krn_qact_deinit(&b);
}
END_TEST

START_TEST(rmsnorm_softmax_swiglu)
{
    float x[100], w[100], y[100];
    for (int i = 0; i < 100; i++)
        x[i] = frand() * 4.0f, w[i] = 1.0f + frand();
    double ss = 0;
    for (int i = 0; i < 100; i++)
        ss += (double)x[i] * x[i];
    krn_rmsnorm(y, x, w, 100, 1e-5f);
    for (int i = 0; i < 100; i++)
        ck_assert_double_eq_tol(y[i], x[i] / sqrt(ss / 100 + 1e-5) * w[i], 1e-5);
    krn_rmsnorm(x, x, w, 100, 1e-5f); /* in place */
    ck_assert_mem_eq(x, y, sizeof(y));

    float s[5] = {1.0f, 2.0f, 3.0f, -INFINITY, 3.0f};
    krn_softmax(s, 5);
    const double z = exp(-2.0) + exp(-1.0) + 1.0 + 1.0;
    ck_assert_double_eq_tol(s[0], exp(-2.0) / z, 1e-7);
    ck_assert_double_eq_tol(s[2], 1.0 / z, 1e-7);
    ck_assert_float_eq(s[3], 0.0f);

    float g[37], u[37], o[37];
    for (int i = 0; i < 37; i++)
        g[i] = frand() * 10.0f, u[i] = frand();
    g[0] = -100.0f, g[1] = 100.0f;
    krn_swiglu(o, g, u, 37);
    for (int i = 0; i < 37; i++)
        ck_assert_double_eq_tol(o[i], g[i] / (1.0 + exp(-(double)g[i])) * u[i], 1e-5);
}
END_TEST

/* krn_dot_f32: exact where the sum is exact, and the documented order where rounding
 * depends on it: lane 0 holds 2^24 and lane 1 holds 1 + 1 (elements 1 and 9), lanes 2..7
 * hold 1 each, the tail (element 16) -2^24 at the very end. In that order
 * ((2^24 + 2) + 2) + 4 = 2^24 + 8, then - 2^24 = 8; a sequential sum would lose every 1
 * against 2^24 (1 ulp = 2) and give something else. */
START_TEST(dot_f32_order)
{
    float x[37], y[37];
    double want = 0;
    for (int i = 0; i < 37; i++) {
        x[i] = (float)(i % 7) - 3.0f;
        y[i] = (float)(i % 5) + 1.0f;
        want += (double)x[i] * y[i];
    }
    ck_assert_float_eq(krn_dot_f32(x, y, 37), (float)want);
    ck_assert_float_eq(krn_dot_f32(x, y, 0), 0.0f);
    float a[17] = {0}, one[17];
    for (int i = 0; i < 17; i++)
        one[i] = 1.0f;
    a[0] = 16777216.0f; /* 2^24 */
    for (int i = 1; i < 8; i++)
        a[i] = 1.0f;
    a[9] = 1.0f;
    a[16] = -16777216.0f;
    ck_assert_float_eq(krn_dot_f32(a, one, 17), 8.0f);
    float seq = 0;
    for (int i = 0; i < 17; i++)
        seq += a[i];
    ck_assert(seq != 8.0f);
}
END_TEST

START_TEST(rope_conventions)
{
    enum { HD = 8, NH = 2 };
    float cs[HD], x[NH * HD], xn[NH * HD], orig[NH * HD];
    const int pos = 5;
    krn_rope_table(cs, pos, HD, 10000.0f, NULL);
    for (int i = 0; i < HD / 2; i++) {
        const double th = pos * pow(10000.0, -2.0 * i / HD);
        ck_assert_double_eq_tol(cs[2 * i], cos(th), 1e-5);
        ck_assert_double_eq_tol(cs[2 * i + 1], sin(th), 1e-5);
    }
    for (int i = 0; i < NH * HD; i++)
        orig[i] = x[i] = xn[i] = frand();
    krn_rope_apply(x, NH, HD, HD, cs, KRN_ROPE_NORM);
    krn_rope_apply(xn, NH, HD, HD, cs, KRN_ROPE_NEOX);
    for (int hh = 0; hh < NH; hh++)
        for (int i = 0; i < HD / 2; i++) {
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float *o = orig + hh * HD;
            /* norm: pairs (2i, 2i+1); neox: pairs (i, i + HD/2) */
            ck_assert_float_eq_tol(x[hh * HD + 2 * i], o[2 * i] * c - o[2 * i + 1] * s, 1e-6f);
            ck_assert_float_eq_tol(x[hh * HD + 2 * i + 1], o[2 * i] * s + o[2 * i + 1] * c, 1e-6f);
            ck_assert_float_eq_tol(xn[hh * HD + i], o[i] * c - o[i + HD / 2] * s, 1e-6f);
            ck_assert_float_eq_tol(xn[hh * HD + i + HD / 2], o[i] * s + o[i + HD / 2] * c, 1e-6f);
        }
    /* position 0 is the identity; frequency divisors slow the rotation down */
    krn_rope_table(cs, 0, HD, 10000.0f, NULL);
    memcpy(x, orig, sizeof(x));
    krn_rope_apply(x, NH, HD, HD, cs, KRN_ROPE_NORM);
    ck_assert_mem_eq(x, orig, sizeof(x));
    const float ff[HD / 2] = {2.0f, 2.0f, 2.0f, 2.0f};
    float cs2[HD];
    krn_rope_table(cs2, 10, HD, 10000.0f, ff);
    krn_rope_table(cs, 5, HD, 10000.0f, NULL);
    for (int i = 0; i < HD; i++)
        ck_assert_float_eq_tol(cs2[i], cs[i], 1e-5f);
}
END_TEST

/* Attention over the f16 cache: the fast path equals the reference bit for bit (both follow
 * llama.cpp: the GEMM orders for batches of 2+ tokens, the GEMV orders with the tail past the
 * padded length's last multiple of 64 for one token), and both are close to f32 attention on
 * the same values. The callers' work split (two calls, like two threads) changes nothing. */
static void check_attention(int n_q, int pos0, int hd)
{
    enum { NH = 4, NKV = 2 };
    const int n_kv = pos0 + n_q, n_ctx = n_kv + 9;
    const size_t nq = (size_t)n_q * NH * hd;
    float *k = malloc(sizeof(float) * n_kv * NKV * hd), *v = malloc(sizeof(float) * n_kv * NKV * hd);
    float *q = malloc(sizeof(float) * nq), *o1 = malloc(sizeof(float) * nq);
    float *o2 = malloc(sizeof(float) * nq), *o3 = malloc(sizeof(float) * nq);
    uint16_t *kc = calloc((size_t)NKV * hd * n_ctx, 2), *vc = calloc((size_t)NKV * hd * n_ctx, 2);
    float *scratch = malloc(sizeof(float) * 4 * n_ctx);
    ck_assert(k && v && q && o1 && o2 && o3 && kc && vc && scratch);
    for (int j = 0; j < n_kv; j++)
        for (int hk = 0; hk < NKV; hk++)
            for (int d = 0; d < hd; d++) {
                const float kv = frand() * 2.0f, vv = frand();
                /* use values exact in f16 so only q/p rounding differs */
                const float kh = krn_fp16_to_f32(h(kv)), vh = krn_fp16_to_f32(h(vv));
                k[(j * NKV + hk) * hd + d] = kh;
                v[(j * NKV + hk) * hd + d] = vh;
                kc[((size_t)hk * hd + d) * n_ctx + j] = h(kh);
                vc[((size_t)hk * n_ctx + j) * hd + d] = h(vh);
            }
    for (size_t i = 0; i < nq; i++)
        q[i] = frand();
    const float scale = 1.0f / sqrtf((float)hd);
    krn_attn_ref(o1, q, k, v, n_q, pos0, NH, NKV, hd, scale);
    const int items = krn_attn_n_items(n_q, NH);
    ck_assert_int_eq(items, NH * ((n_q + 3) / 4));
    krn_attn_f16(o2, q, kc, vc, n_q, pos0, NH, NKV, hd, n_ctx, scale, scratch, 0, items / 2);
    krn_attn_f16(o2, q, kc, vc, n_q, pos0, NH, NKV, hd, n_ctx, scale, scratch, items / 2, items);
    krn__attn_f16_ref(o3, q, kc, vc, n_q, pos0, NH, NKV, hd, n_ctx, scale, scratch, 0, items);
    ck_assert_mem_eq(o2, o3, nq * sizeof(float));
    if (krn__have_avx2()) {
        krn__attn_f16_avx2(o3, q, kc, vc, n_q, pos0, NH, NKV, hd, n_ctx, scale, scratch, 0, items);
        ck_assert_mem_eq(o2, o3, nq * sizeof(float));
    }
    for (size_t i = 0; i < nq; i++) /* f16 rounding of q and of the probabilities */
        ck_assert_msg(fabsf(o2[i] - o1[i]) < 3e-3f, "n_q %d: fast %g f32 %g at %zu", n_q, o2[i],
                      o1[i], i);
    if (n_q > 1) { /* causality: query 0 sees keys 0..pos0; a later key changes nothing there */
        kc[(size_t)0 * n_ctx + pos0 + 1] = h(100.0f);
        krn_attn_f16(o3, q, kc, vc, n_q, pos0, NH, NKV, hd, n_ctx, scale, scratch, 0, items);
        for (int hh = 0; hh < NH; hh++)
            for (int d = 0; d < hd; d++)
                ck_assert_float_eq(o3[hh * hd + d], o2[hh * hd + d]);
    }
    free(k), free(v), free(q), free(o1), free(o2), free(o3), free(kc), free(vc), free(scratch);
}

START_TEST(attention_f16)
{
    check_attention(7, 21, 64);  /* GEMM orders; a group of 3 queries */
    check_attention(9, 0, 128);  /* from position 0; two chunk groups of the dims */
    check_attention(1, 21, 64);  /* GEMV, padded length 32: no tail */
    check_attention(1, 70, 64);  /* GEMV, padded length 96: keys 64..70 in the double tail */
    check_attention(1, 200, 128);
}
END_TEST

/* ggml's expf (one lane) is within 2 ulp of exp, saturates like ggml's, and the fixed-order
 * sums give the values their documented orders give (a sequential sum would lose every 1
 * against 2^24 and return 2^24). */
START_TEST(expf_and_sum_orders)
{
    for (float x = -87.0f; x < 88.0f; x += 0.01171875f) {
        const double want = exp((double)x);
        const float got = krn__expf_ggml(x);
        ck_assert_msg(fabs(got - want) <= 2.0 * want * FLT_EPSILON, "exp(%g): %g vs %g", x, got,
                      want);
    }
    ck_assert_float_eq(krn__expf_ggml(0.0f), 1.0f);
    ck_assert_float_eq(krn__expf_ggml(-200.0f), 0.0f);
    ck_assert_float_eq(krn__expf_ggml(-INFINITY), 0.0f);
    ck_assert(isinf(krn__expf_ggml(200.0f)));
    ck_assert(isnan(krn__expf_ggml(NAN)));
    float v[16];
    for (int i = 0; i < 16; i++)
        v[i] = 1.0f;
    v[0] = 16777216.0f;
    ck_assert_float_eq(krn__sum8(v), 16777222.0f);  /* ((2^24 + 2) + 4): 2^24+1 ties to 2^24 */
    ck_assert_float_eq(krn__sum16(v), 16777230.0f); /* (2^24 + 2 + 4) + 8 */
    /* SwiGLU: the fast paths equal the reference (vectors of 16 with ggml's expf, the rest of
     * a row with libm's) */
    float g[1541], u[1541], o[1541], r[1541];
    for (int i = 0; i < 1541; i++) /* every 7th far out: exp's subnormal and overflow range */
        g[i] = frand() * (i % 7 ? 12.0f : 110.0f), u[i] = frand();
    krn_swiglu(o, g, u, 1541);
    krn__swiglu_ref(r, g, u, 1541);
    ck_assert_mem_eq(o, r, sizeof(o));
    if (krn__have_avx2()) {
        krn__swiglu_avx2(o, g, u, 1541);
        ck_assert_mem_eq(o, r, sizeof(o));
    }
}
END_TEST

struct pool_rec {
    int hits[8];
    int sum;
};

static void pool_task(void *ud, int ith, int nth)
{
    struct pool_rec *r = ud;
    ck_assert_int_lt(ith, nth);
    r->hits[ith]++;
}

START_TEST(pool_runs_every_thread)
{
    struct krn_pool *p;
    ck_assert_int_eq(krn_pool_new(3, &p), 0);
    ck_assert_int_eq(krn_pool_n_threads(p), 3);
    struct pool_rec r = {0};
    for (int i = 0; i < 1000; i++)
        krn_pool_run(p, pool_task, &r);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(r.hits[i], 1000);
    krn_pool_free(p);
    krn_pool_free(NULL);
    ck_assert_int_ge(krn_n_cpus(), 1);
    /* sgemm: row-major, transposes */
    const float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1};
    float c[4] = {0};
    krn_sgemm(0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2); /* (2x3)(3x2) */
    ck_assert_float_eq(c[0], 4.0f);
    ck_assert_float_eq(c[1], 5.0f);
    ck_assert_float_eq(c[2], 10.0f);
    ck_assert_float_eq(c[3], 11.0f);
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("kernels_ops");
    TCase *tc = tcase_create("cpu");
    tcase_add_test(tc, qmatmul_q4_1);
    tcase_add_test(tc, qmatmul_q8_0);
    tcase_add_test(tc, qmat_other_type_and_errors);
    tcase_add_test(tc, qmatmul_exact_integers);
    tcase_add_test(tc, f16_row_equals_scalar);
    tcase_add_test(tc, quantize_fast_equals_ref);
    tcase_add_test(tc, rmsnorm_softmax_swiglu);
    tcase_add_test(tc, dot_f32_order);
    tcase_add_test(tc, rope_conventions);
    tcase_add_test(tc, attention_f16);
    tcase_add_test(tc, expf_and_sum_orders);
    tcase_add_test(tc, pool_runs_every_thread);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(ops_suite(), CK_FORK_GETENV);
}
