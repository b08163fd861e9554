/* server/srv_worker.c - the engine worker thread and the job runners.
 *
 * The worker owns the model and its context (through srv->ops). It loads the model, then
 * takes one job at a time from its mailbox, runs the runner of the job's kind, and posts
 * SRV_IN_DONE to the loop. Runners reply through srv_req_reply* / srv_req_stream_*, which
 * resume the suspended connection. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "srv_int.h"

/* The worker and the compute threads it starts run this much nicer than the HTTP and loop
 * threads, so that a busy engine cannot delay /health or the SSE writers on a small machine. */
#define SRV_WORKER_NICE 5

typedef void (*srv_job_fn)(struct srv *s, struct srv_req *r);

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t fresh_random(struct srv_req *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ mix64(r->id));
}

/* ---- generation -------------------------------------------------------------------------- */

struct gen_run {
    struct srv *s;
    struct srv_req *r;
    struct srv_resp_meta meta;
    struct srv_buf text;     /* non-streaming: the answer so far */
    struct srv_buf out;      /* streaming: events to hand over */
    int gone;                /* the client left (stream push failed) */
};

static int load_cancel(struct srv_req *r)
{
    return __atomic_load_n(&r->cancel, __ATOMIC_SEQ_CST);
}

static int on_emit(void *ud, const char *text, size_t len)
{
    struct gen_run *g = ud;
    struct srv_req *r = g->r;
    if (load_cancel(r))
        return 1;
    if (!len)
        return 0;
    if (r->gen.stream) {
        json_t *chunk = srv_chunk_new(&g->meta, text, len, 0, NULL, r->gen.include_usage);
        if (srv_sse_append_json(&g->out, chunk) < 0 || srv_req_stream_push(r, &g->out, 0)) {
            g->gone = 1;
            return 1;
        }
        return 0;
    }
    return srv_buf_append(&g->text, text, len) < 0;
}

static void reply_json_obj(struct srv_req *r, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    srv_req_reply(r, s ? status : 503, s, s ? strlen(s) : 0);
}

/* End a stream with an error event (OpenAI's shape inside "data:") and [DONE]. */
static void stream_error(struct gen_run *g, const struct srv_error *e)
{
    srv_sse_append_json(&g->out, srv_error_json(e));
    srv_sse_append_done(&g->out);
    srv_req_stream_push(g->r, &g->out, 1);
}

