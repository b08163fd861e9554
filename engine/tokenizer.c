/* engine/tokenizer.c - byte-level BPE tokenizer (GPT-2 family) built from GGUF metadata.
 *
 * Encoding follows llama.cpp's BPE tokenizer step by step, so token ids match it exactly:
 *
 *   1. special-token partition: control / user-defined token texts are cut out of the text,
 *      longest token text first, every occurrence (user-defined ones always, control ones only
 *      with ENG_TOK_SPECIAL);
 *   2. each remaining text fragment is decoded to code points; an invalid UTF-8 byte becomes
 *      U+FFFD (one per byte; overlongs and surrogates are decoded, not rejected), then
 *      re-encoded;
 *   3. pre-tokenizer: a chain of regexes (PCRE2, UTF + UCP, JIT when available). Each regex
 *      splits every current segment into its matches and the unmatched gaps between them;
 *      `\s` is spelled out as llama.cpp's whitespace set;
 *   4. every word is mapped byte by byte to the GPT-2 printable alphabet and merged with the
 *      ranked merges (a binary heap of candidate pairs, lowest rank first, then leftmost);
 *   5. each final symbol is looked up in the vocabulary (unknown: its single bytes are tried).
 *
 * Tables: token text -> id and merge pair -> rank are open-addressing hash tables built once
 * at load; nothing is cached at encode time. An eng_tokenizer is immutable after
 * eng_tok_new() and may be used from any number of threads at once.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine.h"
#include "gguf.h"
#include "tokenizer_int.h"

/* token_type values written by llama.cpp's converters */
enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4,
       TT_UNUSED = 5, TT_BYTE = 6 };

#define TOK_MAX_REGEX   4
#define TOK_MAX_VOCAB   (1 << 22)
#define TOK_MAX_MERGES  (1 << 23)
#define TOK_MAX_ENCODE  ((size_t)1 << 30) /* bytes of input per call */

struct tok_token {
    const char *text;  /* into strings (not NUL-terminated) */
    uint32_t len;
    uint8_t type;      /* TT_* after llama.cpp's load-time overrides */
    uint32_t piece;    /* offset of the rendered bytes in pieces */
    uint32_t piece_len;
};

struct tok_merge {
    const char *left;  /* into strings */
    const char *right;
    uint32_t left_len, right_len;
};

struct eng_tokenizer {
    char *strings;              /* owned copy of every token, merge and template text */
    int n_vocab;
    struct tok_token *tokens;   /* [n_vocab] */
    uint32_t *tok_hash;         /* text -> id + 1; [tok_hash_cap] */
    size_t tok_hash_cap;

    struct tok_merge *merges;   /* [n_merges], index = rank */
    size_t n_merges;
    uint32_t *merge_hash;       /* (left, right) -> rank + 1; [merge_hash_cap] */
    size_t merge_hash_cap;

    char *pieces;               /* rendered bytes of every token, concatenated */
    size_t pieces_len;

    int32_t *specials;          /* control/user/unknown ids, longest text first */
    size_t n_specials;

    uint8_t *eog;               /* [n_vocab] 1 = ends generation */

    int32_t bos, eos, unk, pad;
    bool add_bos, add_space_prefix, clean_spaces, ignore_merges;

    pcre2_code *re[TOK_MAX_REGEX];
    int n_re;

    const char *chat_template;  /* into strings, NUL-terminated; NULL if absent */
    size_t chat_template_len;

