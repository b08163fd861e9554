/* server/scan.c - the scan driver and the query encoder (see scan.h). */
#include "scan.h"

#include "cuda_forward.h"
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_WINDOW  (64 * 1024)   /* bytes of text tokenized at a time */
#define ENC_ROWS    512           /* rows of the SAE encoder's scratch */
#define SENT_SOFT   40            /* past this many tokens a sentence splits at a space */
#define QDEC_ROWS   64            /* query rows per decoder-alignment GEMM */

/* ---- the scanner -------------------------------------------------------------------------- */

struct srv_scan {
    const struct eng_model *m;       /* borrowed */
    const struct eng_sae *sae;       /* borrowed */
    struct eng_ctx *ctx;             /* owned */
    struct eng_sae_enc *enc;         /* owned */
    char sae_hash[65];
    int B, W;
    int n_idx, n_kv, n_head, d, K, n_dict;
    int KI;                          /* features indexed per token and slot (<= K) */
    int last_layer;                  /* deepest indexed layer */
    int n_slot;                      /* n_idx * n_kv */
    struct idx_slot *slots;          /* (n_slot) slot s = (layer of s / n_kv, s % n_kv) */
    /* per forward pass (hook state) */
    int mode;                        /* 0 = scan keys, 1 = query */
    int prefix;                      /* rows of the pass that are a re-read prefix */
    int n_rows;                      /* rows of the pass */
    int n_out;                       /* rows after the prefix (= chunk n_tok) */
    int early;                       /* the hook stopped the pass after the last layer */
    int row0;                        /* chunk row of the first row being encoded */
    int32_t *feat;                   /* (n_slot, B, K) */
    float *act;                      /* (n_slot, B, K) */
    uint16_t *ids16;                 /* (ENC_ROWS, K) */
    float *acts16;                   /* (ENC_ROWS, K) */
    float *qsum;                     /* (n_slot, n_dict) query mode */
    const float **wdec;              /* (n_slot) decoder rows (n_dict, d) of each SAE, borrowed */
    int qmethod;                     /* enum srv_scan_qmethod */
    float *dots;                     /* (QDEC_ROWS, n_dict) query mode: q . W_dec[f] */
    float *qc;                       /* (1 + QDEC_ROWS, d) query mode: mean row, rows */
    float *wmax;                     /* (n_slot) largest decoder row norm of each SAE */
    int32_t *cand;                   /* (n_dict) candidate features of one row */
    float *cval;                     /* (n_dict) their exact dots */
    int qdec_ref;                    /* 1: the scalar decoder alignment (opts) */
    double encode_ms;
    struct eng_cuda_sae_scan *dev_sae; /* owned, or NULL: keys encoded on the device (GPU) */
};

const char *srv_scan_default_sae(const char *model_path, char *buf, size_t n)
{
    const char *base = strrchr(model_path, '/');
    base = base ? base + 1 : model_path;
    size_t len = strlen(base);
    if (len > 5 && strcmp(base + len - 5, ".gguf") == 0)
        len -= 5;
    snprintf(buf, n, "models/sae-%.*s.s3sae", (int)len, base);
    return buf;
}

void srv_scan_free(struct srv_scan *sc)
{
    if (!sc)
        return;
    eng__cuda_sae_scan_free(sc->dev_sae); /* before the context it borrows */
    eng_ctx_free(sc->ctx);
    eng_sae_enc_free(sc->enc);
    free(sc->slots);
    free(sc->feat);
    free(sc->act);
    free(sc->ids16);
    free(sc->acts16);
    free(sc->qsum);
    free(sc->wdec);
    free(sc->dots);
    free(sc->qc);
    free(sc->wmax);
    free(sc->cand);
    free(sc->cval);
    free(sc);
}

struct eng_ctx *srv_scan_ctx(struct srv_scan *sc)
{
    return sc ? sc->ctx : NULL;
}

