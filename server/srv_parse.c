/* server/srv_parse.c - OpenAI request bodies -> struct srv_gen_req, with OpenAI's errors.
 *
 * Unknown fields are ignored (as OpenAI does); known fields must have the right type; fields
 * that ask for something this server cannot do (n > 1, logprobs, echo, tools) are rejected
 * instead of silently ignored. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv_int.h"

static const char *jtype_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a decimal";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    default: return "an unknown type";
    }
}

static int type_error(struct srv_error *e, const char *param, const char *expected,
                      const json_t *got)
{
    return srv_errorf(e, 400, "invalid_request_error", "invalid_type", param,
                      "Invalid type for '%s': expected %s, but got %s instead.", param, expected,
                      jtype_name(got));
}

/* Present and not null. */
static json_t *field(json_t *root, const char *name)
{
    json_t *v = json_object_get(root, name);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_bool(json_t *root, const char *name, int *out, struct srv_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return type_error(e, name, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

static int get_number(json_t *root, const char *name, double lo, double hi, double *out,
                      struct srv_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return type_error(e, name, "a decimal", v);
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo)
        return srv_errorf(e, 400, "invalid_request_error", "decimal_below_min_value", name,
                          "Invalid '%s': decimal below minimum value. Expected a value >= %g, "
                          "but got %g instead.", name, lo, d);
    if (d > hi)
        return srv_errorf(e, 400, "invalid_request_error", "decimal_above_max_value", name,
                          "Invalid '%s': decimal above maximum value. Expected a value <= %g, "
                          "but got %g instead.", name, hi, d);
    *out = d;
    return 0;
}

/* Integer field; *present is set to 1 when given. */
static int get_int(json_t *root, const char *name, long long lo, long long hi, long long *out,
                   int *present, struct srv_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return type_error(e, name, "an integer", v);
    long long x = json_integer_value(v);
    if (x < lo)
        return srv_errorf(e, 400, "invalid_request_error", "integer_below_min_value", name,
                          "Invalid '%s': integer below minimum value. Expected a value >= %lld, "
                          "but got %lld instead.", name, lo, x);
    if (x > hi)
        return srv_errorf(e, 400, "invalid_request_error", "integer_above_max_value", name,
                          "Invalid '%s': integer above maximum value. Expected a value <= %lld, "
                          "but got %lld instead.", name, hi, x);
    *out = x;
    if (present)
        *present = 1;
    return 0;
}

static int unsupported(struct srv_error *e, const char *param, const char *what)
{
    return srv_errorf(e, 400, "invalid_request_error", "unsupported_value", param,
                      "Unsupported value: '%s' %s is not supported by this server.", param,
                      what);
}

static int oom(struct srv_error *e)
{
    srv_errorf(e, 503, "server_error", "overloaded", NULL, "out of memory");
    return S3_ENOMEM;
}

/* Append the text of a content value (string or array of text parts) to *buf. */
static int content_text(json_t *c, const char *param, struct srv_buf *buf, struct srv_error *e)
{
    if (json_is_string(c))
        return srv_buf_append(buf, json_string_value(c), json_string_length(c)) < 0 ? oom(e) : 0;
    if (!json_is_array(c))
        return type_error(e, param, "a string or an array of content parts", c);
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part) {
        char p[128];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_object(part))
            return type_error(e, p, "an object", part);
        json_t *type = json_object_get(part, "type");
        if (!json_is_string(type))
            return srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter", p,
                              "Missing required parameter: '%s.type'.", p);
        if (strcmp(json_string_value(type), "text") != 0)
            return srv_errorf(e, 400, "invalid_request_error", "unsupported_value", p,
                              "Content parts of type '%s' are not supported; only 'text' is.",
                              json_string_value(type));
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text)) {
            snprintf(p, sizeof p, "%s[%zu].text", param, i);
            return text ? type_error(e, p, "a string", text)
                        : srv_errorf(e, 400, "invalid_request_error",
                                     "missing_required_parameter", p,
                                     "Missing required parameter: '%s'.", p);
        }
        if (srv_buf_append(buf, json_string_value(text), json_string_length(text)) < 0)
            return oom(e);
    }
    return 0;
}

