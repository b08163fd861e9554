/* kernels/cpu/simd_ggml.h - ggml's AVX512 expf polynomial and its 16-lane sum order, written
 * once for the scalar reference and both vector widths (cpu_ref.c, cpu_avx2.c, cpu_avx512.c
 * include it; nothing else does).
 *
 * KRN_EXPF_GGML_CORE(T, x, n, p, SET1, FMADD, FNMADD, MUL, SUB) declares n = round(x / ln 2)
 * (by the 1.5 * 2^23 trick) and p = exp(x - n ln 2) (ln 2 in two parts, a degree-5
 * polynomial), as ggml_v_expf computes them; the caller scales p by 2^n and saturates where
 * |n| > 192. FMADD(a, b, c) = a*b + c and FNMADD(a, b, c) = c - a*b, each rounded once.
 *
 * KRN_VSUM16(T, ADD, l, out) sets out to the lane-wise sum of l[0..15] in the order of GCC's
 * _mm512_reduce_add_ps: a_i = l[8+i] + l[i], b_i = a[4+i] + a[i], (b0 + b2) + (b1 + b3). */
#pragma once

#define KRN_EXPF_GGML_CORE(T, x, n, p, SET1, FMADD, FNMADD, MUL, SUB)                          \
    const T krn_sh_ = SET1(0x1.8p23f);                                                         \
    const T n = SUB(FMADD(x, SET1(0x1.715476p+0f), krn_sh_), krn_sh_);                        \
    const T krn_b_ = FNMADD(n, SET1(0x1.7f7d1cp-20f), FNMADD(n, SET1(0x1.62e4p-1f), x));       \
    const T krn_u_ = MUL(krn_b_, krn_b_);                                                      \
    const T p = FMADD(FMADD(FMADD(SET1(0x1.0e4020p-7f), krn_b_, SET1(0x1.573e2ep-5f)),         \
                            krn_u_, FMADD(SET1(0x1.555e66p-3f), krn_b_, SET1(0x1.fffdb6p-2f))), \
                      krn_u_, FMADD(SET1(0x1.ffffecp-1f), krn_b_, SET1(1.0f)))

#define KRN_VSUM16(T, ADD, l, out)                                                             \
    do {                                                                                       \
        T krn_a_[8], krn_c_[4];                                                                \
        for (int i_ = 0; i_ < 8; i_++)                                                         \
            krn_a_[i_] = ADD((l)[8 + i_], (l)[i_]);                                            \
        for (int i_ = 0; i_ < 4; i_++)                                                         \
            krn_c_[i_] = ADD(krn_a_[4 + i_], krn_a_[i_]);                                      \
        (out) = ADD(ADD(krn_c_[0], krn_c_[2]), ADD(krn_c_[1], krn_c_[3]));                     \
    } while (0)

/* KRN_SWIGLU_VEC(T, LANES, LOAD, STORE, SET1, SUB, ADD, DIV, MUL, EXPF, out, g, u, n) is
 * ggml's SwiGLU over the whole 16-element vectors of a row: out = g / (1 + exp(0 - g)) * u
 * with EXPF ggml's expf (LANES elements per T), leaving the rest of the row (n % 16) to the
 * caller. */
#define KRN_SWIGLU_VEC(T, LANES, LOAD, STORE, SET1, SUB, ADD, DIV, MUL, EXPF, out, g, u, n)     \
    do {                                                                                       \
        const T krn_one_ = SET1(1.0f), krn_zero_ = SET1(0.0f);                                \
        for (int i_ = 0; i_ < ((n) & ~15); i_ += (LANES)) {                                    \
            const T krn_x_ = LOAD((g) + i_);                                                   \
            const T krn_e_ = EXPF(SUB(krn_zero_, krn_x_));                                     \
            STORE((out) + i_, MUL(DIV(krn_x_, ADD(krn_one_, krn_e_)), LOAD((u) + i_)));        \
        }                                                                                      \
    } while (0)
