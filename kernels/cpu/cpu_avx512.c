/* kernels/cpu/cpu_avx512.c - AVX512-VNNI and AMX fast paths: activation quantisation, the
 * quantised GEMM/GEMV kernels and f16-cache attention. Chosen at run time by cpu_ref.c
 * (krn__have_avx512vnni, krn__have_amx); every function carries its own target attribute so
 * the file builds with the project's generic flags.
 *
 * Quantised GEMM (formats in kernels.h): weights sit in records of 16 rows x one 32-block,
 * interleaved 4 bytes at a time, which is the operand layout of both vpdpbusd (16 rows in one
 * register, an activation dword broadcast) and AMX's B tile. Both paths first form the exact
 * integer sum of each block for (row, token), then do the same float steps per block as the
 * scalar reference, so all three agree bit for bit.
 *   VNNI (decode, few tokens): per (group, block) 8 vpdpbusd per token give the 16 rows' block
 *     sums; the loop streams the weights once.
 *   AMX (prefill): per (group, 16-token tile, block) one tile product gives 16x16 block sums;
 *     Q4 values are first widened to bytes once per group; the scaling of one block overlaps
 *     the tile product of the next. */
#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels_int.h"
#include "s3.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
#define INL __attribute__((always_inline)) inline

/* ---- activation quantisation ------------------------------------------------------------------ */

TGT void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1)
{
    const int nb = a->nb;
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * a->n_cols;
        int8_t *qs = a->qs + (size_t)t * nb * 32;
        float *dt = a->d + (size_t)t * nb;
        float *st = a->s + (size_t)t * nb;
        for (int b = 0; b < nb; b++) {
            __m512 x0 = _mm512_loadu_ps(xt + b * 32);
            __m512 x1 = _mm512_loadu_ps(xt + b * 32 + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            const float d = amax / 127.0f;
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            const __m512 vid = _mm512_set1_ps(id);
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid)); /* MXCSR: nearest-even */
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
            _mm_storeu_si128((__m128i *)(qs + b * 32), _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(qs + b * 32 + 16), _mm512_cvtsepi32_epi8(q1));
            const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            a->qsum[(size_t)t * nb + b] = sum;
            dt[b] = _cvtsh_ss(_cvtss_sh(d, 0));
            st[b] = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
            const size_t o = (size_t)b * a->n_tok_alloc + (size_t)t;
            a->dT[o] = dt[b], a->sT[o] = st[b], a->qsumT[o] = sum;
        }
    }
}

/* ---- quantised GEMM, VNNI ------------------------------------------------------------------------ */

/* The 16 rows' d (and m) of a record as floats. */
TGT static INL __m512 rec_d(const uint8_t *rec, int q4)
{
    return q4 ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(rec + 256)))
              : _mm512_load_ps((const float *)(rec + 512));
}

TGT static INL __m512 rec_m(const uint8_t *rec)
{
    return _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(rec + 288)));
}

/* Store the 16 row sums of group g for one token, only rows in [r0, r1). */
TGT static INL void store_rows(float *yt, int g, int r0, int r1, __m512 v)
{
    const int base = g * 16;
    if (base >= r0 && base + 16 <= r1) {
        _mm512_storeu_ps(yt + base, v);
        return;
    }
    const int lo = r0 > base ? r0 - base : 0, hi = r1 < base + 16 ? r1 - base : 16;
    const __mmask16 m = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
    _mm512_mask_storeu_ps(yt + base, m, v);
}

#ifndef PF_REC
#define PF_REC 8
#endif

/* G row groups from g0 x T tokens from t0. Per (group, block) the record's values are loaded
 * once (Q4: widened to 8 byte vectors); each token's 8 activation dwords are broadcast:
 * vpdpbusd(w u8, a s8); Q8 weights are stored plus 128, so 128 * sum(a) is subtracted. */
