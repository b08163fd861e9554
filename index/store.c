/* index/store.c - opening the database, schema and migrations, document rows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

/* Marks the scans in progress (status 'scanning', narrowed by what follows it) failed: a scan
 * an older version of the index started cannot be resumed. The migrations spell it through
 * this macro; their SQL is the same as when they shipped. */
#define FAIL_OLD_SCANS                                                                         \
    "UPDATE documents SET status = 'failed', finished = CAST(strftime('%s', 'now') AS INTEGER)," \
    " error = 'the scan was started by an older version of the index and cannot be resumed;"     \
    " add the document again' WHERE status = 'scanning'"

/* Migration i takes user_version i to i + 1. Append only; never edit a shipped entry. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE documents("
    " id INTEGER PRIMARY KEY,"
    " tenant TEXT NOT NULL DEFAULT '',"
    " name TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL CHECK(status IN ('scanning','ready','failed')),"
    " n_tokens INTEGER NOT NULL DEFAULT 0,"
    " n_bytes INTEGER NOT NULL DEFAULT 0,"
    " text_sha256 TEXT NOT NULL DEFAULT '',"
    " created INTEGER NOT NULL,"
    " finished INTEGER,"
    " model_hash TEXT NOT NULL DEFAULT '',"
    " sae_hash TEXT NOT NULL DEFAULT '',"
    " n_chunks INTEGER NOT NULL DEFAULT 0,"
    " n_passages INTEGER NOT NULL DEFAULT 0,"
    " pass_tok INTEGER NOT NULL DEFAULT 0,"
    " pass_char INTEGER NOT NULL DEFAULT 0,"
    " fts_words INTEGER NOT NULL DEFAULT 0,"
    " seg_start INTEGER NOT NULL DEFAULT 0,"
    " error TEXT);"
    "CREATE INDEX documents_tenant ON documents(tenant, status);"
    "CREATE TABLE passages("
    " id INTEGER PRIMARY KEY,"
    " doc INTEGER NOT NULL,"
    " start_tok INTEGER NOT NULL, end_tok INTEGER NOT NULL,"
    " start_char INTEGER NOT NULL, end_char INTEGER NOT NULL,"
    " sents BLOB,"
    " text TEXT NOT NULL);"
    "CREATE VIRTUAL TABLE passages_fts USING fts5(text, content='passages', content_rowid='id',"
    " tokenize='porter unicode61');"
    "CREATE TABLE pending("
    " doc INTEGER NOT NULL, tok0 INTEGER NOT NULL, layer INTEGER NOT NULL,"
    " head INTEGER NOT NULL, blob BLOB NOT NULL,"
    " PRIMARY KEY(doc, tok0, layer, head)) WITHOUT ROWID;"
    "CREATE TABLE postings("
    " doc INTEGER NOT NULL, seg INTEGER NOT NULL, layer INTEGER NOT NULL,"
    " head INTEGER NOT NULL, feature INTEGER NOT NULL, n INTEGER NOT NULL,"
    " blob BLOB NOT NULL,"
    " PRIMARY KEY(doc, seg, layer, head, feature)) WITHOUT ROWID;"
    "CREATE TABLE segments("
    " doc INTEGER NOT NULL, seg INTEGER NOT NULL, end INTEGER NOT NULL,"
    " PRIMARY KEY(doc, seg)) WITHOUT ROWID;",
    /* 1 -> 2 */
    "CREATE TABLE docmap(doc INTEGER PRIMARY KEY, blob BLOB NOT NULL);",
    /* 2 -> 3: segment blobs; a scan in progress wrote the older pending format and segments:
     * it cannot be resumed, so it fails with what to do */
    "CREATE TABLE segblobs(id INTEGER PRIMARY KEY, layer INTEGER NOT NULL, head INTEGER NOT NULL,"
    " seg INTEGER NOT NULL, end INTEGER NOT NULL, blob BLOB NOT NULL);"
    "DELETE FROM pending;"
    "DELETE FROM postings WHERE doc IN (SELECT id FROM documents WHERE status = 'scanning');"
    "DELETE FROM segments WHERE doc IN (SELECT id FROM documents WHERE status = 'scanning');"
    FAIL_OLD_SCANS ";",
    /* 3 -> 4: segments are written as postings rows (seg = the segment's first position), no
     * segment blobs: a scan that wrote some cannot be resumed; one that did not resumes */
    FAIL_OLD_SCANS
    " AND id IN (SELECT DISTINCT id >> 32 FROM segblobs);"
    "DELETE FROM pending WHERE doc IN (SELECT id FROM documents WHERE status = 'failed');"
    "DROP TABLE segblobs;"
    /* FTS5 keeps a transaction's new terms in memory up to hashsize bytes (default 1 MiB),
     * flushing and merging when it overflows: a segment's transaction holds ~1000 passages */
    "INSERT INTO passages_fts(passages_fts, rank) VALUES('hashsize', 4194304);",
    /* 4 -> 5: a segment is one row per slot (segslots) instead of one per (slot, feature);
     * finished documents keep their postings rows (queries read both); a scan that wrote
     * segments cannot be resumed, one that did not resumes */
    "CREATE TABLE segslots(id INTEGER PRIMARY KEY, seg INTEGER NOT NULL,"
    " layer INTEGER NOT NULL, head INTEGER NOT NULL, blob BLOB NOT NULL);"
    FAIL_OLD_SCANS
    " AND id IN (SELECT DISTINCT doc FROM segments);"
    "DELETE FROM pending WHERE doc IN (SELECT id FROM documents WHERE status = 'failed');",
};

