/* tests/engine/test_chat.c - eng_chat_apply against jinja2 renderings of the model's own
 * template (tests/fixtures/greedy.json), plus templates in tiny GGUF files and error cases.
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
    s3t_tok_env_open(&g_env, "greedy.json");
}

static void teardown(void)
{
    s3t_tok_env_close(&g_env);
}

static int have_model(void)
{
    return s3t_tok_env_ready(&g_env);
}

/* Messages of a fixture case; *n set. Strings borrowed from the JSON. */
static struct eng_chat_msg *case_msgs(json_t *cs, size_t *n)
{
    json_t *m = json_object_get(cs, "messages");
    *n = json_array_size(m);
    struct eng_chat_msg *v = calloc(*n ? *n : 1, sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < *n; i++) {
        v[i].role = json_string_value(json_object_get(json_array_get(m, i), "role"));
        v[i].content = json_string_value(json_object_get(json_array_get(m, i), "content"));
        ck_assert(v[i].role && v[i].content);
    }
    return v;
}

START_TEST(test_fixture_renderings)
{
    if (!have_model())
        return;
    json_t *cases = json_object_get(g_fix, "cases");
    size_t n_chat = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        if (strcmp(json_string_value(json_object_get(cs, "kind")), "chat") != 0)
            continue;
        n_chat++;
        size_t n;
        struct eng_chat_msg *msgs = case_msgs(cs, &n);
        const char *want = json_string_value(json_object_get(cs, "text"));
        char *got = NULL;
        struct s3_errinfo err = {0};
        ck_assert_int_eq(eng_chat_apply(g_tok, msgs, n, 1, &got, &err), 0);
        ck_assert_str_eq(got, want);

        /* and the rendering tokenizes (special on) to llama.cpp's prompt ids */
        int32_t *ids = NULL;
        size_t nid = 0;
        json_t *pid = json_object_get(cs, "prompt_ids");
        ck_assert_int_eq(eng_tok_encode(g_tok, got, strlen(got), ENG_TOK_SPECIAL, &ids, &nid), 0);
        ck_assert_uint_eq(nid, json_array_size(pid));
        for (size_t i = 0; i < nid; i++)
            ck_assert_int_eq(ids[i], (int)json_integer_value(json_array_get(pid, i)));
        free(ids);

        /* without the generation prompt: the same minus its tail */
        char *noprompt = NULL;
        ck_assert_int_eq(eng_chat_apply(g_tok, msgs, n, 0, &noprompt, &err), 0);
        const char *gp = "<|im_start|>assistant\n";
        ck_assert_uint_eq(strlen(noprompt) + strlen(gp), strlen(want));
        ck_assert_int_eq(strncmp(noprompt, want, strlen(noprompt)), 0);
        free(noprompt);
        free(got);
        free(msgs);
    }
    ck_assert_uint_ge(n_chat, 4);
}
END_TEST

START_TEST(test_default_system)
{
    if (!have_model())
        return;
    struct eng_chat_msg m[2] = {{"user", "Hi"}, {"assistant", "Hello"}};
    char *out = NULL;
    ck_assert_int_eq(eng_chat_apply(g_tok, m, 1, 1, &out, NULL), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                          "trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                          "<|im_start|>assistant\n");
    free(out);
    /* no messages: the template's loop never runs, so only the generation prompt */
    ck_assert_int_eq(eng_chat_apply(g_tok, NULL, 0, 1, &out, NULL), 0);
    ck_assert_str_eq(out, "<|im_start|>assistant\n");
    free(out);
    ck_assert_int_eq(eng_chat_apply(g_tok, NULL, 0, 0, &out, NULL), 0);
    ck_assert_str_eq(out, "");
    free(out);
}
END_TEST

START_TEST(test_errors)
{
    if (!have_model())
        return;
    struct s3_errinfo err = {0};
    char *out = (char *)&err;
    struct eng_chat_msg bad_role[1] = {{"tool", "x"}};
    ck_assert_int_eq(eng_chat_apply(g_tok, bad_role, 1, 1, &out, &err), S3_EINVAL);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err.msg, "tool"));
    struct eng_chat_msg empty_role[1] = {{"", "x"}};
    ck_assert_int_eq(eng_chat_apply(g_tok, empty_role, 1, 1, &out, &err), S3_EINVAL);
    struct eng_chat_msg null_content[2] = {{"user", "a"}, {"assistant", NULL}};
    ck_assert_int_eq(eng_chat_apply(g_tok, null_content, 2, 1, &out, &err), S3_EINVAL);
    struct eng_chat_msg null_role[1] = {{NULL, "a"}};
    ck_assert_int_eq(eng_chat_apply(g_tok, null_role, 1, 1, &out, &err), S3_EINVAL);
    ck_assert_int_eq(eng_chat_apply(g_tok, NULL, 2, 1, &out, &err), S3_EINVAL);
    ck_assert_int_eq(eng_chat_apply(NULL, bad_role, 1, 1, &out, &err), S3_EINVAL);
    ck_assert_int_eq(eng_chat_apply(g_tok, bad_role, 1, 1, NULL, &err), S3_EINVAL);
}
END_TEST

