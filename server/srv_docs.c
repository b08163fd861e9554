/* server/srv_docs.c - documents over HTTP: uploads spooled to disk, the registry of uploads,
 * ingestion on the engine worker, listing, status, deletion, and evidence retrieval.
 *
 * An upload (POST /v1/documents) is written to an unlinked temporary file as it arrives,
 * checked (non-empty UTF-8 text), given a document row at once (status 'scanning', so the id
 * is known in the 202 reply) and queued. The worker scans queued uploads when it has no
 * interactive job; between chunks it runs the interactive jobs that wait (srv__worker_yield),
 * so chats are served during a long scan. DELETE of a queued or scanning document sets its
 * cancel flag; the worker then removes its rows.
 *
 * Threads: handlers run on MHD threads and read the index through s->rdb (under r_mu); the
 * worker scans through s->wdb and runs its other jobs (retrieval, deletes), which may come
 * between a scan's chunks, through s->jdb: a GPU scan's writer thread uses s->wdb until the
 * scan ends, and holds a write transaction between its commits; the three connections share
 * s->db_waiters (idx_open_opts.writers_waiting), which writes on rdb and jdb raise, so that it
 * commits and waits for them. The registry (s->d_head..) is under s->w_mu. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "srv_int.h"

#define SRV_DOCS_KEEP_FAILED 256 /* failed uploads remembered for their error text */

/* ---- spooling ------------------------------------------------------------------------------ */

static int spool_open(const struct srv *s)
{
    const char *dir = s->cfg->tmp_dir[0] ? s->cfg->tmp_dir : getenv("TMPDIR");
    char path[CFG_PATH_MAX + 32];
    if (!dir || !*dir)
        dir = "/tmp";
    snprintf(path, sizeof path, "%s/s3serve-upload-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        S3_LOG(S3_LOG_ERROR, "event=spool_failed dir=%s errno=%d", dir, errno);
        return -1;
    }
    unlink(path); /* nothing is left behind, whatever happens to the process */
    return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return S3_EIO;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int srv__spool_write(struct srv *s, struct srv_req *r, const void *p, size_t n)
{
    if (r->spool_fd < 0 && (r->spool_fd = spool_open(s)) < 0)
        return S3_EIO;
    if (write_all(r->spool_fd, p, n) < 0) {
        S3_LOG(S3_LOG_ERROR, "event=spool_write_failed req=%llu errno=%d",
               (unsigned long long)r->id, errno);
        return S3_EIO;
    }
    r->spool_bytes += (int64_t)n;
    return 0;
}

static const char *map_fd(int fd, size_t n)
{
    if (n == 0)
        return NULL;
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ---- registry (w_mu held) -------------------------------------------------------------------- */

static struct srv_doc_job *job_find_locked(struct srv *s, int64_t id, const char *tenant)
{
    for (struct srv_doc_job *d = s->d_head; d; d = d->next)
        if (d->id == id && !strcmp(d->tenant, tenant))
            return d;
    return NULL;
}

static int job_active(const struct srv_doc_job *d)
{
    return (d->state == SRV_DOC_QUEUED || d->state == SRV_DOC_SCANNING) &&
           !__atomic_load_n(&d->cancel, __ATOMIC_SEQ_CST);
}

static void job_unlink_locked(struct srv *s, struct srv_doc_job *d)
{
    struct srv_doc_job **pp = &s->d_head, *prev = NULL;
    while (*pp && *pp != d) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = d->next;
    if (s->d_tail == d)
        s->d_tail = prev;
}

static int queue_position_locked(struct srv *s, const struct srv_doc_job *d)
{
    int pos = 0;
    for (struct srv_doc_job *x = s->d_head; x && x != d; x = x->next)
        if (x->state == SRV_DOC_QUEUED && !x->cancel)
            pos++;
    return pos;
}

static const char *state_name(int st)
{
    static const char *names[] = {"queued", "scanning", "ready", "failed", "deleted"};
    return st >= 0 && st <= SRV_DOC_DELETED ? names[st] : "unknown";
}

/* The job part of a document object (w_mu held). */
static json_t *job_json_locked(struct srv *s, const struct srv_doc_job *d)
{
    static const char *jst[] = {"queued", "running", "succeeded", "failed", "canceled"};
    char jid[40];
    snprintf(jid, sizeof jid, "ingest_%lld", (long long)d->id);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(jid));
    json_object_set_new(j, "type", json_string("ingest"));
    json_object_set_new(j, "status", json_string(jst[d->state]));
    if (d->state == SRV_DOC_QUEUED)
        json_object_set_new(j, "queue_position", json_integer(queue_position_locked(s, d)));
    if (d->t_start_ms > 0) {
        double end = d->t_end_ms > 0 ? d->t_end_ms : s3_now_ms();
        double secs = (end - d->t_start_ms) / 1e3;
        json_object_set_new(j, "elapsed_s", json_real(secs));
        json_object_set_new(j, "tokens_per_second",
                            json_real(secs > 0 ? (double)d->n_tokens / secs : 0));
    }
    return j;
}

/* A document object from its row (info may be NULL for a job without a readable row) and
 * its upload (d may be NULL). w_mu held when d is given. */
static json_t *doc_json(struct srv *s, const struct idx_doc_info *info,
                        const struct srv_doc_job *d)
{
    char id[32];
    json_t *o = json_object();
    int64_t n_bytes = d ? d->n_bytes : info ? info->n_bytes : 0;
    const char *status;
    double progress;
    int64_t n_tokens;
    if (d && (d->state == SRV_DOC_QUEUED || d->state == SRV_DOC_SCANNING ||
              d->state == SRV_DOC_FAILED)) {
        status = state_name(d->state);
        progress = d->state == SRV_DOC_FAILED ? 0
                   : n_bytes > 0               ? (double)d->done_bytes / (double)n_bytes
                                               : 0;
        n_tokens = d->n_tokens;
    } else if (!info) {
        status = d ? state_name(d->state) : "unknown";
        progress = 0;
        n_tokens = d ? d->n_tokens : 0;
    } else {
        status = info->status == IDX_DOC_READY    ? "ready"
                 : info->status == IDX_DOC_FAILED ? "failed"
                                                  : "scanning";
        progress = info->status == IDX_DOC_READY ? 1.0 : 0.0;
        n_tokens = info->n_tokens;
    }
    json_object_set_new(o, "id", json_string(srv_doc_id_str(d ? d->id : info ? info->id : 0, id)));
    json_object_set_new(o, "object", json_string("document"));
    const char *name = d ? d->name : info ? info->name : "";
    json_object_set_new(o, "name", srv_json_text(name, strlen(name)));
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "progress", json_real(progress > 1 ? 1 : progress));
    json_object_set_new(o, "n_tokens", json_integer(n_tokens));
    json_object_set_new(o, "n_bytes", json_integer(n_bytes));
    if (info) {
        json_object_set_new(o, "n_passages", json_integer(info->n_passages));
        json_object_set_new(o, "created", json_integer(info->created));
        int s3 = s->info.has_sae && !strcmp(info->sae_hash, s->info.sae_hash);
        json_object_set_new(o, "index", json_string(s3 ? "s3+bm25" : "bm25"));
    }
    if (d && d->state == SRV_DOC_FAILED)
        json_object_set_new(o, "error", json_string(d->error));
    else if (!strcmp(status, "failed"))
        json_object_set_new(o, "error", json_string("the scan did not complete"));
    else
        json_object_set_new(o, "error", json_null());
    if (d)
        json_object_set_new(o, "job", job_json_locked(s, d));
    return o;
}