static int parse_messages(json_t *root, struct srv_gen_req *g, struct srv_error *e)
{
    json_t *msgs = field(root, "messages");
    if (!msgs)
        return srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter",
                          "messages", "Missing required parameter: 'messages'.");
    if (!json_is_array(msgs))
        return type_error(e, "messages", "an array", msgs);
    size_t n = json_array_size(msgs);
    if (n == 0)
        return srv_errorf(e, 400, "invalid_request_error", "empty_array", "messages",
                          "Invalid 'messages': empty array. Expected an array with minimum "
                          "length 1, but got an empty array instead.");
    if (n > SRV_MAX_MESSAGES)
        return srv_errorf(e, 400, "invalid_request_error", "array_above_max_length", "messages",
                          "Invalid 'messages': at most %d messages are accepted.",
                          SRV_MAX_MESSAGES);
    g->msgs = calloc(n, sizeof *g->msgs);
    if (!g->msgs)
        return oom(e);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char p[64];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(m))
            return type_error(e, p, "an object", m);
        json_t *role = json_object_get(m, "role");
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!role)
            return srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter", p,
                              "Missing required parameter: '%s'.", p);
        if (!json_is_string(role))
            return type_error(e, p, "a string", role);
        const char *r = json_string_value(role);
        if (!strcmp(r, "developer"))
            r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            return srv_errorf(e, 400, "invalid_request_error", "invalid_value", p,
                              "Invalid value: '%s'. Supported values are: 'system', "
                              "'developer', 'user' and 'assistant'.", json_string_value(role));
        json_t *content = json_object_get(m, "content");
        snprintf(p, sizeof p, "messages[%zu].content", i);
        struct srv_buf text = {0};
        if (!content || json_is_null(content)) {
            if (strcmp(r, "assistant") != 0)
                return srv_errorf(e, 400, "invalid_request_error",
                                  "missing_required_parameter", p,
                                  "Missing required parameter: '%s'.", p);
        } else {
            int rc = content_text(content, p, &text, e);
            if (rc < 0) {
                srv_buf_deinit(&text);
                return rc;
            }
        }
        g->msgs[i].role = strdup(r);
        g->msgs[i].content = text.data ? text.data : strdup("");
        g->n_msgs = i + 1;
        if (!g->msgs[i].role || !g->msgs[i].content)
            return oom(e);
    }
    return 0;
}

static int parse_prompt(json_t *root, const struct srv_limits *lim, struct srv_gen_req *g,
                        struct srv_error *e)
{
    json_t *p = field(root, "prompt");
    if (!p)
        return srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter",
                          "prompt", "Missing required parameter: 'prompt'.");
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); /* one prompt in a batch of one */
    if (json_is_string(p)) {
        g->prompt = strndup(json_string_value(p), json_string_length(p));
        return g->prompt ? 0 : oom(e);
    }
    if (!json_is_array(p))
        return type_error(e, "prompt", "a string or an array of token ids", p);
    size_t n = json_array_size(p);
    if (n == 0)
        return srv_errorf(e, 400, "invalid_request_error", "empty_array", "prompt",
                          "Invalid 'prompt': empty array.");
    if (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)))
        return unsupported(e, "prompt", "with more than one prompt (batching)");
    g->prompt_ids = malloc(n * sizeof *g->prompt_ids);
    if (!g->prompt_ids)
        return oom(e);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(p, i);
        char pn[48];
        snprintf(pn, sizeof pn, "prompt[%zu]", i);
        if (!json_is_integer(t))
            return type_error(e, pn, "an integer", t);
        long long id = json_integer_value(t);
        if (id < 0 || id > INT32_MAX || (lim->n_vocab > 0 && id >= lim->n_vocab))
            return srv_errorf(e, 400, "invalid_request_error", "invalid_value", pn,
                              "Invalid '%s': token id %lld is out of the vocabulary.", pn, id);
        g->prompt_ids[i] = (int32_t)id;
    }
    g->n_prompt_ids = n;
    return 0;
}