    char byte_enc[256][3];      /* byte -> UTF-8 of its GPT-2 stand-in code point (1..2 bytes) */
    uint8_t byte_enc_len[256];
    int16_t byte_dec[512];      /* stand-in code point (< 512) -> byte, -1 if none */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static uint64_t hash_bytes(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define HASH_SEED 0xcbf29ce484222325ULL

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* Append to a growable byte buffer. */
struct buf {
    char *p;
    size_t len, cap;
};

static int buf_put(struct buf *b, const void *src, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return S3_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

struct ids {
    int32_t *v;
    size_t n, cap;
};

static int ids_push(struct ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *nv = realloc(a->v, cap * sizeof *nv);
        if (!nv)
            return S3_ENOMEM;
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ---- UTF-8 as llama.cpp reads it ---------------------------------------------------------- */

/* Decode one code point at s[*off] (n bytes in all). Structure errors (a continuation byte
 * first, a missing continuation, lead bytes F8..FF) give U+FFFD and consume one byte.
 * Overlong forms and surrogates decode to their value as llama.cpp does. A 4-byte form
 * above U+10FFFF is treated as an error too (llama.cpp aborts on it). */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *off)
{
    size_t i = *off;
    unsigned c = s[i];
    if (c < 0x80) {
        *off = i + 1;
        return c;
    }
    if ((c & 0xE0) == 0xC0) {
        if (i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            *off = i + 2;
            return ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
        }
    } else if ((c & 0xF0) == 0xE0) {
        if (i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
            *off = i + 3;
            return ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
        }
    } else if ((c & 0xF8) == 0xF0) {
        if (i + 3 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
            (s[i + 3] & 0xC0) == 0x80) {
            uint32_t cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) |
                          ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
            if (cp <= 0x10FFFF) {
                *off = i + 4;
                return cp;
            }
        }
    }
    *off = i + 1;
    return 0xFFFD;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of a UTF-8 sequence from its lead byte, as llama.cpp's unicode_len_utf8. */
static size_t utf8_len(unsigned char c)
{
    static const uint8_t lut[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lut[c >> 4];
}

/* ---- Unicode classes that the regex library may not know -------------------------------- */

/* Letters and numbers assigned after Unicode 14.0 (the tables of PCRE2 before 10.43) that
 * llama.cpp's tables (Unicode 15.x) classify as such: every code point whose letter / number /
 * other class differs between the two versions. In the regex subject such a code point is
 * replaced by a stand-in of the same class and UTF-8 length, so the split does not depend on
 * the Unicode version of the installed PCRE2. */
struct cp_range {
    uint32_t lo, hi;
    char cls; /* 'L' letter, 'N' number */
};

static const struct cp_range k_new_classes[] = {
    {0x1123F, 0x11240, 'L'},
    {0x11F02, 0x11F02, 'L'},
    {0x11F04, 0x11F10, 'L'},
    {0x11F12, 0x11F33, 'L'},
    {0x11F50, 0x11F59, 'N'},
    {0x1342F, 0x1342F, 'L'},
    {0x13441, 0x13446, 'L'},
    {0x1B132, 0x1B132, 'L'},
    {0x1B155, 0x1B155, 'L'},
    {0x1D2C0, 0x1D2D3, 'N'},
    {0x1DF25, 0x1DF2A, 'L'},
    {0x1E030, 0x1E06D, 'L'},
    {0x1E4D0, 0x1E4EB, 'L'},
    {0x1E4F0, 0x1E4F9, 'N'},
    {0x2B739, 0x2B739, 'L'},
    {0x2EBF0, 0x2EE5D, 'L'},
    {0x31350, 0x323AF, 'L'},
};

static char new_class(uint32_t cp)
{
    size_t lo = 0, hi = sizeof k_new_classes / sizeof k_new_classes[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < k_new_classes[mid].lo)
            hi = mid;
        else if (cp > k_new_classes[mid].hi)
            lo = mid + 1;
        else
            return k_new_classes[mid].cls;
    }
    return 0;
}

/* ---- pre-tokenizer regexes ------------------------------------------------------------------ */

/* llama.cpp's whitespace set (\s); PCRE2's own \s differs (it adds U+180E). */
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
           "\\x{202F}\\x{205F}\\x{3000}"

#define RE_GPT2                                                                               \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS  \
    "])"

#define RE_LLAMA3_HEAD                                                                        \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RE_LLAMA3_TAIL                                                                        \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"

struct pre_def {
    const char *names[8];
    const char *re[TOK_MAX_REGEX];
    bool clean_spaces, ignore_merges, add_bos;
};

static const struct pre_def k_pre[] = {
    {{"default"},
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, true, false, false},
    {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "mellum"},
     {RE_GPT2}, true, false, false},
    {{"mpt", "olmo", "jais"}, {RE_GPT2}, true, false, false},
    {{"smollm"}, {"\\p{N}", RE_GPT2}, false, false, false},
    {{"starcoder", "refact", "codeshell", "exaone", "minerva-7b"}, {"\\p{N}", RE_GPT2}, true,
     false, false},
    {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"},
     {RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL}, true, true, true},
    {{"qwen2", "deepseek-r1-qwen", "megrez"}, {RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL}, false,
     false, false},
    {{"stablelm2"}, {RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL}, true, false, false},
};

static const struct pre_def *pre_find(const char *name)
{
    for (size_t i = 0; i < sizeof k_pre / sizeof k_pre[0]; i++)
        for (size_t j = 0; j < 8 && k_pre[i].names[j]; j++)
            if (strcmp(k_pre[i].names[j], name) == 0)
                return &k_pre[i];
    return NULL;
}

/* ---- vocabulary tables ---------------------------------------------------------------------- */

static int32_t vocab_find(const struct eng_tokenizer *t, const char *s, size_t n)
{
    size_t mask = t->tok_hash_cap - 1;
    size_t h = (size_t)hash_bytes(s, n, HASH_SEED) & mask;
    while (t->tok_hash[h]) {
        const struct tok_token *tk = &t->tokens[t->tok_hash[h] - 1];
        if (tk->len == n && memcmp(tk->text, s, n) == 0)
            return (int32_t)(t->tok_hash[h] - 1);
        h = (h + 1) & mask;
    }
    return -1;
}

static uint64_t merge_hash(const char *l, size_t ln, const char *r, size_t rn)
{
    uint64_t h = hash_bytes(l, ln, HASH_SEED);
    h = hash_bytes("\xff", 1, h); /* 0xFF never occurs in valid UTF-8 */
    return hash_bytes(r, rn, h);
}

static int merge_rank(const struct eng_tokenizer *t, const char *l, size_t ln, const char *r,
                      size_t rn)
{
    size_t mask = t->merge_hash_cap - 1;
    size_t h = (size_t)merge_hash(l, ln, r, rn) & mask;
    while (t->merge_hash[h]) {
        const struct tok_merge *m = &t->merges[t->merge_hash[h] - 1];
        if (m->left_len == ln && m->right_len == rn && memcmp(m->left, l, ln) == 0 &&
            memcmp(m->right, r, rn) == 0)
            return (int)(t->merge_hash[h] - 1);
        h = (h + 1) & mask;
    }
    return -1;
}

static void byte_map_init(struct eng_tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        t->byte_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->byte_enc_len[b] = (uint8_t)utf8_put(cp, t->byte_enc[b]);
        t->byte_dec[cp] = (int16_t)b;
    }
}

/* Rendered bytes of token id, as llama.cpp's token_to_piece(special = true). */
static int render_piece(const struct eng_tokenizer *t, int32_t id, struct buf *out)
{
    const struct tok_token *tk = &t->tokens[id];
    if (tk->type == TT_CONTROL || tk->type == TT_USER || tk->type == TT_UNKNOWN)
        return buf_put(out, tk->text, tk->len);
    if (tk->type != TT_NORMAL)
        return 0;
    const unsigned char *s = (const unsigned char *)tk->text;
    size_t off = 0;
    int rc = 0;
    while (off < tk->len && rc == 0) {
        size_t start = off;
        uint32_t cp = utf8_next(s, tk->len, &off);
        if (cp < 512 && t->byte_dec[cp] >= 0) {
            char b = (char)t->byte_dec[cp];
            rc = buf_put(out, &b, 1);
        } else {
            /* llama.cpp writes "[UNK_BYTE_0x<hex of the char>" + whole token text + "]" */
            char hex[4];
            char enc[4];
            size_t n = utf8_put(cp, enc);
            (void)start;
            rc = buf_put(out, "[UNK_BYTE_0x", 12);
            for (size_t i = 0; i < n && rc == 0; i++) {
                snprintf(hex, sizeof hex, "%02x", (unsigned char)enc[i]);
                rc = buf_put(out, hex, 2);
            }
            if (rc == 0)
                rc = buf_put(out, tk->text, tk->len);
            if (rc == 0)
                rc = buf_put(out, "]", 1);
        }
    }
    return rc;
}

/* ---- construction --------------------------------------------------------------------------- */

static int get_str_array(const struct eng_gguf *g, const char *key, const struct eng_gguf_kv **out,
                         struct s3_errinfo *err)
{
    const struct eng_gguf_kv *kv = eng_gguf_kv_find(g, key);
    if (!kv)
        return s3_errf(err, S3_EFORMAT, "tokenizer: missing %s", key);
    if (kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING || !kv->strs)
        return s3_errf(err, S3_EFORMAT, "tokenizer: %s is not an array of strings", key);
    *out = kv;
    return 0;
}

static int read_int_elem(const struct eng_gguf_kv *kv, uint64_t i, int64_t *v)
{
    const unsigned char *p = kv->data;
    switch (kv->arr_type) {
    case GGUF_VT_I32: { int32_t x; memcpy(&x, p + 4 * i, 4); *v = x; return 0; }
    case GGUF_VT_U32: { uint32_t x; memcpy(&x, p + 4 * i, 4); *v = x; return 0; }
    case GGUF_VT_I8: { int8_t x; memcpy(&x, p + i, 1); *v = x; return 0; }
    case GGUF_VT_U8: { *v = p[i]; return 0; }
    case GGUF_VT_I16: { int16_t x; memcpy(&x, p + 2 * i, 2); *v = x; return 0; }
    case GGUF_VT_U16: { uint16_t x; memcpy(&x, p + 2 * i, 2); *v = x; return 0; }
    default: return S3_EFORMAT;
    }
}

/* Optional special id: absent keeps *id; out of range is ignored as llama.cpp does. */
static int get_special_id(const struct eng_gguf *g, const char *key, int n_vocab, int32_t *id,
                          struct s3_errinfo *err)
{
    uint32_t v;
    int rc = eng_gguf_get_u32(g, key, &v);
    if (rc == S3_ENOTFOUND)
        return 0;
    if (rc < 0)
        return s3_errf(err, S3_EFORMAT, "tokenizer: %s is not an unsigned integer", key);
    if (v < (uint32_t)n_vocab)
        *id = (int32_t)v;
    return 0;
}

static int get_flag(const struct eng_gguf *g, const char *key, bool *flag, struct s3_errinfo *err)
{
    int v;
    int rc = eng_gguf_get_bool(g, key, &v);
    if (rc == S3_ENOTFOUND)
        return 0;
    if (rc < 0)
        return s3_errf(err, S3_EFORMAT, "tokenizer: %s is not a bool", key);
    *flag = v != 0;
    return 0;
}

static bool text_is(const struct tok_token *tk, const char *s)
{
    size_t n = strlen(s);
    return tk->len == n && memcmp(tk->text, s, n) == 0;
}

static int special_cmp_len_desc(const void *a, const void *b, void *ud)
{
    const struct eng_tokenizer *t = ud;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->tokens[x].len, ly = t->tokens[y].len;
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Tokens that llama.cpp treats as end of generation (and forces to control type) by text. */
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
};
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
    ("<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"), "<end_of_utterance>",
};
static const char *const k_fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"};
static const char *const k_fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                              "<REPO>", "<reponame>"};
static const char *const k_fim_sep_texts[] = {"<|file_sep|>"};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* First id whose text is one of texts, or -1; forces it to control type. */
static int32_t detect_by_text(struct eng_tokenizer *t, const char *const *texts, size_t n)
{
    for (int32_t id = 0; id < t->n_vocab; id++)
        for (size_t j = 0; j < n; j++)
            if (text_is(&t->tokens[id], texts[j])) {
                t->tokens[id].type = TT_CONTROL;
                return id;
            }
    return -1;
}

