/* tests/fuzz/fuzz_bm25.c - the index query side: idx_retrieve in BM25 mode, whose question
 * text becomes an FTS5 MATCH expression (index/bm25.c), on an in-memory database holding one
 * small document written through the index writer.
 *
 * Properties: any question text retrieves without error (the built query is always valid FTS5
 * syntax), the spans lie inside the document, in order, without overlap, within the budget,
 * and each span's text is the document's bytes at its character offsets. */
#include "fuzz.h"
#include "idx.h"

#define N_PASS 6
#define TOK_PER_PASS 10
#define BUDGET 24

static const char *const k_pass[N_PASS] = {
    "Alpha beta gamma delta. ",
    "The quick brown fox jumps over the lazy dog. ",
    ("Caf\xc3\xa9 na\xc3\xafve \xc3\xbc" "ber r\xc3\xa9sum\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac. "),
    "NEAR AND OR NOT \"quoted\" col:umn * ^ 42 3.14 x_y. ",
    "zebra zebra lion hill valley river. ",
    "Epsilon zeta eta theta iota kappa.",
};

static struct idx_db *g_db;
static int64_t g_doc;
static char g_text[1024];
static size_t g_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct s3_errinfo err = {0};
    struct idx_writer *w = NULL;
    struct idx_passage ps[N_PASS];
    int64_t c = 0;
    for (int i = 0; i < N_PASS; i++) {
        size_t len = strlen(k_pass[i]);
        memcpy(g_text + g_len, k_pass[i], len);
        g_len += len;
        ps[i] = (struct idx_passage){.start_tok = (int64_t)i * TOK_PER_PASS,
                                     .end_tok = (int64_t)(i + 1) * TOK_PER_PASS,
                                     .start_char = c,
                                     .end_char = c + (int64_t)len,
                                     .text = k_pass[i]};
        c += (int64_t)len;
    }
    struct idx_doc_meta m = {.name = "fuzz", .n_bytes = (int64_t)g_len};
    struct idx_chunk ch = {.tok0 = 0, .n_tok = N_PASS * TOK_PER_PASS, .n_passages = N_PASS,
                           .passages = ps};
    if (idx_open(":memory:", NULL, &g_db, &err) < 0 || idx_writer_begin(g_db, &m, &w, &err) < 0 ||
        idx_writer_add(w, &ch, &err) < 0 || idx_writer_finish(w, &err) < 0) {
        fprintf(stderr, "fuzz_bm25: cannot build the index: %s\n", err.msg);
        abort();
    }
    g_doc = idx_writer_doc(w);
    idx_writer_free(w);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *q = fuzz_strndup(data, size);
    if (!q)
        return 0;
    struct idx_query qu = {.mode = IDX_MODE_BM25, .budget = BUDGET, .text = q, .docs = &g_doc,
                           .n_docs = 1};
    struct idx_result r = {0};
    struct s3_errinfo err = {0};
    int rc = idx_retrieve(g_db, &qu, &r, &err);
    FUZZ_CHECK(rc == 0, "retrieve failed (%d): %s; question %s", rc, err.msg, q);
    int64_t sum = 0, prev_end = 0;
    for (size_t i = 0; i < r.n_spans; i++) {
        const struct idx_span *s = &r.spans[i];
        FUZZ_CHECK(s->doc == g_doc, "span of document %lld", (long long)s->doc);
        FUZZ_CHECK(s->start_tok >= prev_end && s->start_tok < s->end_tok &&
                       s->end_tok <= N_PASS * TOK_PER_PASS,
                   "span %zu [%lld, %lld) after %lld", i, (long long)s->start_tok,
                   (long long)s->end_tok, (long long)prev_end);
        FUZZ_CHECK(s->start_char >= 0 && s->start_char <= s->end_char &&
                       s->end_char <= (int64_t)g_len,
                   "span %zu chars [%lld, %lld)", i, (long long)s->start_char,
                   (long long)s->end_char);
        size_t n = (size_t)(s->end_char - s->start_char);
        FUZZ_CHECK(s->text && strlen(s->text) == n && !memcmp(s->text, g_text + s->start_char, n),
                   "span %zu text differs from the document", i);
        sum += s->end_tok - s->start_tok;
        prev_end = s->end_tok;
    }
    FUZZ_CHECK(sum == r.n_tokens && sum <= BUDGET, "%lld tokens (n_tokens %lld, budget %d)",
               (long long)sum, (long long)r.n_tokens, BUDGET);
    idx_result_deinit(&r);
    free(q);
    return 0;
}
