/* tests/scan/test_scan.c - the scan driver and query encoder on the default model with a tiny
 * SAE trained here (2 layers, 128 latents, k 8, a few thousand tokens of the pydoc fixture):
 * passages tile the text at sentence starts, chunking with an overlap prefix indexes every
 * position once, a planted needle is retrieved (s3 and hybrid), a scan killed with SIGKILL
 * midway leaves an invisible, resumable document whose finished index equals an
 * uninterrupted scan's, and every bad input fails with a clear error and an intact database.
 * The CLI commands are driven too (ingest / retrieve JSON). */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "idx.h"
#include "sae.h"
#include "scan.h"

static char g_root[1024];
static char g_sae_path[1200];
static char g_dir[1024];
static char *g_filler;          /* fixture text, markup and all */
static size_t g_filler_len;

static const char *NEEDLE =
    "The secret passphrase of the Kestrel observatory is velvet-thistle-25.";
static const char *QUESTION = "What is the secret passphrase of the Kestrel observatory?";

static void path_in(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", g_dir, name);
}

static struct eng_model *load_model(void)
{
    char p[1200];
    struct eng_model *m = NULL;
    struct s3_errinfo err = {0};
    snprintf(p, sizeof p, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", g_root);
    struct eng_model_opts mo = {.n_threads = 2};
    ck_assert_msg(eng_model_load(p, &mo, &m, &err) == 0, "model: %s", err.msg);
    return m;
}

static struct eng_sae *load_sae(const struct eng_model *m)
{
    struct eng_sae *s = NULL;
    struct s3_errinfo err = {0};
    ck_assert_msg(eng_sae_load(g_sae_path, eng_model_hparams(m), &s, &err) == 0, "sae: %s",
                  err.msg);
    return s;
}

/* A document of about n_bytes of filler with the needle planted as its own paragraph at
 * byte fraction `at`. *out new. */
static char *make_doc(size_t n_bytes, double at, size_t *len)
{
    char *d = malloc(n_bytes + 256);
    size_t pos = 0, plant = (size_t)(at * (double)n_bytes), src = 2000;
    int planted = 0;
    while (pos < n_bytes) {
        /* copy one paragraph of the filler */
        const char *p = g_filler + src;
        const char *e = strstr(p, "\n\n");
        size_t k = e ? (size_t)(e - p) + 2 : g_filler_len - src;
        if (pos + k > n_bytes)
            k = n_bytes - pos;
        memcpy(d + pos, p, k);
        pos += k;
        src = e && (size_t)(e + 2 - g_filler) < g_filler_len - 1 ? (size_t)(e + 2 - g_filler) : 0;
        if (!planted && pos >= plant) {
            pos += (size_t)snprintf(d + pos, n_bytes + 256 - pos, "\n\n%s\n\n", NEEDLE);
            planted = 1;
        }
    }
    d[pos] = 0;
    *len = pos;
    return d;
}

/* ---- scan and retrieval -------------------------------------------------------------------- */

START_TEST(test_scan_tiles_and_retrieves)
{
    struct eng_model *m = load_model();
    struct eng_sae *s = load_sae(m);
    struct srv_scan *sc = NULL;
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    struct srv_scan_opts so = {.chunk = 256, .overlap = 32};
    ck_assert_int_eq(srv_scan_new(m, s, &so, &sc, &err), 0);
    ck_assert_int_eq(idx_open(":memory:", NULL, &db, &err), 0);
    size_t len;
    char *text = make_doc(5000, 0.6, &len);
    int64_t doc = 0;
    struct srv_scan_stats st;
    ck_assert_msg(srv_scan_document(sc, db, text, len, NULL, &doc, &st, &err) == 0, "%s",
                  err.msg);
    /* every token counted once: the number of positions equals the whole-text tokenization */
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ck_assert_int_eq(eng_tok_encode(eng_model_tok(m), text, len, 0, &ids, &n_ids), 0);
    ck_assert_int_eq(st.n_tokens, (int64_t)n_ids);
    ck_assert_int_eq(st.n_chunks, ((int64_t)n_ids + 255) / 256);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    ck_assert_int_eq(info.n_tokens, (int64_t)n_ids);
    ck_assert_int_eq(info.n_bytes, (int64_t)len);
    /* passages: mode full returns the whole text, byte for byte */
    struct idx_query fq = {.mode = IDX_MODE_FULL, .budget = 100000, .docs = &doc, .n_docs = 1};
    struct idx_result r = {0};
    ck_assert_int_eq(idx_retrieve(db, &fq, &r, &err), 0);
    ck_assert_int_eq(r.n_spans, 1);
    ck_assert_int_eq(r.spans[0].end_char, (int64_t)len);
    ck_assert(memcmp(r.spans[0].text, text, len) == 0);
    idx_result_deinit(&r);
    /* passage sizes: 64 .. 64 + 48 tokens, the last one may be shorter */
    ck_assert_int_ge(info.n_passages, (int64_t)n_ids / 112);
    ck_assert_int_le(info.n_passages, (int64_t)n_ids / 64 + 1);

    /* the question's features, then the needle by S3 alone and by hybrid */
    struct idx_qfeat *qf = NULL;
    size_t nqf = 0;
    ck_assert_int_eq(srv_scan_query(sc, QUESTION, strlen(QUESTION), 16, &qf, &nqf, &err), 0);
    ck_assert_int_gt(nqf, 0);
    ck_assert_int_le(nqf, 2 * 3 * 16);
    double wsum = 0;
    for (size_t i = 0; i < nqf; i++) {
        ck_assert(qf[i].weight > 0);
        ck_assert(qf[i].feature >= 0 && qf[i].feature < 128);
        if (qf[i].layer == qf[0].layer && qf[i].kv_head == qf[0].kv_head)
            wsum += qf[i].weight;
    }
    ck_assert(wsum > 0.999 && wsum < 1.001);
    const int modes[2] = {IDX_MODE_S3, IDX_MODE_HYBRID}, budgets[2] = {512, 256};
    for (int i = 0; i < 2; i++) {
        struct idx_query q = {.mode = modes[i], .budget = budgets[i], .text = QUESTION, .feats = qf,
                              .n_feats = nqf, .docs = &doc, .n_docs = 1};
        ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
        int found = 0;
        for (size_t j = 0; j < r.n_spans; j++)
            found |= strstr(r.spans[j].text, "velvet-thistle-25") != NULL;
        ck_assert_msg(found, "needle not retrieved in mode %s", idx_mode_name(modes[i]));
        ck_assert_int_le(r.n_tokens, budgets[i]);
        idx_result_deinit(&r);
    }
    free(qf);
    /* the same question twice gives the same features (deterministic) */
    struct idx_qfeat *qf2 = NULL;
    size_t nqf2 = 0;
    ck_assert_int_eq(srv_scan_query(sc, QUESTION, strlen(QUESTION), 16, &qf, &nqf, &err), 0);
    ck_assert_int_eq(srv_scan_query(sc, QUESTION, strlen(QUESTION), 16, &qf2, &nqf2, &err), 0);
    ck_assert_int_eq(nqf, nqf2);
    ck_assert(memcmp(qf, qf2, nqf * sizeof *qf) == 0);
    free(qf);
    free(qf2);
    free(ids);
    free(text);
    idx_close(db);
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
}
END_TEST

/* Chunking changes nothing but the context keys see: with overlap W = chunk - 1 ... the
 * tokens, passages and sentence starts are the same for any chunk size. */
START_TEST(test_chunking_invariants)
{
    struct eng_model *m = load_model();
    struct eng_sae *s = load_sae(m);
    struct s3_errinfo err = {0};
    size_t len;
    char *text = make_doc(3000, 0.3, &len);
    int64_t np[2], nt[2];
    const int chunks[2] = {100, 1000};
    for (int i = 0; i < 2; i++) {
        struct srv_scan *sc = NULL;
        struct idx_db *db = NULL;
        struct srv_scan_opts so = {.chunk = chunks[i], .overlap = -1};
        ck_assert_int_eq(srv_scan_new(m, s, &so, &sc, &err), 0);
        ck_assert_int_eq(idx_open(":memory:", NULL, &db, &err), 0);
        int64_t doc;
        ck_assert_int_eq(srv_scan_document(sc, db, text, len, NULL, &doc, NULL, &err), 0);
        struct idx_doc_info info;
        ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
        np[i] = info.n_passages;
        nt[i] = info.n_tokens;
        idx_close(db);
        srv_scan_free(sc);
    }
    ck_assert_int_eq(nt[0], nt[1]);
    ck_assert_int_eq(np[0], np[1]);
    free(text);
    eng_sae_free(s);
    eng_model_free(m);
}
END_TEST

/* ---- crash safety ---------------------------------------------------------------------------- */

static int64_t db_chunks(const char *path)
{
    sqlite3 *d = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_open_v2(path, &d, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(d, "SELECT max(n_chunks) FROM documents", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(d);
    return n;
}

/* Scan text into path and return the retrieval result's texts joined (for comparison). */
static char *finish_and_fingerprint(struct srv_scan *sc, const char *path, const char *text,
                                    size_t len, int64_t *doc_out, struct srv_scan_stats *st)
{
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    int64_t doc = 0;
    ck_assert_msg(srv_scan_document(sc, db, text, len, NULL, &doc, st, &err) == 0, "%s",
                  err.msg);
    struct idx_qfeat *qf = NULL;
    size_t nqf = 0;
    ck_assert_int_eq(srv_scan_query(sc, QUESTION, strlen(QUESTION), 16, &qf, &nqf, &err), 0);
    struct idx_query q = {.mode = IDX_MODE_HYBRID, .budget = 300, .text = QUESTION,
                          .feats = qf, .n_feats = nqf, .docs = &doc, .n_docs = 1};
    struct idx_result r = {0};
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), 0);
    size_t cap = 64;
    for (size_t i = 0; i < r.n_spans; i++)
        cap += strlen(r.spans[i].text) + 64;
    char *fp = malloc(cap);
    size_t at = 0;
    for (size_t i = 0; i < r.n_spans; i++)
        at += (size_t)snprintf(fp + at, cap - at, "[%lld %lld %.6f %u]%s",
                               (long long)r.spans[i].start_tok, (long long)r.spans[i].end_tok,
                               r.spans[i].score, r.spans[i].sources, r.spans[i].text);
    fp[at] = 0;
    idx_result_deinit(&r);
    free(qf);
    struct idx_doc_info info;
    ck_assert_int_eq(idx_doc_get(db, doc, &info, &err), 0);
    ck_assert_int_eq(info.status, IDX_DOC_READY);
    *doc_out = doc;
    idx_close(db);
    return fp;
}

START_TEST(test_kill_midway_and_resume)
{
    char path[1200], ref[1200];
    path_in(path, sizeof path, "kill.db");
    path_in(ref, sizeof ref, "ref.db");
    idx_remove_files(path);
    idx_remove_files(ref);
    size_t len;
    char *text = make_doc(9000, 0.8, &len);

    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct eng_model *m = load_model();
        struct eng_sae *s = load_sae(m);
        struct srv_scan *sc = NULL;
        struct idx_db *db = NULL;
        struct srv_scan_opts so = {.chunk = 128, .overlap = 16};
        if (srv_scan_new(m, s, &so, &sc, NULL) < 0 || idx_open(path, NULL, &db, NULL) < 0)
            _exit(3);
        srv_scan_document(sc, db, text, len, NULL, NULL, NULL, NULL);
        _exit(4); /* should have been killed before finishing */
    }
    /* kill it once a few chunks are committed */
    int64_t n = -1;
    for (int i = 0; i < 40000 && n < 3; i++) { /* up to 200 s (sanitizers, a busy CPU) */
        usleep(5000);
        n = db_chunks(path);
    }
    kill(pid, SIGKILL);
    int ws;
    waitpid(pid, &ws, 0);
    ck_assert_msg(WIFSIGNALED(ws), "the scan finished before it was killed (n_chunks %lld)",
                  (long long)n);

