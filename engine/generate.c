/* engine/generate.c - prompt prefill, then a sample/decode loop that streams text.
 *
 * Text is emitted only once final: bytes that could still be the start of a stop string are
 * held back until the next token resolves them, and an incomplete UTF-8 sequence at the end
 * is held until the character completes. A stop string ends generation and is not emitted;
 * neither is an end-of-generation token. */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

#define GEN_PENDING_CAP 4096

/* Bytes at the end of s[0..n) that start an incomplete UTF-8 character. */
static size_t utf8_incomplete_tail(const char *s, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        const unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: keep looking for the lead */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (c >= 0xF8)
            need = 1; /* invalid lead: emit as is */
        return need > back ? back : 0;
    }
    return 0;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of some stop string. */
static size_t stop_prefix_tail(const char *s, size_t n, const struct eng_gen_params *p)
{
    size_t best = 0;
    for (size_t i = 0; i < p->n_stop; i++) {
        const char *st = p->stop[i];
        const size_t sl = st ? strlen(st) : 0;
        for (size_t k = sl > 0 ? sl - 1 : 0; k > best; k--)
            if (k <= n && memcmp(s + n - k, st, k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

/* Earliest occurrence of any stop string in s[0..n): its offset, or -1. */
static long find_stop(const char *s, size_t n, const struct eng_gen_params *p)
{
    long best = -1;
    for (size_t i = 0; i < p->n_stop; i++) {
        const char *st = p->stop[i];
        const size_t sl = st ? strlen(st) : 0;
        if (sl == 0 || sl > n)
            continue;
        for (size_t off = 0; off + sl <= n; off++)
            if (memcmp(s + off, st, sl) == 0) {
                if (best < 0 || (long)off < best)
                    best = (long)off;
                break;
            }
    }
    return best;
}

int eng_generate(struct eng_ctx *c, const int32_t *prompt, size_t n_prompt,
                 const struct eng_gen_params *p, eng_emit_fn emit, void *ud,
                 struct eng_gen_result *res, struct s3_errinfo *err)
{
    int rc = 0;
    float *logits = NULL;
    char *pending = NULL;
    struct eng_sampler *smp = NULL;
    size_t n_pend = 0;
    struct eng_gen_result r = {.finish = ENG_FINISH_LENGTH};
    if (!c || !p || (!prompt && n_prompt) || n_prompt == 0)
        return s3_errf(err, S3_EINVAL, "generate: empty prompt");
    const struct eng_model *m = c->m;
    const struct eng_tokenizer *tok = m->tok;
    const int nv = m->hp.n_vocab;
    if (n_prompt > (size_t)c->n_ctx)
        return s3_errf(err, S3_ETOOBIG, "generate: prompt of %zu tokens exceeds the context (%d)",
                       n_prompt, c->n_ctx);
    logits = malloc((size_t)nv * sizeof(float));
    pending = malloc(GEN_PENDING_CAP);
    if (!logits || !pending) {
        rc = s3_errf(err, S3_ENOMEM, "generate: out of memory");
        goto out;
    }
    if ((rc = eng_sampler_new(&p->sample, nv, &smp)) < 0) {
        rc = s3_errf(err, rc, "generate: bad sampling parameters");
        goto out;
    }
    eng_ctx_reset(c);
    r.n_prompt = (int)n_prompt;
    double t0 = s3_now_ms();
    int32_t id = 0; /* on a device the pick is made there: logits stay unless it hands back */
    if ((rc = eng__ctx_prefill_pick(c, prompt, n_prompt, smp, logits, &id)) < 0) {
        if (rc == S3_ECANCELED)
            r.finish = ENG_FINISH_CANCEL, rc = 0;
        else
            rc = s3_errf(err, rc, "generate: prefill failed (%s)", s3_strerror(rc));
        r.prefill_ms = s3_now_ms() - t0;
        goto out;
    }
    r.prefill_ms = s3_now_ms() - t0;
    t0 = s3_now_ms();
    const int max_tokens = p->max_tokens > 0 ? p->max_tokens : c->n_ctx;
    for (;;) {
        if (eng_tok_is_eog(tok, id)) {
            r.finish = ENG_FINISH_STOP;
            break;
        }
        r.n_completion++;
        char *piece = NULL;
        size_t plen = 0;
        if ((rc = eng_tok_decode(tok, &id, 1, 0, &piece, &plen)) < 0) {
            rc = s3_errf(err, rc, "generate: cannot decode token %d", (int)id);
            goto out;
        }
        if (n_pend + plen > GEN_PENDING_CAP) {
            /* a pathological held-back tail: flush what we have */
            if (n_pend && emit && emit(ud, pending, n_pend) != 0) {
                free(piece);
                r.finish = ENG_FINISH_CANCEL;
                break;
            }
            n_pend = 0;
        }
        if (plen > GEN_PENDING_CAP)
            plen = GEN_PENDING_CAP;
        memcpy(pending + n_pend, piece, plen);
        n_pend += plen;
        free(piece);
        const long st = find_stop(pending, n_pend, p);
        if (st >= 0) {
            if (st > 0 && emit)
                emit(ud, pending, (size_t)st);
            n_pend = 0;
            r.finish = ENG_FINISH_STOP;
            break;
        }
        size_t hold = stop_prefix_tail(pending, n_pend, p);
        const size_t u = utf8_incomplete_tail(pending, n_pend);
        if (u > hold)
            hold = u;
        const size_t n_out = n_pend - hold;
        if (n_out > 0) {
            if (emit && emit(ud, pending, n_out) != 0) {
                r.finish = ENG_FINISH_CANCEL;
                n_pend = 0;
                break;
            }
            memmove(pending, pending + n_out, hold);
            n_pend = hold;
        }
        if (r.n_completion >= max_tokens || eng_ctx_pos(c) >= c->n_ctx) {
            r.finish = ENG_FINISH_LENGTH;
            break;
        }
        const int32_t cur = id;
        if ((rc = eng__ctx_prefill_pick(c, &cur, 1, smp, logits, &id)) < 0) {
            if (rc == S3_ECANCELED) {
                r.finish = ENG_FINISH_CANCEL, rc = 0;
                n_pend = 0;
                break;
            }
            rc = s3_errf(err, rc, "generate: decode failed (%s)", s3_strerror(rc));
            goto out;
        }
    }
    /* end of stream: what was held back for a stop string is final now */
    if (n_pend > 0 && r.finish != ENG_FINISH_CANCEL && emit)
        emit(ud, pending, n_pend);
    r.decode_ms = s3_now_ms() - t0;
out:
    if (res)
        *res = r;
    eng_sampler_free(smp);
    free(pending);
    free(logits);
    return rc;
}