static int build_eog(struct eng_tokenizer *t, const struct eng_gguf *g, struct s3_errinfo *err)
{
    int32_t eot = -1, eom = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
    int rc = get_special_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &eot, err);
    if (rc == 0)
        rc = get_special_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eom, err);
    if (rc == 0)
        rc = get_special_id(g, "tokenizer.ggml.fim_pad_token_id", t->n_vocab, &fim_pad, err);
    if (rc == 0)
        rc = get_special_id(g, "tokenizer.ggml.fim_rep_token_id", t->n_vocab, &fim_rep, err);
    if (rc == 0)
        rc = get_special_id(g, "tokenizer.ggml.fim_sep_token_id", t->n_vocab, &fim_sep, err);
    if (rc < 0)
        return rc;
    if (eot < 0)
        eot = detect_by_text(t, k_eot_texts, N_OF(k_eot_texts));
    if (eom < 0) {
        static const char *const eom_texts[] = {"<|eom_id|>"};
        eom = detect_by_text(t, eom_texts, 1);
    }
    if (fim_pad < 0)
        fim_pad = detect_by_text(t, k_fim_pad_texts, N_OF(k_fim_pad_texts));
    if (fim_rep < 0)
        fim_rep = detect_by_text(t, k_fim_rep_texts, N_OF(k_fim_rep_texts));
    if (fim_sep < 0)
        fim_sep = detect_by_text(t, k_fim_sep_texts, N_OF(k_fim_sep_texts));

    t->eog = calloc((size_t)t->n_vocab, 1);
    if (!t->eog)
        return s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
    int32_t fixed[] = {fim_pad, fim_rep, fim_sep, t->eos, eot, eom};
    for (size_t i = 0; i < N_OF(fixed); i++)
        if (fixed[i] >= 0)
            t->eog[fixed[i]] = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        struct tok_token *tk = &t->tokens[id];
        for (size_t j = 0; j < N_OF(k_eog_texts); j++)
            if (text_is(tk, k_eog_texts[j])) {
                t->eog[id] = 1;
                tk->type = TT_CONTROL;
            }
        if (text_is(tk, "<|channel|>") || text_is(tk, "<|message|>") ||
            text_is(tk, "<|start|>") || text_is(tk, "<|constrain|>"))
            tk->type = TT_USER;
    }
    return 0;
}

