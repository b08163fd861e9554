/* tests/engine/test_forward.c - the forward pass against llama.cpp (fixtures written by
 * tests/ref/make_fixtures.py): greedy ids and logits, prefill in pieces vs in one go, and the
 * Q/K hook checked against an independent f32 computation from the file's tensors.
 *
 * Skips cleanly when the model or the fixtures are absent. S3_TEST_QUICK=1 checks fewer
 * greedy cases (for sanitizer runs). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_int.h"
#include "gguf.h"
#include "kernels.h"
#include "s3.h"
#include "testutil.h"

/* The CPU backend reproduces llama.cpp's plain CPU path (no extra buffer types; the
 * fixtures say how they were made) bit for bit: the same activation quantisation, the same
 * lane order in every dot product, ggml's expf, the fused multiply-adds GCC forms in its
 * RoPE. Fixture logits are stored rounded to 5 decimals, hence: */
#define LOGIT_TOL 2e-5f /* any stored logit */

static struct eng_model *g_model;
static int g_nv;

static int have_model(void)
{
    if (g_model)
        return 1;
    char *path = s3t_root_path(S3T_MODEL_REL);
    FILE *f = fopen(path, "rb");
    if (!f) {
        s3t_skip_no_model("forward tests");
        free(path);
        return 0;
    }
    fclose(f);
    struct s3_errinfo err = {0};
    struct eng_model_opts mo = {.n_threads = 2};
    int rc = eng_model_load(path, &mo, &g_model, &err);
    free(path);
    ck_assert_msg(rc == 0, "load: %s", err.msg);
    g_nv = eng_model_hparams(g_model)->n_vocab;
    return 1;
}

static int32_t *ids_of(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof(int32_t));
    ck_assert_ptr_nonnull(ids);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

