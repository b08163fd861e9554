/* index/ckpt.c - the database handle's checkpointer: a thread with its own connection that
 * copies the WAL into the database file (passive checkpoints) whenever a writer has committed.
 * Started by the first writer on a file database; it outlives the writer, so that freeing a
 * writer does not wait for the last copy; idx_close serves the last kick and stops it. */
#include <stdlib.h>

#include "index_int.h"

static void *ckpt_main(void *arg)
{
    struct idx_ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->kick && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->kick)
            break; /* stopped with nothing left to copy (a last kick is served first) */
        c->kick = 0;
        pthread_mutex_unlock(&c->mu);
        /* SQLITE_BUSY (another checkpoint, a lock) only means: next time */
        sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int idx__ckpt_start(struct idx_db *db)
{
    struct idx_ckpt *c = &db->ck;
    if (c->on)
        return 0;
    const char *path = sqlite3_db_filename(db->db, "main");
    if (!path || !*path)
        return -1;
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail_db;
    sqlite3_busy_timeout(c->db, 0);
    /* a connection opens the WAL with its first read; until then it checkpoints nothing */
    if (sqlite3_exec(c->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK)
        goto fail_db;
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        goto fail_db;
    if (pthread_cond_init(&c->cv, NULL) != 0)
        goto fail_mu;
    c->kick = c->stop = 0;
    if (pthread_create(&c->th, NULL, ckpt_main, c) != 0)
        goto fail_cv;
    c->on = 1;
    return 0;
fail_cv:
    pthread_cond_destroy(&c->cv);
fail_mu:
    pthread_mutex_destroy(&c->mu);
fail_db:
    sqlite3_close(c->db);
    c->db = NULL;
    return -1;
}

void idx__ckpt_kick(struct idx_db *db)
{
    struct idx_ckpt *c = &db->ck;
    if (!c->on)
        return;
    pthread_mutex_lock(&c->mu);
    c->kick = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void idx__ckpt_stop(struct idx_db *db)
{
    struct idx_ckpt *c = &db->ck;
    if (!c->on)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    sqlite3_close(c->db);
    c->db = NULL;
    c->on = 0;
}
