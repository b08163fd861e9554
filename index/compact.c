/* index/compact.c - group blobs (the postings of one (layer, head) slot over a range of
 * positions, grouped by feature; see index_int.h): growable buffers, reading them group by
 * group and concatenating the chunks of a segment feature by feature (the writer's segment
 * merge), and the docmap blob of a finished document. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

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

static int rd_varint(struct idx_grp_rd *r, uint64_t *v)
{
    size_t k = idx__varint_get(r->p, r->e, v);
    if (!k)
        return S3_EFORMAT;
    r->p += k;
    return 0;
}

int idx__grp_next(struct idx_grp_rd *r)
{
    r->have = 0;
    if (r->p == r->e)
        return 0; /* the end */
    int rc;
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

/* Append the current group's entries to out, the first gap re-based so that the entries
 * continue after position prev (-1: relative to out_base). */
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
    if (idx__buf_varint(out, (uint64_t)(prev >= 0 ? first - prev - 1 : first - out_base)) < 0)
        return S3_ENOMEM;
    const size_t left = (size_t)r->nbytes - k;
    if ((size_t)(r->e - r->p) < left)
        return S3_EFORMAT; /* the blob ends inside the group */
    if (idx__buf_reserve(out, left) < 0)
        return S3_ENOMEM;
    memcpy(out->p + out->n, r->p, left);
    out->n += left;
    r->p += left;
    return 0;
}

int idx__grp_concat(struct idx_grp_rd *parts, size_t n_parts, int64_t out_base,
                    idx_grp_emit_fn emit, void *ud, struct idx_buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < n_parts && rc == 0; i++) {
        parts[i].feat = -1;
        rc = idx__grp_next(&parts[i]);
    }
    while (rc == 0) {
        int32_t f = -1;
        for (size_t i = 0; i < n_parts; i++)
            if (parts[i].have && (f < 0 || parts[i].feat < f))
                f = parts[i].feat;
        if (f < 0)
            break;
        int64_t n = 0, prev = -1;
        for (size_t i = 0; i < n_parts && rc == 0; i++) {
            if (!parts[i].have || parts[i].feat != f)
                continue;
            n += parts[i].n;
            rc = grp_take(&parts[i], out, out_base, prev);
            prev = parts[i].last;
            if (rc == 0)
                rc = idx__grp_next(&parts[i]);
        }
        if (rc == 0)
            rc = emit(ud, f, n);
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

int idx__cmp_slot_pos(int l1, int h1, int64_t p1, int l2, int h2, int64_t p2)
{
    if (l1 != l2)
        return (l1 > l2) - (l1 < l2);
    if (h1 != h2)
        return (h1 > h2) - (h1 < h2);
    return (p1 > p2) - (p1 < p2);
}

/* ---- the docmap of a finished document ------------------------------------------------------ */

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
