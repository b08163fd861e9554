/* kernels/cuda/argmax.cuh - launch shapes of the greedy pick and the sampler, and the block-wide
 * argmax they share. */
#pragma once

#include <limits.h>
#include <math.h>

#define KRN_ARGMAX_THREADS  1024
#define KRN_SAMPLE_THREADS  1024
#define KRN_SAMPLE_SORT_CAP 4096 /* most candidates of one bin the sampler sorts itself */

/* Keep (ov, oi) in (v, i) where it is larger, or equal with a lower index. */
__device__ __forceinline__ void krn_argmax_better(float &v, int &i, float ov, int oi)
{
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

/* The largest of the n values x and its index (the lowest among equal ones; NaN never wins;
 * the index 0 where every value is NaN), in every thread of the block. rv, ri: 32 entries of
 * shared memory each. */
__device__ __forceinline__ void krn_block_argmax(const float *x, int n, float *rv, int *ri,
                                                 float *v_out, int *i_out)
{
    float v = -INFINITY;
    int idx = INT_MAX;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = x[j];
        if (!isnan(e))
            krn_argmax_better(v, idx, e, j);
    }
    for (int o = 16; o > 0; o >>= 1)
        krn_argmax_better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                          __shfl_xor_sync(0xffffffffu, idx, o));
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0)
        rv[wid] = v, ri[wid] = idx;
    __syncthreads();
    if (wid == 0) {
        const int nw = blockDim.x >> 5;
        v = lane < nw ? rv[lane] : -INFINITY;
        idx = lane < nw ? ri[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1)
            krn_argmax_better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                              __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0)
            rv[0] = v, ri[0] = idx == INT_MAX ? 0 : idx;
    }
    __syncthreads();
    *v_out = rv[0];
    *i_out = ri[0];
}
