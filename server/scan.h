/* server/scan.h - the scan driver (text -> model keys -> SAE features -> index) and the
 * query encoder (question -> model queries -> weighted SAE features), DESIGN.md §2, §4.
 *
 * Scan: the text is tokenized in windows that end at line breaks (deterministic, so a resumed
 * scan sees the same tokens), cut into chunks of B tokens, and each chunk is prefilled with
 * no KV from earlier chunks (positions restart per chunk). The last W tokens of the previous
 * chunk are re-read as a prefix so that keys at a chunk start have context; their keys are
 * not indexed twice. The pre-RoPE keys of the SAE's layers are encoded per kv head and
 * written as postings, one transaction per chunk, with the sentence-aligned passages (64..128
 * tokens, sentences of at most 48 tokens, character offsets into the text) that end inside
 * what has been scanned. The KV cache is reset per chunk: memory is bounded by B + W, not by
 * the document's length.
 *
 * On a GPU (model loaded with device "cuda") the keys are Top-k encoded on the device, only
 * the records (position, feature, activation) come back, asynchronously into pinned memory,
 * and the scan is pipelined: the GPU computes chunk i+1 while this thread writes the index of
 * chunk i (one host wait per chunk, none per token or layer). The index written is the same
 * as the CPU path's up to the GPU's rounding (fp16 GEMMs, fp32 encoder).
 *
 * Usage:
 *     struct srv_scan *sc;  int64_t doc;
 *     srv_scan_new(model, sae, NULL, &sc, &err);
 *     srv_scan_document(sc, db, text, len, &dopts, &doc, &stats, &err);
 *     srv_scan_query(sc, "Who wrote it?", 13, 0, &feats, &n_feats, &err);  // idx_query.feats
 *     srv_scan_free(sc);
 *
 * Threads: a srv_scan (engine context, encoder scratch) belongs to one thread at a time; the
 * model and SAE it borrows may be shared. Cancellation: set *opts->cancel from any thread;
 * the scan stops between layers and chunks with S3_ECANCELED, leaving the document
 * resumable. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "idx.h"
#include "s3.h"
#include "sae.h"

#define SRV_SCAN_CHUNK       2048   /* B: tokens indexed per forward pass */
#define SRV_SCAN_OVERLAP     128    /* W: tokens of the previous chunk re-read as a prefix */
#define SRV_SCAN_PASS_MIN    64     /* a passage closes at the first sentence start past this */
#define SRV_SCAN_SENT_MAX    48     /* longer sentences are split */
#define SRV_SCAN_INDEX_K     4      /* strongest SAE features indexed per token and slot */
#define SRV_SCAN_QFEATS      32     /* query features kept per (layer, kv head) */
#define SRV_SCAN_MAX_QTOKENS 1024   /* longest question encoded */

/* Default SAE file for a model file: "models/sae-<model file name without .gguf>.s3sae" (the
 * file `s3serve train-sae` writes by default). Writes into buf (n bytes); returns buf. */
const char *srv_scan_default_sae(const char *model_path, char *buf, size_t n);

/* How a question's queries become feature weights. */
enum srv_scan_qmethod {
    SRV_SCAN_Q_DECODER = 1, /* w(f) = sum over tokens and heads of the K largest positive
                             * q . W_dec[f] (what a key's feature f adds to q.k); default */
    SRV_SCAN_Q_ENCODE = 2,  /* w(f) = sum of the SAE code of q (the keys' SAE applied to q) */
};

struct srv_scan_opts {
    int qmethod;         /* enum srv_scan_qmethod; 0 = SRV_SCAN_Q_DECODER */
    int chunk;           /* B; 0 = SRV_SCAN_CHUNK. B + W must fit the model window */
    int overlap;         /* W; 0 = SRV_SCAN_OVERLAP, < 0 = none */
    int n_ctx;           /* engine context length; 0 = B + W */
    int index_k;         /* features indexed per token and (layer, kv head): the strongest of
                          * the SAE's k; 0 = min(k, SRV_SCAN_INDEX_K), < 0 = all k */
    int host_sae;        /* 1: with a model on a GPU, still copy the keys to the host and
                          * encode them there (the CPU path's encoder; for comparisons) */
    int qdec_ref;        /* 1: the question's decoder alignment row by row with scalar dot
                          * products (the reference; the default, one GEMM per block of
                          * rows, gives the same features and weights bit for bit) */
};

