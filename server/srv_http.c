/* server/srv_http.c - libmicrohttpd glue: routing, auth, body limits, replies, SSE.
 *
 * Per request the access handler runs (1) on headers: route, method, auth and the declared
 * body size are checked and an error is answered at once; (2) on each body piece: appended
 * up to max_body_bytes; (3) when the body is complete: the route handler answers, or
 * submits a job and suspends the connection; (4) after every resume: the reply prepared by
 * the worker is queued (a whole JSON body, or a 200 whose SSE body is pulled by
 * sse_reader). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srv_int.h"

#define SRV_SSE_BACKLOG_MAX ((size_t)8 << 20) /* bytes not yet taken by a slow client */

/* ---- request objects --------------------------------------------------------------------- */

void srv_req_ref(struct srv_req *r)
{
    atomic_fetch_add(&r->refs, 1);
}

void srv_req_unref(struct srv_req *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    srv_buf_deinit(&r->body);
    srv_buf_deinit(&r->sse);
    srv_gen_req_deinit(&r->gen);
    srv_retrieve_req_deinit(&r->rq);
    if (r->spool_fd >= 0)
        close(r->spool_fd);
    free(r->reply);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Resume if we owe it (r->mu held). */
static void resume_locked(struct srv_req *r)
{
    if (r->suspended && !r->closed) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

void srv_req_reply(struct srv_req *r, int status, char *body, size_t len)
{
    pthread_mutex_lock(&r->mu);
    if (r->phase == SRV_PH_STREAM) {
        /* headers are gone already: end the stream instead */
        free(body);
        r->sse_done = 1;
    } else {
        free(r->reply);
        r->reply = body;
        r->reply_len = body ? len : 0;
        r->reply_status = status;
        r->phase = SRV_PH_REPLY;
    }
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
}

void srv_req_reply_error(struct srv_req *r, const struct srv_error *e)
{
    size_t len = 0;
    char *body = srv_error_body(e, &len);
    srv_req_reply(r, e->status, body, len);
}

void srv_req_stream_start(struct srv_req *r)
{
    pthread_mutex_lock(&r->mu);
    r->phase = SRV_PH_STREAM;
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
}

int srv_req_stream_push(struct srv_req *r, struct srv_buf *b, int done)
{
    int gone;
    pthread_mutex_lock(&r->mu);
    gone = r->closed;
    if (!gone && b->len && srv_buf_append(&r->sse, b->data, b->len) < 0)
        gone = 1; /* backlog cap: the client does not read */
    if (done || gone)
        r->sse_done = 1;
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
    srv_buf_reset(b);
    return gone;
}

/* ---- replies (MHD thread) ---------------------------------------------------------------- */

static const char fallback_error[] =
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
    "\"code\":null}}";

/* Queue body (taken, free()d by MHD; NULL -> a static error) with status. */
static enum MHD_Result queue_body(struct srv_req *r, int status, char *body, size_t len,
                                  const char *ctype, const char *hname, const char *hvalue)
{
    struct MHD_Response *resp;
    if (body) {
        resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (!resp)
            free(body);
    } else {
        status = 503;
        ctype = "application/json";
        resp = MHD_create_response_from_buffer(sizeof fallback_error - 1, (void *)fallback_error,
                                               MHD_RESPMEM_PERSISTENT);
    }
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (hname)
        MHD_add_response_header(resp, hname, hvalue);
    char rid[32];
    snprintf(rid, sizeof rid, "%llu", (unsigned long long)r->id);
    MHD_add_response_header(resp, "X-Request-Id", rid);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (ret == MHD_YES)
        r->status = status;
    return ret;
}

enum MHD_Result srv__reply_json(struct srv_req *r, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return queue_body(r, status, s, s ? strlen(s) : 0, "application/json", NULL, NULL);
}

enum MHD_Result srv__reply_error(struct srv_req *r, const struct srv_error *e)
{
    size_t len = 0;
    char *s = srv_error_body(e, &len);
    return queue_body(r, e->status, s, len, "application/json", NULL, NULL);
}

static enum MHD_Result reply_json(struct srv_req *r, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return queue_body(r, status, s, s ? strlen(s) : 0, "application/json", NULL, NULL);
}

static enum MHD_Result reply_error_hdr(struct srv_req *r, const struct srv_error *e,
                                       const char *hname, const char *hvalue)
{
    size_t len = 0;
    char *s = srv_error_body(e, &len);
    return queue_body(r, e->status, s, len, "application/json", hname, hvalue);
}

static enum MHD_Result reply_error(struct srv_req *r, const struct srv_error *e)
{
    return reply_error_hdr(r, e, NULL, NULL);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct srv_req *r = cls;
    ssize_t n;
    (void)pos;
    pthread_mutex_lock(&r->mu);
    size_t avail = r->sse.len - r->sse_off;
    if (avail) {
        size_t take = avail < max ? avail : max;
        memcpy(buf, r->sse.data + r->sse_off, take);
        r->sse_off += take;
        if (r->sse_off == r->sse.len) {
            srv_buf_reset(&r->sse);
            r->sse_off = 0;
        } else if (r->sse_off > (64u << 10)) {
            memmove(r->sse.data, r->sse.data + r->sse_off, r->sse.len - r->sse_off);
            r->sse.len -= r->sse_off;
            r->sse.data[r->sse.len] = 0;
            r->sse_off = 0;
        }
        n = (ssize_t)take;
    } else if (r->sse_done) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        r->suspended = 1; /* the worker resumes us when it has more */
        MHD_suspend_connection(r->conn);
        n = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* After a resume: queue what the worker prepared, or wait again. */
static enum MHD_Result reply_ready(struct srv_req *r)
{
    pthread_mutex_lock(&r->mu);
    int phase = r->phase;
    if (phase == SRV_PH_REPLY) {
        char *body = r->reply;
        size_t len = r->reply_len;
        int status = r->reply_status;
        r->reply = NULL;
        pthread_mutex_unlock(&r->mu);
        return queue_body(r, status, body, len, "application/json", NULL, NULL);
    }
    if (phase == SRV_PH_STREAM) {
        pthread_mutex_unlock(&r->mu);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_reader, r, NULL);
        if (!resp)
            return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ret = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        if (ret == MHD_YES)
            r->status = 200;
        return ret;
    }
    /* spurious call: still waiting for the worker */
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return MHD_YES;
}

/* ---- job submission ---------------------------------------------------------------------- */

enum MHD_Result srv_submit(struct srv *s, struct srv_req *r, int kind)
{
    struct srv_error e;
    if (atomic_load(&s->stopping)) {
        srv_errorf(&e, 503, "server_error", "shutting_down", NULL, "The server is shutting down.");
        return reply_error(r, &e);
    }
    int n = atomic_fetch_add(&s->inflight, 1);
    if (n >= s->cfg->queue_max) {
        atomic_fetch_sub(&s->inflight, 1);
        atomic_fetch_add(&s->metrics.gen_rejected, 1);
        srv_errorf(&e, 429, "rate_limit_error", "queue_full", NULL,
                   "The server is at capacity (%d requests queued or running); retry later.",
                   s->cfg->queue_max);
        return reply_error_hdr(r, &e, "Retry-After", "1");
    }
    r->admitted = 1;
    r->kind = kind;
    r->deadline_ms = r->t_start_ms + (double)s->cfg->request_timeout_ms;
    pthread_mutex_lock(&r->mu);
    r->phase = SRV_PH_WAIT;
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    srv_req_ref(r); /* the job's reference */
    if (srv__inbox_post(s, r, SRV_IN_SUBMIT) < 0) {
        r->admitted = 0;
        atomic_fetch_sub(&s->inflight, 1);
        srv_errorf(&e, 503, "server_error", "shutting_down", NULL, "The server is shutting down.");
        srv_req_reply_error(r, &e); /* resumes; the reply is queued on the next call */
        srv_req_unref(r);
    }
    return MHD_YES;
}

/* ---- route handlers ---------------------------------------------------------------------- */

static enum MHD_Result h_generate(struct srv *s, struct srv_req *r, int kind)
{
    struct srv_error e;
    if (srv_gen_parse(kind, r->body.data, r->body.len, &s->limits, &r->gen, &e) < 0)
        return reply_error(r, &e);
    srv_buf_deinit(&r->body); /* parsed: the text lives in r->gen now */
    return srv_submit(s, r, SRV_JOB_GENERATE);
}

static enum MHD_Result h_chat(struct srv *s, struct srv_req *r)
{
    return h_generate(s, r, SRV_GEN_CHAT);
}

static enum MHD_Result h_completions(struct srv *s, struct srv_req *r)
{
    return h_generate(s, r, SRV_GEN_TEXT);
}

static json_t *model_object(struct srv *s)
{
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->cfg->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(0));
    json_object_set_new(m, "owned_by", json_string("s3serve"));
    json_object_set_new(m, "context_length", json_integer(s->info.n_ctx));
    return m;
}

static enum MHD_Result h_models(struct srv *s, struct srv_req *r)
{
    json_t *o = json_object();
    json_t *data = json_array();
    json_array_append_new(data, model_object(s));
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return reply_json(r, 200, o);
}

static enum MHD_Result h_model_get(struct srv *s, struct srv_req *r)
{
    if (r->path_arg && !strcmp(r->path_arg, s->cfg->model_id))
        return reply_json(r, 200, model_object(s));
    struct srv_error e;
    srv_errorf(&e, 404, "invalid_request_error", "model_not_found", "model",
               "The model '%.200s' does not exist.", r->path_arg ? r->path_arg : "");
    return reply_error(r, &e);
}

static enum MHD_Result h_health(struct srv *s, struct srv_req *r)
{
    int ready = atomic_load(&s->ready);
    int stopping = atomic_load(&s->stopping);
    json_t *o = json_object();
    json_object_set_new(o, "status",
                        json_string(stopping ? "stopping" : ready ? "ok" : "unavailable"));
    json_object_set_new(o, "live", json_true());
    json_object_set_new(o, "ready", json_boolean(ready && !stopping));
    json_object_set_new(o, "model", json_string(s->cfg->model_id));
    json_object_set_new(o, "model_loaded", json_boolean(ready));
    json_object_set_new(o, "queue_depth", json_integer(atomic_load(&s->metrics.queue_depth)));
    json_object_set_new(o, "running", json_integer(atomic_load(&s->metrics.running)));
    return reply_json(r, ready && !stopping ? 200 : 503, o);
}

static enum MHD_Result h_metrics(struct srv *s, struct srv_req *r)
{
    struct srv_buf b = {0};
    struct srv_doc_metrics dm;
    if (s->docs_on)
        srv__docs_metrics(s, &dm);
    if (srv_metrics_render(&s->metrics, atomic_load(&s->ready), s->docs_on ? &dm : NULL,
                           &b) < 0) {
        srv_buf_deinit(&b);
        return queue_body(r, 503, NULL, 0, NULL, NULL, NULL);
    }
    if (!b.data && srv_buf_append(&b, "", 0) < 0)
        return queue_body(r, 503, NULL, 0, NULL, NULL, NULL);
    return queue_body(r, 200, b.data, b.len, "text/plain; version=0.0.4; charset=utf-8", NULL,
                      NULL);
}

/* The route table. Document uploads are spooled to disk (srv_docs.c). */
static const struct srv_route routes[] = {
    {"/v1/documents", SRV_M_POST, SRV_ROUTE_DOCUMENTS, 0, srv__h_doc_post, 1},
    {"/v1/documents", SRV_M_GET | SRV_M_HEAD, SRV_ROUTE_DOCUMENTS, 0, srv__h_doc_list, 0},
    {"/v1/documents/*", SRV_M_GET | SRV_M_HEAD | SRV_M_DELETE, SRV_ROUTE_DOCUMENTS, 0,
     srv__h_doc_one, 0},
    {"/v1/retrieve", SRV_M_POST, SRV_ROUTE_RETRIEVE, 0, srv__h_retrieve, 0},
    {"/v1/chat/completions", SRV_M_POST, SRV_ROUTE_CHAT, 0, h_chat, 0},
    {"/v1/completions", SRV_M_POST, SRV_ROUTE_COMPLETIONS, 0, h_completions, 0},
    {"/v1/models", SRV_M_GET | SRV_M_HEAD, SRV_ROUTE_MODELS, 0, h_models, 0},
    {"/v1/models/*", SRV_M_GET | SRV_M_HEAD, SRV_ROUTE_MODELS, 0, h_model_get, 0},
    {"/health", SRV_M_GET | SRV_M_HEAD, SRV_ROUTE_HEALTH, 1, h_health, 0},
    {"/metrics", SRV_M_GET | SRV_M_HEAD, SRV_ROUTE_METRICS, 0, h_metrics, 0},
};

const struct srv_route *srv_route_find(const char *path, int method, int *allowed,
                                       const char **arg)
{
    const struct srv_route *hit = NULL;
    *allowed = 0;
    *arg = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const char *a;
        if (!srv_path_match(routes[i].path, path, &a))
            continue;
        *allowed |= routes[i].methods;
        if (!hit && (routes[i].methods & method)) {
            hit = &routes[i];
            *arg = a;
        }
    }
    return hit;
}

