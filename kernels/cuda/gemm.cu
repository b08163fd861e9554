/* kernels/cuda/gemm.cu - the dense projections through cuBLAS (fp16 operands, fp32 compute). */
#include "cuda_int.cuh"
#include "gemm.cuh"

extern "C" int krn_cuda_gemm_ld(struct krn_cuda_dev *dev, int m, int n, int k,
                                const uint16_t *d_x, int ldx, const uint16_t *d_w, void *d_y,
                                int ldy, float beta, int y_type)
{
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldy < n ||
        (y_type == KRN_CUDA_F16 && beta != 0.0f))
        return S3_EINVAL;
    if (m == 0)
        return 0;
    const float alpha = 1.0f;
    KRN_CHECK_BLAS(dev, cublasGemmEx(dev->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, d_w,
                                     CUDA_R_16F, k, d_x, CUDA_R_16F, ldx, &beta, d_y,
                                     y_type == KRN_CUDA_F16 ? CUDA_R_16F : CUDA_R_32F, ldy,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

extern "C" int krn_cuda_gemm(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x,
                             const uint16_t *d_w, void *d_y, int ldy, float beta, int y_type)
{
    return krn_cuda_gemm_ld(dev, m, n, k, d_x, k, d_w, d_y, ldy, beta, y_type);
}
