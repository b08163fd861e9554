/* kernels/cuda/norm.cuh - RMSNorm launch shape. */
#pragma once

#define KRN_NORM_THREADS 256
