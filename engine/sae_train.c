/* engine/sae_train.c - Top-k SAE trainer (MSE + AuxK, Adam) and its driver over a model:
 * stream pre-RoPE keys of the indexed layers into bounded per-SAE buffers, fit, then measure
 * the figures of the file on held-out text. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "sae.h"
#include "sae_int.h"

/* ---- deterministic random numbers (splitmix64) ------------------------------------------- */

static uint64_t rng_next(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *st) /* [0, 1) */
{
    return (double)(rng_next(st) >> 11) * (1.0 / 9007199254740992.0);
}

static double rng_gauss(uint64_t *st)
{
    double u1 = rng_unit(st), u2 = rng_unit(st);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- trainer ---------------------------------------------------------------------------------- */

struct eng_sae_trainer {
    int d, nd, k, k_aux, batch, epochs, dead_after;
    float aux_coef, lr;
    long total_steps;
    uint64_t rng;
    int ready;           /* scale and b_dec set from data */
    double scale;        /* raw = scale * normalised */
    size_t n_params;
    float *p, *g, *m, *v; /* params, grads, Adam moments; layout of one file unit:
                            w_enc (nd, d), b_enc (nd), w_dec (nd, d), b_dec (d) */
    long step;
    long seen;           /* vectors trained on */
    long *last_fire;     /* (nd): value of seen after the batch where the latent last fired */
    double last_loss;
    /* scratch */
    float *xb, *xc, *pre, *xhat, *heap, *vals, *avals;
    int32_t *sel, *asel, *dead;
    int32_t *idx;        /* (batch, k) */
    float *act;          /* (batch, k) */
};

struct tparams {
    float *w_enc, *b_enc, *w_dec, *b_dec;
};

static struct tparams tp_view(float *base, int nd, int d)
{
    struct tparams t;
    t.w_enc = base;
    t.b_enc = base + (size_t)nd * (size_t)d;
    t.w_dec = t.b_enc + nd;
    t.b_dec = t.w_dec + (size_t)nd * (size_t)d;
    return t;
}

void eng_sae_trainer_free(struct eng_sae_trainer *t)
{
    if (!t)
        return;
    free(t->p);
    free(t->g);
    free(t->m);
    free(t->v);
    free(t->last_fire);
    free(t->xb);
    free(t->xc);
    free(t->pre);
    free(t->xhat);
    free(t->heap);
    free(t->vals);
    free(t->avals);
    free(t->sel);
    free(t->asel);
    free(t->dead);
    free(t->idx);
    free(t->act);
    free(t);
}

int eng_sae_trainer_new(int d, const struct eng_sae_train_opts *o, uint64_t stream,
                        struct eng_sae_trainer **out, struct s3_errinfo *err)
{
    *out = NULL;
    struct eng_sae_train_opts z;
    memset(&z, 0, sizeof(z));
    if (!o)
        o = &z;
    int nd = o->n_dict ? o->n_dict : 1024, k = o->k ? o->k : 16;
    if (d < 1 || d > ENG_SAE_MAX_DHEAD)
        return s3_errf(err, S3_EINVAL, "SAE input dimension %d out of range", d);
    if (nd < 1 || nd > ENG_SAE_MAX_DICT)
        return s3_errf(err, S3_EINVAL, "dictionary size %d out of range 1..%d", nd,
                       ENG_SAE_MAX_DICT);
    if (k < 1 || k > ENG_SAE_MAX_K || k > nd)
        return s3_errf(err, S3_EINVAL, "k %d out of range for dictionary %d", k, nd);
    if (o->batch < 0 || o->batch > 65536 || o->epochs < 0 || o->epochs > 1000 ||
        o->k_aux < 0 || o->dead_after < 0 || !(o->lr >= 0.0f) || !(o->aux_coef >= 0.0f))
        return s3_errf(err, S3_EINVAL, "bad SAE training options");

    struct eng_sae_trainer *t = calloc(1, sizeof(*t));
    if (!t)
        return s3_errf(err, S3_ENOMEM, "out of memory");
    t->d = d;
    t->nd = nd;
    t->k = k;
    t->k_aux = o->k_aux ? o->k_aux : (nd / 2 < 256 ? (nd / 2 > 0 ? nd / 2 : 1) : 256);
    if (t->k_aux > nd)
        t->k_aux = nd;
    t->aux_coef = o->aux_coef > 0.0f ? o->aux_coef : 4.0f;
    t->lr = o->lr > 0.0f ? o->lr : 3e-3f;
    t->batch = o->batch ? o->batch : 256;
    t->epochs = o->epochs ? o->epochs : 1;
    t->dead_after = o->dead_after ? o->dead_after : (32 * nd / k > 4096 ? 32 * nd / k : 4096);
    t->total_steps = o->total_steps;
    t->rng = o->seed * 0x2545f4914f6cdd1dull + stream * 0x9e3779b97f4a7c15ull + 1;
    t->scale = 1.0;
    t->n_params = 2 * (size_t)nd * (size_t)d + (size_t)nd + (size_t)d;
    const size_t B = (size_t)t->batch, np = t->n_params;
    t->p = calloc(np, sizeof(float));
    t->g = calloc(np, sizeof(float));
    t->m = calloc(np, sizeof(float));
    t->v = calloc(np, sizeof(float));
    t->last_fire = calloc((size_t)nd, sizeof(long));
    t->xb = malloc(sizeof(float) * B * (size_t)d);
    t->xc = malloc(sizeof(float) * B * (size_t)d);
    t->pre = malloc(sizeof(float) * B * (size_t)nd);
    t->xhat = malloc(sizeof(float) * B * (size_t)d);
    t->heap = malloc(sizeof(float) * (size_t)(k > t->k_aux ? k : t->k_aux));
    t->vals = malloc(sizeof(float) * (size_t)k);
    t->avals = malloc(sizeof(float) * (size_t)t->k_aux);
    t->sel = malloc(sizeof(int32_t) * (size_t)k);
    t->asel = malloc(sizeof(int32_t) * (size_t)t->k_aux);
    t->dead = malloc(sizeof(int32_t) * (size_t)nd);
    t->idx = malloc(sizeof(int32_t) * B * (size_t)k);
    t->act = malloc(sizeof(float) * B * (size_t)k);
    if (!t->p || !t->g || !t->m || !t->v || !t->last_fire || !t->xb || !t->xc || !t->pre ||
        !t->xhat || !t->heap || !t->vals || !t->avals || !t->sel || !t->asel || !t->dead ||
        !t->idx || !t->act) {
        eng_sae_trainer_free(t);
        return s3_errf(err, S3_ENOMEM, "out of memory for an SAE trainer");
    }
    /* decoder rows: random unit vectors; encoder = decoder (tied init); biases 0 */
    struct tparams w = tp_view(t->p, nd, d);
    for (int j = 0; j < nd; j++) {
        float *r = w.w_dec + (size_t)j * (size_t)d;
        double ss = 0.0;
        for (int i = 0; i < d; i++) {
            double gv = rng_gauss(&t->rng);
            r[i] = (float)gv;
            ss += gv * gv;
        }
        float inv = (float)(1.0 / sqrt(ss > 0.0 ? ss : 1.0));
        for (int i = 0; i < d; i++)
            r[i] *= inv;
    }
    memcpy(w.w_enc, w.w_dec, sizeof(float) * (size_t)nd * (size_t)d);
    *out = t;
    return 0;
}

/* Top-k of row v over candidates (all when cand == NULL, else the n_cand ids listed); fills
 * vals/ids, returns the count (<= k). Only positive values are kept. */
static int topk_pos(const float *v, const int32_t *cand, int n_cand, int k, float *vals,
                    int32_t *ids)
{
    int m = 0;
    for (int c = 0; c < n_cand; c++) {
        int32_t j = cand ? cand[c] : c;
        float x = v[j];
        if (x > 0.0f)
            m = eng__sae_sel_insert(vals, ids, m, k, x, j);
    }
    return m;
}

static void step_batch(struct eng_sae_trainer *t, int B)
{
    const int d = t->d, nd = t->nd, k = t->k;
    struct tparams w = tp_view(t->p, nd, d), g = tp_view(t->g, nd, d);
    double loss = 0.0;

    memset(t->g, 0, sizeof(float) * t->n_params);
    /* dead latents at the start of this step */
    int n_dead = 0;
    for (int j = 0; j < nd; j++)
        if (t->seen - t->last_fire[j] > t->dead_after)
            t->dead[n_dead++] = j;
    const int ka = n_dead < t->k_aux ? n_dead : t->k_aux;

    for (int r = 0; r < B; r++)
        for (int i = 0; i < d; i++)
            t->xc[(size_t)r * d + i] = t->xb[(size_t)r * d + i] - w.b_dec[i];
    /* pre (B, nd) = xc . W_enc^T + b_enc */
    krn_sgemm(0, 1, B, nd, d, 1.0f, t->xc, d, w.w_enc, d, 0.0f, t->pre, nd);

    const float gscale = 2.0f / (float)B;
    for (int r = 0; r < B; r++) {
        float *pr = t->pre + (size_t)r * nd;
        const float *xr = t->xb + (size_t)r * d, *xcr = t->xc + (size_t)r * d;
        float *xh = t->xhat + (size_t)r * d;
        for (int j = 0; j < nd; j++)
            pr[j] += w.b_enc[j];
        int m = topk_pos(pr, NULL, nd, k, t->vals, t->sel);
        int32_t *ir = t->idx + (size_t)r * k;
        float *ar = t->act + (size_t)r * k;
        for (int j = 0; j < k; j++) {
            ir[j] = j < m ? t->sel[j] : -1;
            ar[j] = j < m ? t->vals[j] : 0.0f;
        }
        /* x^ and residual r = x^ - x */
        for (int i = 0; i < d; i++)
            xh[i] = w.b_dec[i];
        for (int j = 0; j < m; j++) {
            const float *wd = w.w_dec + (size_t)ir[j] * d;
            for (int i = 0; i < d; i++)
                xh[i] += ar[j] * wd[i];
        }
        double l2 = 0.0;
        for (int i = 0; i < d; i++) {
            xh[i] -= xr[i]; /* xh now holds the residual */
            l2 += (double)xh[i] * xh[i];
        }
        loss += l2;
        /* gradient of the MSE: dL/dx^ = 2 r / B */
        float dxc_dot[ENG_SAE_MAX_DHEAD];
        for (int i = 0; i < d; i++) {
            float gi = gscale * xh[i];
            g.b_dec[i] += gi;
            dxc_dot[i] = 0.0f;
        }
        for (int j = 0; j < m; j++) {
            const int32_t id = ir[j];
            const float *wd = w.w_dec + (size_t)id * d, *we = w.w_enc + (size_t)id * d;
            float *gd = g.w_dec + (size_t)id * d, *ge = g.w_enc + (size_t)id * d;
            float da = 0.0f;
            for (int i = 0; i < d; i++) {
                float gi = gscale * xh[i];
                gd[i] += ar[j] * gi;
                da += wd[i] * gi;
            }
            for (int i = 0; i < d; i++) {
                ge[i] += da * xcr[i];
                dxc_dot[i] += da * we[i];
            }
            g.b_enc[id] += da;
        }
        for (int i = 0; i < d; i++)
            g.b_dec[i] -= dxc_dot[i];
        /* AuxK: reconstruct the residual e = x - x^ from the top dead latents */
        if (ka > 0) {
            int ma = topk_pos(pr, t->dead, n_dead, ka, t->avals, t->asel);
            if (ma > 0) {
                float eh[ENG_SAE_MAX_DHEAD];
                for (int i = 0; i < d; i++)
                    eh[i] = xh[i]; /* e^ - e = e^ + r */
                for (int j = 0; j < ma; j++) {
                    const float *wd = w.w_dec + (size_t)t->asel[j] * d;
                    for (int i = 0; i < d; i++)
                        eh[i] += t->avals[j] * wd[i];
                }
                const float ac = t->aux_coef * gscale;
                for (int j = 0; j < ma; j++) {
                    const int32_t id = t->asel[j];
                    const float *wd = w.w_dec + (size_t)id * d;
                    float *gd = g.w_dec + (size_t)id * d, *ge = g.w_enc + (size_t)id * d;
                    float da = 0.0f;
                    for (int i = 0; i < d; i++) {
                        float gi = ac * eh[i];
                        gd[i] += t->avals[j] * gi;
                        da += wd[i] * gi;
                    }
                    for (int i = 0; i < d; i++)
                        ge[i] += da * xcr[i];
                    g.b_enc[id] += da;
                }
            }
        }
    }
    t->seen += B;
    for (int r = 0; r < B; r++)
        for (int j = 0; j < k; j++) {
            int32_t id = t->idx[(size_t)r * k + j];
            if (id >= 0)
                t->last_fire[id] = t->seen;
        }
    t->last_loss += loss;

    /* keep decoder rows on the sphere: drop the radial part of their gradient */
    for (int j = 0; j < nd; j++) {
        const float *wd = w.w_dec + (size_t)j * d;
        float *gd = g.w_dec + (size_t)j * d;
        float dot = 0.0f;
        for (int i = 0; i < d; i++)
            dot += wd[i] * gd[i];
        for (int i = 0; i < d; i++)
            gd[i] -= dot * wd[i];
    }

    /* Adam */
    t->step++;
    double lr = t->lr;
    if (t->total_steps > 0) {
        double tail = 0.2 * (double)t->total_steps, left = (double)(t->total_steps - t->step);
        if (left < tail)
            lr *= left > 0.0 ? left / tail : 0.0;
    }
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1.0 - pow(b1, (double)t->step), c2 = 1.0 - pow(b2, (double)t->step);
    const float step_size = (float)(lr / c1), inv_c2 = (float)(1.0 / c2);
    const float fb1 = (float)b1, fb2 = (float)b2;
    for (size_t i = 0; i < t->n_params; i++) {
        float gi = t->g[i];
        float mi = fb1 * t->m[i] + (1.0f - fb1) * gi;
        float vi = fb2 * t->v[i] + (1.0f - fb2) * gi * gi;
        t->m[i] = mi;
        t->v[i] = vi;
        t->p[i] -= step_size * mi / (sqrtf(vi * inv_c2) + (float)eps);
    }
    for (int j = 0; j < nd; j++) {
        float *wd = w.w_dec + (size_t)j * d;
        double ss = 0.0;
        for (int i = 0; i < d; i++)
            ss += (double)wd[i] * wd[i];
        if (ss > 0.0) {
            float inv = (float)(1.0 / sqrt(ss));
            for (int i = 0; i < d; i++)
                wd[i] *= inv;
        }
    }
}

static void shuffle_rows(float *x, size_t n, int d, uint64_t *rng)
{
    float tmp[ENG_SAE_MAX_DHEAD];
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(rng_next(rng) % i);
        if (j == i - 1)
            continue;
        memcpy(tmp, x + (i - 1) * d, sizeof(float) * (size_t)d);
        memcpy(x + (i - 1) * d, x + j * d, sizeof(float) * (size_t)d);
        memcpy(x + j * d, tmp, sizeof(float) * (size_t)d);
    }
}

