/* index/index_int.h - internals of the index module: schema, posting format, helpers.
 * Only the index sources and the index tests include this.
 *
 * ## Schema (PRAGMA user_version = IDX_SCHEMA_VERSION)
 *
 *   documents(id, tenant, name, status, n_tokens, n_bytes, text_sha256, created, finished,
 *             model_hash, sae_hash, n_chunks, n_passages, pass_tok, pass_char, fts_words,
 *             seg_start, error)
 *       one row per document; status 'scanning' until idx_writer_finish() sets 'ready'.
 *       n_tokens / pass_tok / pass_char / n_passages / n_chunks are the scan's progress,
 *       updated in the same transaction as the chunk they describe; seg_start = the first
 *       position whose postings are still in `pending`. fts_words is the sum
 *       of the FTS5 token counts of the document's passages (for BM25's avgdl).
 *   passages(id, doc, start_tok, end_tok, start_char, end_char, sents, text)
 *       id = IDX_PASSAGE_ID(doc, i): the passages of one document are one rowid range,
 *       which FTS5 can restrict a MATCH to. sents = sentence starts inside the passage as
 *       varint pairs (tokens since the previous start, bytes since the previous start).
 *   passages_fts: FTS5 (tokenize 'porter unicode61'), external content = passages.text.
 *   pending(doc, tok0, layer, head, blob) WITHOUT ROWID: the postings of one chunk of a
 *       document being scanned, one row per (chunk, slot), appended in key order (cheap: a
 *       chunk writes n_slot rows at the end of the tree). blob = a group blob (below) with
 *       base = tok0. The writer keeps a copy in memory (a resumed one reads them back).
 *   segslots(id INTEGER PRIMARY KEY, seg, layer, head, blob) (schema 5): the postings of a
 *       segment [seg, end) of a document, one row per slot: id = IDX_PASSAGE_ID(doc, i), i
 *       counting the document's rows in the order written; blob = a segment slot blob
 *       (below). When the pending chunks reach IDX_SEG_TOKENS positions (idx_tuning),
 *       when the document is about to end (at most half the unmerged positions left by its
 *       source bytes; at least IDX_TAIL_MIN unmerged and IDX_TAIL_MIN / 2 left), and at
 *       finish, the chunk that crosses the mark concatenates their blobs (from memory)
 *       feature by feature into these rows, in the transaction it commits.
 *   postings(doc, seg, layer, head, feature, n, blob) WITHOUT ROWID: schema 4 wrote a segment
 *       as one row per (slot, feature), blob = the entries relative to base seg, n = their
 *       count. Documents finished before schema 5 are read from these rows; nothing writes
 *       them any more. (Schema 3 wrote segment blobs, segblobs, and rewrote them at finish.)
 *   segments(doc, seg, end) WITHOUT ROWID: the segments written, one row each.
 *   docmap(doc, blob) (schema 2): the passage and sentence boundaries of a finished document
 *       in one blob, so that a query reads one row instead of every passage row: per passage
 *       varint token length, varint byte length, varint byte count of its sents, its sents
 *       (as in passages.sents). A document finished before schema 2 has none (the passages
 *       are read instead).
 *
 * ## Finishing
 *
 * idx_writer_finish() writes the last pending chunks as a segment, leaving out the stop
 * features (counted per (slot, feature) by the writer as it writes segments), then, in the
 * same transaction, sets the count of each stop feature to 0 in the directories of the
 * earlier segments (a 4-byte write in place; its entries stay in the blob, unread) and writes
 * the docmap row. Nothing written earlier is read back or rewritten, so finishing costs about
 * one segment's merge whatever the document's length, and a segment costs one row per slot.
 * A query reads, per slot of its features and segment, the blob's directory and the entries
 * of its features, and one docmap row.
 *
 * ## Segment slot blobs (segslots rows)
 *
 *   the entries of each feature in turn (features increasing), relative to base seg
 *   the directory: per feature IDX_SEGDIR_ENTRY = 12 bytes, little-endian u32s:
 *       feature, n (its entry count; 0: a stop feature dropped at finish), end (the byte
 *       offset just past its entries; a feature's entries start where the previous one's end)
 *   u32 n_feat, the directory's length (little endian)
 *
 * The directory at the end lets the writer append it after the entries without copying them.

 * ## Group blobs (pending rows, a segment's chunks in memory)
 *
 * The postings of one slot over [base, lim), one group per feature, features increasing:
 *
 *   varint feature - previous feature - 1 (the first: feature)
 *   varint n, the group's entry count (>= 1)
 *   varint last - base, its last position
 *   varint byte length of the entries
 *   the entries (below) relative to base
 *
 * The count and last position let groups be concatenated without decoding them.
 *
 * ## Posting entries (a postings blob; a pending group)
 *
 * A sequence of entries, one per position, positions strictly increasing:
 *
 *   | offset | size   | field                                                        |
 *   |--------|--------|--------------------------------------------------------------|
 *   | 0      | 1..5   | varint (LEB128, 7 bits a byte, low first) gap:                |
 *   |        |        |   first entry: p - base                                       |
 *   |        |        |   later ones:  p - previous p - 1                             |
 *   | +n     | 1      | activation code q in 1..255                                   |
 *
 * repeated until the end of the blob. Activations are log-quantised, so no per-row scale is
 * needed and a merge copies codes unchanged: a = 2^((q - IDX_Q_ZERO) / IDX_Q_STEPS),
 * q = 1..255 covers 2^-11.9 .. 2^9.25 with a relative step of 2^(1/12) (error <= 2.9%);
 * values outside are clamped. A gap under 128 takes one byte, so a typical entry is 2 bytes.
 *
 * ## Scores
 *
 * idf(f) = 1 / (ln(1 + df(f)) + 1) where df(f) is the number of positions of this document
 * carrying feature f in that (layer, head): a per-document statistic, so other documents in
 * the database never change a document's scores. A feature on more than 1/IDX_STOP_FRAC of
 * the positions says nothing about where the answer is (its idf is near the floor and it
 * would cost most of the decoding time); such "stop features" are skipped. S[t] = sum over query features of
 * w_q(f) * idf(f) * a_t(f), then a box filter of half width smooth_radius.
 *
 * ## BM25
 *
 * FTS5's own bm25() uses table-wide statistics (N, avgdl, per-term document frequency), so
 * one document's ranking would move when another document is added. Instead FTS5 only finds
 * the matching passages (MATCH restricted to the document's rowid range) and an auxiliary
 * function s3_tf() returns each row's token count and per-term frequencies; BM25 (k1 = 1.2,
 * b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))) is then computed with N, avgdl and
 * df of that document alone. */
