/* kernels/cuda/cuda.h - the CUDA backend's C API (usable from C11; the .cu files include it
 * inside extern "C").
 *
 * Knows nothing of models: it moves buffers, multiplies (cuBLAS, fp16 operands, fp32
 * accumulation), normalises, rotates, attends (flash-style, no n x n score matrix in device
 * memory), gates, picks the argmax. Every call is asynchronous on the device's compute stream
 * unless it says otherwise; device pointers are written d_*.
 *
 * Errors: every function returns 0 or S3_EDEVICE (S3_EINVAL for bad arguments, S3_ENOMEM
 * when a device allocation fails). The failing statement, file, line and CUDA/cuBLAS message
 * are kept in the device's error text (krn_cuda_errmsg); nothing aborts. A sticky CUDA
 * error poisons the context: the caller should stop using the device after S3_EDEVICE.
 *
 * Threads: a struct krn_cuda_dev belongs to one thread at a time (it owns its streams and
 * cuBLAS handle).
 *
 * Usage:
 *     struct krn_cuda_dev *dev;
 *     if (krn_cuda_dev_new(0, &dev) < 0) ...;          // S3_EDEVICE when no GPU
 *     uint16_t *d_w; krn_cuda_malloc(dev, (void **)&d_w, bytes);
 *     krn_cuda_rmsnorm(dev, d_x, d_w, n_tok, d, eps, d_xn);
 *     krn_cuda_gemm(dev, n_tok, n_out, d, d_xn, d_wq, d_y, n_out, 0.0f, KRN_CUDA_F32);
 *     krn_cuda_sync(dev);
 *     krn_cuda_dev_free(dev);
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct krn_cuda_dev;

/* Number of usable CUDA devices (0 when there is no driver or no GPU). Any thread. */
int krn_cuda_device_count(void);

/* Open device `ordinal`: a compute stream, a copy stream and a cuBLAS handle. *out is new;
 * free with krn_cuda_dev_free (NULL allowed). S3_EDEVICE when there is no such device. */
int krn_cuda_dev_new(int ordinal, struct krn_cuda_dev **out);
#define KRN_CUDA_WS_BYTES ((size_t)32 << 20) /* each handle's cuBLAS(Lt) workspace */
void krn_cuda_dev_free(struct krn_cuda_dev *dev);
/* Text of the last error on dev (borrowed, valid until the next failing call). Never NULL. */
const char *krn_cuda_errmsg(const struct krn_cuda_dev *dev);
/* Device name (borrowed). */
const char *krn_cuda_dev_name(const struct krn_cuda_dev *dev);
/* Free and total device memory in bytes (synchronous). */
int krn_cuda_mem_info(struct krn_cuda_dev *dev, size_t *free_bytes, size_t *total_bytes);

/* ---- memory (synchronous unless named _async) ------------------------------------------------ */
int krn_cuda_malloc(struct krn_cuda_dev *dev, void **d_ptr, size_t bytes);
void krn_cuda_free(void *d_ptr);                       /* NULL allowed */
int krn_cuda_host_alloc(struct krn_cuda_dev *dev, void **h_ptr, size_t bytes); /* pinned */
void krn_cuda_host_free(void *h_ptr);                  /* NULL allowed */
int krn_cuda_upload(struct krn_cuda_dev *dev, void *d_dst, const void *h_src, size_t bytes);
int krn_cuda_download(struct krn_cuda_dev *dev, void *h_dst, const void *d_src, size_t bytes);
/* On the compute stream; h_src/h_dst should be pinned for the copy to be asynchronous. */
int krn_cuda_upload_async(struct krn_cuda_dev *dev, void *d_dst, const void *h_src, size_t bytes);
int krn_cuda_download_async(struct krn_cuda_dev *dev, void *h_dst, const void *d_src,
                            size_t bytes);
/* Strided rows: n_rows rows of row_bytes, d_src rows src_pitch bytes apart, packed into h_dst. */
int krn_cuda_download_rows_async(struct krn_cuda_dev *dev, void *h_dst, const void *d_src,
                                 size_t src_pitch, size_t row_bytes, int n_rows);
int krn_cuda_memset(struct krn_cuda_dev *dev, void *d_ptr, int value, size_t bytes);
/* Wait for all work queued on dev. */
int krn_cuda_sync(struct krn_cuda_dev *dev);

/* ---- events (timing and fine-grained waits) -------------------------------------------------- */
struct krn_cuda_event;
int krn_cuda_event_new(struct krn_cuda_dev *dev, struct krn_cuda_event **out);
void krn_cuda_event_free(struct krn_cuda_event *ev);
int krn_cuda_event_record(struct krn_cuda_dev *dev, struct krn_cuda_event *ev);
int krn_cuda_event_wait_host(struct krn_cuda_dev *dev, struct krn_cuda_event *ev); /* blocks */
/* Milliseconds between two recorded, completed events. */
int krn_cuda_event_ms(struct krn_cuda_dev *dev, struct krn_cuda_event *a, struct krn_cuda_event *b,
                      float *ms);

