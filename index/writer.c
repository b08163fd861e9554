/* index/writer.c - writing a document chunk by chunk. Chunks are encoded as they come and
 * committed together: when a segment is full (its postings go straight into segslots rows of
 * that segment, never into pending rows), when IDX_COMMIT_MS have passed since the last
 * commit (as pending rows), at idx_writer_flush() and at finish, which writes the last segment
 * and drops the stop features of every segment. Driven by idx_async, each chunk's passages
 * are written at once, in the transaction that the next commit ends. The document is visible
 * only once finished. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index_int.h"

/* One pending blob of the current segment, in w->mem. */
struct mpart {
    int layer, head;
    int64_t tok0, end;
    size_t off, len;
    int written;             /* also a pending row in the database */
};

/* A passage accepted but not yet committed; its text and encoded sentence starts in
 * w->held. */
struct held_pass {
    int64_t start_tok, end_tok, start_char, end_char;
    size_t text_off, text_len, sents_off, sents_len;
};

/* Entry counts per (layer, head) slot, dense over the features (8 bytes per feature of the
 * dictionary and slot: a segment's directory, features increasing, walks its slot's array in
 * order). */
struct df_slot {
    int layer, head;
    int64_t *n;
    size_t cap;              /* features covered: n[0, cap) */
};
struct df_map {
    struct df_slot *s;
    size_t n_s, cap_s;
};

/* The slot (layer, head) of m, added if new; NULL when out of memory. */
static struct df_slot *df_slot_of(struct df_map *m, int layer, int head)
{
    for (size_t i = m->n_s; i-- > 0;)
        if (m->s[i].layer == layer && m->s[i].head == head)
            return &m->s[i];
    if (m->n_s == m->cap_s) {
        const size_t nc = m->cap_s ? 2 * m->cap_s : 16;
        struct df_slot *ns = realloc(m->s, nc * sizeof *ns);
        if (!ns)
            return NULL;
        m->s = ns;
        m->cap_s = nc;
    }
    m->s[m->n_s] = (struct df_slot){layer, head, NULL, 0};
    return &m->s[m->n_s++];
}

/* Add n to feat's count in slot d; *total = its new count. S3_ENOMEM. */
static int df_add(struct df_slot *d, int32_t feat, int64_t n, int64_t *total)
{
    if ((size_t)feat >= d->cap) {
        size_t nc = d->cap ? d->cap : 1024;
        while (nc <= (size_t)feat)
            nc *= 2;
        int64_t *nn = realloc(d->n, nc * sizeof *nn);
        if (!nn)
            return S3_ENOMEM;
        memset(nn + d->cap, 0, (nc - d->cap) * sizeof *nn);
        d->n = nn;
        d->cap = nc;
    }
    *total = d->n[feat] += n;
    return 0;
}

static void df_clear(struct df_map *m)
{
    for (size_t i = 0; i < m->n_s; i++)
        if (m->s[i].cap)
            memset(m->s[i].n, 0, m->s[i].cap * sizeof *m->s[i].n);
}

static void df_free(struct df_map *m)
{
    for (size_t i = 0; i < m->n_s; i++)
        free(m->s[i].n);
    free(m->s);
}

struct idx_writer {
    struct idx_db *db;
    int64_t doc;
    struct idx_scan_state st;    /* accepted: where the next chunk starts */
    struct idx_scan_state cst;   /* committed */
    int64_t seg_start;    /* first position not yet merged into a segment */
    int64_t n_bytes;      /* of the source text (0: unknown) */
    int done;
    int commit_ms;
    double last_commit_ms;
    struct idx_tuning tun;   /* db's when the writer began or resumed */
    sqlite3_stmt *ins_pend, *ins_pass, *ins_fts, *upd_doc;
    struct idx_enc enc;      /* scratch of the chunk encoder */
    /* the pending blobs of the current segment, kept in memory for its merge */
    struct idx_buf mem;
    struct mpart *parts;
    size_t n_parts, parts_cap;
    /* entries per (slot, feature) in the segments written so far (stale: reload from the
     * segment directories before use, after a resume or a rolled back segment) */
    struct df_map df;
    int df_stale;            /* 1: stale; 2: include rows not yet committed */
    /* eager (a writer driven by idx_async): the first chunk after a commit opens the write
     * transaction and every chunk writes its passages there at once, so that the commit does
     * not write them all in one go (the database is the writer thread's meanwhile; a writer
     * driven by its caller holds them until the commit and no transaction between chunks, so
     * that the caller may use the connection between chunks). txn: the transaction is open;
     * txn_pass and txn_words: passages written in it and their FTS token count */
    int eager;
    int txn;
    int64_t txn_pass, txn_words;
    /* passages accepted and not yet written */
    struct held_pass *hp;
    size_t n_hp, hp_cap;
    struct idx_buf held;
    struct idx_writer_times tm;
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
                          "UPDATE documents SET n_tokens = ?, n_chunks = ?,"
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
                          " seg_start, n_bytes FROM documents WHERE id = ?",
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
        w->n_bytes = sqlite3_column_int64(st, 7);
        w->cst = w->st;
    } else if (src == SQLITE_DONE) {
        rc = s3_errf(err, S3_ENOTFOUND, "index: no document %lld", (long long)w->doc);
    } else {
        rc = idx__sqlerr(w->db, src, "index: resume", err);
    }
    sqlite3_finalize(st);
    return rc;
}

static int load_pending(struct idx_writer *w, struct s3_errinfo *err);
static void drop_held(struct idx_writer *w);

