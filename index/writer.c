/* index/writer.c - writing a document chunk by chunk: one transaction per chunk, the
 * document visible only once finished. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "index_int.h"

struct hit {
    int32_t feat;
    uint8_t q;
    int64_t pos;
};

struct idx_writer {
    struct idx_db *db;
    int64_t doc;
    struct idx_scan_state st;
    int64_t seg_start;    /* first position not yet merged into postings */
    int done;
    sqlite3_stmt *ins_pend, *ins_pass, *ins_fts, *upd_doc;
    /* scratch reused across chunks and merges */
    struct hit *hits, *sorted;
    size_t hits_cap, sorted_cap;
    int32_t *count;
    size_t count_cap;
    uint8_t *enc;
    size_t enc_cap, n_enc;   /* n_enc: entries in enc */
    struct idx_post *posts;
    size_t posts_cap;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return S3_ENOMEM;
    *p = np;
    *cap = nc;
    return 0;
}

static int prepare_all(struct idx_writer *w, struct s3_errinfo *err)
{
    int rc = idx__prepare(w->db,
                          "INSERT INTO pending(doc, tok0, layer, head, blob) VALUES(?,?,?,?,?)",
                          &w->ins_pend, err);
    if (rc == 0)
        rc = idx__prepare(w->db,
                          "INSERT INTO passages(id, doc, start_tok, end_tok, start_char,"
                          " end_char, sents, text) VALUES(?,?,?,?,?,?,?,?)",
                          &w->ins_pass, err);
    if (rc == 0)
        rc = idx__prepare(w->db, "INSERT INTO passages_fts(rowid, text) VALUES(?, ?)",
                          &w->ins_fts, err);
    if (rc == 0)
        rc = idx__prepare(w->db,
                          "UPDATE documents SET n_tokens = ?, n_chunks = n_chunks + 1,"
                          " n_passages = ?, pass_tok = ?, pass_char = ?,"
                          " fts_words = fts_words + ?, seg_start = ? WHERE id = ? AND status = 'scanning'",
                          &w->upd_doc, err);
    return rc;
}

/* Load the scan's progress from the database. */
static int load_state(struct idx_writer *w, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(w->db,
                          "SELECT status, n_tokens, pass_tok, pass_char, n_passages, n_chunks,"
                          " seg_start FROM documents WHERE id = ?",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, w->doc);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *s = (const char *)sqlite3_column_text(st, 0);
        if (!s || strcmp(s, "scanning") != 0)
            rc = s3_errf(err, S3_EINVAL, "index: document %lld is %s, not being scanned",
                         (long long)w->doc, s ? s : "?");
        w->st.next_tok = sqlite3_column_int64(st, 1);
        w->st.pass_tok = sqlite3_column_int64(st, 2);
        w->st.pass_char = sqlite3_column_int64(st, 3);
        w->st.n_passages = sqlite3_column_int64(st, 4);
        w->st.n_chunks = sqlite3_column_int64(st, 5);
        w->seg_start = sqlite3_column_int64(st, 6);
    } else if (src == SQLITE_DONE) {
        rc = s3_errf(err, S3_ENOTFOUND, "index: no document %lld", (long long)w->doc);
    } else {
        rc = idx__sqlerr(w->db, src, "index: resume", err);
    }
    sqlite3_finalize(st);
    return rc;
}

