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

static void reply_canceled(struct srv *s, struct srv_req *r, int why)
{
    struct srv_error e;
    if (why == SRV_CANCEL_DEADLINE)
        atomic_fetch_add(&s->metrics.gen_timeouts, 1);
    else if (why == SRV_CANCEL_CLIENT)
        atomic_fetch_add(&s->metrics.gen_canceled, 1);
    srv_error_from_code(&e, why == SRV_CANCEL_DEADLINE ? S3_ETIMEDOUT : S3_ECANCELED,
                        why == SRV_CANCEL_DEADLINE ? "The request hit its deadline."
                                                   : "The request was canceled.");
    srv_req_reply_error(r, &e);
}

/* ---- prompts around evidence ---------------------------------------------------------------- */

/* What a request with documents or an over-long prompt turns into. */
struct plan {
    int32_t *ids;            /* the prompt to generate from (new) */
    size_t n_ids;
    json_t *s3;              /* the "s3" object of the response (owned ref) */
    json_t *evidence;        /* the "evidence" array, or NULL (owned ref) */
};

static void plan_deinit(struct plan *p)
{
    free(p->ids);
    json_decref(p->s3);
    json_decref(p->evidence);
    memset(p, 0, sizeof *p);
}

/* A planning failure: the cancel reason when there is one, else e. */
static void reply_plan_error(struct srv *s, struct srv_req *r, const struct srv_error *e)
{
    int why = load_cancel(r);
    if (why)
        reply_canceled(s, r, why);
    else
        srv_req_reply_error(r, e);
}

/* Index of the message that carries the question: the last user message (-1: none). */
static int last_user(const struct srv_gen_req *g)
{
    for (size_t i = g->n_msgs; i > 0; i--)
        if (!strcmp(g->msgs[i - 1].role, "user"))
            return (int)(i - 1);
    return -1;
}

/* Tokens of the request with its question text (message `at`, or the prompt) replaced by
 * a + b + c. */
static int compose(struct srv *s, struct srv_req *r, int at, const char *a, size_t na,
                   const char *b, size_t nb, const char *c, size_t nc, int32_t **ids,
                   size_t *n_ids, struct srv_error *e)
{
    struct s3_errinfo err = {0};
    struct srv_gen_req g2 = r->gen; /* shallow: only the replaced text is ours */
    struct srv_msg *msgs = NULL;
    char *text = malloc(na + nb + nc + 1);
    int rc;
    if (!text)
        goto oom;
    memcpy(text, a, na);
    memcpy(text + na, b, nb);
    memcpy(text + na + nb, c, nc);
    text[na + nb + nc] = 0;
    if (r->gen.kind == SRV_GEN_CHAT) {
        msgs = malloc(r->gen.n_msgs * sizeof *msgs);
        if (!msgs)
            goto oom;
        memcpy(msgs, r->gen.msgs, r->gen.n_msgs * sizeof *msgs);
        msgs[at].content = text;
        g2.msgs = msgs;
    } else {
        g2.prompt = text;
    }
    rc = s->ops->tokenize(s->eng, &g2, ids, n_ids, &err);
    free(msgs);
    free(text);
    if (rc < 0)
        srv_error_from_code(e, rc, err.msg);
    return rc;
oom:
    free(text);
    srv_error_from_code(e, S3_ENOMEM, NULL);
    return S3_ENOMEM;
}

