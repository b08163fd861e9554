/* tests/server/test_srv.c - request parsing/validation, error objects, SSE framing, metrics,
 * auth and routing helpers of the HTTP server (no sockets, no model). */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "scan.h"
#include "srv_int.h"
#include "testutil.h"

static const struct srv_limits lim = {.max_tokens_limit = 1000, .model_id = "m1", .n_vocab = 100};

static int parse(int kind, const char *body, struct srv_gen_req *g, struct srv_error *e)
{
    memset(e, 0, sizeof *e);
    return srv_gen_parse(kind, body, strlen(body), &lim, g, e);
}

/* Parse must fail with this status, code and param ("" = null). */
static void expect_fail(int kind, const char *body, int status, const char *code,
                        const char *param)
{
    struct srv_gen_req g;
    struct srv_error e;
    int rc = parse(kind, body, &g, &e);
    ck_assert_msg(rc < 0, "accepted: %s", body);
    ck_assert_msg(e.status == status, "%s: status %d, want %d (%s)", body, e.status, status,
                  e.message);
    if (code)
        ck_assert_msg(e.code && !strcmp(e.code, code), "%s: code %s, want %s", body,
                      e.code ? e.code : "(null)", code);
    else
        ck_assert_msg(e.code == NULL, "%s: code %s, want null", body, e.code);
    ck_assert_str_eq(e.param, param);
    ck_assert_str_eq(e.type, "invalid_request_error");
    ck_assert(e.message[0]);
    /* g was deinitialised: freeing again is harmless */
    srv_gen_req_deinit(&g);
}