TGT static INL void vnni_kernel(const struct krn_qmat *w, const struct krn_qact *a, int g0,
                                int t0, float *y, int ldy, int r0, int r1, const int G,
                                const int T, const int q4)
{
    const int nb = w->nb;
    const size_t rb = w->rec_bytes;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[g][t] = _mm512_setzero_ps();
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const uint8_t *rec0 = w->rec + (size_t)g0 * nb * rb;
    for (int b = 0; b < nb; b++) {
        __m512i av[4][8];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const int32_t *ap = (const int32_t *)(a->qs + ((size_t)(t0 + t) * nb + b) * 32);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                av[t][k] = _mm512_set1_epi32(ap[k]);
        }
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            const uint8_t *rec = rec0 + ((size_t)g * nb + b) * rb;
            __m512i wv[8];
            if (T == 1) {
                /* one token: the loop streams the weights; ask for them PF_REC records ahead
                 * (past the end of the group: the next groups, read next) */
                const char *pf = (const char *)rec + PF_REC * rb;
#pragma GCC unroll 10
                for (size_t o = 0; o < rb; o += 64)
                    _mm_prefetch(pf + o, _MM_HINT_T0);
            }
            if (q4) {
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) {
                    const __m512i v = _mm512_load_si512((const void *)(rec + c * 64));
                    wv[c] = _mm512_and_si512(v, lo4);
                    wv[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                }
            } else {
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++)
                    wv[k] = _mm512_load_si512((const void *)(rec + k * 64));
            }
            const __m512 dw = rec_d(rec, q4);
            __m512 mw = _mm512_setzero_ps();
            if (q4)
                mw = rec_m(rec);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                /* two chains of 4 for latency; the integer sum is exact either way */
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    s0 = _mm512_dpbusd_epi32(s0, wv[k], av[t][k]);
                    s1 = _mm512_dpbusd_epi32(s1, wv[k + 4], av[t][k + 4]);
                }
                __m512i isum = _mm512_add_epi32(s0, s1);
                if (!q4) /* the weights are stored plus 128 */
                    isum = _mm512_sub_epi32(
                        isum, _mm512_set1_epi32(128 * a->qsum[(size_t)(t0 + t) * nb + b]));
                const float *dt = a->d + (size_t)(t0 + t) * nb + b;
                const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(*dt));
                acc[g][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, acc[g][t]);
                if (q4) {
                    const float *st = a->s + (size_t)(t0 + t) * nb + b;
                    acc[g][t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*st), acc[g][t]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            store_rows(y + (size_t)(t0 + t) * ldy, g0 + g, r0, r1, acc[g][t]);
}

#define VNNI_CASE(G, T)                                                                        \
    TGT static void vnni_q4_##G##_##T(const struct krn_qmat *w, const struct krn_qact *a, int g0, \
                                      int t0, float *y, int ldy, int r0, int r1)               \
    {                                                                                          \
        vnni_kernel(w, a, g0, t0, y, ldy, r0, r1, G, T, 1);                                    \
    }                                                                                          \
    TGT static void vnni_q8_##G##_##T(const struct krn_qmat *w, const struct krn_qact *a, int g0, \
                                      int t0, float *y, int ldy, int r0, int r1)               \
    {                                                                                          \
        vnni_kernel(w, a, g0, t0, y, ldy, r0, r1, G, T, 0);                                    \
    }
VNNI_CASE(4, 1)
VNNI_CASE(1, 1)
VNNI_CASE(2, 4)
VNNI_CASE(1, 4)

TGT void krn__qmatmul_vnni(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                           float *y, int ldy, int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    const int q4 = w->qtype == KRN_Q4;
    const int ga = r0 / 16, gb = (r1 + 15) / 16;
    int t = 0;
    /* 4 tokens at a time: 2 groups x 4 tokens share each widened weight vector */
    for (; t + 4 <= n_tok; t += 4) {
        int g = ga;
        for (; g + 2 <= gb; g += 2)
            (q4 ? vnni_q4_2_4 : vnni_q8_2_4)(w, a, g, t, y, ldy, r0, r1);
        for (; g < gb; g++)
            (q4 ? vnni_q4_1_4 : vnni_q8_1_4)(w, a, g, t, y, ldy, r0, r1);
    }
    /* single tokens (decode): 4 groups at a time for independent chains */
    for (; t < n_tok; t++) {
        int g = ga;
        for (; g + 4 <= gb; g += 4)
            (q4 ? vnni_q4_4_1 : vnni_q8_4_1)(w, a, g, t, y, ldy, r0, r1);
        for (; g < gb; g++)
            (q4 ? vnni_q4_1_1 : vnni_q8_1_1)(w, a, g, t, y, ldy, r0, r1);
    }
}

