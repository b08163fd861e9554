/* kernels/cuda/elementwise.cu - embedding gather, bias add, SwiGLU and the rounding of fp16
 * activations as the CPU path's 8-bit ones. */
#include <stdint.h>

#include "cuda_int.cuh"
#include "elementwise.cuh"
#include "reduce.cuh"

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
 * elements before writing the gate's place). Q8 (n_ff % 32 == 0): rounded as the CPU path's
 * 8-bit activations, 4 lanes holding a block of 32 (n_vec % 4 == 0: a group is in or out of
 * the loop together). */
template <bool Q8>
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
        float y[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 gf = __half22float2(g2[e]), uf = __half22float2(u2[e]);
            const float a = gf.x / (1.0f + expf(-gf.x)) * uf.x;
            const float b = gf.y / (1.0f + expf(-gf.y)) * uf.y;
            y[2 * e] = fminf(fmaxf(a, -KRN_F16_MAX), KRN_F16_MAX);
            y[2 * e + 1] = fminf(fmaxf(b, -KRN_F16_MAX), KRN_F16_MAX);
        }
        if (Q8)
            krn_q8_round8(y, __activemask());
        uint4 ov;
        __half2 *o2 = (__half2 *)&ov;
#pragma unroll
        for (int e = 0; e < 4; e++)
            o2[e] = __floats2half2_rn(y[2 * e], y[2 * e + 1]);
        *(uint4 *)(out + (size_t)r * ldo + c) = ov;
    }
}

/* x (n_vec * 8 fp16, rows a multiple of 32 wide) rounded in place as the CPU path's 8-bit
 * activations; 4 lanes hold a block of 32. */
__global__ void k_q8_round8(__half *x, long long n_vec)
{
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < n_vec;
         v += (long long)gridDim.x * blockDim.x) {
        uint4 xv = *(const uint4 *)(x + (size_t)v * 8);
        __half2 *x2 = (__half2 *)&xv;
        float y[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __half22float2(x2[e]);
            y[2 * e] = f.x;
            y[2 * e + 1] = f.y;
        }
        krn_q8_round8(y, __activemask());
#pragma unroll
        for (int e = 0; e < 4; e++)
            x2[e] = __floats2half2_rn(y[2 * e], y[2 * e + 1]);
        *(uint4 *)(x + (size_t)v * 8) = xv;
    }
}

static unsigned vec_blocks(long long n_vec)
{
    const long long want = (n_vec + 255) / 256;
    return (unsigned)(want < 65536 ? want : 65536);
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

static int swiglu(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows, int n_ff,
                  uint16_t *d_out, int ldo, int q8)
{
    if (n_rows < 0 || n_ff <= 0 || ldo < n_ff || n_rows > 65535)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    if (d_out == d_gu && ldo != 2 * n_ff)
        return S3_EINVAL; /* in place only over the gate half of each row */
    const int vec = n_ff % 8 == 0 && ldo % 8 == 0 && ((uintptr_t)d_gu | (uintptr_t)d_out) % 16 == 0;
    if (q8 && (!vec || n_ff % 32 != 0))
        return S3_EINVAL;
    if (vec) {
        const long long n_vec = (long long)n_rows * (n_ff / 8);
        if (q8)
            k_swiglu8<true><<<vec_blocks(n_vec), 256, 0, dev->stream>>>(
                (const __half *)d_gu, n_ff, n_vec, (__half *)d_out, ldo);
        else
            k_swiglu8<false><<<vec_blocks(n_vec), 256, 0, dev->stream>>>(
                (const __half *)d_gu, n_ff, n_vec, (__half *)d_out, ldo);
    } else {
        dim3 grid(krn_cuda__blocks(n_ff, 256), n_rows);
        k_swiglu_ld<<<grid, 256, 0, dev->stream>>>((const __half *)d_gu, n_ff, (__half *)d_out,
                                                   ldo);
    }
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_swiglu_ld(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows,
                                  int n_ff, uint16_t *d_out, int ldo)
{
    return swiglu(dev, d_gu, n_rows, n_ff, d_out, ldo, 0);
}

extern "C" int krn_cuda_swiglu_q8(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows,
                                  int n_ff, uint16_t *d_out, int ldo)
{
    return swiglu(dev, d_gu, n_rows, n_ff, d_out, ldo, 1);
}

extern "C" int krn_cuda_q8_round(struct krn_cuda_dev *dev, uint16_t *d_x, int n_rows, int d)
{
    if (n_rows < 0 || d <= 0 || d % 32 != 0 || (uintptr_t)d_x % 16 != 0)
        return S3_EINVAL;
    if (n_rows == 0)
        return 0;
    const long long n_vec = (long long)n_rows * (d / 8);
    k_q8_round8<<<vec_blocks(n_vec), 256, 0, dev->stream>>>((__half *)d_x, n_vec);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_swiglu(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows,
                               int n_ff, uint16_t *d_out)
{
    return krn_cuda_swiglu_ld(dev, d_gu, n_rows, n_ff, d_out, n_ff);
}

/* x[i] = a value in [-1, 1) from a hash of (seed, i): fp16 operands for timing runs */
__global__ void k_fill_f16(__half *x, long long n, uint32_t seed)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        x[i] = __float2half_rn((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

extern "C" int krn_cuda_fill_f16(struct krn_cuda_dev *dev, uint16_t *d_x, int64_t n,
                                 uint32_t seed)
{
    if (n < 0)
        return S3_EINVAL;
    if (n == 0)
        return 0;
    const unsigned blocks = n / 256 + 1 < 4096 ? (unsigned)(n / 256 + 1) : 4096u;
    k_fill_f16<<<blocks, 256, 0, dev->stream>>>((__half *)d_x, n, seed);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
