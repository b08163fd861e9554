/* engine/chat.c - chat template rendering for the ChatML family.
 *
 * No Jinja interpreter: the model's tokenizer.chat_template is recognised by its markers and
 * rendered by hand, byte-equal to what transformers' apply_chat_template gives for it:
 *
 *     <|im_start|>{role}\n{content}<|im_end|>\n      per message
 *     <|im_start|>assistant\n                       generation prompt
 *
 * A default system message is taken from the template itself when it holds a literal
 * "<|im_start|>system\n<text><|im_end|>" (SmolLM2: "You are a helpful AI assistant named
 * SmolLM, ..."; Qwen2: "You are a helpful assistant."); it is inserted when the first message
 * is not a system message. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "tokenizer_int.h"

#define CHAT_MAX_BYTES ((size_t)1 << 30)

static const char k_im_start[] = "<|im_start|>";
static const char k_im_end[] = "<|im_end|>";

/* Find the default system text in a ChatML template. On success *out is new (NUL-terminated)
 * or NULL when the template has none. Returns 0 or S3_ENOMEM. */
static int default_system(const char *tmpl, size_t n, char **out)
{
    static const char head[] = "<|im_start|>system";
    *out = NULL;
    const char *end = tmpl + n, *p = tmpl;
    while ((p = memmem(p, (size_t)(end - p), head, sizeof head - 1)) != NULL) {
        const char *q = p + sizeof head - 1;
        p = q;
        /* the newline, as a real one or as the escape \n inside a string literal */
        if (q < end && *q == '\n')
            q++;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *stop = memmem(q, (size_t)(end - q), k_im_end, sizeof k_im_end - 1);
        if (!stop || stop == q)
            continue;
        /* literal text only: a quote, brace or other template syntax means an expression */
        char *txt = malloc((size_t)(stop - q) + 1);
        if (!txt)
            return S3_ENOMEM;
        size_t k = 0;
        bool literal = true;
        for (const char *c = q; c < stop && literal; c++) {
            if (*c == '\\' && c + 1 < stop) {
                char e = c[1];
                c++;
                txt[k++] = e == 'n' ? '\n' : e == 't' ? '\t' : e;
            } else if (*c == '\'' || *c == '"' || *c == '{' || *c == '}') {
                literal = false;
            } else {
                txt[k++] = *c;
            }
        }
        if (!literal) {
            free(txt);
            continue;
        }
        txt[k] = '\0';
        *out = txt;
        return 0;
    }
    return 0;
}

static bool role_ok(const char *r)
{
    return strcmp(r, "system") == 0 || strcmp(r, "user") == 0 || strcmp(r, "assistant") == 0;
}

struct sb {
    char *p;
    size_t len, cap;
    int rc;  /* sticky */
};

static void sb_put(struct sb *b, const char *s, size_t n)
{
    if (b->rc)
        return;
    if (n > CHAT_MAX_BYTES - b->len) {
        b->rc = S3_ETOOBIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->rc = S3_ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_turn(struct sb *b, const char *role, const char *content)
{
    sb_str(b, k_im_start);
    sb_str(b, role);
    sb_put(b, "\n", 1);
    sb_str(b, content);
    sb_str(b, k_im_end);
    sb_put(b, "\n", 1);
}

int eng_chat_apply(const struct eng_tokenizer *t, const struct eng_chat_msg *msgs, size_t n,
                   int add_generation_prompt, char **out, struct s3_errinfo *err)
{
    int rc = 0;
    char *sys = NULL;
    struct sb b = {0};
    size_t tlen = 0;

    if (!t || !out || (n && !msgs))
        return s3_errf(err, S3_EINVAL, "chat: NULL argument");
    *out = NULL;
    const char *tmpl = eng__tok_chat_template(t, &tlen);
    if (!tmpl)
        return s3_errf(err, S3_EINVAL, "chat: the model has no chat template");
    if (!memmem(tmpl, tlen, k_im_start, sizeof k_im_start - 1) ||
        !memmem(tmpl, tlen, k_im_end, sizeof k_im_end - 1))
        return s3_errf(err, S3_EINVAL,
                       "chat: unsupported chat template (only the ChatML family is known)");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return s3_errf(err, S3_EINVAL, "chat: message %zu has no role or content", i);
        if (!role_ok(msgs[i].role))
            return s3_errf(err, S3_EINVAL,
                           "chat: message %zu: role '%.32s' (system, user or assistant)", i,
                           msgs[i].role);
    }
    if ((rc = default_system(tmpl, tlen, &sys)) < 0) {
        s3_errf(err, rc, "chat: out of memory");
        goto out;
    }
    if (n > 0 && sys && strcmp(msgs[0].role, "system") != 0)
        sb_turn(&b, "system", sys);
    for (size_t i = 0; i < n; i++)
        sb_turn(&b, msgs[i].role, msgs[i].content);
    if (add_generation_prompt)
        sb_str(&b, "<|im_start|>assistant\n");
    sb_put(&b, "", 0);
    if (b.rc) {
        rc = s3_errf(err, b.rc, "chat: %s", b.rc == S3_ETOOBIG ? "prompt too large"
                                                                  : "out of memory");
        goto out;
    }
    *out = b.p;
    b.p = NULL;
out:
    free(b.p);
    free(sys);
    return rc;
}
