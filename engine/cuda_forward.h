/* engine/cuda_forward.h - private to engine/: the device path of the forward pass (CUDA).
 *
 * A struct eng_cuda_model holds the weights of an eng_model on one GPU (uploaded once,
 * dequantised to fp16 on the device); a struct eng_cuda_ctx holds, for one context, the KV
 * cache of n_ctx tokens and the scratch of one ubatch of up to n_ub tokens, all allocated at
 * creation: nothing grows afterwards. The ubatch scratch is shared between stages (the f32
 * projections, the FFN activations and the logits slice take turns in one buffer; the normed
 * input, rotated q and attention output in another), so that an 8B-shape context of 2048
 * tokens needs about 0.41 GiB beside the weights. The forward pass is the same computation as forward.c
 * (cuBLAS GEMMs with fp16 operands and fp32 accumulation; RMSNorm, RoPE, flash-style causal
 * attention, SwiGLU and argmax kernels of kernels/cuda/).
 *
 * Q/K hook: for hooked layers the pre-RoPE q and k rows are copied asynchronously into pinned
 * host buffers as soon as the layer's projection is done; the hooks run on the calling thread,
 * in layer order, while the GPU computes the later layers.
 *
 * Built only with the CUDA backend (S3_HAVE_CUDA); otherwise every function returns
 * S3_EDEVICE ("not built with CUDA"). One thread at a time per model and its contexts. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

struct eng_model;
struct eng_cuda_model;
struct eng_cuda_ctx;

struct krn_cuda_dev;

/* Device-side hook: called on the calling thread while the ubatch is being enqueued, for each
 * hooked layer in order, right after that layer's projection. d_q (n, n_head*hd) and d_k
 * (n, n_head_kv*hd) are f32 device rows ld floats apart, valid in stream order only: the
 * callee enqueues its own work (e.g. krn_cuda_sae_encode, then an asynchronous copy of the
 * records) on `dev` (the context's device, eng__cuda_ctx_dev) and must not keep the pointers.
 * d_q is NULL at the last layer of a scan ubatch with no_q (only its k rows are projected).
 * Nonzero return cancels the ubatch (S3_ECANCELED). */
typedef int (*eng_cuda_dev_hook_fn)(void *ud, struct krn_cuda_dev *dev, int layer, int pos0,
                                    int n, const float *d_q, const float *d_k, int ld);

/* What a ubatch reports to the hook and checks for cancellation (all may be NULL/0). */
struct eng_cuda_hook {
    eng_qk_hook_fn fn;             /* host hook: pre-RoPE q, k rows in pinned host memory */
    void *ud;
    uint64_t mask;                 /* bit i = layer i */
    const volatile int *cancel;    /* checked between layers */
};

/* Options of a scan ubatch (eng__cuda_ubatch_scan). */
struct eng_cuda_scan {
    int full;                      /* 1: run every layer (as eng__cuda_ubatch without logits) */
    int no_q;                      /* nobody reads q: the host hook gets q = NULL (only k rows
                                      are copied) and the last layer projects k alone */
    eng_cuda_dev_hook_fn dev_fn;   /* device hook for the hooked layers, or NULL */
    void *dev_ud;
};

/* Per-stage device time, accumulated while profiling is on (milliseconds). */
struct eng_cuda_stats {
    double gemm_ms, attn_ms, other_ms, copy_ms, logits_ms;
    double hook_dev_ms;            /* work enqueued by device hooks (e.g. SAE encoding) */
    double total_ms;               /* first to last event of each ubatch */
    long long n_tokens, n_ubatch;
};

/* 1 when built with CUDA and a GPU is present. */
int eng__cuda_available(void);

/* Upload m's weights to device `ordinal`. *out is new. Borrows m (and its GGUF mapping) for
 * the duration of the call only. S3_EDEVICE / S3_ENOMEM with a message in err. */
int eng__cuda_model_new(const struct eng_model *m, int ordinal, struct eng_cuda_model **out,
                        struct s3_errinfo *err);
void eng__cuda_model_free(struct eng_cuda_model *cm);
size_t eng__cuda_model_bytes(const struct eng_cuda_model *cm); /* device bytes of weights */

