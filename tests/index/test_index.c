/* tests/index/test_index.c - the index: posting format, writer, crash safety, BM25 per
 * document, S3 scores and spans, fusion, error paths. Synthetic documents whose answers are
 * known by construction; temp-file or in-memory SQLite. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "idx.h"
#include "index_int.h"

/* ---- synthetic documents ------------------------------------------------------------------
 * Token t is 4 bytes of text: a 3-letter pseudo-word and a separator ('.' ends a sentence
 * every sent_len tokens, else ' '), so token t starts at byte 4t. Passages are pass_len tokens.
 * Slot (3, 1), k = 2: feature 100 + t % 50 with activation 1 on every token, and the planted
 * feature with activation 2 at the planted positions. */
#define SYN_LAYER 3
#define SYN_HEAD  1
#define SYN_FEAT  7

struct syn {
    int64_t n_tok;
    int chunk, sent_len, pass_len;
    uint32_t seed;
    const int64_t *plant_pos;   /* planted feature positions */
    size_t n_plant;
    const int64_t *word_pos;    /* positions whose word is `word` */
    size_t n_word;
    const char *word;           /* 3 letters */
    const char *tenant;
};

static void syn_word(const struct syn *s, int64_t t, char out[4])
{
    static const char cons[] = "bdfgklmnprstvz", vow[] = "aeiou";
    for (size_t i = 0; i < s->n_word; i++)
        if (s->word_pos[i] == t) {
            memcpy(out, s->word, 3);
            goto sep;
        }
    uint32_t h = (uint32_t)t * 2654435761u ^ s->seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    /* a small vocabulary (300 words) so terms repeat */
    h %= 300;
    out[0] = cons[h % 14];
    out[1] = vow[(h / 14) % 5];
    out[2] = cons[(h / 70) % 14];
sep:
    out[3] = (t + 1) % s->sent_len == 0 ? '.' : ' ';
}

static char *syn_text(const struct syn *s)
{
    char *txt = malloc((size_t)s->n_tok * 4 + 1);
    for (int64_t t = 0; t < s->n_tok; t++)
        syn_word(s, t, txt + 4 * t);
    txt[4 * s->n_tok] = 0;
    return txt;
}

static int is_planted(const struct syn *s, int64_t t)
{
    for (size_t i = 0; i < s->n_plant; i++)
        if (s->plant_pos[i] == t)
            return 1;
    return 0;
}

/* Write chunks from the writer's current position through aw (an async writer on w) or w;
 * stop after max_chunks (-1: all) and call after(ud) after each chunk. Finishes the document
 * when everything is written (not with aw: the caller ends it first). */
static void syn_write_via(struct idx_writer *w, struct idx_async *aw, const struct syn *s,
                          const char *txt, int max_chunks, void (*after)(void *), void *ud)
{
    struct s3_errinfo err = {0};
    struct idx_scan_state st;
    const struct idx_slot slot = {SYN_LAYER, SYN_HEAD};
    int32_t *feat = malloc((size_t)s->chunk * 2 * sizeof *feat);
    float *act = malloc((size_t)s->chunk * 2 * sizeof *act);
    struct idx_passage *ps = calloc((size_t)s->chunk / s->pass_len + 2, sizeof *ps);
    int64_t *stok = malloc(sizeof(int64_t) * (size_t)(s->chunk + 2) * 2);
    int64_t *schar = stok + s->chunk + 2;
    idx_writer_state(w, &st); /* then followed here: with aw the writer is its thread's */
    for (int done = 0; max_chunks < 0 || done < max_chunks; done++) {
        if (st.next_tok >= s->n_tok)
            break;
        int64_t t0 = st.next_tok;
        int n = (int)(s->n_tok - t0 < s->chunk ? s->n_tok - t0 : s->chunk);
        for (int i = 0; i < n; i++) {
            int64_t t = t0 + i;
            feat[2 * i] = 100 + (int32_t)(t % 50);
            act[2 * i] = 1.0f;
            feat[2 * i + 1] = is_planted(s, t) ? SYN_FEAT : -1;
            act[2 * i + 1] = 2.0f;
        }
        /* passages ending within [0, t0 + n) */
        size_t np = 0, ns = 0;
        for (int64_t p0 = st.pass_tok; p0 < t0 + n;) {
            int64_t p1 = p0 + s->pass_len < s->n_tok ? p0 + s->pass_len : s->n_tok;
            if (p1 > t0 + n)
                break;
            struct idx_passage *p = &ps[np++];
            p->start_tok = p0;
            p->end_tok = p1;
            p->start_char = 4 * p0;
            p->end_char = 4 * p1;
            p->text = txt + 4 * p0;
            p->sent_tok = stok + ns;
            p->sent_char = schar + ns;
            p->n_sent = 0;
            for (int64_t b = (p0 / s->sent_len + 1) * s->sent_len; b < p1; b += s->sent_len) {
                stok[ns] = b;
                schar[ns] = 4 * b;
                ns++;
                p->n_sent++;
            }
            p0 = p1;
        }
        struct idx_chunk c = {.tok0 = t0, .n_tok = n, .n_slot = 1, .slots = &slot, .k = 2,
                              .feat = feat, .act = act, .n_passages = np, .passages = ps};
        int rc = aw ? idx_async_add(aw, &c, &err) : idx_writer_add(w, &c, &err);
        ck_assert_msg(rc == 0, "add: %s", err.msg);
        memset(feat, 0xff, (size_t)s->chunk * 2 * sizeof *feat); /* copied, not borrowed */
        st.next_tok = t0 + n;
        if (np)
            st.pass_tok = ps[np - 1].end_tok;
        if (after)
            after(ud);
    }
    if (!aw && st.next_tok == s->n_tok)
        ck_assert_msg(idx_writer_finish(w, &err) == 0, "finish: %s", err.msg);
    free(feat);
    free(act);
    free(ps);
    free(stok);
}

static void syn_write(struct idx_writer *w, const struct syn *s, const char *txt, int max_chunks,
                      void (*after)(void *), void *ud)
{
    syn_write_via(w, NULL, s, txt, max_chunks, after, ud);
}

static int64_t syn_new(struct idx_db *db, const struct syn *s)
{
    struct s3_errinfo err = {0};
    struct idx_writer *w;
    char *txt = syn_text(s);
    struct idx_doc_meta m = {.tenant = s->tenant, .name = "syn", .n_bytes = 4 * s->n_tok};
    ck_assert_msg(idx_writer_begin(db, &m, &w, &err) == 0, "%s", err.msg);
    syn_write(w, s, txt, -1, NULL, NULL);
    int64_t id = idx_writer_doc(w);
    struct idx_writer_times t;
    idx_writer_times(w, &t);
    ck_assert(t.accept >= 0 && t.passages >= 0 && t.segments >= 0 && t.commit >= 0 &&
              t.finish >= 0);
    ck_assert(t.accept + t.passages + t.segments + t.commit + t.finish > 0);
    idx_writer_free(w);
    free(txt);
    return id;
}

static struct idx_db *open_mem(void)
{
    struct s3_errinfo err = {0};
    struct idx_db *db;
    ck_assert_msg(idx_open(":memory:", NULL, &db, &err) == 0, "%s", err.msg);
    return db;
}

static int xpost_row(void *ud, int64_t seg, int layer, int head, int32_t feat, int64_t n,
                     const uint8_t *entries, size_t nbytes)
{
    sqlite3_stmt *st = ud;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 2, seg);
    sqlite3_bind_int(st, 3, layer);
    sqlite3_bind_int(st, 4, head);
    sqlite3_bind_int(st, 5, feat);
    sqlite3_bind_int64(st, 6, n);
    sqlite3_bind_blob(st, 7, entries, (int)nbytes, SQLITE_TRANSIENT);
    return sqlite3_step(st) == SQLITE_DONE ? 0 : S3_EDB;
}

/* The segment slot rows of doc as one row per (segment, slot, feature) of the temporary table
 * xpost(doc, seg, layer, head, feature, n, blob) (the features a finished document has: not
 * the dropped stop features), through idx__segslot_walk. */
static void xpost(struct idx_db *db, int64_t doc)
{
    struct s3_errinfo err = {0};
    sqlite3_stmt *st;
    char sql[128];
    snprintf(sql, sizeof sql, "DELETE FROM xpost WHERE doc = %lld", (long long)doc);
    ck_assert_int_eq(sqlite3_exec(db->db, "CREATE TEMP TABLE IF NOT EXISTS xpost(doc, seg, layer,"
                                  " head, feature, n, blob)", NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "INSERT INTO xpost VALUES(?,?,?,?,?,?,?)", -1,
                                        &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, doc);
    ck_assert_msg(idx__segslot_walk(db, doc, xpost_row, st, &err) == 0, "%s", err.msg);
    sqlite3_finalize(st);
}

/* A database path of this test run, with no database (or -wal, -shm) left there. */
static void tmp_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "%s/s3idx-%s-%d.db", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", tag,
             (int)getpid());
    idx_remove_files(buf);
}

/* A new database at a path of this test run (tmp_path(path, n, tag)). */
static struct idx_db *open_tmp(char *path, size_t n, const char *tag)
{
    struct s3_errinfo err = {0};
    struct idx_db *db;
    tmp_path(path, n, tag);
    ck_assert_msg(idx_open(path, NULL, &db, &err) == 0, "%s", err.msg);
    return db;
}

/* ---- posting format ------------------------------------------------------------------------ */

START_TEST(test_varint)
{
    uint8_t b[16];
    const uint64_t v[] = {0, 1, 127, 128, 300, 16383, 16384, (1ull << 32) + 5, UINT64_MAX};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = idx__varint_put(b, v[i]);
        uint64_t r = 42;
        ck_assert_uint_eq(idx__varint_get(b, b + n, &r), n);
        ck_assert_uint_eq(r, v[i]);
        if (n > 1) /* truncated */
            ck_assert_uint_eq(idx__varint_get(b, b + n - 1, &r), 0);
    }
    ck_assert_uint_eq(idx__varint_put(b, 127), 1);
    ck_assert_uint_eq(idx__varint_put(b, 128), 2);
    ck_assert_uint_eq(b[0], 0x80);
    ck_assert_uint_eq(b[1], 0x01);
    ck_assert_uint_eq(idx__varint_put(b, UINT64_MAX), 10);
    b[9] = 0x02; /* 65th bit */
    uint64_t r;
    ck_assert_uint_eq(idx__varint_get(b, b + 10, &r), 0);
}
END_TEST

START_TEST(test_act_quant)
{
    ck_assert_uint_eq(idx__act_encode(1.0f), IDX_Q_ZERO);
    ck_assert_float_eq(idx__act_decode(IDX_Q_ZERO), 1.0f);
    ck_assert_float_eq(idx__act_decode(IDX_Q_ZERO + 12), 2.0f);
    ck_assert_uint_eq(idx__act_encode(1e-9f), 1);
    ck_assert_uint_eq(idx__act_encode(1e9f), 255);
    ck_assert_uint_eq(idx__act_encode(0.0f), 1);
    ck_assert_uint_eq(idx__act_encode(NAN), 1);
    for (float a = 0.001f; a < 500.0f; a *= 1.07f) {
        float r = idx__act_decode(idx__act_encode(a));
        ck_assert_msg(fabsf(r - a) / a <= 0.0295f, "a=%g -> %g", a, r);
    }
    /* the code is round(12 log2 a) + IDX_Q_ZERO (clamped), computed here in double: equal
     * everywhere but within float rounding of a half step */
    int ties = 0;
    for (double a = 1e-5; a < 3000.0; a *= 1.0003) {
        const float af = (float)a;
        const double x = 12.0 * log2((double)af);
        double want = floor(x + 0.5) + IDX_Q_ZERO;
        want = want < 1 ? 1 : want > 255 ? 255 : want;
        if ((double)idx__act_encode(af) != want) {
            ck_assert_msg(fabs(x - floor(x) - 0.5) < 1e-5, "a=%.9g code %u want %g", a,
                          idx__act_encode(af), want);
            ties++;
        }
    }
    ck_assert_int_le(ties, 2);
    ck_assert_uint_eq(idx__act_encode(0x1.07805ap+0f), IDX_Q_ZERO + 1);  /* the first mid */
    ck_assert_uint_eq(idx__act_encode(0x1.078058p+0f), IDX_Q_ZERO);      /* just below */
    ck_assert_uint_eq(idx__act_encode(INFINITY), 255);
    ck_assert_uint_eq(idx__act_encode(0x1p-149f), 1);                     /* subnormal */
}
END_TEST

