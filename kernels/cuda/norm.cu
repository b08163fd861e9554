/* kernels/cuda/norm.cu - RMSNorm, one block per row: f32 in, fp16 out (the GEMM operand); rows
 * up to 8192 wide are read once, as float4, and kept in registers. The _q8 flavour rounds the
 * output as the CPU path's 8-bit activations (reduce.cuh). */
#include <stdint.h>

#include "cuda_int.cuh"
#include "norm.cuh"
#include "reduce.cuh"

template <bool Q8>
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
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        if (Q8) /* d % 32 == 0: a warp holds one block of 32 */
            v = krn_q8_value(v, krn_q8_scale(krn_group_max(fabsf(v), 32, 0xffffffffu)));
        yr[i] = __float2half_rn(v);
    }
}

/* d % 4 == 0 and d <= 4 * KRN_NORM_THREADS * NV: the row is read once as float4 and kept in
 * registers; same arithmetic per element as k_rmsnorm (Q8: d % 32 == 0, 8 lanes hold a block
 * of 32). */
template <int NV, bool Q8>
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
        const float4 wv = i < d4 ? w4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float4 r = make_float4(__fmul_rn(__fmul_rn(v[u].x, scale), wv.x),
                               __fmul_rn(__fmul_rn(v[u].y, scale), wv.y),
                               __fmul_rn(__fmul_rn(v[u].z, scale), wv.z),
                               __fmul_rn(__fmul_rn(v[u].w, scale), wv.w));
        if (Q8) { /* every lane takes part: rows past d4 are zeros in groups of their own */
            const float m = fmaxf(fmaxf(fabsf(r.x), fabsf(r.y)), fmaxf(fabsf(r.z), fabsf(r.w)));
            const struct krn_q8 q = krn_q8_scale(krn_group_max(m, 8, 0xffffffffu));
            r = make_float4(krn_q8_value(r.x, q), krn_q8_value(r.y, q), krn_q8_value(r.z, q),
                            krn_q8_value(r.w, q));
        }
        if (i < d4) {
            yr[2 * i] = __floats2half2_rn(r.x, r.y);
            yr[2 * i + 1] = __floats2half2_rn(r.z, r.w);
        }
    }
}

template <bool Q8>
static void launch_rmsnorm(struct krn_cuda_dev *dev, const float *d_x, const float *d_w,
                           int n_rows, int d, float eps, __half *y, int vec, int nv)
{
    if (vec && nv <= 1)
        k_rmsnorm_vec<1, Q8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, y);
    else if (vec && nv <= 2)
        k_rmsnorm_vec<2, Q8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, y);
    else if (vec && nv <= 4)
        k_rmsnorm_vec<4, Q8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, y);
    else if (vec && nv <= 8)
        k_rmsnorm_vec<8, Q8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, y);
    else
        k_rmsnorm<Q8><<<n_rows, KRN_NORM_THREADS, 0, dev->stream>>>(d_x, d_w, d, eps, y);
}

static int rmsnorm(struct krn_cuda_dev *dev, const float *d_x, const float *d_w, int n_rows,
                   int d, float eps, uint16_t *d_y, int q8)
{
    if (n_rows < 0 || d <= 0 || (q8 && d % 32 != 0))
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    const int nv = (d / 4 + KRN_NORM_THREADS - 1) / KRN_NORM_THREADS;
    const int vec = d % 4 == 0 && ((uintptr_t)d_x | (uintptr_t)d_w | (uintptr_t)d_y) % 16 == 0;
    if (q8)
        launch_rmsnorm<true>(dev, d_x, d_w, n_rows, d, eps, (__half *)d_y, vec, nv);
    else
        launch_rmsnorm<false>(dev, d_x, d_w, n_rows, d, eps, (__half *)d_y, vec, nv);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_rmsnorm(struct krn_cuda_dev *dev, const float *d_x, const float *d_w,
                                int n_rows, int d, float eps, uint16_t *d_y)
{
    return rmsnorm(dev, d_x, d_w, n_rows, d, eps, d_y, 0);
}

extern "C" int krn_cuda_rmsnorm_q8(struct krn_cuda_dev *dev, const float *d_x, const float *d_w,
                                   int n_rows, int d, float eps, uint16_t *d_y)
{
    return rmsnorm(dev, d_x, d_w, n_rows, d, eps, d_y, 1);
}
