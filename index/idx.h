/* index/idx.h - the document index: one SQLite database (WAL) holding documents, passages
 * (with an FTS5 table for BM25) and sparse feature postings; scoring and span retrieval.
 *
 * The index knows nothing of tensors, models or HTTP. A scan driver hands it, chunk by
 * chunk, the (feature id, activation) pairs an SAE produced for every token at every
 * (layer, kv head) "slot", plus sentence-aligned passages with character offsets; a query
 * hands it weighted query features and the question text and gets evidence spans back.
 *
 * Usage (writer):
 *     struct idx_db *db;  struct idx_writer *w;  int64_t id;
 *     idx_open("docs.db", NULL, &db, &err);
 *     idx_writer_begin(db, &meta, &w, &err);          // document row, status 'scanning'
 *     idx_writer_add(w, &chunk, &err);                // committed per segment or second
 *     ...
 *     idx_writer_finish(w, &err);                     // status 'ready': now visible
 *     id = idx_writer_doc(w);  idx_writer_free(w);
 * Usage (reader):
 *     struct idx_query q = {.mode = IDX_MODE_HYBRID, .budget = 1024, .text = question,
 *                           .feats = qf, .n_feats = n, .docs = &id, .n_docs = 1};
 *     struct idx_result r;  idx_retrieve(db, &q, &r, &err);  ...  idx_result_deinit(&r);
 *
 * Threads: an idx_db is one SQLite connection and belongs to one thread at a time. Open one
 * per thread; any number of readers may run while one writer writes (WAL). The first writer
 * on a file database starts the handle's checkpointer, a thread with a second connection
 * that copies the WAL into the database file after each commit; it outlives the writer (a
 * freed writer does not wait for the last copy) and idx_close stops it. A document is
 * visible to readers only once finished; a crash mid-scan leaves it in status 'scanning',
 * from where idx_writer_resume() continues after the last commit, or
 * idx_doc_delete() removes it.
 *
 * Errors: 0 or a negative S3_E* code; S3_EBUSY when the database stays locked past the busy
 * timeout, S3_EFORMAT when the file is not a database (or is corrupt, or of a newer schema),
 * S3_ENOTFOUND for an unknown or unfinished document, S3_EINVAL for bad arguments, S3_EDB for
 * other SQLite failures. Nothing is written to a database that failed to open. */
#pragma once

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "s3.h"

struct idx_db;
struct idx_writer;

#define IDX_COMMIT_MS 1000   /* a writer commits at least this often (idx_writer_add) */

/* ---- database ----------------------------------------------------------------------------- */

struct idx_open_opts {
    int busy_ms;   /* wait this long for a lock before S3_EBUSY; 0 = 5000, < 0 = do not wait */
    int readonly;  /* open read-only (the file must exist and have the schema) */
    /* May be NULL. One counter for all of a process's connections to the database, zeroed,
     * owned by the caller and alive until they are closed: a connection raises it by one
     * while it waits for the write lock and writes in idx_doc_delete(), idx_writer_begin()
     * (the document row) and a migration, and a writer thread (idx_async) on any of them
     * commits what it holds and opens no transaction while it is above zero. Without it, such
     * a write waits for the thread's next commit, up to IDX_COMMIT_MS or until the chunks
     * resume. */
    atomic_int *writers_waiting;
};

/* Open or create the index at path (":memory:" works for tests). opts may be NULL. Creates
 * or migrates the schema (PRAGMA user_version). *out is new; free with idx_close(). */
int idx_open(const char *path, const struct idx_open_opts *opts, struct idx_db **out,
             struct s3_errinfo *err);
/* Accepts NULL. Does not finish open writers: free them first. */
void idx_close(struct idx_db *db);
/* Removes a closed database file and its -wal and -shm files (missing ones are fine). */
void idx_remove_files(const char *path);

enum idx_status { IDX_DOC_SCANNING = 0, IDX_DOC_READY = 1, IDX_DOC_FAILED = 2 };