#pragma once

#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "idx.h"

#define IDX_SCHEMA_VERSION 5
#define IDX_SEG_TOKENS     131072       /* a segment covers at most this many positions */
#define IDX_TAIL_MIN       8192         /* the shortest segment cut early near the end; no
                                           cut leaves fewer than half this many */
#define IDX_MAX_SPAN       (1LL << 32)  /* positions of one blob lie in [base, base + this) */
#define IDX_Q_ZERO         144
#define IDX_Q_STEPS        12.0f
#define IDX_MAX_FEATURE    (1 << 24)
#define IDX_STOP_FRAC      8
#define IDX_RRF_K          5            /* default fusion constant (idx.h rrf_k) */
#define IDX_MAX_SLOTS      256
#define IDX_MMAP_SIZE_STR  "1073741824" /* mmap for queries */
#define IDX_QUERY_CACHE    "-16384"     /* page cache (KiB) outside a scan (store.c) */
#define IDX_SCAN_CACHE_KIB 8192         /* page cache (KiB) while a writer is open */
#define IDX_SCAN_WAL_BYTES (64LL << 20) /* WAL auto-checkpoint while a writer is open (no
                                           checkpointer thread: an in-memory database) */
#define IDX_WAL_BYTES      (4LL << 20)  /* WAL auto-checkpoint otherwise */
#ifndef IDX_PAGE_SIZE_STR
#define IDX_PAGE_SIZE_STR  "65536"      /* new databases; 64 KiB pages wrote faster and took
                                           less room than 4 KiB ones (one row per feature,
                                           s3index_bench on the GPU machine's host:
                                           writer 0.9-1.1 s against 1.2-1.5 s per 1M tokens,
                                           164 against 200 bytes/token) */
