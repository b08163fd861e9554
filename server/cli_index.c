/* server/cli_index.c - document subcommands: ingest (scan files into an index database),
 * retrieve (evidence spans as JSON), ask (retrieve, then answer with the model) and
 * bench-scan (scan throughput, index overhead, memory, index size, retrieval latency).
 *
 *   s3serve ingest   --db D [--sae S] [--chunk B] [--overlap W] [--restart] FILE...
 *   s3serve retrieve --db D --doc ID [--doc ID]... [--mode M] [--budget N] "question"
 *   s3serve ask      --db D --doc ID [--mode M] [--budget N] [--max-tokens N] "question"
 *   s3serve bench-scan [--text FILE] [--sizes 10000,100000] [--baseline-max N] ...
 *
 * Document ids print as "doc_<n>"; --doc takes "doc_<n>" or "<n>". Exit status 0 on
 * success, 1 on a failure (message on stderr), 2 on bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "idx.h"
#include "sae.h"
#include "scan.h"

#define CLI_MAX_DOC_BYTES ((size_t)1 << 31)
#define CLI_MAX_DOCS      64

struct common_opts {
    const char *db, *model, *sae, *mode, *tenant;
    int threads, chunk, overlap, budget, max_tokens, restart, quiet, top_feats, replicate;
    int index_k, qmethod, rrf_k;
    int64_t docs[CLI_MAX_DOCS];
    int n_docs;
};

enum { O_DB = 256, O_MODEL, O_SAE, O_MODE, O_BUDGET, O_DOC, O_THREADS, O_CHUNK, O_OVERLAP,
       O_RESTART, O_QUIET, O_MAXTOK, O_TENANT, O_TOPF, O_TEXT, O_SIZES, O_BASEMAX, O_REPL,
       O_INDEXK, O_QMETHOD, O_RRFK, O_HELP };

static const struct option lopts[] = {
    {"db", required_argument, 0, O_DB},           {"model", required_argument, 0, O_MODEL},
    {"sae", required_argument, 0, O_SAE},         {"mode", required_argument, 0, O_MODE},
    {"budget", required_argument, 0, O_BUDGET},   {"doc", required_argument, 0, O_DOC},
    {"threads", required_argument, 0, O_THREADS}, {"chunk", required_argument, 0, O_CHUNK},
    {"overlap", required_argument, 0, O_OVERLAP}, {"restart", no_argument, 0, O_RESTART},
    {"quiet", no_argument, 0, O_QUIET},           {"max-tokens", required_argument, 0, O_MAXTOK},
    {"tenant", required_argument, 0, O_TENANT},   {"top-feats", required_argument, 0, O_TOPF},
    {"text", required_argument, 0, O_TEXT},       {"sizes", required_argument, 0, O_SIZES},
    {"baseline-max", required_argument, 0, O_BASEMAX},
    {"replicate", required_argument, 0, O_REPL},  {"index-k", required_argument, 0, O_INDEXK},
    {"query-method", required_argument, 0, O_QMETHOD}, {"rrf-k", required_argument, 0, O_RRFK},
    {"help", no_argument, 0, O_HELP},             {0, 0, 0, 0}};

static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_doc_id(const char *s, int64_t *out)
{
    if (!strncmp(s, "doc_", 4))
        s += 4;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v <= 0)
        return -1;
    *out = v;
    return 0;
}

/* Parse the options shared by the subcommands; *extra gets the remaining option letters
 * handled by the caller (text, sizes). Returns 0, 1 for --help, or -1 (message printed). */
static int parse_common(int argc, char **argv, struct common_opts *o, const char **text_path,
                        const char **sizes, int *base_max)
{
    int opt;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case O_DB: o->db = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_SAE: o->sae = optarg; break;
        case O_MODE: o->mode = optarg; break;
        case O_TENANT: o->tenant = optarg; break;
        case O_BUDGET:
            /* range checked later against the model window, with a clear message */
            bad = parse_int(optarg, -1000000000L, 1000000000L, &o->budget);
            if (!bad && o->budget <= 0) {
                fprintf(stderr, "s3serve: --budget must be a positive number of tokens (got %s)\n",
                        optarg);
                return -1;
            }
            break;
        case O_DOC:
            if (o->n_docs >= CLI_MAX_DOCS) {
                fprintf(stderr, "s3serve: at most %d --doc options\n", CLI_MAX_DOCS);
                return -1;
            }
            bad = parse_doc_id(optarg, &o->docs[o->n_docs++]);
            break;
        case O_THREADS: bad = parse_int(optarg, 0, 1024, &o->threads); break;
        case O_CHUNK: bad = parse_int(optarg, 16, 1 << 20, &o->chunk); break;
        case O_OVERLAP: bad = parse_int(optarg, 0, 1 << 20, &o->overlap); break;
        case O_MAXTOK: bad = parse_int(optarg, 1, 1 << 20, &o->max_tokens); break;
        case O_TOPF: bad = parse_int(optarg, 1, 65536, &o->top_feats); break;
        case O_REPL: bad = parse_int(optarg, 1, 1000, &o->replicate); break;
        case O_RRFK: bad = parse_int(optarg, 1, 100000, &o->rrf_k); break;
        case O_INDEXK: bad = parse_int(optarg, 1, 256, &o->index_k); break;
        case O_QMETHOD:
            if (!strcmp(optarg, "decoder"))
                o->qmethod = SRV_SCAN_Q_DECODER;
            else if (!strcmp(optarg, "encode"))
                o->qmethod = SRV_SCAN_Q_ENCODE;
            else
                bad = 1;
            break;
        case O_RESTART: o->restart = 1; break;
        case O_QUIET: o->quiet = 1; break;
        case O_TEXT:
            if (!text_path)
                goto unknown;
            *text_path = optarg;
            break;
        case O_SIZES:
            if (!sizes)
                goto unknown;
            *sizes = optarg;
            break;
        case O_BASEMAX:
            if (!base_max)
                goto unknown;
            bad = parse_int(optarg, 0, 1 << 30, base_max);
            break;
        case O_HELP: return 1;
        default:
        unknown:
            fprintf(stderr, "s3serve %s: unknown option (see --help)\n", argv[0]);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "s3serve %s: bad value '%s' for %s\n", argv[0], optarg,
                    argv[optind - 1]);
            return -1;
        }
    }
    return 0;
}

