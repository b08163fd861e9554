/* index/compact.c - group blobs (the postings of one (layer, head) slot over a range of
 * positions, grouped by feature; see index_int.h) and the work done once when a document is
 * finished, so that a query touches few rows however long the document is:
 *   - the segment blobs of each slot are concatenated feature by feature into one postings
 *     row per (layer, head, feature) over [0, n_tokens), streamed through small buffers
 *     (memory does not grow with the document), without the stop features
 *     (df > n_tokens / IDX_STOP_FRAC + 1, which queries skip);
 *   - its passage and sentence boundaries are written as one docmap blob. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

size_t idx__compact_buf = IDX_COMPACT_BUF;

int idx__buf_reserve(struct idx_buf *b, size_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->n + extra)
        nc *= 2;
    uint8_t *np = realloc(b->p, nc);
    if (!np)
        return S3_ENOMEM;
    b->p = np;
    b->cap = nc;
    return 0;
}

int idx__buf_varint(struct idx_buf *b, uint64_t v)
{
    if (idx__buf_reserve(b, 10) < 0)
        return S3_ENOMEM;
    b->n += idx__varint_put(b->p + b->n, v);
    return 0;
}

/* ---- reading a group blob sequentially ------------------------------------------------------ */

/* Make at least want bytes (or all that is left) readable at r->p. */
static int rd_fill(struct idx_grp_rd *r, size_t want)
{
    size_t have = (size_t)(r->e - r->p);
    if (have >= want || !r->blob || r->off >= r->size)
        return 0;
    if (want > r->cap)
        return S3_EFORMAT; /* never: want is a header's worth */
    memmove(r->buf, r->p, have);
    size_t room = r->cap - have, left = (size_t)(r->size - r->off);
    size_t take = left < room ? left : room;
    if (sqlite3_blob_read(r->blob, r->buf + have, (int)take, r->off) != SQLITE_OK)
        return S3_EIO;
    r->off += (int)take;
    r->p = r->buf;
    r->e = r->buf + have + take;
    return 0;
}

static int rd_varint(struct idx_grp_rd *r, uint64_t *v)
{
    int rc = rd_fill(r, 10);
    if (rc < 0)
        return rc;
    size_t k = idx__varint_get(r->p, r->e, v);
    if (!k)
        return S3_EFORMAT;
    r->p += k;
    return 0;
}

int idx__grp_next(struct idx_grp_rd *r)
{
    r->have = 0;
    int rc = rd_fill(r, 40);
    if (rc < 0)
        return rc;
    if (r->p == r->e)
        return 0; /* the end */
    uint64_t df, n, last, nb;
    if ((rc = rd_varint(r, &df)) < 0 || (rc = rd_varint(r, &n)) < 0 ||
        (rc = rd_varint(r, &last)) < 0 || (rc = rd_varint(r, &nb)) < 0)
        return rc;
    int64_t f = (int64_t)r->feat + 1 + (int64_t)df;
    if (f >= IDX_MAX_FEATURE || n == 0 || nb < 2 * n || nb > 6 * n ||
        last >= (uint64_t)(r->lim - r->base))
        return S3_EFORMAT;
    r->feat = (int32_t)f;
    r->n = (int64_t)n;
    r->last = r->base + (int64_t)last;
    r->nbytes = nb;
    r->have = 1;
    return 0;
}

/* Copy (out != NULL) or skip the current group's entries, the first gap re-based so that the
 * entries continue after position prev (-1: relative to out_base). */
static int grp_take(struct idx_grp_rd *r, struct idx_buf *out, int64_t out_base, int64_t prev)
{
    uint64_t g0;
    const uint8_t *p0 = r->p;
    int rc = rd_varint(r, &g0);
    if (rc < 0)
        return rc;
    size_t k = (size_t)(r->p - p0);
    if (k >= r->nbytes || g0 > (uint64_t)(r->last - r->base))
        return S3_EFORMAT;
    int64_t first = r->base + (int64_t)g0;
    if (first <= prev || first < out_base)
        return S3_EFORMAT;
    if (out && idx__buf_varint(out, (uint64_t)(prev >= 0 ? first - prev - 1 : first - out_base)) < 0)
        return S3_ENOMEM;
    size_t left = (size_t)r->nbytes - k;
    while (left) {
        if ((rc = rd_fill(r, 1)) < 0)
            return rc;
        size_t have = (size_t)(r->e - r->p);
        if (!have)
            return S3_EFORMAT; /* the blob ends inside the group */
        size_t take = have < left ? have : left;
        if (out) {
            if (idx__buf_reserve(out, take) < 0)
                return S3_ENOMEM;
            memcpy(out->p + out->n, r->p, take);
            out->n += take;
        }
        r->p += take;
        left -= take;
    }
    return 0;
}