int idx__sqlerr(struct idx_db *db, int rc, const char *what, struct s3_errinfo *err)
{
    int code;
    const char *msg = db && db->db ? sqlite3_errmsg(db->db) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = S3_EBUSY; break;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: code = S3_EFORMAT; break;
    case SQLITE_NOMEM: code = S3_ENOMEM; break;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PERM: code = S3_EIO; break;
    case SQLITE_TOOBIG: code = S3_ETOOBIG; break;
    default: code = S3_EDB; break;
    }
    S3_LOG(S3_LOG_WARN, "index error what=\"%s\" sqlite_rc=%d msg=\"%s\"", what, rc, msg);
    if (code == S3_EBUSY)
        return s3_errf(err, code, "%s: index database is locked by another process (%s)",
                       what, msg);
    if (code == S3_EFORMAT)
        return s3_errf(err, code, "%s: index file is not a valid database (%s)", what, msg);
    return s3_errf(err, code, "%s: %s", what, msg);
}

int idx__exec(struct idx_db *db, const char *sql, struct s3_errinfo *err)
{
    int rc = sqlite3_exec(db->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return idx__sqlerr(db, rc, "index", err);
    return 0;
}

int idx__exec_doc(struct idx_db *db, const char *const *sql, size_t n, int64_t doc, int64_t v,
                  int64_t v2, const char *what, struct s3_errinfo *err)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = NULL;
        int rc = idx__prepare(db, sql[i], &st, err);
        if (rc < 0)
            return rc;
        sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(doc, 0));
        sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(doc, 0xffffffffLL));
        sqlite3_bind_int64(st, 3, doc);
        sqlite3_bind_int64(st, 4, v);
        sqlite3_bind_int64(st, 5, v2);
        int src = sqlite3_step(st);
        sqlite3_finalize(st);
        if (src != SQLITE_DONE)
            return idx__sqlerr(db, src, what, err);
    }
    return 0;
}

int idx__prepare(struct idx_db *db, const char *sql, sqlite3_stmt **st, struct s3_errinfo *err)
{
    int rc = sqlite3_prepare_v2(db->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) {
        *st = NULL;
        return idx__sqlerr(db, rc, "index: prepare", err);
    }
    return 0;
}

static int user_version(struct idx_db *db, int *v, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(db, "PRAGMA user_version", &st, err);
    if (rc < 0)
        return rc;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        *v = sqlite3_column_int(st, 0);
    } else {
        rc = idx__sqlerr(db, src, "index: open", err);
    }
    sqlite3_finalize(st);
    return rc;
}

