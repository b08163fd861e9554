/* kernels/kernels.h - backend-neutral compute API (knows nothing of models).
 *
 * This is the small stable core that other modules call. The backend vtable lives in
 * kernels_int.h; the CPU backend in kernels/cpu/, CUDA in kernels/cuda/. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "quant.h"
#include "s3.h"

/* Online cores (>= 1). */
int krn_n_cpus(void);

/* Row-major single-precision GEMM: C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C.
 * trans_a/trans_b: 0 = as stored, 1 = transposed. Multi-threaded (OpenBLAS). */
void krn_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* ---- thread pool ------------------------------------------------------------------------------
 * A fixed set of worker threads that run one task at a time on all threads (the caller is
 * thread 0). Workers spin briefly between tasks, then sleep. One pool belongs to one caller
 * thread at a time (krn_pool_run is not reentrant). */
struct krn_pool;
typedef void (*krn_task_fn)(void *ud, int ith, int nth);

/* n_threads <= 0 means krn_n_cpus(). *out is new; free with krn_pool_free(). */
int krn_pool_new(int n_threads, struct krn_pool **out);
void krn_pool_free(struct krn_pool *p);
int krn_pool_n_threads(const struct krn_pool *p);
/* Run fn(ud, ith, nth) on every thread and return when all are done. */
void krn_pool_run(struct krn_pool *p, krn_task_fn fn, void *ud);

/* ---- quantised matrix multiply ----------------------------------------------------------------
 * Weights are repacked at load into a layout for integer dot products: 32-element blocks,
 * unsigned 4-bit (from Q4_1: w = d*q + m, d and m kept as f16 as stored) or signed 8-bit (from
 * Q8_0 and, requantised, from any other type: w = d*q, d in f32) values. Activations are
 * quantised per 32-block to int8 exactly as ggml's Q8_1 (d = amax/127 rounded to f16,
 * q = round-half-even(x*127/amax), s = f16(d*sum q)).
 *
 * Rows are stored in groups of 16; the record of (group, block) holds the 16 rows' values of
 * that block interleaved 4 bytes at a time (the operand layout of vpdpbusd: byte
 * kk*64 + i*4 + e is element 4*kk+e of row i), then the 16 rows' scales:
 *
 *   Q4 record, 320 bytes:  [0,256)   byte c*64+i*4+e: low nibble = element 4c+e, high
 *                                    nibble = element 16+4c+e of row i (c < 4)
 *                          [256,288) d of the 16 rows, f16     [288,320) m, f16
 *   Q8 record, 576 bytes:  [0,512)   byte kk*64+i*4+e = element 4kk+e of row i plus 128
 *                                    (unsigned, 0..255)
 *                          [512,576) d, f32
 *
 * Each (row r, token t) is computed exactly as ggml's Q4_1 x Q8_1 and Q8_0 x Q8_0 dot products
 * (AVX2/AVX512 builds): lane l < 8 of block b is the exact integer sum p_bl of elements
 * 4l..4l+3;  lane_l = fma((float)p_bl, d_w*d_x, lane_l) over the blocks in order;
 * (Q4 only) ms = fma(m, s, ms) over the blocks;  result = sum8(lanes) + ms, sum8 being
 * ((l4+l0)+(l6+l2)) + ((l5+l1)+(l7+l3)) — all in single precision. Every path (scalar
 * reference, AVX512-VNNI) follows exactly these steps, so all give llama.cpp's bits and a
 * token's result never depends on how tokens are batched. Rows past n_rows in the last group
 * are zero. */
enum krn_qtype { KRN_Q4 = 1, KRN_Q8 = 2 };

#define KRN_QGROUP 16 /* rows per group */

struct krn_qmat {
    int qtype;          /* enum krn_qtype */
    int n_rows, n_cols; /* n_cols is a multiple of 32 */
    int nb;             /* blocks per row */
    int n_grp;          /* row groups: ceil(n_rows / 16) */
    size_t rec_bytes;   /* 320 (Q4) or 576 (Q8) */
    uint8_t *rec;       /* (n_grp, nb, rec_bytes), 64-byte aligned, owned */
};

/* Repack n_rows x n_cols of a ggml type into w (zeroed or deinit'ed). Q4_1 and Q8_0 are kept
 * exact; other supported types are dequantised and requantised to 8 bits.
 * Returns 0, S3_EINVAL (bad type/shape) or S3_ENOMEM. */
int krn_qmat_init(struct krn_qmat *w, uint32_t ggml_type, const void *data, int n_rows,
                  int n_cols);
void krn_qmat_deinit(struct krn_qmat *w);
size_t krn_qmat_bytes(const struct krn_qmat *w);