static enum MHD_Result no_docs(struct srv_req *r)
{
    struct srv_error e;
    srv_errorf(&e, 503, "server_error", "documents_unavailable", NULL,
               "This server runs without the document index.");
    return srv__reply_error(r, &e);
}

static enum MHD_Result not_found(struct srv_req *r, const char *id)
{
    struct srv_error e;
    srv_errorf(&e, 404, "invalid_request_error", "document_not_found", NULL,
               "No document with id '%.100s'.", id ? id : "");
    return srv__reply_error(r, &e);
}

/* ---- POST /v1/documents ---------------------------------------------------------------------- */

static int is_json_type(struct srv_req *r)
{
    const char *ct =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    return ct && !strncasecmp(ct, "application/json", 16);
}

static struct srv_doc_job *find_dup_locked(struct srv *s, const char *tenant, const char *sha,
                                           int64_t not_id)
{
    for (struct srv_doc_job *d = s->d_head; d; d = d->next)
        if (d->id != not_id && job_active(d) && !strcmp(d->tenant, tenant) &&
            !strcmp(d->sha256, sha))
            return d;
    return NULL;
}

enum MHD_Result srv__h_doc_post(struct srv *s, struct srv_req *r)
{
    struct srv_error e;
    struct s3_errinfo err = {0};
    const char *map = NULL;
    size_t len = (size_t)r->spool_bytes;
    char *jtext = NULL, *jname = NULL;
    struct srv_doc_job *d = NULL;
    enum MHD_Result ret;
    int fd = -1;

