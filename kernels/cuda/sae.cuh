/* kernels/cuda/sae.cuh - Top-k selection launch shape. */
#pragma once

#define KRN_SAE_THREADS 256
#define KRN_SAE_MAX_K 256
#define KRN_SAE_WARP_ROWS 4 /* rows (warps) per block of the register top-k */
