/* kernels/cuda/attn.cu - causal GQA attention over the fp16 KV cache (see attn.cuh). */
#include <math.h>

#include "attn.cuh"
#include "cuda_int.cuh"
#include "reduce.cuh"
#include "wgmma.cuh"

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                          uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const __half *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&h;
}

__device__ __forceinline__ uint32_t ld_u32(const __half *p)
{
    return *(const uint32_t *)p;
}

template <int HD>
__global__ void __launch_bounds__(KRN_ATT_WARPS * 32)
    k_attn_mma(const __half *q, const __half *kc, const __half *vc, __half *out, int n, int pos0,
               int n_head, int group, int n_ctx, float sl2)
{
    constexpr int KS = HD + 8;         /* K tile row stride, halves (conflict-free fragments) */
    constexpr int VS = HD + 8;         /* V tile row stride, halves (ldmatrix rows 16B apart) */
    constexpr int NKK = HD / 16, NNT = HD / 8;
    __shared__ __align__(16) __half ks[KRN_ATT_BK * KS];
    __shared__ __align__(16) __half vs[KRN_ATT_BK * VS];

    const int h = blockIdx.y, hk = h / group, q0 = blockIdx.x * KRN_ATT_BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int dq = n_head * HD;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    const int qp0 = pos0 + r0, qp1 = pos0 + r1;

    uint32_t qf[NKK][4];
#pragma unroll
    for (int kk = 0; kk < NKK; kk++) {
        const __half *a = q + (size_t)r0 * dq + (size_t)h * HD + kk * 16 + 2 * t4;
        const __half *b = q + (size_t)r1 * dq + (size_t)h * HD + kk * 16 + 2 * t4;
        qf[kk][0] = r0 < n ? ld_u32(a) : 0u;
        qf[kk][1] = r1 < n ? ld_u32(b) : 0u;
        qf[kk][2] = r0 < n ? ld_u32(a + 8) : 0u;
        qf[kk][3] = r1 < n ? ld_u32(b + 8) : 0u;
    }
    const int last_q = min(n - 1, q0 + KRN_ATT_BQ - 1);
    const int kmax = pos0 + last_q; /* last key any row of this block sees */
    const int klim = pos0 + n - 1;  /* last key written */
    const int n_kt = kmax / KRN_ATT_BK + 1;
    const int wmin = pos0 + q0 + warp * 16, wmax = wmin + 15;
    const __half *kb = kc + (size_t)hk * n_ctx * HD;
    const __half *vb = vc + (size_t)hk * n_ctx * HD;

    float o[NNT][4];
#pragma unroll
    for (int i = 0; i < NNT; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int kt = 0; kt < n_kt; kt++) {
        const int kbase = kt * KRN_ATT_BK;
        __syncthreads();
        for (int c = threadIdx.x; c < KRN_ATT_BK * HD / 8; c += blockDim.x) {
            const int key = c / (HD / 8), d8 = (c % (HD / 8)) * 8, j = kbase + key;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (j <= klim) {
                kv = *(const uint4 *)(kb + (size_t)j * HD + d8);
                vv = *(const uint4 *)(vb + (size_t)j * HD + d8);
            }
            *(uint4 *)&ks[key * KS + d8] = kv;
            *(uint4 *)&vs[key * VS + d8] = vv;
        }
        __syncthreads();
        if (kbase > wmax)
            continue; /* every key of this tile is in the future of this warp's rows */
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < NKK; kk++) {
                const __half *kr = &ks[(8 * j + g) * KS + kk * 16 + 2 * t4];
                mma_16816(s[j], qf[kk], ld_u32(kr), ld_u32(kr + 8));
            }
        }
        const bool masked = kbase + KRN_ATT_BK - 1 > wmin;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = kbase + 8 * j + 2 * t4 + e;
                float v0 = s[j][e] * sl2, v1 = s[j][2 + e] * sl2;
                if (masked) {
                    if (key > qp0)
                        v0 = -INFINITY;
                    if (key > qp1)
                        v1 = -INFINITY;
                }
                s[j][e] = v0;
                s[j][2 + e] = v1;
                mx0 = fmaxf(mx0, v0);
                mx1 = fmaxf(mx1, v1);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        /* a row whose keys are all masked so far keeps m = -inf: use 0 as its reference */
        const float ref0 = mn0 == -INFINITY ? 0.0f : mn0, ref1 = mn1 == -INFINITY ? 0.0f : mn1;
        const float a0 = exp2f(m0 - ref0), a1 = exp2f(m1 - ref1);
        m0 = mn0;
        m1 = mn1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int i = 0; i < NNT; i++) {
            o[i][0] *= a0;
            o[i][1] *= a0;
            o[i][2] *= a1;
            o[i][3] *= a1;
        }
        uint32_t pf[4][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const __half2 h0 = __floats2half2_rn(exp2f(s[j][0] - ref0), exp2f(s[j][1] - ref0));
            const __half2 h1 = __floats2half2_rn(exp2f(s[j][2] - ref1), exp2f(s[j][3] - ref1));
            l0 += __low2float(h0) + __high2float(h0);
            l1 += __low2float(h1) + __high2float(h1);
            pf[j >> 1][(j & 1) * 2 + 0] = *(const uint32_t *)&h0;
            pf[j >> 1][(j & 1) * 2 + 1] = *(const uint32_t *)&h1;
        }
        /* B fragments of V (k = key, n = dim) straight from the row-major tile: ldmatrix.trans
           of four 8x8 blocks (keys +0/+8, dims +0/+8) gives b0, b1 of two n-tiles */
        const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int i = 0; i < NNT; i += 2) {
                uint32_t b[4];
                ldsm_x4_trans(b, &vs[(kk * 16 + lrow) * VS + 8 * i + lcol]);
                mma_16816(o[i], pf[kk], b[0], b[1]);
                mma_16816(o[i + 1], pf[kk], b[2], b[3]);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int i = 0; i < NNT; i++) {
        const int col = h * HD + 8 * i + 2 * t4;
        if (r0 < n)
            *(uint32_t *)&out[(size_t)r0 * dq + col] = pack_h2(o[i][0] * i0, o[i][1] * i0);
        if (r1 < n)
            *(uint32_t *)&out[(size_t)r1 * dq + col] = pack_h2(o[i][2] * i1, o[i][3] * i1);
    }
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const __half *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* 16 bytes global -> shared without a register round trip; src_bytes 0 fills zeros */
__device__ __forceinline__ void cp_async16(__half *dst, const __half *src, int src_bytes)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* 2^x, one MUFU instruction: results under 2^-126 flush to 0 (probabilities are rounded to
 * fp16 next, where anything under 2^-24 is 0 anyway) */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* One key tile of the online softmax on the m16n8 accumulator layout (rows r0 = g and r1 =
 * g + 8 of a warp's 16; columns 8j + 2 t4 + {0, 1} of the tile): the causal mask where the
 * tile meets the diagonal, the running maxima and sums, the output accumulators rescaled
 * where a row's maximum rose, and the probabilities as fp16 A fragments pf for P V. */
template <int NJ, int NNT>
__device__ __forceinline__ void tile_softmax(float (&s)[NJ][4], float (&o)[NNT][4],
                                             uint32_t (&pf)[NJ / 2][4], int kbase, bool diag,
                                             int qp0, int qp1, int t4, float sl2, float &m0,
                                             float &m1, float &l0, float &l1)
{
    if (diag) { /* a tile on this warp's diagonal */
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = kbase + 8 * j + 2 * t4 + e;
                if (key > qp0)
                    s[j][e] = -INFINITY;
                if (key > qp1)
                    s[j][2 + e] = -INFINITY;
            }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* running maxima in log2 units (sl2 > 0: the max of the scaled scores is the
       scaled max); a row whose keys are all masked so far keeps m = -inf and uses 0 */
    const float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
    const float ref0 = mn0 == -INFINITY ? 0.0f : mn0;
    const float ref1 = mn1 == -INFINITY ? 0.0f : mn1;
    const float a0 = m0 == ref0 ? 1.0f : ex2(m0 - ref0);
    const float a1 = m1 == ref1 ? 1.0f : ex2(m1 - ref1);
    m0 = mn0;
    m1 = mn1;
    l0 *= a0;
    l1 *= a1;
    if (__any_sync(0xffffffffu, a0 != 1.0f || a1 != 1.0f)) { /* some row's max rose */
#pragma unroll
        for (int i = 0; i < NNT; i++) {
            o[i][0] *= a0;
            o[i][1] *= a0;
            o[i][2] *= a1;
            o[i][3] *= a1;
        }
    }
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const __half2 h0 = __floats2half2_rn(ex2(fmaf(s[j][0], sl2, -ref0)),
                                             ex2(fmaf(s[j][1], sl2, -ref0)));
        const __half2 h1 = __floats2half2_rn(ex2(fmaf(s[j][2], sl2, -ref1)),
                                             ex2(fmaf(s[j][3], sl2, -ref1)));
        l0 += __low2float(h0) + __high2float(h0);
        l1 += __low2float(h1) + __high2float(h1);
        pf[j >> 1][(j & 1) * 2 + 0] = *(const uint32_t *)&h0;
        pf[j >> 1][(j & 1) * 2 + 1] = *(const uint32_t *)&h1;
    }
}