    if (!s->docs_on)
        return no_docs(r);
    if (r->spool_fd < 0 || len == 0) {
        srv_errorf(&e, 400, "invalid_request_error", "invalid_value", "text",
                   "The document is empty: send its text as the request body, or "
                   "{\"text\": \"...\"} with Content-Type: application/json.");
        return srv__reply_error(r, &e);
    }
    map = map_fd(r->spool_fd, len);
    if (!map) {
        srv_errorf(&e, 503, "server_error", "spool_failed", NULL, "Cannot read the upload.");
        return srv__reply_error(r, &e);
    }
    d = calloc(1, sizeof *d);
    if (!d) {
        srv_error_from_code(&e, S3_ENOMEM, NULL);
        ret = srv__reply_error(r, &e);
        goto out;
    }
    d->fd = -1;
    if (is_json_type(r)) {
        size_t tl;
        if (srv_doc_json_parse(map, len, &jtext, &tl, &jname, &e) < 0) {
            ret = srv__reply_error(r, &e);
            goto out;
        }
        munmap((void *)map, len);
        map = NULL;
        /* the text goes back to disk; the JSON spool is dropped */
        if ((fd = spool_open(s)) < 0 || write_all(fd, jtext, tl) < 0) {
            srv_errorf(&e, 503, "server_error", "spool_failed", NULL,
                       "Cannot write the upload to disk.");
            ret = srv__reply_error(r, &e);
            goto out;
        }
        s3_sha256_hex(jtext, tl, d->sha256);
        free(jtext);
        jtext = NULL;
        len = tl;
        snprintf(d->name, sizeof d->name, "%s", jname ? jname : "");
    } else {
        if (srv_text_check(map, len, "body", &e) < 0) {
            ret = srv__reply_error(r, &e);
            goto out;
        }
        s3_sha256_hex(map, len, d->sha256);
        fd = r->spool_fd;
        r->spool_fd = -1;
        const char *nm = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "name");
        if (nm && (strlen(nm) > 255 || srv_scan_check_text(nm, strlen(nm), &err) < 0)) {
            srv_errorf(&e, 400, "invalid_request_error", "invalid_value", "name",
                       "Invalid 'name': at most 255 bytes of UTF-8.");
            ret = srv__reply_error(r, &e);
            goto out;
        }
        snprintf(d->name, sizeof d->name, "%s", nm ? nm : "");
    }
    snprintf(d->tenant, sizeof d->tenant, "%s", r->tenant);
    d->n_bytes = (int64_t)len;
    d->t_queued_ms = s3_now_ms();

    /* the same text of the same tenant already waiting: that upload is the answer */
    pthread_mutex_lock(&s->w_mu);
    struct srv_doc_job *dup = find_dup_locked(s, d->tenant, d->sha256, 0);
    int full = s->d_queued + s->d_running >= s->cfg->ingest_queue_max;
    json_t *o = dup ? doc_json(s, NULL, dup) : NULL;
    pthread_mutex_unlock(&s->w_mu);
    if (o) {
        ret = srv__reply_json(r, 202, o);
        goto out;
    }
    if (full) {
        srv_errorf(&e, 429, "rate_limit_error", "queue_full", NULL,
                   "%d documents are waiting or being scanned; retry later.",
                   s->cfg->ingest_queue_max);
        ret = srv__reply_error(r, &e);
        goto out;
    }

    /* the row now, so that the id is known; the scan continues it (same text, model, SAE) */
    struct idx_doc_meta meta = {.tenant = d->tenant, .name = d->name, .text_sha256 = d->sha256,
                                .model_hash = s->info.model_sha256,
                                .sae_hash = s->info.sae_hash, .n_bytes = d->n_bytes};
    struct idx_writer *w = NULL;
    pthread_mutex_lock(&s->r_mu);
    int rc = idx_writer_begin(s->rdb, &meta, &w, &err); /* a GPU scan's writer lets it in */
    if (rc == 0)
        d->id = idx_writer_doc(w);
    idx_writer_free(w);
    pthread_mutex_unlock(&s->r_mu);
    if (rc < 0) {
        S3_LOG(S3_LOG_ERROR, "event=doc_row_failed req=%llu rc=%d msg=\"%s\"",
               (unsigned long long)r->id, rc, err.msg);
        srv_error_from_code(&e, rc == S3_EBUSY ? S3_EBUSY : S3_EDB, "The index is not available.");
        ret = srv__reply_error(r, &e);
        goto out;
    }
    d->fd = fd;
    fd = -1;
    pthread_mutex_lock(&s->w_mu);
    dup = find_dup_locked(s, d->tenant, d->sha256, d->id);
    if (dup) { /* a twin arrived meanwhile: answer with it, drop our row */
        o = doc_json(s, NULL, dup);
        pthread_mutex_unlock(&s->w_mu);
        pthread_mutex_lock(&s->r_mu);
        idx_doc_delete(s->rdb, d->id, &err);
        pthread_mutex_unlock(&s->r_mu);
        ret = srv__reply_json(r, 202, o);
        goto out;
    }
    d->state = SRV_DOC_QUEUED;
    if (s->d_tail)
        s->d_tail->next = d;
    else
        s->d_head = d;
    s->d_tail = d;
    s->d_queued++;
    o = doc_json(s, NULL, d);
    pthread_cond_broadcast(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
    S3_LOG(S3_LOG_INFO, "event=doc_queued req=%llu doc=%lld bytes=%lld", (unsigned long long)r->id,
           (long long)d->id, (long long)d->n_bytes);
    d = NULL;
    ret = srv__reply_json(r, 202, o);
out:
    if (map)
        munmap((void *)map, len);
    if (fd >= 0)
        close(fd);
    if (d) {
        if (d->fd >= 0)
            close(d->fd);
        free(d);
    }
    free(jtext);
    free(jname);
    return ret;
}