/* ---- quantised GEMM, AMX ------------------------------------------------------------------------- */

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int krn__have_amx(void)
{
    static int have = -1; /* cache of a process property; benign race (same value written) */
    if (have < 0) {
        int h = 0;
        unsigned eax, ebx, ecx, edx;
        const char *env = getenv("S3_NO_AMX");
        if (krn__have_avx512vnni() && !(env && env[0] == '1') &&
            __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 24 & 1) &&
            (edx >> 25 & 1))
            h = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
        have = h;
    }
    return have;
}

#define TGT_AMX                                                                                \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c,amx-tile,amx-int8")))

/* Tile use per thread: tmm0/tmm4 activations (16 tokens x 32 bytes), tmm1/tmm5 weights (8 x 64
 * bytes: one block of 16 rows, VNNI order), tmm2/tmm3 block sums (16 tokens x 16 rows int32):
 * even and odd blocks use separate sets, so the next block's tile product runs while this
 * block is scaled. */
struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static _Thread_local int amx_configured;
#define AMX_MAX_NB 128 /* widened Q4 scratch: 128 blocks (4096 columns) of 512 bytes */
static _Thread_local _Alignas(64) uint8_t amx_w[AMX_MAX_NB * 512];

TGT_AMX static void amx_config(void)
{
    struct amx_cfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    cfg.rows[0] = 16, cfg.colsb[0] = 32;
    cfg.rows[1] = 8, cfg.colsb[1] = 64;
    cfg.rows[2] = 16, cfg.colsb[2] = 64;
    cfg.rows[3] = 16, cfg.colsb[3] = 64;
    cfg.rows[4] = 16, cfg.colsb[4] = 32;
    cfg.rows[5] = 8, cfg.colsb[5] = 64;
    _tile_loadconfig(&cfg);
    amx_configured = 1;
}

/* tilestored of a C tile into a 1 KiB buffer; unlike _tile_stored it names exactly the
 * memory written, so the accumulators may stay in registers across it. */
#define AMX_STORE_C(tc, buf)                                                                   \
    __asm__ volatile("tilestored %%tmm" #tc ", (%1,%2,1)"                                      \
                     : "=m"(*(int32_t(*)[256])(buf))                                           \
                     : "r"(buf), "r"((long)64))

/* block b's product: even b from tmm0 x tmm1 into tmm2, odd b from tmm4 x tmm5 into tmm3 (no
 * tile register is shared by two products in flight) */
#define AMX_DP(tc, ta, tb, bb)                                                                 \
    do {                                                                                       \
        _tile_zero(tc);                                                                        \
        _tile_loadd(ta, at + (size_t)(bb) * 32, astride);                                      \
        _tile_loadd(tb, wt + (size_t)(bb) * wstride, 64);                                      \
        _tile_dpbsud(tc, ta, tb);                                                              \
    } while (0)

/* acc[t] (16 rows) += the scaled block sums in cb of block bb, tokens t0..t0+15. The
 * per-token scales come from the block-major copies (contiguous over tokens). */
