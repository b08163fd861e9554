/* kernels/cpu/cpu_avx512.c - AVX512-VNNI fast paths: activation quantisation, the quantised
 * GEMM/GEMV kernel, f16-cache attention and SwiGLU. Chosen at run time by cpu_ref.c
 * (krn__have_avx512vnni); every function carries its own target attribute so the file builds
 * with the project's generic flags. Each gives the same bits as its scalar reference in
 * cpu_ref.c, which follows llama.cpp's CPU backend (see kernels.h).
 *
 * Quantised GEMM (formats in kernels.h): weights sit in records of 16 rows x one 32-block,
 * interleaved 4 bytes at a time, the operand layout of vpdpbusd (16 rows in one register, an
 * activation dword broadcast). One vpdpbusd from zero gives the exact sum of one lane (4
 * elements) of the block for 16 rows; each lane keeps its own float accumulator, as ggml's
 * 8-lane dot product does. */
#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_int.h"
#include "s3.h"
#include "simd_ggml.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")))
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
            int32_t *ls = a->lsum + ((size_t)t * nb + b) * 8;
            int sum = 0;
            for (int l = 0; l < 8; l++) {
                const int8_t *ql = qs + b * 32 + 4 * l;
                ls[l] = ql[0] + ql[1] + ql[2] + ql[3];
                sum += ls[l];
            }
            dt[b] = _cvtsh_ss(_cvtss_sh(d, 0));
            st[b] = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
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

/* G (<= 2) row groups from g0 x T (<= 2) tokens from t0. Per (group, block) the record's
 * values are loaded once (Q4: widened to 8 byte vectors); per token, lane k of the block is
 * vpdpbusd(w u8, activation dword k s8) from zero (Q8 weights are stored plus 128, so 128
 * times the lane's activation sum is taken off), converted and multiply-added into that
 * lane's accumulator; the lanes are summed at the end as ggml's hsum_float_8. */
TGT static INL void vnni_kernel(const struct krn_qmat *w, const struct krn_qact *a, int g0,
                                int t0, float *y, int ldy, int r0, int r1, const int G,
                                const int T, const int q4)
{
    const int nb = w->nb;
    const size_t rb = w->rec_bytes;
    __m512 acc[2][2][8], ms[2][2];
#pragma GCC unroll 2
    for (int g = 0; g < G; g++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            ms[g][t] = _mm512_setzero_ps();
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                acc[g][t][k] = _mm512_setzero_ps();
        }
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const uint8_t *rec0 = w->rec + (size_t)g0 * nb * rb;
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 2
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
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) {
                const size_t tb = (size_t)(t0 + t) * nb + b;
                const int32_t *ap = (const int32_t *)(a->qs + tb * 32);
                const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[tb]));
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) {
                    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[k],
                                                    _mm512_set1_epi32(ap[k]));
                    if (!q4)
                        p = _mm512_sub_epi32(p, _mm512_set1_epi32(128 * a->lsum[tb * 8 + k]));
                    acc[g][t][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), dd, acc[g][t][k]);
                }
                if (q4)
                    ms[g][t] = _mm512_fmadd_ps(rec_m(rec), _mm512_set1_ps(a->s[tb]), ms[g][t]);
            }
        }
    }
#pragma GCC unroll 2
    for (int g = 0; g < G; g++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            __m512 *l = acc[g][t];
            const __m512 s = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(l[4], l[0]), _mm512_add_ps(l[6], l[2])),
                _mm512_add_ps(_mm512_add_ps(l[5], l[1]), _mm512_add_ps(l[7], l[3])));
            store_rows(y + (size_t)(t0 + t) * ldy, g0 + g, r0, r1, _mm512_add_ps(s, ms[g][t]));
        }
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
VNNI_CASE(2, 1)
VNNI_CASE(1, 1)
VNNI_CASE(1, 2)

