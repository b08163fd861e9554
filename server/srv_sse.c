/* server/srv_sse.c - OpenAI response objects and Server-Sent Events framing.
 *
 * Chat:        {"id","object":"chat.completion","created","model","choices":[{"index":0,
 *               "message":{"role":"assistant","content"},"logprobs":null,"finish_reason"}],
 *               "usage":{"prompt_tokens","completion_tokens","total_tokens"}}
 * Chat chunk:  object "chat.completion.chunk", choices[0].delta {"role"?, "content"}
 * Completion:  object "text_completion", choices[0] {"text","index","logprobs","finish_reason"}
 * Each SSE event is "data: <compact JSON>\n\n"; the stream ends with "data: [DONE]\n\n". */
#include <stdlib.h>
#include <string.h>

#include "srv_int.h"

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

json_t *srv_json_text(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    int clean = 1;
    while (i < n) {
        size_t l = u[i] ? utf8_seq(u + i, n - i) : 0;
        if (!l) {
            clean = 0;
            break;
        }
        i += l;
    }
    if (clean)
        return json_stringn(s, n);
    /* rebuild with U+FFFD for each bad byte (and NUL, which jansson would keep but
     * clients choke on) */
    struct srv_buf b = {0};
    for (i = 0; i < n;) {
        size_t l = u[i] ? utf8_seq(u + i, n - i) : 0;
        if (l) {
            if (srv_buf_append(&b, s + i, l) < 0)
                break;
            i += l;
        } else {
            if (srv_buf_append(&b, "\xEF\xBF\xBD", 3) < 0)
                break;
            i++;
        }
    }
    json_t *j = b.data ? json_stringn(b.data, b.len) : json_string("");
    srv_buf_deinit(&b);
    return j;
}

const char *srv_finish_reason(int finish)
{
    return finish == ENG_FINISH_STOP ? "stop" : "length";
}

static json_t *envelope(const struct srv_resp_meta *m, const char *object)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "id", json_string(m->id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(m->created));
    json_object_set_new(o, "model", json_string(m->model));
    json_object_set_new(o, "system_fingerprint", json_null());
    return o;
}

static json_t *usage_new(int n_prompt, int n_completion)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(n_completion));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)n_prompt + n_completion));
    return u;
}

json_t *srv_chunk_new(const struct srv_resp_meta *m, const char *text, size_t len, int first,
                      const char *finish_reason, int with_usage)
{
    int chat = m->kind == SRV_GEN_CHAT;
    json_t *o = envelope(m, chat ? "chat.completion.chunk" : "text_completion");
    json_t *choice = json_object();
    json_t *choices = json_array();
    if (!o || !choice || !choices) {
        json_decref(o);
        json_decref(choice);
        json_decref(choices);
        return NULL;
    }
    json_object_set_new(choice, "index", json_integer(0));
    if (chat) {
        json_t *delta = json_object();
        if (first)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (len || first || !finish_reason)
            json_object_set_new(delta, "content", srv_json_text(text ? text : "", len));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", srv_json_text(text ? text : "", len));
    }
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason",
                        finish_reason ? json_string(finish_reason) : json_null());
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
    if (with_usage)
        json_object_set_new(o, "usage", json_null());
    return o;
}

json_t *srv_usage_chunk_new(const struct srv_resp_meta *m, int n_prompt, int n_completion)
{
    json_t *o = envelope(m, m->kind == SRV_GEN_CHAT ? "chat.completion.chunk" : "text_completion");
    if (!o)
        return NULL;
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", usage_new(n_prompt, n_completion));
    return o;
}

json_t *srv_completion_new(const struct srv_resp_meta *m, const char *text, size_t len,
                           const char *finish_reason, int n_prompt, int n_completion)
{
    int chat = m->kind == SRV_GEN_CHAT;
    json_t *o = envelope(m, chat ? "chat.completion" : "text_completion");
    json_t *choice = json_object();
    json_t *choices = json_array();
    if (!o || !choice || !choices) {
        json_decref(o);
        json_decref(choice);
        json_decref(choices);
        return NULL;
    }
    json_object_set_new(choice, "index", json_integer(0));
    if (chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("assistant"));
        json_object_set_new(msg, "content", srv_json_text(text ? text : "", len));
        json_object_set_new(msg, "refusal", json_null());
        json_object_set_new(choice, "message", msg);
    } else {
        json_object_set_new(choice, "text", srv_json_text(text ? text : "", len));
    }
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", json_string(finish_reason));
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_new(n_prompt, n_completion));
    return o;
}

int srv_sse_append_json(struct srv_buf *b, json_t *obj)
{
    if (!obj)
        return S3_ENOMEM;
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!s)
        return S3_ENOMEM;
    size_t n = strlen(s);
    int rc = 0;
    if (b->max && (b->len > b->max || n + 8 > b->max - b->len))
        rc = S3_ETOOBIG; /* whole events only */
    if (rc == 0)
        rc = srv_buf_append(b, "data: ", 6);
    if (rc == 0)
        rc = srv_buf_append(b, s, n);
    if (rc == 0)
        rc = srv_buf_append(b, "\n\n", 2);
    free(s);
    return rc;
}

int srv_sse_append_done(struct srv_buf *b)
{
    return srv_buf_append(b, "data: [DONE]\n\n", 14);
}