static void report(const char *what, int rc, const struct s3_errinfo *err)
{
    fprintf(stderr, "s3serve: %s: %s\n", what, err->msg[0] ? err->msg : s3_strerror(rc));
}

/* Model and SAE for the scanner. */
static int load_engine(const struct common_opts *o, struct eng_model **m, struct eng_sae **s)
{
    struct s3_errinfo err = {0};
    const char *model = o->model ? o->model : cli_default_model();
    struct eng_model_opts mo = {.n_threads = o->threads};
    int rc = eng_model_load(model, &mo, m, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot load model %s: %s\n", model,
                err.msg[0] ? err.msg : s3_strerror(rc));
        return rc;
    }
    char def[1024];
    const char *sae = o->sae ? o->sae : getenv("S3_SAE");
    if (!sae || !*sae)
        sae = srv_scan_default_sae(model, def, sizeof def);
    rc = eng_sae_load(sae, eng_model_hparams(*m), s, &err);
    if (rc < 0)
        fprintf(stderr,
                "s3serve: cannot load SAE %s: %s\n(train one with `s3serve train-sae`, or name"
                " one with --sae)\n",
                sae, err.msg[0] ? err.msg : s3_strerror(rc));
    return rc;
}

static int open_db(const char *path, int readonly, struct idx_db **db)
{
    struct s3_errinfo err = {0};
    if (!path) {
        fprintf(stderr, "s3serve: --db is required\n");
        return S3_EINVAL;
    }
    struct stat sb;
    if (readonly && stat(path, &sb) != 0) {
        fprintf(stderr, "s3serve: no index database at %s\n", path);
        return S3_ENOTFOUND;
    }
    /* "readonly" callers only read, but open read-write so that an older schema migrates */
    struct idx_open_opts oo = {.readonly = 0, .busy_ms = 2000};
    int rc = idx_open(path, &oo, db, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot open index %s: %s\n", path,
                err.msg[0] ? err.msg : s3_strerror(rc));
        if (rc == S3_EBUSY)
            fprintf(stderr, "(another process holds a lock on it; try again later)\n");
    }
    return rc;
}

/* ---- ingest ---------------------------------------------------------------------------------- */

static volatile sig_atomic_t g_interrupted;
static volatile int g_cancel;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
    g_cancel = 1;
}

struct progress {
    const char *name;
    int tty;
    double t0, last;
};

static int on_progress(void *ud, int64_t done, int64_t total, int64_t n_tokens)
{
    struct progress *p = ud;
    double now = s3_now_ms();
    if (now - p->last < (p->tty ? 200 : 5000) && done < total)
        return 0;
    p->last = now;
    double frac = total > 0 ? (double)done / (double)total : 1;
    double tps = (double)n_tokens * 1000.0 / (now - p->t0 + 1e-9);
    if (p->tty) {
        char bar[41];
        int k = (int)(frac * 40);
        for (int i = 0; i < 40; i++)
            bar[i] = i < k ? '#' : '.';
        bar[40] = 0;
        fprintf(stderr, "\r%s [%s] %5.1f%% %lld tokens %.0f tok/s ", p->name, bar, 100 * frac,
                (long long)n_tokens, tps);
    } else {
        fprintf(stderr, "progress file=%s bytes=%lld/%lld tokens=%lld tok_per_s=%.0f\n", p->name,
                (long long)done, (long long)total, (long long)n_tokens, tps);
    }
    return 0;
}

