/* tests/cuda/test_scan.c - the scan with its keys encoded on the GPU against the CPU path on
 * the same model file and SAE. The GPU rounds its GEMM inputs as the CPU path quantises its
 * activations (8 bits per block of 32, as llama.cpp does), so the default CPU path is the one
 * it must match; the CPU reference path (device cpu-f32: f32 activations) differs from both
 * by that quantisation:
 *   - device encoder (eng__cuda_sae_scan_*): the top feature of (token, layer, kv head)
 *     entries equals the CPU reference encoder's on the CPU model's keys (thresholds as
 *     below), and on the keys of the CPU reference path for >= 98% of all entries; a pass
 *     with a re-read prefix gives exactly the rows of a pass without one; passes split into
 *     several ubatches; two passes in flight come back in order; a third is refused;
 *   - the product's scan (srv_scan_document, pipelined on the GPU) of a planted-needle
 *     document into one database per device: the same passages, the indexed top features
 *     equal (>= 95% of all entries, >= 99.5% of those whose CPU winner leads by > 2%, >= 99%
 *     with the trained SAE; against the CPU reference path >= 98%), S3 spans for the same
 *     query features printed with their overlap, the same number of them, and (trained SAE)
 *     any span only one side has is a near tie: its peak score within 6% of the other side's
 *     (activation codes step by 2.9%); the needle retrieved by both (hybrid);
 *     a GPU scan stopped after 3 chunks and resumed indexes exactly what an uninterrupted
 *     GPU scan does.
 * SAE: $S3_CUDA_SAE when set (a trained SAE of the model file, e.g. `s3serve train-sae` on
 * the layer slice): its layers are captured and raw top-feature agreement over (token,
 * layer, kv head) must be >= 99% against the default CPU path; S3 and hybrid spans of both
 * devices are printed.
 * Otherwise a random SAE made here: unit encoder rows (fixed seed) centred on the keys' mean,
 * 256 latents, k 8, at layers 1 and n_layer - 1.
 * Either way the device encoder is also run against the CPU reference encoder on the GPU
 * model's own keys (>= 99.5% equal top features; 100% measured), which separates encoder
 * differences from key differences. The question's decoder alignment (one GEMM per block of
 * rows) gives the scalar loop's features and weights bit for bit.
 * Model: $S3_CUDA_MODEL, else the default model. Skips without a GPU or model. CK_FORK=no. */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudatest.h"
#include "engine.h"
#include "idx.h"
#include "index_int.h" /* idx__score_positions: the S3 scores behind the spans */
#include "sae.h"
#include "scan.h"

#define N_DICT 256   /* random SAE */
#define SAE_K  8
#define MAX_K  16    /* most features per row the observers keep */
#define MAX_CAP 4    /* most layers captured */
#define MAX_SLOT 16 /* (layer, kv head) slots the observer keeps */

static const char *NEEDLE = "The secret passphrase of the Kestrel observatory is velvet-thistle-25.";
static const char *QUESTION = "What is the secret passphrase of the Kestrel observatory?";

static uint64_t g_rng;
static double urand(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* Prose of about n_bytes from a few word lists (deterministic), the needle as its own
 * paragraph at fraction `at` (at < 0: none). *len = its length; new. */
static char *make_text(size_t n_bytes, double at, size_t *len)
{
    static const char *subj[] = {"The old keeper", "A quiet river", "The northern tower",
                                 "Every traveller", "The harbour master", "A grey heron",
                                 "The village council", "Our small boat"};
    static const char *verb[] = {"watched", "remembered", "carried", "measured", "followed",
                                 "described", "repaired", "ignored"};
    static const char *obj[] = {"the evening tide", "a lantern of brass", "the winter storms",
                                "seven wooden crates", "the fading stars", "the long road east",
                                "a map of the coast", "the bells at noon"};
    static const char *tail[] = {"before dawn", "with great care", "for many years",
                                 "without a word", "near the cliffs", "in the rain"};
    char *d = malloc(n_bytes + 512);
    size_t pos = 0, plant = at < 0 ? (size_t)-1 : (size_t)(at * (double)n_bytes);
    uint64_t r = 0x9e3779b97f4a7c15ull;
    int planted = at < 0, in_par = 0;
    while (pos < n_bytes) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        pos += (size_t)snprintf(d + pos, n_bytes + 512 - pos, "%s %s %s %s. ", subj[r % 8],
                                verb[(r >> 8) % 8], obj[(r >> 16) % 8], tail[(r >> 24) % 6]);
        if (++in_par == 5) {
            d[pos - 1] = '\n';
            d[pos++] = '\n';
            in_par = 0;
            if (!planted && pos >= plant) {
                pos += (size_t)snprintf(d + pos, n_bytes + 512 - pos, "%s\n\n", NEEDLE);
                planted = 1;
            }
        }
    }
    d[pos] = 0;
    *len = pos;
    return d;
}

struct kcap {
    int n_layer_cap;
    int layers[MAX_CAP];
    int dkv, n_max;
    float *k[MAX_CAP]; /* (n_max, dkv) keys of each captured layer */
};

static int kcap_hook(void *ud, int layer, int pos0, int n, const float *q, const float *k)
{
    struct kcap *c = ud;
    (void)q;
    for (int i = 0; i < c->n_layer_cap; i++)
        if (c->layers[i] == layer && pos0 + n <= c->n_max)
            memcpy(c->k[i] + (size_t)pos0 * c->dkv, k, sizeof(float) * (size_t)n * c->dkv);
    return 0;
}

/* Random SAE for m: layers {1, n_layer - 1}, encoder rows random unit vectors, b_dec = mean
 * of the keys kc (CPU model) of each (layer, kv head), decoder = encoder, b_enc 0. */