int srv_scan_new(const struct eng_model *m, struct eng_sae *s, const struct srv_scan_opts *opts,
                 struct srv_scan **out, struct s3_errinfo *err)
{
    struct srv_scan *sc = NULL;
    int rc;
    *out = NULL;
    if (!m || !s)
        return s3_errf(err, S3_EINVAL, "scan: no model or SAE");
    const struct eng_hparams *hp = eng_model_hparams(m);
    rc = eng_sae_check_model(s, hp, err);
    if (rc < 0)
        return rc;
    const struct eng_sae_info *in = eng_sae_get_info(s);
    int B = opts && opts->chunk ? opts->chunk : SRV_SCAN_CHUNK;
    int W = opts && opts->overlap ? (opts->overlap < 0 ? 0 : opts->overlap) : SRV_SCAN_OVERLAP;
    if (B < 16 || W >= B || B + W > hp->n_ctx_train)
        return s3_errf(err, S3_EINVAL,
                       "scan: chunk %d + overlap %d must fit the model window of %d tokens"
                       " (chunk >= 16, overlap < chunk)",
                       B, W, hp->n_ctx_train);
    int n_ctx = opts && opts->n_ctx > 0 ? opts->n_ctx : B + W;
    if (n_ctx < B + W)
        n_ctx = B + W;
    n_ctx = (n_ctx + 63) / 64 * 64; /* whole vector blocks for the attention kernels */
    if (n_ctx > hp->n_ctx_train)
        n_ctx = hp->n_ctx_train;
    sc = calloc(1, sizeof *sc);
    if (!sc)
        return s3_errf(err, S3_ENOMEM, "scan: out of memory");
    sc->m = m;
    sc->sae = s;
    sc->B = B;
    sc->W = W;
    sc->n_idx = in->n_idx;
    sc->n_kv = in->n_head_kv;
    sc->n_head = in->n_head;
    sc->d = in->d_head;
    sc->K = in->k;
    sc->KI = opts && opts->index_k > 0 && opts->index_k < in->k ? opts->index_k
             : in->k < SRV_SCAN_INDEX_K ? in->k : SRV_SCAN_INDEX_K;
    if (opts && opts->index_k < 0)
        sc->KI = in->k;
    sc->n_dict = in->n_dict;
    sc->last_layer = in->layers[in->n_idx - 1];
    sc->n_slot = in->n_idx * in->n_head_kv;
    const void *img;
    size_t img_n;
    eng_sae_image(s, &img, &img_n);
    if (img_n >= 64) {
        memcpy(sc->sae_hash, (const char *)img + img_n - 64, 64);
        sc->sae_hash[64] = 0;
    }
    struct eng_ctx_opts co = {.n_ctx = n_ctx, .n_batch = n_ctx};
    rc = eng_ctx_new(m, &co, &sc->ctx, err);
    if (rc < 0)
        goto out;
    /* on a GPU the keys are encoded there, records copied back (the host SAE encodes queries) */
    if (eng__cuda_ctx_on_device(sc->ctx) && !(opts && opts->host_sae)) {
        rc = eng__cuda_sae_scan_new(sc->ctx, s, B, sc->KI, &sc->dev_sae, err);
        if (rc < 0)
            goto out;
        S3_LOG(S3_LOG_INFO, "event=cuda_scan streams=%d chunk=%d overlap=%d",
               eng__cuda_sae_scan_streams(sc->dev_sae), B, sc->W);
    }
    rc = eng_sae_enc_new(s, ENC_ROWS, &sc->enc);
    if (rc < 0) {
        s3_errf(err, rc, "scan: cannot make the SAE encoder");
        goto out;
    }
    size_t nf = (size_t)sc->n_slot * (size_t)B * (size_t)sc->KI;
    sc->slots = calloc((size_t)sc->n_slot, sizeof *sc->slots);
    sc->feat = malloc(nf * sizeof *sc->feat);
    sc->act = malloc(nf * sizeof *sc->act);
    sc->ids16 = malloc((size_t)ENC_ROWS * (size_t)sc->K * sizeof *sc->ids16);
    sc->acts16 = malloc((size_t)ENC_ROWS * (size_t)sc->K * sizeof *sc->acts16);
    sc->qsum = malloc((size_t)sc->n_slot * (size_t)sc->n_dict * sizeof *sc->qsum);
    sc->wdec = calloc((size_t)sc->n_slot, sizeof *sc->wdec);
    sc->dots = malloc((size_t)QDEC_ROWS * (size_t)sc->n_dict * sizeof *sc->dots);
    sc->qc = malloc((1 + (size_t)QDEC_ROWS) * (size_t)sc->d * sizeof *sc->qc);
    sc->wmax = calloc((size_t)sc->n_slot, sizeof *sc->wmax);
    sc->cand = malloc((size_t)sc->n_dict * sizeof *sc->cand);
    sc->cval = malloc((size_t)sc->n_dict * sizeof *sc->cval);
    if (!sc->slots || !sc->feat || !sc->act || !sc->ids16 || !sc->acts16 || !sc->qsum ||
        !sc->wdec || !sc->dots || !sc->qc || !sc->wmax || !sc->cand || !sc->cval) {
        rc = s3_errf(err, S3_ENOMEM, "scan: out of memory");
        goto out;
    }
    sc->qmethod = opts && opts->qmethod ? opts->qmethod : SRV_SCAN_Q_DECODER;
    sc->qdec_ref = opts && opts->qdec_ref;
    for (int i = 0; i < sc->n_slot; i++) {
        struct eng_sae_unit u;
        sc->slots[i].layer = in->layers[i / sc->n_kv];
        sc->slots[i].kv_head = i % sc->n_kv;
        if (eng_sae_get_unit(s, i / sc->n_kv, i % sc->n_kv, &u) < 0) {
            rc = s3_errf(err, S3_EINTERNAL, "scan: SAE unit %d missing", i);
            goto out;
        }
        sc->wdec[i] = u.w_dec;
        double wm = 0;
        for (int f = 0; f < sc->n_dict; f++) {
            double nr = 0;
            for (int j = 0; j < sc->d; j++)
                nr += (double)u.w_dec[(size_t)f * sc->d + j] * u.w_dec[(size_t)f * sc->d + j];
            wm = nr > wm ? nr : wm;
        }
        sc->wmax[i] = (float)sqrt(wm);
    }
out:
    if (rc < 0)
        srv_scan_free(sc);
    else
        *out = sc;
    return rc;
}