struct collect {
    int64_t pos[64];
    uint8_t q[64];
    float act[64];
    int n;
};

static void collect_fn(void *ud, int64_t pos, uint8_t q, float a)
{
    struct collect *c = ud;
    c->pos[c->n] = pos;
    c->q[c->n] = q;
    c->act[c->n++] = a;
}

START_TEST(test_blob_roundtrip)
{
    float lut[256];
    idx__act_lut(lut);
    int64_t base = 3LL << 16, end = base + 65535;
    struct idx_post p[] = {{base, 144},       {base + 1, 156},  {base + 129, 132},
                           {base + 20000, 255}, {end - 1, 1},   {end, 144}};
    uint8_t buf[128];
    int n = idx__post_encode(base, -1, p, 6, buf);
    /* gaps: 0, 0, 127, 19870 (3 bytes), 45533 (3 bytes), 0 => 1+1+1+3+3+1 varint bytes + 6 */
    ck_assert_int_eq(n, 16);
    ck_assert_uint_eq(buf[0], 0);
    ck_assert_uint_eq(buf[1], 144);
    ck_assert_uint_eq(buf[4], 127);
    struct collect c = {0};
    ck_assert_int_eq(idx__post_decode(base, end + 1, buf, (size_t)n, lut, collect_fn, &c), 6);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(c.pos[i], p[i].pos);
        ck_assert_uint_eq(c.q[i], p[i].q);
        ck_assert_float_eq(c.act[i], idx__act_decode(p[i].q));
    }
    ck_assert_float_eq(c.act[0], 1.0f);
    ck_assert_float_eq(c.act[1], 2.0f);
    /* the last position must stay below lim */
    ck_assert_int_eq(idx__post_decode(base, end, buf, (size_t)n, lut, NULL, NULL), S3_EFORMAT);
    /* continuing after prev_pos */
    struct idx_post q1[] = {{base + 10, 144}}, q2[] = {{base + 11, 156}, {base + 400, 144}};
    int a = idx__post_encode(base, -1, q1, 1, buf);
    int b = idx__post_encode(base, base + 10, q2, 2, buf + a);
    ck_assert_int_eq(b, 5); /* gap 0, gap 388 (2 bytes), two codes */
    c.n = 0;
    ck_assert_int_eq(idx__post_decode(base, end, buf, (size_t)(a + b), lut, collect_fn, &c), 3);
    ck_assert_int_eq(c.pos[0], base + 10);
    ck_assert_int_eq(c.pos[1], base + 11);
    ck_assert_int_eq(c.pos[2], base + 400);
    /* large positions: gaps over 32 bits of the format's span are refused */
    struct idx_post far[] = {{base + (1LL << 31), 9}};
    ck_assert_int_eq(idx__post_encode(base, -1, far, 1, buf), 6); /* 5-byte varint */
    c.n = 0;
    ck_assert_int_eq(idx__post_decode(base, base + (1LL << 32), buf, 6, lut, collect_fn, &c), 1);
    ck_assert_int_eq(c.pos[0], base + (1LL << 31));
    struct idx_post toofar[] = {{base + (1LL << 32), 9}};
    ck_assert_int_eq(idx__post_encode(base, -1, toofar, 1, buf), S3_EINVAL);
    /* empty blob */
    ck_assert_int_eq(idx__post_decode(base, end, buf, 0, lut, collect_fn, &c), 0);
    /* bad input to the encoder */
    struct idx_post bad1[] = {{base - 1, 1}}, bad2[] = {{base + 5, 1}, {base + 5, 1}};
    struct idx_post bad3[] = {{base + 5, 0}};
    ck_assert_int_eq(idx__post_encode(base, -1, bad1, 1, buf), S3_EINVAL);
    ck_assert_int_eq(idx__post_encode(base, -1, bad2, 2, buf), S3_EINVAL);
    ck_assert_int_eq(idx__post_encode(base, -1, bad3, 1, buf), S3_EINVAL);       /* code 0 */
    ck_assert_int_eq(idx__post_encode(base, base + 10, q1, 1, buf), S3_EINVAL); /* not after */
    ck_assert_int_eq(idx__post_encode(base, base - 9, q1, 1, buf), S3_EINVAL);  /* before base */
    /* malformed blobs */
    const uint8_t trunc[] = {0x80};               /* varint cut short */
    const uint8_t noact[] = {0x05};               /* gap without its code */
    const uint8_t zero[] = {0x05, 0x00};          /* code 0 */
    const uint8_t over[] = {0xff, 0xff, 0x03, 1}; /* gap 65535 */
    const uint8_t leave[] = {0xff, 0xff, 0x03, 1, 0x00, 1}; /* 65535, then past the end */
    const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1};
    ck_assert_int_eq(idx__post_decode(base, end + 1, trunc, 1, lut, NULL, NULL), S3_EFORMAT);
    ck_assert_int_eq(idx__post_decode(base, end + 1, noact, 1, lut, NULL, NULL), S3_EFORMAT);
    ck_assert_int_eq(idx__post_decode(base, end + 1, zero, 2, lut, NULL, NULL), S3_EFORMAT);
    ck_assert_int_eq(idx__post_decode(base, end + 1, over, 4, lut, NULL, NULL), 1);
    ck_assert_int_eq(idx__post_decode(base, end + 1, leave, 6, lut, NULL, NULL), S3_EFORMAT);
    ck_assert_int_eq(idx__post_decode(base, end + 1, huge, 11, lut, NULL, NULL), S3_EFORMAT);
}
END_TEST

/* ---- writer, scores, spans ------------------------------------------------------------------- */

static const int64_t plant70k[] = {5000, 5001, 5002, 65535, 65536};

static struct syn syn70k(void)
{
    struct syn s = {.n_tok = 70000, .chunk = 2048, .sent_len = 16, .pass_len = 64, .seed = 1,
                    .plant_pos = plant70k, .n_plant = 5};
    return s;
}

START_TEST(test_scores_exact)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct syn s = syn70k();
    /* _i = 1: segments of 16384 positions, so the document is five segments (the default:
     * three, cut as the end nears) */
    idx__tuning(db)->seg_tokens = _i ? 16384 : IDX_SEG_TOKENS;
    int64_t id = syn_new(db, &s);
    idx__tuning(db)->seg_tokens = IDX_SEG_TOKENS;
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, id, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    ck_assert_int_eq(info.n_tokens, 70000);
    ck_assert_int_eq(info.n_passages, (70000 + 63) / 64);
    ck_assert_int_eq(info.n_chunks, (70000 + 2047) / 2048);
    /* finished: its segments, one directory entry per (segment, feature) it has, one docmap
     * row, no pending rows */
    sqlite3_stmt *st;
    xpost(db, id);
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT (SELECT group_concat(seg || ':' || end)"
                                        " FROM (SELECT seg, end FROM segments WHERE doc = ?1"
                                        " ORDER BY seg)), (SELECT count(*) FROM"
                                        " xpost WHERE doc = ?1 AND feature = 105),"
                                        " (SELECT count(*) FROM docmap WHERE doc = ?1),"
                                        " (SELECT count(*) FROM xpost WHERE doc = ?1),"
                                        " (SELECT count(*) FROM xpost WHERE doc = ?1"
                                        " AND seg <> 0), (SELECT count(*) FROM pending)",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, id);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 2), 1);
    ck_assert_int_eq(sqlite3_column_int(st, 5), 0);
    if (_i == 0) {
        /* cut at 47104 (22896 positions left by the source bytes, 4 per token: at most half of
         * the 47104 unmerged) and at 63488 (6512 left of 16384) */
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 0),
                         "0:47104,47104:63488,63488:70000");
        ck_assert_int_eq(sqlite3_column_int(st, 1), 3);
        /* features 100..149 in each segment; the planted one in segments 0 (5000..5002) and
         * 2 (65535, 65536) */
        ck_assert_int_eq(sqlite3_column_int(st, 3), 50 * 3 + 2);
        ck_assert_int_eq(sqlite3_column_int(st, 4), 50 * 2 + 1);
    } else {
        /* the fourth segment is cut early at 63488: 14336 positions unmerged, 6512 left by the
           source bytes (4 per token), at most half */
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 0),
                         "0:16384,16384:32768,32768:49152,49152:63488,63488:70000");
        ck_assert_int_eq(sqlite3_column_int(st, 1), 5);
        /* features 100..149 in each of the 5 segments; the planted one in segments 0
         * (5000..5002) and 4 (65535, 65536) */
        ck_assert_int_eq(sqlite3_column_int(st, 3), 50 * 5 + 2);
        ck_assert_int_eq(sqlite3_column_int(st, 4), 50 * 4 + 1);
    }
    sqlite3_finalize(st);

    float *S = malloc(70000 * sizeof *S);
    /* planted feature: df = 5, a = 2 */
    struct idx_qfeat f = {SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f};
    ck_assert_int_eq(idx__score_positions(db, id, 70000, &f, 1, S, &err), 0);
    float want = (float)(2.0 / (log(6.0) + 1.0));
    for (int64_t t = 0; t < 70000; t++) {
        float e = is_planted(&s, t) ? want : 0.0f;
        ck_assert_msg(fabsf(S[t] - e) < 1e-6f, "t=%lld S=%g want %g", (long long)t, S[t], e);
    }
    /* a background feature written across 35 chunks and two segments: df = 1400, a = 1 */
    struct idx_qfeat g = {SYN_LAYER, SYN_HEAD, 105, 0.5f};
    ck_assert_int_eq(idx__score_positions(db, id, 70000, &g, 1, S, &err), 0);
    want = (float)(0.5 / (log(1401.0) + 1.0));
    for (int64_t t = 0; t < 70000; t++) {
        float e = t % 50 == 5 ? want : 0.0f;
        ck_assert_msg(fabsf(S[t] - e) < 1e-6f, "t=%lld S=%g want %g", (long long)t, S[t], e);
    }
    /* a feature of another slot or an absent feature scores nothing */
    struct idx_qfeat h[] = {{SYN_LAYER, 0, SYN_FEAT, 1.0f}, {SYN_LAYER, SYN_HEAD, 999, 1.0f}};
    ck_assert_int_eq(idx__score_positions(db, id, 70000, h, 2, S, &err), 0);
    for (int64_t t = 0; t < 70000; t++)
        ck_assert(S[t] == 0.0f);
    free(S);
    idx_close(db);
}
END_TEST