START_TEST(chat_minimal)
{
    struct srv_gen_req g;
    struct srv_error e;
    ck_assert_int_eq(parse(SRV_GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                           &g, &e), 0);
    ck_assert_int_eq(g.kind, SRV_GEN_CHAT);
    ck_assert_ptr_null(g.model);
    ck_assert_uint_eq(g.n_msgs, 1);
    ck_assert_str_eq(g.msgs[0].role, "user");
    ck_assert_str_eq(g.msgs[0].content, "hi");
    ck_assert_int_eq(g.max_tokens, 0);
    ck_assert(g.temperature == 1.0 && g.top_p == 1.0);
    ck_assert_int_eq(g.stream, 0);
    ck_assert_int_eq(g.has_seed, 0);
    ck_assert_uint_eq(g.n_stop, 0);
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(chat_full)
{
    const char *body =
        "{\"model\":\"m1\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
        "\"text\":\"b\\u00e9\"}]},{\"role\":\"assistant\",\"content\":null}],"
        "\"max_tokens\":50,\"max_completion_tokens\":16,\"temperature\":0,\"top_p\":0.5,"
        "\"seed\":-3,\"stop\":[\"x\",\"\",\"yz\"],\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"n\":1,\"user\":\"u\","
        "\"future_field\":{\"deep\":[1,2]},\"presence_penalty\":0.5,\"logit_bias\":{}}";
    struct srv_gen_req g;
    struct srv_error e;
    ck_assert_int_eq(parse(SRV_GEN_CHAT, body, &g, &e), 0);
    ck_assert_str_eq(g.model, "m1");
    ck_assert_uint_eq(g.n_msgs, 3);
    ck_assert_str_eq(g.msgs[0].role, "system");
    ck_assert_str_eq(g.msgs[1].content, "ab\xc3\xa9");
    ck_assert_str_eq(g.msgs[2].role, "assistant");
    ck_assert_str_eq(g.msgs[2].content, "");
    ck_assert_int_eq(g.max_tokens, 16); /* max_completion_tokens wins */
    ck_assert(g.temperature == 0.0);
    ck_assert(g.top_p == 0.5);
    ck_assert_int_eq(g.has_seed, 1);
    ck_assert(g.seed == (uint64_t)-3);
    ck_assert_uint_eq(g.n_stop, 2); /* the empty stop string is dropped */
    ck_assert_str_eq(g.stop[0], "x");
    ck_assert_str_eq(g.stop[1], "yz");
    ck_assert_int_eq(g.stream, 1);
    ck_assert_int_eq(g.include_usage, 1);
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(chat_errors)
{
    const int C = SRV_GEN_CHAT;
    const char *msg = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[512];
    expect_fail(C, "{\"messages\":[", 400, "invalid_json", "");
    expect_fail(C, "", 400, NULL, "");
    expect_fail(C, "[1,2]", 400, "invalid_type", "");
    expect_fail(C, "{}", 400, "missing_required_parameter", "messages");
    expect_fail(C, "{\"messages\":null}", 400, "missing_required_parameter", "messages");
    expect_fail(C, "{\"messages\":\"hi\"}", 400, "invalid_type", "messages");
    expect_fail(C, "{\"messages\":[]}", 400, "empty_array", "messages");
    expect_fail(C, "{\"messages\":[5]}", 400, "invalid_type", "messages[0]");
    expect_fail(C, "{\"messages\":[{\"content\":\"x\"}]}", 400, "missing_required_parameter",
                "messages[0].role");
    expect_fail(C, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "invalid_value",
                "messages[0].role");
    expect_fail(C, "{\"messages\":[{\"role\":\"user\"}]}", 400, "missing_required_parameter",
                "messages[0].content");
    expect_fail(C, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400, "invalid_type",
                "messages[0].content");
    expect_fail(C,
                "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
                400, "unsupported_value", "messages[0].content[0]");
    expect_fail(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"messages\":[]}", 400,
                "invalid_json", "");
#define F(extra, status, code, param)                                                          \
    do {                                                                                       \
        snprintf(b, sizeof b, "{%s,%s}", msg, extra);                                          \
        expect_fail(C, b, status, code, param);                                                \
    } while (0)
    F("\"temperature\":\"hot\"", 400, "invalid_type", "temperature");
    F("\"temperature\":2.5", 400, "decimal_above_max_value", "temperature");
    F("\"temperature\":-1", 400, "decimal_below_min_value", "temperature");
    F("\"top_p\":true", 400, "invalid_type", "top_p");
    F("\"max_tokens\":0", 400, "integer_below_min_value", "max_tokens");
    F("\"max_tokens\":-5", 400, "integer_below_min_value", "max_tokens");
    F("\"max_tokens\":1001", 400, "integer_above_max_value", "max_tokens");
    F("\"max_tokens\":1.5", 400, "invalid_type", "max_tokens");
    F("\"max_tokens\":\"10\"", 400, "invalid_type", "max_tokens");
    F("\"max_completion_tokens\":0", 400, "integer_below_min_value", "max_completion_tokens");
    F("\"seed\":\"1\"", 400, "invalid_type", "seed");
    F("\"stop\":5", 400, "invalid_type", "stop");
    F("\"stop\":[\"a\",3]", 400, "invalid_type", "stop[1]");
    F("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", 400, "array_above_max_length", "stop");
    F("\"stream\":\"yes\"", 400, "invalid_type", "stream");
    F("\"stream_options\":[]", 400, "invalid_type", "stream_options");
    F("\"stream_options\":{\"include_usage\":1}", 400, "invalid_type",
      "stream_options.include_usage");
    F("\"n\":2", 400, "unsupported_value", "n");
    F("\"n\":\"1\"", 400, "invalid_type", "n");
    F("\"logprobs\":true", 400, "unsupported_value", "logprobs");
    F("\"tools\":[{\"type\":\"function\"}]", 400, "unsupported_value", "tools");
    F("\"model\":5", 400, "invalid_type", "model");
    F("\"model\":\"gpt-4o\"", 404, "model_not_found", "model");
    F("\"user\":1", 400, "invalid_type", "user");
#undef F
}
END_TEST

START_TEST(chat_tolerates)
{
    /* nulls mean "not given"; tools: [] is harmless; n: 1 is fine */
    struct srv_gen_req g;
    struct srv_error e;
    const char *body = "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\","
                       "\"content\":\"q\"}],\"max_tokens\":null,\"temperature\":null,"
                       "\"stop\":null,\"tools\":[],\"n\":1,\"logprobs\":false,\"stream\":false}";
    ck_assert_int_eq(parse(SRV_GEN_CHAT, body, &g, &e), 0);
    ck_assert_int_eq(g.max_tokens, 0);
    ck_assert(g.temperature == 1.0);
    ck_assert_uint_eq(g.n_msgs, 2);
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(completion_prompts)
{
    struct srv_gen_req g;
    struct srv_error e;
    const int T = SRV_GEN_TEXT;
    ck_assert_int_eq(parse(T, "{\"prompt\":\"Once upon\",\"max_tokens\":3}", &g, &e), 0);
    ck_assert_str_eq(g.prompt, "Once upon");
    ck_assert_int_eq(g.max_tokens, 3);
    srv_gen_req_deinit(&g);
    ck_assert_int_eq(parse(T, "{\"prompt\":[\"one\"]}", &g, &e), 0);
    ck_assert_str_eq(g.prompt, "one");
    srv_gen_req_deinit(&g);
    ck_assert_int_eq(parse(T, "{\"prompt\":[5,0,99]}", &g, &e), 0);
    ck_assert_ptr_null(g.prompt);
    ck_assert_uint_eq(g.n_prompt_ids, 3);
    ck_assert_int_eq(g.prompt_ids[0], 5);
    ck_assert_int_eq(g.prompt_ids[2], 99);
    srv_gen_req_deinit(&g);
    ck_assert_int_eq(parse(T, "{\"prompt\":[[7,8]]}", &g, &e), 0);
    ck_assert_uint_eq(g.n_prompt_ids, 2);
    ck_assert_int_eq(g.prompt_ids[1], 8);
    srv_gen_req_deinit(&g);

    expect_fail(T, "{}", 400, "missing_required_parameter", "prompt");
    expect_fail(T, "{\"prompt\":5}", 400, "invalid_type", "prompt");
    expect_fail(T, "{\"prompt\":[]}", 400, "empty_array", "prompt");
    expect_fail(T, "{\"prompt\":[\"a\",\"b\"]}", 400, "unsupported_value", "prompt");
    expect_fail(T, "{\"prompt\":[1,100]}", 400, "invalid_value", "prompt[1]");
    expect_fail(T, "{\"prompt\":[1,-1]}", 400, "invalid_value", "prompt[1]");
    expect_fail(T, "{\"prompt\":[1,\"x\"]}", 400, "invalid_type", "prompt[1]");
    expect_fail(T, "{\"prompt\":\"a\",\"echo\":true}", 400, "unsupported_value", "echo");
    expect_fail(T, "{\"prompt\":\"a\",\"logprobs\":2}", 400, "unsupported_value", "logprobs");
    expect_fail(T, "{\"prompt\":\"a\",\"best_of\":3}", 400, "unsupported_value", "best_of");
    expect_fail(T, "{\"prompt\":\"a\",\"suffix\":\"z\"}", 400, "unsupported_value", "suffix");
    expect_fail(T, "{\"prompt\":\"a\",\"max_tokens\":0}", 400, "integer_below_min_value",
                "max_tokens");
    /* max_completion_tokens is a chat field: ignored here */
    ck_assert_int_eq(parse(T, "{\"prompt\":\"a\",\"max_completion_tokens\":\"x\"}", &g, &e), 0);
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(any_model_when_unset)
{
    struct srv_limits l = lim;
    struct srv_gen_req g;
    struct srv_error e;
    const char *b = "{\"model\":\"whatever\",\"prompt\":\"p\"}";
    l.model_id = NULL;
    ck_assert_int_eq(srv_gen_parse(SRV_GEN_TEXT, b, strlen(b), &l, &g, &e), 0);
    ck_assert_str_eq(g.model, "whatever");
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(error_objects)
{
    struct srv_error e;
    size_t len;
    srv_errorf(&e, 400, "invalid_request_error", "invalid_type", "temperature", "bad \"%s\"", "t");
    char *s = srv_error_body(&e, &len);
    ck_assert_str_eq(s, "{\"error\":{\"message\":\"bad \\\"t\\\"\",\"type\":"
                        "\"invalid_request_error\",\"param\":\"temperature\",\"code\":"
                        "\"invalid_type\"}}");
    ck_assert_uint_eq(len, strlen(s));
    free(s);
    srv_errorf(&e, 404, NULL, NULL, NULL, "nope");
    s = srv_error_body(&e, &len);
    ck_assert_str_eq(s, "{\"error\":{\"message\":\"nope\",\"type\":\"invalid_request_error\","
                        "\"param\":null,\"code\":null}}");
    free(s);

    static const struct { int code, status; const char *type; } map[] = {
        {S3_EINVAL, 400, "invalid_request_error"}, {S3_ETOOBIG, 413, "invalid_request_error"},
        {S3_ENOTFOUND, 404, "invalid_request_error"}, {S3_EBUSY, 429, "rate_limit_error"},
        {S3_ETIMEDOUT, 504, "timeout_error"}, {S3_ENOMEM, 503, "server_error"},
        {S3_EINTERNAL, 500, "server_error"}, {S3_EDEVICE, 500, "server_error"},
        {S3_EIO, 500, "server_error"}, {S3_ECANCELED, 499, "invalid_request_error"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        srv_error_from_code(&e, map[i].code, NULL);
        ck_assert_int_eq(e.status, map[i].status);
        ck_assert_str_eq(e.type, map[i].type);
        ck_assert_str_eq(e.message, s3_strerror(map[i].code));
    }
    srv_error_from_code(&e, S3_EINVAL, "detail");
    ck_assert_str_eq(e.message, "detail");
}
END_TEST

static const struct srv_resp_meta chat_meta = {SRV_GEN_CHAT, "chatcmpl-1", 1700000000, "m1"};
static const struct srv_resp_meta text_meta = {SRV_GEN_TEXT, "cmpl-1", 1700000000, "m1"};

START_TEST(sse_framing)
{
    struct srv_buf b = {0};
    ck_assert_int_eq(srv_sse_append_json(&b, srv_chunk_new(&chat_meta, "", 0, 1, NULL, 0)), 0);
    ck_assert_int_eq(srv_sse_append_json(&b, srv_chunk_new(&chat_meta, "He\nllo", 6, 0, NULL, 0)),
                     0);
    ck_assert_int_eq(srv_sse_append_json(&b, srv_chunk_new(&chat_meta, "", 0, 0, "stop", 0)), 0);
    ck_assert_int_eq(srv_sse_append_done(&b), 0);
    const char *want =
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
        "\"model\":\"m1\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{"
        "\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
        "\"model\":\"m1\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{"
        "\"content\":\"He\\nllo\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
        "\"model\":\"m1\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{},"
        "\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"
        "data: [DONE]\n\n";
    ck_assert_str_eq(b.data, want);
    srv_buf_deinit(&b);
}
END_TEST

START_TEST(sse_usage_and_text)
{
    struct srv_buf b = {0};
    ck_assert_int_eq(srv_sse_append_json(&b, srv_chunk_new(&text_meta, "ab", 2, 0, NULL, 1)), 0);
    ck_assert_int_eq(srv_sse_append_json(&b, srv_usage_chunk_new(&text_meta, 5, 2)), 0);
    const char *want =
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":"
        "\"m1\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"text\":\"ab\","
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":"
        "\"m1\",\"system_fingerprint\":null,\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
        "\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
    ck_assert_str_eq(b.data, want);
    /* each event is whole: a capped buffer refuses an event instead of cutting it */
    struct srv_buf small = {.max = 40};
    ck_assert_int_eq(srv_sse_append_json(&small, srv_chunk_new(&text_meta, "x", 1, 0, NULL, 0)),
                     S3_ETOOBIG);
    ck_assert_uint_eq(small.len, 0);
    srv_buf_deinit(&small);
    srv_buf_deinit(&b);
}
END_TEST

START_TEST(completion_objects)
{
    json_t *o = srv_completion_new(&chat_meta, "hi", 2, "length", 10, 2);
    char *s = json_dumps(o, JSON_COMPACT);
    ck_assert_str_eq(s, "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":"
                        "1700000000,\"model\":\"m1\",\"system_fingerprint\":null,\"choices\":[{"
                        "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\","
                        "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"length\"}],"
                        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,"
                        "\"total_tokens\":12}}");
    free(s);
    json_decref(o);
    o = srv_completion_new(&text_meta, "t", 1, "stop", 1, 1);
    ck_assert_str_eq(json_string_value(json_object_get(o, "object")), "text_completion");
    json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "text")), "t");
    ck_assert_str_eq(json_string_value(json_object_get(c0, "finish_reason")), "stop");
    json_decref(o);
    ck_assert_str_eq(srv_finish_reason(ENG_FINISH_STOP), "stop");
    ck_assert_str_eq(srv_finish_reason(ENG_FINISH_LENGTH), "length");
}
END_TEST

START_TEST(invalid_utf8_text)
{
    /* a lone continuation byte, a truncated 3-byte sequence, an overlong '/', a NUL */
    const char in[] = "a\x80" "b\xe2\x82" "c\xc0\xaf" "d\0e";
    json_t *j = srv_json_text(in, sizeof in - 1);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(j), "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd"
                                           "c\xef\xbf\xbd\xef\xbf\xbd" "d\xef\xbf\xbd" "e");
    json_decref(j);
    j = srv_json_text("\xc3\xa9\xf0\x9f\x98\x80", 6); /* valid: kept as is */
    ck_assert_str_eq(json_string_value(j), "\xc3\xa9\xf0\x9f\x98\x80");
    json_decref(j);
}
END_TEST

START_TEST(metrics_render)
{
    static struct srv_metrics m; /* zeroed */
    struct srv_buf b = {0};
    srv_metrics_request(&m, SRV_ROUTE_HEALTH, 200, 0.0004);
    srv_metrics_request(&m, SRV_ROUTE_HEALTH, 200, 0.003);
    srv_metrics_request(&m, SRV_ROUTE_CHAT, 429, 0.7);
    srv_metrics_request(&m, SRV_ROUTE_CHAT, 418, 3.0);
    atomic_store(&m.tokens_in, 12);
    atomic_store(&m.queue_depth, 3);
    ck_assert_int_eq(srv_metrics_render(&m, 1, NULL, &b), 0);
    const char *lines[] = {
        "s3_http_requests_total{route=\"/health\",status=\"200\"} 2\n",
        "s3_http_requests_total{route=\"/v1/chat/completions\",status=\"429\"} 1\n",
        "s3_http_requests_total{route=\"/v1/chat/completions\",status=\"other\"} 1\n",
        "s3_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 1\n",
        "s3_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.0025\"} 1\n",
        "s3_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 2\n",
        "s3_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 2\n",
        "s3_http_request_duration_seconds_count{route=\"/health\"} 2\n",
        "s3_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.5\"} 0\n",
        "s3_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"1\"} 1\n",
        "s3_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"2.5\"} 1\n",
        "s3_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"+Inf\"} 2\n",
        "s3_http_request_duration_seconds_sum{route=\"/v1/chat/completions\"} 3.700000\n",
        "# TYPE s3_http_request_duration_seconds histogram\n",
        "s3_prompt_tokens_total 12\n",
        "s3_queue_depth 3\n",
        "s3_model_ready 1\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        ck_assert_msg(strstr(b.data, lines[i]), "missing: %s", lines[i]);
    ck_assert_ptr_null(strstr(b.data, "route=\"/metrics\"")); /* no samples, no series */
    ck_assert_int_eq(srv_status_index(200), 0);
    ck_assert_int_eq(srv_status_index(12345), SRV_N_STATUS - 1);
    srv_buf_deinit(&b);
}
END_TEST

START_TEST(auth_keys)
{
    struct cfg c;
    cfg_defaults(&c);
    ck_assert_int_eq(srv_auth_check(&c, NULL), 1); /* no keys: open */
    ck_assert_int_eq(cfg_set(&c, "api_keys", "sk-first-key,sk-second-key", NULL), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer sk-first-key"), 1);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer sk-second-key"), 1);
    ck_assert_int_eq(srv_auth_check(&c, "bearer   sk-second-key "), 1);
    ck_assert_int_eq(srv_auth_check(&c, NULL), 0);
    ck_assert_int_eq(srv_auth_check(&c, ""), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer "), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer sk-first-ke"), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer sk-first-keyX"), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Bearer sk-first-kez"), 0);
    ck_assert_int_eq(srv_auth_check(&c, "Basic sk-first-key"), 0);
    ck_assert_int_eq(srv_auth_check(&c, "sk-first-key"), 0);
    cfg_deinit(&c);
}
END_TEST

