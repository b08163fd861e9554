/* index/query.c - retrieval: position scores from postings, smoothing, peaks, spans grown
 * to sentence boundaries, BM25 passages, lead/tail, reciprocal rank fusion, budget cut. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

#define MAX_DOCS  256
#define MAX_PEAKS 512

/* One document of a query: its sentence and passage boundaries. */
struct qdoc {
    int64_t id;
    int64_t n_tokens, n_passages, fts_words;
    int64_t *p_tok, *p_char;  /* (n_passages + 1) passage starts, then the end */
    int64_t *s_tok, *s_char;  /* (n_sent + 1) sentence starts, then the end */
    size_t n_sent;
};

struct cand {
    int di;                   /* index into the query's documents */
    int64_t t0, t1, c0, c1;
    unsigned src;
    int rank;                 /* 1-based, within its source and document */
    double score;             /* fused */
};

struct vec {
    void *p;
    size_t n, cap;
};

static int vec_push(struct vec *v, const void *x, size_t elem)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        void *np = realloc(v->p, nc * elem);
        if (!np)
            return S3_ENOMEM;
        v->p = np;
        v->cap = nc;
    }
    memcpy((char *)v->p + v->n * elem, x, elem);
    v->n++;
    return 0;
}

static int vec_append(struct vec *v, const void *x, size_t n)
{
    if (v->n + n > v->cap) {
        size_t nc = v->cap ? v->cap : 4096;
        while (nc < v->n + n)
            nc *= 2;
        void *np = realloc(v->p, nc);
        if (!np)
            return S3_ENOMEM;
        v->p = np;
        v->cap = nc;
    }
    if (n && x)
        memcpy((char *)v->p + v->n, x, n); /* x NULL: n bytes of room, left as they are */
    v->n += n;
    return 0;
}

/* Room for `bytes` bytes of elements (a hint; vec_push still grows). */
static int vec_reserve(struct vec *v, size_t bytes)
{
    void *np = realloc(v->p, bytes ? bytes : 1);
    if (!np)
        return S3_ENOMEM;
    v->p = np;
    v->cap = bytes / sizeof(int64_t);
    return 0;
}

static void qdoc_deinit(struct qdoc *d)
{
    free(d->p_tok);
    free(d->p_char);
    free(d->s_tok);
    free(d->s_char);
}

/* Sentence starts of one passage [t0, t1) x [c0, c1] onto the lists: the passage start, then
 * one per (token gap > 0, char gap) LEB128 pair in [b, e). 0, S3_EFORMAT when a pair is
 * malformed or leaves the passage, S3_ENOMEM. */
static int push_sentences(const uint8_t *b, const uint8_t *e, int64_t t0, int64_t c0,
                          int64_t t1, int64_t c1, struct vec *st_tok, struct vec *st_char)
{
    if (vec_push(st_tok, &t0, sizeof t0) < 0 || vec_push(st_char, &c0, sizeof c0) < 0)
        return S3_ENOMEM;
    int64_t lt = t0, lc = c0;
    while (b && b < e) {
        uint64_t dt, dc;
        size_t k1 = idx__varint_get(b, e, &dt);
        size_t k2 = k1 ? idx__varint_get(b + k1, e, &dc) : 0;
        if (!k2 || dt == 0 || lt + (int64_t)dt >= t1 || lc + (int64_t)dc > c1)
            return S3_EFORMAT;
        b += k1 + k2;
        lt += (int64_t)dt;
        lc += (int64_t)dc;
        if (vec_push(st_tok, &lt, sizeof lt) < 0 || vec_push(st_char, &lc, sizeof lc) < 0)
            return S3_ENOMEM;
    }
    return 0;
}

/* Closes the sentence lists with the document end (t, c) and hands them to d. */
static int take_sentences(struct qdoc *d, struct vec *st_tok, struct vec *st_char, int64_t t,
                          int64_t c)
{
    if (vec_push(st_tok, &t, sizeof t) < 0 || vec_push(st_char, &c, sizeof c) < 0)
        return S3_ENOMEM;
    d->s_tok = st_tok->p;
    d->s_char = st_char->p;
    d->n_sent = st_tok->n - 1;
    st_tok->p = st_char->p = NULL;
    return 0;
}

/* Boundaries from the document's docmap row (index_int.h). Returns 1 when there is none
 * (a document finished before schema 2), 0 when loaded. d->p_tok/p_char are allocated. */
