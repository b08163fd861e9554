/* kernels/cuda/elementwise.cu - embedding gather, bias add and SwiGLU. */
#include <stdint.h>

#include "cuda_int.cuh"
#include "elementwise.cuh"

__global__ void k_embed(const __half *table, int n_vocab, const int32_t *tok, int d, float *x)
{
    const int t = blockIdx.x;
    const int id = tok[t];
    float *xr = x + (size_t)t * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        xr[i] = id >= 0 && id < n_vocab ? __half2float(table[(size_t)id * d + i]) : 0.0f;
}

__global__ void k_add_bias(float *y, int n, int ldy, const float *b)
{
    float *yr = y + (size_t)blockIdx.x * ldy;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] += b[i];
}

/* silu(g) * u as the CPU reference writes it, saturated to the fp16 range */
__global__ void k_swiglu(const __half *gu, int n_ff, __half *out)
{
    const __half *g = gu + (size_t)blockIdx.y * 2 * n_ff;
    const __half *u = g + n_ff;
    __half *o = out + (size_t)blockIdx.y * n_ff;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_ff)
        return;
    const float gv = __half2float(g[i]), uv = __half2float(u[i]);
    float r = gv / (1.0f + expf(-gv)) * uv;
    r = fminf(fmaxf(r, -KRN_F16_MAX), KRN_F16_MAX);
    o[i] = __float2half_rn(r);
}

/* Eight elements per thread (16-byte loads and stores), rows of n_ff a multiple of 8; out row
 * stride ldo (out may be gu itself with ldo = 2 n_ff: each thread reads its gate and up
 * elements before writing the gate's place). */
__global__ void k_swiglu8(const __half *gu, int n_ff, long long n_vec, __half *out, int ldo)
{
    const int per_row = n_ff / 8;
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < n_vec;
         v += (long long)gridDim.x * blockDim.x) {
        const long long r = v / per_row;
        const int c = (int)(v % per_row) * 8;
        const __half *g = gu + (size_t)r * 2 * n_ff + c;
        const uint4 gv = *(const uint4 *)g, uv = *(const uint4 *)(g + n_ff);
        const __half2 *g2 = (const __half2 *)&gv, *u2 = (const __half2 *)&uv;
        uint4 ov;
        __half2 *o2 = (__half2 *)&ov;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 gf = __half22float2(g2[e]), uf = __half22float2(u2[e]);
            float a = gf.x / (1.0f + expf(-gf.x)) * uf.x;
            float b = gf.y / (1.0f + expf(-gf.y)) * uf.y;
            a = fminf(fmaxf(a, -KRN_F16_MAX), KRN_F16_MAX);
            b = fminf(fmaxf(b, -KRN_F16_MAX), KRN_F16_MAX);
            o2[e] = __floats2half2_rn(a, b);
        }
        *(uint4 *)(out + (size_t)r * ldo + c) = ov;
    }
}

__global__ void k_swiglu_ld(const __half *gu, int n_ff, __half *out, int ldo)
{
    const __half *g = gu + (size_t)blockIdx.y * 2 * n_ff;
    const __half *u = g + n_ff;
    __half *o = out + (size_t)blockIdx.y * ldo;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_ff)
        return;
    const float gv = __half2float(g[i]), uv = __half2float(u[i]);
    float r = gv / (1.0f + expf(-gv)) * uv;
    r = fminf(fmaxf(r, -KRN_F16_MAX), KRN_F16_MAX);
    o[i] = __float2half_rn(r);
}

extern "C" int krn_cuda_embed(struct krn_cuda_dev *dev, const uint16_t *d_table, int n_vocab,
                              const int32_t *d_tokens, int n_tok, int d, float *d_x)
{
    if (n_tok < 0 || d <= 0)
        return S3_EINVAL;
    if (n_tok == 0)
        return 0;
    k_embed<<<n_tok, 256, 0, dev->stream>>>((const __half *)d_table, n_vocab, d_tokens, d, d_x);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_add_bias(struct krn_cuda_dev *dev, float *d_y, int n_rows, int n, int ldy,
                                 const float *d_b)
{
    if (n_rows < 0 || n < 0 || ldy < n)
        return S3_EINVAL;
    if (n_rows == 0 || n == 0)
        return 0;
    k_add_bias<<<n_rows, 256, 0, dev->stream>>>(d_y, n, ldy, d_b);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_swiglu_ld(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows,
                                  int n_ff, uint16_t *d_out, int ldo)
{
    if (n_rows < 0 || n_ff <= 0 || ldo < n_ff || n_rows > 65535)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    if (d_out == d_gu && ldo != 2 * n_ff)
        return S3_EINVAL; /* in place only over the gate half of each row */
    if (n_ff % 8 == 0 && ldo % 8 == 0 && ((uintptr_t)d_gu | (uintptr_t)d_out) % 16 == 0) {
        const long long n_vec = (long long)n_rows * (n_ff / 8);
        const long long want = (n_vec + 255) / 256;
        const unsigned blocks = (unsigned)(want < 65536 ? want : 65536);
        k_swiglu8<<<blocks, 256, 0, dev->stream>>>((const __half *)d_gu, n_ff, n_vec,
                                                  (__half *)d_out, ldo);
    } else {
        dim3 grid(krn_cuda__blocks(n_ff, 256), n_rows);
        k_swiglu_ld<<<grid, 256, 0, dev->stream>>>((const __half *)d_gu, n_ff, (__half *)d_out,
                                                   ldo);
    }
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_swiglu(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows,
                               int n_ff, uint16_t *d_out)
{
    return krn_cuda_swiglu_ld(dev, d_gu, n_rows, n_ff, d_out, n_ff);
}