static int compile_regexes(struct eng_tokenizer *t, const struct pre_def *d,
                           struct s3_errinfo *err)
{
    for (int i = 0; i < TOK_MAX_REGEX && d->re[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)d->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &ec, &eo, NULL);
        if (!re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return s3_errf(err, S3_EINTERNAL, "tokenizer: regex %d at %zu: %s", i, (size_t)eo,
                           (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        t->re[t->n_re++] = re;
    }
    return 0;
}

int eng_tok_new(const struct eng_gguf *g, struct eng_tokenizer **out, struct s3_errinfo *err)
{
    int rc = 0;
    struct eng_tokenizer *t = NULL;
    struct buf pieces = {0};
    char pre_name[64] = "default";
    const struct eng_gguf_kv *kv_tok = NULL, *kv_merges = NULL, *kv_type = NULL;
    struct eng_gguf_str s;

    if (!g || !out)
        return s3_errf(err, S3_EINVAL, "tokenizer: NULL argument");
    *out = NULL;

    rc = eng_gguf_get_str(g, "tokenizer.ggml.model", &s);
    if (rc < 0) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: missing or non-string tokenizer.ggml.model");
        goto out;
    }
    if (!(s.len == 4 && memcmp(s.ptr, "gpt2", 4) == 0)) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: model '%.*s' not supported (only gpt2 BPE)",
                     (int)(s.len > 32 ? 32 : s.len), s.ptr);
        goto out;
    }
    rc = eng_gguf_get_str(g, "tokenizer.ggml.pre", &s);
    if (rc == 0 && s.len > 0) { /* empty: "default", as llama.cpp */
        if (s.len >= sizeof pre_name) {
            rc = s3_errf(err, S3_EFORMAT, "tokenizer: pre-tokenizer name too long");
            goto out;
        }
        memcpy(pre_name, s.ptr, s.len);
        pre_name[s.len] = '\0';
    } else if (rc < 0 && rc != S3_ENOTFOUND) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: tokenizer.ggml.pre is not a string");
        goto out;
    }
    const struct pre_def *pre = pre_find(pre_name);
    if (!pre) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: pre-tokenizer '%s' not supported", pre_name);
        goto out;
    }

    if ((rc = get_str_array(g, "tokenizer.ggml.tokens", &kv_tok, err)) < 0 ||
        (rc = get_str_array(g, "tokenizer.ggml.merges", &kv_merges, err)) < 0)
        goto out;
    if (kv_tok->arr_n == 0 || kv_tok->arr_n > TOK_MAX_VOCAB) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: bad vocabulary size %llu",
                     (unsigned long long)kv_tok->arr_n);
        goto out;
    }
    if (kv_merges->arr_n > TOK_MAX_MERGES) {
        rc = s3_errf(err, S3_EFORMAT, "tokenizer: too many merges");
        goto out;
    }
    kv_type = eng_gguf_kv_find(g, "tokenizer.ggml.token_type");
    if (kv_type) {
        int64_t probe;
        if (kv_type->type != GGUF_VT_ARRAY || kv_type->arr_n != kv_tok->arr_n ||
            read_int_elem(kv_type, 0, &probe) < 0) {
            rc = s3_errf(err, S3_EFORMAT,
                         "tokenizer: tokenizer.ggml.token_type must be an integer array of %llu",
                         (unsigned long long)kv_tok->arr_n);
            goto out;
        }
    }

    t = calloc(1, sizeof *t);
    if (!t) {
        rc = s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    /* one owned copy of all strings: the tokenizer does not borrow the GGUF mapping */
    struct eng_gguf_str tmpl = {0};
    if (eng_gguf_get_str(g, "tokenizer.chat_template", &tmpl) < 0)
        tmpl.len = 0, tmpl.ptr = NULL;
    size_t total = (size_t)tmpl.len + 1, used = 0;
    for (uint64_t i = 0; i < kv_tok->arr_n; i++)
        total += (size_t)kv_tok->strs[i].len;
    for (uint64_t i = 0; i < kv_merges->arr_n; i++)
        total += (size_t)kv_merges->strs[i].len;
    t->strings = malloc(total);
    if (!t->strings) {
        rc = s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    t->n_vocab = (int)kv_tok->arr_n;
    t->bos = 11; /* llama.cpp's defaults for gpt2 vocabularies */
    t->eos = 11;
    t->unk = -1;
    t->pad = -1;
    t->add_bos = pre->add_bos;
    t->clean_spaces = pre->clean_spaces;
    t->ignore_merges = pre->ignore_merges;
    byte_map_init(t);

    t->tokens = calloc((size_t)t->n_vocab, sizeof *t->tokens);
    t->tok_hash_cap = pow2_at_least((size_t)t->n_vocab * 2);
    t->tok_hash = calloc(t->tok_hash_cap, sizeof *t->tok_hash);
    if (!t->tokens || !t->tok_hash) {
        rc = s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    for (int i = 0; i < t->n_vocab; i++) {
        struct tok_token *tk = &t->tokens[i];
        if (kv_tok->strs[i].len > 4096) {
            rc = s3_errf(err, S3_EFORMAT, "tokenizer: token %d longer than 4096 bytes", i);
            goto out;
        }
        tk->text = t->strings + used;
        tk->len = (uint32_t)kv_tok->strs[i].len;
        memcpy(t->strings + used, kv_tok->strs[i].ptr, tk->len);
        used += tk->len;
        tk->type = TT_NORMAL;
        if (kv_type) {
            int64_t v = TT_UNDEFINED;
            (void)read_int_elem(kv_type, (uint64_t)i, &v); /* type checked above */
            tk->type = (v >= TT_NORMAL && v <= TT_BYTE) ? (uint8_t)v : TT_UNDEFINED;
        }
        if (tk->len == 0)
            continue; /* llama.cpp renames empty tokens; they never match */
        /* duplicates: the later id wins, as with llama.cpp's token_to_id map */
        size_t mask = t->tok_hash_cap - 1;
        size_t h = (size_t)hash_bytes(tk->text, tk->len, HASH_SEED) & mask;
        while (t->tok_hash[h]) {
            const struct tok_token *o = &t->tokens[t->tok_hash[h] - 1];
            if (o->len == tk->len && memcmp(o->text, tk->text, tk->len) == 0)
                break;
            h = (h + 1) & mask;
        }
        t->tok_hash[h] = (uint32_t)i + 1;
    }

    t->n_merges = kv_merges->arr_n;
    t->merges = calloc(t->n_merges ? t->n_merges : 1, sizeof *t->merges);
    t->merge_hash_cap = pow2_at_least(t->n_merges * 2);
    t->merge_hash = calloc(t->merge_hash_cap, sizeof *t->merge_hash);
    if (!t->merges || !t->merge_hash) {
        rc = s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    for (size_t i = 0; i < t->n_merges; i++) {
        size_t n = (size_t)kv_merges->strs[i].len;
        char *m = t->strings + used;
        memcpy(m, kv_merges->strs[i].ptr, n);
        used += n;
        const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
        if (n > 0xFFFFFFu) {
            rc = s3_errf(err, S3_EFORMAT, "tokenizer: merge %zu too long", i);
            goto out;
        }
        struct tok_merge *mg = &t->merges[i];
        if (!sp)
            continue; /* llama.cpp keys it as ("", ""), which never matches */
        mg->left = m;
        mg->left_len = (uint32_t)(sp - m);
        mg->right = sp + 1;
        mg->right_len = (uint32_t)(n - (size_t)(sp - m) - 1);
        size_t mask = t->merge_hash_cap - 1;
        size_t h = (size_t)merge_hash(mg->left, mg->left_len, mg->right, mg->right_len) & mask;
        bool dup = false;
        while (t->merge_hash[h]) {
            const struct tok_merge *o = &t->merges[t->merge_hash[h] - 1];
            if (o->left_len == mg->left_len && o->right_len == mg->right_len &&
                memcmp(o->left, mg->left, mg->left_len) == 0 &&
                memcmp(o->right, mg->right, mg->right_len) == 0) {
                dup = true; /* the first (lowest) rank wins */
                break;
            }
            h = (h + 1) & mask;
        }
        if (!dup)
            t->merge_hash[h] = (uint32_t)i + 1;
    }

    if ((rc = get_special_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err)) < 0 ||
        (rc = get_special_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err)) < 0 ||
        (rc = get_special_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err)) <
            0 ||
        (rc = get_special_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err)) <
            0)
        goto out;
    if (t->bos >= t->n_vocab)
        t->bos = -1;
    if (t->eos >= t->n_vocab)
        t->eos = -1;
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) < 0 ||
        (rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)) < 0)
        goto out;
    if ((rc = build_eog(t, g, err)) < 0)
        goto out;

    /* special tokens, longest text first */
    t->specials = malloc((size_t)t->n_vocab * sizeof *t->specials);
    if (!t->specials) {
        rc = s3_errf(err, S3_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->tokens[id].type;
        if ((ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN) && t->tokens[id].len > 0)
            t->specials[t->n_specials++] = id;
    }
    qsort_r(t->specials, t->n_specials, sizeof *t->specials, special_cmp_len_desc, t);

    /* rendered pieces */
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t before = pieces.len;
        if ((rc = render_piece(t, id, &pieces)) < 0) {
            s3_errf(err, rc, "tokenizer: out of memory");
            goto out;
        }
        t->tokens[id].piece = (uint32_t)before;
        t->tokens[id].piece_len = (uint32_t)(pieces.len - before);
    }
    if ((rc = buf_put(&pieces, "", 0)) < 0) {
        s3_errf(err, rc, "tokenizer: out of memory");
        goto out;
    }
    t->pieces = pieces.p;
    t->pieces_len = pieces.len;
    pieces.p = NULL;

    if ((rc = compile_regexes(t, pre, err)) < 0)
        goto out;

    if (tmpl.ptr) {
        memcpy(t->strings + used, tmpl.ptr, (size_t)tmpl.len);
        t->strings[used + (size_t)tmpl.len] = '\0';
        t->chat_template = t->strings + used;
        t->chat_template_len = (size_t)tmpl.len;
    }
    *out = t;
    t = NULL;
