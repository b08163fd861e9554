/* tests/engine/test_tokenizer.c - the BPE tokenizer against llama.cpp's own token ids
 * (tests/fixtures/tokenizer.json, made by tests/ref/make_fixtures.py), plus hand-checked
 * merges on a toy vocabulary and clean errors for bad tokenizer metadata in tiny GGUF files.
 * Tests that need the real model return early with a message when it is absent. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "gguf.h"
#include "testutil.h"

static struct s3t_tok_env g_env;
#define g_tok (g_env.tok)
#define g_fix (g_env.fix)

static void setup(void)
{
    s3t_tok_env_open(&g_env, "tokenizer.json");
}

static void teardown(void)
{
    s3t_tok_env_close(&g_env);
}

/* 1 when the model-backed tests can run; prints why not otherwise. */
static int have_model(void)
{
    return s3t_tok_env_ready(&g_env);
}

/* ---- base64 (fixtures store bytes that may be invalid UTF-8) ----------------------------- */

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* New buffer (NUL-terminated) with the decoded bytes. */
static char *b64dec(const char *s, size_t *n)
{
    size_t len = strlen(s);
    char *out = malloc(len / 4 * 3 + 4);
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;
    ck_assert_ptr_nonnull(out);
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0)
            continue;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xFF);
        }
    }
    out[o] = '\0';
    *n = o;
    return out;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    ck_assert_msg(s != NULL, "fixture field %s missing", k);
    return s;
}

/* ---- against llama.cpp -------------------------------------------------------------------- */

START_TEST(test_fixture_encode)
{
    if (!have_model())
        return;
    json_t *cases = json_object_get(g_fix, "cases");
    size_t n_cases = json_array_size(cases), n_bad = 0;
    ck_assert_uint_ge(n_cases, 30);
    for (size_t c = 0; c < n_cases; c++) {
        json_t *cs = json_array_get(cases, c);
        const char *name = jstr(cs, "name");
        size_t len;
        char *text = b64dec(jstr(cs, "text_b64"), &len);
        int flags = json_is_true(json_object_get(cs, "special")) ? ENG_TOK_SPECIAL : 0;
        json_t *want = json_object_get(cs, "ids");
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = eng_tok_encode(g_tok, text, len, flags, &ids, &n);
        ck_assert_msg(rc == 0, "%s: encode rc %d", name, rc);
        size_t nw = json_array_size(want), first = (size_t)-1;
        for (size_t i = 0; i < n && i < nw; i++)
            if (ids[i] != (int32_t)json_integer_value(json_array_get(want, i))) {
                first = i;
                break;
            }
        if (first == (size_t)-1 && n != nw)
            first = n < nw ? n : nw;
        if (first != (size_t)-1) {
            n_bad++;
            fprintf(stderr, "MISMATCH %s: %zu ids, want %zu; first difference at %zu: got %d want %d\n",
                    name, n, nw, first, first < n ? ids[first] : -1,
                    first < nw ? (int)json_integer_value(json_array_get(want, first)) : -1);
        }
        free(ids);
        free(text);
    }
    ck_assert_msg(n_bad == 0, "%zu of %zu tokenizer cases differ from llama.cpp", n_bad, n_cases);
}
END_TEST

START_TEST(test_fixture_decode)
{
    if (!have_model())
        return;
    json_t *cases = json_object_get(g_fix, "cases");
    size_t n_bad = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        json_t *want = json_object_get(cs, "ids");
        size_t n = json_array_size(want);
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        ck_assert_ptr_nonnull(ids);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(want, i));
        static const char *const keys[2] = {"decoded_b64", "decoded_special_b64"};
        for (int sp = 0; sp < 2; sp++) {
            size_t wlen, glen;
            char *w = b64dec(jstr(cs, keys[sp]), &wlen);
            char *got = NULL;
            int rc = eng_tok_decode(g_tok, ids, n, sp ? ENG_TOK_SPECIAL : 0, &got, &glen);
            ck_assert_int_eq(rc, 0);
            ck_assert_ptr_nonnull(got);
            ck_assert_int_eq(got[glen], '\0');
            if (glen != wlen || memcmp(got, w, wlen) != 0) {
                n_bad++;
                fprintf(stderr, "DECODE MISMATCH %s (%s): %zu bytes, want %zu\n",
                        jstr(cs, "name"), keys[sp], glen, wlen);
            }
            free(got);
            free(w);
        }
        free(ids);
    }
    ck_assert_msg(n_bad == 0, "%zu decodes differ from llama.cpp", n_bad);
}
END_TEST

