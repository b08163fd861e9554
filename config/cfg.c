/* config/cfg.c - defaults < JSON file < environment < flags, validated once. */
#include "cfg.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define CFG_FILE_MAX ((size_t)1 << 20)

enum cfg_type { CFG_STR, CFG_INT, CFG_I64, CFG_KEYS, CFG_LEVEL };

struct cfg_key {
    const char *name;
    int type;
    size_t off;      /* offset of the field in struct cfg */
    size_t size;     /* CFG_STR: buffer size */
    int64_t min, max;
    const char *help;
};

#define F(field) offsetof(struct cfg, field)
#define SZ(field) sizeof(((struct cfg *)0)->field)

static const struct cfg_key cfg_keys[] = {
    {"host", CFG_STR, F(host), SZ(host), 0, 0, "listen address"},
    {"port", CFG_INT, F(port), 0, 0, 65535, "listen port (0 = any free port)"},
    {"model", CFG_STR, F(model), SZ(model), 0, 0, "GGUF model file"},
    {"model_id", CFG_STR, F(model_id), SZ(model_id), 0, 0,
     "model name clients use (default: file name without .gguf)"},
    {"device", CFG_STR, F(device), SZ(device), 0, 0, "compute device: cpu, cpu-f32 (f32 activations: the reference math, slower) or cuda"},
    {"db", CFG_STR, F(db), SZ(db), 0, 0, "index database file"},
    {"config", CFG_STR, F(config), SZ(config), 0, 0, "JSON configuration file"},
    {"api_keys", CFG_KEYS, F(api_keys), 0, 0, 0,
     "Bearer API keys, comma-separated (empty = no auth)"},
    {"max_body_bytes", CFG_I64, F(max_body_bytes), 0, 1024, (int64_t)1 << 34,
     "largest request body"},
    {"max_tokens_limit", CFG_INT, F(max_tokens_limit), 0, 1, 1 << 20,
     "largest max_tokens a request may ask for"},
    {"default_max_tokens", CFG_INT, F(default_max_tokens), 0, 1, 1 << 20,
     "max_tokens when a request gives none"},
    {"queue_max", CFG_INT, F(queue_max), 0, 1, 1 << 20,
     "generation requests waiting or running before 429"},
    {"request_timeout_ms", CFG_I64, F(request_timeout_ms), 0, 1, (int64_t)86400000,
     "per-request deadline in ms, queueing included"},
    {"threads", CFG_INT, F(threads), 0, 0, 1024, "engine threads (0 = all cores)"},
    {"n_ctx", CFG_INT, F(n_ctx), 0, 0, 1 << 22, "context to allocate (0 = model default)"},
    {"http_threads", CFG_INT, F(http_threads), 0, 1, 256, "HTTP polling threads"},
    {"max_connections", CFG_INT, F(max_connections), 0, 1, 1 << 20,
     "concurrent HTTP connections"},
    {"log_level", CFG_LEVEL, F(log_level), 0, 0, 3, "debug, info, warn or error"},
    {"sae", CFG_STR, F(sae), SZ(sae), 0, 0,
     "SAE file (default: models/sae-<model>.s3sae; BM25 only without one)"},
    {"tmp_dir", CFG_STR, F(tmp_dir), SZ(tmp_dir), 0, 0,
     "folder for spooled uploads (default: $TMPDIR or /tmp)"},
    {"max_document_bytes", CFG_I64, F(max_document_bytes), 0, 1024, (int64_t)1 << 34,
     "largest document upload"},
    {"ingest_queue_max", CFG_INT, F(ingest_queue_max), 0, 1, 1 << 20,
     "documents waiting or scanning before 429"},
    {"retrieval_budget", CFG_INT, F(retrieval_budget), 0, 16, 1 << 20,
     "evidence tokens for requests with documents that give no budget"},
    {"long_head_tokens", CFG_INT, F(long_head_tokens), 0, 0, 1 << 16,
     "over-long prompts: tokens kept from the start"},
    {"long_tail_tokens", CFG_INT, F(long_tail_tokens), 0, 16, 1024,
     "over-long prompts: tokens kept from the end (the question)"},
    {"long_cache_mb", CFG_INT, F(long_cache_mb), 0, 0, 1 << 20,
     "over-long prompts: MiB of scanned contexts kept for reuse (0 = none)"},
};

