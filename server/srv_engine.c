/* server/srv_engine.c - srv_engine_ops over engine/engine.h (the worker's only engine use). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sae.h"
#include "srv_int.h"

struct srv_eng {
    struct eng_model *model;
    struct eng_ctx *ctx;                 /* generation */
    struct eng_sae *sae;                 /* the SAE, or a null one (BM25 only) */
    int has_sae;
    struct srv_scan *sc[2];              /* enum srv_scanner */
};

static void eng_close(void *ud)
{
    struct srv_eng *e = ud;
    if (!e)
        return;
    srv_scan_free(e->sc[0]);
    srv_scan_free(e->sc[1]);
    eng_sae_free(e->sae);
    eng_ctx_free(e->ctx);
    eng_model_free(e->model);
    free(e);
}

/* Without an SAE file the scanner still runs with a "null" SAE: one indexed layer (the
 * first, so the forward pass stops after it) and zero weights, so that no feature ever fires
 * and no posting is written. Documents then get passages and BM25 only. */
static int null_sae(const struct eng_hparams *hp, struct eng_sae **out, struct s3_errinfo *err)
{
    struct eng_sae_info in = {0};
    snprintf(in.model_sha256, sizeof in.model_sha256, "%s", hp->model_sha256);
    snprintf(in.arch, sizeof in.arch, "%s", hp->arch);
    in.n_layer = hp->n_layer;
    in.n_head = hp->n_head;
    in.n_head_kv = hp->n_head_kv;
    in.d_head = hp->head_dim;
    in.n_dict = 16;
    in.k = 1;
    in.n_idx = 1;
    in.layers[0] = 0;
    return eng_sae_new(&in, out, err);
}

static int open_sae(struct srv_eng *e, const struct cfg *c, struct srv_model_info *info,
                    struct s3_errinfo *err)
{
    const struct eng_hparams *hp = eng_model_hparams(e->model);
    char def[CFG_PATH_MAX];
    const char *path = c->sae[0] ? c->sae : srv_scan_default_sae(c->model, def, sizeof def);
    struct stat sb;
    int rc;
    snprintf(info->sae_path, sizeof info->sae_path, "%.255s", path);
    if (c->sae[0] || stat(path, &sb) == 0) {
        rc = eng_sae_load(path, hp, &e->sae, err);
        if (rc == 0) {
            e->has_sae = 1;
        } else if (c->sae[0]) {
            return rc; /* asked for by name: a start-up error */
        } else {
            S3_LOG(S3_LOG_WARN, "event=sae_unusable path=%s msg=\"%s\" fallback=bm25", path,
                   err ? err->msg : "");
            e->sae = NULL;
        }
    } else {
        S3_LOG(S3_LOG_WARN, "event=no_sae path=%s fallback=bm25 hint=\"s3serve train-sae\"", path);
    }
    if (!e->sae && (rc = null_sae(hp, &e->sae, err)) < 0)
        return rc;
    for (int i = 0; i < 2; i++)
        if ((rc = srv_scan_new(e->model, e->sae, NULL, &e->sc[i], err)) < 0)
            return rc;
    const void *img;
    size_t n;
    eng_sae_image(e->sae, &img, &n);
    if (n >= 64)
        snprintf(info->sae_hash, sizeof info->sae_hash, "%.64s", (const char *)img + n - 64);
    snprintf(info->model_sha256, sizeof info->model_sha256, "%s", hp->model_sha256);
    info->has_sae = e->has_sae;
    return 0;
}

static int eng_open(void **out, const struct cfg *c, struct srv_model_info *info,
                    struct s3_errinfo *err)
{
    struct srv_eng *e = calloc(1, sizeof *e);
    int rc;
    if (!e)
        return s3_errf(err, S3_ENOMEM, "out of memory");
    struct eng_model_opts mo = {.n_threads = c->threads, .device = c->device};
    if ((rc = eng_model_load(c->model, &mo, &e->model, err)) < 0)
        goto out;
    struct eng_ctx_opts co = {.n_ctx = c->n_ctx};
    if ((rc = eng_ctx_new(e->model, &co, &e->ctx, err)) < 0)
        goto out;
    const struct eng_hparams *hp = eng_model_hparams(e->model);
    info->n_ctx = eng_ctx_n_ctx(e->ctx);
    info->n_vocab = eng_tok_n_vocab(eng_model_tok(e->model));
    snprintf(info->arch, sizeof info->arch, "%s", hp->arch);
    rc = open_sae(e, c, info, err);
out:
    if (rc < 0) {
        eng_close(e);
        e = NULL;
    }
    *out = e;
    return rc;
}