/* Pages of this database's page size in bytes (at least 1). */
static int wal_pages(struct idx_db *db, int64_t bytes)
{
    sqlite3_stmt *st = NULL;
    int64_t ps = 4096;
    if (sqlite3_prepare_v2(db->db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0)
        ps = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return bytes / ps > 0 ? (int)(bytes / ps) : 1;
}

/* resume: the document may have a segment's pending rows to load. */
static int writer_new(struct idx_db *db, int64_t doc, int resume, struct idx_writer **out,
                      struct s3_errinfo *err)
{
    struct idx_writer *w = calloc(1, sizeof *w);
    if (!w)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    w->db = db;
    w->doc = doc;
    w->tun = db->tun;
    w->commit_ms = IDX_COMMIT_MS;
    w->last_commit_ms = s3_now_ms();
    w->df_stale = resume;
    /* what a scan reads back (the passages for the docmap; on resume, the counts of the
     * segments written): through the bounded page cache, not the map, so that the process's
     * memory does not grow with the document. The WAL is
     * checkpointed by the database's checkpointer thread (ckpt.c) so that copying pages into
     * the database file overlaps the writing and outlasts the writer;
     * where there is none (an in-memory database) every 64 MiB instead of 4: pages written
     * and freed within that window reach the database file once or never. */
    char pragma[128];
    snprintf(pragma, sizeof pragma,
             "PRAGMA mmap_size=0; PRAGMA cache_size=-%d; PRAGMA wal_autocheckpoint=%d",
             w->tun.scan_cache_kib,
             idx__ckpt_start(db) == 0 ? 0 : wal_pages(db, IDX_SCAN_WAL_BYTES));
    int rc = idx__exec(db, pragma, err);
    if (rc == 0)
        rc = prepare_all(w, err);
    if (rc == 0)
        rc = load_state(w, err);
    if (rc == 0 && resume)
        rc = load_pending(w, err);
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
    idx__wait_enter(db);
    int src = sqlite3_step(st);
    idx__wait_leave(db);
    sqlite3_finalize(st);
    if (src != SQLITE_DONE)
        return idx__sqlerr(db, src, "index: new document", err);
    return writer_new(db, sqlite3_last_insert_rowid(db->db), 0, out, err);
}

int idx_writer_resume(struct idx_db *db, int64_t doc, struct idx_writer **out,
                      struct s3_errinfo *err)
{
    *out = NULL;
    if (db->readonly)
        return s3_errf(err, S3_EINVAL, "index: database is open read-only");
    return writer_new(db, doc, 1, out, err);
}

int64_t idx_writer_doc(const struct idx_writer *w)
{
    return w->doc;
}

void idx_writer_state(const struct idx_writer *w, struct idx_scan_state *st)
{
    *st = w->st;
}

void idx_writer_times(const struct idx_writer *w, struct idx_writer_times *t)
{
    *t = w->tm;
}

void idx__writer_set_eager(struct idx_writer *w, int on)
{
    w->eager = on;
}

void idx__writer_add_encode_ms(struct idx_writer *w, double ms)
{
    w->tm.encode += ms;
}

void idx_writer_free(struct idx_writer *w)
{
    if (!w)
        return;
    drop_held(w); /* freed without a flush: what it held since its last commit is lost */
    char pragma[128];
    snprintf(pragma, sizeof pragma,
             "PRAGMA mmap_size=" IDX_MMAP_SIZE_STR "; PRAGMA wal_autocheckpoint=%d;"
             " PRAGMA cache_size=" IDX_QUERY_CACHE, wal_pages(w->db, IDX_WAL_BYTES));
    sqlite3_exec(w->db->db, pragma, NULL, NULL, NULL);
    sqlite3_finalize(w->ins_pend);
    sqlite3_finalize(w->ins_pass);
    sqlite3_finalize(w->ins_fts);
    sqlite3_finalize(w->upd_doc);
    idx__enc_free(&w->enc);
    free(w->mem.p);
    free(w->parts);
    free(w->hp);
    free(w->held.p);
    df_free(&w->df);
    free(w);
}

int idx__chunk_shape(const struct idx_chunk *c, int encoded, struct s3_errinfo *err)
{
    if (c->n_tok < 0 || c->n_slot < 0 || c->n_slot > IDX_MAX_SLOTS || c->k < 0 || c->k > 1024)
        return s3_errf(err, S3_EINVAL, "index: bad chunk shape (n_tok %d, n_slot %d, k %d)",
                       c->n_tok, c->n_slot, c->k);
    if (c->n_slot && !c->slots)
        return s3_errf(err, S3_EINVAL, "index: chunk without its slot array");
    const size_t n_pairs = encoded ? 0 : (size_t)c->n_tok * (size_t)c->n_slot * (size_t)c->k;
    if (n_pairs && (!c->feat || !c->act))
        return s3_errf(err, S3_EINVAL, "index: chunk without feature arrays");
    for (size_t i = 0; i < n_pairs; i++) /* a pair counts when its activation is positive */
        if (c->feat[i] >= IDX_MAX_FEATURE && c->act[i] > 0)
            return s3_errf(err, S3_EINVAL, "index: feature id %d out of range", (int)c->feat[i]);
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
    if (c->n_passages && !c->passages)
        return s3_errf(err, S3_EINVAL, "index: chunk without passage array");
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        if (p->end_char < p->start_char || (p->end_char > p->start_char && !p->text) ||
            (p->n_sent && (!p->sent_tok || !p->sent_char)))
            return s3_errf(err, S3_EINVAL, "index: passage %zu of the chunk ends before it"
                           " starts or lacks its text or sentence arrays", i);
    }
    return 0;
}