#define N_KEYS (sizeof cfg_keys / sizeof cfg_keys[0])

static const char *level_names[] = {"debug", "info", "warn", "error"};

void cfg_defaults(struct cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    snprintf(c->model, sizeof c->model, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    snprintf(c->device, sizeof c->device, "cpu");
    snprintf(c->db, sizeof c->db, "s3serve.db");
    c->max_body_bytes = (int64_t)8 << 20;
    c->max_tokens_limit = 4096;
    c->default_max_tokens = 512;
    c->queue_max = 64;
    c->request_timeout_ms = 1800000; /* a 128k-token prompt scans for minutes on a few cores */
    c->threads = 0;
    c->n_ctx = 0;
    c->http_threads = 2;
    c->max_connections = 1024;
    c->log_level = S3_LOG_INFO;
    c->max_document_bytes = (int64_t)64 << 20;
    c->ingest_queue_max = 64;
    c->retrieval_budget = 1024;
    c->long_head_tokens = 256;
    c->long_tail_tokens = 512;
    c->long_cache_mb = 256;
}

void cfg_deinit(struct cfg *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_api_keys; i++) {
        free(c->api_keys[i]);
        c->api_keys[i] = NULL;
    }
    c->n_api_keys = 0;
}

static const struct cfg_key *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strlen(cfg_keys[i].name) == len && !memcmp(cfg_keys[i].name, name, len))
            return &cfg_keys[i];
    return NULL;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s)
        return S3_EINVAL;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s)
        return S3_EINVAL;
    while (isspace((unsigned char)*end))
        end++;
    if (*end)
        return S3_EINVAL;
    *out = v;
    return 0;
}

