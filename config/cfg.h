/* config/cfg.h - one configuration struct for the whole process.
 *
 * Sources, lowest precedence first: built-in defaults < JSON file < environment (S3_<KEY>)
 * < command-line flags (--<key>, underscores may be written as dashes). Every key has one
 * name in all three places, e.g. "max_body_bytes", S3_MAX_BODY_BYTES, --max-body-bytes.
 * The result is validated once; after cfg_load() returns it is never modified (a reload
 * builds a new struct). No JSON library is involved: the file format is one flat object
 * whose values are strings, numbers, booleans or arrays of strings.
 *
 * Usage:
 *     struct cfg c;  struct s3_errinfo err;
 *     if (cfg_load(&c, argc, argv, NULL, &err) < 0) { fprintf(stderr, "%s\n", err.msg); ... }
 *     cfg_print(&c, stdout);         // effective values, API keys masked
 *     ...
 *     cfg_deinit(&c);
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "s3.h"

#define CFG_PATH_MAX 1024
#define CFG_MAX_KEYS 64

struct cfg {
    char host[256];             /* listen address (IPv4 or IPv6 literal) */
    int port;                   /* 0 = any free port */
    char model[CFG_PATH_MAX];   /* GGUF file */
    char model_id[128];         /* name reported by /v1/models; "" = file name minus .gguf */
    char device[16];            /* compute device: "cpu" or "cuda" */
    char db[CFG_PATH_MAX];      /* index database */
    char config[CFG_PATH_MAX];  /* the file read, "" when none */
    char *api_keys[CFG_MAX_KEYS]; /* owned; empty = no auth */
    size_t n_api_keys;
    int64_t max_body_bytes;     /* request body cap (413 above) */
    int max_tokens_limit;       /* largest max_tokens a request may ask for */
    int default_max_tokens;     /* used when a request gives none */
    int queue_max;              /* generation requests waiting or running (429 above) */
    int64_t request_timeout_ms; /* per-request deadline, queueing included */
    int threads;                /* engine compute threads, 0 = all cores */
    int n_ctx;                  /* context window to allocate, 0 = model default */
    int http_threads;           /* libmicrohttpd polling threads */
    int max_connections;
    int log_level;              /* 0 debug .. 3 error */
    /* documents and retrieval */
    char sae[CFG_PATH_MAX];     /* SAE file; "" = models/sae-<model name>.s3sae (BM25 only
                                 * when that file does not exist) */
    char tmp_dir[CFG_PATH_MAX]; /* uploaded documents are spooled here; "" = $TMPDIR or /tmp */
    int64_t max_document_bytes; /* POST /v1/documents body cap (413 above) */
    int ingest_queue_max;       /* documents waiting or scanning (429 above) */
    int retrieval_budget;       /* evidence tokens when a request with documents gives none */
    int long_head_tokens;       /* over-long prompts: tokens kept from the start ... */
    int long_tail_tokens;       /* ... and from the end (the question) */
    int long_cache_mb;          /* scanned middles of long prompts kept for reuse, 0 = off */
};

/* Lookup used for the environment; NULL means getenv. Returns a borrowed string or NULL. */
typedef const char *(*cfg_getenv_fn)(const char *name);

/* Fill c with the built-in defaults (no allocation). */
void cfg_defaults(struct cfg *c);

/* Defaults, then the file named by --config / S3_CONFIG (if any), then the environment, then
 * argv[1..] flags; then validation. argv[0] is skipped. Unknown flags, unknown file keys and
 * bad values are errors (S3_EINVAL, S3_EIO for an unreadable file) with text in err. On error
 * c is left deinitialised. `--help` is not handled here. */
int cfg_load(struct cfg *c, int argc, char **argv, cfg_getenv_fn getenv_fn,
             struct s3_errinfo *err);

/* Set one key from its text form (as in the environment or a flag). api_keys accepts a
 * comma-separated list and appends. Errors: S3_ENOTFOUND (unknown key), S3_EINVAL. */
int cfg_set(struct cfg *c, const char *key, const char *value, struct s3_errinfo *err);

/* Parse a JSON object held in text[0..len) and apply its keys with cfg_set(). */
int cfg_apply_json(struct cfg *c, const char *text, size_t len, struct s3_errinfo *err);

/* Check ranges and relations between keys. */
int cfg_validate(const struct cfg *c, struct s3_errinfo *err);

/* Print the effective values, one "key=value" line each, API keys masked. */
void cfg_print(const struct cfg *c, FILE *f);

/* Mask a secret for printing: keeps at most the first 3 characters, then "***" (out needs
 * 8 bytes). Keys shorter than 8 characters show only "***". */
void cfg_mask_key(const char *key, char out[8]);

/* Release owned strings (accepts a zeroed or deinitialised struct). */
void cfg_deinit(struct cfg *c);

/* Print the list of keys with their flag/env names and defaults (for --help). */
void cfg_usage(FILE *f);
