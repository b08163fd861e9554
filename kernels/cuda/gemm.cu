/* kernels/cuda/gemm.cu - the dense projections (fp16 operands, fp32 compute): cuBLAS's default
 * algorithm, or for a shape tuned by krn_cuda_gemm_tune the fastest cuBLASLt algorithm found by
 * timing the heuristic's candidates on this device. */
#include <stdlib.h>

#include "cuda_int.cuh"
#include "gemm.cuh"

#define TUNE_CANDIDATES 16

struct krn_gemm_plan {
    int m, n, k, ldx, ldy, y_type, acc; /* the shape; acc: beta != 0 */
    int use_lt;                         /* 0: cuBLAS's default was fastest */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lw, lx, ly;
    cublasLtMatmulAlgo_t algo;
};

/* Destroy p's cuBLASLt descriptors; its shape stays (a plan of cuBLAS's default). */
static void plan_release(struct krn_gemm_plan *p)
{
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    if (p->lw)
        cublasLtMatrixLayoutDestroy(p->lw);
    if (p->lx)
        cublasLtMatrixLayoutDestroy(p->lx);
    if (p->ly)
        cublasLtMatrixLayoutDestroy(p->ly);
    p->op = NULL;
    p->lw = p->lx = p->ly = NULL;
    p->use_lt = 0;
}

void krn_cuda__gemm_free(struct krn_cuda_dev *dev)
{
    for (int i = 0; i < dev->n_plans; i++)
        plan_release(&dev->plans[i]);
    free(dev->plans);
    dev->plans = NULL;
    dev->n_plans = 0;
    if (dev->lt)
        cublasLtDestroy(dev->lt);
    dev->lt = NULL;
    if (dev->gemm_ws)
        cudaFree(dev->gemm_ws);
    dev->gemm_ws = NULL;
}

static const struct krn_gemm_plan *plan_find(const struct krn_cuda_dev *dev, int m, int n,
                                             int k, int ldx, int ldy, int y_type, int acc)
{
    for (int i = 0; i < dev->n_plans; i++) {
        const struct krn_gemm_plan *p = &dev->plans[i];
        if (p->m == m && p->n == n && p->k == k && p->ldx == ldx && p->ldy == ldy &&
            p->y_type == y_type && p->acc == acc)
            return p;
    }
    return NULL;
}

/* A new slot at the end of dev's plans for this shape (not counted in n_plans until the
 * caller keeps it), or NULL when out of memory. */
static struct krn_gemm_plan *plan_add(struct krn_cuda_dev *dev, int m, int n, int k, int ldx,
                                      int ldy, int y_type, int acc)
{
    struct krn_gemm_plan *np = (struct krn_gemm_plan *)realloc(
        dev->plans, sizeof(*np) * (size_t)(dev->n_plans + 1));
    if (!np)
        return NULL;
    dev->plans = np;
    struct krn_gemm_plan *p = &np[dev->n_plans];
    *p = (struct krn_gemm_plan){.m = m, .n = n, .k = k, .ldx = ldx, .ldy = ldy,
                                .y_type = y_type, .acc = acc};
    return p;
}

static int check_args(int m, int n, int k, int ldx, int ldy, float beta, int y_type)
{
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldy < n || (beta != 0.0f && beta != 1.0f) ||
        (y_type != KRN_CUDA_F32 && y_type != KRN_CUDA_F16) ||
        (y_type == KRN_CUDA_F16 && beta != 0.0f))
        return S3_EINVAL;
    return 0;
}

/* cuBLAS (column-major) computes y^T (n, m) = W (n, k) . x^T (k, m): op(A) = W^T of the
 * stored (k, n) column-major matrix, B = x^T (k, m) with leading dimension ldx. */