/* Evidence text: spans joined by sep. New string (free()), NULL on ENOMEM. */
static char *join_spans(const struct idx_result *res, const char *sep, size_t *len)
{
    struct srv_buf b = {0};
    int rc = srv_buf_append(&b, "", 0);
    for (size_t i = 0; i < res->n_spans && rc == 0; i++) {
        if (i)
            rc = srv_buf_append(&b, sep, strlen(sep));
        if (rc == 0 && res->spans[i].text)
            rc = srv_buf_append(&b, res->spans[i].text, strlen(res->spans[i].text));
    }
    if (rc < 0) {
        srv_buf_deinit(&b);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

/* Completion tokens to reserve when planning a prompt. */
static int reserve_tokens(const struct srv *s, const struct srv_req *r)
{
    if (r->gen.max_tokens)
        return r->gen.max_tokens;
    return s->cfg->default_max_tokens < 256 ? s->cfg->default_max_tokens : 256;
}

/* Tokens left for evidence between a and c (the prompt composed without evidence), less
 * slack, in *avail; an explicit retrieval budget over that is refused (400). `beside` names
 * what a and c are in that message. */
static int evidence_room(struct srv *s, struct srv_req *r, int at, const char *a, size_t na,
                         const char *c, size_t nc, int slack, const char *beside, long *avail,
                         struct srv_error *e)
{
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = compose(s, r, at, a, na, "", 0, c, nc, &ids, &n_ids, e);
    free(ids);
    if (rc < 0)
        return rc;
    *avail = (long)s->info.n_ctx - (long)n_ids - reserve_tokens(s, r) - slack;
    int budget = r->gen.ret.budget;
    if (budget && budget > *avail)
        return srv_errorf(e, 400, "invalid_request_error", "context_length_exceeded",
                          "retrieval.budget",
                          "The evidence budget of %d tokens does not fit the window of %d "
                          "tokens next to %s (%zu tokens) and the completion (%d tokens); at "
                          "most %ld fits.", budget, s->info.n_ctx, beside, n_ids,
                          reserve_tokens(s, r), *avail > 0 ? *avail : 0);
    return 0;
}

static const char doc_instr[] =
    "Answer the question using the evidence below, which was retrieved from the documents. "
    "Answer briefly.\n\nEvidence:\n";

static json_t *s3_object(const char *path, const struct srv_evidence_info *info,
                         const struct idx_result *res)
{
    json_t *o = json_object();
    json_object_set_new(o, "path", json_string(path));
    json_object_set_new(o, "mode", json_string(idx_mode_name(info->mode)));
    json_object_set_new(o, "budget", json_integer(info->budget));
    json_object_set_new(o, "evidence_tokens", json_integer(res->n_tokens));
    json_object_set_new(o, "n_spans", json_integer((json_int_t)res->n_spans));
    json_object_set_new(o, "encode_ms", json_real(info->encode_ms));
    json_object_set_new(o, "retrieval_ms", json_real(info->retrieval_ms));
    if (info->note)
        json_object_set_new(o, "note", json_string(info->note));
    return o;
}

/* Documents: evidence for the question (the last user message / the prompt), then
 * instruction + evidence + question in the chat template. */
static int plan_documents(struct srv *s, struct srv_req *r, struct plan *pl,
                          struct srv_error *e)
{
    struct idx_result res = {0};
    struct srv_evidence_info info;
    size_t evn = 0;
    char *ev = NULL;
    int rc, at = -1;
    const char *question;
    if (r->gen.kind == SRV_GEN_CHAT) {
        if ((at = last_user(&r->gen)) < 0)
            return srv_errorf(e, 400, "invalid_request_error", "invalid_value", "messages",
                              "With 'documents', the messages must contain a user message "
                              "(the question).");
        question = r->gen.msgs[at].content;
    } else {
        if (!r->gen.prompt)
            return srv_errorf(e, 400, "invalid_request_error", "unsupported_value", "prompt",
                              "With 'documents', the prompt must be text, not token ids.");
        question = r->gen.prompt;
    }
    if (!*question)
        return srv_errorf(e, 400, "invalid_request_error", "invalid_value",
                          r->gen.kind == SRV_GEN_CHAT ? "messages" : "prompt",
                          "With 'documents', the question must not be empty.");
    static const char qhead[] = "\n\nQuestion: ";
    size_t ql = strlen(question);
    char *tail = malloc(sizeof qhead + ql);
    if (!tail) {
        srv_error_from_code(e, S3_ENOMEM, NULL);
        return S3_ENOMEM;
    }
    memcpy(tail, qhead, sizeof qhead - 1);
    memcpy(tail + sizeof qhead - 1, question, ql + 1);
    size_t tl = sizeof qhead - 1 + ql;
    /* the budget: as asked, else the configured one, as far as the window allows */
    long avail;
    if ((rc = evidence_room(s, r, at, doc_instr, sizeof doc_instr - 1, tail, tl, 16,
                            "the prompt", &avail, e)) < 0)
        goto out;
    int budget = r->gen.ret.budget;
    if (!budget) {
        budget = s->cfg->retrieval_budget;
        if (budget > avail * 9 / 10)
            budget = (int)(avail * 9 / 10);
    }
    if (budget < 16) {
        rc = srv_errorf(e, 400, "invalid_request_error", "context_length_exceeded", "messages",
                        "The prompt leaves no room for evidence in the window of %d tokens.",
                        s->info.n_ctx);
        goto out;
    }
    if ((rc = srv__evidence(s, s->jdb, r->tenant, r->gen.docs, r->gen.n_docs, question,
                            r->gen.ret.mode, budget, &res, &info, e)) < 0)
        goto out;
    if (!(ev = join_spans(&res, "\n...\n", &evn))) {
        srv_error_from_code(e, S3_ENOMEM, NULL);
        rc = S3_ENOMEM;
        goto out;
    }
    if ((rc = compose(s, r, at, doc_instr, sizeof doc_instr - 1, ev, evn, tail, tl, &pl->ids,
                      &pl->n_ids, e)) < 0)
        goto out;
    pl->s3 = s3_object("retrieval", &info, &res);
    json_t *docs = json_array();
    for (size_t i = 0; i < r->gen.n_docs; i++) {
        char id[32];
        json_array_append_new(docs, json_string(srv_doc_id_str(r->gen.docs[i], id)));
    }
    json_object_set_new(pl->s3, "documents", docs);
    pl->evidence = srv_evidence_json(&res, NULL, 0);
out:
    free(tail);
    free(ev);
    idx_result_deinit(&res);
    return rc;
}

/* May an over-long request take the long-prompt path? */
static int long_eligible(const struct srv *s, const struct srv_req *r)
{
    if (!s->docs_on || r->gen.ret.mode == IDX_MODE_FULL || !s->ops->token_ends)
        return 0;
    if (r->gen.kind == SRV_GEN_CHAT)
        return last_user(&r->gen) >= 0;
    return r->gen.prompt != NULL;
}

/* Where the question starts in the tail t (n bytes): after the last blank line, or the one
 * before it when what follows is short ("Answer:"); at most the last 2000 bytes. */
static size_t long_question_start(const char *t, size_t n)
{
    size_t end = n, start = 0;
    for (int para = 0; para < 3; para++) {
        size_t p = end;
        while (p >= 2 && !(t[p - 1] == '\n' && t[p - 2] == '\n'))
            p--;
        if (p < 2)
            break;
        start = p;
        if (n - start >= 48)
            break;
        end = p - 2;
    }
    if (n - start > 2000) {
        start = n - 2000;
        while (start < n && ((unsigned char)t[start] & 0xc0) == 0x80)
            start++;
    }
    return start;
}

/* Over-long prompt: head and tail of the question text kept, the middle scanned as a
 * transient document (an in-memory index, gone after), evidence for the tail in between. */
static int plan_long(struct srv *s, struct srv_req *r, size_t n_orig, struct plan *pl,
                     struct srv_error *e)
{
    struct s3_errinfo err = {0};
    struct idx_db *tdb = NULL;
    struct idx_result res = {0};
    struct srv_evidence_info info = {0};
    struct srv_scan_stats st = {0};
    size_t *ends = NULL, n_tok = 0, evn = 0;
    char *ev = NULL, *tailq = NULL, sha[65] = "";
    size_t mlen = 0;
    int64_t tdoc = 0;
    int rc, at = -1;
    const char *what = r->gen.kind == SRV_GEN_CHAT ? "messages" : "prompt";
    const char *text = r->gen.kind == SRV_GEN_CHAT
                           ? r->gen.msgs[(at = last_user(&r->gen))].content
                           : r->gen.prompt;
    size_t len = strlen(text);
    int head = s->cfg->long_head_tokens, tailn = s->cfg->long_tail_tokens;

    if ((rc = s->ops->token_ends(s->eng, text, len, &ends, &n_tok, &err)) < 0) {
        srv_error_from_code(e, rc, err.msg);
        goto out;
    }
    if (n_tok < (size_t)(head + tailn) + 64) {
        rc = srv_errorf(e, 400, "invalid_request_error", "context_length_exceeded", what,
                        "This model's maximum context length is %d tokens. However, your %s "
                        "resulted in %zu tokens, and the long part is not the last user "
                        "message. Shorten the %s.", s->info.n_ctx, what, n_orig, what);
        goto out;
    }
    size_t h_end, t_start;
    srv_long_split(text, len, ends, n_tok, head, tailn, &h_end, &t_start);
    static const char sep_a[] = "\n\n[...]\n", sep_b[] = "\n[...]\n\n";
    /* room left for evidence next to head, tail and the completion */
    long avail;
    if ((rc = evidence_room(s, r, at, text, h_end, text + t_start, len - t_start, 24,
                            "the kept head and tail", &avail, e)) < 0)
        goto out;
    int budget = r->gen.ret.budget;
    if (!budget)
        budget = (int)(avail * 9 / 10);
    if (budget < 16) {
        rc = srv_errorf(e, 400, "invalid_request_error", "context_length_exceeded", what,
                        "The kept head and tail of the %s and the completion leave no room for "
                        "evidence in the window of %d tokens; lower max_tokens.", what,
                        s->info.n_ctx);
        goto out;
    }
    if (srv_text_check(text + h_end, t_start - h_end, what, e) < 0) {
        rc = S3_EINVAL;
        goto out;
    }
    /* the middle, scanned into an in-memory index, or found in the long-prompt cache */
    mlen = t_start - h_end;
    struct srv_lcache_hit hit = {0};
    struct idx_db *db = NULL;
    double scan_ms = 0;
    s3_sha256_hex(text + h_end, mlen, sha);
    if (srv_lcache_get(s->lcache, sha, mlen, &hit)) {
        db = hit.db;
        tdoc = hit.doc;
        st.n_tokens = hit.n_tokens;
    } else {
        if ((rc = idx_open(":memory:", NULL, &tdb, &err)) < 0) {
            srv_error_from_code(e, S3_EINTERNAL, err.msg);
            goto out;
        }
        struct srv_scan_doc_opts o = {.name = "prompt", .no_resume = 1,
                                      .cancel = (const volatile int *)&r->cancel};
        double t0 = s3_now_ms();
        rc = s->ops->scan(s->eng, SRV_SCANNER_TRANSIENT, tdb, text + h_end, mlen, &o, &tdoc,
                          &st, &err);
        scan_ms = s3_now_ms() - t0;
        atomic_fetch_add(&s->scan_tokens, (uint64_t)st.n_scanned);
        atomic_fetch_add(&s->scan_us, (uint64_t)(scan_ms * 1e3));
        if (rc < 0) {
            srv_error_from_code(e, rc == S3_ECANCELED ? S3_ECANCELED : S3_EINTERNAL, err.msg);
            goto out;
        }
        db = tdb;
    }
    /* the question: the last paragraphs of the tail (prompts end with the question; the
     * rest of the tail is context, whose words would drown the question's in BM25) */
    size_t q0 = long_question_start(text + t_start, len - t_start) + t_start;
    tailq = strndup(text + q0, len - q0);
    if (!tailq) {
        srv_error_from_code(e, S3_ENOMEM, NULL);
        rc = S3_ENOMEM;
        goto out;
    }
    if ((rc = srv__evidence(s, db, NULL, &tdoc, 1, tailq, r->gen.ret.mode, budget, &res, &info,
                            e)) < 0)
        goto out;
    size_t jn;
    char *joined = join_spans(&res, "\n[...]\n", &jn);
    if (joined) {
        ev = malloc(sizeof sep_a + jn + sizeof sep_b);
        if (ev) {
            evn = (size_t)snprintf(ev, sizeof sep_a + jn + sizeof sep_b, "%s%s%s", sep_a,
                                   joined, sep_b);
        }
        free(joined);
    }
    if (!ev) {
        srv_error_from_code(e, S3_ENOMEM, NULL);
        rc = S3_ENOMEM;
        goto out;
    }
    if ((rc = compose(s, r, at, text, h_end, ev, evn, text + t_start, len - t_start, &pl->ids,
                      &pl->n_ids, e)) < 0)
        goto out;
    pl->s3 = s3_object("long_prompt", &info, &res);
    json_object_set_new(pl->s3, "prompt_tokens_original", json_integer((json_int_t)n_orig));
    json_object_set_new(pl->s3, "head_bytes", json_integer((json_int_t)h_end));
    json_object_set_new(pl->s3, "tail_bytes", json_integer((json_int_t)(len - t_start)));
    json_object_set_new(pl->s3, "scanned_tokens", json_integer(st.n_tokens));
    json_object_set_new(pl->s3, "scan_cached", json_boolean(db != tdb));
    json_object_set_new(pl->s3, "scan_ms", json_real(scan_ms));
    json_object_set_new(pl->s3, "scan_tokens_per_second",
                        json_real(scan_ms > 0 ? (double)st.n_tokens * 1e3 / scan_ms : 0));
    pl->evidence = srv_evidence_json(&res, "prompt", (int64_t)h_end);
    S3_LOG(S3_LOG_INFO,
           "event=long_prompt req=%llu tokens=%zu scanned=%lld cached=%d scan_ms=%.0f mode=%s "
           "budget=%d evidence_tokens=%lld prompt_tokens=%zu",
           (unsigned long long)r->id, n_orig, (long long)st.n_tokens, db != tdb, scan_ms,
           idx_mode_name(info.mode), budget, (long long)res.n_tokens, pl->n_ids);
out:
    free(ends);
    free(ev);
    free(tailq);
    idx_result_deinit(&res);
    if (tdb && rc == 0) /* kept for a repeat of this context, or closed */
        srv_lcache_put(s->lcache, sha, mlen, tdb, tdoc, st.n_tokens);
    else
        idx_close(tdb);
    return rc;
}

static void run_generate(struct srv *s, struct srv_req *r)
{
    struct gen_run g = {.s = s, .r = r};
    struct plan pl = {0};
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
        reply_canceled(s, r, why);
        goto out;
    }

    /* prompt tokens: the request as is, or rebuilt around retrieved evidence */
    if (r->gen.n_docs) {
        if (!s->docs_on) {
            srv_errorf(&e, 503, "server_error", "documents_unavailable", "documents",
                       "This server runs without the document index.");
            srv_req_reply_error(r, &e);
            goto out;
        }
        if (plan_documents(s, r, &pl, &e) < 0) {
            reply_plan_error(s, r, &e);
            goto out;
        }
        ids = pl.ids;
        n_ids = pl.n_ids;
        pl.ids = NULL;
    } else if (r->gen.prompt_ids) {
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
    int want = r->gen.max_tokens ? r->gen.max_tokens : 1;
    /* an explicit retrieval mode and budget on a prompt longer than budget + head + tail
     * asks for the evidence path even when the prompt would fit (matched-budget runs) */
    const int asked = r->gen.ret.mode >= 0 && r->gen.ret.budget > 0 &&
                      n_ids > (size_t)r->gen.ret.budget + (size_t)s->cfg->long_head_tokens +
                                  (size_t)s->cfg->long_tail_tokens;
    if (!r->gen.n_docs && (n_ids + (size_t)want > (size_t)n_ctx || asked) &&
        long_eligible(s, r)) {
        /* longer than the window (or retrieval asked for): scan the middle, answer from
         * head + evidence + tail */
        free(ids);
        ids = NULL;
        if (plan_long(s, r, n_ids, &pl, &e) < 0) {
            reply_plan_error(s, r, &e);
            goto out;
        }
        ids = pl.ids;
        n_ids = pl.n_ids;
        pl.ids = NULL;
    }
    if (!pl.s3) {
        pl.s3 = json_object();
        json_object_set_new(pl.s3, "path", json_string("full"));
    }
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
        if (first) {
            json_object_set(first, "s3", pl.s3);
            if (pl.evidence)
                json_object_set(first, "evidence", pl.evidence);
        }
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
        json_t *resp = srv_completion_new(&g.meta, g.text.data, g.text.len, finish, r->n_prompt,
                                          r->n_completion);
        if (resp) {
            json_object_set(resp, "s3", pl.s3);
            if (pl.evidence)
                json_object_set(resp, "evidence", pl.evidence);
        }
        reply_json_obj(r, 200, resp);
    }
    S3_LOG(S3_LOG_INFO,
           "event=generate req=%llu prompt_tokens=%d completion_tokens=%d finish=%s "
           "prefill_ms=%.1f decode_ms=%.1f",
           (unsigned long long)r->id, r->n_prompt, r->n_completion, finish, res.prefill_ms,
           res.decode_ms);
out:
    free(ids);
    plan_deinit(&pl);
    srv_buf_deinit(&g.text);
    srv_buf_deinit(&g.out);
}

/* Runners by job kind (enum srv_job_kind). */
static const srv_job_fn srv_job_runners[SRV_JOB__N] = {
    [SRV_JOB_GENERATE] = run_generate,
    [SRV_JOB_RETRIEVE] = srv__run_retrieve,
    [SRV_JOB_DOC_DELETE] = srv__run_doc_delete,
};

static void run_job(struct srv *s, struct srv_req *r)
{
    if (r->kind >= 0 && r->kind < SRV_JOB__N && srv_job_runners[r->kind]) {
        srv_job_runners[r->kind](s, r);
    } else {
        struct srv_error e;
        srv_error_from_code(&e, S3_EINTERNAL, "unknown job kind");
        srv_req_reply_error(r, &e);
    }
    srv__inbox_post(s, r, SRV_IN_DONE);
}

/* At most this many interactive jobs run between two chunks of a scan, so that a steady
 * stream of chats slows an ingestion down but never stops it. */
#define SRV_YIELD_JOBS 4
#define SRV_YIELD_WAIT_MS 5

void srv__worker_yield(struct srv *s)
{
    if (s->w_nested)
        return;
    s->w_nested = 1;
    for (int i = 0; i < SRV_YIELD_JOBS; i++) {
        pthread_mutex_lock(&s->w_mu);
        if (!s->w_job && i > 0 && atomic_load(&s->metrics.queue_depth) > 0 && !s->w_stop) {
            /* the loop hands over the next waiting job as soon as it sees the last DONE */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += SRV_YIELD_WAIT_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->w_cv, &s->w_mu, &ts);
        }
        struct srv_req *r = s->w_job;
        s->w_job = NULL;
        pthread_mutex_unlock(&s->w_mu);
        if (!r)
            break;
        run_job(s, r);
    }
    s->w_nested = 0;
}

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
    s->docs_on = s->ops->scan && s->ops->query;
    if (rc == 0 && s->docs_on && (rc = srv__docs_open(s, &err)) < 0) {
        char msg[sizeof err.msg];
        snprintf(msg, sizeof msg, "%s", err.msg);
        s3_errf(&err, rc, "index database %s: %s", s->cfg->db, msg);
        srv__docs_close(s);
        s->ops->close(s->eng);
        s->eng = NULL;
    }
    if (rc == 0 && (rc = srv_lcache_new((int64_t)s->cfg->long_cache_mb << 20, &s->lcache)) < 0) {
        s3_errf(&err, rc, "out of memory");
        if (s->docs_on)
            srv__docs_close(s);
        s->ops->close(s->eng);
        s->eng = NULL;
    }
    pthread_mutex_lock(&s->w_mu);
    s->w_loaded = rc < 0 ? rc : 1;
    s->w_err = err;
    pthread_cond_broadcast(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
    if (rc < 0)
        return NULL;
    for (;;) {
        /* interactive jobs first; uploads when there is none */
        pthread_mutex_lock(&s->w_mu);
        while (!s->w_job && !s->w_stop && !s->d_queued)
            pthread_cond_wait(&s->w_cv, &s->w_mu);
        struct srv_req *r = s->w_job;
        struct srv_doc_job *d = NULL;
        s->w_job = NULL;
        if (!r && !s->w_stop)
            d = srv__docs_next_locked(s);
        pthread_mutex_unlock(&s->w_mu);
        if (r)
            run_job(s, r);
        else if (d)
            srv__docs_ingest(s, d);
        else
            break; /* stop, and no job left */
    }
    srv_lcache_free(s->lcache);
    s->lcache = NULL;
    if (s->docs_on)
        srv__docs_close(s);
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