static int32_t argmax(const float *x, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static struct eng_ctx *new_ctx(int n_ctx, int n_batch)
{
    struct eng_ctx *c = NULL;
    struct s3_errinfo err = {0};
    struct eng_ctx_opts co = {.n_ctx = n_ctx, .n_batch = n_batch};
    ck_assert_msg(eng_ctx_new(g_model, &co, &c, &err) == 0, "ctx: %s", err.msg);
    return c;
}

/* ---- greedy continuations ----------------------------------------------------------------- */

START_TEST(greedy_matches_llama_cpp)
{
    if (!have_model())
        return;
    json_t *fx = s3t_fixture_json("greedy.json");
    if (!fx)
        return;
    json_t *cases = json_object_get(fx, "cases");
    ck_assert(json_array_size(cases) > 0);
    struct eng_ctx *c = new_ctx(2048, 0);
    float *lg = malloc((size_t)g_nv * sizeof(float));
    ck_assert_ptr_nonnull(lg);
    size_t n_cases = json_array_size(cases), checked = 0, steps = 0;
    for (size_t ci = 0; ci < n_cases; ci++) {
        if (s3t_quick() && ci % 9 != 0)
            continue;
        json_t *cs = json_array_get(cases, ci);
        const char *name = json_string_value(json_object_get(cs, "name"));
        size_t np, nc;
        int32_t *prompt = ids_of(json_object_get(cs, "prompt_ids"), &np);
        int32_t *want = ids_of(json_object_get(cs, "completion_ids"), &nc);
        eng_ctx_reset(c);
        ck_assert_int_eq(eng_ctx_prefill(c, prompt, np, lg, NULL), 0);
        if (s3t_quick() && nc > 16)
            nc = 16;
        /* free-running greedy decoding: each of our own ids is fed back */
        for (size_t i = 0; i < nc; i++) {
            const int32_t got = argmax(lg, g_nv);
            ck_assert_msg(got == want[i], "case %s step %zu: got %d (%.5f), llama.cpp %d (%.5f)",
                          name, i, got, lg[got], want[i], lg[want[i]]);
            steps++;
            if (i + 1 < nc)
                ck_assert_int_eq(eng_ctx_decode(c, got, lg), 0);
        }
        ck_assert_int_eq(eng_ctx_pos(c), (int)(np + nc - 1));
        checked++;
        free(prompt);
        free(want);
    }
    ck_assert(checked > 0);
    fprintf(stderr, "forward: greedy %zu cases, all %zu steps identical\n", checked, steps);
    free(lg);
    eng_ctx_free(c);
    json_decref(fx);
}
END_TEST

/* ---- logits at every position ----------------------------------------------------------------- */

START_TEST(logits_match_llama_cpp)
{
    if (!have_model())
        return;
    json_t *fx = s3t_fixture_json("logits.json");
    if (!fx)
        return;
    json_t *seqs = json_object_get(fx, "sequences");
    size_t n_fixed;
    int32_t *fixed = ids_of(json_object_get(fx, "fixed_ids"), &n_fixed);
    struct eng_ctx *c = new_ctx(512, 0);
    float maxdiff = 0.0f;
    for (size_t si = 0; si < json_array_size(seqs); si++) {
        if (s3t_quick() && json_array_size(json_object_get(json_array_get(seqs, si), "ids")) > 64)
            continue; /* the short sequences only */
        json_t *sq = json_array_get(seqs, si);
        const char *name = json_string_value(json_object_get(sq, "name"));
        size_t n;
        int32_t *ids = ids_of(json_object_get(sq, "ids"), &n);
        float *all = malloc(n * (size_t)g_nv * sizeof(float));
        float *last = malloc((size_t)g_nv * sizeof(float));
        ck_assert(all && last);
        eng_ctx_reset(c);
        ck_assert_int_eq(eng_ctx_prefill(c, ids, n, last, all), 0);
        ck_assert_mem_eq(last, all + (n - 1) * (size_t)g_nv, (size_t)g_nv * sizeof(float));
        json_t *top1 = json_object_get(sq, "top1"), *top_ids = json_object_get(sq, "top_ids"),
               *top_lg = json_object_get(sq, "top_logits"),
               *fixed_lg = json_object_get(sq, "fixed_logits");
        for (size_t i = 0; i < n; i++) {
            const float *row = all + i * (size_t)g_nv;
            const int32_t want = (int32_t)json_integer_value(json_array_get(top1, i));
            const int32_t got = argmax(row, g_nv);
            ck_assert_msg(got == want, "%s pos %zu: top1 %d, llama.cpp %d", name, i, got, want);
            for (size_t k = 0; k < n_fixed; k++) {
                const float ref =
                    (float)json_real_value(json_array_get(json_array_get(fixed_lg, i), k));
                const float d = fabsf(row[fixed[k]] - ref);
                maxdiff = d > maxdiff ? d : maxdiff;
                ck_assert_msg(d < LOGIT_TOL, "%s pos %zu id %d: %.5f vs %.5f", name, i,
                              fixed[k], row[fixed[k]], ref);
            }
            json_t *ti = json_array_get(top_ids, i), *tl = json_array_get(top_lg, i);
            for (size_t k = 0; k < json_array_size(ti); k++) {
                const int32_t id = (int32_t)json_integer_value(json_array_get(ti, k));
                const float ref = (float)json_real_value(json_array_get(tl, k));
                const float d = fabsf(row[id] - ref);
                maxdiff = d > maxdiff ? d : maxdiff;
                ck_assert_msg(d < LOGIT_TOL, "%s pos %zu top id %d: %.5f vs %.5f", name, i, id,
                              row[id], ref);
            }
        }
        free(all);
        free(last);
        free(ids);
    }
    fprintf(stderr, "forward: |logit - llama.cpp| max %.2g (fixtures keep 5 decimals)\n", maxdiff);
    free(fixed);
    eng_ctx_free(c);
    json_decref(fx);
}
END_TEST

/* ---- prefill in pieces == prefill in one go --------------------------------------------------- */

START_TEST(prefill_pieces_equal_one_shot)
{
    if (!have_model())
        return;
    enum { N = 70 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)((i * 7919 + 13) % g_nv);
    float *a = malloc((size_t)N * g_nv * sizeof(float));
    float *b = malloc((size_t)N * g_nv * sizeof(float));
    float *lg = malloc((size_t)g_nv * sizeof(float));
    ck_assert(a && b && lg);
    struct eng_ctx *c1 = new_ctx(256, 0);
    ck_assert_int_eq(eng_ctx_prefill(c1, ids, N, NULL, a), 0);
    /* pieces of 1, 5, 31 tokens, then n_batch-limited splitting (16) for the rest */
    struct eng_ctx *c2 = new_ctx(256, 16);
    ck_assert_int_eq(eng_ctx_prefill(c2, ids, 1, NULL, b), 0);
    ck_assert_int_eq(eng_ctx_prefill(c2, ids + 1, 5, NULL, b + 1 * (size_t)g_nv), 0);
    ck_assert_int_eq(eng_ctx_prefill(c2, ids + 6, 31, NULL, b + 6 * (size_t)g_nv), 0);
    ck_assert_int_eq(eng_ctx_prefill(c2, ids + 37, N - 37, lg, b + 37 * (size_t)g_nv), 0);
    ck_assert_int_eq(eng_ctx_pos(c2), N);
    /* the computation per token does not depend on the batching: bit-identical */
    for (size_t i = 0; i < (size_t)N * g_nv; i++)
        ck_assert_msg(a[i] == b[i], "logit %zu: %.7f vs %.7f", i, a[i], b[i]);
    ck_assert_mem_eq(lg, a + (N - 1) * (size_t)g_nv, (size_t)g_nv * sizeof(float));
    /* decode of one token == the same position in a prefill */
    eng_ctx_reset(c2);
    ck_assert_int_eq(eng_ctx_prefill(c2, ids, N - 1, NULL, NULL), 0);
    ck_assert_int_eq(eng_ctx_decode(c2, ids[N - 1], lg), 0);
    ck_assert_mem_eq(lg, a + (N - 1) * (size_t)g_nv, (size_t)g_nv * sizeof(float));
    /* overflow is refused, the cache untouched */
    ck_assert_int_eq(eng_ctx_prefill(c2, ids, 256 - N + 1, NULL, NULL), S3_ETOOBIG);
    ck_assert_int_eq(eng_ctx_pos(c2), N);
    /* bad token ids */
    int32_t bad = g_nv;
    ck_assert_int_eq(eng_ctx_decode(c2, bad, lg), S3_EINVAL);
    eng_ctx_free(c1);
    eng_ctx_free(c2);
    free(a);
    free(b);
    free(lg);
}
END_TEST

/* ---- Q/K hook ------------------------------------------------------------------------------------ */

struct hook_rec {
    int calls, layers_seen[64], pos0, n_tokens;
    float *k0;      /* copy of layer 0 K (n_tokens, kv_dim) */
    float *q0;
    int cancel_at;  /* layer at which to cancel, or -1 */
};

static int hook_fn(void *ud, int layer, int pos0, int n_tokens, const float *q, const float *k)
{
    struct hook_rec *r = ud;
    const struct eng_hparams *hp = eng_model_hparams(g_model);
    r->layers_seen[r->calls++] = layer;
    r->pos0 = pos0;
    r->n_tokens = n_tokens;
    if (layer == 0) {
        const size_t nk = (size_t)n_tokens * hp->n_head_kv * hp->head_dim;
        const size_t nq = (size_t)n_tokens * hp->n_head * hp->head_dim;
        r->k0 = realloc(r->k0, nk * sizeof(float));
        r->q0 = realloc(r->q0, nq * sizeof(float));
        memcpy(r->k0, k, nk * sizeof(float));
        memcpy(r->q0, q, nq * sizeof(float));
    }
    return layer == r->cancel_at;
}

/* y = W x with W dequantised from the file (rows of n_in), plain f32. */
static void ref_matvec(const struct eng_gguf_tensor *t, const float *x, int n_in, int n_out,
                       float *y)
{
    float *row = malloc((size_t)n_in * sizeof(float));
    ck_assert_ptr_nonnull(row);
    const size_t rb = krn_type_row_bytes(t->type, n_in);
    for (int r = 0; r < n_out; r++) {
        ck_assert_int_eq(krn_dequant(t->type, (const uint8_t *)t->data + r * rb, row, n_in), 0);
        double s = 0;
        for (int i = 0; i < n_in; i++)
            s += (double)row[i] * x[i];
        y[r] = (float)s;
    }
    free(row);
}

/* Layer-0 K and Q of tokens ids[0..n), computed independently (rmsnorm of the dequantised
 * embedding through the dequantised matrices, sums in double), against k0, q0 (n rows):
 * the largest error of any row relative to that row's largest magnitude. */
static void layer0_err(const int32_t *ids, int n, const float *k0, const float *q0, float *kerr,
                       float *qerr)
{
    const struct eng_hparams *hp = eng_model_hparams(g_model);
    const int d = hp->n_embd, dkv = hp->n_head_kv * hp->head_dim, dq = hp->n_head * hp->head_dim;
    struct s3_errinfo err = {0};
    struct eng_gguf *g = NULL;
    char *path = s3t_root_path(S3T_MODEL_REL);
    ck_assert_int_eq(eng_gguf_open(path, &g, &err), 0);
    free(path);
    const struct eng_gguf_tensor *te = eng_gguf_tensor_by_name(g, "token_embd.weight");
    const struct eng_gguf_tensor *tn = eng_gguf_tensor_by_name(g, "blk.0.attn_norm.weight");
    const struct eng_gguf_tensor *tk = eng_gguf_tensor_by_name(g, "blk.0.attn_k.weight");
    const struct eng_gguf_tensor *tq = eng_gguf_tensor_by_name(g, "blk.0.attn_q.weight");
    ck_assert(te && tn && tk && tq && tn->type == 0);
    float *x = malloc((size_t)d * sizeof(float)), *kr = malloc((size_t)dkv * sizeof(float));
    float *qr = malloc((size_t)dq * sizeof(float));
    ck_assert(x && kr && qr);
    *kerr = *qerr = 0;
    for (int t = 0; t < n; t++) {
        const size_t rb = krn_type_row_bytes(te->type, d);
        ck_assert_int_eq(krn_dequant(te->type, (const uint8_t *)te->data + ids[t] * rb, x, d), 0);
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += (double)x[i] * x[i];
        const float sc = (float)(1.0 / sqrt(ss / d + hp->rms_eps));
        for (int i = 0; i < d; i++)
            x[i] = x[i] * sc * ((const float *)tn->data)[i];
        ref_matvec(tk, x, d, dkv, kr);
        ref_matvec(tq, x, d, dq, qr);
        float kmax = 0, ke = 0, qmax = 0, qe = 0;
        for (int i = 0; i < dkv; i++) {
            kmax = fmaxf(kmax, fabsf(kr[i]));
            ke = fmaxf(ke, fabsf(kr[i] - k0[(size_t)t * dkv + i]));
        }
        for (int i = 0; i < dq; i++) {
            qmax = fmaxf(qmax, fabsf(qr[i]));
            qe = fmaxf(qe, fabsf(qr[i] - q0[(size_t)t * dq + i]));
        }
        *kerr = fmaxf(*kerr, ke / kmax);
        *qerr = fmaxf(*qerr, qe / qmax);
    }
    free(x);
    free(kr);
    free(qr);
    eng_gguf_close(g);
}

START_TEST(qk_hook_sees_pre_rope_projections)
{
    if (!have_model())
        return;
    const struct eng_hparams *hp = eng_model_hparams(g_model);
    enum { N = 6 };
    const int32_t ids[N] = {1, 504, 3400, 28, 19934, 30};
    struct eng_ctx *c = new_ctx(64, 0);
    struct hook_rec rec = {.cancel_at = -1};
    const uint64_t mask = (1ull << 0) | (1ull << 7) | (1ull << (hp->n_layer - 1));
    eng_ctx_set_qk_hook(c, hook_fn, &rec, mask);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, 2, NULL, NULL), 0);
    ck_assert_int_eq(rec.calls, 3);
    ck_assert_int_eq(rec.layers_seen[0], 0);
    ck_assert_int_eq(rec.layers_seen[1], 7);
    ck_assert_int_eq(rec.layers_seen[2], hp->n_layer - 1);
    rec.calls = 0;
    ck_assert_int_eq(eng_ctx_prefill(c, ids + 2, N - 2, NULL, NULL), 0);
    ck_assert_int_eq(rec.calls, 3);
    ck_assert_int_eq(rec.pos0, 2);
    ck_assert_int_eq(rec.n_tokens, N - 2);

    /* independent layer-0 K and Q: int8 activations, error well below 2% of the row's scale */
    float kerr, qerr;
    layer0_err(ids + 2, N - 2, rec.k0, rec.q0, &kerr, &qerr);
    ck_assert_msg(kerr < 0.02f, "K err %.4f of the row's max", kerr);
    ck_assert_msg(qerr < 0.02f, "Q err %.4f of the row's max", qerr);
    /* a hook's nonzero return cancels the pass */
    rec.cancel_at = 7;
    rec.calls = 0;
    ck_assert_int_eq(eng_ctx_prefill(c, ids, 2, NULL, NULL), S3_ECANCELED);
    ck_assert_int_eq(rec.calls, 2);
    /* the cancel flag too */
    eng_ctx_set_qk_hook(c, NULL, NULL, 0);
    volatile int flag = 1;
    eng_ctx_set_cancel(c, &flag);
    eng_ctx_reset(c);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, 2, NULL, NULL), S3_ECANCELED);
    eng_ctx_set_cancel(c, NULL);
    free(rec.k0);
    free(rec.q0);
    eng_ctx_free(c);
}
END_TEST

