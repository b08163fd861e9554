/* server/srv_server.c - start and stop of the whole server (worker, loop, HTTP daemon). */
#include <string.h>

#include "srv_int.h"

int srv_start(struct srv *s, const struct cfg *c, const struct srv_engine_ops *ops,
              struct s3_errinfo *err)
{
    int rc;
    memset(s, 0, sizeof *s);
    s->cfg = c;
    s->ops = ops;
    atomic_init(&s->next_id, 1);
    atomic_init(&s->db_waiters, 0);
    pthread_mutex_init(&s->in_mu, NULL);
    pthread_mutex_init(&s->r_mu, NULL);
    pthread_mutex_init(&s->w_mu, NULL);
    pthread_cond_init(&s->w_cv, NULL);
    if ((rc = srv__worker_start(s, err)) < 0)
        goto fail;
    s->limits.max_tokens_limit = c->max_tokens_limit;
    s->limits.model_id = c->model_id;
    s->limits.n_vocab = s->info.n_vocab;
    s->limits.max_budget = s->info.n_ctx;
    s->limits.no_sae = !s->info.has_sae;
    if ((rc = srv__loop_start(s, err)) < 0) {
        srv__worker_stop(s);
        goto fail;
    }
    if ((rc = srv__http_start(s, err)) < 0) {
        atomic_store(&s->stopping, 1);
        srv__loop_stop(s);
        srv__worker_stop(s);
        goto fail;
    }
    return 0;
fail:
    pthread_cond_destroy(&s->w_cv);
    pthread_mutex_destroy(&s->w_mu);
    pthread_mutex_destroy(&s->r_mu);
    pthread_mutex_destroy(&s->in_mu);
    return rc;
}

void srv_stop(struct srv *s)
{
    atomic_store(&s->stopping, 1);
    if (s->mhd)
        MHD_quiesce_daemon(s->mhd); /* no new connections; the listen socket stays ours */
    srv__loop_stop(s);              /* every job ends with a reply: nothing stays suspended */
    srv__worker_stop(s);
    srv__http_stop(s);
    pthread_cond_destroy(&s->w_cv);
    pthread_mutex_destroy(&s->w_mu);
    pthread_mutex_destroy(&s->r_mu);
    pthread_mutex_destroy(&s->in_mu);
}