START_TEST(test_ids_and_flags)
{
    if (!have_model())
        return;
    ck_assert_int_eq(eng_tok_n_vocab(g_tok), 49152);
    ck_assert_int_eq(eng_tok_bos(g_tok), (int)json_integer_value(json_object_get(g_fix, "bos")));
    ck_assert_int_eq(eng_tok_eos(g_tok), (int)json_integer_value(json_object_get(g_fix, "eos")));

    /* EOG set equals llama.cpp's */
    json_t *eog = json_object_get(g_fix, "eog_ids");
    size_t k = 0, n_eog = 0;
    for (int32_t id = 0; id < eng_tok_n_vocab(g_tok); id++) {
        int want = k < json_array_size(eog) && json_integer_value(json_array_get(eog, k)) == id;
        if (want)
            k++;
        ck_assert_msg(eng_tok_is_eog(g_tok, id) == want, "is_eog(%d) != %d", id, want);
        n_eog += (size_t)want;
    }
    ck_assert_uint_ge(n_eog, 2); /* <|endoftext|> and <|im_end|> at least */
    ck_assert_int_eq(eng_tok_is_eog(g_tok, -1), 0);
    ck_assert_int_eq(eng_tok_is_eog(g_tok, 49152), 0);

    /* BOS / EOS flags wrap the plain encoding */
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    const char *txt = "Hello world";
    ck_assert_int_eq(eng_tok_encode(g_tok, txt, strlen(txt), 0, &a, &na), 0);
    ck_assert_int_eq(eng_tok_encode(g_tok, txt, strlen(txt), ENG_TOK_BOS | ENG_TOK_EOS, &b, &nb),
                     0);
    ck_assert_uint_eq(nb, na + 2);
    ck_assert_int_eq(b[0], eng_tok_bos(g_tok));
    ck_assert_int_eq(b[nb - 1], eng_tok_eos(g_tok));
    ck_assert_mem_eq(b + 1, a, na * sizeof *a);
    free(a);
    free(b);

    /* empty text: valid pointer, zero ids; with BOS only the BOS */
    ck_assert_int_eq(eng_tok_encode(g_tok, "", 0, 0, &a, &na), 0);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(na, 0);
    free(a);
    ck_assert_int_eq(eng_tok_encode(g_tok, NULL, 0, ENG_TOK_BOS, &a, &na), 0);
    ck_assert_uint_eq(na, 1);
    ck_assert_int_eq(a[0], eng_tok_bos(g_tok));
    free(a);
    ck_assert_int_eq(eng_tok_encode(NULL, "x", 1, 0, &a, &na), S3_EINVAL);
    ck_assert_int_eq(eng_tok_encode(g_tok, NULL, 3, 0, &a, &na), S3_EINVAL);
}
END_TEST

START_TEST(test_special_on_off)
{
    if (!have_model())
        return;
    const char *txt = "<|im_start|>user\nhi<|im_end|>";
    int32_t *on = NULL, *off = NULL;
    size_t non = 0, noff = 0;
    ck_assert_int_eq(eng_tok_encode(g_tok, txt, strlen(txt), ENG_TOK_SPECIAL, &on, &non), 0);
    ck_assert_int_eq(eng_tok_encode(g_tok, txt, strlen(txt), 0, &off, &noff), 0);
    ck_assert_uint_ge(non, 3);
    ck_assert_int_eq(on[0], 1);       /* <|im_start|> */
    ck_assert_int_eq(on[non - 1], 2); /* <|im_end|> */
    ck_assert_uint_gt(noff, non);
    for (size_t i = 0; i < noff; i++)
        ck_assert_msg(off[i] > 16, "special id %d produced without ENG_TOK_SPECIAL", off[i]);

    /* decode: control tokens hidden unless ENG_TOK_SPECIAL; plain text round-trips */
    char *s = NULL;
    size_t n = 0;
    ck_assert_int_eq(eng_tok_decode(g_tok, on, non, 0, &s, &n), 0);
    ck_assert_str_eq(s, "user\nhi");
    free(s);
    ck_assert_int_eq(eng_tok_decode(g_tok, on, non, ENG_TOK_SPECIAL, &s, &n), 0);
    ck_assert_str_eq(s, txt);
    free(s);
    ck_assert_int_eq(eng_tok_decode(g_tok, off, noff, 0, &s, &n), 0);
    ck_assert_str_eq(s, txt);
    free(s);
    int32_t bad[2] = {5, 49152};
    ck_assert_int_eq(eng_tok_decode(g_tok, bad, 2, 0, &s, &n), S3_EINVAL);
    ck_assert_ptr_null(s);
    bad[1] = -3;
    ck_assert_int_eq(eng_tok_decode(g_tok, bad, 2, 0, &s, &n), S3_EINVAL);
    free(on);
    free(off);
}
END_TEST