/* idx__chunk_shape, then that c continues the document as accepted so far. */
static int check_chunk(const struct idx_writer *w, const struct idx_chunk *c, int encoded,
                       struct s3_errinfo *err)
{
    if (w->done)
        return s3_errf(err, S3_EINVAL, "index: document %lld is already finished",
                       (long long)w->doc);
    if (c->tok0 != w->st.next_tok)
        return s3_errf(err, S3_EINVAL, "index: chunk starts at token %lld, expected %lld",
                       (long long)c->tok0, (long long)w->st.next_tok);
    int rc = idx__chunk_shape(c, encoded, err);
    if (rc < 0)
        return rc;
    int64_t end = c->tok0 + c->n_tok, pt = w->st.pass_tok, pc = w->st.pass_char;
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        if (p->start_tok != pt || p->start_char != pc || p->end_tok <= p->start_tok ||
            p->end_tok > end)
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

/* Sort e->hits[0..n) by feature (stable: positions keep their order) into e->sorted. */
static int sort_hits(struct idx_enc *e, size_t n, int32_t max_feat)
{
    if (grow((void **)&e->sorted, &e->sorted_cap, n + 1, sizeof *e->sorted) < 0 ||
        grow((void **)&e->count, &e->count_cap, (size_t)max_feat + 2, sizeof *e->count) < 0)
        return S3_ENOMEM;
    memset(e->count, 0, ((size_t)max_feat + 2) * sizeof *e->count);
    for (size_t i = 0; i < n; i++)
        e->count[e->hits[i].feat + 1]++;
    for (int32_t f = 0; f <= max_feat; f++)
        e->count[f + 1] += e->count[f];
    for (size_t i = 0; i < n; i++)
        e->sorted[e->count[e->hits[i].feat]++] = e->hits[i];
    return 0;
}

/* Encode the run sorted[i..j) of one feature relative to base into e->enc; a feature listed
 * twice for one token keeps its larger activation. Returns the byte count. */
static int encode_run(struct idx_enc *e, size_t i, size_t j, int64_t base)
{
    size_t m = 0;
    if (grow((void **)&e->posts, &e->posts_cap, j - i, sizeof *e->posts) < 0 ||
        grow((void **)&e->enc, &e->enc_cap, (j - i) * 11 + 20, 1) < 0)
        return S3_ENOMEM;
    for (size_t q = i; q < j; q++) {
        if (m && e->posts[m - 1].pos == e->sorted[q].pos) {
            if (e->sorted[q].q > e->posts[m - 1].q)
                e->posts[m - 1].q = e->sorted[q].q;
            continue;
        }
        e->posts[m].pos = e->sorted[q].pos;
        e->posts[m++].q = e->sorted[q].q;
    }
    e->n_enc = m;
    return idx__post_encode(base, -1, e->posts, m, e->enc);
}

int idx__enc_slot(struct idx_enc *e, const struct idx_chunk *c, int si, struct s3_errinfo *err)
{
    size_t n_pairs = (size_t)c->n_tok * (size_t)c->k, n = 0;
    const int32_t *feat = c->feat + (size_t)si * n_pairs;
    const float *act = c->act + (size_t)si * n_pairs;
    e->blob.n = 0;
    if (grow((void **)&e->hits, &e->hits_cap, n_pairs + 1, sizeof *e->hits) < 0)
        goto oom;
    int32_t max_feat = -1;
    for (int i = 0; i < c->n_tok; i++)
        for (int j = 0; j < c->k; j++) {
            size_t o = (size_t)i * (size_t)c->k + (size_t)j;
            int32_t f = feat[o];
            float a = act[o];
            if (f < 0 || !(a > 0))
                continue;
            e->hits[n].feat = f;
            e->hits[n].pos = c->tok0 + i;
            e->hits[n].q = idx__act_encode(a);
            n++;
            if (f > max_feat)
                max_feat = f;
        }
    if (!n)
        return 0;
    if (sort_hits(e, n, max_feat) < 0)
        goto oom;
    int32_t prev_f = -1;
    for (size_t i = 0; i < n;) {
        int32_t f = e->sorted[i].feat;
        size_t j = i;
        while (j < n && e->sorted[j].feat == f)
            j++;
        int m = encode_run(e, i, j, c->tok0);
        if (m < 0 || idx__grp_put(&e->blob, prev_f, f, (int64_t)e->n_enc,
                                  e->posts[e->n_enc - 1].pos - c->tok0, e->enc, (size_t)m) < 0)
            goto oom;
        prev_f = f;
        i = j;
    }
    return 0;
oom:
    return s3_errf(err, S3_ENOMEM, "index: out of memory");
}

void idx__enc_free(struct idx_enc *e)
{
    free(e->hits);
    free(e->sorted);
    free(e->count);
    free(e->enc);
    free(e->posts);
    free(e->blob.p);
    memset(e, 0, sizeof *e);
}

/* Keep a copy of a pending blob for the segment merge. */
static int remember(struct idx_writer *w, int layer, int head, int64_t tok0, int64_t end,
                    const uint8_t *blob, size_t len)
{
    if (grow((void **)&w->parts, &w->parts_cap, w->n_parts + 1, sizeof *w->parts) < 0 ||
        idx__buf_reserve(&w->mem, len) < 0)
        return S3_ENOMEM;
    w->parts[w->n_parts++] = (struct mpart){layer, head, tok0, end, w->mem.n, len, 0};
    memcpy(w->mem.p + w->mem.n, blob, len);
    w->mem.n += len;
    return 0;
}

/* A resumed writer: the pending blobs of the unmerged segment back into memory. */
static int load_pending(struct idx_writer *w, struct s3_errinfo *err)
{
    sqlite3_stmt *rd = NULL;
    int rc = idx__prepare(w->db,
                          "SELECT layer, head, tok0, blob FROM pending WHERE doc = ?"
                          " ORDER BY tok0, layer, head",
                          &rd, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(rd, 1, w->doc);
    int src;
    while (rc == 0 && (src = sqlite3_step(rd)) == SQLITE_ROW) {
        int64_t tok0 = sqlite3_column_int64(rd, 2);
        if (tok0 < w->seg_start || tok0 >= w->st.next_tok)
            rc = s3_errf(err, S3_EFORMAT, "index: pending postings of document %lld outside"
                         " its unmerged range", (long long)w->doc);
        else if (remember(w, sqlite3_column_int(rd, 0), sqlite3_column_int(rd, 1), tok0,
                          w->st.next_tok, sqlite3_column_blob(rd, 3),
                          (size_t)sqlite3_column_bytes(rd, 3)) < 0)
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
        else
            w->parts[w->n_parts - 1].written = 1;
    }
    if (rc == 0 && src != SQLITE_DONE)
        rc = idx__sqlerr(w->db, src, "index: read pending postings", err);
    sqlite3_finalize(rd);
    if (rc == 0) {
        /* a part ends where the next chunk of its slot starts */
        for (size_t i = 0; i < w->n_parts; i++)
            for (size_t j = i + 1; j < w->n_parts; j++)
                if (w->parts[j].layer == w->parts[i].layer &&
                    w->parts[j].head == w->parts[i].head) {
                    w->parts[i].end = w->parts[j].tok0;
                    break;
                }
    }
    return rc;
}

static int cmp_part(const void *a, const void *b)
{
    const struct mpart *x = a, *y = b;
    return idx__cmp_slot_pos(x->layer, x->head, x->tok0, y->layer, y->head, y->tok0);
}

/* A slot's segment merged feature by feature (merge_slot): the entries (relative to the
 * segment start) of each feature in turn, and its directory (format in index_int.h). */
struct slot_out {
    struct idx_buf data, dir;
    int rc;                  /* 0, S3_ENOMEM, S3_ETOOBIG or S3_EFORMAT */
};

/* A feature's directory entry, its entries ending o->data. */
static int emit_record(void *ud, int32_t feat, int64_t n)
{
    struct slot_out *o = ud;
    if (o->data.n > UINT32_MAX || n > UINT32_MAX)
        return S3_ETOOBIG;
    if (idx__buf_reserve(&o->dir, IDX_SEGDIR_ENTRY) < 0)
        return S3_ENOMEM;
    uint8_t *d = o->dir.p + o->dir.n;
    idx__le32_put(d, (uint32_t)feat);
    idx__le32_put(d + 4, (uint32_t)n);
    idx__le32_put(d + 8, (uint32_t)o->data.n);
    o->dir.n += IDX_SEGDIR_ENTRY;
    return 0;
}

static int seal_slot(struct df_slot *ds, struct slot_out *o, int64_t stop_n);

/* Concatenate the pending blobs parts[i, j) of one slot (position order) into o, reading them
 * through rd[0, j - i), and seal it (seal_slot: counts ds, stop_n). */
static void merge_slot(const struct idx_writer *w, size_t i, size_t j, struct idx_grp_rd *rd,
                       struct df_slot *ds, int64_t stop_n, struct slot_out *o)
{
    for (size_t k = i; k < j; k++) {
        const struct mpart *m = &w->parts[k];
        rd[k - i] = (struct idx_grp_rd){.p = w->mem.p + m->off, .e = w->mem.p + m->off + m->len,
                                        .base = m->tok0, .lim = m->end};
    }
    o->data.n = o->dir.n = 0;
    o->rc = idx__grp_concat(rd, j - i, w->seg_start, emit_record, o, &o->data);
    if (o->rc < 0 && o->rc != S3_ENOMEM && o->rc != S3_ETOOBIG)
        o->rc = S3_EFORMAT;
    if (o->rc == 0)
        o->rc = seal_slot(ds, o, stop_n);
}

/* The merging threads of one segment: each takes the next slot k of the segment's n_slots
 * (parts[first[k], first[k + 1]), read through rd + first[k]) and merges it into
 * out[k % n_out] once the writer has taken slot k - n_out, while the writer inserts the rows of
 * the slots merged before. */
struct merger {
    const struct idx_writer *w;
    const size_t *first;
    size_t n_slots;
    struct df_slot **ds;     /* each slot's counts */
    int64_t stop_n;
    struct idx_grp_rd *rd;
    struct slot_out *out;
    size_t *ready;           /* ready[b] = k + 1: out[b] holds slot k merged */
    size_t n_out;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t next, taken;      /* the next slot to merge; slots whose buffer the writer gave back */
    int stop;
    pthread_t *th;
    int n_th;
};

static void *merger_main(void *arg)
{
    struct merger *g = arg;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->stop && g->next < g->n_slots && g->next >= g->taken + g->n_out)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->stop || g->next >= g->n_slots)
            break;
        const size_t k = g->next++;
        pthread_mutex_unlock(&g->mu);
        merge_slot(g->w, g->first[k], g->first[k + 1], g->rd + g->first[k], g->ds[k], g->stop_n,
                   &g->out[k % g->n_out]);
        pthread_mutex_lock(&g->mu);
        g->ready[k % g->n_out] = k + 1;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* Merging threads for a segment of n_slots: the tuning's merge_threads if set, else half the
 * cores less one, at least 1 and at most 7 (none for a single slot). */
static int merge_threads(const struct idx_writer *w, size_t n_slots)
{
    long t = w->tun.merge_threads;
    if (t < 0) {
        t = sysconf(_SC_NPROCESSORS_ONLN) / 2 - 1;
        t = t < 1 ? 1 : t > 7 ? 7 : t;
    }
    return n_slots < 2 ? 0 : (size_t)t > n_slots ? (int)n_slots : (int)t;
}

/* Count a merged slot's features into its slot's counts ds, leave out those with more than
 * stop_n entries in the whole document (stop_n > 0, finishing) and append the directory:
 * o->data is then the row's blob (empty: no feature left). On the thread that merged it
 * (each slot's counts are its own). S3_ENOMEM. */
static int seal_slot(struct df_slot *ds, struct slot_out *o, int64_t stop_n)
{
    uint8_t *dir = o->dir.p;
    const uint32_t n_feat = (uint32_t)(o->dir.n / IDX_SEGDIR_ENTRY);
    uint32_t kept = 0, wdata = 0;
    for (uint32_t i = 0; i < n_feat; i++) {
        uint32_t start, end;
        const uint32_t n = idx__segdir_range(dir, i, &start, &end);
        const int32_t feat = (int32_t)idx__le32(dir + (size_t)i * IDX_SEGDIR_ENTRY);
        int64_t total;
        if (df_add(ds, feat, n, &total) < 0)
            return S3_ENOMEM;
        if (stop_n > 0 && total > stop_n)
            continue;
        /* keep it, moved down over the stop features left out before it */
        if (wdata != start)
            memmove(o->data.p + wdata, o->data.p + start, end - start);
        wdata += end - start;
        uint8_t *d = dir + (size_t)kept++ * IDX_SEGDIR_ENTRY;
        idx__le32_put(d, (uint32_t)feat);
        idx__le32_put(d + 4, n);
        idx__le32_put(d + 8, wdata);
    }
    o->data.n = 0;
    if (!kept)
        return 0;
    o->data.n = wdata;
    if (idx__buf_reserve(&o->data, (size_t)kept * IDX_SEGDIR_ENTRY + 4) < 0)
        return S3_ENOMEM;
    memcpy(o->data.p + o->data.n, dir, (size_t)kept * IDX_SEGDIR_ENTRY);
    o->data.n += (size_t)kept * IDX_SEGDIR_ENTRY;
    idx__le32_put(o->data.p + o->data.n, kept);
    o->data.n += 4;
    return 0;
}

/* Insert the row (id) of one sealed slot (nothing when no feature is left). A SQLite code. */
static int insert_slot(struct idx_writer *w, sqlite3_stmt *ins, int64_t id,
                       const struct mpart *slot, const struct slot_out *o)
{
    if (!o->data.n)
        return 0;
    sqlite3_reset(ins);
    sqlite3_bind_int64(ins, 1, id);
    sqlite3_bind_int64(ins, 2, w->seg_start);
    sqlite3_bind_int(ins, 3, slot->layer);
    sqlite3_bind_int(ins, 4, slot->head);
    sqlite3_bind_blob64(ins, 5, o->data.p, o->data.n, SQLITE_STATIC);
    const int src = sqlite3_step(ins);
    return src == SQLITE_DONE ? 0 : src;
}

static int count_entries(void *ud, int64_t seg, int layer, int head, int32_t feat, int64_t n,
                         const uint8_t *entries, size_t nbytes)
{
    (void)seg;
    (void)entries;
    (void)nbytes;
    int64_t total;
    struct df_slot *ds = df_slot_of(ud, layer, head);
    return ds ? df_add(ds, feat, n, &total) : S3_ENOMEM;
}

/* The entry counts of the segments already written, from their directories (a resumed
 * writer, or one whose segment was rolled back). */
static int load_df(struct idx_writer *w, struct s3_errinfo *err)
{
    df_clear(&w->df);
    int rc = idx__segslot_walk(w->db, w->doc, count_entries, &w->df, err);
    if (rc == S3_ENOMEM)
        rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    if (rc == 0)
        w->df_stale = 0;
    return rc;
}

/* The id of the document's next segslots row. */
static int next_row_id(struct idx_writer *w, int64_t *id, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(w->db,
                          "SELECT coalesce(max(id) + 1, ?1) FROM segslots WHERE id BETWEEN ?1 AND ?2",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(w->doc, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(w->doc, 0xffffffffLL));
    const int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    else
        rc = idx__sqlerr(w->db, src, "index: write segment postings", err);
    sqlite3_finalize(st);
    if (rc == 0 && *id + IDX_MAX_SLOTS > IDX_PASSAGE_ID(w->doc, 0xffffffffLL))
        rc = s3_errf(err, S3_ETOOBIG, "index: document %lld has too many segments",
                     (long long)w->doc);
    return rc;
}

/* Merge the pending blobs [seg_start, end) (their copies in memory) into segslots rows of
 * segment seg_start, one per slot, and record the segment; inside the caller's
 * transaction. stop_n > 0 (finishing): features with more entries in the whole document are
 * left out. Merging threads (merge_threads) concatenate the next slots while this one's row
 * is inserted (the inserts are SQLite's, one thread's). */
static int merge_segment(struct idx_writer *w, int64_t end, int64_t stop_n,
                         struct s3_errinfo *err)
{
    sqlite3_stmt *ins = NULL;
    size_t *first = NULL, n_slots = 0;
    struct merger g = {.w = w};
    int64_t id = 0;
    int rc = w->df_stale ? load_df(w, err) : 0;
    if (rc == 0)
        rc = next_row_id(w, &id, err);
    if (rc == 0)
        rc = idx__prepare(w->db,
                          "INSERT INTO segslots(id, seg, layer, head, blob) VALUES(?,?,?,?,?)",
                          &ins, err);
    if (rc < 0)
        return rc;
    /* the counts change as rows are written: reloaded should the transaction be rolled back */
    w->df_stale = 2;
    if (w->n_parts)
        qsort(w->parts, w->n_parts, sizeof *w->parts, cmp_part);
    first = malloc((w->n_parts + 1) * sizeof *first);
    g.rd = malloc((w->n_parts + 1) * sizeof *g.rd);
    if (!first || !g.rd)
        goto oom;
    for (size_t i = 0; i < w->n_parts; n_slots++) {
        first[n_slots] = i;
        while (++i < w->n_parts && w->parts[i].layer == w->parts[first[n_slots]].layer &&
               w->parts[i].head == w->parts[first[n_slots]].head)
            ;
    }
    first[n_slots] = w->n_parts;
    g.first = first;
    g.n_slots = n_slots;
    g.stop_n = stop_n;
    /* every slot's counts first (adding one may move the others), then their addresses */
    for (size_t k = 0; k < n_slots; k++)
        if (!df_slot_of(&w->df, w->parts[first[k]].layer, w->parts[first[k]].head))
            goto oom;
    g.ds = malloc((n_slots ? n_slots : 1) * sizeof *g.ds);
    if (!g.ds)
        goto oom;
    for (size_t k = 0; k < n_slots; k++)
        g.ds[k] = df_slot_of(&w->df, w->parts[first[k]].layer, w->parts[first[k]].head);
    const int want = merge_threads(w, n_slots);
    g.n_out = (size_t)want + 1;
    g.out = calloc(g.n_out, sizeof *g.out);
    g.ready = calloc(g.n_out, sizeof *g.ready);
    g.th = want ? malloc((size_t)want * sizeof *g.th) : NULL;
    if (!g.out || !g.ready || (want && !g.th))
        goto oom;
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    while (g.n_th < want && pthread_create(&g.th[g.n_th], NULL, merger_main, &g) == 0)
        g.n_th++;
    for (size_t k = 0; k < n_slots && rc == 0; k++) {
        struct slot_out *o = &g.out[k % g.n_out];
        if (g.n_th) {
            pthread_mutex_lock(&g.mu);
            while (g.ready[k % g.n_out] != k + 1)
                pthread_cond_wait(&g.cv, &g.mu);
            pthread_mutex_unlock(&g.mu);
        } else {
            merge_slot(w, first[k], first[k + 1], g.rd + first[k], g.ds[k], stop_n, o);
        }
        if (o->rc == S3_ENOMEM)
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
        else if (o->rc == S3_ETOOBIG)
            rc = s3_errf(err, S3_ETOOBIG, "index: a segment of one slot over 4 GiB; lower the"
                         " segment size");
        else if (o->rc < 0)
            rc = s3_errf(err, S3_EFORMAT, "index: corrupt pending postings of document %lld",
                         (long long)w->doc);
        const int src = rc == 0 ? insert_slot(w, ins, id + (int64_t)k, &w->parts[first[k]], o) : 0;
        if (src > 0)
            rc = idx__sqlerr(w->db, src, "index: write segment postings", err);
        if (g.n_th) {
            pthread_mutex_lock(&g.mu);
            g.taken = k + 1;
            pthread_cond_broadcast(&g.cv);
            pthread_mutex_unlock(&g.mu);
        }
    }
    if (g.n_th) {
        pthread_mutex_lock(&g.mu);
        g.stop = 1;
        pthread_cond_broadcast(&g.cv);
        pthread_mutex_unlock(&g.mu);
        for (int t = 0; t < g.n_th; t++)
            pthread_join(g.th[t], NULL);
    }
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    static const char *const fin[] = {
        "DELETE FROM pending WHERE doc = ?3",
        "INSERT INTO segments(doc, seg, end) VALUES(?3, ?4, ?5)",
    };
    if (rc == 0)
        rc = idx__exec_doc(w->db, fin, sizeof fin / sizeof fin[0], w->doc, w->seg_start, end,
                           "index: merge postings", err);
out:
    sqlite3_finalize(ins);
    for (size_t b = 0; g.out && b < g.n_out; b++) {
        free(g.out[b].data.p);
        free(g.out[b].dir.p);
    }
    free(g.out);
    free(g.ready);
    free(g.th);
    free(g.ds);
    free(g.rd);
    free(first);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

/* Set to 0, in the directory of the slot blob of row id, the count of every feature with more
 * than stop_n entries in ds (its slot's counts over the whole document). */
static int zero_stop(sqlite3_blob **bl, struct idx_db *db, int64_t id, const struct df_slot *ds,
                     int64_t stop_n, struct idx_buf *dir)
{
    uint64_t dir_off = 0;
    uint32_t n_feat = 0;
    int src = idx__segdir_read(db, bl, id, 1, dir, &dir_off, &n_feat);
    static const uint8_t zero[4];
    for (uint32_t i = 0; i < n_feat && src == SQLITE_OK; i++) {
        const uint8_t *d = dir->p + (size_t)i * IDX_SEGDIR_ENTRY;
        const uint32_t f = idx__le32(d);
        if (idx__le32(d + 4) && f < ds->cap && ds->n[f] > stop_n)
            src = sqlite3_blob_write(*bl, zero, 4,
                                     (int)(dir_off + (uint64_t)i * IDX_SEGDIR_ENTRY + 4));
    }
    return src;
}

/* Whether slot ds has a feature with more than stop_n entries. */
static int has_stop(const struct df_slot *ds, int64_t stop_n)
{
    for (size_t f = 0; f < ds->cap; f++)
        if (ds->n[f] > stop_n)
            return 1;
    return 0;
}

/* Finishing: the features with more than stop_n entries in the whole document are dropped
 * from the directories of the segments written before the last (which left them out). */
static int drop_stop_features(struct idx_writer *w, int64_t stop_n, struct s3_errinfo *err)
{
    int64_t *rows = NULL;        /* (id, layer, head) triples */
    size_t n_rows = 0, rows_cap = 0;
    sqlite3_stmt *st = NULL;
    sqlite3_blob *bl = NULL;
    struct idx_buf dir = {0};
    int rc = 0, src = SQLITE_OK, any = 0;
    for (size_t i = 0; i < w->df.n_s && !any; i++)
        any = has_stop(&w->df.s[i], stop_n);
    if (!any)
        return 0;
    rc = idx__prepare(w->db, "SELECT id, layer, head FROM segslots WHERE id BETWEEN ? AND ?",
                      &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(w->doc, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(w->doc, 0xffffffffLL));
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow((void **)&rows, &rows_cap, 3 * (n_rows + 1), sizeof *rows) < 0)
            goto oom;
        for (int c = 0; c < 3; c++)
            rows[3 * n_rows + (size_t)c] = sqlite3_column_int64(st, c);
        n_rows++;
    }
    sqlite3_finalize(st);
    st = NULL;
    src = src == SQLITE_DONE ? SQLITE_OK : src;
    for (size_t r = 0; r < n_rows && src == SQLITE_OK; r++) {
        const struct df_slot *ds = df_slot_of(&w->df, (int)rows[3 * r + 1], (int)rows[3 * r + 2]);
        if (!ds)
            goto oom;
        if (has_stop(ds, stop_n))
            src = zero_stop(&bl, w->db, rows[3 * r], ds, stop_n, &dir);
    }
    if (src == SQLITE_NOMEM)
        goto oom;
    if (src == SQLITE_CORRUPT)
        rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld",
                     (long long)w->doc);
    else if (src != SQLITE_OK)
        rc = idx__sqlerr(w->db, src, "index: drop stop features", err);
out:
    sqlite3_finalize(st);
    sqlite3_blob_close(bl);
    free(dir.p);
    free(rows);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

/* Hold a chunk's passages (text and encoded sentence starts copied) until the next commit. */
static int hold_passages(struct idx_writer *w, const struct idx_chunk *c)
{
    if (grow((void **)&w->hp, &w->hp_cap, w->n_hp + c->n_passages, sizeof *w->hp) < 0)
        return S3_ENOMEM;
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        const size_t tlen = (size_t)(p->end_char - p->start_char);
        struct held_pass *h = &w->hp[w->n_hp + i];
        *h = (struct held_pass){p->start_tok, p->end_tok, p->start_char, p->end_char,
                                w->held.n, tlen, 0, 0};
        if (idx__buf_reserve(&w->held, tlen + p->n_sent * 20) < 0)
            return S3_ENOMEM;
        if (tlen)
            memcpy(w->held.p + w->held.n, p->text, tlen);
        w->held.n += tlen;
        h->sents_off = w->held.n;
        int64_t lt = p->start_tok, lc = p->start_char;
        for (size_t j = 0; j < p->n_sent; j++) {
            w->held.n += idx__varint_put(w->held.p + w->held.n, (uint64_t)(p->sent_tok[j] - lt));
            w->held.n += idx__varint_put(w->held.p + w->held.n,
                                         (uint64_t)(p->sent_char[j] - lc));
            lt = p->sent_tok[j];
            lc = p->sent_char[j];
        }
        h->sents_len = w->held.n - h->sents_off;
    }
    w->n_hp += c->n_passages;
    return 0;
}

/* Inside the transaction: write the held passages (rows and FTS terms), counting them and their
 * FTS tokens in txn_pass and txn_words. */
static int write_passages(struct idx_writer *w, struct s3_errinfo *err)
{
    const double t = s3_now_ms();
    const int64_t first = w->cst.n_passages + w->txn_pass;
    int64_t words = 0;
    for (size_t i = 0; i < w->n_hp; i++) {
        const struct held_pass *h = &w->hp[i];
        const int64_t id = IDX_PASSAGE_ID(w->doc, first + (int64_t)i);
        const char *text = h->text_len ? (const char *)w->held.p + h->text_off : "";
        const void *sents = h->sents_len ? (const void *)(w->held.p + h->sents_off) : "";
        sqlite3_stmt *st = w->ins_pass;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, w->doc);
        sqlite3_bind_int64(st, 3, h->start_tok);
        sqlite3_bind_int64(st, 4, h->end_tok);
        sqlite3_bind_int64(st, 5, h->start_char);
        sqlite3_bind_int64(st, 6, h->end_char);
        sqlite3_bind_blob(st, 7, sents, (int)h->sents_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, text, (int)h->text_len, SQLITE_STATIC);
        int src = sqlite3_step(st);
        if (src != SQLITE_DONE)
            return idx__sqlerr(w->db, src, "index: write passage", err);
        st = w->ins_fts;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, text, (int)h->text_len, SQLITE_STATIC);
        src = sqlite3_step(st);
        if (src != SQLITE_DONE)
            return idx__sqlerr(w->db, src, "index: write passage text index", err);
    }
    if (!w->n_hp)
        return 0;
    const int rc = idx__fts_words(w->db, IDX_PASSAGE_ID(w->doc, first),
                                  IDX_PASSAGE_ID(w->doc, first + (int64_t)w->n_hp - 1), &words,
                                  err);
    if (rc == 0) {
        w->txn_pass += (int64_t)w->n_hp;
        w->txn_words += words;
        w->n_hp = 0;
        w->held.n = 0;
    }
    w->tm.passages += s3_now_ms() - t;
    return rc;
}