static int parse_stop(json_t *root, struct srv_gen_req *g, struct srv_error *e)
{
    json_t *s = field(root, "stop");
    if (!s)
        return 0;
    json_t *one[1] = {s};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(s)) {
        n = json_array_size(s);
        if (n > SRV_MAX_STOP)
            return srv_errorf(e, 400, "invalid_request_error", "array_above_max_length", "stop",
                              "Invalid 'stop': array too long. Expected an array with maximum "
                              "length %d, but got an array with length %zu instead.",
                              SRV_MAX_STOP, n);
        items = NULL;
    } else if (!json_is_string(s)) {
        return type_error(e, "stop", "a string or an array of strings", s);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = items ? items[i] : json_array_get(s, i);
        char pn[32];
        snprintf(pn, sizeof pn, items ? "stop" : "stop[%zu]", i);
        if (!json_is_string(v))
            return type_error(e, pn, "a string", v);
        size_t len = json_string_length(v);
        if (len == 0)
            continue;
        if (len > SRV_MAX_STOP_LEN)
            return srv_errorf(e, 400, "invalid_request_error", "string_above_max_length", pn,
                              "Invalid '%s': string too long (at most %d bytes).", pn,
                              SRV_MAX_STOP_LEN);
        g->stop[g->n_stop] = strndup(json_string_value(v), len);
        if (!g->stop[g->n_stop])
            return oom(e);
        g->n_stop++;
    }
    return 0;
}

/* Fields that ask for features this server does not offer. */
static int parse_unsupported(json_t *root, int kind, struct srv_error *e)
{
    long long v = 1;
    int rc;
    if ((rc = get_int(root, "n", 1, 1000000, &v, NULL, e)) < 0)
        return rc;
    if (v != 1)
        return unsupported(e, "n", "other than 1");
    v = 1;
    if (kind == SRV_GEN_TEXT) {
        if ((rc = get_int(root, "best_of", 1, 1000000, &v, NULL, e)) < 0)
            return rc;
        if (v != 1)
            return unsupported(e, "best_of", "other than 1");
        int echo = 0;
        if ((rc = get_bool(root, "echo", &echo, e)) < 0)
            return rc;
        if (echo)
            return unsupported(e, "echo", "= true");
        v = 0;
        if ((rc = get_int(root, "logprobs", 0, 20, &v, NULL, e)) < 0)
            return rc;
        if (v)
            return unsupported(e, "logprobs", "> 0");
        json_t *suffix = field(root, "suffix");
        if (suffix && !json_is_string(suffix))
            return type_error(e, "suffix", "a string", suffix);
        if (suffix && json_string_length(suffix))
            return unsupported(e, "suffix", "(insertion)");
    } else {
        int lp = 0;
        if ((rc = get_bool(root, "logprobs", &lp, e)) < 0)
            return rc;
        if (lp)
            return unsupported(e, "logprobs", "= true");
        v = 0;
        if ((rc = get_int(root, "top_logprobs", 0, 20, &v, NULL, e)) < 0)
            return rc;
        if (v)
            return unsupported(e, "top_logprobs", "> 0");
        static const char *arrays[] = {"tools", "functions"};
        for (size_t i = 0; i < 2; i++) {
            json_t *t = field(root, arrays[i]);
            if (t && !json_is_array(t))
                return type_error(e, arrays[i], "an array", t);
            if (t && json_array_size(t))
                return unsupported(e, arrays[i], "(function calling)");
        }
    }
    double d = 0;
    if ((rc = get_number(root, "presence_penalty", -2, 2, &d, e)) < 0 ||
        (rc = get_number(root, "frequency_penalty", -2, 2, &d, e)) < 0)
        return rc;
    static const char *objects[] = {"logit_bias", "metadata", "response_format"};
    for (size_t i = 0; i < 3; i++) {
        json_t *o = field(root, objects[i]);
        if (o && !json_is_object(o))
            return type_error(e, objects[i], "an object", o);
    }
    json_t *user = field(root, "user");
    if (user && !json_is_string(user))
        return type_error(e, "user", "a string", user);
    return 0;
}