START_TEST(routes_and_buffers)
{
    const char *arg;
    ck_assert_int_eq(srv_path_match("/v1/models", "/v1/models", &arg), 1);
    ck_assert_ptr_null(arg);
    ck_assert_int_eq(srv_path_match("/v1/models", "/v1/models/", &arg), 0);
    ck_assert_int_eq(srv_path_match("/v1/models/*", "/v1/models/abc", &arg), 1);
    ck_assert_str_eq(arg, "abc");
    ck_assert_int_eq(srv_path_match("/v1/models/*", "/v1/models/", &arg), 0);
    ck_assert_int_eq(srv_path_match("/v1/models/*", "/v1/models/a/b", &arg), 0);
    ck_assert_int_eq(srv_path_match("/v1/models/*", "/v1/modelsx", &arg), 0);
    char m[64];
    srv_methods_str(SRV_M_GET | SRV_M_HEAD, m, sizeof m);
    ck_assert_str_eq(m, "GET, HEAD");
    srv_methods_str(SRV_M_POST, m, sizeof m);
    ck_assert_str_eq(m, "POST");
    ck_assert_str_eq(srv_route_label(SRV_ROUTE_COMPLETIONS), "/v1/completions");
    ck_assert_str_eq(srv_route_label(99), "other");

    struct srv_buf b = {.max = 10};
    ck_assert_int_eq(srv_buf_append(&b, "12345", 5), 0);
    ck_assert_int_eq(srv_buf_printf(&b, "%d", 6789), 0);
    ck_assert_str_eq(b.data, "123456789");
    ck_assert_int_eq(srv_buf_append(&b, "ab", 2), S3_ETOOBIG);
    ck_assert_str_eq(b.data, "123456789");
    ck_assert_int_eq(srv_buf_append(&b, "a", 1), 0);
    ck_assert_uint_eq(b.len, 10);
    srv_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    srv_buf_deinit(&b);
    srv_buf_deinit(&b);
}
END_TEST

