/* tests/kernels/test_quant.c - block sizes, fp16/bf16 conversion and dequantisation.
 *
 * Dequantisation is compared against fixtures written by tests/ref/make_quant_fixtures.py
 * with an independent implementation (the `gguf` Python package, numpy). Tolerance: none.
 * Every type is computed in the same float order as the reference (one product per scale,
 * then one multiply and one add/subtract per element), each step is a correctly rounded IEEE
 * single operation in both, so the outputs must be bit-identical. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"
#include "s3.h"
#include "testutil.h"

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- sizes ------------------------------------------------------------------------------ */

START_TEST(test_sizes)
{
    /* ggml's block sizes and bytes per block (ggml-common.h static asserts). */
    static const struct { uint32_t t; int bs; size_t bb; } want[] = {
        {GGML_T_F32, 1, 4},      {GGML_T_F16, 1, 2},      {GGML_T_BF16, 1, 2},
        {GGML_T_Q4_0, 32, 18},   {GGML_T_Q4_1, 32, 20},   {GGML_T_Q5_0, 32, 22},
        {GGML_T_Q5_1, 32, 24},   {GGML_T_Q8_0, 32, 34},   {GGML_T_Q2_K, 256, 84},
        {GGML_T_Q3_K, 256, 110}, {GGML_T_Q4_K, 256, 144}, {GGML_T_Q5_K, 256, 176},
        {GGML_T_Q6_K, 256, 210},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint32_t t = want[i].t;
        ck_assert_int_eq(krn_type_supported(t), 1);
        ck_assert_int_eq(krn_type_block_size(t), want[i].bs);
        ck_assert_uint_eq(krn_type_block_bytes(t), want[i].bb);
        ck_assert_uint_eq(krn_type_row_bytes(t, 0), 0);
        ck_assert_uint_eq(krn_type_row_bytes(t, want[i].bs), want[i].bb);
        ck_assert_uint_eq(krn_type_row_bytes(t, 4096), 4096 / want[i].bs * want[i].bb);
        if (want[i].bs > 1) {
            ck_assert_uint_eq(krn_type_row_bytes(t, want[i].bs + 1), 0);
            ck_assert_uint_eq(krn_type_row_bytes(t, want[i].bs / 2), 0);
        }
        ck_assert_uint_eq(krn_type_row_bytes(t, -want[i].bs), 0);
    }
    /* the model's shapes */
    ck_assert_uint_eq(krn_type_row_bytes(GGML_T_Q8_0, 576), 18 * 34);
    ck_assert_uint_eq(krn_type_row_bytes(GGML_T_Q4_1, 1536), 48 * 20);
    /* unsupported: Q8_1, Q8_K, IQ2_XS, I8, unknown */
    static const uint32_t bad[] = {4, 5, 9, 15, 17, 24, 31, 39, 1000, UINT32_MAX};
    float y[256];
    uint8_t src[512] = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(krn_type_supported(bad[i]), 0);
        ck_assert_int_eq(krn_type_block_size(bad[i]), 0);
        ck_assert_uint_eq(krn_type_block_bytes(bad[i]), 0);
        ck_assert_uint_eq(krn_type_row_bytes(bad[i], 256), 0);
        ck_assert_int_eq(krn_dequant(bad[i], src, y, 256), S3_EINVAL);
    }
    ck_assert_int_eq(krn_dequant(GGML_T_Q4_0, src, y, 33), S3_EINVAL);
    ck_assert_int_eq(krn_dequant(GGML_T_Q4_K, src, y, 32), S3_EINVAL);
    ck_assert_int_eq(krn_dequant(GGML_T_F32, src, y, -1), S3_EINVAL);
    ck_assert_int_eq(krn_dequant(GGML_T_F32, src, y, 0), 0);
}
END_TEST

/* ---- fp16 ------------------------------------------------------------------------------- */

/* Independent value of a half from its fields. */
static double half_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