int eng_sae_trainer_fit(struct eng_sae_trainer *t, float *x, size_t n)
{
    const int d = t->d;
    if (!x || n == 0)
        return S3_EINVAL;
    if (!t->ready) {
        /* input scale and b_dec from this data: mean and per-dimension standard deviation */
        struct tparams w = tp_view(t->p, t->nd, d);
        double mean[ENG_SAE_MAX_DHEAD] = {0}, var = 0.0;
        for (size_t r = 0; r < n; r++)
            for (int i = 0; i < d; i++)
                mean[i] += x[r * d + i];
        for (int i = 0; i < d; i++)
            mean[i] /= (double)n;
        for (size_t r = 0; r < n; r++)
            for (int i = 0; i < d; i++) {
                double dv = x[r * d + i] - mean[i];
                var += dv * dv;
            }
        var /= (double)n * d;
        t->scale = var > 0.0 && isfinite(var) ? sqrt(var) : 1.0;
        for (int i = 0; i < d; i++)
            w.b_dec[i] = (float)(mean[i] / t->scale);
        t->ready = 1;
    }
    const float inv = (float)(1.0 / t->scale);
    t->last_loss = 0.0;
    size_t n_seen = 0;
    for (int ep = 0; ep < t->epochs; ep++) {
        shuffle_rows(x, n, d, &t->rng);
        t->last_loss = 0.0;
        n_seen = 0;
        for (size_t r0 = 0; r0 < n; r0 += (size_t)t->batch) {
            int B = n - r0 < (size_t)t->batch ? (int)(n - r0) : t->batch;
            for (size_t i = 0; i < (size_t)B * d; i++)
                t->xb[i] = x[r0 * d + i] * inv;
            step_batch(t, B);
            n_seen += (size_t)B;
        }
    }
    t->last_loss = n_seen ? t->last_loss / (double)n_seen : 0.0;
    return 0;
}