/* The rows' outputs o / l as fp16 (Q8: rounded as krn_cuda_q8_round does) into out at row
 * stride dq, columns c0 + 8 i (c0 includes the lane's 2 t4). */
template <int NNT, bool Q8>
__device__ __forceinline__ void store_rows(float (&o)[NNT][4], float l0, float l1, __half *out,
                                           int r0, int r1, int n, int dq, int c0)
{
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    if (Q8) {
        /* the fp16 outputs rounded as krn_cuda_q8_round does: a block of 32 columns of a row
           is o[4b .. 4b+3] of the 4 lanes of a quad (8 values each) */
#pragma unroll
        for (int i = 0; i < NNT; i++) {
            o[i][0] = __half2float(__float2half_rn(o[i][0] * i0));
            o[i][1] = __half2float(__float2half_rn(o[i][1] * i0));
            o[i][2] = __half2float(__float2half_rn(o[i][2] * i1));
            o[i][3] = __half2float(__float2half_rn(o[i][3] * i1));
        }
#pragma unroll
        for (int b = 0; b < NNT / 4; b++) {
            float y0[8], y1[8];
#pragma unroll
            for (int e = 0; e < 8; e++)
                y0[e] = o[4 * b + e / 2][e % 2], y1[e] = o[4 * b + e / 2][2 + e % 2];
            krn_q8_round8(y0, 0xffffffffu);
            krn_q8_round8(y1, 0xffffffffu);
#pragma unroll
            for (int e = 0; e < 8; e++)
                o[4 * b + e / 2][e % 2] = y0[e], o[4 * b + e / 2][2 + e % 2] = y1[e];
        }
    }
    const float f0 = Q8 ? 1.0f : i0, f1 = Q8 ? 1.0f : i1;
#pragma unroll
    for (int i = 0; i < NNT; i++) {
        const int col = c0 + 8 * i;
        if (r0 < n)
            *(uint32_t *)&out[(size_t)r0 * dq + col] = pack_h2(o[i][0] * f0, o[i][1] * f0);
        if (r1 < n)
            *(uint32_t *)&out[(size_t)r1 * dq + col] = pack_h2(o[i][2] * f1, o[i][3] * f1);
    }
}

