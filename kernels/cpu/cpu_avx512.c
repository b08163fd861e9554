/* kernels/cpu/cpu_avx512.c - AVX512-VNNI fast paths: activation quantisation, the quantised
 * GEMM/GEMV micro-kernels and f16-cache attention. Chosen at run time by cpu_ref.c
 * (krn__have_avx512vnni); every function carries its own target attribute so the file builds
 * with the project's generic flags.
 *
 * Quantised GEMM (see kernels.h for the formats): the inner step covers one block pair
 * (64 elements) of R weight rows and C tokens. For each (row, token) one vpdpbusd gives 16
 * int32 partial sums (lanes 0-7: even block, 8-15: odd block), which are converted to float
 * and accumulated with the per-lane scale d_w*d_x. The Q4 minimum term sum_b m_w s_x is
 * folded into the same accumulator 16 blocks at a time, and one horizontal sum at the end
 * gives y. R = C = 4 uses 16 accumulators, 4 weight and 4 scale registers.
 *
 * Many tokens (prefill): Q4 rows are first widened, 16 at a time, into a per-thread buffer
 * (bytes and 16-lane scale vectors), so the tiles (4 rows x 3 tokens) only load them. Few
 * tokens (decode): each weight is used once, so the loop is bound by streaming the weights;
 * it prefetches a few row chunks ahead. Both give bit-identical sums per (row, token), so a
 * token's result does not depend on how the tokens were batched. */
#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_int.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
#define INL __attribute__((always_inline)) inline

/* ---- activation quantisation ------------------------------------------------------------------ */

TGT void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1)
{
    const int nb = a->n_cols / 32;
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * a->n_cols;
        int8_t *qs = a->qs + (size_t)t * a->nbp * 32;
        float *dexp = a->dexp + (size_t)t * a->nbp * 8;
        float *s = a->s + (size_t)t * a->nbm;
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
            const float dh = _cvtsh_ss(_cvtss_sh(d, 0));
            _mm256_storeu_ps(dexp + b * 8, _mm256_set1_ps(dh));
            s[b] = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
        }
    }
}

/* ---- quantised GEMM ------------------------------------------------------------------------------ */

struct qtile {
    const struct krn_qmat *w;
    const struct krn_qact *a;
    float *y;
    int ldy;
    /* Q4 rows u_r0.. unpacked for many tokens (or NULL): per row and block pair, 64 bytes of
     * 4-bit values widened to bytes and the 16-lane scale vector of load_dpair16 */
    const uint8_t *uw;
    const float *ud;
    int u_r0;
};

TGT static INL __m512i load_w_q4(const uint8_t *p)
{
    /* both halves hold the 32 bytes; the upper half is shifted right by 4, then all masked */
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
    const __m512i vs = _mm512_mask_srli_epi16(v, (__mmask32)0xFFFF0000u, v, 4);
    return _mm512_and_si512(vs, _mm512_set1_epi8(0x0F));
}