/* ---- documents and retrieval fields ---------------------------------------------------- */

static const struct srv_limits dlim = {.max_tokens_limit = 1000, .n_vocab = 100,
                                       .max_budget = 8192};

START_TEST(doc_ids)
{
    int64_t id = 0;
    char buf[32];
    ck_assert_int_eq(srv_doc_id_parse("doc_1", &id), 0);
    ck_assert_int_eq(id, 1);
    ck_assert_int_eq(srv_doc_id_parse("doc_9223372036854775807", &id), 0);
    ck_assert(id == INT64_MAX);
    static const char *bad[] = {"", "doc_", "doc_0", "doc_01", "doc_-1", "doc_1x", "Doc_1", "1",
                                "doc_92233720368547758070", "doc_ 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(srv_doc_id_parse(bad[i], &id) == S3_EINVAL, "accepted '%s'", bad[i]);
    ck_assert_int_eq(srv_doc_id_parse(NULL, &id), S3_EINVAL);
    ck_assert_str_eq(srv_doc_id_str(42, buf), "doc_42");
}
END_TEST

START_TEST(chat_with_documents)
{
    struct srv_gen_req g;
    struct srv_error e;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"q?\"}],"
                       "\"documents\":[\"doc_3\",\"doc_7\",\"doc_3\"],"
                       "\"retrieval\":{\"mode\":\"bm25\",\"budget\":512}}";
    ck_assert_int_eq(srv_gen_parse(SRV_GEN_CHAT, body, strlen(body), &dlim, &g, &e), 0);
    ck_assert_uint_eq(g.n_docs, 2); /* the duplicate is dropped */
    ck_assert_int_eq(g.docs[0], 3);
    ck_assert_int_eq(g.docs[1], 7);
    ck_assert_int_eq(g.ret.mode, IDX_MODE_BM25);
    ck_assert_int_eq(g.ret.budget, 512);
    srv_gen_req_deinit(&g);

    body = "{\"prompt\":\"x\",\"documents\":[],\"retrieval\":{\"mode\":\"full\"}}";
    ck_assert_int_eq(srv_gen_parse(SRV_GEN_TEXT, body, strlen(body), &dlim, &g, &e), 0);
    ck_assert_uint_eq(g.n_docs, 0);
    ck_assert_ptr_null(g.docs);
    ck_assert_int_eq(g.ret.mode, IDX_MODE_FULL);
    ck_assert_int_eq(g.ret.budget, 0);
    srv_gen_req_deinit(&g);

    body = "{\"prompt\":\"x\"}"; /* absent: mode -1 (default), budget 0 */
    ck_assert_int_eq(srv_gen_parse(SRV_GEN_TEXT, body, strlen(body), &dlim, &g, &e), 0);
    ck_assert_int_eq(g.ret.mode, -1);
    ck_assert_int_eq(g.ret.budget, 0);
    srv_gen_req_deinit(&g);
}
END_TEST

/* One bad extension field: status, code and param. */
static void ext_fail(const char *fields, const struct srv_limits *l, int status,
                     const char *code, const char *param)
{
    char body[1024];
    struct srv_gen_req g;
    struct srv_error e;
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],%s}",
             fields);
    memset(&e, 0, sizeof e);
    int rc = srv_gen_parse(SRV_GEN_CHAT, body, strlen(body), l, &g, &e);
    ck_assert_msg(rc < 0, "accepted %s", fields);
    ck_assert_msg(e.status == status, "%s: status %d want %d (%s)", fields, e.status, status,
                  e.message);
    ck_assert_msg(e.code && !strcmp(e.code, code), "%s: code %s want %s", fields,
                  e.code ? e.code : "(null)", code);
    ck_assert_msg(!strcmp(e.param, param), "%s: param %s want %s", fields, e.param, param);
    srv_gen_req_deinit(&g);
}