/* A query block of the tiled kernels (blocks taken heaviest first; warps of 16 rows; g, t4:
 * the lane's row and column pair in the m16n8 accumulator layout): rows r0, r1 = r0 + 8 at
 * positions qp0, qp1, keys up to klim in n_kt tiles of BK, wmin the warp's first position,
 * kb and vb the kv head's keys and values. */
struct att_rows {
    int h, q0, warp, g, t4, dq, r0, r1, qp0, qp1, klim, n_kt, wmin;
    const __half *kb, *vb;
};

template <int HD, int BQ, int BK>
__device__ __forceinline__ att_rows att_rows_of(const __half *kc, const __half *vc, int n,
                                                int pos0, int n_head, int group, int n_ctx)
{
    att_rows a;
    a.h = blockIdx.y;
    a.q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
    a.warp = threadIdx.x >> 5;
    a.g = (threadIdx.x & 31) >> 2;
    a.t4 = threadIdx.x & 3;
    a.dq = n_head * HD;
    a.r0 = a.q0 + a.warp * 16 + a.g;
    a.r1 = a.r0 + 8;
    a.qp0 = pos0 + a.r0;
    a.qp1 = pos0 + a.r1;
    a.klim = pos0 + n - 1;
    a.n_kt = (pos0 + min(n - 1, a.q0 + BQ - 1)) / BK + 1;
    a.wmin = pos0 + a.q0 + a.warp * 16;
    a.kb = kc + (size_t)(a.h / group) * n_ctx * HD;
    a.vb = vc + (size_t)(a.h / group) * n_ctx * HD;
    return a;
}

/* The pipelined tensor-core kernel (variant 2): the same per-warp algorithm as k_attn_mma,
 * with K/V tiles brought in by cp.async two stages deep (tile kt+1 loads while tile kt is
 * used), K fragments read with ldmatrix, and the query blocks taken heaviest first (the last
 * block of a causal chunk sees the most keys). Dynamic shared memory: 2 stages x (K, V). */