static int add_keys(struct cfg *c, const char *value, struct s3_errinfo *err)
{
    const char *p = value;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        /* trim spaces around each key */
        const char *s = p, *e = p + len;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (e > s) {
            if (c->n_api_keys >= CFG_MAX_KEYS)
                return s3_errf(err, S3_EINVAL, "api_keys: more than %d keys", CFG_MAX_KEYS);
            if (e - s > 512)
                return s3_errf(err, S3_EINVAL, "api_keys: a key is longer than 512 bytes");
            char *k = strndup(s, (size_t)(e - s));
            if (!k)
                return s3_errf(err, S3_ENOMEM, "api_keys: out of memory");
            c->api_keys[c->n_api_keys++] = k;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

int cfg_set(struct cfg *c, const char *key, const char *value, struct s3_errinfo *err)
{
    const struct cfg_key *k = find_key(key, strlen(key));
    if (!k)
        return s3_errf(err, S3_ENOTFOUND, "unknown configuration key '%s'", key);
    char *field = (char *)c + k->off;
    int64_t v = 0;
    switch (k->type) {
    case CFG_STR:
        if (strlen(value) >= k->size)
            return s3_errf(err, S3_EINVAL, "%s: value longer than %zu bytes", key, k->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case CFG_KEYS:
        return add_keys(c, value, err);
    case CFG_LEVEL:
        for (int i = 0; i < 4; i++)
            if (!strcasecmp(value, level_names[i])) {
                *(int *)field = i;
                return 0;
            }
        if (parse_i64(value, &v) == 0 && v >= 0 && v <= 3) {
            *(int *)field = (int)v;
            return 0;
        }
        return s3_errf(err, S3_EINVAL, "%s: expected debug, info, warn or error, got '%s'", key,
                       value);
    case CFG_INT:
    case CFG_I64:
        if (parse_i64(value, &v) < 0)
            return s3_errf(err, S3_EINVAL, "%s: expected an integer, got '%s'", key, value);
        if (v < k->min || v > k->max)
            return s3_errf(err, S3_EINVAL, "%s: %lld is out of range [%lld, %lld]", key,
                           (long long)v, (long long)k->min, (long long)k->max);
        if (k->type == CFG_INT)
            *(int *)field = (int)v;
        else
            *(int64_t *)field = v;
        return 0;
    default:
        return s3_errf(err, S3_EINTERNAL, "%s: bad key type", key);
    }
}

/* ---- a small reader for one flat JSON object ------------------------------------------- */

struct jr {
    const char *p, *end;
    int line;
    struct s3_errinfo *err;
};

static void jr_ws(struct jr *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\r' || *r->p == '\n')) {
        if (*r->p == '\n')
            r->line++;
        r->p++;
    }
}

static int jr_fail(struct jr *r, const char *what)
{
    return s3_errf(r->err, S3_EINVAL, "config file: %s at line %d", what, r->line);
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Read a JSON string into out (cap bytes incl. NUL); \u escapes become UTF-8. */
static int jr_string(struct jr *r, char *out, size_t cap)
{
    size_t n = 0;
    if (r->p >= r->end || *r->p != '"')
        return jr_fail(r, "expected a string");
    r->p++;
    while (r->p < r->end && *r->p != '"') {
        unsigned ch = (unsigned char)*r->p++;
        char buf[4];
        size_t blen = 1;
        buf[0] = (char)ch;
        if (ch < 0x20)
            return jr_fail(r, "control character in string");
        if (ch == '\\') {
            if (r->p >= r->end)
                return jr_fail(r, "unterminated string");
            ch = (unsigned char)*r->p++;
            switch (ch) {
            case '"': case '\\': case '/': buf[0] = (char)ch; break;
            case 'b': buf[0] = '\b'; break;
            case 'f': buf[0] = '\f'; break;
            case 'n': buf[0] = '\n'; break;
            case 'r': buf[0] = '\r'; break;
            case 't': buf[0] = '\t'; break;
            case 'u': {
                unsigned cp = 0;
                if (r->end - r->p < 4)
                    return jr_fail(r, "bad \\u escape");
                for (int i = 0; i < 4; i++) {
                    int h = hexval((unsigned char)r->p[i]);
                    if (h < 0)
                        return jr_fail(r, "bad \\u escape");
                    cp = cp * 16 + (unsigned)h;
                }
                r->p += 4;
                if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF))
                    return jr_fail(r, "unsupported \\u escape");
                if (cp < 0x80) {
                    buf[0] = (char)cp;
                } else if (cp < 0x800) {
                    buf[0] = (char)(0xC0 | (cp >> 6));
                    buf[1] = (char)(0x80 | (cp & 0x3F));
                    blen = 2;
                } else {
                    buf[0] = (char)(0xE0 | (cp >> 12));
                    buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    buf[2] = (char)(0x80 | (cp & 0x3F));
                    blen = 3;
                }
                break;
            }
            default:
                return jr_fail(r, "bad escape in string");
            }
        }
        if (n + blen >= cap)
            return jr_fail(r, "string too long");
        memcpy(out + n, buf, blen);
        n += blen;
    }
    if (r->p >= r->end)
        return jr_fail(r, "unterminated string");
    r->p++;
    out[n] = 0;
    return 0;
}

/* A scalar value as text: string, number, true/false (-> "1"/"0"). */
static int jr_scalar(struct jr *r, char *out, size_t cap)
{
    if (r->p < r->end && *r->p == '"')
        return jr_string(r, out, cap);
    static const struct { const char *word, *text; } words[] = {{"true", "1"}, {"false", "0"}};
    for (size_t i = 0; i < 2; i++) {
        size_t wl = strlen(words[i].word);
        if ((size_t)(r->end - r->p) >= wl && !memcmp(r->p, words[i].word, wl)) {
            r->p += wl;
            snprintf(out, cap, "%s", words[i].text);
            return 0;
        }
    }
    size_t n = 0;
    while (r->p < r->end && (isdigit((unsigned char)*r->p) || *r->p == '-' || *r->p == '+' ||
                             *r->p == '.' || *r->p == 'e' || *r->p == 'E')) {
        if (n + 1 >= cap)
            return jr_fail(r, "number too long");
        out[n++] = *r->p++;
    }
    if (n == 0)
        return jr_fail(r, "expected a string, number, boolean or array of strings");
    out[n] = 0;
    /* integers only: a fraction would be silently truncated otherwise */
    if (strpbrk(out, ".eE"))
        return jr_fail(r, "only integer numbers are accepted");
    /* JSON's integer grammar: -?(0|[1-9][0-9]*), so no '+', leading zeros or stray signs */
    const char *d = out + (out[0] == '-');
    if (!isdigit((unsigned char)d[0]) || (d[0] == '0' && d[1]) || strpbrk(d, "+-"))
        return jr_fail(r, "malformed number");
    return 0;
}

int cfg_apply_json(struct cfg *c, const char *text, size_t len, struct s3_errinfo *err)
{
    enum { VMAX = 4096 };
    struct jr r = {text, text + len, 1, err};
    char key[128];
    char *val = malloc(VMAX);
    int rc = 0;
    if (!val)
        return s3_errf(err, S3_ENOMEM, "config file: out of memory");
    jr_ws(&r);
    if (r.p >= r.end || *r.p != '{') {
        rc = jr_fail(&r, "expected '{'");
        goto out;
    }
    r.p++;
    jr_ws(&r);
    if (r.p < r.end && *r.p == '}') {
        r.p++;
        goto tail;
    }
    for (;;) {
        jr_ws(&r);
        if ((rc = jr_string(&r, key, sizeof key)) < 0)
            goto out;
        jr_ws(&r);
        if (r.p >= r.end || *r.p != ':') {
            rc = jr_fail(&r, "expected ':'");
            goto out;
        }
        r.p++;
        jr_ws(&r);
        const struct cfg_key *k = find_key(key, strlen(key));
        if (!k) {
            rc = s3_errf(err, S3_EINVAL, "config file: unknown key '%s' at line %d", key, r.line);
            goto out;
        }
        if (r.p < r.end && *r.p == '[') {
            if (k->type != CFG_KEYS) {
                rc = s3_errf(err, S3_EINVAL, "config file: '%s' does not take an array", key);
                goto out;
            }
            r.p++;
            jr_ws(&r);
            if (r.p < r.end && *r.p == ']') {
                r.p++;
            } else {
                for (;;) {
                    jr_ws(&r);
                    if ((rc = jr_string(&r, val, VMAX)) < 0)
                        goto out;
                    if (strchr(val, ',')) {
                        rc = s3_errf(err, S3_EINVAL, "config file: an API key contains ','");
                        goto out;
                    }
                    if ((rc = cfg_set(c, key, val, err)) < 0)
                        goto out;
                    jr_ws(&r);
                    if (r.p < r.end && *r.p == ',') {
                        r.p++;
                        continue;
                    }
                    if (r.p < r.end && *r.p == ']') {
                        r.p++;
                        break;
                    }
                    rc = jr_fail(&r, "expected ',' or ']'");
                    goto out;
                }
            }
        } else {
            int was_string = r.p < r.end && *r.p == '"';
            if ((rc = jr_scalar(&r, val, VMAX)) < 0)
                goto out;
            if ((k->type == CFG_STR || k->type == CFG_KEYS) && !was_string) {
                rc = s3_errf(err, S3_EINVAL, "config file: '%s' must be a string", key);
                goto out;
            }
            if ((rc = cfg_set(c, key, val, err)) < 0)
                goto out;
        }
        jr_ws(&r);
        if (r.p < r.end && *r.p == ',') {
            r.p++;
            continue;
        }
        if (r.p < r.end && *r.p == '}') {
            r.p++;
            break;
        }
        rc = jr_fail(&r, "expected ',' or '}'");
        goto out;
    }
tail:
    jr_ws(&r);
    if (r.p != r.end)
        rc = jr_fail(&r, "trailing characters after the object");
out:
    free(val);
    return rc;
}

/* ---- sources ---------------------------------------------------------------------------- */

/* "--max-body-bytes" -> "max_body_bytes" (into out, cap bytes); 0 on success. */
static int flag_to_key(const char *flag, size_t len, char *out, size_t cap)
{
    if (len >= cap)
        return S3_EINVAL;
    for (size_t i = 0; i < len; i++)
        out[i] = flag[i] == '-' ? '_' : flag[i];
    out[len] = 0;
    return 0;
}

/* Walk the flags; when only_config, apply nothing but remember --config's value. */
static int apply_flags(struct cfg *c, int argc, char **argv, int only_config,
                       const char **config_path, struct s3_errinfo *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char key[64];
        const char *val;
        if (strncmp(a, "--", 2) != 0 || !a[2])
            return s3_errf(err, S3_EINVAL, "unexpected argument '%s'", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (flag_to_key(name, nlen, key, sizeof key) < 0 || !find_key(key, strlen(key)))
            return s3_errf(err, S3_EINVAL, "unknown option '--%.*s'", (int)nlen, name);
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc)
                return s3_errf(err, S3_EINVAL, "option '%s' needs a value", a);
            val = argv[++i];
        }
        if (!strcmp(key, "config")) {
            *config_path = val;
            if (only_config)
                continue;
        }
        if (only_config)
            continue;
        int rc = cfg_set(c, key, val, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int apply_env(struct cfg *c, cfg_getenv_fn get, struct s3_errinfo *err)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        char name[64] = "S3_";
        size_t n = strlen(cfg_keys[i].name);
        for (size_t j = 0; j < n && j + 4 < sizeof name; j++)
            name[3 + j] = (char)toupper((unsigned char)cfg_keys[i].name[j]);
        name[3 + n] = 0;
        const char *v = get(name);
        if (!v)
            continue;
        int rc = cfg_set(c, cfg_keys[i].name, v, err);
        if (rc < 0) {
            char msg[sizeof err->msg];
            if (!err)
                return rc;
            snprintf(msg, sizeof msg, "%s", err->msg);
            return s3_errf(err, rc, "environment %s: %s", name, msg);
        }
    }
    return 0;
}

