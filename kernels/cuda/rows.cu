/* kernels/cuda/rows.cu - row-wise softmax and the store of K/V rows into the cache layout. */
#include <stdint.h>

#include "cuda_int.cuh"
#include "reduce.cuh"

/* One block per row: max, sum of exp (f32), scale by 1/sum. */
__global__ void k_softmax_rows(float *x, int n)
{
    __shared__ float sh[32];
    float *r = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, r[i]);
    m = krn_block_max(m, sh);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(r[i] - m);
        r[i] = e;
        s += e;
    }
    s = krn_block_sum(s, sh);
    const float inv = 1.0f / s;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        r[i] *= inv;
}

__global__ void k_kv_rows(const float *rows, long long n_el, int n_kv_head, int hd, int pos0,
                          __half *cache, int n_ctx)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_el)
        return;
    const int ld = n_kv_head * hd;
    const int t = (int)(e / ld), h = (int)(e % ld) / hd, i = (int)(e % hd);
    cache[((size_t)h * n_ctx + pos0 + t) * hd + i] = __float2half_rn(rows[e]);
}

extern "C" int krn_cuda_softmax_rows(struct krn_cuda_dev *dev, float *d_x, int n_rows, int n)
{
    if (n_rows < 0 || n <= 0)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    k_softmax_rows<<<n_rows, 256, 0, dev->stream>>>(d_x, n);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_kv_rows(struct krn_cuda_dev *dev, const float *d_rows, int n, int pos0,
                                int n_kv_head, int hd, uint16_t *d_cache, int n_ctx)
{
    if (n < 0 || pos0 < 0 || pos0 + n > n_ctx || n_kv_head <= 0 || hd <= 0)
        return S3_EINVAL;
    const long long n_el = (long long)n * n_kv_head * hd;
    if (n_el == 0)
        return 0;
    k_kv_rows<<<krn_cuda__blocks(n_el, 256), 256, 0, dev->stream>>>(
        d_rows, n_el, n_kv_head, hd, pos0, (__half *)d_cache, n_ctx);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