static int load_docmap(struct idx_db *db, struct qdoc *d, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    struct vec st_tok = {0}, st_char = {0};
    int rc = idx__prepare(db, "SELECT blob FROM docmap WHERE doc = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, d->id);
    int src = sqlite3_step(st);
    if (src == SQLITE_DONE) {
        sqlite3_finalize(st);
        return 1;
    }
    if (src != SQLITE_ROW) {
        rc = idx__sqlerr(db, src, "index: read docmap", err);
        goto out;
    }
    const uint8_t *b = sqlite3_column_blob(st, 0), *e = b + sqlite3_column_bytes(st, 0);
    size_t np = (size_t)d->n_passages, i = 0;
    int64_t t = 0, c = 0;
    if (vec_reserve(&st_tok, np * 2 * sizeof(int64_t)) < 0 ||
        vec_reserve(&st_char, np * 2 * sizeof(int64_t)) < 0)
        goto oom;
    while (b && b < e && i < np) {
        uint64_t dt, dc, sb;
        size_t k1 = idx__varint_get(b, e, &dt);
        size_t k2 = k1 ? idx__varint_get(b + k1, e, &dc) : 0;
        size_t k3 = k2 ? idx__varint_get(b + k1 + k2, e, &sb) : 0;
        if (!k3 || dt == 0 || sb > (uint64_t)(e - b - (ptrdiff_t)(k1 + k2 + k3)))
            goto bad;
        b += k1 + k2 + k3;
        int64_t t1 = t + (int64_t)dt, c1 = c + (int64_t)dc;
        d->p_tok[i] = t;
        d->p_char[i] = c;
        rc = push_sentences(b, b + sb, t, c, t1, c1, &st_tok, &st_char);
        if (rc == S3_EFORMAT)
            goto bad;
        if (rc < 0)
            goto oom;
        b += sb;
        t = t1;
        c = c1;
        i++;
    }
    if (i != np || b != e || t != d->n_tokens)
        goto bad;
    d->p_tok[np] = t;
    d->p_char[np] = c;
    if (take_sentences(d, &st_tok, &st_char, t, c) < 0)
        goto oom;
out:
    sqlite3_finalize(st);
    free(st_tok.p);
    free(st_char.p);
    return rc;
bad:
    rc = s3_errf(err, S3_EFORMAT, "index: bad docmap of document %lld", (long long)d->id);
    goto out;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

static int load_doc(struct idx_db *db, int64_t id, const char *tenant, struct qdoc *d,
                    struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    memset(d, 0, sizeof *d);
    d->id = id;
    int rc = idx__prepare(db,
                          "SELECT status, tenant, n_tokens, n_passages, fts_words FROM documents"
                          " WHERE id = ?",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(st, 0);
        const char *t = (const char *)sqlite3_column_text(st, 1);
        if (tenant && (!t || strcmp(t, tenant) != 0))
            rc = s3_errf(err, S3_ENOTFOUND, "index: no document %lld", (long long)id);
        else if (!status || strcmp(status, "ready") != 0)
            rc = s3_errf(err, S3_ENOTFOUND, "index: document %lld is not ready (%s)",
                         (long long)id, status ? status : "?");
        d->n_tokens = sqlite3_column_int64(st, 2);
        d->n_passages = sqlite3_column_int64(st, 3);
        d->fts_words = sqlite3_column_int64(st, 4);
    } else if (src == SQLITE_DONE) {
        rc = s3_errf(err, S3_ENOTFOUND, "index: no document %lld", (long long)id);
    } else {
        rc = idx__sqlerr(db, src, "index: read document", err);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc < 0)
        return rc;
    if (d->n_passages <= 0 || d->n_tokens <= 0)
        return s3_errf(err, S3_EFORMAT, "index: document %lld has no passages", (long long)id);

    /* passage and sentence boundaries */
    size_t np = (size_t)d->n_passages;
    struct vec st_tok = {0}, st_char = {0};
    d->p_tok = malloc((np + 1) * sizeof *d->p_tok);
    d->p_char = malloc((np + 1) * sizeof *d->p_char);
    if (!d->p_tok || !d->p_char) {
        rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
        goto out;
    }
    rc = load_docmap(db, d, err);
    if (rc != 1)
        goto out; /* done, or failed */
    rc = 0;
    rc = idx__prepare(db,
                      "SELECT start_tok, end_tok, start_char, end_char, sents FROM passages"
                      " WHERE id BETWEEN ? AND ? ORDER BY id",
                      &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(id, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(id, d->n_passages - 1));
    size_t i = 0;
    while ((src = sqlite3_step(st)) == SQLITE_ROW && i < np) {
        int64_t t0 = sqlite3_column_int64(st, 0), t1 = sqlite3_column_int64(st, 1);
        int64_t c0 = sqlite3_column_int64(st, 2), c1 = sqlite3_column_int64(st, 3);
        if ((i > 0 && (t0 != d->p_tok[i] || c0 != d->p_char[i])) || t1 <= t0 || c1 < c0) {
            rc = s3_errf(err, S3_EFORMAT, "index: passages of document %lld do not tile",
                         (long long)id);
            goto out;
        }
        d->p_tok[i] = t0;
        d->p_char[i] = c0;
        d->p_tok[i + 1] = t1;
        d->p_char[i + 1] = c1;
        const uint8_t *b = sqlite3_column_blob(st, 4);
        rc = push_sentences(b, b + sqlite3_column_bytes(st, 4), t0, c0, t1, c1, &st_tok,
                            &st_char);
        if (rc == S3_EFORMAT) {
            rc = s3_errf(err, S3_EFORMAT, "index: bad sentence data in document %lld",
                         (long long)id);
            goto out;
        }
        if (rc < 0)
            goto oom;
        i++;
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read passages", err);
        goto out;
    }
    if (i != np || d->p_tok[0] != 0 || d->p_tok[np] != d->n_tokens) {
        rc = s3_errf(err, S3_EFORMAT, "index: passages of document %lld are incomplete",
                     (long long)id);
        goto out;
    }
    if (take_sentences(d, &st_tok, &st_char, d->p_tok[np], d->p_char[np]) < 0)
        goto oom;
out:
    sqlite3_finalize(st);
    free(st_tok.p);
    free(st_char.p);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

/* ---- S3 position scores ------------------------------------------------------------------ */

/* Step the postings row of (doc, seg, feature f) with st from the SELECT below: SQLITE_ROW,
 * SQLITE_DONE (absent) or an error code. */
static int step_posting(sqlite3_stmt *st, int64_t doc, int64_t seg, const struct idx_qfeat *f)
{
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, doc);
    sqlite3_bind_int64(st, 2, seg);
    sqlite3_bind_int(st, 3, f->layer);
    sqlite3_bind_int(st, 4, f->kv_head);
    sqlite3_bind_int(st, 5, f->feature);
    return sqlite3_step(st);
}

/* S[pos] += w * lut[code] for every entry of a blob (format in index_int.h); positions
 * outside [base, min(lim, n)) end the walk. Returns S3_EFORMAT on a malformed blob. */
static int accumulate(int64_t base, int64_t lim, const uint8_t *p, size_t nb, const float *lut,
                      float w, float *S, int64_t n)
{
    const uint8_t *end = p + nb;
    int64_t pos = base - 1;
    if (lim > n)
        lim = n;
    while (p < end) {
        uint64_t gap = *p++;
        if (gap & 0x80) {
            gap &= 0x7f;
            for (int sh = 7;; sh += 7) {
                if (p >= end || sh > 35)
                    return S3_EFORMAT;
                uint64_t b = *p++;
                gap |= (b & 0x7f) << sh;
                if (!(b & 0x80))
                    break;
            }
        }
        if (p >= end)
            return S3_EFORMAT;
        pos += 1 + (int64_t)gap;
        if (pos >= lim)
            return S3_EFORMAT;
        S[pos] += w * lut[*p++];
    }
    return 0;
}

/* A query feature's weight w_q(f) * idf(f) for a feature on df of a document's n_tokens
 * positions (index_int.h); 0 for an absent or a stop feature, which is skipped. */
static float feat_weight(float weight, int64_t df, int64_t n_tokens)
{
    if (!df || df > n_tokens / IDX_STOP_FRAC + 1)
        return 0.0f;
    return (float)(weight / (log1p((double)df) + 1.0));
}

/* A document's segments (seg, end) and, schema 5, its segment slot rows. */
struct qseg {
    int64_t seg, end;
};
struct qrow {
    int64_t id, seg, end;
    int layer, head;
};
/* A query feature found in one row: its byte range there. */
struct qhit {
    size_t f, row;
    uint32_t start, end;
};

/* A query feature in slot order. */
struct qord {
    int layer, head;
    size_t i;
};

static int cmp_qord(const void *a, const void *b)
{
    const struct qord *x = a, *y = b;
    return idx__cmp_slot_pos(x->layer, x->head, (int64_t)x->i, y->layer, y->head, (int64_t)y->i);
}

/* S from segment slot rows: per slot of the query features, each row's directory gives the
 * features' counts (df over the document) and byte ranges; then the ranges are read and
 * accumulated. A SQLite code, SQLITE_CORRUPT (malformed) or SQLITE_NOMEM. */
static int score_slots(struct idx_db *db, const struct qrow *rows, size_t n_rows,
                       int64_t n_tokens, const struct idx_qfeat *f, size_t n, float *S)
{
    sqlite3_blob *bl = NULL;
    struct idx_buf dir = {0};
    struct vec hits = {0}, buf = {0};
    struct qord *order = malloc((n ? n : 1) * sizeof *order);
    int64_t *df = calloc(n ? n : 1, sizeof *df);
    float lut[256];
    int src = SQLITE_OK;
    size_t m = 0;
    idx__act_lut(lut);
    if (!order || !df) {
        src = SQLITE_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (f[i].weight > 0 && f[i].feature >= 0)
            order[m++] = (struct qord){f[i].layer, f[i].kv_head, i};
    qsort(order, m, sizeof *order, cmp_qord);
    for (size_t g = 0; g < m && src == SQLITE_OK;) {
        size_t ge = g + 1;
        const int layer = order[g].layer, head = order[g].head;
        while (ge < m && order[ge].layer == layer && order[ge].head == head)
            ge++;
        hits.n = 0;
        for (size_t r = 0; r < n_rows && src == SQLITE_OK; r++) {
            if (rows[r].layer != layer || rows[r].head != head)
                continue;
            uint64_t dir_off;
            uint32_t n_feat;
            src = idx__segdir_read(db, &bl, rows[r].id, 0, &dir, &dir_off, &n_feat);
            for (size_t k = g; k < ge && src == SQLITE_OK; k++) {
                const int64_t i = idx__segdir_find(dir.p, n_feat, f[order[k].i].feature);
                struct qhit h = {order[k].i, r, 0, 0};
                if (i < 0)
                    continue;
                const uint32_t cnt = idx__segdir_range(dir.p, (uint32_t)i, &h.start, &h.end);
                if (!cnt)
                    continue;
                df[h.f] += cnt;
                if (vec_push(&hits, &h, sizeof h) < 0)
                    src = SQLITE_NOMEM;
            }
        }
        const struct qhit *h = hits.p;
        size_t open_row = (size_t)-1;
        for (size_t k = 0; k < hits.n && src == SQLITE_OK; k++) {
            const float w = feat_weight(f[h[k].f].weight, df[h[k].f], n_tokens);
            if (w == 0.0f)
                continue;
            const struct qrow *r = &rows[h[k].row];
            const uint32_t nb = h[k].end - h[k].start;
            if (h[k].row != open_row && (src = sqlite3_blob_reopen(bl, r->id)) != SQLITE_OK)
                break;
            open_row = h[k].row;
            buf.n = 0;
            if (vec_append(&buf, NULL, nb) < 0) {
                src = SQLITE_NOMEM;
                break;
            }
            if ((src = sqlite3_blob_read(bl, buf.p, (int)nb, (int)h[k].start)) != SQLITE_OK)
                break;
            if (accumulate(r->seg, r->end, buf.p, nb, lut, w, S, n_tokens) < 0)
                src = SQLITE_CORRUPT;
        }
        g = ge;
    }
out:
    sqlite3_blob_close(bl);
    free(dir.p);
    free(hits.p);
    free(buf.p);
    free(order);
    free(df);
    return src;
}

/* S from postings rows (documents finished before schema 5): one row per (segment, slot,
 * feature). */
static int score_rows(struct idx_db *db, int64_t doc, const struct qseg *se, size_t n_segs,
                      int64_t n_tokens, const struct idx_qfeat *f, size_t n, float *S,
                      struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    struct vec buf = {0};      /* copied blobs of one feature */
    struct vec blk = {0};      /* (segment index, offset, size) triples */
    float lut[256];
    idx__act_lut(lut);
    int src;
    int rc = idx__prepare(db,
                      "SELECT n, blob FROM postings WHERE doc = ? AND seg = ? AND layer = ?"
                      " AND head = ? AND feature = ?",
                      &st, err);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!(f[i].weight > 0) || f[i].feature < 0)
            continue;
        buf.n = blk.n = 0;
        int64_t df = 0;
        for (size_t k = 0; k < n_segs; k++) {
            src = step_posting(st, doc, se[k].seg, &f[i]);
            if (src == SQLITE_DONE)
                continue;
            if (src != SQLITE_ROW) {
                rc = idx__sqlerr(db, src, "index: read postings", err);
                goto out;
            }
            int64_t cnt = sqlite3_column_int64(st, 0);
            const uint8_t *b = sqlite3_column_blob(st, 1);
            int nb = sqlite3_column_bytes(st, 1);
            int64_t trip[3] = {(int64_t)k, (int64_t)buf.n, nb};
            df += cnt;
            if (vec_append(&buf, b, (size_t)nb) < 0 || vec_push(&blk, trip, sizeof trip) < 0)
                goto oom;
        }
        const float w = feat_weight(f[i].weight, df, n_tokens);
        if (w == 0.0f)
            continue;
        const int64_t *t = blk.p;
        for (size_t j = 0; j < blk.n; j++)
            if (accumulate(se[t[3 * j]].seg, se[t[3 * j]].end,
                           (const uint8_t *)buf.p + t[3 * j + 1], (size_t)t[3 * j + 2], lut, w,
                           S, n_tokens) < 0) {
                rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld",
                             (long long)doc);
                goto out;
            }
    }
out:
    sqlite3_finalize(st);
    free(buf.p);
    free(blk.p);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}

int idx__score_positions(struct idx_db *db, int64_t doc, int64_t n_tokens,
                         const struct idx_qfeat *f, size_t n, float *S, struct s3_errinfo *err)
{
    sqlite3_stmt *sg = NULL, *rs = NULL;
    struct vec segs = {0}, rows = {0};
    memset(S, 0, (size_t)n_tokens * sizeof *S);
    int rc = idx__prepare(db, "SELECT seg, end FROM segments WHERE doc = ? ORDER BY seg", &sg,
                          err);
    if (rc == 0)
        rc = idx__prepare(db,
                          "SELECT id, seg, layer, head FROM segslots WHERE id BETWEEN ? AND ?"
                          " ORDER BY id",
                          &rs, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(sg, 1, doc);
    int src;
    while ((src = sqlite3_step(sg)) == SQLITE_ROW) {
        struct qseg q = {sqlite3_column_int64(sg, 0), sqlite3_column_int64(sg, 1)};
        if (q.end > n_tokens)
            q.end = n_tokens;
        if (vec_push(&segs, &q, sizeof q) < 0)
            goto oom;
    }
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read segments", err);
        goto out;
    }
    sqlite3_bind_int64(rs, 1, IDX_PASSAGE_ID(doc, 0));
    sqlite3_bind_int64(rs, 2, IDX_PASSAGE_ID(doc, 0xffffffffLL));
    const struct qseg *se = segs.p;
    while ((src = sqlite3_step(rs)) == SQLITE_ROW) {
        struct qrow r = {sqlite3_column_int64(rs, 0), sqlite3_column_int64(rs, 1), -1,
                         sqlite3_column_int(rs, 2), sqlite3_column_int(rs, 3)};
        for (size_t k = 0; k < segs.n; k++)
            if (se[k].seg == r.seg)
                r.end = se[k].end;
        if (r.end < 0)
            goto corrupt; /* a row of no segment */
        if (vec_push(&rows, &r, sizeof r) < 0)
            goto oom;
    }
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: read postings", err);
        goto out;
    }
    if (!rows.n) {
        rc = score_rows(db, doc, se, segs.n, n_tokens, f, n, S, err);
        goto out;
    }
    src = score_slots(db, rows.p, rows.n, n_tokens, f, n, S);
    if (src == SQLITE_NOMEM)
        goto oom;
    if (src == SQLITE_CORRUPT)
        goto corrupt;
    if (src != SQLITE_OK)
        rc = idx__sqlerr(db, src, "index: read postings", err);
out:
    sqlite3_finalize(sg);
    sqlite3_finalize(rs);
    free(segs.p);
    free(rows.p);
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
corrupt:
    rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld", (long long)doc);
    goto out;
}