double eng_sae_trainer_last_loss(const struct eng_sae_trainer *t)
{
    return t->last_loss;
}

int eng_sae_trainer_n_dead(const struct eng_sae_trainer *t)
{
    int n = 0;
    for (int j = 0; j < t->nd; j++)
        if (t->seen - t->last_fire[j] > t->dead_after)
            n++;
    return n;
}

long eng_sae_trainer_steps(const struct eng_sae_trainer *t)
{
    return t->step;
}

int eng_sae_trainer_export(const struct eng_sae_trainer *t, struct eng_sae *s, int slot,
                           int head)
{
    const struct eng_sae_info *in = eng_sae_get_info(s);
    struct eng_sae_unit u;
    if (in->d_head != t->d || in->n_dict != t->nd || in->k != t->k)
        return S3_EINVAL;
    int rc = eng_sae_get_unit(s, slot, head, &u);
    if (rc < 0)
        return rc;
    struct tparams w = tp_view(t->p, t->nd, t->d);
    const size_t nw = (size_t)t->nd * (size_t)t->d;
    const float sc = (float)t->scale;
    memcpy(u.w_enc, w.w_enc, sizeof(float) * nw);
    memcpy(u.w_dec, w.w_dec, sizeof(float) * nw);
    for (int j = 0; j < t->nd; j++)
        u.b_enc[j] = w.b_enc[j] * sc;
    for (int i = 0; i < t->d; i++)
        u.b_dec[i] = w.b_dec[i] * sc;
    return 0;
}

