#include <stdio.h>
#include <time.h>

#include "s3.h"

static s3_log_fn g_log_fn;
static void *g_log_ud;
static int g_log_level = S3_LOG_INFO;

void s3_log_set(s3_log_fn fn, void *ud)
{
    g_log_fn = fn;
    g_log_ud = ud;
}

void s3_log_set_level(int level)
{
    g_log_level = level;
}

int s3_log_level(void)
{
    return g_log_level;
}

void s3_log_write(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[1024];
    va_list ap;
    int lv = level < 0 ? 0 : level > 3 ? 3 : level;
    int n = snprintf(line, sizeof line, "level=%s ", names[lv]);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (g_log_fn) {
        g_log_fn(g_log_ud, level, line);
        return;
    }
    fprintf(stderr, "%s\n", line);
}
