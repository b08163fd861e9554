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
 * gives y. R = C = 4 uses 16 accumulators, 4 weight and 4 scale registers. */
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
};

TGT static INL __m512i load_w_q4(const uint8_t *p)
{
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

TGT static INL __m512 load_dpair(const float *d)
{
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128 v = _mm_castpd_ps(_mm_load_sd((const double *)d));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

/* R rows from r, C tokens from t. */
TGT static INL void tile_kernel(const struct qtile *k, int r, int t, const int R, const int C)
{
    const struct krn_qmat *w = k->w;
    const struct krn_qact *a = k->a;
    const int np = w->nbp / 2;
    const int q4 = w->qtype == KRN_Q4;
    __m512 acc[4][4];
    const uint8_t *wq[4];
    const float *wd[4];
    const int8_t *aq[4];
    const float *ad[4];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
        wq[i] = w->q + (size_t)(r + i) * w->q_row_bytes;
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
            if (q4) {
                wv[i] = load_w_q4(wq[i] + (size_t)p * 32);
                neg[i] = 0;
            } else {
                const __m512i v = _mm512_loadu_si512((const void *)(wq[i] + (size_t)p * 64));
                neg[i] = _mm512_movepi8_mask(v);
                wv[i] = _mm512_abs_epi8(v);
            }
            dw[i] = load_dpair(wd[i] + 2 * p);
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
                    const __m512 mv = _mm512_loadu_ps(w->m + (size_t)(r + i) * w->nbm + c);
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
    case 4: tile_kernel(k, r, t, 4, 4); break;
    case 3: tile_kernel(k, r, t, 4, 3); break;
    case 2: tile_kernel(k, r, t, 4, 2); break;
    default: tile_kernel(k, r, t, 4, 1); break;
    }
}

TGT static void tile_r1(const struct qtile *k, int r, int t, int C)
{
    switch (C) {
    case 4: tile_kernel(k, r, t, 1, 4); break;
    case 3: tile_kernel(k, r, t, 1, 3); break;
    case 2: tile_kernel(k, r, t, 1, 2); break;
    default: tile_kernel(k, r, t, 1, 1); break;
    }
}

TGT void krn__qmatmul_avx512(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                             float *y, int ldy, int r0, int r1)
{
    const struct qtile k = {w, a, y, ldy};
    /* rows in chunks whose weights stay in L1/L2 while all tokens stream past */
    const int RCH = 16;
    for (int rc = r0; rc < r1; rc += RCH) {
        const int rce = rc + RCH < r1 ? rc + RCH : r1;
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
        for (int j = 0; j < n_kv; j += 16) {
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
        for (int qq = 0; qq < 4; qq++) {
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
        if (nd == 4) {
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