/* ---- layers ----------------------------------------------------------------------------------- */

int eng_sae_default_layers(int n_layer, int *layers)
{
    if (n_layer <= 0)
        return 0;
    /* early (~10%), ~28%, ~79%, last: for the default model (30 layers) 3, 8, 23, 29, the
     * layers of best attention fidelity within each depth band (README, "SAE"); duplicates
     * removed for shallow models */
    const double at[4] = {0.10, 0.28, 0.79, 1.0};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        int l = (int)lround(at[i] * (n_layer - 1));
        if (l >= ENG_SAE_MAX_LAYERS)
            l = ENG_SAE_MAX_LAYERS - 1;
        if (n == 0 || l > layers[n - 1])
            layers[n++] = l;
    }
    return n;
}

/* ---- collection over a model ---------------------------------------------------------------- */

struct collect {
    int d, n_kv, n_units;
    int slot_of[ENG_SAE_MAX_LAYERS];
    size_t cap;           /* vectors per unit buffer */
    float **buf;          /* n_units buffers of (cap, d) */
    size_t *fill;
    double hook_ms;
};

static int collect_hook(void *ud, int layer, int pos0, int n_tokens, const float *q,
                        const float *k)
{
    struct collect *c = ud;
    double t0 = s3_now_ms();
    (void)pos0;
    (void)q;
    if (layer < 0 || layer >= ENG_SAE_MAX_LAYERS || c->slot_of[layer] < 0 || n_tokens <= 0)
        return 0;
    const int slot = c->slot_of[layer], d = c->d;
    const size_t ldk = (size_t)c->n_kv * (size_t)d;
    for (int h = 0; h < c->n_kv; h++) {
        const int u = slot * c->n_kv + h;
        size_t room = c->cap - c->fill[u];
        size_t n = (size_t)n_tokens < room ? (size_t)n_tokens : room;
        float *dst = c->buf[u] + c->fill[u] * (size_t)d;
        for (size_t t = 0; t < n; t++)
            memcpy(dst + t * (size_t)d, k + t * ldk + (size_t)h * (size_t)d,
                   sizeof(float) * (size_t)d);
        c->fill[u] += n;
    }
    c->hook_ms += s3_now_ms() - t0;
    return 0;
}

/* Tokenize at most about max_tokens tokens of text (cut at a line end). *ids is new. */
static int tokenize_prefix(const struct eng_model *m, const char *text, size_t len,
                           size_t max_tokens, int32_t **ids, size_t *n, struct s3_errinfo *err)
{
    size_t use = len;
    const size_t max_bytes = max_tokens * 8 + 1024; /* English prose: ~4 bytes per token */
    if (use > max_bytes) {
        use = max_bytes;
        while (use > 0 && text[use - 1] != '\n')
            use--;
        if (use == 0)
            use = max_bytes;
    }
    int rc = eng_tok_encode(eng_model_tok(m), text, use, 0, ids, n);
    if (rc < 0)
        return s3_errf(err, rc, "cannot tokenize the corpus: %s", s3_strerror(rc));
    if (*n > max_tokens)
        *n = max_tokens;
    return 0;
}

static int ctx_for(const struct eng_model *m, int chunk, struct eng_ctx **c,
                   struct s3_errinfo *err)
{
    struct eng_ctx_opts co;
    memset(&co, 0, sizeof(co));
    co.n_ctx = chunk;
    co.n_batch = chunk;
    return eng_ctx_new(m, &co, c, err);
}

static void model_opts_fill(struct eng_sae_model_opts *o, const struct eng_hparams *hp)
{
    if (o->n_layers <= 0)
        o->n_layers = eng_sae_default_layers(hp->n_layer, o->layers);
    if (!o->n_tokens)
        o->n_tokens = 120000;
    if (!o->n_heldout_tokens)
        o->n_heldout_tokens = 16384;
    if (o->chunk <= 0)
        o->chunk = 512;
    if (o->chunk > hp->n_ctx_train && hp->n_ctx_train > 0)
        o->chunk = hp->n_ctx_train;
    if (!o->buffer)
        o->buffer = 32768;
    if (o->fid_queries <= 0)
        o->fid_queries = 32;
    if (!o->train.n_dict)
        o->train.n_dict = 1024; /* README, "SAE": 2048+ leaves >2% dead at this data size */
    if (!o->train.k)
        o->train.k = 16;
    if (!o->train.batch)
        o->train.batch = 256;
    if (!o->train.epochs)
        o->train.epochs = 4;
}

int eng_sae_train_model(const struct eng_model *m, const char *train_text, size_t train_len,
                        const char *heldout_text, size_t heldout_len,
                        const struct eng_sae_model_opts *opts, struct eng_sae **out,
                        struct eng_sae_report *rep, struct s3_errinfo *err)
{
    const struct eng_hparams *hp = eng_model_hparams(m);
    struct eng_sae_model_opts o = *opts;
    struct eng_sae_info in;
    struct eng_sae *s = NULL;
    struct eng_ctx *c = NULL;
    struct eng_sae_trainer **tr = NULL;
    struct collect col;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 0;

