/* bench/cuda/bench_cuda.c - s3cuda_bench: device-path benchmarks (bench/cuda/README.md).
 *
 *   s3cuda_bench synth <gguf-synth options>          write a model (cli_gguf_synth)
 *   s3cuda_bench scan --model F [--tokens 32768,131072,1048576] [--chunk 2048]
 *                     [--hook 3,8,23,29] [--sae-dict 2048 --sae-k 16] [--decode 128]
 *                     [--sae-path dev|host] [--full 0|1] [--label NAME]
 *   s3cuda_bench attn                                 attention kernels alone (TFLOP/s)
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
 * prompt and --decode greedy steps (time to first token, decode tokens/s). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cuda.h"
#include "cuda_forward.h"
#include "engine.h"
#include "engine_int.h"
#include "quant.h"

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
    float *d_x, *d_wenc, *d_benc, *d_bdec, *d_scr, *d_acts, *h_acts;
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
                                    s->d_benc, s->d_bdec, s->sae_dict, s->sae_k, s->d_scr,
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
        if (krn_cuda_sae_encode(dev, d_k + h * s->hd, ld, n, s->hd, s->d_wenc, s->d_benc,
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

static int cmd_scan(int argc, char **argv)
{
    const char *model = NULL, *label = "model";
    long long sizes[8] = {32768, 131072, 1048576}, hooks[64] = {3, 8, 23, 29};
    int n_sizes = 3, n_hooks = 4, chunk = 2048, sae_dict = 0, sae_k = 16, n_decode = 128;
    int dev_path = 1, full = 0, compare = 0;
    static const struct option lo[] = {{"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'},
                                       {"chunk", 1, 0, 'c'}, {"hook", 1, 0, 'k'},
                                       {"sae-dict", 1, 0, 'd'}, {"sae-k", 1, 0, 's'},
                                       {"decode", 1, 0, 'g'}, {"label", 1, 0, 'l'},
                                       {"sae-path", 1, 0, 'p'}, {"full", 1, 0, 'f'},
                                       {"compare", 1, 0, 'x'},
                                       {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': n_sizes = parse_list(optarg, sizes, 8); break;
        case 'c': chunk = (int)strtol(optarg, NULL, 10); break;
        case 'k': n_hooks = parse_list(optarg, hooks, 64); break;
        case 'd': sae_dict = (int)strtol(optarg, NULL, 10); break;
        case 's': sae_k = (int)strtol(optarg, NULL, 10); break;
        case 'g': n_decode = (int)strtol(optarg, NULL, 10); break;
        case 'l': label = optarg; break;
        case 'p': dev_path = strcmp(optarg, "host") != 0; break;
        case 'f': full = (int)strtol(optarg, NULL, 10); break;
        case 'x': compare = (int)strtol(optarg, NULL, 10); break;
        default: return 2;
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
        for (size_t i = 0; i < (size_t)sae_dict * hp->head_dim; i++)
            w[i] = (float)((int)(i * 2654435761u % 2001) - 1000) * 1e-4f;
        struct krn_cuda_dev *sd = dev_path ? eng__cuda_ctx_dev(dc) : probe;
        if ((!dev_path && krn_cuda_malloc(probe, (void **)&st.d_x, (size_t)chunk * dkv * 4) < 0) ||
            (dev_path &&
             (krn_cuda_host_alloc(sd, (void **)&st.h_ids_l, (size_t)n_hooks * nrec * 2) < 0 ||
              krn_cuda_host_alloc(sd, (void **)&st.h_acts_l, (size_t)n_hooks * nrec * 4) < 0)) ||
            krn_cuda_malloc(probe, (void **)&st.d_wenc, (size_t)sae_dict * hp->head_dim * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_benc, (size_t)sae_dict * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_bdec, (size_t)hp->head_dim * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_scr,
                            (size_t)chunk * (hp->head_dim + sae_dict) * 4) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_ids, nrec * 2) < 0 ||
            krn_cuda_malloc(probe, (void **)&st.d_acts, nrec * 4) < 0 ||
            krn_cuda_host_alloc(probe, (void **)&st.h_ids, nrec * 2) < 0 ||
            krn_cuda_host_alloc(probe, (void **)&st.h_acts, nrec * 4) < 0 ||
            krn_cuda_upload(probe, st.d_wenc, w, (size_t)sae_dict * hp->head_dim * 4) < 0 ||
            krn_cuda_memset(probe, st.d_benc, 0, (size_t)sae_dict * 4) < 0 ||
            krn_cuda_memset(probe, st.d_bdec, 0, (size_t)hp->head_dim * 4) < 0) {
            fprintf(stderr, "sae buffers: %s\n", krn_cuda_errmsg(probe));
            return 1;
        }
        free(w);
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

/* Attention kernels alone: causal chunks (8B and 135M head shapes) for both tensor-core
 * variants, and decode (one query over a long cache) for the split and plain paths. */
static int cmd_attn(void)
{
    struct krn_cuda_dev *dev = NULL;
    if (krn_cuda_dev_new(0, &dev) < 0) {
        fprintf(stderr, "no CUDA device\n");
        return 1;
    }
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
        for (int var = 1; var <= 2; var++) {
            krn_cuda_attn_variant(dev, var);
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
                printf("{\"bench\":\"attn\",\"case\":\"%s\",\"variant\":%d,\"us\":%.1f,"
                       "\"tflops\":%.1f}\n",
                       cs[ci].name, var, 1000.0 * ms / reps, flop * reps / (ms / 1000) / 1e12);
            else
                fprintf(stderr, "attn %s: %s\n", cs[ci].name, krn_cuda_errmsg(dev)), rc = 1;
            krn_cuda_event_free(e0), krn_cuda_event_free(e1);
        }
        krn_cuda_free(dq), krn_cuda_free(dk), krn_cuda_free(dv), krn_cuda_free(dout);
        free(h);
    }
    krn_cuda_dev_free(dev);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "attn") == 0)
        return cmd_attn();
    if (argc >= 2 && strcmp(argv[1], "synth") == 0)
        return cli_gguf_synth(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "scan") == 0)
        return cmd_scan(argc - 1, argv + 1);
    fprintf(stderr, "usage: s3cuda_bench synth|scan|attn ...\n");
    return 2;
}
