/* common/s3.h - error codes, per-request error text and logging shared by every module.
 *
 * Errors follow libuv: functions return 0 on success or a negative S3_E* code; detail text
 * goes into a caller-owned struct s3_errinfo (may be NULL) filled with s3_errf(). */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum {
    S3_OK = 0,
    S3_EINVAL = -1,    /* bad argument or input */
    S3_ENOMEM = -2,    /* allocation failed */
    S3_ETOOBIG = -3,   /* over a configured or format limit */
    S3_ENOTFOUND = -4, /* file, key, tensor or id not found */
    S3_EBUSY = -5,
    S3_ECANCELED = -6,
    S3_ETIMEDOUT = -7,
    S3_EIO = -8,       /* read/write/mmap failure */
    S3_EDB = -9,       /* SQLite failure */
    S3_EDEVICE = -10,  /* accelerator failure */
    S3_EINTERNAL = -11,
    S3_EFORMAT = -12,  /* file is truncated, corrupt or of an unsupported kind */
};

/* Static string for a code; never NULL. */
const char *s3_strerror(int code);

struct s3_errinfo {
    int code;
    char msg[256];
};

/* Record code and a formatted message in err (err may be NULL). Returns code, so that
 * `return s3_errf(err, S3_EINVAL, "...")` works. Any thread. */
int s3_errf(struct s3_errinfo *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- logging ---------------------------------------------------------------------------- */

enum s3_log_level { S3_LOG_DEBUG = 0, S3_LOG_INFO = 1, S3_LOG_WARN = 2, S3_LOG_ERROR = 3 };

typedef void (*s3_log_fn)(void *ud, int level, const char *line);

/* Replace the sink (NULL restores stderr). Call before threads start. */
void s3_log_set(s3_log_fn fn, void *ud);
void s3_log_set_level(int level);
int s3_log_level(void);
void s3_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One key=value line per event; the level is checked before formatting. */
#define S3_LOG(level, ...)                                                                     \
    do {                                                                                       \
        if ((level) >= s3_log_level())                                                         \
            s3_log_write((level), __VA_ARGS__);                                                \
    } while (0)

/* ---- small helpers ---------------------------------------------------------------------- */

/* Monotonic clock in milliseconds. */
double s3_now_ms(void);

/* Read a whole file into a new NUL-terminated buffer (caller frees). Capped at max_bytes. */
int s3_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len,
                 struct s3_errinfo *err);

/* Hex sha256 of a byte range (65 bytes incl. NUL). */
void s3_sha256_hex(const void *data, size_t n, char out[65]);