int idx__grp_concat(struct idx_grp_rd *parts, size_t n_parts, int64_t out_base,
                    int64_t stop_n, idx_grp_emit_fn emit, void *ud, struct idx_buf *scratch)
{
    int rc = 0;
    for (size_t i = 0; i < n_parts && rc == 0; i++) {
        parts[i].feat = -1;
        rc = idx__grp_next(&parts[i]);
    }
    while (rc == 0) {
        int32_t f = -1;
        int64_t n = 0;
        for (size_t i = 0; i < n_parts; i++)
            if (parts[i].have && (f < 0 || parts[i].feat < f))
                f = parts[i].feat;
        if (f < 0)
            break;
        for (size_t i = 0; i < n_parts; i++)
            if (parts[i].have && parts[i].feat == f)
                n += parts[i].n;
        const int keep = stop_n <= 0 || n <= stop_n;
        int64_t prev = -1;
        scratch->n = 0;
        for (size_t i = 0; i < n_parts && rc == 0; i++) {
            if (!parts[i].have || parts[i].feat != f)
                continue;
            rc = grp_take(&parts[i], keep ? scratch : NULL, out_base, prev);
            prev = parts[i].last;
            if (rc == 0)
                rc = idx__grp_next(&parts[i]);
        }
        if (rc == 0 && keep)
            rc = emit(ud, f, n, prev, scratch->p, scratch->n);
    }
    return rc;
}

int idx__grp_put(struct idx_buf *b, int32_t prev_feat, int32_t feat, int64_t n, int64_t last_rel,
                 const uint8_t *entries, size_t nbytes)
{
    if (idx__buf_varint(b, (uint64_t)(feat - prev_feat - 1)) < 0 ||
        idx__buf_varint(b, (uint64_t)n) < 0 || idx__buf_varint(b, (uint64_t)last_rel) < 0 ||
        idx__buf_varint(b, (uint64_t)nbytes) < 0 || idx__buf_reserve(b, nbytes) < 0)
        return S3_ENOMEM;
    memcpy(b->p + b->n, entries, nbytes);
    b->n += nbytes;
    return 0;
}

/* ---- finishing ------------------------------------------------------------------------------ */

struct seg_row {
    int64_t id, seg, end;
    int layer, head;
};

int idx__cmp_slot_pos(int l1, int h1, int64_t p1, int l2, int h2, int64_t p2)
{
    if (l1 != l2)
        return (l1 > l2) - (l1 < l2);
    if (h1 != h2)
        return (h1 > h2) - (h1 < h2);
    return (p1 > p2) - (p1 < p2);
}

static int cmp_seg_row(const void *a, const void *b)
{
    const struct seg_row *x = a, *y = b;
    return idx__cmp_slot_pos(x->layer, x->head, x->seg, y->layer, y->head, y->seg);
}

struct emit_row {
    sqlite3_stmt *ins;
    int64_t doc;
    int layer, head;
};

static int emit_row(void *ud, int32_t feat, int64_t n, int64_t last, const uint8_t *entries,
                    size_t nbytes)
{
    struct emit_row *e = ud;
    (void)last;
    sqlite3_reset(e->ins);
    sqlite3_bind_int64(e->ins, 1, e->doc);
    sqlite3_bind_int(e->ins, 2, e->layer);
    sqlite3_bind_int(e->ins, 3, e->head);
    sqlite3_bind_int(e->ins, 4, feat);
    sqlite3_bind_int64(e->ins, 5, n);
    sqlite3_bind_blob(e->ins, 6, entries, (int)nbytes, SQLITE_STATIC);
    int src = sqlite3_step(e->ins);
    return src == SQLITE_DONE ? 0 : src; /* a SQLite code: mapped by the caller */
}