/* The f32 reference path (device cpu-f32): layer-0 K and Q within float rounding of
 * the double reference (the int8 path is ~100x further away), and the same greedy choices as
 * the int8 path wherever those are not near ties. */
START_TEST(f32_activations_are_exact)
{
    if (!have_model())
        return;
    struct s3_errinfo err = {0};
    struct eng_model *mf = NULL;
    char *path = s3t_root_path(S3T_MODEL_REL);
    struct eng_model_opts mo = {.n_threads = 2, .device = "cpu-f32"};
    ck_assert_msg(eng_model_load(path, &mo, &mf, &err) == 0, "%s", err.msg);
    free(path);
    enum { N = 5 };
    const int32_t ids[N] = {504, 3400, 28, 19934, 30};
    struct eng_ctx *cf = NULL, *c8 = new_ctx(64, 0);
    struct eng_ctx_opts co = {.n_ctx = 64};
    ck_assert_int_eq(eng_ctx_new(mf, &co, &cf, &err), 0);
    struct hook_rec rf = {.cancel_at = -1}, r8 = {.cancel_at = -1};
    eng_ctx_set_qk_hook(cf, hook_fn, &rf, 1);
    eng_ctx_set_qk_hook(c8, hook_fn, &r8, 1);
    float *lf = malloc((size_t)N * g_nv * sizeof(float)), *l8 = malloc((size_t)N * g_nv *
                                                                        sizeof(float));
    ck_assert(lf && l8);
    ck_assert_int_eq(eng_ctx_prefill(cf, ids, N, NULL, lf), 0);
    ck_assert_int_eq(eng_ctx_prefill(c8, ids, N, NULL, l8), 0);
    float kf, qf, k8, q8;
    layer0_err(ids, N, rf.k0, rf.q0, &kf, &qf);
    layer0_err(ids, N, r8.k0, r8.q0, &k8, &q8);
    fprintf(stderr, "layer 0 vs double reference (of the row's max): f32 path K %.2e Q %.2e, "
                    "int8 path K %.2e Q %.2e\n", kf, qf, k8, q8);
    ck_assert_msg(kf < 1e-5f && qf < 1e-5f, "f32 path: K %.2e Q %.2e", kf, qf);
    ck_assert(k8 > 10 * kf && q8 > 10 * qf);
    for (int t = 0; t < N; t++) {
        const float *a = lf + (size_t)t * g_nv, *b = l8 + (size_t)t * g_nv;
        const int32_t ta = argmax(a, g_nv), tb = argmax(b, g_nv);
        ck_assert_msg(ta == tb || b[tb] - b[ta] < 1.0f, "pos %d: f32 %d int8 %d", t, ta, tb);
    }
    /* decode goes the same way (one token) */
    ck_assert_int_eq(eng_ctx_decode(cf, 30, lf), 0);
    ck_assert_int_eq(eng_ctx_decode(c8, 30, l8), 0);
    free(lf);
    free(l8);
    free(rf.k0), free(rf.q0), free(r8.k0), free(r8.q0);
    eng_ctx_free(cf);
    eng_ctx_free(c8);
    eng_model_free(mf);
}
END_TEST