    /* the database opens, the document is unfinished and invisible */
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(idx_open(path, NULL, &db, &err), 0);
    struct idx_doc_info *list = NULL;
    size_t nl = 0;
    ck_assert_int_eq(idx_doc_list(db, NULL, 1, &list, &nl, &err), 0);
    ck_assert_int_eq(nl, 0);
    free(list);
    ck_assert_int_eq(idx_doc_list(db, NULL, 0, &list, &nl, &err), 0);
    ck_assert_int_eq(nl, 1);
    ck_assert_int_eq(list[0].status, IDX_DOC_SCANNING);
    ck_assert_int_ge(list[0].n_chunks, 3);
    int64_t committed = list[0].n_tokens, id = list[0].id;
    ck_assert_int_eq(committed, list[0].n_chunks * 128);
    struct idx_query q = {.mode = IDX_MODE_BM25, .budget = 100, .text = QUESTION, .docs = &id,
                          .n_docs = 1};
    struct idx_result r = {0};
    ck_assert_int_eq(idx_retrieve(db, &q, &r, &err), S3_ENOTFOUND);
    free(list);
    idx_close(db);

    /* resume: continues after the committed chunks and ends equal to an uninterrupted scan */
    struct eng_model *m = load_model();
    struct eng_sae *s = load_sae(m);
    struct srv_scan *sc = NULL;
    struct srv_scan_opts so = {.chunk = 128, .overlap = 16};
    ck_assert_int_eq(srv_scan_new(m, s, &so, &sc, &err), 0);
    int64_t d1, d2;
    struct srv_scan_stats st1, st2;
    char *fp1 = finish_and_fingerprint(sc, path, text, len, &d1, &st1);
    ck_assert_int_eq(d1, id);
    ck_assert_int_eq(st1.resumed_at, committed);
    ck_assert_int_eq(st1.n_scanned, st1.n_tokens - committed);
    char *fp2 = finish_and_fingerprint(sc, ref, text, len, &d2, &st2);
    ck_assert_int_eq(st2.resumed_at, 0);
    ck_assert_int_eq(st1.n_tokens, st2.n_tokens);
    ck_assert_str_eq(fp1, fp2);
    ck_assert(strstr(fp1, "velvet-thistle-25") != NULL);
    free(fp1);
    free(fp2);
    /* a finished text ingested again is a new document (nothing to resume) */
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
    free(text);
    idx_remove_files(path);
    idx_remove_files(ref);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------------------- */

START_TEST(test_bad_text)
{
    struct s3_errinfo err = {0};
    ck_assert_int_eq(srv_scan_check_text("", 0, &err), S3_EINVAL);
    ck_assert(strstr(err.msg, "empty"));
    ck_assert_int_eq(srv_scan_check_text("ab\0cd", 5, &err), S3_EINVAL);
    ck_assert(strstr(err.msg, "binary"));
    ck_assert(strstr(err.msg, "offset 2"));
    const char *bad[] = {"ok \xff", "ok \xc3", "ok \xc3(", "\xe2\x82", "\xc0\xaf",
                         "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe0\x80\xaf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(srv_scan_check_text(bad[i], strlen(bad[i]), &err), S3_EINVAL);
        ck_assert_msg(strstr(err.msg, "UTF-8"), "%zu: %s", i, err.msg);
    }
    const char *good = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    ck_assert_int_eq(srv_scan_check_text(good, strlen(good), &err), 0);
}
END_TEST

/* Run a CLI command with stdout/stderr captured into files; returns the exit status. */
static int run_cli(int (*fn)(int, char **), int argc, char **argv, char *out, size_t out_n,
                   char *errs, size_t err_n)
{
    char po[1200], pe[1200];
    path_in(po, sizeof po, "cli.out");
    path_in(pe, sizeof pe, "cli.err");
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);
    int rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    close(fo);
    close(fe);
    FILE *f = fopen(po, "r");
    size_t n = fread(out, 1, out_n - 1, f);
    out[n] = 0;
    fclose(f);
    f = fopen(pe, "r");
    n = fread(errs, 1, err_n - 1, f);
    errs[n] = 0;
    fclose(f);
    return rc;
}