#define AMX_SCALE(cb, bb)                                                                      \
    do {                                                                                       \
        const uint8_t *rec_ = rec + (size_t)(bb) * w->rec_bytes;                               \
        const __m512 dw_ = rec_d(rec_, q4);                                                    \
        const __m512 mw_ = q4 ? rec_m(rec_) : _mm512_setzero_ps();                             \
        const size_t o_ = (size_t)(bb) * (size_t)a->n_tok_alloc + (size_t)t0;                  \
        const float *dT_ = a->dT + o_, *sT_ = a->sT + o_;                                      \
        const int32_t *qT_ = a->qsumT + o_;                                                    \
        _Pragma("GCC unroll 16") for (int t = 0; t < 16; t++)                                  \
        {                                                                                      \
            __m512i isum = _mm512_load_si512((const void *)((cb) + t * 16));                   \
            if (!q4) /* the weights are stored plus 128 */                                     \
                isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(128 * qT_[t]));                \
            const __m512 dd = _mm512_mul_ps(dw_, _mm512_set1_ps(dT_[t]));                      \
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dd, acc[t]);                    \
            if (q4)                                                                            \
                acc[t] = _mm512_fmadd_ps(mw_, _mm512_set1_ps(sT_[t]), acc[t]);                 \
        }                                                                                      \
    } while (0)

TGT_AMX static INL void amx_group(const struct krn_qmat *w, const struct krn_qact *a,
                                  const uint8_t *wt, size_t wstride, int g, int t0, int n_t,
                                  float *y, int ldy, int r0, int r1, const int q4)
{
    const int nb = w->nb;
    const uint8_t *rec = w->rec + (size_t)g * nb * w->rec_bytes;
    const size_t astride = (size_t)nb * 32;
    const int8_t *at = a->qs + (size_t)t0 * astride;
    _Alignas(64) int32_t c0[256], c1[256];
    __m512 acc[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++)
        acc[t] = _mm512_setzero_ps();
    /* software pipeline: while block b is stored and block b-1 (stored one step earlier, so
     * read from L1 without waiting on the tile store) is scaled, block b+1's product runs */
    AMX_DP(2, 0, 1, 0);
    for (int b = 0; b < nb; b += 2) {
        /* even b: tmm2 -> c0; odd b: tmm3 -> c1 */
        if (b + 1 < nb)
            AMX_DP(3, 4, 5, b + 1);
        AMX_STORE_C(2, c0);
        if (b >= 1)
            AMX_SCALE(c1, b - 1);
        if (b + 1 >= nb) {
            AMX_SCALE(c0, b);
            break;
        }
        if (b + 2 < nb)
            AMX_DP(2, 0, 1, b + 2);
        AMX_STORE_C(3, c1);
        AMX_SCALE(c0, b);
        if (b + 2 >= nb)
            AMX_SCALE(c1, b + 1);
    }
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) /* constant indices: acc stays in registers */
        if (t < n_t)
            store_rows(y + (size_t)(t0 + t) * ldy, g, r0, r1, acc[t]);
}
#undef AMX_DP
#undef AMX_SCALE

TGT_AMX static void amx_group_q4(const struct krn_qmat *w, const struct krn_qact *a, int g,
                                 int t0, int n_t, float *y, int ldy, int r0, int r1)
{
    amx_group(w, a, amx_w, 512, g, t0, n_t, y, ldy, r0, r1, 1);
}

TGT_AMX static void amx_group_q8(const struct krn_qmat *w, const struct krn_qact *a, int g,
                                 int t0, int n_t, float *y, int ldy, int r0, int r1)
{
    amx_group(w, a, w->rec + (size_t)g * w->nb * w->rec_bytes, w->rec_bytes, g, t0, n_t, y, ldy,
              r0, r1, 0);
}

TGT_AMX int krn__qmatmul_amx(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                             float *y, int ldy, int r0, int r1)
{
    if (!krn__have_amx() || w->nb > AMX_MAX_NB || n_tok > a->n_tok_max || a->nb != w->nb ||
        !a->dT)
        return S3_EINVAL;
    if (r0 >= r1 || n_tok <= 0)
        return 0;
    if (!amx_configured)
        amx_config();
    const int q4 = w->qtype == KRN_Q4;
    const int ga = r0 / 16, gb = (r1 + 15) / 16;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    for (int g = ga; g < gb; g++) {
        if (q4) {
            /* widen the group's 4-bit values once; all token tiles read them */
            const uint8_t *rec = w->rec + (size_t)g * w->nb * w->rec_bytes;
            for (int b = 0; b < w->nb; b++, rec += w->rec_bytes) {
                uint8_t *o = amx_w + (size_t)b * 512;
                for (int c = 0; c < 4; c++) {
                    const __m512i v = _mm512_load_si512((const void *)(rec + c * 64));
                    _mm512_store_si512((void *)(o + c * 64), _mm512_and_si512(v, lo4));
                    _mm512_store_si512((void *)(o + 256 + c * 64),
                                       _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4));
                }
            }
            __asm__ volatile("" ::: "memory"); /* tileloadd reads amx_w: stores first */
        }
        for (int t = 0; t < n_tok; t += 16) {
            const int n_t = n_tok - t < 16 ? n_tok - t : 16;
            (q4 ? amx_group_q4 : amx_group_q8)(w, a, g, t, n_t, y, ldy, r0, r1);
        }
    }
    return 0;
}

