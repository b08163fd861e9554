/* kernels/cuda/rope.cuh - rotary embedding of one element, both conventions, rounded exactly as
 * the CPU reference: x0*c - x1*s as fma(x0, c, -(x1*s)), x0*s + x1*c as fma(x0, s, x1*c) (the
 * contraction GCC applies to ggml's RoPE). */
#pragma once

#include <cuda_runtime.h>

/* Rotated value of element i of a head (x: the head's values), i < n_rot. */
__device__ __forceinline__ float krn_rope_elem(const float *x, int i, int n_rot, const float *cs,
                                               int neox)
{
    const int half = n_rot / 2;
    int p, first, partner;
    if (neox) {
        first = i < half;
        p = first ? i : i - half;
        partner = first ? i + half : i - half;
    } else {
        first = (i & 1) == 0;
        p = i >> 1;
        partner = i ^ 1;
    }
    const float c = cs[2 * p], s = cs[2 * p + 1];
    if (first)
        return __fmaf_rn(x[i], c, -__fmul_rn(x[partner], s));
    return __fmaf_rn(x[partner], s, __fmul_rn(x[i], c));
}