template <int HD, int W, bool Q8, int BK>
__global__ void __launch_bounds__(W * 32, 1)
    k_attn_mma2(const __half *q, const __half *kc, const __half *vc, __half *out, int n,
                int pos0, int n_head, int group, int n_ctx, float sl2)
{
    constexpr int BQ = W * 16; /* queries per block: W warps of 16 rows */
    constexpr int ST = HD + 8; /* tile row stride, halves: 16-byte rows land on distinct banks */
    constexpr int NKK = HD / 16, NNT = HD / 8, NJ = BK / 8, NPK = BK / 16;
    constexpr int TILE = BK * ST;
    extern __shared__ __align__(16) __half smem[]; /* [stage][K tile, V tile] */

    const att_rows a = att_rows_of<HD, BQ, BK>(kc, vc, n, pos0, n_head, group, n_ctx);
    const int h = a.h, t4 = a.t4, dq = a.dq, r0 = a.r0, r1 = a.r1, qp0 = a.qp0, qp1 = a.qp1;
    const int klim = a.klim, n_kt = a.n_kt;
    const int wmin = a.wmin, wmax = wmin + 15, lane = threadIdx.x & 31;
    const __half *kb = a.kb, *vb = a.vb;

    auto load_tile = [&](int kt, int stage) {
        __half *ks = smem + stage * 2 * TILE, *vs = ks + TILE;
        const int kbase = kt * BK;
        for (int c = threadIdx.x; c < BK * HD / 8; c += blockDim.x) {
            const int key = c / (HD / 8), d8 = (c % (HD / 8)) * 8, j = kbase + key;
            const bool ok = j <= klim;
            const size_t off = ok ? (size_t)j * HD + d8 : 0;
            cp_async16(&ks[key * ST + d8], kb + off, ok ? 16 : 0);
            cp_async16(&vs[key * ST + d8], vb + off, ok ? 16 : 0);
        }
        cp_async_commit();
    };
    load_tile(0, 0);

    uint32_t qf[NKK][4];
#pragma unroll
    for (int kk = 0; kk < NKK; kk++) {
        const __half *a = q + (size_t)r0 * dq + (size_t)h * HD + kk * 16 + 2 * t4;
        const __half *b = q + (size_t)r1 * dq + (size_t)h * HD + kk * 16 + 2 * t4;
        qf[kk][0] = r0 < n ? ld_u32(a) : 0u;
        qf[kk][1] = r1 < n ? ld_u32(b) : 0u;
        qf[kk][2] = r0 < n ? ld_u32(a + 8) : 0u;
        qf[kk][3] = r1 < n ? ld_u32(b + 8) : 0u;
    }
    float o[NNT][4];
#pragma unroll
    for (int i = 0; i < NNT; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    /* ldmatrix lane addressing: K (non-trans) rows = keys 8j + (lane & 7), column block
       (lane >> 3) * 8 covers b0/b1 of kk and kk+1; V (trans) as in k_attn_mma */
    const int krow = lane & 7, kcol = (lane >> 3) * 8;
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;

    for (int kt = 0; kt < n_kt; kt++) {
        if (kt + 1 < n_kt) {
            load_tile(kt + 1, (kt + 1) & 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int kbase = kt * BK;
        const __half *ks = smem + (kt & 1) * 2 * TILE, *vs = ks + TILE;
        if (kbase <= wmax) {
            float s[NJ][4]; /* raw scores q.k; the scale is folded into the exponent */
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < NKK; kk += 2) {
                    uint32_t b[4];
                    ldsm_x4(b, &ks[(8 * j + krow) * ST + kk * 16 + kcol]);
                    mma_16816(s[j], qf[kk], b[0], b[1]);
                    mma_16816(s[j], qf[kk + 1], b[2], b[3]);
                }
            }
            uint32_t pf[NPK][4];
            tile_softmax<NJ, NNT>(s, o, pf, kbase, kbase + BK - 1 > wmin, qp0, qp1, t4, sl2, m0, m1,
                                  l0, l1);
#pragma unroll
            for (int kk = 0; kk < NPK; kk++) {
#pragma unroll
                for (int i = 0; i < NNT; i += 2) {
                    uint32_t b[4];
                    ldsm_x4_trans(b, &vs[(kk * 16 + lrow) * ST + 8 * i + lcol]);
                    mma_16816(o[i], pf[kk], b[0], b[1]);
                    mma_16816(o[i + 1], pf[kk], b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* this stage is refilled by the load issued in the next iteration */
    }
    store_rows<NNT, Q8>(o, l0, l1, out, r0, r1, n, dq, h * HD + 2 * t4);
}

/* Offset (halves) of row r, columns 8c..8c+7 of an R x HD tile in wgmma's 128-byte swizzled
 * layout: atoms of 8 rows x 64 columns (1 KiB, rows 128 bytes apart, the 16-byte column
 * blocks of row r at block c ^ (r & 7)); the atoms of a column block of 64 stacked by rows,
 * column blocks R / 8 KiB apart. The tile must start 1 KiB-aligned. */
template <int R> __device__ __forceinline__ int wg_off(int r, int c)
{
    return (c >> 3) * (R * 64) + (r >> 3) * 512 + (r & 7) * 64 + (((c & 7) ^ (r & 7)) << 3);
}

/* Rows row0.. of a BR x HD fp16 tile (global row stride ld halves) into shared memory in the
 * wg_off layout, 16 bytes per cp.async; rows past rlim are zero-filled. Consecutive threads
 * take consecutive 16-byte blocks of a row (coalesced reads, conflict-free stores). */
template <int HD, int BR>
__device__ __forceinline__ void wg_load(__half *dst, const __half *src, size_t ld, int row0,
                                        int rlim)
{
    for (int i = threadIdx.x; i < BR * HD / 8; i += blockDim.x) {
        const int r = i / (HD / 8), c = i % (HD / 8);
        const bool ok = row0 + r <= rlim;
        cp_async16(dst + wg_off<BR>(r, c), ok ? src + (size_t)(row0 + r) * ld + c * 8 : src,
                   ok ? 16 : 0);
    }
}

/* Variant 3 (Hopper, sm_90a): the online softmax of variant 2 with both products on
 * warpgroup MMAs. A block of two warpgroups takes 128 queries (64 rows each); Q (the block's
 * rows), K and V tiles of 128 keys sit in shared memory in wgmma's 128-byte swizzled layout, K/V
 * KRN_ATT_WG_STAGES deep by cp.async (one barrier per tile). S = Q K^T is one m64n128k16 chain per warpgroup from shared
 * memory; P stays in registers as the A operand of O += P V, with V read N-major. Tiles past
 * a warpgroup's rows are skipped. */
template <int HD, bool Q8>
__global__ void __launch_bounds__(256, 1)
    k_attn_wg(const __half *q, const __half *kc, const __half *vc, __half *out, int n, int pos0,
              int n_head, int group, int n_ctx, float sl2)
{
#ifdef KRN_WGMMA
    constexpr int BQ = 128, BK = 128, NNT = HD / 8, NJ = BK / 8, NPK = BK / 16, NKK = HD / 16;
    constexpr int TILE = BK * HD;
    extern __shared__ __align__(1024) __half wsm[]; /* Q, then [stage][K, V] */
    __half *const smem = wsm, *qs = wsm;

    const att_rows a = att_rows_of<HD, BQ, BK>(kc, vc, n, pos0, n_head, group, n_ctx);
    const int h = a.h, q0 = a.q0, t4 = a.t4, dq = a.dq, r0 = a.r0, r1 = a.r1, qp0 = a.qp0;
    const int qp1 = a.qp1, klim = a.klim, n_kt = a.n_kt, wmin = a.wmin;
    const int wg = a.warp >> 2;
    const int gmax = pos0 + q0 + wg * 64 + 63; /* the warpgroup's last row */
    const __half *kb = a.kb, *vb = a.vb;

    auto stage = [&](int kt) { return smem + BQ * HD + (kt % KRN_ATT_WG_STAGES) * 2 * TILE; };
    auto load_tile = [&](int kt) {
        wg_load<HD, BK>(stage(kt), kb, HD, kt * BK, klim);
        wg_load<HD, BK>(stage(kt) + TILE, vb, HD, kt * BK, klim);
        cp_async_commit();
    };
    const __half *qw = qs + wg * 64 * 64; /* the warpgroup's 8 row groups of each block */
    wg_load<HD, BQ>(qs, q + (size_t)h * HD, dq, q0, n - 1);
    load_tile(0);
    if (n_kt > 1)
        load_tile(1);

    float o[NNT][4];
#pragma unroll
    for (int i = 0; i < NNT; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    /* Each product is waited for before its result is read: reading S while P V of the
       previous tile runs (the softmax overlapping it) made ptxas serialize the wgmmas, and
       the kernel took 164 us instead of 153 for the 8B heads. */
    for (int kt = 0; kt < n_kt; kt++) {
        if (kt + 1 < n_kt)
            cp_async_wait<1>();
        else
            cp_async_wait<0>();
        krn_wg_proxy_fence();
        /* tile kt is in for every thread, and every thread is done with tile kt - 1, whose
           stage the load of tile kt + 2 refills */
        __syncthreads();
        if (kt + 2 < n_kt)
            load_tile(kt + 2);
        const int kbase = kt * BK;
        const __half *ks = stage(kt), *vs = ks + TILE;
        if (kbase <= gmax) {
            float s[NJ][4];
#pragma unroll
            for (int j = 0; j < NJ; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            krn_wg_fence();
#pragma unroll
            for (int kk = 0; kk < NKK; kk++) /* 16 columns: 32 bytes into a 64-column block */
                krn_wg_ss(s, krn_wg_desc(qw + (kk >> 2) * BQ * 64 + (kk & 3) * 16, 16, 1024),
                             krn_wg_desc(ks + (kk >> 2) * BK * 64 + (kk & 3) * 16, 16, 1024),
                             kk > 0);
            krn_wg_commit();
            krn_wg_wait<0>();
            krn_wg_fence_acc(s);
            uint32_t pf[NPK][4];
            tile_softmax<NJ, NNT>(s, o, pf, kbase, kbase + BK - 1 > wmin, qp0, qp1, t4, sl2, m0,
                                  m1, l0, l1);
            krn_wg_fence();
#pragma unroll
            for (int kk = 0; kk < NPK; kk++) {
                /* keys 16 kk..: two groups of 8 rows; N-major, column blocks of 64 at LBO */
                const uint64_t dv = krn_wg_desc(vs + kk * 1024, BK * 128, 1024);
                krn_wg_rs(o, pf[kk], dv);
            }
            krn_wg_commit();
            krn_wg_wait<0>();
            krn_wg_fence_acc(o);
        }
    }
    store_rows<NNT, Q8>(o, l0, l1, out, r0, r1, n, dq, h * HD + 2 * t4);
#endif
}

/* 1 where this build's attention has the Hopper kernel (sm_90a code), 0 where not. */
__global__ void k_attn_wg_probe(int *out)
{
#ifdef KRN_WGMMA
    *out = 1;
#else
    *out = 0;
#endif
}

/* Split-KV attention for short batches (decode): block (split s, head h, query i) takes keys
 * [s*per, min((s+1)*per, pos0+i+1)); each of its 4 warps scores 32 keys at a time, one key per
 * lane (the key row read as 16-byte vectors, q from shared memory), keeps an online softmax,
 * and accumulates HDL = hd/32 contiguous output dims per lane. The warps merge in shared
 * memory and the block writes an unnormalised partial (max, sum, o[hd]) that k_attn_combine
 * folds over the splits. */
template <int HDL>
__global__ void __launch_bounds__(KRN_ATT_SPLIT_THREADS)
    k_attn_split(const __half *q, const __half *kc, const __half *vc, float *part, int pos0,
                 int n_head, int group, int n_ctx, int per, float sl2)
{
    constexpr int HD = HDL * 32, NW = KRN_ATT_SPLIT_THREADS / 32;
    __shared__ __align__(16) float qs[HD];
    __shared__ float wm[NW], wl[NW];
    __shared__ float wo[NW][HD];
    const int s = blockIdx.x, h = blockIdx.y, i = blockIdx.z, hk = h / group;
    const int n_split = gridDim.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int dq = n_head * HD, nk = pos0 + i + 1;
    const int k_lo = s * per, k_hi = min(nk, k_lo + per);
    for (int d = threadIdx.x; d < HD; d += blockDim.x)
        qs[d] = __half2float(q[(size_t)i * dq + (size_t)h * HD + d]);
    __syncthreads();
    const __half *kb = kc + (size_t)hk * n_ctx * HD;
    const __half *vb = vc + (size_t)hk * n_ctx * HD;
    float m = -INFINITY, l = 0.0f, o[HDL];
#pragma unroll
    for (int u = 0; u < HDL; u++)
        o[u] = 0.0f;
    for (int j0 = k_lo + 32 * warp; j0 < k_hi; j0 += 32 * NW) {
        const int j = j0 + lane;
        float sc = -INFINITY;
        if (j < k_hi) {
            const uint4 *kr = (const uint4 *)(kb + (size_t)j * HD);
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < HD / 8; c++) {
                const uint4 v = kr[c];
                const __half2 *hv = (const __half2 *)&v;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float2 f = __half22float2(hv[e]);
                    dot += qs[8 * c + 2 * e] * f.x + qs[8 * c + 2 * e + 1] * f.y;
                }
            }
            sc = dot * sl2;
        }
        float mt = sc;
        for (int off = 16; off > 0; off >>= 1)
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
        const float mn = fmaxf(m, mt); /* finite: lane 0's key is always in range */
        const float alpha = exp2f(m - mn);
        const float p = j < k_hi ? __half2float(__float2half_rn(exp2f(sc - mn))) : 0.0f;
        float ps = p;
        for (int off = 16; off > 0; off >>= 1)
            ps += __shfl_xor_sync(0xffffffffu, ps, off);
        l = l * alpha + ps;
        m = mn;
#pragma unroll
        for (int u = 0; u < HDL; u++)
            o[u] *= alpha;
        const int nj = min(32, k_hi - j0);
        for (int jj = 0; jj < nj; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const __half *vr = vb + (size_t)(j0 + jj) * HD + lane * HDL;
#pragma unroll
            for (int u = 0; u < HDL; u++)
                o[u] += pj * __half2float(vr[u]);
        }
    }
    if (lane == 0)
        wm[warp] = m, wl[warp] = l;
#pragma unroll
    for (int u = 0; u < HDL; u++)
        wo[warp][lane * HDL + u] = o[u];
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; w++)
        M = fmaxf(M, wm[w]);
    float *pp = part + (((size_t)i * n_head + h) * n_split + s) * (HD + 2);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float acc = 0.0f;
        if (M != -INFINITY)
#pragma unroll
            for (int w = 0; w < NW; w++)
                acc += wo[w][d] * exp2f(wm[w] - M);
        pp[2 + d] = acc;
    }
    if (threadIdx.x == 0) {
        float L = 0.0f;
        if (M != -INFINITY)
            for (int w = 0; w < NW; w++)
                L += wl[w] * exp2f(wm[w] - M);
        pp[0] = M;
        pp[1] = L;
    }
}

/* out (query i, head h) = sum over splits of o_s * 2^(m_s - M) / sum of l_s * 2^(m_s - M). */
__global__ void k_attn_combine(const float *part, int n_split, int n_head, int hd, __half *out)
{
    const int h = blockIdx.x, i = blockIdx.y;
    const float *pp = part + ((size_t)i * n_head + h) * n_split * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        M = fmaxf(M, pp[(size_t)s * (hd + 2)]);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float ms = pp[(size_t)s * (hd + 2)];
        if (ms != -INFINITY)
            L += pp[(size_t)s * (hd + 2) + 1] * exp2f(ms - M);
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float ms = pp[(size_t)s * (hd + 2)];
            if (ms != -INFINITY)
                acc += pp[(size_t)s * (hd + 2) + 2 + d] * exp2f(ms - M);
        }
        out[(size_t)i * n_head * hd + (size_t)h * hd + d] = __float2half_rn(acc * inv);
    }
}

__global__ void __launch_bounds__(KRN_ATT_PLAIN)
    k_attn_plain(const __half *q, const __half *kc, const __half *vc, __half *out, int pos0,
                 int n_head, int group, int hd, int n_ctx, float scale)
{
    __shared__ float qs[256];
    __shared__ float ps[KRN_ATT_PLAIN];
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y, hk = h / group, tid = threadIdx.x;
    const int dq = n_head * hd;
    for (int d = tid; d < hd; d += blockDim.x)
        qs[d] = __half2float(q[(size_t)i * dq + (size_t)h * hd + d]);
    const __half *kb = kc + (size_t)hk * n_ctx * hd;
    const __half *vb = vc + (size_t)hk * n_ctx * hd;
    const int nk = pos0 + i + 1;
    float m = -INFINITY, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    for (int j0 = 0; j0 < nk; j0 += KRN_ATT_PLAIN) {
        __syncthreads(); /* qs written / ps of the last tile consumed */
        const int j = j0 + tid;
        float s = -INFINITY;
        if (j < nk) {
            const __half2 *kr = (const __half2 *)(kb + (size_t)j * hd);
            float dot = 0.0f;
#pragma unroll 8
            for (int d = 0; d < hd / 2; d++) { /* unrolled: several row loads in flight */
                const float2 kf = __half22float2(kr[d]);
                dot += qs[2 * d] * kf.x + qs[2 * d + 1] * kf.y;
            }
            s = dot * scale;
        }
        const float mt = krn_block_max(s, red);
        const float mn = fmaxf(m, mt);
        const float alpha = expf(m - mn);
        const float p = j < nk ? __half2float(__float2half_rn(expf(s - mn))) : 0.0f;
        ps[tid] = p;
        const float psum = krn_block_sum(p, red); /* its barrier also publishes ps */
        l = l * alpha + psum;
        m = mn;
        acc0 *= alpha;
        acc1 *= alpha;
        const int nj = min(KRN_ATT_PLAIN, nk - j0);
        const __half *vt0 = vb + (size_t)j0 * hd;
        if (tid < hd) {
            float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const int two = tid + KRN_ATT_PLAIN < hd;
            int jj = 0;
            for (; jj + 8 <= nj; jj += 8) { /* eight independent loads in flight */
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    a[u] += ps[jj + u] * __half2float(vt0[(size_t)(jj + u) * hd + tid]);
                    if (two)
                        b[u] += ps[jj + u] *
                                __half2float(vt0[(size_t)(jj + u) * hd + tid + KRN_ATT_PLAIN]);
                }
            }
            for (; jj < nj; jj++) {
                a[0] += ps[jj] * __half2float(vt0[(size_t)jj * hd + tid]);
                if (two)
                    b[0] += ps[jj] * __half2float(vt0[(size_t)jj * hd + tid + KRN_ATT_PLAIN]);
            }
#pragma unroll
            for (int u = 0; u < 8; u++)
                acc0 += a[u], acc1 += b[u];
        }
    }
    __half *orow = out + (size_t)i * dq + (size_t)h * hd;
    if (tid < hd)
        orow[tid] = __float2half_rn(acc0 / l);
    if (tid + KRN_ATT_PLAIN < hd)
        orow[tid + KRN_ATT_PLAIN] = __float2half_rn(acc1 / l);
}

