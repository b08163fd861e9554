/* engine/sae.h - Top-k sparse autoencoders over pre-RoPE attention keys: file format, encoder,
 * trainer (DESIGN.md §4 "SAE").
 *
 * One SAE per (indexed layer, kv head), input dimension d = head_dim:
 *     z  = TopK(ReLU(W_enc (x - b_dec) + b_enc), k)        z: n_dict, exactly k entries kept
 *     x^ = W_dec z + b_dec                                  decoder columns have unit norm
 * Keys are encoded with the SAE of their kv head; the queries of the heads in a kv group use
 * the same SAE (query head h -> kv head h / (n_head / n_head_kv)).
 *
 * Usage (scan path):
 *     struct eng_sae *s;  struct eng_sae_enc *e;
 *     eng_sae_load("models/sae-x.s3sae", eng_model_hparams(m), &s, &err);
 *     eng_sae_enc_new(s, 256, &e);
 *     int slot = eng_sae_slot_of_layer(s, layer);            // -1: layer not indexed
 *     eng_sae_encode(e, slot, kv_head, k + kv_head * d, n_head_kv * d, n_tokens, ids, acts);
 *     // ids: (n_tokens, k) uint16, acts: (n_tokens, k) float, per row by activation desc
 *
 * Encoder contract (fast and reference agree exactly, ids and activations, bit for bit):
 *   - the pre-activation of latent j is   pre_j = (float)(sum_i (double)W_enc[j,i] *
 *     (double)(x_i - b_dec_i) + (double)b_enc[j])   (i ascending), a_j = pre_j > 0 ? pre_j : 0;
 *   - the k selected latents are the k largest a_j, ties broken by the lowest id; a row always
 *     gets exactly k ids (when fewer than k latents are positive the rest have activation 0);
 *   - output order: activation descending, then id ascending.
 *   The fast path ranks with a float GEMM (krn_sgemm), keeps every latent within a rigorous
 *   rounding-error margin of the k-th value, then recomputes those exactly as above.
 *
 * File format (".s3sae", version 1). All integers little-endian, floats IEEE-754 binary32 LE.
 *
 *   offset  size                     field
 *   0       8                        magic "S3SAE\x1a\n\0"
 *   8       4   u32                  version (1)
 *   12      4   u32                  header_bytes = offset of the tensor data (multiple of 64)
 *   16      8   u64                  file_bytes: total size of the file, checksum included
 *   24      64  char[64]             model sha256, lower-case hex (the GGUF file the keys came from)
 *   88      32  char[32]             model arch, NUL-padded ("llama")
 *   120     4   i32                  n_layer of the model
 *   124     4   i32                  n_head (query heads)
 *   128     4   i32                  n_head_kv (one SAE per kv head and indexed layer)
 *   132     4   i32                  d_head (SAE input dimension)
 *   136     4   i32                  n_dict (latents per SAE, 1..65536)
 *   140     4   i32                  k (active latents per vector, 1..min(n_dict, 256))
 *   144     4   i32                  n_idx: number of indexed layers (1..64)
 *   148     4   i32                  dtype of the tensors (0 = f32)
 *   152     8   u64                  tokens trained on
 *   160     8   u64                  training seed
 *   168     88                       reserved, zero
 *   256     4*n_idx            i32   indexed layer ids, strictly ascending, < n_layer
 *   ...     4*8*n_idx*n_head_kv f32  stats[slot][kv_head][ENG_SAE_N_STATS] (enum eng_sae_stat)
 *   ...                              zero padding up to header_bytes
 *   header_bytes                     per slot (indexed layer, ascending) per kv head:
 *                 4*n_dict*d_head        W_enc (n_dict, d_head)  row j = encoder of latent j
 *                 4*n_dict               b_enc (n_dict)
 *                 4*n_dict*d_head        W_dec (n_dict, d_head)  row j = decoder column of j
 *                 4*d_head               b_dec (d_head)
 *   file_bytes-64 64  char[64]           sha256 (lower-case hex) of bytes [0, file_bytes - 64)
 *
 * Errors of eng_sae_load: S3_ENOTFOUND/S3_EIO (open/read), S3_EFORMAT (not an SAE file,
 * unsupported version, truncated, trailing bytes, bad dimensions, checksum mismatch),
 * S3_EINVAL (valid file made for another model, or dimensions that do not fit the model).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "s3.h"

#define ENG_SAE_VERSION    1
#define ENG_SAE_MAX_LAYERS 64
#define ENG_SAE_MAX_DICT   65536
#define ENG_SAE_MAX_K      256
#define ENG_SAE_MAX_DHEAD  1024
#define ENG_SAE_N_STATS    8

/* Training statistics stored per (slot, kv head); measured on held-out text. */
enum eng_sae_stat {
    ENG_SAE_STAT_FVU_K = 0,    /* fraction of variance unexplained, keys */
    ENG_SAE_STAT_FVU_Q = 1,    /* same, queries of the kv group encoded with this SAE */
    ENG_SAE_STAT_DEAD = 2,     /* fraction of latents that never fired (held-out keys) */
    ENG_SAE_STAT_FREQ_MEAN = 3,/* mean firing frequency of the live latents */
    ENG_SAE_STAT_FREQ_MAX = 4, /* firing frequency of the most frequent latent */
    ENG_SAE_STAT_FIDELITY = 5, /* overlap of top-32 positions by q.k vs by feature score */
};

