/* tests/common/testutil.h - helpers shared by the Check test programs.
 *
 * Files are located under $S3_ROOT (the repository root; "." when unset). Helpers that fail
 * on the test's behalf do so with a Check assertion, so they may only be called from inside a
 * test or a fixture. The engine helpers (s3t_gguf_*, s3t_tok_env_*) need the engine library;
 * the rest need only Check and jansson. */
#pragma once

#include <check.h>
#include <jansson.h>
#include <stddef.h>

struct eng_gguf;
struct eng_gguf_writer;
struct eng_tokenizer;

/* The default model, relative to the repository root. */
#define S3T_MODEL_REL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* $S3_ROOT, or "." when unset or empty. Borrowed from the environment. */
const char *s3t_root(void);
/* "<root>/<rel>": new, free() it. */
char *s3t_root_path(const char *rel);
/* 1 when S3_TEST_QUICK=1 asks for the short variants of slow tests. */
int s3t_quick(void);
/* Print the line a test prints when it skips because the model is absent. */
void s3t_skip_no_model(const char *what);

/* tests/fixtures/<name> parsed; new reference, or NULL with a SKIP line on stderr. */
json_t *s3t_fixture_json(const char *name);

/* Create an empty temporary file named <TMPDIR>/<stem>XXXXXX; its path goes to buf. */
void s3t_tmp_path(char *buf, size_t cap, const char *stem);

/* Run one suite; EXIT_SUCCESS when every test passed. fork_mode CK_NOFORK or CK_FORK forces
 * that mode; CK_FORK_GETENV keeps Check's default (fork unless the environment says CK_FORK=no). */
int s3t_run(Suite *s, enum fork_status fork_mode);

/* Write w to a temporary file and open it; the file is removed once open. Asserts success. */
struct eng_gguf *s3t_gguf_from_writer(struct eng_gguf_writer *w);

/* The default model's GGUF and tokenizer, with a JSON fixture, for tokenizer-level suites. */
struct s3t_tok_env {
    struct eng_gguf *gguf;     /* NULL when the model file is absent */
    struct eng_tokenizer *tok;
    json_t *fix;               /* tests/fixtures/<fixture> */
};
/* Open what exists (nothing fails here; s3t_tok_env_ready reports). */
void s3t_tok_env_open(struct s3t_tok_env *e, const char *fixture);
void s3t_tok_env_close(struct s3t_tok_env *e); /* and zero it */
/* 1 when model-backed tests can run; 0 with a SKIP line when the model is absent. Asserts the
 * tokenizer and the fixture loaded when the model is there. */
int s3t_tok_env_ready(const struct s3t_tok_env *e);