/* ---- GET /v1/documents, GET/DELETE /v1/documents/{id} ----------------------------------------- */

enum MHD_Result srv__h_doc_list(struct srv *s, struct srv_req *r)
{
    struct s3_errinfo err = {0};
    struct idx_doc_info *docs = NULL;
    size_t n = 0;
    if (!s->docs_on)
        return no_docs(r);
    pthread_mutex_lock(&s->r_mu);
    int rc = idx_doc_list(s->rdb, r->tenant, 0, &docs, &n, &err);
    pthread_mutex_unlock(&s->r_mu);
    if (rc < 0) {
        struct srv_error e;
        srv_error_from_code(&e, S3_EDB, "The index is not available.");
        return srv__reply_error(r, &e);
    }
    json_t *data = json_array();
    pthread_mutex_lock(&s->w_mu);
    for (size_t i = 0; i < n; i++) {
        struct srv_doc_job *d = job_find_locked(s, docs[i].id, r->tenant);
        if (d && (__atomic_load_n(&d->cancel, __ATOMIC_SEQ_CST) || d->state == SRV_DOC_DELETED))
            continue; /* being deleted */
        json_array_append_new(data, doc_json(s, &docs[i], d));
    }
    pthread_mutex_unlock(&s->w_mu);
    free(docs);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return srv__reply_json(r, 200, o);
}

enum MHD_Result srv__h_doc_one(struct srv *s, struct srv_req *r)
{
    struct s3_errinfo err = {0};
    struct idx_doc_info info;
    int64_t id;
    if (!s->docs_on)
        return no_docs(r);
    if (srv_doc_id_parse(r->path_arg, &id) < 0)
        return not_found(r, r->path_arg);
    pthread_mutex_lock(&s->w_mu);
    struct srv_doc_job *d = job_find_locked(s, id, r->tenant);
    if (d && !job_active(d) && d->state != SRV_DOC_FAILED && d->state != SRV_DOC_READY)
        d = NULL;
    if (d && __atomic_load_n(&d->cancel, __ATOMIC_SEQ_CST)) {
        pthread_mutex_unlock(&s->w_mu);
        return not_found(r, r->path_arg); /* deleted, rows going */
    }
    if (r->method == SRV_M_DELETE && d && job_active(d)) {
        /* queued or scanning: the worker stops and removes the rows */
        __atomic_store_n(&d->cancel, 1, __ATOMIC_SEQ_CST);
        pthread_cond_broadcast(&s->w_cv);
        pthread_mutex_unlock(&s->w_mu);
        S3_LOG(S3_LOG_INFO, "event=doc_cancel req=%llu doc=%lld", (unsigned long long)r->id,
               (long long)id);
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(r->path_arg));
        json_object_set_new(o, "object", json_string("document"));
        json_object_set_new(o, "deleted", json_true());
        return srv__reply_json(r, 200, o);
    }
    pthread_mutex_unlock(&s->w_mu);
    if (r->method == SRV_M_DELETE) {
        r->doc_id = id;
        return srv_submit(s, r, SRV_JOB_DOC_DELETE);
    }
    pthread_mutex_lock(&s->r_mu);
    int rc = idx_doc_get(s->rdb, id, &info, &err);
    pthread_mutex_unlock(&s->r_mu);
    if (rc == S3_ENOTFOUND || (rc == 0 && strcmp(info.tenant, r->tenant) != 0))
        return not_found(r, r->path_arg);
    if (rc < 0) {
        struct srv_error e;
        srv_error_from_code(&e, S3_EDB, "The index is not available.");
        return srv__reply_error(r, &e);
    }
    pthread_mutex_lock(&s->w_mu);
    d = job_find_locked(s, id, r->tenant);
    json_t *o = doc_json(s, &info, d);
    pthread_mutex_unlock(&s->w_mu);
    return srv__reply_json(r, 200, o);
}