static struct eng_sae *make_sae(const struct eng_hparams *hp, const struct kcap *kc, int n)
{
    struct eng_sae_info in = {.n_layer = hp->n_layer, .n_head = hp->n_head,
                              .n_head_kv = hp->n_head_kv, .d_head = hp->head_dim,
                              .n_dict = N_DICT, .k = SAE_K, .n_idx = kc->n_layer_cap};
    memcpy(in.model_sha256, hp->model_sha256, 65);
    snprintf(in.arch, sizeof in.arch, "%s", hp->arch);
    for (int i = 0; i < kc->n_layer_cap; i++)
        in.layers[i] = kc->layers[i];
    struct eng_sae *s = NULL;
    struct s3_errinfo err = {0};
    ck_assert_msg(eng_sae_new(&in, &s, &err) == 0, "%s", err.msg);
    const int hd = hp->head_dim;
    g_rng = 0x2545f4914f6cdd1dull;
    for (int sl = 0; sl < in.n_idx; sl++)
        for (int h = 0; h < hp->n_head_kv; h++) {
            struct eng_sae_unit u;
            ck_assert_int_eq(eng_sae_get_unit(s, sl, h, &u), 0);
            for (int j = 0; j < N_DICT; j++) {
                double nrm = 0;
                for (int i = 0; i < hd; i++) {
                    double g = urand() + urand() + urand() - 1.5;
                    u.w_enc[(size_t)j * hd + i] = (float)g;
                    nrm += g * g;
                }
                for (int i = 0; i < hd; i++) {
                    u.w_enc[(size_t)j * hd + i] /= (float)sqrt(nrm);
                    u.w_dec[(size_t)j * hd + i] = u.w_enc[(size_t)j * hd + i];
                }
                u.b_enc[j] = 0;
            }
            for (int i = 0; i < hd; i++) {
                double m = 0;
                for (int r = 0; r < n; r++)
                    m += kc->k[sl][(size_t)r * kc->dkv + (size_t)h * hd + i];
                u.b_dec[i] = (float)(m / n);
            }
        }
    return s;
}

struct fixture {
    struct eng_model *mc, *mg;   /* CPU and GPU copies of the model */
    struct eng_model *mf;        /* the CPU reference path (f32 activations) */
    struct eng_sae *sae;
    int trained;                 /* sae is $S3_CUDA_SAE */
    int k, n_dict;               /* of the SAE */
    int32_t *ids;
    size_t n;
    struct kcap kc;              /* CPU model's keys */
    struct kcap kg;              /* GPU model's keys (copied to the host by the hook) */
    struct kcap kf;              /* CPU reference path's keys */
};

static void capture(struct eng_model *m, struct fixture *f, struct kcap *kc)
{
    struct s3_errinfo err = {0};
    struct eng_ctx_opts co = {.n_ctx = 2048};
    struct eng_ctx *c = NULL;
    uint64_t mask = 0;
    for (int i = 0; i < kc->n_layer_cap; i++) {
        kc->k[i] = malloc(sizeof(float) * f->n * (size_t)kc->dkv);
        mask |= 1ull << kc->layers[i];
    }
    ck_assert_msg(eng_ctx_new(m, &co, &c, &err) == 0, "%s", err.msg);
    eng_ctx_set_qk_hook(c, kcap_hook, kc, mask);
    ck_assert_int_eq(eng_ctx_prefill(c, f->ids, f->n, NULL, NULL), 0);
    eng_ctx_free(c);
}

