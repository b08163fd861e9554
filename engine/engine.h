/* engine/engine.h - the model runtime: GGUF model load, tokenizer, chat template, forward
 * pass (batched prefill and single-token decode), Q/K capture hook, sampling, generation.
 *
 * No HTTP, JSON or SQL here. Threads: an eng_model is immutable after load and may be shared
 * by threads; an eng_ctx (KV cache + scratch) belongs to one thread at a time.
 *
 * Usage:
 *     struct eng_model *m;  struct eng_ctx *c;
 *     eng_model_load(path, NULL, &m, &err);
 *     eng_ctx_new(m, NULL, &c, &err);
 *     int32_t *ids; size_t n; eng_tok_encode(eng_model_tok(m), text, len, ENG_TOK_SPECIAL, &ids, &n);
 *     eng_ctx_prefill(c, ids, n, logits);          // logits of the last token (n_vocab)
 *     eng_ctx_decode(c, next_id, logits);          // one more token
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "s3.h"

/* ---- model ------------------------------------------------------------------------------- */

enum eng_rope_type { ENG_ROPE_NORM = 0 /* adjacent pairs (llama.cpp "norm") */,
                     ENG_ROPE_NEOX = 2 /* halves (llama.cpp "neox") */ };

struct eng_hparams {
    char arch[32];       /* "llama", "qwen2", ... */
    int n_vocab;
    int n_ctx_train;     /* model window */
    int n_embd;          /* d_model */
    int n_layer;
    int n_head;          /* query heads */
    int n_head_kv;       /* kv heads (GQA) */
    int head_dim;        /* n_embd / n_head unless the file says otherwise */
    int n_ff;
    float rms_eps;
    float rope_base;
    int rope_type;       /* enum eng_rope_type */
    /* llama3-style rope scaling (rope_scaling_type "llama3"); factor 0 = none */
    float rope_scale_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;
    int tied_output;     /* output head shares token_embd */
    char model_sha256[65]; /* hash of the whole file */
};

struct eng_model_opts {
    int n_threads;       /* 0 = all online cores */
    const char *device;  /* "cpu" (default), "cuda", or "cpu-f32": the CPU multiplying the
                          * dequantised weights by f32 activations instead of 8-bit ones (the
                          * reference path: about as exact as the GPU's fp16 GEMMs with fp32
                          * sums; about 18 times slower than "cpu") */
};

struct eng_model;
struct eng_tokenizer;

/* Load a GGUF model (mmap). opts may be NULL. *out is new; free with eng_model_free(). */
int eng_model_load(const char *path, const struct eng_model_opts *opts, struct eng_model **out,
                   struct s3_errinfo *err);
void eng_model_free(struct eng_model *m);
const struct eng_hparams *eng_model_hparams(const struct eng_model *m); /* borrowed */
const struct eng_tokenizer *eng_model_tok(const struct eng_model *m);   /* borrowed */

/* ---- tokenizer --------------------------------------------------------------------------- */

enum {
    ENG_TOK_BOS = 1,      /* prepend BOS */
    ENG_TOK_EOS = 2,      /* append EOS */
    ENG_TOK_SPECIAL = 4,  /* recognise special/control token text such as <|im_start|> */
};

/* Build from GGUF metadata (tokenizer.ggml.*). Called by eng_model_load; public for tests. */
struct eng_gguf;
int eng_tok_new(const struct eng_gguf *g, struct eng_tokenizer **out, struct s3_errinfo *err);
void eng_tok_free(struct eng_tokenizer *t);

/* Encode UTF-8 text (invalid bytes handled as llama.cpp does). *ids is new (free()). */
int eng_tok_encode(const struct eng_tokenizer *t, const char *text, size_t len, int flags,
                   int32_t **ids, size_t *n_ids);
/* Decode ids to bytes; *text is new and NUL-terminated. flags: ENG_TOK_SPECIAL renders
 * control tokens' text, otherwise they are skipped. */
int eng_tok_decode(const struct eng_tokenizer *t, const int32_t *ids, size_t n, int flags,
                   char **text, size_t *len);
/* Bytes of one token (borrowed buffer of the tokenizer's, valid for its lifetime).
 * Control tokens give their text. Returns length or a negative code. */
int eng_tok_piece(const struct eng_tokenizer *t, int32_t id, const char **bytes);
int eng_tok_n_vocab(const struct eng_tokenizer *t);
int32_t eng_tok_bos(const struct eng_tokenizer *t);
int32_t eng_tok_eos(const struct eng_tokenizer *t);
/* 1 when the model asks for BOS at the start of a prompt (tokenizer.ggml.add_bos_token). */
int eng_tok_add_bos(const struct eng_tokenizer *t);
/* 1 when id ends generation (EOS, EOT, <|im_end|> and the like). */
int eng_tok_is_eog(const struct eng_tokenizer *t, int32_t id);