/* Map a file read-only. *len = 0 and *map = NULL for an empty file. */
static int map_file(const char *path, const char **map, size_t *len)
{
    *map = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "s3serve: cannot open %s: %s\n", path, strerror(errno));
        return errno == ENOENT ? S3_ENOTFOUND : S3_EIO;
    }
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "s3serve: %s is not a regular file\n", path);
        rc = S3_EINVAL;
    } else if ((size_t)sb.st_size > CLI_MAX_DOC_BYTES) {
        fprintf(stderr, "s3serve: %s is too big (%lld bytes, limit %zu)\n", path,
                (long long)sb.st_size, CLI_MAX_DOC_BYTES);
        rc = S3_ETOOBIG;
    } else if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "s3serve: cannot map %s: %s\n", path, strerror(errno));
            rc = S3_EIO;
        } else {
            *map = p;
            *len = (size_t)sb.st_size;
        }
    }
    close(fd);
    return rc;
}

int cli_ingest(int argc, char **argv)
{
    struct common_opts o = {.overlap = -1};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    struct srv_scan *sc = NULL;
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    int status = 1, rc;

    rc = parse_common(argc, argv, &o, NULL, NULL, NULL);
    if (rc != 0 || optind >= argc) {
        FILE *f = rc == 1 ? stdout : stderr;
        fprintf(f, "usage: s3serve ingest --db D [--model M] [--sae S] [--chunk B] [--overlap W]\n"
                   "         [--index-k K] [--tenant T] [--threads N] [--restart] [--quiet]\n"
                   "         FILE...\n"
                   "  Scans each UTF-8 text FILE into the index database D and prints its id.\n"
                   "  An interrupted scan of the same file resumes unless --restart is given.\n");
        return rc == 1 ? 0 : 2;
    }
    /* check every file before loading the model: bad input fails fast, the DB untouched */
    for (int i = optind; i < argc; i++) {
        const char *map;
        size_t len;
        if (map_file(argv[i], &map, &len) < 0)
            return 1;
        rc = srv_scan_check_text(map, len, &err);
        if (map)
            munmap((void *)map, len);
        if (rc < 0) {
            fprintf(stderr, "s3serve: cannot ingest %s: %s\n", argv[i], err.msg);
            return 1;
        }
    }
    if (open_db(o.db, 0, &db) < 0)
        goto out;
    if (load_engine(&o, &m, &s) < 0)
        goto out;
    struct srv_scan_opts so = {.chunk = o.chunk, .index_k = o.index_k,
                               .overlap = o.overlap < 0 ? 0 : o.overlap == 0 ? -1 : o.overlap};
    rc = srv_scan_new(m, s, &so, &sc, &err);
    if (rc < 0) {
        report("cannot make the scanner", rc, &err);
        goto out;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int tty = isatty(STDERR_FILENO) && !o.quiet;
    for (int i = optind; i < argc; i++) {
        const char *map;
        size_t len;
        if (map_file(argv[i], &map, &len) < 0)
            goto out;
        const char *base = strrchr(argv[i], '/');
        struct progress pg = {.name = base ? base + 1 : argv[i], .tty = tty, .t0 = s3_now_ms()};
        struct srv_scan_doc_opts dopt = {.tenant = o.tenant, .name = pg.name,
                                         .cancel = &g_cancel, .no_resume = o.restart,
                                         .progress = o.quiet ? NULL : on_progress,
                                         .progress_ud = &pg};
        struct srv_scan_stats st;
        int64_t doc = 0;
        rc = srv_scan_document(sc, db, map, len, &dopt, &doc, &st, &err);
        munmap((void *)map, len);
        if (tty)
            fprintf(stderr, "\n");
        if (rc < 0) {
            if (rc == S3_ECANCELED && doc)
                fprintf(stderr, "s3serve: interrupted; doc_%lld stays unfinished and resumes"
                                " when %s is ingested again\n",
                        (long long)doc, argv[i]);
            else
                report(argv[i], rc, &err);
            goto out;
        }
        if (!o.quiet)
            fprintf(stderr,
                    "ingested %s: doc_%lld tokens=%lld chunks=%lld%s tok_per_s=%.0f"
                    " (forward %.1f s, encode %.1f s, write %.1f s, tokenize %.1f s)\n",
                    argv[i], (long long)doc, (long long)st.n_tokens, (long long)st.n_chunks,
                    st.resumed_at ? " (resumed)" : "",
                    (double)st.n_scanned * 1000.0 / (st.total_ms + 1e-9), st.forward_ms / 1e3,
                    st.encode_ms / 1e3, st.write_ms / 1e3, st.tokenize_ms / 1e3);
        printf("doc_%lld\n", (long long)doc);
        fflush(stdout);
    }
    status = 0;
out:
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
    idx_close(db);
    return status;
}

/* ---- retrieve and ask ------------------------------------------------------------------------ */

/* Retrieve for o / question; loads the engine only when the mode needs it (m, s, sc are
 * returned for ask, which needs the model anyway). */
static int do_retrieve(const struct common_opts *o, const char *question, int need_model,
                       struct eng_model **m, struct eng_sae **s, struct srv_scan **sc,
                       struct idx_db **db, struct idx_result *res, double *encode_ms)
{
    struct s3_errinfo err = {0};
    struct idx_qfeat *qf = NULL;
    size_t nqf = 0;
    int rc;
    int mode = idx_mode_parse(o->mode ? o->mode : "hybrid");
    if (mode < 0) {
        fprintf(stderr, "s3serve: unknown mode '%s' (hybrid, s3, bm25 or full)\n", o->mode);
        return S3_EINVAL;
    }
    if (o->n_docs == 0) {
        fprintf(stderr, "s3serve: give at least one --doc ID\n");
        return S3_EINVAL;
    }
    if (!question || !*question) {
        fprintf(stderr, "s3serve: the question is empty\n");
        return S3_EINVAL;
    }
    rc = open_db(o->db, 1, db);
    if (rc < 0)
        return rc;
    /* validate documents before loading anything heavy */
    for (int i = 0; i < o->n_docs; i++) {
        struct idx_doc_info info;
        rc = idx_doc_get(*db, o->docs[i], &info, &err);
        if (rc == 0 && info.status != IDX_DOC_READY)
            rc = S3_ENOTFOUND;
        if (rc < 0) {
            fprintf(stderr, "s3serve: no document doc_%lld in %s%s\n", (long long)o->docs[i],
                    o->db,
                    rc == S3_ENOTFOUND && err.msg[0] == 0 ? " (its scan did not finish)" : "");
            return rc;
        }
    }
    int window = 8192;
    if (need_model || mode == IDX_MODE_S3 || mode == IDX_MODE_HYBRID) {
        rc = load_engine(o, m, s);
        if (rc < 0)
            return rc;
        window = eng_model_hparams(*m)->n_ctx_train;
        struct srv_scan_opts so = {.qmethod = o->qmethod};
        int want = o->budget + SRV_SCAN_MAX_QTOKENS + (o->max_tokens ? o->max_tokens : 256) + 64;
        so.n_ctx = need_model ? (want < window ? want : window) : 0;
        rc = srv_scan_new(*m, *s, &so, sc, &err);
        if (rc < 0) {
            report("cannot make the scanner", rc, &err);
            return rc;
        }
    }
    if (o->budget > window) {
        fprintf(stderr, "s3serve: --budget %d is over the model window of %d tokens\n",
                o->budget, window);
        return S3_EINVAL;
    }
    double t0 = s3_now_ms();
    if (*sc && (mode == IDX_MODE_S3 || mode == IDX_MODE_HYBRID)) {
        rc = srv_scan_query(*sc, question, strlen(question), o->top_feats, &qf, &nqf, &err);
        if (rc < 0) {
            report("cannot encode the question", rc, &err);
            return rc;
        }
    }
    *encode_ms = s3_now_ms() - t0;
    struct idx_query q = {.mode = mode, .budget = o->budget, .text = question, .feats = qf,
                          .n_feats = nqf, .docs = o->docs, .n_docs = (size_t)o->n_docs,
                          .tenant = o->tenant, .rrf_k = o->rrf_k};
    rc = idx_retrieve(*db, &q, res, &err);
    /* S3_RETRIEVE_REPEAT=n: time n more runs (profiling); the fastest is reported */
    const char *rep = getenv("S3_RETRIEVE_REPEAT");
    for (long i = 0, nrep = rep ? strtol(rep, NULL, 10) : 0; rc == 0 && i < nrep && i < 1000; i++) {
        struct idx_result r2 = {0};
        rc = idx_retrieve(*db, &q, &r2, &err);
        if (rc == 0 && r2.ms < res->ms)
            res->ms = r2.ms;
        idx_result_deinit(&r2);
    }
    free(qf);
    if (rc < 0)
        report("retrieval failed", rc, &err);
    return rc;
}

int cli_retrieve(int argc, char **argv)
{
    struct common_opts o = {.budget = 1024};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    struct srv_scan *sc = NULL;
    struct idx_db *db = NULL;
    struct idx_result res = {0};
    double enc_ms = 0;
    int status = 1;
    int rc = parse_common(argc, argv, &o, NULL, NULL, NULL);
    if (rc != 0 || optind != argc - 1) {
        FILE *f = rc == 1 ? stdout : stderr;
        fprintf(f, "usage: s3serve retrieve --db D --doc ID [--doc ID]... [--mode M] [--budget N]\n"
                   "         [--model M] [--sae S] [--top-feats N]\n"
                   "         [--query-method decoder|encode]\n"
                   "         \"question\"\n"
                   "  Prints the evidence spans as JSON: {\"spans\":[{\"doc\",\"start\",\"end\","
                   "\"text\",\"score\",\"source\"}],\"tokens\":n}.\n"
                   "  Modes: hybrid (default), s3, bm25, full. Budget: tokens (default 1024).\n");
        return rc == 1 ? 0 : 2;
    }
    if (do_retrieve(&o, argv[optind], 0, &m, &s, &sc, &db, &res, &enc_ms) < 0)
        goto out;
    json_t *spans = json_array();
    for (size_t i = 0; i < res.n_spans; i++) {
        const struct idx_span *sp = &res.spans[i];
        char docid[32], src[64];
        snprintf(docid, sizeof docid, "doc_%lld", (long long)sp->doc);
        json_t *js = json_pack("{s:s, s:I, s:I, s:s?, s:f, s:s, s:I, s:I}", "doc", docid,
                               "start", (json_int_t)sp->start_char, "end",
                               (json_int_t)sp->end_char, "text", sp->text, "score", sp->score,
                               "source", idx_source_str(sp->sources, src, sizeof src),
                               "start_token", (json_int_t)sp->start_tok, "end_token",
                               (json_int_t)sp->end_tok);
        if (!js) /* text that is not UTF-8 cannot happen with checked input */
            js = json_pack("{s:s, s:I, s:I, s:s}", "doc", docid, "start",
                           (json_int_t)sp->start_char, "end", (json_int_t)sp->end_char, "error",
                           "span text is not valid UTF-8");
        json_array_append_new(spans, js);
    }
    json_t *root = json_pack("{s:o, s:I, s:s, s:f, s:f}", "spans", spans, "tokens",
                             (json_int_t)res.n_tokens, "mode", o.mode ? o.mode : "hybrid",
                             "retrieval_ms", res.ms, "encode_ms", enc_ms);
    char *txt = root ? json_dumps(root, JSON_COMPACT) : NULL;
    if (txt) {
        printf("%s\n", txt);
        status = 0;
    }
    free(txt);
    json_decref(root);
out:
    idx_result_deinit(&res);
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
    idx_close(db);
    return status;
}

static int emit_stdout(void *ud, const char *text, size_t len)
{
    (void)ud;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int cli_ask(int argc, char **argv)
{
    struct common_opts o = {.budget = 1024, .max_tokens = 256};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    struct srv_scan *sc = NULL;
    struct idx_db *db = NULL;
    struct idx_result res = {0};
    struct s3_errinfo err = {0};
    char *ev = NULL, *user = NULL, *prompt = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    double enc_ms = 0;
    int status = 1;
    int rc = parse_common(argc, argv, &o, NULL, NULL, NULL);
    if (rc != 0 || optind != argc - 1) {
        FILE *f = rc == 1 ? stdout : stderr;
        fprintf(f, "usage: s3serve ask --db D --doc ID [--doc ID]... [--mode M] [--budget N]\n"
                   "         [--max-tokens N] [--model M] [--sae S] \"question\"\n"
                   "  Retrieves evidence (as retrieve) and answers from it with the model.\n");
        return rc == 1 ? 0 : 2;
    }
    const char *question = argv[optind];
    if (do_retrieve(&o, question, 1, &m, &s, &sc, &db, &res, &enc_ms) < 0)
        goto out;
    size_t evn = 0;
    for (size_t i = 0; i < res.n_spans; i++)
        evn += strlen(res.spans[i].text) + 8;
    ev = malloc(evn + 1);
    if (!ev)
        goto out;
    size_t at = 0;
    for (size_t i = 0; i < res.n_spans; i++)
        at += (size_t)snprintf(ev + at, evn + 1 - at, "%s%s", i ? "\n...\n" : "",
                               res.spans[i].text);
    size_t un = at + strlen(question) + 256;
    user = malloc(un);
    if (!user)
        goto out;
    snprintf(user, un,
             "Answer the question using only the evidence below. Answer briefly.\n\n"
             "Evidence:\n%s\n\nQuestion: %s",
             ev, question);
    struct eng_chat_msg msgs[1] = {{"user", user}};
    const struct eng_tokenizer *tk = eng_model_tok(m);
    rc = eng_chat_apply(tk, msgs, 1, 1, &prompt, &err);
    if (rc < 0) {
        report("cannot build the prompt", rc, &err);
        goto out;
    }
    rc = eng_tok_encode(tk, prompt, strlen(prompt), ENG_TOK_SPECIAL, &ids, &n_ids);
    if (rc < 0) {
        report("cannot tokenize the prompt", rc, &err);
        goto out;
    }
    struct eng_ctx *c = srv_scan_ctx(sc);
    if ((int)n_ids + o.max_tokens > eng_ctx_n_ctx(c)) {
        fprintf(stderr, "s3serve: the prompt (%zu tokens) and answer (%d) do not fit the context"
                        " of %d tokens; lower --budget or --max-tokens\n",
                n_ids, o.max_tokens, eng_ctx_n_ctx(c));
        goto out;
    }
    struct eng_gen_params gp = {.max_tokens = o.max_tokens};
    struct eng_gen_result gr;
    rc = eng_generate(c, ids, n_ids, &gp, emit_stdout, NULL, &gr, &err);
    printf("\n");
    if (rc < 0) {
        report("generation failed", rc, &err);
        goto out;
    }
    fprintf(stderr, "evidence: %zu spans, %lld tokens, retrieval %.1f ms (+ question encoding %.1f"
                    " ms); prompt %d tokens, answer %d tokens\n",
            res.n_spans, (long long)res.n_tokens, res.ms, enc_ms, gr.n_prompt, gr.n_completion);
    status = 0;
out:
    free(ev);
    free(user);
    free(prompt);
    free(ids);
    idx_result_deinit(&res);
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
    idx_close(db);
    return status;
}

/* ---- bench-scan ------------------------------------------------------------------------------ */

static const char *const bench_questions[] = {
    "What does the function return when the file does not exist?",
    "How do I create a new thread?",
    "Which exception is raised for an invalid argument?",
    "What is the default encoding used?",
    "How can a dictionary be sorted by value?",
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* Text of about n_tokens tokens: whole copies of src, then a prefix of it. *out new. */
static int bench_text(const struct eng_tokenizer *tk, const char *src, size_t src_len,
                      long n_tokens, char **out, size_t *out_len)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = eng_tok_encode(tk, src, src_len, 0, &ids, &n);
    free(ids);
    if (rc < 0 || n == 0)
        return rc < 0 ? rc : S3_EINVAL;
    double bpt = (double)src_len / (double)n;
    size_t want = (size_t)((double)n_tokens * bpt);
    char *t = malloc(want + 1);
    if (!t)
        return S3_ENOMEM;
    size_t at = 0;
    while (at < want) {
        size_t k = want - at < src_len ? want - at : src_len;
        while (k < src_len && k > 0 && (src[k] & 0xc0) == 0x80)
            k--; /* whole characters */
        if (k == 0)
            break;
        memcpy(t + at, src, k);
        at += k;
        if (k < src_len)
            break;
    }
    t[at] = 0;
    *out = t;
    *out_len = at;
    return 0;
}

/* Chunks of a scan kept in memory, to be written again as a longer document (a replicated
 * index: the retrieval latency of an R-times longer document without R times the scan). */
struct rec_chunk {
    struct idx_chunk c;
    struct idx_passage *p;
    int64_t *sent;               /* tokens then chars of every passage's sentence starts */
};
struct recorder {
    struct rec_chunk *ch;
    size_t n, cap;
};

static int rec_on_chunk(void *ud, const struct idx_chunk *c)
{
    struct recorder *r = ud;
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 64;
        struct rec_chunk *a = realloc(r->ch, nc * sizeof *a);
        if (!a)
            return S3_ENOMEM;
        r->ch = a;
        r->cap = nc;
    }
    struct rec_chunk *x = &r->ch[r->n];
    memset(x, 0, sizeof *x);
    x->c = *c;
    size_t nf = (size_t)c->n_slot * (size_t)c->n_tok * (size_t)c->k, ns = 0;
    for (size_t i = 0; i < c->n_passages; i++)
        ns += c->passages[i].n_sent;
    int32_t *f = malloc(nf * sizeof *f + 1);
    float *a = malloc(nf * sizeof *a + 1);
    x->p = malloc(c->n_passages * sizeof *x->p + 1);
    x->sent = malloc(2 * ns * sizeof *x->sent + 1);
    if (!f || !a || !x->p || !x->sent) {
        free(f);
        free(a);
        free(x->p);
        free(x->sent);
        return S3_ENOMEM;
    }
    memcpy(f, c->feat, nf * sizeof *f);
    memcpy(a, c->act, nf * sizeof *a);
    x->c.feat = f;
    x->c.act = a;
    size_t at = 0;
    for (size_t i = 0; i < c->n_passages; i++) {
        x->p[i] = c->passages[i];
        memcpy(x->sent + at, c->passages[i].sent_tok, c->passages[i].n_sent * sizeof(int64_t));
        memcpy(x->sent + ns + at, c->passages[i].sent_char,
               c->passages[i].n_sent * sizeof(int64_t));
        at += c->passages[i].n_sent;
    }
    x->c.passages = x->p;
    r->n++;
    return 0;
}

static void rec_free(struct recorder *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free((void *)r->ch[i].c.feat);
        free((void *)r->ch[i].c.act);
        free(r->ch[i].p);
        free(r->ch[i].sent);
    }
    free(r->ch);
}

