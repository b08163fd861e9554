/* kernels/cuda/attn.cuh - tiles of the flash-style attention kernel.
 *
 * Tensor-core path (hd 64 or 128): a block of 8 warps takes 128 queries of one head; each warp
 * owns 16 query rows and keeps its Q fragments, scores, probabilities and output accumulators
 * in registers (mma.sync m16n8k16, fp16 in, fp32 accumulate), with the online softmax done on
 * the accumulator layout. Keys and values stream through shared memory in tiles of 64, both
 * row-major (16-byte stores); V fragments are read with ldmatrix.trans. Tiles past the causal limit of a block
 * are never loaded; a warp skips tiles past its own rows. The score matrix never leaves
 * registers.
 *
 * Variant 2 (the default) of the tensor-core path pipelines the K/V tiles with cp.async (two
 * stages in dynamic shared memory), in tiles of 128 keys (64 for head size 128 in blocks of 64
 * queries), reads K fragments with ldmatrix, schedules the heaviest query blocks first, folds
 * the softmax scale into one FMA per score before a single-instruction exp2, and rescales the
 * output accumulators only when some row's maximum rose; variant 1 is the single-stage kernel
 * above (kept for comparison).
 *
 * Variant 3 (Hopper, sm_90a builds; the default for head size 128 there) does the same online
 * softmax with both products on warpgroup MMAs (wgmma): two warpgroups of 64 query rows, Q, K
 * and V in shared memory in the 128-byte swizzled layout, three K/V stages, P from registers
 * (kernels/cuda/wgmma.cuh).
 *
 * Split-KV path (n <= KRN_ATT_SPLIT_MAX_N, decode): keys split over blocks, partial softmax
 * states combined by a second kernel; partials live in a device scratch owned by the device
 * handle (n * n_head * splits * (hd + 2) floats, splits <= KRN_ATT_MAX_SPLIT).
 *
 * Plain path (any hd that is a multiple of 32 up to 256; decode and short batches): one block
 * of 128 threads per (query, head) streams keys in tiles of 128, one score per thread, online
 * softmax through block reductions, each thread accumulating up to two output dims. */
#pragma once

#define KRN_ATT_BQ 128     /* queries per block (tensor-core path): 8 warps x 16 rows */
#define KRN_ATT_BK 64      /* keys per shared-memory tile (variant 1) */
#define KRN_ATT_WARPS 8
#define KRN_ATT_PLAIN 128  /* threads (= keys per tile) of the plain path */
#define KRN_ATT_MMA_MIN_N 16 /* batches shorter than this use the split (or plain) path */
#define KRN_ATT_DEFAULT_VARIANT 2
#define KRN_ATT_SPLIT_THREADS 128
#define KRN_ATT_SPLIT_MAX_N 15
#define KRN_ATT_SPLIT_MIN_KEYS 256
#define KRN_ATT_MAX_SPLIT 128
#define KRN_ATT_WG_STAGES 3 /* K/V tiles in flight (variant 3) */