/* Graphs: the work queued on the compute stream between capture_begin and capture_end is
 * recorded instead of run (the capture belongs to the calling thread), then replayed as a
 * whole by graph_launch, with the same pointers and sizes. A failed capture leaves the stream
 * usable and returns S3_EDEVICE. */
struct krn_cuda_graph;
int krn_cuda_capture_begin(struct krn_cuda_dev *dev);
int krn_cuda_capture_end(struct krn_cuda_dev *dev, struct krn_cuda_graph **out);
int krn_cuda_graph_launch(struct krn_cuda_dev *dev, struct krn_cuda_graph *g);
void krn_cuda_graph_free(struct krn_cuda_graph *g); /* NULL allowed */

/* ---- conversions ------------------------------------------------------------------------------- */

/* 1 when krn_cuda_dequant handles this ggml type on the device (F32, F16, BF16, Q4_0, Q4_1,
 * Q8_0); other types are dequantised on the host by the caller. */
int krn_cuda_dequant_supported(uint32_t ggml_type);
/* d_dst (n) fp16 = dequantised d_src (n elements of ggml_type, n a multiple of its block). */
int krn_cuda_dequant(struct krn_cuda_dev *dev, uint32_t ggml_type, const void *d_src,
                     uint16_t *d_dst, int64_t n);
/* fp16 <-> f32 elementwise. */
int krn_cuda_f32_to_f16(struct krn_cuda_dev *dev, const float *d_src, uint16_t *d_dst, int64_t n);
int krn_cuda_f16_to_f32(struct krn_cuda_dev *dev, const uint16_t *d_src, float *d_dst, int64_t n);
/* x[i] (n fp16) = values in [-1, 1) from a hash of (seed, i): operands for timing runs. */
int krn_cuda_fill_f16(struct krn_cuda_dev *dev, uint16_t *d_x, int64_t n, uint32_t seed);

/* ---- ops (asynchronous on the compute stream) --------------------------------------------------- */

/* x (n_tok, d) f32 = rows d_tokens[t] of table (n_vocab, d) fp16. Ids outside [0, n_vocab)
 * give zero rows (the caller validates ids first). */
int krn_cuda_embed(struct krn_cuda_dev *dev, const uint16_t *d_table, int n_vocab,
                   const int32_t *d_tokens, int n_tok, int d, float *d_x);

/* y (n_rows, d) fp16 = x / sqrt(mean(x^2) + eps) * w, row by row (sum of squares in f32,
 * pairwise). x f32 (n_rows, d), w f32 (d). */
int krn_cuda_rmsnorm(struct krn_cuda_dev *dev, const float *d_x, const float *d_w, int n_rows,
                     int d, float eps, uint16_t *d_y);

/* The same, each block of 32 outputs then rounded as the CPU path's GEMMs quantise their
 * activations (kernels/cpu: amax of the f32 values, q = rint(v * 127 / amax) in [-127, 127],
 * scale d = fp16(amax / 127)): y = fp16(d * q). d % 32 == 0. */
int krn_cuda_rmsnorm_q8(struct krn_cuda_dev *dev, const float *d_x, const float *d_w,
                        int n_rows, int d, float eps, uint16_t *d_y);

/* x (n_rows, d) fp16, contiguous, rounded in place the same way from its fp16 values.
 * d % 32 == 0, x 16-byte aligned. */
int krn_cuda_q8_round(struct krn_cuda_dev *dev, uint16_t *d_x, int n_rows, int d);

enum krn_cuda_type { KRN_CUDA_F32 = 0, KRN_CUDA_F16 = 1 };
/* y (m, n) = x (m, k) fp16 * W^T where W is (n, k) fp16 row-major (a weight matrix as stored),
 * fp32 accumulation (cuBLAS). y has row stride ldy elements and type y_type; for F32 output
 * y = x W^T + beta*y (beta 0 or 1: 1 adds into the residual stream); F16 needs beta = 0. */
int krn_cuda_gemm(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x,
                  const uint16_t *d_w, void *d_y, int ldy, float beta, int y_type);

/* The same with x rows ldx >= k elements apart. */
int krn_cuda_gemm_ld(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x, int ldx,
                     const uint16_t *d_w, void *d_y, int ldy, float beta, int y_type);

/* One candidate timed by krn_cuda_gemm_tune: cuBLAS's default (algo -1) or a cuBLASLt
 * algorithm (its id, tile and stages ids); ms: mean device time of one product. */
struct krn_cuda_gemm_trial {
    int algo, tile, stages;
    float ms;
};

