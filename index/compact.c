/* index/compact.c - work done once when a document is finished, so that a query touches
 * few rows however long the document is (see index_int.h, "Finishing"):
 *   - the postings of all its segments are rewritten as one segment [0, n_tokens), one row
 *     per (layer, head, feature) instead of one per segment, without the stop features
 *     (df > n_tokens / IDX_STOP_FRAC + 1, which queries skip);
 *   - its passage and sentence boundaries are written as one docmap blob. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static int buf_reserve(struct buf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 65536;
    while (nc < b->n + extra)
        nc *= 2;
    uint8_t *np = realloc(b->p, nc);
    if (!np)
        return S3_ENOMEM;
    b->p = np;
    b->cap = nc;
    return 0;
}

static int buf_varint(struct buf *b, uint64_t v)
{
    if (buf_reserve(b, 10) < 0)
        return S3_ENOMEM;
    b->n += idx__varint_put(b->p + b->n, v);
    return 0;
}

/* One merged row of a slot: feature, entry count, its bytes in the slot's buffer. */
struct mrow {
    int32_t feat;
    int64_t n;
    size_t off, len;
    int64_t last;            /* last position appended */
    int seg;                 /* index of the source segment */
};

/* Append the entries of one segment's blob (base seg) to row r of data, re-basing the first
 * gap onto the row's previous position (all later gaps are relative and copy unchanged). */
static int append_blob(struct buf *data, struct mrow *r, int64_t base, int64_t lim,
                       const uint8_t *blob, size_t nb)
{
    uint64_t g0;
    size_t k = idx__varint_get(blob, blob + nb, &g0);
    if (!k || k >= nb || (int64_t)g0 >= lim - base)
        return S3_EFORMAT;
    int64_t first = base + (int64_t)g0;
    if (r->last >= 0 && first <= r->last)
        return S3_EFORMAT;
    int rc = buf_varint(data, (uint64_t)(r->last >= 0 ? first - r->last - 1 : first));
    if (rc < 0 || buf_reserve(data, nb - k) < 0)
        return S3_ENOMEM;
    memcpy(data->p + data->n, blob + k, nb - k);
    data->n += nb - k;
    /* the last position of this blob: walk it (gaps only) */
    int64_t pos = first;
    const uint8_t *p = blob + k + 1, *e = blob + nb;
    while (p < e) {
        uint64_t g;
        size_t m = idx__varint_get(p, e, &g);
        if (!m || p + m >= e)
            return S3_EFORMAT;
        pos += 1 + (int64_t)g;
        p += m + 1;
    }
    if (pos >= lim)
        return S3_EFORMAT;
    r->last = pos;
    return 0;
}

int64_t idx__compact_tokens = IDX_COMPACT_TOKENS;

/* (doc, seg, layer, head, first feature, end feature) of the range statements */
static void bind_range(sqlite3_stmt *st, int64_t doc, int64_t seg, int layer, int head, int f0,
                       int f1)
{
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, doc);
    sqlite3_bind_int64(st, 2, seg);
    sqlite3_bind_int(st, 3, layer);
    sqlite3_bind_int(st, 4, head);
    sqlite3_bind_int(st, 5, f0);
    sqlite3_bind_int(st, 6, f1);
}

static int cmp_feat(const void *a, const void *b)
{
    const struct mrow *x = a, *y = b;
    if (x->feat != y->feat)
        return (x->feat > y->feat) - (x->feat < y->feat);
    return (x->seg > y->seg) - (x->seg < y->seg);
}