/* The parts not yet written as pending rows. */
static int write_pending(struct idx_writer *w, struct s3_errinfo *err)
{
    for (size_t i = 0; i < w->n_parts; i++) {
        struct mpart *m = &w->parts[i];
        if (m->written)
            continue;
        sqlite3_stmt *st = w->ins_pend;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, w->doc);
        sqlite3_bind_int64(st, 2, m->tok0);
        sqlite3_bind_int(st, 3, m->layer);
        sqlite3_bind_int(st, 4, m->head);
        sqlite3_bind_blob(st, 5, w->mem.p + m->off, (int)m->len, SQLITE_STATIC);
        int src = sqlite3_step(st);
        if (src != SQLITE_DONE)
            return idx__sqlerr(w->db, src, "index: write postings", err);
    }
    return 0;
}

static int update_doc(struct idx_writer *w, int64_t words, int64_t seg, struct s3_errinfo *err)
{
    sqlite3_stmt *st = w->upd_doc;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, w->st.next_tok);
    sqlite3_bind_int64(st, 2, w->st.n_chunks);
    sqlite3_bind_int64(st, 3, w->st.n_passages);
    sqlite3_bind_int64(st, 4, w->st.pass_tok);
    sqlite3_bind_int64(st, 5, w->st.pass_char);
    sqlite3_bind_int64(st, 6, words);
    sqlite3_bind_int64(st, 7, seg);
    sqlite3_bind_int64(st, 8, w->doc);
    int src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        return idx__sqlerr(w->db, src, "index: update document", err);
    if (sqlite3_changes(w->db->db) != 1)
        return s3_errf(err, S3_ENOTFOUND, "index: document %lld vanished or changed state",
                       (long long)w->doc);
    return 0;
}

