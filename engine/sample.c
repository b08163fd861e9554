/* engine/sample.c - token sampling: greedy, top-k, top-p (nucleus), temperature, seeded.
 *
 * Order as llama.cpp's default chain: top-k, then top-p on the softmax of the raw logits,
 * then temperature, then one draw. Greedy (temperature <= 0, or top_k == 1) is the argmax with
 * the lowest id on ties. The generator is xoshiro256** seeded through splitmix64, so a seed
 * reproduces the same draws on every platform. */
#include <math.h>
#include <stdlib.h>

#include "engine_int.h"

struct cand {
    int32_t id;
    float logit;
    float p;
};

struct eng_sampler {
    struct eng_sample_params p;
    int n_vocab;
    uint64_t s[4];       /* xoshiro256** state */
    struct cand *cand;   /* (n_vocab) scratch */
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
    s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
    if (!s->cand) {
        free(s);
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
    free(s);
}

static int32_t argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* descending logit, ascending id */
static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t eng_sampler_sample(struct eng_sampler *s, float *logits)
{
    const int n = s->n_vocab;
    if (s->p.temperature <= 0.0f || s->p.top_k == 1)
        return argmax(logits, n);
    /* candidates: NaN logits are dropped; those far below the max (e^-40) cannot matter */
    const float mx = logits[argmax(logits, n)];
    int nc = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= mx - 40.0f)
            s->cand[nc++] = (struct cand){i, logits[i], 0.0f};
    qsort(s->cand, (size_t)nc, sizeof(*s->cand), cand_cmp);
    if (s->p.top_k > 0 && s->p.top_k < nc)
        nc = s->p.top_k;
    if (s->p.top_p < 1.0f) {
        double sum = 0.0;
        for (int i = 0; i < nc; i++)
            sum += exp((double)s->cand[i].logit - (double)mx);
        double cum = 0.0;
        int keep = nc;
        for (int i = 0; i < nc; i++) {
            cum += exp((double)s->cand[i].logit - (double)mx) / sum;
            if (cum >= (double)s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        nc = keep;
    }
    double sum = 0.0;
    for (int i = 0; i < nc; i++) {
        s->cand[i].p = (float)exp(((double)s->cand[i].logit - (double)mx) / s->p.temperature);
        sum += s->cand[i].p;
    }
    double u = rng_uniform(s->s) * sum, cum = 0.0;
    for (int i = 0; i < nc; i++) {
        cum += s->cand[i].p;
        if (u < cum)
            return s->cand[i].id;
    }
    return s->cand[nc - 1].id;
}
