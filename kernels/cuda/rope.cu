/* kernels/cuda/rope.cu - rotate q and k of n tokens, write q as fp16 and k, v into the cache.
 * One block per token; threads stride over q, k and v of that token. */
#include <stdint.h>

#include "cuda_int.cuh"
#include "rope.cuh"

__global__ void k_rope_qkv(const float *qkv, int ldqkv, int pos0, int n_head, int n_kv_head,
                           int hd, int n_rot, const float *cs_tab, int neox, __half *q_out,
                           __half *kc, __half *vc, int n_ctx)
{
    const int t = blockIdx.x, pos = pos0 + t;
    const float *row = qkv + (size_t)t * ldqkv;
    const float *cs = cs_tab + (size_t)pos * n_rot;
    const int dq = n_head * hd, dkv = n_kv_head * hd;
    for (int e = threadIdx.x; e < dq + 2 * dkv; e += blockDim.x) {
        if (e < dq) {
            const int h = e / hd, i = e % hd;
            const float *x = row + (size_t)h * hd;
            const float r = i < n_rot ? krn_rope_elem(x, i, n_rot, cs, neox) : x[i];
            q_out[(size_t)t * dq + e] = __float2half_rn(r);
        } else if (e < dq + dkv) {
            const int h = (e - dq) / hd, i = (e - dq) % hd;
            const float *x = row + dq + (size_t)h * hd;
            const float r = i < n_rot ? krn_rope_elem(x, i, n_rot, cs, neox) : x[i];
            kc[((size_t)h * n_ctx + pos) * hd + i] = __float2half_rn(r);
        } else {
            const int h = (e - dq - dkv) / hd, i = (e - dq - dkv) % hd;
            vc[((size_t)h * n_ctx + pos) * hd + i] = __float2half_rn(row[e]);
        }
    }
}

/* One thread per pair of a head's dims: a rotation pair (adjacent dims for NORM, i and
 * i + n_rot/2 for NEOX) or two pass-through dims; q, k and v of a token in one block. Same
 * rounding as krn_rope_elem. */
__global__ void k_rope_qkv_pairs(const float *qkv, int ldqkv, int pos0, int n_head,
                                 int n_kv_head, int hd, int n_rot, const float *cs_tab, int neox,
                                 __half *q_out, __half *kc, __half *vc, int n_ctx)
{
    const int t = blockIdx.x, pos = pos0 + t;
    const float *row = qkv + (size_t)t * ldqkv;
    const float *cs = cs_tab + (size_t)pos * n_rot;
    const int hp = hd / 2, half = n_rot / 2;
    const int nq = n_head * hp, nk = n_kv_head * hp;
    for (int e = threadIdx.x; e < nq + 2 * nk; e += blockDim.x) {
        if (e < nq + nk) {
            const int isk = e >= nq, u = isk ? e - nq : e, h = u / hp, p = u % hp;
            const float *x = row + (isk ? n_head * hd : 0) + (size_t)h * hd;
            int i0, i1;
            float r0, r1;
            if (p < half) {
                i0 = neox ? p : 2 * p;
                i1 = neox ? p + half : 2 * p + 1;
                const float c = cs[2 * p], s = cs[2 * p + 1], x0 = x[i0], x1 = x[i1];
                r0 = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
                r1 = __fmaf_rn(x0, s, __fmul_rn(x1, c));
            } else {
                i0 = n_rot + 2 * (p - half);
                i1 = i0 + 1;
                r0 = x[i0];
                r1 = x[i1];
            }
            __half *dst = isk ? kc + ((size_t)h * n_ctx + pos) * hd
                              : q_out + (size_t)t * n_head * hd + (size_t)h * hd;
            if (i1 == i0 + 1) {
                *(__half2 *)&dst[i0] = __floats2half2_rn(r0, r1);
            } else {
                dst[i0] = __float2half_rn(r0);
                dst[i1] = __float2half_rn(r1);
            }
        } else {
            const int u = e - nq - nk, h = u / hp, p = u % hp;
            const float2 v = *(const float2 *)(row + (n_head + n_kv_head) * hd + (size_t)h * hd +
                                               2 * p);
            *(__half2 *)&vc[((size_t)h * n_ctx + pos) * hd + 2 * p] = __floats2half2_rn(v.x, v.y);
        }
    }
}

extern "C" int krn_cuda_rope_qkv(struct krn_cuda_dev *dev, const float *d_qkv, int ldqkv, int n,
                                 int pos0, int n_head, int n_kv_head, int hd, int n_rot,
                                 const float *d_cs, int mode, uint16_t *d_q_out, uint16_t *d_kc,
                                 uint16_t *d_vc, int n_ctx)
{
    if (n < 0 || pos0 < 0 || pos0 + n > n_ctx || n_rot < 0 || n_rot > hd || n_rot % 2 ||
        ldqkv < (n_head + 2 * n_kv_head) * hd)
        return S3_EINVAL;
    if (n == 0)
        return 0;
    if (hd % 2 == 0 && ldqkv % 2 == 0 && (uintptr_t)d_qkv % 8 == 0) {
        k_rope_qkv_pairs<<<n, 256, 0, dev->stream>>>(
            d_qkv, ldqkv, pos0, n_head, n_kv_head, hd, n_rot, d_cs, mode == KRN_CUDA_ROPE_NEOX,
            (__half *)d_q_out, (__half *)d_kc, (__half *)d_vc, n_ctx);
        KRN_CHECK_LAUNCH(dev);
        return 0;
    }
    k_rope_qkv<<<n, 256, 0, dev->stream>>>(d_qkv, ldqkv, pos0, n_head, n_kv_head, hd, n_rot, d_cs,
                                           mode == KRN_CUDA_ROPE_NEOX, (__half *)d_q_out,
                                           (__half *)d_kc, (__half *)d_vc, n_ctx);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