/* Parse a request body that must be one JSON object. *root is new on success. */
static int parse_body_object(const char *body, size_t len, json_t **root, struct srv_error *e)
{
    json_error_t jerr;
    *root = NULL;
    if (!body || len == 0)
        return srv_errorf(e, 400, "invalid_request_error", NULL, NULL,
                          "The request body is empty; a JSON object is required.");
    json_t *r = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r)
        return srv_errorf(e, 400, "invalid_request_error", "invalid_json", NULL,
                          "We could not parse the JSON body of your request: %s (line %d, "
                          "column %d).", jerr.text, jerr.line, jerr.column);
    if (!json_is_object(r)) {
        int rc = srv_errorf(e, 400, "invalid_request_error", "invalid_type", NULL,
                            "The request body must be a JSON object, but got %s.",
                            jtype_name(r));
        json_decref(r);
        return rc;
    }
    *root = r;
    return 0;
}

int srv_gen_parse(int kind, const char *body, size_t len, const struct srv_limits *lim,
                  struct srv_gen_req *out, struct srv_error *e)
{
    json_t *root = NULL;
    int rc = 0;
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->temperature = 1.0;
    out->top_p = 1.0;
    out->ret.mode = -1;

    if ((rc = parse_body_object(body, len, &root, e)) < 0)
        goto out;

    json_t *model = field(root, "model");
    if (model && !json_is_string(model)) {
        rc = type_error(e, "model", "a string", model);
        goto out;
    }
    if (model) {
        if (lim->model_id && strcmp(json_string_value(model), lim->model_id) != 0) {
            rc = srv_errorf(e, 404, "invalid_request_error", "model_not_found", "model",
                            "The model '%.200s' does not exist. This server serves '%.100s'.",
                            json_string_value(model), lim->model_id);
            goto out;
        }
        if (!(out->model = strdup(json_string_value(model)))) {
            rc = oom(e);
            goto out;
        }
    }

    if (kind == SRV_GEN_CHAT)
        rc = parse_messages(root, out, e);
    else
        rc = parse_prompt(root, lim, out, e);
    if (rc < 0)
        goto out;

    long long mt = 0;
    int has_mt = 0, has_mct = 0;
    long long mct = 0;
    if ((rc = get_int(root, "max_tokens", 1, lim->max_tokens_limit, &mt, &has_mt, e)) < 0)
        goto out;
    if (kind == SRV_GEN_CHAT &&
        (rc = get_int(root, "max_completion_tokens", 1, lim->max_tokens_limit, &mct, &has_mct,
                      e)) < 0)
        goto out;
    out->max_tokens = has_mct ? (int)mct : has_mt ? (int)mt : 0;

    if ((rc = get_number(root, "temperature", 0, 2, &out->temperature, e)) < 0 ||
        (rc = get_number(root, "top_p", 0, 1, &out->top_p, e)) < 0)
        goto out;
    long long seed = 0;
    if ((rc = get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, &out->has_seed, e)) < 0)
        goto out;
    out->seed = (uint64_t)seed;
    if ((rc = parse_stop(root, out, e)) < 0)
        goto out;
    if ((rc = get_bool(root, "stream", &out->stream, e)) < 0)
        goto out;
    json_t *so = field(root, "stream_options");
    if (so) {
        if (!json_is_object(so)) {
            rc = type_error(e, "stream_options", "an object", so);
            goto out;
        }
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu)) {
            rc = type_error(e, "stream_options.include_usage", "a boolean", iu);
            goto out;
        }
        out->include_usage = iu && json_is_true(iu);
    }
    if ((rc = parse_unsupported(root, kind, e)) < 0)
        goto out;
    if ((rc = srv_docs_field_parse(root, lim, &out->docs, &out->n_docs, e)) < 0)
        goto out;
    rc = srv_retrieval_field_parse(root, lim, &out->ret, e);
