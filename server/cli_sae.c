/* server/cli_sae.c - SAE subcommands: train-sae (collect keys, train, measure, save) and
 * sae-info (print the header and stored figures of an SAE file). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "sae.h"
#include "scan.h"

#define CLI_SAE_MAX_CORPUS ((size_t)1 << 30)

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_layers(const char *s, int *layers, int *n)
{
    *n = 0;
    while (*s) {
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v >= ENG_SAE_MAX_LAYERS || *n >= ENG_SAE_MAX_LAYERS)
            return -1;
        layers[(*n)++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    for (int i = 1; i < *n; i++)
        if (layers[i] <= layers[i - 1])
            return -1;
    return *n > 0 ? 0 : -1;
}

static void print_figures(const struct eng_sae *s, const struct eng_sae_report *r)
{
    const struct eng_sae_info *in = eng_sae_get_info(s);
    printf("SAE figures on %zu held-out tokens (dictionary %d, k %d, %d kv heads per layer)\n",
           r->n_tokens, in->n_dict, in->k, in->n_head_kv);
    printf("%6s %9s %9s %8s %10s %9s %10s\n", "layer", "FVU_keys", "FVU_qry", "dead", "freq_mean",
           "freq_max", "fid@32");
    double fk = 0, fq = 0, dd = 0, fi = 0;
    for (int i = 0; i < r->n_idx; i++) {
        printf("%6d %9.4f %9.4f %7.2f%% %10.5f %9.4f %10.3f\n", in->layers[i], r->fvu_k[i],
               r->fvu_q[i], 100.0 * r->dead[i], r->freq_mean[i], r->freq_max[i],
               r->fidelity[i]);
        fk += r->fvu_k[i];
        fq += r->fvu_q[i];
        dd += r->dead[i];
        fi += r->fidelity[i];
    }
    if (r->n_idx > 0)
        printf("%6s %9.4f %9.4f %7.2f%% %10s %9s %10.3f\n", "mean", fk / r->n_idx,
               fq / r->n_idx, 100.0 * dd / r->n_idx, "", "", fi / r->n_idx);
    printf("fid@32: overlap of the top-32 context positions by pre-RoPE q.k and by SAE feature\n"
           "co-activation (sum over shared features of a_q * a_k); random choice: %.3f\n",
           r->fidelity_random);
    printf("encode (fast path, keys): %.0f vectors/s = %.0f tokens/s for all %d layers x %d kv "
           "heads\n",
           r->encode_vec_per_s, r->encode_tok_per_s, in->n_idx, in->n_head_kv);
    if (r->prefill_tok_per_s > 0 && r->encode_tok_per_s > 0)
        printf("prefill alone: %.0f tokens/s; encoding adds %.1f%% to the scan's prefill time\n",
               r->prefill_tok_per_s, 100.0 * r->prefill_tok_per_s / r->encode_tok_per_s);
    if (r->collect_ms > 0 || r->train_ms > 0)
        printf("time: forward %.1f s, training %.1f s, evaluation %.1f s\n", r->collect_ms / 1e3,
               r->train_ms / 1e3, r->eval_ms / 1e3);
}

static void train_usage(void)
{
    printf("usage: s3serve train-sae [--model M] [--out FILE] [--corpus DIR] [--dict N] [--k K]\n"
           "         [--layers a,b,c,d] [--tokens N] [--heldout-tokens N] [--seed S]\n"
           "         [--threads T] [--batch B] [--epochs E] [--lr LR] [--buffer N]\n"
           "         [--chunk N] [--if-missing]\n"
           "  Trains one Top-k SAE per (indexed layer, kv head) on the model's pre-RoPE keys\n"
           "  over DIR/train.txt (default models/sae-corpus, made by eval/sae_corpus.sh), prints\n"
           "  the figures measured on DIR/heldout.txt and writes FILE (default\n"
           "  models/sae-<model>.s3sae). --if-missing: keep FILE when it already loads for the\n"
           "  model. Defaults: dict 1024, k 16, layers by depth, 120000 tokens, 16384 held out.\n");
}

int cli_train_sae(int argc, char **argv)
{
    enum { O_HELD = 256, O_BATCH, O_EPOCHS, O_LR, O_BUFFER, O_CHUNK, O_IFMISSING, O_CORPUS };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"corpus", required_argument, NULL, O_CORPUS},
        {"dict", required_argument, NULL, 'd'},
        {"k", required_argument, NULL, 'k'},
        {"layers", required_argument, NULL, 'l'},
        {"tokens", required_argument, NULL, 'n'},
        {"heldout-tokens", required_argument, NULL, O_HELD},
        {"seed", required_argument, NULL, 's'},
        {"threads", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, O_BATCH},
        {"epochs", required_argument, NULL, O_EPOCHS},
        {"lr", required_argument, NULL, O_LR},
        {"buffer", required_argument, NULL, O_BUFFER},
        {"chunk", required_argument, NULL, O_CHUNK},
        {"if-missing", no_argument, NULL, O_IFMISSING},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *model = cli_default_model(), *out_path = NULL, *corpus = "models/sae-corpus";
    char out_buf[1024], path[1200];
    struct eng_sae_model_opts o;
    struct eng_sae_report rep;
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    char *train = NULL, *held = NULL;
    size_t train_len = 0, held_len = 0;
    int opt, status = 1, n_threads = 0, if_missing = 0, rc;
    long v = 0;

    memset(&o, 0, sizeof(o));
    o.train.seed = 1;
    o.verbose = 1;
    while ((opt = getopt_long(argc, argv, "m:o:d:k:l:n:s:t:h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'm': model = optarg; break;
        case 'o': out_path = optarg; break;
        case O_CORPUS: corpus = optarg; break;
        case 'd':
            bad = parse_long(optarg, 1, ENG_SAE_MAX_DICT, &v);
            o.train.n_dict = (int)v;
            break;
        case 'k':
            bad = parse_long(optarg, 1, ENG_SAE_MAX_K, &v);
            o.train.k = (int)v;
            break;
        case 'l': bad = parse_layers(optarg, o.layers, &o.n_layers); break;
        case 'n':
            bad = parse_long(optarg, 1, 1L << 30, &v);
            o.n_tokens = (size_t)v;
            break;
        case O_HELD:
            bad = parse_long(optarg, 1, 1L << 30, &v);
            o.n_heldout_tokens = (size_t)v;
            break;
        case 's':
            bad = parse_long(optarg, 0, LONG_MAX, &v);
            o.train.seed = (uint64_t)v;
            break;
        case 't':
            bad = parse_long(optarg, 1, 1024, &v);
            n_threads = (int)v;
            break;
        case O_BATCH:
            bad = parse_long(optarg, 1, 65536, &v);
            o.train.batch = (int)v;
            break;
        case O_EPOCHS:
            bad = parse_long(optarg, 1, 1000, &v);
            o.train.epochs = (int)v;
            break;
        case O_LR: {
            char *end = NULL;
            o.train.lr = strtof(optarg, &end);
            bad = !end || *end || !(o.train.lr > 0.0f && o.train.lr < 1.0f);
            break;
        }
        case O_BUFFER:
            bad = parse_long(optarg, 1, 1L << 24, &v);
            o.buffer = (size_t)v;
            break;
        case O_CHUNK:
            bad = parse_long(optarg, 16, 1L << 16, &v);
            o.chunk = (int)v;
            break;
        case O_IFMISSING: if_missing = 1; break;
        case 'h': train_usage(); return 0;
        default: return 2;
        }
        if (bad) {
            fprintf(stderr, "s3serve: bad option value '%s' (see --help)\n", optarg);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "s3serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!out_path) {
        srv_scan_default_sae(model, out_buf, sizeof(out_buf));
        out_path = out_buf;
    }
    struct eng_model_opts mo = {.n_threads = n_threads};
    rc = eng_model_load(model, &mo, &m, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot load model %s: %s\n", model,
                err.msg[0] ? err.msg : s3_strerror(rc));
        goto out;
    }
    if (if_missing) {
        struct eng_sae *old = NULL;
        if (eng_sae_load(out_path, eng_model_hparams(m), &old, &err) == 0) {
            printf("%s is up to date for this model (use it or delete it to retrain)\n",
                   out_path);
            eng_sae_free(old);
            status = 0;
            goto out;
        }
    }
    snprintf(path, sizeof(path), "%s/train.txt", corpus);
    rc = s3_read_file(path, CLI_SAE_MAX_CORPUS, &train, &train_len, &err);
    if (rc == 0) {
        snprintf(path, sizeof(path), "%s/heldout.txt", corpus);
        rc = s3_read_file(path, CLI_SAE_MAX_CORPUS, &held, &held_len, &err);
    }
    if (rc < 0) {
        fprintf(stderr, "s3serve: %s (run eval/sae_corpus.sh to build the corpus)\n", err.msg);
        goto out;
    }
    rc = eng_sae_train_model(m, train, train_len, held, held_len, &o, &s, &rep, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: train-sae failed: %s\n", err.msg[0] ? err.msg : s3_strerror(rc));
        goto out;
    }
    print_figures(s, &rep);
    rc = eng_sae_save(s, out_path, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: %s\n", err.msg);
        goto out;
    }
    printf("wrote %s\n", out_path);
    status = 0;
out:
    eng_sae_free(s);
    eng_model_free(m);
    free(train);
    free(held);
    return status;
}

int cli_sae_info(int argc, char **argv)
{
    static const struct option longopts[] = {{"model", required_argument, NULL, 'm'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *model = NULL;
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_sae *s = NULL;
    int opt, status = 1;
    while ((opt = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'm': model = optarg; break;
        case 'h':
            printf("usage: s3serve sae-info FILE [--model M]\n"
                   "  prints the header and stored figures of an SAE file; with --model, also\n"
                   "  checks that the file was made for that model\n");
            return 0;
        default: return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: s3serve sae-info FILE [--model M]\n");
        return 2;
    }
    const char *file = argv[optind];
    if (model) {
        int rc = eng_model_load(model, NULL, &m, &err);
        if (rc < 0) {
            fprintf(stderr, "s3serve: cannot load model %s: %s\n", model, err.msg);
            goto out;
        }
    }
    int rc = eng_sae_load(file, m ? eng_model_hparams(m) : NULL, &s, &err);
    if (rc < 0) {
        fprintf(stderr, "s3serve: %s\n", err.msg[0] ? err.msg : s3_strerror(rc));
        goto out;
    }
    const struct eng_sae_info *in = eng_sae_get_info(s);
    printf("file        %s (format version %d)\n", file, ENG_SAE_VERSION);
    printf("model       %s (%s, %d layers, %d/%d query/kv heads)\n", in->model_sha256, in->arch,
           in->n_layer, in->n_head, in->n_head_kv);
    printf("sae         d_head %d, dictionary %d, k %d, one per (layer, kv head)\n", in->d_head,
           in->n_dict, in->k);
    printf("layers     ");
    for (int i = 0; i < in->n_idx; i++)
        printf(" %d", in->layers[i]);
    printf("\ntrained     %llu tokens, seed %llu\n", (unsigned long long)in->n_tokens_trained,
           (unsigned long long)in->seed);
    if (m)
        printf("check       made for this model: yes\n");
    printf("%6s %4s %9s %9s %8s %10s %9s %8s\n", "layer", "kv", "FVU_keys", "FVU_qry", "dead",
           "freq_mean", "freq_max", "fid@32");
    for (int i = 0; i < in->n_idx; i++)
        for (int h = 0; h < in->n_head_kv; h++) {
            const float *st = eng_sae_stats_c(s, i, h);
            printf("%6d %4d %9.4f %9.4f %7.2f%% %10.5f %9.4f %8.3f\n", in->layers[i], h,
                   st[ENG_SAE_STAT_FVU_K], st[ENG_SAE_STAT_FVU_Q], 100.0 * st[ENG_SAE_STAT_DEAD],
                   st[ENG_SAE_STAT_FREQ_MEAN], st[ENG_SAE_STAT_FREQ_MAX],
                   st[ENG_SAE_STAT_FIDELITY]);
        }
    status = 0;
out:
    eng_sae_free(s);
    eng_model_free(m);
    return status;
}