START_TEST(test_s3_spans)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct syn s = syn70k();
    int64_t id = syn_new(db, &s);
    char *txt = syn_text(&s);
    struct idx_qfeat f = {SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f};
    struct idx_query q = {.mode = IDX_MODE_S3, .budget = 128, .feats = &f, .n_feats = 1,
                          .docs = &id, .n_docs = 1};
    struct idx_result r;
    ck_assert_msg(idx_retrieve(db, &q, &r, &err) == 0, "%s", err.msg);
    /* plateau 5000..5002 of the smoothed score (3x/5): the peak is its first position 5000,
     * sentence [4992, 5008) grows to [4976, 5040); plants 65535 and 65536 give a plateau
     * 65534..65536 (2x/5): peak 65534, sentence [65520, 65536) grows to [65504, 65568). */
    ck_assert_uint_eq(r.n_spans, 2);
    ck_assert_int_eq(r.spans[0].start_tok, 4976);
    ck_assert_int_eq(r.spans[0].end_tok, 5040);
    ck_assert_int_eq(r.spans[0].start_char, 4 * 4976);
    ck_assert_int_eq(r.spans[0].end_char, 4 * 5040);
    ck_assert_int_eq(r.spans[1].start_tok, 65504);
    ck_assert_int_eq(r.spans[1].end_tok, 65568);
    ck_assert_int_eq(r.n_tokens, 128);
    ck_assert_uint_eq(r.spans[0].sources, IDX_SRC_S3);
    /* rank 1 is the three-token plant (higher smoothed peak) */
    ck_assert(fabs(r.spans[0].score - 1.0 / (IDX_RRF_K + 1)) < 1e-12);
    ck_assert(fabs(r.spans[1].score - 1.0 / (IDX_RRF_K + 2)) < 1e-12);
    ck_assert_mem_eq(r.spans[0].text, txt + 4 * 4976, 4 * 64);
    ck_assert_uint_eq(strlen(r.spans[0].text), 4 * 64);
    ck_assert_mem_eq(r.spans[1].text, txt + 4 * 65504, 4 * 64);
    idx_result_deinit(&r);

    /* a budget of 100 keeps the best span only; 63 fits none */
    q.budget = 100;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 1);
    ck_assert_int_eq(r.spans[0].start_tok, 4976);
    idx_result_deinit(&r);
    q.budget = 63;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 0);
    ck_assert_int_eq(r.n_tokens, 0);
    idx_result_deinit(&r);
    /* smaller max span: the peak's own sentence plus neighbours up to 32 */
    q.budget = 128;
    q.max_span = 32;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 2);
    ck_assert_int_eq(r.spans[0].start_tok, 4992);
    ck_assert_int_eq(r.spans[0].end_tok, 5024);
    idx_result_deinit(&r);
    free(txt);
    idx_close(db);
}
END_TEST

/* ---- BM25 ------------------------------------------------------------------------------------ */

static int64_t add_text_doc(struct idx_db *db, const char *const *pass, size_t n)
{
    struct s3_errinfo err = {0};
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "t"};
    struct idx_passage ps[16];
    int64_t c = 0;
    ck_assert(n <= 16);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(pass[i]);
        ps[i] = (struct idx_passage){.start_tok = (int64_t)i * 10, .end_tok = (int64_t)i * 10 + 10,
                                     .start_char = c, .end_char = c + (int64_t)len,
                                     .text = pass[i]};
        c += (int64_t)len;
    }
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    struct idx_chunk ch = {.tok0 = 0, .n_tok = (int)n * 10, .n_passages = n, .passages = ps};
    ck_assert_msg(idx_writer_add(w, &ch, &err) == 0, "%s", err.msg);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    int64_t id = idx_writer_doc(w);
    idx_writer_free(w);
    return id;
}

static double bm25_ref(int tf, int dl, double avgdl, int N, int df)
{
    double idf = log(1.0 + (N - df + 0.5) / (df + 0.5));
    return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl));
}

/* Sentence boundaries come from the docmap row, or from the passages rows when there is none
 * (documents finished before schema 2): the same spans either way; malformed data in either
 * is an error, never a wrong span. */
START_TEST(test_boundary_sources)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct syn s = syn70k();
    int64_t id = syn_new(db, &s);
    struct idx_qfeat f = {SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f};
    struct idx_query q = {.mode = IDX_MODE_S3, .budget = 128, .feats = &f, .n_feats = 1,
                          .docs = &id, .n_docs = 1};
    struct idx_result r;
    char sql[160];
    ck_assert_msg(idx_retrieve(db, &q, &r, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(r.n_spans, 2);
    int64_t want[4] = {r.spans[0].start_tok, r.spans[0].end_tok, r.spans[1].start_tok,
                       r.spans[1].end_tok};
    ck_assert_int_eq(want[0], 4976); /* grown to sentence boundaries (test_s3_spans) */
    idx_result_deinit(&r);

    snprintf(sql, sizeof sql, "UPDATE docmap SET blob = x'05' WHERE doc = %lld", (long long)id);
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "bad docmap"));

    snprintf(sql, sizeof sql, "DELETE FROM docmap WHERE doc = %lld", (long long)id);
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_msg(idx_retrieve(db, &q, &r, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(r.n_spans, 2);
    ck_assert_int_eq(r.spans[0].start_tok, want[0]);
    ck_assert_int_eq(r.spans[0].end_tok, want[1]);
    ck_assert_int_eq(r.spans[1].start_tok, want[2]);
    ck_assert_int_eq(r.spans[1].end_tok, want[3]);
    idx_result_deinit(&r);

    /* a sentence gap of 0 in the first passage */
    snprintf(sql, sizeof sql, "UPDATE passages SET sents = x'0000' WHERE id = %lld",
             (long long)IDX_PASSAGE_ID(id, 0));
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "bad sentence data"));
    idx_close(db);
}
END_TEST

START_TEST(test_bm25_exact)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    const char *const pass[] = {"Alpha beta gamma. ", "Alpha alpha delta. ",
                                "Epsilon zeta eta theta."};
    int64_t id = add_text_doc(db, pass, 3);
    struct idx_bm25_hit *h;
    size_t nh;
    ck_assert_int_eq(idx__bm25_doc(db, id, 3, 10, "the ALPHA?", 10, &h, &nh, &err), 0);
    ck_assert_uint_eq(nh, 2);
    ck_assert_int_eq(h[0].passage, 1);
    ck_assert_int_eq(h[1].passage, 0);
    ck_assert(fabs(h[0].score - bm25_ref(2, 3, 10 / 3.0, 3, 2)) < 1e-9);
    ck_assert(fabs(h[1].score - bm25_ref(1, 3, 10 / 3.0, 3, 2)) < 1e-9);
    free(h);
    /* two terms: theta only in passage 2 */
    ck_assert_int_eq(idx__bm25_doc(db, id, 3, 10, "alpha theta", 1, &h, &nh, &err), 0);
    ck_assert_uint_eq(nh, 1);
    ck_assert_int_eq(h[0].passage, 2);
    ck_assert(fabs(h[0].score - bm25_ref(1, 4, 10 / 3.0, 3, 1)) < 1e-9);
    free(h);
    /* stop words only, punctuation, FTS syntax: no hits, no error */
    ck_assert_int_eq(idx__bm25_doc(db, id, 3, 10, "the of and", 5, &h, &nh, &err), 0);
    ck_assert_uint_eq(nh, 0);
    ck_assert_int_eq(idx__bm25_doc(db, id, 3, 10, "\"NEAR( * ) OR", 5, &h, &nh, &err), 0);
    free(h);
    idx_close(db);
}
END_TEST

START_TEST(test_bm25_per_document)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    const char *const a[] = {"The zebra ran fast over the hill. ", "A lion slept in shade. ",
                             "The zebra and the lion met a zebra herd. ", "Rain fell. "};
    const char *const b[] = {"lion lion lion. ", "lion zebra. ", "lion. ", "lion. ", "lion. ",
                             "zebra zebra zebra zebra. ", "lion hill. "};
    int64_t ida = add_text_doc(db, a, 4);
    struct idx_query q = {.mode = IDX_MODE_BM25, .budget = 20, .text = "zebra lion hill",
                          .docs = &ida, .n_docs = 1};
    struct idx_result r1, r2;
    struct idx_bm25_hit *h1, *h2;
    size_t n1, n2;
    ck_assert_int_eq(idx_retrieve(db, &q, &r1, &err), 0);
    ck_assert_int_eq(idx__bm25_doc(db, ida, 4, 23, q.text, 10, &h1, &n1, &err), 0);
    sqlite3_stmt *st;
    /* FTS5 token counts 7 + 5 + 9 + 2, recorded at write time */
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT fts_words FROM documents WHERE id = ?",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, ida);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 23);
    sqlite3_finalize(st);
    /* the builtin, table-wide bm25() of passage 0, for contrast */
    double builtin1, builtin2;
    const char *sql = "SELECT bm25(passages_fts) FROM passages_fts WHERE passages_fts MATCH"
                      " 'zebra OR lion OR hill' AND rowid = ?";
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, IDX_PASSAGE_ID(ida, 0));
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    builtin1 = sqlite3_column_double(st, 0);
    sqlite3_reset(st);

    add_text_doc(db, b, 7); /* another document full of the query's words */

    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    builtin2 = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    ck_assert_msg(fabs(builtin1 - builtin2) > 1e-6, "builtin bm25 did not move (%g)", builtin1);

    ck_assert_int_eq(idx_retrieve(db, &q, &r2, &err), 0);
    ck_assert_int_eq(idx__bm25_doc(db, ida, 4, 23, q.text, 10, &h2, &n2, &err), 0);
    ck_assert_uint_eq(n1, n2);
    ck_assert_uint_eq(n1, 3);
    for (size_t i = 0; i < n1; i++) {
        ck_assert_int_eq(h1[i].passage, h2[i].passage);
        ck_assert(h1[i].score == h2[i].score);
    }
    /* hill is rare (df 1): passage 0 beats two zebras and a lion */
    ck_assert_int_eq(h1[0].passage, 0);
    ck_assert_int_eq(h1[1].passage, 2);
    ck_assert_int_eq(h1[2].passage, 1);
    ck_assert_uint_eq(r1.n_spans, r2.n_spans);
    for (size_t i = 0; i < r1.n_spans; i++) {
        ck_assert_int_eq(r1.spans[i].start_tok, r2.spans[i].start_tok);
        ck_assert(r1.spans[i].score == r2.spans[i].score);
        ck_assert_str_eq(r1.spans[i].text, r2.spans[i].text);
    }
    /* budget 20 = two 10-token passages: ranks 1 and 2 (passages 2 and 0) */
    ck_assert_uint_eq(r1.n_spans, 2);
    ck_assert_int_eq(r1.spans[0].start_tok, 0);
    ck_assert_int_eq(r1.spans[1].start_tok, 20);
    ck_assert_str_eq(r1.spans[1].text, a[2]);
    ck_assert_uint_eq(r1.spans[1].sources, IDX_SRC_BM25);
    free(h1);
    free(h2);
    idx_result_deinit(&r1);
    idx_result_deinit(&r2);
    idx_close(db);
}
END_TEST

/* ---- fusion ---------------------------------------------------------------------------------- */