static void run_generate(struct srv *s, struct srv_req *r)
{
    struct gen_run g = {.s = s, .r = r};
    struct srv_error e;
    struct s3_errinfo err = {0};
    struct eng_gen_result res = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char id[40];
    int streaming = 0, rc;
    const char *what = r->gen.kind == SRV_GEN_CHAT ? "messages" : "prompt";

    g.out.max = 1 << 20;
    snprintf(id, sizeof id, "%s-%016llx%08llx", r->gen.kind == SRV_GEN_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)fresh_random(r), (unsigned long long)(r->id & 0xffffffffu));
    g.meta.kind = r->gen.kind;
    g.meta.id = id;
    g.meta.created = (long long)time(NULL);
    g.meta.model = s->cfg->model_id;

    int why = load_cancel(r);
    if (why) {
        if (why == SRV_CANCEL_DEADLINE)
            atomic_fetch_add(&s->metrics.gen_timeouts, 1);
        else if (why == SRV_CANCEL_CLIENT)
            atomic_fetch_add(&s->metrics.gen_canceled, 1);
        srv_error_from_code(&e, why == SRV_CANCEL_DEADLINE ? S3_ETIMEDOUT : S3_ECANCELED,
                            why == SRV_CANCEL_DEADLINE ? "The request hit its deadline."
                                                       : "The request was canceled.");
        srv_req_reply_error(r, &e);
        goto out;
    }

    /* prompt tokens */
    if (r->gen.prompt_ids) {
        ids = malloc(r->gen.n_prompt_ids * sizeof *ids);
        if (!ids) {
            srv_error_from_code(&e, S3_ENOMEM, NULL);
            srv_req_reply_error(r, &e);
            goto out;
        }
        memcpy(ids, r->gen.prompt_ids, r->gen.n_prompt_ids * sizeof *ids);
        n_ids = r->gen.n_prompt_ids;
    } else if ((rc = s->ops->tokenize(s->eng, &r->gen, &ids, &n_ids, &err)) < 0) {
        srv_error_from_code(&e, rc, err.msg);
        srv_req_reply_error(r, &e);
        goto out;
    }
    if (n_ids == 0) {
        srv_errorf(&e, 400, "invalid_request_error", "invalid_value", what,
                   "The %s produced no tokens.", what);
        srv_req_reply_error(r, &e);
        goto out;
    }
    int n_ctx = s->info.n_ctx;
    if (n_ids >= (size_t)n_ctx) {
        srv_errorf(&e, 400, "invalid_request_error", "context_length_exceeded", what,
                   "This model's maximum context length is %d tokens. However, your %s "
                   "resulted in %zu tokens. Shorten the %s.", n_ctx, what, n_ids, what);
        srv_req_reply_error(r, &e);
        goto out;
    }
    int max_tokens = r->gen.max_tokens;
    if (max_tokens && n_ids + (size_t)max_tokens > (size_t)n_ctx) {
        srv_errorf(&e, 400, "invalid_request_error", "context_length_exceeded", "max_tokens",
                   "This model's maximum context length is %d tokens. However, you requested "
                   "%zu tokens (%zu in the %s, %d in the completion). Reduce the length of the "
                   "%s or the completion.", n_ctx, n_ids + (size_t)max_tokens, n_ids, what,
                   max_tokens, what);
        srv_req_reply_error(r, &e);
        goto out;
    }
    if (!max_tokens) {
        max_tokens = s->cfg->default_max_tokens;
        if ((size_t)max_tokens > (size_t)n_ctx - n_ids)
            max_tokens = (int)((size_t)n_ctx - n_ids);
    }

    struct eng_gen_params p = {0};
    p.sample.temperature = (float)r->gen.temperature;
    p.sample.top_p = (float)r->gen.top_p;
    if (r->gen.top_p <= 0) { /* nothing but the top token */
        p.sample.temperature = 0;
        p.sample.top_p = 1;
    }
    p.sample.top_k = 0;
    p.sample.seed = r->gen.has_seed ? r->gen.seed : fresh_random(r);
    p.max_tokens = max_tokens;
    p.stop = (const char *const *)r->gen.stop;
    p.n_stop = r->gen.n_stop;

    if (r->gen.stream) {
        streaming = 1;
        srv_req_stream_start(r);
        json_t *first = srv_chunk_new(&g.meta, "", 0, 1, NULL, r->gen.include_usage);
        if (srv_sse_append_json(&g.out, first) < 0 || srv_req_stream_push(r, &g.out, 0))
            g.gone = 1;
    }
    if (!g.gone)
        rc = s->ops->generate(s->eng, ids, n_ids, &p, &r->cancel, on_emit, &g, &res, &err);
    else
        rc = S3_ECANCELED;
    r->n_prompt = res.n_prompt ? res.n_prompt : (int)n_ids;
    r->n_completion = res.n_completion;
    atomic_fetch_add(&s->metrics.tokens_in, (uint64_t)r->n_prompt);
    atomic_fetch_add(&s->metrics.tokens_out, (uint64_t)r->n_completion);

    why = load_cancel(r);
    if (g.gone && !why)
        why = SRV_CANCEL_CLIENT;
    if (rc < 0 && rc != S3_ECANCELED && !why) {
        S3_LOG(S3_LOG_ERROR, "event=generate_failed req=%llu rc=%d msg=\"%s\"",
               (unsigned long long)r->id, rc, err.msg);
        srv_error_from_code(&e, rc == S3_EINVAL ? S3_EINTERNAL : rc, err.msg);
        if (streaming)
            stream_error(&g, &e);
        else
            srv_req_reply_error(r, &e);
        goto out;
    }
    if (why == SRV_CANCEL_DEADLINE) {
        atomic_fetch_add(&s->metrics.gen_timeouts, 1);
        srv_errorf(&e, 504, "timeout_error", "timeout", NULL,
                   "The request hit its deadline of %lld ms after %d generated tokens.",
                   (long long)s->cfg->request_timeout_ms, r->n_completion);
        if (streaming)
            stream_error(&g, &e);
        else
            srv_req_reply_error(r, &e);
        goto out;
    }
    if (why) {
        if (why == SRV_CANCEL_CLIENT)
            atomic_fetch_add(&s->metrics.gen_canceled, 1);
        srv_error_from_code(&e, S3_ECANCELED, why == SRV_CANCEL_SHUTDOWN
                                                  ? "The server is shutting down."
                                                  : "The request was canceled.");
        if (streaming)
            stream_error(&g, &e);
        else
            srv_req_reply_error(r, &e);
        goto out;
    }
    const char *finish = srv_finish_reason(res.finish);
    if (streaming) {
        srv_sse_append_json(&g.out, srv_chunk_new(&g.meta, "", 0, 0, finish,
                                                  r->gen.include_usage));
        if (r->gen.include_usage)
            srv_sse_append_json(&g.out,
                                srv_usage_chunk_new(&g.meta, r->n_prompt, r->n_completion));
        srv_sse_append_done(&g.out);
        srv_req_stream_push(r, &g.out, 1);
    } else {
        reply_json_obj(r, 200, srv_completion_new(&g.meta, g.text.data, g.text.len, finish,
                                                  r->n_prompt, r->n_completion));
    }
    S3_LOG(S3_LOG_INFO,
           "event=generate req=%llu prompt_tokens=%d completion_tokens=%d finish=%s "
           "prefill_ms=%.1f decode_ms=%.1f",
           (unsigned long long)r->id, r->n_prompt, r->n_completion, finish, res.prefill_ms,
           res.decode_ms);