/* Inside a transaction: write what was accepted since the last commit, as pending rows or
 * (merge) with the whole unmerged range as a segment (stop_n: see merge_segment); *seg = the
 * new seg_start. */
static int write_held(struct idx_writer *w, int merge, int64_t stop_n, int64_t *seg,
                      struct s3_errinfo *err)
{
    int rc = write_passages(w, err);
    const double t = s3_now_ms();
    *seg = w->seg_start;
    if (rc == 0 && merge && w->st.next_tok > w->seg_start) {
        rc = merge_segment(w, w->st.next_tok, stop_n, err);
        *seg = w->st.next_tok;
    } else if (rc == 0) {
        rc = write_pending(w, err);
    }
    w->tm.segments += s3_now_ms() - t;
    if (rc == 0)
        rc = update_doc(w, w->txn_words, *seg, err);
    return rc;
}

/* After a commit: everything accepted is stored. */
static void committed(struct idx_writer *w, int64_t seg)
{
    if (seg != w->seg_start) {
        w->n_parts = 0;
        w->mem.n = 0;
    }
    for (size_t i = 0; i < w->n_parts; i++)
        w->parts[i].written = 1;
    w->n_hp = 0;
    w->held.n = 0;
    w->txn = 0;
    w->txn_pass = w->txn_words = 0;
    w->cst = w->st;
    w->seg_start = seg;
    if (w->df_stale == 2)
        w->df_stale = 0; /* the counts written are committed */
    w->last_commit_ms = s3_now_ms();
    idx__ckpt_kick(w->db);
}

