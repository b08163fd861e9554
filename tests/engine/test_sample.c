/* tests/engine/test_sample.c - sampling: greedy ties, top-k/top-p/temperature semantics,
 * seed reproducibility, the drawn distribution (chi-square bound) on a tiny vocabulary and
 * across the draw's blocks, the cuts against a full-sort reference on vocabularies of up to
 * 128k with ties, NaN and infinities. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_int.h"
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

START_TEST(nan_and_infinities)
{
    /* NaN first: never the argmax, never drawn */
    const float lg[5] = {NAN, 1.0f, 3.0f, NAN, 2.5f};
    struct eng_sampler *g = mk(0.0f, 1.0f, 0, 1, 5), *s = mk(1.0f, 1.0f, 0, 2, 5);
    ck_assert_int_eq(draw(g, lg, 5), 2);
    int seen[5] = {0};
    for (int i = 0; i < 400; i++)
        seen[draw(s, lg, 5)]++;
    ck_assert_int_eq(seen[0] + seen[3], 0);
    ck_assert(seen[1] > 0 && seen[2] > 0 && seen[4] > 0);
    eng_sampler_free(g);
    eng_sampler_free(s);
    /* no number at all: token 0, no crash */
    g = mk(0.0f, 1.0f, 0, 1, 4), s = mk(1.0f, 0.9f, 5, 2, 4);
    const float nan4[4] = {NAN, NAN, NAN, NAN};
    ck_assert_int_eq(draw(g, nan4, 4), 0);
    ck_assert_int_eq(draw(s, nan4, 4), 0);
    /* -inf is never drawn while a finite logit exists; all -inf: the first */
    const float ninf[4] = {-INFINITY, 0.0f, -INFINITY, 0.5f};
    for (int i = 0; i < 100; i++) {
        const int32_t t = draw(s, ninf, 4);
        ck_assert(t == 1 || t == 3);
    }
    const float all_ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    ck_assert_int_eq(draw(s, all_ninf, 4), 0);
    /* +inf: the first of them, whatever the temperature */
    const float pinf[4] = {1.0f, INFINITY, 2.0f, INFINITY};
    for (int i = 0; i < 20; i++)
        ck_assert_int_eq(draw(s, pinf, 4), 1);
    eng_sampler_free(g);
    eng_sampler_free(s);
}
END_TEST

/* The draw sums weights by blocks of ids: the distribution holds over a vocabulary of many
 * blocks, with the mass at block edges. */
START_TEST(distribution_across_blocks)
{
    enum { NV = 3000, N = 40000, K = 6 };
    const int ids[K] = {0, 255, 256, 1023, 1500, NV - 1};
    const double pr[K] = {0.3, 0.2, 0.15, 0.15, 0.1, 0.1};
    float *lg = malloc(NV * sizeof(float)), *buf = malloc(NV * sizeof(float));
    for (int i = 0; i < NV; i++)
        lg[i] = -30.0f; /* candidates, e^-30 each: about 3e-10 in all */
    for (int j = 0; j < K; j++)
        lg[ids[j]] = logf((float)pr[j]);
    struct eng_sampler *s = mk(1.0f, 1.0f, 0, 99, NV);
    int obs[K] = {0}, other = 0;
    for (int i = 0; i < N; i++) {
        memcpy(buf, lg, NV * sizeof(float));
        const int32_t t = eng_sampler_sample(s, buf);
        int j = 0;
        while (j < K && ids[j] != t)
            j++;
        if (j < K)
            obs[j]++;
        else
            other++;
    }
    eng_sampler_free(s);
    ck_assert_int_eq(other, 0);
    /* 5 degrees of freedom: P(chi2 > 20.52) = 0.001 */
    ck_assert_double_lt(chi2(obs, pr, K, N), 20.52);
    free(lg), free(buf);
}
END_TEST

/* ---- the cuts against a reference that sorts every candidate ---- */

struct rc {
    int32_t id;
    float l;
};

