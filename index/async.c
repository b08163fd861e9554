/* index/async.c - a writer on a thread of its own: the caller only checks a chunk and copies it
 * into a bounded queue (so that a scan feeding a GPU goes straight back to submitting the next
 * pass); the writer's thread encodes each chunk's slots (sorting features, varints), sharing
 * them out among encoder threads where the machine has cores to spare, and writes and
 * commits the chunks in order. The writer and its database connection move to that thread for
 * the duration and come back at idx_async_end(): one thread uses them at a time. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index_int.h"

/* One queued chunk: the chunk with its slots, passages and feature arrays copied into mem
 * (bytes in use of cap). A written chunk's buffer goes back to the free stack, and the next
 * chunk queued takes the one freed last: a scan whose writer keeps up touches two or three
 * buffers, warm in cache, instead of one per ring entry, each new to the process (page
 * faults and zeroed pages: 0.3 ms per 800 KB chunk). */
struct qchunk {
    struct idx_chunk c;
    uint8_t *mem;
    size_t bytes, cap;
};

struct qbuf {
    uint8_t *mem;
    size_t cap;
};

/* Encoder threads: the writer's thread posts a chunk (generation gen) with the set of blobs
 * to encode it into; every thread takes the next slot (next, under emu) until none is left,
 * encodes it with its own scratch and keeps the blob in out[slot]; the last one to finish
 * signals. The writer's thread posts chunk i + 1 into the other set before it writes chunk i
 * and takes slots itself only when it waits for a chunk, so encoding overlaps writing. */
struct enc_pool {
    int n_th;                  /* threads besides the caller */
    pthread_t *th;
    struct idx_enc *enc;       /* n_th + 1: [0] the caller's */
    pthread_mutex_t emu;
    pthread_cond_t ecv;
    /* under emu */
    const struct idx_chunk *c; /* the chunk posted (NULL: none) */
    unsigned gen;
    int next, busy, stop;
    int ids;                   /* encoder scratch handed out to threads so far */
    int rc;
    struct s3_errinfo err;
    struct idx_buf *out;       /* the set of the chunk posted */
    struct idx_buf *sets[2];   /* one blob per slot, two chunks' worth */
    int set_cap[2];
};

struct idx_async {
    struct idx_writer *w;      /* the writer thread's while it runs */
    struct enc_pool ep;        /* the writer thread's: encoding the queued chunks */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* a chunk queued, a slot freed, the end asked */
    /* under mu */
    struct qchunk *q;          /* ring of depth entries */
    int depth, head, count;    /* count includes the chunk being written */
    struct qbuf *free_buf;     /* (depth) buffers of written chunks, the last freed on top */
    int n_free;
    size_t bytes;              /* held by the queued chunks; at most max_bytes unless one
                                  chunk alone is larger */
    size_t max_bytes;          /* the writer's tuning: async_bytes */
    int end;
    int rc;                    /* the first error; later chunks are dropped */
    struct s3_errinfo err;
    atomic_int *waiters;       /* the database's writers_waiting: others waiting to write */
};

/* While others wait to write the database, the writer's thread looks at the queue and the
 * waiters this often (milliseconds). */
#define YIELD_POLL_MS 2

static void wait_ms(struct idx_async *a, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
}

static int enc_post(struct enc_pool *p, const struct idx_chunk *c, int b, struct s3_errinfo *err);
static int enc_wait(struct enc_pool *p, struct s3_errinfo *err);

/* The writer's thread: each queued chunk in turn is encoded (posted when the previous one was
 * written, or now), the next one posted, then this one written. After an error the chunks
 * left are dropped (a posted one once encoded, its buffers being the queue's). */
