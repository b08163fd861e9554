/* tests/fuzz/fuzz.h - helpers shared by the libFuzzer drivers (tests/fuzz/fuzz_*.c).
 *
 * Each driver defines LLVMFuzzerTestOneInput (and, where it needs set-up done once,
 * LLVMFuzzerInitialize). A property that fails calls fuzz_fail(), which prints the reason and
 * aborts, so libFuzzer records the input as a crash. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "fuzz property failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fputc('\n', stderr);                                                                \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

/* data[0..size) as a new NUL-terminated string (free()); NULL on ENOMEM. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return NULL;
    if (size)
        memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* 1 when s[0..n) is well-formed UTF-8 (shortest forms, no surrogates, <= U+10FFFF). */
static inline int fuzz_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* The file rel (relative to the repository root) if it exists: $S3_ROOT/rel, else rel, ../rel
 * or ../../rel from the working directory (a build folder). New string (free()) or NULL. */
static inline char *fuzz_find_file(const char *rel)
{
    static const char *const pre[] = {"", "", "../", "../../"};
    const char *root = getenv("S3_ROOT");
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) {
        if (i == 0 && !(root && *root))
            continue;
        size_t n = (i == 0 ? strlen(root) + 1 : strlen(pre[i])) + strlen(rel) + 1;
        char *p = malloc(n);
        if (!p)
            return NULL;
        if (i == 0)
            snprintf(p, n, "%s/%s", root, rel);
        else
            snprintf(p, n, "%s%s", pre[i], rel);
        if (access(p, R_OK) == 0)
            return p;
        free(p);
    }
    return NULL;
}

/* A regular in-memory file holding data[0..size); its path ("/proc/self/fd/N") goes to
 * path (cap bytes). Returns the descriptor (close() it when done) or -1. */
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t cap)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}