struct idx_doc_info {
    int64_t id;
    int status;           /* enum idx_status */
    char tenant[64];
    char name[256];
    char text_sha256[65]; /* of the source text, "" if not given */
    char model_hash[65];
    char sae_hash[65];
    int64_t n_tokens;     /* committed positions (all of them once ready) */
    int64_t n_bytes;      /* source text size */
    int64_t n_passages;
    int64_t n_chunks;     /* committed chunks */
    int64_t created;      /* unix seconds */
};

/* Fill *info for document id (any status). S3_ENOTFOUND if there is none. */
int idx_doc_get(struct idx_db *db, int64_t id, struct idx_doc_info *info,
                struct s3_errinfo *err);
/* Documents, newest first: tenant NULL = all; only_ready = skip unfinished ones. *out is new
 * (free()), *n its length. */
int idx_doc_list(struct idx_db *db, const char *tenant, int only_ready,
                 struct idx_doc_info **out, size_t *n, struct s3_errinfo *err);
/* Find an unfinished document of this tenant made from the same text with the same model and
 * SAE (a scan to resume). *id = 0 if there is none. */
int idx_doc_find_scanning(struct idx_db *db, const char *tenant, const char *text_sha256,
                          const char *model_hash, const char *sae_hash, int64_t *id,
                          struct s3_errinfo *err);
/* Remove a document and everything it owns, in one transaction. */
int idx_doc_delete(struct idx_db *db, int64_t id, struct s3_errinfo *err);
/* Bytes of the database in use (pages not on the free list times the page size). */
int idx_db_bytes(struct idx_db *db, int64_t *bytes, struct s3_errinfo *err);

/* ---- writer ------------------------------------------------------------------------------- */

struct idx_doc_meta {
    const char *tenant;       /* NULL = "" */
    const char *name;         /* NULL = "" */
    const char *text_sha256;  /* hash of the source text (used to find a scan to resume) */
    const char *model_hash;
    const char *sae_hash;
    int64_t n_bytes;
};

/* A (layer, kv head) pair whose keys an SAE encoded. */
struct idx_slot {
    int layer;
    int kv_head;
};

/* One sentence-aligned passage. Passages tile the text: the first starts at (token 0,
 * char 0) and each starts where the previous one ended. Sentence starts inside the passage
 * (not counting its own start) snap spans; give every sentence a bounded length (the scan
 * driver splits long ones). */
struct idx_passage {
    int64_t start_tok, end_tok;     /* token positions [start, end) */
    int64_t start_char, end_char;   /* byte offsets into the source text [start, end) */
    const char *text;               /* borrowed; end_char - start_char bytes of UTF-8 */
    size_t n_sent;
    const int64_t *sent_tok;        /* (n_sent) increasing, inside (start_tok, end_tok) */
    const int64_t *sent_char;       /* (n_sent) matching byte offsets */
};

/* One chunk of a scan. Positions tok0 .. tok0+n_tok-1 must continue exactly where the last
 * committed chunk ended (a re-read overlap prefix is not passed). For every slot s, token i
 * and j < k: feat[(s*n_tok + i)*k + j] is a feature id (< 2^24; -1 = none) and act[...] its
 * activation (values <= 0 are dropped). Passages are those that end within what has been
 * scanned so far; n_tok may be 0 (e.g. a last chunk with only passages). */
struct idx_chunk {
    int64_t tok0;
    int n_tok;
    int n_slot;
    const struct idx_slot *slots;   /* (n_slot), borrowed */
    int k;
    const int32_t *feat;            /* (n_slot, n_tok, k), borrowed */
    const float *act;               /* (n_slot, n_tok, k), borrowed */
    size_t n_passages;
    const struct idx_passage *passages; /* (n_passages), borrowed */
};

/* Where a scan stands (after the last accepted chunk; after idx_writer_resume(), the last
 * committed one). */