/* Time cuBLAS's default algorithm and cuBLASLt's heuristic candidates without split-K (every
 * output still sums its k products in order) for this shape on these buffers (y is written,
 * and with beta 1 accumulates) under a sustained load (about 10 ms each, twice, after a
 * warm-up; S3_CUDA_GEMM_TUNE_MS sets the span), and keep the fastest for every later
 * krn_cuda_gemm(_ld) of
 * exactly this (m, n, k, ldx, ldy, beta, y_type); other shapes keep cuBLAS's default. A shape
 * already tuned is left as it is. Synchronous; not while a graph is being captured. trials (may
 * be NULL): up to max_trials timings, *n_trials of them. */
int krn_cuda_gemm_tune(struct krn_cuda_dev *dev, int m, int n, int k, const uint16_t *d_x,
                       int ldx, const uint16_t *d_w, void *d_y, int ldy, float beta, int y_type,
                       struct krn_cuda_gemm_trial *trials, int max_trials, int *n_trials);

/* Give dst (another handle on the same device) every GEMM choice src has made, so that both
 * compute those shapes with the same algorithm (bit for bit the same outputs); shapes dst has
 * already are left as they are. */
int krn_cuda_gemm_copy_plans(struct krn_cuda_dev *dst, const struct krn_cuda_dev *src);

/* y[r*ldy + i] += b[i] for r < n_rows, i < n. */
int krn_cuda_add_bias(struct krn_cuda_dev *dev, float *d_y, int n_rows, int n, int ldy,
                      const float *d_b);

enum krn_cuda_rope { KRN_CUDA_ROPE_NORM = 0 /* adjacent pairs */, KRN_CUDA_ROPE_NEOX = 2 };
/* For n tokens at positions pos0..pos0+n-1, reading the fused projection rows
 * qkv (n, ldqkv) f32 = [q (n_head*hd) | k (n_kv_head*hd) | v (n_kv_head*hd)]:
 *   q_out (n, n_head*hd) fp16 = rope(q)
 *   K cache kc (n_kv_head, n_ctx, hd) fp16 at pos: rope(k);  V cache vc likewise: v.
 * cs: (n_ctx_table, n_rot) f32 cos/sin pairs per position (as krn_rope_table); the first n_rot
 * dims of each head rotate, the rest pass through. pos0+n <= n_ctx and <= n_ctx_table. */
int krn_cuda_rope_qkv(struct krn_cuda_dev *dev, const float *d_qkv, int ldqkv, int n, int pos0,
                      int n_head, int n_kv_head, int hd, int n_rot, const float *d_cs, int mode,
                      uint16_t *d_q_out, uint16_t *d_kc, uint16_t *d_vc, int n_ctx);

/* Causal GQA attention for n queries at positions pos0..pos0+n-1 over the cache (keys
 * 0..pos0+i for query i): q (n, n_head*hd) fp16, kc/vc (n_kv_head, n_ctx, hd) fp16,
 * out (n, n_head*hd) fp16. Scores scaled by `scale`, softmax in f32 (online, flash-style),
 * probabilities rounded to fp16 before the product with V. hd: 64 or 128 use tensor cores;
 * any multiple of 32 up to 256 works through a plain path; short batches (n <= 15, decode)
 * split the keys over blocks (the partials go to a scratch the device handle allocates on
 * first use and keeps; its size depends on n, heads and hd, not on the context beyond 32k
 * keys). out may be the same buffer as q (each q row of a head is read before its output is
 * written, by the same block). */
int krn_cuda_attn(struct krn_cuda_dev *dev, const uint16_t *d_q, const uint16_t *d_kc,
                  const uint16_t *d_vc, int n, int pos0, int n_head, int n_kv_head, int hd,
                  int n_ctx, float scale, uint16_t *d_out);

/* krn_cuda_attn, then the output rounded as krn_cuda_q8_round does (the same values; the
 * tensor-core kernel rounds in its epilogue). n_head * hd % 32 == 0. */
int krn_cuda_attn_q8(struct krn_cuda_dev *dev, const uint16_t *d_q, const uint16_t *d_kc,
                     const uint16_t *d_vc, int n, int pos0, int n_head, int n_kv_head, int hd,
                     int n_ctx, float scale, uint16_t *d_out);

/* Select the attention kernel variant of the tensor-core path (1: single-stage, 2:
 * cp.async-pipelined mma.sync, 3: Hopper warpgroup MMAs; by default 3 for head size 128 where
 * the build has sm_90a code and the device is a Hopper, else 2; 3 falls back to 2 elsewhere;
 * 2 and 3 also enable the split-KV decode path). Returns the previous one (the default for
 * head size 128 when none was set); other values only query. */
int krn_cuda_attn_variant(struct krn_cuda_dev *dev, int variant);

