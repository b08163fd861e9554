/* engine/sample.c - token sampling: greedy, top-k, top-p (nucleus), temperature, seeded.
 *
 * Order as llama.cpp's default chain: top-k, then top-p on the softmax of the raw logits,
 * then temperature, then one draw. The cuts follow the order (descending logit, ascending id);
 * the draw walks the kept tokens in id order, which needs no sort: a token costs a few passes
 * over the vocabulary and a sort of the one bin where a cut falls. Greedy (temperature <= 0,
 * or top_k == 1) is the argmax with the lowest id on ties; NaN logits are never drawn. The
 * generator is xoshiro256** seeded through splitmix64, so a seed reproduces the same draws on
 * every platform. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* Logits more than SPAN below the maximum cannot matter (e^-40); the candidates are put in
 * bins of 1/BIN_RES nat below the maximum, so that the order (descending logit, ascending id)
 * is needed only inside the one bin where top-k or top-p cuts. */
#define SPAN    40.0f
#define BIN_RES 16
#define N_BIN   ((int)SPAN * BIN_RES + 1)
#define BLK     256 /* the draw sums weights by blocks of ids, then walks one block */

struct cand {
    int32_t id;
    float logit;
};

struct eng_sampler {
    struct eng_sample_params p;
    int n_vocab;
    uint64_t s[4];         /* xoshiro256** state */
    struct cand *cand;     /* (n_vocab) scratch: one bin's candidates */
    float *e;              /* (n_pad) e^(logit - max) of the candidates, then the draw's weights */
    double *bsum;          /* (n_pad / BLK) the weights summed per block of BLK ids */
    int16_t *bin;          /* (n_vocab) each token's bin, N_BIN for those that are no candidate */
    int n_pad;             /* n_vocab rounded up to BLK */
    int count[N_BIN + 1];  /* candidates per bin (and the others) */
    double mass[N_BIN + 1]; /* their e^(logit - max) summed */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform double in [0, 1). */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

int eng_sampler_new(const struct eng_sample_params *p, int n_vocab, struct eng_sampler **out)
{
    *out = NULL;
    if (!p || n_vocab <= 0 || !(p->temperature >= 0.0f) || !(p->top_p >= 0.0f) || p->top_k < 0)
        return S3_EINVAL;
    struct eng_sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return S3_ENOMEM;
    s->n_pad = (n_vocab + BLK - 1) / BLK * BLK;
    s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
    s->e = calloc((size_t)s->n_pad, sizeof(*s->e)); /* the padding stays 0 */
    s->bsum = malloc((size_t)(s->n_pad / BLK) * sizeof(*s->bsum));
    s->bin = malloc((size_t)n_vocab * sizeof(*s->bin));
    if (!s->cand || !s->e || !s->bsum || !s->bin) {
        eng_sampler_free(s);
        return S3_ENOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->s[i] = splitmix64(&x);
    *out = s;
    return 0;
}

void eng_sampler_free(struct eng_sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->e);
    free(s->bsum);
    free(s->bin);
    free(s);
}

/* e^x for x <= 0 within 2 ulp (x below -87, or NaN, as -87: ~1e-38), in a form the compiler
 * vectorises: x = k ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial to r^7, 2^k
 * by the exponent bits. */
static inline float exp_neg(float x)
{
    x = x > -87.0f ? x : -87.0f; /* NaN too */
    x = x < 0.0f ? x : 0.0f;
    const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln2) */
    const float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        uint32_t u;
        float f;
    } scale = {.u = (uint32_t)((int32_t)k + 127) << 23};
    return p * scale.f;
}

/* The largest logit, the lowest id among equal ones; NaN never wins (-1: none is a number).
 * Two passes the compiler vectorises: the maximum, then its first place. */
static int32_t argmax(const float *logits, int n)
{
    float lane[8], mx = -INFINITY;
    for (int j = 0; j < 8; j++)
        lane[j] = -INFINITY;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] = logits[i + j] > lane[j] ? logits[i + j] : lane[j];
    for (; i < n; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (int j = 0; j < 8; j++)
        mx = lane[j] > mx ? lane[j] : mx;
    for (i = 0; i < n; i++)
        if (logits[i] == mx)
            return i;
    return -1;
}

/* descending logit, ascending id */
static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The candidates of bin b into s->cand in the order; their number. */
static int bin_sorted(struct eng_sampler *s, const float *logits, int b)
{
    int m = 0;
    for (int i = 0; i < s->n_vocab; i++)
        if (s->bin[i] == b)
            s->cand[m++] = (struct cand){i, logits[i]};
    qsort(s->cand, (size_t)m, sizeof(*s->cand), cand_cmp);
    return m;
}

/* Top-k, then top-p over what top-k kept: the last kept candidate in the order (descending
 * logit, ascending id) into *lb, *ib. Counts and masses per bin find the bin where each cut
 * falls; only that bin is sorted. */