static int migrate_locked(struct idx_db *db, struct s3_errinfo *err)
{
    int v = 0;
    int rc = user_version(db, &v, err);
    if (rc < 0)
        return rc;
    int n = (int)(sizeof migrations / sizeof migrations[0]);
    if (v > n)
        return s3_errf(err, S3_EFORMAT,
                       "index: database schema version %d is newer than this program's (%d)",
                       v, n);
    if (v == n)
        return 0;
    if (db->readonly)
        return s3_errf(err, S3_EFORMAT, "index: database schema version %d needs migrating "
                       "to %d; open it read-write once", v, n);
    rc = idx__exec(db, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    /* re-read under the write lock: another process may have migrated meanwhile */
    rc = user_version(db, &v, err);
    for (; rc == 0 && v < n; v++) {
        rc = idx__exec(db, migrations[v], err);
        if (rc == 0) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
            rc = idx__exec(db, sql, err);
        }
    }
    if (rc == 0)
        rc = idx__exec(db, "COMMIT", err);
    if (rc < 0)
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int migrate(struct idx_db *db, struct s3_errinfo *err)
{
    idx__wait_enter(db);
    const int rc = migrate_locked(db, err);
    idx__wait_leave(db);
    return rc;
}

struct idx_tuning *idx__tuning(struct idx_db *db)
{
    return &db->tun;
}

int idx_open(const char *path, const struct idx_open_opts *opts, struct idx_db **out,
             struct s3_errinfo *err)
{
    int rc = 0;
    struct idx_db *db = NULL;
    *out = NULL;
    if (!path || !*path)
        return s3_errf(err, S3_EINVAL, "index: no database path");
    db = calloc(1, sizeof *db);
    if (!db)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    db->readonly = opts && opts->readonly;
    db->tun = (struct idx_tuning){.seg_tokens = IDX_SEG_TOKENS,
                                  .scan_cache_kib = IDX_SCAN_CACHE_KIB,
                                  .merge_threads = -1,
                                  .async_encoders = -1,
                                  .async_bytes = IDX_ASYNC_BYTES};
    int busy_ms = opts && opts->busy_ms ? opts->busy_ms : 5000;
    db->waiting = opts ? opts->writers_waiting : NULL;
    int flags = db->readonly ? SQLITE_OPEN_READONLY
                             : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    int src = sqlite3_open_v2(path, &db->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        rc = idx__sqlerr(db, src, "index: open", err);
        if (err)
            snprintf(err->msg, sizeof err->msg, "index: cannot open '%s': %s", path,
                     db->db ? sqlite3_errmsg(db->db) : sqlite3_errstr(src));
        goto out;
    }
    sqlite3_extended_result_codes(db->db, 0);
    sqlite3_busy_timeout(db->db, busy_ms > 0 ? busy_ms : 0);
    /* Read something first: a file that is not a database fails here, before anything
     * (the WAL switch included) writes to it. */
    int v;
    rc = user_version(db, &v, err);
    if (rc < 0)
        goto out;
    if (!db->readonly && v == 0) {
        /* a new database: large pages keep a posting list in few overflow pages (a query
         * reads one list per query feature); must precede the WAL switch and the schema */
        rc = idx__exec(db, "PRAGMA page_size=" IDX_PAGE_SIZE_STR, err);
        if (rc < 0)
            goto out;
    }
    if (!db->readonly && strcmp(path, ":memory:") != 0) {
        rc = idx__exec(db, "PRAGMA journal_mode=WAL", err);
        if (rc < 0)
            goto out;
    }
    /* mmap reads spare a syscall per page on queries (writers turn it off while they live);
     * a 16 MiB page cache keeps the tree tops (64 MiB was no faster on a 1M-token document
     * and made a scan's memory grow with the document) */
    /* (the WAL of a long scan can reach hundreds of MiB: it is cut back to 64 MiB when reset) */
    rc = idx__exec(db, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;"
                       " PRAGMA journal_size_limit=67108864;"
                       " PRAGMA mmap_size=" IDX_MMAP_SIZE_STR "; PRAGMA cache_size=" IDX_QUERY_CACHE ";", err);
    if (rc < 0)
        goto out;
    rc = migrate(db, err);
    if (rc < 0)
        goto out;
    rc = idx__bm25_register(db, err);
    if (rc < 0)
        goto out;
out:
    if (rc < 0) {
        if (err && rc == S3_EFORMAT && !strstr(err->msg, path)) {
            char m[sizeof err->msg];
            size_t pl = strlen(path), ml = strlen(err->msg);
            if (pl > sizeof m / 2)
                pl = sizeof m / 2;
            if (pl + 2 + ml >= sizeof m)
                ml = sizeof m - pl - 3;
            memcpy(m, path, pl);
            memcpy(m + pl, ": ", 2);
            memcpy(m + pl + 2, err->msg, ml);
            m[pl + 2 + ml] = 0;
            memcpy(err->msg, m, sizeof m);
        }
        idx_close(db);
        return rc;
    }
    *out = db;
    return 0;
}

void idx_close(struct idx_db *db)
{
    if (!db)
        return;
    idx__ckpt_stop(db);
    if (db->db)
        sqlite3_close_v2(db->db);
    free(db);
}

void idx_remove_files(const char *path)
{
    static const char *const sfx[] = {"", "-wal", "-shm"};
    char p[4096 + 8];
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        if ((size_t)snprintf(p, sizeof p, "%s%s", path, sfx[i]) < sizeof p)
            remove(p);
    }
}

