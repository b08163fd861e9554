/* tests/server/test_http.c - the whole server (MHD threads, loop, worker) over loopback
 * sockets, with a stub engine so that timing is controlled: replies and SSE, error routes,
 * auth, overload (429), deadlines (504), client disconnect cancelling a generation, and a
 * shutdown with work in flight. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srv_int.h"
#include "testutil.h"

/* ---- stub engine: one token per prompt byte; emits "t<i> " every stub_delay_ms ---------- */

static int stub_delay_ms;
static atomic_int stub_canceled, stub_started;

static int stub_open(void **eng, const struct cfg *c, struct srv_model_info *info,
                     struct s3_errinfo *err)
{
    (void)c;
    (void)err;
    *eng = NULL;
    info->n_ctx = 64;
    info->n_vocab = 256;
    snprintf(info->arch, sizeof info->arch, "stub");
    return 0;
}

static void stub_close(void *eng)
{
    (void)eng;
}

static int stub_tokenize(void *eng, const struct srv_gen_req *g, int32_t **ids, size_t *n,
                         struct s3_errinfo *err)
{
    (void)eng;
    (void)err;
    size_t len = 0;
    if (g->kind == SRV_GEN_CHAT)
        for (size_t i = 0; i < g->n_msgs; i++)
            len += strlen(g->msgs[i].content);
    else
        len = strlen(g->prompt);
    *ids = calloc(len + 1, sizeof **ids);
    *n = len;
    return *ids ? 0 : S3_ENOMEM;
}

static int stub_generate(void *eng, const int32_t *ids, size_t n, const struct eng_gen_params *p,
                         const int *cancel, eng_emit_fn emit, void *ud,
                         struct eng_gen_result *res, struct s3_errinfo *err)
{
    (void)eng;
    (void)ids;
    (void)err;
    atomic_fetch_add(&stub_started, 1);
    res->n_prompt = (int)n;
    res->finish = ENG_FINISH_LENGTH;
    for (int i = 0; i < p->max_tokens; i++) {
        if (stub_delay_ms) {
            struct timespec ts = {0, (long)stub_delay_ms * 1000000L};
            nanosleep(&ts, NULL);
        }
        char piece[16];
        int len = snprintf(piece, sizeof piece, "t%d ", i);
        if (__atomic_load_n(cancel, __ATOMIC_SEQ_CST) || emit(ud, piece, (size_t)len)) {
            res->finish = ENG_FINISH_CANCEL;
            atomic_fetch_add(&stub_canceled, 1);
            return S3_ECANCELED;
        }
        res->n_completion = i + 1;
    }
    return 0;
}

static const struct srv_engine_ops stub_ops = {
    .open = stub_open, .close = stub_close, .tokenize = stub_tokenize, .generate = stub_generate};

/* ---- harness ---------------------------------------------------------------------------- */

static struct cfg cfg;
static struct srv server;

static void start(const char *extra_key, const char *extra_val)
{
    struct s3_errinfo err = {0};
    cfg_defaults(&cfg);
    cfg.port = 0;
    cfg.http_threads = 2;
    snprintf(cfg.model_id, sizeof cfg.model_id, "stub-model");
    cfg.max_body_bytes = 4096;
    cfg.max_tokens_limit = 100;
    cfg.default_max_tokens = 4;
    if (extra_key)
        ck_assert_msg(cfg_set(&cfg, extra_key, extra_val, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(cfg_validate(&cfg, &err), 0);
    s3_log_set_level(getenv("S3_TEST_VERBOSE") ? S3_LOG_DEBUG : S3_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    ck_assert_msg(srv_start(&server, &cfg, &stub_ops, &err) == 0, "%s", err.msg);
    ck_assert_int_gt(server.port, 0);
}

static void stop(void)
{
    srv_stop(&server);
    cfg_deinit(&cfg);
}

static int connect_srv(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(server.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {10, 0}; /* a hang fails the test instead of blocking it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_req(int fd, const char *method, const char *path, const char *headers,
                     const char *body)
{
    char buf[8192];
    int n = snprintf(buf, sizeof buf,
                     "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%sContent-Length: %zu"
                     "\r\n\r\n%s",
                     method, path, headers ? headers : "", body ? strlen(body) : 0,
                     body ? body : "");
    ck_assert_int_eq(write(fd, buf, (size_t)n), n);
}

struct reply {
    int status;
    char raw[65536];
    const char *body;
};

static void read_reply(int fd, struct reply *r)
{
    size_t len = 0;
    ssize_t n;
    while (len < sizeof r->raw - 1 && (n = read(fd, r->raw + len, sizeof r->raw - 1 - len)) > 0)
        len += (size_t)n;
    r->raw[len] = 0;
    r->status = 0;
    sscanf(r->raw, "HTTP/1.%*d %d", &r->status);
    const char *b = strstr(r->raw, "\r\n\r\n");
    r->body = b ? b + 4 : "";
}

static void http(const char *method, const char *path, const char *headers, const char *body,
                 struct reply *r)
{
    int fd = connect_srv();
    send_req(fd, method, path, headers, body);
    read_reply(fd, r);
    close(fd);
}

static double now_ms(void)
{
    return s3_now_ms();
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define CHAT(extra) "{\"model\":\"stub-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]" extra "}"

/* ---- tests ------------------------------------------------------------------------------ */

START_TEST(replies)
{
    static struct reply r;
    stub_delay_ms = 0;
    start(NULL, NULL);

    http("GET", "/health", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"ready\":true"));

    http("GET", "/v1/models", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"id\":\"stub-model\""));
    http("GET", "/v1/models/stub-model", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    http("GET", "/v1/models/other", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 404);

    http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":3"), &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"content\":\"t0 t1 t2 \""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"finish_reason\":\"length\""));
    ck_assert_ptr_nonnull(
        strstr(r.body, "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,"
                       "\"total_tokens\":5}"));

    /* default max_tokens comes from the config (4) */
    http("POST", "/v1/completions", NULL, "{\"prompt\":\"abc\"}", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"text\":\"t0 t1 t2 t3 \""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"object\":\"text_completion\""));

    http("POST", "/v1/chat/completions", NULL,
         CHAT(",\"max_tokens\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true}"),
         &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.raw, "Content-Type: text/event-stream"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"delta\":{\"content\":\"t1 \"}"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"delta\":{},\"logprobs\":null,\"finish_reason\":"
                                         "\"length\"}],\"usage\":null}"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"choices\":[],\"usage\":{\"prompt_tokens\":2,"
                                         "\"completion_tokens\":2,\"total_tokens\":4}}"));
    ck_assert_ptr_nonnull(strstr(r.body, "data: [DONE]\n\n"));

    http("GET", "/metrics", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(
        strstr(r.body, "s3_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"));
    ck_assert_ptr_nonnull(strstr(r.body, "s3_completion_tokens_total 9\n"));
    stop();
}
END_TEST

