/* tests/fuzz/fuzz_config.c - the JSON configuration reader (cfg_apply_json, then
 * cfg_validate and cfg_print).
 *
 * Properties, with jansson as an independent JSON parser:
 *   - a text the reader accepts is JSON: for valid UTF-8 input jansson parses it as an object;
 *   - the reader means the same as JSON: when jansson parses it without duplicate keys,
 *     applying each member with cfg_set() (string -> as is, integer -> decimal, true/false ->
 *     1/0, array -> each string) gives a configuration that prints the same (cfg_print);
 *   - an error comes with a message, and the struct can always be released. */
#include <inttypes.h>
#include <jansson.h>

#include "cfg.h"
#include "fuzz.h"

/* cfg_print of c as a new string (free()); NULL on ENOMEM. */
static char *print_cfg(const struct cfg *c)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    cfg_print(c, f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Apply one jansson member with cfg_set(); 0 or a negative code. */
static int apply_member(struct cfg *c, const char *key, json_t *v, struct s3_errinfo *err)
{
    char num[32];
    if (json_is_string(v))
        return cfg_set(c, key, json_string_value(v), err);
    if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%" PRId64, (int64_t)json_integer_value(v));
        return cfg_set(c, key, num, err);
    }
    if (json_is_true(v) || json_is_false(v))
        return cfg_set(c, key, json_is_true(v) ? "1" : "0", err);
    if (json_is_array(v)) {
        size_t i;
        json_t *el;
        json_array_foreach(v, i, el) {
            if (!json_is_string(el))
                return S3_EINVAL;
            int rc = cfg_set(c, key, json_string_value(el), err);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    return S3_EINVAL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exactly size bytes on the heap, so ASan sees a read past the end */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    struct cfg c, ref;
    struct s3_errinfo err = {0};
    cfg_defaults(&c);
    cfg_defaults(&ref);
    int rc = cfg_apply_json(&c, text, size, &err);
    if (rc < 0) {
        FUZZ_CHECK(err.code == rc || err.code == 0, "err.code %d, rc %d", err.code, rc);
        FUZZ_CHECK(memchr(err.msg, 0, sizeof err.msg) && err.msg[0], "no error text");
        goto out;
    }
    /* validation and printing must work on whatever was accepted */
    struct s3_errinfo verr = {0};
    if (cfg_validate(&c, &verr) < 0)
        FUZZ_CHECK(verr.msg[0], "validation failed without a message");
    if (!fuzz_utf8_valid(text, size))
        goto out;
    json_error_t jerr;
    json_t *any = json_loadb(text, size, JSON_DECODE_ANY, &jerr);
    FUZZ_CHECK(json_is_object(any), "accepted text that is not a JSON object: %s (%.*s)",
               jerr.text, (int)(size < 200 ? size : 200), text);
    json_decref(any);
    json_t *obj = json_loadb(text, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
        goto out; /* duplicate keys: the last one wins, not comparable member by member */
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        struct s3_errinfo e2 = {0};
        int r2 = apply_member(&ref, key, v, &e2);
        FUZZ_CHECK(r2 == 0, "member '%s' refused by cfg_set: %s", key, e2.msg);
    }
    json_decref(obj);
    char *a = print_cfg(&c), *b = print_cfg(&ref);
    if (a && b)
        FUZZ_CHECK(!strcmp(a, b), "reader and jansson disagree:\n%s\n---\n%s", a, b);
    free(a);
    free(b);
out:
    cfg_deinit(&c);
    cfg_deinit(&ref);
    free(text);
    return 0;
}
