/* kernels/cuda/sample.cu - one draw from a row of logits on the device, made as engine/sample.c
 * makes it, so that a decode step returns a token id instead of the vocabulary's logits.
 *
 * One block of KRN_SAMPLE_THREADS. The maximum (lowest id on ties, NaN never) is the greedy
 * pick and the pick where no logit is finite. Otherwise the candidates are the logits within
 * 40 of the maximum; top-k and top-p count and weigh them per bin of 1/16 nat (a bin's mass in
 * fixed point, so that the sums do not depend on the order of the atomics) and sort only the
 * bin where a cut falls (bitonic, in shared memory, up to KRN_SAMPLE_SORT_CAP candidates; a
 * larger bin is left to the host). The draw walks the kept tokens in id order by blocks of
 * 256 ids, with the host's exp polynomial, lane order and double sums to the bit, so that the
 * same logits and the same uniform draw give the same token on both. */
#include "argmax.cuh"
#include "cuda_int.cuh"

#define SPAN    40.0f
#define BIN_RES 16.0f
#define N_BIN   641 /* 40 * 16 + 1 */
#define BLK     256
#define FIX     17592186044416.0 /* 2^44: a bin's mass in fixed point (sums < 2^61) */

/* engine/sample.c's exp_neg, operation for operation (no contraction into FMAs) */
__device__ __forceinline__ float exp_neg(float x)
{
    x = x > -87.0f ? x : -87.0f;
    x = x < 0.0f ? x : 0.0f;
    const float k = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f), 12582912.0f);
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(k, 0.693145752f)), __fmul_rn(k, 1.42860677e-6f));
    float p = 1.0f / 5040.0f;
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 720.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 120.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 24.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 6.0f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    return __fmul_rn(p, __int_as_float(((int)k + 127) << 23));
}

__device__ __forceinline__ int bin_of(float l, float mx)
{
    const float x = __fmul_rn(__fsub_rn(mx, l), BIN_RES);
    return x < (float)(N_BIN - 1) ? (int)x : N_BIN - 1;
}

/* A candidate's e^(l - mx) in fixed point: its share of a bin's mass, the same wherever summed */
__device__ __forceinline__ unsigned long long mass_of(float l, float mx)
{
    return (unsigned long long)((double)exp_neg(__fsub_rn(l, mx)) * FIX);
}

/* (l, id) comes before (ol, oid): higher logit, then lower id */
__device__ __forceinline__ bool before(float l, int id, float ol, int oid)
{
    return l > ol || (l == ol && id < oid);
}

struct sample_smem {
    int count[N_BIN];
    unsigned long long mass[N_BIN];
    union {
        struct {
            float l[KRN_SAMPLE_SORT_CAP];
            int id[KRN_SAMPLE_SORT_CAP];
        } bin;                       /* one bin's candidates, sorted */
        double bsum[KRN_CUDA_SAMPLE_MAX_N / BLK]; /* the draw's block sums */
    } u;
    float rv[32];
    int ri[32];
    int m;                           /* candidates gathered into u.bin */
};

/* The candidates of bin b, sorted, into sm->u.bin; their number, or -1 (more than the cap). */
__device__ int sort_bin(struct sample_smem *sm, const float *x, int n, float mx, int b)
{
    const float lo = mx - SPAN;
    if (threadIdx.x == 0)
        sm->m = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float l = x[i];
        if (l >= lo && bin_of(l, mx) == b) {
            const int j = atomicAdd(&sm->m, 1);
            if (j < KRN_SAMPLE_SORT_CAP)
                sm->u.bin.l[j] = l, sm->u.bin.id[j] = i;
        }
    }
    __syncthreads();
    const int m = sm->m;
    if (m > KRN_SAMPLE_SORT_CAP)
        return -1;
    int p2 = 1;
    while (p2 < m)
        p2 <<= 1;
    for (int j = m + threadIdx.x; j < p2; j += blockDim.x) /* sentinels sort last */
        sm->u.bin.l[j] = -INFINITY, sm->u.bin.id[j] = INT_MAX;
    __syncthreads();
    for (int k = 2; k <= p2; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < p2; i += blockDim.x) {
                const int o = i ^ j;
                if (o > i) {
                    const float li = sm->u.bin.l[i], lo_ = sm->u.bin.l[o];
                    const int ii = sm->u.bin.id[i], io = sm->u.bin.id[o];
                    const bool swap = (i & k) == 0 ? before(lo_, io, li, ii)
                                                   : before(li, ii, lo_, io);
                    if (swap) {
                        sm->u.bin.l[i] = lo_, sm->u.bin.id[i] = io;
                        sm->u.bin.l[o] = li, sm->u.bin.id[o] = ii;
                    }
                }
            }
            __syncthreads();
        }
    return m;
}

/* The draw's weight of token i (0 where it is not kept). */
__device__ __forceinline__ float weight(const float *x, int n, int i, float mx, float t, float lb,
                                        int ib)
{
    if (i >= n)
        return 0.0f;
    const float l = x[i];
    const bool keep = l >= mx - SPAN && (l > lb || (l == lb && i <= ib));
    return keep ? exp_neg(__fdiv_rn(__fsub_rn(l, mx), t)) : 0.0f;
}

/* out[0]: the token; out[1]: 1 where the uniform draw u was used, 0 where not (greedy, or no
 * finite maximum), 2 where the host must draw (a cut fell in a bin over the cap). */