/* Write the recorded chunks `times` times in a row as one new document. */
static int rec_replay(struct recorder *r, struct idx_db *db, int times, int64_t n_tok,
                      int64_t n_bytes, int64_t *doc, struct s3_errinfo *err)
{
    struct idx_writer *w = NULL;
    struct idx_doc_meta meta = {.name = "replicated"};
    int rc = idx_writer_begin(db, &meta, &w, err);
    if (rc < 0)
        return rc;
    *doc = idx_writer_doc(w);
    for (int t = 0; t < times && rc == 0; t++) {
        int64_t dt = (int64_t)t * n_tok, dc = (int64_t)t * n_bytes;
        for (size_t i = 0; i < r->n && rc == 0; i++) {
            struct rec_chunk *x = &r->ch[i];
            size_t ns = 0;
            for (size_t j = 0; j < x->c.n_passages; j++)
                ns += x->p[j].n_sent;
            int64_t *sent = malloc(2 * ns * sizeof *sent + 1);
            struct idx_passage *p = malloc(x->c.n_passages * sizeof *p + 1);
            if (!sent || !p) {
                free(sent);
                free(p);
                rc = S3_ENOMEM;
                break;
            }
            size_t at = 0;
            for (size_t j = 0; j < x->c.n_passages; j++) {
                p[j] = x->p[j];
                p[j].start_tok += dt;
                p[j].end_tok += dt;
                p[j].start_char += dc;
                p[j].end_char += dc;
                for (size_t k = 0; k < p[j].n_sent; k++) {
                    sent[at + k] = x->sent[at + k] + dt;
                    sent[ns + at + k] = x->sent[ns + at + k] + dc;
                }
                p[j].sent_tok = sent + at;
                p[j].sent_char = sent + ns + at;
                at += p[j].n_sent;
            }
            struct idx_chunk c = x->c;
            c.tok0 += dt;
            c.passages = p;
            rc = idx_writer_add(w, &c, err);
            free(sent);
            free(p);
        }
    }
    if (rc == 0)
        rc = idx_writer_finish(w, err);
    idx_writer_free(w);
    return rc;
}

