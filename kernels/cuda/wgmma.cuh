/* kernels/cuda/wgmma.cuh - Hopper warpgroup MMA helpers (sm_90a; empty elsewhere): fences,
 * groups, the shared-memory operand descriptor, and the MMAs themselves (wgmma_ops.cuh,
 * generated). Accumulators are d[N/8][4] in the m16n8 accumulator order of each warp's 16
 * rows; see attn.cu for their use. */
#pragma once

#include <stdint.h>
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KRN_WGMMA 1
#endif

#include "wgmma_ops.cuh"

/* the accumulators are not to be touched by the compiler across the asynchronous MMA */
template <int NT> __device__ __forceinline__ void krn_wg_fence_acc(float (&d)[NT][4])
{
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            asm volatile("" : "+f"(d[j][e])::"memory");
}

__device__ __forceinline__ void krn_wg_fence()
{
#ifdef KRN_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void krn_wg_commit()
{
#ifdef KRN_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void krn_wg_wait()
{
#ifdef KRN_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* shared-memory writes of the generic proxy (cp.async, st.shared) made visible to wgmma */
__device__ __forceinline__ void krn_wg_proxy_fence()
{
#ifdef KRN_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
/* descriptor of an operand at p in the 128-byte swizzled layout (p 1 KiB-aligned up to the
   offset of a 16-column step within a row): lbo, sbo in bytes (see the PTX ISA's canonical
   layouts: K-major, sbo between groups of 8 rows; N-major, lbo between blocks of 64 columns
   and sbo between groups of 8 rows) */
__device__ __forceinline__ uint64_t krn_wg_desc(const void *p, unsigned lbo, unsigned sbo)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    return (uint64_t)((a & 0x3ffff) >> 4) | (uint64_t)((lbo >> 4) & 0x3fff) << 16 |
           (uint64_t)((sbo >> 4) & 0x3fff) << 32 | (uint64_t)1 << 62;
}