    *out = NULL;
    memset(&col, 0, sizeof(col));
    model_opts_fill(&o, hp);
    memset(&in, 0, sizeof(in));
    memcpy(in.model_sha256, hp->model_sha256, 65);
    snprintf(in.arch, sizeof(in.arch), "%s", hp->arch);
    in.n_layer = hp->n_layer;
    in.n_head = hp->n_head;
    in.n_head_kv = hp->n_head_kv;
    in.d_head = hp->head_dim;
    in.n_dict = o.train.n_dict;
    in.k = o.train.k;
    in.n_idx = o.n_layers;
    memcpy(in.layers, o.layers, sizeof(int) * (size_t)o.n_layers);
    rc = eng_sae_new(&in, &s, err);
    if (rc < 0)
        goto out;
    if (o.buffer < (size_t)o.train.batch)
        o.buffer = (size_t)o.train.batch;

    const int d = in.d_head, n_kv = in.n_head_kv, n_units = in.n_idx * n_kv;
    double t0 = s3_now_ms();
    rc = tokenize_prefix(m, train_text, train_len, o.n_tokens, &ids, &n_ids, err);
    if (rc < 0)
        goto out;
    if (n_ids < (size_t)o.train.batch) {
        rc = s3_errf(err, S3_EINVAL, "training corpus too small: %zu tokens", n_ids);
        goto out;
    }
    /* exact number of optimiser steps per trainer, for the learning-rate schedule */
    {
        long steps = 0;
        size_t fill = 0;
        for (size_t off = 0; off < n_ids; off += (size_t)o.chunk) {
            size_t len = n_ids - off < (size_t)o.chunk ? n_ids - off : (size_t)o.chunk;
            fill += len;
            if (fill >= o.buffer || off + len >= n_ids) {
                steps += (long)o.train.epochs *
                         (long)((fill + (size_t)o.train.batch - 1) / (size_t)o.train.batch);
                fill = 0;
            }
        }
        if (o.train.total_steps <= 0)
            o.train.total_steps = steps;
    }

    col.d = d;
    col.n_kv = n_kv;
    col.n_units = n_units;
    col.cap = o.buffer + (size_t)o.chunk;
    for (int l = 0; l < ENG_SAE_MAX_LAYERS; l++)
        col.slot_of[l] = eng_sae_slot_of_layer(s, l);
    col.buf = calloc((size_t)n_units, sizeof(float *));
    col.fill = calloc((size_t)n_units, sizeof(size_t));
    tr = calloc((size_t)n_units, sizeof(*tr));
    if (!col.buf || !col.fill || !tr) {
        rc = s3_errf(err, S3_ENOMEM, "out of memory");
        goto out;
    }
    for (int u = 0; u < n_units; u++) {
        col.buf[u] = malloc(sizeof(float) * col.cap * (size_t)d);
        if (!col.buf[u]) {
            rc = s3_errf(err, S3_ENOMEM, "out of memory for the activation buffers");
            goto out;
        }
        rc = eng_sae_trainer_new(d, &o.train, (uint64_t)u, &tr[u], err);
        if (rc < 0)
            goto out;
    }
    rc = ctx_for(m, o.chunk, &c, err);
    if (rc < 0)
        goto out;
    eng_ctx_set_qk_hook(c, collect_hook, &col, eng_sae_layer_mask(s));

    double fwd_ms = 0.0, fit_ms = 0.0;
    size_t done = 0;
    for (size_t off = 0; off < n_ids; off += (size_t)o.chunk) {
        size_t len = n_ids - off < (size_t)o.chunk ? n_ids - off : (size_t)o.chunk;
        double f0 = s3_now_ms();
        eng_ctx_reset(c);
        rc = eng_ctx_prefill(c, ids + off, len, NULL, NULL);
        if (rc < 0) {
            rc = s3_errf(err, rc, "forward pass failed: %s", s3_strerror(rc));
            goto out;
        }
        fwd_ms += s3_now_ms() - f0;
        done += len;
        if (col.fill[0] >= o.buffer || off + len >= n_ids) {
            double g0 = s3_now_ms();
            for (int u = 0; u < n_units; u++) {
                if (col.fill[u] == 0)
                    continue;
                rc = eng_sae_trainer_fit(tr[u], col.buf[u], col.fill[u]);
                if (rc < 0) {
                    rc = s3_errf(err, rc, "SAE training failed");
                    goto out;
                }
                col.fill[u] = 0;
            }
            fit_ms += s3_now_ms() - g0;
            if (o.verbose) {
                double fvu = 0.0;
                int dead = 0;
                for (int u = 0; u < n_units; u++) {
                    fvu += eng_sae_trainer_last_loss(tr[u]) / d;
                    dead += eng_sae_trainer_n_dead(tr[u]);
                }
                S3_LOG(S3_LOG_INFO,
                       "sae_train tokens=%zu/%zu train_fvu=%.4f dead=%.4f fwd_tok_s=%.0f "
                       "fwd_s=%.1f fit_s=%.1f",
                       done, n_ids, fvu / n_units, (double)dead / ((double)n_units * in.n_dict),
                       done / (fwd_ms / 1e3), fwd_ms / 1e3, fit_ms / 1e3);
            }
        }
    }
    eng_ctx_free(c);
    c = NULL;
    for (int u = 0; u < n_units; u++) {
        rc = eng_sae_trainer_export(tr[u], s, u / n_kv, u % n_kv);
        if (rc < 0)
            goto out;
    }
    eng_sae_set_trained(s, (uint64_t)n_ids, o.train.seed);
    if (rep) {
        memset(rep, 0, sizeof(*rep));
        rep->collect_ms = fwd_ms;
        rep->train_ms = fit_ms;
        rep->prefill_tok_per_s = fwd_ms > 0 ? (double)n_ids / (fwd_ms / 1e3) : 0.0;
    }
    S3_LOG(S3_LOG_INFO, "sae_train done tokens=%zu total_s=%.1f", n_ids,
           (s3_now_ms() - t0) / 1e3);
    if (heldout_text && heldout_len > 0) {
        struct eng_sae_report r2;
        rc = eng_sae_evaluate(m, s, heldout_text, heldout_len, o.n_heldout_tokens, o.chunk,
                              o.fid_queries, &r2, err);
        if (rc < 0)
            goto out;
        if (rep) {
            double cm = rep->collect_ms, tm = rep->train_ms, pt = rep->prefill_tok_per_s;
            *rep = r2;
            rep->collect_ms = cm;
            rep->train_ms = tm;
            rep->prefill_tok_per_s = pt;
        }
    }
out:
    eng_ctx_free(c);
    if (tr)
        for (int u = 0; u < col.n_units; u++)
            eng_sae_trainer_free(tr[u]);
    free(tr);
    if (col.buf)
        for (int u = 0; u < col.n_units; u++)
            free(col.buf[u]);
    free(col.buf);
    free(col.fill);
    free(ids);
    if (rc < 0)
        eng_sae_free(s);
    else
        *out = s;
    return rc;
}