/* Header fields (read-only view; owned by the eng_sae). */
struct eng_sae_info {
    char model_sha256[65];
    char arch[32];
    int n_layer, n_head, n_head_kv, d_head;
    int n_dict, k;
    int n_idx;
    int layers[ENG_SAE_MAX_LAYERS]; /* first n_idx used, ascending */
    uint64_t n_tokens_trained;
    uint64_t seed;
};

struct eng_sae;

/* Allocate an SAE with zero weights and zero stats for the given header (layers must be
 * ascending and distinct). *out is new; free with eng_sae_free(). S3_EINVAL on bad dims. */
int eng_sae_new(const struct eng_sae_info *info, struct eng_sae **out, struct s3_errinfo *err);

/* Load and verify a file (see the table above). expect: NULL, or the hparams of the model the
 * SAE will be used with (checks model sha256, arch, n_layer, n_head, n_head_kv, head_dim).
 * *out is new. */
int eng_sae_load(const char *path, const struct eng_hparams *expect, struct eng_sae **out,
                 struct s3_errinfo *err);
/* Same from a memory image (borrowed; copied). */
int eng_sae_load_mem(const void *data, size_t n, const struct eng_hparams *expect,
                     struct eng_sae **out, struct s3_errinfo *err);
/* Check that s fits the model (hash, arch, dims). S3_EINVAL with a message naming the field. */
int eng_sae_check_model(const struct eng_sae *s, const struct eng_hparams *hp,
                        struct s3_errinfo *err);

/* Write s to path (via a temporary file renamed into place), computing the checksum. */
int eng_sae_save(struct eng_sae *s, const char *path, struct s3_errinfo *err);
/* The file image (header, tensors, checksum) as eng_sae_save writes it; borrowed, valid until
 * the next mutation of s. */
int eng_sae_image(struct eng_sae *s, const void **data, size_t *n);
void eng_sae_free(struct eng_sae *s);

const struct eng_sae_info *eng_sae_get_info(const struct eng_sae *s); /* borrowed */
/* Slot (0..n_idx-1) of a model layer, or -1 when that layer is not indexed. */
int eng_sae_slot_of_layer(const struct eng_sae *s, int layer);
/* Bit i set for every indexed layer i (for eng_ctx_set_qk_hook). */
uint64_t eng_sae_layer_mask(const struct eng_sae *s);
/* kv head whose SAE encodes query head q_head. */
int eng_sae_kv_of_q_head(const struct eng_sae *s, int q_head);