START_TEST(extension_errors)
{
    ext_fail("\"documents\":\"doc_1\"", &dlim, 400, "invalid_type", "documents");
    ext_fail("\"documents\":[1]", &dlim, 400, "invalid_type", "documents[0]");
    ext_fail("\"documents\":[\"doc_1\",\"nope\"]", &dlim, 404, "document_not_found",
             "documents[1]");
    char many[1200] = "\"documents\":[";
    for (int i = 1; i <= SRV_MAX_DOCS + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"doc_%d\"", i > 1 ? "," : "",
                 i);
    strcat(many, "]");
    ext_fail(many, &dlim, 400, "array_above_max_length", "documents");
    ext_fail("\"retrieval\":\"bm25\"", &dlim, 400, "invalid_type", "retrieval");
    ext_fail("\"retrieval\":{\"mode\":\"dense\"}", &dlim, 400, "invalid_value", "retrieval.mode");
    ext_fail("\"retrieval\":{\"mode\":3}", &dlim, 400, "invalid_type", "retrieval.mode");
    ext_fail("\"retrieval\":{\"budget\":0}", &dlim, 400, "integer_below_min_value",
             "retrieval.budget");
    ext_fail("\"retrieval\":{\"budget\":8193}", &dlim, 400, "integer_above_max_value",
             "retrieval.budget");
    ext_fail("\"retrieval\":{\"budget\":\"big\"}", &dlim, 400, "invalid_type",
             "retrieval.budget");
    ext_fail("\"retrieval\":{\"budjet\":100}", &dlim, 400, "unknown_parameter", "retrieval");
    struct srv_limits nosae = dlim;
    nosae.no_sae = 1;
    ext_fail("\"retrieval\":{\"mode\":\"s3\"}", &nosae, 400, "unsupported_value",
             "retrieval.mode");
    /* without an SAE the other modes stay accepted */
    struct srv_gen_req g;
    struct srv_error e;
    const char *ok = "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
                     "\"retrieval\":{\"mode\":\"hybrid\",\"budget\":16}}";
    ck_assert_int_eq(srv_gen_parse(SRV_GEN_CHAT, ok, strlen(ok), &nosae, &g, &e), 0);
    ck_assert_int_eq(g.ret.mode, IDX_MODE_HYBRID);
    ck_assert_int_eq(g.ret.budget, 16);
    srv_gen_req_deinit(&g);
}
END_TEST