struct idx_scan_state {
    int64_t next_tok;       /* first position of the next chunk */
    int64_t pass_tok;       /* next passage starts at this token ... */
    int64_t pass_char;      /* ... and this byte */
    int64_t n_passages;
    int64_t n_chunks;
};

/* Insert a document row (status 'scanning') and return a writer for it (*out new). */
int idx_writer_begin(struct idx_db *db, const struct idx_doc_meta *meta, struct idx_writer **out,
                     struct s3_errinfo *err);
/* Continue an unfinished document (S3_EINVAL if it is ready or failed). */
int idx_writer_resume(struct idx_db *db, int64_t doc, struct idx_writer **out,
                      struct s3_errinfo *err);
/* Accept one chunk (postings, passages, progress). Accepted chunks are committed together, in
 * one transaction: when the segment they belong to is full, when the last commit is
 * commit_ms old (idx_writer_set_commit_ms; default IDX_COMMIT_MS), at idx_writer_flush() and
 * at idx_writer_finish(); so a crash loses at most about commit_ms of scanning (resume
 * continues after the last commit), while a fast scan commits once per segment. A chunk
 * refused before a commit (it does not continue the document, a bad shape or feature id, out
 * of memory) changes nothing. When a commit fails its transaction is rolled back and
 * everything accepted since the last commit is dropped: the writer's state (idx_writer_state)
 * is the committed one again. */
int idx_writer_add(struct idx_writer *w, const struct idx_chunk *c, struct s3_errinfo *err);
/* Commit what was accepted since the last commit (nothing to do: 0). */
int idx_writer_flush(struct idx_writer *w, struct s3_errinfo *err);
/* 0: commit every chunk. */
void idx_writer_set_commit_ms(struct idx_writer *w, int ms);
/* Mark the document ready (visible). Passages must cover every committed position. */
int idx_writer_finish(struct idx_writer *w, struct s3_errinfo *err);
/* Mark the document failed (kept invisible, with the message). */
int idx_writer_fail(struct idx_writer *w, const char *why, struct s3_errinfo *err);
int64_t idx_writer_doc(const struct idx_writer *w);
void idx_writer_state(const struct idx_writer *w, struct idx_scan_state *st);
/* Wall time a writer spent in each phase so far, in ms (on the thread that drove it; for
 * benchmarks): accepting chunks (copying their postings, encoding them when not encoded
 * already), writing passages with their full-text index, merging segments into their
 * rows (one per slot), committing (the WAL writes), and finishing (stop features, docmap). */
struct idx_writer_times {
    double accept, passages, segments, commit, finish;
    double encode;           /* idx_async: encoding the queued chunks on the writer's thread */
};
void idx_writer_times(const struct idx_writer *w, struct idx_writer_times *t);
/* A writer on its own thread: idx_async_add() checks a chunk (what idx_writer_add() would
 * refuse for its shape or a feature id out of range is refused here), copies it into a queue of
 * at most depth chunks and IDX_ASYNC_BYTES bytes (waiting while it is full; the queue absorbs
 * the writer's bursts at segment merges) and returns; the thread encodes each chunk's slots
 * (spread over encoder threads where the machine has cores to spare) and writes the chunks in
 * order with idx_writer_add(). From idx_async_start() to idx_async_end() the writer and its
 * database belong to that thread: the caller must not use either. The first error of a queued
 * chunk is returned by the next idx_async_add() and by idx_async_end() (later chunks are
 * dropped); after idx_async_end() (which writes what is queued and stops the thread) the
 * writer is the caller's again: finish, flush or free it as usual. One thread adds chunks.
 * Through idx_async each chunk's passages are written as it comes, in a write transaction
 * that the next commit ends (a segment, IDX_COMMIT_MS, finish, flush; free and
 * idx_writer_fail() roll it back): other connections wait for that commit to write, and the
 * writer's connection must not begin a transaction of its own before it. Where the database
 * was opened with a writers_waiting counter (struct idx_open_opts), the thread commits within
 * about 2 ms when it has no chunk to write, or after the chunk it is writing, once another
 * connection raises it, and opens no transaction until it is back to zero: their wait lasts
 * about one chunk, not until the next timed commit, nor past a pause of the chunks. */
