/* tests/engine/test_sample.c - sampling: greedy ties, top-k/top-p/temperature semantics,
 * seed reproducibility and the drawn distribution (chi-square bound) on a tiny vocabulary. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "testutil.h"

static struct eng_sampler *mk(float temp, float top_p, int top_k, uint64_t seed, int n)
{
    struct eng_sample_params p = {.temperature = temp, .top_p = top_p, .top_k = top_k,
                                  .seed = seed};
    struct eng_sampler *s = NULL;
    ck_assert_int_eq(eng_sampler_new(&p, n, &s), 0);
    return s;
}

static int32_t draw(struct eng_sampler *s, const float *logits, int n)
{
    float buf[64];
    memcpy(buf, logits, (size_t)n * sizeof(float));
    return eng_sampler_sample(s, buf);
}

START_TEST(greedy_and_ties)
{
    const float lg[6] = {1.0f, 5.0f, -2.0f, 5.0f, 4.9f, 0.0f};
    struct eng_sampler *g = mk(0.0f, 1.0f, 0, 1, 6);
    ck_assert_int_eq(draw(g, lg, 6), 1); /* lowest id among equal maxima */
    eng_sampler_free(g);
    /* top_k = 1 is greedy whatever the temperature */
    struct eng_sampler *k1 = mk(5.0f, 1.0f, 1, 7, 6);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(draw(k1, lg, 6), 1);
    eng_sampler_free(k1);
}
END_TEST

START_TEST(seed_reproduces)
{
    float lg[32];
    for (int i = 0; i < 32; i++)
        lg[i] = (float)(i % 7) * 0.3f;
    struct eng_sampler *a = mk(1.0f, 1.0f, 0, 1234, 32), *b = mk(1.0f, 1.0f, 0, 1234, 32);
    struct eng_sampler *c = mk(1.0f, 1.0f, 0, 1235, 32);
    int same_c = 0;
    for (int i = 0; i < 200; i++) {
        const int32_t x = draw(a, lg, 32), y = draw(b, lg, 32), z = draw(c, lg, 32);
        ck_assert_int_eq(x, y);
        same_c += x == z;
    }
    ck_assert_int_lt(same_c, 150); /* another seed gives another sequence */
    eng_sampler_free(a);
    eng_sampler_free(b);
    eng_sampler_free(c);
}
END_TEST

START_TEST(top_k_and_top_p_sets)
{
    /* probs at T=1: softmax of ln(p) = p */
    const float p[5] = {0.4f, 0.3f, 0.15f, 0.1f, 0.05f};
    float lg[5];
    for (int i = 0; i < 5; i++)
        lg[i] = logf(p[i]);
    int seen[5];
    /* top_k = 2: only ids 0 and 1 */
    memset(seen, 0, sizeof(seen));
    struct eng_sampler *s = mk(1.0f, 1.0f, 2, 9, 5);
    for (int i = 0; i < 2000; i++)
        seen[draw(s, lg, 5)]++;
    eng_sampler_free(s);
    ck_assert(seen[0] > 0 && seen[1] > 0);
    ck_assert_int_eq(seen[2] + seen[3] + seen[4], 0);
    /* top_p = 0.7: the minimal nucleus is {0, 1} (0.4 + 0.3 >= 0.7); 0.71 needs {0, 1, 2} */
    memset(seen, 0, sizeof(seen));
    s = mk(1.0f, 0.69f, 0, 10, 5);
    for (int i = 0; i < 2000; i++)
        seen[draw(s, lg, 5)]++;
    eng_sampler_free(s);
    ck_assert(seen[0] > 0 && seen[1] > 0);
    ck_assert_int_eq(seen[2] + seen[3] + seen[4], 0);
    memset(seen, 0, sizeof(seen));
    s = mk(1.0f, 0.71f, 0, 11, 5);
    for (int i = 0; i < 3000; i++)
        seen[draw(s, lg, 5)]++;
    eng_sampler_free(s);
    ck_assert(seen[2] > 0);
    ck_assert_int_eq(seen[3] + seen[4], 0);
    /* a tiny top_p keeps only the top token */
    s = mk(1.0f, 0.01f, 0, 12, 5);
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(draw(s, lg, 5), 0);
    eng_sampler_free(s);
}
END_TEST

/* chi-square of observed counts against expected probabilities */
static double chi2(const int *obs, const double *pr, int k, int n)
{
    double x = 0;
    for (int i = 0; i < k; i++) {
        const double e = pr[i] * n;
        x += (obs[i] - e) * (obs[i] - e) / e;
    }
    return x;
}

START_TEST(distribution_matches)
{
    const float p[4] = {0.5f, 0.25f, 0.15f, 0.1f};
    float lg[4];
    for (int i = 0; i < 4; i++)
        lg[i] = logf(p[i]);
    enum { N = 20000 };
    int obs[4] = {0};
    struct eng_sampler *s = mk(1.0f, 1.0f, 0, 42, 4);
    for (int i = 0; i < N; i++)
        obs[draw(s, lg, 4)]++;
    eng_sampler_free(s);
    const double pr1[4] = {0.5, 0.25, 0.15, 0.1};
    /* 3 degrees of freedom: P(chi2 > 16.27) = 0.001 */
    ck_assert_double_lt(chi2(obs, pr1, 4, N), 16.27);
    /* temperature 2: p_i ~ p^(1/2) */
    memset(obs, 0, sizeof(obs));
    s = mk(2.0f, 1.0f, 0, 43, 4);
    for (int i = 0; i < N; i++)
        obs[draw(s, lg, 4)]++;
    eng_sampler_free(s);
    double pr2[4], z = 0;
    for (int i = 0; i < 4; i++)
        z += pr2[i] = sqrt(pr1[i]);
    for (int i = 0; i < 4; i++)
        pr2[i] /= z;
    ck_assert_double_lt(chi2(obs, pr2, 4, N), 16.27);
    /* and a wrong hypothesis is rejected (the test can fail) */
    ck_assert_double_gt(chi2(obs, pr1, 4, N), 16.27);
}
END_TEST

START_TEST(bad_params)
{
    struct eng_sampler *s = NULL;
    struct eng_sample_params p = {.temperature = -1.0f, .top_p = 1.0f};
    ck_assert_int_eq(eng_sampler_new(&p, 10, &s), S3_EINVAL);
    p.temperature = NAN;
    ck_assert_int_eq(eng_sampler_new(&p, 10, &s), S3_EINVAL);
    p.temperature = 1.0f;
    p.top_k = -1;
    ck_assert_int_eq(eng_sampler_new(&p, 10, &s), S3_EINVAL);
    p.top_k = 0;
    ck_assert_int_eq(eng_sampler_new(&p, 0, &s), S3_EINVAL);
    ck_assert_ptr_null(s);
    eng_sampler_free(NULL);
}
END_TEST

static Suite *sample_suite(void)
{
    Suite *s = suite_create("sample");
    TCase *tc = tcase_create("sampler");
    tcase_add_test(tc, greedy_and_ties);
    tcase_add_test(tc, seed_reproduces);
    tcase_add_test(tc, top_k_and_top_p_sets);
    tcase_add_test(tc, distribution_matches);
    tcase_add_test(tc, bad_params);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(sample_suite(), CK_FORK_GETENV);
}