/* ---- evaluation on held-out text ------------------------------------------------------------ */

#define FID_TOP 32

struct evalc {
    const struct eng_sae *s;
    struct eng_sae_enc *e;
    int d, n_kv, n_head, group, k, nd, chunk, fid_queries;
    int slot_of[ENG_SAE_MAX_LAYERS];
    /* per unit (slot * n_kv + kv head) */
    double *k_err, *k_sq, *k_sum; /* k_sum: (units, d) */
    double *q_err, *q_sq, *q_sum;
    long *k_n, *q_n;
    uint32_t *fires;              /* (units, nd) */
    double *fid_sum;
    long *fid_n;
    double fid_rand;
    long fid_rand_n;
    /* scratch */
    uint16_t *kid, *qid;          /* (n_kv, chunk, k), (chunk, k) */
    float *kact, *qact;
    float *rec, *dots, *score, *qdense; /* d, chunk, chunk, nd */
    uint8_t *mark;                /* chunk */
    int32_t *topa, *topb;
    float *topv;
    double enc_ms, hook_ms;
    long enc_vec;
    int rc;
};

static void acc_fvu(const struct evalc *ev, int slot, int h, const float *x, const uint16_t *ids,
                    const float *acts, double *err2, double *sq, double *sum)
{
    const int d = ev->d;
    eng_sae_decode(ev->s, slot, h, ids, acts, ev->rec);
    for (int i = 0; i < d; i++) {
        double dv = (double)x[i] - (double)ev->rec[i];
        *err2 += dv * dv;
        *sq += (double)x[i] * (double)x[i];
        sum[i] += x[i];
    }
}

/* Indices of the FID_TOP largest v[0..n) (ties: lower index), marked in mark with bit. */
static void top_mark(const float *v, int n, uint8_t *mark, uint8_t bit, float *tv, int32_t *ti)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        m = eng__sae_sel_insert(tv, ti, m, FID_TOP, v[i], i);
    for (int j = 0; j < m; j++)
        mark[ti[j]] |= bit;
}

static int eval_hook(void *ud, int layer, int pos0, int n, const float *q, const float *k)
{
    struct evalc *ev = ud;
    double h0 = s3_now_ms();
    (void)pos0;
    if (layer < 0 || layer >= ENG_SAE_MAX_LAYERS || ev->slot_of[layer] < 0 || n <= 0 ||
        n > ev->chunk)
        return 0;
    const int slot = ev->slot_of[layer], d = ev->d, kk = ev->k, n_kv = ev->n_kv;
    const size_t ldk = (size_t)n_kv * (size_t)d, ldq = (size_t)ev->n_head * (size_t)d;
    for (int h = 0; h < n_kv; h++) {
        const int u = slot * n_kv + h;
        uint16_t *kid = ev->kid + (size_t)h * (size_t)ev->chunk * (size_t)kk;
        float *kact = ev->kact + (size_t)h * (size_t)ev->chunk * (size_t)kk;
        double t0 = s3_now_ms();
        int rc = eng_sae_encode(ev->e, slot, h, k + (size_t)h * (size_t)d, ldk, n, kid, kact);
        ev->enc_ms += s3_now_ms() - t0;
        ev->enc_vec += n;
        if (rc < 0) {
            ev->rc = rc;
            return 1;
        }
        for (int t = 0; t < n; t++) {
            acc_fvu(ev, slot, h, k + (size_t)t * ldk + (size_t)h * (size_t)d,
                    kid + (size_t)t * (size_t)kk, kact + (size_t)t * (size_t)kk, &ev->k_err[u],
                    &ev->k_sq[u], ev->k_sum + (size_t)u * (size_t)d);
            for (int j = 0; j < kk; j++)
                if (kact[(size_t)t * (size_t)kk + (size_t)j] > 0.0f)
                    ev->fires[(size_t)u * (size_t)ev->nd + kid[(size_t)t * (size_t)kk + (size_t)j]]++;
        }
        ev->k_n[u] += n;
    }
    for (int qh = 0; qh < ev->n_head; qh++) {
        const int h = qh / ev->group, u = slot * n_kv + h;
        const float *qb = q + (size_t)qh * (size_t)d;
        int rc = eng_sae_encode(ev->e, slot, h, qb, ldq, n, ev->qid, ev->qact);
        if (rc < 0) {
            ev->rc = rc;
            return 1;
        }
        for (int t = 0; t < n; t++)
            acc_fvu(ev, slot, h, qb + (size_t)t * ldq, ev->qid + (size_t)t * (size_t)kk,
                    ev->qact + (size_t)t * (size_t)kk, &ev->q_err[u], &ev->q_sq[u],
                    ev->q_sum + (size_t)u * (size_t)d);
        ev->q_n[u] += n;
        /* attention fidelity for the last fid_queries positions (context >= 2 * FID_TOP) */
        const uint16_t *kid = ev->kid + (size_t)h * (size_t)ev->chunk * (size_t)kk;
        const float *kact = ev->kact + (size_t)h * (size_t)ev->chunk * (size_t)kk;
        int t_lo = n - ev->fid_queries;
        if (t_lo < 2 * FID_TOP - 1)
            t_lo = 2 * FID_TOP - 1;
        for (int t = t_lo; t < n; t++) {
            const float *qt = qb + (size_t)t * ldq;
            const int ctx = t + 1;
            for (int j = 0; j < kk; j++)
                ev->qdense[ev->qid[(size_t)t * kk + j]] += ev->qact[(size_t)t * kk + j];
            for (int s = 0; s < ctx; s++) {
                const float *ks = k + (size_t)s * ldk + (size_t)h * (size_t)d;
                float dot = 0.0f;
                for (int i = 0; i < d; i++)
                    dot += qt[i] * ks[i];
                ev->dots[s] = dot;
                float sc = 0.0f;
                for (int j = 0; j < kk; j++)
                    sc += ev->qdense[kid[(size_t)s * kk + j]] * kact[(size_t)s * kk + j];
                ev->score[s] = sc;
            }
            for (int j = 0; j < kk; j++)
                ev->qdense[ev->qid[(size_t)t * kk + j]] = 0.0f;
            memset(ev->mark, 0, (size_t)ctx);
            top_mark(ev->dots, ctx, ev->mark, 1, ev->topv, ev->topa);
            top_mark(ev->score, ctx, ev->mark, 2, ev->topv, ev->topb);
            int both = 0;
            for (int s = 0; s < ctx; s++)
                both += ev->mark[s] == 3;
            ev->fid_sum[u] += (double)both / FID_TOP;
            ev->fid_n[u]++;
            ev->fid_rand += (double)FID_TOP / ctx;
            ev->fid_rand_n++;
        }
    }
    ev->hook_ms += s3_now_ms() - h0;
    return 0;
}