static void *async_main(void *arg)
{
    struct idx_async *a = arg;
    int set = 0, posted = 0;   /* posted: the head chunk is posted into sets[set] */
    int yielded = 0;           /* what was open is committed since others began to wait */
    pthread_mutex_lock(&a->mu);
    for (;;) {
        if (a->waiters && atomic_load(a->waiters) > 0) {
            /* others wait to write: end the open transaction, open none until they are done */
            if (!yielded && a->rc == 0) {
                pthread_mutex_unlock(&a->mu);
                struct s3_errinfo e = {0};
                const int rc = idx_writer_flush(a->w, &e);
                pthread_mutex_lock(&a->mu);
                if (rc < 0) {
                    a->rc = rc;
                    a->err = e;
                }
            }
            yielded = 1;
            wait_ms(a, YIELD_POLL_MS);
            continue;
        }
        yielded = 0;
        if (!a->count && !a->end) {
            if (a->waiters) /* no one signals a waiter's arrival: look again soon */
                wait_ms(a, YIELD_POLL_MS);
            else
                pthread_cond_wait(&a->cv, &a->mu);
            continue;
        }
        if (!a->count)
            break; /* ended and drained */
        struct qchunk qc = a->q[a->head];
        const struct idx_chunk *next = a->count > 1 ? &a->q[(a->head + 1) % a->depth].c : NULL;
        const int failed = a->rc < 0;
        pthread_mutex_unlock(&a->mu);
        struct s3_errinfo e = {0};
        const double t0 = s3_now_ms();
        int rc = posted || failed ? 0 : enc_post(&a->ep, &qc.c, set, &e);
        if (rc == 0)
            rc = enc_wait(&a->ep, &e);
        posted = 0;
        if (rc == 0 && !failed && next) {
            rc = enc_post(&a->ep, next, set ^ 1, &e);
            posted = rc == 0;
        }
        if (rc == 0 && !failed) {
            idx__writer_add_encode_ms(a->w, s3_now_ms() - t0);
            rc = idx__writer_add_encoded(a->w, &qc.c, a->ep.sets[set], &e);
        }
        set ^= 1;
        pthread_mutex_lock(&a->mu);
        a->bytes -= qc.bytes;
        if (rc < 0 && a->rc == 0) {
            a->rc = rc;
            a->err = e;
        }
        if (qc.mem) { /* the buffer to the free stack: the next chunk queued takes it */
            a->free_buf[a->n_free++] = (struct qbuf){qc.mem, qc.cap};
            a->q[a->head].mem = NULL;
            a->q[a->head].cap = 0;
        }
        a->head = (a->head + 1) % a->depth;
        a->count--;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* Take and encode slots of the posted chunk until none is left. Called with emu held;
 * returns with it held. */
static void enc_take(struct enc_pool *p, int me)
{
    while (p->next < p->c->n_slot) {
        const int s = p->next++;
        const struct idx_chunk *c = p->c;
        p->busy++;
        pthread_mutex_unlock(&p->emu);
        struct s3_errinfo e = {0};
        struct idx_enc *en = &p->enc[me];
        int rc = idx__enc_slot(en, c, s, &e);
        if (rc == 0) { /* the blob moves to out[s]; out[s]'s old buffer becomes scratch */
            struct idx_buf t = p->out[s];
            p->out[s] = en->blob;
            en->blob = t;
        }
        pthread_mutex_lock(&p->emu);
        if (rc < 0 && p->rc == 0) {
            p->rc = rc;
            p->err = e;
        }
        if (--p->busy == 0 && p->next >= p->c->n_slot)
            pthread_cond_broadcast(&p->ecv);
    }
}

static void *enc_main(void *arg)
{
    struct enc_pool *p = arg;
    pthread_mutex_lock(&p->emu);
    const int me = ++p->ids; /* enc[0] is the caller's */
    unsigned seen = 0;
    for (;;) {
        while (p->gen == seen && !p->stop)
            pthread_cond_wait(&p->ecv, &p->emu);
        if (p->stop)
            break;
        seen = p->gen;
        if (p->c)
            enc_take(p, me);
    }
    pthread_mutex_unlock(&p->emu);
    return NULL;
}

/* Threads besides the caller: the tuning's async_encoders if set, else half the cores less
 * one (none on a small machine), at most 7. */
static int enc_threads(int set)
{
    if (set >= 0)
        return set;
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    const long t = n / 2 - 1;
    return t < 0 ? 0 : t > 7 ? 7 : (int)t;
}

static void enc_pool_free(struct enc_pool *p)
{
    if (p->th) {
        pthread_mutex_lock(&p->emu);
        p->stop = 1;
        pthread_cond_broadcast(&p->ecv);
        pthread_mutex_unlock(&p->emu);
        for (int i = 0; i < p->n_th; i++)
            pthread_join(p->th[i], NULL);
        free(p->th);
    }
    if (p->enc)
        for (int i = 0; i <= p->n_th; i++)
            idx__enc_free(&p->enc[i]);
    free(p->enc);
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < p->set_cap[b]; i++)
            free(p->sets[b][i].p);
        free(p->sets[b]);
    }
    pthread_cond_destroy(&p->ecv);
    pthread_mutex_destroy(&p->emu);
}

static int enc_pool_init(struct enc_pool *p, int n_set)
{
    memset(p, 0, sizeof *p);
    if (pthread_mutex_init(&p->emu, NULL) != 0)
        return S3_EINTERNAL;
    if (pthread_cond_init(&p->ecv, NULL) != 0) {
        pthread_mutex_destroy(&p->emu);
        return S3_EINTERNAL;
    }
    const int want = enc_threads(n_set);
    if (!(p->enc = calloc((size_t)want + 1, sizeof *p->enc)) ||
        (want && !(p->th = calloc((size_t)want, sizeof *p->th)))) {
        enc_pool_free(p);
        return S3_ENOMEM;
    }
    for (; p->n_th < want; p->n_th++)
        if (pthread_create(&p->th[p->n_th], NULL, enc_main, p) != 0)
            break; /* fewer threads: still correct */
    return 0;
}