static void cut(struct eng_sampler *s, const float *logits, float mx, float *lb, int32_t *ib)
{
    const int n = s->n_vocab, top_k = s->p.top_k, want_p = s->p.top_p < 1.0f;
    const float lo = mx - SPAN;
    /* bins (monotone: a higher bin holds only higher logits) and weights, branch-free */
    for (int i = 0; i < n; i++) {
        const float l = logits[i], x = (mx - l) * (float)BIN_RES;
        const int keep = l >= lo; /* NaN is not */
        const int b = x < (float)(N_BIN - 1) ? (int)x : N_BIN - 1;
        const float e = exp_neg(l - mx);
        s->bin[i] = (int16_t)(keep ? b : N_BIN);
        s->e[i] = keep ? e : 0.0f;
    }
    memset(s->count, 0, sizeof(s->count));
    memset(s->mass, 0, sizeof(s->mass));
    for (int i = 0; i < n; i++) {
        s->count[s->bin[i]]++;
        s->mass[s->bin[i]] += s->e[i];
    }
    const int nc = n - s->count[N_BIN];
    int last_bin = N_BIN - 1, sorted = -1, m = 0; /* s->cand holds bin `sorted`'s first m */
    if (top_k > 0 && top_k < nc) {
        int acc = 0;
        for (last_bin = 0; acc + s->count[last_bin] < top_k; last_bin++)
            acc += s->count[last_bin];
        bin_sorted(s, logits, last_bin);
        sorted = last_bin;
        m = top_k - acc;
        *lb = s->cand[m - 1].logit;
        *ib = s->cand[m - 1].id;
        if (want_p) {
            s->mass[last_bin] = 0.0;
            for (int j = 0; j < m; j++)
                s->mass[last_bin] += s->e[s->cand[j].id];
        }
    }
    if (!want_p)
        return;
    double z = 0.0;
    for (int b = 0; b <= last_bin; b++)
        z += s->mass[b];
    const double target = (double)s->p.top_p * z;
    double cum = 0.0;
    int bp = 0;
    for (; bp < last_bin && cum + s->mass[bp] < target; bp++)
        cum += s->mass[bp];
    if (bp != sorted)
        m = bin_sorted(s, logits, bp);
    if (m == 0)
        return; /* rounding left no bin to cut in: keep what top-k kept */
    int j = 0;
    for (; j < m - 1; j++) {
        cum += s->e[s->cand[j].id];
        if (cum >= target)
            break;
    }
    *lb = s->cand[j].logit;
    *ib = s->cand[j].id;
}

int eng__sampler_greedy(const struct eng_sampler *s)
{
    return s->p.temperature <= 0.0f || s->p.top_k == 1;
}

const struct eng_sample_params *eng__sampler_params(const struct eng_sampler *s)
{
    return &s->p;
}

double eng__sampler_draw(struct eng_sampler *s, uint64_t saved[4])
{
    memcpy(saved, s->s, sizeof(s->s));
    return rng_uniform(s->s);
}

void eng__sampler_undraw(struct eng_sampler *s, const uint64_t saved[4])
{
    memcpy(s->s, saved, sizeof(s->s));
}

/* The argmax (-1: no logit is a number) and the last kept candidate (*lb, *ib) of logits:
 * every candidate (within SPAN of the maximum) unless top-k or top-p cut, or a draw would not
 * be made (greedy, no finite maximum). */
static int32_t kept(struct eng_sampler *s, const float *logits, float *lb, int32_t *ib)
{
    const int32_t top = argmax(logits, s->n_vocab);
    const float mx = top < 0 ? 0.0f : logits[top];
    *lb = mx - SPAN;
    *ib = INT32_MAX;
    if (top >= 0 && isfinite(mx) && (s->p.top_k > 0 || s->p.top_p < 1.0f))
        cut(s, logits, mx, lb, ib);
    return top;
}

void eng__sampler_cut(struct eng_sampler *s, const float *logits, float *lb, int32_t *ib)
{
    (void)kept(s, logits, lb, ib);
}

int32_t eng_sampler_sample(struct eng_sampler *s, float *logits)
{
    const int n = s->n_vocab;
    if (eng__sampler_greedy(s)) {
        const int32_t top = argmax(logits, n);
        return top < 0 ? 0 : top;
    }
    /* kept: candidates up to (lb, ib) in the order */
    float lb;
    int32_t ib;
    const int32_t top = kept(s, logits, &lb, &ib);
    if (top < 0)
        return 0; /* no logit is a number */
    const float mx = logits[top], t = s->p.temperature, lo = mx - SPAN;
    if (!isfinite(mx))
        return top;
    /* one draw over the kept tokens in id order: weights, their sums per block, the block the
       draw falls in, the token in it */
    float *w = s->e;
    for (int i = 0; i < n; i++) {
        const float l = logits[i];
        const int keep = (l >= lo) & ((l > lb) | ((l == lb) & (i <= ib))); /* branch-free */
        const float e = exp_neg((l - mx) / t);
        w[i] = keep ? e : 0.0f;
    }
    const int n_blk = s->n_pad / BLK;
    double sum = 0.0;
    for (int b = 0; b < n_blk; b++) {
        float acc[8] = {0};
        for (int i = b * BLK; i < (b + 1) * BLK; i += 8)
            for (int j = 0; j < 8; j++)
                acc[j] += w[i + j];
        s->bsum[b] = (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                              ((acc[4] + acc[5]) + (acc[6] + acc[7])));
        sum += s->bsum[b];
    }
    const double u = rng_uniform(s->s) * sum;
    double cum = 0.0;
    int b = 0;
    while (b < n_blk - 1 && (cum + s->bsum[b] <= u || s->bsum[b] == 0.0))
        cum += s->bsum[b++];
    int32_t last = top;
    for (int i = b * BLK; i < (b + 1) * BLK; i++) {
        if (w[i] > 0.0f) {
            cum += w[i];
            last = i;
            if (u < cum)
                return i;
        }
    }
    return last; /* rounding: the block's sum and its walk differ in the last bits */
}