/* Load both models, tokenize a text of ~n_bytes, take the CPU keys, make the SAE. */
static int fixture_open(struct fixture *f, size_t n_bytes)
{
    char buf[1024];
    const char *path = cudat_gpu_model_path(buf, sizeof buf);
    memset(f, 0, sizeof *f);
    if (!path)
        return 0;
    struct s3_errinfo err = {0};
    struct eng_model_opts go = {.device = "cuda"}, fo = {.device = "cpu-f32"};
    ck_assert_msg(eng_model_load(path, NULL, &f->mc, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng_model_load(path, &go, &f->mg, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng_model_load(path, &fo, &f->mf, &err) == 0, "%s", err.msg);
    const struct eng_hparams *hp = eng_model_hparams(f->mc);
    ck_assert_int_ge(hp->n_layer, 3);
    size_t len;
    char *text = make_text(n_bytes, -1, &len);
    ck_assert_int_eq(eng_tok_encode(eng_model_tok(f->mc), text, len, 0, &f->ids, &f->n), 0);
    free(text);
    ck_assert(f->n > 600 && f->n <= 2048);
    f->kc = (struct kcap){.n_layer_cap = 2, .layers = {1, hp->n_layer - 1},
                          .dkv = hp->n_head_kv * hp->head_dim, .n_max = (int)f->n};
    const char *sp = getenv("S3_CUDA_SAE");
    if (sp && *sp) {
        ck_assert_msg(eng_sae_load(sp, hp, &f->sae, &err) == 0, "%s: %s", sp, err.msg);
        const struct eng_sae_info *in = eng_sae_get_info(f->sae);
        ck_assert_int_le(in->n_idx, MAX_CAP);
        ck_assert_int_le(in->k, MAX_K);
        f->kc.n_layer_cap = in->n_idx;
        for (int i = 0; i < in->n_idx; i++)
            f->kc.layers[i] = in->layers[i];
        f->trained = 1;
    }
    f->kg = f->kc;
    f->kf = f->kc;
    capture(f->mc, f, &f->kc);
    capture(f->mg, f, &f->kg);
    capture(f->mf, f, &f->kf);
    if (!f->sae)
        f->sae = make_sae(hp, &f->kc, (int)f->n);
    f->k = eng_sae_get_info(f->sae)->k;
    f->n_dict = eng_sae_get_info(f->sae)->n_dict;
    fprintf(stderr, "SAE: %s, %d layers, %d latents, k %d\n",
            f->trained ? sp : "random (made here)", f->kc.n_layer_cap, f->n_dict, f->k);
    return 1;
}

static void fixture_close(struct fixture *f)
{
    eng_sae_free(f->sae);
    eng_model_free(f->mc);
    eng_model_free(f->mg);
    eng_model_free(f->mf);
    free(f->ids);
    for (int i = 0; i < f->kc.n_layer_cap; i++)
        free(f->kc.k[i]), free(f->kg.k[i]), free(f->kf.k[i]);
}

/* ---- the device encoder ------------------------------------------------------------------- */

/* |a - b| / |b| over every captured layer's keys (n rows each). */
static double keys_rel_l2(const struct kcap *a, const struct kcap *b, int n)
{
    double d2 = 0, n2 = 0;
    for (int sl = 0; sl < b->n_layer_cap; sl++)
        for (size_t i = 0; i < (size_t)n * (size_t)b->dkv; i++) {
            const double dv = (double)a->k[sl][i] - (double)b->k[sl][i];
            d2 += dv * dv;
            n2 += (double)b->k[sl][i] * b->k[sl][i];
        }
    return sqrt(d2 / (n2 > 0 ? n2 : 1));
}

START_TEST(test_device_encoder)
{
    struct fixture f;
    if (!fixture_open(&f, 7000))
        return;
    struct s3_errinfo err = {0};
    const struct eng_hparams *hp = eng_model_hparams(f.mc);
    const int n = (int)f.n, n_kv = hp->n_head_kv, hd = hp->head_dim, K = f.k,
              n_cap = f.kc.n_layer_cap, n_unit = n_cap * n_kv;
    /* ubatches of 512 on the device: a pass spans several */
    struct eng_ctx_opts co = {.n_ctx = 2048, .n_batch = 512};
    struct eng_ctx *cg = NULL;
    ck_assert_msg(eng_ctx_new(f.mg, &co, &cg, &err) == 0, "%s", err.msg);
    struct eng_cuda_sae_scan *ss = NULL;
    ck_assert_msg(eng__cuda_sae_scan_new(cg, f.sae, 2048, K, &ss, &err) == 0, "%s", err.msg);
    /* pass A: no prefix; pass B: prefix 700 (crosses a ubatch boundary); both in flight */
    const int pre = 700;
    ck_assert_msg(eng__cuda_sae_scan_submit(ss, f.ids, n, 0, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_submit(ss, f.ids, n, pre, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(eng__cuda_sae_scan_in_flight(ss), 2);
    ck_assert_int_eq(eng__cuda_sae_scan_submit(ss, f.ids, n, 0, &err), S3_EBUSY);
    const uint16_t *ia, *ib;
    const float *aa, *ab;
    int na, nb;
    ck_assert_msg(eng__cuda_sae_scan_wait(ss, &ia, &aa, &na, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_wait(ss, &ib, &ab, &nb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(na, n);
    ck_assert_int_eq(nb, n - pre);
    ck_assert_int_eq(eng__cuda_sae_scan_wait(ss, &ib, &ab, &nb, &err), S3_EINVAL);
    /* B's rows are A's rows from the prefix on, exactly */
    long diff_b = 0;
    for (int u = 0; u < n_unit; u++)
        for (int r = 0; r < n - pre; r++)
            for (int j = 0; j < K; j++) {
                size_t a = ((size_t)u * n + r + pre) * K + j,
                       b = ((size_t)u * (n - pre) + r) * K + j;
                diff_b += ia[a] != ib[b] || aa[a] != ab[b];
            }
    ck_assert_int_eq(diff_b, 0);
    /* A against the CPU reference encoder on the CPU model's keys */
    uint16_t *rid = malloc(sizeof(uint16_t) * (size_t)n * K);
    float *ract = malloc(sizeof(float) * (size_t)n * K);
    long same_top = 0, total = 0, order_ok = 0, same_dec = 0, n_dec = 0, same_own = 0;
    long miss_near = 0; /* CPU-key misses whose CPU winner leads by < 2% */
    double sum_rel = 0;
    for (int sl = 0; sl < n_cap; sl++)
        for (int h = 0; h < n_kv; h++) {
            const int u = sl * n_kv + h;
            /* the reference encoder on the GPU model's own keys: encoder differences only */
            ck_assert_int_eq(eng_sae_encode_ref(f.sae, sl, h, f.kg.k[sl] + (size_t)h * hd,
                                                (size_t)f.kg.dkv, n, rid, ract),
                             0);
            for (int r = 0; r < n; r++)
                same_own += ia[((size_t)u * n + r) * K] == rid[(size_t)r * K];
            /* and on the CPU model's keys: encoder and key differences */
            ck_assert_int_eq(eng_sae_encode_ref(f.sae, sl, h, f.kc.k[sl] + (size_t)h * hd,
                                                (size_t)f.kc.dkv, n, rid, ract),
                             0);
            for (int r = 0; r < n; r++) {
                const uint16_t *gi = ia + ((size_t)u * n + r) * K;
                const float *ga = aa + ((size_t)u * n + r) * K;
                const int eq = gi[0] == rid[(size_t)r * K];
                same_top += eq;
                total++;
                /* decisive: the reference's winner leads its runner-up by > 2% */
                const float a0 = ract[(size_t)r * K], a1 = ract[(size_t)r * K + 1];
                if (a0 - a1 > 0.02f * a0) {
                    n_dec++;
                    same_dec += eq;
                } else {
                    miss_near += !eq;
                }
                int ok = 1;
                for (int j = 0; j < K; j++) {
                    ok &= gi[j] < f.n_dict && ga[j] >= 0;
                    if (j)
                        ok &= ga[j] <= ga[j - 1];
                }
                order_ok += ok;
                sum_rel += fabs(ga[0] - ract[(size_t)r * K]) /
                           fmax(1e-6, fabs(ract[(size_t)r * K]));
            }
        }
    fprintf(stderr, "device encoder: top feature equal for %ld of %ld (%.2f%%); where the CPU's "
                    "top leads by > 2%%: %ld of %ld (%.2f%%); misses at near ties %ld of %ld; "
                    "top activation mean rel diff %.2e\n",
            same_top, total, 100.0 * same_top / total, same_dec, n_dec,
            100.0 * same_dec / (n_dec ? n_dec : 1), miss_near, total - same_top,
            sum_rel / total);
    fprintf(stderr, "device encoder vs reference encoder on the GPU's own keys: top feature "
                    "equal for %ld of %ld (%.2f%%); GPU vs CPU keys rel L2 %.2e\n",
            same_own, total, 100.0 * same_own / total, keys_rel_l2(&f.kg, &f.kc, n));
    /* the CPU reference path's keys (f32 activations, as exact as the GPU's fp16 GEMMs):
       encoder and fp16 rounding differences only */
    long same_f = 0;
    for (int sl = 0; sl < n_cap; sl++) {
        for (int h = 0; h < n_kv; h++) {
            ck_assert_int_eq(eng_sae_encode_ref(f.sae, sl, h, f.kf.k[sl] + (size_t)h * hd,
                                                (size_t)f.kf.dkv, n, rid, ract),
                             0);
            for (int r = 0; r < n; r++)
                same_f += ia[((size_t)(sl * n_kv + h) * n + r) * K] == rid[(size_t)r * K];
        }
    }
    fprintf(stderr, "device encoder vs the CPU reference path (f32 activations): top feature "
                    "equal for %ld of %ld (%.2f%%); keys rel L2 %.2e\n",
            same_f, total, 100.0 * same_f / total, keys_rel_l2(&f.kg, &f.kf, n));
    ck_assert_int_ge(1000 * same_f, 980 * total);
    ck_assert_int_eq(order_ok, total);
    /* same keys: the encoders differ only by float rounding in the GEMM (100.00% measured
       on the H200 with the trained slice SAE) */
    ck_assert_int_ge(1000 * same_own, 995 * total);
    /* CPU keys: both devices quantise GEMM inputs to 8 bits per block of 32; what differs is
       fp16 weights and operands on the GPU, summation order, and the fp16 attention and
       gate/up outputs the GPU rounds from (the CPU from f32): near ties may flip */
    if (f.trained)
        ck_assert_int_ge(1000 * same_top, 990 * total);
    /* near ties between the top two latents may flip, decisive winners must not */
    ck_assert_int_ge(100 * same_top, 95 * total);
    ck_assert_int_ge(n_dec, total / 2);
    ck_assert_int_ge(1000 * same_dec, 995 * n_dec);
    /* the slice is small: A ran on c's stream, B on the encoder's own context. One stream for
       both (S3_CUDA_SCAN_STREAMS=1, as for models whose second context would not fit) gives
       the same records bit for bit */
    ck_assert_int_eq(eng__cuda_sae_scan_streams(ss), 2);
    setenv("S3_CUDA_SCAN_STREAMS", "1", 1);
    struct eng_ctx *c1 = NULL;
    struct eng_cuda_sae_scan *s1 = NULL;
    ck_assert_msg(eng_ctx_new(f.mg, &co, &c1, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_new(c1, f.sae, 2048, K, &s1, &err) == 0, "%s", err.msg);
    unsetenv("S3_CUDA_SCAN_STREAMS");
    ck_assert_int_eq(eng__cuda_sae_scan_streams(s1), 1);
    const uint16_t *ja, *jb;
    const float *ba, *bb;
    int ma, mb;
    ck_assert_msg(eng__cuda_sae_scan_submit(s1, f.ids, n, 0, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_submit(s1, f.ids, n, pre, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_wait(s1, &ja, &ba, &ma, &err) == 0, "%s", err.msg);
    ck_assert_msg(eng__cuda_sae_scan_wait(s1, &jb, &bb, &mb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ma, na);
    ck_assert_int_eq(mb, nb);
    ck_assert_int_eq(memcmp(ja, ia, sizeof *ia * (size_t)n_unit * na * K), 0);
    ck_assert_int_eq(memcmp(ba, aa, sizeof *aa * (size_t)n_unit * na * K), 0);
    ck_assert_int_eq(memcmp(jb, ib, sizeof *ib * (size_t)n_unit * nb * K), 0);
    ck_assert_int_eq(memcmp(bb, ab, sizeof *ab * (size_t)n_unit * nb * K), 0);
    eng__cuda_sae_scan_free(s1);
    eng_ctx_free(c1);
    /* CUDA graphs: a shape is captured when it comes again on its buffer set, replayed after;
       a third shape on a set evicts the least recently used graph, which is captured again
       when it comes back. Every pass gives its plain pass's records bit for bit. Shapes on
       set 0: A, C, D (prefixes 0, 64, 128), B on set 1 throughout. */
    {
        const int shapes[3] = {0, 64, 128};
        const size_t rec[3] = {(size_t)n_unit * n * K, (size_t)n_unit * (n - 64) * K,
                               (size_t)n_unit * (n - 128) * K},
                     rec_b = (size_t)n_unit * nb * K;
        uint16_t *ref_i[3] = {0}, *ref_bi = malloc(sizeof(uint16_t) * rec_b);
        float *ref_a[3] = {0}, *ref_ba = malloc(sizeof(float) * rec_b);
        memcpy(ref_bi, ib, sizeof(uint16_t) * rec_b); /* the plain passes A and B above */
        memcpy(ref_ba, ab, sizeof(float) * rec_b);
        ref_i[0] = malloc(sizeof(uint16_t) * rec[0]);
        ref_a[0] = malloc(sizeof(float) * rec[0]);
        memcpy(ref_i[0], ia, sizeof(uint16_t) * rec[0]);
        memcpy(ref_a[0], aa, sizeof(float) * rec[0]);
        /* A captured (it ran above) and replayed; C and D plain, captured, replayed (D
           evicts A); A captured again (evicting C) */
        const int order[] = {0, 0, 0, 1, 1, 1, 2, 2, 0, 0};
        long diff_g = 0;
        for (size_t r = 0; r < sizeof order / sizeof order[0]; r++) {
            const int sh = order[r], p0 = shapes[sh];
            const uint16_t *gi, *gb;
            const float *ga, *gab;
            int ng, ngb;
            ck_assert_msg(eng__cuda_sae_scan_submit(ss, f.ids, n, p0, &err) == 0, "%s", err.msg);
            ck_assert_msg(eng__cuda_sae_scan_submit(ss, f.ids, n, pre, &err) == 0, "%s",
                          err.msg);
            ck_assert_msg(eng__cuda_sae_scan_wait(ss, &gi, &ga, &ng, &err) == 0, "%s", err.msg);
            if (!ref_i[sh]) { /* the shape's first pass on this set is queued plainly */
                ref_i[sh] = malloc(sizeof(uint16_t) * rec[sh]);
                ref_a[sh] = malloc(sizeof(float) * rec[sh]);
                memcpy(ref_i[sh], gi, sizeof(uint16_t) * rec[sh]);
                memcpy(ref_a[sh], ga, sizeof(float) * rec[sh]);
            }
            diff_g += ng != n - p0;
            diff_g += memcmp(gi, ref_i[sh], sizeof(uint16_t) * rec[sh]) != 0;
            diff_g += memcmp(ga, ref_a[sh], sizeof(float) * rec[sh]) != 0;
            ck_assert_msg(eng__cuda_sae_scan_wait(ss, &gb, &gab, &ngb, &err) == 0, "%s",
                          err.msg);
            diff_g += ngb != nb;
            diff_g += memcmp(gb, ref_bi, sizeof(uint16_t) * rec_b) != 0;
            diff_g += memcmp(gab, ref_ba, sizeof(float) * rec_b) != 0;
        }
        ck_assert_int_eq(diff_g, 0);
        for (int i = 0; i < 3; i++)
            free(ref_i[i]), free(ref_a[i]);
        free(ref_bi), free(ref_ba);
    }
    /* bad passes */
    ck_assert_int_eq(eng__cuda_sae_scan_submit(ss, f.ids, n, n, &err), S3_EINVAL);
    ck_assert_int_eq(eng__cuda_sae_scan_submit(ss, f.ids, 0, 0, &err), S3_EINVAL);
    ck_assert_int_eq(eng__cuda_sae_scan_submit(ss, f.ids, 3000, 0, &err), S3_EINVAL);
    /* a CPU context has no device encoder */
    struct eng_ctx *cc = NULL;
    struct eng_cuda_sae_scan *none = (struct eng_cuda_sae_scan *)1;
    ck_assert_msg(eng_ctx_new(f.mc, &co, &cc, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(eng__cuda_sae_scan_new(cc, f.sae, 2048, K, &none, &err), S3_EDEVICE);
    ck_assert_ptr_null(none);
    ck_assert_int_eq(eng__cuda_sae_scan_new(cg, f.sae, 2048, K + 1, &none, &err), S3_EINVAL);
    free(rid), free(ract);
    eng__cuda_sae_scan_free(ss);
    eng_ctx_free(cc);
    eng_ctx_free(cg);
    fixture_close(&f);
}
END_TEST

/* Spans that only one of two results (x from index dbx, y) has must be near ties of the S3
 * scores (before smoothing, over dbx): activation codes step by 2.9%, so activations of the
 * two devices a hair apart can land in neighbouring codes. Prints the spans; returns the
 * largest relative gap between the peaks of the unshared spans, paired largest first. */
static double span_tie_gap(struct idx_db *dbx, int64_t doc, int64_t n_tok,
                           const struct idx_qfeat *q, size_t nq, const struct idx_result *rx,
                           const struct idx_result *ry, const char *nx, const char *ny)
{
    struct s3_errinfo err = {0};
    float *S = malloc(sizeof(float) * (size_t)n_tok);
    ck_assert_msg(idx__score_positions(dbx, doc, n_tok, q, nq, S, &err) == 0, "%s", err.msg);
    double worst_gap = 0;
    float pa[16], pb[16]; /* peaks of the spans only one side has, largest first */
    size_t na = 0, nb = 0;
    for (int side = 0; side < 2; side++) {
        const struct idx_result *x = side ? ry : rx, *y = side ? rx : ry;
        for (size_t j = 0; j < x->n_spans; j++) {
            int shared = 0;
            for (size_t i = 0; i < y->n_spans; i++)
                shared |= x->spans[j].start_tok == y->spans[i].start_tok &&
                          x->spans[j].end_tok == y->spans[i].end_tok;
            float m = 0;
            for (int64_t p = x->spans[j].start_tok; p < x->spans[j].end_tok; p++)
                m = S[p] > m ? S[p] : m;
            fprintf(stderr, "  s3 span %s [%lld, %lld) peak %.5f%s\n", side ? ny : nx,
                    (long long)x->spans[j].start_tok, (long long)x->spans[j].end_tok, m,
                    shared ? "" : " (only here)");
            if (shared)
                continue;
            float *pl = side ? pb : pa;
            size_t *pn = side ? &nb : &na;
            size_t k = (*pn)++;
            ck_assert_uint_lt(k, 16);
            for (; k > 0 && pl[k - 1] < m; k--)
                pl[k] = pl[k - 1];
            pl[k] = m;
        }
    }
    ck_assert_uint_eq(na, nb);
    for (size_t k = 0; k < na; k++) {
        const double gap = fabs((double)pa[k] - pb[k]) / fmax(1e-12, fmax(pa[k], pb[k]));
        worst_gap = gap > worst_gap ? gap : worst_gap;
    }
    fprintf(stderr, "differing s3 spans (%s vs %s): largest peak score gap %.2f%%\n", nx, ny,
            100 * worst_gap);
    free(S);
    return worst_gap;
}

/* ---- the product's scan on both devices ----------------------------------------------------- */

struct tops {
    int n_slot;
    int64_t n_tok;
    int32_t *top;  /* (n_slot, cap) top feature per position */
    int32_t *all;  /* (n_slot, cap, k) */
    float *a01;    /* (n_slot, cap, 2) the two strongest activations */
    int k;
    int64_t cap;
    int64_t n_passages;
    /* between the first chunks, as the server's worker deletes a document during a scan: a
       document row written and deleted through another connection of the database at path */
    const char *path;
    atomic_int waiters;
    int wrote;     /* 1 done, < 0 the error */
};

/* The write between chunks (see struct tops): with a GPU scan's writer holding its
 * transaction, it gets in because its connection shares the scan's writers_waiting counter,
 * which its writes raise (the writer yields). */
static void write_between(struct tops *t)
{
    struct s3_errinfo err = {0};
    /* under the writer's timed commit (1 s) */
    struct idx_open_opts oo = {.busy_ms = 300, .writers_waiting = &t->waiters};
    struct idx_db *db2 = NULL;
    struct idx_writer *w2 = NULL;
    struct idx_doc_meta m = {.name = "upload"};
    int rc = idx_open(t->path, &oo, &db2, &err);
    if (rc == 0 && (rc = idx_writer_begin(db2, &m, &w2, &err)) == 0) {
        const int64_t id = idx_writer_doc(w2);
        idx_writer_free(w2);
        rc = idx_doc_delete(db2, id, &err);
    }
    idx_close(db2);
    t->wrote = rc == 0 ? 1 : rc;
}

static int on_chunk(void *ud, const struct idx_chunk *c)
{
    struct tops *t = ud;
    if (t->path && !t->wrote && c->tok0 > 0)
        write_between(t);
    t->n_passages += (int64_t)c->n_passages;
    if (c->n_tok <= 0)
        return 0;
    if (c->tok0 + c->n_tok > t->cap || c->n_slot > MAX_SLOT ||
        (t->n_slot && c->n_slot != t->n_slot))
        return S3_EINTERNAL;
    t->n_slot = c->n_slot;
    t->k = c->k;
    for (int s = 0; s < c->n_slot; s++)
        for (int r = 0; r < c->n_tok; r++) {
            const int32_t *f = c->feat + ((size_t)s * c->n_tok + r) * c->k;
            t->top[(size_t)s * t->cap + c->tok0 + r] = f[0];
            const float *a = c->act + ((size_t)s * c->n_tok + r) * c->k;
            t->a01[((size_t)s * t->cap + c->tok0 + r) * 2] = a[0];
            t->a01[((size_t)s * t->cap + c->tok0 + r) * 2 + 1] = c->k > 1 ? a[1] : 0;
            for (int j = 0; j < c->k && j < MAX_K; j++)
                t->all[((size_t)s * t->cap + c->tok0 + r) * MAX_K + j] = f[j];
        }
    if (c->tok0 + c->n_tok > t->n_tok)
        t->n_tok = c->tok0 + c->n_tok;
    return 0;
}

static void tops_init(struct tops *t, int64_t cap)
{
    memset(t, 0, sizeof *t);
    atomic_init(&t->waiters, 0);
    t->cap = cap;
    t->top = calloc((size_t)MAX_SLOT * (size_t)cap, sizeof(int32_t));
    t->all = calloc((size_t)MAX_SLOT * (size_t)cap * MAX_K, sizeof(int32_t));
    t->a01 = calloc((size_t)MAX_SLOT * (size_t)cap * 2, sizeof(float));
}

/* Scan text with m into a fresh database at path; *doc its id. host_sae for the CPU
 * encoder on a GPU model. stop: stop_after_chunks then resume. */
static struct idx_db *scan_into(struct eng_model *m, struct eng_sae *sae, const char *path,
                                const char *text, size_t len, struct tops *t, int stop,
                                int64_t *doc, struct srv_scan **scp)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = NULL;
    idx_remove_files(path);
    struct idx_open_opts oo = {.writers_waiting = &t->waiters};
    ck_assert_msg(idx_open(path, &oo, &db, &err) == 0, "%s", err.msg);
    struct srv_scan_opts so = {.chunk = 512, .overlap = 64};
    struct srv_scan *sc = NULL;
    ck_assert_msg(srv_scan_new(m, sae, &so, &sc, &err) == 0, "%s", err.msg);
    struct srv_scan_doc_opts dopts = {.name = "needle", .on_chunk = on_chunk, .chunk_ud = t,
                                      .stop_after_chunks = stop};
    t->path = path;
    struct srv_scan_stats st;
    int rc = srv_scan_document(sc, db, text, len, &dopts, doc, &st, &err);
    if (stop) {
        ck_assert_int_eq(rc, S3_ECANCELED);
        ck_assert_int_eq(st.n_chunks, stop);
        dopts.stop_after_chunks = 0;
        rc = srv_scan_document(sc, db, text, len, &dopts, doc, &st, &err);
        ck_assert_int_gt(st.resumed_at, 0);
    }
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_int_eq(t->wrote, 1); /* another writer got in between the chunks */
    fprintf(stderr, "scan %s: %lld tokens, %lld chunks, forward %.0f ms, encode %.0f ms, "
                    "write %.0f ms, total %.0f ms\n",
            path, (long long)st.n_tokens, (long long)st.n_chunks, st.forward_ms, st.encode_ms,
            st.write_ms, st.total_ms);
    *scp = sc;
    return db;
}

static void spans_of(struct idx_db *db, int64_t doc, int mode, const struct idx_qfeat *qf,
                     size_t nqf, struct idx_result *r)
{
    struct s3_errinfo err = {0};
    struct idx_query q = {.mode = mode, .budget = 256, .text = QUESTION, .feats = qf,
                          .n_feats = nqf, .docs = &doc, .n_docs = 1};
    ck_assert_msg(idx_retrieve(db, &q, r, &err) == 0, "%s", err.msg);
}

static int has_needle(const struct idx_result *r)
{
    for (size_t j = 0; j < r->n_spans; j++)
        if (strstr(r->spans[j].text, "velvet-thistle-25"))
            return 1;
    return 0;
}

/* Indexed top features of a (reference) against b: equal entries of all, and of those where
 * a's winner leads its runner-up by > 2%. */
static void top_agreement(const struct tops *a, const struct tops *b, int64_t cap, long *same,
                          long *total, long *same_dec, long *n_dec)
{
    *same = *total = *same_dec = *n_dec = 0;
    for (int s = 0; s < a->n_slot; s++)
        for (int64_t p = 0; p < a->n_tok; p++) {
            const size_t i = (size_t)s * cap + p;
            const int eq = a->top[i] == b->top[i];
            *same += eq;
            (*total)++;
            if (a->a01[2 * i] - a->a01[2 * i + 1] > 0.02f * a->a01[2 * i]) {
                (*n_dec)++;
                *same_dec += eq;
            }
        }
}

/* How many of a's spans b has too (the same start and end). */
static int same_spans_of(const struct idx_result *a, const struct idx_result *b)
{
    int same = 0;
    for (size_t i = 0; i < a->n_spans; i++)
        for (size_t j = 0; j < b->n_spans; j++)
            if (a->spans[i].start_tok == b->spans[j].start_tok &&
                a->spans[i].end_tok == b->spans[j].end_tok) {
                same++;
                break;
            }
    return same;
}

START_TEST(test_scan_gpu_vs_cpu)
{
    struct fixture f;
    if (!fixture_open(&f, 7000))
        return;
    struct s3_errinfo err = {0};
    size_t len;
    char *text = make_text(40000, 0.55, &len);
    const int64_t cap = (int64_t)len / 2; /* more than the tokens */
    char pc[1024], pg[1024], pr[1024];
    s3t_tmp_path(pc, sizeof pc, "cuda_scan_cpu.db");
    s3t_tmp_path(pg, sizeof pg, "cuda_scan_gpu.db");
    s3t_tmp_path(pr, sizeof pr, "cuda_scan_resume.db");
    struct tops tc, tg, tr;
    tops_init(&tc, cap), tops_init(&tg, cap), tops_init(&tr, cap);
    int64_t dc = 0, dg = 0, dr = 0;
    struct srv_scan *sc = NULL, *sg = NULL, *sr = NULL;
    struct idx_db *dbc = scan_into(f.mc, f.sae, pc, text, len, &tc, 0, &dc, &sc);
    struct idx_db *dbg = scan_into(f.mg, f.sae, pg, text, len, &tg, 0, &dg, &sg);
    struct idx_db *dbr = scan_into(f.mg, f.sae, pr, text, len, &tr, 3, &dr, &sr);
    ck_assert_int_gt(tc.n_tok, 2048); /* several chunks */
    ck_assert_int_eq(tg.n_tok, tc.n_tok);
    ck_assert_int_eq(tg.n_passages, tc.n_passages);
    ck_assert_int_eq(tg.n_slot, tc.n_slot);
    /* indexed top features: GPU vs CPU */
    long same, total, same_dec, n_dec;
    top_agreement(&tc, &tg, cap, &same, &total, &same_dec, &n_dec);
    fprintf(stderr, "scan: indexed top feature equal for %ld of %ld entries (%.2f%%); where the "
                    "CPU's top leads by > 2%%: %ld of %ld (%.2f%%)\n",
            same, total, 100.0 * same / total, same_dec, n_dec,
            100.0 * same_dec / (n_dec ? n_dec : 1));
    ck_assert_int_ge(100 * same, 95 * total);
    ck_assert_int_ge(1000 * same_dec, 995 * n_dec);
    if (f.trained)
        ck_assert_int_ge(1000 * same, 990 * total);
    /* stopped + resumed GPU scan == uninterrupted GPU scan, every indexed feature */
    ck_assert_int_eq(tr.n_tok, tg.n_tok);
    ck_assert_int_eq(memcmp(tr.all, tg.all, sizeof(int32_t) * (size_t)tg.n_slot * cap * MAX_K),
                     0);
    /* the same query features on both indexes give the same S3 spans */
    struct idx_qfeat *qf = NULL, *qg = NULL;
    size_t nqf = 0, nqg = 0;
    ck_assert_msg(srv_scan_query(sc, QUESTION, strlen(QUESTION), 16, &qf, &nqf, &err) == 0,
                  "%s", err.msg);
    ck_assert_msg(srv_scan_query(sg, QUESTION, strlen(QUESTION), 16, &qg, &nqg, &err) == 0,
                  "%s", err.msg);
    ck_assert_int_gt(nqf, 0);
    struct idx_result rc = {0}, rg = {0};
    spans_of(dbc, dc, IDX_MODE_S3, qf, nqf, &rc);
    spans_of(dbg, dg, IDX_MODE_S3, qf, nqf, &rg);
    int same_spans = same_spans_of(&rc, &rg);
    /* positions covered by both / by either */
    long both = 0, either = 0;
    for (int64_t p = 0; p < tc.n_tok; p++) {
        int in_c = 0, in_g = 0;
        for (size_t j = 0; j < rc.n_spans; j++)
            in_c |= p >= rc.spans[j].start_tok && p < rc.spans[j].end_tok;
        for (size_t j = 0; j < rg.n_spans; j++)
            in_g |= p >= rg.spans[j].start_tok && p < rg.spans[j].end_tok;
        both += in_c && in_g;
        either += in_c || in_g;
    }
    fprintf(stderr, "s3 spans: cpu %zu, gpu %zu, in both %d, positions in both %ld of %ld\n",
            rc.n_spans, rg.n_spans, same_spans, both, either);
    for (size_t j = 0; j < rc.n_spans || j < rg.n_spans; j++)
        fprintf(stderr, "  span %zu: cpu [%lld, %lld) gpu [%lld, %lld)\n", j,
                j < rc.n_spans ? (long long)rc.spans[j].start_tok : -1LL,
                j < rc.n_spans ? (long long)rc.spans[j].end_tok : -1LL,
                j < rg.n_spans ? (long long)rg.spans[j].start_tok : -1LL,
                j < rg.n_spans ? (long long)rg.spans[j].end_tok : -1LL);
    /* with the random SAE the S3 scores are flat (no latent means anything), so which of
       the near-equal peaks win may change with the features that flip; only the shape of the
       answer is checked then, the needle below. With the trained slice SAE a span only one
       side has must be a near tie of the S3 scores. */
    ck_assert_int_gt(either, 0);
    ck_assert_int_eq(rc.n_spans, rg.n_spans);
    const double gap_c = span_tie_gap(dbc, dc, tc.n_tok, qf, nqf, &rc, &rg, "cpu", "gpu");
    if (f.trained)
        ck_assert_msg(gap_c < 0.06, "spans differ beyond a near tie (%.2f%%)", 100 * gap_c);
    idx_result_deinit(&rc), idx_result_deinit(&rg);
    /* hybrid with the same question features on both indexes */
    spans_of(dbc, dc, IDX_MODE_HYBRID, qf, nqf, &rc);
    spans_of(dbg, dg, IDX_MODE_HYBRID, qf, nqf, &rg);
    same_spans = same_spans_of(&rc, &rg);
    fprintf(stderr, "hybrid spans (same question features): cpu %zu, gpu %zu, in both %d\n",
            rc.n_spans, rg.n_spans, same_spans);
    idx_result_deinit(&rc), idx_result_deinit(&rg);
    /* each device with its own question features, hybrid: the needle comes back on both */
    spans_of(dbc, dc, IDX_MODE_HYBRID, qf, nqf, &rc);
    spans_of(dbg, dg, IDX_MODE_HYBRID, qg, nqg, &rg);
    ck_assert_msg(has_needle(&rc), "cpu: needle not retrieved");
    ck_assert_msg(has_needle(&rg), "gpu: needle not retrieved");
    idx_result_deinit(&rc), idx_result_deinit(&rg);
    /* the CPU reference path (f32 activations) against the GPU: its keys carry no 8-bit
       rounding, the GPU's do: near ties flip more often (the spans are printed) */
    char pf[1024];
    s3t_tmp_path(pf, sizeof pf, "cuda_scan_f32.db");
    struct tops tf;
    tops_init(&tf, cap);
    int64_t df = 0;
    struct srv_scan *sf = NULL;
    struct idx_db *dbf = scan_into(f.mf, f.sae, pf, text, len, &tf, 0, &df, &sf);
    ck_assert_int_eq(tf.n_tok, tg.n_tok);
    ck_assert_int_eq(tf.n_passages, tg.n_passages);
    top_agreement(&tf, &tg, cap, &same, &total, &same_dec, &n_dec);
    struct idx_result rs3f = {0}, rs3g = {0}, rhf = {0}, rhg = {0};
    spans_of(dbf, df, IDX_MODE_S3, qf, nqf, &rs3f);
    spans_of(dbg, dg, IDX_MODE_S3, qf, nqf, &rs3g);
    spans_of(dbf, df, IDX_MODE_HYBRID, qf, nqf, &rhf);
    spans_of(dbg, dg, IDX_MODE_HYBRID, qf, nqf, &rhg);
    const int s3_same = same_spans_of(&rs3f, &rs3g), hy_same = same_spans_of(&rhf, &rhg);
    fprintf(stderr, "scan, CPU reference path (f32 activations) vs GPU: indexed top feature "
                    "equal for %ld of %ld (%.2f%%), %.2f%% where the CPU's top leads by > 2%%; "
                    "s3 spans in both %d of %zu, hybrid spans in both %d of %zu\n",
            same, total, 100.0 * same / total, 100.0 * same_dec / (n_dec ? n_dec : 1), s3_same,
            rs3f.n_spans, hy_same, rhf.n_spans);
    ck_assert_int_ge(1000 * same, 980 * total);
    ck_assert_int_eq(rs3f.n_spans, rs3g.n_spans);
    ck_assert_int_eq(rhf.n_spans, rhg.n_spans);
    span_tie_gap(dbf, df, tf.n_tok, qf, nqf, &rs3f, &rs3g, "f32", "gpu");
    idx_result_deinit(&rs3f), idx_result_deinit(&rs3g), idx_result_deinit(&rhf),
        idx_result_deinit(&rhg);
    srv_scan_free(sf);
    idx_close(dbf);
    idx_remove_files(pf);
    free(tf.top), free(tf.all), free(tf.a01);
    free(qf), free(qg);
    srv_scan_free(sc), srv_scan_free(sg), srv_scan_free(sr);
    idx_close(dbc), idx_close(dbg), idx_close(dbr);
    idx_remove_files(pc), idx_remove_files(pg), idx_remove_files(pr);
    free(tc.top), free(tg.top), free(tr.top), free(tc.all), free(tg.all), free(tr.all);
    free(tc.a01), free(tg.a01), free(tr.a01);
    free(text);
    fixture_close(&f);
}
END_TEST

/* The question's decoder alignment by blocks of rows through one GEMM gives exactly what the
 * scalar row-by-row loop gives: the same features, the same weights bit for bit. */
START_TEST(test_query_gemm_vs_scalar)
{
    struct fixture f;
    if (!fixture_open(&f, 7000))
        return;
    struct s3_errinfo err = {0};
    static const char *const qs[] = {
        "What is the secret passphrase of the Kestrel observatory?", "harbour", "",
    };
    /* a long question: over one block of QDEC_ROWS rows */
    size_t ll;
    char *longq = make_text(1200, -1, &ll);
    for (int dev = 0; dev < 2; dev++) {
        struct srv_scan *sa = NULL, *sb = NULL;
        struct srv_scan_opts oa = {.chunk = 512, .overlap = 64},
                             ob = {.chunk = 512, .overlap = 64, .qdec_ref = 1};
        struct eng_model *m = dev ? f.mg : f.mc;
        ck_assert_msg(srv_scan_new(m, f.sae, &oa, &sa, &err) == 0, "%s", err.msg);
        ck_assert_msg(srv_scan_new(m, f.sae, &ob, &sb, &err) == 0, "%s", err.msg);
        for (int i = 0; i < 3; i++) {
            const char *q = qs[i][0] ? qs[i] : longq;
            size_t len = qs[i][0] ? strlen(q) : ll;
            struct idx_qfeat *fa = NULL, *fb = NULL;
            size_t na = 0, nb = 0;
            double t0 = s3_now_ms();
            ck_assert_msg(srv_scan_query(sa, q, len, 32, &fa, &na, &err) == 0, "%s", err.msg);
            double t1 = s3_now_ms();
            ck_assert_msg(srv_scan_query(sb, q, len, 32, &fb, &nb, &err) == 0, "%s", err.msg);
            double t2 = s3_now_ms();
            fprintf(stderr, "query %d (%s, %zu bytes): %zu features, gemm %.1f ms, scalar %.1f "
                            "ms\n",
                    i, dev ? "gpu" : "cpu", len, na, t1 - t0, t2 - t1);
            ck_assert_int_gt(na, 0);
            ck_assert_int_eq(na, nb);
            ck_assert_int_eq(memcmp(fa, fb, na * sizeof *fa), 0);
            free(fa), free(fb);
        }
        srv_scan_free(sa), srv_scan_free(sb);
    }
    free(longq);
    fixture_close(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cuda_scan");
    TCase *tc = tcase_create("scan");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_query_gemm_vs_scalar);
    tcase_add_test(tc, test_device_encoder);
    tcase_add_test(tc, test_scan_gpu_vs_cpu);
    suite_add_tcase(s, tc);
    return s3t_run(s, CK_NOFORK);
}