TGT void krn__qmatmul_vnni(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                           float *y, int ldy, int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    const int q4 = w->qtype == KRN_Q4;
    const int ga = r0 / 16, gb = (r1 + 15) / 16;
    int t = 0;
    /* token pairs share each widened weight vector; row groups outermost so a group's
     * records stay in L1/L2 across the tokens */
    for (int g = ga; g < gb; g++)
        for (t = 0; t + 2 <= n_tok; t += 2)
            (q4 ? vnni_q4_1_2 : vnni_q8_1_2)(w, a, g, t, y, ldy, r0, r1);
    /* the last single token (decode): 2 groups at a time for independent chains */
    for (; t < n_tok; t++) {
        int g = ga;
        for (; g + 2 <= gb; g += 2)
            (q4 ? vnni_q4_2_1 : vnni_q8_2_1)(w, a, g, t, y, ldy, r0, r1);
        for (; g < gb; g++)
            (q4 ? vnni_q4_1_1 : vnni_q8_1_1)(w, a, g, t, y, ldy, r0, r1);
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

/* ggml's AVX512 expf, lane for lane as krn__expf_ggml. */
TGT static INL __m512 expf_ggml(__m512 x)
{
    KRN_EXPF_GGML_CORE(__m512, x, n, p, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps,
                       _mm512_mul_ps, _mm512_sub_ps);
    const __m512 r = _mm512_scalef_ps(p, n);
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192.0f), _CMP_GT_OQ);
    if (!big)
        return r;
    const __mmask16 neg = _mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ);
    const __m512 alt = _mm512_mask_blend_ps(neg, _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
    return _mm512_mask_blend_ps(big, r, alt);
}

/* The 16 lanes of v summed as krn__sum16. */
TGT static INL float sum16_ps(__m512 v)
{
    const __m256 a = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
    const __m128 b = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    const __m128 c = _mm_add_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

/* Lane-wise sum of 16 vectors in the order of krn__sum16. */
TGT static INL __m512 vsum16(const __m512 *l)
{
    __m512 r;
    KRN_VSUM16(__m512, _mm512_add_ps, l, r);
    return r;
}

TGT static INL __m512 round_f16(__m512 x)
{
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

TGT static INL __m512 ld_f16(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static __mmask16 tail_mask(int n_left)
{
    return n_left >= 16 ? (__mmask16)0xFFFF
                        : n_left <= 0 ? (__mmask16)0 : (__mmask16)((1u << n_left) - 1);
}

/* Scores of one query (f16 values qf) against keys j..j+15 (mask m), K transposed (row d
 * holds dim d of every key), in the GEMV order: 64 lane chains over steps of 64 dims, reduced
 * (0+2)+(1+3), then sum16 (head_dim a multiple of 64). */
TGT static INL __m512 scores16_gemv(const uint16_t *kh, int n_ctx, int j, __mmask16 m,
                                    const float *qf, int head_dim)
{
    __m512 l[16];
    for (int c = 0; c < 16; c++) {
        __m512 s[4];
        for (int a = 0; a < 4; a++) {
            s[a] = _mm512_setzero_ps();
            for (int d = 16 * a + c; d < head_dim; d += 64)
                s[a] = _mm512_fmadd_ps(ld_f16(kh + (size_t)d * n_ctx + j, m),
                                       _mm512_set1_ps(qf[d]), s[a]);
        }
        l[c] = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
    }
    return vsum16(l);
}

/* Scores of 4 queries (qf[q], f16 values) against keys j..j+15 in the GEMM order: lane c
 * chains over the dims c, c+16, ...; each converted key row feeds the 4 queries. */
TGT static INL void scores16_gemm4(const uint16_t *kh, int n_ctx, int j, __mmask16 m,
                                   float (*qf)[256], int head_dim, __m512 (*l)[16], __m512 *out)
{
    for (int c = 0; c < 16; c++) {
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int d = c; d < head_dim; d += 16) {
            const __m512 k = ld_f16(kh + (size_t)d * n_ctx + j, m);
            s0 = _mm512_fmadd_ps(k, _mm512_set1_ps(qf[0][d]), s0);
            s1 = _mm512_fmadd_ps(k, _mm512_set1_ps(qf[1][d]), s1);
            s2 = _mm512_fmadd_ps(k, _mm512_set1_ps(qf[2][d]), s2);
            s3 = _mm512_fmadd_ps(k, _mm512_set1_ps(qf[3][d]), s3);
        }
        l[0][c] = s0, l[1][c] = s1, l[2][c] = s2, l[3][c] = s3;
    }
    for (int q = 0; q < 4; q++)
        out[q] = vsum16(l[q]);
}

/* In place: scores of nk keys -> f16-rounded probabilities, as krn_softmax then rounding. */
TGT static void softmax_f16(float *s, int nk)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < nk; j += 16) {
        const __mmask16 m = tail_mask(nk - j);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
    }
    const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    double sum = 0.0;
    for (int j = 0; j < nk; j += 16) {
        const __mmask16 m = tail_mask(nk - j);
        const __m512 e = _mm512_maskz_mov_ps(
            m, expf_ggml(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx)));
        _mm512_mask_storeu_ps(s + j, m, e);
        sum += (double)sum16_ps(e);
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int j = 0; j < nk; j += 16) {
        const __mmask16 m = tail_mask(nk - j);
        _mm512_mask_storeu_ps(s + j, m, round_f16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv)));
    }
}