/* ---- generation ----------------------------------------------------------------------------- */

struct emit_buf {
    char text[4096];
    size_t n;
    int calls, stop_after;
};

static int emit_cb(void *ud, const char *t, size_t n)
{
    struct emit_buf *b = ud;
    ck_assert(b->n + n < sizeof(b->text));
    memcpy(b->text + b->n, t, n);
    b->n += n;
    b->text[b->n] = '\0';
    return ++b->calls == b->stop_after;
}

/* Scan mode stops after the last hooked layer; what the hooks see must not change. */
struct kq_capture {
    float *k[2], *q[2];
    int layers[2], n;
};

static int capture_fn(void *ud, int layer, int pos0, int n_tokens, const float *q, const float *k)
{
    struct kq_capture *cap = ud;
    const struct eng_hparams *hp = eng_model_hparams(g_model);
    const size_t nk = (size_t)(pos0 + n_tokens) * hp->n_head_kv * hp->head_dim;
    const size_t nq = (size_t)(pos0 + n_tokens) * hp->n_head * hp->head_dim;
    const int slot = layer == cap->layers[0] ? 0 : 1;
    cap->k[slot] = realloc(cap->k[slot], nk * sizeof(float));
    cap->q[slot] = realloc(cap->q[slot], nq * sizeof(float));
    ck_assert(cap->k[slot] && cap->q[slot]);
    memcpy(cap->k[slot] + (size_t)pos0 * hp->n_head_kv * hp->head_dim, k,
           (size_t)n_tokens * hp->n_head_kv * hp->head_dim * sizeof(float));
    memcpy(cap->q[slot] + (size_t)pos0 * hp->n_head * hp->head_dim, q,
           (size_t)n_tokens * hp->n_head * hp->head_dim * sizeof(float));
    cap->n++;
    return 0;
}