struct idx_async;
#define IDX_ASYNC_DEPTH 32
#define IDX_ASYNC_BYTES (64u << 20)
int idx_async_start(struct idx_writer *w, int depth, struct idx_async **out,
                    struct s3_errinfo *err);
int idx_async_add(struct idx_async *a, const struct idx_chunk *c, struct s3_errinfo *err);
int idx_async_end(struct idx_async *a, struct s3_errinfo *err); /* accepts NULL */
/* Accepts NULL. An unfinished document stays 'scanning' (resumable from its last commit;
 * chunks accepted after it are dropped: idx_writer_flush() first to keep them). */
void idx_writer_free(struct idx_writer *w);

/* ---- retrieval ---------------------------------------------------------------------------- */

enum idx_mode { IDX_MODE_HYBRID = 0, IDX_MODE_S3 = 1, IDX_MODE_BM25 = 2, IDX_MODE_FULL = 3 };

/* Parse "hybrid", "s3", "bm25", "full"; -1 if unknown. */
int idx_mode_parse(const char *s);
const char *idx_mode_name(int mode);

/* A weighted query feature of one slot. */
struct idx_qfeat {
    int layer, kv_head;
    int32_t feature;
    float weight;           /* w_q(f) > 0 */
};

struct idx_query {
    int mode;               /* enum idx_mode */
    int budget;             /* evidence tokens, > 0 */
    const char *text;       /* question for BM25 (NULL: no BM25) */
    const struct idx_qfeat *feats; /* (n_feats) for S3 scoring, borrowed */
    size_t n_feats;
    const int64_t *docs;    /* (n_docs) documents to search, all must be ready */
    size_t n_docs;
    const char *tenant;     /* non-NULL: every document must belong to this tenant */
    /* tuning; 0 = default */
    int smooth_radius;      /* box filter half width, default 2 (window 5) */
    int nms_radius;         /* peaks closer than this are suppressed, default 48 */
    int max_span;           /* longest span grown from a peak, default 64 tokens */
    int edge_tokens;        /* lead and tail size, default min(64, budget / 8) */
    int rrf_k;              /* reciprocal rank fusion constant, default 5 (IDX_RRF_K): small,
                             * so a top rank in one source outranks deep ranks in two */
};

enum idx_source {
    IDX_SRC_S3 = 1,
    IDX_SRC_BM25 = 2,
    IDX_SRC_LEAD = 4,
    IDX_SRC_TAIL = 8,
    IDX_SRC_FULL = 16,
};

struct idx_span {
    int64_t doc;
    int64_t start_tok, end_tok;     /* [start, end) */
    int64_t start_char, end_char;   /* byte offsets into the source text */
    double score;                   /* fused (RRF) score; 1 for full */
    unsigned sources;               /* enum idx_source bits */
    char *text;                     /* owned by the result, NUL-terminated */
};

struct idx_result {
    struct idx_span *spans;         /* (n_spans) in (query doc order, position) order */
    size_t n_spans;
    int64_t n_tokens;               /* sum of span lengths, <= budget (except full) */
    double ms;                      /* time spent */
};

/* Retrieve evidence for q. *out is filled (release with idx_result_deinit()). Mode full
 * returns every document whole, S3_ETOOBIG if they exceed the budget. */
int idx_retrieve(struct idx_db *db, const struct idx_query *q, struct idx_result *out,
                 struct s3_errinfo *err);
/* Accepts a zeroed struct. */
void idx_result_deinit(struct idx_result *r);

/* Write source names joined by '+' ("s3+bm25") into buf; returns buf. */
const char *idx_source_str(unsigned sources, char *buf, size_t n);