START_TEST(retrieve_requests)
{
    struct srv_retrieve_req q;
    struct srv_error e;
    const char *body = "{\"documents\":[\"doc_2\"],\"query\":\"who?\",\"retrieval\":{\"budget\":64}}";
    ck_assert_int_eq(srv_retrieve_parse(body, strlen(body), &dlim, &q, &e), 0);
    ck_assert_uint_eq(q.n_docs, 1);
    ck_assert_int_eq(q.docs[0], 2);
    ck_assert_str_eq(q.query, "who?");
    ck_assert_int_eq(q.ret.mode, -1);
    ck_assert_int_eq(q.ret.budget, 64);
    srv_retrieve_req_deinit(&q);
    srv_retrieve_req_deinit(&q);

    static const struct {
        const char *body;
        int status;
        const char *code, *param;
    } bad[] = {
        {"", 400, NULL, ""},
        {"{", 400, "invalid_json", ""},
        {"[]", 400, "invalid_type", ""},
        {"{\"query\":\"q\"}", 400, "missing_required_parameter", "documents"},
        {"{\"documents\":[],\"query\":\"q\"}", 400, "empty_array", "documents"},
        {"{\"documents\":[\"doc_1\"]}", 400, "missing_required_parameter", "query"},
        {"{\"documents\":[\"doc_1\"],\"query\":7}", 400, "invalid_type", "query"},
        {"{\"documents\":[\"doc_1\"],\"query\":\"\"}", 400, "invalid_value", "query"},
        {"{\"documents\":[\"doc_1\"],\"query\":\"a\\u0000b\"}", 400, "invalid_json", ""},
        {"{\"documents\":[\"x\"],\"query\":\"q\"}", 404, "document_not_found", "documents[0]"},
        {"{\"documents\":[\"doc_1\"],\"query\":\"q\",\"retrieval\":{\"mode\":\"x\"}}", 400,
         "invalid_value", "retrieval.mode"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        int rc = srv_retrieve_parse(bad[i].body, strlen(bad[i].body), &dlim, &q, &e);
        ck_assert_msg(rc < 0, "accepted %s", bad[i].body);
        ck_assert_msg(e.status == bad[i].status, "%s: status %d", bad[i].body, e.status);
        if (bad[i].code)
            ck_assert_msg(e.code && !strcmp(e.code, bad[i].code), "%s: code %s", bad[i].body,
                          e.code ? e.code : "(null)");
        ck_assert_msg(!strcmp(e.param, bad[i].param), "%s: param %s", bad[i].body, e.param);
        ck_assert_ptr_null(q.docs);
        ck_assert_ptr_null(q.query);
    }
}
END_TEST

START_TEST(document_bodies)
{
    char *text, *name;
    size_t n;
    struct srv_error e;
    const char *b = "{\"text\":\"caf\\u00e9 au lait\",\"name\":\"menu.txt\",\"extra\":1}";
    ck_assert_int_eq(srv_doc_json_parse(b, strlen(b), &text, &n, &name, &e), 0);
    ck_assert_str_eq(text, "caf\xc3\xa9 au lait");
    ck_assert_uint_eq(n, 13);
    ck_assert_str_eq(name, "menu.txt");
    free(text);
    free(name);
    b = "{\"text\":\"abc\"}";
    ck_assert_int_eq(srv_doc_json_parse(b, strlen(b), &text, &n, &name, &e), 0);
    ck_assert_ptr_null(name);
    free(text);
    static const struct {
        const char *body, *code, *param;
    } bad[] = {
        {"{\"text\":", "invalid_json", ""},
        {"\"abc\"", "invalid_json", ""},
        {"[\"abc\"]", "invalid_type", ""},
        {"{\"name\":\"x\"}", "missing_required_parameter", "text"},
        {"{\"text\":5}", "invalid_type", "text"},
        {"{\"text\":\"\"}", "invalid_value", "text"},
        {"{\"text\":\"a\\u0000b\"}", "invalid_json", ""},
        {"{\"text\":\"\\ud800\"}", "invalid_json", ""},
        {"{\"text\":\"a\",\"name\":[]}", "invalid_type", "name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        ck_assert_msg(srv_doc_json_parse(bad[i].body, strlen(bad[i].body), &text, &n, &name,
                                         &e) < 0, "accepted %s", bad[i].body);
        ck_assert_int_eq(e.status, 400);
        ck_assert_msg(e.code && !strcmp(e.code, bad[i].code), "%s: code %s", bad[i].body,
                      e.code ? e.code : "(null)");
        ck_assert_msg(!strcmp(e.param, bad[i].param), "%s: param %s", bad[i].body, e.param);
        ck_assert_ptr_null(text);
    }
    /* raw bodies: the byte offset of the first problem is in the message */
    ck_assert_int_eq(srv_text_check("ok\n", 3, "body", &e), 0);
    ck_assert_int_lt(srv_text_check("", 0, "body", &e), 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "body");
    ck_assert_int_lt(srv_text_check("abc\0def", 7, "body", &e), 0);
    ck_assert_msg(strstr(e.message, "offset 3"), "%s", e.message);
    ck_assert_int_lt(srv_text_check("hello \xff world", 13, "body", &e), 0);
    ck_assert_msg(strstr(e.message, "offset 6"), "%s", e.message);
    ck_assert_int_lt(srv_text_check("ab\xc3", 3, "body", &e), 0); /* truncated sequence */
    ck_assert_msg(strstr(e.message, "offset 2"), "%s", e.message);
}
END_TEST