out:
    free(ids);
    srv_buf_deinit(&g.text);
    srv_buf_deinit(&g.out);
}

/* Runners by job kind (enum srv_job_kind). */
static const srv_job_fn srv_job_runners[SRV_JOB__N] = {
    [SRV_JOB_GENERATE] = run_generate,
};

/* ---- the thread -------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    struct srv *s = arg;
    struct s3_errinfo err = {0};
    /* Linux: nice is per thread and inherited by threads created from here (engine pools) */
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int cur = getpriority(PRIO_PROCESS, tid);
    if (errno == 0 && setpriority(PRIO_PROCESS, tid, cur + SRV_WORKER_NICE) < 0)
        S3_LOG(S3_LOG_WARN, "event=worker_nice_failed errno=%d", errno);
    int rc = s->ops->open(&s->eng, s->cfg, &s->info, &err);
    pthread_mutex_lock(&s->w_mu);
    s->w_loaded = rc < 0 ? rc : 1;
    s->w_err = err;
    pthread_cond_broadcast(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
    if (rc < 0)
        return NULL;
    for (;;) {
        pthread_mutex_lock(&s->w_mu);
        while (!s->w_job && !s->w_stop)
            pthread_cond_wait(&s->w_cv, &s->w_mu);
        struct srv_req *r = s->w_job;
        s->w_job = NULL;
        pthread_mutex_unlock(&s->w_mu);
        if (!r)
            break; /* stop, and no job left */
        if (r->kind >= 0 && r->kind < SRV_JOB__N && srv_job_runners[r->kind]) {
            srv_job_runners[r->kind](s, r);
        } else {
            struct srv_error e;
            srv_error_from_code(&e, S3_EINTERNAL, "unknown job kind");
            srv_req_reply_error(r, &e);
        }
        srv__inbox_post(s, r, SRV_IN_DONE);
    }
    s->ops->close(s->eng);
    s->eng = NULL;
    return NULL;
}

void srv__worker_give(struct srv *s, struct srv_req *r)
{
    pthread_mutex_lock(&s->w_mu);
    s->w_job = r;
    pthread_cond_signal(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
}

int srv__worker_start(struct srv *s, struct s3_errinfo *err)
{
    if (pthread_create(&s->worker_thread, NULL, worker_main, s) != 0)
        return s3_errf(err, S3_EINTERNAL, "cannot start the engine worker thread");
    pthread_mutex_lock(&s->w_mu);
    while (!s->w_loaded)
        pthread_cond_wait(&s->w_cv, &s->w_mu);
    int loaded = s->w_loaded;
    pthread_mutex_unlock(&s->w_mu);
    if (loaded < 0) {
        pthread_join(s->worker_thread, NULL);
        if (err)
            *err = s->w_err;
        return loaded;
    }
    atomic_store(&s->ready, 1);
    return 0;
}

void srv__worker_stop(struct srv *s)
{
    pthread_mutex_lock(&s->w_mu);
    s->w_stop = 1;
    pthread_cond_signal(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
    pthread_join(s->worker_thread, NULL);
    atomic_store(&s->ready, 0);
}
