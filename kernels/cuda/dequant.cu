/* kernels/cuda/dequant.cu - ggml blocks (Q4_0, Q4_1, Q8_0, F16, BF16, F32) to fp16, and the
 * plain f32 <-> fp16 conversions. One thread per element; memory-bound. */
#include "cuda_int.cuh"
#include "dequant.cuh"

__global__ void k_dequant(uint32_t type, const uint8_t *src, __half *dst, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const int64_t b = i / 32;
    const int j = (int)(i % 32);
    float v = 0.0f;
    switch (type) {
    case KRN_G_Q4_0: {
        const uint8_t *blk = src + b * 18;
        const uint8_t q = blk[2 + (j & 15)];
        const int nib = j < 16 ? (q & 15) : (q >> 4);
        v = krn_ld_half(blk) * (float)(nib - 8);
        break;
    }
    case KRN_G_Q4_1: {
        const uint8_t *blk = src + b * 20;
        const uint8_t q = blk[4 + (j & 15)];
        const int nib = j < 16 ? (q & 15) : (q >> 4);
        v = krn_ld_half(blk) * (float)nib + krn_ld_half(blk + 2);
        break;
    }
    case KRN_G_Q8_0: {
        const uint8_t *blk = src + b * 34;
        v = krn_ld_half(blk) * (float)(int8_t)blk[2 + j];
        break;
    }
    case KRN_G_F16:
        dst[i] = ((const __half *)src)[i];
        return;
    case KRN_G_BF16: {
        const uint16_t h = ((const uint16_t *)src)[i];
        v = __uint_as_float((uint32_t)h << 16);
        break;
    }
    default: /* KRN_G_F32 */
        v = ((const float *)src)[i];
        break;
    }
    dst[i] = __float2half_rn(v);
}

__global__ void k_f32_to_f16(const float *src, __half *dst, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        dst[i] = __float2half_rn(src[i]);
}

__global__ void k_f16_to_f32(const __half *src, float *dst, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        dst[i] = __half2float(src[i]);
}

extern "C" int krn_cuda_dequant_supported(uint32_t t)
{
    return t == KRN_G_F32 || t == KRN_G_F16 || t == KRN_G_BF16 || t == KRN_G_Q4_0 ||
           t == KRN_G_Q4_1 || t == KRN_G_Q8_0;
}

extern "C" int krn_cuda_dequant(struct krn_cuda_dev *dev, uint32_t type, const void *d_src,
                                uint16_t *d_dst, int64_t n)
{
    if (!krn_cuda_dequant_supported(type) || n < 0)
        return S3_EINVAL;
    const int blockwise = type == KRN_G_Q4_0 || type == KRN_G_Q4_1 || type == KRN_G_Q8_0;
    if (blockwise && n % 32)
        return S3_EINVAL;
    if (n == 0)
        return 0;
    k_dequant<<<krn_cuda__blocks(n, 256), 256, 0, dev->stream>>>(type, (const uint8_t *)d_src,
                                                                 (__half *)d_dst, n);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_f32_to_f16(struct krn_cuda_dev *dev, const float *d_src, uint16_t *d_dst,
                                   int64_t n)
{
    if (n <= 0)
        return n < 0 ? S3_EINVAL : 0;
    k_f32_to_f16<<<krn_cuda__blocks(n, 256), 256, 0, dev->stream>>>(d_src, (__half *)d_dst, n);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}

extern "C" int krn_cuda_f16_to_f32(struct krn_cuda_dev *dev, const uint16_t *d_src, float *d_dst,
                                   int64_t n)
{
    if (n <= 0)
        return n < 0 ? S3_EINVAL : 0;
    k_f16_to_f32<<<krn_cuda__blocks(n, 256), 256, 0, dev->stream>>>((const __half *)d_src, d_dst,
                                                                    n);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
