#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "s3.h"

const char *s3_strerror(int code)
{
    switch (code) {
    case S3_OK: return "ok";
    case S3_EINVAL: return "invalid argument";
    case S3_ENOMEM: return "out of memory";
    case S3_ETOOBIG: return "too big";
    case S3_ENOTFOUND: return "not found";
    case S3_EBUSY: return "busy";
    case S3_ECANCELED: return "canceled";
    case S3_ETIMEDOUT: return "timed out";
    case S3_EIO: return "i/o error";
    case S3_EDB: return "database error";
    case S3_EDEVICE: return "device error";
    case S3_EINTERNAL: return "internal error";
    case S3_EFORMAT: return "bad file format";
    default: return "unknown error";
    }
}

int s3_errf(struct s3_errinfo *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

double s3_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int s3_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len,
                 struct s3_errinfo *err)
{
    int rc = 0;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return s3_errf(err, errno == ENOENT ? S3_ENOTFOUND : S3_EIO, "cannot open %s: %s", path,
                       strerror(errno));
    for (;;) {
        if (cap - len < 65536 + 1) {
            size_t ncap = cap ? cap * 2 : 131072;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = s3_errf(err, S3_ENOMEM, "out of memory reading %s", path);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (len > max_bytes) {
            rc = s3_errf(err, S3_ETOOBIG, "%s is larger than %zu bytes", path, max_bytes);
            goto out;
        }
        if (got == 0) {
            if (ferror(f))
                rc = s3_errf(err, S3_EIO, "cannot read %s", path);
            break;
        }
    }
out:
    fclose(f);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return 0;
}
