/* kernels/cpu/cpu_avx2.c - AVX2/FMA fast paths for CPUs without AVX512-VNNI: the quantised
 * GEMM/GEMV kernel, f16-cache attention and SwiGLU. Chosen at run time by cpu_ref.c
 * (krn__have_avx2); every function carries its own target attribute. Each gives the same bits
 * as its scalar reference in cpu_ref.c: ggml's AVX512 orders, with pairs of 8-lane vectors
 * where those have 16 lanes.
 *
 * Quantised GEMM: half a record (8 rows x 4 bytes of one lane) is one 256-bit load; a lane's
 * exact sum for the 8 rows is vpmaddubsw + vpmaddwd (Q8 weights, stored plus 128, are turned
 * back into signed bytes and multiplied as |w| x sign(a, w), so no 16-bit sum saturates). */
#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_int.h"
#include "simd_ggml.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL __attribute__((always_inline)) inline

/* ---- quantised GEMM ------------------------------------------------------------------------------ */

/* Rows 8h..8h+7 of group g, one token: 8 lane accumulators over the blocks, then the lanes
 * summed as hsum_float_8 and the Q4 minimum term added. */
TGT static void q_half(const struct krn_qmat *w, const struct krn_qact *a, int g, int h, int t,
                       float *out)
{
    const int nb = w->nb, q4 = w->qtype == KRN_Q4;
    const size_t rb = w->rec_bytes;
    const uint8_t *rec = w->rec + (size_t)g * nb * rb;
    const __m256i lo4 = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x80);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8], ms = _mm256_setzero_ps();
    for (int l = 0; l < 8; l++)
        acc[l] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, rec += rb) {
        const size_t tb = (size_t)t * nb + b;
        const int32_t *ap = (const int32_t *)(a->qs + tb * 32);
        __m256i wv[8];
        if (q4) {
            for (int c = 0; c < 4; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(rec + c * 64 + 32 * h));
                wv[c] = _mm256_and_si256(v, lo4);
                wv[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
            }
        } else {
            for (int k = 0; k < 8; k++)
                wv[k] = _mm256_xor_si256(
                    _mm256_loadu_si256((const __m256i *)(rec + k * 64 + 32 * h)), flip);
        }
        const __m256 dw =
            q4 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 256 + 16 * h)))
               : _mm256_loadu_ps((const float *)(rec + 512 + 32 * h));
        const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[tb]));
        for (int l = 0; l < 8; l++) {
            const __m256i av = _mm256_set1_epi32(ap[l]);
            const __m256i p16 = q4 ? _mm256_maddubs_epi16(wv[l], av)
                                   : _mm256_maddubs_epi16(_mm256_abs_epi8(wv[l]),
                                                          _mm256_sign_epi8(av, wv[l]));
            const __m256i p = _mm256_madd_epi16(p16, ones);
            acc[l] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dd, acc[l]);
        }
        if (q4)
            ms = _mm256_fmadd_ps(
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 288 + 16 * h))),
                _mm256_set1_ps(a->s[tb]), ms);
    }
    const __m256 s = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(acc[4], acc[0]), _mm256_add_ps(acc[6], acc[2])),
        _mm256_add_ps(_mm256_add_ps(acc[5], acc[1]), _mm256_add_ps(acc[7], acc[3])));
    _mm256_storeu_ps(out, _mm256_add_ps(s, ms));
}

TGT void krn__qmatmul_avx2(const struct krn_qmat *w, const struct krn_qact *a, int n_tok,
                           float *y, int ldy, int r0, int r1)
{
    if (r0 >= r1 || n_tok <= 0)
        return;
    float tmp[8];
    for (int g = r0 / 16; g < (r1 + 15) / 16; g++)
        for (int h = 0; h < 2; h++) {
            const int base = g * 16 + 8 * h;
            if (base + 8 <= r0 || base >= r1)
                continue;
            const int lo = r0 > base ? r0 - base : 0, hi = r1 < base + 8 ? r1 - base : 8;
            for (int t = 0; t < n_tok; t++) {
                float *yt = y + (size_t)t * ldy + base;
                if (lo == 0 && hi == 8) {
                    q_half(w, a, g, h, t, yt);
                } else {
                    q_half(w, a, g, h, t, tmp);
                    memcpy(yt + lo, tmp + lo, (size_t)(hi - lo) * sizeof(float));
                }
            }
        }
}

/* ---- exp, sums, f16 ---------------------------------------------------------------------------- */

/* ggml's AVX512 expf lane for lane (krn__expf_ggml): the same polynomial; 2^n applied in two
 * exact-then-rounded steps, which rounds once as vscalefps does. */