START_TEST(test_fp16_exhaustive)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = krn_fp16_to_f32((uint16_t)h);
        int e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 0x1f && m != 0) {
            ck_assert_msg(isnan(f), "half %04x should be nan", h);
            ck_assert_int_eq(!!signbit(f), (int)(h >> 15));
            ck_assert_msg(isnan(krn_fp16_to_f32(krn_f32_to_fp16(f))), "nan %04x lost", h);
            continue;
        }
        if (e == 0x1f) {
            ck_assert(isinf(f));
            ck_assert_int_eq(!!signbit(f), (int)(h >> 15));
        } else {
            ck_assert_msg((double)f == half_value((uint16_t)h), "half %04x -> %a", h, (double)f);
            ck_assert_int_eq(!!signbit(f), (int)(h >> 15)); /* -0 stays -0 */
        }
        /* exact round trip of every non-nan half */
        ck_assert_msg(krn_f32_to_fp16(f) == h, "round trip %04x -> %04x", h, krn_f32_to_fp16(f));
    }
}
END_TEST

START_TEST(test_fp16_rounding)
{
    /* midpoints between neighbouring positive finite halves round to the even one; a hair
     * above rounds up, a hair below rounds down (covers subnormals and the carry into the
     * exponent field) */
    for (uint16_t h = 0; h < 0x7bff; h++) {
        double lo = half_value(h), hi = half_value((uint16_t)(h + 1));
        float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits */
        ck_assert((double)mid == (lo + hi) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
        ck_assert_msg(krn_f32_to_fp16(mid) == even, "mid of %04x", h);
        ck_assert(krn_f32_to_fp16(-mid) == (uint16_t)(even | 0x8000));
        ck_assert(krn_f32_to_fp16(nextafterf(mid, 1e9f)) == h + 1);
        ck_assert(krn_f32_to_fp16(nextafterf(mid, 0.0f)) == h);
    }
    /* overflow: 65504 is max; 65520 (the midpoint to 2^16) rounds to inf */
    ck_assert_uint_eq(krn_f32_to_fp16(65504.0f), 0x7bff);
    ck_assert_uint_eq(krn_f32_to_fp16(65519.99f), 0x7bff);
    ck_assert_uint_eq(krn_f32_to_fp16(65520.0f), 0x7c00);
    ck_assert_uint_eq(krn_f32_to_fp16(-1e10f), 0xfc00);
    ck_assert_uint_eq(krn_f32_to_fp16(INFINITY), 0x7c00);
    ck_assert_uint_eq(krn_f32_to_fp16(-INFINITY), 0xfc00);
    /* underflow: 2^-25 is the midpoint between 0 and the smallest subnormal: even = 0 */
    ck_assert_uint_eq(krn_f32_to_fp16(0x1p-25f), 0x0000);
    ck_assert_uint_eq(krn_f32_to_fp16(0x1.000002p-25f), 0x0001);
    ck_assert_uint_eq(krn_f32_to_fp16(0x1.8p-24f), 0x0002);
    ck_assert_uint_eq(krn_f32_to_fp16(-0x1p-30f), 0x8000);
    ck_assert_uint_eq(krn_f32_to_fp16(0x1p-149f), 0x0000); /* f32 subnormal */
    ck_assert_uint_eq(krn_f32_to_fp16(-0.0f), 0x8000);
    ck_assert_uint_eq(krn_f32_to_fp16(1.0f), 0x3c00);
    ck_assert_uint_eq(krn_f32_to_fp16(1.0f + 0x1p-11f), 0x3c00);      /* tie -> even */
    ck_assert_uint_eq(krn_f32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);  /* tie -> even (up) */
    ck_assert_uint_eq(krn_f32_to_fp16(0x1.ffcp-15f), 0x0400);         /* carry to normal */
    uint16_t qn = krn_f32_to_fp16(NAN);
    ck_assert_uint_eq(qn & 0x7c00, 0x7c00);
    ck_assert_uint_ne(qn & 0x3ff, 0);
    /* a signalling f32 nan whose payload lies only in the low bits stays a nan */
    ck_assert(isnan(krn_fp16_to_f32(krn_f32_to_fp16(u2f(0x7f800001u)))));
}
END_TEST

START_TEST(test_bf16)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = krn_bf16_to_f32((uint16_t)h);
        ck_assert_uint_eq(f2u(f), h << 16);
        if (!isnan(f))
            ck_assert_uint_eq(krn_f32_to_bf16(f), h);
        else
            ck_assert(isnan(krn_bf16_to_f32(krn_f32_to_bf16(f))));
    }
    /* round to nearest even on the dropped 16 bits */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x3f808000u)), 0x3f80); /* tie, even stays */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x3f818000u)), 0x3f82); /* tie, odd goes up */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x3f808001u)), 0x3f81);
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x3f807fffu)), 0x3f80);
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x7f7fffffu)), 0x7f80); /* FLT_MAX -> inf */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x00000001u)), 0x0000); /* subnormal -> 0 */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x00008000u)), 0x0000); /* tie -> even 0 */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x00018000u)), 0x0002);
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0x7f800001u)), 0x7fc0); /* snan -> quiet nan */
    ck_assert_uint_eq(krn_f32_to_bf16(u2f(0xffc00000u)), 0xffc0);
}
END_TEST

