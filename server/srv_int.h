/* server/srv_int.h - internals of the HTTP server. Only server/ includes this file.
 *
 * Threads (STYLE.md 3.6):
 *   - MHD polling threads: parse, validate, answer quick routes, enqueue jobs, suspend the
 *     connection. They never block on the engine.
 *   - the loop thread (libuv): owns the job FIFO, per-job deadline timers and the periodic
 *     disconnect check; hands one job at a time to the worker.
 *   - the engine worker: owns the model and its eng_ctx; runs jobs by kind.
 * Cross-thread traffic: an MPSC inbox (mutex + list) drained by the loop after uv_async_send;
 * the worker takes jobs from a one-slot mailbox (mutex + condvar). A request's reply state is
 * shared by the worker and the MHD threads under the request's mutex.
 *
 * Request lifetime: struct srv_req is reference counted. The MHD side holds one reference
 * from the first access-handler call until the request-completed callback; a job holds one
 * from submission until the loop retires it.
 *
 * json_t never leaves server/. */
#pragma once

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cfg.h"
#include "engine.h"
#include "idx.h"
#include "s3.h"
#include "scan.h"

/* ---- byte buffer with a hard cap ------------------------------------------------------- */

struct srv_buf {
    char *data;          /* owned; NUL-terminated when non-NULL */
    size_t len, cap;
    size_t max;          /* hard cap on len; 0 = SIZE_MAX */
};

/* Append n bytes. S3_ETOOBIG past max (nothing appended), S3_ENOMEM. Any thread (caller
 * serialises). */