struct eng_chat_msg {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
};
/* Render messages with the model's declared chat template (ChatML family supported, with
 * the default system prompt the SmolLM2 template inserts). *out is new (free()). */
int eng_chat_apply(const struct eng_tokenizer *t, const struct eng_chat_msg *msgs, size_t n,
                   int add_generation_prompt, char **out, struct s3_errinfo *err);

/* ---- forward ------------------------------------------------------------------------------ */

/* Called during prefill for each hooked layer, after the Q and K projections and before RoPE.
 * q: (n_tokens, n_head * head_dim), k: (n_tokens, n_head_kv * head_dim), row-major, borrowed
 * for the duration of the call. pos0 is the position of the first token. Return nonzero to
 * cancel the forward pass (it then returns S3_ECANCELED). */
typedef int (*eng_qk_hook_fn)(void *ud, int layer, int pos0, int n_tokens, const float *q,
                              const float *k);

struct eng_ctx_opts {
    int n_ctx;           /* KV cache length; 0 = min(model window, 8192) */
    int n_batch;         /* max tokens per forward step (longer prefills are split); 0 =
                            n_ctx. Capped at 512 on the CPU; on a GPU at 4096, or at 2048
                            when 0 */
};

struct eng_ctx;

int eng_ctx_new(const struct eng_model *m, const struct eng_ctx_opts *opts, struct eng_ctx **out,
                struct s3_errinfo *err);
void eng_ctx_free(struct eng_ctx *c);
/* Forget the KV cache (position back to 0). */
void eng_ctx_reset(struct eng_ctx *c);
int eng_ctx_pos(const struct eng_ctx *c);
int eng_ctx_n_ctx(const struct eng_ctx *c);
/* Hook every layer whose bit is set in layer_mask (bit i = layer i; NULL hook = none). */
void eng_ctx_set_qk_hook(struct eng_ctx *c, eng_qk_hook_fn fn, void *ud, uint64_t layer_mask);
/* Scan mode (default off): a prefill that asks for no logits stops right after the hooked
 * layer with the highest index — no later layers, no attention or FFN of that layer, and
 * their KV entries are not written. For indexing, where only the hooked Q/K are wanted; every
 * chunk then starts from an empty cache (eng_ctx_reset). */
void eng_ctx_set_scan_only(struct eng_ctx *c, int on);
/* Cancellation flag checked between layers (may be NULL). */
void eng_ctx_set_cancel(struct eng_ctx *c, const volatile int *cancel);

/* Run n tokens at positions pos..pos+n-1, appending to the KV cache. n may exceed n_batch;
 * it is split. logits: NULL, or n_vocab floats for the last token; logits_all: NULL, or
 * (n, n_vocab) for every token. S3_ETOOBIG when the cache would overflow. */
int eng_ctx_prefill(struct eng_ctx *c, const int32_t *tokens, size_t n, float *logits,
                    float *logits_all);
/* One token (the single-token fast path). logits: n_vocab floats. */
int eng_ctx_decode(struct eng_ctx *c, int32_t token, float *logits);

/* ---- sampling and generation --------------------------------------------------------------- */

struct eng_sample_params {
    float temperature;   /* 0 = greedy */
    float top_p;         /* 1 = off */
    int top_k;           /* 0 = off */
    uint64_t seed;
};

struct eng_sampler;
int eng_sampler_new(const struct eng_sample_params *p, int n_vocab, struct eng_sampler **out);
void eng_sampler_free(struct eng_sampler *s);
/* Pick a token from logits (modified in place). */
int32_t eng_sampler_sample(struct eng_sampler *s, float *logits);

/* Called for each new piece of text; return nonzero to stop (cancel). */
typedef int (*eng_emit_fn)(void *ud, const char *text, size_t len);

enum eng_finish { ENG_FINISH_LENGTH = 0, ENG_FINISH_STOP = 1, ENG_FINISH_CANCEL = 2 };

struct eng_gen_params {
    struct eng_sample_params sample;
    int max_tokens;
    const char *const *stop; /* stop strings (not emitted) */
    size_t n_stop;
};

struct eng_gen_result {
    int finish;          /* enum eng_finish */
    int n_prompt;
    int n_completion;
    double prefill_ms, decode_ms;
};

/* Prefill prompt tokens (the context is reset first), then decode up to max_tokens, emitting
 * text as it becomes final (never splitting a UTF-8 character, holding back a possible stop
 * string prefix). Stops at EOG tokens and stop strings. */
int eng_generate(struct eng_ctx *c, const int32_t *prompt, size_t n_prompt,
                 const struct eng_gen_params *p, eng_emit_fn emit, void *ud,
                 struct eng_gen_result *res, struct s3_errinfo *err);
