/* SHA-256 (FIPS 180-4) through Nettle, which libmicrohttpd's TLS stack already brings in and
 * which uses the CPU's SHA extensions where there are any (a 4.7 GB model file is fingerprinted
 * in seconds, not tens of seconds). Used to fingerprint model, SAE and document bytes. */
#include <nettle/sha2.h>
#include <stdio.h>

#include "s3.h"

void s3_sha256_hex(const void *data, size_t n, char out[65])
{
    struct sha256_ctx c;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_init(&c);
    /* nettle takes size_t lengths; feed in 1 GiB pieces all the same (bounded work per call) */
    const uint8_t *p = data;
    while (n > 0) {
        const size_t k = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        sha256_update(&c, k, p);
        p += k, n -= k;
    }
    sha256_digest(&c, sizeof d, d);
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof d; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = 0;
}
