/* server/cli_engine.c - engine subcommands: tokenize, detokenize, generate. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"

#define CLI_MAX_STDIN ((size_t)1 << 30)

const char *cli_default_model(void)
{
    const char *m = getenv("S3_MODEL");
    return m && *m ? m : CLI_DEFAULT_MODEL;
}

/* Read all of stdin into a new NUL-terminated buffer. */
static int read_stdin(char **out, size_t *out_len)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return S3_ENOMEM;
    for (;;) {
        if (cap - len < 4096) {
            if (cap >= CLI_MAX_STDIN) {
                free(buf);
                return S3_ETOOBIG;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return S3_ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, stdin);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(stdin)) {
        free(buf);
        return S3_EIO;
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return 0;
}

static int load_model(const char *path, int n_threads, const char *device, struct eng_model **m)
{
    struct s3_errinfo err = {0};
    struct eng_model_opts opts = {.n_threads = n_threads, .device = device};
    int rc = eng_model_load(path, &opts, m, &err);
    if (rc < 0)
        fprintf(stderr, "s3serve: cannot load model %s: %s\n", path,
                err.msg[0] ? err.msg : s3_strerror(rc));
    return rc;
}

static int tok_main(int argc, char **argv, int inverse)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"bos", no_argument, NULL, 'b'},
        {"eos", no_argument, NULL, 'e'},         {"special", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    const char *model = cli_default_model();
    int flags = 0, opt, status = 1;
    struct eng_model *m = NULL;
    char *in = NULL, *text = NULL;
    int32_t *ids = NULL;
    size_t in_len = 0, n = 0, cap = 0, len = 0;

    while ((opt = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'm': model = optarg; break;
        case 'b': flags |= ENG_TOK_BOS; break;
        case 'e': flags |= ENG_TOK_EOS; break;
        case 's': flags |= ENG_TOK_SPECIAL; break;
        case 'h':
            printf(inverse ? "usage: s3serve detokenize [--model M] [--special] < ids\n"
                             "  prints the bytes of the space-separated token ids on stdin;\n"
                             "  --special renders control tokens\n"
                           : "usage: s3serve tokenize [--model M] [--bos] [--eos] [--special] < text\n"
                             "  prints the token ids of the UTF-8 text on stdin;\n"
                             "  --special parses control-token text such as <|im_start|>\n");
            return 0;
        default: return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "s3serve: unexpected argument '%s' (input is read from stdin)\n",
                argv[optind]);
        return 2;
    }
    int rc = read_stdin(&in, &in_len);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot read stdin: %s\n", s3_strerror(rc));
        goto out;
    }
    if (load_model(model, 1, NULL, &m) < 0)
        goto out;
    const struct eng_tokenizer *t = eng_model_tok(m);
    if (!inverse) {
        rc = eng_tok_encode(t, in, in_len, flags, &ids, &n);
        if (rc < 0) {
            fprintf(stderr, "s3serve: cannot tokenize: %s\n", s3_strerror(rc));
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", (int)ids[i]);
        printf("\n");
        status = 0;
        goto out;
    }
    /* detokenize: whitespace-separated decimal ids */
    for (char *p = in;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
            p++;
        if (!*p)
            break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= eng_tok_n_vocab(t) ||
            (*end && *end != ' ' && *end != '\n' && *end != '\t' && *end != '\r')) {
            fprintf(stderr, "s3serve: bad token id near '%.20s' (expected integers in [0, %d))\n",
                    p, eng_tok_n_vocab(t));
            goto out;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            int32_t *nid = realloc(ids, cap * sizeof *ids);
            if (!nid)
                goto out;
            ids = nid;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    rc = eng_tok_decode(t, ids, n, flags & ENG_TOK_SPECIAL, &text, &len);
    if (rc < 0) {
        fprintf(stderr, "s3serve: cannot detokenize: %s\n", s3_strerror(rc));
        goto out;
    }
    fwrite(text, 1, len, stdout);
    status = 0;
out:
    free(in);
    free(ids);
    free(text);
    eng_model_free(m);
    return status;
}

int cli_tokenize(int argc, char **argv)
{
    return tok_main(argc, argv, 0);
}

int cli_detokenize(int argc, char **argv)
{
    return tok_main(argc, argv, 1);
}

static int emit_stdout(void *ud, const char *text, size_t len)
{
    (void)ud;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int parse_num(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "s3serve: --%s must be a number in [%g, %g], got '%s'\n", name, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_generate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},   {"prompt", required_argument, NULL, 'p'},
        {"chat", no_argument, NULL, 'c'},          {"system", required_argument, NULL, 'S'},
        {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 't'},
        {"top-p", required_argument, NULL, 'P'},   {"top-k", required_argument, NULL, 'k'},
        {"seed", required_argument, NULL, 's'},    {"stop", required_argument, NULL, 'x'},
        {"threads", required_argument, NULL, 'T'}, {"verbose", no_argument, NULL, 'v'},
        {"device", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *model = cli_default_model(), *prompt = NULL, *system = NULL, *device = NULL;
    const char *stops[16];
    size_t n_stop = 0;
    int chat = 0, verbose = 0, opt, status = 1;
    double max_tokens = 128, temp = 0, top_p = 1, top_k = 0, seed = 42, threads = 0;
    struct eng_model *m = NULL;
    struct eng_ctx *c = NULL;
    char *rendered = NULL, *in = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    struct s3_errinfo err = {0};

    while ((opt = getopt_long(argc, argv, "m:p:n:h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'c': chat = 1; break;
        case 'S': system = optarg; break;
        case 'n': bad = parse_num("max-tokens", optarg, 1, 1 << 20, &max_tokens); break;
        case 't': bad = parse_num("temperature", optarg, 0, 100, &temp); break;
        case 'P': bad = parse_num("top-p", optarg, 0, 1, &top_p); break;
        case 'k': bad = parse_num("top-k", optarg, 0, 1 << 30, &top_k); break;
        case 's': bad = parse_num("seed", optarg, 0, 9007199254740991.0, &seed); break;
        case 'T': bad = parse_num("threads", optarg, 0, 1024, &threads); break;
        case 'v': verbose = 1; break;
        case 'D': device = optarg; break;
        case 'x':
            if (n_stop == sizeof stops / sizeof stops[0]) {
                fprintf(stderr, "s3serve: at most 16 --stop strings\n");
                return 2;
            }
            stops[n_stop++] = optarg;
            break;
        case 'h':
            printf("usage: s3serve generate [--model M] [--prompt TEXT | stdin] [--chat]\n"
                   "         [--system TEXT] [--max-tokens N] [--temperature T] [--top-p P]\n"
                   "         [--top-k K] [--seed S] [--stop STR]... [--threads N] [--verbose]\n"
                   "         [--device cpu|cpu-f32|cuda]\n"
                   "  prints only the completion; --chat wraps the prompt as one user turn\n"
                   "  in the model's chat template; --verbose adds timings on stderr\n");
            return 0;
        default: return 2;
        }
        if (bad)
            return 2;
    }
    if (optind != argc) {
        fprintf(stderr, "s3serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!prompt) {
        size_t len;
        if (read_stdin(&in, &len) < 0) {
            fprintf(stderr, "s3serve: cannot read the prompt from stdin\n");
            return 1;
        }
        prompt = in;
    }
    if (load_model(model, (int)threads, device, &m) < 0)
        goto out;
    const struct eng_tokenizer *t = eng_model_tok(m);
    const char *text = prompt;
    if (chat) {
        struct eng_chat_msg msgs[2];
        size_t n_msgs = 0;
        if (system)
            msgs[n_msgs++] = (struct eng_chat_msg){"system", system};
        msgs[n_msgs++] = (struct eng_chat_msg){"user", prompt};
        if (eng_chat_apply(t, msgs, n_msgs, 1, &rendered, &err) < 0) {
            fprintf(stderr, "s3serve: %s\n", err.msg);
            goto out;
        }
        text = rendered;
    }
    int flags = ENG_TOK_SPECIAL | (eng_tok_add_bos(t) ? ENG_TOK_BOS : 0);
    if (eng_tok_encode(t, text, strlen(text), flags, &ids, &n_ids) < 0) {
        fprintf(stderr, "s3serve: cannot tokenize the prompt\n");
        goto out;
    }
    struct eng_ctx_opts copts = {0};
    if (eng_ctx_new(m, &copts, &c, &err) < 0) {
        fprintf(stderr, "s3serve: %s\n", err.msg);
        goto out;
    }
    if (n_ids + (size_t)max_tokens > (size_t)eng_ctx_n_ctx(c)) {
        fprintf(stderr,
                "s3serve: prompt (%zu tokens) + --max-tokens (%d) exceeds the context of %d "
                "tokens; shorten the prompt or lower --max-tokens\n",
                n_ids, (int)max_tokens, eng_ctx_n_ctx(c));
        goto out;
    }
    struct eng_gen_params gp = {
        .sample = {.temperature = (float)temp, .top_p = (float)top_p, .top_k = (int)top_k,
                   .seed = (uint64_t)seed},
        .max_tokens = (int)max_tokens,
        .stop = stops,
        .n_stop = n_stop,
    };
    struct eng_gen_result res = {0};
    if (eng_generate(c, ids, n_ids, &gp, emit_stdout, NULL, &res, &err) < 0) {
        fprintf(stderr, "\ns3serve: generation failed: %s\n", err.msg);
        goto out;
    }
    if (verbose)
        fprintf(stderr,
                "\nprompt_tokens=%d completion_tokens=%d prefill_ms=%.1f decode_ms=%.1f "
                "decode_tok_s=%.1f finish=%s\n",
                res.n_prompt, res.n_completion, res.prefill_ms, res.decode_ms,
                res.decode_ms > 0 ? res.n_completion * 1000.0 / res.decode_ms : 0.0,
                res.finish == ENG_FINISH_STOP ? "stop" : "length");
    status = 0;
out:
    free(in);
    free(rendered);
    free(ids);
    eng_ctx_free(c);
    eng_model_free(m);
    return status;
}