START_TEST(test_hybrid_fusion)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    /* feature planted at 3000; the word "qux" at 3005 (same region) and at 9000 */
    static const int64_t plant[] = {3000, 3001}, words[] = {3005, 9000};
    struct syn s = {.n_tok = 12000, .chunk = 1024, .sent_len = 16, .pass_len = 64, .seed = 7,
                    .plant_pos = plant, .n_plant = 2, .word_pos = words, .n_word = 2,
                    .word = "qux"};
    int64_t id = syn_new(db, &s);
    struct idx_qfeat f = {SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f};
    struct idx_query q = {.mode = IDX_MODE_HYBRID, .budget = 256, .text = "qux", .feats = &f,
                          .n_feats = 1, .docs = &id, .n_docs = 1, .edge_tokens = 32};
    struct idx_result r;
    ck_assert_msg(idx_retrieve(db, &q, &r, &err) == 0, "%s", err.msg);
    char src[64];
    /* lead [0,32), s3 span around 3000 merged with the bm25 passage [2944, 3008)... */
    ck_assert_uint_eq(r.n_spans, 4);
    ck_assert_int_eq(r.spans[0].start_tok, 0);
    ck_assert_int_eq(r.spans[0].end_tok, 32);
    ck_assert_str_eq(idx_source_str(r.spans[0].sources, src, sizeof src), "lead");
    /* s3: sentence [2992, 3008) grown to [2976, 3040); bm25 passage [2944, 3008) */
    ck_assert_int_eq(r.spans[1].start_tok, 2944);
    ck_assert_int_eq(r.spans[1].end_tok, 3040);
    ck_assert_str_eq(idx_source_str(r.spans[1].sources, src, sizeof src), "s3+bm25");
    /* the region both found ranks first: 1/(k+1) + 1/(k+1) (bm25 ties break on position) */
    ck_assert(fabs(r.spans[1].score - 2.0 / (IDX_RRF_K + 1)) < 1e-12);
    ck_assert_int_eq(r.spans[2].start_tok, 8960);
    ck_assert_int_eq(r.spans[2].end_tok, 9024);
    ck_assert_str_eq(idx_source_str(r.spans[2].sources, src, sizeof src), "bm25");
    ck_assert_int_eq(r.spans[3].start_tok, 12000 - 32);
    ck_assert_int_eq(r.spans[3].end_tok, 12000);
    ck_assert_str_eq(idx_source_str(r.spans[3].sources, src, sizeof src), "tail");
    ck_assert_int_eq(r.n_tokens, 32 + 96 + 64 + 32);
    ck_assert(r.n_tokens <= q.budget);
    idx_result_deinit(&r);

    /* full: the whole document when it fits */
    q.mode = IDX_MODE_FULL;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_ETOOBIG);
    q.budget = 12000;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 1);
    ck_assert_int_eq(r.n_tokens, 12000);
    ck_assert_uint_eq(strlen(r.spans[0].text), 48000);
    ck_assert_str_eq(idx_source_str(r.spans[0].sources, src, sizeof src), "full");
    idx_result_deinit(&r);
    idx_close(db);
}
END_TEST

START_TEST(test_multi_doc)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    static const int64_t p1[] = {500}, p2[] = {1500};
    struct syn s1 = {.n_tok = 4000, .chunk = 1000, .sent_len = 16, .pass_len = 64, .seed = 2,
                     .plant_pos = p1, .n_plant = 1, .tenant = "acme"};
    struct syn s2 = s1;
    s2.plant_pos = p2;
    s2.seed = 3;
    s2.tenant = "other";
    int64_t ids[2] = {syn_new(db, &s1), syn_new(db, &s2)};
    struct idx_qfeat f = {SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f};
    struct idx_query q = {.mode = IDX_MODE_S3, .budget = 128, .feats = &f, .n_feats = 1,
                          .docs = ids, .n_docs = 2, .max_span = 16};
    struct idx_result r;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 2);
    ck_assert_int_eq(r.spans[0].doc, ids[0]);
    ck_assert_int_eq(r.spans[0].start_tok, 496);
    ck_assert_int_eq(r.spans[1].doc, ids[1]);
    ck_assert_int_eq(r.spans[1].start_tok, 1488);
    idx_result_deinit(&r);
    /* tenant scoping */
    q.tenant = "acme";
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_ENOTFOUND);
    q.n_docs = 1;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    idx_result_deinit(&r);
    struct idx_doc_info *list;
    size_t n;
    ck_assert_int_eq(idx_doc_list(db, "acme", 1, &list, &n, &err), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(list[0].id, ids[0]);
    free(list);
    /* delete removes everything of one document only */
    ck_assert_int_eq(idx_doc_delete(db, ids[0], &err), 0);
    ck_assert_int_eq(idx_doc_get(db, ids[0], &(struct idx_doc_info){0}, &err), S3_ENOTFOUND);
    q.tenant = NULL;
    q.docs = &ids[1];
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    ck_assert_uint_eq(r.n_spans, 1);
    idx_result_deinit(&r);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT (SELECT count(*) FROM segslots WHERE"
                                        " id >> 32 = ?1) + (SELECT count(*) FROM passages WHERE"
                                        " doc = ?1) + (SELECT count(*) FROM docmap WHERE"
                                        " doc = ?1)", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, ids[0]);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    idx_close(db);
}
END_TEST

/* ---- crash safety ---------------------------------------------------------------------------- */

static void signal_parent(void *ud)
{
    int fd = *(int *)ud;
    char c = 1;
    if (write(fd, &c, 1) != 1)
        _exit(3);
}

static void spans_of(struct idx_db *db, int64_t id, struct idx_result *r)
{
    struct s3_errinfo err = {0};
    struct idx_qfeat f[] = {{SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f},
                            {SYN_LAYER, SYN_HEAD, 120, 0.25f}};
    struct idx_query q = {.mode = IDX_MODE_HYBRID, .budget = 512, .text = "bab kel",
                          .feats = f, .n_feats = 2, .docs = &id, .n_docs = 1};
    ck_assert_msg(idx_retrieve(db, &q, r, &err) == 0, "%s", err.msg);
}

static void same_spans(const struct idx_result *a, const struct idx_result *b)
{
    ck_assert_uint_eq(a->n_spans, b->n_spans);
    ck_assert_int_eq(a->n_tokens, b->n_tokens);
    for (size_t i = 0; i < a->n_spans; i++) {
        ck_assert_int_eq(a->spans[i].start_tok, b->spans[i].start_tok);
        ck_assert_int_eq(a->spans[i].end_tok, b->spans[i].end_tok);
        ck_assert(a->spans[i].score == b->spans[i].score);
        ck_assert_uint_eq(a->spans[i].sources, b->spans[i].sources);
        ck_assert_str_eq(a->spans[i].text, b->spans[i].text);
    }
}

/* The same retrieval answers from documents a and b. */
static void same_spans_of_docs(struct idx_db *db, int64_t a, int64_t b)
{
    struct idx_result ra, rb;
    spans_of(db, a, &ra);
    spans_of(db, b, &rb);
    same_spans(&ra, &rb);
    idx_result_deinit(&ra);
    idx_result_deinit(&rb);
}

/* Every (segment, slot, feature) of doc a equals doc b's (same count and bytes). */
static void same_postings(struct idx_db *db, int64_t a, int64_t b)
{
    sqlite3_stmt *st;
    xpost(db, a);
    xpost(db, b);
    ck_assert_int_eq(sqlite3_prepare_v2(db->db,
                                        "SELECT (SELECT count(*) FROM xpost WHERE doc = ?1),"
                                        " (SELECT count(*) FROM xpost WHERE doc = ?2),"
                                        " (SELECT count(*) FROM xpost x JOIN xpost y ON"
                                        " x.layer = y.layer AND x.head = y.head AND"
                                        " x.feature = y.feature AND x.n = y.n AND"
                                        " x.blob = y.blob AND x.seg = y.seg"
                                        " WHERE x.doc = ?1 AND y.doc = ?2),"
                                        " (SELECT count(*) FROM segments WHERE doc = ?1) -"
                                        " (SELECT count(*) FROM segments WHERE doc = ?2),"
                                        " (SELECT count(*) FROM pending)",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_gt(sqlite3_column_int(st, 0), 10);
    ck_assert_int_eq(sqlite3_column_int(st, 1), sqlite3_column_int(st, 0));
    ck_assert_int_eq(sqlite3_column_int(st, 2), sqlite3_column_int(st, 0));
    /* the same segments; finished documents leave no pending rows behind */
    ck_assert_int_eq(sqlite3_column_int(st, 3), 0);
    ck_assert_int_eq(sqlite3_column_int(st, 4), 0);
    sqlite3_finalize(st);
}

/* Rewrite the database as schema 4 wrote it: every document's segment slot rows as postings
 * rows (one per segment, slot and feature; stop features already dropped, as schema 4 did at
 * finish), no segslots table, user_version 4. */
static void to_schema4(struct idx_db *db)
{
    sqlite3_stmt *st;
    int64_t docs[16];
    int n = 0;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT DISTINCT id >> 32 FROM segslots", -1,
                                        &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW && n < 16)
        docs[n++] = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    for (int i = 0; i < n; i++)
        xpost(db, docs[i]);
    ck_assert_int_eq(sqlite3_exec(db->db, "CREATE TEMP TABLE IF NOT EXISTS xpost(doc, seg, layer,"
                                  " head, feature, n, blob); INSERT INTO postings SELECT * FROM"
                                  " xpost; DROP TABLE segslots; PRAGMA user_version = 4", NULL,
                                  NULL, NULL), SQLITE_OK);
}

static int64_t committed_tokens(struct idx_db *db, int64_t doc)
{
    struct s3_errinfo err = {0};
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
    return info.n_tokens;
}

/* Chunks are committed per segment, per commit interval and at flush; a writer freed without
 * a flush loses what it held since the last commit, and a resumed one continues from there
 * (segments' rows and pending rows) to exactly the postings of an uninterrupted scan. */
START_TEST(test_commit_resume)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct syn s = syn70k();
    int64_t first = syn_new(db, &s);
    char *txt = syn_text(&s);
    struct idx_writer *w;
    struct idx_scan_state st;
    struct idx_doc_meta m = {.name = "held", .n_bytes = 4 * s.n_tok}; /* as syn_new */
    idx__tuning(db)->seg_tokens = 16384; /* segments of 8 chunks: resumed across segments */
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    const int64_t doc = idx_writer_doc(w);
    idx_writer_set_commit_ms(w, 1000000000); /* commits only when a segment fills */
    syn_write(w, &s, txt, 11, NULL, NULL);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 11 * 2048);
    ck_assert_int_eq(committed_tokens(db, doc), 8 * 2048); /* the first segment */
    idx_writer_free(w);                                    /* chunks 9..11 dropped */
    ck_assert_int_eq(idx_writer_resume(db, doc, &w, &err), 0);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 8 * 2048);
    ck_assert_int_eq(st.n_chunks, 8);
    idx_writer_set_commit_ms(w, 1000000000);
    syn_write(w, &s, txt, 2, NULL, NULL);
    ck_assert_int_eq(committed_tokens(db, doc), 8 * 2048);
    /* a refused chunk leaves the held ones alone */
    const struct idx_slot sl[2] = {{SYN_LAYER, SYN_HEAD}, {SYN_LAYER, SYN_HEAD + 1}};
    const int32_t big[4] = {5, 6, 1 << 24, 7}; /* slot 0 encodes, slot 1 is refused */
    const float one[4] = {1, 1, 1, 1};
    struct idx_chunk bad = {.tok0 = 10 * 2048, .n_tok = 1, .n_slot = 2, .slots = sl, .k = 2,
                            .feat = big, .act = one};
    ck_assert_int_eq(idx_writer_add(w, &bad, &err), S3_EINVAL);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 10 * 2048);
    ck_assert_int_eq(idx_writer_flush(w, &err), 0);        /* as pending rows */
    ck_assert_int_eq(committed_tokens(db, doc), 10 * 2048);
    ck_assert_int_eq(idx_writer_flush(w, &err), 0);        /* nothing held: no-op */
    idx_writer_free(w);
    ck_assert_int_eq(idx_writer_resume(db, doc, &w, &err), 0);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 10 * 2048);
    syn_write(w, &s, txt, -1, NULL, NULL);                 /* to the end, finished */
    idx_writer_free(w);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    ck_assert_int_eq(info.n_chunks, (70000 + 2047) / 2048);
    /* first was written in one segment, doc in five: the same scores; and the same rows as
     * an uninterrupted scan in segments of that size */
    same_spans_of_docs(db, first, doc);
    int64_t again = syn_new(db, &s);
    idx__tuning(db)->seg_tokens = IDX_SEG_TOKENS;
    same_postings(db, again, doc);
    free(txt);
    idx_close(db);
}
END_TEST

