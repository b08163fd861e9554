/* kernels/quant.c - ggml block formats: sizes, fp16/bf16 conversion, reference dequantisation.
 *
 * Plain scalar C, written for clarity; the fast paths (fused dequant + dot) live in the
 * backends. Block layouts (little endian, "half" = IEEE binary16):
 *
 *   type  elems bytes layout
 *   Q4_0   32    18   d:half | qs[16]            y[j] = (nib - 8) * d, low nibbles first
 *   Q4_1   32    20   d:half | m:half | qs[16]   y[j] = nib * d + m
 *   Q5_0   32    22   d:half | qh[4] | qs[16]    5th bit of element j is bit j of qh (u32)
 *   Q5_1   32    24   d:half | m:half | qh[4] | qs[16]
 *   Q8_0   32    34   d:half | qs[32] (int8)     y[j] = qs[j] * d
 *   Q2_K  256    84   scales[16] | qs[64] | d:half | dmin:half
 *   Q3_K  256   110   hmask[32] | qs[64] | scales[12] | d:half
 *   Q4_K  256   144   d:half | dmin:half | scales[12] | qs[128]
 *   Q5_K  256   176   d:half | dmin:half | scales[12] | qh[32] | qs[128]
 *   Q6_K  256   210   ql[128] | qh[64] | scales[16] (int8) | d:half
 *
 * The float operations are done in the same order as ggml's reference code (scale first, then
 * multiply, then add/subtract the minimum) so results are bit-exact. No FMA contraction: the
 * project builds in ISO C mode, where GCC does not contract. */
#include "quant.h"

#include <string.h>

#include "s3.h"

#define QK 32   /* elements per block of the legacy formats */
#define QK_K 256 /* elements per super-block of the k-quants */

/* Type numbers as in the file format (kernels/ knows no engine headers). */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30,
};

struct type_info {
    uint32_t type;
    int block_size;
    size_t block_bytes;
};

static const struct type_info k_types[] = {
    {T_F32, 1, 4},       {T_F16, 1, 2},        {T_BF16, 1, 2},       {T_Q4_0, QK, 18},
    {T_Q4_1, QK, 20},    {T_Q5_0, QK, 22},     {T_Q5_1, QK, 24},     {T_Q8_0, QK, 34},
    {T_Q2_K, QK_K, 84},  {T_Q3_K, QK_K, 110},  {T_Q4_K, QK_K, 144},  {T_Q5_K, QK_K, 176},
    {T_Q6_K, QK_K, 210},
};

static const struct type_info *type_find(uint32_t type)
{
    for (size_t i = 0; i < sizeof k_types / sizeof k_types[0]; i++)
        if (k_types[i].type == type)
            return &k_types[i];
    return NULL;
}

int krn_type_supported(uint32_t type) { return type_find(type) != NULL; }

int krn_type_block_size(uint32_t type)
{
    const struct type_info *t = type_find(type);
    return t ? t->block_size : 0;
}

size_t krn_type_block_bytes(uint32_t type)
{
    const struct type_info *t = type_find(type);
    return t ? t->block_bytes : 0;
}

size_t krn_type_row_bytes(uint32_t type, int64_t n)
{
    const struct type_info *t = type_find(type);
    if (!t || n < 0 || n % t->block_size != 0)
        return 0;
    uint64_t blocks = (uint64_t)n / (uint64_t)t->block_size;
    if (blocks > SIZE_MAX / t->block_bytes)
        return 0;
    return (size_t)blocks * t->block_bytes;
}

/* ---- fp16 / bf16 ------------------------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float krn_fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf / nan: keep the payload */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return bits_f32(sign);
        /* subnormal: normalise. value = mant * 2^-24 */
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while (!(mant & 0x400));
        mant &= 0x3ff;
        /* leading bit was at position 10-1-e relative; exponent = -14 - 1 - e */
        return bits_f32(sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13));
    }
    return bits_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

uint16_t krn_f32_to_fp16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t exp = (u >> 23) & 0xff;
    uint32_t mant = u & 0x7fffff;
    if (exp == 0xff) {
        if (mant == 0)
            return sign | 0x7c00;
        /* nan: keep the top payload bits, force quiet so it stays a nan */
        return sign | 0x7c00 | 0x200 | (uint16_t)(mant >> 13);
    }
    int e = (int)exp - 127 + 15; /* half exponent field if normal */
    if (e >= 0x1f)
        return sign | 0x7c00; /* overflow (also catches values rounding up past max) */
    if (e <= 0) {
        /* subnormal half or zero: value = m * 2^-24, m = full mantissa >> shift */
        if (e < -10)
            return sign; /* below half the smallest subnormal: rounds to zero */
        uint32_t m = mant | 0x800000;
        int shift = 14 - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++; /* may carry into the smallest normal: still the right encoding */
        return sign | (uint16_t)q;
    }
    uint32_t q = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1)))
        q++; /* a carry into the exponent is correct, up to 0x7c00 = inf */
    return sign | (uint16_t)q;
}

float krn_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t krn_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) /* nan: truncate and force quiet */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1); /* round to nearest even; overflow gives inf */
    return (uint16_t)(u >> 16);
}

/* ---- block decoders (one block each) ---------------------------------------------------- */