START_TEST(scan_mode_keeps_hooked_projections)
{
    if (!have_model())
        return;
    const struct eng_hparams *hp = eng_model_hparams(g_model);
    enum { N = 40 };
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)((i * 104729 + 7) % g_nv);
    struct kq_capture full = {.layers = {3, 8}}, scan = {.layers = {3, 8}};
    const uint64_t mask = (1ull << 3) | (1ull << 8);
    /* ubatches of 16 tokens, so later ubatches read the KV earlier ones wrote */
    struct eng_ctx *c = new_ctx(64, 16);
    eng_ctx_set_qk_hook(c, capture_fn, &full, mask);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, N, NULL, NULL), 0);
    eng_ctx_reset(c);
    eng_ctx_set_scan_only(c, 1);
    eng_ctx_set_qk_hook(c, capture_fn, &scan, mask);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, N, NULL, NULL), 0);
    ck_assert_int_eq(eng_ctx_pos(c), N);
    ck_assert_int_eq(full.n, 6);
    ck_assert_int_eq(scan.n, 6);
    for (int s = 0; s < 2; s++) {
        ck_assert_mem_eq(full.k[s], scan.k[s],
                         (size_t)N * hp->n_head_kv * hp->head_dim * sizeof(float));
        ck_assert_mem_eq(full.q[s], scan.q[s],
                         (size_t)N * hp->n_head * hp->head_dim * sizeof(float));
    }
    /* a prefill that asks for logits runs every layer even in scan mode */
    float *lg = malloc((size_t)g_nv * sizeof(float)), *ref = malloc((size_t)g_nv * sizeof(float));
    ck_assert(lg && ref);
    eng_ctx_reset(c);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, N, lg, NULL), 0);
    eng_ctx_set_scan_only(c, 0);
    eng_ctx_reset(c);
    ck_assert_int_eq(eng_ctx_prefill(c, ids, N, ref, NULL), 0);
    ck_assert_mem_eq(lg, ref, (size_t)g_nv * sizeof(float));
    for (int s = 0; s < 2; s++) {
        free(full.k[s]);
        free(full.q[s]);
        free(scan.k[s]);
        free(scan.q[s]);
    }
    free(lg);
    free(ref);
    eng_ctx_free(c);
}
END_TEST