static const char *plain_getenv(const char *name)
{
    return getenv(name);
}

int cfg_load(struct cfg *c, int argc, char **argv, cfg_getenv_fn getenv_fn,
             struct s3_errinfo *err)
{
    cfg_getenv_fn get = getenv_fn ? getenv_fn : plain_getenv;
    const char *path = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc;

    cfg_defaults(c);
    /* the file is the lowest source, but flags or the environment name it */
    if ((rc = apply_flags(c, argc, argv, 1, &path, err)) < 0)
        goto out;
    if (!path) {
        path = get("S3_CONFIG");
        if (path && !*path)
            path = NULL;
    }
    if (path) {
        struct s3_errinfo ferr = {0};
        rc = s3_read_file(path, CFG_FILE_MAX, &text, &len, &ferr);
        if (rc < 0) {
            rc = s3_errf(err, rc == S3_ETOOBIG ? S3_EINVAL : S3_EIO,
                         "cannot read config file '%s': %s", path, ferr.msg);
            goto out;
        }
        if ((rc = cfg_apply_json(c, text, len, err)) < 0)
            goto out;
    }
    if ((rc = apply_env(c, get, err)) < 0)
        goto out;
    if ((rc = apply_flags(c, argc, argv, 0, &path, err)) < 0)
        goto out;
    if (path && strlen(path) < sizeof c->config)
        snprintf(c->config, sizeof c->config, "%s", path);
    if (!c->model_id[0]) {
        const char *base = strrchr(c->model, '/');
        base = base ? base + 1 : c->model;
        size_t bl = strlen(base);
        if (bl > 5 && !strcmp(base + bl - 5, ".gguf"))
            bl -= 5;
        if (bl >= sizeof c->model_id)
            bl = sizeof c->model_id - 1;
        memcpy(c->model_id, base, bl);
        c->model_id[bl] = 0;
    }
    rc = cfg_validate(c, err);
out:
    free(text);
    if (rc < 0)
        cfg_deinit(c);
    return rc;
}