static float rd_half(const uint8_t *p) { return krn_fp16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = rd_half(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)((qs[j] & 0x0f) - 8) * d;
        y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y)
{
    float d = rd_half(b), m = rd_half(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)(qs[j] & 0x0f) * d + m;
        y[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void deq_q5_0(const uint8_t *b, float *y)
{
    float d = rd_half(b);
    uint32_t qh = rd_u32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = (float)(lo - 16) * d;
        y[j + QK / 2] = (float)(hi - 16) * d;
    }
}

static void deq_q5_1(const uint8_t *b, float *y)
{
    float d = rd_half(b), m = rd_half(b + 2);
    uint32_t qh = rd_u32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = (float)lo * d + m;
        y[j + QK / 2] = (float)hi * d + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = rd_half(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < QK; j++)
        y[j] = (float)qs[j] * d;
}

static void deq_q2_k(const uint8_t *b, float *y)
{
    const uint8_t *scales = b, *q = b + 16;
    float d = rd_half(b + 80), dmin = rd_half(b + 82);
    int is = 0;
    /* two halves of 128; each: 4 bit-planes (shift 0,2,4,6) x 2 groups of 16 */
    for (int half = 0; half < 2; half++, q += 32) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int g = 0; g < 2; g++, is++) {
                float dl = d * (float)(scales[is] & 0x0f);
                float ml = dmin * (float)(scales[is] >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((q[g * 16 + l] >> shift) & 3) - ml;
            }
        }
    }
}

/* Q3_K: 16 6-bit signed scales (offset 32) packed in 12 bytes: low nibbles in bytes 0..7
 * (scale i < 8 in the low nibble of byte i, scale i >= 8 in the high nibble of byte i-8),
 * high 2 bits in bytes 8..11 (scale i at bits 2*(i/4) of byte 8 + i%4). */
static void deq_q3_k(const uint8_t *b, float *y)
{
    const uint8_t *hmask = b, *q = b + 32, *sc = b + 96;
    float d = rd_half(b + 108);
    int scale[16];
    for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? (sc[i] & 0x0f) : (sc[i - 8] >> 4);
        int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        scale[i] = (lo | (hi << 4)) - 32;
    }
    int is = 0, bit = 0;
    for (int half = 0; half < 2; half++, q += 32) {
        for (int shift = 0; shift < 8; shift += 2, bit++) {
            for (int g = 0; g < 2; g++, is++) {
                float dl = d * (float)scale[is];
                for (int l = 0; l < 16; l++) {
                    int k = g * 16 + l;
                    int v = (q[k] >> shift) & 3;
                    if (!(hmask[k] & (1u << bit)))
                        v -= 4;
                    *y++ = dl * (float)v;
                }
            }
        }
    }
}

/* Q4_K/Q5_K: 8 pairs of 6-bit (scale, min) in 12 bytes. */
static void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void deq_q4_k(const uint8_t *b, float *y)
{
    float d = rd_half(b), dmin = rd_half(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    for (int j = 0; j < QK_K / 64; j++, q += 32) {
        int sc, m;
        scale_min_k4(2 * j, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        scale_min_k4(2 * j + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)(q[l] & 0x0f) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)(q[l] >> 4) - m2;
    }
}

static void deq_q5_k(const uint8_t *b, float *y)
{
    float d = rd_half(b), dmin = rd_half(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *q = b + 48;
    for (int j = 0; j < QK_K / 64; j++, q += 32) {
        int sc, m;
        scale_min_k4(2 * j, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        scale_min_k4(2 * j + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        unsigned u1 = 1u << (2 * j), u2 = 2u << (2 * j);
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)((q[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rd_half(b + 208);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

typedef void (*deq_block_fn)(const uint8_t *b, float *y);

int krn_dequant(uint32_t type, const void *src, float *dst, int64_t n)
{
    const struct type_info *t = type_find(type);
    if (!t || n < 0 || n % t->block_size != 0 || (n > 0 && (!src || !dst)))
        return S3_EINVAL;
    const uint8_t *s = src;
    switch (type) {
    case T_F32:
        memcpy(dst, s, (size_t)n * 4);
        return 0;
    case T_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = krn_fp16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return 0;
    case T_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = krn_bf16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return 0;
    default:
        break;
    }
    deq_block_fn fn = NULL;
    switch (type) {
    case T_Q4_0: fn = deq_q4_0; break;
    case T_Q4_1: fn = deq_q4_1; break;
    case T_Q5_0: fn = deq_q5_0; break;
    case T_Q5_1: fn = deq_q5_1; break;
    case T_Q8_0: fn = deq_q8_0; break;
    case T_Q2_K: fn = deq_q2_k; break;
    case T_Q3_K: fn = deq_q3_k; break;
    case T_Q4_K: fn = deq_q4_k; break;
    case T_Q5_K: fn = deq_q5_k; break;
    case T_Q6_K: fn = deq_q6_k; break;
    default: return S3_EINVAL;
    }
    int64_t n_blocks = n / t->block_size;
    for (int64_t i = 0; i < n_blocks; i++)
        fn(s + (size_t)i * t->block_bytes, dst + i * t->block_size);
    return 0;
}