out:
    free(pieces.p);
    eng_tok_free(t);
    return rc;
}

void eng_tok_free(struct eng_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    free(t->strings);
    free(t->tokens);
    free(t->tok_hash);
    free(t->merges);
    free(t->merge_hash);
    free(t->pieces);
    free(t->specials);
    free(t->eog);
    free(t);
}

/* ---- encoding ------------------------------------------------------------------------------- */

struct frag {
    size_t off, len;  /* raw text range, or */
    int32_t id;       /* >= 0: a special token */
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static int frags_push(struct frags *f, size_t off, size_t len, int32_t id)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct frag *nv = realloc(f->v, cap * sizeof *nv);
        if (!nv)
            return S3_ENOMEM;
        f->v = nv;
        f->cap = cap;
    }
    f->v[f->n++] = (struct frag){off, len, id};
    return 0;
}

/* Cut special token texts out of the raw fragments (llama.cpp's tokenizer_st_partition). */
static int partition(const struct eng_tokenizer *t, const char *text, size_t len, bool special,
                     struct frags *cur)
{
    struct frags nxt = {0};
    int rc = 0;
    cur->n = 0;
    if (len == 0)
        return 0;
    if ((rc = frags_push(cur, 0, len, -1)) < 0)
        return rc;
    for (size_t k = 0; k < t->n_specials; k++) {
        int32_t sid = t->specials[k];
        const struct tok_token *st = &t->tokens[sid];
        if (!special && st->type != TT_USER)
            continue;
        bool any = false;
        nxt.n = 0;
        for (size_t i = 0; i < cur->n && rc == 0; i++) {
            struct frag f = cur->v[i];
            if (f.id >= 0 || f.len < st->len) {
                rc = frags_push(&nxt, f.off, f.len, f.id);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            while (rc == 0 && pos < end) {
                const char *m = memmem(text + pos, end - pos, st->text, st->len);
                if (!m) {
                    rc = frags_push(&nxt, pos, end - pos, -1);
                    break;
                }
                size_t mo = (size_t)(m - text);
                any = true;
                if (mo > pos)
                    rc = frags_push(&nxt, pos, mo - pos, -1);
                if (rc == 0)
                    rc = frags_push(&nxt, 0, 0, sid);
                pos = mo + st->len;
            }
        }
        if (rc < 0)
            break;
        if (any) {
            struct frags tmp = *cur;
            *cur = nxt;
            nxt = tmp;
        }
    }
    free(nxt.v);
    return rc;
}

/* Per-call scratch for one fragment. */
struct work {
    struct buf norm;     /* re-encoded text (true bytes) */
    struct buf subj;     /* regex subject: norm with stand-ins for unknown classes */
    size_t *seg, *seg2;  /* segment end offsets (bytes in norm) */
    size_t n_seg, n_seg2, cap_seg, cap_seg2;
    struct buf word;     /* byte-level encoded word */
    struct sym { int32_t start, n, prev, next; } *sym;
    size_t cap_sym;
    struct pair { int rank; int32_t left, right, ln, rn; } *heap;
    size_t n_heap, cap_heap;
    pcre2_match_data *md;
};

static int seg_push(size_t **v, size_t *n, size_t *cap, size_t end)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        size_t *nv = realloc(*v, c * sizeof *nv);
        if (!nv)
            return S3_ENOMEM;
        *v = nv;
        *cap = c;
    }
    (*v)[(*n)++] = end;
    return 0;
}