int idx__compact(struct idx_db *db, int64_t doc, int64_t n_tokens, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL, *ins = NULL;
    struct seg_row *rows = NULL;
    struct idx_grp_rd *rd = NULL;
    uint8_t *bufs = NULL;
    struct idx_buf scratch = {0};
    size_t n_rows = 0, cap_rows = 0;
    const size_t bsz = idx__compact_buf >= 64 ? idx__compact_buf : 64;
    int rc = idx__prepare(db,
                          "SELECT id, layer, head, seg, end FROM segblobs WHERE id BETWEEN ? AND ?",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(doc, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(doc, 0xffffffffLL));
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (n_rows == cap_rows) {
            cap_rows = cap_rows ? cap_rows * 2 : 64;
            struct seg_row *nr = realloc(rows, cap_rows * sizeof *nr);
            if (!nr)
                goto oom;
            rows = nr;
        }
        rows[n_rows++] = (struct seg_row){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 3),
                                          sqlite3_column_int64(st, 4), sqlite3_column_int(st, 1),
                                          sqlite3_column_int(st, 2)};
    }
    sqlite3_finalize(st);
    st = NULL;
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read segments", err);
        goto out;
    }
    if (n_rows)
        qsort(rows, n_rows, sizeof *rows, cmp_seg_row);
    rc = idx__prepare(db,
                      "INSERT INTO postings(doc, seg, layer, head, feature, n, blob)"
                      " VALUES(?1, 0, ?2, ?3, ?4, ?5, ?6)",
                      &ins, err);
    if (rc < 0)
        goto out;
    struct emit_row em = {.ins = ins, .doc = doc};
    const int64_t stop_n = n_tokens / IDX_STOP_FRAC + 1;
    for (size_t i = 0; i < n_rows;) {
        size_t j = i;
        while (j < n_rows && rows[j].layer == rows[i].layer && rows[j].head == rows[i].head)
            j++;
        const size_t np = j - i;
        free(rd);
        free(bufs);
        rd = calloc(np, sizeof *rd);
        bufs = malloc(np * bsz);
        if (!rd || !bufs)
            goto oom;
        for (size_t s = 0; s < np; s++) {
            const struct seg_row *r = &rows[i + s];
            if ((s && r->seg < rows[i + s - 1].end) || r->end <= r->seg || r->end > n_tokens) {
                rc = s3_errf(err, S3_EFORMAT, "index: segments of document %lld overlap",
                             (long long)doc);
                goto close;
            }
            src = sqlite3_blob_open(db->db, "main", "segblobs", "blob", r->id, 0, &rd[s].blob);
            if (src != SQLITE_OK) {
                rd[s].blob = NULL;
                rc = idx__sqlerr(db, src, "index: read segment", err);
                goto close;
            }
            rd[s].size = sqlite3_blob_bytes(rd[s].blob);
            rd[s].buf = bufs + s * bsz;
            rd[s].cap = bsz;
            rd[s].p = rd[s].e = rd[s].buf;
            rd[s].base = r->seg;
            rd[s].lim = r->end;
        }
        em.layer = rows[i].layer;
        em.head = rows[i].head;
        rc = idx__grp_concat(rd, np, 0, stop_n, emit_row, &em, &scratch);
        if (rc > 0)
            rc = idx__sqlerr(db, rc, "index: compact postings", err);
        else if (rc == S3_ENOMEM)
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
        else if (rc == S3_EIO)
            rc = s3_errf(err, S3_EIO, "index: reading segment postings: %s",
                         sqlite3_errmsg(db->db));
        else if (rc < 0)
            rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld",
                         (long long)doc);
close:
        for (size_t s = 0; s < np; s++)
            if (rd[s].blob)
                sqlite3_blob_close(rd[s].blob);
        if (rc < 0)
            goto out;
        i = j;
    }
    static const char *const fin[] = {
        "DELETE FROM segblobs WHERE id BETWEEN ?1 AND ?2",
        "DELETE FROM segments WHERE doc = ?3",
        "INSERT INTO segments(doc, seg, end) VALUES(?3, 0, ?4)",
    };
    rc = idx__exec_doc(db, fin, sizeof fin / sizeof fin[0], doc, n_tokens,
                       "index: compact segments", err);
out:
    sqlite3_finalize(st);
    sqlite3_finalize(ins);
    free(rows);
    free(rd);
    free(bufs);
    free(scratch.p);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}
int idx__docmap_write(struct idx_db *db, int64_t doc, int64_t n_passages, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    struct idx_buf b = {0};
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
        if (idx__buf_varint(&b, (uint64_t)(t1 - t0)) < 0 || idx__buf_varint(&b, (uint64_t)(c1 - c0)) < 0 ||
            idx__buf_varint(&b, (uint64_t)sb) < 0 || idx__buf_reserve(&b, (size_t)sb) < 0)
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
