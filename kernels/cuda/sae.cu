/* kernels/cuda/sae.cu - Top-k SAE encoding: centre, one fp32 GEMM (cuBLAS) for the
 * pre-activations of every latent, then a selection kernel: for n_dict <= 2048 one warp per
 * row with the row in registers (each lane lists its 4 best; k rounds of a warp-wide argmax
 * over the lists' heads), else k rounds of a block-wide
 * (activation desc, id asc) maximum below the previous pick, one block per row. */
#include <math.h>

#include "cuda_int.cuh"
#include "sae.cuh"

__global__ void k_sae_center(const float *x, int ldx, int d, const float *bdec, float *xc)
{
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        xc[(size_t)t * d + i] = x[(size_t)t * ldx + i] - bdec[i];
}

/* (v, id) ranks before (ov, oid): larger activation, then lower id */
__device__ __forceinline__ bool ranks_before(float v, int id, float ov, int oid)
{
    return v > ov || (v == ov && id < oid);
}

__global__ void __launch_bounds__(KRN_SAE_THREADS)
    k_sae_topk(const float *pre, const float *benc, int n_dict, int k, uint16_t *ids, float *acts)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *row = pre + (size_t)blockIdx.x * n_dict;
    float pv = INFINITY;
    int pid = -1;
    for (int r = 0; r < k; r++) {
        float bv = -INFINITY;
        int bid = 0x7fffffff;
        for (int j = threadIdx.x; j < n_dict; j += blockDim.x) {
            float a = row[j] + benc[j];
            a = a > 0.0f ? a : 0.0f;
            if (ranks_before(pv, pid, a, j) && ranks_before(a, j, bv, bid))
                bv = a, bid = j;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bid, o);
            if (ranks_before(ov, oi, bv, bid))
                bv = ov, bid = oi;
        }
        const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
        __syncthreads();
        if (lane == 0)
            sv[wid] = bv, si[wid] = bid;
        __syncthreads();
        bv = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
        bid = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bid, o);
            if (ranks_before(ov, oi, bv, bid))
                bv = ov, bid = oi;
        }
        pv = bv;
        pid = bid;
        if (threadIdx.x == 0) {
            ids[(size_t)blockIdx.x * k + r] = (uint16_t)(bid < n_dict ? bid : 0);
            acts[(size_t)blockIdx.x * k + r] = bid < n_dict ? bv : 0.0f;
        }
    }
}

/* A lane's next candidates: the NC best of its NPER values (activation desc, id asc; ids of
 * a lane grow with u) among those ranking after (lv, lu), best first; (-5, 0) pads. */
template <int NPER, int NC>
__device__ __forceinline__ void lane_best(const float (&v)[NPER], float lv, int lu,
                                          float (&cv)[NC], int (&cu)[NC])
{
#pragma unroll
    for (int i = 0; i < NC; i++)
        cv[i] = -5.0f, cu[i] = 0;
#pragma unroll
    for (int u = 0; u < NPER; u++) {
        float a = v[u];
        int au = u;
        if (!(a < lv || (a == lv && u > lu)))
            continue; /* already picked */
#pragma unroll
        for (int i = 0; i < NC; i++) /* insertion (a carried entry may tie on value) */
            if (ranks_before(a, au, cv[i], cu[i])) {
                const float tv = cv[i];
                const int tu = cu[i];
                cv[i] = a, cu[i] = au;
                a = tv, au = tu;
            }
    }
}

/* One warp per row for n_dict <= 32 * NPER: lane l holds latents l, l+32, ... in registers
 * (b_enc added, ReLU) and lists its NC best; each of the k rounds is a warp-wide argmax over
 * the lanes' heads, then the winning lane moves to its next candidate, listing the NC after
 * its last one when it has used them all. Same picks and order as k_sae_topk. */