/* Mutable stats row of (slot, head): ENG_SAE_N_STATS floats (enum eng_sae_stat). NULL when out
 * of range. Borrowed. */
float *eng_sae_stats(struct eng_sae *s, int slot, int head);
const float *eng_sae_stats_c(const struct eng_sae *s, int slot, int head);
void eng_sae_set_trained(struct eng_sae *s, uint64_t n_tokens, uint64_t seed);

/* Tensors of one SAE (borrowed pointers into s; NULL arguments are skipped). Shapes as in the
 * file table. S3_EINVAL when slot/head are out of range. */
struct eng_sae_unit {
    float *w_enc; /* (n_dict, d_head) */
    float *b_enc; /* (n_dict) */
    float *w_dec; /* (n_dict, d_head), rows unit norm */
    float *b_dec; /* (d_head) */
};
int eng_sae_get_unit(struct eng_sae *s, int slot, int head, struct eng_sae_unit *u);

/* ---- encoder --------------------------------------------------------------------------------- */

/* Plain reference encoder (the oracle of the tests): n rows of x, row r at x + r * ldx floats.
 * ids/acts: (n, k), written in the contract's order. Any thread; s is only read. */
int eng_sae_encode_ref(const struct eng_sae *s, int slot, int head, const float *x, size_t ldx,
                       int n, uint16_t *ids, float *acts);

/* Fast encoder workspace (scratch for max_rows rows; larger batches are split). One thread at
 * a time per workspace; s is borrowed and must outlive it. */
struct eng_sae_enc;
int eng_sae_enc_new(const struct eng_sae *s, int max_rows, struct eng_sae_enc **out);
void eng_sae_enc_free(struct eng_sae_enc *e);
int eng_sae_encode(struct eng_sae_enc *e, int slot, int head, const float *x, size_t ldx, int n,
                   uint16_t *ids, float *acts);

/* x^ of one code: out (d_head) = b_dec + sum_j acts[j] * W_dec[ids[j]]. */
int eng_sae_decode(const struct eng_sae *s, int slot, int head, const uint16_t *ids,
                   const float *acts, float *out);

/* ---- training ---------------------------------------------------------------------------------
 * One trainer per SAE. Inputs are scaled internally to unit per-dimension variance (the scale
 * and b_dec come from the first batch of data given) and folded back on export. Loss: MSE of
 * the reconstruction plus aux_coef * AuxK (the residual reconstructed from the top k_aux dead
 * latents, a latent being dead after dead_after vectors without firing); Adam; decoder rows
 * renormalised after every step (the gradient's radial part removed first). Deterministic for
 * a seed and a thread count (the only parallel part is krn_sgemm). */
struct eng_sae_train_opts {
    int n_dict;          /* default 1024 */
    int k;               /* default 16 */
    int k_aux;           /* 0 = min(256, n_dict / 2) */
    float aux_coef;      /* 0 = 4 (AuxK loss is an unnormalised squared error) */
    float lr;            /* 0 = 3e-3 (Adam, on unit-variance inputs) */
    int batch;           /* 0 = 256 */
    int epochs;          /* passes over each buffer given to fit; 0 = 1 */
    int dead_after;      /* 0 = max(4096, 32 * n_dict / k) vectors */
    long total_steps;    /* > 0: linear lr decay to 0 over the last 20% of these steps */
    uint64_t seed;
};

struct eng_sae_trainer;

/* d: input dimension; stream: distinguishes trainers sharing a seed (e.g. slot * 64 + head).
 * *out is new. S3_EINVAL on bad options. */
int eng_sae_trainer_new(int d, const struct eng_sae_train_opts *o, uint64_t stream,
                        struct eng_sae_trainer **out, struct s3_errinfo *err);