/* ---- attention -------------------------------------------------------------------------------- */

/* e^x for x <= 0 (scores minus their max): 2^n * poly(r), |error| ~ 1e-7 relative. */
TGT static INL __m512 exp_ps(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

TGT static INL __m512 round_f16(__m512 x)
{
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

TGT void krn__attn_f16_avx512(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                              int n_q, int pos0, int n_head, int n_kv_head, int head_dim,
                              int n_ctx, float scale, float *scratch, int it0, int it1)
{
    const int nqg = (n_q + 3) / 4;
    const int group = n_head / n_kv_head;
    const int ld = n_head * head_dim;
    const int nd = head_dim / 16;
    float qf[4][256];
    for (int it = it0; it < it1; it++) {
        const int h = it / nqg, g = it % nqg;
        const int hk = h / group;
        const uint16_t *kh = kc + (size_t)hk * head_dim * n_ctx;
        const uint16_t *vh = vc + (size_t)hk * n_ctx * head_dim;
        const int i0 = g * 4;
        const int nqq = n_q - i0 < 4 ? n_q - i0 : 4;
        const int n_kv = pos0 + i0 + nqq; /* keys seen by the last query of the group */
        float *sc[4];
        for (int qq = 0; qq < 4; qq++) {
            sc[qq] = scratch + (size_t)qq * n_ctx;
            const float *qi = q + (size_t)(i0 + (qq < nqq ? qq : 0)) * ld + (size_t)h * head_dim;
            for (int d = 0; d < head_dim && d < 256; d += 16)
                _mm512_storeu_ps(&qf[qq][d], round_f16(_mm512_loadu_ps(qi + d)));
        }
        /* scores, K transposed so each dim is a contiguous row. Each score is a sum over the
         * dims in order; several key chunks are interleaved only to have enough independent
         * FMA chains in flight (one query: 4 chunks of 16 keys; 4 queries: 2 chunks). */
#define KMASK(jj) (n_kv - (jj) >= 16 ? (__mmask16)0xFFFF                                        \
                   : n_kv - (jj) <= 0 ? (__mmask16)0 : (__mmask16)((1u << (n_kv - (jj))) - 1))
        for (int j = 0; nqq == 1 && j < n_kv; j += 64) {
            const __mmask16 m0 = KMASK(j), m1 = KMASK(j + 16), m2 = KMASK(j + 32),
                            m3 = KMASK(j + 48);
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int d = 0; d < head_dim; d++) {
                const uint16_t *kr = kh + (size_t)d * n_ctx + j;
                const __m512 qd = _mm512_set1_ps(qf[0][d]);
                s0 = _mm512_fmadd_ps(qd, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, kr)), s0);
                s1 = _mm512_fmadd_ps(qd, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, kr + 16)), s1);
                s2 = _mm512_fmadd_ps(qd, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m2, kr + 32)), s2);
                s3 = _mm512_fmadd_ps(qd, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m3, kr + 48)), s3);
            }
            const __m512 vs = _mm512_set1_ps(scale);
            _mm512_mask_storeu_ps(sc[0] + j, m0, _mm512_mul_ps(s0, vs));
            _mm512_mask_storeu_ps(sc[0] + j + 16, m1, _mm512_mul_ps(s1, vs));
            _mm512_mask_storeu_ps(sc[0] + j + 32, m2, _mm512_mul_ps(s2, vs));
            _mm512_mask_storeu_ps(sc[0] + j + 48, m3, _mm512_mul_ps(s3, vs));
        }
        for (int j = 0; nqq > 1 && j < n_kv; j += 32) {
            const __mmask16 m0 = KMASK(j), m1 = KMASK(j + 16);
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            __m512 t0 = s0, t1 = s0, t2 = s0, t3 = s0;
            for (int d = 0; d < head_dim; d++) {
                const uint16_t *kr = kh + (size_t)d * n_ctx + j;
                const __m512 ka = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, kr));
                const __m512 kb = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, kr + 16));
                const __m512 q0 = _mm512_set1_ps(qf[0][d]), q1 = _mm512_set1_ps(qf[1][d]);
                const __m512 q2 = _mm512_set1_ps(qf[2][d]), q3 = _mm512_set1_ps(qf[3][d]);
                s0 = _mm512_fmadd_ps(q0, ka, s0);
                s1 = _mm512_fmadd_ps(q1, ka, s1);
                s2 = _mm512_fmadd_ps(q2, ka, s2);
                s3 = _mm512_fmadd_ps(q3, ka, s3);
                t0 = _mm512_fmadd_ps(q0, kb, t0);
                t1 = _mm512_fmadd_ps(q1, kb, t1);
                t2 = _mm512_fmadd_ps(q2, kb, t2);
                t3 = _mm512_fmadd_ps(q3, kb, t3);
            }
            const __m512 vs = _mm512_set1_ps(scale);
            _mm512_mask_storeu_ps(sc[0] + j, m0, _mm512_mul_ps(s0, vs));
            _mm512_mask_storeu_ps(sc[1] + j, m0, _mm512_mul_ps(s1, vs));
            _mm512_mask_storeu_ps(sc[2] + j, m0, _mm512_mul_ps(s2, vs));
            _mm512_mask_storeu_ps(sc[3] + j, m0, _mm512_mul_ps(s3, vs));
            _mm512_mask_storeu_ps(sc[0] + j + 16, m1, _mm512_mul_ps(t0, vs));
            _mm512_mask_storeu_ps(sc[1] + j + 16, m1, _mm512_mul_ps(t1, vs));
            _mm512_mask_storeu_ps(sc[2] + j + 16, m1, _mm512_mul_ps(t2, vs));
            _mm512_mask_storeu_ps(sc[3] + j + 16, m1, _mm512_mul_ps(t3, vs));
        }