static int gemm_default(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x,
                        int ldx, const uint16_t *d_w, void *d_y, int ldy, float beta,
                        int y_type)
{
    const float alpha = 1.0f;
    KRN_CHECK_BLAS(dev, cublasGemmEx(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, d_w,
                                     CUDA_R_16F, k, d_x, CUDA_R_16F, ldx, &beta, d_y,
                                     y_type == KRN_CUDA_F16 ? CUDA_R_16F : CUDA_R_32F, ldy,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

static int gemm_lt(struct krn_cuda_dev *dev, const struct krn_gemm_plan *p,
                   const cublasLtMatmulAlgo_t *algo, const uint16_t *d_x, const uint16_t *d_w,
                   void *d_y, float beta)
{
    const float alpha = 1.0f;
    KRN_CHECK_BLAS(dev, cublasLtMatmul(dev->lt, p->op, &alpha, d_w, p->lw, d_x, p->lx, &beta,
                                       d_y, p->ly, d_y, p->ly, algo, dev->gemm_ws,
                                       dev->gemm_ws_bytes, dev->stream));
    return 0;
}

extern "C" int krn_cuda_gemm_ld(struct krn_cuda_dev *dev, int m, int n, int k,
                                const uint16_t *d_x, int ldx, const uint16_t *d_w, void *d_y,
                                int ldy, float beta, int y_type)
{
    if (check_args(m, n, k, ldx, ldy, beta, y_type) < 0)
        return S3_EINVAL;
    if (m == 0)
        return 0;
    const struct krn_gemm_plan *p = plan_find(dev, m, n, k, ldx, ldy, y_type, beta != 0.0f);
    if (p && p->use_lt)
        return gemm_lt(dev, p, &p->algo, d_x, d_w, d_y, beta);
    return gemm_default(dev, m, n, k, d_x, ldx, d_w, d_y, ldy, beta, y_type);
}

extern "C" int krn_cuda_gemm(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x,
                             const uint16_t *d_w, void *d_y, int ldy, float beta, int y_type)
{
    return krn_cuda_gemm_ld(dev, m, n, k, d_x, k, d_w, d_y, ldy, beta, y_type);
}

static int plan_init(struct krn_cuda_dev *dev, struct krn_gemm_plan *p)
{
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cudaDataType_t yt = p->y_type == KRN_CUDA_F16 ? CUDA_R_16F : CUDA_R_32F;
    KRN_CHECK_BLAS(dev, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    KRN_CHECK_BLAS(dev, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                       sizeof(ta)));
    KRN_CHECK_BLAS(dev, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                       sizeof(tb)));
    KRN_CHECK_BLAS(dev, cublasLtMatrixLayoutCreate(&p->lw, CUDA_R_16F, p->k, p->n, p->k));
    KRN_CHECK_BLAS(dev, cublasLtMatrixLayoutCreate(&p->lx, CUDA_R_16F, p->k, p->m, p->ldx));
    KRN_CHECK_BLAS(dev, cublasLtMatrixLayoutCreate(&p->ly, yt, p->n, p->m, p->ldy));
    return 0;
}

/* Mean device time of `reps` runs of one candidate (-1: cuBLAS's default) after two untimed. */
static int time_candidate(struct krn_cuda_dev *dev, const struct krn_gemm_plan *p,
                          const cublasLtMatmulAlgo_t *algo, const uint16_t *d_x,
                          const uint16_t *d_w, void *d_y, float beta, int reps, cudaEvent_t e0,
                          cudaEvent_t e1, float *ms)
{
    for (int r = -2; r < reps; r++) {
        if (r == 0)
            KRN_CHECK(dev, cudaEventRecord(e0, dev->stream));
        int rc = algo ? gemm_lt(dev, p, algo, d_x, d_w, d_y, beta)
                      : gemm_default(dev, p->m, p->n, p->k, d_x, p->ldx, d_w, d_y, p->ldy, beta,
                                     p->y_type);
        if (rc < 0)
            return rc;
    }
    KRN_CHECK(dev, cudaEventRecord(e1, dev->stream));
    KRN_CHECK(dev, cudaEventSynchronize(e1));
    KRN_CHECK(dev, cudaEventElapsedTime(ms, e0, e1));
    *ms /= (float)reps;
    return 0;
}

static int config_attr(const cublasLtMatmulAlgo_t *a, cublasLtMatmulAlgoConfigAttributes_t at)
{
    int v = 0; /* the attributes read here are 32-bit (uint16 ones read into the low bytes) */
    size_t got = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(a, at, &v, sizeof(v), &got) !=
        CUBLAS_STATUS_SUCCESS)
        return -1;
    return got == 2 ? (v & 0xffff) : v;
}

static int tune(struct krn_cuda_dev *dev, struct krn_gemm_plan *p, const uint16_t *d_x,
                const uint16_t *d_w, void *d_y, float beta, struct krn_cuda_gemm_trial *trials,
                int max_trials, int *n_trials, cudaEvent_t e0, cudaEvent_t e1)
{
    int rc = plan_init(dev, p);
    if (rc < 0)
        return rc;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
    int n_res = 0;
    KRN_CHECK_BLAS(dev, cublasLtMatmulPreferenceCreate(&pref));
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &dev->gemm_ws_bytes,
        sizeof(dev->gemm_ws_bytes));
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(dev->lt, p->op, p->lw, p->lx, p->ly, p->ly, pref,
                                            TUNE_CANDIDATES, res, &n_res);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS)
        n_res = 0; /* no cuBLASLt candidate for this shape: cuBLAS's default stays */
    /* the candidates: cuBLAS's default (NULL) first, then cuBLASLt's without split-K (split-K
       sums each output in parts: left out, so every candidate adds in k order) */
    const cublasLtMatmulAlgo_t *cand[TUNE_CANDIDATES + 1];
    int nc = 0;
    cand[nc++] = NULL;
    for (int i = 0; i < n_res; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS &&
            config_attr(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1)
            cand[nc++] = &res[i].algo;
    /* Each candidate runs for about span ms (S3_CUDA_GEMM_TUNE_MS, default 10) in two passes
       of opposite order, after three spans of the default: a sustained load runs at the
       clock the power limit settles at, and the order cancels the drift while it settles;
       the fastest under that load is kept (one that is faster in a short burst may draw more
       power and lose in a long scan). */
    float span = 10.0f, ms = 0.0f, tot[TUNE_CANDIDATES + 1] = {0};
    const char *env = getenv("S3_CUDA_GEMM_TUNE_MS");
    if (env && atof(env) >= 1.0 && atof(env) <= 10000.0)
        span = (float)atof(env);
    if ((rc = time_candidate(dev, p, NULL, d_x, d_w, d_y, beta, 1, e0, e1, &ms)) < 0)
        return rc;
    const int reps = ms > 0.0f && ms < span / 10.0f ? (int)(span / ms) : 10;
    if ((rc = time_candidate(dev, p, NULL, d_x, d_w, d_y, beta, 3 * reps, e0, e1, &ms)) < 0)
        return rc;
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < nc; j++) {
            const int c = pass ? nc - 1 - j : j;
            if (tot[c] < 0.0f)
                continue; /* refused before */
            rc = time_candidate(dev, p, cand[c], d_x, d_w, d_y, beta, reps, e0, e1, &ms);
            if (rc < 0 && !cand[c])
                return rc;
            if (rc < 0 && cudaPeekAtLastError() != cudaSuccess)
                return rc; /* the device is in trouble, not the candidate */
            tot[c] = rc < 0 ? -1.0f : tot[c] + ms / 2.0f; /* a refused candidate is left out */
        }
    int nt = 0, best = 0;
    for (int c = 0; c < nc; c++) {
        if (tot[c] < 0.0f)
            continue;
        if (trials && nt < max_trials)
            trials[nt++] = (struct krn_cuda_gemm_trial){
                .algo = cand[c] ? config_attr(cand[c], CUBLASLT_ALGO_CONFIG_ID) : -1,
                .tile = cand[c] ? config_attr(cand[c], CUBLASLT_ALGO_CONFIG_TILE_ID) : -1,
                .stages = cand[c] ? config_attr(cand[c], CUBLASLT_ALGO_CONFIG_STAGES_ID) : -1,
                .ms = tot[c]};
        if (tot[c] < tot[best])
            best = c;
    }
    p->use_lt = best > 0;
    if (best > 0)
        p->algo = *cand[best];
    if (n_trials)
        *n_trials = nt;
    return 0;
}