/* The two f16 scales of a Q4 block pair, as load_dpair. */
TGT static INL __m512 load_dpair16(const uint16_t *d)
{
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    int32_t bits;
    memcpy(&bits, d, sizeof(bits));
    const __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

TGT static INL __m512 load_dpair(const float *d)
{
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128 v = _mm_castpd_ps(_mm_load_sd((const double *)d));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

/* R rows from r, C tokens from t. */
TGT static INL void tile_kernel(const struct qtile *k, int r, int t, const int R, const int C,
                                const int U)
{
    const struct krn_qmat *w = k->w;
    const struct krn_qact *a = k->a;
    const int np = w->nbp / 2;
    const int q4 = w->qtype == KRN_Q4;
    __m512 acc[4][4];
    const uint8_t *wq[4];
    const float *wd[4];
    const uint16_t *wd16[4];
    const int8_t *aq[4];
    const float *ad[4];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
        wq[i] = w->q + (size_t)(r + i) * w->q_row_bytes;
        if (q4)
            wd16[i] = w->d16 + (size_t)(r + i) * w->nbp;
        else
            wd[i] = w->d + (size_t)(r + i) * w->nbp;
    }
#pragma GCC unroll 4
    for (int j = 0; j < C; j++) {
        aq[j] = a->qs + (size_t)(t + j) * a->nbp * 32;
        ad[j] = a->dexp + (size_t)(t + j) * a->nbp * 8;
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < C; j++)
            acc[i][j] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int p = 0; p < np; p++) {
        __m512i wv[4];
        __mmask64 neg[4];
        __m512 dw[4];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            if (U) {
                const size_t o = (size_t)(r + i - k->u_r0) * np + (size_t)p;
                wv[i] = _mm512_load_si512((const void *)(k->uw + o * 64));
                neg[i] = 0;
                dw[i] = _mm512_load_ps(k->ud + o * 16);
                continue;
            }
            if (q4) {
                wv[i] = load_w_q4(wq[i] + (size_t)p * 32);
                neg[i] = 0;
            } else {
                const __m512i v = _mm512_loadu_si512((const void *)(wq[i] + (size_t)p * 64));
                neg[i] = _mm512_movepi8_mask(v);
                wv[i] = _mm512_abs_epi8(v);
            }
            dw[i] = q4 ? load_dpair16(wd16[i] + 2 * p) : load_dpair(wd[i] + 2 * p);
        }
#pragma GCC unroll 4
        for (int j = 0; j < C; j++) {
            const __m512i av = _mm512_loadu_si512((const void *)(aq[j] + (size_t)p * 64));
            const __m512 da = _mm512_loadu_ps(ad[j] + (size_t)p * 16);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) {
                const __m512i as = q4 ? av : _mm512_mask_sub_epi8(av, neg[i], zero, av);
                const __m512i isum = _mm512_dpbusd_epi32(zero, wv[i], as);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[i], da),
                                            acc[i][j]);
            }
        }
    }
    if (q4) {
        for (int c = 0; c < w->nbm; c += 16) {
#pragma GCC unroll 4
            for (int j = 0; j < C; j++) {
                const __m512 sv = _mm512_loadu_ps(a->s + (size_t)(t + j) * a->nbm + c);
#pragma GCC unroll 4
                for (int i = 0; i < R; i++) {
                    const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256(
                        (const __m256i *)(w->m16 + (size_t)(r + i) * w->nbm + c)));
                    acc[i][j] = _mm512_fmadd_ps(mv, sv, acc[i][j]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < C; j++)
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            k->y[(size_t)(t + j) * k->ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

TGT static void tile_r4(const struct qtile *k, int r, int t, int C)
{
    switch (C) {
    case 4: tile_kernel(k, r, t, 4, 4, 0); break;
    case 3: tile_kernel(k, r, t, 4, 3, 0); break;
    case 2: tile_kernel(k, r, t, 4, 2, 0); break;
    default: tile_kernel(k, r, t, 4, 1, 0); break;
    }
}

TGT static void tile_r1(const struct qtile *k, int r, int t, int C)
{
    switch (C) {
    case 4: tile_kernel(k, r, t, 1, 4, 0); break;
    case 3: tile_kernel(k, r, t, 1, 3, 0); break;
    case 2: tile_kernel(k, r, t, 1, 2, 0); break;
    default: tile_kernel(k, r, t, 1, 1, 0); break;
    }
}

/* Per-thread scratch for widened Q4 rows: UNPACK_PAIRS (row, block pair) entries. */
#define UNPACK_PAIRS 1024
#ifndef UT
#define UT 3 /* tokens per tile on widened rows: 12 accumulators, no spills */
#endif
static _Thread_local _Alignas(64) uint8_t unpack_w[UNPACK_PAIRS * 64];
static _Thread_local _Alignas(64) float unpack_d[UNPACK_PAIRS * 16];

TGT static void tile_r4u(const struct qtile *k, int r, int t, int C)
{
    switch (C) {
    case 4: tile_kernel(k, r, t, 4, 4, 1); break;
    case 3: tile_kernel(k, r, t, 4, 3, 1); break;
    case 2: tile_kernel(k, r, t, 4, 2, 1); break;
    default: tile_kernel(k, r, t, 4, 1, 1); break;
    }
}

TGT static void tile_r1u(const struct qtile *k, int r, int t, int C)
{
    switch (C) {
    case 4: tile_kernel(k, r, t, 1, 4, 1); break;
    case 3: tile_kernel(k, r, t, 1, 3, 1); break;
    case 2: tile_kernel(k, r, t, 1, 2, 1); break;
    default: tile_kernel(k, r, t, 1, 1, 1); break;
    }
}

TGT void krn__qmatmul_avx512(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                             float *y, int ldy, int r0, int r1)
{
    struct qtile k = {w, a, y, ldy, NULL, NULL, 0};
    const int np = w->nbp / 2;
    if (w->qtype == KRN_Q4 && n_tok > 4 && np <= UNPACK_PAIRS / 4) {
        /* many tokens: widen each chunk of rows once instead of once per 4-token tile */
        const int rch = UNPACK_PAIRS / np >= 16 ? 16 : (UNPACK_PAIRS / np) & ~3;
        for (int rc = r0; rc < r1; rc += rch) {
            const int rce = rc + rch < r1 ? rc + rch : r1;
            for (int r = rc; r < rce; r++) {
                const uint8_t *wq = w->q + (size_t)r * w->q_row_bytes;
                const uint16_t *wd = w->d16 + (size_t)r * w->nbp;
                for (int p = 0; p < np; p++) {
                    const size_t o = (size_t)(r - rc) * np + (size_t)p;
                    _mm512_store_si512((void *)(unpack_w + o * 64),
                                       load_w_q4(wq + (size_t)p * 32));
                    _mm512_store_ps(unpack_d + o * 16, load_dpair16(wd + 2 * p));
                }
            }
            k.uw = unpack_w, k.ud = unpack_d, k.u_r0 = rc;
            for (int t = 0; t < n_tok; t += UT) {
                const int C = n_tok - t < UT ? n_tok - t : UT;
                int r = rc;
                for (; r + 4 <= rce; r += 4)
                    tile_r4u(&k, r, t, C);
                for (; r < rce; r++)
                    tile_r1u(&k, r, t, C);
            }
        }
        return;
    }
    /* rows in chunks whose weights stay in L1/L2 while all tokens stream past */
    const int RCH = 16;
#ifndef PF_DIST
#define PF_DIST 32
#endif
    for (int rc = r0; rc < r1; rc += RCH) {
        const int rce = rc + RCH < r1 ? rc + RCH : r1;
        const int ps = rc == r0 ? rce : rce + PF_DIST;
        if (n_tok <= 4 && ps < r1) {
            /* few tokens: the weights stream once; ask for them a few chunks ahead of use */
            const int pe = rc == r0 ? (rce + PF_DIST + RCH < r1 ? rce + PF_DIST + RCH : r1)
                                    : (ps + RCH < r1 ? ps + RCH : r1);
            const char *q0 = (const char *)(w->q + (size_t)ps * w->q_row_bytes);
            const size_t qn = (size_t)(pe - ps) * w->q_row_bytes;
            for (size_t o = 0; o < qn; o += 64)
                _mm_prefetch(q0 + o, _MM_HINT_T0);
            const char *d0 = w->d16 ? (const char *)(w->d16 + (size_t)ps * w->nbp)
                                    : (const char *)(w->d + (size_t)ps * w->nbp);
            const size_t dn = (size_t)(pe - ps) * w->nbp * (w->d16 ? 2 : 4);
            for (size_t o = 0; o < dn; o += 64)
                _mm_prefetch(d0 + o, _MM_HINT_T0);
            if (w->m16) {
                const char *m0 = (const char *)(w->m16 + (size_t)ps * w->nbm);
                for (size_t o = 0; o < (size_t)(pe - ps) * w->nbm * 2; o += 64)
                    _mm_prefetch(m0 + o, _MM_HINT_T0);
            }
        }
        for (int t = 0; t < n_tok; t += 4) {
            const int C = n_tok - t < 4 ? n_tok - t : 4;
            int r = rc;
            for (; r + 4 <= rce; r += 4)
                tile_r4(&k, r, t, C);
            for (; r < rce; r++)
                tile_r1(&k, r, t, C);
        }
    }
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
        /* scores: 16 keys at a time, K transposed so each dim is a contiguous row */
        for (int j = 0; nqq == 1 && j < n_kv; j += 16) {
            /* one query (decode): the same sums in the same order as the 4-query path */
            const __mmask16 mk = n_kv - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n_kv - j)) - 1);
            __m512 s0 = _mm512_setzero_ps();
            for (int d = 0; d < head_dim; d++)
                s0 = _mm512_fmadd_ps(
                    _mm512_set1_ps(qf[0][d]),
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, kh + (size_t)d * n_ctx + j)), s0);
            _mm512_mask_storeu_ps(sc[0] + j, mk, _mm512_mul_ps(s0, _mm512_set1_ps(scale)));
        }
        for (int j = 0; nqq > 1 && j < n_kv; j += 16) {
            const __mmask16 mk = n_kv - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n_kv - j)) - 1);
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (int d = 0; d < head_dim; d++) {
                const __m512 kv =
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, kh + (size_t)d * n_ctx + j));
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(qf[0][d]), kv, s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(qf[1][d]), kv, s1);
                s2 = _mm512_fmadd_ps(_mm512_set1_ps(qf[2][d]), kv, s2);
                s3 = _mm512_fmadd_ps(_mm512_set1_ps(qf[3][d]), kv, s3);
            }
            const __m512 vs = _mm512_set1_ps(scale);
            _mm512_mask_storeu_ps(sc[0] + j, mk, _mm512_mul_ps(s0, vs));
            _mm512_mask_storeu_ps(sc[1] + j, mk, _mm512_mul_ps(s1, vs));
            _mm512_mask_storeu_ps(sc[2] + j, mk, _mm512_mul_ps(s2, vs));
            _mm512_mask_storeu_ps(sc[3] + j, mk, _mm512_mul_ps(s3, vs));
        }
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

void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1)
{
    krn__qact_quantize_ref(a, x, t0, t1);
}

void krn__qmatmul_avx512(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                         int ldy, int r0, int r1)
{
    krn_qmatmul_ref(w, a, n_tok, y, ldy, r0, r1);
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

#endif