template <int NPER>
__global__ void __launch_bounds__(KRN_SAE_WARP_ROWS * 32)
    k_sae_topk_warp(const float *pre, const float *benc, int n, int n_dict, int k,
                    uint16_t *ids, float *acts)
{
    constexpr int NC = 4;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * KRN_SAE_WARP_ROWS + (threadIdx.x >> 5);
    if (row >= n)
        return; /* whole warps leave together */
    const float *pr = pre + (size_t)row * n_dict;
    float v[NPER];
#pragma unroll
    for (int u = 0; u < NPER; u++) {
        const int j = lane + 32 * u;
        float a = -2.0f; /* out of range: below every activation (>= 0) */
        if (j < n_dict) {
            a = pr[j] + benc[j];
            a = a > 0.0f ? a : 0.0f;
        }
        v[u] = a;
    }
    float cv[NC];
    int cu[NC], ci = 0;
    lane_best<NPER, NC>(v, INFINITY, -1, cv, cu);
    for (int r = 0; r < k; r++) {
        float wv = cv[0];
        int wid = lane + 32 * cu[0];
#pragma unroll
        for (int i = 1; i < NC; i++) /* the head of the list (ci is warp-divergent) */
            if (i == ci)
                wv = cv[i], wid = lane + 32 * cu[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, wv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, wid, o);
            if (ranks_before(ov, oi, wv, wid))
                wv = ov, wid = oi;
        }
        if (lane == 0) {
            ids[(size_t)row * k + r] = (uint16_t)(wid < n_dict ? wid : 0);
            acts[(size_t)row * k + r] = wid < n_dict ? wv : 0.0f;
        }
        if ((wid & 31) == lane && ++ci == NC) { /* the winner used its list: the next NC */
            lane_best<NPER, NC>(v, wv, wid >> 5, cv, cu);
            ci = 0;
        }
    }
}

extern "C" int krn_cuda_sae_variant(struct krn_cuda_dev *dev, int variant)
{
    const int old = dev->sae_variant ? dev->sae_variant : 2;
    if (variant >= 1 && variant <= 2)
        dev->sae_variant = variant;
    return old;
}

extern "C" int krn_cuda_sae_encode(struct krn_cuda_dev *dev, const float *d_x, int ldx, int n,
                                   int d, const float *d_wenc, const float *d_benc,
                                   const float *d_bdec, int n_dict, int k, float *d_scratch,
                                   uint16_t *d_ids, float *d_acts)
{
    if (n < 0 || d <= 0 || ldx < d || n_dict <= 0 || n_dict > 65536 || k <= 0 ||
        k > KRN_SAE_MAX_K || k > n_dict)
        return S3_EINVAL;
    if (n == 0)
        return 0;
    float *xc = d_scratch, *pre = d_scratch + (size_t)n * d;
    k_sae_center<<<n, 128, 0, dev->stream>>>(d_x, ldx, d, d_bdec, xc);
    KRN_CHECK_LAUNCH(dev);
    /* pre (n, n_dict) row-major = xc (n, d) W_enc^T, W_enc (n_dict, d) row-major */
    const float one = 1.0f, zero = 0.0f;
    KRN_CHECK_BLAS(dev, cublasSgemm(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_dict, n, d, &one,
                                    d_wenc, d, xc, d, &zero, pre, n_dict));
    const int variant = dev->sae_variant ? dev->sae_variant : 2;
    const unsigned wblocks = krn_cuda__blocks(n, KRN_SAE_WARP_ROWS);
    if (variant == 2 && n_dict <= 256)
        k_sae_topk_warp<8><<<wblocks, KRN_SAE_WARP_ROWS * 32, 0, dev->stream>>>(
            pre, d_benc, n, n_dict, k, d_ids, d_acts);
    else if (variant == 2 && n_dict <= 1024)
        k_sae_topk_warp<32><<<wblocks, KRN_SAE_WARP_ROWS * 32, 0, dev->stream>>>(
            pre, d_benc, n, n_dict, k, d_ids, d_acts);
    else if (variant == 2 && n_dict <= 2048)
        k_sae_topk_warp<64><<<wblocks, KRN_SAE_WARP_ROWS * 32, 0, dev->stream>>>(
            pre, d_benc, n, n_dict, k, d_ids, d_acts);
    else
        k_sae_topk<<<n, KRN_SAE_THREADS, 0, dev->stream>>>(pre, d_benc, n_dict, k, d_ids,
                                                           d_acts);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