/* Roll the transaction back (if open) and drop what was accepted since the last commit. */
static void drop_held(struct idx_writer *w)
{
    if (w->txn)
        sqlite3_exec(w->db->db, "ROLLBACK", NULL, NULL, NULL);
    w->txn = 0;
    w->txn_pass = w->txn_words = 0;
    size_t k = 0;
    for (size_t i = 0; i < w->n_parts; i++)
        if (w->parts[i].written)
            w->parts[k++] = w->parts[i];
    w->n_parts = k;
    if (!k)
        w->mem.n = 0;
    w->n_hp = 0;
    w->held.n = 0;
    w->st = w->cst;
    if (w->df_stale == 2)
        w->df_stale = 1; /* counts of rows rolled back */
}

/* Open the transaction unless it is. */
static int txn_begin(struct idx_writer *w, struct s3_errinfo *err)
{
    if (w->txn)
        return 0;
    const int rc = idx__exec(w->db, "BEGIN IMMEDIATE", err);
    w->txn = rc == 0;
    return rc;
}

static int commit_held(struct idx_writer *w, int merge, struct s3_errinfo *err)
{
    int64_t seg = w->seg_start;
    int rc = txn_begin(w, err);
    if (rc == 0)
        rc = write_held(w, merge, 0, &seg, err);
    const double t = s3_now_ms();
    if (rc == 0)
        rc = idx__exec(w->db, "COMMIT", err);
    w->tm.commit += s3_now_ms() - t;
    if (rc < 0) {
        drop_held(w);
        return rc;
    }
    committed(w, seg);
    return 0;
}