int srv_buf_append(struct srv_buf *b, const void *p, size_t n);
int srv_buf_printf(struct srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_reset(struct srv_buf *b);   /* len = 0, keeps memory */
void srv_buf_deinit(struct srv_buf *b);  /* frees; accepts a zeroed buffer */

/* ---- errors: S3_E* / validation failures -> HTTP status + OpenAI error object ------------ */

struct srv_error {
    int status;          /* HTTP status */
    const char *type;    /* OpenAI "type" (static string) */
    const char *code;    /* OpenAI "code" (static string) or NULL -> null */
    char param[64];      /* "" -> null */
    char message[512];
};

/* Fill e and return S3_EINVAL (so `return srv_errorf(...)` works in validators). param and
 * code may be NULL. Any thread. */
int srv_errorf(struct srv_error *e, int status, const char *type, const char *code,
               const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Map an S3_E* code with its detail text to a status and type (400/404/413/429/499/500/503/
 * 504). msg may be NULL (then s3_strerror). */
void srv_error_from_code(struct srv_error *e, int code, const char *msg);
/* {"error":{"message","type","param","code"}}: new reference. */
json_t *srv_error_json(const struct srv_error *e);
/* The same, serialised: new string (free()), length in *len. NULL on ENOMEM. */
char *srv_error_body(const struct srv_error *e, size_t *len);

/* ---- OpenAI request parsing ------------------------------------------------------------ */

enum srv_gen_kind { SRV_GEN_CHAT = 0, SRV_GEN_TEXT = 1 };

#define SRV_MAX_STOP     4
#define SRV_MAX_STOP_LEN 256
#define SRV_MAX_MESSAGES 4096

struct srv_msg {
    char *role;          /* owned: "system", "user" or "assistant" */
    char *content;       /* owned */
};

/* A validated /v1/chat/completions or /v1/completions request. All pointers owned. */
struct srv_gen_req {
    int kind;                /* enum srv_gen_kind */
    char *model;             /* NULL when absent */
    struct srv_msg *msgs;    /* SRV_GEN_CHAT: n_msgs >= 1 */
    size_t n_msgs;
    char *prompt;            /* SRV_GEN_TEXT: text (NULL when prompt_ids) */
    int32_t *prompt_ids;     /* SRV_GEN_TEXT: token ids given by the client */
    size_t n_prompt_ids;
    int max_tokens;          /* 0 = not given */
    double temperature;      /* [0, 2], OpenAI default 1 */
    double top_p;            /* (0, 1], default 1 */
    int has_seed;
    uint64_t seed;
    char *stop[SRV_MAX_STOP];
    size_t n_stop;
    int stream;
    int include_usage;       /* stream_options.include_usage */
    /* extensions */
    int64_t *docs;           /* "documents": ids, (n_docs); NULL when absent */
    size_t n_docs;
    struct srv_retrieval {
        int mode;            /* enum idx_mode; -1 = not given */
        int budget;          /* evidence tokens; 0 = not given */
    } ret;
};

struct srv_limits {
    int max_tokens_limit;    /* max_tokens above this -> 400 */
    const char *model_id;    /* accepted "model" value; NULL = any */
    int n_vocab;             /* token ids must be < n_vocab; 0 = unchecked */
    int max_budget;          /* retrieval.budget above this -> 400; 0 = unchecked */
    int no_sae;              /* 1: retrieval mode "s3" is refused (no SAE loaded) */
};

#define SRV_MAX_DOCS 64      /* documents per request */

/* "doc_<n>" (n > 0) -> n. S3_EINVAL for anything else. Any thread. */
int srv_doc_id_parse(const char *s, int64_t *id);
/* n -> "doc_<n>" (out: 32 bytes). Returns out. */
const char *srv_doc_id_str(int64_t id, char out[32]);
/* The "documents" and "retrieval" fields of a request object (either may be absent).
 * *docs is new (free()) or NULL. Errors: 400 invalid_type / invalid_value /
 * array_above_max_length, 404 document_not_found for a malformed id. */
int srv_docs_field_parse(json_t *root, const struct srv_limits *lim, int64_t **docs,
                         size_t *n_docs, struct srv_error *e);
int srv_retrieval_field_parse(json_t *root, const struct srv_limits *lim,
                              struct srv_retrieval *r, struct srv_error *e);

/* A validated POST /v1/retrieve body. All pointers owned. */
struct srv_retrieve_req {
    int64_t *docs;
    size_t n_docs;           /* >= 1 */
    char *query;             /* non-empty */
    struct srv_retrieval ret;
};
int srv_retrieve_parse(const char *body, size_t len, const struct srv_limits *lim,
                       struct srv_retrieve_req *out, struct srv_error *e);
void srv_retrieve_req_deinit(struct srv_retrieve_req *q);

/* A JSON document upload {"text": "...", "name": "..."}: *text and *name new (free()),
 * *name NULL when absent. 400 for malformed JSON, a missing or non-string text, a bad name. */
int srv_doc_json_parse(const char *body, size_t len, char **text, size_t *n_text, char **name,
                       struct srv_error *e);
/* Check an uploaded text: 400 invalid_value (param) for empty, binary or invalid UTF-8 text,
 * the message naming the byte offset. Any thread. */
int srv_text_check(const char *text, size_t len, const char *param, struct srv_error *e);
/* Tenant of a request: "" without configured keys, else "k_" + 16 hex digits of the sha256
 * of the bearer token (out: 64 bytes). Call only after srv_auth_check accepted it. */
void srv_tenant_of(const struct cfg *c, const char *authorization, char out[64]);
/* Over-long prompts: cut points of a head of about head_tok tokens and a tail of about
 * tail_tok tokens, given the byte end of every token (tok_end[i] = end of token i, n tokens,
 * ascending, tok_end[n-1] = len). Cuts move to a line break (or a space) near the boundary,
 * never inside a UTF-8 sequence. *head_end <= *tail_start. Any thread. */
void srv_long_split(const char *text, size_t len, const size_t *tok_end, size_t n, int head_tok,
                    int tail_tok, size_t *head_end, size_t *tail_start);

/* Parse and validate a request body. On success *out is filled (release with
 * srv_gen_req_deinit). On failure returns S3_EINVAL (or S3_ENOMEM) and fills e with the
 * status and OpenAI error; *out is left deinitialised. Any thread. */
int srv_gen_parse(int kind, const char *body, size_t len, const struct srv_limits *lim,
                  struct srv_gen_req *out, struct srv_error *e);
void srv_gen_req_deinit(struct srv_gen_req *g);

/* ---- response objects and SSE framing -------------------------------------------------- */

struct srv_resp_meta {
    int kind;                /* enum srv_gen_kind */
    const char *id;          /* "chatcmpl-..." / "cmpl-..." (borrowed) */
    long long created;       /* unix seconds */
    const char *model;       /* borrowed */
};

/* A JSON string from bytes that may hold invalid UTF-8 (replaced by U+FFFD): new ref. */
json_t *srv_json_text(const char *s, size_t n);
/* "stop" / "length" for an enum eng_finish value. */
const char *srv_finish_reason(int finish);
/* Streaming chunk with a piece of text (first: chat delta also carries the role) and an
 * optional finish_reason (NULL -> null). with_usage adds "usage": null. New ref. */
json_t *srv_chunk_new(const struct srv_resp_meta *m, const char *text, size_t len, int first,
                      const char *finish_reason, int with_usage);
/* Final streaming chunk carrying usage and an empty choices array. New ref. */
json_t *srv_usage_chunk_new(const struct srv_resp_meta *m, int n_prompt, int n_completion);
/* Whole non-streaming response. New ref. */
json_t *srv_completion_new(const struct srv_resp_meta *m, const char *text, size_t len,
                           const char *finish_reason, int n_prompt, int n_completion);
/* Append "data: <compact json>\n\n" to b; steals obj (also on error). */
int srv_sse_append_json(struct srv_buf *b, json_t *obj);
/* Append "data: [DONE]\n\n". */
int srv_sse_append_done(struct srv_buf *b);

/* ---- routes and metrics ---------------------------------------------------------------- */

enum srv_route_id {
    SRV_ROUTE_CHAT = 0,
    SRV_ROUTE_COMPLETIONS,
    SRV_ROUTE_MODELS,
    SRV_ROUTE_HEALTH,
    SRV_ROUTE_METRICS,
    SRV_ROUTE_DOCUMENTS,
    SRV_ROUTE_RETRIEVE,
    SRV_ROUTE_OTHER,         /* unknown paths (404) */
    SRV_ROUTE__N
};

enum { SRV_M_GET = 1, SRV_M_POST = 2, SRV_M_DELETE = 4, SRV_M_HEAD = 8 };

struct srv;
struct srv_req;

/* A route handler runs on an MHD thread once the whole body is in r->body. It either queues
 * a response (srv_reply_*) or submits a job and suspends (srv_submit). */
typedef enum MHD_Result (*srv_handler_fn)(struct srv *s, struct srv_req *r);

struct srv_route {
    const char *path;        /* exact, or ending in "/<star>": one more non-empty segment */
    int methods;             /* SRV_M_* mask */
    int id;                  /* enum srv_route_id (metrics label) */
    int open;                /* 1 = no API key needed */
    srv_handler_fn fn;
    int spool;               /* 1 = the body goes to a temporary file (r->spool_fd), capped by
                              * max_document_bytes instead of max_body_bytes */
};

/* Find the route for path; *allowed receives the methods of the path (0 = unknown path).
 * Returns NULL when no route of that path takes method (a SRV_M_* bit). */
const struct srv_route *srv_route_find(const char *path, int method, int *allowed,
                                       const char **arg);
/* Match path against a route pattern; *arg receives the "*" segment (borrowed from path). */
int srv_path_match(const char *pattern, const char *path, const char **arg);
/* "GET, HEAD" style list for an Allow header (out: cap bytes). */
void srv_methods_str(int methods, char *out, size_t cap);
const char *srv_route_label(int id);

#define SRV_N_STATUS  15
#define SRV_N_BUCKETS 12

struct srv_metrics {
    atomic_uint_fast64_t requests[SRV_ROUTE__N][SRV_N_STATUS];
    atomic_uint_fast64_t lat_bucket[SRV_ROUTE__N][SRV_N_BUCKETS]; /* non-cumulative */
    atomic_uint_fast64_t lat_count[SRV_ROUTE__N];
    atomic_uint_fast64_t lat_sum_us[SRV_ROUTE__N];
    atomic_uint_fast64_t tokens_in, tokens_out;
    atomic_uint_fast64_t gen_canceled, gen_timeouts, gen_rejected;
    atomic_int queue_depth;  /* jobs waiting for the worker */
    atomic_int running;      /* jobs on the worker */
};

/* Document figures for /metrics (read when rendering). */
struct srv_doc_metrics {
    int64_t n_ready, n_scanning, n_failed; /* documents in the index, all tenants */
    int64_t index_bytes;                   /* idx_db_bytes */
    int ingest_queued, ingest_running;
    uint64_t scan_tokens;                  /* positions scanned since start */
    double scan_seconds;                   /* time spent scanning since start */
    double scan_tps_last;                  /* tokens/s of the last (or current) scan */
};

/* Status code -> index into requests[][] (the last index collects others). */
int srv_status_index(int status);
/* Count one finished request. Any thread. */
void srv_metrics_request(struct srv_metrics *m, int route, int status, double seconds);
/* Prometheus text exposition format. ready: 1 when the model is loaded. dm: NULL = no
 * document figures. */
int srv_metrics_render(struct srv_metrics *m, int ready, const struct srv_doc_metrics *dm,
                       struct srv_buf *out);

/* ---- jobs and requests ----------------------------------------------------------------- */

/* Kinds of work the engine worker runs. New kinds (document ingestion, retrieval) add an
 * entry here and a runner in srv_job_runners[]. */
enum srv_job_kind { SRV_JOB_GENERATE = 0, SRV_JOB_RETRIEVE, SRV_JOB_DOC_DELETE, SRV_JOB__N };

enum srv_phase {
    SRV_PH_NEW = 0,          /* body being read / handler not run yet */
    SRV_PH_WAIT,             /* job submitted, no reply yet */
    SRV_PH_REPLY,            /* reply_* holds a whole response to queue */
    SRV_PH_STREAM,           /* 200 + SSE; bytes flow through sse */
};

enum srv_cancel { SRV_CANCEL_NONE = 0, SRV_CANCEL_CLIENT = 1, SRV_CANCEL_DEADLINE = 2,
                  SRV_CANCEL_SHUTDOWN = 3 };

enum srv_inbox_msg { SRV_IN_SUBMIT = 1, SRV_IN_DONE = 2 };

struct srv_req {
    /* -- set on the MHD thread before submission, read-only afterwards -- */
    struct srv *srv;
    struct MHD_Connection *conn;
    const struct srv_route *route;
    const char *path_arg;    /* borrowed from MHD's url: valid until completion */
    int method;              /* SRV_M_* */
    uint64_t id;
    double t_start_ms;
    int fd;                  /* client socket, for the disconnect check */
    struct srv_buf body;
    size_t body_discarded;
    int body_toobig;
    int status;              /* MHD thread: status of the queued response, 0 = none */
    int admitted;            /* holds a queue_max slot (released at completion) */
    int spool_fd;            /* route->spool: the body on disk (unlinked file), -1 = none */
    int64_t spool_bytes;
    char tenant[64];         /* documents the request may see (srv_tenant_of) */

    /* -- the job: loop thread while queued, worker while it runs -- */
    int kind;                /* enum srv_job_kind */
    struct srv_gen_req gen;  /* SRV_JOB_GENERATE */
    struct srv_retrieve_req rq; /* SRV_JOB_RETRIEVE */
    int64_t doc_id;          /* SRV_JOB_DOC_DELETE */
    struct srv_req *in_next; /* inbox link (inbox lock) */
    int in_msg;              /* enum srv_inbox_msg */
    struct srv_req *q_next;  /* loop FIFO link (loop thread) */
    double deadline_ms;      /* absolute, s3_now_ms() clock */
    uv_timer_t timer;        /* deadline (loop thread) */
    int n_prompt, n_completion; /* worker, read by the loop after DONE */

    /* -- shared between the worker/loop and MHD threads, under mu -- */
    pthread_mutex_t mu;
    int suspended;           /* we suspended the connection and owe a resume */
    int closed;              /* MHD completed the request: conn must not be touched */
    int phase;               /* enum srv_phase */
    int reply_status;
    char *reply;             /* SRV_PH_REPLY body (owned) */
    size_t reply_len;
    struct srv_buf sse;      /* SRV_PH_STREAM: bytes not yet handed to MHD */
    size_t sse_off;
    int sse_done;

    int cancel;              /* enum srv_cancel; __atomic access; the engine polls it */
    atomic_int refs;
};

void srv_req_ref(struct srv_req *r);
void srv_req_unref(struct srv_req *r);   /* frees at zero */

/* Worker/loop side: hand a whole reply to the connection (takes body), resume it. */
void srv_req_reply(struct srv_req *r, int status, char *body, size_t len);
void srv_req_reply_error(struct srv_req *r, const struct srv_error *e);
/* Worker: switch to streaming (200 + SSE) and resume. */
void srv_req_stream_start(struct srv_req *r);
/* Worker: append SSE bytes from b (b is emptied); done=1 ends the stream. Returns nonzero
 * when the client is gone or the backlog cap is hit (the generation should stop). */
int srv_req_stream_push(struct srv_req *r, struct srv_buf *b, int done);

/* ---- engine access (a vtable so that tests can run the server without a model) --------- */

struct srv_model_info {
    int n_ctx;               /* context allocated */
    int n_vocab;
    char arch[32];
    int has_sae;             /* 1: an SAE is loaded (retrieval modes s3 and hybrid) */
    char model_sha256[65];   /* document rows are tagged with these two (srv_scan_document) */
    char sae_hash[65];
    char sae_path[256];      /* for messages */
};

struct srv_engine_ops {
    /* Load the model (worker thread). */
    int (*open)(void **eng, const struct cfg *c, struct srv_model_info *info,
                struct s3_errinfo *err);
    void (*close)(void *eng);
    /* Render (chat template) and tokenize a request: *ids new (free()). */
    int (*tokenize)(void *eng, const struct srv_gen_req *g, int32_t **ids, size_t *n_ids,
                    struct s3_errinfo *err);
    /* Generate; cancel is polled (nonzero stops). Same contract as eng_generate. */
    int (*generate)(void *eng, const int32_t *ids, size_t n_ids, const struct eng_gen_params *p,
                    const int *cancel, eng_emit_fn emit, void *ud, struct eng_gen_result *res,
                    struct s3_errinfo *err);
    /* (optional) documents; an engine without them answers 503 on the document routes. */
    /* Scan text into db (srv_scan_document) with scanner `which` (enum srv_scanner). */
    int (*scan)(void *eng, int which, struct idx_db *db, const char *text, size_t len,
                const struct srv_scan_doc_opts *o, int64_t *doc, struct srv_scan_stats *st,
                struct s3_errinfo *err);
    /* Query features of a question (srv_scan_query); S3_ENOTFOUND without an SAE. */
    int (*query)(void *eng, const char *q, size_t len, struct idx_qfeat **feats,
                 size_t *n_feats, struct s3_errinfo *err);
    /* Plain-text tokens of text: *tok_end new (free()), the byte end of each token. */
    int (*token_ends)(void *eng, const char *text, size_t len, size_t **tok_end, size_t *n,
                      struct s3_errinfo *err);
};

/* Scanners of the engine: documents (ingestion jobs) and transient text (over-long prompts,
 * which may run while an ingestion waits between chunks). Queries use the second one. */
enum srv_scanner { SRV_SCANNER_DOCS = 0, SRV_SCANNER_TRANSIENT = 1 };

extern const struct srv_engine_ops srv_engine_default; /* srv_engine.c: engine/engine.h */

/* ---- documents (srv_docs.c) -------------------------------------------------------------- */

enum srv_doc_state { SRV_DOC_QUEUED = 0, SRV_DOC_SCANNING, SRV_DOC_READY, SRV_DOC_FAILED,
                     SRV_DOC_DELETED };

/* An upload of this process: from POST until its scan ends (kept a while after, for its
 * figures and errors). Fields after `state` are under srv.w_mu. */
struct srv_doc_job {
    int64_t id;              /* document row (made at POST, status 'scanning') */
    char tenant[64];
    char name[256];
    char sha256[65];
    int fd;                  /* the text (unlinked temporary file); worker closes it */
    int64_t n_bytes;
    double t_queued_ms;
    int cancel;              /* __atomic; DELETE sets it; the scan polls it */
    /* under w_mu */
    int state;               /* enum srv_doc_state */
    int64_t done_bytes, n_tokens;
    double t_start_ms, t_end_ms;
    char error[256];
    struct srv_doc_job *next; /* registry list, oldest first */
};

/* MHD thread: append an upload piece to r's spool file (made at the first piece). */
int srv__spool_write(struct srv *s, struct srv_req *r, const void *p, size_t n);
/* MHD thread: queue a JSON reply (steals obj) / an error reply. */
enum MHD_Result srv__reply_json(struct srv_req *r, int status, json_t *obj);
enum MHD_Result srv__reply_error(struct srv_req *r, const struct srv_error *e);
/* Route handlers (MHD threads). */
enum MHD_Result srv__h_doc_post(struct srv *s, struct srv_req *r);
enum MHD_Result srv__h_doc_list(struct srv *s, struct srv_req *r);
enum MHD_Result srv__h_doc_one(struct srv *s, struct srv_req *r);
enum MHD_Result srv__h_retrieve(struct srv *s, struct srv_req *r);
/* Worker: open the index, fail scans a previous run left unfinished. */
int srv__docs_open(struct srv *s, struct s3_errinfo *err);
void srv__docs_close(struct srv *s);
/* Worker: the next queued upload (state -> SCANNING), or NULL. Caller holds w_mu. */
struct srv_doc_job *srv__docs_next_locked(struct srv *s);
/* Worker: scan one upload. */
void srv__docs_ingest(struct srv *s, struct srv_doc_job *d);
/* Job runners (worker). */
void srv__run_retrieve(struct srv *s, struct srv_req *r);
void srv__run_doc_delete(struct srv *s, struct srv_req *r);
/* Worker, between scan chunks: run the interactive jobs that wait (at most a few). */
void srv__worker_yield(struct srv *s);
/* Worker: evidence for a question: documents checked (404 unknown or another tenant's, 409
 * not ready), mode resolved (no SAE: hybrid -> bm25 with *note set), query features,
 * idx_retrieve. On failure fills e. *res filled on success (idx_result_deinit). */
struct srv_evidence_info {
    int mode;                /* mode run */
    int budget;
    double encode_ms, retrieval_ms;
    const char *note;        /* static text or NULL */
};
int srv__evidence(struct srv *s, struct idx_db *db, const char *tenant, const int64_t *docs,
                  size_t n_docs, const char *question, int mode, int budget,
                  struct idx_result *res, struct srv_evidence_info *info, struct srv_error *e);
/* Evidence spans as a JSON array. doc_label: NULL = "doc_<id>", else this label for every
 * span; off: added to the byte offsets. New ref. */
json_t *srv_evidence_json(const struct idx_result *res, const char *doc_label, int64_t off);
/* Fill dm (MHD thread). */
void srv__docs_metrics(struct srv *s, struct srv_doc_metrics *dm);

/* ---- the server ------------------------------------------------------------------------ */

struct srv {
    /* read-only after srv_start */
    const struct cfg *cfg;
    const struct srv_engine_ops *ops;
    void *eng;               /* worker thread only */
    struct srv_model_info info;
    struct MHD_Daemon *mhd;
    uint16_t port;
    struct srv_limits limits;

    /* loop thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    pthread_t loop_thread;
    struct srv_req *q_head, *q_tail; /* waiting jobs, FIFO */
    struct srv_req *running;         /* job on the worker */
    int loop_stopping;

    /* inbox (MPSC), under in_mu */
    pthread_mutex_t in_mu;
    struct srv_req *in_head, *in_tail;
    int in_closed;

    /* worker mailbox, under w_mu */
    pthread_t worker_thread;
    pthread_mutex_t w_mu;
    pthread_cond_t w_cv;
    struct srv_req *w_job;
    int w_stop;
    int w_loaded;            /* 1 ok, <0 load failed (code) */
    struct s3_errinfo w_err;
    int w_nested;            /* worker: 1 while a job runs between the chunks of a scan */

    /* documents: registry under w_mu; wdb (scans) and jdb (the worker's other jobs) worker
     * thread only; rdb under r_mu (MHD threads) */
    int docs_on;             /* read-only after start: the engine has the document ops */
    struct srv_doc_job *d_head, *d_tail;
    int d_queued, d_running;
    struct idx_db *wdb;
    struct idx_db *jdb;      /* retrieval and deletes run between a scan's chunks (a GPU scan's
                                writer thread holds wdb meanwhile, and its transaction) */
    struct srv_lcache *lcache; /* worker thread only: scanned middles of long prompts */
    pthread_mutex_t r_mu;
    struct idx_db *rdb;
    /* rdb's, wdb's and jdb's writers_waiting (idx_open_opts): raised by their writes, which
       a GPU scan's writer thread, holding its write transaction, yields to */
    atomic_int db_waiters;
    atomic_uint_fast64_t scan_tokens;
    atomic_uint_fast64_t scan_us;
    _Atomic double scan_tps_last;

    /* any thread */
    atomic_int inflight;     /* jobs admitted whose HTTP request has not completed */
    atomic_int ready;        /* model loaded and worker healthy */
    atomic_int stopping;
    atomic_uint_fast64_t next_id;
    struct srv_metrics metrics;
};

/* Long-prompt cache (srv_lcache.c), worker thread only. max_bytes 0 keeps nothing. */
struct srv_lcache;
struct srv_lcache_hit {
    struct idx_db *db; /* borrowed from the cache */
    int64_t doc;
    int64_t n_tokens;
};
int srv_lcache_new(int64_t max_bytes, struct srv_lcache **out);
void srv_lcache_free(struct srv_lcache *c);
/* 1 and *hit filled when text with this sha256 hex and length was scanned before, else 0. */
int srv_lcache_get(struct srv_lcache *c, const char *sha, size_t len,
                   struct srv_lcache_hit *hit);
/* Takes db (always: kept, or closed when it does not fit). Returns 1 kept, 0 closed. */
int srv_lcache_put(struct srv_lcache *c, const char *sha, size_t len, struct idx_db *db,
                   int64_t doc, int64_t n_tokens);
void srv_lcache_stats(const struct srv_lcache *c, int *entries, int64_t *bytes);

/* Start worker (loads the model), loop and HTTP daemon. Returns after the port is bound. */
int srv_start(struct srv *s, const struct cfg *c, const struct srv_engine_ops *ops,
              struct s3_errinfo *err);
/* Stop accepting, cancel jobs, join threads, stop the daemon. Main thread. */
void srv_stop(struct srv *s);

/* MHD thread: admit a job (429 when full) and suspend; queues the error reply itself. */
enum MHD_Result srv_submit(struct srv *s, struct srv_req *r, int kind);

/* Loop (srv_loop.c). */
int srv__loop_start(struct srv *s, struct s3_errinfo *err);
void srv__loop_stop(struct srv *s);
/* Post a message to the loop; S3_EBUSY when the loop has stopped. Any thread. */
int srv__inbox_post(struct srv *s, struct srv_req *r, int msg);

/* Worker (srv_worker.c). */
int srv__worker_start(struct srv *s, struct s3_errinfo *err);
void srv__worker_stop(struct srv *s);
/* Loop thread: give a job to the idle worker. */
void srv__worker_give(struct srv *s, struct srv_req *r);

/* HTTP (srv_http.c). */
int srv__http_start(struct srv *s, struct s3_errinfo *err);
void srv__http_stop(struct srv *s);
/* Constant-time check of an "Authorization" header value against the configured keys. */
int srv_auth_check(const struct cfg *c, const char *authorization);
