/* kernels/cuda/sae.cu - Top-k SAE encoding: centre, the pre-activations of every latent on the
 * tensor cores, then a selection kernel: for n_dict <= 2048 one warp per row with the row in
 * registers (each lane lists its 4 best; k rounds of a warp-wide argmax over the lists' heads),
 * else k rounds of a block-wide (activation desc, id asc) maximum below the previous pick, one
 * block per row.
 *
 * The pre-activations keep fp32 accuracy on fp16 tensor cores: each operand is split into an
 * fp16 head and an fp16 remainder (x = xh + xl, W s = Wh + Wl with s a power of two that puts
 * W's largest entry near 2^14, so that Wl stays clear of fp16's subnormals), and
 * W x = (xh Wh + xh Wl + xl Wh) / s with fp32 accumulation; the dropped xl Wl is 2^-22 of the
 * product. Two GEMMs: [xh | xh] against [Wh | Wl], then xl against Wh accumulated. */
#include <math.h>

#include "cuda_int.cuh"
#include "sae.cuh"

/* x3 row t: [xh | xh | xl] of x_t - b_dec (fp16, 3d) */
__global__ void k_sae_center(const float *x, int ldx, int d, const float *bdec, __half *x3)
{
    const int t = blockIdx.x;
    __half *r = x3 + (size_t)t * 3 * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = x[(size_t)t * ldx + i] - bdec[i];
        const __half h = __float2half_rn(v);
        r[i] = h;
        r[d + i] = h;
        r[2 * d + i] = __float2half_rn(v - __half2float(h));
    }
}

/* Offset of x3 in the scratch, bytes (pre first, 256-byte aligned after it). */
static size_t x3_offset(int n, int n_dict)
{
    return ((size_t)n * (size_t)n_dict * sizeof(float) + 255) & ~(size_t)255;
}

extern "C" size_t krn_cuda_sae_scratch_bytes(int n, int d, int n_dict)
{
    return x3_offset(n, n_dict) + (size_t)n * 3 * (size_t)d * sizeof(__half);
}

extern "C" float krn_cuda_sae_split(const float *w_enc, int n_dict, int d, uint16_t *hilo)
{
    float mx = 0.0f;
    for (size_t i = 0; i < (size_t)n_dict * d; i++)
        mx = fabsf(w_enc[i]) > mx ? fabsf(w_enc[i]) : mx;
    int e = 0;
    if (mx > 0.0f && isfinite(mx))
        frexpf(mx, &e); /* mx = m 2^e, m in [0.5, 1) */
    const float s = mx > 0.0f && isfinite(mx) ? ldexpf(1.0f, 14 - e) : 1.0f;
    for (int j = 0; j < n_dict; j++)
        for (int i = 0; i < d; i++) {
            const float v = w_enc[(size_t)j * d + i] * s;
            const __half h = __float2half_rn(v);
            const __half l = __float2half_rn(v - __half2float(h));
            hilo[(size_t)j * 2 * d + i] = __half_as_ushort(h);
            hilo[(size_t)j * 2 * d + d + i] = __half_as_ushort(l);
        }
    return 1.0f / s;
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
                                   int d, const uint16_t *d_whilo, float w_inv_scale,
                                   const float *d_benc, const float *d_bdec, int n_dict, int k,
                                   void *d_scratch, uint16_t *d_ids, float *d_acts)
{
    if (n < 0 || d <= 0 || ldx < d || n_dict <= 0 || n_dict > 65536 || k <= 0 ||
        k > KRN_SAE_MAX_K || k > n_dict || !(w_inv_scale > 0.0f))
        return S3_EINVAL;
    if (n == 0)
        return 0;
    float *pre = (float *)d_scratch;
    __half *x3 = (__half *)((char *)d_scratch + x3_offset(n, n_dict));
    k_sae_center<<<n, 128, 0, dev->stream>>>(d_x, ldx, d, d_bdec, x3);
    KRN_CHECK_LAUNCH(dev);
    /* pre (n, n_dict) row-major = x3 (n, 3d) against [Wh | Wl] (n_dict, 2d) row-major:
       column-major, pre^T = W' x3^T with W' read transposed */
    const float zero = 0.0f, one = 1.0f;
    KRN_CHECK_BLAS(dev, cublasGemmEx(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_dict, n, 2 * d,
                                     &w_inv_scale, d_whilo, CUDA_R_16F, 2 * d, x3, CUDA_R_16F,
                                     3 * d, &zero, pre, CUDA_R_32F, n_dict, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
    KRN_CHECK_BLAS(dev, cublasGemmEx(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_dict, n, d,
                                     &w_inv_scale, d_whilo, CUDA_R_16F, 2 * d, x3 + 2 * d,
                                     CUDA_R_16F, 3 * d, &one, pre, CUDA_R_32F, n_dict,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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