/* The writer on its own thread: the same postings as a writer on the caller's thread; the
 * first error of a queued chunk comes back from the next add and from the end, and the
 * writer is then at its last commit; bad chunks are refused before they are queued. */
/* A document of NS slots with random features (some -1) in chunks of 2048, through the
 * synchronous writer or idx_async with a given number of encoder threads. */
enum { MS_NS = 7, MS_K = 3, MS_CHUNK = 2048, MS_TOK = 5 * 2048 + 100 };

/* Add the multi-slot document's first n_tok tokens to w (through aw when not NULL). */
static void add_multislot(struct idx_writer *w, struct idx_async *aw, int64_t n_tok)
{
    struct s3_errinfo err = {0};
    struct idx_slot sl[MS_NS];
    for (int i = 0; i < MS_NS; i++)
        sl[i] = (struct idx_slot){i / 3, i % 3};
    int32_t *feat = malloc(sizeof(int32_t) * MS_CHUNK * MS_NS * MS_K);
    float *act = malloc(sizeof(float) * MS_CHUNK * MS_NS * MS_K);
    char *text = malloc(4 * (size_t)n_tok + 1);
    ck_assert(feat && act && text);
    memset(text, 'a', 4 * (size_t)n_tok);
    uint64_t r = 12345;
    for (int64_t t0 = 0; t0 < n_tok; t0 += MS_CHUNK) {
        const int n = n_tok - t0 < MS_CHUNK ? (int)(n_tok - t0) : MS_CHUNK;
        for (int i = 0; i < n * MS_NS * MS_K; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            feat[i] = (r >> 33) % 11 == 0 ? -1 : (int32_t)((r >> 40) % 300);
            act[i] = 0.05f + (float)((r >> 20) % 1000) * 1e-3f;
        }
        struct idx_passage p = {.start_tok = t0, .end_tok = t0 + n, .start_char = 4 * t0,
                                .end_char = 4 * (t0 + n), .text = text + 4 * t0};
        struct idx_chunk c = {.tok0 = t0, .n_tok = n, .n_slot = MS_NS, .slots = sl, .k = MS_K,
                              .feat = feat, .act = act, .n_passages = 1, .passages = &p};
        const int rc = aw ? idx_async_add(aw, &c, &err) : idx_writer_add(w, &c, &err);
        ck_assert_msg(rc == 0, "%s", err.msg);
    }
    free(feat), free(act), free(text);
}

static int64_t write_multislot(struct idx_db *db, int encoders)
{
    struct s3_errinfo err = {0};
    struct idx_writer *w;
    struct idx_async *aw = NULL;
    struct idx_doc_meta m = {.name = "slots"};
    const int was = idx__tuning(db)->async_encoders;
    idx__tuning(db)->async_encoders = encoders;
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    idx__tuning(db)->async_encoders = was;
    if (encoders >= 0)
        ck_assert_int_eq(idx_async_start(w, 2, &aw, &err), 0);
    add_multislot(w, aw, MS_TOK);
    ck_assert_int_eq(idx_async_end(aw, &err), 0);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    const int64_t doc = idx_writer_doc(w);
    idx_writer_free(w);
    return doc;
}

/* The multi-slot document's first n_tok tokens scanned and committed (idx_writer_flush: the
 * chunks of no full segment as pending rows), the scan left unfinished; its document id. */
static int64_t unfinished_multislot(struct idx_db *db, const char *name, int64_t n_tok)
{
    struct s3_errinfo err = {0};
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = name};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    add_multislot(w, NULL, n_tok);
    ck_assert_int_eq(idx_writer_flush(w, &err), 0);
    const int64_t doc = idx_writer_doc(w);
    idx_writer_free(w);
    return doc;
}

/* Slots encoded by encoder threads give the postings of the synchronous writer; a bad feature
 * in one slot is refused before queueing whichever thread met it. */
START_TEST(test_async_encoders)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    const int64_t sync = write_multislot(db, -1);
    same_postings(db, sync, write_multislot(db, 0));
    same_postings(db, sync, write_multislot(db, 3));
    /* five merging threads for the 7 slots of a segment: the same rows */
    idx__tuning(db)->merge_threads = 5;
    same_postings(db, sync, write_multislot(db, 0));
    idx__tuning(db)->merge_threads = -1;
    /* a byte budget smaller than one chunk: each add waits for the queue to empty, a lone
       chunk is still taken */
    idx__tuning(db)->async_bytes = 1;
    same_postings(db, sync, write_multislot(db, 3));
    idx__tuning(db)->async_bytes = IDX_ASYNC_BYTES;
    struct idx_writer *w;
    struct idx_async *aw;
    struct idx_doc_meta m = {.name = "bad"};
    idx__tuning(db)->async_encoders = 3;
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    ck_assert_int_eq(idx_async_start(w, 1, &aw, &err), 0);
    struct idx_slot sl[MS_NS];
    for (int i = 0; i < MS_NS; i++)
        sl[i] = (struct idx_slot){i / 3, i % 3};
    int32_t feat[4 * MS_NS * 2];
    float act[4 * MS_NS * 2];
    for (int i = 0; i < 4 * MS_NS * 2; i++)
        feat[i] = i % 50, act[i] = 1.0f;
    feat[4 * 2 * 4 + 3] = 1 << 24; /* slot 4 */
    struct idx_chunk c = {.tok0 = 0, .n_tok = 4, .n_slot = MS_NS, .slots = sl, .k = 2,
                          .feat = feat, .act = act};
    ck_assert_int_eq(idx_async_add(aw, &c, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    feat[4 * 2 * 4 + 3] = 7;
    ck_assert_int_eq(idx_async_end(aw, &err), 0); /* nothing was queued */
    struct idx_scan_state st;
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 0);
    idx_writer_free(w);
    idx_close(db);
}
END_TEST

/* A corrupt pending row (the index file damaged mid-scan) fails the resumed scan's segment
 * merge with a message and leaves the document unfinished. */
START_TEST(test_corrupt_pending)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    const int64_t doc = unfinished_multislot(db, "corrupt", MS_TOK); /* as pending rows */
    struct idx_writer *w;
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE pending SET blob = x'ffffffffffffffffff' WHERE doc = %lld AND tok0 = 2048"
             " AND layer = 1 AND head = 0", (long long)doc);
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_changes(db->db), 1);
    ck_assert_int_eq(idx_writer_resume(db, doc, &w, &err), 0);
    ck_assert_int_eq(idx_writer_finish(w, &err), S3_EFORMAT);
    ck_assert_msg(strstr(err.msg, "corrupt pending postings"), "%s", err.msg);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_SCANNING);
    idx_writer_free(w);
    idx_close(db);
}
END_TEST

/* Stop features (more than n / IDX_STOP_FRAC + 1 entries in the document) have no postings
 * rows once it is finished, however the segments split them: features 7 (positions 0..5999:
 * written with the first segment, dropped at finish), 9 (34000..39999: only in the last
 * segment), 11 (20000..25001) and 12 (30000..35001, across a segment border) are stop
 * features; 10 (14000..19000, 5001 entries = the limit) and 8 (every tenth) are kept. _i & 1:
 * segments of 16384 positions (else one segment); _i & 2: no merging thread. */
static int stop_feats(int64_t t, int32_t f[4])
{
    int n = 0;
    if (t < 6000)
        f[n++] = 7;
    if (t % 10 == 0)
        f[n++] = 8;
    if (t >= 34000)
        f[n++] = 9;
    if (t >= 14000 && t < 19001)
        f[n++] = 10;
    if (t >= 20000 && t < 25002)
        f[n++] = 11;
    if (t >= 30000 && t < 35002)
        f[n++] = 12;
    return n;
}

START_TEST(test_stop_features)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "stop"};
    enum { N = 40000, CH = 2048 };
    idx__tuning(db)->seg_tokens = _i & 1 ? 16384 : IDX_SEG_TOKENS;
    idx__tuning(db)->merge_threads = _i & 2 ? 0 : 3; /* on the writer's thread or three others */
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    const struct idx_slot sl = {2, 1};
    int32_t *feat = malloc(sizeof(int32_t) * CH * 4);
    float *act = malloc(sizeof(float) * CH * 4);
    char *text = malloc(N + 1);
    memset(text, 'a', N);
    for (int64_t t0 = 0; t0 < N; t0 += CH) {
        const int n = N - t0 < CH ? (int)(N - t0) : CH;
        for (int i = 0; i < n; i++) {
            int32_t *f = feat + 4 * i;
            for (int j = stop_feats(t0 + i, f); j < 4; j++)
                f[j] = -1;
            for (int j = 0; j < 4; j++)
                act[4 * i + j] = 1.0f;
        }
        struct idx_passage p = {.start_tok = t0, .end_tok = t0 + n, .start_char = t0,
                                .end_char = t0 + n, .text = text + t0};
        struct idx_chunk c = {.tok0 = t0, .n_tok = n, .n_slot = 1, .slots = &sl, .k = 4,
                              .feat = feat, .act = act, .n_passages = 1, .passages = &p};
        ck_assert_msg(idx_writer_add(w, &c, &err) == 0, "%s", err.msg);
    }
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    const int64_t doc = idx_writer_doc(w);
    idx_writer_free(w);
    sqlite3_stmt *st;
    xpost(db, doc);
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT feature, sum(n), count(*) FROM xpost"
                                        " WHERE doc = ? GROUP BY feature ORDER BY feature",
                                        -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, doc);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 8);
    ck_assert_int_eq(sqlite3_column_int(st, 1), 4000);
    ck_assert_int_eq(sqlite3_column_int(st, 2), _i & 1 ? 3 : 1);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 10);
    ck_assert_int_eq(sqlite3_column_int(st, 1), 5001);
    ck_assert_int_eq(sqlite3_column_int(st, 2), _i & 1 ? 2 : 1);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    /* scores: nothing from the stop features, feature 10 exactly on its positions */
    float *S = malloc(N * sizeof *S);
    const struct idx_qfeat q[] = {{2, 1, 7, 1.0f}, {2, 1, 9, 1.0f}, {2, 1, 11, 1.0f},
                                  {2, 1, 12, 1.0f}, {2, 1, 10, 1.0f}};
    ck_assert_int_eq(idx__score_positions(db, doc, N, q, 5, S, &err), 0);
    const float want = (float)(1.0 / (log(5002.0) + 1.0));
    for (int64_t t = 0; t < N; t++) {
        const float e = t >= 14000 && t < 19001 ? want : 0.0f;
        ck_assert_msg(fabsf(S[t] - e) < 1e-6f, "t=%lld S=%g want %g", (long long)t, S[t], e);
    }
    free(S), free(feat), free(act), free(text);
    idx_close(db);
}
END_TEST

/* A schema-3 database: a scan that wrote segment blobs cannot be resumed (failed, with what
 * to do); one that had only pending rows resumes and finishes. */