static bool pair_less(const struct pair *a, const struct pair *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(struct work *w, struct pair p)
{
    if (w->n_heap == w->cap_heap) {
        size_t c = w->cap_heap ? w->cap_heap * 2 : 64;
        struct pair *nv = realloc(w->heap, c * sizeof *nv);
        if (!nv)
            return S3_ENOMEM;
        w->heap = nv;
        w->cap_heap = c;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_less(&p, &w->heap[parent]))
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = p;
    return 0;
}

static struct pair heap_pop(struct work *w)
{
    struct pair top = w->heap[0];
    struct pair last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!pair_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int add_pair(const struct eng_tokenizer *t, struct work *w, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const struct sym *a = &w->sym[l], *b = &w->sym[r];
    int rank = merge_rank(t, w->word.p + a->start, (size_t)a->n, w->word.p + b->start,
                          (size_t)b->n);
    if (rank < 0)
        return 0;
    return heap_push(w, (struct pair){rank, l, r, a->n, b->n});
}

/* BPE-merge one byte-level encoded word in w->word and append its ids. */
static int bpe_word(const struct eng_tokenizer *t, struct work *w, struct ids *out)
{
    const char *s = w->word.p;
    size_t n = w->word.len;
    int rc = 0;
    if (n == 0)
        return 0;
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, s, n);
        if (id >= 0)
            return ids_push(out, id);
    }
    if (n > w->cap_sym) {
        struct sym *ns = realloc(w->sym, n * sizeof *ns);
        if (!ns)
            return S3_ENOMEM;
        w->sym = ns;
        w->cap_sym = n;
    }
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t cl = utf8_len((unsigned char)s[off]);
        if (cl > n - off)
            cl = n - off;
        w->sym[n_sym] = (struct sym){(int32_t)off, (int32_t)cl, n_sym - 1, -1};
        if (n_sym > 0)
            w->sym[n_sym - 1].next = n_sym;
        n_sym++;
        off += cl;
    }
    w->n_heap = 0;
    for (int32_t i = 1; i < n_sym && rc == 0; i++)
        rc = add_pair(t, w, i - 1, i);
    while (rc == 0 && w->n_heap > 0) {
        struct pair p = heap_pop(w);
        struct sym *a = &w->sym[p.left], *b = &w->sym[p.right];
        if (a->n == 0 || b->n == 0 || a->n != p.ln || b->n != p.rn || a->next != p.right)
            continue; /* stale */
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0)
            w->sym[b->next].prev = p.left;
        rc = add_pair(t, w, a->prev, p.left);
        if (rc == 0)
            rc = add_pair(t, w, p.left, a->next);
    }
    for (int32_t i = 0; i >= 0 && i < n_sym && rc == 0; i = w->sym[i].next) {
        const struct sym *y = &w->sym[i];
        int32_t id = vocab_find(t, s + y->start, (size_t)y->n);
        if (id >= 0) {
            rc = ids_push(out, id);
            continue;
        }
        for (int32_t j = 0; j < y->n && rc == 0; j++) {
            int32_t bid = vocab_find(t, s + y->start + j, 1);
            if (bid >= 0)
                rc = ids_push(out, bid);
        }
    }
    return rc;
}

