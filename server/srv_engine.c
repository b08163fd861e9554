/* server/srv_engine.c - srv_engine_ops over engine/engine.h (the worker's only engine use). */
#include <stdlib.h>
#include <string.h>

#include "srv_int.h"

struct srv_eng {
    struct eng_model *model;
    struct eng_ctx *ctx;
};

static void eng_close(void *ud)
{
    struct srv_eng *e = ud;
    if (!e)
        return;
    eng_ctx_free(e->ctx);
    eng_model_free(e->model);
    free(e);
}

static int eng_open(void **out, const struct cfg *c, struct srv_model_info *info,
                    struct s3_errinfo *err)
{
    struct srv_eng *e = calloc(1, sizeof *e);
    int rc;
    if (!e)
        return s3_errf(err, S3_ENOMEM, "out of memory");
    struct eng_model_opts mo = {.n_threads = c->threads};
    if ((rc = eng_model_load(c->model, &mo, &e->model, err)) < 0)
        goto out;
    struct eng_ctx_opts co = {.n_ctx = c->n_ctx};
    if ((rc = eng_ctx_new(e->model, &co, &e->ctx, err)) < 0)
        goto out;
    const struct eng_hparams *hp = eng_model_hparams(e->model);
    info->n_ctx = eng_ctx_n_ctx(e->ctx);
    info->n_vocab = eng_tok_n_vocab(eng_model_tok(e->model));
    snprintf(info->arch, sizeof info->arch, "%s", hp->arch);
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

const struct srv_engine_ops srv_engine_default = {
    .open = eng_open,
    .close = eng_close,
    .tokenize = eng_tokenize,
    .generate = eng_gen,
};