TGT static INL __m256 expf_ggml8(__m256 x)
{
    KRN_EXPF_GGML_CORE(__m256, x, n, p, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps,
                       _mm256_mul_ps, _mm256_sub_ps);
    const __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 nc = _mm256_blendv_ps(n, _mm256_setzero_ps(), big); /* keep the shifts valid */
    const __m256i n1 = _mm256_cvttps_epi32(_mm256_mul_ps(nc, _mm256_set1_ps(0.5f)));
    const __m256i n2 = _mm256_sub_epi32(_mm256_cvttps_epi32(nc), n1);
    const __m256i e127 = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, e127), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, e127), 23));
    const __m256 r = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    const __m256 alt = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(),
                                        _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ));
    return _mm256_blendv_ps(r, alt, big);
}

/* Lane-wise sum of 16 vectors in the order of krn__sum16. */
TGT static INL __m256 vsum16(const __m256 *l)
{
    __m256 r;
    KRN_VSUM16(__m256, _mm256_add_ps, l, r);
    return r;
}

TGT static INL __m256 round_f16(__m256 x)
{
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* 8 f16 values from p, of which the first n (< 8: the rest zero) */
TGT static INL __m256 ld_f16(const uint16_t *p, int n)
{
    if (n >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t t[8] = {0};
    memcpy(t, p, (size_t)(n > 0 ? n : 0) * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

/* ---- attention -------------------------------------------------------------------------------- */

/* In place: scores of nk keys -> f16-rounded probabilities, as krn_softmax then rounding. */
TGT static void softmax_f16(float *s, int nk)
{
    float mx = -INFINITY;
    for (int j = 0; j < nk; j++)
        mx = s[j] > mx ? s[j] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    double sum = 0.0;
    for (int j = 0; j < nk; j += 16) {
        float e[16] = {0};
        const int n = nk - j < 16 ? nk - j : 16;
        memcpy(e, s + j, (size_t)n * sizeof(float));
        for (int k = 0; k < 2; k++)
            _mm256_storeu_ps(e + 8 * k, expf_ggml8(_mm256_sub_ps(_mm256_loadu_ps(e + 8 * k), vmx)));
        for (int k = n; k < 16; k++)
            e[k] = 0.0f;
        memcpy(s + j, e, (size_t)n * sizeof(float));
        sum += (double)krn__sum16(e);
    }
    const float inv = (float)(1.0 / sum);
    int j = 0;
    for (; j + 8 <= nk; j += 8)
        _mm256_storeu_ps(s + j, round_f16(_mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(inv))));
    for (; j < nk; j++)
        s[j] = krn_fp16_to_f32(krn_f32_to_fp16(s[j] * inv));
}

/* Scores of n_qq (<= 4) queries against keys j..j+7 (the first n of them), K transposed:
 * GEMM order (16 lane chains over d = c + 16l, sum16) or, one query, the GEMV order (64 lane
 * chains over steps of 64, (0+2)+(1+3), sum16). l: scratch of 4 x 16 vectors. */
TGT static void scores8(const uint16_t *kh, int n_ctx, int j, int n, float (*qf)[256], int n_qq,
                        int head_dim, int gemm, __m256 (*l)[16], __m256 *out)
{
    for (int c = 0; c < 16; c++) {
        if (gemm) {
            __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                           _mm256_setzero_ps()};
            for (int d = c; d < head_dim; d += 16) {
                const __m256 k = ld_f16(kh + (size_t)d * n_ctx + j, n);
                for (int q = 0; q < n_qq; q++)
                    s[q] = _mm256_fmadd_ps(k, _mm256_set1_ps(qf[q][d]), s[q]);
            }
            for (int q = 0; q < n_qq; q++)
                l[q][c] = s[q];
        } else {
            __m256 s[4];
            for (int a = 0; a < 4; a++) {
                s[a] = _mm256_setzero_ps();
                for (int d = 16 * a + c; d < head_dim; d += 64)
                    s[a] = _mm256_fmadd_ps(ld_f16(kh + (size_t)d * n_ctx + j, n),
                                           _mm256_set1_ps(qf[0][d]), s[a]);
            }
            l[0][c] = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        }
    }
    for (int q = 0; q < n_qq; q++)
        out[q] = vsum16(l[q]);
}

/* P V for n_qq queries (probabilities p[q], zero past each query's keys) and dims d0..d0+15
 * in the GEMM order: lane c chains over the keys c, c+16, ... below nk. */
TGT static void pv_gemm(const uint16_t *vh, int head_dim, int d0, float *const *p, int n_qq,
                        int nk, __m256 (*l)[2][16], float *const *out)
{
    for (int c = 0; c < 16; c++) {
        __m256 acc[4][2];
        for (int q = 0; q < 4; q++)
            acc[q][0] = acc[q][1] = _mm256_setzero_ps();
        for (int j = c; j < nk; j += 16) {
            const uint16_t *vr = vh + (size_t)j * head_dim + d0;
            const __m256 v0 = ld_f16(vr, 8), v1 = ld_f16(vr + 8, 8);
            for (int q = 0; q < n_qq; q++) {
                const __m256 pq = _mm256_set1_ps(p[q][j]);
                acc[q][0] = _mm256_fmadd_ps(v0, pq, acc[q][0]);
                acc[q][1] = _mm256_fmadd_ps(v1, pq, acc[q][1]);
            }
        }
        for (int q = 0; q < n_qq; q++)
            l[q][0][c] = acc[q][0], l[q][1][c] = acc[q][1];
    }
    for (int q = 0; q < n_qq; q++)
        for (int k = 0; k < 2; k++)
            _mm256_storeu_ps(out[q] + d0 + 8 * k, vsum16(l[q][k]));
}

/* The same for one query in the GEMV order over a padded length n_pad: 64 lane chains (in
 * acc) up to the last multiple of 64 of n_pad, reduced (0+2)+(1+3) and sum16, the keys past
 * it added in double. 8 dims from d0. */
TGT static void pv_gemv(const uint16_t *vh, int head_dim, int d0, const float *p, int nk,
                        int n_pad, __m256 *acc, float *out)
{
    const int np = n_pad & ~63;
    for (int i = 0; i < 64; i++)
        acc[i] = _mm256_setzero_ps();
    int j = 0;
    for (; j < np && j < nk; j++)
        acc[j & 63] = _mm256_fmadd_ps(ld_f16(vh + (size_t)j * head_dim + d0, 8),
                                      _mm256_set1_ps(p[j]), acc[j & 63]);
    __m256 r[16];
    for (int c = 0; c < 16; c++)
        r[c] = _mm256_add_ps(_mm256_add_ps(acc[c], acc[32 + c]), _mm256_add_ps(acc[16 + c], acc[48 + c]));
    const __m256 s = vsum16(r);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1));
    for (; j < nk; j++) {
        const __m256 t = _mm256_mul_ps(ld_f16(vh + (size_t)j * head_dim + d0, 8), _mm256_set1_ps(p[j]));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
    }
    _mm_storeu_ps(out + d0, _mm256_cvtpd_ps(lo));
    _mm_storeu_ps(out + d0 + 4, _mm256_cvtpd_ps(hi));
}