/* Device scratch for the split-KV partials, grown on demand (bounded: short batches only). */
static int split_scratch(struct krn_cuda_dev *dev, size_t bytes, float **out)
{
    if (bytes > dev->att_scr_bytes) {
        if (dev->att_scr) {
            KRN_CHECK(dev, cudaStreamSynchronize(dev->stream));
            cudaFree(dev->att_scr);
            dev->att_scr = NULL;
            dev->att_scr_bytes = 0;
        }
        KRN_CHECK(dev, cudaMalloc(&dev->att_scr, bytes));
        dev->att_scr_bytes = bytes;
    }
    *out = (float *)dev->att_scr;
    return 0;
}

template <int HDL>
static void launch_split(struct krn_cuda_dev *dev, dim3 grid, const __half *q, const __half *kc,
                         const __half *vc, float *part, int pos0, int n_head, int group,
                         int n_ctx, int per, float sl2)
{
    k_attn_split<HDL><<<grid, KRN_ATT_SPLIT_THREADS, 0, dev->stream>>>(
        q, kc, vc, part, pos0, n_head, group, n_ctx, per, sl2);
}

template <int HD, int W, bool Q8, int BK>
static int launch_mma2_w(struct krn_cuda_dev *dev, const __half *q, const __half *kc,
                         const __half *vc, __half *out, int n, int pos0, int n_head, int group,
                         int n_ctx, float sl2)
{
    const int smem = 2 * 2 * BK * (HD + 8) * (int)sizeof(__half);
    KRN_CHECK(dev, cudaFuncSetAttribute(k_attn_mma2<HD, W, Q8, BK>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    dim3 grid(krn_cuda__blocks(n, W * 16), n_head);
    k_attn_mma2<HD, W, Q8, BK><<<grid, W * 32, smem, dev->stream>>>(q, kc, vc, out, n, pos0,
                                                                     n_head, group, n_ctx, sl2);
    return 0;
}

/* Blocks of 128 queries (8 warps) over key tiles of 128 by default: on the H200, for causal
 * chunks of 2048, 8B heads 183 us (blocks of 64 over tiles of 64: 197), 135M heads 42 us (128
 * over 64: 48). Blocks of 64 (4 warps) take tiles of 128 for head size 64 and of 64 for 128,
 * where 4 warps over tiles of 128 are slower (220 us). */
template <int HD, bool Q8>
static int launch_mma2_hd(struct krn_cuda_dev *dev, const __half *q, const __half *kc,
                          const __half *vc, __half *out, int n, int pos0, int n_head, int group,
                          int n_ctx, float sl2)
{
    if (dev->attn_bq == 64)
        return launch_mma2_w<HD, 4, Q8, HD == 64 ? 128 : 64>(dev, q, kc, vc, out, n, pos0,
                                                             n_head, group, n_ctx, sl2);
    return launch_mma2_w<HD, 8, Q8, 128>(dev, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                         sl2);
}

/* hd 64 or 128. */
template <bool Q8>
static int launch_mma2(struct krn_cuda_dev *dev, int hd, const __half *q, const __half *kc,
                       const __half *vc, __half *out, int n, int pos0, int n_head, int group,
                       int n_ctx, float sl2)
{
    return hd == 64 ? launch_mma2_hd<64, Q8>(dev, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                             sl2)
                    : launch_mma2_hd<128, Q8>(dev, q, kc, vc, out, n, pos0, n_head, group,
                                              n_ctx, sl2);
}

/* Dynamic shared memory of k_attn_wg: Q and the K/V stages (hd 128: 224 KiB). */
template <int HD> static constexpr int wg_smem()
{
    return (128 * HD + KRN_ATT_WG_STAGES * 2 * 128 * HD) * (int)sizeof(__half);
}

template <int HD, bool Q8> static cudaError_t wg_allow_smem()
{
    return cudaFuncSetAttribute(k_attn_wg<HD, Q8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                wg_smem<HD>());
}

template <int HD, bool Q8>
static int launch_wg_hd(struct krn_cuda_dev *dev, const __half *q, const __half *kc,
                        const __half *vc, __half *out, int n, int pos0, int n_head, int group,
                        int n_ctx, float sl2)
{
    const int smem = wg_smem<HD>(); /* allowed by krn_cuda__attn_probe (attn_wg) */
    dim3 grid(krn_cuda__blocks(n, 128), n_head);
    k_attn_wg<HD, Q8><<<grid, 256, smem, dev->stream>>>(q, kc, vc, out, n, pos0, n_head, group,
                                                        n_ctx, sl2);
    return 0;
}

/* hd 64 or 128. */
template <bool Q8>
static int launch_wg(struct krn_cuda_dev *dev, int hd, const __half *q, const __half *kc,
                     const __half *vc, __half *out, int n, int pos0, int n_head, int group,
                     int n_ctx, float sl2)
{
    return hd == 64 ? launch_wg_hd<64, Q8>(dev, q, kc, vc, out, n, pos0, n_head, group, n_ctx, sl2)
                    : launch_wg_hd<128, Q8>(dev, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                            sl2);
}

int krn_cuda__attn_probe(struct krn_cuda_dev *dev)
{
    int *d = NULL, h = 0;
    KRN_CHECK(dev, cudaMalloc(&d, sizeof(int)));
    k_attn_wg_probe<<<1, 1, 0, dev->stream>>>(d);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, dev->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(dev->stream);
    cudaFree(d);
    KRN_CHECK(dev, e);
    /* a Hopper part with less shared memory per block than the kernel takes keeps variant 2 */
    if (h == 1 && (wg_allow_smem<128, false>() != cudaSuccess ||
                   wg_allow_smem<128, true>() != cudaSuccess ||
                   wg_allow_smem<64, false>() != cudaSuccess ||
                   wg_allow_smem<64, true>() != cudaSuccess)) {
        (void)cudaGetLastError(); /* not sticky */
        h = 0;
    }
    dev->attn_wg = h == 1;
    return 0;
}

extern "C" int krn_cuda_attn_block(struct krn_cuda_dev *dev, int bq)
{
    const int old = dev->attn_bq;
    if (bq == 0 || bq == 64 || bq == 128)
        dev->attn_bq = bq;
    return old;
}

/* 3 where the Hopper kernel runs and the head size is 128 (hd 0: any), else 2. H200, causal
 * chunk of 2048: 8B heads (hd 128) 153 us against 183; 135M heads (hd 64) 52 us against
 * 42-43, so they stay on 2. */
static int default_variant(const struct krn_cuda_dev *dev, int hd)
{
    return dev->attn_wg && (hd == 128 || hd == 0) ? 3 : KRN_ATT_DEFAULT_VARIANT;
}

extern "C" int krn_cuda_attn_variant(struct krn_cuda_dev *dev, int variant)
{
    const int old = dev->attn_variant ? dev->attn_variant : default_variant(dev, 0);
    if (variant >= 1 && variant <= 3)
        dev->attn_variant = variant;
    return old;
}

static int attn(struct krn_cuda_dev *dev, const uint16_t *d_q, const uint16_t *d_kc,
                const uint16_t *d_vc, int n, int pos0, int n_head, int n_kv_head, int hd,
                int n_ctx, float scale, uint16_t *d_out, bool q8)
{
    if (n < 0 || pos0 < 0 || pos0 + n > n_ctx || n_head <= 0 || n_kv_head <= 0 ||
        n_head % n_kv_head || hd <= 0 || hd % 32 || hd > 256 || n_head > 65535)
        return S3_EINVAL;
    if (n == 0)
        return 0;
    const int group = n_head / n_kv_head;
    const __half *q = (const __half *)d_q, *kc = (const __half *)d_kc,
                 *vc = (const __half *)d_vc;
    __half *out = (__half *)d_out;
    const float sl2 = scale * 1.4426950408889634f;
    int variant = dev->attn_variant ? dev->attn_variant : default_variant(dev, hd);
    if (variant == 3 && !dev->attn_wg)
        variant = 2;
    if ((hd == 64 || hd == 128) && n >= KRN_ATT_MMA_MIN_N) {
        dim3 grid(krn_cuda__blocks(n, KRN_ATT_BQ), n_head);
        int rc = 0;
        if (variant == 3) {
            rc = q8 ? launch_wg<true>(dev, hd, q, kc, vc, out, n, pos0, n_head, group, n_ctx, sl2)
                    : launch_wg<false>(dev, hd, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                       sl2);
            q8 = false; /* rounded in the kernel's epilogue */
        } else if (variant == 2) {
            rc = q8 ? launch_mma2<true>(dev, hd, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                        sl2)
                    : launch_mma2<false>(dev, hd, q, kc, vc, out, n, pos0, n_head, group, n_ctx,
                                         sl2);
            q8 = false; /* rounded in the kernel's epilogue */
        } else if (hd == 64)
            k_attn_mma<64><<<grid, KRN_ATT_WARPS * 32, 0, dev->stream>>>(q, kc, vc, out, n, pos0,
                                                                         n_head, group, n_ctx, sl2);
        else
            k_attn_mma<128><<<grid, KRN_ATT_WARPS * 32, 0, dev->stream>>>(
                q, kc, vc, out, n, pos0, n_head, group, n_ctx, sl2);
        if (rc < 0)
            return rc;
    } else if (n <= KRN_ATT_SPLIT_MAX_N && variant >= 2) {
        /* keys per split: a multiple of 128, at least KRN_ATT_SPLIT_MIN_KEYS, at most
           KRN_ATT_MAX_SPLIT splits */
        const long long nk = (long long)pos0 + n;
        long long per = KRN_ATT_SPLIT_MIN_KEYS;
        while ((nk + per - 1) / per > KRN_ATT_MAX_SPLIT)
            per *= 2;
        const int n_split = (int)((nk + per - 1) / per);
        float *part;
        /* sized for the most splits, so that a growing decode context does not reallocate */
        int rc = split_scratch(
            dev, (size_t)n * n_head * KRN_ATT_MAX_SPLIT * (hd + 2) * sizeof(float), &part);
        if (rc < 0)
            return rc;
        dim3 grid(n_split, n_head, n);
        switch (hd / 32) {
        case 1: launch_split<1>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 2: launch_split<2>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 3: launch_split<3>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 4: launch_split<4>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 5: launch_split<5>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 6: launch_split<6>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        case 7: launch_split<7>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        default: launch_split<8>(dev, grid, q, kc, vc, part, pos0, n_head, group, n_ctx, (int)per, sl2); break;
        }
        KRN_CHECK_LAUNCH(dev);
        k_attn_combine<<<dim3(n_head, n), 128, 0, dev->stream>>>(part, n_split, n_head, hd, out);
    } else {
        if (n > 2147483647 / 2)
            return S3_EINVAL;
        dim3 grid(n, n_head);
        k_attn_plain<<<grid, KRN_ATT_PLAIN, 0, dev->stream>>>(q, kc, vc, out, pos0, n_head, group,
                                                              hd, n_ctx, scale);
    }
    KRN_CHECK_LAUNCH(dev);
    return q8 ? krn_cuda_q8_round(dev, d_out, n, n_head * hd) : 0;
}

extern "C" int krn_cuda_attn(struct krn_cuda_dev *dev, const uint16_t *d_q, const uint16_t *d_kc,
                             const uint16_t *d_vc, int n, int pos0, int n_head, int n_kv_head,
                             int hd, int n_ctx, float scale, uint16_t *d_out)
{
    return attn(dev, d_q, d_kc, d_vc, n, pos0, n_head, n_kv_head, hd, n_ctx, scale, d_out,
                false);
}

extern "C" int krn_cuda_attn_q8(struct krn_cuda_dev *dev, const uint16_t *d_q,
                                const uint16_t *d_kc, const uint16_t *d_vc, int n, int pos0,
                                int n_head, int n_kv_head, int hd, int n_ctx, float scale,
                                uint16_t *d_out)
{
    return attn(dev, d_q, d_kc, d_vc, n, pos0, n_head, n_kv_head, hd, n_ctx, scale, d_out,
                true);
}