int idx__compact(struct idx_db *db, int64_t doc, int64_t n_tokens, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL, *rd = NULL, *del = NULL, *ins = NULL, *fm = NULL;
    int64_t *seg = NULL;       /* (n_seg, 2) start, end */
    size_t n_seg = 0, cap_seg = 0;
    struct buf data = {0};
    struct mrow *rows = NULL;
    size_t n_rows = 0, cap_rows = 0;
    int rc = idx__prepare(db, "SELECT seg, end FROM segments WHERE doc = ? ORDER BY seg", &st,
                          err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, doc);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (n_seg == cap_seg) {
            cap_seg = cap_seg ? cap_seg * 2 : 16;
            int64_t *ns = realloc(seg, cap_seg * 2 * sizeof *ns);
            if (!ns)
                goto oom;
            seg = ns;
        }
        seg[2 * n_seg] = sqlite3_column_int64(st, 0);
        seg[2 * n_seg + 1] = sqlite3_column_int64(st, 1);
        n_seg++;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read segments", err);
        goto out;
    }
    if (n_seg <= 1) {
        /* one segment: only drop the stop features' rows */
        rc = idx__prepare(db, "DELETE FROM postings WHERE doc = ?1 AND n > ?2", &del, err);
        if (rc < 0)
            goto out;
        sqlite3_bind_int64(del, 1, doc);
        sqlite3_bind_int64(del, 2, n_tokens / IDX_STOP_FRAC + 1);
        src = sqlite3_step(del);
        if (src != SQLITE_DONE)
            rc = idx__sqlerr(db, src, "index: drop stop features", err);
        goto out;
    }
    rc = idx__prepare(db,
                      "SELECT layer, head FROM postings WHERE doc = ?1 AND seg = ?2 AND"
                      " (layer > ?3 OR (layer = ?3 AND head > ?4)) ORDER BY layer, head LIMIT 1",
                      &st, err);
    if (rc == 0)
        rc = idx__prepare(db,
                          "SELECT feature, n, blob FROM postings WHERE doc = ?1 AND seg = ?2"
                          " AND layer = ?3 AND head = ?4 AND feature >= ?5 AND feature < ?6",
                          &rd, err);
    if (rc == 0)
        rc = idx__prepare(db,
                          "DELETE FROM postings WHERE doc = ?1 AND seg = ?2 AND layer = ?3"
                          " AND head = ?4 AND feature >= ?5 AND feature < ?6",
                          &del, err);
    if (rc == 0)
        rc = idx__prepare(db,
                          "SELECT max(feature) FROM postings WHERE doc = ?1 AND seg = ?2"
                          " AND layer = ?3 AND head = ?4",
                          &fm, err);
    if (rc == 0)
        rc = idx__prepare(db,
                          "INSERT INTO postings(doc, seg, layer, head, feature, n, blob)"
                          " VALUES(?1, 0, ?2, ?3, ?4, ?5, ?6)",
                          &ins, err);
    if (rc < 0)
        goto out;
    /* slots in (layer, head) order: the smallest next slot over all segments */
    int layer = -1, head = -1;
    for (;;) {
        int nl = -1, nh = -1;
        for (size_t s = 0; s < n_seg; s++) {
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, doc);
            sqlite3_bind_int64(st, 2, seg[2 * s]);
            sqlite3_bind_int(st, 3, layer);
            sqlite3_bind_int(st, 4, head);
            src = sqlite3_step(st);
            if (src == SQLITE_ROW) {
                int l = sqlite3_column_int(st, 0), h = sqlite3_column_int(st, 1);
                if (nl < 0 || l < nl || (l == nl && h < nh)) {
                    nl = l;
                    nh = h;
                }
            } else if (src != SQLITE_DONE) {
                rc = idx__sqlerr(db, src, "index: read postings", err);
                goto out;
            }
        }
        if (nl < 0)
            break;
        layer = nl;
        head = nh;
        /* the slot in feature ranges of about idx__compact_tokens tokens' worth of postings
         * each, so the memory used here does not grow with the document */
        int64_t per = idx__compact_tokens > 0 ? idx__compact_tokens : IDX_COMPACT_TOKENS;
        int n_rng = (int)((n_tokens + per - 1) / per), fmax = 0;
        sqlite3_reset(fm);
        sqlite3_bind_int64(fm, 1, doc);
        sqlite3_bind_int64(fm, 2, seg[0]);
        sqlite3_bind_int(fm, 3, layer);
        sqlite3_bind_int(fm, 4, head);
        if ((src = sqlite3_step(fm)) == SQLITE_ROW)
            fmax = sqlite3_column_int(fm, 0);
        else if (src != SQLITE_DONE) {
            rc = idx__sqlerr(db, src, "index: read postings", err);
            goto out;
        }
        if (n_rng < 1)
            n_rng = 1;
        int width = fmax / n_rng + 1;
        for (int r = 0; r < n_rng; r++) {
            /* the last range is open: segment 0 need not hold the largest feature */
            int f0 = r * width, f1 = r == n_rng - 1 ? INT32_MAX : (r + 1) * width;
            /* gather this slot: rows by feature, segments in order */
            data.n = 0;
            n_rows = 0;
            for (size_t s = 0; s < n_seg; s++) {
                bind_range(rd, doc, seg[2 * s], layer, head, f0, f1);
                while ((src = sqlite3_step(rd)) == SQLITE_ROW) {
                    if (n_rows == cap_rows) {
                        cap_rows = cap_rows ? cap_rows * 2 : 4096;
                        struct mrow *nr = realloc(rows, cap_rows * sizeof *nr);
                        if (!nr)
                            goto oom;
                        rows = nr;
                    }
                    struct mrow *m = &rows[n_rows++];
                    m->feat = sqlite3_column_int(rd, 0);
                    m->n = sqlite3_column_int64(rd, 1);
                    m->off = data.n;
                    m->len = (size_t)sqlite3_column_bytes(rd, 2);
                    m->seg = (int)s;
                    if (buf_reserve(&data, m->len) < 0)
                        goto oom;
                    if (m->len)
                        memcpy(data.p + data.n, sqlite3_column_blob(rd, 2), m->len);
                    data.n += m->len;
                }
                if (src != SQLITE_DONE) {
                    rc = idx__sqlerr(db, src, "index: read postings", err);
                    goto out;
                }
            }
            /* by (feature, segment): each feature's blobs in position order */
            if (n_rows)
                qsort(rows, n_rows, sizeof *rows, cmp_feat);
            /* merge each feature's blobs into one, written to a second buffer */
            struct buf out = {0};
            for (size_t s = 0; s < n_seg; s++) {
                bind_range(del, doc, seg[2 * s], layer, head, f0, f1);
                src = sqlite3_step(del);
                if (src != SQLITE_DONE) {
                    free(out.p);
                    rc = idx__sqlerr(db, src, "index: compact postings", err);
                    goto out;
                }
            }
            for (size_t i = 0; i < n_rows;) {
                struct mrow m = {.feat = rows[i].feat, .last = -1};
                out.n = 0;
                size_t j = i;
                for (; j < n_rows && rows[j].feat == m.feat; j++) {
                    size_t si = (size_t)rows[j].seg;
                    rc = append_blob(&out, &m, seg[2 * si], seg[2 * si + 1],
                                     data.p + rows[j].off, rows[j].len);
                    if (rc < 0)
                        break;
                    m.n += rows[j].n;
                }
                if (rc == 0 && m.n > n_tokens / IDX_STOP_FRAC + 1) {
                    /* a stop feature: never read by a query (index_int.h, "Scores") */
                } else if (rc == 0) {
                    sqlite3_reset(ins);
                    sqlite3_bind_int64(ins, 1, doc);
                    sqlite3_bind_int(ins, 2, layer);
                    sqlite3_bind_int(ins, 3, head);
                    sqlite3_bind_int(ins, 4, m.feat);
                    sqlite3_bind_int64(ins, 5, m.n);
                    sqlite3_bind_blob(ins, 6, out.p, (int)out.n, SQLITE_STATIC);
                    src = sqlite3_step(ins);
                    if (src != SQLITE_DONE)
                        rc = idx__sqlerr(db, src, "index: compact postings", err);
                } else if (rc == S3_EFORMAT) {
                    rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld",
                                 (long long)doc);
                } else {
                    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
                }
                if (rc < 0) {
                    free(out.p);
                    goto out;
                }
                i = j;
            }
            free(out.p);
        }
    }
    sqlite3_finalize(del);
    del = NULL;
    rc = idx__prepare(db, "DELETE FROM segments WHERE doc = ?1", &del, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(del, 1, doc);
    src = sqlite3_step(del);
    sqlite3_finalize(del);
    del = NULL;
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: compact segments", err);
        goto out;
    }
    rc = idx__prepare(db, "INSERT INTO segments(doc, seg, end) VALUES(?1, 0, ?2)", &del, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(del, 1, doc);
    sqlite3_bind_int64(del, 2, n_tokens);
    src = sqlite3_step(del);
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: compact segments", err);
out:
    sqlite3_finalize(st);
    sqlite3_finalize(rd);
    sqlite3_finalize(del);
    sqlite3_finalize(ins);
    sqlite3_finalize(fm);
    free(seg);
    free(data.p);
    free(rows);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

int idx__docmap_write(struct idx_db *db, int64_t doc, int64_t n_passages, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    struct buf b = {0};
    int rc = idx__prepare(db,
                          "SELECT start_tok, end_tok, start_char, end_char, sents FROM passages"
                          " WHERE id BETWEEN ? AND ? ORDER BY id",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(doc, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(doc, n_passages - 1));
    int src;
    int64_t pt = 0, pc = 0, n = 0;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t t0 = sqlite3_column_int64(st, 0), t1 = sqlite3_column_int64(st, 1);
        int64_t c0 = sqlite3_column_int64(st, 2), c1 = sqlite3_column_int64(st, 3);
        int sb = sqlite3_column_bytes(st, 4);
        if (t0 != pt || c0 != pc || t1 <= t0 || c1 < c0) {
            rc = s3_errf(err, S3_EFORMAT, "index: passages of document %lld do not tile",
                         (long long)doc);
            goto out;
        }
        /* entry: token length, byte length, sents byte count, sents */
        if (buf_varint(&b, (uint64_t)(t1 - t0)) < 0 || buf_varint(&b, (uint64_t)(c1 - c0)) < 0 ||
            buf_varint(&b, (uint64_t)sb) < 0 || buf_reserve(&b, (size_t)sb) < 0)
            goto oom;
        if (sb)
            memcpy(b.p + b.n, sqlite3_column_blob(st, 4), (size_t)sb);
        b.n += (size_t)sb;
        pt = t1;
        pc = c1;
        n++;
    }
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read passages", err);
        goto out;
    }
    if (n != n_passages) {
        rc = s3_errf(err, S3_EFORMAT, "index: document %lld has %lld of %lld passages",
                     (long long)doc, (long long)n, (long long)n_passages);
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = idx__prepare(db, "INSERT OR REPLACE INTO docmap(doc, blob) VALUES(?, ?)", &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(st, 1, doc);
    sqlite3_bind_blob(st, 2, b.p ? (const void *)b.p : (const void *)"", (int)b.n,
                      SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: write docmap", err);
out:
    sqlite3_finalize(st);
    free(b.p);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}