struct srv_scan;

/* A scanner for model m and SAE s (both borrowed; they must outlive it, and s must fit m;
 * s is only read, except that its file image is built once here for its hash).
 * opts may be NULL. *out is new; free with srv_scan_free(). S3_EINVAL for a chunk size out of
 * range or an SAE made for another model. */
int srv_scan_new(const struct eng_model *m, struct eng_sae *s,
                 const struct srv_scan_opts *opts, struct srv_scan **out, struct s3_errinfo *err);
void srv_scan_free(struct srv_scan *sc);
/* The engine context of the scanner (borrowed), e.g. for generation after retrieval. */
struct eng_ctx *srv_scan_ctx(struct srv_scan *sc);

/* Progress: bytes of the text consumed, its size, positions indexed so far. Return nonzero to
 * cancel (the scan then stops with S3_ECANCELED at the next chunk boundary). */
typedef int (*srv_scan_progress_fn)(void *ud, int64_t done_bytes, int64_t total_bytes,
                                    int64_t n_tokens);

struct srv_scan_doc_opts {
    const char *tenant;             /* NULL = "" */
    const char *name;               /* NULL = "" */
    const volatile int *cancel;     /* may be NULL; checked between layers and chunks */
    srv_scan_progress_fn progress;  /* may be NULL; called after each committed chunk */
    void *progress_ud;
    int no_resume;                  /* 1: never continue an unfinished scan of the same text */
    int no_index;                   /* 1: prefill the chunks only (no hook, no database; for
                                     * measuring the index overhead); db may be NULL */
    int64_t stop_after_chunks;      /* > 0: return S3_ECANCELED after this many chunks (tests) */
    /* may be NULL: sees every chunk right after it was committed (borrowed for the call) */
    int (*on_chunk)(void *ud, const struct idx_chunk *c);
    void *chunk_ud;
};

struct srv_scan_stats {
    int64_t n_tokens;       /* document positions */
    int64_t n_chunks;       /* chunks committed in this call */
    int64_t n_scanned;      /* positions prefilled and indexed in this call */
    int64_t resumed_at;     /* first position of this call (> 0 when a scan was resumed) */
    double tokenize_ms, forward_ms, encode_ms, write_ms, total_ms;
};

/* Check that text is something to index: not empty, no NUL bytes (binary), valid UTF-8.
 * S3_EINVAL with the byte offset of the first problem. */
int srv_scan_check_text(const char *text, size_t len, struct s3_errinfo *err);

/* Index text (borrowed, len bytes, need not be NUL-terminated) as a new document of db, or
 * continue an unfinished scan of the same text, model and SAE. *doc = its id (also set on
 * S3_ECANCELED and on errors after the document row was made). st may be NULL. On error the
 * document stays 'scanning' (resumable) with everything committed before. */
int srv_scan_document(struct srv_scan *sc, struct idx_db *db, const char *text, size_t len,
                      const struct srv_scan_doc_opts *o, int64_t *doc,
                      struct srv_scan_stats *st, struct s3_errinfo *err);

/* Query features of a question: every token's pre-RoPE query at the indexed layers, each
 * query head taken to the features of its kv group's SAE (opts->qmethod); weights summed per
 * (layer, kv head, feature); the top_per_slot (0 = SRV_SCAN_QFEATS) features of each
 * (layer, kv head) kept,
 * their weights normalised to sum 1 per (layer, kv head). *feats is new (free()).
 * S3_EINVAL for an empty question, S3_ETOOBIG over SRV_SCAN_MAX_QTOKENS tokens. */
int srv_scan_query(struct srv_scan *sc, const char *question, size_t len, int top_per_slot,
                   struct idx_qfeat **feats, size_t *n_feats, struct s3_errinfo *err);
/* The same for a question already tokenized: ids (n, borrowed). */
int srv_scan_query_ids(struct srv_scan *sc, const int32_t *ids, size_t n, int top_per_slot,
                       struct idx_qfeat **feats, size_t *n_feats, struct s3_errinfo *err);