out:
    json_decref(root);
    if (rc < 0)
        srv_gen_req_deinit(out);
    return rc;
}

void srv_gen_req_deinit(struct srv_gen_req *g)
{
    if (!g)
        return;
    free(g->model);
    for (size_t i = 0; i < g->n_msgs; i++) {
        free(g->msgs[i].role);
        free(g->msgs[i].content);
    }
    free(g->msgs);
    free(g->prompt);
    free(g->prompt_ids);
    for (size_t i = 0; i < g->n_stop; i++)
        free(g->stop[i]);
    free(g->docs);
    int kind = g->kind;
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->ret.mode = -1;
}

/* ---- extensions: documents and retrieval ----------------------------------------------- */

int srv_doc_id_parse(const char *s, int64_t *id)
{
    if (!s || strncmp(s, "doc_", 4) != 0)
        return S3_EINVAL;
    const char *p = s + 4;
    int64_t v = 0;
    if (!*p || *p == '0')
        return S3_EINVAL;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - (*p - '0')) / 10)
            return S3_EINVAL;
        v = v * 10 + (*p - '0');
    }
    *id = v;
    return 0;
}

const char *srv_doc_id_str(int64_t id, char out[32])
{
    snprintf(out, 32, "doc_%lld", (long long)id);
    return out;
}

static int doc_not_found(struct srv_error *e, const char *param, const char *id)
{
    return srv_errorf(e, 404, "invalid_request_error", "document_not_found", param,
                      "No document with id '%.100s' (ids look like 'doc_12').", id);
}

int srv_docs_field_parse(json_t *root, const struct srv_limits *lim, int64_t **docs,
                         size_t *n_docs, struct srv_error *e)
{
    (void)lim;
    *docs = NULL;
    *n_docs = 0;
    json_t *d = field(root, "documents");
    if (!d)
        return 0;
    if (!json_is_array(d))
        return type_error(e, "documents", "an array of document ids", d);
    size_t n = json_array_size(d);
    if (n > SRV_MAX_DOCS)
        return srv_errorf(e, 400, "invalid_request_error", "array_above_max_length", "documents",
                          "Invalid 'documents': at most %d documents per request, got %zu.",
                          SRV_MAX_DOCS, n);
    if (n == 0)
        return 0;
    int64_t *ids = malloc(n * sizeof *ids);
    if (!ids)
        return oom(e);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(d, i);
        char p[32];
        snprintf(p, sizeof p, "documents[%zu]", i);
        int64_t id;
        if (!json_is_string(v)) {
            free(ids);
            return type_error(e, p, "a string", v);
        }
        if (srv_doc_id_parse(json_string_value(v), &id) < 0) {
            free(ids);
            return doc_not_found(e, p, json_string_value(v));
        }
        size_t j = 0;
        while (j < m && ids[j] != id)
            j++;
        if (j == m) /* duplicates are dropped */
            ids[m++] = id;
    }
    *docs = ids;
    *n_docs = m;
    return 0;
}

