/* kernels/cuda/argmax.cu - greedy pick: index of the row maximum, lowest index on ties, NaN
 * never wins. One block per row. */
#include <math.h>

#include "argmax.cuh"
#include "cuda_int.cuh"

__global__ void __launch_bounds__(KRN_ARGMAX_THREADS)
    k_argmax(const float *x, int n, int32_t *out)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = xr[j];
        if (!isnan(e))
            krn_argmax_better(v, idx, e, j);
    }
    for (int o = 16; o > 0; o >>= 1)
        krn_argmax_better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                          __shfl_xor_sync(0xffffffffu, idx, o));
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0)
        sv[wid] = v, si[wid] = idx;
    __syncthreads();
    if (wid == 0) {
        const int nw = blockDim.x >> 5;
        v = lane < nw ? sv[lane] : -INFINITY;
        idx = lane < nw ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1)
            krn_argmax_better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                   __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0)
            out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
    }
}

extern "C" int krn_cuda_argmax(struct krn_cuda_dev *dev, const float *d_x, int n_rows, int n,
                               int32_t *d_out)
{
    if (n_rows < 0 || n <= 0)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    k_argmax<<<n_rows, KRN_ARGMAX_THREADS, 0, dev->stream>>>(d_x, n, d_out);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