/* Split segments w->seg with regex re into w->seg2 (matches and the gaps between them). */
static int regex_split(const struct eng_tokenizer *t, int ri, struct work *w)
{
    const pcre2_code *re = t->re[ri];
    PCRE2_SPTR subj = (PCRE2_SPTR)w->subj.p;
    size_t start = 0;
    int rc = 0;
    w->n_seg2 = 0;
    for (size_t si = 0; si < w->n_seg && rc == 0; si++) {
        size_t end = w->seg[si], pos = start, last = start;
        while (pos < end && rc == 0) {
            int m = pcre2_match(re, subj, end, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
            if (m == PCRE2_ERROR_NOMATCH)
                break;
            if (m < 0)
                return S3_EINTERNAL;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) { /* empty match: step one character */
                pos = ms + 1;
                while (pos < end && ((unsigned char)w->subj.p[pos] & 0xC0) == 0x80)
                    pos++;
                continue;
            }
            if (ms > last)
                rc = seg_push(&w->seg2, &w->n_seg2, &w->cap_seg2, ms);
            if (rc == 0)
                rc = seg_push(&w->seg2, &w->n_seg2, &w->cap_seg2, me);
            last = pos = me;
        }
        if (rc == 0 && last < end)
            rc = seg_push(&w->seg2, &w->n_seg2, &w->cap_seg2, end);
        start = end;
    }
    if (rc == 0) {
        size_t *tv = w->seg, tc = w->cap_seg;
        w->seg = w->seg2;
        w->cap_seg = w->cap_seg2;
        w->n_seg = w->n_seg2;
        w->seg2 = tv;
        w->cap_seg2 = tc;
    }
    return rc;
}

static int encode_fragment(const struct eng_tokenizer *t, struct work *w, const char *text,
                           size_t len, struct ids *out)
{
    const unsigned char *s = (const unsigned char *)text;
    int rc = 0;
    w->norm.len = 0;
    w->subj.len = 0;
    for (size_t off = 0; off < len && rc == 0;) {
        uint32_t cp = utf8_next(s, len, &off);
        char enc[4], alt[4];
        size_t n = utf8_put(cp, enc);
        uint32_t stand_in = 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            stand_in = 0xE000; /* surrogates: "other" class, 3 bytes */
        } else if (cp >= 0x80) {
            char c = new_class(cp);
            if (c == 'L')
                stand_in = n == 3 ? 0x4E00 : 0x10000;
            else if (c == 'N')
                stand_in = n == 3 ? 0x2160 : 0x10107;
        }
        rc = buf_put(&w->norm, enc, n);
        if (rc == 0 && stand_in)
            rc = buf_put(&w->subj, alt, utf8_put(stand_in, alt));
        else if (rc == 0)
            rc = buf_put(&w->subj, enc, n);
    }
    if (rc < 0)
        return rc;
    w->n_seg = 0;
    if (w->norm.len == 0)
        return 0;
    if ((rc = seg_push(&w->seg, &w->n_seg, &w->cap_seg, w->norm.len)) < 0)
        return rc;
    for (int ri = 0; ri < t->n_re && rc == 0; ri++)
        rc = regex_split(t, ri, w);
    size_t start = 0;
    for (size_t si = 0; si < w->n_seg && rc == 0; si++) {
        size_t end = w->seg[si];
        w->word.len = 0;
        for (size_t i = start; i < end && rc == 0; i++) {
            unsigned char b = (unsigned char)w->norm.p[i];
            rc = buf_put(&w->word, t->byte_enc[b], t->byte_enc_len[b]);
        }
        if (rc == 0)
            rc = bpe_word(t, w, out);
        start = end;
    }
    return rc;
}