START_TEST(errors)
{
    static struct reply r;
    stub_delay_ms = 0;
    start(NULL, NULL);
    http("GET", "/nope", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert_ptr_nonnull(strstr(r.body, "\"error\":{\"message\":\"Invalid URL (GET /nope)\""));

    http("GET", "/v1/chat/completions", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strstr(r.raw, "Allow: POST\r\n"));
    http("DELETE", "/health", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strstr(r.raw, "Allow: GET, HEAD\r\n"));

    http("POST", "/v1/chat/completions", NULL, "{\"messages\":", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"invalid_json\""));

    http("POST", "/v1/chat/completions", NULL, CHAT(",\"model\":\"gpt-9\""), &r);
    ck_assert_int_eq(r.status, 400); /* duplicate "model" key: rejected as malformed */
    http("POST", "/v1/chat/completions", NULL,
         "{\"model\":\"gpt-9\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"model_not_found\""));

    /* 413: declared too large (answered before the body), and sent too large */
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    http("POST", "/v1/completions", NULL, big, &r);
    ck_assert_int_eq(r.status, 413);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"request_too_large\""));
    {
        int fd = connect_srv();
        const char *hdr = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n";
        ck_assert_int_eq(write(fd, hdr, strlen(hdr)), (ssize_t)strlen(hdr));
        char chunk[64];
        for (int i = 0; i < 3; i++) {
            int n = snprintf(chunk, sizeof chunk, "%zx\r\n", sizeof big - 1);
            ck_assert_int_eq(write(fd, chunk, (size_t)n), n);
            ck_assert_int_eq(write(fd, big, sizeof big - 1), (ssize_t)(sizeof big - 1));
            ck_assert_int_eq(write(fd, "\r\n", 2), 2);
        }
        ck_assert_int_eq(write(fd, "0\r\n\r\n", 5), 5);
        read_reply(fd, &r);
        close(fd);
        ck_assert_int_eq(r.status, 413);
    }

    /* prompt longer than the window (64) and prompt + max_tokens over it */
    char body[6000];
    memset(big, 'x', 100);
    big[100] = 0;
    snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", big);
    http("POST", "/v1/completions", NULL, body, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"context_length_exceeded\""));
    ck_assert_ptr_nonnull(strstr(r.body, "maximum context length is 64 tokens"));
    http("POST", "/v1/completions", NULL, "{\"prompt\":\"abcdefghij\",\"max_tokens\":60}", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"param\":\"max_tokens\""));
    http("POST", "/v1/completions", NULL, "{\"prompt\":\"\"}", &r);
    ck_assert_int_eq(r.status, 400);
    http("POST", "/v1/completions", NULL, "{\"prompt\":\"a\",\"max_tokens\":101}", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"integer_above_max_value\""));

    /* the server still works */
    http("POST", "/v1/completions", NULL, "{\"prompt\":\"a\",\"max_tokens\":1}", &r);
    ck_assert_int_eq(r.status, 200);
    stop();
}
END_TEST