struct krn_qact {
    int n_tok_max, n_cols, nb;
    int n_tok_alloc; /* n_tok_max rounded up to 16 (the extra rows stay zero) */
    int8_t *qs;      /* (n_tok_alloc, nb*32), 64-byte aligned, owned */
    float *d;        /* (n_tok_alloc, nb): block scale, rounded to f16, owned */
    float *s;        /* (n_tok_alloc, nb): f16(d * sum q) per block, owned */
    int32_t *lsum;   /* (n_tok_alloc, nb, 8): sum of each 4 consecutive q, owned */
};
/* Returns 0, S3_EINVAL (n_cols not a multiple of 32, n_tok_max <= 0) or S3_ENOMEM. */
int krn_qact_init(struct krn_qact *a, int n_tok_max, int n_cols);
void krn_qact_deinit(struct krn_qact *a);
/* Copy the quantised row src of a to row dst (both < n_tok_max). */
void krn_qact_move_row(struct krn_qact *a, int dst, int src);
/* Quantise rows t0..t1-1 of x (row stride n_cols) into a. */
void krn_qact_quantize(struct krn_qact *a, const float *x, int t0, int t1);

/* y[t*ldy + r] = (W a_t)[r] for t < n_tok <= a->n_tok_max and rows r0 <= r < r1 (threads
 * split rows; a split at multiples of 16 keeps each row group on one thread). Runs the
 * AVX512-VNNI path where available, else the reference; both give the same bits. Any thread;
 * concurrent calls may share w and a. */
void krn_qmatmul(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                 int ldy, int r0, int r1);
/* Scalar reference of the same computation (the oracle in tests). */
void krn_qmatmul_ref(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                     int ldy, int r0, int r1);
/* Dequantise row r of W into out (n_cols floats). */
void krn_qmat_row(const struct krn_qmat *w, int r, float *out);

/* ---- elementwise and small ops (plain C; one row at a time) ----------------------------------- */

/* dst[i] = f16(src[i]) for i < n, rounded to nearest even (as krn_f32_to_fp16). */
void krn_f32_to_f16_row(uint16_t *dst, const float *src, int n);

/* y = x / sqrt(mean(x^2) + eps) * w  (sum of squares in double, as ggml). y may alias x. */
void krn_rmsnorm(float *y, const float *x, const float *w, int n, float eps);
/* out = silu(g) * u, silu(x) = x / (1 + e^-x) as ggml's SwiGLU on a row of n: the first
 * n - n%16 values with ggml's AVX512 expf, the rest with libm's. out may alias g or u. */
void krn_swiglu(float *out, const float *g, const float *u, int n);
/* In place softmax of n values as ggml's soft_max over a row padded with -inf to a multiple
 * of 16: exp(x - max) by ggml's AVX512 expf, each 16 summed as GCC's _mm512_reduce_add_ps and
 * added up in double, then every value times (float)(1 / sum). */
void krn_softmax(float *x, int n);
/* x . y in f32 with 8 independent partial sums (lane i takes elements i mod 8, the rest of n
 * after the last multiple of 8 added at the end) combined pairwise: vectorisable without
 * reassociation, so every build and machine gives the same bits. */
float krn_dot_f32(const float *x, const float *y, int n);

enum krn_rope_mode { KRN_ROPE_NORM = 0 /* adjacent pairs */, KRN_ROPE_NEOX = 2 /* halves */ };
/* cos/sin table for one position: cs[2*i] = cos, cs[2*i+1] = sin of theta_i =
 * pos * base^(-2i/n_dims) / ff[i] (ff may be NULL), i < n_dims/2; float math as ggml. */
void krn_rope_table(float *cs, int pos, int n_dims, float base, const float *ff);
/* Rotate the first n_dims dims of each of n_heads heads (head_dim apart) of x in place. */
void krn_rope_apply(float *x, int n_heads, int head_dim, int n_dims, const float *cs, int mode);

/* ---- attention ---------------------------------------------------------------------------------
 * Causal GQA attention over a f16 KV cache of one layer:
 *   kc: (n_kv_head, head_dim, n_ctx) f16, transposed (K of position j is column j); n_ctx is
 *       the cache's row length (>= every position used; callers may pad it)
 *   vc: (n_kv_head, n_ctx, head_dim) f16
 *   q : (n_q, n_head*head_dim) f32 (already rotated); query i sits at position pos0+i and
 *       sees keys 0..pos0+i.
 *   out: (n_q, n_head*head_dim) f32.
 * Bit for bit as llama.cpp without flash attention: q and the probabilities are rounded to
 * f16 before their dot products; scores are scaled and softmaxed (krn_softmax). A call of 2+
 * queries (a llama.cpp ubatch of 2+ tokens) sums the dot products in llamafile's f16 GEMM
 * order (16 lane chains, then 16 lanes as _mm512_reduce_add_ps); a call of one query in
 * ggml's vec_dot_f16 order (4 x 16 lane chains over steps of 64, reduced, and the elements
 * past the last multiple of 64 of the KV length padded to 32 added in double). Work items
 * are (head, group of 4 queries); this call does items it0..it1-1 of krn_attn_n_items().
 * scratch: 4*n_ctx floats. */
