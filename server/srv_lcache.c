/* server/srv_lcache.c - scanned middles of over-long prompts, kept for the next request.
 *
 * The same long context often comes back: several questions over one document, or one
 * prompt asked with several retrieval modes. The middle of an over-long prompt is scanned
 * into an in-memory index (srv_worker.c: plan_long); this cache keeps those indexes, keyed by
 * the sha256 and length of the scanned text, so a repeat skips the scan. Entries are evicted
 * least recently used first when their index bytes together pass the configured limit
 * (`long_cache_mb`, 0 = off); an index larger than the limit is not kept.
 *
 * Threads: the engine worker only (plan_long never runs nested in itself). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv_int.h"

#define SRV_LCACHE_SLOTS 16

struct lc_entry {
    char sha[65];
    size_t len;
    struct idx_db *db; /* owned */
    int64_t doc;
    int64_t n_tokens;
    int64_t bytes;
    uint64_t used; /* clock of the last hit or insert */
};

struct srv_lcache {
    int64_t max_bytes;
    int64_t bytes;
    uint64_t clock;
    struct lc_entry e[SRV_LCACHE_SLOTS];
};

int srv_lcache_new(int64_t max_bytes, struct srv_lcache **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return S3_ENOMEM;
    (*out)->max_bytes = max_bytes;
    return 0;
}

static void drop(struct srv_lcache *c, struct lc_entry *x)
{
    idx_close(x->db);
    c->bytes -= x->bytes;
    memset(x, 0, sizeof *x);
}

void srv_lcache_free(struct srv_lcache *c)
{
    if (!c)
        return;
    for (int i = 0; i < SRV_LCACHE_SLOTS; i++)
        if (c->e[i].db)
            drop(c, &c->e[i]);
    free(c);
}

int srv_lcache_get(struct srv_lcache *c, const char *sha, size_t len,
                   struct srv_lcache_hit *hit)
{
    if (!c)
        return 0;
    for (int i = 0; i < SRV_LCACHE_SLOTS; i++) {
        struct lc_entry *x = &c->e[i];
        if (x->db && x->len == len && strcmp(x->sha, sha) == 0) {
            x->used = ++c->clock;
            hit->db = x->db;
            hit->doc = x->doc;
            hit->n_tokens = x->n_tokens;
            return 1;
        }
    }
    return 0;
}

static struct lc_entry *oldest(struct srv_lcache *c)
{
    struct lc_entry *o = NULL;
    for (int i = 0; i < SRV_LCACHE_SLOTS; i++)
        if (c->e[i].db && (!o || c->e[i].used < o->used))
            o = &c->e[i];
    return o;
}

int srv_lcache_put(struct srv_lcache *c, const char *sha, size_t len, struct idx_db *db,
                   int64_t doc, int64_t n_tokens)
{
    struct s3_errinfo err = {0};
    int64_t bytes = 0;
    if (!c || c->max_bytes <= 0 || idx_db_bytes(db, &bytes, &err) < 0 || bytes > c->max_bytes) {
        idx_close(db);
        return 0;
    }
    while (c->bytes + bytes > c->max_bytes) {
        struct lc_entry *o = oldest(c);
        if (!o)
            break;
        drop(c, o);
    }
    struct lc_entry *x = NULL;
    for (int i = 0; i < SRV_LCACHE_SLOTS && !x; i++)
        if (!c->e[i].db)
            x = &c->e[i];
    if (!x) {
        x = oldest(c);
        drop(c, x);
    }
    snprintf(x->sha, sizeof x->sha, "%s", sha);
    x->len = len;
    x->db = db;
    x->doc = doc;
    x->n_tokens = n_tokens;
    x->bytes = bytes;
    x->used = ++c->clock;
    c->bytes += bytes;
    return 1;
}

void srv_lcache_stats(const struct srv_lcache *c, int *entries, int64_t *bytes)
{
    *entries = 0;
    *bytes = c ? c->bytes : 0;
    for (int i = 0; c && i < SRV_LCACHE_SLOTS; i++)
        *entries += c->e[i].db != NULL;
}