START_TEST(auth)
{
    static struct reply r;
    stub_delay_ms = 0;
    start("api_keys", "sk-test-key-1,sk-test-key-2");
    http("GET", "/health", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    http("GET", "/v1/models", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 401);
    ck_assert_ptr_nonnull(strstr(r.raw, "WWW-Authenticate: Bearer\r\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"invalid_api_key\""));
    http("POST", "/v1/completions", "Authorization: Bearer sk-wrong-key\r\n",
         "{\"prompt\":\"a\"}", &r);
    ck_assert_int_eq(r.status, 401);
    http("POST", "/v1/completions", "Authorization: Bearer sk-test-key-2\r\n",
         "{\"prompt\":\"a\",\"max_tokens\":1}", &r);
    ck_assert_int_eq(r.status, 200);
    stop();
}
END_TEST

START_TEST(overload_and_disconnect)
{
    static struct reply r;
    stub_delay_ms = 20;
    atomic_store(&stub_canceled, 0);
    atomic_store(&stub_started, 0);
    start("queue_max", "1");
    /* A: a long generation whose client never reads, then leaves */
    int a = connect_srv();
    send_req(a, "POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60"));
    for (int i = 0; i < 100 && atomic_load(&stub_started) == 0; i++)
        sleep_ms(10);
    ck_assert_int_eq(atomic_load(&stub_started), 1);
    http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":1"), &r);
    ck_assert_int_eq(r.status, 429);
    ck_assert_ptr_nonnull(strstr(r.raw, "Retry-After: 1\r\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"type\":\"rate_limit_error\""));
    double t0 = now_ms();
    close(a);
    for (int i = 0; i < 200 && atomic_load(&stub_canceled) == 0; i++)
        sleep_ms(5);
    ck_assert_int_eq(atomic_load(&stub_canceled), 1);
    ck_assert_msg(now_ms() - t0 < 1000, "cancel took %.0f ms", now_ms() - t0);
    /* the worker is free again (until the canceled request's slot is released, a retry may
     * still be refused: count those, the metric below includes them) */
    int n_rejected = 1;
    for (int i = 0; i < 50; i++) {
        http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":1"), &r);
        if (r.status != 429)
            break;
        n_rejected++;
        sleep_ms(10);
    }
    ck_assert_int_eq(r.status, 200);

    /* a streaming client that leaves mid-stream cancels too */
    int b = connect_srv();
    send_req(b, "POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60,\"stream\":true"));
    char buf[256];
    ck_assert_int_gt(read(b, buf, sizeof buf), 0);
    close(b);
    for (int i = 0; i < 200 && atomic_load(&stub_canceled) < 2; i++)
        sleep_ms(5);
    ck_assert_int_eq(atomic_load(&stub_canceled), 2);
    http("GET", "/metrics", NULL, NULL, &r);
    ck_assert_ptr_nonnull(strstr(r.body, "s3_generations_canceled_total 2\n"));
    char want[64];
    snprintf(want, sizeof want, "s3_requests_rejected_total %d\n", n_rejected);
    ck_assert_msg(strstr(r.body, want) != NULL, "metrics lack '%s'", want);
    stop();
}
END_TEST

START_TEST(deadlines)
{
    static struct reply r;
    stub_delay_ms = 20;
    start("request_timeout_ms", "300");
    double t0 = now_ms();
    http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60"), &r);
    double dt = now_ms() - t0;
    ck_assert_int_eq(r.status, 504);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"timeout\""));
    ck_assert_msg(dt >= 250 && dt < 1500, "took %.0f ms", dt);
    /* streaming: the 200 is out already, the stream ends with an error event and [DONE] */
    http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60,\"stream\":true"), &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "data: {\"error\":{"));
    ck_assert_ptr_nonnull(strstr(r.body, "data: [DONE]\n\n"));
    /* a request waiting in the queue times out there */
    int started = atomic_load(&stub_started);
    int a = connect_srv();
    send_req(a, "POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60"));
    for (int i = 0; i < 100 && atomic_load(&stub_started) == started; i++)
        sleep_ms(5);
    http("POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":1"), &r);
    ck_assert_int_eq(r.status, 504);
    read_reply(a, &r);
    close(a);
    ck_assert_int_eq(r.status, 504);
    stop();
}
END_TEST

START_TEST(shutdown_in_flight)
{
    static struct reply r;
    stub_delay_ms = 20;
    start(NULL, NULL);
    int a = connect_srv(), b = connect_srv();
    send_req(a, "POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60"));
    sleep_ms(100);
    send_req(b, "POST", "/v1/chat/completions", NULL, CHAT(",\"max_tokens\":60"));
    sleep_ms(100);
    double t0 = now_ms();
    stop();
    ck_assert_msg(now_ms() - t0 < 2000, "stop took %.0f ms", now_ms() - t0);
    read_reply(a, &r);
    ck_assert(r.status == 499 || r.status == 503 || r.status == 0);
    read_reply(b, &r);
    ck_assert(r.status == 503 || r.status == 0);
    close(a);
    close(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("server_http");
    TCase *tc = tcase_create("stub_engine");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, replies);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, auth);
    tcase_add_test(tc, overload_and_disconnect);
    tcase_add_test(tc, deadlines);
    tcase_add_test(tc, shutdown_in_flight);
    suite_add_tcase(s, tc);
    return s3t_run(s, CK_FORK_GETENV);
}