enum MHD_Result srv__h_retrieve(struct srv *s, struct srv_req *r)
{
    struct srv_error e;
    if (!s->docs_on)
        return no_docs(r);
    if (srv_retrieve_parse(r->body.data, r->body.len, &s->limits, &r->rq, &e) < 0)
        return srv__reply_error(r, &e);
    srv_buf_deinit(&r->body);
    return srv_submit(s, r, SRV_JOB_RETRIEVE);
}

/* ---- worker side ------------------------------------------------------------------------------ */

int srv__docs_open(struct srv *s, struct s3_errinfo *err)
{
    struct idx_open_opts oo = {.busy_ms = 10000, .writers_waiting = &s->db_waiters};
    struct idx_doc_info *docs = NULL;
    size_t n = 0;
    int rc = idx_open(s->cfg->db, &oo, &s->wdb, err);
    if (rc < 0)
        return rc;
    rc = idx_open(s->cfg->db, &oo, &s->rdb, err);
    if (rc < 0)
        return rc;
    rc = idx_open(s->cfg->db, &oo, &s->jdb, err);
    if (rc < 0)
        return rc;
    /* scans a previous run left unfinished cannot continue: their text is gone */
    if ((rc = idx_doc_list(s->wdb, NULL, 0, &docs, &n, err)) < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        struct idx_writer *w = NULL;
        struct s3_errinfo e2 = {0};
        if (docs[i].status != IDX_DOC_SCANNING)
            continue;
        if (idx_writer_resume(s->wdb, docs[i].id, &w, &e2) == 0)
            idx_writer_fail(w, "the server stopped during the scan; upload the text again",
                            &e2);
        idx_writer_free(w);
        S3_LOG(S3_LOG_WARN, "event=doc_stale doc=%lld marked=failed", (long long)docs[i].id);
    }
    free(docs);
    return 0;
}

void srv__docs_close(struct srv *s)
{
    idx_close(s->wdb);
    idx_close(s->rdb);
    idx_close(s->jdb);
    s->wdb = s->rdb = s->jdb = NULL;
    struct srv_doc_job *d = s->d_head;
    while (d) {
        struct srv_doc_job *next = d->next;
        if (d->fd >= 0)
            close(d->fd);
        free(d);
        d = next;
    }
    s->d_head = s->d_tail = NULL;
}

struct srv_doc_job *srv__docs_next_locked(struct srv *s)
{
    for (struct srv_doc_job *d = s->d_head; d; d = d->next)
        if (d->state == SRV_DOC_QUEUED) {
            d->state = SRV_DOC_SCANNING;
            d->t_start_ms = s3_now_ms();
            s->d_queued--;
            s->d_running++;
            return d;
        }
    return NULL;
}

struct ingest_run {
    struct srv *s;
    struct srv_doc_job *d;
    int64_t last_tokens;
};

static int on_ingest_progress(void *ud, int64_t done, int64_t total, int64_t n_tokens)
{
    struct ingest_run *g = ud;
    struct srv *s = g->s;
    (void)total;
    pthread_mutex_lock(&s->w_mu);
    g->d->done_bytes = done;
    g->d->n_tokens = n_tokens;
    double secs = (s3_now_ms() - g->d->t_start_ms) / 1e3;
    int stop = s->w_stop;
    pthread_mutex_unlock(&s->w_mu);
    atomic_fetch_add(&s->scan_tokens, (uint64_t)(n_tokens - g->last_tokens));
    g->last_tokens = n_tokens;
    if (secs > 0)
        atomic_store(&s->scan_tps_last, (double)n_tokens / secs);
    if (!stop && !__atomic_load_n(&g->d->cancel, __ATOMIC_SEQ_CST))
        srv__worker_yield(s); /* chats and other short jobs run between chunks */
    pthread_mutex_lock(&s->w_mu);
    stop = s->w_stop;
    pthread_mutex_unlock(&s->w_mu);
    return stop || __atomic_load_n(&g->d->cancel, __ATOMIC_SEQ_CST);
}

/* Mark a document row failed (it stays invisible to retrieval). */
static void fail_row(struct srv *s, int64_t id, const char *why)
{
    struct idx_writer *w = NULL;
    struct s3_errinfo err = {0};
    if (idx_writer_resume(s->wdb, id, &w, &err) == 0)
        idx_writer_fail(w, why, &err);
    idx_writer_free(w);
}

