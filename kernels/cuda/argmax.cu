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
    float v;
    int idx;
    krn_block_argmax(x + (size_t)blockIdx.x * n, n, sv, si, &v, &idx);
    if (threadIdx.x == 0)
        out[blockIdx.x] = idx;
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
