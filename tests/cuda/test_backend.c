/* tests/cuda/test_backend.c - the backend vtable (kernels_int.h) through the public API of
 * kernels.h: the CPU backend gives exactly the CPU ops' results and refuses bad arguments
 * with a message; where the build has CUDA and a GPU is present, every op of the CUDA backend
 * is compared with the CPU backend on the same inputs, with the tolerance stated at each
 * check. Runs with CK_FORK=no: CUDA is never touched in a forked child. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "s3.h"
#include "testutil.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) / (float)(1ull << 23) - 1.0f;
}

static float *randv(size_t n, float scale)
{
    float *x = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = frand() * scale;
    return x;
}

/* rows x cols of Q4_1 (20-byte blocks: d, m f16, 16 bytes of nibbles) */
static uint8_t *make_q4_1(int rows, int cols)
{
    const size_t nb = (size_t)rows * cols / 32;
    uint8_t *b = malloc(nb * 20);
    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < nb; i++) {
        const uint16_t d = krn_f32_to_fp16(0.01f + 0.02f * fabsf(frand()));
        const uint16_t m = krn_f32_to_fp16(-0.1f * fabsf(frand()));
        memcpy(b + i * 20, &d, 2);
        memcpy(b + i * 20 + 2, &m, 2);
        for (int j = 0; j < 16; j++)
            b[i * 20 + 4 + j] = (uint8_t)(g_rng >> (8 + j)), frand();
    }
    return b;
}

/* Upload n floats to a new buffer of be. */
static float *up(struct krn_backend *be, const float *x, size_t n)
{
    void *buf;
    ck_assert_int_eq(krn_buf_alloc(be, n * sizeof(float), &buf), 0);
    ck_assert_int_eq(krn_upload(be, buf, x, n * sizeof(float)), 0);
    return buf;
}

/* Download n floats of buf into a new host array. */
static float *down(struct krn_backend *be, const float *buf, size_t n)
{
    float *x = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(x);
    ck_assert_int_eq(krn_download(be, x, buf, n * sizeof(float)), 0);
    return x;
}

enum { ROWS = 72, COLS = 576, NTOK = 9, NH = 4, NKV = 2, HD = 64, POS0 = 13 };

/* The inputs, the same every time (regenerated from one seed). */
struct ins {
    uint8_t *wq;
    float *x, *nw, *q, *k, *v, *s;
};

static void ins_make(struct ins *in)
{
    g_rng = 0x9E3779B97F4A7C15ull;
    in->wq = make_q4_1(ROWS, COLS);
    in->x = randv((size_t)NTOK * COLS, 1.0f), in->nw = randv(COLS, 1.0f);
    in->q = randv((size_t)NTOK * NH * HD, 1.0f);
    in->k = randv((size_t)(POS0 + NTOK) * NKV * HD, 1.0f);
    in->v = randv((size_t)(POS0 + NTOK) * NKV * HD, 1.0f);
    in->s = randv((size_t)NTOK * 100, 6.0f);
}

static void ins_free(struct ins *in)
{
    free(in->wq), free(in->x), free(in->nw), free(in->q), free(in->k), free(in->v), free(in->s);
}

/* The outputs of every op on one backend. */
struct outs {
    float *mm, *norm, *rope, *att, *sm;
};

static void run_ops(struct krn_backend *be, struct outs *o)
{
    struct ins in;
    ins_make(&in);
    struct krn_weight *w;
    ck_assert_int_eq(krn_weight_new(be, 3, in.wq, ROWS, COLS, &w), 0);
    float *dx = up(be, in.x, (size_t)NTOK * COLS), *dnw = up(be, in.nw, COLS);
    float *dq = up(be, in.q, (size_t)NTOK * NH * HD), *ds = up(be, in.s, (size_t)NTOK * 100);
    float *dk = up(be, in.k, (size_t)(POS0 + NTOK) * NKV * HD);
    float *dv = up(be, in.v, (size_t)(POS0 + NTOK) * NKV * HD);
    void *dy, *dn, *da;
    ck_assert_int_eq(krn_buf_alloc(be, (size_t)NTOK * ROWS * sizeof(float), &dy), 0);
    ck_assert_int_eq(krn_buf_alloc(be, (size_t)NTOK * COLS * sizeof(float), &dn), 0);
    ck_assert_int_eq(krn_buf_alloc(be, (size_t)NTOK * NH * HD * sizeof(float), &da), 0);
    ck_assert_int_eq(krn_be_matmul(be, w, dx, NTOK, dy), 0);
    ck_assert_int_eq(krn_be_rmsnorm(be, dn, dx, dnw, NTOK, COLS, 1e-5f), 0);
    ck_assert_int_eq(krn_be_attention(be, da, dq, dk, dv, NTOK, POS0, NH, NKV, HD, 0.125f), 0);
    ck_assert_int_eq(krn_be_rope(be, dq, NTOK, POS0, NH, HD, HD, 10000.0f, KRN_ROPE_NEOX), 0);
    ck_assert_int_eq(krn_be_softmax(be, ds, NTOK, 100), 0);
    ck_assert_int_eq(krn_synchronize(be), 0);
    o->mm = down(be, dy, (size_t)NTOK * ROWS);
    o->norm = down(be, dn, (size_t)NTOK * COLS);
    o->rope = down(be, dq, (size_t)NTOK * NH * HD);
    o->att = down(be, da, (size_t)NTOK * NH * HD);
    o->sm = down(be, ds, (size_t)NTOK * 100);
    krn_weight_free(be, w);
    krn_buf_free(be, dx), krn_buf_free(be, dnw), krn_buf_free(be, dq), krn_buf_free(be, ds);
    krn_buf_free(be, dk), krn_buf_free(be, dv), krn_buf_free(be, dy), krn_buf_free(be, dn);
    krn_buf_free(be, da);
    ins_free(&in);
}