START_TEST(tenants)
{
    struct cfg c;
    struct s3_errinfo err;
    char t1[64], t2[64], t3[64];
    cfg_defaults(&c);
    srv_tenant_of(&c, "Bearer sk-anything-1", t1);
    ck_assert_str_eq(t1, ""); /* no keys configured: one shared tenant */
    ck_assert_int_eq(cfg_set(&c, "api_keys", "sk-first-key,sk-second-key", &err), 0);
    srv_tenant_of(&c, "Bearer sk-first-key", t1);
    srv_tenant_of(&c, "bearer   sk-first-key  ", t2);
    srv_tenant_of(&c, "Bearer sk-second-key", t3);
    ck_assert_str_eq(t1, t2);
    ck_assert_str_ne(t1, t3);
    ck_assert_uint_eq(strlen(t1), 18);
    ck_assert(!strncmp(t1, "k_", 2));
    /* an independent reference: the first 16 hex digits of sha256("sk-first-key") */
    char hex[65];
    s3_sha256_hex("sk-first-key", 12, hex);
    ck_assert(!strncmp(t1 + 2, hex, 16));
    ck_assert(strstr(t1, "sk-") == NULL); /* the key itself is not stored */
    srv_tenant_of(&c, NULL, t1);
    ck_assert_str_eq(t1, "");
    cfg_deinit(&c);
}
END_TEST

/* s3_sha256_hex against FIPS 180-4's published vectors (the fingerprints of models, SAEs and
 * documents; the tenant ids above): the empty string, "abc", the 448-bit message, and a
 * million 'a's (many blocks, across Nettle's buffer). */
