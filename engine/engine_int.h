/* engine/engine_int.h - private to engine/: model and context internals shared between
 * model.c (load), forward.c (forward pass), sample.c and generate.c. */
#pragma once

#include <stdint.h>

#include "engine.h"
#include "gguf.h"
#include "cuda_forward.h"
#include "kernels.h"

#define ENG_MAX_UBATCH 512 /* tokens per internal forward step (scratch is sized for it) */
#define ENG_CUDA_MAX_UBATCH 4096 /* tokens per device step when n_batch asks for more than 2048 */

struct eng_layer {
    float *attn_norm;           /* (n_embd), owned */
    float *ffn_norm;            /* (n_embd), owned */
    float *bq, *bk, *bv;        /* biases (qwen2) or NULL, owned */
    struct krn_qmat wq;         /* (n_head*head_dim, n_embd) */
    struct krn_qmat wk, wv;     /* (n_head_kv*head_dim, n_embd) */
    struct krn_qmat wo;         /* (n_embd, n_head*head_dim) */
    struct krn_qmat w_gate;     /* (n_ff, n_embd) */
    struct krn_qmat w_up;       /* (n_ff, n_embd) */
    struct krn_qmat w_down;     /* (n_embd, n_ff) */
};

struct eng_model {
    struct eng_hparams hp;
    struct eng_gguf *g;          /* owned; weights not repacked stay borrowed from its map */
    struct eng_tokenizer *tok;   /* owned */
    struct eng_layer *layers;    /* (n_layer), owned */
    const struct eng_gguf_tensor *tok_embd; /* borrowed from g: rows dequantised on lookup */
    float *output_norm;          /* (n_embd), owned */
    struct krn_qmat output;      /* (n_vocab, n_embd) */
    float *rope_ff;              /* (n_rot/2) frequency divisors or NULL, owned */
    int n_rot;                   /* rotated dims per head */
    int n_threads;
    int f32_act;                 /* device "cpu-f32" */
    size_t weight_bytes;         /* repacked weights */
    struct eng_cuda_model *cuda; /* device copy of the weights when device = "cuda", owned */
};

struct eng_ctx {
    const struct eng_model *m;   /* borrowed */
    struct krn_pool *pool;       /* owned */
    int n_ctx, n_ub, pos;
    int kv_stride;               /* cache row length >= n_ctx (padded, see eng_ctx_new) */
    uint16_t *kc;                /* (n_layer, n_head_kv, head_dim, kv_stride) f16, K transposed */
    uint16_t *vc;                /* (n_layer, n_head_kv, kv_stride, head_dim) f16 */
    float *rope_cs;              /* (n_ctx, n_rot): cos, sin pairs per position */
    /* scratch for one ubatch (n_ub tokens) */
    float *x;                    /* (n_ub, n_embd) residual stream */
    float *xn;                   /* (n_ub, n_embd) normed */
    float *tmp;                  /* (n_ub, n_embd) sublayer output */
    float *q;                    /* (n_ub, n_head*head_dim) */
    float *k, *v;                /* (n_ub, n_head_kv*head_dim) */
    float *att;                  /* (n_ub, n_head*head_dim) attention output */
    float *gate, *up;            /* (n_ub, n_ff) */
    float *attn_scratch;         /* (n_threads, 4*kv_stride) */
    float *f32_rows;             /* m->f32_act: (n_threads, 16 * max columns) dequantised rows */
    int f32_cols;                /* max columns of a matrix input */
    struct krn_qact act_embd;    /* (n_ub, n_embd) */
    struct krn_qact act_att;     /* (n_ub, n_head*head_dim) */
    struct krn_qact act_ff;      /* (n_ub, n_ff) */
    eng_qk_hook_fn hook;
    void *hook_ud;
    uint64_t hook_mask;
    const volatile int *cancel;
    int scan_only;               /* see eng_ctx_set_scan_only */
    struct eng_cuda_ctx *cuda;   /* device KV cache and scratch (device = "cuda"), owned; the
                                    CPU buffers above are then not allocated */
};

/* The last token eng_sampler_sample keeps for these logits after top-k and top-p, as its
 * (logit, id) in the order (descending logit, ascending id); *ib = INT32_MAX where every
 * candidate (within 40 of the maximum) is kept. For tests of the cuts. */
void eng__sampler_cut(struct eng_sampler *s, const float *logits, float *lb, int32_t *ib);

/* A device that picks tokens itself: whether s is greedy, its parameters, and the uniform
 * draw eng_sampler_sample would make next (saved: the generator before it, for
 * eng__sampler_undraw where the device did not use the draw). */
int eng__sampler_greedy(const struct eng_sampler *s);
const struct eng_sample_params *eng__sampler_params(const struct eng_sampler *s);
double eng__sampler_draw(struct eng_sampler *s, uint64_t saved[4]);
void eng__sampler_undraw(struct eng_sampler *s, const uint64_t saved[4]);

/* eng_ctx_prefill (n >= 1 tokens: a prompt or one decode step) and the next token as smp
 * picks it. On the CPU the last token's logits go to logits (n_vocab floats) and smp samples
 * them; on a device the pick is made there and only the token comes back (logits is used
 * only where the device leaves the draw to the host). */
int eng__ctx_prefill_pick(struct eng_ctx *c, const int32_t *tokens, size_t n,
                          struct eng_sampler *smp, float *logits, int32_t *next);