/* One size, in a child process (so that peak RSS is of this size alone). Prints one line. */
static int bench_one(const struct common_opts *o, const char *src, size_t src_len, long size,
                     int base_max, int replicate, const char *dir)
{
    struct recorder rec = {0};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    struct srv_scan *sc = NULL;
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    char *text = NULL, path[1100];
    size_t len = 0;
    int rc = load_engine(o, &m, &s);
    if (rc < 0)
        goto out;
    long rss_model = peak_rss_kb();
    struct srv_scan_opts so = {.chunk = o->chunk, .index_k = o->index_k, .qmethod = o->qmethod,
                               .overlap = o->overlap < 0 ? 0 : o->overlap == 0 ? -1 : o->overlap};
    rc = srv_scan_new(m, s, &so, &sc, &err);
    if (rc < 0) {
        report("scanner", rc, &err);
        goto out;
    }
    rc = bench_text(eng_model_tok(m), src, src_len, size, &text, &len);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot make the bench text: %s\n", s3_strerror(rc));
        goto out;
    }
    struct srv_scan_stats base = {0}, st = {0};
    if (size <= base_max) {
        struct srv_scan_doc_opts bo = {.no_index = 1};
        rc = srv_scan_document(sc, NULL, text, len, &bo, NULL, &base, &err);
        if (rc < 0) {
            report("plain prefill", rc, &err);
            goto out;
        }
    }
    if (o->db)
        snprintf(path, sizeof path, "%s", o->db);
    else
        snprintf(path, sizeof path, "%s/bench-%ld.db", dir, size);
    rc = open_db(path, 0, &db);
    if (rc < 0)
        goto out;
    struct srv_scan_doc_opts dopt = {.name = "bench", .no_resume = 1,
                                     .on_chunk = replicate > 1 ? rec_on_chunk : NULL,
                                     .chunk_ud = &rec};
    int64_t doc = 0;
    rc = srv_scan_document(sc, db, text, len, &dopt, &doc, &st, &err);
    if (rc < 0) {
        report("scan", rc, &err);
        goto out;
    }
    long rss_scan = peak_rss_kb();
    int64_t bytes = 0;
    idx_db_bytes(db, &bytes, &err);
    int64_t rdoc = 0;
    if (replicate > 1) {
        rc = rec_replay(&rec, db, replicate, st.n_tokens, (int64_t)len, &rdoc, &err);
        rec_free(&rec);
        memset(&rec, 0, sizeof rec);
        if (rc < 0) {
            report("replicated index", rc, &err);
            goto out;
        }
    }
    /* retrieval latency: question encoding, then idx_retrieve per mode */
    enum { NQ = sizeof bench_questions / sizeof bench_questions[0] };
    double enc[NQ], lat[3][NQ], rlat[3][NQ];
    const int modes[3] = {IDX_MODE_HYBRID, IDX_MODE_S3, IDX_MODE_BM25};
    for (int i = 0; i < (int)NQ; i++) {
        struct idx_qfeat *qf = NULL;
        size_t nqf = 0;
        double t0 = s3_now_ms();
        rc = srv_scan_query(sc, bench_questions[i], strlen(bench_questions[i]), o->top_feats, &qf,
                            &nqf, &err);
        enc[i] = s3_now_ms() - t0;
        if (rc < 0) {
            report("query", rc, &err);
            goto out;
        }
        for (int j = 0; j < 3; j++) {
            struct idx_query q = {.mode = modes[j], .budget = 1024, .text = bench_questions[i],
                                  .feats = qf, .n_feats = nqf, .docs = &doc, .n_docs = 1};
            struct idx_result r = {0};
            t0 = s3_now_ms();
            rc = idx_retrieve(db, &q, &r, &err);
            lat[j][i] = s3_now_ms() - t0;
            idx_result_deinit(&r);
            rlat[j][i] = 0;
            if (rc == 0 && rdoc) {
                q.docs = &rdoc;
                t0 = s3_now_ms();
                rc = idx_retrieve(db, &q, &r, &err);
                rlat[j][i] = s3_now_ms() - t0;
                idx_result_deinit(&r);
            }
            if (rc < 0) {
                free(qf);
                report("retrieve", rc, &err);
                goto out;
            }
        }
        free(qf);
    }
    qsort(enc, NQ, sizeof(double), cmp_double);
    for (int j = 0; j < 3; j++) {
        qsort(lat[j], NQ, sizeof(double), cmp_double);
        qsort(rlat[j], NQ, sizeof(double), cmp_double);
    }
    double scan_tps = (double)st.n_scanned * 1000.0 / st.total_ms;
    double base_tps = base.n_scanned ? (double)base.n_scanned * 1000.0 / base.total_ms : 0;
    printf("{\"tokens\":%lld,\"chunks\":%lld,\"scan_tok_per_s\":%.1f,\"prefill_tok_per_s\":%.1f,"
           "\"index_overhead_pct\":%.1f,\"forward_s\":%.2f,\"encode_s\":%.2f,\"write_s\":%.2f,"
           "\"tokenize_s\":%.2f,\"peak_rss_mb\":%.1f,\"rss_after_load_mb\":%.1f,"
           "\"index_bytes\":%lld,\"index_bytes_per_token\":%.1f,"
           "\"query_encode_ms_median\":%.1f,\"retrieve_ms_median\":{\"hybrid\":%.1f,\"s3\":%.1f,"
           "\"bm25\":%.1f},\"retrieve_ms_max\":{\"hybrid\":%.1f,\"s3\":%.1f,\"bm25\":%.1f}}\n",
           (long long)st.n_tokens, (long long)st.n_chunks, scan_tps, base_tps,
           base_tps > 0 ? 100.0 * (base_tps / scan_tps - 1.0) : -1.0, st.forward_ms / 1e3,
           st.encode_ms / 1e3, st.write_ms / 1e3, st.tokenize_ms / 1e3, rss_scan / 1024.0,
           rss_model / 1024.0, (long long)bytes, (double)bytes / (double)st.n_tokens,
           enc[NQ / 2], lat[0][NQ / 2], lat[1][NQ / 2], lat[2][NQ / 2], lat[0][NQ - 1],
           lat[1][NQ - 1], lat[2][NQ - 1]);
    if (rdoc)
        printf("{\"replicated_tokens\":%lld,\"copies\":%d,\"retrieve_ms_median\":{\"hybrid\":%.1f,"
               "\"s3\":%.1f,\"bm25\":%.1f},\"retrieve_ms_max\":{\"hybrid\":%.1f,\"s3\":%.1f,"
               "\"bm25\":%.1f}}\n",
               (long long)st.n_tokens * replicate, replicate, rlat[0][NQ / 2], rlat[1][NQ / 2],
               rlat[2][NQ / 2], rlat[0][NQ - 1], rlat[1][NQ - 1], rlat[2][NQ - 1]);
    fflush(stdout);