extern "C" int krn_cuda_gemm_tune(struct krn_cuda_dev *dev, int m, int n, int k,
                                  const uint16_t *d_x, int ldx, const uint16_t *d_w, void *d_y,
                                  int ldy, float beta, int y_type,
                                  struct krn_cuda_gemm_trial *trials, int max_trials,
                                  int *n_trials)
{
    if (n_trials)
        *n_trials = 0;
    if (check_args(m, n, k, ldx, ldy, beta, y_type) < 0 || m == 0 || max_trials < 0)
        return S3_EINVAL;
    const int acc = beta != 0.0f;
    if (plan_find(dev, m, n, k, ldx, ldy, y_type, acc))
        return 0;
    struct krn_gemm_plan *p = plan_add(dev, m, n, k, ldx, ldy, y_type, acc);
    if (!p)
        return S3_ENOMEM;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int rc = 0;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        (void)cudaGetLastError();
        rc = krn_cuda__fail(dev, "cudaEventCreate", "failed", __FILE__, __LINE__);
    } else {
        rc = tune(dev, p, d_x, d_w, d_y, beta, trials, max_trials, n_trials, e0, e1);
    }
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    if (rc < 0) {
        plan_release(p);
        return rc;
    }
    if (!p->use_lt)
        plan_release(p); /* cuBLAS's default was fastest: the shape alone */
    dev->n_plans++;
    return 0;
}

extern "C" int krn_cuda_gemm_copy_plans(struct krn_cuda_dev *dst, const struct krn_cuda_dev *src)
{
    for (int i = 0; i < src->n_plans; i++) {
        const struct krn_gemm_plan *q = &src->plans[i];
        if (plan_find(dst, q->m, q->n, q->k, q->ldx, q->ldy, q->y_type, q->acc))
            continue;
        struct krn_gemm_plan *p = plan_add(dst, q->m, q->n, q->k, q->ldx, q->ldy, q->y_type,
                                           q->acc);
        if (!p)
            return S3_ENOMEM;
        if (q->use_lt) { /* descriptors of dst's own; the algorithm is plain data */
            const int rc = plan_init(dst, p);
            if (rc < 0) {
                plan_release(p);
                return rc;
            }
            p->use_lt = 1;
            p->algo = q->algo;
        }
        dst->n_plans++;
    }
    return 0;
}