void srv__docs_ingest(struct srv *s, struct srv_doc_job *d)
{
    struct s3_errinfo err = {0};
    struct srv_scan_stats st = {0};
    struct ingest_run g = {.s = s, .d = d};
    int64_t doc = 0;
    int rc = 0, state;
    const char *map = NULL;
    size_t len = (size_t)d->n_bytes;
    double t0 = s3_now_ms();

    if (__atomic_load_n(&d->cancel, __ATOMIC_SEQ_CST)) {
        rc = S3_ECANCELED;
    } else if (!(map = map_fd(d->fd, len))) {
        rc = s3_errf(&err, S3_EIO, "cannot read the spooled upload");
    } else {
        struct srv_scan_doc_opts o = {.tenant = d->tenant, .name = d->name,
                                      .cancel = &d->cancel, .progress = on_ingest_progress,
                                      .progress_ud = &g};
        S3_LOG(S3_LOG_INFO, "event=scan_start doc=%lld bytes=%lld", (long long)d->id,
               (long long)d->n_bytes);
        rc = s->ops->scan(s->eng, SRV_SCANNER_DOCS, s->wdb, map, len, &o, &doc, &st, &err);
        if (rc == 0 && doc != d->id) {
            /* the scan made another row: the tags of the row made at upload differ */
            S3_LOG(S3_LOG_ERROR, "event=scan_row_mismatch doc=%lld got=%lld", (long long)d->id,
                   (long long)doc);
            idx_doc_delete(s->wdb, doc, &err);
            rc = s3_errf(&err, S3_EINTERNAL, "internal error: the scan did not continue the "
                                             "document row");
        }
    }
    double secs = (s3_now_ms() - t0) / 1e3;
    atomic_fetch_add(&s->scan_us, (uint64_t)(secs * 1e6));
    if (map)
        munmap((void *)map, len);
    int canceled = __atomic_load_n(&d->cancel, __ATOMIC_SEQ_CST);
    if (canceled) {
        idx_doc_delete(s->wdb, d->id, &err);
        state = SRV_DOC_DELETED;
    } else if (rc == 0) {
        state = SRV_DOC_READY;
    } else if (rc == S3_ECANCELED) {
        state = SRV_DOC_FAILED; /* stopping: the next start marks the row failed */
        snprintf(err.msg, sizeof err.msg, "the server stopped during the scan");
    } else {
        state = SRV_DOC_FAILED;
        fail_row(s, d->id, err.msg);
    }
    S3_LOG(S3_LOG_INFO,
           "event=scan_end doc=%lld state=%s rc=%d tokens=%lld chunks=%lld s=%.2f tok_per_s=%.0f "
           "forward_ms=%.0f encode_ms=%.0f write_ms=%.0f tokenize_ms=%.0f",
           (long long)d->id, state_name(state), rc, (long long)st.n_tokens,
           (long long)st.n_chunks, secs, secs > 0 ? (double)st.n_scanned / secs : 0,
           st.forward_ms, st.encode_ms, st.write_ms, st.tokenize_ms);

    pthread_mutex_lock(&s->w_mu);
    close(d->fd);
    d->fd = -1;
    d->state = state;
    d->t_end_ms = s3_now_ms();
    if (rc == 0)
        d->n_tokens = st.n_tokens, d->done_bytes = d->n_bytes;
    if (state == SRV_DOC_FAILED)
        snprintf(d->error, sizeof d->error, "%s", err.msg[0] ? err.msg : s3_strerror(rc));
    s->d_running--;
    if (state != SRV_DOC_FAILED) { /* the row tells the rest */
        job_unlink_locked(s, d);
        free(d);
    }
    /* forget the oldest failures past the cap */
    int n_failed = 0;
    for (struct srv_doc_job *x = s->d_head; x; x = x->next)
        n_failed += x->state == SRV_DOC_FAILED;
    while (n_failed > SRV_DOCS_KEEP_FAILED) {
        struct srv_doc_job *x = s->d_head;
        while (x && x->state != SRV_DOC_FAILED)
            x = x->next;
        if (!x)
            break;
        job_unlink_locked(s, x);
        free(x);
        n_failed--;
    }
    pthread_mutex_unlock(&s->w_mu);
}

