/* kernels/cuda/cuda_int.cuh - private to kernels/cuda/: the device struct and the error macros
 * shared by the .cu files. Included only by .cu files. */
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "s3.h"
}
#include "cuda.h"

struct krn_cuda_dev {
    int ordinal;
    cudaStream_t stream;   /* compute stream: every op and the _async copies */
    cublasHandle_t blas;   /* bound to stream */
    char name[128];
    char msg[320];         /* last error text */
    int attn_variant;      /* 0: default (KRN_ATT_DEFAULT_VARIANT) */
    int attn_bq;           /* variant 2's queries per block: 0 (128), 64, 128 */
    int attn_wg;           /* 1: the Hopper attention kernel (variant 3) runs here */
    void *att_scr;         /* split-KV attention partials, owned */
    size_t att_scr_bytes;
    int sae_variant;       /* 0: default (2, the warp top-k where it applies) */
    cublasLtHandle_t lt;   /* the tuned GEMMs (gemm.cu) */
    void *gemm_ws;         /* workspace of cuBLAS and cuBLASLt (same stream), owned */
    size_t gemm_ws_bytes;
    struct krn_gemm_plan *plans; /* tuned shapes (gemm.cu), owned */
    int n_plans;
};

/* attn.cu: sets dev->attn_wg (launches a probe kernel and waits for it). */
int krn_cuda__attn_probe(struct krn_cuda_dev *dev);

/* gemm.cu: frees the tuned plans and the cuBLASLt handle (krn_cuda_dev_free). */
void krn_cuda__gemm_free(struct krn_cuda_dev *dev);

struct krn_cuda_event {
    cudaEvent_t ev;
};

/* Record the failure text on dev (dev may be NULL) and return S3_EDEVICE. */
int krn_cuda__fail(struct krn_cuda_dev *dev, const char *what, const char *err, const char *file,
                   int line);

/* KRN_CHECK(dev, call): a CUDA runtime call; on failure records stmt/file/line and returns
 * S3_EDEVICE from the enclosing function. Never aborts. */
#define KRN_CHECK(dev, call)                                                                   \
    do {                                                                                       \
        cudaError_t krn_e_ = (call);                                                           \
        if (krn_e_ != cudaSuccess)                                                             \
            return krn_cuda__fail((dev), #call, cudaGetErrorString(krn_e_), __FILE__,          \
                                  __LINE__);                                                   \
    } while (0)

/* The launch just made: configuration errors are reported here, execution errors later. */
#define KRN_CHECK_LAUNCH(dev) KRN_CHECK(dev, cudaGetLastError())

#define KRN_CHECK_BLAS(dev, call)                                                              \
    do {                                                                                       \
        cublasStatus_t krn_s_ = (call);                                                        \
        if (krn_s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return krn_cuda__fail((dev), #call, cublasGetStatusString(krn_s_), __FILE__,       \
                                  __LINE__);                                                   \
    } while (0)

static inline unsigned krn_cuda__blocks(long long n, int per_block)
{
    return (unsigned)((n + per_block - 1) / per_block);
}