static void outs_free(struct outs *o)
{
    free(o->mm), free(o->norm), free(o->rope), free(o->att), free(o->sm);
}

/* The CPU backend's results are the CPU ops' results, bit for bit. */
START_TEST(cpu_backend_is_the_cpu_ops)
{
    struct krn_backend *be;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(krn_backend_new("cpu", 2, &be, &err), 0);
    ck_assert_str_eq(krn_backend_name(be), "cpu");
    struct outs o;
    run_ops(be, &o);
    /* the same inputs through the plain ops */
    struct ins in;
    ins_make(&in);
    float *x = in.x, *nw = in.nw, *q = in.q, *k = in.k, *v = in.v, *s = in.s;
    struct krn_qmat w;
    struct krn_qact a;
    ck_assert_int_eq(krn_qmat_init(&w, 3, in.wq, ROWS, COLS), 0);
    ck_assert_int_eq(krn_qact_init(&a, NTOK, COLS), 0);
    krn_qact_quantize(&a, x, 0, NTOK);
    float y[NTOK * ROWS], n1[COLS], cs[HD], att[NTOK * NH * HD];
    krn_qmatmul_ref(&w, &a, NTOK, y, ROWS, 0, ROWS);
    ck_assert_mem_eq(o.mm, y, sizeof(y));
    for (int t = 0; t < NTOK; t++) {
        krn_rmsnorm(n1, x + (size_t)t * COLS, nw, COLS, 1e-5f);
        ck_assert_mem_eq(o.norm + (size_t)t * COLS, n1, sizeof(n1));
        krn_softmax(s + t * 100, 100);
    }
    ck_assert_mem_eq(o.sm, s, (size_t)NTOK * 100 * sizeof(float));
    krn_attn_ref(att, q, k, v, NTOK, POS0, NH, NKV, HD, 0.125f);
    for (size_t i = 0; i < sizeof(att) / sizeof(att[0]); i++) /* f16 cache, f16 q and p */
        ck_assert_msg(fabsf(o.att[i] - att[i]) < 3e-3f, "attention %zu: %g vs %g", i, o.att[i],
                      att[i]);
    for (int t = 0; t < NTOK; t++) {
        krn_rope_table(cs, POS0 + t, HD, 10000.0f, NULL);
        krn_rope_apply(q + (size_t)t * NH * HD, NH, HD, HD, cs, KRN_ROPE_NEOX);
    }
    ck_assert_mem_eq(o.rope, q, (size_t)NTOK * NH * HD * sizeof(float));
    outs_free(&o);
    krn_qmat_deinit(&w), krn_qact_deinit(&a);
    ins_free(&in);
    krn_backend_free(be);
}
END_TEST