/* Post c's slots for encoding into set b (empty blobs at once when c has no feature pairs);
 * the encoder threads start on it. S3_ENOMEM. */
static int enc_post(struct enc_pool *p, const struct idx_chunk *c, int b, struct s3_errinfo *err)
{
    if (c->n_slot > p->set_cap[b]) {
        struct idx_buf *o = realloc(p->sets[b], sizeof *o * (size_t)c->n_slot);
        if (!o)
            return s3_errf(err, S3_ENOMEM, "index: out of memory");
        memset(o + p->set_cap[b], 0, sizeof *o * (size_t)(c->n_slot - p->set_cap[b]));
        p->sets[b] = o;
        p->set_cap[b] = c->n_slot;
    }
    if ((size_t)c->n_tok * (size_t)c->k == 0) {
        for (int s = 0; s < c->n_slot; s++)
            p->sets[b][s].n = 0;
        return 0;
    }
    pthread_mutex_lock(&p->emu);
    p->c = c;
    p->out = p->sets[b];
    p->next = 0;
    p->rc = 0;
    p->gen++;
    pthread_cond_broadcast(&p->ecv);
    pthread_mutex_unlock(&p->emu);
    return 0;
}

/* Take the posted chunk's slots left and wait until all are encoded (nothing posted: at
 * once); the first error, or 0. */
static int enc_wait(struct enc_pool *p, struct s3_errinfo *err)
{
    pthread_mutex_lock(&p->emu);
    int rc = 0;
    if (p->c) {
        enc_take(p, 0);
        while (p->busy > 0)
            pthread_cond_wait(&p->ecv, &p->emu);
        p->c = NULL;
        rc = p->rc;
        if (rc < 0 && err)
            *err = p->err;
    }
    pthread_mutex_unlock(&p->emu);
    return rc;
}

/* The queue's memory and a itself (a may be NULL; its ring may be NULL). */
static void async_free(struct idx_async *a)
{
    if (!a)
        return;
    for (int i = 0; a->q && i < a->depth; i++)
        free(a->q[i].mem);
    for (int i = 0; i < a->n_free; i++)
        free(a->free_buf[i].mem);
    free(a->q);
    free(a->free_buf);
    free(a);
}

int idx_async_start(struct idx_writer *w, int depth, struct idx_async **out,
                    struct s3_errinfo *err)
{
    *out = NULL;
    if (!w || depth < 1)
        return s3_errf(err, S3_EINVAL, "index: async writer needs a writer and a depth >= 1");
    struct idx_async *a = calloc(1, sizeof *a);
    if (!a || !(a->q = calloc((size_t)depth, sizeof *a->q)) ||
        !(a->free_buf = calloc((size_t)depth, sizeof *a->free_buf))) {
        async_free(a);
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    }
    a->w = w;
    a->waiters = idx__writer_waiting(w);
    a->depth = depth;
    const struct idx_tuning *tun = idx__writer_tuning(w);
    a->max_bytes = tun->async_bytes;
    const int prc = enc_pool_init(&a->ep, tun->async_encoders);
    if (prc < 0) {
        async_free(a);
        return s3_errf(err, prc, "index: cannot start the encoder threads");
    }
    if (pthread_mutex_init(&a->mu, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&a->cv, NULL) != 0) {
        pthread_mutex_destroy(&a->mu);
        goto fail;
    }
    idx__writer_set_eager(w, 1);
    if (pthread_create(&a->th, NULL, async_main, a) != 0) {
        idx__writer_set_eager(w, 0);
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        goto fail;
    }
    *out = a;
    return 0;
fail:
    enc_pool_free(&a->ep);
    async_free(a);
    return s3_errf(err, S3_EINTERNAL, "index: cannot start the writer thread");
}

/* Layout of a chunk's copy: feature ids, activations, slots, passages, sentence starts, text. */
struct qlayout {
    size_t n_pairs, n_sent, o_act, o_slots, o_pass, o_sent, o_text, total;
};