out:
    rec_free(&rec);
    free(text);
    srv_scan_free(sc);
    eng_sae_free(s);
    eng_model_free(m);
    idx_close(db);
    if (db && !o->db)
        idx_remove_files(path);
    return rc < 0 ? 1 : 0;
}

int cli_bench_scan(int argc, char **argv)
{
    struct common_opts o = {.overlap = -1};
    const char *text_path = "models/sae-corpus/heldout.txt", *sizes = "10000,100000";
    int base_max = 100000, replicate = 1;
    int rc = parse_common(argc, argv, &o, &text_path, &sizes, &base_max);
    replicate = o.replicate > 0 ? o.replicate : 1;
    if (rc != 0 || optind != argc) {
        FILE *f = rc == 1 ? stdout : stderr;
        fprintf(f, "usage: s3serve bench-scan [--text FILE] [--sizes 10000,100000,1000000]\n"
                   "         [--baseline-max N] [--model M] [--sae S] [--threads T] [--chunk B]\n"
                   "         [--overlap W] [--index-k K] [--replicate R] [--db KEEP.db]\n"
                   "  Per size (tokens of FILE repeated, default the held-out SAE corpus), in a\n"
                   "  fresh process: plain chunked prefill of the text (sizes <= N, default\n"
                   "  100000), then a scan into a temporary index; prints one JSON line: scan and\n"
                   "  prefill tokens/s, index overhead %%, peak RSS, index bytes per token,\n"
                   "  median question-encoding and retrieval latency (budget 1024).\n"
                   "  --replicate R:\n"
                   "  also write the scanned chunks R times over as one R-times longer document\n"
                   "  and time retrieval over it (the latency of a long document without its\n"
                   "  scan).\n");
        return rc == 1 ? 0 : 2;
    }
    char *src = NULL;
    size_t src_len = 0;
    struct s3_errinfo err = {0};
    rc = s3_read_file(text_path, CLI_MAX_DOC_BYTES, &src, &src_len, &err);
    if (rc < 0) {
        report(text_path, rc, &err);
        return 1;
    }
    if (srv_scan_check_text(src, src_len, &err) < 0) {
        report(text_path, S3_EINVAL, &err);
        free(src);
        return 1;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/s3bench-XXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "s3serve: cannot make a temporary folder: %s\n", strerror(errno));
        free(src);
        return 1;
    }
    int status = 0;
    for (const char *p = sizes; *p;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n < 100 || n > 100000000L || (*end && *end != ',')) {
            fprintf(stderr, "s3serve: bad --sizes '%s'\n", sizes);
            status = 2;
            break;
        }
        p = *end ? end + 1 : end;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            status = 1;
            break;
        }
        if (pid == 0)
            _exit(bench_one(&o, src, src_len, n, base_max, replicate, dir));
        int ws = 0;
        waitpid(pid, &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
            status = 1;
    }
    rmdir(dir);
    free(src);
    return status;
}
