/* index/bm25.c - BM25 over the passages of one document with that document's own
 * statistics (why and how: index_int.h, "BM25"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

#define BM25_K1      1.2
#define BM25_B       0.75
#define MAX_TERMS    32
#define MAX_TERM_LEN 48

/* s3_tf(fts): blob of int32 {row token count, instances of phrase 0, phrase 1, ...}. */
static void tf_func(const Fts5ExtensionApi *api, Fts5Context *fts, sqlite3_context *ctx,
                    int n_arg, sqlite3_value **args)
{
    (void)n_arg;
    (void)args;
    int n_phrase = api->xPhraseCount(fts);
    if (n_phrase < 0 || n_phrase > MAX_TERMS * 4) {
        sqlite3_result_error(ctx, "s3_tf: too many phrases", -1);
        return;
    }
    int32_t out[1 + MAX_TERMS * 4];
    memset(out, 0, sizeof out);
    int dl = 0;
    int rc = api->xColumnSize(fts, -1, &dl);
    if (rc != SQLITE_OK) {
        sqlite3_result_error_code(ctx, rc);
        return;
    }
    out[0] = dl;
    if (n_phrase > 0) {
        int n_inst = 0;
        rc = api->xInstCount(fts, &n_inst);
        for (int i = 0; rc == SQLITE_OK && i < n_inst; i++) {
            int ph, col, off;
            rc = api->xInst(fts, i, &ph, &col, &off);
            if (rc == SQLITE_OK && ph >= 0 && ph < n_phrase)
                out[1 + ph]++;
        }
        if (rc != SQLITE_OK) {
            sqlite3_result_error_code(ctx, rc);
            return;
        }
    }
    sqlite3_result_blob(ctx, out, (int)sizeof(int32_t) * (1 + n_phrase), SQLITE_TRANSIENT);
}

int idx__bm25_register(struct idx_db *db, struct s3_errinfo *err)
{
    fts5_api *api = NULL;
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(db, "SELECT fts5(?1)", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_pointer(st, 1, (void *)&api, "fts5_api_ptr", NULL);
    sqlite3_step(st);
    sqlite3_finalize(st);
    if (!api || api->iVersion < 2)
        return s3_errf(err, S3_EDB, "index: SQLite was built without FTS5");
    int src = api->xCreateFunction(api, "s3_tf", NULL, tf_func, NULL);
    if (src != SQLITE_OK)
        return idx__sqlerr(db, src, "index: register s3_tf", err);
    db->fts_api_ok = 1;
    return 0;
}

/* FTS5's docsize shadow table holds, per row, one SQLite-format varint (big-endian 7-bit
 * groups, high bit = more) per column: the row's token count. The auxiliary-function
 * xColumnSize() only answers inside MATCH queries, so sizes are read from there. */
static int64_t fts_varint(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n && i < 9; i++) {
        if (i == 8)
            return (int64_t)((v << 8) | p[i]);
        v = (v << 7) | (p[i] & 0x7f);
        if (!(p[i] & 0x80))
            break;
    }
    return (int64_t)v;
}

int idx__fts_words(struct idx_db *db, int64_t id_lo, int64_t id_hi, int64_t *words,
                   struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    *words = 0;
    int rc = idx__prepare(db, "SELECT sz FROM passages_fts_docsize WHERE id BETWEEN ? AND ?",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id_lo);
    sqlite3_bind_int64(st, 2, id_hi);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW)
        *words += fts_varint(sqlite3_column_blob(st, 0), sqlite3_column_bytes(st, 0));
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: passage sizes", err);
    sqlite3_finalize(st);
    return rc;
}

static int is_stop(const char *w)
{
    static const char *const stop[] = {
        "a",     "about", "an",   "and",  "are",   "as",    "at",    "be",   "but",  "by",
        "can",   "did",   "do",   "does", "for",   "from",  "had",   "has",  "have", "he",
        "her",   "his",   "how",  "i",    "if",    "in",    "into",  "is",   "it",   "its",
        "me",    "my",    "no",   "not",  "of",    "on",    "or",    "our",  "she",  "so",
        "than",  "that",  "the",  "their", "them", "then",  "there", "these", "they", "this",
        "those", "to",    "was",  "we",   "were",  "what",  "when",  "where", "which", "who",
        "whom",  "why",   "will", "with", "would", "you",   "your",
    };
    for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++)
        if (!strcmp(w, stop[i]))
            return 1;
    return 0;
}

/* Build an FTS5 query "t1" OR "t2" ... from free text. Terms are runs of ASCII letters and
 * digits or non-ASCII bytes, lower-cased, stop words and repeats dropped. Returns the term
 * count (0: nothing to search); q is new. */