__global__ void __launch_bounds__(KRN_SAMPLE_THREADS)
    k_sample(const float *x, int n, float t, float top_p, int top_k, double u, int32_t *out)
{
    __shared__ struct sample_smem sm;
    __shared__ float s_lb;
    __shared__ int s_ib, s_bin, s_m;
    __shared__ unsigned long long s_cum;
    __shared__ double s_target;
    const int tid = threadIdx.x;
    /* the maximum, lowest id first */
    float mx;
    int top;
    krn_block_argmax(x, n, sm.rv, sm.ri, &mx, &top);
    if (t <= 0.0f || top_k == 1 || !isfinite(mx)) {
        if (tid == 0)
            out[0] = top, out[1] = 0;
        return;
    }
    const float lo = mx - SPAN;
    const bool want_p = top_p < 1.0f;
    if (tid == 0)
        s_lb = lo, s_ib = INT_MAX;
    if (top_k > 0 || want_p) {
        for (int b = tid; b < N_BIN; b += blockDim.x)
            sm.count[b] = 0, sm.mass[b] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += blockDim.x) {
            const float l = x[i];
            if (l >= lo) {
                const int b = bin_of(l, mx);
                atomicAdd(&sm.count[b], 1);
                if (want_p)
                    atomicAdd(&sm.mass[b], mass_of(l, mx));
            }
        }
        __syncthreads();
        /* top-k: the bin of the k-th candidate */
        if (tid == 0) {
            int nc = 0;
            for (int b = 0; b < N_BIN; b++)
                nc += sm.count[b];
            s_bin = -1, s_m = 0;
            if (top_k > 0 && top_k < nc) {
                int acc = 0, b = 0;
                for (; acc + sm.count[b] < top_k; b++)
                    acc += sm.count[b];
                s_bin = b, s_m = top_k - acc;
            }
        }
        __syncthreads();
        const int kbin = s_bin, km = s_m;
        int last_bin = N_BIN - 1, sorted = -1, m = 0;
        if (kbin >= 0) {
            if (sort_bin(&sm, x, n, mx, kbin) < 0) {
                if (tid == 0)
                    out[0] = top, out[1] = 2;
                return;
            }
            last_bin = sorted = kbin, m = km;
            if (tid == 0) {
                s_lb = sm.u.bin.l[m - 1], s_ib = sm.u.bin.id[m - 1];
                if (want_p) {
                    unsigned long long mk = 0;
                    for (int j = 0; j < m; j++)
                        mk += mass_of(sm.u.bin.l[j], mx);
                    sm.mass[kbin] = mk;
                }
            }
            __syncthreads();
        }
        if (want_p) {
            /* top-p: the bin where the mass in order reaches top_p of the kept mass */
            if (tid == 0) {
                unsigned long long z = 0, cum = 0;
                for (int b = 0; b <= last_bin; b++)
                    z += sm.mass[b];
                const double target = (double)top_p * (double)z;
                int bp = 0;
                for (; bp < last_bin && (double)(cum + sm.mass[bp]) < target; bp++)
                    cum += sm.mass[bp];
                s_bin = bp, s_cum = cum, s_target = target;
            }
            __syncthreads();
            const int bp = s_bin;
            if (bp != sorted && (m = sort_bin(&sm, x, n, mx, bp)) < 0) {
                if (tid == 0)
                    out[0] = top, out[1] = 2;
                return;
            }
            if (tid == 0 && m > 0) {
                unsigned long long cum = s_cum;
                int j = 0;
                for (; j < m - 1; j++) {
                    cum += mass_of(sm.u.bin.l[j], mx);
                    if ((double)cum >= s_target)
                        break;
                }
                s_lb = sm.u.bin.l[j], s_ib = sm.u.bin.id[j];
            }
            __syncthreads();
        }
    }
    __syncthreads();
    const float lb = s_lb;
    const int ib = s_ib;
    /* the draw: block sums as the host forms them (8 lanes, paired, then double) */
    const int n_blk = (n + BLK - 1) / BLK;
    for (int b = tid; b < n_blk; b += blockDim.x) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = b * BLK; i < (b + 1) * BLK; i += 8)
            for (int j = 0; j < 8; j++)
                acc[j] = __fadd_rn(acc[j], weight(x, n, i + j, mx, t, lb, ib));
        sm.u.bsum[b] = (double)__fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[1]),
                                                   __fadd_rn(acc[2], acc[3])),
                                         __fadd_rn(__fadd_rn(acc[4], acc[5]),
                                                   __fadd_rn(acc[6], acc[7])));
    }
    __syncthreads();
    if (tid == 0) {
        double sum = 0.0;
        for (int b = 0; b < n_blk; b++)
            sum += sm.u.bsum[b];
        const double uu = u * sum;
        double cum = 0.0;
        int b = 0;
        while (b < n_blk - 1 && (cum + sm.u.bsum[b] <= uu || sm.u.bsum[b] == 0.0))
            cum += sm.u.bsum[b++];
        int pick = top;
        for (int i = b * BLK; i < (b + 1) * BLK; i++) {
            const float w = weight(x, n, i, mx, t, lb, ib);
            if (w > 0.0f) {
                cum += (double)w;
                pick = i;
                if (uu < cum)
                    break;
            }
        }
        out[0] = pick, out[1] = 1;
    }
}

extern "C" int krn_cuda_sample(struct krn_cuda_dev *dev, const float *d_x, int n,
                               const struct krn_cuda_sample_params *p, double u, int32_t *d_out)
{
    if (n <= 0 || n > KRN_CUDA_SAMPLE_MAX_N || !p)
        return S3_EINVAL;
    k_sample<<<1, KRN_SAMPLE_THREADS, 0, dev->stream>>>(d_x, n, p->temperature, p->top_p,
                                                        p->top_k, u, d_out);
    KRN_CHECK_LAUNCH(dev);
    return 0;
}