void srv__docs_metrics(struct srv *s, struct srv_doc_metrics *dm)
{
    struct idx_doc_info *docs = NULL;
    size_t n = 0;
    struct s3_errinfo err = {0};
    memset(dm, 0, sizeof *dm);
    pthread_mutex_lock(&s->r_mu);
    if (idx_doc_list(s->rdb, NULL, 0, &docs, &n, &err) == 0)
        for (size_t i = 0; i < n; i++) {
            if (docs[i].status == IDX_DOC_READY)
                dm->n_ready++;
            else if (docs[i].status == IDX_DOC_FAILED)
                dm->n_failed++;
            else
                dm->n_scanning++;
        }
    idx_db_bytes(s->rdb, &dm->index_bytes, &err);
    pthread_mutex_unlock(&s->r_mu);
    free(docs);
    pthread_mutex_lock(&s->w_mu);
    dm->ingest_queued = s->d_queued;
    dm->ingest_running = s->d_running;
    pthread_mutex_unlock(&s->w_mu);
    dm->scan_tokens = atomic_load(&s->scan_tokens);
    dm->scan_seconds = (double)atomic_load(&s->scan_us) / 1e6;
    dm->scan_tps_last = atomic_load(&s->scan_tps_last);
}

/* ---- evidence ----------------------------------------------------------------------------------- */

int srv__evidence(struct srv *s, struct idx_db *db, const char *tenant, const int64_t *docs,
                  size_t n_docs, const char *question, int mode, int budget,
                  struct idx_result *res, struct srv_evidence_info *info, struct srv_error *e)
{
    struct s3_errinfo err = {0};
    struct idx_qfeat *qf = NULL;
    size_t nqf = 0;
    int rc;
    memset(res, 0, sizeof *res);
    memset(info, 0, sizeof *info);
    for (size_t i = 0; i < n_docs && tenant; i++) {
        struct idx_doc_info di;
        char id[32];
        rc = idx_doc_get(db, docs[i], &di, &err);
        if (rc == S3_ENOTFOUND || (rc == 0 && strcmp(di.tenant, tenant) != 0))
            return srv_errorf(e, 404, "invalid_request_error", "document_not_found", "documents",
                              "No document with id '%s'.", srv_doc_id_str(docs[i], id));
        if (rc < 0) {
            srv_error_from_code(e, S3_EDB, "The index is not available.");
            return rc;
        }
        if (di.status != IDX_DOC_READY)
            return srv_errorf(e, 409, "invalid_request_error", "document_not_ready", "documents",
                              "Document '%s' is not ready (status %s); wait until GET "
                              "/v1/documents/%s says ready.",
                              srv_doc_id_str(docs[i], id),
                              di.status == IDX_DOC_FAILED ? "failed" : "scanning", id);
    }
    if (mode < 0)
        mode = IDX_MODE_HYBRID;
    if (!s->info.has_sae && mode == IDX_MODE_HYBRID) {
        mode = IDX_MODE_BM25;
        info->note = "no SAE is loaded: hybrid retrieval ran as bm25";
    }
    if (!s->info.has_sae && mode == IDX_MODE_S3)
        return srv_errorf(e, 400, "invalid_request_error", "unsupported_value", "retrieval.mode",
                          "Retrieval mode 's3' needs an SAE, and this server runs without one.");
    info->mode = mode;
    info->budget = budget;
    double t0 = s3_now_ms();
    if (mode == IDX_MODE_S3 || mode == IDX_MODE_HYBRID) {
        size_t ql = strlen(question);
        /* the encoder takes at most SRV_SCAN_MAX_QTOKENS tokens: long questions keep their end */
        for (;;) {
            rc = s->ops->query(s->eng, question, ql, &qf, &nqf, &err);
            if (rc != S3_ETOOBIG || ql < 64)
                break;
            size_t cut = ql / 4;
            while (cut < ql && ((unsigned char)question[cut] & 0xc0) == 0x80)
                cut++;
            question += cut;
            ql -= cut;
        }
        if (rc < 0) {
            srv_error_from_code(e, rc == S3_EINVAL ? S3_EINVAL : S3_EINTERNAL, err.msg);
            return rc;
        }
    }
    info->encode_ms = s3_now_ms() - t0;
    struct idx_query q = {.mode = mode, .budget = budget, .text = question, .feats = qf,
                          .n_feats = nqf, .docs = docs, .n_docs = n_docs, .tenant = tenant};
    rc = idx_retrieve(db, &q, res, &err);
    free(qf);
    if (rc == S3_ETOOBIG)
        return srv_errorf(e, 400, "invalid_request_error", "context_length_exceeded",
                          "retrieval.budget",
                          "Mode 'full' needs the whole documents, and they are longer than the "
                          "budget of %d tokens; use 'hybrid', 'bm25' or 's3'.", budget);
    if (rc < 0) {
        srv_error_from_code(e, rc == S3_ENOTFOUND ? S3_ENOTFOUND : S3_EINTERNAL, err.msg);
        return rc;
    }
    info->retrieval_ms = res->ms;
    return 0;
}