START_TEST(test_piece)
{
    if (!have_model())
        return;
    const char *p = NULL;
    ck_assert_int_eq(eng_tok_piece(g_tok, 1, &p), 12);
    ck_assert_mem_eq(p, "<|im_start|>", 12);
    ck_assert_int_eq(eng_tok_piece(g_tok, 0, &p), 13);
    ck_assert_mem_eq(p, "<|endoftext|>", 13);

    /* " the" is one token whose piece carries the space (GPT-2 'Ġ' mapped back) */
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(eng_tok_encode(g_tok, " the", 4, 0, &ids, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(eng_tok_piece(g_tok, ids[0], &p), 4);
    ck_assert_mem_eq(p, " the", 4);
    free(ids);

    /* every piece equals the decode of that single id with ENG_TOK_SPECIAL */
    for (int32_t id = 0; id < eng_tok_n_vocab(g_tok); id += 97) {
        char *s = NULL;
        size_t sl = 0;
        int pl = eng_tok_piece(g_tok, id, &p);
        ck_assert_int_ge(pl, 0);
        ck_assert_int_eq(eng_tok_decode(g_tok, &id, 1, ENG_TOK_SPECIAL, &s, &sl), 0);
        ck_assert_uint_eq(sl, (size_t)pl);
        ck_assert_mem_eq(s, p, sl);
        free(s);
    }
    ck_assert_int_eq(eng_tok_piece(g_tok, -1, &p), S3_EINVAL);
    ck_assert_int_eq(eng_tok_piece(g_tok, 49152, &p), S3_EINVAL);
}
END_TEST

START_TEST(test_large_text)
{
    if (!have_model())
        return;
    /* 1 MB of text: must finish (no quadratic behaviour); concatenation of whole-word-aligned
     * copies tokenizes to the concatenation of the parts */
    char *path = s3t_root_path("tests/fixtures/pydoc_sample.txt");
    char *txt = NULL;
    size_t len = 0;
    ck_assert_int_eq(s3_read_file(path, 1 << 20, &txt, &len, NULL), 0);
    free(path);
    size_t big_len = len * 10;
    char *big = malloc(big_len);
    ck_assert_ptr_nonnull(big);
    for (int i = 0; i < 10; i++)
        memcpy(big + (size_t)i * len, txt, len);
    int32_t *one = NULL, *all = NULL;
    size_t n1 = 0, n10 = 0;
    ck_assert_int_eq(eng_tok_encode(g_tok, txt, len, 0, &one, &n1), 0);
    ck_assert_int_eq(eng_tok_encode(g_tok, big, big_len, 0, &all, &n10), 0);
    /* the sample ends with "\n" and starts with a letter, so copies do not merge */
    ck_assert_uint_eq(n10, 10 * n1);
    for (int i = 0; i < 10; i++)
        ck_assert_mem_eq(all + (size_t)i * n1, one, n1 * sizeof *one);
    free(one);
    free(all);
    free(big);
    free(txt);
}
END_TEST

START_TEST(test_random_bytes)
{
    if (!have_model())
        return;
    /* arbitrary bytes (deterministic LCG): encode succeeds, ids are in range, and the decode of
     * valid UTF-8 input round-trips exactly */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    char buf[4096];
    for (int round = 0; round < 32; round++) {
        size_t n = 1 + (size_t)(round * 127) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned v = (unsigned)(x >> 56);
            /* odd rounds: any byte; even: printable ASCII, tab, newline, CR and NUL, all of
             * which have byte tokens (this vocabulary lacks a few control bytes, which are
             * dropped as llama.cpp drops them) */
            static const char extra[4] = {'\t', '\n', '\r', '\0'};
            buf[i] = round % 2 ? (char)v : v % 99 < 95 ? (char)(0x20 + v % 99) : extra[v % 99 - 95];
        }
        int32_t *ids = NULL;
        size_t nid = 0;
        ck_assert_int_eq(eng_tok_encode(g_tok, buf, n, round % 3 ? 0 : ENG_TOK_SPECIAL, &ids,
                                        &nid), 0);
        for (size_t i = 0; i < nid; i++)
            ck_assert(ids[i] >= 0 && ids[i] < eng_tok_n_vocab(g_tok));
        char *s = NULL;
        size_t sl = 0;
        ck_assert_int_eq(eng_tok_decode(g_tok, ids, nid, ENG_TOK_SPECIAL, &s, &sl), 0);
        if (round % 2 == 0) { /* exact round trip */
            ck_assert_uint_eq(sl, n);
            ck_assert_mem_eq(s, buf, n);
        }
        free(s);
        free(ids);
    }
}
END_TEST

/* ---- tiny GGUF files ---------------------------------------------------------------------- */

/* Toy vocabulary: ids 0..8 below. */
static const char *const k_toy_tokens[] = {"a", "b", "c", "\xc4\xa0" /* 'Ġ' = space */, "ab",
                                           "bc", "abc", "\xc4\xa0" "a", "<|im_start|>"};
static const int32_t k_toy_types[] = {1, 1, 1, 1, 1, 1, 1, 1, 3};
static const char *const k_toy_merges[] = {"a b", "b c", "ab c", "\xc4\xa0 a"};

enum { OMIT_MERGES = 1, TYPES_SHORT = 2, MODEL_LLAMA = 4, PRE_UNKNOWN = 8, TOKENS_AS_INT = 16,
       NO_MODEL = 32 };

static const char *g_toy_pre = "gpt-2";

/* Build a toy tokenizer GGUF with the given defects and try to load it. */
static int load_toy(int defects, struct eng_tokenizer **out, struct s3_errinfo *err)
{
    struct eng_gguf_writer *w = NULL;
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    if (!(defects & NO_MODEL))
        eng_gguf_writer_add_str(w, "tokenizer.ggml.model",
                                defects & MODEL_LLAMA ? "llama" : "gpt2");
    eng_gguf_writer_add_str(w, "tokenizer.ggml.pre",
                            defects & PRE_UNKNOWN ? "no-such-pre" : g_toy_pre);
    if (defects & TOKENS_AS_INT)
        eng_gguf_writer_add_arr(w, "tokenizer.ggml.tokens", GGUF_VT_I32, k_toy_types, 9);
    else
        eng_gguf_writer_add_strs(w, "tokenizer.ggml.tokens", k_toy_tokens, 9);
    eng_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_I32, k_toy_types,
                            defects & TYPES_SHORT ? 5 : 9);
    if (!(defects & OMIT_MERGES))
        eng_gguf_writer_add_strs(w, "tokenizer.ggml.merges", k_toy_merges, 4);
    eng_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 8);
    eng_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 8);
    struct eng_gguf *g = s3t_gguf_from_writer(w);
    eng_gguf_writer_free(w);
    *out = NULL;
    int rc = eng_tok_new(g, out, err);
    eng_gguf_close(g); /* the tokenizer keeps its own copies */
    return rc;
}

