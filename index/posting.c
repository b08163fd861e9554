/* index/posting.c - the posting blob format (see index_int.h): varints and log-quantised
 * activations. */
#include <math.h>
#include <string.h>

#include "index_int.h"

size_t idx__varint_put(uint8_t *buf, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        buf[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[n++] = (uint8_t)v;
    return n;
}

size_t idx__varint_get(const uint8_t *p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (size_t i = 0; i < 10 && p + i < end; i++) {
        uint64_t b = p[i];
        if (i == 9 && b > 1)
            return 0; /* more than 64 bits */
        x |= (b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

/* 2^((k - 0.5) / 12), k = 1..12, rounded to float: a mantissa m in [1, 2) at or above the
 * k-th rounds 12 * log2(m) up to at least k. */
static const float act_mid[12] = {
    0x1.07805ap+0f, 0x1.172b84p+0f, 0x1.27c532p+0f, 0x1.395b92p+0f, 0x1.4bfdaep+0f, 0x1.5fbb6ep+0f,
    0x1.74a5b0p+0f, 0x1.8ace54p+0f, 0x1.a24848p+0f, 0x1.bb279cp+0f, 0x1.d5818ep+0f, 0x1.f16ca2p+0f,
};

/* round(12 * log2(a)) + IDX_Q_ZERO clamped to 1..255, from the float's exponent and 12
 * mantissa comparisons (a scan encodes every indexed feature of every token: log2f was a
 * tenth of the writer's time). */
uint8_t idx__act_encode(float a)
{
    if (!(a > 0))
        return 1;
    uint32_t bits;
    memcpy(&bits, &a, sizeof bits);
    const int e = (int)((bits >> 23) & 0xff) - 127;
    if (e < -20)
        return 1; /* below code 1 (and subnormals) */
    if (e > 20)
        return 255; /* above code 255 (and infinity) */
    const uint32_t mb = (bits & 0x7fffffu) | 0x3f800000u;
    float m;
    memcpy(&m, &mb, sizeof m);
    int r = 0;
    for (int k = 0; k < 12; k++)
        r += m >= act_mid[k];
    const int q = IDX_Q_ZERO + 12 * e + r;
    return (uint8_t)(q < 1 ? 1 : q > 255 ? 255 : q);
}

float idx__act_decode(uint8_t q)
{
    return exp2f(((float)q - (float)IDX_Q_ZERO) / IDX_Q_STEPS);
}

void idx__act_lut(float lut[256])
{
    lut[0] = 0;
    for (int q = 1; q < 256; q++)
        lut[q] = idx__act_decode((uint8_t)q);
}

int idx__post_encode(int64_t base, int64_t prev_pos, const struct idx_post *p, size_t n,
                     uint8_t *buf)
{
    size_t len = 0;
    if (prev_pos >= 0 && prev_pos < base)
        return S3_EINVAL;
    for (size_t i = 0; i < n; i++) {
        int64_t pos = p[i].pos;
        if (pos < base || pos <= prev_pos || pos - base >= IDX_MAX_SPAN || p[i].q == 0)
            return S3_EINVAL;
        uint64_t gap = prev_pos < 0 ? (uint64_t)(pos - base) : (uint64_t)(pos - prev_pos - 1);
        len += idx__varint_put(buf + len, gap);
        buf[len++] = p[i].q;
        prev_pos = pos;
    }
    return (int)len;
}

int64_t idx__post_decode(int64_t base, int64_t lim, const uint8_t *blob, size_t n,
                         const float *lut, idx_post_fn fn, void *ud)
{
    const uint8_t *p = blob, *end = blob + n;
    int64_t prev = -1, count = 0;
    while (p < end) {
        uint64_t gap;
        size_t k;
        if (p[0] < 0x80) { /* the common one-byte gap */
            gap = p[0];
            k = 1;
        } else {
            k = idx__varint_get(p, end, &gap);
            if (!k)
                return S3_EFORMAT;
        }
        p += k;
        if (p >= end || *p == 0 || gap >= (uint64_t)(lim - base))
            return S3_EFORMAT;
        int64_t pos = prev < 0 ? base + (int64_t)gap : prev + 1 + (int64_t)gap;
        if (pos >= lim)
            return S3_EFORMAT;
        if (fn)
            fn(ud, pos, *p, lut ? lut[*p] : 0.0f);
        p++;
        prev = pos;
        count++;
    }
    return count;
}
