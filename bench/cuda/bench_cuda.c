/* bench/cuda/bench_cuda.c - s3cuda_bench: device-path benchmarks (bench/cuda/README.md).
 *
 *   s3cuda_bench synth <gguf-synth options>          write a model (cli_gguf_synth)
 *   s3cuda_bench scan --model F [--tokens 32768,131072,1048576] [--chunk 2048]
 *                     [--hook 3,8,23,29] [--sae-dict 2048 --sae-k 16] [--decode 128]
 *                     [--sae-path dev|host] [--full 0|1] [--label NAME]
 *   s3cuda_bench ingest --model F [--tokens 1048576] [--chunk 2048] [--overlap 128]
 *                       [--hook 3,9,24,31] [--index-k 4] [--sae-dict 2048 --sae-k 16]
 *                       [--budget 2048] [--decode 64] [--db PATH]
 *   s3cuda_bench attn                                 attention kernels alone (TFLOP/s)
 *   s3cuda_bench gemm                                 layer projections: cuBLAS vs tuned
 *   s3cuda_bench sae                                  SAE encoding of one 8B layer's keys
 *
 * scan: chunked prefill of N generated token ids, B tokens per chunk, each chunk at positions
 * 0..B-1 (no KV carried). By default the scan flavour of the ubatch runs (stops after the
 * projection of the highest hooked layer; --full 1 runs every layer). --sae-path dev (the
 * default): the keys of every hooked layer and kv head are Top-k encoded on the GPU straight
 * from the projection buffer, in stream order (random SAE of --sae-dict latents), and only the
 * (position, feature, activation) records are copied to pinned host memory. --sae-path host:
 * pre-RoPE K rows are copied to the host, handed to a host hook, uploaded again and encoded
 * (the older path). Without --sae-dict the host hook just receives the K rows. Prints one JSON line per case: tokens/s, device memory beyond
 * the weights (peak, from cudaMemGetInfo), per-stage device time. Then decode: a 2048-token
 * prompt and --decode greedy steps (time to first token, decode tokens/s).
 *
 * ingest: the product's pipelined GPU scan (eng__cuda_sae_scan_*, as server/scan.c runs it),
 * after six untimed full passes (a warm server's context: its graphs captured, warmup_ms),
 * of --tokens generated ids with the SQLite index written (postings, one passage per 128
 * tokens, FTS), then a question over that document: query features, S3 retrieval, prompt
 * prefill (question + evidence up to --budget tokens), greedy decode. Prints tok/s of the
 * scan with the host's time split (submit, waiting for the GPU, SQLite), and the time to
 * first token split into its parts and the decode tokens/s. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../bench_passages.h"
#include "cli.h"
#include "cuda.h"
#include "cuda_forward.h"
#include "engine.h"
#include "engine_int.h"
#include "idx.h"
#include "quant.h"
#include "sae.h"
#include "scan.h"

int cli_gguf_synth(int argc, char **argv);

struct scan_state {
    long long n_rows, n_records;
    double hook_ms;
    int n_slots;                   /* device path: records of each hooked layer of a ubatch */
    uint16_t *h_ids_l;             /* (n_hooks, n_kv * chunk * k) pinned */
    float *h_acts_l;
    /* GPU SAE */
    struct krn_cuda_dev *dev;
    int sae_dict, sae_k, hd, n_head_kv;
    int n_rows_max;
    float *d_x, *d_benc, *d_bdec, *d_scr, *d_acts, *h_acts;
    uint16_t *d_wenc;               /* split (krn_cuda_sae_split) */
    float w_inv;
    uint16_t *d_ids, *h_ids;
};

/* The scan hook: count rows; with the SAE on, encode every kv head's keys on the GPU and
 * bring the records back (the work the index writer consumes). */
static int scan_hook(void *ud, int layer, int pos0, int n, const float *q, const float *k)
{
    struct scan_state *s = ud;
    const double t0 = s3_now_ms();
    (void)layer, (void)pos0, (void)q;
    s->n_rows += n;
    if (s->sae_dict > 0) {
        const int dkv = s->hd * s->n_head_kv;
        if (krn_cuda_upload_async(s->dev, s->d_x, k, (size_t)n * dkv * sizeof(float)) < 0)
            return 1;
        for (int h = 0; h < s->n_head_kv; h++) {
            if (krn_cuda_sae_encode(s->dev, s->d_x + h * s->hd, dkv, n, s->hd, s->d_wenc,
                                    s->w_inv, s->d_benc, s->d_bdec, s->sae_dict, s->sae_k, s->d_scr,
                                    s->d_ids + (size_t)h * n * s->sae_k,
                                    s->d_acts + (size_t)h * n * s->sae_k) < 0)
                return 1;
        }
        const size_t nrec = (size_t)s->n_head_kv * n * s->sae_k;
        if (krn_cuda_download_async(s->dev, s->h_ids, s->d_ids, nrec * 2) < 0 ||
            krn_cuda_download_async(s->dev, s->h_acts, s->d_acts, nrec * 4) < 0 ||
            krn_cuda_sync(s->dev) < 0)
            return 1;
        s->n_records += (long long)nrec;
    }
    s->hook_ms += s3_now_ms() - t0;
    return 0;
}

/* Device hook (the default SAE path): encode every kv head's keys of this layer on the device
 * stream, straight from the projection rows, then copy the records to pinned host memory
 * asynchronously; the host reads them once the ubatch has completed. */
static int scan_dev_hook(void *ud, struct krn_cuda_dev *dev, int layer, int pos0, int n,
                         const float *d_q, const float *d_k, int ld)
{
    struct scan_state *s = ud;
    (void)layer, (void)pos0, (void)d_q;
    const size_t nrec = (size_t)s->n_head_kv * n * s->sae_k;
    if (s->n_slots >= 64)
        return 1;
    for (int h = 0; h < s->n_head_kv; h++)
        if (krn_cuda_sae_encode(dev, d_k + h * s->hd, ld, n, s->hd, s->d_wenc, s->w_inv,
                                s->d_benc,
                                s->d_bdec, s->sae_dict, s->sae_k, s->d_scr,
                                s->d_ids + (size_t)h * n * s->sae_k,
                                s->d_acts + (size_t)h * n * s->sae_k) < 0)
            return 1;
    const size_t cap = (size_t)s->n_head_kv * s->n_rows_max * s->sae_k;
    if (krn_cuda_download_async(dev, s->h_ids_l + (size_t)s->n_slots * cap, s->d_ids,
                                nrec * 2) < 0 ||
        krn_cuda_download_async(dev, s->h_acts_l + (size_t)s->n_slots * cap, s->d_acts,
                                nrec * 4) < 0)
        return 1;
    s->n_slots++;
    s->n_rows += n;
    s->n_records += (long long)nrec;
    return 0;
}

static int parse_list(const char *s, long long *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        char *end;
        out[n++] = strtoll(s, &end, 10);
        if (end == s)
            return -1;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static int32_t rand_tok(int nv)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (int32_t)(rng % (uint64_t)nv);
}