static int rc_cmp(const void *a, const void *b)
{
    const struct rc *x = a, *y = b;
    if (x->l != y->l)
        return x->l > y->l ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The candidates of lg (the numbers within 40 of the maximum) sorted (descending logit,
 * ascending id) into c; their number, the maximum in *mx. */
static int ref_sorted(const float *lg, int n, struct rc *c, float *mx)
{
    *mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (lg[i] > *mx)
            *mx = lg[i];
    int nc = 0;
    for (int i = 0; i < n; i++)
        if (lg[i] >= *mx - 40.0f)
            c[nc++] = (struct rc){i, lg[i]};
    qsort(c, (size_t)nc, sizeof(*c), rc_cmp);
    return nc;
}

/* Marks in kept[] (zeroed) the tokens top-k then top-p keep of the sorted candidates c,
 * softmax in double; their number, or -1 where the top-p sum lands within 1e-6 of the target
 * (rounding may decide it either way). */
static int ref_kept(const struct rc *c, int nc, float mx, int top_k, float top_p, char *kept)
{
    if (top_k > 0 && top_k < nc)
        nc = top_k;
    int keep = nc;
    if (top_p < 1.0f) {
        double z = 0.0, cum = 0.0;
        for (int j = 0; j < nc; j++)
            z += exp((double)c[j].l - (double)mx);
        for (int j = 0; j < nc; j++) {
            cum += exp((double)c[j].l - (double)mx) / z;
            if (fabs(cum - (double)top_p) < 1e-6)
                return -1;
            if (cum >= (double)top_p) {
                keep = j + 1;
                break;
            }
        }
    }
    for (int j = 0; j < keep; j++)
        kept[c[j].id] = 1;
    return keep;
}

static uint64_t lcg(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return *x >> 33;
}

START_TEST(cuts_match_full_sort)
{
    enum { N_MAX = 128256 };
    const int sizes[] = {5, 300, 3000, 49152, N_MAX};
    const int ks[] = {0, 1, 7, 40, 1000, N_MAX + 5};
    const float ps[] = {1.0f, 0.0f, 0.5f, 0.9f, 0.95f, 0.999f};
    float *lg = malloc(N_MAX * sizeof(float)), *buf = malloc(N_MAX * sizeof(float));
    char *ref = malloc(N_MAX);
    struct rc *c = malloc(N_MAX * sizeof(*c));
    uint64_t x = 77;
    int cases = 0, cut_inside = 0;
    for (int si = 0; si < 5; si++) {
        const int n = sizes[si];
        for (int shape = 0; shape < 4; shape++) {
            /* spread (nats), a grid that makes ties, a few peaks, NaN and -inf sprinkled */
            const float spread = shape == 0 ? 0.5f : shape == 1 ? 3.0f : shape == 2 ? 12.0f : 2.0f;
            for (int i = 0; i < n; i++) {
                float v = 0.0f;
                for (int r = 0; r < 4; r++)
                    v += (float)lcg(&x) / 2147483648.0f - 0.5f; /* ~ normal, sd 0.58 */
                v *= spread / 0.58f;
                if (shape == 3)
                    v = floorf(v * 8.0f) / 8.0f; /* many equal logits */
                lg[i] = v;
            }
            for (int j = 0; j < 5; j++)
                lg[lcg(&x) % (uint64_t)n] = 4.0f * spread + (float)j;
            if (n > 10) {
                lg[lcg(&x) % (uint64_t)n] = NAN;
                lg[lcg(&x) % (uint64_t)n] = -INFINITY;
            }
            float mx;
            const int nc = ref_sorted(lg, n, c, &mx);
            for (int ki = 0; ki < 6; ki++)
                for (int pi = 0; pi < 6; pi++) {
                    memset(ref, 0, (size_t)N_MAX);
                    const int n_ref = ref_kept(c, nc, mx, ks[ki], ps[pi], ref);
                    if (n_ref < 0)
                        continue;
                    struct eng_sampler *s = mk(1.0f, ps[pi], ks[ki], 5, n);
                    float lb;
                    int32_t ib;
                    eng__sampler_cut(s, lg, &lb, &ib);
                    int bad = -1; /* the first token where the sets differ (one assert:
                                     check records every call) */
                    for (int i = 0; i < n && bad < 0; i++) {
                        const float l = lg[i];
                        if ((l >= mx - 40.0f && (l > lb || (l == lb && i <= ib))) != ref[i])
                            bad = i;
                    }
                    ck_assert_msg(bad < 0,
                                  "n %d shape %d top_k %d top_p %.3f: token %d (logit %g) "
                                  "kept %d, reference %d",
                                  n, shape, ks[ki], (double)ps[pi], bad,
                                  bad < 0 ? 0.0 : (double)lg[bad], bad < 0 ? 0 : !ref[bad],
                                  bad < 0 ? 0 : ref[bad]);
                    cut_inside += n_ref > 1 && n_ref < nc;
                    /* and the draws keep to that set */
                    int32_t out = -1;
                    for (int d = 0; d < (n <= 3000 ? 20 : 2) && out < 0; d++) {
                        memcpy(buf, lg, (size_t)n * sizeof(float));
                        const int32_t t = eng_sampler_sample(s, buf);
                        if (t < 0 || t >= n || !ref[t])
                            out = t;
                    }
                    ck_assert_msg(out < 0, "drew %d outside the set", out);
                    eng_sampler_free(s);
                    cases++;
                }
        }
    }
    ck_assert_int_gt(cases, 600);
    ck_assert_int_gt(cut_inside, 300); /* the cuts fall inside the vocabularies, not at ends */
    free(lg), free(buf), free(ref), free(c);
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
    tcase_add_test(tc, cuts_match_full_sort);
    tcase_add_test(tc, nan_and_infinities);
    tcase_add_test(tc, distribution_across_blocks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(sample_suite(), CK_FORK_GETENV);
}