static double fvu_of(double err2, double sq, const double *sum, int d, long n)
{
    if (n <= 0)
        return 0.0;
    double var = sq;
    for (int i = 0; i < d; i++)
        var -= sum[i] * sum[i] / (double)n;
    return var > 0.0 ? err2 / var : 0.0;
}

static void evalc_deinit(struct evalc *ev)
{
    eng_sae_enc_free(ev->e);
    free(ev->k_err);
    free(ev->k_sq);
    free(ev->k_sum);
    free(ev->q_err);
    free(ev->q_sq);
    free(ev->q_sum);
    free(ev->k_n);
    free(ev->q_n);
    free(ev->fires);
    free(ev->fid_sum);
    free(ev->fid_n);
    free(ev->kid);
    free(ev->kact);
    free(ev->qid);
    free(ev->qact);
    free(ev->rec);
    free(ev->dots);
    free(ev->score);
    free(ev->qdense);
    free(ev->mark);
    free(ev->topa);
    free(ev->topb);
    free(ev->topv);
    memset(ev, 0, sizeof(*ev));
}

/* Accumulators and scratch for chunks of up to chunk tokens. */
static int evalc_init(struct evalc *ev, const struct eng_sae *s, int chunk, int fid_queries)
{
    const struct eng_sae_info *in = eng_sae_get_info(s);
    memset(ev, 0, sizeof(*ev));
    const int d = in->d_head, n_kv = in->n_head_kv, nu = in->n_idx * n_kv, nd = in->n_dict,
              kk = in->k;
    ev->s = s;
    ev->d = d;
    ev->n_kv = n_kv;
    ev->n_head = in->n_head;
    ev->group = in->n_head / n_kv;
    ev->k = kk;
    ev->nd = nd;
    ev->chunk = chunk;
    ev->fid_queries = fid_queries;
    for (int l = 0; l < ENG_SAE_MAX_LAYERS; l++)
        ev->slot_of[l] = eng_sae_slot_of_layer(s, l);
    ev->k_err = calloc((size_t)nu, sizeof(double));
    ev->k_sq = calloc((size_t)nu, sizeof(double));
    ev->k_sum = calloc((size_t)nu * (size_t)d, sizeof(double));
    ev->q_err = calloc((size_t)nu, sizeof(double));
    ev->q_sq = calloc((size_t)nu, sizeof(double));
    ev->q_sum = calloc((size_t)nu * (size_t)d, sizeof(double));
    ev->k_n = calloc((size_t)nu, sizeof(long));
    ev->q_n = calloc((size_t)nu, sizeof(long));
    ev->fires = calloc((size_t)nu * (size_t)nd, sizeof(uint32_t));
    ev->fid_sum = calloc((size_t)nu, sizeof(double));
    ev->fid_n = calloc((size_t)nu, sizeof(long));
    ev->kid = malloc(sizeof(uint16_t) * (size_t)n_kv * (size_t)chunk * (size_t)kk);
    ev->kact = malloc(sizeof(float) * (size_t)n_kv * (size_t)chunk * (size_t)kk);
    ev->qid = malloc(sizeof(uint16_t) * (size_t)chunk * (size_t)kk);
    ev->qact = malloc(sizeof(float) * (size_t)chunk * (size_t)kk);
    ev->rec = malloc(sizeof(float) * (size_t)d);
    ev->dots = malloc(sizeof(float) * (size_t)chunk);
    ev->score = malloc(sizeof(float) * (size_t)chunk);
    ev->qdense = calloc((size_t)nd, sizeof(float));
    ev->mark = malloc((size_t)chunk);
    ev->topa = malloc(sizeof(int32_t) * FID_TOP);
    ev->topb = malloc(sizeof(int32_t) * FID_TOP);
    ev->topv = malloc(sizeof(float) * FID_TOP);
    if (!ev->k_err || !ev->k_sq || !ev->k_sum || !ev->q_err || !ev->q_sq || !ev->q_sum ||
        !ev->k_n || !ev->q_n || !ev->fires || !ev->fid_sum || !ev->fid_n || !ev->kid ||
        !ev->kact || !ev->qid || !ev->qact || !ev->rec || !ev->dots || !ev->score ||
        !ev->qdense || !ev->mark || !ev->topa || !ev->topb || !ev->topv ||
        eng_sae_enc_new(s, chunk, &ev->e) < 0) {
        evalc_deinit(ev);
        return S3_ENOMEM;
    }
    return 0;
}

