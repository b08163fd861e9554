/* kernels/kernels_int.h - private to kernels/: CPU feature dispatch and fast-path entry points.
 *
 * The fast paths live in kernels/cpu/cpu_avx512.c and cpu_avx2.c, compiled with per-function
 * target attributes and chosen at run time; the scalar reference in kernels/cpu/cpu_ref.c works on
 * any CPU. Both backends, CPU and CUDA, implement the vtable struct krn_backend below. */
#pragma once

#include "kernels.h"

/* 1 when the AVX512-VNNI paths can run (AVX512F/BW/VL/DQ/VNNI, F16C, FMA). Any thread. */
int krn__have_avx512vnni(void);
/* 1 when the AVX2 paths can run (AVX2, FMA, F16C; S3_SIMD=avx2 chooses them over AVX512,
 * S3_SIMD=none or S3_NO_SIMD=1 neither). Any thread. */
int krn__have_avx2(void);
/* The AVX2 paths (kernels/cpu/cpu_avx2.c), bit-identical to their references. */
void krn__qmatmul_avx2(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                       int ldy, int r0, int r1);
void krn__attn_f16_avx2(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                        int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                        float scale, float *scratch, int it0, int it1);
void krn__swiglu_avx2(float *out, const float *g, const float *u, int n);

void krn__qact_quantize_ref(struct krn_qact *a, const float *x, int t0, int t1);
void krn__qact_quantize_avx512(struct krn_qact *a, const float *x, int t0, int t1);
/* The VNNI path of krn_qmatmul (any n_tok), bit-identical to krn_qmatmul_ref. */
void krn__qmatmul_vnni(const struct krn_qmat *w, const struct krn_qact *a, int n_tok, float *y,
                       int ldy, int r0, int r1);
void krn__attn_f16_ref(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                       int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                       float scale, float *scratch, int it0, int it1);
void krn__attn_f16_avx512(float *out, const float *q, const uint16_t *kc, const uint16_t *vc,
                          int n_q, int pos0, int n_head, int n_kv_head, int head_dim, int n_ctx,
                          float scale, float *scratch, int it0, int it1);
void krn__f32_to_f16_avx512(uint16_t *dst, const float *src, int n);
/* One lane of ggml's AVX512 expf approximation (ggml_v_expf), bit for bit. */
float krn__expf_ggml(float x);
/* Sums in the fixed orders of ggml's horizontal adds: sum8 as hsum_float_8 (8 lanes of a
 * 256-bit vector), sum16 as GCC's _mm512_reduce_add_ps (16 lanes). */
float krn__sum8(const float *v);
float krn__sum16(const float *v);
/* The KV length llama.cpp attends over when the batch ends at n_kv keys: a multiple of 32
 * (its cache padding without flash attention), at least 32. */
int krn__kv_pad(int n_kv);
void krn__swiglu_ref(float *out, const float *g, const float *u, int n);
void krn__swiglu_avx512(float *out, const float *g, const float *u, int n);

/* ---- backend vtable ------------------------------------------------------------------------
 * One instance per backend object. The public functions of kernels.h check the arguments
 * common to every backend, then call the slot; a slot may assume them valid. A NULL slot
 * marked (optional) answers S3_EINVAL with a message. Slots record what failed in err. */
struct krn_weight {
    int n_rows, n_cols;
    void *impl; /* the backend's own */
};

struct krn_backend {
    const char *name;
    void *ctx; /* the backend's own */
    char err[256];
    int (*buf_alloc)(struct krn_backend *be, size_t bytes, void **buf);
    void (*buf_free)(struct krn_backend *be, void *buf);
    int (*upload)(struct krn_backend *be, void *buf, const void *src, size_t bytes);
    int (*download)(struct krn_backend *be, void *dst, const void *buf, size_t bytes);
    int (*weight_new)(struct krn_backend *be, uint32_t ggml_type, const void *data,
                      struct krn_weight *w);
    void (*weight_free)(struct krn_backend *be, struct krn_weight *w);
    int (*matmul)(struct krn_backend *be, const struct krn_weight *w, const float *x, int n_tok,
                  float *y);
    int (*rmsnorm)(struct krn_backend *be, float *y, const float *x, const float *w,
                   int n_rows, int n, float eps);
    int (*rope)(struct krn_backend *be, float *x, int n_tok, int pos0, int n_heads,
                int head_dim, int n_rot, float base, int mode);
    int (*attention)(struct krn_backend *be, float *out, const float *q, const float *k,
                     const float *v, int n_q, int pos0, int n_head, int n_kv_head,
                     int head_dim, float scale);
    int (*softmax)(struct krn_backend *be, float *x, int n_rows, int n); /* (optional) */
    int (*synchronize)(struct krn_backend *be);
    void (*destroy)(struct krn_backend *be); /* frees ctx, not be */
};

/* Fill be (zeroed) with the CPU backend. Returns 0 or S3_ENOMEM. */
int krn__backend_cpu_init(struct krn_backend *be, int n_threads);
/* Fill be (zeroed) with the CUDA backend on GPU 0. Returns 0 or S3_EDEVICE (message in
 * be->err). Only in builds with CUDA (S3_HAVE_CUDA). */
int krn__backend_cuda_init(struct krn_backend *be);
/* Record a message in be->err and return code. */
int krn__be_err(struct krn_backend *be, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