#endif
#define IDX_PASSAGE_ID(doc, i) (((int64_t)(doc) << 32) | (int64_t)(i))

/* The checkpointer of a file database (ckpt.c): db and th are its thread's; stop and kick
 * under mu; on is the owning thread's. */
struct idx_ckpt {
    int on;
    sqlite3 *db;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, kick;
};

/* Settings of the writers of one connection, for tests and measurements: a connection's own
 * (idx__tuning), read when a writer begins or resumes on it (the first three) and when
 * idx_async starts on that writer (the last two). */
struct idx_tuning {
    int64_t seg_tokens;    /* IDX_SEG_TOKENS: a segment covers at most this many positions */
    int scan_cache_kib;    /* IDX_SCAN_CACHE_KIB */
    int merge_threads;     /* threads merging a segment's slots while the writer inserts (-1:
                              by core count; 0: none) */
    int async_encoders;    /* encoder threads of idx_async (-1: by core count) */
    size_t async_bytes;    /* IDX_ASYNC_BYTES */
};

struct idx_db {
    sqlite3 *db;
    int readonly;
    int fts_api_ok;        /* s3_tf registered */
    struct idx_ckpt ck;
    struct idx_tuning tun; /* the defaults unless a test or benchmark changes them */
    atomic_int *waiting;   /* idx_open_opts.writers_waiting, or NULL */
};

/* Around a write of another connection than an idx_async writer's: raised while it waits for
 * the lock and writes (see idx_open_opts.writers_waiting). */
static inline void idx__wait_enter(struct idx_db *db)
{
    if (db->waiting)
        atomic_fetch_add(db->waiting, 1);
}
static inline void idx__wait_leave(struct idx_db *db)
{
    if (db->waiting)
        atomic_fetch_sub(db->waiting, 1);
}

/* db's settings for the writers that begin or resume on it from now on (writable). */
struct idx_tuning *idx__tuning(struct idx_db *db);

/* ---- the checkpointer (ckpt.c) ---- */
/* Start db's checkpointer unless it runs: 0, or -1 where it cannot (an in-memory database,
 * no second connection). */
int idx__ckpt_start(struct idx_db *db);
/* Ask for a checkpoint (after a commit); returns at once. */
void idx__ckpt_kick(struct idx_db *db);
/* Serve a pending kick, then stop the thread (idx_close). */
void idx__ckpt_stop(struct idx_db *db);

/* ---- errors (store.c) ---- */
/* Map a SQLite rc to S3_E*, record "what: sqlite message" in err, log it. */
int idx__sqlerr(struct idx_db *db, int rc, const char *what, struct s3_errinfo *err);
int idx__exec(struct idx_db *db, const char *sql, struct s3_errinfo *err);
int idx__prepare(struct idx_db *db, const char *sql, sqlite3_stmt **st, struct s3_errinfo *err);
/* Run n statements, each bound with ?1..?2 = doc's rowid range (IDX_PASSAGE_ID(doc, 0 ..
 * 0xffffffff)), ?3 = doc, ?4 = v, ?5 = v2; a failure is reported as "what: ...". */
int idx__exec_doc(struct idx_db *db, const char *const *sql, size_t n, int64_t doc, int64_t v,
                  int64_t v2, const char *what, struct s3_errinfo *err);

/* ---- varints and activation codes (posting.c) ---- */
/* Append v to buf (at most 10 bytes); returns bytes written. */
size_t idx__varint_put(uint8_t *buf, uint64_t v);
/* Read a varint from [p, end); returns bytes read, 0 if truncated or over 64 bits. */
size_t idx__varint_get(const uint8_t *p, const uint8_t *end, uint64_t *v);
uint8_t idx__act_encode(float a);           /* a > 0 */
float idx__act_decode(uint8_t q);           /* q 1..255 */

struct idx_post {
    int64_t pos;
    uint8_t q;             /* activation code, 1..255 */
};
/* Encode positions (strictly increasing, >= base, after prev_pos if prev_pos >= 0) into buf
 * (room for 11 bytes per entry). Returns the byte count or S3_EINVAL. */
int idx__post_encode(int64_t base, int64_t prev_pos, const struct idx_post *p, size_t n,
                     uint8_t *buf);