START_TEST(test_migrate_v3)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db = open_tmp(path, sizeof path, "mig3");
    const int64_t keep = unfinished_multislot(db, "pending only", MS_TOK);
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "with segment blobs"};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    const int64_t lost = idx_writer_doc(w);
    idx_writer_free(w);
    to_schema4(db);
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE TABLE segblobs(id INTEGER PRIMARY KEY, layer INTEGER NOT NULL,"
             " head INTEGER NOT NULL, seg INTEGER NOT NULL, end INTEGER NOT NULL,"
             " blob BLOB NOT NULL); INSERT INTO segblobs VALUES(%lld, 0, 0, 0, 16384, x'00');"
             " INSERT INTO pending VALUES(%lld, 16384, 0, 0, x'00'); PRAGMA user_version = 3",
             (long long)IDX_PASSAGE_ID(lost, 0), (long long)lost);
    ck_assert_int_eq(sqlite3_exec(db->db, sql, NULL, NULL, NULL), SQLITE_OK);
    idx_close(db);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, lost, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_FAILED);
    ck_assert_int_eq(idx_doc_get(db, keep, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_SCANNING);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT (SELECT count(*) FROM pending WHERE"
                                        " doc = ?1), (SELECT count(*) FROM sqlite_master"
                                        " WHERE name = 'segblobs'), (SELECT count(*) FROM"
                                        " pending WHERE doc = ?2)", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_int64(st, 1, lost);
    sqlite3_bind_int64(st, 2, keep);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
    ck_assert_int_eq(sqlite3_column_int(st, 1), 0);
    ck_assert_int_eq(sqlite3_column_int(st, 2), MS_NS * 6);
    sqlite3_finalize(st);
    ck_assert_int_eq(idx_writer_resume(db, lost, &w, &err), S3_EINVAL);
    ck_assert_int_eq(idx_writer_resume(db, keep, &w, &err), 0);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    idx_writer_free(w);
    const int64_t fresh = write_multislot(db, -1);
    same_postings(db, fresh, keep);
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

/* Damage the first segment slot row of doc (in its order of writing) as variant v does:
 * 0 a directory length past the blob, 1 a blob of one byte, 2 two directory features out of
 * order, 3 a feature's entries ending past the entries, 4 every entry byte 0xff (varints that
 * never end). */
static void damage_segslot(struct idx_db *db, int64_t doc, int v)
{
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT id, blob FROM segslots WHERE id >> 32 = ?"
                                        " ORDER BY id LIMIT 1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, doc);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    const int64_t id = sqlite3_column_int64(st, 0);
    size_t nb = (size_t)sqlite3_column_bytes(st, 1);
    uint8_t *b = malloc(nb);
    memcpy(b, sqlite3_column_blob(st, 1), nb);
    sqlite3_finalize(st);
    const uint32_t n_feat = idx__le32(b + nb - 4);
    uint8_t *dir = b + nb - 4 - (size_t)n_feat * IDX_SEGDIR_ENTRY;
    ck_assert_uint_ge(n_feat, 2);
    switch (v) {
    case 0: idx__le32_put(b + nb - 4, 0xffffffffu); break;
    case 1: nb = 1; break;
    case 2: {
        uint8_t tmp[4];
        memcpy(tmp, dir, 4);
        memcpy(dir, dir + IDX_SEGDIR_ENTRY, 4);
        memcpy(dir + IDX_SEGDIR_ENTRY, tmp, 4);
        break;
    }
    case 3: idx__le32_put(dir + 8, (uint32_t)(dir - b) + 1); break;
    default: memset(b, 0xff, (size_t)(dir - b)); break;
    }
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "UPDATE segslots SET blob = ? WHERE id = ?", -1,
                                        &st, NULL), SQLITE_OK);
    sqlite3_bind_blob(st, 1, b, (int)nb, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, id);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    free(b);
}

/* A damaged segment slot blob (the index file damaged) fails the query that reads it, the
 * resumed scan that counts its entries and the finish that drops stop features in it with
 * "corrupt postings", never a crash or a read outside it; the other documents still answer. */
START_TEST(test_corrupt_segslot)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct syn s = syn70k();
    const int64_t good = syn_new(db, &s);
    idx__tuning(db)->seg_tokens = 16384;
    const int64_t bad = syn_new(db, &s);
    damage_segslot(db, bad, _i);
    float *S = malloc(70000 * sizeof *S);
    const struct idx_qfeat q[] = {{SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f},
                                  {SYN_LAYER, SYN_HEAD, 105, 0.5f},
                                  {SYN_LAYER, SYN_HEAD, 100, 0.5f}};
    ck_assert_int_eq(idx__score_positions(db, bad, 70000, q, 3, S, &err), S3_EFORMAT);
    ck_assert_msg(strstr(err.msg, "corrupt postings"), "%s", err.msg);
    ck_assert_int_eq(idx__score_positions(db, good, 70000, q, 3, S, &err), 0);
    free(S);
    /* a scan with a segment written, then damaged: resumed, it cannot count its entries */
    idx__tuning(db)->seg_tokens = 4096;
    const int64_t scan = unfinished_multislot(db, "damaged scan", 3 * MS_CHUNK);
    struct idx_writer *w;
    if (_i != 4) { /* entry bytes are not read back by a writer */
        damage_segslot(db, scan, _i);
        ck_assert_int_eq(idx_writer_resume(db, scan, &w, &err), 0);
        add_multislot(w, NULL, 0);
        ck_assert_int_eq(idx_writer_finish(w, &err), S3_EFORMAT);
        ck_assert_msg(strstr(err.msg, "corrupt postings"), "%s", err.msg);
        idx_writer_free(w);
    }
    idx_close(db);
}
END_TEST

/* A schema-4 database: a finished document's postings rows (one per segment, slot and
 * feature) give the scores and spans of the same document written now; a scan that wrote
 * segments cannot be resumed (failed, with what to do); one that had only pending rows resumes
 * and finishes as segment slot rows. */