/* ---- dequantisation against the fixtures ------------------------------------------------ */

static uint8_t *load_fixture(const char *name, size_t *n)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/quant/%s.bin", name);
    char *path = s3t_root_path(rel);
    char *buf = NULL;
    size_t len = 0;
    struct s3_errinfo err = {0};
    int rc = s3_read_file(path, 1 << 20, &buf, &len, &err);
    ck_assert_msg(rc == 0, "cannot read %s: %s", path, err.msg);
    free(path);
    *n = len;
    return (uint8_t *)buf;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void check_fixture(uint32_t type)
{
    const char *name = eng_ggml_type_name(type);
    size_t len;
    uint8_t *buf = load_fixture(name, &len);
    ck_assert_uint_ge(len, 20);
    ck_assert_int_eq(memcmp(buf, "S3QF", 4), 0);
    ck_assert_uint_eq(le32(buf + 4), type);
    /* block geometry as the reference package states it */
    ck_assert_int_eq(krn_type_block_size(type), (int)le32(buf + 8));
    ck_assert_uint_eq(krn_type_block_bytes(type), le32(buf + 12));
    int64_t n = le32(buf + 16);
    size_t raw_bytes = krn_type_row_bytes(type, n);
    ck_assert_uint_gt(raw_bytes, 0);
    ck_assert_uint_eq(len, 20 + raw_bytes + (size_t)n * 4);
    const uint8_t *raw = buf + 20, *exp = raw + raw_bytes;

    /* unaligned source on purpose: blocks in a GGUF file have 2-byte alignment at best */
    uint8_t *src = malloc(raw_bytes + 1);
    float *y = malloc((size_t)n * sizeof *y);
    ck_assert(src && y);
    memcpy(src + 1, raw, raw_bytes);
    ck_assert_int_eq(krn_dequant(type, src + 1, y, n), 0);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t want = le32(exp + 4 * i), got = f2u(y[i]);
        if (want != got) {
            if (bad < 5)
                fprintf(stderr, "%s[%lld]: got %a want %a\n", name, (long long)i, (double)y[i],
                        (double)u2f(want));
            bad++;
        }
    }
    ck_assert_msg(bad == 0, "%s: %lld of %lld values differ", name, (long long)bad, (long long)n);

    /* a prefix of whole blocks gives the same prefix of values */
    int bs = krn_type_block_size(type);
    ck_assert_int_eq(krn_dequant(type, src + 1, y, bs), 0);
    ck_assert_int_eq(memcmp(y, exp, (size_t)bs * 4), 0);
    free(src);
    free(y);
    free(buf);
}