static void smooth(const float *S, float *out, int64_t n, int r)
{
    double run = 0;
    float inv = 1.0f / (float)(2 * r + 1);
    for (int64_t t = 0; t < n && t < r; t++)
        run += S[t];
    for (int64_t t = 0; t < n; t++) {
        if (t + r < n)
            run += S[t + r];
        if (t - r - 1 >= 0)
            run -= S[t - r - 1];
        out[t] = (float)run * inv;
    }
}

struct peak {
    float score;
    int64_t pos;
};

/* a before b in a max-first order (ties: earlier position first) */
static int peak_better(const struct peak *a, const struct peak *b)
{
    return a->score > b->score || (a->score == b->score && a->pos < b->pos);
}

static void heap_sift(struct peak *h, size_t n, size_t i)
{
    for (;;) { /* min-heap on "better": the root is the worst kept */
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && peak_better(&h[m], &h[l]))
            m = l;
        if (r < n && peak_better(&h[m], &h[r]))
            m = r;
        if (m == i)
            return;
        struct peak tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static int cmp_peak(const void *a, const void *b)
{
    const struct peak *x = a, *y = b;
    return peak_better(x, y) ? -1 : peak_better(y, x) ? 1 : 0;
}

/* Local maxima of Ssm, the best `keep` of them, then greedy non-max suppression. */
static size_t find_peaks(const float *Ssm, int64_t n, int radius, struct peak *heap, size_t keep,
                         struct peak *out, size_t max_out)
{
    size_t hn = 0;
    for (int64_t t = 0; t < n; t++) {
        float v = Ssm[t];
        if (!(v > 0) || (t > 0 && !(v > Ssm[t - 1])) || (t + 1 < n && v < Ssm[t + 1]))
            continue;
        struct peak p = {v, t};
        if (hn < keep) {
            heap[hn++] = p;
            if (hn == keep)
                for (size_t i = keep / 2 + 1; i-- > 0;)
                    heap_sift(heap, hn, i);
        } else if (peak_better(&p, &heap[0])) {
            heap[0] = p;
            heap_sift(heap, hn, 0);
        }
    }
    if (hn)
        qsort(heap, hn, sizeof *heap, cmp_peak);
    size_t no = 0;
    for (size_t i = 0; i < hn && no < max_out; i++) {
        int ok = 1;
        for (size_t j = 0; j < no && ok; j++)
            ok = llabs(heap[i].pos - out[j].pos) >= radius;
        if (ok)
            out[no++] = heap[i];
    }
    return no;
}

/* Sentence index containing token t. */
static size_t sent_of(const struct qdoc *d, int64_t t)
{
    size_t lo = 0, hi = d->n_sent; /* s_tok[lo] <= t < s_tok[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->s_tok[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Grow the sentence holding t by whole neighbouring sentences, next then previous in turn,
 * while the span stays within max_len tokens. */
static void grow_span(const struct qdoc *d, int64_t t, int max_len, struct cand *c)
{
    size_t a = sent_of(d, t), b = a + 1; /* sentences [a, b) */
    int turn = 0, stuck = 0;
    while (stuck < 2) {
        int fit = 0;
        if (turn == 0 && b < d->n_sent && d->s_tok[b + 1] - d->s_tok[a] <= max_len) {
            b++;
            fit = 1;
        } else if (turn == 1 && a > 0 && d->s_tok[b] - d->s_tok[a - 1] <= max_len) {
            a--;
            fit = 1;
        }
        stuck = fit ? 0 : stuck + 1;
        turn ^= 1;
    }
    c->t0 = d->s_tok[a];
    c->t1 = d->s_tok[b];
    c->c0 = d->s_char[a];
    c->c1 = d->s_char[b];
}

static int add_s3(struct idx_db *db, const struct idx_query *q, int di, const struct qdoc *d,
                  int max_peaks, struct vec *cands, struct s3_errinfo *err)
{
    int rc = 0;
    size_t n = (size_t)d->n_tokens;
    float *S = malloc(n * sizeof *S), *Ssm = malloc(n * sizeof *Ssm);
    struct peak *heap = malloc(4 * MAX_PEAKS * sizeof *heap);
    struct peak *pk = malloc(MAX_PEAKS * sizeof *pk);
    if (!S || !Ssm || !heap || !pk) {
        rc = s3_errf(err, S3_ENOMEM, "index: out of memory for %zu position scores", n);
        goto out;
    }
    rc = idx__score_positions(db, d->id, d->n_tokens, q->feats, q->n_feats, S, err);
    if (rc < 0)
        goto out;
    smooth(S, Ssm, d->n_tokens, q->smooth_radius > 0 ? q->smooth_radius : 2);
    size_t np = find_peaks(Ssm, d->n_tokens, q->nms_radius > 0 ? q->nms_radius : 48, heap,
                           4 * (size_t)max_peaks, pk, (size_t)max_peaks);
    for (size_t i = 0; i < np; i++) {
        struct cand c = {.di = di, .src = IDX_SRC_S3, .rank = (int)i + 1};
        grow_span(d, pk[i].pos, q->max_span > 0 ? q->max_span : 64, &c);
        if (vec_push(cands, &c, sizeof c) < 0) {
            rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
            goto out;
        }
    }
out:
    free(S);
    free(Ssm);
    free(heap);
    free(pk);
    return rc;
}

static int add_edges(int di, const struct qdoc *d, int edge, struct vec *cands)
{
    size_t a = 0;
    while (a < d->n_sent && d->s_tok[a + 1] <= edge)
        a++;
    if (a > 0) {
        struct cand c = {.di = di, .src = IDX_SRC_LEAD, .rank = 1, .t0 = 0, .c0 = 0,
                         .t1 = d->s_tok[a], .c1 = d->s_char[a]};
        if (vec_push(cands, &c, sizeof c) < 0)
            return S3_ENOMEM;
    }
    size_t b = d->n_sent;
    while (b > a && d->n_tokens - d->s_tok[b - 1] <= edge)
        b--;
    if (b < d->n_sent) {
        struct cand c = {.di = di, .src = IDX_SRC_TAIL, .rank = 1, .t0 = d->s_tok[b],
                         .c0 = d->s_char[b], .t1 = d->n_tokens, .c1 = d->s_char[d->n_sent]};
        if (vec_push(cands, &c, sizeof c) < 0)
            return S3_ENOMEM;
    }
    return 0;
}

static int cmp_cand_score(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    if (x->di != y->di)
        return x->di - y->di;
    return x->t0 < y->t0 ? -1 : x->t0 > y->t0;
}

static int cmp_cand_pos(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->di != y->di)
        return x->di - y->di;
    return x->t0 < y->t0 ? -1 : x->t0 > y->t0;
}

/* Fused score: own 1/(k + rank) plus, per other source, the best 1/(k + rank) among that
 * source's candidates overlapping this one; their sources join this one's. */
static void fuse(struct cand *c, size_t n, int k)
{
    double *own = malloc(n * sizeof *own);
    if (!own) { /* degrade to unfused ranks */
        for (size_t i = 0; i < n; i++)
            c[i].score = 1.0 / (k + c[i].rank);
        return;
    }
    for (size_t i = 0; i < n; i++)
        own[i] = 1.0 / (k + c[i].rank);
    for (size_t i = 0; i < n; i++) {
        double best[5] = {0};
        unsigned src = c[i].src;
        for (size_t j = 0; j < n; j++) {
            if (j == i || c[j].di != c[i].di || c[j].src == c[i].src || c[j].t1 <= c[i].t0 ||
                c[j].t0 >= c[i].t1)
                continue;
            int b = __builtin_ctz(c[j].src);
            if (own[j] > best[b])
                best[b] = own[j];
            src |= c[j].src;
        }
        c[i].score = own[i];
        for (int b = 0; b < 5; b++)
            c[i].score += best[b];
        c[i].src = src;
    }
    free(own);
}

/* Accept candidates best first while the union stays within budget. acc holds disjoint,
 * merged spans. */
static int cut_to_budget(struct cand *c, size_t n, int64_t budget, struct vec *acc,
                         int64_t *used)
{
    *used = 0;
    for (size_t i = 0; i < n; i++) {
        struct cand *a = acc->p;
        int64_t covered = 0;
        for (size_t j = 0; j < acc->n; j++) {
            if (a[j].di != c[i].di)
                continue;
            int64_t lo = a[j].t0 > c[i].t0 ? a[j].t0 : c[i].t0;
            int64_t hi = a[j].t1 < c[i].t1 ? a[j].t1 : c[i].t1;
            if (hi > lo)
                covered += hi - lo;
        }
        int64_t extra = (c[i].t1 - c[i].t0) - covered;
        if (*used + extra > budget)
            continue;
        /* merge with every accepted span it overlaps or touches */
        struct cand m = c[i];
        size_t w = 0;
        for (size_t j = 0; j < acc->n; j++) {
            if (a[j].di == m.di && a[j].t0 <= m.t1 && a[j].t1 >= m.t0) {
                if (a[j].t0 < m.t0) {
                    m.t0 = a[j].t0;
                    m.c0 = a[j].c0;
                }
                if (a[j].t1 > m.t1) {
                    m.t1 = a[j].t1;
                    m.c1 = a[j].c1;
                }
                if (a[j].score > m.score)
                    m.score = a[j].score;
                m.src |= a[j].src;
            } else {
                a[w++] = a[j];
            }
        }
        acc->n = w;
        if (vec_push(acc, &m, sizeof m) < 0)
            return S3_ENOMEM;
        *used += extra;
    }
    return 0;
}

/* Text of bytes [c0, c1) of a document, from the passages covering it. *out new. */
static int span_text(struct idx_db *db, const struct qdoc *d, int64_t c0, int64_t c1,
                     char **out, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    size_t np = (size_t)d->n_passages;
    size_t lo = 0, hi = np; /* first passage with p_char[i+1] > c0 */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->p_char[mid + 1] <= c0)
            lo = mid + 1;
        else
            hi = mid;
    }
    char *s = malloc((size_t)(c1 - c0) + 1);
    if (!s)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    size_t len = 0;
    int rc = idx__prepare(db, "SELECT start_char, text FROM passages WHERE id BETWEEN ? AND ?"
                              " ORDER BY id",
                          &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(d->id, lo));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(d->id, np - 1));
    int src = SQLITE_DONE;
    while (len < (size_t)(c1 - c0) && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t pc = sqlite3_column_int64(st, 0);
        const char *t = (const char *)sqlite3_column_text(st, 1);
        int64_t tn = sqlite3_column_bytes(st, 1);
        int64_t from = c0 > pc ? c0 - pc : 0, to = c1 - pc < tn ? c1 - pc : tn;
        if (t && to > from) {
            memcpy(s + len, t + from, (size_t)(to - from));
            len += (size_t)(to - from);
        }
    }
    if (len < (size_t)(c1 - c0) && src != SQLITE_DONE && src != SQLITE_ROW)
        rc = idx__sqlerr(db, src, "index: read passage text", err);