/* A device context: KV cache for n_ctx positions, scratch for n_ub tokens per ubatch.
 * Borrows m and cm (they must outlive it). */
int eng__cuda_ctx_new(const struct eng_model *m, struct eng_cuda_model *cm, int n_ctx, int n_ub,
                      struct eng_cuda_ctx **out, struct s3_errinfo *err);
void eng__cuda_ctx_free(struct eng_cuda_ctx *dc);
size_t eng__cuda_ctx_bytes(const struct eng_cuda_ctx *dc);    /* device bytes of the context */

/* One ubatch: n tokens (1 <= n <= n_ub) at positions pos0..pos0+n-1 (pos0 + n <= n_ctx),
 * appending to the device KV cache. logits_last: n_vocab floats of the last token, or NULL;
 * logits_all: (n, n_vocab), or NULL. hook may be NULL. Returns 0, S3_EINVAL, S3_ECANCELED (a
 * hook returned nonzero or *cancel was set) or S3_EDEVICE (message in err). */
int eng__cuda_ubatch(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                     float *logits_last, float *logits_all, const struct eng_cuda_hook *hook,
                     struct s3_errinfo *err);
/* The scan flavour: the caller needs nothing but the hooked layers' projections (pre-RoPE
 * q/k through the host hook and/or the device hook of sc). Unless sc->full, the ubatch stops
 * right after the projection of the highest hooked layer: no RoPE, KV write, attention or FFN
 * there, no later layer, no logits. The KV cache of the skipped parts is left stale, so the
 * context must be reset (start again at position 0) before anything but scan ubatches uses
 * it; earlier layers' KV is written, so a document may span several scan ubatches. With
 * sc->dev_fn set and hook->fn NULL nothing is copied to the host by the engine. Returns as
 * eng__cuda_ubatch. */
int eng__cuda_ubatch_scan(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_cuda_hook *hook, const struct eng_cuda_scan *sc,
                          struct s3_errinfo *err);
/* A ubatch whose next token is picked on the device, so that only its id comes back: sp
 * NULL, the argmax of the last token's logits (lowest id on ties); else one draw as
 * eng_sampler_sample makes it, with the uniform u in [0, 1) (krn_cuda_sample). *how (may be
 * NULL): ENG_CUDA_PICK_DRAW where u was used, ENG_CUDA_PICK_NO_DRAW where not (greedy, or no
 * finite logit), ENG_CUDA_PICK_HOST where the host must draw from the logits
 * (eng__cuda_last_logits): a cut among more equal candidates than the device sorts, or a
 * vocabulary over 262144. hook as for eng__cuda_ubatch. */
enum { ENG_CUDA_PICK_NO_DRAW = 0, ENG_CUDA_PICK_DRAW = 1, ENG_CUDA_PICK_HOST = 2 };
int eng__cuda_ubatch_pick(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                          const struct eng_sample_params *sp, double u,
                          const struct eng_cuda_hook *hook, int32_t *next, int *how,
                          struct s3_errinfo *err);
/* The argmax pick without a hook. */
int eng__cuda_ubatch_argmax(struct eng_cuda_ctx *dc, const int32_t *tokens, int n, int pos0,
                            int32_t *next, struct s3_errinfo *err);
/* The last picked ubatch's logits of its last token (n_vocab floats). */
int eng__cuda_last_logits(struct eng_cuda_ctx *dc, float *out, struct s3_errinfo *err);

/* The context's device (borrowed), for device hooks and callers' own buffers. */
struct krn_cuda_dev *eng__cuda_ctx_dev(const struct eng_cuda_ctx *dc);

void eng__cuda_ctx_set_profile(struct eng_cuda_ctx *dc, int on);
void eng__cuda_ctx_stats(const struct eng_cuda_ctx *dc, struct eng_cuda_stats *out);

