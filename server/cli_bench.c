/* server/cli_bench.c - `s3serve bench-engine`: prefill and decode throughput of the engine.
 *
 *   s3serve bench-engine [--model M] [--threads N] [--prompt-tokens 512,2048]
 *                        [--gen-tokens 128] [--reps R] [--json]
 *
 * Prefill: a fresh context per repetition, P pseudo-random token ids in one prefill call
 * (best and mean over R reps). Decode: G single-token steps from an empty context (as
 * llama-bench's tg test). Peak RSS from getrusage. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "engine.h"

#include <unistd.h>

static int krn_threads_default(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#define BENCH_MAX_SIZES 16
#define BENCH_SAMPLERS  2

static int parse_sizes(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0 || v > (1 << 20))
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: s3serve bench-engine [--model M] [--threads N] [--prompt-tokens 512,2048]\n"
               "                            [--gen-tokens 128] [--reps R] [--json]\n");
}

int cli_bench_engine(int argc, char **argv)
{
    const char *model = cli_default_model();
    int n_threads = 0, n_gen = 128, reps = 3, json = 0;
    int sizes[BENCH_MAX_SIZES] = {512, 2048}, n_sizes = 2;
    static const struct option lopts[] = {
        {"model", required_argument, 0, 'm'},   {"threads", required_argument, 0, 't'},
        {"prompt-tokens", required_argument, 0, 'p'}, {"gen-tokens", required_argument, 0, 'g'},
        {"reps", required_argument, 0, 'r'},    {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "m:t:p:g:r:jh", lopts, NULL)) != -1) {
        switch (opt) {
        case 'm': model = optarg; break;
        case 't': n_threads = (int)strtol(optarg, NULL, 10); break;
        case 'p':
            n_sizes = parse_sizes(optarg, sizes, BENCH_MAX_SIZES);
            if (n_sizes < 0) {
                fprintf(stderr, "bench-engine: bad --prompt-tokens '%s'\n", optarg);
                return 2;
            }
            break;
        case 'g': n_gen = (int)strtol(optarg, NULL, 10); break;
        case 'r': reps = (int)strtol(optarg, NULL, 10); break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (reps < 1 || n_gen < 0 || n_threads < 0) {
        usage(stderr);
        return 2;
    }
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_ctx *c = NULL;
    float *logits = NULL, *scratch = NULL;
    int32_t *ids = NULL;
    struct eng_sampler *smp[BENCH_SAMPLERS] = {0};
    double sample_ms[BENCH_SAMPLERS] = {0};
    int rc = 1;
    double t0 = s3_now_ms();
    struct eng_model_opts mo = {.n_threads = n_threads};
    if (eng_model_load(model, &mo, &m, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        goto out;
    }
    const double load_ms = s3_now_ms() - t0;
    const struct eng_hparams *hp = eng_model_hparams(m);
    int max_p = n_gen;
    for (int i = 0; i < n_sizes; i++)
        max_p = sizes[i] > max_p ? sizes[i] : max_p;
    struct eng_ctx_opts co = {.n_ctx = max_p};
    if (eng_ctx_new(m, &co, &c, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        goto out;
    }
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    scratch = malloc((size_t)hp->n_vocab * sizeof(float));
    ids = malloc((size_t)max_p * sizeof(int32_t));
    if (!logits || !scratch || !ids)
        goto out;
    uint64_t x = 42;
    for (int i = 0; i < max_p; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)hp->n_vocab);
    }
    const int nth = n_threads;
    double pp_best[BENCH_MAX_SIZES], pp_mean[BENCH_MAX_SIZES];
    for (int si = 0; si < n_sizes; si++) {
        double best = 0, sum = 0;
        for (int r = 0; r < reps; r++) {
            eng_ctx_reset(c);
            double t = s3_now_ms();
            if (eng_ctx_prefill(c, ids, (size_t)sizes[si], logits, NULL) < 0) {
                fprintf(stderr, "bench-engine: prefill failed\n");
                goto out;
            }
            double tps = sizes[si] / ((s3_now_ms() - t) / 1000.0);
            best = tps > best ? tps : best;
            sum += tps;
        }
        pp_best[si] = best;
        pp_mean[si] = sum / reps;
    }
    /* sampling on the decode's own logits, timed apart from decode (llama-bench's decode
       does not sample): OpenAI's defaults, and a nucleus with top-k */
    static const struct eng_sample_params sp[BENCH_SAMPLERS] = {
        {.temperature = 1.0f, .top_p = 1.0f, .seed = 1},
        {.temperature = 0.7f, .top_p = 0.9f, .top_k = 40, .seed = 1}};
    for (int k = 0; k < BENCH_SAMPLERS; k++)
        if (eng_sampler_new(&sp[k], hp->n_vocab, &smp[k]) < 0)
            goto out;
    double tg_best = 0, tg_sum = 0;
    for (int r = 0; r < reps && n_gen > 0; r++) {
        eng_ctx_reset(c);
        double t = s3_now_ms(), t_sample = 0;
        for (int i = 0; i < n_gen; i++) {
            if (eng_ctx_decode(c, ids[i], logits) < 0) {
                fprintf(stderr, "bench-engine: decode failed\n");
                goto out;
            }
            for (int k = 0; k < BENCH_SAMPLERS && r == 0; k++) {
                memcpy(scratch, logits, (size_t)hp->n_vocab * sizeof(float));
                const double ts = s3_now_ms();
                (void)eng_sampler_sample(smp[k], scratch);
                const double dt = s3_now_ms() - ts;
                sample_ms[k] += dt;
                t_sample += dt;
            }
        }
        double tps = n_gen / ((s3_now_ms() - t - t_sample) / 1000.0);
        tg_best = tps > tg_best ? tps : tg_best;
        tg_sum += tps;
    }
    const double per = n_gen > 0 ? n_gen : 1;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double rss_mb = (double)ru.ru_maxrss / 1024.0;
    if (json) {
        printf("{\"model\":\"%s\",\"threads\":%d,\"load_ms\":%.1f,\"prefill\":[", model, nth ? nth : krn_threads_default(),
               load_ms);
        for (int si = 0; si < n_sizes; si++)
            printf("%s{\"tokens\":%d,\"tps_best\":%.1f,\"tps_mean\":%.1f}", si ? "," : "",
                   sizes[si], pp_best[si], pp_mean[si]);
        printf("],\"decode\":{\"tokens\":%d,\"tps_best\":%.1f,\"tps_mean\":%.1f},"
               "\"sample_us\":{\"t1\":%.1f,\"t0.7_p0.9_k40\":%.1f},"
               "\"reps\":%d,\"peak_rss_mb\":%.1f}\n",
               n_gen, tg_best, reps ? tg_sum / reps : 0.0, 1e3 * sample_ms[0] / per,
               1e3 * sample_ms[1] / per, reps, rss_mb);
    } else {
        printf("model %s (%s, %d layers), threads %d, load %.0f ms\n", model, hp->arch,
               hp->n_layer, nth ? nth : krn_threads_default(), load_ms);
        for (int si = 0; si < n_sizes; si++)
            printf("prefill %6d tokens: %8.1f tok/s best, %8.1f mean\n", sizes[si], pp_best[si],
                   pp_mean[si]);
        printf("decode  %6d tokens: %8.1f tok/s best, %8.1f mean\n", n_gen, tg_best,
               tg_sum / reps);
        printf("sample  %6d vocab:  %8.1f us/token (temperature 1), %.1f us/token (0.7, "
               "top_p 0.9, top_k 40)\n",
               hp->n_vocab, 1e3 * sample_ms[0] / per, 1e3 * sample_ms[1] / per);
        printf("peak RSS %.1f MiB\n", rss_mb);
    }
    rc = 0;
out:
    for (int k = 0; k < BENCH_SAMPLERS; k++)
        eng_sampler_free(smp[k]);
    free(ids);
    free(logits);
    free(scratch);
    eng_ctx_free(c);
    eng_model_free(m);
    return rc;
}