out:
    sqlite3_finalize(st);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s[len] = 0;
    *out = s;
    return 0;
}

void idx_result_deinit(struct idx_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_spans; i++)
        free(r->spans[i].text);
    free(r->spans);
    memset(r, 0, sizeof *r);
}

int idx_retrieve(struct idx_db *db, const struct idx_query *q, struct idx_result *out,
                 struct s3_errinfo *err)
{
    double t_start = s3_now_ms();
    struct qdoc *docs = NULL;
    struct vec cands = {0}, acc = {0};
    size_t n_docs = 0;
    int rc = 0;
    memset(out, 0, sizeof *out);
    if (!q || !db)
        return s3_errf(err, S3_EINVAL, "index: no query");
    if (q->mode < IDX_MODE_HYBRID || q->mode > IDX_MODE_FULL)
        return s3_errf(err, S3_EINVAL, "index: unknown retrieval mode %d", q->mode);
    if (q->budget <= 0)
        return s3_errf(err, S3_EINVAL, "index: token budget must be positive (got %d)",
                       q->budget);
    if (!q->n_docs || !q->docs)
        return s3_errf(err, S3_EINVAL, "index: no documents to search");
    if (q->n_docs > MAX_DOCS)
        return s3_errf(err, S3_ETOOBIG, "index: at most %d documents per query", MAX_DOCS);
    if (q->n_feats && !q->feats)
        return s3_errf(err, S3_EINVAL, "index: query features missing");
    docs = calloc(q->n_docs, sizeof *docs);
    if (!docs)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    /* one read transaction: a consistent snapshot across all statements */
    rc = idx__exec(db, "BEGIN", err);
    if (rc < 0)
        goto out_free;
    for (; n_docs < q->n_docs; n_docs++) {
        rc = load_doc(db, q->docs[n_docs], q->tenant, &docs[n_docs], err);
        if (rc < 0) {
            n_docs++;
            goto out;
        }
    }

