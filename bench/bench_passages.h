/* bench/bench_passages.h - the passages of a generated document for the scan benchmarks: one
 * per 128 tokens, its sentence start half way through. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "idx.h"

/* The passages that end by position nn (all that is left once nn == n_tok), from *pass_tok
 * on, into pas; off (n_tok + 1) = each token's byte offset in text; sent_t/sent_c hold one
 * sentence start per passage (indexed by passage). Returns their count. */
static inline size_t bench_passages(int64_t *pass_tok, int64_t nn, int64_t n_tok,
                                    const int64_t *off, const char *text, int64_t *sent_t,
                                    int64_t *sent_c, struct idx_passage *pas)
{
    size_t np = 0;
    while (*pass_tok + 128 <= nn || (nn == n_tok && *pass_tok < nn)) {
        const int64_t p = *pass_tok, e = p + 128 <= nn ? p + 128 : nn;
        const size_t si = (size_t)(p / 128);
        sent_t[si] = p + (e - p) / 2;
        sent_c[si] = off[sent_t[si]];
        pas[np++] = (struct idx_passage){p, e, off[p], off[e], text + off[p], 1, sent_t + si,
                                         sent_c + si};
        *pass_tok = e;
    }
    return np;
}