/* ---- templates in tiny GGUF files ---------------------------------------------------------- */

/* A minimal gpt2 tokenizer GGUF with the given chat template (NULL = none). */
static struct eng_tokenizer *toy_with_template(const char *tmpl)
{
    static const char *const toks[] = {"a", "b", "<|im_start|>", "<|im_end|>"};
    static const char *const merges[] = {"a b"};
    struct eng_gguf_writer *w = NULL;
    struct s3_errinfo err = {0};
    struct eng_tokenizer *t = NULL;
    ck_assert_int_eq(eng_gguf_writer_new(&w), 0);
    eng_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    eng_gguf_writer_add_str(w, "tokenizer.ggml.pre", "gpt-2");
    eng_gguf_writer_add_strs(w, "tokenizer.ggml.tokens", toks, 4);
    eng_gguf_writer_add_strs(w, "tokenizer.ggml.merges", merges, 1);
    if (tmpl)
        eng_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl);
    struct eng_gguf *g = s3t_gguf_from_writer(w);
    eng_gguf_writer_free(w);
    ck_assert_msg(eng_tok_new(g, &t, &err) == 0, "%s", err.msg);
    eng_gguf_close(g);
    return t;
}

START_TEST(test_template_variants)
{
    struct eng_chat_msg m[1] = {{"user", "Q?"}};
    struct s3_errinfo err = {0};
    char *out = NULL;

    /* plain ChatML, no default system message */
    struct eng_tokenizer *t = toy_with_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}");
    ck_assert_int_eq(eng_chat_apply(t, m, 1, 1, &out, &err), 0);
    ck_assert_str_eq(out, "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    eng_tok_free(t);

    /* Qwen2-style default written with escapes: the text comes from the template */
    t = toy_with_template(
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
        "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nBe "
        "brief.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}...{%- endfor %}");
    ck_assert_int_eq(eng_chat_apply(t, m, 1, 0, &out, &err), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ?"
                          "<|im_end|>\n");
    free(out);
    struct eng_chat_msg ms[2] = {{"system", "S"}, {"user", "U"}};
    ck_assert_int_eq(eng_chat_apply(t, ms, 2, 0, &out, &err), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
    free(out);
    eng_tok_free(t);

    /* not ChatML: refused with a message */
    t = toy_with_template("{% for message in messages %}<|start_header_id|>{{ message['role'] "
                          "}}<|end_header_id|>{% endfor %}");
    out = (char *)&err;
    ck_assert_int_eq(eng_chat_apply(t, m, 1, 1, &out, &err), S3_EINVAL);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err.msg, "unsupported chat template"));
    eng_tok_free(t);

    /* no template at all */
    t = toy_with_template(NULL);
    ck_assert_int_eq(eng_chat_apply(t, m, 1, 1, &out, &err), S3_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "no chat template"));
    eng_tok_free(t);
}
END_TEST

static Suite *chat_suite(void)
{
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("model");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fixture_renderings);
    tcase_add_test(tc, test_default_system);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    TCase *toy = tcase_create("templates");
    tcase_add_test(toy, test_template_variants);
    suite_add_tcase(s, toy);
    return s;
}

int main(void)
{
    return s3t_run(chat_suite(), CK_FORK_GETENV);
}
