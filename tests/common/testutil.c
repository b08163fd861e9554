/* tests/common/testutil.c - file locations, fixtures, temp files and the suite runner. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *s3t_root(void)
{
    const char *r = getenv("S3_ROOT");
    return r && *r ? r : ".";
}

char *s3t_root_path(const char *rel)
{
    const char *r = s3t_root();
    const size_t n = strlen(r) + strlen(rel) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", r, rel);
    return p;
}

int s3t_quick(void)
{
    const char *q = getenv("S3_TEST_QUICK");
    return q && q[0] == '1';
}

void s3t_skip_no_model(const char *what)
{
    fprintf(stderr, "SKIP: %s not found under S3_ROOT; %s skipped\n", S3T_MODEL_REL, what);
}

json_t *s3t_fixture_json(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/%s", name);
    char *path = s3t_root_path(rel);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        fprintf(stderr, "SKIP: %s not readable (%s)\n", path, je.text);
    free(path);
    return j;
}

void s3t_tmp_path(char *buf, size_t cap, const char *stem)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, cap, "%s/%sXXXXXX", dir && *dir ? dir : P_tmpdir, stem);
    const int fd = mkstemp(buf);
    ck_assert_msg(fd >= 0, "mkstemp %s failed", buf);
    close(fd);
}

int s3t_run(Suite *s, enum fork_status fork_mode)
{
    SRunner *sr = srunner_create(s);
    if (fork_mode != CK_FORK_GETENV)
        srunner_set_fork_status(sr, fork_mode);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