/* Options both benches take: --model --chunk --hook --sae-dict --sae-k --decode --label
 * (and --tokens, read differently by each). */
#define COMMON_LONGOPTS                                                                        \
    {"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'}, {"chunk", 1, 0, 'c'}, {"hook", 1, 0, 'k'},     \
        {"sae-dict", 1, 0, 'd'}, {"sae-k", 1, 0, 's'}, {"decode", 1, 0, 'g'},                   \
        {"label", 1, 0, 'l'}

struct common_opts {
    const char **model, **label;
    int *chunk, *sae_dict, *sae_k, *n_decode, *n_hooks;
    long long *hooks;
};

/* 1 when c is one of the common options (stored through o), else 0. */
static int common_opt(int c, const char *arg, const struct common_opts *o)
{
    switch (c) {
    case 'm': *o->model = arg; return 1;
    case 'c': *o->chunk = (int)strtol(arg, NULL, 10); return 1;
    case 'k': *o->n_hooks = parse_list(arg, o->hooks, 64); return 1;
    case 'd': *o->sae_dict = (int)strtol(arg, NULL, 10); return 1;
    case 's': *o->sae_k = (int)strtol(arg, NULL, 10); return 1;
    case 'g': *o->n_decode = (int)strtol(arg, NULL, 10); return 1;
    case 'l': *o->label = arg; return 1;
    default: return 0;
    }
}

static int cmd_scan(int argc, char **argv)
{
    const char *model = NULL, *label = "model";
    long long sizes[8] = {32768, 131072, 1048576}, hooks[64] = {3, 8, 23, 29};
    int n_sizes = 3, n_hooks = 4, chunk = 2048, sae_dict = 0, sae_k = 16, n_decode = 128;
    int dev_path = 1, full = 0, compare = 0;
    static const struct option lo[] = {COMMON_LONGOPTS, {"sae-path", 1, 0, 'p'},
                                       {"full", 1, 0, 'f'}, {"compare", 1, 0, 'x'},
                                       {0, 0, 0, 0}};
    const struct common_opts cmo = {&model, &label, &chunk, &sae_dict, &sae_k, &n_decode,
                                    &n_hooks, hooks};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't': n_sizes = parse_list(optarg, sizes, 8); break;
        case 'p': dev_path = strcmp(optarg, "host") != 0; break;
        case 'f': full = (int)strtol(optarg, NULL, 10); break;
        case 'x': compare = (int)strtol(optarg, NULL, 10); break;
        default:
            if (!common_opt(c, optarg, &cmo))
                return 2;
        }
    }
    if (!model || n_sizes < 1 || n_hooks < 0 || chunk < 16) {
        fprintf(stderr, "scan: --model required\n");
        return 2;
    }
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_cuda_model *cm = NULL;
    struct eng_cuda_ctx *dc = NULL;
    double t = s3_now_ms();
    if (eng_model_load(model, NULL, &m, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const double load_ms = s3_now_ms() - t;
    const struct eng_hparams *hp = eng_model_hparams(m);
    struct krn_cuda_dev *probe = NULL;
    size_t free0, total, free1, free2;
    if (krn_cuda_dev_new(0, &probe) < 0 || krn_cuda_mem_info(probe, &free0, &total) < 0) {
        fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    t = s3_now_ms();
    if (eng__cuda_model_new(m, 0, &cm, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const double upload_ms = s3_now_ms() - t;
    krn_cuda_mem_info(probe, &free1, &total);
    if (eng__cuda_ctx_new(m, cm, chunk, chunk, &dc, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    struct scan_state st = {.dev = probe, .sae_dict = sae_dict, .sae_k = sae_k,
                            .hd = hp->head_dim, .n_head_kv = hp->n_head_kv,
                            .n_rows_max = chunk};
    if (sae_dict <= 0)
        dev_path = 0;
    if (sae_dict > 0) {
        const size_t dkv = (size_t)hp->head_dim * hp->n_head_kv, nrec =
                                                                     (size_t)hp->n_head_kv * chunk * sae_k;
        float *w = malloc(sizeof(float) * (size_t)sae_dict * hp->head_dim);
        uint16_t *hilo = malloc(sizeof(float) * (size_t)sae_dict * hp->head_dim);
        for (size_t i = 0; i < (size_t)sae_dict * hp->head_dim; i++)
            w[i] = (float)((int)(i * 2654435761u % 2001) - 1000) * 1e-4f;
        st.w_inv = krn_cuda_sae_split(w, sae_dict, hp->head_dim, hilo);
        struct krn_cuda_dev *sd = dev_path ? eng__cuda_ctx_dev(dc) : probe;
        if ((!dev_path && krn_cuda_malloc(probe, (void **)&st.d_x, (size_t)chunk * dkv * 4) < 0) ||
            (dev_path &&
             (krn_cuda_host_alloc(sd, (void **)&st.h_ids_l, (size_t)n_hooks * nrec * 2) < 0 ||
              krn_cuda_host_alloc(sd, (void **)&st.h_acts_l, (size_t)n_hooks * nrec * 4) < 0)) ||
            krn_cuda_malloc(probe, (void **)&st.d_wenc, (size_t)sae_dict * hp->head_dim * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_benc, (size_t)sae_dict * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_bdec, (size_t)hp->head_dim * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_scr,
                            krn_cuda_sae_scratch_bytes(chunk, hp->head_dim, sae_dict)) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_ids, nrec * 2) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_acts, nrec * 4) < 0 ||
            krn_cuda_host_alloc(probe, (void **)&st.h_ids, nrec * 2) < 0 ||
            krn_cuda_host_alloc(probe, (void **)&st.h_acts, nrec * 4) < 0 ||
            krn_cuda_upload(probe, st.d_wenc, hilo, (size_t)sae_dict * hp->head_dim * 4) < 0 ||
            krn_cuda_memset(probe, st.d_benc, 0, (size_t)sae_dict * 4) < 0 ||
            krn_cuda_memset(probe, st.d_bdec, 0, (size_t)hp->head_dim * 4) < 0) {
            fprintf(stderr, "sae buffers: %s\n", krn_cuda_errmsg(probe));
            return 1;
        }
        free(w), free(hilo);
    }
    uint64_t mask = 0;
    for (int i = 0; i < n_hooks; i++)
        if (hooks[i] >= 0 && hooks[i] < hp->n_layer && hooks[i] < 64)
            mask |= 1ull << hooks[i];
    struct eng_cuda_hook hook = {.fn = dev_path ? NULL : scan_hook, .ud = &st, .mask = mask};
    struct eng_cuda_scan scan = {.full = full, .no_q = 1,
                                 .dev_fn = dev_path ? scan_dev_hook : NULL, .dev_ud = &st};
    int32_t *toks = malloc(sizeof(int32_t) * chunk);
    printf("{\"bench\":\"setup\",\"label\":\"%s\",\"device\":\"%s\",\"n_layer\":%d,\"n_embd\":%d,"
           "\"n_head\":%d,\"n_head_kv\":%d,\"n_ff\":%d,\"n_vocab\":%d,\"load_ms\":%.0f,"
           "\"upload_ms\":%.0f,\"weights_gib\":%.3f,\"ctx_gib\":%.3f}\n",
           label, krn_cuda_dev_name(probe), hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv,
           hp->n_ff, hp->n_vocab, load_ms, upload_ms,
           (double)eng__cuda_model_bytes(cm) / 1073741824.0,
           (double)eng__cuda_ctx_bytes(dc) / 1073741824.0);
    /* warm-up: one chunk */
    for (int i = 0; i < chunk; i++)
        toks[i] = rand_tok(hp->n_vocab);
    st.n_slots = 0;
    if (eng__cuda_ubatch_scan(dc, toks, chunk, 0, &hook, &scan, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    /* cfg 1 (--compare 1): the first size again with every layer run and the host SAE path
       (K copied to the host and uploaded again), the way the scan ran before */
    for (int cfg = 0; cfg < 1 + (compare && sae_dict > 0); cfg++)
    for (int si = 0; si < (cfg ? 1 : n_sizes); si++) {
        if (cfg && si == 0) {
            full = 1;
            dev_path = 0;
            scan.full = 1;
            scan.dev_fn = NULL;
            hook.fn = scan_hook;
            if (!st.d_x &&
                krn_cuda_malloc(probe, (void **)&st.d_x,
                                (size_t)chunk * hp->head_dim * hp->n_head_kv * 4) < 0) {
                fprintf(stderr, "%s\n", krn_cuda_errmsg(probe));
                return 1;
            }
        }
        for (int prof = 0; prof < 2; prof++) {
            const long long N = sizes[si];
            if (prof && N > 131072)
                continue; /* the breakdown is taken at <= 128k */
            eng__cuda_ctx_set_profile(dc, prof);
            struct eng_cuda_stats s0, s1;
            eng__cuda_ctx_stats(dc, &s0);
            st.n_rows = st.n_records = 0;
            st.hook_ms = 0;
            size_t min_free = (size_t)-1;
            t = s3_now_ms();
            for (long long done = 0; done < N; done += chunk) {
                const int nb = N - done < chunk ? (int)(N - done) : chunk;
                for (int i = 0; i < nb; i++)
                    toks[i] = rand_tok(hp->n_vocab);
                st.n_slots = 0;
                if (eng__cuda_ubatch_scan(dc, toks, nb, 0, &hook, &scan, &err) < 0) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
                /* the records of this chunk are on the host now (the ubatch has synced) */
                if (dev_path && st.n_slots > 0 && st.h_ids_l[0] >= sae_dict) {
                    fprintf(stderr, "bad SAE record id %d\n", st.h_ids_l[0]);
                    return 1;
                }
                if ((done / chunk) % 64 == 0) {
                    krn_cuda_mem_info(probe, &free2, &total);
                    min_free = free2 < min_free ? free2 : min_free;
                }
            }
            const double ms = s3_now_ms() - t;
            krn_cuda_mem_info(probe, &free2, &total);
            min_free = free2 < min_free ? free2 : min_free;
            eng__cuda_ctx_stats(dc, &s1);
            printf("{\"bench\":\"scan\",\"label\":\"%s\",\"tokens\":%lld,\"chunk\":%d,"
                   "\"flavour\":\"%s\",\"sae_path\":\"%s\","
                   "\"hooked_layers\":%d,\"sae_dict\":%d,\"sae_k\":%d,\"profiled\":%d,"
                   "\"seconds\":%.3f,\"tok_per_s\":%.0f,\"extra_device_gib\":%.3f,"
                   "\"hook_ms\":%.1f,\"records\":%lld",
                   label, N, chunk, full ? "full" : "scan", dev_path ? "dev" : "host", n_hooks,
                   sae_dict, sae_k, prof, ms / 1000, N / (ms / 1000),
                   (double)(free1 - min_free) / 1073741824.0, st.hook_ms, st.n_records);
            if (prof) {
                const double tot = s1.total_ms - s0.total_ms;
                const double gemm = s1.gemm_ms - s0.gemm_ms;
                /* GEMM FLOPs per token: 2 * (qkv + o + gate/up + down) weights per layer */
                const double d = hp->n_embd, dq = (double)hp->n_head * hp->head_dim,
                             dkv = (double)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
                /* layers run: all, or up to the highest hooked one whose FFN/attention is
                   skipped (its projection is run) */
                int top = hp->n_layer - 1;
                if (!full) {
                    top = -1;
                    for (int i = 0; i < n_hooks; i++)
                        top = hooks[i] > top && hooks[i] < hp->n_layer ? (int)hooks[i] : top;
                }
                const double per_layer = d * (dq + 2 * dkv) + dq * d + 3 * d * ff;
                const double flop_tok =
                    2.0 * (top * per_layer + (full ? per_layer : d * (dq + 2 * dkv)));
                printf(",\"stage_ms\":{\"gemm\":%.1f,\"attn\":%.1f,\"other\":%.1f,\"copy\":%.1f,"
                       "\"sae_dev\":%.1f,\"logits\":%.1f,\"device_total\":%.1f},"
                       "\"gemm_tflops\":%.1f",
                       gemm, s1.attn_ms - s0.attn_ms, s1.other_ms - s0.other_ms,
                       s1.copy_ms - s0.copy_ms, s1.hook_dev_ms - s0.hook_dev_ms,
                       s1.logits_ms - s0.logits_ms, tot, flop_tok * N / (gemm / 1000) / 1e12);
            }
            printf("}\n");
            fflush(stdout);
        }
    }
    eng__cuda_ctx_set_profile(dc, 0);
    /* decode: a context of 4096, a 2048-token prompt, then greedy steps */
    eng__cuda_ctx_free(dc);
    dc = NULL;
    if (n_decode > 0 && eng__cuda_ctx_new(m, cm, 4096, 2048, &dc, &err) == 0) {
        for (int i = 0; i < 2048; i++)
            toks[i] = rand_tok(hp->n_vocab);
        int32_t next = 0;
        t = s3_now_ms();
        if (eng__cuda_ubatch_argmax(dc, toks, 2048, 0, &next, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        const double ttft = s3_now_ms() - t;
        t = s3_now_ms();
        for (int s = 0; s < n_decode; s++)
            if (eng__cuda_ubatch_argmax(dc, &next, 1, 2048 + s, &next, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        const double dms = s3_now_ms() - t;
        /* a profiled pass over the same steps again (positions overwritten) for the split */
        struct eng_cuda_stats p0, p1;
        eng__cuda_ctx_set_profile(dc, 1);
        eng__cuda_ctx_stats(dc, &p0);
        const int n_prof = n_decode < 32 ? n_decode : 32;
        for (int s = 0; s < n_prof; s++)
            if (eng__cuda_ubatch_argmax(dc, &next, 1, 2048 + s, &next, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        eng__cuda_ctx_stats(dc, &p1);
        eng__cuda_ctx_set_profile(dc, 0);
        const double k = n_prof > 0 ? 1.0 / n_prof : 0.0;
        printf("{\"bench\":\"decode\",\"label\":\"%s\",\"prompt\":2048,\"ttft_ms\":%.1f,"
               "\"decode_tokens\":%d,\"decode_tok_per_s\":%.1f,\"per_token_device_ms\":{"
               "\"gemm\":%.3f,\"attn\":%.3f,\"other\":%.3f,\"logits\":%.3f,\"total\":%.3f}}\n",
               label, ttft, n_decode, n_decode / (dms / 1000), (p1.gemm_ms - p0.gemm_ms) * k,
               (p1.attn_ms - p0.attn_ms) * k, (p1.other_ms - p0.other_ms) * k,
               (p1.logits_ms - p0.logits_ms) * k, (p1.total_ms - p0.total_ms) * k);
    }
    eng__cuda_ctx_free(dc);
    eng__cuda_model_free(cm);
    krn_cuda_dev_free(probe);
    eng_model_free(m);
    free(toks);
    return 0;
}

/* ---- ingest: the product's scan pipeline over a long document, then a question ------------- */

/* A /proc/self/status field in MiB ("VmRSS", "VmHWM"); -1 where there is none. */
static double proc_mib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    const size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtod(line + kl + 1, NULL) / 1024.0;
            break;
        }
    if (f)
        fclose(f);
    return v;
}

/* Start counting the peak resident set (VmHWM) afresh from the current one. */
static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static double dt_ms(double *t)
{
    const double now = s3_now_ms(), d = now - *t;
    *t = now;
    return d;
}

/* The scan of N generated token ids the way server/scan.c runs it on a GPU (device SAE
 * records, two passes in flight, SQLite postings + passages + FTS written for chunk i while
 * the GPU computes chunk i+1), then a question: its query features (host SAE on the pre-RoPE
 * queries), S3 retrieval over the index, a prompt of question + evidence prefilled, greedy
 * decode. Time to first token = question encoding + retrieval + prompt prefill. */
static int cmd_ingest(int argc, char **argv)
{
    const char *model = NULL, *label = "model", *db_path = "/tmp/s3cuda_ingest.db";
    long long n_tok = 1048576, hooks[64] = {3, 9, 24, 31};
    int n_hooks = 4, chunk = 2048, sae_dict = 2048, sae_k = 16, ki = SRV_SCAN_INDEX_K,
        n_decode = 64, budget = 2048, q_len = 32, W = SRV_SCAN_OVERLAP;
    static const struct option lo[] = {COMMON_LONGOPTS, {"db", 1, 0, 'b'},
                                       {"budget", 1, 0, 'u'}, {"index-k", 1, 0, 'i'},
                                       {"overlap", 1, 0, 'w'}, {0, 0, 0, 0}};
    const struct common_opts cmo = {&model, &label, &chunk, &sae_dict, &sae_k, &n_decode,
                                    &n_hooks, hooks};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't': n_tok = strtoll(optarg, NULL, 10); break;
        case 'b': db_path = optarg; break;
        case 'u': budget = (int)strtol(optarg, NULL, 10); break;
        case 'i': ki = (int)strtol(optarg, NULL, 10); break;
        case 'w': W = (int)strtol(optarg, NULL, 10); break;
        default:
            if (!common_opt(c, optarg, &cmo))
                return 2;
        }
    }
    if (!model || n_tok < chunk || chunk < 256 || n_hooks < 1 || ki < 1 || sae_k < ki ||
        W < 0 || W >= chunk) {
        fprintf(stderr, "ingest: --model required (tokens >= chunk >= 256, 0 <= overlap < "
                        "chunk)\n");
        return 2;
    }
    struct s3_errinfo err = {0};
    struct eng_model *m = NULL;
    struct eng_model_opts mo = {.device = "cuda"};
    struct eng_ctx *ctx = NULL, *gen = NULL;
    struct eng_sae *sae = NULL;
    struct srv_scan *qsc = NULL; /* the server's query scanner */
    struct eng_cuda_sae_scan *ss = NULL;
    struct idx_db *db = NULL;
    struct idx_writer *w = NULL;
    struct idx_async *aw = NULL; /* the writer on its own thread, as server/scan.c runs it */
    struct krn_cuda_dev *probe = NULL;
    int rc = 1;
    double t = s3_now_ms();
    if (eng_model_load(model, &mo, &m, &err) < 0)
        goto fail;
    const double load_ms = dt_ms(&t);
    const struct eng_hparams *hp = eng_model_hparams(m);
    /* a random SAE for this model at the hooked layers */
    struct eng_sae_info in = {.n_layer = hp->n_layer, .n_head = hp->n_head,
                              .n_head_kv = hp->n_head_kv, .d_head = hp->head_dim,
                              .n_dict = sae_dict, .k = sae_k};
    memcpy(in.model_sha256, hp->model_sha256, 65);
    snprintf(in.arch, sizeof in.arch, "%s", hp->arch);
    for (int i = 0; i < n_hooks; i++)
        if (hooks[i] >= 0 && hooks[i] < hp->n_layer && hooks[i] < 64)
            in.layers[in.n_idx++] = (int)hooks[i];
    if (eng_sae_new(&in, &sae, &err) < 0)
        goto fail;
    for (int sl = 0; sl < in.n_idx; sl++)
        for (int h = 0; h < in.n_head_kv; h++) {
            struct eng_sae_unit u;
            eng_sae_get_unit(sae, sl, h, &u);
            for (size_t i = 0; i < (size_t)sae_dict * in.d_head; i++)
                u.w_enc[i] = u.w_dec[i] = (float)((int)rand_tok(2001) - 1000) * 1e-3f;
        }
    const int n_slot = in.n_idx * in.n_head_kv;
    size_t free0, total;
    if (krn_cuda_dev_new(0, &probe) < 0 || krn_cuda_mem_info(probe, &free0, &total) < 0)
        goto fail; /* free0: with the weights loaded, before any context */
    /* a pass: up to W tokens of the previous chunk re-read as a prefix, then chunk new ones
       (server/scan.c's default W) */
    struct eng_ctx_opts co = {.n_ctx = chunk + W, .n_batch = chunk + W};
    if (eng_ctx_new(m, &co, &ctx, &err) < 0 ||
        eng__cuda_sae_scan_new(ctx, sae, chunk, ki, &ss, &err) < 0)
        goto fail;
    /* document: generated ids; text = their pieces, one passage per 128 tokens */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tok);
    int64_t *off = malloc(sizeof(int64_t) * (size_t)(n_tok + 1));
    char *text = malloc((size_t)n_tok * 8 + 1);
    int32_t *feat = malloc(sizeof(int32_t) * (size_t)n_slot * chunk * ki);
    struct idx_slot *slots = malloc(sizeof(*slots) * (size_t)n_slot);
    struct idx_passage *pas = malloc(sizeof(*pas) * (size_t)(chunk / 128 + 2));
    int64_t *sent_t = malloc(sizeof(int64_t) * (size_t)(n_tok / 128 + 2)),
            *sent_c = malloc(sizeof(int64_t) * (size_t)(n_tok / 128 + 2));
    if (!ids || !off || !text || !feat || !slots || !pas || !sent_t || !sent_c)
        goto fail;
    size_t tl = 0;
    for (long long i = 0; i < n_tok; i++) {
        ids[i] = 2 + rand_tok(hp->n_vocab - 2);
        off[i] = (int64_t)tl;
        tl += (size_t)snprintf(text + tl, 9, "w%d ", (int)(ids[i] % 100000));
    }
    off[n_tok] = (int64_t)tl;
    for (int s = 0; s < n_slot; s++)
        slots[s] = (struct idx_slot){in.layers[s / in.n_head_kv], s % in.n_head_kv};
    char sha[65];
    s3_sha256_hex(text, tl, sha);
    idx_remove_files(db_path);
    struct idx_doc_meta meta = {.name = "ingest", .text_sha256 = sha,
                                .model_hash = hp->model_sha256, .sae_hash = sha,
                                .n_bytes = (int64_t)tl};
    if (idx_open(db_path, NULL, &db, &err) < 0 || idx_writer_begin(db, &meta, &w, &err) < 0 ||
        idx_async_start(w, IDX_ASYNC_DEPTH, &aw, &err) < 0)
        goto fail;
    /* a warm server's context: earlier documents' passes ran on it (two documents of a
       first pass without prefix and three steady passes: the shapes that repeat are captured
       as graphs per buffer set, the first pass's on the set it comes to); timed apart */
    double warm_ms = s3_now_ms();
    for (int i = 0; i < 8; i++) {
        const uint16_t *wid;
        const float *wact;
        int wn;
        const int first = i % 4 == 0;
        if (eng__cuda_sae_scan_submit(ss, ids, first ? chunk : chunk + W, first ? 0 : W,
                                      &err) < 0 ||
            eng__cuda_sae_scan_wait(ss, &wid, &wact, &wn, &err) < 0)
            goto fail;
    }
    warm_ms = s3_now_ms() - warm_ms;
    size_t min_free = free0;
    /* the pipeline; the host memory it adds: the peak resident set during the scan against
     * the resident set before it (model, token ids and passage text already in memory) */
    reset_peak_rss();
    const double rss0 = proc_mib("VmRSS");
    double submit_ms = 0, wait_ms = 0, write_ms = 0, finish_ms = 0, t0;
    int64_t n_pass = 0, pass_tok = 0;
    t = s3_now_ms();
    const double t_scan = t;
    t0 = s3_now_ms();
    if (eng__cuda_sae_scan_submit(ss, ids, chunk, 0, &err) < 0)
        goto fail;
    const double first_submit_ms = dt_ms(&t0);
    submit_ms += first_submit_ms;
    for (int64_t next = 0; next < n_tok;) {
        const int n = n_tok - next < chunk ? (int)(n_tok - next) : chunk;
        const int64_t nn = next + n;
        if (nn < n_tok) {
            const int n2 = n_tok - nn < chunk ? (int)(n_tok - nn) : chunk;
            if (eng__cuda_sae_scan_submit(ss, ids + nn - W, n2 + W, W, &err) < 0)
                goto fail;
        }
        submit_ms += dt_ms(&t0);
        const uint16_t *rid;
        const float *ract;
        int n_out;
        if (eng__cuda_sae_scan_wait(ss, &rid, &ract, &n_out, &err) < 0)
            goto fail;
        wait_ms += dt_ms(&t0);
        for (size_t i = 0; i < (size_t)n_slot * n_out * ki; i++)
            feat[i] = rid[i];
        const size_t np = bench_passages(&pass_tok, nn, n_tok, off, text, sent_t, sent_c, pas);
        struct idx_chunk ch = {.tok0 = next, .n_tok = n, .n_slot = n_slot, .slots = slots,
                               .k = ki, .feat = feat, .act = ract, .n_passages = np,
                               .passages = pas};
        if (idx_async_add(aw, &ch, &err) < 0)
            goto fail;
        write_ms += dt_ms(&t0);
        next = nn;
        if (++n_pass % 64 == 0) {
            size_t f;
            krn_cuda_mem_info(probe, &f, &total);
            min_free = f < min_free ? f : min_free;
        }
    }
    const int arc = idx_async_end(aw, &err);
    aw = NULL;
    if (arc < 0 || idx_writer_finish(w, &err) < 0)
        goto fail;
    finish_ms = dt_ms(&t0);
    /* the scan ends when the writer is gone: the document is committed and visible; the
     * database's checkpointer goes on copying the WAL into the file in the background (while
     * the question below runs, as a server's next request would); idx_close waits for it */
    const int64_t doc = idx_writer_doc(w);
    struct idx_writer_times wt;
    idx_writer_times(w, &wt);
    idx_writer_free(w);
    w = NULL;
    const double free_ms = dt_ms(&t0);
    const double scan_ms = s3_now_ms() - t_scan;
    const double rss_peak = proc_mib("VmHWM");
    int64_t db_bytes = 0;
    idx_db_bytes(db, &db_bytes, &err);
    printf("{\"bench\":\"ingest\",\"label\":\"%s\",\"tokens\":%lld,\"chunk\":%d,\"overlap\":%d,"
           "\"hooked_layers\":%d,"
           "\"sae_dict\":%d,\"sae_k\":%d,\"index_k\":%d,\"load_ms\":%.0f,\"warmup_ms\":%.0f,"
           "\"seconds\":%.3f,"
           "\"tok_per_s\":%.0f,\"host_ms\":{\"submit\":%.0f,\"first_submit\":%.2f,"
           "\"wait_gpu\":%.0f,"
           "\"queue_chunk\":%.0f,\"finish\":%.0f,\"free\":%.0f},"
           "\"writer_ms\":{\"accept\":%.0f,\"passages\":%.0f,\"segments\":%.0f,"
           "\"commit\":%.0f,\"finish_merge\":%.0f,\"encode\":%.0f},"
           "\"index_bytes_per_token\":%.1f,\"extra_device_gib\":%.3f,"
           "\"host_rss_mib\":{\"before\":%.1f,\"peak\":%.1f}}\n",
           label, n_tok, chunk, W, in.n_idx, sae_dict, sae_k, ki, load_ms, warm_ms,
           scan_ms / 1000,
           n_tok / (scan_ms / 1000), submit_ms, first_submit_ms, wait_ms, write_ms, finish_ms,
           free_ms, wt.accept,
           wt.passages, wt.segments, wt.commit, wt.finish, wt.encode,
           (double)db_bytes / n_tok,
           (double)(free0 - min_free) / 1073741824.0, rss0, rss_peak);
    fflush(stdout);
    /* the question, its features as the server finds them (srv_scan_query_ids on the
       server's query scanner: default options, warmed by an earlier question) */
    int32_t q[64];
    for (int i = 0; i < q_len; i++)
        q[i] = 2 + rand_tok(hp->n_vocab - 2);
    struct idx_qfeat *qf = NULL;
    size_t nqf = 0;
    if (srv_scan_new(m, sae, NULL, &qsc, &err) < 0 ||
        srv_scan_query_ids(qsc, q + 1, (size_t)q_len - 1, 0, &qf, &nqf, &err) < 0)
        goto fail;
    free(qf);
    qf = NULL;
    const double tq = s3_now_ms();
    double tq0 = tq;
    if (srv_scan_query_ids(qsc, q, (size_t)q_len, 0, &qf, &nqf, &err) < 0)
        goto fail;
    const double qenc_ms = dt_ms(&tq0);
    struct idx_query iq = {.mode = IDX_MODE_S3, .budget = budget, .feats = qf, .n_feats = nqf,
                           .docs = &doc, .n_docs = 1};
    struct idx_result res = {0};
    if (idx_retrieve(db, &iq, &res, &err) < 0)
        goto fail;
    const double retr_ms = dt_ms(&tq0);
    /* prompt: question, then the evidence spans' tokens, in document order */
    const int n_ctx_gen = budget + q_len + 3 * n_decode + 64; /* three decodes below */
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)n_ctx_gen);
    int np_ = 0;
    for (int i = 0; i < q_len; i++)
        prompt[np_++] = q[i];
    for (size_t j = 0; j < res.n_spans; j++)
        for (int64_t p = res.spans[j].start_tok; p < res.spans[j].end_tok && np_ < budget + q_len;
             p++)
            prompt[np_++] = ids[p];
    struct eng_ctx_opts go = {.n_ctx = n_ctx_gen, .n_batch = n_ctx_gen};
    if (eng_ctx_new(m, &go, &gen, &err) < 0)
        goto fail;
    /* the answer as eng_generate steps it: each token picked where the logits are (on the
       device only its id comes back), greedy; then n_decode sampled steps (OpenAI's default
       temperature 1) picked on the device, and as many with the logits downloaded and sampled
       on the host, side by side */
    struct eng_sampler *greedy = NULL, *smp_t1 = NULL;
    const struct eng_sample_params gp0 = {.temperature = 0.0f, .top_p = 1.0f},
                                   gp1 = {.temperature = 1.0f, .top_p = 1.0f, .seed = 1};
    if (eng_sampler_new(&gp0, hp->n_vocab, &greedy) < 0 ||
        eng_sampler_new(&gp1, hp->n_vocab, &smp_t1) < 0)
        goto fail;
    tq0 = s3_now_ms();
    float *logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    int32_t tok = 0;
    if (eng__ctx_prefill_pick(gen, prompt, (size_t)np_, greedy, logits, &tok) < 0)
        goto fail;
    const double prefill_ms = dt_ms(&tq0);
    const double ttft = qenc_ms + retr_ms + prefill_ms;
    for (int s = 0; s < n_decode; s++) {
        const int32_t cur = tok;
        if (eng__ctx_prefill_pick(gen, &cur, 1, greedy, logits, &tok) < 0)
            goto fail;
    }
    const double dec_ms = dt_ms(&tq0);
    for (int s = 0; s < n_decode; s++) {
        const int32_t cur = tok;
        if (eng__ctx_prefill_pick(gen, &cur, 1, smp_t1, logits, &tok) < 0)
            goto fail;
    }
    const double dec_t1_ms = dt_ms(&tq0);
    for (int s = 0; s < n_decode; s++) {
        if (eng_ctx_decode(gen, tok, logits) < 0)
            goto fail;
        tok = eng_sampler_sample(smp_t1, logits);
    }
    const double dec_t1_host_ms = dt_ms(&tq0);
    eng_sampler_free(greedy);
    eng_sampler_free(smp_t1);
    printf("{\"bench\":\"question\",\"label\":\"%s\",\"doc_tokens\":%lld,\"question_tokens\":%d,"
           "\"evidence_spans\":%zu,\"prompt_tokens\":%d,\"ttft_ms\":%.1f,\"ttft_parts_ms\":{"
           "\"query_encode\":%.1f,\"retrieve\":%.1f,\"prefill_first_token\":%.1f},"
           "\"decode_tokens\":%d,\"decode_tok_per_s\":%.1f,\"sampled_t1_tok_per_s\":%.1f,"
           "\"sampled_t1_on_host_tok_per_s\":%.1f}\n",
           label, n_tok, q_len, res.n_spans, np_, ttft, qenc_ms, retr_ms, prefill_ms, n_decode,
           n_decode / (dec_ms / 1000), n_decode / (dec_t1_ms / 1000),
           n_decode / (dec_t1_host_ms / 1000));
    idx_result_deinit(&res);
    /* the product's question encoding (srv_scan_query_ids: decoder alignment of the
       centred queries) of the same question ids, one GEMM per block of rows against the
       scalar loop */
    for (int ref = 0; ref < 2; ref++) {
        struct srv_scan_opts so = {.chunk = 512, .overlap = 64, .qdec_ref = ref};
        struct srv_scan *sc = NULL;
        struct idx_qfeat *pf = NULL;
        size_t npf = 0;
        double best = 1e30;
        int qrc = srv_scan_new(m, sae, &so, &sc, &err);
        for (int it = 0; qrc == 0 && it < 3; it++) {
            double t1 = s3_now_ms();
            qrc = srv_scan_query_ids(sc, q, (size_t)q_len, 0, &pf, &npf, &err);
            t1 = s3_now_ms() - t1;
            best = t1 < best ? t1 : best;
            free(pf);
            pf = NULL;
        }
        if (qrc == 0)
            printf("{\"bench\":\"question_product\",\"label\":\"%s\",\"decoder_alignment\":"
                   "\"%s\",\"features\":%zu,\"query_ms\":%.1f}\n",
                   label, ref ? "scalar" : "gemm", npf, best);
        else
            fprintf(stderr, "question_product: %s\n", err.msg);
        srv_scan_free(sc);
    }
    free(prompt), free(logits), free(qf);
    free(ids), free(off), free(text), free(feat), free(slots), free(pas), free(sent_t),
        free(sent_c);
    {
        const double tc = s3_now_ms();
        idx_close(db);
        db = NULL;
        printf("{\"bench\":\"ingest_close\",\"label\":\"%s\",\"close_ms\":%.0f}\n", label,
               s3_now_ms() - tc);
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "ingest: %s\n", err.msg[0] ? err.msg : "failed");
    srv_scan_free(qsc);
    eng__cuda_sae_scan_free(ss);
    idx_async_end(aw, NULL);
    idx_writer_free(w);
    idx_close(db);
    idx_remove_files(db_path);
    eng_ctx_free(gen);
    eng_ctx_free(ctx);
    eng_sae_free(sae);
    eng_model_free(m);
    krn_cuda_dev_free(probe);
    return rc;
}

/* Device 0 for the kernel benchmarks, or NULL (said on stderr). */
static struct krn_cuda_dev *open_dev(void)
{
    struct krn_cuda_dev *dev = NULL;
    if (krn_cuda_dev_new(0, &dev) < 0)
        fprintf(stderr, "no CUDA device\n");
    return dev;
}

/* Attention kernels alone: causal chunks (8B and 135M head shapes) for both tensor-core
 * variants, and decode (one query over a long cache) for the split and plain paths. */
static int cmd_attn(void)
{
    struct krn_cuda_dev *dev = open_dev();
    if (!dev)
        return 1;
    static const struct {
        const char *name;
        int n, pos0, H, Hkv, hd, n_ctx;
    } cs[] = {{"chunk2048-8b", 2048, 0, 32, 8, 128, 2048},
              {"chunk2048-135m", 2048, 0, 9, 3, 64, 2048},
              {"decode-8b-2k", 1, 2047, 32, 8, 128, 2048},
              {"decode-8b-32k", 1, 32767, 32, 8, 128, 32768},
              {"decode-135m-2k", 1, 2047, 9, 3, 64, 2048}};
    int rc = 0;
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0] && rc == 0; ci++) {
        const int n = cs[ci].n, H = cs[ci].H, hd = cs[ci].hd, n_ctx = cs[ci].n_ctx;
        const size_t nq = (size_t)n * H * hd, nkv = (size_t)cs[ci].Hkv * n_ctx * hd;
        uint16_t *h = malloc(2 * (nq > nkv ? nq : nkv)), *dq = NULL, *dk = NULL, *dv = NULL,
                 *dout = NULL;
        for (size_t i = 0; i < (nq > nkv ? nq : nkv); i++)
            h[i] = krn_f32_to_fp16((float)((int)(rand_tok(20001)) - 10000) * 1e-4f);
        if (krn_cuda_malloc(dev, (void **)&dq, nq * 2) < 0 ||
            krn_cuda_malloc(dev, (void **)&dk, nkv * 2) < 0 ||
            krn_cuda_malloc(dev, (void **)&dv, nkv * 2) < 0 ||
            krn_cuda_malloc(dev, (void **)&dout, nq * 2) < 0 ||
            krn_cuda_upload(dev, dq, h, nq * 2) < 0 || krn_cuda_upload(dev, dk, h, nkv * 2) < 0 ||
            krn_cuda_upload(dev, dv, h, nkv * 2) < 0) {
            fprintf(stderr, "%s\n", krn_cuda_errmsg(dev));
            return 1;
        }
        double keys = 0;
        for (int i = 0; i < n; i++)
            keys += cs[ci].pos0 + i + 1;
        const double flop = 4.0 * hd * H * keys;
        /* variant 1, variant 2 with its default block size, 64 and 128 queries, then the
           Hopper kernel (variant 3; 2 where it does not run) */
        static const int runs[5][2] = {{1, 0}, {2, 0}, {2, 64}, {2, 128}, {3, 0}};
        for (int ri = 0; ri < 5; ri++) {
            const int var = runs[ri][0];
            krn_cuda_attn_variant(dev, var);
            krn_cuda_attn_block(dev, runs[ri][1]);
            struct krn_cuda_event *e0 = NULL, *e1 = NULL;
            const int reps = n > 1 ? 50 : 500;
            float ms = 0;
            krn_cuda_event_new(dev, &e0), krn_cuda_event_new(dev, &e1);
            for (int r = 0; r < 3 && rc == 0; r++) /* warm-up */
                rc = krn_cuda_attn(dev, dq, dk, dv, n, cs[ci].pos0, H, cs[ci].Hkv, hd, n_ctx,
                                   0.088f, dout);
            krn_cuda_event_record(dev, e0);
            for (int r = 0; r < reps && rc == 0; r++)
                rc = krn_cuda_attn(dev, dq, dk, dv, n, cs[ci].pos0, H, cs[ci].Hkv, hd, n_ctx,
                                   0.088f, dout);
            krn_cuda_event_record(dev, e1);
            if (rc == 0 && krn_cuda_sync(dev) == 0 && krn_cuda_event_ms(dev, e0, e1, &ms) == 0)
                printf("{\"bench\":\"attn\",\"case\":\"%s\",\"variant\":%d,\"block\":\"%s\","
                       "\"us\":%.1f,\"tflops\":%.1f}\n",
                       cs[ci].name, var, runs[ri][1] == 64 ? "64" : runs[ri][1] == 128 ? "128" : "auto",
                       1000.0 * ms / reps, flop * reps / (ms / 1000) / 1e12);
            else
                fprintf(stderr, "attn %s: %s\n", cs[ci].name, krn_cuda_errmsg(dev)), rc = 1;
            krn_cuda_event_free(e0), krn_cuda_event_free(e1);
        }
        krn_cuda_attn_block(dev, 0);
        krn_cuda_free(dq), krn_cuda_free(dk), krn_cuda_free(dv), krn_cuda_free(dout);
        free(h);
    }
    krn_cuda_dev_free(dev);
    return rc;
}

/* The layer projections of both shapes for a chunk of 2048 rows: cuBLAS's default and every
 * cuBLASLt candidate krn_cuda_gemm_tune times (TFLOP/s), and whether the tuned algorithm's
 * output is bit for bit the default's. */
static int cmd_gemm(void)
{
    struct krn_cuda_dev *dev = open_dev();
    if (!dev)
        return 1;
    static const struct {
        const char *name;
        int n, k, ldx, y_type;
        float beta;
    } cs[] = {{"8b-qkv", 6144, 4096, 4096, KRN_CUDA_F32, 0.0f},
              {"8b-o", 4096, 4096, 4096, KRN_CUDA_F32, 1.0f},
              {"8b-gate-up", 28672, 4096, 4096, KRN_CUDA_F16, 0.0f},
              {"8b-down", 4096, 14336, 28672, KRN_CUDA_F32, 1.0f},
              {"135m-qkv", 960, 576, 576, KRN_CUDA_F32, 0.0f},
              {"135m-o", 576, 576, 576, KRN_CUDA_F32, 1.0f},
              {"135m-gate-up", 3072, 576, 576, KRN_CUDA_F16, 0.0f},
              {"135m-down", 576, 1536, 3072, KRN_CUDA_F32, 1.0f}};
    const int m = 2048;
    int rc = 0;
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0] && rc == 0; ci++) {
        const int n = cs[ci].n, k = cs[ci].k, ldx = cs[ci].ldx;
        const size_t ybytes = (size_t)m * n * (cs[ci].y_type == KRN_CUDA_F32 ? 4 : 2);
        uint16_t *dx = NULL, *dw = NULL;
        void *dy = NULL;
        unsigned char *y0 = malloc(ybytes), *y1 = malloc(ybytes);
        struct krn_cuda_gemm_trial tr[20];
        int nt = 0;
        if (!y0 || !y1 || krn_cuda_malloc(dev, (void **)&dx, (size_t)m * ldx * 2) < 0 ||
            krn_cuda_malloc(dev, (void **)&dw, (size_t)n * k * 2) < 0 ||
            krn_cuda_malloc(dev, &dy, ybytes) < 0 ||
            krn_cuda_fill_f16(dev, dx, (int64_t)m * ldx, 11) < 0 ||
            krn_cuda_fill_f16(dev, dw, (int64_t)n * k, 12) < 0 ||
            krn_cuda_memset(dev, dy, 0, ybytes) < 0 ||
            krn_cuda_gemm_ld(dev, m, n, k, dx, ldx, dw, dy, n, cs[ci].beta, cs[ci].y_type) < 0 ||
            krn_cuda_download(dev, y0, dy, ybytes) < 0 ||
            krn_cuda_gemm_tune(dev, m, n, k, dx, ldx, dw, dy, n, cs[ci].beta, cs[ci].y_type, tr,
                               20, &nt) < 0 ||
            krn_cuda_memset(dev, dy, 0, ybytes) < 0 ||
            krn_cuda_gemm_ld(dev, m, n, k, dx, ldx, dw, dy, n, cs[ci].beta, cs[ci].y_type) < 0 ||
            krn_cuda_download(dev, y1, dy, ybytes) < 0) {
            fprintf(stderr, "gemm %s: %s\n", cs[ci].name, krn_cuda_errmsg(dev));
            rc = 1;
        } else {
            const double flop = 2.0 * m * n * k;
            int best = 0;
            for (int i = 1; i < nt; i++)
                if (tr[i].ms < tr[best].ms)
                    best = i;
            printf("{\"bench\":\"gemm\",\"case\":\"%s\",\"m\":%d,\"n\":%d,\"k\":%d,"
                   "\"default_tflops\":%.1f,\"best_tflops\":%.1f,\"best_algo\":%d,"
                   "\"same_bits\":%s,\"trials\":[",
                   cs[ci].name, m, n, k, flop / (tr[0].ms * 1e9), flop / (tr[best].ms * 1e9),
                   tr[best].algo, memcmp(y0, y1, ybytes) == 0 ? "true" : "false");
            for (int i = 0; i < nt; i++)
                printf("%s[%d,%d,%d,%.1f]", i ? "," : "", tr[i].algo, tr[i].tile, tr[i].stages,
                       flop / (tr[i].ms * 1e9));
            printf("]}\n");
        }
        krn_cuda_free(dx), krn_cuda_free(dw), krn_cuda_free(dy);
        free(y0), free(y1);
    }
    krn_cuda_dev_free(dev);
    return rc;
}

/* SAE encoding of one layer's keys (2048 rows, 8 kv heads of 128, 2048 latents) as the scan's
 * device hook runs it, with k 16 and with k 1 (the centring, the GEMM and a single pick). */
static int cmd_sae(void)
{
    struct krn_cuda_dev *dev = open_dev();
    if (!dev)
        return 1;
    const int n = 2048, hkv = 8, hd = 128, nd = 2048, kk = 16, ld = 6144;
    const size_t unit = (size_t)nd * hd + nd + hd;
    float *dx = NULL, *dw = NULL, *scr = NULL, *acts = NULL;
    uint16_t *ids = NULL;
    float *hx = malloc(sizeof(float) * (size_t)n * ld), *hw = malloc(sizeof(float) * unit * hkv);
    for (size_t i = 0; i < (size_t)n * ld; i++)
        hx[i] = (float)((int)rand_tok(2001) - 1000) * 1e-3f;
    for (size_t i = 0; i < unit * hkv; i++)
        hw[i] = (float)((int)rand_tok(2001) - 1000) * 1e-4f;
    float inv[8];
    float *hs = malloc(sizeof(float) * unit * hkv); /* W_enc split, biases as they are */
    memcpy(hs, hw, sizeof(float) * unit * hkv);
    for (int h = 0; h < hkv; h++)
        inv[h] = krn_cuda_sae_split(hw + unit * h, nd, hd, (uint16_t *)(hs + unit * h));
    int rc = 0;
    if (krn_cuda_malloc(dev, (void **)&dx, sizeof(float) * (size_t)n * ld) < 0 ||
        krn_cuda_malloc(dev, (void **)&dw, sizeof(float) * unit * hkv) < 0 ||
        krn_cuda_malloc(dev, (void **)&scr, krn_cuda_sae_scratch_bytes(n, hd, nd)) < 0 ||
        krn_cuda_malloc(dev, (void **)&acts, sizeof(float) * (size_t)hkv * n * kk) < 0 ||
        krn_cuda_malloc(dev, (void **)&ids, 2 * (size_t)hkv * n * kk) < 0 ||
        krn_cuda_upload(dev, dx, hx, sizeof(float) * (size_t)n * ld) < 0 ||
        krn_cuda_upload(dev, dw, hs, sizeof(float) * unit * hkv) < 0) {
        fprintf(stderr, "sae: %s\n", krn_cuda_errmsg(dev));
        rc = 1;
    }
    struct krn_cuda_event *e0 = NULL, *e1 = NULL;
    krn_cuda_event_new(dev, &e0), krn_cuda_event_new(dev, &e1);
    for (int kq = 0; kq < 2 && rc == 0; kq++) {
        const int kr = kq ? kk : 1, reps = 20;
        float ms = 0;
        for (int r = -2; r < reps && rc == 0; r++) {
            if (r == 0)
                krn_cuda_event_record(dev, e0);
            for (int h = 0; h < hkv && rc == 0; h++) {
                const float *w = dw + unit * h;
                rc = krn_cuda_sae_encode(dev, dx + 2048 + h * hd, ld, n, hd, (const uint16_t *)w,
                                         inv[h], w + (size_t)nd * hd, w + (size_t)nd * hd + nd,
                                         nd, kr, scr,
                                         ids + (size_t)h * n * kk, acts + (size_t)h * n * kk);
            }
        }
        krn_cuda_event_record(dev, e1);
        if (rc == 0 && krn_cuda_sync(dev) == 0 && krn_cuda_event_ms(dev, e0, e1, &ms) == 0)
            printf("{\"bench\":\"sae\",\"case\":\"layer-8b\",\"k\":%d,\"us_per_layer\":%.1f,"
                   "\"us_per_head\":%.1f}\n", kr, 1000.0 * ms / reps, 1000.0 * ms / reps / hkv);
        else
            fprintf(stderr, "sae: %s\n", krn_cuda_errmsg(dev)), rc = 1;
    }
    krn_cuda_event_free(e0), krn_cuda_event_free(e1);
    krn_cuda_free(dx), krn_cuda_free(dw), krn_cuda_free(scr), krn_cuda_free(acts);
    krn_cuda_free(ids);
    free(hx), free(hw), free(hs);
    krn_cuda_dev_free(dev);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "gemm") == 0)
        return cmd_gemm();
    if (argc >= 2 && strcmp(argv[1], "sae") == 0)
        return cmd_sae();
    if (argc >= 2 && strcmp(argv[1], "attn") == 0)
        return cmd_attn();
    if (argc >= 2 && strcmp(argv[1], "synth") == 0)
        return cli_gguf_synth(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "scan") == 0)
        return cmd_scan(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "ingest") == 0)
        return cmd_ingest(argc - 1, argv + 1);
    fprintf(stderr, "usage: s3cuda_bench synth|scan|ingest|attn|gemm|sae ...\n");
    return 2;
}
