/* tests/fuzz/fuzz_tokenizer.c - the BPE tokenizer of the default model: encode, then decode.
 *
 * The tokenizer is built once (LLVMFuzzerInitialize) from models/SmolLM2-135M-Instruct.Q4_1.gguf,
 * found through $S3_ROOT or relative to the working directory; without the file every input
 * is skipped. Properties:
 *   - every id is in [0, n_vocab) and the pieces of the ids add up to the decoded length;
 *   - for valid UTF-8 input, decode(encode(x)) == x less the bytes that have no byte token
 *     in the vocabulary (llama.cpp drops those too: in this vocabulary 0x04, 0x06, 0x13,
 *     0x14, 0x16, 0x1d, and the lead bytes 0xf1, 0xf2 of U+40000..U+BFFFF), both as plain
 *     text and with special tokens recognised (ENG_TOK_SPECIAL both ways); the set is taken
 *     from the vocabulary (single-byte pieces), not from the encoder;
 *   - BOS/EOS only wrap the ids;
 *   - for any input the round trip does not fail and at most triples the length (U+FFFD per
 *     invalid byte); when no byte is dropped it is idempotent: a second round trip returns
 *     its input unchanged (invalid bytes are normalised once). */
#include "engine.h"
#include "fuzz.h"
#include "gguf.h"

#define MODEL_REL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

static struct eng_tokenizer *g_tok;
static unsigned char g_dropped[256]; /* 1: no token decodes to this single byte */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *path = fuzz_find_file(MODEL_REL);
    struct eng_gguf *g = NULL;
    struct s3_errinfo err = {0};
    if (!path) {
        fprintf(stderr, "fuzz_tokenizer: %s not found (set S3_ROOT): inputs are skipped\n",
                MODEL_REL);
        return 0;
    }
    if (eng_gguf_open(path, &g, &err) < 0 || eng_tok_new(g, &g_tok, &err) < 0) {
        fprintf(stderr, "fuzz_tokenizer: cannot load the tokenizer of %s: %s\n", path, err.msg);
        abort();
    }
    eng_gguf_close(g);
    free(path);
    memset(g_dropped, 1, sizeof g_dropped);
    for (int32_t id = 0; id < eng_tok_n_vocab(g_tok); id++) {
        const char *b;
        if (eng_tok_piece(g_tok, id, &b) == 1)
            g_dropped[(unsigned char)b[0]] = 0;
    }
    return 0;
}

/* text less the bytes without a byte token: new (free()), length in *n. */
static char *without_dropped(const char *text, size_t len, size_t *n)
{
    char *out = malloc(len ? len : 1);
    FUZZ_CHECK(out != NULL, "out of memory");
    *n = 0;
    for (size_t i = 0; i < len; i++)
        if (!g_dropped[(unsigned char)text[i]])
            out[(*n)++] = text[i];
    return out;
}

/* encode(text) with flags, decode with dflags; returns the decoded text (new) and its ids. */
static char *round_trip(const char *text, size_t len, int flags, int dflags, size_t *out_len,
                        int32_t **ids_out, size_t *n_out)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = eng_tok_encode(g_tok, text, len, flags, &ids, &n);
    FUZZ_CHECK(rc == 0, "encode failed: %d (len %zu)", rc, len);
    const int n_vocab = eng_tok_n_vocab(g_tok);
    size_t piece_sum = 0;
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d at %zu", (int)ids[i], i);
        const char *b;
        int pl = eng_tok_piece(g_tok, ids[i], &b);
        FUZZ_CHECK(pl >= 0, "no piece for id %d", (int)ids[i]);
        if (!(flags & (ENG_TOK_BOS | ENG_TOK_EOS)))
            piece_sum += (size_t)pl;
    }
    char *dec = NULL;
    size_t dl = 0;
    rc = eng_tok_decode(g_tok, ids, n, dflags, &dec, &dl);
    FUZZ_CHECK(rc == 0 && dec, "decode failed: %d", rc);
    FUZZ_CHECK(dec[dl] == 0, "decoded text is not NUL-terminated");
    if ((dflags & ENG_TOK_SPECIAL) && !(flags & (ENG_TOK_BOS | ENG_TOK_EOS)))
        FUZZ_CHECK(piece_sum == dl, "pieces %zu bytes, decoded %zu", piece_sum, dl);
    *out_len = dl;
    if (ids_out) {
        *ids_out = ids;
        *n_out = n;
    } else {
        free(ids);
    }
    return dec;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_tok)
        return 0;
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    const int valid = fuzz_utf8_valid(text, size);
    size_t want_len;
    char *want = without_dropped(text, size, &want_len);
    size_t dl;
    int32_t *ids;
    size_t n;

    /* plain text: special-token text is ordinary text, decode skips nothing */
    char *dec = round_trip(text, size, 0, 0, &dl, &ids, &n);
    if (valid)
        FUZZ_CHECK(dl == want_len && !memcmp(dec, want, want_len),
                   "plain round trip differs: %zu bytes in (%zu kept), %zu out", size, want_len,
                   dl);
    else
        FUZZ_CHECK(dl <= 3 * size, "%zu bytes in, %zu out", size, dl);
    if (!valid && want_len == size) {
        /* invalid bytes are normalised once (U+FFFD; overlongs and surrogates decoded as
         * llama.cpp does): a second round trip leaves the text as it is */
        size_t dl2;
        char *dec2 = round_trip(dec, dl, 0, 0, &dl2, NULL, NULL);
        FUZZ_CHECK(dl2 == dl && !memcmp(dec2, dec, dl),
                   "round trip not idempotent: %zu bytes, then %zu", dl, dl2);
        free(dec2);
    }
    free(dec);

    /* the same with BOS and EOS: the same ids between them */
    int32_t *ids2 = NULL;
    size_t n2 = 0;
    const int fl = ENG_TOK_BOS | ENG_TOK_EOS;
    FUZZ_CHECK(eng_tok_encode(g_tok, text, size, fl, &ids2, &n2) == 0, "encode with BOS/EOS");
    FUZZ_CHECK(n2 == n + 2 && ids2[0] == eng_tok_bos(g_tok) && ids2[n2 - 1] == eng_tok_eos(g_tok)
                   && !memcmp(ids2 + 1, ids, n * sizeof *ids),
               "BOS/EOS changed the ids (%zu vs %zu)", n2, n);
    free(ids2);
    free(ids);

    /* special tokens recognised and rendered back */
    dec = round_trip(text, size, ENG_TOK_SPECIAL, ENG_TOK_SPECIAL, &dl, NULL, NULL);
    if (valid)
        FUZZ_CHECK(dl == want_len && !memcmp(dec, want, want_len),
                   "special round trip differs: %zu bytes in (%zu kept), %zu out", size,
                   want_len, dl);
    free(dec);
    free(want);
    free(text);
    return 0;
}