static int eng_tokenize(void *ud, const struct srv_gen_req *g, int32_t **ids, size_t *n_ids,
                        struct s3_errinfo *err)
{
    struct srv_eng *e = ud;
    const struct eng_tokenizer *tok = eng_model_tok(e->model);
    char *text = NULL;
    struct eng_chat_msg *msgs = NULL;
    int rc;
    if (g->kind == SRV_GEN_CHAT) {
        msgs = calloc(g->n_msgs, sizeof *msgs);
        if (!msgs)
            return s3_errf(err, S3_ENOMEM, "out of memory");
        for (size_t i = 0; i < g->n_msgs; i++) {
            msgs[i].role = g->msgs[i].role;
            msgs[i].content = g->msgs[i].content;
        }
        rc = eng_chat_apply(tok, msgs, g->n_msgs, 1, &text, err);
        free(msgs);
        if (rc < 0)
            return rc;
        rc = eng_tok_encode(tok, text, strlen(text), ENG_TOK_SPECIAL, ids, n_ids);
        free(text);
    } else {
        rc = eng_tok_encode(tok, g->prompt, strlen(g->prompt), ENG_TOK_SPECIAL, ids, n_ids);
    }
    if (rc < 0)
        return s3_errf(err, rc, "tokenizer: %s", s3_strerror(rc));
    return 0;
}

static int eng_gen(void *ud, const int32_t *ids, size_t n_ids, const struct eng_gen_params *p,
                   const int *cancel, eng_emit_fn emit, void *emit_ud, struct eng_gen_result *res,
                   struct s3_errinfo *err)
{
    struct srv_eng *e = ud;
    eng_ctx_set_cancel(e->ctx, (const volatile int *)cancel);
    int rc = eng_generate(e->ctx, ids, n_ids, p, emit, emit_ud, res, err);
    eng_ctx_set_cancel(e->ctx, NULL);
    return rc;
}

static int eng_scan(void *ud, int which, struct idx_db *db, const char *text, size_t len,
                    const struct srv_scan_doc_opts *o, int64_t *doc, struct srv_scan_stats *st,
                    struct s3_errinfo *err)
{
    struct srv_eng *e = ud;
    return srv_scan_document(e->sc[which == SRV_SCANNER_DOCS ? 0 : 1], db, text, len, o, doc,
                             st, err);
}

static int eng_query(void *ud, const char *q, size_t len, struct idx_qfeat **feats,
                     size_t *n_feats, struct s3_errinfo *err)
{
    struct srv_eng *e = ud;
    *feats = NULL;
    *n_feats = 0;
    if (!e->has_sae)
        return s3_errf(err, S3_ENOTFOUND, "no SAE is loaded");
    return srv_scan_query(e->sc[1], q, len, 0, feats, n_feats, err);
}

static int eng_token_ends(void *ud, const char *text, size_t len, size_t **tok_end, size_t *n,
                          struct s3_errinfo *err)
{
    struct srv_eng *e = ud;
    const struct eng_tokenizer *tok = eng_model_tok(e->model);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    *tok_end = NULL;
    *n = 0;
    int rc = eng_tok_encode(tok, text, len, 0, &ids, &n_ids);
    if (rc < 0)
        return s3_errf(err, rc, "tokenizer: %s", s3_strerror(rc));
    size_t *ends = malloc((n_ids ? n_ids : 1) * sizeof *ends);
    if (!ends) {
        free(ids);
        return s3_errf(err, S3_ENOMEM, "out of memory");
    }
    size_t at = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const char *b;
        int pl = eng_tok_piece(tok, ids[i], &b);
        at += pl > 0 ? (size_t)pl : 0;
        ends[i] = at < len ? at : len;
    }
    if (n_ids)
        ends[n_ids - 1] = len;
    free(ids);
    *tok_end = ends;
    *n = n_ids;
    return 0;
}

const struct srv_engine_ops srv_engine_default = {
    .open = eng_open,
    .close = eng_close,
    .tokenize = eng_tokenize,
    .generate = eng_gen,
    .scan = eng_scan,
    .query = eng_query,
    .token_ends = eng_token_ends,
};