int srv_retrieval_field_parse(json_t *root, const struct srv_limits *lim,
                              struct srv_retrieval *r, struct srv_error *e)
{
    r->mode = -1;
    r->budget = 0;
    json_t *o = field(root, "retrieval");
    if (!o)
        return 0;
    if (!json_is_object(o))
        return type_error(e, "retrieval", "an object", o);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        if (strcmp(key, "mode") != 0 && strcmp(key, "budget") != 0)
            return srv_errorf(e, 400, "invalid_request_error", "unknown_parameter", "retrieval",
                              "Unknown parameter: 'retrieval.%.64s' (known: mode, budget).", key);
    }
    v = field(o, "mode");
    if (v) {
        if (!json_is_string(v))
            return type_error(e, "retrieval.mode", "a string", v);
        int m = idx_mode_parse(json_string_value(v));
        if (m < 0)
            return srv_errorf(e, 400, "invalid_request_error", "invalid_value", "retrieval.mode",
                              "Invalid value: '%.64s'. Supported values are: 'hybrid', 's3', "
                              "'bm25' and 'full'.", json_string_value(v));
        if (m == IDX_MODE_S3 && lim->no_sae)
            return srv_errorf(e, 400, "invalid_request_error", "unsupported_value",
                              "retrieval.mode",
                              "Retrieval mode 's3' needs an SAE, and this server runs without "
                              "one (train it with `s3serve train-sae`); use 'bm25' or 'hybrid'.");
        r->mode = m;
    }
    long long b = 0;
    int has = 0;
    long long hi = lim->max_budget > 0 ? lim->max_budget : (1 << 20);
    int rc = get_int(o, "budget", 16, hi, &b, &has, e);
    if (rc < 0) {
        /* name the full path of the parameter */
        char msg[sizeof e->message];
        snprintf(msg, sizeof msg, "%s", e->message);
        snprintf(e->param, sizeof e->param, "retrieval.budget");
        return rc;
    }
    if (has)
        r->budget = (int)b;
    return 0;
}

int srv_retrieve_parse(const char *body, size_t len, const struct srv_limits *lim,
                       struct srv_retrieve_req *out, struct srv_error *e)
{
    json_t *root = NULL;
    int rc = 0;
    memset(out, 0, sizeof *out);
    out->ret.mode = -1;
    if ((rc = parse_body_object(body, len, &root, e)) < 0)
        goto out;
    json_t *d = field(root, "documents");
    if (!d) {
        rc = srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter",
                        "documents", "Missing required parameter: 'documents'.");
        goto out;
    }
    if ((rc = srv_docs_field_parse(root, lim, &out->docs, &out->n_docs, e)) < 0)
        goto out;
    if (out->n_docs == 0) {
        rc = srv_errorf(e, 400, "invalid_request_error", "empty_array", "documents",
                        "Invalid 'documents': empty array. Give at least one document id.");
        goto out;
    }
    json_t *q = field(root, "query");
    if (!q) {
        rc = srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter", "query",
                        "Missing required parameter: 'query'.");
        goto out;
    }
    if (!json_is_string(q)) {
        rc = type_error(e, "query", "a string", q);
        goto out;
    }
    if (json_string_length(q) == 0) {
        rc = srv_errorf(e, 400, "invalid_request_error", "invalid_value", "query",
                        "Invalid 'query': the question is empty.");
        goto out;
    }
    if (!(out->query = strndup(json_string_value(q), json_string_length(q)))) {
        rc = oom(e);
        goto out;
    }
    if (strlen(out->query) != json_string_length(q)) {
        rc = srv_errorf(e, 400, "invalid_request_error", "invalid_value", "query",
                        "Invalid 'query': it contains a NUL character.");
        goto out;
    }
    rc = srv_retrieval_field_parse(root, lim, &out->ret, e);
out:
    json_decref(root);
    if (rc < 0)
        srv_retrieve_req_deinit(out);
    return rc;
}

void srv_retrieve_req_deinit(struct srv_retrieve_req *q)
{
    if (!q)
        return;
    free(q->docs);
    free(q->query);
    memset(q, 0, sizeof *q);
    q->ret.mode = -1;
}

int srv_text_check(const char *text, size_t len, const char *param, struct srv_error *e)
{
    struct s3_errinfo err = {0};
    if (srv_scan_check_text(text, len, &err) == 0)
        return 0;
    return srv_errorf(e, 400, "invalid_request_error", "invalid_value", param,
                      "Invalid document text: %s. Documents must be non-empty UTF-8 text.",
                      err.msg);
}

