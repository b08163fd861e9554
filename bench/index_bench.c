/* bench/index_bench.c - the index writer and S3 retrieval alone, no model: the scan's side of
 * ingestion as server/scan.c drives it on a GPU (idx_async: slots encoded on encoder
 * threads, written and committed on the writer's thread), fed as fast as the writer takes
 * chunks, then questions answered from the finished document.
 *
 *   s3index_bench [--tokens 1048576] [--slots 12] [--index-k 4] [--dict 2048]
 *                 [--db /tmp/s3index_bench.db] [--queries 20] [--pace TOK_PER_S]
 *
 * Features per token and slot: index-k distinct ids from a Zipf-like law over the dictionary
 * (a few common features, a long tail, as trained SAEs give), activations in (0, 4], drawn
 * before the clock starts for 16 chunks that the scan cycles through; one passage of
 * generated words per 128 tokens. --pace hands chunks over no faster than a producer of that
 * many tokens/s (a GPU's scan): drain_ms + finish_ms are then what the index adds after the
 * producer's last chunk. Prints one JSON line for the scan (tok/s, the
 * writer's phases, bytes per token) and one for retrieval (S3 mode, budget 2048, 32 query
 * features per slot: median and max ms). */
#include <getopt.h>
#include <math.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_passages.h"
#include "s3.h"
#include "idx.h"
#include "index_int.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* A feature id with P(f) ~ 1 / (f + 8): the inverse of its CDF on a uniform draw. */
static int32_t zipf_feature(int n_dict)
{
    const double u = (next_u32() + 0.5) / 4294967296.0;
    const double lo = log(8.0), hi = log(8.0 + n_dict);
    int32_t f = (int32_t)(exp(lo + u * (hi - lo)) - 8.0);
    return f < 0 ? 0 : f >= n_dict ? n_dict - 1 : f;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long long n_tok = 1048576;
    int n_slot = 12, ki = 4, n_dict = 2048, n_q = 20;
    double pace = 0;
    const int chunk = 2048, n_pool = 16;
    const char *db_path = "/tmp/s3index_bench.db";
    static const struct option lo[] = {{"tokens", 1, 0, 't'}, {"slots", 1, 0, 's'},
                                       {"index-k", 1, 0, 'k'}, {"dict", 1, 0, 'd'},
                                       {"db", 1, 0, 'b'},     {"queries", 1, 0, 'q'},
                                       {"pace", 1, 0, 'p'},   {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't': n_tok = strtoll(optarg, NULL, 10); break;
        case 's': n_slot = atoi(optarg); break;
        case 'k': ki = atoi(optarg); break;
        case 'd': n_dict = atoi(optarg); break;
        case 'b': db_path = optarg; break;
        case 'q': n_q = atoi(optarg); break;
        case 'p': pace = strtod(optarg, NULL); break;
        default:
            fprintf(stderr, "usage: s3index_bench [--tokens N] [--slots S] [--index-k K]"
                            " [--dict D] [--db PATH] [--queries Q] [--pace TOK_PER_S]\n");
            return 2;
        }
    }
    if (n_tok < chunk || n_slot < 1 || n_slot > 256 || ki < 1 || ki > 64 || n_dict < 4 * ki ||
        n_q < 1 || pace < 0) {
        fprintf(stderr, "s3index_bench: tokens >= %d, 1 <= slots <= 256, 1 <= index-k <= 64,"
                        " dict >= 4 * index-k, queries >= 1, pace >= 0\n", chunk);
        return 2;
    }
    struct s3_errinfo err = {0};
    struct idx_db *db = NULL;
    struct idx_writer *w = NULL;
    struct idx_async *aw = NULL;
    int rc = 1;
    /* the text: one word per token */
    char *text = malloc((size_t)n_tok * 8 + 1);
    int64_t *off = malloc(sizeof(int64_t) * (size_t)(n_tok + 1));
    const size_t per_chunk = (size_t)n_slot * chunk * ki;
    int32_t *feat = malloc(sizeof(int32_t) * per_chunk * n_pool);
    float *act = malloc(sizeof(float) * per_chunk * n_pool);
    struct idx_slot *slots = malloc(sizeof(*slots) * (size_t)n_slot);
    struct idx_passage *pas = malloc(sizeof(*pas) * (size_t)(chunk / 128 + 2));
    int64_t *sent_t = malloc(sizeof(int64_t) * (size_t)(n_tok / 128 + 2)),
            *sent_c = malloc(sizeof(int64_t) * (size_t)(n_tok / 128 + 2));
    struct idx_qfeat *qf = malloc(sizeof(*qf) * (size_t)n_slot * 32);
    double *qms = malloc(sizeof(double) * (size_t)n_q);
    if (!text || !off || !feat || !act || !slots || !pas || !sent_t || !sent_c || !qf || !qms) {
        fprintf(stderr, "s3index_bench: out of memory\n");
        goto out;
    }
    size_t tl = 0;
    for (long long i = 0; i < n_tok; i++) {
        off[i] = (int64_t)tl;
        tl += (size_t)snprintf(text + tl, 9, "w%u ", next_u32() % 20000);
    }
    off[n_tok] = (int64_t)tl;
    for (int s = 0; s < n_slot; s++)
        slots[s] = (struct idx_slot){s / 8, s % 8};
    for (size_t r = 0; r < per_chunk / ki * n_pool; r++)
        for (int j = 0; j < ki; j++) {
            int32_t f;
            int dup;
            do { /* distinct ids within a row, as a Top-k gives */
                f = zipf_feature(n_dict);
                dup = 0;
                for (int i = 0; i < j; i++)
                    dup |= feat[r * ki + i] == f;
            } while (dup);
            feat[r * ki + j] = f;
            act[r * ki + j] = (float)(next_u32() % 4000 + 1) * 1e-3f;
        }
    idx_remove_files(db_path);
    struct idx_doc_meta meta = {.name = "bench", .text_sha256 = "bench", .n_bytes = (int64_t)tl};
    if (idx_open(db_path, NULL, &db, &err) < 0)
        goto fail;
    /* knobs for measuring the writer's internals (not product settings) */
    struct idx_tuning *tun = idx__tuning(db);
    if (getenv("S3IDX_SEG_TOKENS"))
        tun->seg_tokens = strtoll(getenv("S3IDX_SEG_TOKENS"), NULL, 10);
    if (getenv("S3IDX_SCAN_CACHE_KIB"))
        tun->scan_cache_kib = atoi(getenv("S3IDX_SCAN_CACHE_KIB"));
    if (idx_writer_begin(db, &meta, &w, &err) < 0 ||
        idx_async_start(w, IDX_ASYNC_DEPTH, &aw, &err) < 0)
        goto fail;
    const double t0 = s3_now_ms();
    int64_t pass_tok = 0, n_chunk = 0;
    for (int64_t next = 0; next < n_tok; n_chunk++) {
        const int n = n_tok - next < chunk ? (int)(n_tok - next) : chunk;
        const int64_t nn = next + n;
        /* a paced producer has this chunk ready once its tokens are computed */
        const double due = pace > 0 ? t0 + 1000.0 * (double)nn / pace : 0;
        for (double now = s3_now_ms(); now < due; now = s3_now_ms()) {
            const double ms = due - now;
            nanosleep(&(struct timespec){(time_t)(ms / 1000), (long)(fmod(ms, 1000) * 1e6)},
                      NULL);
        }
        const size_t pool = (size_t)(n_chunk % n_pool) * per_chunk;
        const size_t np = bench_passages(&pass_tok, nn, n_tok, off, text, sent_t, sent_c, pas);
        struct idx_chunk ch = {.tok0 = next, .n_tok = n, .n_slot = n_slot, .slots = slots,
                               .k = ki, .feat = feat + pool, .act = act + pool,
                               .n_passages = np,
                               .passages = pas};
        if (idx_async_add(aw, &ch, &err) < 0)
            goto fail;
        next = nn;
    }
    const double t_fed = s3_now_ms();
    const int arc = idx_async_end(aw, &err);
    aw = NULL;
    if (arc < 0)
        goto fail;
    const double t_drained = s3_now_ms();
    if (idx_writer_finish(w, &err) < 0)
        goto fail;
    const int64_t doc = idx_writer_doc(w);
    struct idx_writer_times wt;
    idx_writer_times(w, &wt);
    idx_writer_free(w);
    w = NULL;
    const double t_end = s3_now_ms();
    int64_t db_bytes = 0;
    idx_db_bytes(db, &db_bytes, &err);
    printf("{\"bench\":\"index_writer\",\"tokens\":%lld,\"slots\":%d,\"index_k\":%d,\"dict\":%d,"
           "\"seg_tokens\":%lld,\"cache_kib\":%d,\"pace\":%.0f,"
           "\"seconds\":%.3f,\"tok_per_s\":%.0f,\"fed_ms\":%.0f,\"drain_ms\":%.0f,"
           "\"finish_ms\":%.0f,\"writer_ms\":{\"accept\":%.0f,\"passages\":%.0f,"
           "\"segments\":%.0f,\"commit\":%.0f,\"finish_merge\":%.0f,\"encode\":%.0f},"
           "\"index_bytes_per_token\":%.1f}\n",
           n_tok, n_slot, ki, n_dict, (long long)tun->seg_tokens, tun->scan_cache_kib, pace,
           (t_end - t0) / 1000, n_tok / ((t_end - t0) / 1000),
           t_fed - t0, t_drained - t_fed, t_end - t_drained, wt.accept, wt.passages,
           wt.segments, wt.commit, wt.finish, wt.encode, (double)db_bytes / (double)n_tok);
    fflush(stdout);
    /* questions: 32 features per slot drawn from the same law, weights in (0, 1] */
    for (int q = 0; q < n_q; q++) {
        size_t nf = 0;
        for (int s = 0; s < n_slot; s++)
            for (int j = 0; j < 32; j++)
                qf[nf++] = (struct idx_qfeat){slots[s].layer, slots[s].kv_head,
                                              zipf_feature(n_dict),
                                              (float)(next_u32() % 1000 + 1) * 1e-3f};
        struct idx_query iq = {.mode = IDX_MODE_S3, .budget = 2048, .feats = qf,
                               .n_feats = nf, .docs = &doc, .n_docs = 1};
        struct idx_result r = {0};
        const double tq = s3_now_ms();
        if (idx_retrieve(db, &iq, &r, &err) < 0)
            goto fail;
        qms[q] = s3_now_ms() - tq;
        idx_result_deinit(&r);
    }
    qsort(qms, (size_t)n_q, sizeof *qms, cmp_double);
    printf("{\"bench\":\"index_retrieve\",\"tokens\":%lld,\"queries\":%d,\"mode\":\"s3\","
           "\"budget\":2048,\"median_ms\":%.1f,\"max_ms\":%.1f}\n",
           n_tok, n_q, qms[n_q / 2], qms[n_q - 1]);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "s3index_bench: %s\n", err.msg[0] ? err.msg : "failed");
out:
    idx_async_end(aw, NULL);
    idx_writer_free(w);
    idx_close(db);
    free(text);
    free(off);
    free(feat);
    free(act);
    free(slots);
    free(pas);
    free(sent_t);
    free(sent_c);
    free(qf);
    free(qms);
    return rc;
}
