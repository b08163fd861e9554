/* tests/fuzz/fuzz_request.c - request JSON -> params: srv_gen_parse (chat and completion),
 * srv_retrieve_parse and srv_doc_json_parse.
 *
 * Input: byte 0 picks the entry point (bits 0-1) and the limits (bit 2: no SAE loaded, bit 3:
 * a model id is required); the rest is the request body. Properties checked beyond "no crash,
 * no leak": an accepted request satisfies every documented invariant (ranges, counts, caps,
 * token ids below n_vocab, NUL-free strings of the stated length); a refused one has a 4xx
 * status, a type and an error body that is valid JSON of the OpenAI error shape. */
#include <jansson.h>

#include "fuzz.h"
#include "srv_int.h"

#define N_VOCAB   49152
#define MAX_TOK   4096
#define MAX_BUDG  8192

static void check_error(int rc, const struct srv_error *e)
{
    FUZZ_CHECK(rc == S3_EINVAL || rc == S3_ENOMEM, "rc %d", rc);
    FUZZ_CHECK(e->status >= 400 && e->status < 600, "status %d", e->status);
    FUZZ_CHECK(rc == S3_ENOMEM || (e->status >= 400 && e->status < 500), "status %d",
               e->status);
    FUZZ_CHECK(e->type != NULL, "no type");
    FUZZ_CHECK(memchr(e->message, 0, sizeof e->message) != NULL, "message not terminated");
    FUZZ_CHECK(memchr(e->param, 0, sizeof e->param) != NULL, "param not terminated");
    FUZZ_CHECK(e->message[0] != 0, "empty message");
    size_t len = 0;
    char *body = srv_error_body(e, &len);
    FUZZ_CHECK(body != NULL, "no error body (message '%s', param '%s')", e->message, e->param);
    json_error_t jerr;
    json_t *j = json_loadb(body, len, 0, &jerr);
    FUZZ_CHECK(j != NULL, "error body is not JSON: %s", body);
    json_t *in = json_object_get(j, "error");
    FUZZ_CHECK(json_is_object(in), "no error object: %s", body);
    FUZZ_CHECK(json_is_string(json_object_get(in, "message")), "message: %s", body);
    FUZZ_CHECK(json_is_string(json_object_get(in, "type")), "type: %s", body);
    json_t *p = json_object_get(in, "param"), *c = json_object_get(in, "code");
    FUZZ_CHECK(p && (json_is_null(p) || json_is_string(p)), "param: %s", body);
    FUZZ_CHECK(c && (json_is_null(c) || json_is_string(c)), "code: %s", body);
    FUZZ_CHECK(json_is_null(p) == !e->param[0], "param null iff empty: %s", body);
    json_decref(j);
    free(body);
}

static void check_str(const char *s, const char *what)
{
    FUZZ_CHECK(s != NULL, "%s is NULL", what);
}

static void check_retrieval(const struct srv_retrieval *r, const struct srv_limits *lim)
{
    FUZZ_CHECK(r->mode == -1 || (r->mode >= IDX_MODE_HYBRID && r->mode <= IDX_MODE_FULL),
               "mode %d", r->mode);
    FUZZ_CHECK(!(lim->no_sae && r->mode == IDX_MODE_S3), "mode s3 accepted without an SAE");
    FUZZ_CHECK(r->budget == 0 || (r->budget >= 16 && r->budget <= lim->max_budget), "budget %d",
               r->budget);
}

static void check_docs(const int64_t *docs, size_t n)
{
    FUZZ_CHECK(n <= SRV_MAX_DOCS, "%zu documents", n);
    FUZZ_CHECK((n == 0) == (docs == NULL), "docs %p with n %zu", (const void *)docs, n);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(docs[i] > 0, "doc id %lld", (long long)docs[i]);
}