int krn_attn_n_items(int n_q, int n_head);
void krn_attn_f16(float *out, const float *q, const uint16_t *kc, const uint16_t *vc, int n_q,
                  int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx, float scale,
                  float *scratch, int it0, int it1);
/* Plain f32 reference: k, v (n_kv, n_kv_head*head_dim) f32 rows, queries at pos0+i. */
void krn_attn_ref(float *out, const float *q, const float *k, const float *v, int n_q, int pos0,
                  int n_head, int n_kv_head, int head_dim, float scale);

/* ---- backends -----------------------------------------------------------------------------------
 * The ops above on different hardware behind one interface (the vtable, struct krn_backend,
 * is in kernels_int.h): "cpu" (kernels/cpu/: host memory; exactly the ops above) and, in
 * builds with CUDA, "cuda" (kernels/cuda/: memory of GPU 0; fp16 operands and activations
 * with fp32 sums, like the device forward pass). Buffers belong to the backend that allocated
 * them; data enters and leaves by krn_upload/krn_download. Ops read and write f32 buffers and
 * may run asynchronously: krn_download and krn_synchronize wait for them. A backend belongs
 * to one thread at a time. Every int function returns 0 or a negative S3_E* code (S3_EINVAL
 * for bad shapes, S3_ENOMEM, S3_EDEVICE); krn_backend_errmsg says what failed. */
struct krn_backend;
struct krn_weight; /* a weight matrix in the backend's own format */

/* name "cpu" (n_threads <= 0: all cores) or "cuda" (S3_EDEVICE when the build has no CUDA or
 * the machine no GPU). Unknown names: S3_EINVAL. On failure *out is NULL and err (may be
 * NULL) says why. */
int krn_backend_new(const char *name, int n_threads, struct krn_backend **out,
                    struct s3_errinfo *err);
void krn_backend_free(struct krn_backend *be);
const char *krn_backend_name(const struct krn_backend *be);
const char *krn_backend_errmsg(const struct krn_backend *be);

/* bytes of zeroed backend memory (free with krn_buf_free; NULL allowed). */
int krn_buf_alloc(struct krn_backend *be, size_t bytes, void **buf);
void krn_buf_free(struct krn_backend *be, void *buf);
int krn_upload(struct krn_backend *be, void *buf, const void *src, size_t bytes);
int krn_download(struct krn_backend *be, void *dst, const void *buf, size_t bytes);
int krn_synchronize(struct krn_backend *be);

/* A weight matrix from host data of a ggml type (n_rows x n_cols, as stored in GGUF). */
int krn_weight_new(struct krn_backend *be, uint32_t ggml_type, const void *data, int n_rows,
                   int n_cols, struct krn_weight **out);
void krn_weight_free(struct krn_backend *be, struct krn_weight *w);

/* y (n_tok, n_rows) = x (n_tok, n_cols) W^T. CPU: krn_qmatmul on 8-bit activations. */
int krn_be_matmul(struct krn_backend *be, const struct krn_weight *w, const float *x, int n_tok,
                  float *y);
/* y = krn_rmsnorm of each of n_rows rows of n (y may be x). */
int krn_be_rmsnorm(struct krn_backend *be, float *y, const float *x, const float *w, int n_rows,
                   int n, float eps);
/* Rotate in place n_tok rows of n_heads heads at positions pos0.. (krn_rope_table with no
 * frequency factors, then krn_rope_apply). */
int krn_be_rope(struct krn_backend *be, float *x, int n_tok, int pos0, int n_heads,
                int head_dim, int n_rot, float base, int mode);
/* Causal GQA attention of n_q rotated queries at positions pos0.. over k, v (pos0 + n_q rows
 * of n_kv_head*head_dim), as krn_attn_ref (CPU: through the f16 cache and krn_attn_f16). */
int krn_be_attention(struct krn_backend *be, float *out, const float *q, const float *k,
                     const float *v, int n_q, int pos0, int n_head, int n_kv_head,
                     int head_dim, float scale);
/* krn_softmax of each of n_rows rows of n, in place. */
int krn_be_softmax(struct krn_backend *be, float *x, int n_rows, int n);