START_TEST(generate_greedy_stop_and_cancel)
{
    if (!have_model())
        return;
    json_t *fx = s3t_fixture_json("greedy.json");
    if (!fx)
        return;
    /* the first raw case without an early EOG: text equals llama.cpp's detokenised ids */
    json_t *cs = json_array_get(json_object_get(fx, "cases"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(cs, "first_eog")), -1);
    size_t np, nc;
    int32_t *prompt = ids_of(json_object_get(cs, "prompt_ids"), &np);
    int32_t *want = ids_of(json_object_get(cs, "completion_ids"), &nc);
    const int n_gen = 16;
    char *want_text = NULL;
    size_t want_len = 0;
    ck_assert_int_eq(eng_tok_decode(eng_model_tok(g_model), want, n_gen, 0, &want_text,
                                    &want_len), 0);
    struct eng_ctx *c = new_ctx(256, 0);
    struct eng_gen_params gp = {.sample = {.temperature = 0.0f}, .max_tokens = n_gen};
    struct eng_gen_result res;
    struct emit_buf b = {0};
    struct s3_errinfo err = {0};
    ck_assert_int_eq(eng_generate(c, prompt, np, &gp, emit_cb, &b, &res, &err), 0);
    ck_assert_int_eq(res.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(res.n_completion, n_gen);
    ck_assert_int_eq(res.n_prompt, (int)np);
    ck_assert_uint_eq(b.n, want_len);
    ck_assert_mem_eq(b.text, want_text, want_len);
    /* a stop string taken from the middle of that text: output is the text before it */
    if (want_len > 12) {
        char stop[8];
        memcpy(stop, want_text + 8, 4);
        stop[4] = '\0';
        const char *stops[] = {"\x01never", stop};
        const char *hit = strstr(want_text, stop);
        gp.stop = stops;
        gp.n_stop = 2;
        struct emit_buf b2 = {0};
        ck_assert_int_eq(eng_generate(c, prompt, np, &gp, emit_cb, &b2, &res, &err), 0);
        ck_assert_int_eq(res.finish, ENG_FINISH_STOP);
        ck_assert_uint_eq(b2.n, (size_t)(hit - want_text));
        ck_assert_mem_eq(b2.text, want_text, b2.n);
        gp.stop = NULL;
        gp.n_stop = 0;
    }
    /* the emit callback cancels */
    struct emit_buf b3 = {.stop_after = 2};
    ck_assert_int_eq(eng_generate(c, prompt, np, &gp, emit_cb, &b3, &res, &err), 0);
    ck_assert_int_eq(res.finish, ENG_FINISH_CANCEL);
    ck_assert_int_eq(b3.calls, 2);
    free(want_text);
    free(prompt);
    free(want);
    eng_ctx_free(c);
    json_decref(fx);
}
END_TEST

/* eng__ctx_prefill_pick, the step eng_generate takes: on the CPU the last token's logits and
 * the sampler's pick on them, the same as eng_ctx_prefill then eng_sampler_sample with the
 * same seed; bad arguments and a prompt past the context are refused. */
START_TEST(prefill_pick_contract)
{
    if (!have_model())
        return;
    const int nv = eng_model_hparams(g_model)->n_vocab;
    struct eng_ctx *c = new_ctx(64, 0);
    int32_t prompt[12];
    for (int i = 0; i < 12; i++)
        prompt[i] = 100 + 37 * i;
    float *la = malloc(sizeof(float) * nv), *lb = malloc(sizeof(float) * nv);
    const struct eng_sample_params sp = {.temperature = 0.9f, .top_p = 0.95f, .seed = 5};
    struct eng_sampler *sa = NULL, *sb = NULL;
    ck_assert_int_eq(eng_sampler_new(&sp, nv, &sa), 0);
    ck_assert_int_eq(eng_sampler_new(&sp, nv, &sb), 0);
    int32_t ta = -1, tb;
    ck_assert_int_eq(eng__ctx_prefill_pick(c, prompt, 12, sa, la, &ta), 0);
    ck_assert_int_eq(eng_ctx_pos(c), 12);
    for (int s = 0; s < 6; s++) { /* decode steps */
        const int32_t cur = ta;
        ck_assert_int_eq(eng__ctx_prefill_pick(c, &cur, 1, sa, la, &ta), 0);
    }
    eng_ctx_reset(c);
    ck_assert_int_eq(eng_ctx_prefill(c, prompt, 12, lb, NULL), 0);
    tb = eng_sampler_sample(sb, lb);
    for (int s = 0; s < 6; s++) {
        ck_assert_int_eq(eng_ctx_decode(c, tb, lb), 0);
        tb = eng_sampler_sample(sb, lb);
    }
    ck_assert_int_eq(ta, tb);
    ck_assert_int_eq(eng_ctx_pos(c), 18);
    /* refused: no tokens, no sampler, no logits or output, a prompt past the context */
    int32_t t = 0;
    ck_assert_int_eq(eng__ctx_prefill_pick(c, prompt, 0, sa, la, &t), S3_EINVAL);
    ck_assert_int_eq(eng__ctx_prefill_pick(c, NULL, 1, sa, la, &t), S3_EINVAL);
    ck_assert_int_eq(eng__ctx_prefill_pick(c, prompt, 1, NULL, la, &t), S3_EINVAL);
    ck_assert_int_eq(eng__ctx_prefill_pick(c, prompt, 1, sa, NULL, &t), S3_EINVAL);
    ck_assert_int_eq(eng__ctx_prefill_pick(c, prompt, 1, sa, la, NULL), S3_EINVAL);
    eng_ctx_reset(c);
    int32_t *longp = calloc(65, sizeof(int32_t));
    ck_assert_int_eq(eng__ctx_prefill_pick(c, longp, 65, sa, la, &t), S3_ETOOBIG);
    ck_assert_int_eq(eng_ctx_pos(c), 0);
    /* a token outside the vocabulary */
    const int32_t bad = nv;
    ck_assert_int_eq(eng__ctx_prefill_pick(c, &bad, 1, sa, la, &t), S3_EINVAL);
    free(longp), free(la), free(lb);
    eng_sampler_free(sa), eng_sampler_free(sb);
    eng_ctx_free(c);
}
END_TEST

START_TEST(load_errors)
{
    struct eng_model *m = (struct eng_model *)1;
    struct s3_errinfo err = {0};
    ck_assert_int_lt(eng_model_load("/nonexistent/model.gguf", NULL, &m, &err), 0);
    ck_assert_ptr_null(m);
    ck_assert(err.msg[0] != '\0');
    ck_assert_int_eq(eng_model_load(NULL, NULL, &m, &err), S3_EINVAL);
}
END_TEST

static Suite *forward_suite(void)
{
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, load_errors);
    tcase_add_test(tc, greedy_matches_llama_cpp);
    tcase_add_test(tc, logits_match_llama_cpp);
    tcase_add_test(tc, prefill_pieces_equal_one_shot);
    tcase_add_test(tc, qk_hook_sees_pre_rope_projections);
    tcase_add_test(tc, f32_activations_are_exact);
    tcase_add_test(tc, scan_mode_keeps_hooked_projections);
    tcase_add_test(tc, generate_greedy_stop_and_cancel);
    tcase_add_test(tc, prefill_pick_contract);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const int rc = s3t_run(forward_suite(), CK_FORK_GETENV);
    eng_model_free(g_model);
    return rc;
}