static int writer_new(struct idx_db *db, int64_t doc, struct idx_writer **out,
                      struct s3_errinfo *err)
{
    struct idx_writer *w = calloc(1, sizeof *w);
    if (!w)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    w->db = db;
    w->doc = doc;
    /* a scan reads back what it wrote (merges, compaction): through the bounded page cache,
     * not the map, so that the process's memory does not grow with the document. The cache
     * holds a whole segment's pending rows (a merge reads them back without going to the
     * file), and the WAL is checkpointed every 64 MiB instead of 4: pending pages written and
     * freed within that window reach the database file once or never, and fsyncs are 16x
     * rarer (8B-shaped postings, 262k tokens, two runs each: 11.2 / 12.0 s -> 7.9 / 10.4 s,
     * system time 1.6 s -> 1.1 s).
     * Crash safety is the WAL's, unchanged: still one transaction per chunk. */
    int rc = idx__exec(db, "PRAGMA mmap_size=0; PRAGMA wal_autocheckpoint=" IDX_WAL_PAGES ";"
                           " PRAGMA cache_size=" IDX_SCAN_CACHE, err);
    if (rc == 0)
        rc = prepare_all(w, err);
    if (rc == 0)
        rc = load_state(w, err);
    if (rc < 0) {
        idx_writer_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

int idx_writer_begin(struct idx_db *db, const struct idx_doc_meta *meta, struct idx_writer **out,
                     struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    *out = NULL;
    if (!meta)
        return s3_errf(err, S3_EINVAL, "index: no document metadata");
    if (db->readonly)
        return s3_errf(err, S3_EINVAL, "index: database is open read-only");
    int rc = idx__prepare(db,
                          "INSERT INTO documents(tenant, name, status, n_bytes, text_sha256,"
                          " created, model_hash, sae_hash) VALUES(?,?,'scanning',?,?,?,?,?)",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, meta->tenant ? meta->tenant : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, meta->name ? meta->name : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, meta->n_bytes);
    sqlite3_bind_text(st, 4, meta->text_sha256 ? meta->text_sha256 : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (int64_t)time(NULL));
    sqlite3_bind_text(st, 6, meta->model_hash ? meta->model_hash : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, meta->sae_hash ? meta->sae_hash : "", -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    sqlite3_finalize(st);
    if (src != SQLITE_DONE)
        return idx__sqlerr(db, src, "index: new document", err);
    return writer_new(db, sqlite3_last_insert_rowid(db->db), out, err);
}

int idx_writer_resume(struct idx_db *db, int64_t doc, struct idx_writer **out,
                      struct s3_errinfo *err)
{
    *out = NULL;
    if (db->readonly)
        return s3_errf(err, S3_EINVAL, "index: database is open read-only");
    return writer_new(db, doc, out, err);
}

int64_t idx_writer_doc(const struct idx_writer *w)
{
    return w->doc;
}

void idx_writer_state(const struct idx_writer *w, struct idx_scan_state *st)
{
    *st = w->st;
}

void idx_writer_free(struct idx_writer *w)
{
    if (!w)
        return;
    sqlite3_exec(w->db->db,
                 "PRAGMA mmap_size=" IDX_MMAP_SIZE_STR "; PRAGMA wal_autocheckpoint=1000;"
                 " PRAGMA cache_size=" IDX_QUERY_CACHE,
                 NULL, NULL, NULL);
    sqlite3_finalize(w->ins_pend);
    sqlite3_finalize(w->ins_pass);
    sqlite3_finalize(w->ins_fts);
    sqlite3_finalize(w->upd_doc);
    free(w->hits);
    free(w->sorted);
    free(w->count);
    free(w->enc);
    free(w->posts);
    free(w);
}

static int check_chunk(const struct idx_writer *w, const struct idx_chunk *c,
                       struct s3_errinfo *err)
{
    if (w->done)
        return s3_errf(err, S3_EINVAL, "index: document %lld is already finished",
                       (long long)w->doc);
    if (c->tok0 != w->st.next_tok)
        return s3_errf(err, S3_EINVAL, "index: chunk starts at token %lld, expected %lld",
                       (long long)c->tok0, (long long)w->st.next_tok);
    if (c->n_tok < 0 || c->n_slot < 0 || c->n_slot > IDX_MAX_SLOTS || c->k < 0 || c->k > 1024)
        return s3_errf(err, S3_EINVAL, "index: bad chunk shape (n_tok %d, n_slot %d, k %d)",
                       c->n_tok, c->n_slot, c->k);
    if ((size_t)c->n_tok * (size_t)c->n_slot * (size_t)c->k > 0 &&
        (!c->feat || !c->act || !c->slots))
        return s3_errf(err, S3_EINVAL, "index: chunk without feature arrays");
    for (int s = 0; s < c->n_slot; s++) {
        for (int t = 0; t < s; t++)
            if (c->slots[t].layer == c->slots[s].layer &&
                c->slots[t].kv_head == c->slots[s].kv_head)
                return s3_errf(err, S3_EINVAL, "index: slot (%d, %d) listed twice",
                               c->slots[s].layer, c->slots[s].kv_head);
        if (c->slots[s].layer < 0 || c->slots[s].layer > 65535 || c->slots[s].kv_head < 0 ||
            c->slots[s].kv_head > 65535)
            return s3_errf(err, S3_EINVAL, "index: bad slot (%d, %d)", c->slots[s].layer,
                           c->slots[s].kv_head);
    }
    int64_t end = c->tok0 + c->n_tok, pt = w->st.pass_tok, pc = w->st.pass_char;
    if (c->n_passages && !c->passages)
        return s3_errf(err, S3_EINVAL, "index: chunk without passage array");
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        if (p->start_tok != pt || p->start_char != pc || p->end_tok <= p->start_tok ||
            p->end_tok > end || p->end_char < p->start_char ||
            (p->end_char > p->start_char && !p->text) || (p->n_sent && (!p->sent_tok ||
            !p->sent_char)))
            return s3_errf(err, S3_EINVAL,
                           "index: passage %lld does not continue the text (tokens %lld..%lld,"
                           " bytes %lld..%lld; expected a start at token %lld, byte %lld)",
                           (long long)(w->st.n_passages + (int64_t)i),
                           (long long)p->start_tok, (long long)p->end_tok,
                           (long long)p->start_char, (long long)p->end_char, (long long)pt,
                           (long long)pc);
        int64_t lt = p->start_tok, lc = p->start_char;
        for (size_t j = 0; j < p->n_sent; j++) {
            if (p->sent_tok[j] <= lt || p->sent_tok[j] >= p->end_tok || p->sent_char[j] < lc ||
                p->sent_char[j] > p->end_char)
                return s3_errf(err, S3_EINVAL, "index: bad sentence start in passage %lld",
                               (long long)(w->st.n_passages + (int64_t)i));
            lt = p->sent_tok[j];
            lc = p->sent_char[j];
        }
        pt = p->end_tok;
        pc = p->end_char;
    }
    if (w->st.n_passages + (int64_t)c->n_passages > 0xffffffffLL)
        return s3_errf(err, S3_ETOOBIG, "index: too many passages");
    return 0;
}

/* Sort w->hits[0..n) by feature (stable: positions keep their order) into w->sorted. */
static int sort_hits(struct idx_writer *w, size_t n, int32_t max_feat)
{
    if (grow((void **)&w->sorted, &w->sorted_cap, n + 1, sizeof *w->sorted) < 0 ||
        grow((void **)&w->count, &w->count_cap, (size_t)max_feat + 2, sizeof *w->count) < 0)
        return S3_ENOMEM;
    memset(w->count, 0, ((size_t)max_feat + 2) * sizeof *w->count);
    for (size_t i = 0; i < n; i++)
        w->count[w->hits[i].feat + 1]++;
    for (int32_t f = 0; f <= max_feat; f++)
        w->count[f + 1] += w->count[f];
    for (size_t i = 0; i < n; i++)
        w->sorted[w->count[w->hits[i].feat]++] = w->hits[i];
    return 0;
}

/* Encode the run sorted[i..j) of one feature relative to base into w->enc; a feature listed
 * twice for one token keeps its larger activation. Returns the byte count. */
static int encode_run(struct idx_writer *w, size_t i, size_t j, int64_t base)
{
    size_t m = 0;
    if (grow((void **)&w->posts, &w->posts_cap, j - i, sizeof *w->posts) < 0 ||
        grow((void **)&w->enc, &w->enc_cap, (j - i) * 11 + 20, 1) < 0)
        return S3_ENOMEM;
    for (size_t q = i; q < j; q++) {
        if (m && w->posts[m - 1].pos == w->sorted[q].pos) {
            if (w->sorted[q].q > w->posts[m - 1].q)
                w->posts[m - 1].q = w->sorted[q].q;
            continue;
        }
        w->posts[m].pos = w->sorted[q].pos;
        w->posts[m++].q = w->sorted[q].q;
    }
    w->n_enc = m;
    return idx__post_encode(base, -1, w->posts, m, w->enc);
}

/* Write one slot's hits of the chunk as a pending row. */
static int write_slot(struct idx_writer *w, const struct idx_chunk *c, int si, uint8_t **blob,
                      size_t *blob_cap, struct s3_errinfo *err)
{
    size_t n_pairs = (size_t)c->n_tok * (size_t)c->k, n = 0;
    const int32_t *feat = c->feat + (size_t)si * n_pairs;
    const float *act = c->act + (size_t)si * n_pairs;
    if (grow((void **)&w->hits, &w->hits_cap, n_pairs + 1, sizeof *w->hits) < 0)
        goto oom;
    int32_t max_feat = -1;
    for (int i = 0; i < c->n_tok; i++)
        for (int j = 0; j < c->k; j++) {
            size_t o = (size_t)i * (size_t)c->k + (size_t)j;
            int32_t f = feat[o];
            float a = act[o];
            if (f < 0 || !(a > 0))
                continue;
            if (f >= IDX_MAX_FEATURE)
                return s3_errf(err, S3_EINVAL, "index: feature id %d out of range", (int)f);
            w->hits[n].feat = f;
            w->hits[n].pos = c->tok0 + i;
            w->hits[n].q = idx__act_encode(a);
            n++;
            if (f > max_feat)
                max_feat = f;
        }
    if (!n)
        return 0;
    if (sort_hits(w, n, max_feat) < 0)
        goto oom;
    size_t len = 0;
    int32_t prev_f = -1;
    for (size_t i = 0; i < n;) {
        int32_t f = w->sorted[i].feat;
        size_t j = i;
        while (j < n && w->sorted[j].feat == f)
            j++;
        int m = encode_run(w, i, j, c->tok0);
        if (m < 0)
            goto oom;
        if (grow((void **)blob, blob_cap, len + (size_t)m + 20, 1) < 0)
            goto oom;
        len += idx__varint_put(*blob + len, (uint64_t)(f - prev_f - 1));
        len += idx__varint_put(*blob + len, (uint64_t)m);
        memcpy(*blob + len, w->enc, (size_t)m);
        len += (size_t)m;
        prev_f = f;
        i = j;
    }
    sqlite3_stmt *st = w->ins_pend;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, w->doc);
    sqlite3_bind_int64(st, 2, c->tok0);
    sqlite3_bind_int(st, 3, c->slots[si].layer);
    sqlite3_bind_int(st, 4, c->slots[si].kv_head);
    sqlite3_bind_blob(st, 5, *blob, (int)len, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        return idx__sqlerr(w->db, src, "index: write postings", err);
    return 0;
oom:
    return s3_errf(err, S3_ENOMEM, "index: out of memory");
}

struct gather {
    struct idx_writer *w;
    size_t n;
    int32_t feat;
    int32_t max_feat;
    int oom;
};

static void gather_fn(void *ud, int64_t pos, uint8_t q, float act)
{
    struct gather *g = ud;
    (void)act;
    if (grow((void **)&g->w->hits, &g->w->hits_cap, g->n + 1, sizeof *g->w->hits) < 0) {
        g->oom = 1;
        return;
    }
    g->w->hits[g->n].feat = g->feat;
    g->w->hits[g->n].pos = pos;
    g->w->hits[g->n].q = q;
    g->n++;
    if (g->feat > g->max_feat)
        g->max_feat = g->feat;
}

/* Merge the pending rows [seg_start, end) into one postings row per (slot, feature) of a new
 * segment; inside the caller's transaction. */
static int merge_segment(struct idx_writer *w, int64_t end, struct s3_errinfo *err)
{
    sqlite3_stmt *rd = NULL, *ins = NULL, *del = NULL;
    int rc = idx__prepare(w->db,
                          "SELECT layer, head, tok0, blob FROM pending WHERE doc = ?"
                          " ORDER BY layer, head, tok0",
                          &rd, err);
    if (rc == 0)
        rc = idx__prepare(w->db,
                          "INSERT INTO postings(doc, seg, layer, head, feature, n, blob)"
                          " VALUES(?,?,?,?,?,?,?)",
                          &ins, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(rd, 1, w->doc);
    int src = sqlite3_step(rd);
    while (src == SQLITE_ROW) {
        int layer = sqlite3_column_int(rd, 0), head = sqlite3_column_int(rd, 1);
        struct gather g = {.w = w, .max_feat = -1};
        /* all pending rows of this slot, in position order */
        while (src == SQLITE_ROW && sqlite3_column_int(rd, 0) == layer &&
               sqlite3_column_int(rd, 1) == head) {
            int64_t tok0 = sqlite3_column_int64(rd, 2);
            const uint8_t *p = sqlite3_column_blob(rd, 3), *e = p + sqlite3_column_bytes(rd, 3);
            int32_t f = -1;
            while (p && p < e) {
                uint64_t df, nb;
                size_t k1 = idx__varint_get(p, e, &df);
                size_t k2 = k1 ? idx__varint_get(p + k1, e, &nb) : 0;
                if (!k2 || nb > (uint64_t)(e - p - (ptrdiff_t)(k1 + k2)) ||
                    (int64_t)f + 1 + (int64_t)df >= IDX_MAX_FEATURE) {
                    rc = s3_errf(err, S3_EFORMAT, "index: corrupt pending postings of "
                                 "document %lld", (long long)w->doc);
                    goto out;
                }
                f = (int32_t)((int64_t)f + 1 + (int64_t)df);
                p += k1 + k2;
                g.feat = f;
                if (idx__post_decode(tok0, end, p, (size_t)nb, NULL, gather_fn, &g) < 0) {
                    rc = s3_errf(err, S3_EFORMAT, "index: corrupt pending postings of "
                                 "document %lld", (long long)w->doc);
                    goto out;
                }
                if (g.oom)
                    goto oom;
                p += nb;
            }
            src = sqlite3_step(rd);
        }
        if (g.n == 0)
            continue;
        if (sort_hits(w, g.n, g.max_feat) < 0)
            goto oom;
        for (size_t i = 0; i < g.n;) {
            int32_t f = w->sorted[i].feat;
            size_t j = i;
            while (j < g.n && w->sorted[j].feat == f)
                j++;
            int m = encode_run(w, i, j, w->seg_start);
            if (m < 0) {
                rc = m == S3_ENOMEM ? s3_errf(err, S3_ENOMEM, "index: out of memory")
                                    : s3_errf(err, S3_EFORMAT, "index: pending postings of "
                                              "document %lld out of order", (long long)w->doc);
                goto out;
            }
            sqlite3_reset(ins);
            sqlite3_bind_int64(ins, 1, w->doc);
            sqlite3_bind_int64(ins, 2, w->seg_start);
            sqlite3_bind_int(ins, 3, layer);
            sqlite3_bind_int(ins, 4, head);
            sqlite3_bind_int(ins, 5, f);
            sqlite3_bind_int64(ins, 6, (int64_t)w->n_enc);
            sqlite3_bind_blob(ins, 7, w->enc, m, SQLITE_STATIC);
            int s2 = sqlite3_step(ins);
            if (s2 != SQLITE_DONE) {
                rc = idx__sqlerr(w->db, s2, "index: write postings", err);
                goto out;
            }
            i = j;
        }
    }
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(w->db, src, "index: read pending postings", err);
        goto out;
    }
    rc = idx__prepare(w->db,
                      "DELETE FROM pending WHERE doc = ?1;", &del, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(del, 1, w->doc);
    src = sqlite3_step(del);
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(w->db, src, "index: merge postings", err);
        goto out;
    }
    sqlite3_finalize(del);
    del = NULL;
    rc = idx__prepare(w->db, "INSERT INTO segments(doc, seg, end) VALUES(?,?,?)", &del, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(del, 1, w->doc);
    sqlite3_bind_int64(del, 2, w->seg_start);
    sqlite3_bind_int64(del, 3, end);
    src = sqlite3_step(del);
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(w->db, src, "index: merge postings", err);
out:
    sqlite3_finalize(rd);
    sqlite3_finalize(ins);
    sqlite3_finalize(del);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

static int write_passages(struct idx_writer *w, const struct idx_chunk *c, int64_t *words,
                          struct s3_errinfo *err)
{
    uint8_t *sb = NULL;
    size_t sb_cap = 0;
    int rc = 0;
    *words = 0;
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        int64_t id = IDX_PASSAGE_ID(w->doc, w->st.n_passages + (int64_t)i);
        size_t len = 0;
        if (grow((void **)&sb, &sb_cap, p->n_sent * 20 + 1, 1) < 0) {
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
            goto out;
        }
        int64_t lt = p->start_tok, lc = p->start_char;
        for (size_t j = 0; j < p->n_sent; j++) {
            len += idx__varint_put(sb + len, (uint64_t)(p->sent_tok[j] - lt));
            len += idx__varint_put(sb + len, (uint64_t)(p->sent_char[j] - lc));
            lt = p->sent_tok[j];
            lc = p->sent_char[j];
        }
        int tlen = (int)(p->end_char - p->start_char);
        const char *text = tlen ? p->text : "";
        sqlite3_stmt *st = w->ins_pass;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, w->doc);
        sqlite3_bind_int64(st, 3, p->start_tok);
        sqlite3_bind_int64(st, 4, p->end_tok);
        sqlite3_bind_int64(st, 5, p->start_char);
        sqlite3_bind_int64(st, 6, p->end_char);
        sqlite3_bind_blob(st, 7, sb, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, text, tlen, SQLITE_STATIC);
        int src = sqlite3_step(st);
        if (src != SQLITE_DONE) {
            rc = idx__sqlerr(w->db, src, "index: write passage", err);
            goto out;
        }
        st = w->ins_fts;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, text, tlen, SQLITE_STATIC);
        src = sqlite3_step(st);
        if (src != SQLITE_DONE) {
            rc = idx__sqlerr(w->db, src, "index: write passage text index", err);
            goto out;
        }
    }
    if (c->n_passages)
        rc = idx__fts_words(w->db, IDX_PASSAGE_ID(w->doc, w->st.n_passages),
                            IDX_PASSAGE_ID(w->doc, w->st.n_passages + (int64_t)c->n_passages - 1),
                            words, err);
out:
    free(sb);
    return rc;
}

static int update_doc(struct idx_writer *w, const struct idx_scan_state *ns, int64_t words,
                      int64_t seg, struct s3_errinfo *err)
{
    sqlite3_stmt *st = w->upd_doc;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, ns->next_tok);
    sqlite3_bind_int64(st, 2, ns->n_passages);
    sqlite3_bind_int64(st, 3, ns->pass_tok);
    sqlite3_bind_int64(st, 4, ns->pass_char);
    sqlite3_bind_int64(st, 5, words);
    sqlite3_bind_int64(st, 6, seg);
    sqlite3_bind_int64(st, 7, w->doc);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        return idx__sqlerr(w->db, src, "index: update document", err);
    if (sqlite3_changes(w->db->db) != 1)
        return s3_errf(err, S3_ENOTFOUND, "index: document %lld vanished or changed state",
                       (long long)w->doc);
    return 0;
}

