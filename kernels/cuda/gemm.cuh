/* kernels/cuda/gemm.cuh - cuBLAS GEMM: row-major y (m, n) = x (m, k) W^T, W (n, k) as stored.
 * In cuBLAS's column-major terms this is y^T (n, m) = W^T x^T: op(A) = T on W, op(B) = N. */
#pragma once