int cfg_validate(const struct cfg *c, struct s3_errinfo *err)
{
    if (!c->host[0])
        return s3_errf(err, S3_EINVAL, "host: must not be empty");
    if (!c->model[0])
        return s3_errf(err, S3_EINVAL, "model: must not be empty");
    if (!c->model_id[0])
        return s3_errf(err, S3_EINVAL, "model_id: must not be empty");
    if (strcmp(c->device, "cpu") != 0 && strcmp(c->device, "cpu-f32") != 0 &&
        strcmp(c->device, "cuda") != 0)
        return s3_errf(err, S3_EINVAL, "device: must be cpu, cpu-f32 or cuda, got '%s'",
                       c->device);
    for (const char *p = c->model_id; *p; p++)
        if ((unsigned char)*p < 0x21 || *p == '"' || *p == '\\')
            return s3_errf(err, S3_EINVAL, "model_id: spaces, quotes and control characters "
                                           "are not allowed");
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct cfg_key *k = &cfg_keys[i];
        int64_t v;
        if (k->type == CFG_INT)
            v = *(const int *)((const char *)c + k->off);
        else if (k->type == CFG_I64)
            v = *(const int64_t *)((const char *)c + k->off);
        else
            continue;
        if (v < k->min || v > k->max)
            return s3_errf(err, S3_EINVAL, "%s: %lld is out of range [%lld, %lld]", k->name,
                           (long long)v, (long long)k->min, (long long)k->max);
    }
    if (c->default_max_tokens > c->max_tokens_limit)
        return s3_errf(err, S3_EINVAL, "default_max_tokens (%d) exceeds max_tokens_limit (%d)",
                       c->default_max_tokens, c->max_tokens_limit);
    for (size_t i = 0; i < c->n_api_keys; i++)
        if (strlen(c->api_keys[i]) < 8)
            return s3_errf(err, S3_EINVAL, "api_keys: key %zu is shorter than 8 characters",
                           i + 1);
    return 0;
}