const struct idx_tuning *idx__writer_tuning(const struct idx_writer *w)
{
    return &w->tun;
}

atomic_int *idx__writer_waiting(const struct idx_writer *w)
{
    return w->db->waiting;
}

void idx_writer_set_commit_ms(struct idx_writer *w, int ms)
{
    w->commit_ms = ms < 0 ? 0 : ms;
}

/* Whether to cut the segment before it is full because the document is about to end: at
 * least IDX_TAIL_MIN positions unmerged and at most half that many left (but not fewer than
 * IDX_TAIL_MIN / 2: a cut costs a commit, and one just before the end would hold up the
 * finish), estimated from the source bytes not yet in passages at the tokens per byte so
 * far. The merge then runs while the last chunks are still being computed (merging a position
 * costs the writer less than half what computing it costs the GPU), and cuts that follow one
 * another shrink the last segment, the one finishing writes, geometrically: a document of 32k
 * positions is written as segments of about 22k and 10k. */
static int near_end(const struct idx_writer *w)
{
    const int64_t pending = w->st.next_tok - w->seg_start;
    if (pending < IDX_TAIL_MIN || w->n_bytes <= 0 ||
        w->st.pass_char <= 0 || w->st.pass_char >= w->n_bytes)
        return 0;
    const double left = (double)(w->n_bytes - w->st.pass_char) * (double)w->st.pass_tok /
                            (double)w->st.pass_char +
                        (double)(w->st.pass_tok - w->st.next_tok);
    return 2 * left <= (double)pending && 2 * left >= IDX_TAIL_MIN;
}

