/* kernels/cpu/cpu_pool.c - CPU count, OpenBLAS GEMM and the worker thread pool.
 *
 * The pool runs one task at a time on all its threads. The caller is thread 0; workers wait
 * on a generation counter: they spin (with a pause) for a short while, which keeps the hand-off
 * cost around a microsecond during a forward pass, then sleep on a condition variable so an
 * idle pool costs no CPU. */
#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels.h"
#include "s3.h"

#define POOL_SPIN 2000    /* pause iterations before yielding the core */
#define POOL_YIELD 20000  /* sched_yield calls before a worker sleeps */

int krn_n_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int)n : 1;
}

void krn_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct krn_pool {
    int n_threads;
    pthread_t *th;        /* n_threads - 1 workers */
    krn_task_fn fn;       /* task of the current generation (written before gen is bumped) */
    void *ud;
    atomic_uint gen;      /* bumped by the caller for each task */
    atomic_int n_done;    /* workers finished with the current task */
    atomic_int quit;
    atomic_int n_sleeping;
    pthread_mutex_t mu;   /* guards the sleep/wake hand-off only */
    pthread_cond_t cv;
};

struct worker_arg {
    struct krn_pool *p;
    int ith;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *arg)
{
    struct worker_arg wa = *(struct worker_arg *)arg;
    free(arg);
    struct krn_pool *p = wa.p;
    unsigned seen = 0; /* gen at creation: a task may be posted before this thread runs */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < POOL_SPIN) {
                cpu_relax();
                continue;
            }
            if (spins < POOL_SPIN + POOL_YIELD) {
                sched_yield(); /* an oversubscribed machine: let the thread we wait for run */
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while ((g = atomic_load(&p->gen)) == seen)
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        seen = g;
        if (atomic_load(&p->quit))
            break;
        p->fn(p->ud, wa.ith, p->n_threads);
        atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release);
    }
    return NULL;
}

int krn_pool_new(int n_threads, struct krn_pool **out)
{
    *out = NULL;
    if (n_threads <= 0)
        n_threads = krn_n_cpus();
    if (n_threads > 256)
        n_threads = 256;
    struct krn_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return S3_ENOMEM;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->n_done, 0);
    atomic_init(&p->quit, 0);
    atomic_init(&p->n_sleeping, 0);
    p->th = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->th) {
        krn_pool_free(p);
        return S3_ENOMEM;
    }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        if (wa) {
            wa->p = p;
            wa->ith = i;
        }
        if (!wa || pthread_create(&p->th[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n_threads = i; /* join the ones started */
            krn_pool_free(p);
            return S3_ENOMEM;
        }
    }
    *out = p;
    return 0;
}

void krn_pool_free(struct krn_pool *p)
{
    if (!p)
        return;
    if (p->th) {
        atomic_store(&p->quit, 1);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->gen, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n_threads; i++)
            pthread_join(p->th[i - 1], NULL);
        free(p->th);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int krn_pool_n_threads(const struct krn_pool *p)
{
    return p ? p->n_threads : 1;
}

void krn_pool_run(struct krn_pool *p, krn_task_fn fn, void *ud)
{
    if (!p || p->n_threads == 1) {
        fn(ud, 0, 1);
        return;
    }
    p->fn = fn;
    p->ud = ud;
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: pairs with n_sleeping */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ud, 0, p->n_threads);
    int spins = 0;
    while (atomic_load_explicit(&p->n_done, memory_order_acquire) < p->n_threads - 1) {
        if (++spins < POOL_SPIN)
            cpu_relax();
        else
            sched_yield();
    }
}