static void expect_ids(const struct eng_tokenizer *t, const char *txt, int flags,
                       const int32_t *want, size_t nw)
{
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(eng_tok_encode(t, txt, strlen(txt), flags, &ids, &n), 0);
    ck_assert_msg(n == nw, "'%s': %zu ids, want %zu", txt, n, nw);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids[i] == want[i], "'%s': id %zu = %d, want %d", txt, i, ids[i], want[i]);
    free(ids);
}

START_TEST(test_toy_merges)
{
    struct s3_errinfo err = {0};
    struct eng_tokenizer *t = NULL;
    ck_assert_int_eq(load_toy(0, &t, &err), 0);
    ck_assert_int_eq(eng_tok_n_vocab(t), 9);
    /* a b c: "a b" (rank 0) first, then "ab c" (rank 2) */
    expect_ids(t, "abc", 0, (const int32_t[]){6}, 1);
    /* b c a b: "a b" (rank 0) before "b c" (rank 1): [b c ab] -> [bc ab] */
    expect_ids(t, "bcab", 0, (const int32_t[]){5, 4}, 2);
    /* " abc" is one pre-token: Ġ a b c -> Ġ ab c -> Ġ abc ("Ġ a" rank 3 never wins) */
    expect_ids(t, " abc", 0, (const int32_t[]){3, 6}, 2);
    /* " a" -> "Ġa" */
    expect_ids(t, " a", 0, (const int32_t[]){7}, 1);
    /* special text only with ENG_TOK_SPECIAL */
    expect_ids(t, "a<|im_start|>b", ENG_TOK_SPECIAL, (const int32_t[]){0, 8, 1}, 3);
    /* bytes with no token are dropped, as llama.cpp does */
    expect_ids(t, "d", 0, NULL, 0);
    char *s = NULL;
    size_t n = 0;
    int32_t ids[] = {3, 6, 8, 5};
    ck_assert_int_eq(eng_tok_decode(t, ids, 4, 0, &s, &n), 0);
    ck_assert_str_eq(s, " abcbc");
    free(s);
    ck_assert_int_eq(eng_tok_is_eog(t, 8), 1); /* the EOS id */
    ck_assert_int_eq(eng_tok_is_eog(t, 0), 0);
    eng_tok_free(t);
}
END_TEST