static int method_bit(const char *m)
{
    if (!strcmp(m, "GET"))
        return SRV_M_GET;
    if (!strcmp(m, "POST"))
        return SRV_M_POST;
    if (!strcmp(m, "HEAD"))
        return SRV_M_HEAD;
    if (!strcmp(m, "DELETE"))
        return SRV_M_DELETE;
    return 0;
}

/* ---- MHD callbacks ----------------------------------------------------------------------- */

/* First call for a request: route, auth, declared size. Returns MHD_YES with *done = 1 when
 * an error reply was queued. */
static enum MHD_Result on_headers(struct srv *s, struct srv_req *r, const char *url,
                                  const char *method, int *done)
{
    struct srv_error e;
    int allowed;
    *done = 1;
    r->method = method_bit(method);
    r->route = srv_route_find(url, r->method, &allowed, &r->path_arg);
    if (!r->route) {
        if (allowed) {
            char allow[64];
            srv_methods_str(allowed, allow, sizeof allow);
            srv_errorf(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                       "Method %.16s is not allowed for %.200s; allowed: %s.", method, url,
                       allow);
            return reply_error_hdr(r, &e, "Allow", allow);
        }
        srv_errorf(&e, 404, "invalid_request_error", "unknown_url", NULL,
                   "Invalid URL (%.16s %.200s)", method, url);
        return reply_error(r, &e);
    }
    if (!r->route->open &&
        !srv_auth_check(s->cfg, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                            MHD_HTTP_HEADER_AUTHORIZATION))) {
        const char *h =
            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        srv_errorf(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                   h ? "Incorrect API key provided."
                     : "You didn't provide an API key. Send it in an Authorization header "
                       "(Authorization: Bearer YOUR_KEY).");
        return reply_error_hdr(r, &e, "WWW-Authenticate", "Bearer");
    }
    if (!r->route->open)
        srv_tenant_of(s->cfg, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                          MHD_HTTP_HEADER_AUTHORIZATION),
                      r->tenant);
    int64_t cap = r->route->spool ? s->cfg->max_document_bytes : s->cfg->max_body_bytes;
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (!errno && end != cl && v > (unsigned long long)cap) {
            srv_errorf(&e, 413, "invalid_request_error", "request_too_large", NULL,
                       "The request body (%llu bytes) is larger than the limit of %lld bytes.",
                       v, (long long)cap);
            return reply_error(r, &e);
        }
    }
    r->body.max = (size_t)s->cfg->max_body_bytes;
    *done = 0;
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct srv *s = cls;
    struct srv_req *r = *con_cls;
    (void)version;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        pthread_mutex_init(&r->mu, NULL);
        atomic_init(&r->refs, 1);
        r->spool_fd = -1;
        r->gen.ret.mode = -1;
        r->rq.ret.mode = -1;
        r->srv = s;
        r->conn = conn;
        r->id = atomic_fetch_add(&s->next_id, 1);
        r->t_start_ms = s3_now_ms();
        r->sse.max = SRV_SSE_BACKLOG_MAX;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->fd = ci ? ci->connect_fd : -1;
        *con_cls = r;
        int done;
        return on_headers(s, r, url, method, &done);
    }
    if (*upload_size) {
        /* body piece: keep it if the route wants a body and it fits */
        if (!(r->route->methods & SRV_M_POST) || r->body_toobig) {
            r->body_discarded += *upload_size;
        } else if (r->route->spool) {
            /* documents go to disk as they arrive, never whole into memory */
            if (r->spool_bytes + (int64_t)*upload_size > s->cfg->max_document_bytes ||
                srv__spool_write(s, r, upload_data, *upload_size) < 0) {
                r->body_toobig = 1;
                r->body_discarded += (size_t)r->spool_bytes + *upload_size;
                if (r->spool_fd >= 0)
                    close(r->spool_fd);
                r->spool_fd = -1;
            }
            *upload_size = 0;
            if (r->body_discarded > (size_t)s->cfg->max_document_bytes + (64u << 20))
                return MHD_NO;
            return MHD_YES;
        } else if (srv_buf_append(&r->body, upload_data, *upload_size) < 0) {
            r->body_toobig = 1;
            r->body_discarded += r->body.len + *upload_size;
            srv_buf_deinit(&r->body);
        }
        *upload_size = 0;
        /* a client that keeps sending far past the limit loses the connection */
        if (r->body_discarded > (size_t)s->cfg->max_body_bytes * 4 + (1u << 20))
            return MHD_NO;
        return MHD_YES;
    }
    if (r->phase != SRV_PH_NEW)
        return reply_ready(r);
    if (r->body_toobig) {
        struct srv_error e;
        if (r->route->spool && r->spool_bytes + (int64_t)r->body_discarded <=
                                   s->cfg->max_document_bytes)
            srv_errorf(&e, 503, "server_error", "spool_failed", NULL,
                       "The upload could not be written to disk (see the server log).");
        else
            srv_errorf(&e, 413, "invalid_request_error", "request_too_large", NULL,
                       "The request body is larger than the limit of %lld bytes.",
                       (long long)(r->route->spool ? s->cfg->max_document_bytes
                                                   : s->cfg->max_body_bytes));
        return reply_error(r, &e);
    }
    return r->route->fn(s, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct srv *s = cls;
    struct srv_req *r = *con_cls;
    (void)conn;
    if (!r)
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->closed = 1;
    int unfinished = r->phase == SRV_PH_WAIT || (r->phase == SRV_PH_STREAM && !r->sse_done);
    pthread_mutex_unlock(&r->mu);
    if (unfinished) {
        int none = SRV_CANCEL_NONE;
        __atomic_compare_exchange_n(&r->cancel, &none, SRV_CANCEL_CLIENT, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
    }
    if (r->admitted) /* the slot is held until the reply has been sent */
        atomic_fetch_sub(&s->inflight, 1);
    int status = r->status ? r->status : 499;
    double ms = s3_now_ms() - r->t_start_ms;
    int route = r->route ? r->route->id : SRV_ROUTE_OTHER;
    srv_metrics_request(&s->metrics, route, status, ms / 1e3);
    int quiet = route == SRV_ROUTE_HEALTH || route == SRV_ROUTE_METRICS;
    S3_LOG(quiet ? S3_LOG_DEBUG : S3_LOG_INFO,
           "event=request req=%llu route=%s status=%d ms=%.1f term=%d",
           (unsigned long long)r->id, srv_route_label(route), status, ms, (int)toe);
    srv_req_unref(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    S3_LOG(S3_LOG_WARN, "event=http_error msg=\"%s\"", line);
}

int srv__http_start(struct srv *s, struct s3_errinfo *err)
{
    const struct cfg *c = s->cfg;
    struct addrinfo hints = {0}, *ai = NULL;
    char port[16];
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof port, "%d", c->port);
    int grc = getaddrinfo(c->host, port, &hints, &ai);
    if (grc != 0 || !ai)
        return s3_errf(err, S3_EINVAL, "host '%s': %s", c->host, gai_strerror(grc));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_LINUX_ONLY |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, s, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)60, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->mhd)
        return s3_errf(err, S3_EIO, "cannot listen on %s:%d (address in use or not allowed)",
                       c->host, c->port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (uint16_t)c->port;
    return 0;
}

void srv__http_stop(struct srv *s)
{
    if (s->mhd) {
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
}