static void copy_col(char *dst, size_t n, sqlite3_stmt *st, int col)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    snprintf(dst, n, "%s", s ? (const char *)s : "");
}

#define DOC_COLS                                                                               \
    "id, status, tenant, name, text_sha256, model_hash, sae_hash, n_tokens, n_bytes, "          \
    "n_passages, n_chunks, created"

static void read_doc(sqlite3_stmt *st, struct idx_doc_info *d)
{
    memset(d, 0, sizeof *d);
    d->id = sqlite3_column_int64(st, 0);
    const char *s = (const char *)sqlite3_column_text(st, 1);
    d->status = !s ? IDX_DOC_FAILED
                : !strcmp(s, "ready") ? IDX_DOC_READY
                : !strcmp(s, "scanning") ? IDX_DOC_SCANNING
                : IDX_DOC_FAILED;
    copy_col(d->tenant, sizeof d->tenant, st, 2);
    copy_col(d->name, sizeof d->name, st, 3);
    copy_col(d->text_sha256, sizeof d->text_sha256, st, 4);
    copy_col(d->model_hash, sizeof d->model_hash, st, 5);
    copy_col(d->sae_hash, sizeof d->sae_hash, st, 6);
    d->n_tokens = sqlite3_column_int64(st, 7);
    d->n_bytes = sqlite3_column_int64(st, 8);
    d->n_passages = sqlite3_column_int64(st, 9);
    d->n_chunks = sqlite3_column_int64(st, 10);
    d->created = sqlite3_column_int64(st, 11);
}

int idx_doc_get(struct idx_db *db, int64_t id, struct idx_doc_info *info,
                struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(db, "SELECT " DOC_COLS " FROM documents WHERE id = ?", &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        read_doc(st, info);
    else if (src == SQLITE_DONE)
        rc = s3_errf(err, S3_ENOTFOUND, "index: no document %lld", (long long)id);
    else
        rc = idx__sqlerr(db, src, "index: read document", err);
    sqlite3_finalize(st);
    return rc;
}

int idx_doc_list(struct idx_db *db, const char *tenant, int only_ready,
                 struct idx_doc_info **out, size_t *n, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    struct idx_doc_info *v = NULL;
    size_t len = 0, cap = 0;
    *out = NULL;
    *n = 0;
    int rc = idx__prepare(db,
                          "SELECT " DOC_COLS " FROM documents WHERE (?1 IS NULL OR tenant = ?1)"
                          " AND (?2 = 0 OR status = 'ready') ORDER BY id DESC",
                          &st, err);
    if (rc < 0)
        return rc;
    if (tenant)
        sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, only_ready);
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct idx_doc_info *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc = s3_errf(err, S3_ENOMEM, "index: out of memory");
                goto out;
            }
            v = nv;
            cap = nc;
        }
        read_doc(st, &v[len++]);
    }
    if (src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: list documents", err);
out:
    sqlite3_finalize(st);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    *n = len;
    return 0;
}