void eng_sae_trainer_free(struct eng_sae_trainer *t);
/* Train on x (n, d), which is shuffled in place; o->epochs passes of minibatches. */
int eng_sae_trainer_fit(struct eng_sae_trainer *t, float *x, size_t n);
/* Mean reconstruction loss (MSE per vector, in unit-variance units) of the last fit call. */
double eng_sae_trainer_last_loss(const struct eng_sae_trainer *t);
/* Latents dead right now (no firing within dead_after vectors). */
int eng_sae_trainer_n_dead(const struct eng_sae_trainer *t);
long eng_sae_trainer_steps(const struct eng_sae_trainer *t);
/* Copy the weights (raw input units) into unit (slot, head) of s; dims must match. */
int eng_sae_trainer_export(const struct eng_sae_trainer *t, struct eng_sae *s, int slot,
                           int head);

/* ---- evaluation helpers -------------------------------------------------------------------- */

/* FVU of vectors x (n, d, stride ldx) reconstructed by SAE (slot, head): sum |x - x^|^2 /
 * sum |x - mean(x)|^2. Uses the fast encoder e. */
int eng_sae_fvu(struct eng_sae_enc *e, int slot, int head, const float *x, size_t ldx, int n,
                double *fvu);

/* ---- training on a model (engine/sae_train.c) ---------------------------------------------- */

struct eng_sae_model_opts {
    int n_layers;                      /* indexed layers; 0 = eng_sae_default_layers() */
    int layers[ENG_SAE_MAX_LAYERS];
    size_t n_tokens;                   /* training tokens (default 120000) */
    size_t n_heldout_tokens;           /* held-out tokens for the figures (default 16384) */
    int chunk;                         /* tokens per forward pass (default 512) */
    size_t buffer;                     /* vectors per SAE held before a fit (default 32768) */
    struct eng_sae_train_opts train;   /* here epochs defaults to 4 */
    int fid_queries;                   /* query positions per held-out chunk (default 32) */
    int verbose;                       /* progress lines on stderr */
};

/* Default indexed layers for a model of n_layer layers (writes up to 4; returns the count). */
int eng_sae_default_layers(int n_layer, int *layers);

/* Figures measured on held-out text, per slot (averaged over kv heads). */
struct eng_sae_report {
    int n_idx;
    double fvu_k[ENG_SAE_MAX_LAYERS], fvu_q[ENG_SAE_MAX_LAYERS];
    double dead[ENG_SAE_MAX_LAYERS], freq_mean[ENG_SAE_MAX_LAYERS];
    double freq_max[ENG_SAE_MAX_LAYERS], fidelity[ENG_SAE_MAX_LAYERS];
    double fidelity_random;           /* expected overlap of a random top-32 choice */
    size_t n_tokens;                  /* held-out tokens evaluated */
    double encode_vec_per_s;          /* fast encoder, keys, all slots/heads */
    double encode_tok_per_s;          /* tokens/s when every indexed layer/kv head is encoded */
    double prefill_tok_per_s;         /* forward pass alone, for comparison */
    double collect_ms, train_ms, eval_ms;
};

/* Run the model over train_text (chunked, no BOS), stream keys of the indexed layers into
 * per-SAE buffers, train, then evaluate on heldout_text. Borrowed texts; *out is new. rep may
 * be NULL. The stats of the file are filled from the evaluation. */
int eng_sae_train_model(const struct eng_model *m, const char *train_text, size_t train_len,
                        const char *heldout_text, size_t heldout_len,
                        const struct eng_sae_model_opts *o, struct eng_sae **out,
                        struct eng_sae_report *rep, struct s3_errinfo *err);

/* Evaluate s on text (at most max_tokens tokens); writes stats into s and rep. */
int eng_sae_evaluate(const struct eng_model *m, struct eng_sae *s, const char *text, size_t len,
                     size_t max_tokens, int chunk, int fid_queries, struct eng_sae_report *rep,
                     struct s3_errinfo *err);
