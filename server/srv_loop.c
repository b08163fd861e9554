/* server/srv_loop.c - the loop thread: job FIFO, deadlines, disconnect checks, dispatch.
 *
 * Only this thread touches q_head/q_tail/running and the uv handles. Other threads talk to it
 * through the inbox (srv__inbox_post) and uv_async_send, which coalesces: on_wake drains the
 * whole inbox. One job runs on the worker at a time; jobs start in arrival order. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "srv_int.h"

#define SRV_TICK_MS 100

int srv__inbox_post(struct srv *s, struct srv_req *r, int msg)
{
    pthread_mutex_lock(&s->in_mu);
    if (s->in_closed && msg == SRV_IN_SUBMIT) {
        pthread_mutex_unlock(&s->in_mu);
        return S3_EBUSY;
    }
    r->in_msg = msg;
    r->in_next = NULL;
    if (s->in_tail)
        s->in_tail->in_next = r;
    else
        s->in_head = r;
    s->in_tail = r;
    pthread_mutex_unlock(&s->in_mu);
    uv_async_send(&s->wake);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    srv_req_unref(h->data);
}

/* The job is over for the loop: release its slot and its reference. */
static void retire(struct srv *s, struct srv_req *r)
{
    (void)s;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static void fifo_remove(struct srv *s, struct srv_req *r)
{
    struct srv_req **pp = &s->q_head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->q_next;
    }
    if (!*pp)
        return;
    *pp = r->q_next;
    if (s->q_tail == r)
        s->q_tail = prev;
    r->q_next = NULL;
    atomic_fetch_sub(&s->metrics.queue_depth, 1);
}

/* A job that never reached the worker ends with an error reply. */
static void finish_unrun(struct srv *s, struct srv_req *r, int why)
{
    struct srv_error e;
    if (why == SRV_CANCEL_DEADLINE) {
        atomic_fetch_add(&s->metrics.gen_timeouts, 1);
        srv_errorf(&e, 504, "timeout_error", "timeout", NULL,
                   "The request waited longer than the deadline of %lld ms.",
                   (long long)s->cfg->request_timeout_ms);
    } else if (why == SRV_CANCEL_CLIENT) {
        atomic_fetch_add(&s->metrics.gen_canceled, 1);
        srv_errorf(&e, 499, "invalid_request_error", "canceled", NULL, "The client went away.");
    } else {
        srv_errorf(&e, 503, "server_error", "shutting_down", NULL, "The server is shutting down.");
    }
    srv_req_reply_error(r, &e);
    retire(s, r);
}

static void dispatch(struct srv *s)
{
    if (s->running || !s->q_head)
        return;
    struct srv_req *r = s->q_head;
    s->q_head = r->q_next;
    if (!s->q_head)
        s->q_tail = NULL;
    r->q_next = NULL;
    atomic_fetch_sub(&s->metrics.queue_depth, 1);
    s->running = r;
    atomic_store(&s->metrics.running, 1);
    srv__worker_give(s, r);
}

static void set_cancel(struct srv_req *r, int why)
{
    int none = SRV_CANCEL_NONE;
    __atomic_compare_exchange_n(&r->cancel, &none, why, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static void on_deadline(uv_timer_t *t)
{
    struct srv_req *r = t->data;
    struct srv *s = r->srv;
    set_cancel(r, SRV_CANCEL_DEADLINE);
    if (s->running == r)
        return; /* the worker sees the flag and ends the reply */
    fifo_remove(s, r);
    finish_unrun(s, r, SRV_CANCEL_DEADLINE);
}

/* 1 when the peer of a suspended connection has closed it. */
static int client_gone(struct srv_req *r)
{
    int gone = 0;
    pthread_mutex_lock(&r->mu);
    if (r->suspended && !r->closed && r->fd >= 0) {
        char c;
        ssize_t n = recv(r->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            gone = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return gone;
}

static void on_tick(uv_timer_t *t)
{
    struct srv *s = t->data;
    struct srv_req *r = s->q_head;
    while (r) {
        struct srv_req *next = r->q_next;
        if (client_gone(r)) {
            set_cancel(r, SRV_CANCEL_CLIENT);
            fifo_remove(s, r);
            finish_unrun(s, r, SRV_CANCEL_CLIENT);
        }
        r = next;
    }
    if (s->running && client_gone(s->running))
        set_cancel(s->running, SRV_CANCEL_CLIENT);
}

static void maybe_exit(struct srv *s)
{
    if (!s->loop_stopping || s->running || s->q_head)
        return;
    if (!uv_is_closing((uv_handle_t *)&s->wake)) {
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_timer_stop(&s->tick);
        uv_close((uv_handle_t *)&s->tick, NULL);
    }
}

static void on_wake(uv_async_t *h)
{
    struct srv *s = h->data;
    pthread_mutex_lock(&s->in_mu);
    struct srv_req *r = s->in_head;
    s->in_head = s->in_tail = NULL;
    int stop = atomic_load(&s->stopping) && !s->loop_stopping;
    if (stop)
        s->in_closed = 1;
    pthread_mutex_unlock(&s->in_mu);

    while (r) {
        struct srv_req *next = r->in_next;
        r->in_next = NULL;
        if (r->in_msg == SRV_IN_SUBMIT) {
            uv_timer_init(&s->loop, &r->timer);
            r->timer.data = r;
            double left = r->deadline_ms - s3_now_ms();
            uv_timer_start(&r->timer, on_deadline, left < 1 ? 1 : (uint64_t)left, 0);
            if (s->q_tail)
                s->q_tail->q_next = r;
            else
                s->q_head = r;
            s->q_tail = r;
            atomic_fetch_add(&s->metrics.queue_depth, 1);
        } else { /* SRV_IN_DONE */
            if (s->running == r) {
                s->running = NULL;
                atomic_store(&s->metrics.running, 0);
            }
            retire(s, r);
        }
        r = next;
    }
    if (stop) {
        s->loop_stopping = 1;
        while (s->q_head) {
            struct srv_req *q = s->q_head;
            set_cancel(q, SRV_CANCEL_SHUTDOWN);
            fifo_remove(s, q);
            finish_unrun(s, q, SRV_CANCEL_SHUTDOWN);
        }
        if (s->running)
            set_cancel(s->running, SRV_CANCEL_SHUTDOWN);
    }
    if (!s->loop_stopping)
        dispatch(s);
    maybe_exit(s);
}

static void *loop_main(void *arg)
{
    struct srv *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

int srv__loop_start(struct srv *s, struct s3_errinfo *err)
{
    int rc = uv_loop_init(&s->loop);
    if (rc < 0)
        return s3_errf(err, S3_EINTERNAL, "uv_loop_init: %s", uv_strerror(rc));
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, SRV_TICK_MS, SRV_TICK_MS);
    if (pthread_create(&s->loop_thread, NULL, loop_main, s) != 0) {
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_close((uv_handle_t *)&s->tick, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        return s3_errf(err, S3_EINTERNAL, "cannot start the loop thread");
    }
    return 0;
}

void srv__loop_stop(struct srv *s)
{
    /* s->stopping is already set: the next wake-up cancels everything and exits */
    uv_async_send(&s->wake);
    pthread_join(s->loop_thread, NULL);
    uv_loop_close(&s->loop);
}