/* Queries per block of variant 2: 64, 128, or 0 (the default, 128). Returns the previous
 * setting; other values only query. */
int krn_cuda_attn_block(struct krn_cuda_dev *dev, int bq);

/* gu (n_rows, 2*n_ff) fp16 = [gate | up] -> out (n_rows, n_ff) fp16 = silu(gate) * up. */
int krn_cuda_swiglu(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows, int n_ff,
                    uint16_t *d_out);
/* The same with out rows ldo elements apart; out == gu with ldo = 2*n_ff works in place (the
 * result takes the gate half of each row). */
int krn_cuda_swiglu_ld(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows, int n_ff,
                       uint16_t *d_out, int ldo);

/* krn_cuda_swiglu_ld with each block of 32 outputs rounded as krn_cuda_rmsnorm_q8 does (from
 * the f32 products). n_ff % 32 == 0, ldo % 8 == 0, buffers 16-byte aligned. */
int krn_cuda_swiglu_q8(struct krn_cuda_dev *dev, const uint16_t *d_gu, int n_rows, int n_ff,
                       uint16_t *d_out, int ldo);

/* Softmax of each of n_rows rows of n f32 values in place (max subtracted, f32 sums). */
int krn_cuda_softmax_rows(struct krn_cuda_dev *dev, float *d_x, int n_rows, int n);

/* Store n rows (n_kv_head*hd f32 each) at positions pos0.. of a cache (n_kv_head, n_ctx, hd)
 * fp16, the layout krn_cuda_attn reads. */
int krn_cuda_kv_rows(struct krn_cuda_dev *dev, const float *d_rows, int n, int pos0,
                     int n_kv_head, int hd, uint16_t *d_cache, int n_ctx);

/* out[r] = index of the largest of row r of x (n_rows, n) f32 (lowest index on ties). */
int krn_cuda_argmax(struct krn_cuda_dev *dev, const float *d_x, int n_rows, int n,
                    int32_t *d_out);

/* One draw from the n logits x as engine/sample.c draws it (top-k, top-p on the softmax of
 * the logits, temperature; the kept tokens walked in id order) with the uniform u in [0, 1):
 * the same logits and u give the same token. out[0]: the token; out[1]: 1 where u was used,
 * 0 where not (greedy: temperature <= 0 or top_k == 1; no finite maximum), 2 where a cut
 * fell among more equal-bin candidates than the device sorts (the host must draw).
 * n <= KRN_CUDA_SAMPLE_MAX_N. */
#define KRN_CUDA_SAMPLE_MAX_N 262144
struct krn_cuda_sample_params {
    float temperature;
    float top_p;  /* 1 = off */
    int top_k;    /* 0 = off */
};
int krn_cuda_sample(struct krn_cuda_dev *dev, const float *d_x, int n,
                    const struct krn_cuda_sample_params *p, double u, int32_t *d_out);

/* ---- Top-k SAE encoding ------------------------------------------------------------------------
 * For n rows x (row stride ldx f32) and one SAE (W_enc (n_dict, d), b_enc (n_dict), b_dec (d)):
 * pre = W_enc (x - b_dec) + b_enc, a = relu(pre); keep the k largest (ties: lowest id), ordered
 * by activation descending then id ascending: ids (n, k) u16, acts (n, k) f32. W_enc comes
 * split for the tensor cores by krn_cuda_sae_split (d_whilo, w_inv_scale); the pre-activations
 * are within fp32 rounding of an fp32 GEMM's. x - b_dec must stay within fp16's range.
 * scratch: krn_cuda_sae_scratch_bytes(n, d, n_dict). k <= 256, n_dict <= 65536. */
int krn_cuda_sae_encode(struct krn_cuda_dev *dev, const float *d_x, int ldx, int n, int d,
                        const uint16_t *d_whilo, float w_inv_scale, const float *d_benc,
                        const float *d_bdec, int n_dict, int k, void *d_scratch,
                        uint16_t *d_ids, float *d_acts);
size_t krn_cuda_sae_scratch_bytes(int n, int d, int n_dict);
/* Host: W_enc (n_dict, d) f32 row-major scaled by a power of two s and split into fp16 head
 * and remainder, hilo (n_dict, 2d) row-major [head | remainder] (n_dict * d * 4 bytes, the
 * size of W_enc); returns 1 / s, krn_cuda_sae_encode's w_inv_scale. */
float krn_cuda_sae_split(const float *w_enc, int n_dict, int d, uint16_t *hilo);
/* Top-k selection kernel: 2 (default) one warp per row with the row in registers where
 * n_dict <= 2048, 1 the block-per-row kernel everywhere; both pick and order identically.
 * Returns the previous one; other values only query. */
int krn_cuda_sae_variant(struct krn_cuda_dev *dev, int variant);

#ifdef __cplusplus
}
#endif
