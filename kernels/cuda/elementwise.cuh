/* kernels/cuda/elementwise.cuh - limits shared by the elementwise kernels. */
#pragma once

#define KRN_F16_MAX 65504.0f