static struct qlayout qlayout_of(const struct idx_chunk *c)
{
    struct qlayout l = {.n_pairs = (size_t)c->n_tok * (size_t)c->n_slot * (size_t)c->k};
    size_t n_text = 0;
    for (size_t i = 0; i < c->n_passages; i++) {
        l.n_sent += c->passages[i].n_sent;
        n_text += (size_t)(c->passages[i].end_char - c->passages[i].start_char);
    }
    l.o_act = l.n_pairs * sizeof *c->feat;
    l.o_slots = l.o_act + l.n_pairs * sizeof *c->act;
    l.o_pass = l.o_slots + (size_t)c->n_slot * sizeof *c->slots;
    l.o_sent = l.o_pass + c->n_passages * sizeof(struct idx_passage);
    l.o_text = l.o_sent + 2 * l.n_sent * sizeof(int64_t);
    l.total = l.o_text + n_text;
    return l;
}

/* Copy c into qc's buffer (grown as needed). */
static int copy_chunk(const struct idx_chunk *c, const struct qlayout *l, struct qchunk *qc)
{
    if (qc->cap < l->total || !qc->mem) {
        uint8_t *m = realloc(qc->mem, l->total ? l->total : 1);
        if (!m)
            return S3_ENOMEM;
        qc->mem = m;
        qc->cap = l->total;
    }
    uint8_t *m = qc->mem;
    qc->bytes = l->total;
    qc->c = *c;
    if (l->n_pairs) {
        memcpy(m, c->feat, l->n_pairs * sizeof *c->feat);
        memcpy(m + l->o_act, c->act, l->n_pairs * sizeof *c->act);
    }
    struct idx_slot *slots = (struct idx_slot *)(void *)(m + l->o_slots);
    struct idx_passage *ps = (struct idx_passage *)(void *)(m + l->o_pass);
    int64_t *sent = (int64_t *)(void *)(m + l->o_sent);
    char *text = (char *)(m + l->o_text);
    if (c->n_slot)
        memcpy(slots, c->slots, (size_t)c->n_slot * sizeof *slots);
    for (size_t i = 0; i < c->n_passages; i++) {
        const struct idx_passage *p = &c->passages[i];
        const size_t tl = (size_t)(p->end_char - p->start_char);
        ps[i] = *p;
        if (tl)
            memcpy(text, p->text, tl);
        ps[i].text = text;
        text += tl;
        if (p->n_sent) {
            memcpy(sent, p->sent_tok, p->n_sent * sizeof *sent);
            memcpy(sent + p->n_sent, p->sent_char, p->n_sent * sizeof *sent);
        }
        ps[i].sent_tok = sent;
        ps[i].sent_char = sent + p->n_sent;
        sent += 2 * p->n_sent;
    }
    qc->c.slots = slots;
    qc->c.feat = l->n_pairs ? (const int32_t *)(void *)m : NULL;
    qc->c.act = l->n_pairs ? (const float *)(void *)(m + l->o_act) : NULL;
    qc->c.passages = ps;
    return 0;
}

int idx_async_add(struct idx_async *a, const struct idx_chunk *c, struct s3_errinfo *err)
{
    if (!a || !c)
        return s3_errf(err, S3_EINVAL, "index: no async writer or chunk");
    int rc = idx__chunk_shape(c, 0, err); /* feature ids included: refused before queueing */
    if (rc < 0)
        return rc;
    const struct qlayout l = qlayout_of(c);
    /* wait for room; the entry after the queued ones is then this caller's alone (one
       producer) until it is published below */
    pthread_mutex_lock(&a->mu);
    while ((a->count == a->depth || (a->count && a->bytes + l.total > a->max_bytes)) &&
           a->rc == 0)
        pthread_cond_wait(&a->cv, &a->mu);
    rc = a->rc;
    if (rc < 0 && err)
        *err = a->err;
    struct qchunk *qc = &a->q[(a->head + a->count) % a->depth];
    if (rc == 0 && !qc->mem && a->n_free > 0) { /* the buffer freed last */
        const struct qbuf b = a->free_buf[--a->n_free];
        qc->mem = b.mem;
        qc->cap = b.cap;
    }
    pthread_mutex_unlock(&a->mu);
    if (rc < 0)
        return rc;
    if (copy_chunk(c, &l, qc) < 0)
        return s3_errf(err, S3_ENOMEM, "index: out of memory");
    pthread_mutex_lock(&a->mu);
    a->count++;
    a->bytes += qc->bytes;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

int idx_async_end(struct idx_async *a, struct s3_errinfo *err)
{
    if (!a)
        return 0;
    pthread_mutex_lock(&a->mu);
    a->end = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->th, NULL);
    idx__writer_set_eager(a->w, 0); /* an open transaction stays until the next commit */
    const int rc = a->rc;
    if (rc < 0 && err)
        *err = a->err;
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    enc_pool_free(&a->ep);
    async_free(a);
    return rc;
}