int eng_tok_encode(const struct eng_tokenizer *t, const char *text, size_t len, int flags,
                   int32_t **ids, size_t *n_ids)
{
    int rc = 0;
    struct ids out = {0};
    struct frags fr = {0};
    struct work w = {0};

    if (!t || !ids || !n_ids || (!text && len))
        return S3_EINVAL;
    *ids = NULL;
    *n_ids = 0;
    if (len > TOK_MAX_ENCODE)
        return S3_ETOOBIG;
    if ((flags & ENG_TOK_BOS) && t->bos < 0)
        return S3_EINVAL;
    if ((flags & ENG_TOK_EOS) && t->eos < 0)
        return S3_EINVAL;

    w.md = pcre2_match_data_create(1, NULL);
    if (!w.md) {
        rc = S3_ENOMEM;
        goto out;
    }
    if ((flags & ENG_TOK_BOS) && (rc = ids_push(&out, t->bos)) < 0)
        goto out;
    if ((rc = partition(t, text, len, (flags & ENG_TOK_SPECIAL) != 0, &fr)) < 0)
        goto out;
    for (size_t i = 0; i < fr.n && rc == 0; i++) {
        if (fr.v[i].id >= 0)
            rc = ids_push(&out, fr.v[i].id);
        else
            rc = encode_fragment(t, &w, text + fr.v[i].off, fr.v[i].len, &out);
    }
    if (rc == 0 && (flags & ENG_TOK_EOS))
        rc = ids_push(&out, t->eos);
    if (rc < 0)
        goto out;
    size_t n_out = out.n;
    if (!out.v && (rc = ids_push(&out, 0)) < 0) /* always hand back a valid pointer */
        goto out;
    *ids = out.v;
    *n_ids = n_out;
    out.v = NULL;
out:
    free(out.v);
    free(fr.v);
    free(w.norm.p);
    free(w.subj.p);
    free(w.seg);
    free(w.seg2);
    free(w.word.p);
    free(w.sym);
    free(w.heap);
    pcre2_match_data_free(w.md);
    return rc;
}

/* ---- decoding ------------------------------------------------------------------------------- */

/* llama.cpp's clean-up of tokenization spaces (gpt2-style vocabularies only). */
static size_t clean_spaces(char *s, size_t n)
{
    size_t total = n ? 1 : 0;
    for (size_t i = 1; i < n; i++) { /* " ?", " !", " .", " ," */
        char x = s[i];
        if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
            total--;
        s[total++] = x;
    }
    n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; i++) { /* " ' " */
        char x = s[i];
        if (x == '\'' && i + 1 < n && s[i - 1] == ' ' && s[i + 1] == ' ') {
            total--;
            s[++i] = '\0';
        }
        s[total++] = x;
    }
    n = total;
    total = n ? 1 : 0;
    for (size_t i = 1; i < n; i++) { /* " 's", " 'm", " 're", " 've" */
        char x = s[i];
        if (s[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            char x1 = s[i + 1];
            if (x1 == 's' || x1 == 'm')
                total--;
            else if (i + 2 < n && ((x1 == 'r' && s[i + 2] == 'e') || (x1 == 'v' && s[i + 2] == 'e')))
                total--;
        }
        s[total++] = x;
    }
    return total;
}

int eng_tok_decode(const struct eng_tokenizer *t, const int32_t *ids, size_t n, int flags,
                   char **text, size_t *len)
{
    struct buf b = {0};
    int rc = 0;
    if (!t || !text || !len || (!ids && n))
        return S3_EINVAL;
    *text = NULL;
    *len = 0;
    bool strip = t->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab) {
            rc = S3_EINVAL;
            goto out;
        }
        const struct tok_token *tk = &t->tokens[id];
        bool hidden = tk->type == TT_CONTROL || tk->type == TT_UNKNOWN;
        if (hidden && !(flags & ENG_TOK_SPECIAL))
            continue;
        const char *p = t->pieces + tk->piece;
        size_t pn = tk->piece_len;
        if (strip && pn && *p == ' ') {
            p++;
            pn--;
        }
        strip = false;
        if ((rc = buf_put(&b, p, pn)) < 0)
            goto out;
    }
    if ((rc = buf_put(&b, "", 0)) < 0)
        goto out;
    if (t->clean_spaces) {
        b.len = clean_spaces(b.p, b.len);
        b.p[b.len] = '\0';
    }
    *text = b.p;
    *len = b.len;
    b.p = NULL;
out:
    free(b.p);
    return rc;
}

int eng_tok_piece(const struct eng_tokenizer *t, int32_t id, const char **bytes)
{
    if (!t || !bytes || id < 0 || id >= t->n_vocab)
        return S3_EINVAL;
    *bytes = t->pieces + t->tokens[id].piece;
    return (int)t->tokens[id].piece_len;
}

int eng_tok_n_vocab(const struct eng_tokenizer *t)
{
    return t ? t->n_vocab : 0;
}

int32_t eng_tok_bos(const struct eng_tokenizer *t)
{
    return t ? t->bos : -1;
}

int32_t eng_tok_eos(const struct eng_tokenizer *t)
{
    return t ? t->eos : -1;
}

int eng_tok_add_bos(const struct eng_tokenizer *t)
{
    return t && t->add_bos && t->bos >= 0;
}

int eng_tok_is_eog(const struct eng_tokenizer *t, int32_t id)
{
    return t && id >= 0 && id < t->n_vocab && t->eog[id];
}

const char *eng__tok_chat_template(const struct eng_tokenizer *t, size_t *len)
{
    *len = t ? t->chat_template_len : 0;
    return t ? t->chat_template : NULL;
}
