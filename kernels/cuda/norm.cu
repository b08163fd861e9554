/* kernels/cuda/norm.cu - RMSNorm, one block per row: f32 in, fp16 out (the GEMM operand); rows
 * up to 8192 wide are read once, as float4, and kept in registers. */
#include <stdint.h>

#include "cuda_int.cuh"
#include "norm.cuh"
#include "reduce.cuh"

__global__ void __launch_bounds__(KRN_NORM_THREADS)
    k_rmsnorm(const float *x, const float *w, int d, float eps, __half *y)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * d;
    __half *yr = y + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = krn_block_sum(ss, sh);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        yr[i] = __float2half_rn(__fmul_rn(__fmul_rn(xr[i], scale), w[i]));
}

/* d % 4 == 0 and d <= 4 * KRN_NORM_THREADS * NV: the row is read once as float4 and kept in
 * registers; same arithmetic per element as k_rmsnorm. */
template <int NV>
__global__ void __launch_bounds__(KRN_NORM_THREADS)
    k_rmsnorm_vec(const float *x, const float *w, int d, float eps, __half *y)
{
    __shared__ float sh[32];
    const float4 *xr = (const float4 *)(x + (size_t)blockIdx.x * d);
    const float4 *w4 = (const float4 *)w;
    __half2 *yr = (__half2 *)(y + (size_t)blockIdx.x * d);
    const int d4 = d / 4;
    float4 v[NV];
    float ss = 0.0f;
#pragma unroll
    for (int u = 0; u < NV; u++) {
        const int i = threadIdx.x + u * KRN_NORM_THREADS;
        v[u] = i < d4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
    ss = krn_block_sum(ss, sh);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
    for (int u = 0; u < NV; u++) {
        const int i = threadIdx.x + u * KRN_NORM_THREADS;
        if (i < d4) {
            const float4 wv = w4[i];
            yr[2 * i] = __floats2half2_rn(__fmul_rn(__fmul_rn(v[u].x, scale), wv.x),
                                          __fmul_rn(__fmul_rn(v[u].y, scale), wv.y));
            yr[2 * i + 1] = __floats2half2_rn(__fmul_rn(__fmul_rn(v[u].z, scale), wv.z),
                                              __fmul_rn(__fmul_rn(v[u].w, scale), wv.w));
        }
    }
}

extern "C" int krn_cuda_rmsnorm(struct krn_cuda_dev *dev, const float *d_x, const float *d_w,
                                int n_rows, int d, float eps, uint16_t *d_y)
{
    if (n_rows < 0 || d <= 0)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    const int nv = (d / 4 + KRN_NORM_THREADS - 1) / KRN_NORM_THREADS;
    const int vec = d % 4 == 0 && ((uintptr_t)d_x | (uintptr_t)d_w | (uintptr_t)d_y) % 16 == 0;
    if (vec && nv <= 1)
        k_rmsnorm_vec<1><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, (__half *)d_y);
    else if (vec && nv <= 2)
        k_rmsnorm_vec<2><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, (__half *)d_y);
    else if (vec && nv <= 4)
        k_rmsnorm_vec<4><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, (__half *)d_y);
    else if (vec && nv <= 8)
        k_rmsnorm_vec<8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, (__half *)d_y);
    else
        k_rmsnorm<<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, (__half *)d_y);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