static int build_match(const char *text, char **q)
{
    char terms[MAX_TERMS][MAX_TERM_LEN + 1];
    int n = 0;
    size_t cap = 1, len = 0;
    const unsigned char *p = (const unsigned char *)text;
    *q = NULL;
    while (*p && n < MAX_TERMS) {
        while (*p && !(*p >= 0x80 || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                       (*p >= 'A' && *p <= 'Z')))
            p++;
        char w[MAX_TERM_LEN + 1];
        size_t wl = 0;
        while (*p && (*p >= 0x80 || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= 'A' && *p <= 'Z'))) {
            if (wl < MAX_TERM_LEN)
                w[wl++] = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
            p++;
        }
        w[wl] = 0;
        if (!wl || is_stop(w))
            continue;
        int dup = 0;
        for (int i = 0; i < n && !dup; i++)
            dup = !strcmp(terms[i], w);
        if (dup)
            continue;
        memcpy(terms[n], w, wl + 1);
        cap += wl + 6;
        n++;
    }
    if (!n)
        return 0;
    char *s = malloc(cap);
    if (!s)
        return S3_ENOMEM;
    for (int i = 0; i < n; i++) {
        size_t wl = strlen(terms[i]);
        if (i) {
            memcpy(s + len, " OR ", 4);
            len += 4;
        }
        s[len++] = '"';
        memcpy(s + len, terms[i], wl); /* no '"' can occur in a term */
        len += wl;
        s[len++] = '"';
    }
    s[len] = 0;
    *q = s;
    return n;
}

struct row {
    int64_t passage;
    int32_t dl;
    int32_t tf[MAX_TERMS];
};

static int cmp_hit(const void *a, const void *b)
{
    const struct idx_bm25_hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->passage < y->passage ? -1 : x->passage > y->passage;
}

int idx__bm25_doc(struct idx_db *db, int64_t doc, int64_t n_passages, int64_t fts_words,
                  const char *text, size_t n_top, struct idx_bm25_hit **hits, size_t *n_hits,
                  struct s3_errinfo *err)
{
    char *match = NULL;
    sqlite3_stmt *st = NULL;
    struct row *rows = NULL;
    struct idx_bm25_hit *h = NULL;
    size_t n_rows = 0, cap = 0;
    int rc = 0;
    *hits = NULL;
    *n_hits = 0;
    if (!text || n_passages <= 0 || !n_top)
        return 0;
    int n_terms = build_match(text, &match);
    if (n_terms < 0)
        return s3_errf(err, n_terms, "index: out of memory");
    if (n_terms == 0)
        return 0;
    rc = idx__prepare(db, "SELECT rowid, s3_tf(passages_fts) FROM passages_fts"
                          " WHERE passages_fts MATCH ?1 AND rowid BETWEEN ?2 AND ?3",
                      &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_text(st, 1, match, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(doc, 0));
    sqlite3_bind_int64(st, 3, IDX_PASSAGE_ID(doc, n_passages - 1));
    int src;
    int df[MAX_TERMS] = {0};
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (n_rows == cap) {
            size_t nc = cap ? cap * 2 : 64;
            struct row *nr = realloc(rows, nc * sizeof *nr);
            if (!nr) {
                rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
                goto out;
            }
            rows = nr;
            cap = nc;
        }
        struct row *r = &rows[n_rows++];
        memset(r, 0, sizeof *r);
        r->passage = sqlite3_column_int64(st, 0) - IDX_PASSAGE_ID(doc, 0);
        int nb = sqlite3_column_bytes(st, 1);
        const void *b = sqlite3_column_blob(st, 1);
        int n_ph = nb / (int)sizeof(int32_t) - 1;
        if (n_ph > n_terms)
            n_ph = n_terms;
        if (b && nb >= (int)sizeof(int32_t)) {
            memcpy(&r->dl, b, sizeof r->dl);
            if (n_ph > 0)
                memcpy(r->tf, (const int32_t *)b + 1, (size_t)n_ph * sizeof(int32_t));
        }
        for (int i = 0; i < n_ph; i++)
            df[i] += r->tf[i] > 0;
    }
    if (src != SQLITE_DONE) {
        rc = idx__sqlerr(db, src, "index: bm25", err);
        goto out;
    }
    if (!n_rows)
        goto out;
    double N = (double)n_passages;
    double avgdl = fts_words > 0 ? (double)fts_words / N : 1.0;
    double idf[MAX_TERMS];
    for (int i = 0; i < n_terms; i++)
        idf[i] = log(1.0 + (N - df[i] + 0.5) / (df[i] + 0.5));
    h = malloc(n_rows * sizeof *h);
    if (!h) {
        rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
        goto out;
    }
    for (size_t j = 0; j < n_rows; j++) {
        double s = 0, norm = BM25_K1 * (1.0 - BM25_B + BM25_B * rows[j].dl / avgdl);
        for (int i = 0; i < n_terms; i++) {
            double tf = rows[j].tf[i];
            if (tf > 0)
                s += idf[i] * tf * (BM25_K1 + 1.0) / (tf + norm);
        }
        h[j].passage = rows[j].passage;
        h[j].score = s;
    }
    qsort(h, n_rows, sizeof *h, cmp_hit);
    *hits = h;
    *n_hits = n_rows < n_top ? n_rows : n_top;
    h = NULL;
out:
    sqlite3_finalize(st);
    free(match);
    free(rows);
    free(h);
    return rc;
}