json_t *srv_evidence_json(const struct idx_result *res, const char *doc_label, int64_t off)
{
    json_t *a = json_array();
    for (size_t i = 0; i < res->n_spans; i++) {
        const struct idx_span *sp = &res->spans[i];
        char id[32], src[64];
        json_t *o = json_object();
        json_object_set_new(o, "doc", json_string(doc_label ? doc_label
                                                            : srv_doc_id_str(sp->doc, id)));
        json_object_set_new(o, "start", json_integer(sp->start_char + off));
        json_object_set_new(o, "end", json_integer(sp->end_char + off));
        json_object_set_new(o, "start_token", json_integer(sp->start_tok));
        json_object_set_new(o, "end_token", json_integer(sp->end_tok));
        json_object_set_new(o, "score", json_real(sp->score));
        json_object_set_new(o, "source", json_string(idx_source_str(sp->sources, src,
                                                                    sizeof src)));
        json_object_set_new(o, "text", srv_json_text(sp->text ? sp->text : "",
                                                     sp->text ? strlen(sp->text) : 0));
        json_array_append_new(a, o);
    }
    return a;
}

/* ---- job runners ---------------------------------------------------------------------------------- */

void srv__run_retrieve(struct srv *s, struct srv_req *r)
{
    struct srv_error e;
    struct idx_result res;
    struct srv_evidence_info info;
    int budget = r->rq.ret.budget ? r->rq.ret.budget : s->cfg->retrieval_budget;
    if (__atomic_load_n(&r->cancel, __ATOMIC_SEQ_CST)) {
        srv_error_from_code(&e, S3_ECANCELED, "The request was canceled.");
        srv_req_reply_error(r, &e);
        return;
    }
    if (srv__evidence(s, s->jdb, r->tenant, r->rq.docs, r->rq.n_docs, r->rq.query,
                      r->rq.ret.mode, budget, &res, &info, &e) < 0) {
        srv_req_reply_error(r, &e);
        idx_result_deinit(&res);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("retrieval"));
    json_object_set_new(o, "query", srv_json_text(r->rq.query, strlen(r->rq.query)));
    json_object_set_new(o, "mode", json_string(idx_mode_name(info.mode)));
    json_object_set_new(o, "budget", json_integer(budget));
    json_object_set_new(o, "n_tokens", json_integer(res.n_tokens));
    json_object_set_new(o, "spans", srv_evidence_json(&res, NULL, 0));
    json_object_set_new(o, "encode_ms", json_real(info.encode_ms));
    json_object_set_new(o, "retrieval_ms", json_real(info.retrieval_ms));
    if (info.note)
        json_object_set_new(o, "note", json_string(info.note));
    idx_result_deinit(&res);
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    srv_req_reply(r, body ? 200 : 503, body, body ? strlen(body) : 0);
}

void srv__run_doc_delete(struct srv *s, struct srv_req *r)
{
    struct srv_error e;
    struct s3_errinfo err = {0};
    struct idx_doc_info info;
    char id[32];
    srv_doc_id_str(r->doc_id, id);
    /* an upload may have become active meanwhile (or this runs between its chunks) */
    pthread_mutex_lock(&s->w_mu);
    struct srv_doc_job *d = job_find_locked(s, r->doc_id, r->tenant);
    int active = d && job_active(d);
    if (active)
        __atomic_store_n(&d->cancel, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&s->w_mu);
    if (!active) {
        int rc = idx_doc_get(s->jdb, r->doc_id, &info, &err);
        if (rc == S3_ENOTFOUND || (rc == 0 && strcmp(info.tenant, r->tenant) != 0)) {
            srv_errorf(&e, 404, "invalid_request_error", "document_not_found", NULL,
                       "No document with id '%s'.", id);
            srv_req_reply_error(r, &e);
            return;
        }
        if (rc == 0) /* between a scan's chunks: its writer yields (s->db_waiters), or this
                        would wait for a commit that comes only with the next chunk */
            rc = idx_doc_delete(s->jdb, r->doc_id, &err);
        if (rc < 0) {
            srv_error_from_code(&e, S3_EDB, "The index is not available.");
            srv_req_reply_error(r, &e);
            return;
        }
        pthread_mutex_lock(&s->w_mu);
        d = job_find_locked(s, r->doc_id, r->tenant);
        if (d && d->state == SRV_DOC_FAILED) {
            job_unlink_locked(s, d);
            free(d);
        }
        pthread_mutex_unlock(&s->w_mu);
    }
    S3_LOG(S3_LOG_INFO, "event=doc_deleted req=%llu doc=%s", (unsigned long long)r->id, id);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "object", json_string("document"));
    json_object_set_new(o, "deleted", json_true());
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    srv_req_reply(r, body ? 200 : 503, body, body ? strlen(body) : 0);
}