/* ---- device SAE scan (used by server/scan.c) -----------------------------------------------
 *
 * The scan's pipeline on the GPU: the keys of every indexed layer and kv head are Top-k
 * encoded on the device straight from the projection rows (a device hook of the scan ubatch,
 * krn_cuda_sae_encode), and only the records (position, feature, activation) are copied, as
 * one asynchronous copy per pass, into one of two pinned host buffers. A pass is submitted
 * without waiting; the caller writes the records of pass i while the GPU computes pass i+1:
 *
 *     eng__cuda_sae_scan_new(ctx, sae, B, KI, &ss, &err);
 *     submit(pass 0);
 *     for (i = 0; ; i++) {
 *         if (more) submit(pass i+1);          // returns at once: the GPU queues it
 *         wait(&ids, &acts, &n_out);           // records of pass i (host sync per pass only)
 *         write the index for pass i;          // overlaps with the GPU's pass i+1
 *     }
 *
 * Records of a pass: ids (n_unit, n_out, k) u16 and acts (n_unit, n_out, k) f32, unit
 * u = slot * n_head_kv + kv_head (slot = indexed layer, ascending), row r = position
 * prefix + r of the pass; per row the k strongest latents by activation descending, then id
 * ascending (the SAE contract's order; the first k of a Top-K code for k <= K).
 *
 * Device memory: the SAE encoders (n_unit * n_dict * (d + 1) + d floats), the records of one
 * pass and the encoder scratch (n_ub * (d + n_dict) floats), all allocated here: nothing grows
 * with the document. One thread at a time, the context's own thread. */
struct eng_sae;
struct eng_ctx;
struct eng_cuda_sae_scan;

/* 1 when c runs on a device (model loaded with device "cuda"). */
int eng__cuda_ctx_on_device(const struct eng_ctx *c);

/* For context c (device "cuda"; borrowed, must outlive ss) and SAE s (borrowed, must outlive
 * ss; must fit c's model): upload the encoders and allocate the buffers for passes of at most
 * n_rows indexed rows, k latents kept per row (1 <= k <= the SAE's k). *out is new; free with
 * eng__cuda_sae_scan_free (NULL allowed). S3_EDEVICE when c is not on a device or the device
 * fails, S3_ENOMEM, S3_EINVAL for bad sizes. Where a second context of c's shape and its
 * buffers fit with the first in 256 MiB (small models) and S3_CUDA_SCAN_STREAMS is not 1,
 * successive passes alternate between c and a context of its own on a stream of its own, so
 * that two run at once; that context takes c's GEMM choices (the records are the same bit for
 * bit) and lives as long as ss. */
int eng__cuda_sae_scan_new(struct eng_ctx *c, const struct eng_sae *s, int n_rows, int k,
                           struct eng_cuda_sae_scan **out, struct s3_errinfo *err);
void eng__cuda_sae_scan_free(struct eng_cuda_sae_scan *ss);

/* Queue one pass: tokens ids (n, borrowed for the call; copied) at positions 0..n-1 of the
 * context (its KV cache is reused from position 0, the scan flavour: nothing past the highest
 * indexed layer's projection runs), the first `prefix` of them a re-read prefix whose keys
 * are not encoded (0 <= prefix < n, n - prefix <= n_rows, n <= the context's n_ctx). Returns
 * once the work is queued. At most two passes in flight: S3_EBUSY for a third (wait first).
 * Checks the context's cancel flag between layers (S3_ECANCELED). On any error every pass in
 * flight is dropped (the device is synchronised first). */
int eng__cuda_sae_scan_submit(struct eng_cuda_sae_scan *ss, const int32_t *ids, int n,
                              int prefix, struct s3_errinfo *err);
/* Wait for the oldest pass in flight and return its records: *ids, *acts borrowed (pinned
 * host memory), valid until the second submit after that pass's own; *n_out = its n - prefix.
 * S3_EINVAL when nothing is in flight, S3_EDEVICE (everything in flight dropped). */
int eng__cuda_sae_scan_wait(struct eng_cuda_sae_scan *ss, const uint16_t **ids,
                            const float **acts, int *n_out, struct s3_errinfo *err);
/* Drop every pass in flight (waits for the device). */
void eng__cuda_sae_scan_drain(struct eng_cuda_sae_scan *ss);
/* Passes in flight (0..2). */
int eng__cuda_sae_scan_in_flight(const struct eng_cuda_sae_scan *ss);
/* Streams its passes run on: 2 with a context of its own beside c's, else 1 (0 for NULL). */
int eng__cuda_sae_scan_streams(const struct eng_cuda_sae_scan *ss);