#undef KMASK
        /* causal softmax per query; probabilities past a query's own keys are zero */
        for (int qq = 0; qq < (nqq == 1 ? 1 : 4); qq++) {
            float *s = sc[qq];
            const int nk = qq < nqq ? pos0 + i0 + qq + 1 : 0;
            if (nk == 0) {
                memset(s, 0, (size_t)n_kv * sizeof(float));
                continue;
            }
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            int j = 0;
            for (; j + 16 <= nk; j += 16)
                vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
            float mx = _mm512_reduce_max_ps(vmax);
            for (; j < nk; j++)
                mx = s[j] > mx ? s[j] : mx;
            const __m512 vmx = _mm512_set1_ps(mx);
            __m512 vsum = _mm512_setzero_ps();
            for (j = 0; j < nk; j += 16) {
                const __mmask16 m = nk - j >= 16 ? 0xFFFF : (__mmask16)((1u << (nk - j)) - 1);
                const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx));
                const __m512 em = _mm512_maskz_mov_ps(m, e);
                vsum = _mm512_add_ps(vsum, em);
                _mm512_mask_storeu_ps(s + j, m, em);
            }
            const __m512 inv = _mm512_set1_ps((float)(1.0 / (double)_mm512_reduce_add_ps(vsum)));
            for (j = 0; j < nk; j += 16) {
                const __mmask16 m = nk - j >= 16 ? 0xFFFF : (__mmask16)((1u << (nk - j)) - 1);
                _mm512_mask_storeu_ps(s + j, m,
                                      round_f16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv)));
            }
            for (j = nk; j < n_kv; j++)
                s[j] = 0.0f;
        }
        /* out = P V: each V row (f16) is converted once and used by the 4 queries */
        __m512 o[4][16];
        for (int qq = 0; qq < 4; qq++)
            for (int c = 0; c < nd; c++)
                o[qq][c] = _mm512_setzero_ps();
        if (nd == 4 && nqq == 1) {
            for (int j = 0; j < n_kv; j++) {
                const uint16_t *vr = vh + (size_t)j * head_dim;
                const __m512 p = _mm512_set1_ps(sc[0][j]);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++)
                    o[0][c] = _mm512_fmadd_ps(
                        p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vr + 16 * c))),
                        o[0][c]);
            }
        } else if (nd == 4) {
            for (int j = 0; j < n_kv; j++) {
                const uint16_t *vr = vh + (size_t)j * head_dim;
                const __m512 v0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vr));
                const __m512 v1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vr + 16)));
                const __m512 v2 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vr + 32)));
                const __m512 v3 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vr + 48)));