    int64_t used = 0;
    if (q->mode == IDX_MODE_FULL) {
        int64_t total = 0;
        for (size_t i = 0; i < n_docs; i++)
            total += docs[i].n_tokens;
        if (total > q->budget) {
            rc = s3_errf(err, S3_ETOOBIG,
                         "index: mode full needs %lld tokens, over the budget of %d",
                         (long long)total, q->budget);
            goto out;
        }
        for (size_t i = 0; i < n_docs; i++) {
            struct cand c = {.di = (int)i, .t0 = 0, .t1 = docs[i].n_tokens, .c0 = 0,
                             .c1 = docs[i].p_char[docs[i].n_passages], .src = IDX_SRC_FULL,
                             .score = 1.0};
            if (vec_push(&acc, &c, sizeof c) < 0)
                goto oom;
        }
        used = total;
    } else {
        int max_peaks = q->budget / 16 + 8;
        if (max_peaks > MAX_PEAKS)
            max_peaks = MAX_PEAKS;
        size_t n_top = (size_t)q->budget / 32 + 8;
        int edge = q->edge_tokens > 0 ? q->edge_tokens
                                      : (q->budget / 8 < 64 ? q->budget / 8 : 64);
        for (size_t i = 0; i < n_docs; i++) {
            const struct qdoc *d = &docs[i];
            if ((q->mode == IDX_MODE_S3 || q->mode == IDX_MODE_HYBRID) && q->n_feats) {
                rc = add_s3(db, q, (int)i, d, max_peaks, &cands, err);
                if (rc < 0)
                    goto out;
            }
            if ((q->mode == IDX_MODE_BM25 || q->mode == IDX_MODE_HYBRID) && q->text) {
                struct idx_bm25_hit *h = NULL;
                size_t nh = 0;
                rc = idx__bm25_doc(db, d->id, d->n_passages, d->fts_words, q->text, n_top, &h,
                                   &nh, err);
                if (rc < 0)
                    goto out;
                for (size_t j = 0; j < nh; j++) {
                    int64_t p = h[j].passage;
                    struct cand c = {.di = (int)i, .src = IDX_SRC_BM25, .rank = (int)j + 1,
                                     .t0 = d->p_tok[p], .t1 = d->p_tok[p + 1],
                                     .c0 = d->p_char[p], .c1 = d->p_char[p + 1]};
                    if (vec_push(&cands, &c, sizeof c) < 0) {
                        free(h);
                        goto oom;
                    }
                }
                free(h);
            }
            if (q->mode == IDX_MODE_HYBRID && edge > 0 && add_edges((int)i, d, edge, &cands) < 0)
                goto oom;
        }
        fuse(cands.p, cands.n, q->rrf_k > 0 ? q->rrf_k : IDX_RRF_K);
        if (cands.n)
            qsort(cands.p, cands.n, sizeof(struct cand), cmp_cand_score);
        if (cut_to_budget(cands.p, cands.n, q->budget, &acc, &used) < 0)
            goto oom;
    }

    if (acc.n) {
        qsort(acc.p, acc.n, sizeof(struct cand), cmp_cand_pos);
        out->spans = calloc(acc.n, sizeof *out->spans);
        if (!out->spans)
            goto oom;
    }
    const struct cand *a = acc.p;
    for (size_t i = 0; i < acc.n; i++) {
        struct idx_span *s = &out->spans[i];
        const struct qdoc *d = &docs[a[i].di];
        s->doc = d->id;
        s->start_tok = a[i].t0;
        s->end_tok = a[i].t1;
        s->start_char = a[i].c0;
        s->end_char = a[i].c1;
        s->score = a[i].score;
        s->sources = a[i].src;
        out->n_spans = i + 1;
        rc = span_text(db, d, a[i].c0, a[i].c1, &s->text, err);
        if (rc < 0)
            goto out;
    }
    out->n_tokens = used;
out:
    sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL);
out_free:
    for (size_t i = 0; i < n_docs; i++)
        qdoc_deinit(&docs[i]);
    free(docs);
    free(cands.p);
    free(acc.p);
    if (rc < 0)
        idx_result_deinit(out);
    else
        out->ms = s3_now_ms() - t_start;
    return rc;
oom:
    rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
    goto out;
}
