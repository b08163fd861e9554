/* kernels/cuda/reduce.cuh - warp and block reductions shared by the row kernels. */
#pragma once

#include <cuda_runtime.h>

__device__ __forceinline__ float krn_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float krn_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
 * sh: 32 floats of shared memory. */
__device__ __forceinline__ float krn_block_sum(float v, float *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = krn_warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return krn_warp_sum(v);
}

/* Maximum over the block; every thread gets the result. sh: 32 floats of shared memory. */
__device__ __forceinline__ float krn_block_max(float v, float *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = krn_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return krn_warp_max(v);
}

/* ---- the CPU path's 8-bit activations (kernels/cpu: quant_block_q8) ---- */

/* Maximum over aligned groups of g lanes (g a power of two <= 32) of the lanes in mask. */
__device__ __forceinline__ float krn_group_max(float v, int g, unsigned mask)
{
    for (int o = g >> 1; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(mask, v, o));
    return v;
}

/* v as the CPU path's GEMMs see it: its block of 32 (absolute maximum amax) quantised to
 * q = rint(v * 127 / amax) with scale d = fp16(amax / 127); returns d * q (exact in f32; the
 * caller rounds it to fp16). IEEE division and rounding as the host's. */
struct krn_q8 {
    float id, d;
};

__device__ __forceinline__ struct krn_q8 krn_q8_scale(float amax)
{
    struct krn_q8 s;
    s.id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    s.d = __half2float(__float2half_rn(__fdiv_rn(amax, 127.0f)));
    return s;
}

__device__ __forceinline__ float krn_q8_value(float v, struct krn_q8 s)
{
    /* through an integer, as the host's int8: a zero is +0 */
    return __fmul_rn(s.d, (float)__float2int_rn(__fmul_rn(v, s.id)));
}

/* The 8 values this lane holds of a block of 32 that 4 aligned lanes hold together (each lane
 * of mask calls it), rounded in place as krn_q8_value does with the block's amax. */
__device__ __forceinline__ void krn_q8_round8(float (&y)[8], unsigned mask)
{
    float m = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++)
        m = fmaxf(m, fabsf(y[e]));
    const struct krn_q8 q = krn_q8_scale(krn_group_max(m, 4, mask));
#pragma unroll
    for (int e = 0; e < 8; e++)
        y[e] = krn_q8_value(y[e], q);
}