/* Call fn(ud, pos, code, lut[code]) for every entry of a blob whose positions lie in
 * [base, lim). S3_EFORMAT if malformed (truncated varint, code 0, a position outside).
 * lut may be NULL (activations 0). Returns the entry count. */
typedef void (*idx_post_fn)(void *ud, int64_t pos, uint8_t q, float act);
int64_t idx__post_decode(int64_t base, int64_t lim, const uint8_t *blob, size_t n,
                         const float *lut, idx_post_fn fn, void *ud);
/* lut[256] of decoded activation codes (lut[0] = 0). */
void idx__act_lut(float lut[256]);

/* ---- BM25 (bm25.c) ---- */
int idx__bm25_register(struct idx_db *db, struct s3_errinfo *err);
/* Number of FTS5 tokens in passages [id_lo, id_hi] (for fts_words). */
int idx__fts_words(struct idx_db *db, int64_t id_lo, int64_t id_hi, int64_t *words,
                   struct s3_errinfo *err);
struct idx_bm25_hit {
    int64_t passage;       /* index within the document */
    double score;
};
/* Top n_top passages of doc for text, best first, BM25 with per-document statistics.
 * *hits new (free()). No terms in text: *n_hits = 0. */
int idx__bm25_doc(struct idx_db *db, int64_t doc, int64_t n_passages, int64_t fts_words,
                  const char *text, size_t n_top, struct idx_bm25_hit **hits, size_t *n_hits,
                  struct s3_errinfo *err);

/* ---- growable byte buffers, group blobs (compact.c) ---- */
struct idx_buf {
    uint8_t *p;
    size_t n, cap;
};
int idx__buf_reserve(struct idx_buf *b, size_t extra);   /* S3_ENOMEM */
int idx__buf_varint(struct idx_buf *b, uint64_t v);

/* A group blob [p, e) in memory read group by group. */
struct idx_grp_rd {
    const uint8_t *p, *e;
    int64_t base, lim;        /* positions lie in [base, lim) */
    /* the current group (after idx__grp_next) */
    int have;
    int32_t feat;
    int64_t n, last;
    uint64_t nbytes;
};
/* Read the next group header (r->have = 0 at the end). S3_EFORMAT. */
int idx__grp_next(struct idx_grp_rd *r);
/* Called per feature once its concatenated entries (relative to out_base) end idx__grp_concat's
 * out, with their count; a non-zero return stops idx__grp_concat, which returns it. */
typedef int (*idx_grp_emit_fn)(void *ud, int32_t feat, int64_t n);
/* Concatenate parts (group blobs of consecutive position ranges, in position order; their
 * readers positioned at the start, feat = -1) feature by feature, appending each feature's
 * entries to out. Returns 0, S3_EFORMAT, S3_ENOMEM, or what emit returned. */
int idx__grp_concat(struct idx_grp_rd *parts, size_t n_parts, int64_t out_base,
                    idx_grp_emit_fn emit, void *ud, struct idx_buf *out);
/* Append one group to b. S3_ENOMEM. */
int idx__grp_put(struct idx_buf *b, int32_t prev_feat, int32_t feat, int64_t n, int64_t last_rel,
                 const uint8_t *entries, size_t nbytes);

/* Order of (layer, head, position) triples, as a qsort comparator's result. */
int idx__cmp_slot_pos(int l1, int h1, int64_t p1, int l2, int h2, int64_t p2);

/* ---- segment slot blobs (segslot.c) ---- */
#define IDX_SEGDIR_ENTRY 12
uint32_t idx__le32(const uint8_t *p);
void idx__le32_put(uint8_t *p, uint32_t v);
/* Where the directory of n_feat entries (the blob's last 4 bytes) of a blob of blob_bytes
 * starts: *dir_off = the byte count of the entries. S3_EFORMAT if it cannot fit. */
int idx__segdir_locate(uint64_t blob_bytes, uint32_t n_feat, uint64_t *dir_off);
/* Whether a directory is well formed over data_bytes bytes of entries: features increasing,
 * ends increasing within the entries, 2..6 bytes per entry counted. 0 or S3_EFORMAT. */