/* out[q][d] for 4 queries (probabilities p[q], zero past each query's keys) and the dims of
 * up to 4 chunks of 16 from d0, P V in the GEMM order: lane c chains over the keys c, c+16,
 * ... below nk; each converted value row feeds the 4 queries. l: scratch of 4 x 4 x 16. */
TGT static INL void pv_gemm4(const uint16_t *vh, int head_dim, int d0, int n_ch, float *const *p,
                             int nk, __m512 (*l)[4][16], float *const *out)
{
    for (int c = 0; c < 16; c++) {
        __m512 acc[4][4];
        for (int q = 0; q < 4; q++)
            for (int k = 0; k < 4; k++)
                acc[q][k] = _mm512_setzero_ps();
        for (int j = c; j < nk; j += 16) {
            const uint16_t *vr = vh + (size_t)j * head_dim + d0;
            const __m512 p0 = _mm512_set1_ps(p[0][j]), p1 = _mm512_set1_ps(p[1][j]);
            const __m512 p2 = _mm512_set1_ps(p[2][j]), p3 = _mm512_set1_ps(p[3][j]);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                if (k >= n_ch)
                    break;
                const __m512 v = ld_f16(vr + 16 * k, 0xFFFF);
                acc[0][k] = _mm512_fmadd_ps(v, p0, acc[0][k]);
                acc[1][k] = _mm512_fmadd_ps(v, p1, acc[1][k]);
                acc[2][k] = _mm512_fmadd_ps(v, p2, acc[2][k]);
                acc[3][k] = _mm512_fmadd_ps(v, p3, acc[3][k]);
            }
        }
        for (int q = 0; q < 4; q++)
            for (int k = 0; k < n_ch; k++)
                l[q][k][c] = acc[q][k];
    }
    for (int q = 0; q < 4; q++)
        for (int k = 0; k < n_ch; k++)
            _mm512_storeu_ps(out[q] + d0 + 16 * k, vsum16(l[q][k]));
}

/* The same in the GEMV order over a padded length n_pad: 64 lane chains (kept in acc, 64 x 16
 * floats) up to the last multiple of 64 of n_pad, reduced (0+2)+(1+3) and sum16, then the
 * keys past it added in double. */
TGT static INL __m512 pv_gemv16(const uint16_t *vh, int head_dim, int d0, const float *p, int nk,
                                int n_pad, __m512 *acc)
{
    const int np = n_pad & ~63;
    for (int i = 0; i < 64; i++)
        acc[i] = _mm512_setzero_ps();
    int j = 0;
    for (; j < np && j < nk; j++)
        acc[j & 63] = _mm512_fmadd_ps(ld_f16(vh + (size_t)j * head_dim + d0, 0xFFFF),
                                      _mm512_set1_ps(p[j]), acc[j & 63]);
    __m512 r[16];
    for (int c = 0; c < 16; c++)
        r[c] = _mm512_add_ps(_mm512_add_ps(acc[c], acc[32 + c]), _mm512_add_ps(acc[16 + c], acc[48 + c]));
    const __m512 s = vsum16(r);
    if (j >= nk)
        return s;
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
    __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1));
    for (; j < nk; j++) {
        const __m512 t = _mm512_mul_ps(ld_f16(vh + (size_t)j * head_dim + d0, 0xFFFF),
                                       _mm512_set1_ps(p[j]));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)));
    }
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}

