/* tests/common/testutil_engine.c - test helpers that need the engine: tiny GGUF files and the
 * default model's tokenizer. A separate object so that suites without the engine can link the
 * helper library. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "gguf.h"
#include "testutil.h"

struct eng_gguf *s3t_gguf_from_writer(struct eng_gguf_writer *w)
{
    char path[512];
    struct eng_gguf *g = NULL;
    struct s3_errinfo err = {0};
    s3t_tmp_path(path, sizeof path, "s3gguf_");
    int rc = eng_gguf_writer_write_file(w, path, NULL, NULL);
    ck_assert_msg(rc == 0, "gguf write: %s", s3_strerror(rc));
    rc = eng_gguf_open(path, &g, &err);
    unlink(path);
    ck_assert_msg(rc == 0, "gguf open: %s", err.msg);
    return g;
}

void s3t_tok_env_open(struct s3t_tok_env *e, const char *fixture)
{
    struct s3_errinfo err = {0};
    e->gguf = NULL;
    e->tok = NULL;
    e->fix = s3t_fixture_json(fixture);
    char *path = s3t_root_path(S3T_MODEL_REL);
    if (access(path, R_OK) == 0 && eng_gguf_open(path, &e->gguf, &err) == 0 &&
        eng_tok_new(e->gguf, &e->tok, &err) < 0)
        fprintf(stderr, "eng_tok_new: %s\n", err.msg);
    free(path);
}

void s3t_tok_env_close(struct s3t_tok_env *e)
{
    eng_tok_free(e->tok);
    eng_gguf_close(e->gguf);
    json_decref(e->fix);
    e->tok = NULL;
    e->gguf = NULL;
    e->fix = NULL;
}

int s3t_tok_env_ready(const struct s3t_tok_env *e)
{
    if (!e->gguf) {
        s3t_skip_no_model("model tests");
        return 0;
    }
    ck_assert_msg(e->tok != NULL, "tokenizer failed to load from the model");
    ck_assert_msg(e->fix != NULL, "the tokenizer-level fixture is missing or invalid");
    return 1;
}
