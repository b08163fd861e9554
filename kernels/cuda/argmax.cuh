/* kernels/cuda/argmax.cuh - launch shapes of the greedy pick and the sampler, and their
 * shared order. */
#pragma once

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