START_TEST(test_migrate_v4)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db = open_tmp(path, sizeof path, "mig4");
    struct syn s = syn70k();
    idx__tuning(db)->seg_tokens = 16384;
    const int64_t old = syn_new(db, &s);
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "segments written"};
    idx__tuning(db)->seg_tokens = 4096;
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    idx__tuning(db)->seg_tokens = IDX_SEG_TOKENS;
    const int64_t lost = idx_writer_doc(w);
    add_multislot(w, NULL, 3 * MS_CHUNK);
    idx_writer_free(w);
    const int64_t keep = unfinished_multislot(db, "pending only", MS_TOK);
    to_schema4(db);
    idx_close(db);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, old, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    ck_assert_int_eq(idx_doc_get(db, lost, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_FAILED);
    ck_assert_int_eq(idx_writer_resume(db, lost, &w, &err), S3_EINVAL);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT (SELECT count(*) FROM pending WHERE"
                                        " doc = ?1), (SELECT error FROM documents WHERE id = ?1),"
                                        " (SELECT count(*) FROM postings WHERE doc = ?2),"
                                        " (SELECT count(*) FROM segslots)", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_int64(st, 1, lost);
    sqlite3_bind_int64(st, 2, old);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
    ck_assert_ptr_nonnull(strstr((const char *)sqlite3_column_text(st, 1),
                                 "older version of the index"));
    ck_assert_int_gt(sqlite3_column_int(st, 2), 50);
    ck_assert_int_eq(sqlite3_column_int(st, 3), 0);
    sqlite3_finalize(st);
    /* the old rows score exactly as the same document written now, in either layout's
     * segments */
    idx__tuning(db)->seg_tokens = 16384;
    const int64_t now = syn_new(db, &s);
    idx__tuning(db)->seg_tokens = IDX_SEG_TOKENS;
    float *S = malloc(70000 * sizeof *S), *T = malloc(70000 * sizeof *T);
    const struct idx_qfeat q[] = {{SYN_LAYER, SYN_HEAD, SYN_FEAT, 1.0f},
                                  {SYN_LAYER, SYN_HEAD, 105, 0.5f},
                                  {SYN_LAYER, SYN_HEAD, 120, 0.25f}};
    ck_assert_int_eq(idx__score_positions(db, old, 70000, q, 3, S, &err), 0);
    ck_assert_int_eq(idx__score_positions(db, now, 70000, q, 3, T, &err), 0);
    int nz = 0;
    for (int64_t t = 0; t < 70000; t++) {
        ck_assert_msg(S[t] == T[t], "t=%lld %g vs %g", (long long)t, S[t], T[t]);
        nz += S[t] != 0.0f;
    }
    ck_assert_int_gt(nz, 2000);
    free(S), free(T);
    same_spans_of_docs(db, old, now);
    /* the pending-only scan resumes and finishes in the new layout */
    ck_assert_int_eq(idx_writer_resume(db, keep, &w, &err), 0);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    idx_writer_free(w);
    same_postings(db, write_multislot(db, -1), keep);
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

/* The syn70k document written on db by the synchronous writer, then through idx_async (with
 * commit_ms > 0 set on its writer, after(ud) called after each chunk is queued): the same
 * rows and spans. */
static void async_as_sync(struct idx_db *db, int commit_ms, void (*after)(void *), void *ud)
{
    struct s3_errinfo err = {0};
    struct syn s = syn70k();
    int64_t first = syn_new(db, &s);
    char *txt = syn_text(&s);
    struct idx_writer *w;
    struct idx_async *aw;
    struct idx_doc_meta m = {.name = "async", .n_bytes = 4 * s.n_tok}; /* as syn_new */
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    if (commit_ms > 0)
        idx_writer_set_commit_ms(w, commit_ms);
    const int64_t doc = idx_writer_doc(w);
    ck_assert_int_eq(idx_async_start(w, 2, &aw, &err), 0);
    syn_write_via(w, aw, &s, txt, -1, after, ud);
    ck_assert_msg(idx_async_end(aw, &err) == 0, "%s", err.msg);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    idx_writer_free(w);
    same_postings(db, first, doc);
    same_spans_of_docs(db, first, doc);
    free(txt);
}

START_TEST(test_async_writer)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    async_as_sync(db, 0, NULL, NULL);
    struct syn s = syn70k();
    char *txt = syn_text(&s);
    struct idx_writer *w;
    struct idx_async *aw;
    struct idx_doc_meta m = {.name = "async", .n_bytes = 4 * s.n_tok};
    /* errors: a chunk that does not continue the document fails on the thread */
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    idx_writer_set_commit_ms(w, 0);
    ck_assert_int_eq(idx_async_start(w, 1, &aw, &err), 0);
    syn_write_via(w, aw, &s, txt, 2, NULL, NULL);
    struct idx_passage p = {.start_tok = 9000, .end_tok = 9004, .start_char = 1, .end_char = 5,
                            .text = "abcd"};
    struct idx_chunk bad = {.tok0 = 9000, .n_tok = 4, .n_passages = 1, .passages = &p};
    ck_assert_int_eq(idx_async_add(aw, &bad, &err), 0); /* queued */
    int rc = 0;
    for (int i = 0; i < 1000 && rc == 0; i++) /* until the thread has met it */
        rc = idx_async_add(aw, &(struct idx_chunk){.tok0 = 9004}, &err);
    ck_assert_int_eq(rc, S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected 4096"));
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(idx_async_end(aw, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected 4096"));
    struct idx_scan_state st;
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 4096); /* the two good chunks, committed */
    /* refused before queueing */
    ck_assert_int_eq(idx_async_start(w, 1, &aw, &err), 0);
    struct idx_chunk shape = {.tok0 = 4096, .n_tok = 4, .n_slot = 1, .k = 2};
    ck_assert_int_eq(idx_async_add(aw, &shape, &err), S3_EINVAL);
    struct idx_chunk noslots = {.tok0 = 4096, .n_slot = 2};
    ck_assert_int_eq(idx_async_add(aw, &noslots, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "slot array"));
    const struct idx_slot sl = {SYN_LAYER, SYN_HEAD};
    const int32_t big[2] = {1 << 24, 5};
    const float one[2] = {1, 1};
    struct idx_chunk feat = {.tok0 = 4096, .n_tok = 1, .n_slot = 1, .slots = &sl, .k = 2,
                             .feat = big, .act = one};
    ck_assert_int_eq(idx_async_add(aw, &feat, &err), S3_EINVAL); /* encoded here: refused */
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    ck_assert_int_eq(idx_async_end(aw, &err), 0);
    ck_assert_int_eq(idx_async_start(w, 0, &aw, &err), S3_EINVAL);
    ck_assert_int_eq(idx_async_end(NULL, &err), 0);
    idx_writer_free(w);
    free(txt);
    idx_close(db);
}
END_TEST

/* After the first chunk (the async writer then idles with its transaction open): a
 * connection opened without the shared counter, which does not wait for locks, is refused; one
 * opened with it (waiting 300 ms for locks, under the writer's timed commit) writes an
 * upload's document row and deletes it, each raising the counter, which the writer yields
 * to; the counter is back to zero and the scan goes on. */
struct yield_ctx {
    struct idx_db *plain, *other;
    atomic_int waiters;
    int calls, refused, wrote, deleted;
};

static void compete(void *ud)
{
    struct yield_ctx *y = ud;
    if (y->calls++ != 0)
        return;
    struct s3_errinfo err = {0};
    struct idx_doc_meta m = {.name = "upload"};
    struct idx_writer *w2 = NULL;
    int rc = 0;
    for (int i = 0; i < 5000 && rc != S3_EBUSY; i++) { /* until the chunk's txn is open */
        rc = idx_writer_begin(y->plain, &m, &w2, &err);
        idx_writer_free(w2);
        w2 = NULL;
        if (rc != S3_EBUSY)
            usleep(1000);
    }
    y->refused = rc == S3_EBUSY;
    rc = idx_writer_begin(y->other, &m, &w2, &err);
    y->wrote = rc == 0;
    if (rc == 0)
        y->deleted = idx_doc_delete(y->other, idx_writer_doc(w2), &err) == 0;
    idx_writer_free(w2);
}

START_TEST(test_async_yield)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct yield_ctx y = {.calls = 0};
    atomic_init(&y.waiters, 0);
    struct idx_open_opts shared = {.writers_waiting = &y.waiters},
                         nowait = {.busy_ms = -1},
                         short_wait = {.busy_ms = 300, .writers_waiting = &y.waiters};
    struct idx_db *db;
    tmp_path(path, sizeof path, "yield");
    ck_assert_msg(idx_open(path, &shared, &db, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(idx_open(path, &nowait, &y.plain, &err), 0);
    ck_assert_int_eq(idx_open(path, &short_wait, &y.other, &err), 0);
    /* no timed commit ends the transaction */
    async_as_sync(db, 1000000, compete, &y);
    ck_assert_int_eq(y.refused, 1); /* the open transaction kept it out */
    ck_assert_int_eq(y.wrote, 1);   /* the writer yielded to the counter */
    ck_assert_int_eq(y.deleted, 1);
    ck_assert_int_eq(atomic_load(&y.waiters), 0);
    idx_close(y.plain);
    idx_close(y.other);
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

START_TEST(test_crash_resume)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db;
    tmp_path(path, sizeof path, "crash");
    static const int64_t plant[] = {20000, 100000};
    /* 69 chunks; killed after 40, past the first segment merges (segments of 16384 positions
     * = 8 chunks here, on every connection) */
    struct syn s = {.n_tok = 140000, .chunk = 2048, .sent_len = 16, .pass_len = 96, .seed = 5,
                    .plant_pos = plant, .n_plant = 2};
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    idx__tuning(db)->seg_tokens = 16384;
    int64_t first = syn_new(db, &s);
    struct idx_result before, after;
    spans_of(db, first, &before);
    idx_close(db);

    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        struct idx_db *cdb;
        struct idx_writer *w;
        struct idx_doc_meta m = {.name = "victim", .text_sha256 = "abc"};
        if (idx_open(path, NULL, &cdb, NULL) < 0)
            _exit(2);
        idx__tuning(cdb)->seg_tokens = 16384;
        if (idx_writer_begin(cdb, &m, &w, NULL) < 0)
            _exit(2);
        idx_writer_set_commit_ms(w, 0); /* every chunk committed before the parent hears of it */
        char *txt = syn_text(&s);
        syn_write(w, &s, txt, -1, signal_parent, &fds[1]);
        _exit(0); /* not reached in time: the parent kills us */
    }
    close(fds[1]);
    char c;
    for (int i = 0; i < 40; i++)
        ck_assert_int_eq(read(fds[0], &c, 1), 1);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    close(fds[0]);
    ck_assert(WIFSIGNALED(status));

    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    idx__tuning(db)->seg_tokens = 16384; /* the resumed writer's segments as the victim's */
    /* integrity, no visible half document, the earlier one intact */
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "PRAGMA integrity_check", -1, &st, NULL), 0);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    struct idx_doc_info *list;
    size_t n;
    ck_assert_int_eq(idx_doc_list(db, NULL, 1, &list, &n, &err), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(list[0].id, first);
    free(list);
    int64_t victim;
    ck_assert_int_eq(idx_doc_find_scanning(db, "", "abc", "", "", &victim, &err), 0);
    ck_assert_int_gt(victim, first);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, victim, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_SCANNING);
    ck_assert_int_ge(info.n_chunks, 40);
    ck_assert_int_lt(info.n_tokens, s.n_tok);
    ck_assert_int_eq(info.n_tokens, info.n_chunks * 2048);
    struct idx_query q = {.mode = IDX_MODE_BM25, .budget = 100, .text = "bab", .docs = &victim,
                          .n_docs = 1};
    ck_assert_int_eq(idx_retrieve(db, &q, &after, &err), S3_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "not ready"));
    spans_of(db, first, &after);
    same_spans(&before, &after);
    idx_result_deinit(&after);

    /* resume from the last committed chunk and finish: same answers as an uninterrupted scan */
    struct idx_writer *w;
    ck_assert_int_eq(idx_writer_resume(db, victim, &w, &err), 0);
    struct idx_scan_state ss;
    idx_writer_state(w, &ss);
    ck_assert_int_eq(ss.next_tok, info.n_tokens);
    char *txt = syn_text(&s);
    syn_write(w, &s, txt, -1, NULL, NULL);
    idx_writer_free(w);
    free(txt);
    spans_of(db, victim, &after);
    same_spans(&before, &after);
    idx_result_deinit(&after);
    /* resuming a finished document is refused */
    ck_assert_int_eq(idx_writer_resume(db, victim, &w, &err), S3_EINVAL);
    /* restarting cleanly: delete and rewrite */
    ck_assert_int_eq(idx_doc_delete(db, victim, &err), 0);
    int64_t again = syn_new(db, &s);
    spans_of(db, again, &after);
    same_spans(&before, &after);
    idx_result_deinit(&after);
    idx_result_deinit(&before);
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

/* ---- error paths ----------------------------------------------------------------------------- */

START_TEST(test_bad_queries)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    static const int64_t plant[] = {100};
    struct syn s = {.n_tok = 1000, .chunk = 256, .sent_len = 16, .pass_len = 64, .seed = 1,
                    .plant_pos = plant, .n_plant = 1};
    int64_t id = syn_new(db, &s), nope = 999;
    struct idx_query q = {.mode = IDX_MODE_HYBRID, .budget = 100, .text = "x", .docs = &nope,
                          .n_docs = 1};
    struct idx_result r;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "999"));
    ck_assert_uint_eq(r.n_spans, 0);
    q.docs = &id;
    q.budget = 0;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "budget"));
    q.budget = -5;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EINVAL);
    q.budget = 10;
    q.mode = 9;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EINVAL);
    q.mode = IDX_MODE_S3;
    q.n_docs = 0;
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_EINVAL);
    ck_assert_int_eq(idx_mode_parse("hybrid"), IDX_MODE_HYBRID);
    ck_assert_int_eq(idx_mode_parse("bm25"), IDX_MODE_BM25);
    ck_assert_int_eq(idx_mode_parse("nope"), -1);
    ck_assert_int_eq(idx_mode_parse(NULL), -1);
    /* bad chunks leave the document as it was */
    struct idx_writer *w;
    struct idx_doc_meta m = {0};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    struct idx_chunk c = {.tok0 = 5, .n_tok = 10};
    ck_assert_int_eq(idx_writer_add(w, &c, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected 0"));
    struct idx_passage p = {.start_tok = 1, .end_tok = 4, .start_char = 0, .end_char = 3,
                            .text = "abc"};
    c = (struct idx_chunk){.tok0 = 0, .n_tok = 10, .n_passages = 1, .passages = &p};
    ck_assert_int_eq(idx_writer_add(w, &c, &err), S3_EINVAL);   /* does not start at 0 */
    p.start_tok = 0;
    p.end_tok = 11;
    ck_assert_int_eq(idx_writer_add(w, &c, &err), S3_EINVAL);   /* beyond the chunk */
    p.end_tok = 4;
    int64_t st0 = 2, sc0 = 1;
    p.n_sent = 1;
    p.sent_tok = &st0;
    p.sent_char = &sc0;
    int32_t feat[10] = {[0] = IDX_MAX_FEATURE};
    float act[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct idx_slot slot = {0, 0};
    c.n_slot = 1;
    c.slots = &slot;
    c.k = 1;
    c.feat = feat;
    c.act = act;
    ck_assert_int_eq(idx_writer_add(w, &c, &err), S3_EINVAL);   /* feature id out of range */
    struct idx_chunk noslots = {.tok0 = 0, .n_slot = 1};
    ck_assert_int_eq(idx_writer_add(w, &noslots, &err), S3_EINVAL); /* slots without array */
    ck_assert_ptr_nonnull(strstr(err.msg, "slot array"));
    feat[0] = 3;
    ck_assert_int_eq(idx_writer_add(w, &c, &err), 0);
    ck_assert_int_eq(idx_writer_finish(w, &err), S3_EINVAL);    /* passages cover 4 of 10 */
    ck_assert_ptr_nonnull(strstr(err.msg, "cover"));
    idx_writer_free(w);
    idx_close(db);
}
END_TEST

/* Opening a schema-2 database whose scan was in progress: the scan (older pending format)
 * cannot be resumed; it is marked failed with what to do, finished documents stay. */
START_TEST(test_migrate_v2)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db = open_tmp(path, sizeof path, "mig");
    struct syn s = syn70k();
    int64_t ready = syn_new(db, &s);
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "old scan"};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    int64_t scanning = idx_writer_doc(w);
    idx_writer_free(w);
    to_schema4(db);
    ck_assert_int_eq(sqlite3_exec(db->db, "INSERT INTO pending VALUES("
                                  "2, 0, 1, 1, x'00'); PRAGMA user_version = 2", NULL, NULL,
                                  NULL), SQLITE_OK);
    idx_close(db);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, scanning, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_FAILED);
    ck_assert_int_eq(idx_doc_get(db, ready, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT (SELECT count(*) FROM pending),"
                                        " (SELECT count(*) FROM sqlite_master"
                                        " WHERE name = 'segblobs'),"
                                        " (SELECT error FROM documents WHERE id = ?1)", -1, &st,
                                        NULL),
                     SQLITE_OK);
    sqlite3_bind_int64(st, 1, scanning);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
    ck_assert_int_eq(sqlite3_column_int(st, 1), 0);
    ck_assert_ptr_nonnull(strstr((const char *)sqlite3_column_text(st, 2),
                                 "older version of the index"));
    sqlite3_finalize(st);
    struct idx_result r;
    spans_of(db, ready, &r);
    ck_assert_uint_gt(r.n_spans, 0);
    idx_result_deinit(&r);
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