/* Bad arguments: a code and a message that names the problem; nothing is written. */
START_TEST(backend_errors)
{
    struct krn_backend *be = NULL;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(krn_backend_new("metal", 1, &be, &err), S3_EINVAL);
    ck_assert_ptr_null(be);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown backend 'metal'"));
#ifndef S3_HAVE_CUDA
    ck_assert_int_eq(krn_backend_new("cuda", 1, &be, &err), S3_EDEVICE);
    ck_assert_ptr_nonnull(strstr(err.msg, "no CUDA"));
#endif
    ck_assert_int_eq(krn_backend_new("cpu", 1, &be, &err), 0);
    void *buf = (void *)1;
    ck_assert_int_eq(krn_buf_alloc(be, 0, &buf), S3_EINVAL);
    ck_assert_ptr_null(buf);
    uint8_t raw[40 * 20] = {0};
    struct krn_weight *w = (struct krn_weight *)1;
    ck_assert_int_eq(krn_weight_new(be, 3, raw, 2, 48, &w), S3_EINVAL);
    ck_assert_ptr_null(w);
    ck_assert_ptr_nonnull(strstr(krn_backend_errmsg(be), "multiple of 32"));
    ck_assert_int_eq(krn_weight_new(be, 99, raw, 2, 32, &w), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(krn_backend_errmsg(be), "type 99"));
    ck_assert_int_eq(krn_weight_new(be, 3, raw, 2, 64, &w), 0);
    float x[4 * 64] = {0}, y[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_int_eq(krn_be_matmul(be, w, x, 0, y), S3_EINVAL);
    ck_assert_float_eq(y[0], 1.0f);
    ck_assert_int_eq(krn_be_rope(be, x, 1, 0, 1, 64, 63, 10000.0f, KRN_ROPE_NORM), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(krn_backend_errmsg(be), "63 rotated dims"));
    ck_assert_int_eq(krn_be_rope(be, x, 1, 0, 1, 64, 64, 10000.0f, 1), S3_EINVAL);
    ck_assert_int_eq(krn_be_rmsnorm(be, x, x, x, 1, 64, 0.0f), S3_EINVAL);
    ck_assert_int_eq(krn_be_attention(be, x, x, x, x, 1, 0, 3, 2, 64, 1.0f), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(krn_backend_errmsg(be), "3 heads over 2 kv heads"));
    ck_assert_int_eq(krn_be_attention(be, x, x, x, x, 1, 0, 2, 2, 48, 1.0f), S3_EINVAL);
    ck_assert_int_eq(krn_be_softmax(be, x, 1, 0), S3_EINVAL);
    ck_assert_int_eq(krn_upload(be, NULL, x, 4), S3_EINVAL);
    ck_assert_int_eq(krn_download(be, x, NULL, 4), S3_EINVAL);
    krn_weight_free(be, w);
    krn_backend_free(be);
}
END_TEST

#ifdef S3_HAVE_CUDA
/* Every op of the CUDA backend against the CPU backend on the same inputs. The GPU uses fp16
 * weights, operands and outputs with fp32 sums; the CPU 8-bit activations (matmul) and f16
 * q/p in attention. */
START_TEST(cuda_backend_matches_cpu)
{
    struct krn_backend *cpu, *gpu;
    struct s3_errinfo err = {0};
    const int rc = krn_backend_new("cuda", 0, &gpu, &err);
    if (rc == S3_EDEVICE) {
        fprintf(stderr, "SKIP: %s\n", err.msg);
        ck_assert_ptr_nonnull(strstr(err.msg, "CUDA"));
        return;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(krn_backend_name(gpu), "cuda");
    ck_assert_int_eq(krn_backend_new("cpu", 0, &cpu, &err), 0);
    struct outs a, b;
    run_ops(cpu, &a);
    run_ops(gpu, &b);
    float mx = 0;
    for (int i = 0; i < NTOK * ROWS; i++)
        mx = fmaxf(mx, fabsf(a.mm[i]));
    double e_mm = 0, e_norm = 0, e_rope = 0, e_att = 0, e_sm = 0;
    for (int i = 0; i < NTOK * ROWS; i++) /* int8 activations vs fp16: 1% of the largest */
        e_mm = fmax(e_mm, fabs(a.mm[i] - b.mm[i]));
    for (int i = 0; i < NTOK * COLS; i++) /* fp16 output: relative 2^-11 */
        e_norm = fmax(e_norm, fabs(a.norm[i] - b.norm[i]) / (fabs(a.norm[i]) + 1e-3));
    for (int i = 0; i < NTOK * NH * HD; i++) {
        e_rope = fmax(e_rope, fabs(a.rope[i] - b.rope[i])); /* fp16 of values up to ~1.4 */
        e_att = fmax(e_att, fabs(a.att[i] - b.att[i]));
    }
    for (int i = 0; i < NTOK * 100; i++)
        e_sm = fmax(e_sm, fabs(a.sm[i] - b.sm[i]));
    fprintf(stderr, "backend cuda vs cpu: matmul %.3g (max |y| %.3g), rmsnorm rel %.3g, "
            "rope %.3g, attention %.3g, softmax %.3g\n", e_mm, mx, e_norm, e_rope, e_att, e_sm);
    ck_assert_msg(e_mm <= 0.01 * mx, "matmul %g", e_mm);
    ck_assert_msg(e_norm <= 1e-3, "rmsnorm %g", e_norm);
    ck_assert_msg(e_rope <= 2e-3, "rope %g", e_rope);
    ck_assert_msg(e_att <= 4e-3, "attention %g", e_att);
    ck_assert_msg(e_sm <= 1e-6, "softmax %g", e_sm);
    outs_free(&a), outs_free(&b);
    krn_backend_free(cpu);
    krn_backend_free(gpu);
}
END_TEST
#endif

static Suite *suite(void)
{
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("vtable");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, cpu_backend_is_the_cpu_ops);
    tcase_add_test(tc, backend_errors);
#ifdef S3_HAVE_CUDA
    tcase_add_test(tc, cuda_backend_matches_cpu);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(suite(), CK_NOFORK);
}