int idx__segdir_check(const uint8_t *dir, uint32_t n_feat, uint64_t data_bytes);
/* The index of feat in a checked directory (binary search), -1 if absent. */
int64_t idx__segdir_find(const uint8_t *dir, uint32_t n_feat, int32_t feat);
/* Entry i of a checked directory: its count (0: a dropped stop feature) and byte range
 * [*start, *end) of the entries. */
uint32_t idx__segdir_range(const uint8_t *dir, uint32_t i, uint32_t *start, uint32_t *end);
/* Open bl (or move it) to segslots row id and read its checked directory into dir (*dir_off =
 * the entries' byte count = where the directory starts, *n_feat its length). A SQLite code:
 * SQLITE_CORRUPT if malformed, SQLITE_NOMEM. */
int idx__segdir_read(struct idx_db *db, sqlite3_blob **bl, int64_t id, int writable,
                     struct idx_buf *dir, uint64_t *dir_off, uint32_t *n_feat);
/* Called per feature of a segment slot blob whose count is not 0, with its entries (relative
 * to seg); a non-zero return stops the walk and is returned. */
typedef int (*idx_segslot_fn)(void *ud, int64_t seg, int layer, int head, int32_t feat,
                              int64_t n, const uint8_t *entries, size_t nbytes);
/* Every segment slot row of doc in the order written. S3_EFORMAT (a malformed directory),
 * a SQLite error, or what fn returned. */
int idx__segslot_walk(struct idx_db *db, int64_t doc, idx_segslot_fn fn, void *ud,
                      struct s3_errinfo *err);

/* ---- the chunk encoder (writer.c) ---- */
/* What can be checked of a chunk without the document: shape, slots, arrays and feature ids
 * (feat and act not when encoded), passage arrays. S3_EINVAL with what is wrong. */
int idx__chunk_shape(const struct idx_chunk *c, int encoded, struct s3_errinfo *err);
struct idx_hit {
    int32_t feat;
    uint8_t q;
    int64_t pos;
};
/* Scratch of idx__enc_slot, reused across calls; zero-initialise, free with idx__enc_free. */
struct idx_enc {
    struct idx_hit *hits, *sorted;
    size_t hits_cap, sorted_cap;
    int32_t *count;
    size_t count_cap;
    uint8_t *enc;
    size_t enc_cap, n_enc;   /* n_enc: entries in enc */
    struct idx_post *posts;
    size_t posts_cap;
    struct idx_buf blob;     /* the result: one slot's group blob (empty: no hits) */
};
/* Encode slot si of c (features, activations; its feature ids checked by idx__chunk_shape) as
 * a group blob with base c->tok0 into e->blob. S3_ENOMEM. Any thread (e its own). */
int idx__enc_slot(struct idx_enc *e, const struct idx_chunk *c, int si, struct s3_errinfo *err);
void idx__enc_free(struct idx_enc *e);
/* idx_writer_add for a chunk whose slot s is already encoded (idx__enc_slot) as blobs[s]
 * (n_slot, borrowed); c->feat and c->act are not read. */
int idx__writer_add_encoded(struct idx_writer *w, const struct idx_chunk *c,
                            const struct idx_buf *blobs, struct s3_errinfo *err);
/* Eager writing (idx_async, from start to end): passages written as each chunk comes, in a
 * transaction kept open until the next commit. */
void idx__writer_set_eager(struct idx_writer *w, int on);
/* idx_async's encoding time, counted in the writer's times. */
void idx__writer_add_encode_ms(struct idx_writer *w, double ms);
/* The settings the writer took from its connection (idx__tuning) when it began. */
const struct idx_tuning *idx__writer_tuning(const struct idx_writer *w);
/* The counter of w's database (idx_open_opts.writers_waiting), or NULL. */
atomic_int *idx__writer_waiting(const struct idx_writer *w);

/* ---- finishing (compact.c) ---- */
/* Write the docmap row of doc from its passages. Call inside a transaction. */
int idx__docmap_write(struct idx_db *db, int64_t doc, int64_t n_passages,
                      struct s3_errinfo *err);

/* ---- scoring (query.c) ---- */
/* Dense S[t] (n_tokens floats, zeroed by the callee) of one document before smoothing. */
int idx__score_positions(struct idx_db *db, int64_t doc, int64_t n_tokens,
                         const struct idx_qfeat *f, size_t n, float *S, struct s3_errinfo *err);