TGT void krn__attn_f16_avx512(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                              int n_q, int pos0, int n_head, int n_kv_head, int head_dim,
                              int n_ctx, float scale, float *scratch, int it0, int it1)
{
    const int nqg = (n_q + 3) / 4;
    const int group = n_head / n_kv_head;
    const int ld = n_head * head_dim;
    const int n_pad = krn__kv_pad(pos0 + n_q);
    const __m512 vs = _mm512_set1_ps(scale);
    float qf[4][256], dummy[256];
    __m512 l[4][4][16], acc[64];
    for (int it = it0; it < it1; it++) {
        const int h = it / nqg, g = it % nqg;
        const int hk = h / group;
        const uint16_t *kh = kc + (size_t)hk * head_dim * n_ctx;
        const uint16_t *vh = vc + (size_t)hk * n_ctx * head_dim;
        const int i0 = g * 4, nqq = n_q - i0 < 4 ? n_q - i0 : 4;
        if (n_q == 1) { /* one token: the GEMV orders */
            const float *qi = q + (size_t)h * head_dim;
            const int nk = pos0 + 1;
            for (int d = 0; d < head_dim; d += 16)
                _mm512_storeu_ps(qf[0] + d, round_f16(_mm512_loadu_ps(qi + d)));
            for (int j = 0; j < nk; j += 16) {
                const __mmask16 m = tail_mask(nk - j);
                _mm512_mask_storeu_ps(scratch + j, m,
                                      _mm512_mul_ps(scores16_gemv(kh, n_ctx, j, m, qf[0], head_dim), vs));
            }
            softmax_f16(scratch, nk);
            for (int d = 0; d < head_dim; d += 16)
                _mm512_storeu_ps(out + (size_t)h * head_dim + d,
                                 pv_gemv16(vh, head_dim, d, scratch, nk, n_pad, acc));
            continue;
        }
        /* two or more tokens: the GEMM orders, 4 queries at a time (missing ones repeat the
         * first and are not stored) */
        const int nk_max = pos0 + i0 + nqq;
        float *sc[4], *o[4];
        for (int k = 0; k < 4; k++) {
            const int i = i0 + (k < nqq ? k : 0);
            sc[k] = scratch + (size_t)k * n_ctx;
            o[k] = k < nqq ? out + (size_t)i * ld + (size_t)h * head_dim : dummy;
            const float *qi = q + (size_t)i * ld + (size_t)h * head_dim;
            for (int d = 0; d < head_dim; d += 16)
                _mm512_storeu_ps(qf[k] + d, round_f16(_mm512_loadu_ps(qi + d)));
        }
        for (int j = 0; j < nk_max; j += 16) {
            const __mmask16 m = tail_mask(nk_max - j);
            __m512 s4[4];
            scores16_gemm4(kh, n_ctx, j, m, qf, head_dim, l[0], s4);
            for (int k = 0; k < 4; k++)
                _mm512_mask_storeu_ps(sc[k] + j, m, _mm512_mul_ps(s4[k], vs));
        }
        for (int k = 0; k < 4; k++) {
            const int nk = pos0 + i0 + (k < nqq ? k : 0) + 1;
            softmax_f16(sc[k], nk);
            for (int j = nk; j < nk_max; j++)
                sc[k][j] = 0.0f;
        }
        for (int d = 0; d < head_dim; d += 64) {
            const int n_ch = head_dim - d >= 64 ? 4 : (head_dim - d) / 16;
            pv_gemm4(vh, head_dim, d, n_ch, sc, nk_max, l, o);
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
    KRN_SWIGLU_VEC(__m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_sub_ps,
                   _mm512_add_ps, _mm512_div_ps, _mm512_mul_ps, expf_ggml, out, g, u, n);
    const int nv = n & ~15;
    if (nv < n)
        krn__swiglu_ref(out + nv, g + nv, u + nv, n - nv);
}

#endif