START_TEST(sha256_known_answers)
{
    char hex[65];
    s3_sha256_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    s3_sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    s3_sha256_hex(m, strlen(m), hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *a = malloc(1000000);
    ck_assert_ptr_nonnull(a);
    memset(a, 'a', 1000000);
    s3_sha256_hex(a, 1000000, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}
END_TEST

START_TEST(long_prompt_split)
{
    /* 10 tokens of 4 bytes: "aaa\n" "bbb " ... */
    char text[41];
    size_t ends[10];
    for (int i = 0; i < 10; i++) {
        memcpy(text + 4 * i, "xyz ", 4);
        text[4 * i + 3] = (i == 1 || i == 7) ? '\n' : ' ';
        ends[i] = (size_t)(4 * i + 4);
    }
    text[40] = 0;
    size_t h, t;
    /* head of 3 tokens ends at byte 12; the line break at byte 7 is in its last quarter? no
     * (12 - 3 = 9 > 8): the cut falls back to the space at byte 11 */
    srv_long_split(text, 40, ends, 10, 3, 2, &h, &t);
    ck_assert_uint_eq(h, 12);
    /* tail of 2 tokens starts at byte 32 (after token 7, whose line break ends at 31) */
    ck_assert_uint_eq(t, 32);
    /* head of 2 tokens ends right after the line break at byte 7 */
    srv_long_split(text, 40, ends, 10, 2, 3, &h, &t);
    ck_assert_uint_eq(h, 8);
    ck_assert_uint_eq(t, 28);
    ck_assert(text[t - 1] == ' ' || text[t - 1] == '\n');
    /* head and tail overlap: the tail never starts before the head ends */
    srv_long_split(text, 40, ends, 10, 8, 8, &h, &t);
    ck_assert_uint_le(h, t);
    /* cuts never split a UTF-8 sequence */
    const char *u = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
    size_t ue[4] = {1, 3, 7, 8}; /* token ends inside sequences */
    srv_long_split(u, 8, ue, 4, 1, 1, &h, &t);
    ck_assert_uint_eq(h % 2, 0);
    ck_assert_uint_eq(t % 2, 0);
}
END_TEST

static struct idx_db *mem_db(void)
{
    struct idx_db *db = NULL;
    struct s3_errinfo err = {0};
    ck_assert_int_eq(idx_open(":memory:", NULL, &db, &err), 0);
    return db;
}

START_TEST(long_prompt_cache)
{
    struct srv_lcache *c = NULL;
    struct srv_lcache_hit hit = {0};
    struct s3_errinfo err = {0};
    int64_t one = 0, bytes = 0;
    int n = 0;
    struct idx_db *a = mem_db();
    ck_assert_int_eq(idx_db_bytes(a, &one, &err), 0);
    ck_assert_int_gt(one, 0);
    /* room for two indexes of this size, not three */
    ck_assert_int_eq(srv_lcache_new(2 * one + one / 2, &c), 0);
    ck_assert_int_eq(srv_lcache_put(c, "aa", 10, a, 1, 100), 1);
    ck_assert_int_eq(srv_lcache_put(c, "bb", 10, mem_db(), 2, 200), 1);
    /* same hash, other length: a miss */
    ck_assert_int_eq(srv_lcache_get(c, "aa", 11, &hit), 0);
    ck_assert_int_eq(srv_lcache_get(c, "aa", 10, &hit), 1);
    ck_assert_ptr_eq(hit.db, a);
    ck_assert_int_eq(hit.doc, 1);
    ck_assert_int_eq(hit.n_tokens, 100);
    /* "aa" was used last: the third insert evicts "bb" */
    ck_assert_int_eq(srv_lcache_put(c, "cc", 10, mem_db(), 3, 300), 1);
    ck_assert_int_eq(srv_lcache_get(c, "bb", 10, &hit), 0);
    ck_assert_int_eq(srv_lcache_get(c, "aa", 10, &hit), 1);
    ck_assert_int_eq(srv_lcache_get(c, "cc", 10, &hit), 1);
    ck_assert_int_eq(hit.doc, 3);
    srv_lcache_stats(c, &n, &bytes);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(bytes, 2 * one);
    srv_lcache_free(c);

    /* a limit below one index keeps nothing (the index is closed: ASan sees no leak) */
    ck_assert_int_eq(srv_lcache_new(one - 1, &c), 0);
    ck_assert_int_eq(srv_lcache_put(c, "aa", 10, mem_db(), 1, 100), 0);
    ck_assert_int_eq(srv_lcache_get(c, "aa", 10, &hit), 0);
    srv_lcache_stats(c, &n, &bytes);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(bytes, 0);
    srv_lcache_free(c);
    /* off (long_cache_mb 0) */
    ck_assert_int_eq(srv_lcache_new(0, &c), 0);
    ck_assert_int_eq(srv_lcache_put(c, "aa", 10, mem_db(), 1, 100), 0);
    srv_lcache_free(c);
}
END_TEST

START_TEST(default_sae_path)
{
    char b[64];
    ck_assert_str_eq(srv_scan_default_sae("models/SmolLM2.Q4_1.gguf", b, sizeof b),
                     "models/sae-SmolLM2.Q4_1.s3sae");
    ck_assert_str_eq(srv_scan_default_sae("weights", b, sizeof b), "models/sae-weights.s3sae");
    ck_assert_str_eq(srv_scan_default_sae("/x/.gguf", b, sizeof b), "models/sae-.gguf.s3sae");
}
END_TEST

static Suite *srv_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, sha256_known_answers);
    tcase_add_test(tc, chat_minimal);
    tcase_add_test(tc, chat_full);
    tcase_add_test(tc, chat_errors);
    tcase_add_test(tc, chat_tolerates);
    tcase_add_test(tc, completion_prompts);
    tcase_add_test(tc, any_model_when_unset);
    tcase_add_test(tc, error_objects);
    tcase_add_test(tc, sse_framing);
    tcase_add_test(tc, sse_usage_and_text);
    tcase_add_test(tc, completion_objects);
    tcase_add_test(tc, invalid_utf8_text);
    tcase_add_test(tc, metrics_render);
    tcase_add_test(tc, auth_keys);
    tcase_add_test(tc, routes_and_buffers);
    tcase_add_test(tc, doc_ids);
    tcase_add_test(tc, chat_with_documents);
    tcase_add_test(tc, extension_errors);
    tcase_add_test(tc, retrieve_requests);
    tcase_add_test(tc, document_bodies);
    tcase_add_test(tc, tenants);
    tcase_add_test(tc, long_prompt_split);
    tcase_add_test(tc, long_prompt_cache);
    tcase_add_test(tc, default_sae_path);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return s3t_run(srv_suite(), CK_FORK_GETENV);
}