TGT void krn__attn_f16_avx2(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                            int n_q, int pos0, int n_head, int n_kv_head, int head_dim,
                            int n_ctx, float scale, float *scratch, int it0, int it1)
{
    const int nqg = (n_q + 3) / 4;
    const int group = n_head / n_kv_head;
    const int ld = n_head * head_dim;
    const int gemm = n_q > 1, n_pad = krn__kv_pad(pos0 + n_q);
    float qf[4][256];
    __m256 l[4][2][16], acc[64];
    for (int it = it0; it < it1; it++) {
        const int h = it / nqg, g = it % nqg;
        const int hk = h / group;
        const uint16_t *kh = kc + (size_t)hk * head_dim * n_ctx;
        const uint16_t *vh = vc + (size_t)hk * n_ctx * head_dim;
        const int i0 = g * 4, nqq = n_q - i0 < 4 ? n_q - i0 : 4;
        const int nk_max = pos0 + i0 + nqq;
        float *sc[4], *o[4];
        for (int k = 0; k < nqq; k++) {
            sc[k] = scratch + (size_t)k * n_ctx;
            o[k] = out + (size_t)(i0 + k) * ld + (size_t)h * head_dim;
            const float *qi = q + (size_t)(i0 + k) * ld + (size_t)h * head_dim;
            for (int d = 0; d < head_dim; d += 8)
                _mm256_storeu_ps(qf[k] + d, round_f16(_mm256_loadu_ps(qi + d)));
        }
        for (int j = 0; j < nk_max; j += 8) {
            const int n = nk_max - j < 8 ? nk_max - j : 8;
            __m256 s[4];
            scores8(kh, n_ctx, j, n, qf, nqq, head_dim, gemm, (__m256(*)[16])l, s);
            for (int k = 0; k < nqq; k++) {
                float t[8];
                _mm256_storeu_ps(t, _mm256_mul_ps(s[k], _mm256_set1_ps(scale)));
                memcpy(sc[k] + j, t, (size_t)n * sizeof(float));
            }
        }
        for (int k = 0; k < nqq; k++) {
            const int nk = pos0 + i0 + k + 1;
            softmax_f16(sc[k], nk);
            for (int j = nk; j < nk_max; j++)
                sc[k][j] = 0.0f;
        }
        for (int d = 0; d < head_dim; d += 16) {
            if (gemm) {
                pv_gemm(vh, head_dim, d, sc, nqq, nk_max, l, o);
            } else {
                pv_gemv(vh, head_dim, d, sc[0], nk_max, n_pad, acc, o[0]);
                pv_gemv(vh, head_dim, d + 8, sc[0], nk_max, n_pad, acc, o[0]);
            }
        }
    }
}

/* ---- SwiGLU ---------------------------------------------------------------------------------- */

TGT void krn__swiglu_avx2(float *out, const float *g, const float *u, int n)
{
    KRN_SWIGLU_VEC(__m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_sub_ps,
                   _mm256_add_ps, _mm256_div_ps, _mm256_mul_ps, expf_ggml8, out, g, u, n);
    const int nv = n & ~15;
    if (nv < n)
        krn__swiglu_ref(out + nv, g + nv, u + nv, n - nv);
}

#endif
