/* tests/server/test_cfg.c - configuration: precedence file < environment < flags, the JSON
 * file reader, validation and masked printing. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "testutil.h"

/* A fake environment: name=value pairs. */
static const char *fake_env[16];

static const char *env_get(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; fake_env[i]; i++)
        if (!strncmp(fake_env[i], name, n) && fake_env[i][n] == '=')
            return fake_env[i] + n + 1;
    return NULL;
}

static void env_set(const char **pairs)
{
    size_t i = 0;
    for (; pairs && pairs[i] && i < 15; i++)
        fake_env[i] = pairs[i];
    fake_env[i] = NULL;
}

/* Write text to a new temporary file; returns its path (static buffer). */
static const char *tmp_file(const char *text)
{
    static char path[256];
    s3t_tmp_path(path, sizeof path, "s3cfg");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static int load(struct cfg *c, int argc, const char **argv, struct s3_errinfo *err)
{
    memset(err, 0, sizeof *err);
    return cfg_load(c, argc, (char **)argv, env_get, err);
}

START_TEST(defaults)
{
    struct cfg c;
    struct s3_errinfo err;
    const char *argv[] = {"serve"};
    env_set(NULL);
    ck_assert_int_eq(load(&c, 1, argv, &err), 0);
    ck_assert_str_eq(c.host, "127.0.0.1");
    ck_assert_int_eq(c.port, 8080);
    ck_assert_str_eq(c.model, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    ck_assert_str_eq(c.model_id, "SmolLM2-135M-Instruct.Q4_1"); /* derived from the file */
    ck_assert_uint_eq(c.n_api_keys, 0);
    ck_assert_int_eq(c.queue_max, 64);
    ck_assert_str_eq(c.config, "");
    cfg_deinit(&c);
}
END_TEST

START_TEST(precedence)
{
    struct cfg c;
    struct s3_errinfo err;
    const char *file = tmp_file("{ \"port\": 1000, \"host\": \"::1\", \"model_id\": \"from-file\",\n"
                                "  \"queue_max\": 5, \"api_keys\": [\"file-key-1234\"],\n"
                                "  \"log_level\": \"warn\" }");
    const char *env[] = {"S3_PORT=2000", "S3_MODEL_ID=from-env", "S3_QUEUE_MAX=7", NULL};
    env_set(env);
    const char *argv[] = {"serve", "--config", file, "--port", "3000", "--queue-max=9"};
    ck_assert_msg(load(&c, 6, argv, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.port, 3000);             /* flag > env > file */
    ck_assert_int_eq(c.queue_max, 9);           /* flag (--key=value form) */
    ck_assert_str_eq(c.model_id, "from-env");   /* env > file */
    ck_assert_str_eq(c.host, "::1");            /* file > default */
    ck_assert_int_eq(c.log_level, S3_LOG_WARN);
    ck_assert_uint_eq(c.n_api_keys, 1);
    ck_assert_str_eq(c.api_keys[0], "file-key-1234");
    ck_assert_str_eq(c.config, file);
    cfg_deinit(&c);

    /* the file named by the environment */
    const char *env2[] = {"S3_CONFIG=", NULL};
    char buf[300];
    snprintf(buf, sizeof buf, "S3_CONFIG=%s", file);
    env2[0] = buf;
    env_set(env2);
    const char *argv2[] = {"serve"};
    ck_assert_msg(load(&c, 1, argv2, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.port, 1000);
    ck_assert_str_eq(c.model_id, "from-file");
    cfg_deinit(&c);
    unlink(file);
}
END_TEST

START_TEST(bad_inputs)
{
    struct cfg c;
    struct s3_errinfo err;
    env_set(NULL);
    const char *a1[] = {"serve", "--no-such-flag", "1"};
    ck_assert_int_eq(load(&c, 3, a1, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "no-such-flag"));
    const char *a2[] = {"serve", "--port", "http"};
    ck_assert_int_eq(load(&c, 3, a2, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "port"));
    const char *a3[] = {"serve", "--port", "70000"};
    ck_assert_int_eq(load(&c, 3, a3, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    const char *a4[] = {"serve", "--port"};
    ck_assert_int_eq(load(&c, 2, a4, &err), S3_EINVAL);
    const char *a5[] = {"serve", "stray"};
    ck_assert_int_eq(load(&c, 2, a5, &err), S3_EINVAL);
    const char *a6[] = {"serve", "--default-max-tokens", "500", "--max-tokens-limit", "100"};
    ck_assert_int_eq(load(&c, 5, a6, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "default_max_tokens"));
    const char *a7[] = {"serve", "--api-keys", "short"};
    ck_assert_int_eq(load(&c, 3, a7, &err), S3_EINVAL);
    const char *a8[] = {"serve", "--config", "no/such/file.json"};
    ck_assert_int_eq(load(&c, 3, a8, &err), S3_EIO);
    const char *a9[] = {"serve", "--log-level", "loud"};
    ck_assert_int_eq(load(&c, 3, a9, &err), S3_EINVAL);
    const char *a11[] = {"serve", "--device", "tpu"};
    ck_assert_int_eq(load(&c, 3, a11, &err), S3_EINVAL);
    ck_assert_str_eq(err.msg, "device: must be cpu, cpu-f32 or cuda, got 'tpu'");
    const char *a12[] = {"serve", "--device", "cpu-f32"};
    ck_assert_int_eq(load(&c, 3, a12, &err), 0);
    ck_assert_str_eq(c.device, "cpu-f32");
    cfg_deinit(&c);
    const char *env[] = {"S3_PORT=abc", NULL};
    env_set(env);
    const char *a10[] = {"serve"};
    ck_assert_int_eq(load(&c, 1, a10, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "S3_PORT"));
}
END_TEST

START_TEST(json_reader)
{
    struct cfg c;
    struct s3_errinfo err = {0};
    cfg_defaults(&c);
    const char *ok = " {\"model\":\"a\\/b\\u00e9\\n.gguf\",\"port\":0,\"api_keys\":[],"
                     "\"threads\":true} ";
    ck_assert_msg(cfg_apply_json(&c, ok, strlen(ok), &err) == 0, "%s", err.msg);
    ck_assert_str_eq(c.model, "a/b\xc3\xa9\n.gguf");
    ck_assert_int_eq(c.port, 0);
    ck_assert_int_eq(c.threads, 1);
    static const char *bad[] = {
        "", "[]", "{\"port\":8080", "{\"port\":8080}x", "{\"port\":80.5}", "{\"nope\":1}",
        "{\"port\":{}}", "{\"model\":5}", "{\"port\":[\"1\"]}", "{\"model\":\"a\\q\"}",
        "{port:1}", "{\"model\":\"\\u0000\"}", "{\"api_keys\":[\"a,b\"]}",
        /* not JSON numbers (strtoll would take them) */
        "{\"port\":+80}", "{\"port\":080}", "{\"port\":--1}", "{\"port\":-}", "{\"port\":00}",
        /* API keys are strings (a number, even one long enough, is not a key) */
        "{\"api_keys\":2222222222222222222222222222222222222222}", "{\"api_keys\":true}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        ck_assert_msg(cfg_apply_json(&c, bad[i], strlen(bad[i]), &err) < 0, "accepted: %s",
                      bad[i]);
        ck_assert_msg(err.msg[0], "no message for %s", bad[i]);
    }
    cfg_deinit(&c);
}
END_TEST

START_TEST(print_masks_keys)
{
    struct cfg c;
    struct s3_errinfo err;
    const char *env[] = {"S3_API_KEYS=sk-secret-one, sk-secret-two", NULL};
    env_set(env);
    const char *argv[] = {"serve", "--api-keys", "flag-secret-3"};
    ck_assert_int_eq(load(&c, 3, argv, &err), 0);
    ck_assert_uint_eq(c.n_api_keys, 3); /* keys accumulate across sources */
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    cfg_print(&c, f);
    fclose(f);
    ck_assert_ptr_null(strstr(out, "secret"));
    ck_assert_ptr_nonnull(strstr(out, "config api_keys=sk-***,sk-***,fla***\n"));
    ck_assert_ptr_nonnull(strstr(out, "config port=8080\n"));
    ck_assert_ptr_nonnull(strstr(out, "config log_level=info\n"));
    free(out);
    char m[8];
    cfg_mask_key("abc", m);
    ck_assert_str_eq(m, "***");
    cfg_mask_key("abcdefgh", m);
    ck_assert_str_eq(m, "abc***");
    cfg_deinit(&c);
    cfg_deinit(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, precedence);
    tcase_add_test(tc, bad_inputs);
    tcase_add_test(tc, json_reader);
    tcase_add_test(tc, print_masks_keys);
    suite_add_tcase(s, tc);
    return s3t_run(s, CK_FORK_GETENV);
}