int idx_doc_find_scanning(struct idx_db *db, const char *tenant, const char *text_sha256,
                          const char *model_hash, const char *sae_hash, int64_t *id,
                          struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    *id = 0;
    int rc = idx__prepare(db,
                          "SELECT id FROM documents WHERE status = 'scanning' AND tenant = ?"
                          " AND text_sha256 = ? AND model_hash = ? AND sae_hash = ?"
                          " ORDER BY id DESC LIMIT 1",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, tenant ? tenant : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, text_sha256 ? text_sha256 : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, model_hash ? model_hash : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, sae_hash ? sae_hash : "", -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    else if (src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: find scan", err);
    sqlite3_finalize(st);
    return rc;
}

static int doc_delete(struct idx_db *db, int64_t id, struct s3_errinfo *err)
{
    struct idx_doc_info info;
    int rc = idx__exec(db, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    rc = idx_doc_get(db, id, &info, err);
    if (rc < 0)
        goto out;
    {
        sqlite3_stmt *st = NULL;
        /* external-content FTS5: remove each row's terms with the text it was indexed with */
        rc = idx__prepare(db,
                          "INSERT INTO passages_fts(passages_fts, rowid, text)"
                          " SELECT 'delete', id, text FROM passages WHERE id BETWEEN ? AND ?",
                          &st, err);
        if (rc < 0)
            goto out;
        sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(id, 0));
        sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(id, 0xffffffffLL));
        int src = sqlite3_step(st);
        sqlite3_finalize(st);
        if (src != SQLITE_DONE) {
            rc = idx__sqlerr(db, src, "index: delete document", err);
            goto out;
        }
    }
    static const char *const dels[] = {
        "DELETE FROM passages WHERE id BETWEEN ?1 AND ?2",
        "DELETE FROM postings WHERE doc = ?3",
        "DELETE FROM segslots WHERE id BETWEEN ?1 AND ?2",
        "DELETE FROM pending WHERE doc = ?3",
        "DELETE FROM segments WHERE doc = ?3",
        "DELETE FROM docmap WHERE doc = ?3",
        "DELETE FROM documents WHERE id = ?3",
    };
    rc = idx__exec_doc(db, dels, sizeof dels / sizeof dels[0], id, 0, 0, "index: delete document",
                       err);
    if (rc < 0)
        goto out;
    rc = idx__exec(db, "COMMIT", err);
out:
    if (rc < 0)
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int idx_doc_delete(struct idx_db *db, int64_t id, struct s3_errinfo *err)
{
    idx__wait_enter(db);
    const int rc = doc_delete(db, id, err);
    idx__wait_leave(db);
    return rc;
}

int idx_db_bytes(struct idx_db *db, int64_t *bytes, struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    *bytes = 0;
    int rc = idx__prepare(db,
                          "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(),"
                          " pragma_freelist_count(), pragma_page_size()",
                          &st, err);
    if (rc < 0)
        return rc;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *bytes = sqlite3_column_int64(st, 0);
    else
        rc = idx__sqlerr(db, src, "index: size", err);
    sqlite3_finalize(st);
    return rc;
}

int idx_mode_parse(const char *s)
{
    if (!s)
        return -1;
    if (!strcmp(s, "hybrid"))
        return IDX_MODE_HYBRID;
    if (!strcmp(s, "s3"))
        return IDX_MODE_S3;
    if (!strcmp(s, "bm25"))
        return IDX_MODE_BM25;
    if (!strcmp(s, "full"))
        return IDX_MODE_FULL;
    return -1;
}

const char *idx_mode_name(int mode)
{
    switch (mode) {
    case IDX_MODE_HYBRID: return "hybrid";
    case IDX_MODE_S3: return "s3";
    case IDX_MODE_BM25: return "bm25";
    case IDX_MODE_FULL: return "full";
    default: return "?";
    }
}

const char *idx_source_str(unsigned sources, char *buf, size_t n)
{
    static const char *const names[] = {"s3", "bm25", "lead", "tail", "full"};
    size_t len = 0;
    if (!n)
        return buf;
    buf[0] = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (!(sources & (1u << i)))
            continue;
        int w = snprintf(buf + len, n - len, "%s%s", len ? "+" : "", names[i]);
        if (w < 0 || (size_t)w >= n - len)
            break;
        len += (size_t)w;
    }
    return buf;
}