/* A scan failed mid-document (idx_writer_fail) after chunks whose passages idx_async wrote
 * into the open transaction: those are rolled back, the document is marked failed with the
 * reason, and the write lock is free for another connection at once. */
START_TEST(test_fail_open_txn)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db = open_tmp(path, sizeof path, "failtxn");
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "failing"};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    struct idx_async *aw;
    ck_assert_int_eq(idx_async_start(w, 2, &aw, &err), 0);
    add_multislot(w, aw, 2 * MS_CHUNK); /* no commit due: two chunks' passages written */
    ck_assert_int_eq(idx_async_end(aw, &err), 0);
    const int64_t doc = idx_writer_doc(w);
    ck_assert_int_eq(idx_writer_fail(w, "the model went away", &err), 0);
    idx_writer_free(w);
    sqlite3 *other;
    ck_assert_int_eq(sqlite3_open(path, &other), SQLITE_OK);
    sqlite3_busy_timeout(other, 0);
    ck_assert_int_eq(sqlite3_exec(other, "BEGIN IMMEDIATE; ROLLBACK", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(other, "SELECT status, error, (SELECT count(*) FROM"
                                        " passages WHERE doc = ?1), n_tokens FROM documents"
                                        " WHERE id = ?1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, doc);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "failed");
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), "the model went away");
    ck_assert_int_eq(sqlite3_column_int(st, 2), 0);
    ck_assert_int_eq(sqlite3_column_int(st, 3), 0);
    sqlite3_finalize(st);
    sqlite3_close(other);
    /* the connection goes on: a whole document after it */
    same_postings(db, write_multislot(db, -1), write_multislot(db, 0));
    idx_close(db);
    idx_remove_files(path);
}
END_TEST

/* The largest feature id the index takes (IDX_MAX_FEATURE - 1) beside a small one: counted,
 * written, read and scored exactly (the writer's counts are dense over the features). */
START_TEST(test_feature_range)
{
    struct s3_errinfo err = {0};
    struct idx_db *db = open_mem();
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "range"};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    enum { N = 64 };
    int32_t feat[2 * N];
    float act[2 * N];
    for (int t = 0; t < N; t++) {
        feat[2 * t] = 3;
        feat[2 * t + 1] = t % 16 == 0 ? IDX_MAX_FEATURE - 1 : -1;
        act[2 * t] = 1.0f;
        act[2 * t + 1] = 2.0f;
    }
    char text[N];
    memset(text, 'a', sizeof text);
    struct idx_passage p = {.start_tok = 0, .end_tok = N, .start_char = 0, .end_char = N,
                            .text = text};
    struct idx_slot slot = {2, 1};
    struct idx_chunk c = {.tok0 = 0, .n_tok = N, .n_slot = 1, .slots = &slot, .k = 2,
                          .feat = feat, .act = act, .n_passages = 1, .passages = &p};
    ck_assert_int_eq(idx_writer_add(w, &c, &err), 0);
    ck_assert_msg(idx_writer_finish(w, &err) == 0, "%s", err.msg);
    const int64_t doc = idx_writer_doc(w);
    idx_writer_free(w);
    xpost(db, doc);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db->db, "SELECT group_concat(feature || ':' || n) FROM"
                                        " (SELECT feature, n FROM xpost WHERE doc = ?"
                                        " ORDER BY feature)", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, doc);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    char want[64];
    snprintf(want, sizeof want, "3:64,%d:4", IDX_MAX_FEATURE - 1);
    /* feature 3 is on every position: a stop feature (more than 64 / 8 + 1), dropped */
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), want + 5);
    sqlite3_finalize(st);
    float S[N];
    const struct idx_qfeat q = {2, 1, IDX_MAX_FEATURE - 1, 1.0f};
    ck_assert_int_eq(idx__score_positions(db, doc, N, &q, 1, S, &err), 0);
    const float a = (float)(idx__act_decode(idx__act_encode(2.0f)) / (log(5.0) + 1.0));
    for (int t = 0; t < N; t++)
        ck_assert_msg(fabsf(S[t] - (t % 16 == 0 ? a : 0.0f)) < 1e-6f, "t=%d S=%g", t, S[t]);
    idx_close(db);
}
END_TEST

START_TEST(test_locked_db)
{
    char path[256];
    struct s3_errinfo err = {0};
    struct idx_db *db;
    tmp_path(path, sizeof path, "lock");
    struct idx_open_opts o = {.busy_ms = 50};
    ck_assert_int_eq(idx_open(path, &o, &db, &err), 0);
    sqlite3 *other;
    ck_assert_int_eq(sqlite3_open(path, &other), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct idx_writer *w;
    struct idx_doc_meta m = {.name = "x"};
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), S3_EBUSY);
    ck_assert_ptr_nonnull(strstr(err.msg, "locked"));
    ck_assert_ptr_null(w);
    ck_assert_int_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    /* a writer mid-document meets the lock on its next chunk, then goes on */
    ck_assert_int_eq(idx_writer_begin(db, &m, &w, &err), 0);
    ck_assert_int_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct idx_passage p = {.start_tok = 0, .end_tok = 4, .start_char = 0, .end_char = 4,
                            .text = "abcd"};
    struct idx_chunk c = {.tok0 = 0, .n_tok = 4, .n_passages = 1, .passages = &p};
    struct idx_scan_state st;
    /* held (no commit due): accepted; the flush meets the lock and drops it */
    ck_assert_int_eq(idx_writer_add(w, &c, &err), 0);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 4);
    ck_assert_int_eq(idx_writer_flush(w, &err), S3_EBUSY);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 0);
    /* through idx_async a chunk's passages are written at once, in the transaction the next
     * commit ends: the chunk that opens it meets the lock, reported by the end */
    struct idx_async *aw;
    ck_assert_int_eq(idx_async_start(w, 2, &aw, &err), 0);
    ck_assert_int_eq(idx_async_add(aw, &c, &err), 0);
    ck_assert_int_eq(idx_async_end(aw, &err), S3_EBUSY);
    ck_assert_ptr_nonnull(strstr(err.msg, "locked"));
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 0);
    /* committed with each chunk: the add itself meets it */
    idx_writer_set_commit_ms(w, 0);
    ck_assert_int_eq(idx_writer_add(w, &c, &err), S3_EBUSY);
    idx_writer_state(w, &st);
    ck_assert_int_eq(st.next_tok, 0);
    ck_assert_int_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    ck_assert_int_eq(idx_writer_add(w, &c, &err), 0);
    ck_assert_int_eq(idx_writer_finish(w, &err), 0);
    idx_writer_free(w);
    sqlite3_close(other);
    idx_close(db);
    /* newer schema than this program knows */
    sqlite3 *raw;
    ck_assert_int_eq(sqlite3_open(path, &raw), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(raw, "PRAGMA user_version = 99", NULL, NULL, NULL), 0);
    sqlite3_close(raw);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), S3_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "newer"));
    idx_remove_files(path);
}
END_TEST

/* A file database's checkpointer belongs to the handle: a freed writer leaves it copying, a
 * second writer on the same handle uses it, and idx_close serves the last copy (the WAL is
 * gone after the close). Both documents read back the same from a new handle, and equal a
 * scan into an in-memory database (no checkpointer). */
START_TEST(test_checkpointer_outlives_writer)
{
    char path[256], wal[300];
    struct s3_errinfo err = {0};
    struct idx_db *db = open_tmp(path, sizeof path, "ckpt");
    struct syn s = syn70k();
    const int64_t a = syn_new(db, &s);
    ck_assert(db->ck.on);
    const int64_t b = syn_new(db, &s);
    ck_assert(db->ck.on);
    same_postings(db, a, b);
    struct idx_result ra;
    spans_of(db, a, &ra);
    idx_close(db);
    snprintf(wal, sizeof wal, "%s-wal", path);
    ck_assert_int_ne(access(wal, F_OK), 0);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    ck_assert(!db->ck.on); /* only writers start it */
    same_postings(db, a, b);
    struct idx_result rb;
    spans_of(db, b, &rb);
    same_spans(&ra, &rb);
    idx_close(db);
    struct idx_db *mem = open_mem();
    const int64_t m = syn_new(mem, &s);
    ck_assert(!mem->ck.on);
    struct idx_result rm;
    spans_of(mem, m, &rm);
    same_spans(&ra, &rm);
    idx_result_deinit(&ra), idx_result_deinit(&rb), idx_result_deinit(&rm);
    idx_close(mem);
    idx_remove_files(path);
}
END_TEST

START_TEST(test_corrupt_db)
{
    char path[256], wal[300];
    struct s3_errinfo err = {0};
    struct idx_db *db = (struct idx_db *)1;
    tmp_path(path, sizeof path, "corrupt");
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)("not a database, just text\n"[i % 26]);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), S3_EFORMAT);
    ck_assert_ptr_null(db);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a valid database"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    /* untouched: same bytes, no WAL created */
    char back[8192 + 16];
    f = fopen(path, "rb");
    ck_assert_uint_eq(fread(back, 1, sizeof back, f), sizeof junk);
    fclose(f);
    ck_assert_mem_eq(back, junk, sizeof junk);
    snprintf(wal, sizeof wal, "%s-wal", path);
    ck_assert_int_ne(access(wal, F_OK), 0);
    /* a missing file read-only, and a directory */
    idx_remove_files(path);
    struct idx_open_opts ro = {.readonly = 1};
    ck_assert_int_eq(idx_open(path, &ro, &db, &err), S3_EIO);
    ck_assert_int_eq(idx_open("/", NULL, &db, &err), S3_EIO);
    ck_assert_int_eq(idx_open("", NULL, &db, &err), S3_EINVAL);
}
END_TEST

static Suite *index_suite(void)
{
    Suite *s = suite_create("index");
    TCase *tc = tcase_create("index");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_varint);
    tcase_add_test(tc, test_act_quant);
    tcase_add_test(tc, test_blob_roundtrip);
    tcase_add_loop_test(tc, test_scores_exact, 0, 2);
    tcase_add_test(tc, test_s3_spans);
    tcase_add_test(tc, test_boundary_sources);
    tcase_add_test(tc, test_bm25_exact);
    tcase_add_test(tc, test_bm25_per_document);
    tcase_add_test(tc, test_hybrid_fusion);
    tcase_add_test(tc, test_multi_doc);
    tcase_add_test(tc, test_crash_resume);
    tcase_add_test(tc, test_commit_resume);
    tcase_add_test(tc, test_async_writer);
    tcase_add_test(tc, test_async_yield);
    tcase_add_test(tc, test_async_encoders);
    tcase_add_test(tc, test_corrupt_pending);
    tcase_add_test(tc, test_migrate_v4);
    tcase_add_test(tc, test_fail_open_txn);
    tcase_add_test(tc, test_feature_range);
    tcase_add_loop_test(tc, test_corrupt_segslot, 0, 5);
    tcase_add_loop_test(tc, test_stop_features, 0, 4);
    tcase_add_test(tc, test_bad_queries);
    tcase_add_test(tc, test_locked_db);
    tcase_add_test(tc, test_migrate_v2);
    tcase_add_test(tc, test_migrate_v3);
    tcase_add_test(tc, test_corrupt_db);
    tcase_add_test(tc, test_checkpointer_outlives_writer);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(index_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
