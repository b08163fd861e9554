/* kernels/cuda/argmax.cuh - argmax launch shape. */
#pragma once

#define KRN_ARGMAX_THREADS 1024
