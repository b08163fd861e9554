/* kernels/cuda/dequant.cuh - ggml block formats decoded on the device (see kernels/quant.h). */
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

/* ggml type numbers (the file format's, as engine/gguf.h) */
enum { KRN_G_F32 = 0, KRN_G_F16 = 1, KRN_G_Q4_0 = 2, KRN_G_Q4_1 = 3, KRN_G_Q8_0 = 8,
       KRN_G_BF16 = 30 };

__device__ __forceinline__ float krn_ld_half(const uint8_t *p)
{
    const unsigned short h = (unsigned short)(p[0] | (p[1] << 8));
    return __half2float(__ushort_as_half(h));
}