START_TEST(test_pre_types)
{
    /* every supported pre-tokenizer compiles its regexes and splits plain words alike */
    static const char *const pres[] = {"default", "gpt-2", "smollm", "starcoder", "llama3",
                                       "llama-bpe", "qwen2", "stablelm2", "olmo"};
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
        struct s3_errinfo err = {0};
        struct eng_tokenizer *t = NULL;
        g_toy_pre = pres[i];
        ck_assert_msg(load_toy(0, &t, &err) == 0, "%s: %s", pres[i], err.msg);
        expect_ids(t, "ab abc", 0, (const int32_t[]){4, 3, 6}, 3);
        eng_tok_free(t);
    }
    g_toy_pre = "gpt-2";
}
END_TEST

START_TEST(test_bad_metadata)
{
    static const struct { int defects; const char *needle; } cases[] = {
        {OMIT_MERGES, "merges"},
        {TYPES_SHORT, "token_type"},
        {MODEL_LLAMA, "llama"},
        {NO_MODEL, "tokenizer.ggml.model"},
        {PRE_UNKNOWN, "no-such-pre"},
        {TOKENS_AS_INT, "tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct s3_errinfo err = {0};
        struct eng_tokenizer *t = (struct eng_tokenizer *)&err; /* must be reset to NULL */
        int rc = load_toy(cases[i].defects, &t, &err);
        ck_assert_msg(rc == S3_EFORMAT, "defect %d: rc %d", cases[i].defects, rc);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "defect %d: message '%s'",
                      cases[i].defects, err.msg);
    }
    eng_tok_free(NULL);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("llama.cpp");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fixture_encode);
    tcase_add_test(tc, test_fixture_decode);
    tcase_add_test(tc, test_ids_and_flags);
    tcase_add_test(tc, test_special_on_off);
    tcase_add_test(tc, test_piece);
    tcase_add_test(tc, test_large_text);
    tcase_add_test(tc, test_random_bytes);
    suite_add_tcase(s, tc);
    TCase *toy = tcase_create("toy");
    tcase_add_test(toy, test_toy_merges);
    tcase_add_test(toy, test_pre_types);
    tcase_add_test(toy, test_bad_metadata);
    suite_add_tcase(s, toy);
    return s;
}

int main(void)
{
    return s3t_run(tokenizer_suite(), CK_FORK_GETENV);
}