int idx_writer_add(struct idx_writer *w, const struct idx_chunk *c, struct s3_errinfo *err)
{
    uint8_t *blob = NULL;
    size_t blob_cap = 0;
    int rc;
    if (!c)
        return s3_errf(err, S3_EINVAL, "index: no chunk");
    rc = check_chunk(w, c, err);
    if (rc < 0)
        return rc;
    rc = idx__exec(w->db, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    for (int s = 0; s < c->n_slot && rc == 0; s++)
        rc = write_slot(w, c, s, &blob, &blob_cap, err);
    free(blob);
    int64_t words = 0;
    if (rc == 0)
        rc = write_passages(w, c, &words, err);
    struct idx_scan_state ns = w->st;
    ns.next_tok = c->tok0 + c->n_tok;
    ns.n_passages += (int64_t)c->n_passages;
    ns.n_chunks++;
    if (c->n_passages) {
        ns.pass_tok = c->passages[c->n_passages - 1].end_tok;
        ns.pass_char = c->passages[c->n_passages - 1].end_char;
    }
    int64_t seg = w->seg_start;
    if (rc == 0 && ns.next_tok - w->seg_start >= IDX_SEG_TOKENS) {
        rc = merge_segment(w, ns.next_tok, err);
        seg = ns.next_tok;
    }
    if (rc == 0)
        rc = update_doc(w, &ns, words, seg, err);
    if (rc == 0)
        rc = idx__exec(w->db, "COMMIT", err);
    if (rc < 0) {
        sqlite3_exec(w->db->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    w->st = ns;
    w->seg_start = seg;
    return 0;
}

static int exec_int(struct idx_writer *w, const char *sql, int64_t v,
                         struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(w->db, sql, &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, v);
    sqlite3_bind_int64(st, 2, w->doc);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(w->db, src, "index: update document", err);
    sqlite3_finalize(st);
    return rc;
}

static int set_status(struct idx_writer *w, const char *status, const char *why,
                      struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(w->db,
                          "UPDATE documents SET status = ?, finished = ?, error = ?"
                          " WHERE id = ? AND status = 'scanning'",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)time(NULL));
    if (why)
        sqlite3_bind_text(st, 3, why, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, w->doc);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(w->db, src, "index: finish document", err);
    else if (sqlite3_changes(w->db->db) != 1)
        rc = s3_errf(err, S3_ENOTFOUND, "index: document %lld vanished or changed state",
                     (long long)w->doc);
    sqlite3_finalize(st);
    if (rc == 0)
        w->done = 1;
    return rc;
}

int idx_writer_finish(struct idx_writer *w, struct s3_errinfo *err)
{
    if (w->done)
        return s3_errf(err, S3_EINVAL, "index: document %lld is already finished",
                       (long long)w->doc);
    if (w->st.next_tok <= 0)
        return s3_errf(err, S3_EINVAL, "index: document %lld has no tokens", (long long)w->doc);
    if (w->st.pass_tok != w->st.next_tok)
        return s3_errf(err, S3_EINVAL,
                       "index: passages cover %lld of %lld tokens of document %lld",
                       (long long)w->st.pass_tok, (long long)w->st.next_tok, (long long)w->doc);
    int rc = idx__exec(w->db, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    int64_t seg = w->seg_start;
    if (w->st.next_tok > w->seg_start) {
        rc = merge_segment(w, w->st.next_tok, err);
        seg = w->st.next_tok;
    }
    if (rc == 0)
        rc = idx__compact(w->db, w->doc, w->st.next_tok, err);
    if (rc == 0)
        rc = idx__docmap_write(w->db, w->doc, w->st.n_passages, err);
    if (rc == 0)
        rc = exec_int(w, "UPDATE documents SET seg_start = ? WHERE id = ?", seg, err);
    if (rc == 0)
        rc = set_status(w, "ready", NULL, err);
    if (rc == 0)
        rc = idx__exec(w->db, "COMMIT", err);
    if (rc < 0) {
        sqlite3_exec(w->db->db, "ROLLBACK", NULL, NULL, NULL);
        w->done = 0;
        return rc;
    }
    w->seg_start = seg;
    return 0;
}

int idx_writer_fail(struct idx_writer *w, const char *why, struct s3_errinfo *err)
{
    return set_status(w, "failed", why ? why : "", err);
}