static void check_gen(int kind, const struct srv_gen_req *g, const struct srv_limits *lim)
{
    FUZZ_CHECK(g->kind == kind, "kind %d", g->kind);
    FUZZ_CHECK(g->max_tokens >= 0 && g->max_tokens <= lim->max_tokens_limit, "max_tokens %d",
               g->max_tokens);
    FUZZ_CHECK(g->temperature >= 0 && g->temperature <= 2, "temperature %g", g->temperature);
    FUZZ_CHECK(g->top_p >= 0 && g->top_p <= 1, "top_p %g", g->top_p);
    FUZZ_CHECK(g->n_stop <= SRV_MAX_STOP, "n_stop %zu", g->n_stop);
    for (size_t i = 0; i < g->n_stop; i++) {
        check_str(g->stop[i], "stop");
        FUZZ_CHECK(strlen(g->stop[i]) <= SRV_MAX_STOP_LEN, "stop length %zu",
                   strlen(g->stop[i]));
    }
    if (lim->model_id)
        FUZZ_CHECK(!g->model || !strcmp(g->model, lim->model_id), "model %s", g->model);
    if (kind == SRV_GEN_CHAT) {
        FUZZ_CHECK(g->n_msgs >= 1 && g->n_msgs <= SRV_MAX_MESSAGES, "n_msgs %zu", g->n_msgs);
        for (size_t i = 0; i < g->n_msgs; i++) {
            check_str(g->msgs[i].role, "role");
            check_str(g->msgs[i].content, "content");
            const char *r = g->msgs[i].role;
            FUZZ_CHECK(!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant"),
                       "role %s", r);
        }
        FUZZ_CHECK(!g->prompt && !g->prompt_ids, "chat request with a prompt");
    } else {
        FUZZ_CHECK((g->prompt != NULL) + (g->prompt_ids != NULL) == 1,
                   "prompt %p, prompt_ids %p", (void *)g->prompt, (void *)g->prompt_ids);
        FUZZ_CHECK(!g->prompt_ids || g->n_prompt_ids >= 1, "empty prompt_ids");
        for (size_t i = 0; i < g->n_prompt_ids; i++)
            FUZZ_CHECK(g->prompt_ids[i] >= 0 && g->prompt_ids[i] < lim->n_vocab, "token %d",
                       (int)g->prompt_ids[i]);
    }
    check_docs(g->docs, g->n_docs);
    check_retrieval(&g->ret, lim);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const int which = data[0] & 3;
    const struct srv_limits lim = {.max_tokens_limit = MAX_TOK,
                                   .model_id = (data[0] & 8) ? "m1" : NULL,
                                   .n_vocab = N_VOCAB,
                                   .max_budget = MAX_BUDG,
                                   .no_sae = (data[0] & 4) != 0};
    /* a copy of exactly the body bytes, so ASan sees any read past the given length */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, len);
    struct srv_error e;
    memset(&e, 0, sizeof e);
    int rc;
    if (which <= 1) {
        int kind = which == 0 ? SRV_GEN_CHAT : SRV_GEN_TEXT;
        struct srv_gen_req g;
        rc = srv_gen_parse(kind, body, len, &lim, &g, &e);
        if (rc == 0) {
            check_gen(kind, &g, &lim);
            srv_gen_req_deinit(&g);
        } else {
            check_error(rc, &e);
        }
    } else if (which == 2) {
        struct srv_retrieve_req q;
        rc = srv_retrieve_parse(body, len, &lim, &q, &e);
        if (rc == 0) {
            check_docs(q.docs, q.n_docs);
            FUZZ_CHECK(q.n_docs >= 1, "no documents");
            check_str(q.query, "query");
            FUZZ_CHECK(q.query[0] != 0, "empty query");
            check_retrieval(&q.ret, &lim);
            srv_retrieve_req_deinit(&q);
        } else {
            check_error(rc, &e);
            FUZZ_CHECK(!q.docs && !q.query, "fields left after an error");
        }
    } else {
        char *text = NULL, *name = NULL;
        size_t n = 0;
        rc = srv_doc_json_parse(body, len, &text, &n, &name, &e);
        if (rc == 0) {
            check_str(text, "text");
            FUZZ_CHECK(n > 0 && strlen(text) == n, "text length %zu, strlen %zu", n,
                       strlen(text));
            FUZZ_CHECK(fuzz_utf8_valid(text, n), "text is not UTF-8");
            FUZZ_CHECK(!name || strlen(name) <= 255, "name length %zu", strlen(name));
            free(text);
            free(name);
        } else {
            check_error(rc, &e);
            FUZZ_CHECK(!text && !name, "fields left after an error");
        }
    }
    free(body);
    return 0;
}