/* Turn the accumulators into the stats of s and the per-slot figures of rep (may be NULL). */
static void evalc_finish(struct evalc *ev, struct eng_sae *s, struct eng_sae_report *rep)
{
    const struct eng_sae_info *in = eng_sae_get_info(s);
    const int d = in->d_head, n_kv = in->n_head_kv, nu = in->n_idx * n_kv, nd = in->n_dict;
    if (rep)
        memset(rep, 0, sizeof(*rep));
    for (int slot = 0; slot < in->n_idx; slot++) {
        for (int h = 0; h < n_kv; h++) {
            const int u = slot * n_kv + h;
            float *st = eng_sae_stats(s, slot, h);
            long live = 0;
            double fsum = 0.0, fmax = 0.0;
            for (int j = 0; j < nd; j++) {
                uint32_t f = ev->fires[(size_t)u * (size_t)nd + (size_t)j];
                if (f == 0)
                    continue;
                live++;
                double fr = ev->k_n[u] ? (double)f / (double)ev->k_n[u] : 0.0;
                fsum += fr;
                fmax = fr > fmax ? fr : fmax;
            }
            st[ENG_SAE_STAT_FVU_K] = (float)fvu_of(ev->k_err[u], ev->k_sq[u],
                                                   ev->k_sum + (size_t)u * d, d, ev->k_n[u]);
            st[ENG_SAE_STAT_FVU_Q] = (float)fvu_of(ev->q_err[u], ev->q_sq[u],
                                                   ev->q_sum + (size_t)u * d, d, ev->q_n[u]);
            st[ENG_SAE_STAT_DEAD] = (float)(1.0 - (double)live / nd);
            st[ENG_SAE_STAT_FREQ_MEAN] = live ? (float)(fsum / (double)live) : 0.0f;
            st[ENG_SAE_STAT_FREQ_MAX] = (float)fmax;
            st[ENG_SAE_STAT_FIDELITY] =
                ev->fid_n[u] ? (float)(ev->fid_sum[u] / ev->fid_n[u]) : 0.0f;
            if (rep) {
                rep->fvu_k[slot] += st[ENG_SAE_STAT_FVU_K] / n_kv;
                rep->fvu_q[slot] += st[ENG_SAE_STAT_FVU_Q] / n_kv;
                rep->dead[slot] += st[ENG_SAE_STAT_DEAD] / n_kv;
                rep->freq_mean[slot] += st[ENG_SAE_STAT_FREQ_MEAN] / n_kv;
                rep->freq_max[slot] += st[ENG_SAE_STAT_FREQ_MAX] / n_kv;
                rep->fidelity[slot] += st[ENG_SAE_STAT_FIDELITY] / n_kv;
            }
        }
    }
    if (rep) {
        rep->n_idx = in->n_idx;
        rep->n_tokens = in->n_idx > 0 && ev->k_n[0] ? (size_t)ev->k_n[0] : 0;
        rep->fidelity_random = ev->fid_rand_n ? ev->fid_rand / (double)ev->fid_rand_n : 0.0;
        if (ev->enc_ms > 0) {
            rep->encode_vec_per_s = (double)ev->enc_vec / (ev->enc_ms / 1e3);
            rep->encode_tok_per_s = rep->encode_vec_per_s / nu;
        }
    }
}

int eng_sae_evaluate(const struct eng_model *m, struct eng_sae *s, const char *text, size_t len,
                     size_t max_tokens, int chunk, int fid_queries, struct eng_sae_report *rep,
                     struct s3_errinfo *err)
{
    const struct eng_hparams *hp = eng_model_hparams(m);
    struct evalc ev;
    struct eng_ctx *c = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = eng_sae_check_model(s, hp, err);
    if (rc < 0)
        return rc;
    if (chunk <= 0)
        chunk = 512;
    if (hp->n_ctx_train > 0 && chunk > hp->n_ctx_train)
        chunk = hp->n_ctx_train;
    if (fid_queries <= 0)
        fid_queries = 32;
    if (!max_tokens)
        max_tokens = 16384;
    rc = evalc_init(&ev, s, chunk, fid_queries);
    if (rc < 0)
        return s3_errf(err, rc, "out of memory for the SAE evaluation");
    rc = tokenize_prefix(m, text, len, max_tokens, &ids, &n_ids, err);
    if (rc < 0)
        goto out;
    rc = ctx_for(m, chunk, &c, err);
    if (rc < 0)
        goto out;
    eng_ctx_set_qk_hook(c, eval_hook, &ev, eng_sae_layer_mask(s));
    double fwd_ms = 0.0;
    for (size_t off = 0; off < n_ids; off += (size_t)chunk) {
        size_t n = n_ids - off < (size_t)chunk ? n_ids - off : (size_t)chunk;
        double f0 = s3_now_ms();
        eng_ctx_reset(c);
        rc = eng_ctx_prefill(c, ids + off, n, NULL, NULL);
        fwd_ms += s3_now_ms() - f0;
        if (ev.rc < 0) {
            rc = s3_errf(err, ev.rc, "SAE encode failed during evaluation");
            goto out;
        }
        if (rc < 0) {
            rc = s3_errf(err, rc, "forward pass failed: %s", s3_strerror(rc));
            goto out;
        }
    }
    evalc_finish(&ev, s, rep);
    if (rep) {
        rep->prefill_tok_per_s =
            fwd_ms - ev.hook_ms > 0 ? (double)n_ids / ((fwd_ms - ev.hook_ms) / 1e3) : 0.0;
        rep->eval_ms = fwd_ms;
    }
out:
    eng_ctx_free(c);
    evalc_deinit(&ev);
    free(ids);
    return rc;
}