static void write_file(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static char *file_sha(const char *path, char out[65])
{
    char *d = NULL;
    size_t n = 0;
    ck_assert_int_eq(s3_read_file(path, 1 << 28, &d, &n, NULL), 0);
    s3_sha256_hex(d, n, out);
    free(d);
    return out;
}

START_TEST(test_cli_and_bad_inputs)
{
    static char out[1 << 16], errs[1 << 14];
    char db[1200], good[1200], empty[1200], bin[1200], utf[1200], missing[1200];
    path_in(db, sizeof db, "cli.db");
    path_in(good, sizeof good, "good.txt");
    path_in(empty, sizeof empty, "empty.txt");
    path_in(bin, sizeof bin, "bin.txt");
    path_in(utf, sizeof utf, "utf.txt");
    path_in(missing, sizeof missing, "missing.txt");
    idx_remove_files(db);
    size_t len;
    char *text = make_doc(2500, 0.5, &len);
    write_file(good, text, len);
    write_file(empty, "", 0);
    write_file(bin, "abc\0\x01\x02", 6);
    write_file(utf, "valid start \xc3\x28 then bad", 24);
    setenv("S3_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf", 1);

    char *ing[] = {"ingest", "--db", db, "--sae", g_sae_path, "--chunk", "256", good, NULL};
    ck_assert_msg(run_cli(cli_ingest, 8, ing, out, sizeof out, errs, sizeof errs) == 0, "%s",
                  errs);
    ck_assert_str_eq(out, "doc_1\n");
    char sha[65], sha2[65];
    file_sha(db, sha);

    /* bad files: clear message, nothing written */
    const char *files[] = {missing, empty, bin, utf};
    const char *words[] = {"No such file", "empty", "binary", "UTF-8"};
    for (int i = 0; i < 4; i++) {
        char *a[] = {"ingest", "--db", db, "--sae", g_sae_path, (char *)files[i], NULL};
        ck_assert_int_eq(run_cli(cli_ingest, 6, a, out, sizeof out, errs, sizeof errs), 1);
        ck_assert_msg(strstr(errs, words[i]), "%s: %s", files[i], errs);
        ck_assert_str_eq(file_sha(db, sha2), sha);
    }

    /* retrieve: JSON with the needle; bm25 needs no model */
    char *rt[] = {"retrieve", "--db", db, "--sae", g_sae_path, "--doc", "doc_1", "--mode",
                  "hybrid", "--budget", "200", (char *)QUESTION, NULL};
    ck_assert_msg(run_cli(cli_retrieve, 12, rt, out, sizeof out, errs, sizeof errs) == 0, "%s",
                  errs);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    ck_assert_ptr_nonnull(j);
    json_t *spans = json_object_get(j, "spans");
    ck_assert(json_is_array(spans) && json_array_size(spans) > 0);
    ck_assert_int_le(json_integer_value(json_object_get(j, "tokens")), 200);
    int found = 0;
    for (size_t i = 0; i < json_array_size(spans); i++) {
        json_t *sp = json_array_get(spans, i);
        ck_assert_str_eq(json_string_value(json_object_get(sp, "doc")), "doc_1");
        const char *t = json_string_value(json_object_get(sp, "text"));
        json_int_t a = json_integer_value(json_object_get(sp, "start"));
        json_int_t b = json_integer_value(json_object_get(sp, "end"));
        ck_assert(a >= 0 && b <= (json_int_t)len && a < b);
        ck_assert_int_eq(strlen(t), (size_t)(b - a));
        ck_assert(memcmp(t, text + a, (size_t)(b - a)) == 0); /* offsets into the file */
        ck_assert_ptr_nonnull(json_string_value(json_object_get(sp, "source")));
        found |= strstr(t, "velvet-thistle-25") != NULL;
    }
    ck_assert(found);
    json_decref(j);

    /* bad retrieval requests */
    struct {
        const char *doc, *mode, *budget, *word;
    } bad[] = {
        {"doc_9", "hybrid", "100", "no document"},
        {"doc_1", "bm25", "0", "positive"},
        {"doc_1", "bm25", "-5", "positive"},
        {"doc_1", "hybrid", "100000", "window"},
        {"doc_1", "magic", "100", "unknown mode"},
        {"doc_x", "bm25", "100", "bad value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *a[] = {"retrieve", "--db", db, "--sae", g_sae_path, "--doc", (char *)bad[i].doc,
                     "--mode", (char *)bad[i].mode, "--budget", (char *)bad[i].budget,
                     (char *)QUESTION, NULL};
        int rc = run_cli(cli_retrieve, 12, a, out, sizeof out, errs, sizeof errs);
        ck_assert_int_ne(rc, 0);
        ck_assert_msg(strstr(errs, bad[i].word), "%zu: %s", i, errs);
        ck_assert_str_eq(out, "");
    }
    ck_assert_str_eq(file_sha(db, sha2), sha);

    /* locked: another connection holds the write lock -> busy, nothing changes */
    sqlite3 *other = NULL;
    ck_assert_int_eq(sqlite3_open(db, &other), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    char *ing2[] = {"ingest", "--db", db, "--sae", g_sae_path, good, NULL};
    ck_assert_int_eq(run_cli(cli_ingest, 6, ing2, out, sizeof out, errs, sizeof errs), 1);
    ck_assert_msg(strstr(errs, "lock"), "%s", errs);
    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    ck_assert_str_eq(file_sha(db, sha2), sha);

    /* corrupt: garbage where the database should be -> clear error, file untouched */
    char corrupt[1200];
    path_in(corrupt, sizeof corrupt, "corrupt.db");
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 3);
    write_file(corrupt, junk, sizeof junk);
    file_sha(corrupt, sha);
    char *ing3[] = {"ingest", "--db", corrupt, "--sae", g_sae_path, good, NULL};
    ck_assert_int_eq(run_cli(cli_ingest, 6, ing3, out, sizeof out, errs, sizeof errs), 1);
    ck_assert_msg(strstr(errs, "cannot open index"), "%s", errs);
    char *rt3[] = {"retrieve", "--db", corrupt, "--doc", "1", "--mode", "bm25",
                   (char *)QUESTION, NULL};
    ck_assert_int_eq(run_cli(cli_retrieve, 8, rt3, out, sizeof out, errs, sizeof errs), 1);
    ck_assert_msg(strstr(errs, "cannot open index"), "%s", errs);
    ck_assert_str_eq(file_sha(corrupt, sha2), sha);
    remove(corrupt);
    free(text);
    idx_remove_files(db);
}
END_TEST

/* ---- setup: a tiny SAE trained on the fixture text --------------------------------------- */

static int train_tiny_sae(void)
{
    char p[1200];
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    snprintf(p, sizeof p, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", g_root);
    struct eng_model_opts mo = {.n_threads = 2};
    int rc = eng_model_load(p, &mo, &m, &err);
    if (rc < 0)
        goto out;
    /* train on the first 60%, evaluate on the rest */
    size_t cut = g_filler_len * 6 / 10;
    struct eng_sae_model_opts o = {.n_layers = 2, .layers = {3, 15}, .n_tokens = 3072,
                                   .n_heldout_tokens = 256, .chunk = 256, .buffer = 3072,
                                   .train = {.n_dict = 128, .k = 8, .epochs = 4, .seed = 7},
                                   .fid_queries = 4};
    rc = eng_sae_train_model(m, g_filler, cut, g_filler + cut, g_filler_len - cut, &o, &s, NULL,
                             &err);
    if (rc == 0)
        rc = eng_sae_save(s, g_sae_path, &err);
out:
    if (rc < 0)
        fprintf(stderr, "test_scan: cannot train the tiny SAE: %s\n", err.msg);
    eng_sae_free(s);
    eng_model_free(m);
    return rc;
}

static Suite *scan_suite(void)
{
    Suite *s = suite_create("scan");
    TCase *tc = tcase_create("scan");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_bad_text);
    tcase_add_test(tc, test_scan_tiles_and_retrieves);
    tcase_add_test(tc, test_chunking_invariants);
    tcase_add_test(tc, test_kill_midway_and_resume);
    tcase_add_test(tc, test_cli_and_bad_inputs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *root = getenv("S3_ROOT");
    snprintf(g_root, sizeof g_root, "%s", root && *root ? root : ".");
    if (chdir(g_root) != 0)
        return EXIT_FAILURE;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/s3scan-XXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(g_dir))
        return EXIT_FAILURE;
    snprintf(g_sae_path, sizeof g_sae_path, "%s/tiny.s3sae", g_dir);
    char p[1200];
    snprintf(p, sizeof p, "%s/tests/fixtures/pydoc_sample.txt", g_root);
    if (s3_read_file(p, 1 << 24, &g_filler, &g_filler_len, NULL) < 0 || train_tiny_sae() < 0)
        return EXIT_FAILURE;
    s3_log_set_level(S3_LOG_WARN);
    SRunner *sr = srunner_create(scan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(g_filler);
    remove(g_sae_path);
    rmdir(g_dir);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