void cfg_mask_key(const char *key, char out[8])
{
    size_t n = strlen(key);
    if (n < 8)
        snprintf(out, 8, "***");
    else
        snprintf(out, 8, "%.3s***", key);
}

void cfg_print(const struct cfg *c, FILE *f)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct cfg_key *k = &cfg_keys[i];
        const char *base = (const char *)c + k->off;
        fprintf(f, "config %s=", k->name);
        switch (k->type) {
        case CFG_STR: fprintf(f, "%s", base); break;
        case CFG_INT: fprintf(f, "%d", *(const int *)base); break;
        case CFG_I64: fprintf(f, "%lld", (long long)*(const int64_t *)base); break;
        case CFG_LEVEL: {
            int lv = *(const int *)base;
            fprintf(f, "%s", level_names[lv < 0 ? 0 : lv > 3 ? 3 : lv]);
            break;
        }
        case CFG_KEYS:
            for (size_t j = 0; j < c->n_api_keys; j++) {
                char m[8];
                cfg_mask_key(c->api_keys[j], m);
                fprintf(f, "%s%s", j ? "," : "", m);
            }
            if (!c->n_api_keys)
                fprintf(f, "(none: no auth)");
            break;
        default: break;
        }
        fputc('\n', f);
    }
    fflush(f);
}

void cfg_usage(FILE *f)
{
    struct cfg d;
    cfg_defaults(&d);
    fprintf(f, "options (flag / environment / config file key; flags win over environment,\n"
               "environment wins over the file):\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct cfg_key *k = &cfg_keys[i];
        char flag[64], env[64];
        size_t n = strlen(k->name);
        for (size_t j = 0; j <= n && j < sizeof flag; j++)
            flag[j] = k->name[j] == '_' ? '-' : k->name[j];
        snprintf(env, sizeof env, "S3_");
        for (size_t j = 0; j <= n && j + 3 < sizeof env; j++)
            env[3 + j] = (char)toupper((unsigned char)k->name[j]);
        fprintf(f, "  --%-20s %-24s %s\n", flag, env, k->help);
    }
}