/* Encode rows [r0, r1) of one head's vectors; x = first row, ldx floats between rows. */
static int encode_rows(struct srv_scan *sc, int slot, int kv, const float *x, size_t ldx, int n,
                       int (*sink)(struct srv_scan *, int, int, int, int))
{
    for (int r = 0; r < n; r += ENC_ROWS) {
        int nb = n - r < ENC_ROWS ? n - r : ENC_ROWS;
        int rc = eng_sae_encode(sc->enc, slot, kv, x + (size_t)r * ldx, ldx, nb, sc->ids16,
                                sc->acts16);
        if (rc < 0)
            return rc;
        rc = sink(sc, slot, kv, r, nb);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int sink_keys(struct srv_scan *sc, int slot, int kv, int r, int nb)
{
    size_t s = (size_t)slot * (size_t)sc->n_kv + (size_t)kv;
    size_t K = (size_t)sc->K, KI = (size_t)sc->KI;
    size_t base = (s * (size_t)sc->n_out + (size_t)(sc->row0 + r)) * KI;
    for (size_t i = 0; i < (size_t)nb; i++)
        for (size_t j = 0; j < KI; j++) { /* rows come by activation, descending */
            sc->feat[base + i * KI + j] = sc->ids16[i * K + j];
            sc->act[base + i * KI + j] = sc->acts16[i * K + j];
        }
    return 0;
}

static int sink_query(struct srv_scan *sc, int slot, int kv, int r, int nb)
{
    (void)r;
    float *q = sc->qsum + ((size_t)slot * (size_t)sc->n_kv + (size_t)kv) * (size_t)sc->n_dict;
    size_t n = (size_t)nb * (size_t)sc->K;
    for (size_t i = 0; i < n; i++)
        if (sc->acts16[i] > 0)
            q[sc->ids16[i]] += sc->acts16[i];
    return 0;
}

/* Decoder alignment of one query row x (d): the attention logit of a key with code a is
 * x.b_dec + sum_f a_f (x . W_dec[f]), so x . W_dec[f] is what feature f of a key adds to
 * the score; the K largest positive ones are added to the query's weights (ties: the lower
 * feature). Scalar reference (opts->qdec_ref). */
static void query_dec_row(struct srv_scan *sc, size_t si, const float *x)
{
    const float *wd = sc->wdec[si];
    float *dots = sc->dots, *qs = sc->qsum + si * (size_t)sc->n_dict;
    int d = sc->d, nd = sc->n_dict, K = sc->K;
    for (int f = 0; f < nd; f++)
        dots[f] = krn_dot_f32(wd + (size_t)f * (size_t)d, x, d);
    /* K largest by partial selection (K is small) */
    for (int j = 0; j < K; j++) {
        int best = -1;
        float bv = 0;
        for (int f = 0; f < nd; f++)
            if (dots[f] > bv) {
                bv = dots[f];
                best = f;
            }
        if (best < 0)
            break;
        qs[best] += bv;
        dots[best] = 0;
    }
}

/* The same for nb rows x (nb, d) at once, with the same result bit for bit: one GEMM gives
 * every q . W_dec[f] up to rounding, e = 2 d u |x| max|W_dec[f]| (u = 2^-24) between it and
 * krn_dot_f32's value (both are within d u |x||w| of the exact sum). A feature whose GEMM value
 * is below t - 2e, t the K-th largest GEMM value of the row, has K features exactly above it,
 * so only the features at or above max(t - 2e, -e) are recomputed with krn_dot_f32 and ranked
 * (value descending, then feature), as query_dec_row ranks them. */
static void query_dec_block(struct srv_scan *sc, size_t si, const float *x, int nb)
{
    const float *wd = sc->wdec[si];
    float *qs = sc->qsum + si * (size_t)sc->n_dict;
    const int d = sc->d, nd = sc->n_dict, K = sc->K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nd, d, 1.0f, x, d, wd, d, 0.0f,
                sc->dots, nd);
    for (int r = 0; r < nb; r++) {
        const float *xr = x + (size_t)r * d, *g = sc->dots + (size_t)r * nd;
        double xn = 0;
        for (int i = 0; i < d; i++)
            xn += (double)xr[i] * xr[i];
        const double e = 2.0 * d * 0x1p-24 * 1.01 * sqrt(xn) * (double)sc->wmax[si] + 1e-30;
        /* t: the K-th largest GEMM value (top[] kept descending) */
        float top[ENG_SAE_MAX_K];
        int nt = 0;
        for (int f = 0; f < nd; f++) {
            const float v = g[f];
            if (nt == K && !(v > top[K - 1]))
                continue;
            int j = nt < K ? nt++ : K - 1;
            while (j > 0 && top[j - 1] < v) {
                top[j] = top[j - 1];
                j--;
            }
            top[j] = v;
        }
        double thr = (double)top[nt - 1] - 2 * e;
        if (thr < -e)
            thr = -e;
        int nc = 0;
        for (int f = 0; f < nd; f++)
            if ((double)g[f] >= thr) {
                const float v = krn_dot_f32(wd + (size_t)f * (size_t)d, xr, d);
                if (v > 0) {
                    sc->cand[nc] = f;
                    sc->cval[nc++] = v;
                }
            }
        /* the K best candidates, value descending then feature ascending */
        for (int j = 0; j < K && j < nc; j++) {
            int b = j;
            for (int c = j + 1; c < nc; c++)
                if (sc->cval[c] > sc->cval[b] ||
                    (sc->cval[c] == sc->cval[b] && sc->cand[c] < sc->cand[b]))
                    b = c;
            const int32_t tf = sc->cand[b];
            const float tv = sc->cval[b];
            sc->cand[b] = sc->cand[j], sc->cval[b] = sc->cval[j];
            sc->cand[j] = tf, sc->cval[j] = tv;
            qs[tf] += tv;
        }
    }
}

/* The question's rows of one q head (n rows, stride ld), centred on their mean before the
 * decoder alignment. Every query row shares a large component (what makes attention go to
 * the first token and to punctuation whatever is asked); uncentred, it picks the same
 * features for every question and s3 retrieval ignores the question. Centring keeps what
 * each token adds: on the needle sets it raised s3 recall at 4k (multi, budget 512) from
 * 0.06 to 0.94 and at 32k (single, 1024) from 0 to 1. A one-token question is used as is. */
static void query_dec_rows(struct srv_scan *sc, size_t si, const float *q, size_t ld, int n)
{
    int d = sc->d;
    float *mean = sc->qc, *x = sc->qc + d;
    for (int i = 0; i < d; i++) {
        double m = 0;
        for (int r = 0; r < n; r++)
            m += q[(size_t)r * ld + (size_t)i];
        mean[i] = n < 2 ? 0.0f : (float)(m / n);
    }
    for (int r0 = 0; r0 < n; r0 += QDEC_ROWS) {
        const int nb = n - r0 < QDEC_ROWS ? n - r0 : QDEC_ROWS;
        for (int r = 0; r < nb; r++)
            for (int i = 0; i < d; i++)
                x[(size_t)r * d + i] = q[(size_t)(r0 + r) * ld + (size_t)i] - mean[i];
        if (sc->qdec_ref)
            for (int r = 0; r < nb; r++)
                query_dec_row(sc, si, x + (size_t)r * d);
        else
            query_dec_block(sc, si, x, nb);
    }
}

/* Engine hook: pre-RoPE q (n, n_head*d) and k (n, n_kv*d) of one hooked layer. */
static int scan_hook(void *ud, int layer, int pos0, int n, const float *q, const float *k)
{
    struct srv_scan *sc = ud;
    int slot = eng_sae_slot_of_layer(sc->sae, layer);
    if (slot < 0)
        return 0;
    double t0 = s3_now_ms();
    int rc = 0;
    if (sc->mode == 0) {
        /* rows of this ubatch after the prefix */
        int r0 = sc->prefix > pos0 ? sc->prefix - pos0 : 0;
        if (r0 < n) {
            size_t ld = (size_t)sc->n_kv * (size_t)sc->d;
            sc->row0 = pos0 + r0 - sc->prefix;
            for (int h = 0; h < sc->n_kv && rc == 0; h++)
                rc = encode_rows(sc, slot, h, k + (size_t)r0 * ld + (size_t)h * sc->d, ld,
                                 n - r0, sink_keys);
        }
    } else if (sc->qmethod == SRV_SCAN_Q_DECODER) {
        size_t ld = (size_t)sc->n_head * (size_t)sc->d;
        for (int h = 0; h < sc->n_head; h++) {
            int kv = eng_sae_kv_of_q_head(sc->sae, h);
            if (kv < 0 || kv >= sc->n_kv)
                return 1;
            query_dec_rows(sc, (size_t)slot * (size_t)sc->n_kv + (size_t)kv,
                           q + (size_t)h * sc->d, ld, n);
        }
    } else {
        size_t ld = (size_t)sc->n_head * (size_t)sc->d;
        for (int h = 0; h < sc->n_head && rc == 0; h++) {
            int kv = eng_sae_kv_of_q_head(sc->sae, h);
            if (kv < 0 || kv >= sc->n_kv)
                return 1;
            rc = encode_rows(sc, slot, kv, q + (size_t)h * sc->d, ld, n, sink_query);
        }
    }
    sc->encode_ms += s3_now_ms() - t0;
    if (rc < 0)
        return 1;
    /* nothing below the last indexed layer is needed once the whole pass has gone through */
    if (layer == sc->last_layer && pos0 + n == sc->n_rows) {
        sc->early = 1;
        return 1;
    }
    return 0;
}

/* One forward pass over ids (n), the first `prefix` of them a re-read prefix. */
static int run_pass(struct srv_scan *sc, const int32_t *ids, int n, int prefix, int hooked,
                    struct s3_errinfo *err)
{
    eng_ctx_reset(sc->ctx);
    sc->prefix = prefix;
    sc->n_rows = n;
    sc->n_out = n - prefix;
    sc->early = 0;
    if (hooked)
        eng_ctx_set_qk_hook(sc->ctx, scan_hook, sc, eng_sae_layer_mask(sc->sae));
    else
        eng_ctx_set_qk_hook(sc->ctx, NULL, NULL, 0);
    int rc = eng_ctx_prefill(sc->ctx, ids, (size_t)n, NULL, NULL);
    eng_ctx_set_qk_hook(sc->ctx, NULL, NULL, 0);
    if (rc == S3_ECANCELED && sc->early)
        rc = 0;
    if (rc < 0)
        s3_errf(err, rc, "scan: forward pass failed: %s", s3_strerror(rc));
    return rc;
}

/* ---- text checks and tokens ---------------------------------------------------------------- */

int srv_scan_check_text(const char *text, size_t len, struct s3_errinfo *err)
{
    if (!text || len == 0)
        return s3_errf(err, S3_EINVAL, "the text is empty");
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c == 0)
            return s3_errf(err, S3_EINVAL, "binary data (a NUL byte at offset %zu), not text", i);
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned min;
        if ((c & 0xe0) == 0xc0) {
            n = 1;
            min = 0x80;
            c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            min = 0x800;
            c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            min = 0x10000;
            c &= 0x07;
        } else {
            return s3_errf(err, S3_EINVAL, "invalid UTF-8 at byte offset %zu", i);
        }
        if (n >= len - i)
            return s3_errf(err, S3_EINVAL, "invalid UTF-8 (truncated) at byte offset %zu", i);
        for (size_t j = 1; j <= n; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return s3_errf(err, S3_EINVAL, "invalid UTF-8 at byte offset %zu", i);
            c = (c << 6) | (p[i + j] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return s3_errf(err, S3_EINVAL, "invalid UTF-8 at byte offset %zu", i);
        i += n + 1;
    }
    return 0;
}

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Tokens of the document held in memory: positions [base, base + n). */
struct toks {
    const char *text;
    size_t len;
    size_t cursor;                   /* next byte to tokenize */
    int64_t base;
    int32_t *ids;                    /* (n) */
    int64_t *off;                    /* (n + 1) byte offsets; off[n] = cursor */
    size_t n, cap;
};

static int toks_eof(const struct toks *t)
{
    return t->cursor >= t->len;
}

/* Drop tokens before position keep. */
static void toks_drop(struct toks *t, int64_t keep)
{
    if (keep <= t->base)
        return;
    size_t k = (size_t)(keep - t->base);
    if (k > t->n)
        k = t->n;
    memmove(t->ids, t->ids + k, (t->n - k) * sizeof *t->ids);
    memmove(t->off, t->off + k, (t->n - k + 1) * sizeof *t->off);
    t->n -= k;
    t->base += (int64_t)k;
}

/* End of the next window: after a line break followed by non-space, else before a space
 * followed by non-space, else at a UTF-8 character start. */
static size_t window_end(const struct toks *t)
{
    size_t a = t->cursor, e = a + TOK_WINDOW;
    if (e >= t->len)
        return t->len;
    const unsigned char *p = (const unsigned char *)t->text;
    for (size_t i = e; i > a + TOK_WINDOW / 4; i--)
        if (p[i - 1] == '\n' && !is_space(p[i]))
            return i;
    for (size_t i = e; i > a + TOK_WINDOW / 4; i--)
        if (p[i] == ' ' && !is_space(p[i + 1]) && !is_space(p[i - 1]))
            return i;
    while (e > a + 1 && (p[e] & 0xc0) == 0x80)
        e--;
    return e;
}

/* Tokenize the next window and append it. */
static int toks_more(struct toks *t, const struct eng_tokenizer *tk, struct s3_errinfo *err)
{
    size_t a = t->cursor, e = window_end(t);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = eng_tok_encode(tk, t->text + a, e - a, 0, &ids, &n);
    if (rc < 0)
        return s3_errf(err, rc, "scan: cannot tokenize the text at byte %zu", a);
    if (t->n + n + 1 > t->cap) {
        size_t nc = t->cap ? t->cap : 8192;
        while (nc < t->n + n + 1)
            nc *= 2;
        int32_t *ni = realloc(t->ids, nc * sizeof *ni);
        if (ni)
            t->ids = ni;
        int64_t *no = realloc(t->off, (nc + 1) * sizeof *no);
        if (no)
            t->off = no;
        if (!ni || !no) {
            free(ids);
            return s3_errf(err, S3_ENOMEM, "scan: out of memory for tokens");
        }
        t->cap = nc;
    }
    int64_t c = (int64_t)a;
    for (size_t i = 0; i < n; i++) {
        const char *piece;
        int pl = eng_tok_piece(tk, ids[i], &piece);
        if (pl < 0) {
            free(ids);
            return s3_errf(err, S3_EINTERNAL, "scan: token %d has no text", (int)ids[i]);
        }
        t->ids[t->n + i] = ids[i];
        t->off[t->n + i] = c;
        c += pl;
    }
    free(ids);
    if (c != (int64_t)e)
        return s3_errf(err, S3_EINTERNAL,
                       "scan: the tokens of bytes %zu..%zu do not spell the text back", a, e);
    t->n += n;
    t->cursor = e;
    t->off[t->n] = (int64_t)e;
    return 0;
}

/* Make positions up to `pos` (exclusive) available, or reach the end of the text. */
static int toks_fill(struct toks *t, const struct eng_tokenizer *tk, int64_t pos,
                     struct s3_errinfo *err)
{
    while (t->base + (int64_t)t->n < pos && !toks_eof(t)) {
        int rc = toks_more(t, tk, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int64_t tok_off(const struct toks *t, int64_t pos)
{
    return t->off[pos - t->base];
}

/* Does the token at pos begin a sentence? last = start of the current sentence. */
static int sent_start(const struct toks *t, int64_t pos, int64_t last)
{
    const unsigned char *p = (const unsigned char *)t->text;
    int64_t c0 = tok_off(t, pos), c1 = tok_off(t, pos + 1);
    if ((p[c0] & 0xc0) == 0x80)
        return 0; /* inside a character */
    int64_t f = c0;
    while (f < c1 && is_space(p[f]))
        f++;
    if (f == c1)
        return 0; /* whitespace only: stays with the previous sentence */
    int lead_space = f > c0 || (c0 > 0 && is_space(p[c0 - 1]));
    if (pos - last >= SRV_SCAN_SENT_MAX)
        return 1;
    if (!lead_space)
        return 0;
    if (pos - last >= SENT_SOFT)
        return 1;
    int64_t b = f - 1, lim = f - 256 > 0 ? f - 256 : 0;
    int nl = 0;
    while (b >= lim && is_space(p[b])) {
        nl += p[b] == '\n';
        b--;
    }
    if (nl)
        return 1;
    if (b < 0)
        return 0;
    if ((p[b] == ')' || p[b] == '"' || p[b] == '\'') && b > 0)
        b--;
    return p[b] == '.' || p[b] == '!' || p[b] == '?';
}

/* ---- passages ------------------------------------------------------------------------------ */

struct pass_builder {
    int64_t ps, pc;                  /* start of the open passage */
    int64_t last;                    /* start of the current sentence */
    int64_t cursor;                  /* next position to examine */
    int64_t *st, *sc;                /* sentence starts of closed and open passages */
    size_t n_s, cap_s;
    size_t open_s;                   /* first sentence of the open passage in st/sc */
    struct idx_passage *p;           /* closed passages of this chunk */
    size_t *p_s0;                    /* first sentence index of each */
    size_t n_p, cap_p;
};

static int pb_push_sent(struct pass_builder *b, int64_t tok, int64_t chr)
{
    if (b->n_s == b->cap_s) {
        size_t nc = b->cap_s ? b->cap_s * 2 : 256;
        int64_t *a = realloc(b->st, nc * sizeof *a);
        if (a)
            b->st = a;
        int64_t *c = realloc(b->sc, nc * sizeof *c);
        if (c)
            b->sc = c;
        if (!a || !c)
            return S3_ENOMEM;
        b->cap_s = nc;
    }
    b->st[b->n_s] = tok;
    b->sc[b->n_s] = chr;
    b->n_s++;
    return 0;
}

static int pb_close(struct pass_builder *b, const struct toks *t, int64_t end_tok,
                    int64_t end_char)
{
    if (b->n_p == b->cap_p) {
        size_t nc = b->cap_p ? b->cap_p * 2 : 64;
        struct idx_passage *a = realloc(b->p, nc * sizeof *a);
        if (a)
            b->p = a;
        size_t *c = realloc(b->p_s0, nc * sizeof *c);
        if (c)
            b->p_s0 = c;
        if (!a || !c)
            return S3_ENOMEM;
        b->cap_p = nc;
    }
    struct idx_passage *p = &b->p[b->n_p];
    memset(p, 0, sizeof *p);
    p->start_tok = b->ps;
    p->end_tok = end_tok;
    p->start_char = b->pc;
    p->end_char = end_char;
    p->text = t->text + b->pc;
    p->n_sent = b->n_s - b->open_s;
    b->p_s0[b->n_p] = b->open_s;
    b->n_p++;
    b->open_s = b->n_s;
    b->ps = end_tok;
    b->pc = end_char;
    return 0;
}

/* Examine positions [cursor, end); at the end of the text close the last passage. */
static int pb_advance(struct pass_builder *b, const struct toks *t, int64_t end, int at_eof)
{
    for (; b->cursor < end; b->cursor++) {
        int64_t pos = b->cursor;
        if (pos <= b->ps || !sent_start(t, pos, b->last))
            continue;
        b->last = pos;
        int rc = pos - b->ps >= SRV_SCAN_PASS_MIN ? pb_close(b, t, pos, tok_off(t, pos))
                                                  : pb_push_sent(b, pos, tok_off(t, pos));
        if (rc < 0)
            return rc;
    }
    if (at_eof && end > b->ps)
        return pb_close(b, t, end, tok_off(t, end));
    return 0;
}

/* Forget the closed passages (they were written); keep the open passage's sentences. */
static void pb_flush(struct pass_builder *b)
{
    size_t k = b->open_s;
    memmove(b->st, b->st + k, (b->n_s - k) * sizeof *b->st);
    memmove(b->sc, b->sc + k, (b->n_s - k) * sizeof *b->sc);
    b->n_s -= k;
    b->open_s = 0;
    b->n_p = 0;
}

static void pb_deinit(struct pass_builder *b)
{
    free(b->st);
    free(b->sc);
    free(b->p);
    free(b->p_s0);
}

/* ---- the scan ------------------------------------------------------------------------------ */

/* One pass: chunk positions [next, next + n), re-reading the `prefix` positions before. */
struct pass_plan {
    int64_t next;
    int n, prefix, last;             /* last: the pass reaches the end of the text */
};

/* Tokens for the chunk at `next` and one position of lookahead; the chunk's plan. */
static int plan_pass(struct srv_scan *sc, struct toks *t, const struct eng_tokenizer *tk,
                     int64_t next, struct pass_plan *p, struct srv_scan_stats *st,
                     struct s3_errinfo *err)
{
    double t0 = s3_now_ms();
    int rc = toks_fill(t, tk, next + sc->B + 1, err);
    st->tokenize_ms += s3_now_ms() - t0;
    if (rc < 0)
        return rc;
    int64_t avail = t->base + (int64_t)t->n;
    p->next = next;
    p->n = avail - next < sc->B ? (int)(avail - next) : sc->B;
    p->last = toks_eof(t) && next + p->n == avail;
    p->prefix = next - t->base < sc->W ? (int)(next - t->base) : sc->W;
    return 0;
}

/* Device path: queue the pass (the GPU encodes its keys); returns without waiting. */
static int submit_pass(struct srv_scan *sc, const struct toks *t, const struct pass_plan *p,
                       struct srv_scan_stats *st, struct s3_errinfo *err)
{
    double t0 = s3_now_ms();
    int rc = eng__cuda_sae_scan_submit(sc->dev_sae, t->ids + (p->next - p->prefix - t->base),
                                       p->prefix + p->n, p->prefix, err);
    st->forward_ms += s3_now_ms() - t0;
    return rc;
}

/* Device path: wait for the oldest pass queued and take its records into feat/act. */
static int collect_pass(struct srv_scan *sc, struct srv_scan_stats *st, struct s3_errinfo *err)
{
    const uint16_t *ids;
    const float *acts;
    int n_out;
    double t0 = s3_now_ms();
    int rc = eng__cuda_sae_scan_wait(sc->dev_sae, &ids, &acts, &n_out, err);
    st->forward_ms += s3_now_ms() - t0;
    if (rc < 0)
        return rc;
    /* the same layout as sink_keys: (slot, row, KI), by activation descending */
    const size_t nr = (size_t)sc->n_slot * (size_t)n_out * (size_t)sc->KI;
    for (size_t i = 0; i < nr; i++)
        sc->feat[i] = ids[i];
    memcpy(sc->act, acts, nr * sizeof *sc->act);
    return 0;
}

int srv_scan_document(struct srv_scan *sc, struct idx_db *db, const char *text, size_t len,
                      const struct srv_scan_doc_opts *o, int64_t *doc,
                      struct srv_scan_stats *st, struct s3_errinfo *err)
{
    static const struct srv_scan_doc_opts defaults = {0};
    struct srv_scan_stats stats = {0};
    struct toks t = {.text = text, .len = len};
    struct pass_builder pb = {0};
    struct idx_writer *w = NULL;
    struct idx_async *aw = NULL; /* GPU scans: the writer on its own thread */
    const struct eng_tokenizer *tk;
    double t_start = s3_now_ms();
    int64_t next = 0, dummy_doc = 0;
    int rc;

    if (!o)
        o = &defaults;
    if (!doc)
        doc = &dummy_doc;
    *doc = 0;
    if (!sc || (!db && !o->no_index))
        return s3_errf(err, S3_EINVAL, "scan: no scanner or database");
    rc = srv_scan_check_text(text, len, err);
    if (rc < 0)
        return rc;
    tk = eng_model_tok(sc->m);
    eng_ctx_set_cancel(sc->ctx, o->cancel);

    if (!o->no_index) {
        char sha[65];
        s3_sha256_hex(text, len, sha);
        const char *mh = eng_model_hparams(sc->m)->model_sha256;
        int64_t id = 0;
        if (!o->no_resume) {
            rc = idx_doc_find_scanning(db, o->tenant, sha, mh, sc->sae_hash, &id, err);
            if (rc < 0)
                goto out;
        }
        if (id) {
            rc = idx_writer_resume(db, id, &w, err);
        } else {
            struct idx_doc_meta meta = {.tenant = o->tenant, .name = o->name,
                                        .text_sha256 = sha, .model_hash = mh,
                                        .sae_hash = sc->sae_hash, .n_bytes = (int64_t)len};
            rc = idx_writer_begin(db, &meta, &w, err);
        }
        if (rc < 0)
            goto out;
        *doc = idx_writer_doc(w);
        struct idx_scan_state ss;
        idx_writer_state(w, &ss);
        next = ss.next_tok;
        pb.ps = ss.pass_tok;
        pb.pc = ss.pass_char;
        stats.resumed_at = next;
        if (id)
            S3_LOG(S3_LOG_INFO, "event=scan_resume doc=%lld next_tok=%lld passages=%lld",
                   (long long)id, (long long)next, (long long)ss.n_passages);
        /* on the GPU the index of chunk i is written on a thread of its own while this one
         * submits the next passes (the device would otherwise wait for SQLite) */
        if (sc->dev_sae && (rc = idx_async_start(w, IDX_ASYNC_DEPTH, &aw, err)) < 0)
            goto out;
    }
    pb.last = pb.ps;
    pb.cursor = pb.ps + 1;

    /* skip to the resume point, keeping what the overlap prefix and open passage need */
    {
        int64_t keep = next - sc->W < pb.ps ? next - sc->W : pb.ps;
        if (keep < 0)
            keep = 0;
        double t0 = s3_now_ms();
        while (!toks_eof(&t) && t.base + (int64_t)t.n <= keep + 1) {
            rc = toks_more(&t, tk, err);
            if (rc < 0)
                goto out;
            toks_drop(&t, keep);
        }
        int64_t need = next > pb.ps ? next : pb.ps;
        if (rc == 0 && need > 0)
            rc = toks_fill(&t, tk, need + 1, err);
        stats.tokenize_ms += s3_now_ms() - t0;
        if (rc < 0)
            goto out;
        if (need > 0 && (need > t.base + (int64_t)t.n || pb.ps < t.base ||
                         tok_off(&t, pb.ps) != pb.pc)) {
            rc = s3_errf(err, S3_EFORMAT,
                         "scan: cannot resume document %lld: the text no longer tokenizes as"
                         " it did (delete it and ingest again)",
                         (long long)*doc);
            goto out;
        }
    }

    const int dev = sc->dev_sae && !o->no_index; /* keys encoded on the device, pipelined */
    struct pass_plan cur = {0}, nx = {0};
    if (dev) {
        rc = plan_pass(sc, &t, tk, next, &cur, &stats, err);
        if (rc == 0 && cur.n > 0)
            rc = submit_pass(sc, &t, &cur, &stats, err);
        if (rc < 0)
            goto out;
    }
    for (;;) {
        if (o->cancel && *o->cancel) {
            rc = s3_errf(err, S3_ECANCELED, "scan: canceled");
            goto out;
        }
        double t0;
        if (!dev) {
            rc = plan_pass(sc, &t, tk, next, &cur, &stats, err);
            if (rc < 0)
                goto out;
        }
        if (cur.n <= 0 && !cur.last)
            break; /* cannot happen: a window always adds tokens */
        if (dev) {
            /* queue the next pass before writing this one: the GPU computes pass i+1 while
               the host writes the index of pass i */
            if (!cur.last &&
                !(o->stop_after_chunks > 0 && stats.n_chunks + 1 >= o->stop_after_chunks)) {
                rc = plan_pass(sc, &t, tk, cur.next + cur.n, &nx, &stats, err);
                if (rc == 0 && nx.n > 0)
                    rc = submit_pass(sc, &t, &nx, &stats, err);
                if (rc < 0)
                    goto out;
            }
            if (cur.n > 0 && (rc = collect_pass(sc, &stats, err)) < 0)
                goto out;
        } else if (cur.n > 0) {
            t0 = s3_now_ms();
            sc->encode_ms = 0;
            rc = run_pass(sc, t.ids + (next - cur.prefix - t.base), cur.prefix + cur.n,
                          cur.prefix, !o->no_index, err);
            if (rc < 0)
                goto out;
            double dt = s3_now_ms() - t0;
            stats.encode_ms += sc->encode_ms;
            stats.forward_ms += dt - sc->encode_ms;
        }
        const int n = cur.n, last = cur.last;
        t0 = s3_now_ms();
        if (!o->no_index) {
            rc = pb_advance(&pb, &t, next + n, last);
            if (rc < 0) {
                rc = s3_errf(err, S3_ENOMEM, "scan: out of memory");
                goto out;
            }
            for (size_t i = 0; i < pb.n_p; i++) {
                pb.p[i].sent_tok = pb.st + pb.p_s0[i];
                pb.p[i].sent_char = pb.sc + pb.p_s0[i];
            }
            struct idx_chunk ch = {.tok0 = next, .n_tok = n, .n_slot = n > 0 ? sc->n_slot : 0,
                                   .slots = sc->slots, .k = sc->KI, .feat = sc->feat,
                                   .act = sc->act, .n_passages = pb.n_p, .passages = pb.p};
            if (n > 0 || pb.n_p > 0) {
                rc = aw ? idx_async_add(aw, &ch, err) : idx_writer_add(w, &ch, err);
                if (rc < 0)
                    goto out;
                if (o->on_chunk && (rc = o->on_chunk(o->chunk_ud, &ch)) < 0) {
                    s3_errf(err, rc, "scan: chunk observer failed");
                    goto out;
                }
            }
            pb_flush(&pb);
        }
        stats.write_ms += s3_now_ms() - t0;
        next += n;
        stats.n_scanned += n;
        stats.n_chunks++;
        if (o->progress && o->progress(o->progress_ud, tok_off(&t, next), (int64_t)len, next)) {
            rc = s3_errf(err, S3_ECANCELED, "scan: canceled");
            goto out;
        }
        if (last)
            break;
        if (o->stop_after_chunks > 0 && stats.n_chunks >= o->stop_after_chunks) {
            rc = s3_errf(err, S3_ECANCELED, "scan: stopped after %lld chunks",
                         (long long)stats.n_chunks);
            goto out;
        }
        int64_t keep = next - sc->W < pb.ps ? next - sc->W : pb.ps;
        toks_drop(&t, keep < 0 ? 0 : keep);
        cur = nx; /* dev: the pass queued above (positions from next) */
    }
    if (!o->no_index) {
        double t0 = s3_now_ms();
        rc = idx_async_end(aw, err);
        aw = NULL;
        if (rc == 0)
            rc = idx_writer_finish(w, err);
        stats.write_ms += s3_now_ms() - t0;
        if (rc < 0)
            goto out;
    }
    stats.n_tokens = next;
out:
    if (sc->dev_sae)
        eng__cuda_sae_scan_drain(sc->dev_sae); /* a pass queued but not written is dropped */
    eng_ctx_set_cancel(sc->ctx, NULL);
    if (aw) {
        struct s3_errinfo e2 = {0};
        if (idx_async_end(aw, &e2) < 0) /* the queued chunks are written first */
            S3_LOG(S3_LOG_WARN, "event=scan_write_failed msg=\"%s\"", e2.msg);
    }
    if (w && rc < 0) {
        /* stopped or failed: keep the chunks accepted so far (a resume starts after them) */
        struct s3_errinfo e2 = {0};
        if (idx_writer_flush(w, &e2) < 0)
            S3_LOG(S3_LOG_WARN, "event=scan_flush_failed msg=\"%s\"", e2.msg);
    }
    idx_writer_free(w);
    free(t.ids);
    free(t.off);
    pb_deinit(&pb);
    stats.total_ms = s3_now_ms() - t_start;
    if (st)
        *st = stats;
    return rc;
}

/* ---- query features ------------------------------------------------------------------------ */

struct fw {
    int32_t f;
    float w;
};

static int cmp_fw(const void *a, const void *b)
{
    const struct fw *x = a, *y = b;
    if (x->w != y->w)
        return x->w > y->w ? -1 : 1;
    return x->f - y->f;
}

int srv_scan_query(struct srv_scan *sc, const char *question, size_t len, int top_per_slot,
                   struct idx_qfeat **feats, size_t *n_feats, struct s3_errinfo *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    *feats = NULL;
    *n_feats = 0;
    if (!question || !len)
        return s3_errf(err, S3_EINVAL, "the question is empty");
    int rc = eng_tok_encode(eng_model_tok(sc->m), question, len, 0, &ids, &n);
    if (rc < 0)
        return s3_errf(err, rc, "cannot tokenize the question");
    rc = srv_scan_query_ids(sc, ids, n, top_per_slot, feats, n_feats, err);
    free(ids);
    return rc;
}

int srv_scan_query_ids(struct srv_scan *sc, const int32_t *ids, size_t n, int top_per_slot,
                       struct idx_qfeat **feats, size_t *n_feats, struct s3_errinfo *err)
{
    struct fw *tmp = NULL;
    struct idx_qfeat *out = NULL;
    size_t n_out = 0;
    int rc = 0;
    *feats = NULL;
    *n_feats = 0;
    if (top_per_slot <= 0)
        top_per_slot = SRV_SCAN_QFEATS;
    if (!ids || n == 0)
        return s3_errf(err, S3_EINVAL, "the question is empty");
    if (n > SRV_SCAN_MAX_QTOKENS || (int)n > eng_ctx_n_ctx(sc->ctx))
        return s3_errf(err, S3_ETOOBIG, "the question has %zu tokens, over the limit of %d", n,
                       SRV_SCAN_MAX_QTOKENS);
    memset(sc->qsum, 0, (size_t)sc->n_slot * (size_t)sc->n_dict * sizeof *sc->qsum);
    sc->mode = 1;
    rc = run_pass(sc, ids, (int)n, 0, 1, err);
    sc->mode = 0;
    if (rc < 0)
        goto out;
    tmp = malloc((size_t)sc->n_dict * sizeof *tmp);
    out = malloc((size_t)sc->n_slot * (size_t)top_per_slot * sizeof *out);
    if (!tmp || !out) {
        rc = s3_errf(err, S3_ENOMEM, "out of memory");
        goto out;
    }
    for (int s = 0; s < sc->n_slot; s++) {
        const float *q = sc->qsum + (size_t)s * (size_t)sc->n_dict;
        size_t m = 0;
        for (int f = 0; f < sc->n_dict; f++)
            if (q[f] > 0)
                tmp[m++] = (struct fw){f, q[f]};
        qsort(tmp, m, sizeof *tmp, cmp_fw);
        if (m > (size_t)top_per_slot)
            m = (size_t)top_per_slot;
        double sum = 0;
        for (size_t i = 0; i < m; i++)
            sum += tmp[i].w;
        for (size_t i = 0; i < m; i++)
            out[n_out++] = (struct idx_qfeat){.layer = sc->slots[s].layer,
                                              .kv_head = sc->slots[s].kv_head,
                                              .feature = tmp[i].f,
                                              .weight = (float)(tmp[i].w / sum)};
    }
    *feats = out;
    *n_feats = n_out;
    out = NULL;
out:
    free(tmp);
    free(out);
    return rc;
}