int srv_doc_json_parse(const char *body, size_t len, char **text, size_t *n_text, char **name,
                       struct srv_error *e)
{
    json_error_t jerr;
    int rc = 0;
    *text = NULL;
    *name = NULL;
    *n_text = 0;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return srv_errorf(e, 400, "invalid_request_error", "invalid_json", NULL,
                          "We could not parse the JSON body of your request: %s (line %d, "
                          "column %d). Send {\"text\": \"...\", \"name\": \"...\"} or "
                          "the raw text with another Content-Type.", jerr.text, jerr.line,
                          jerr.column);
    if (!json_is_object(root)) {
        rc = srv_errorf(e, 400, "invalid_request_error", "invalid_type", NULL,
                        "The request body must be a JSON object, but got %s.", jtype_name(root));
        goto out;
    }
    json_t *t = field(root, "text");
    if (!t) {
        rc = srv_errorf(e, 400, "invalid_request_error", "missing_required_parameter", "text",
                        "Missing required parameter: 'text'.");
        goto out;
    }
    if (!json_is_string(t)) {
        rc = type_error(e, "text", "a string", t);
        goto out;
    }
    json_t *n = field(root, "name");
    if (n && !json_is_string(n)) {
        rc = type_error(e, "name", "a string", n);
        goto out;
    }
    if (n && (json_string_length(n) > 255 || strlen(json_string_value(n)) !=
                                                 json_string_length(n))) {
        rc = srv_errorf(e, 400, "invalid_request_error", "invalid_value", "name",
                        "Invalid 'name': at most 255 bytes, no NUL characters.");
        goto out;
    }
    size_t tl = json_string_length(t);
    if ((rc = srv_text_check(json_string_value(t), tl, "text", e)) < 0)
        goto out;
    *text = malloc(tl + 1);
    *name = n ? strdup(json_string_value(n)) : NULL;
    if (!*text || (n && !*name)) {
        free(*text);
        free(*name);
        *text = *name = NULL;
        rc = oom(e);
        goto out;
    }
    memcpy(*text, json_string_value(t), tl + 1);
    *n_text = tl;
out:
    json_decref(root);
    return rc;
}

/* A cut at or after pos that is not inside a UTF-8 sequence. */
static size_t utf8_fwd(const char *t, size_t len, size_t pos)
{
    while (pos < len && ((unsigned char)t[pos] & 0xc0) == 0x80)
        pos++;
    return pos;
}

/* Move a cut at pos to just after a line break (else a space) within [lo, hi]. */
static size_t snap_cut(const char *t, size_t pos, size_t lo, size_t hi, int backwards)
{
    for (int pass = 0; pass < 2; pass++) {
        char want = pass == 0 ? '\n' : ' ';
        if (backwards) {
            for (size_t p = pos; p > lo; p--)
                if (t[p - 1] == want)
                    return p;
        } else {
            for (size_t p = pos; p < hi; p++)
                if (t[p] == want)
                    return p + 1;
        }
    }
    return pos;
}

void srv_long_split(const char *text, size_t len, const size_t *tok_end, size_t n, int head_tok,
                    int tail_tok, size_t *head_end, size_t *tail_start)
{
    size_t h = 0, t = len;
    if (head_tok > 0 && n > 0)
        h = tok_end[(size_t)head_tok < n ? (size_t)head_tok - 1 : n - 1];
    if (tail_tok > 0 && (size_t)tail_tok < n)
        t = tok_end[n - (size_t)tail_tok - 1];
    else if (tail_tok > 0)
        t = 0;
    if (h > len)
        h = len;
    if (t > len)
        t = len;
    /* the head ends at a line break in its last quarter; the tail starts at one in its first
     * quarter (whole lines read better, and the question usually starts a line) */
    if (h > 0 && h < len)
        h = snap_cut(text, h, h - h / 4, len, 1);
    if (t > 0 && t < len)
        t = snap_cut(text, t, 0, t + (len - t) / 4, 0);
    h = utf8_fwd(text, len, h);
    t = utf8_fwd(text, len, t);
    if (t < h)
        t = h;
    *head_end = h;
    *tail_start = t;
}