/* Accept chunk c whose slot s is encoded as blobs[s] (blobs NULL: encode c's feature arrays
 * here). */
static int accept(struct idx_writer *w, const struct idx_chunk *c, const struct idx_buf *blobs,
                  struct s3_errinfo *err)
{
    if (!c)
        return s3_errf(err, S3_EINVAL, "index: no chunk");
    const double t0 = s3_now_ms();
    int rc = check_chunk(w, c, blobs != NULL, err);
    if (rc < 0)
        return rc;
    /* what this chunk appends (undone if it is refused before any commit) */
    const size_t n_parts0 = w->n_parts, mem0 = w->mem.n, n_hp0 = w->n_hp, held0 = w->held.n;
    for (int s = 0; s < c->n_slot && rc == 0; s++) {
        const uint8_t *b = blobs ? blobs[s].p : NULL;
        size_t n = blobs ? blobs[s].n : 0;
        if (!blobs) {
            rc = idx__enc_slot(&w->enc, c, s, err);
            b = w->enc.blob.p;
            n = w->enc.blob.n;
        }
        if (rc == 0 && n &&
            remember(w, c->slots[s].layer, c->slots[s].kv_head, c->tok0, c->tok0 + c->n_tok, b,
                     n) < 0)
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    }
    if (rc == 0 && hold_passages(w, c) < 0)
        rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    if (rc < 0) {
        w->n_parts = n_parts0;
        w->mem.n = mem0;
        w->n_hp = n_hp0;
        w->held.n = held0;
        return rc;
    }
    w->st.next_tok = c->tok0 + c->n_tok;
    w->st.n_passages += (int64_t)c->n_passages;
    w->st.n_chunks++;
    if (c->n_passages) {
        w->st.pass_tok = c->passages[c->n_passages - 1].end_tok;
        w->st.pass_char = c->passages[c->n_passages - 1].end_char;
    }
    w->tm.accept += s3_now_ms() - t0;
    if (w->eager && c->n_passages &&
        ((rc = txn_begin(w, err)) < 0 || (rc = write_passages(w, err)) < 0)) {
        drop_held(w);
        return rc;
    }
    if (w->st.next_tok - w->seg_start >= w->tun.seg_tokens || near_end(w))
        return commit_held(w, 1, err);
    if (w->commit_ms == 0 || s3_now_ms() - w->last_commit_ms >= w->commit_ms)
        return commit_held(w, 0, err);
    return 0;
}

int idx_writer_add(struct idx_writer *w, const struct idx_chunk *c, struct s3_errinfo *err)
{
    return accept(w, c, NULL, err);
}

int idx__writer_add_encoded(struct idx_writer *w, const struct idx_chunk *c,
                            const struct idx_buf *blobs, struct s3_errinfo *err)
{
    return accept(w, c, blobs, err);
}

int idx_writer_flush(struct idx_writer *w, struct s3_errinfo *err)
{
    if (w->done || w->st.n_chunks == w->cst.n_chunks)
        return 0;
    return commit_held(w, 0, err);
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
    const int64_t stop_n = w->st.next_tok / IDX_STOP_FRAC + 1;
    int64_t seg = w->seg_start;
    int rc = txn_begin(w, err);
    if (rc == 0)
        rc = write_held(w, 1, stop_n, &seg, err);
    const double t = s3_now_ms();
    if (rc == 0 && w->df_stale == 1)
        rc = load_df(w, err); /* no last segment to write after a resume */
    if (rc == 0)
        rc = drop_stop_features(w, stop_n, err);
    if (rc == 0)
        rc = idx__docmap_write(w->db, w->doc, w->st.n_passages, err);
    w->tm.finish += s3_now_ms() - t;
    if (rc == 0)
        rc = set_status(w, "ready", NULL, err);
    if (rc == 0)
        rc = idx__exec(w->db, "COMMIT", err);
    if (rc < 0) {
        drop_held(w);
        w->done = 0;
        return rc;
    }
    committed(w, seg);
    return 0;
}

int idx_writer_fail(struct idx_writer *w, const char *why, struct s3_errinfo *err)
{
    drop_held(w); /* what was not committed goes with the scan */
    return set_status(w, "failed", why ? why : "", err);
}
