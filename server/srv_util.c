/* server/srv_util.c - byte buffers, error objects, path matching, API-key check. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "srv_int.h"

/* ---- srv_buf ----------------------------------------------------------------------------- */

int srv_buf_append(struct srv_buf *b, const void *p, size_t n)
{
    size_t max = b->max ? b->max : SIZE_MAX - 1;
    if (n > max - b->len)
        return S3_ETOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return S3_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int srv_buf_printf(struct srv_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return S3_EINVAL;
    if ((size_t)n < sizeof small)
        return srv_buf_append(b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return S3_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = srv_buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

void srv_buf_reset(struct srv_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = 0;
}

void srv_buf_deinit(struct srv_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- errors ------------------------------------------------------------------------------ */

int srv_errorf(struct srv_error *e, int status, const char *type, const char *code,
               const char *param, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type ? type : "invalid_request_error";
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return S3_EINVAL;
}

void srv_error_from_code(struct srv_error *e, int code, const char *msg)
{
    const char *m = msg && *msg ? msg : s3_strerror(code);
    switch (code) {
    case S3_EINVAL:
    case S3_EFORMAT:
        srv_errorf(e, 400, "invalid_request_error", NULL, NULL, "%s", m);
        break;
    case S3_ETOOBIG:
        srv_errorf(e, 413, "invalid_request_error", "request_too_large", NULL, "%s", m);
        break;
    case S3_ENOTFOUND:
        srv_errorf(e, 404, "invalid_request_error", "not_found", NULL, "%s", m);
        break;
    case S3_EBUSY:
        srv_errorf(e, 429, "rate_limit_error", "queue_full", NULL, "%s", m);
        break;
    case S3_ECANCELED:
        srv_errorf(e, 499, "invalid_request_error", "canceled", NULL, "%s", m);
        break;
    case S3_ETIMEDOUT:
        srv_errorf(e, 504, "timeout_error", "timeout", NULL, "%s", m);
        break;
    case S3_ENOMEM:
        srv_errorf(e, 503, "server_error", "overloaded", NULL, "%s", m);
        break;
    default:
        srv_errorf(e, 500, "server_error", NULL, NULL, "%s", m);
        break;
    }
}

json_t *srv_error_json(const struct srv_error *e)
{
    json_t *inner = json_object();
    json_t *root = json_object();
    if (!inner || !root) {
        json_decref(inner);
        json_decref(root);
        return NULL;
    }
    json_object_set_new(inner, "message", srv_json_text(e->message, strlen(e->message)));
    json_object_set_new(inner, "type", json_string(e->type ? e->type : "server_error"));
    json_object_set_new(inner, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->code ? json_string(e->code) : json_null());
    json_object_set_new(root, "error", inner);
    return root;
}

char *srv_error_body(const struct srv_error *e, size_t *len)
{
    json_t *j = srv_error_json(e);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* ---- routes ------------------------------------------------------------------------------ */

void srv_methods_str(int methods, char *out, size_t cap)
{
    static const struct { int bit; const char *name; } names[] = {
        {SRV_M_GET, "GET"}, {SRV_M_HEAD, "HEAD"}, {SRV_M_POST, "POST"}, {SRV_M_DELETE, "DELETE"}};
    size_t n = 0;
    if (cap)
        out[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!(methods & names[i].bit))
            continue;
        int w = snprintf(out + n, cap - n, "%s%s", n ? ", " : "", names[i].name);
        if (w < 0 || (size_t)w >= cap - n)
            return;
        n += (size_t)w;
    }
}

const char *srv_route_label(int id)
{
    static const char *labels[SRV_ROUTE__N] = {
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics",
        "/v1/documents", "/v1/retrieve", "other"};
    return id >= 0 && id < SRV_ROUTE__N ? labels[id] : "other";
}

/* ---- auth -------------------------------------------------------------------------------- */

/* Compare a and b in time that depends only on their lengths' maximum, not on where they
 * differ. Returns 1 when equal. */
static int ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen > blen ? alen : blen;
    volatile unsigned char acc = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        acc |= (unsigned char)(x ^ y);
    }
    return acc == 0;
}

/* The token of an "Authorization: Bearer <token>" value, spaces around it dropped: 1 and
 * (*tok, *len) pointing into authorization, or 0 when it is not a Bearer value. */
static int bearer_token(const char *authorization, const char **tok, size_t *len)
{
    const char *p = authorization;
    while (*p == ' ')
        p++;
    if (strncasecmp(p, "Bearer ", 7) != 0)
        return 0;
    p += 7;
    while (*p == ' ')
        p++;
    size_t n = strlen(p);
    while (n && p[n - 1] == ' ')
        n--;
    *tok = p;
    *len = n;
    return 1;
}

int srv_auth_check(const struct cfg *c, const char *authorization)
{
    if (!c->n_api_keys)
        return 1;
    const char *p;
    size_t len;
    if (!authorization || !bearer_token(authorization, &p, &len))
        return 0;
    int ok = 0;
    for (size_t i = 0; i < c->n_api_keys; i++) /* no early exit: every key is compared */
        ok |= ct_equal(p, len, c->api_keys[i], strlen(c->api_keys[i]));
    return ok;
}

void srv_tenant_of(const struct cfg *c, const char *authorization, char out[64])
{
    out[0] = 0;
    const char *p;
    size_t len;
    if (!c->n_api_keys || !authorization || !bearer_token(authorization, &p, &len))
        return;
    char hex[65];
    s3_sha256_hex(p, len, hex);
    snprintf(out, 64, "k_%.16s", hex);
}

int srv_path_match(const char *pattern, const char *path, const char **arg)
{
    size_t pl = strlen(pattern);
    *arg = NULL;
    if (pl >= 2 && pattern[pl - 2] == '/' && pattern[pl - 1] == '*') {
        if (strncmp(path, pattern, pl - 1) != 0)
            return 0;
        const char *rest = path + pl - 1;
        if (!*rest || strchr(rest, '/'))
            return 0;
        *arg = rest;
        return 1;
    }
    return strcmp(pattern, path) == 0;
}