#pragma GCC unroll 4
                for (int qq = 0; qq < 4; qq++) {
                    const __m512 p = _mm512_set1_ps(sc[qq][j]);
                    o[qq][0] = _mm512_fmadd_ps(p, v0, o[qq][0]);
                    o[qq][1] = _mm512_fmadd_ps(p, v1, o[qq][1]);
                    o[qq][2] = _mm512_fmadd_ps(p, v2, o[qq][2]);
                    o[qq][3] = _mm512_fmadd_ps(p, v3, o[qq][3]);
                }
            }
        } else {
            for (int j = 0; j < n_kv; j++) {
                const uint16_t *vr = vh + (size_t)j * head_dim;
                for (int c = 0; c < nd && c < 16; c++) {
                    const __m512 v =
                        _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vr + 16 * c)));
                    for (int qq = 0; qq < 4; qq++)
                        o[qq][c] = _mm512_fmadd_ps(_mm512_set1_ps(sc[qq][j]), v, o[qq][c]);
                }
            }
        }
        for (int qq = 0; qq < nqq; qq++) {
            float *oi = out + (size_t)(i0 + qq) * ld + (size_t)h * head_dim;
            for (int c = 0; c < nd && c < 16; c++)
                _mm512_storeu_ps(oi + 16 * c, o[qq][c]);
        }
    }
}

/* ---- f16 conversion ----------------------------------------------------------------------------- */

TGT void krn__f32_to_f16_avx512(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(
            dst + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT));
    }
}

/* ---- SwiGLU ---------------------------------------------------------------------------------- */

TGT void krn__swiglu_avx512(float *out, const float *g, const float *u, int n)
{
    int i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(u + i)));
    }
    if (i < n)
        krn__swiglu_ref(out + i, g + i, u + i, n - i);
}

#else /* not x86-64 GCC/Clang: the dispatcher never calls these */

#include "kernels_int.h"
#include "s3.h"

void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1)
{
    krn__qact_quantize_ref(a, x, t0, t1);
}

void krn__qmatmul_vnni(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                       int ldy, int r0, int r1)
{
    krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
}

int krn__have_amx(void)
{
    return 0;
}

int krn__qmatmul_amx(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                     int ldy, int r0, int r1)
{
    (void)w, (void)a, (void)n_tok, (void)y, (void)ldy, (void)r0, (void)r1;
    return S3_EINVAL;
}

void krn__attn_f16_avx512(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                          int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                          float scale, float *scratch, int it0, int it1)
{
    krn__attn_f16_ref(out, q, kc, vc, n_q, pos0, n_head, n_kv_head, head_dim, n_ctx, scale,
                      scratch, it0, it1);
}

void krn__swiglu_avx512(float *out, const float *g, const float *u, int n)
{
    krn__swiglu_ref(out, g, u, n);
}

void krn__f32_to_f16_avx512(uint16_t *dst, const float *src, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = krn_f32_to_fp16(src[i]);
}

#endif
