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
#include "s3.h"

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
};

struct srv_limits {
    int max_tokens_limit;    /* max_tokens above this -> 400 */
    const char *model_id;    /* accepted "model" value; NULL = any */
    int n_vocab;             /* token ids must be < n_vocab; 0 = unchecked */
};

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

#define SRV_N_STATUS  13
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

/* Status code -> index into requests[][] (the last index collects others). */
int srv_status_index(int status);
/* Count one finished request. Any thread. */
void srv_metrics_request(struct srv_metrics *m, int route, int status, double seconds);
/* Prometheus text exposition format. ready: 1 when the model is loaded. */
int srv_metrics_render(struct srv_metrics *m, int ready, struct srv_buf *out);

/* ---- jobs and requests ----------------------------------------------------------------- */

/* Kinds of work the engine worker runs. New kinds (document ingestion, retrieval) add an
 * entry here and a runner in srv_job_runners[]. */
enum srv_job_kind { SRV_JOB_GENERATE = 0, SRV_JOB__N };

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

    /* -- the job: loop thread while queued, worker while it runs -- */
    int kind;                /* enum srv_job_kind */
    struct srv_gen_req gen;
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
};

extern const struct srv_engine_ops srv_engine_default; /* srv_engine.c: engine/engine.h */

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

    /* any thread */
    atomic_int inflight;     /* jobs admitted whose HTTP request has not completed */
    atomic_int ready;        /* model loaded and worker healthy */
    atomic_int stopping;
    atomic_uint_fast64_t next_id;
    struct srv_metrics metrics;
};

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