static const uint32_t k_fixture_types[] = {
    GGML_T_F32,  GGML_T_F16,  GGML_T_BF16, GGML_T_Q4_0, GGML_T_Q4_1, GGML_T_Q5_0, GGML_T_Q5_1,
    GGML_T_Q8_0, GGML_T_Q2_K, GGML_T_Q3_K, GGML_T_Q4_K, GGML_T_Q5_K, GGML_T_Q6_K,
};

START_TEST(test_dequant_fixture)
{
    check_fixture(k_fixture_types[_i]);
}
END_TEST

/* Hand-made blocks with values worked out on paper, so a wrong fixture cannot hide a bug. */
START_TEST(test_dequant_by_hand)
{
    float y[256];
    /* Q8_0: d = 0.5 (0x3800), qs = -128, -1, 0, 1, 127, ... */
    uint8_t q8[34] = {0x00, 0x38, 0x80, 0xff, 0x00, 0x01, 0x7f};
    ck_assert_int_eq(krn_dequant(GGML_T_Q8_0, q8, y, 32), 0);
    ck_assert(y[0] == -64.0f && y[1] == -0.5f && y[2] == 0.0f && y[3] == 0.5f &&
              y[4] == 63.5f && y[31] == 0.0f);
    /* Q4_0: d = 2 (0x4000); byte j holds element j (low) and j+16 (high); value = (q-8)*d */
    uint8_t q40[18] = {0x00, 0x40, 0xf0, 0x18};
    ck_assert_int_eq(krn_dequant(GGML_T_Q4_0, q40, y, 32), 0);
    ck_assert(y[0] == -16.0f && y[16] == 14.0f && y[1] == 0.0f && y[17] == -14.0f &&
              y[2] == -16.0f);
    /* Q4_1: d = 1, m = -8 (0xc800): value = q - 8 */
    uint8_t q41[20] = {0x00, 0x3c, 0x00, 0xc8, 0x5a};
    ck_assert_int_eq(krn_dequant(GGML_T_Q4_1, q41, y, 32), 0);
    ck_assert(y[0] == 2.0f && y[16] == -3.0f && y[1] == -8.0f);
    /* Q5_0: d = 1; qh bit 0 -> element 0 gets +16, bit 16 -> element 16 */
    uint8_t q50[22] = {0x00, 0x3c, 0x01, 0x00, 0x01, 0x00, 0x21};
    ck_assert_int_eq(krn_dequant(GGML_T_Q5_0, q50, y, 32), 0);
    ck_assert(y[0] == 1.0f && y[16] == 2.0f && y[1] == -16.0f);
    /* Q6_K: d = 1, all scales 1, ql = qh = 0 -> every q = -32 */
    uint8_t q6[210] = {0};
    memset(q6 + 192, 1, 16);
    q6[208] = 0x00, q6[209] = 0x3c;
    q6[128] = 0x03 | 0x30; /* element 0 high bits 3 -> q = 48-32 = 16; element 64: 3 too */
    q6[0] = 0x0f;           /* element 0 low = 15 -> 63 - 32 = 31 */
    ck_assert_int_eq(krn_dequant(GGML_T_Q6_K, q6, y, 256), 0);
    ck_assert(y[0] == 31.0f && y[64] == 16.0f && y[1] == -32.0f && y[255] == -32.0f);
}
END_TEST

static Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_fp16_exhaustive);
    tcase_add_test(tc, test_fp16_rounding);
    tcase_add_test(tc, test_bf16);
    tcase_add_loop_test(tc, test_dequant_fixture, 0,
                        (int)(sizeof k_fixture_types / sizeof k_fixture_types[0]));
    tcase_add_test(tc, test_dequant_by_hand);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(quant_suite(), CK_FORK_GETENV);
}
