/* index/segslot.c - segment slot blobs (schema 5; format in index_int.h): the postings of one
 * (layer, head) slot over one segment in one blob, its feature directory at the end, so that a
 * segment costs one row per slot to write and a query reads the directory and the entries of
 * its own features through incremental blob I/O. */
#include <stdlib.h>
#include <string.h>

#include "index_int.h"

uint32_t idx__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void idx__le32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int idx__segdir_check(const uint8_t *dir, uint32_t n_feat, uint64_t data_bytes)
{
    int64_t prev_feat = -1;
    uint64_t prev_end = 0;
    for (uint32_t i = 0; i < n_feat; i++) {
        const uint8_t *d = dir + (size_t)i * IDX_SEGDIR_ENTRY;
        const uint32_t f = idx__le32(d), n = idx__le32(d + 4), end = idx__le32(d + 8);
        /* an entry takes 2..6 bytes (a dropped stop feature keeps its bytes, n = 0) */
        if ((int64_t)f <= prev_feat || f >= IDX_MAX_FEATURE || end <= prev_end ||
            end > data_bytes || (n && (end - prev_end < 2 * (uint64_t)n ||
                                       end - prev_end > 6 * (uint64_t)n)))
            return S3_EFORMAT;
        prev_feat = f;
        prev_end = end;
    }
    return 0;
}

int idx__segdir_locate(uint64_t blob_bytes, uint32_t n_feat, uint64_t *dir_off)
{
    const uint64_t dir = (uint64_t)n_feat * IDX_SEGDIR_ENTRY + 4;
    if (blob_bytes < 4 || dir > blob_bytes)
        return S3_EFORMAT;
    *dir_off = blob_bytes - dir;
    return 0;
}

int64_t idx__segdir_find(const uint8_t *dir, uint32_t n_feat, int32_t feat)
{
    uint32_t lo = 0, hi = n_feat;
    if (feat < 0)
        return -1;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (idx__le32(dir + (size_t)mid * IDX_SEGDIR_ENTRY) < (uint32_t)feat)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == n_feat || idx__le32(dir + (size_t)lo * IDX_SEGDIR_ENTRY) != (uint32_t)feat)
        return -1;
    return lo;
}

uint32_t idx__segdir_range(const uint8_t *dir, uint32_t i, uint32_t *start, uint32_t *end)
{
    const uint8_t *d = dir + (size_t)i * IDX_SEGDIR_ENTRY;
    *start = i ? idx__le32(d - IDX_SEGDIR_ENTRY + 8) : 0;
    *end = idx__le32(d + 8);
    return idx__le32(d + 4);
}

int idx__segdir_read(struct idx_db *db, sqlite3_blob **bl, int64_t id, int writable,
                     struct idx_buf *dir, uint64_t *dir_off, uint32_t *n_feat)
{
    int src = *bl ? sqlite3_blob_reopen(*bl, id)
                  : sqlite3_blob_open(db->db, "main", "segslots", "blob", id, writable, bl);
    if (src != SQLITE_OK)
        return src;
    const uint64_t nb = (uint64_t)sqlite3_blob_bytes(*bl);
    uint8_t tail[4];
    if (nb < 4)
        return SQLITE_CORRUPT;
    if ((src = sqlite3_blob_read(*bl, tail, 4, (int)(nb - 4))) != SQLITE_OK)
        return src;
    *n_feat = idx__le32(tail);
    if (idx__segdir_locate(nb, *n_feat, dir_off) < 0)
        return SQLITE_CORRUPT;
    const size_t bytes = (size_t)*n_feat * IDX_SEGDIR_ENTRY;
    dir->n = 0;
    if (idx__buf_reserve(dir, bytes) < 0)
        return SQLITE_NOMEM;
    if (bytes && (src = sqlite3_blob_read(*bl, dir->p, (int)bytes, (int)*dir_off)) != SQLITE_OK)
        return src;
    dir->n = bytes;
    return idx__segdir_check(dir->p, *n_feat, *dir_off) < 0 ? SQLITE_CORRUPT : SQLITE_OK;
}

int idx__segslot_walk(struct idx_db *db, int64_t doc, idx_segslot_fn fn, void *ud,
                      struct s3_errinfo *err)
{
    sqlite3_stmt *st = NULL;
    int rc = idx__prepare(db,
                          "SELECT seg, layer, head, blob FROM segslots WHERE id BETWEEN ? AND ?"
                          " ORDER BY id",
                          &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(doc, 0));
    sqlite3_bind_int64(st, 2, IDX_PASSAGE_ID(doc, 0xffffffffLL));
    int src;
    while (rc == 0 && (src = sqlite3_step(st)) == SQLITE_ROW) {
        const int64_t seg = sqlite3_column_int64(st, 0);
        const int layer = sqlite3_column_int(st, 1), head = sqlite3_column_int(st, 2);
        const uint8_t *b = sqlite3_column_blob(st, 3);
        const uint64_t nb = (uint64_t)sqlite3_column_bytes(st, 3);
        uint64_t dir_off = 0;
        const uint32_t n_feat = nb >= 4 ? idx__le32(b + nb - 4) : 0;
        if (idx__segdir_locate(nb, n_feat, &dir_off) < 0 ||
            idx__segdir_check(b + dir_off, n_feat, dir_off) < 0) {
            rc = s3_errf(err, S3_EFORMAT, "index: corrupt postings in document %lld",
                         (long long)doc);
            break;
        }
        for (uint32_t i = 0; i < n_feat && rc == 0; i++) {
            uint32_t start, end;
            const uint32_t n = idx__segdir_range(b + dir_off, i, &start, &end);
            if (n)
                rc = fn(ud, seg, layer, head,
                        (int32_t)idx__le32(b + dir_off + (size_t)i * IDX_SEGDIR_ENTRY), n,
                        b + start, end - start);
        }
    }
    if (rc == 0 && src != SQLITE_DONE)
        rc = idx__sqlerr(db, src, "index: read postings", err);
    sqlite3_finalize(st);
    return rc;
}
