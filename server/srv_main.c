/* server/srv_main.c - the `s3serve serve` subcommand: config, signals, start, stop. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "srv.h"
#include "srv_int.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: s3serve serve [--host ADDR] [--port N] [--config FILE] [--model PATH]\n"
               "                     [--api-keys K1,K2] [other options below]\n\n"
               "Serves the OpenAI-compatible API (POST /v1/chat/completions, POST "
               "/v1/completions,\nGET /v1/models, GET /health, GET /metrics) and the document "
               "API (POST/GET\n/v1/documents, GET/DELETE /v1/documents/{id}, POST /v1/retrieve) "
               "until SIGINT or\nSIGTERM.\n\n");
    cfg_usage(f);
}

int cli_serve(int argc, char **argv)
{
    struct cfg c;
    struct s3_errinfo err = {0};
    struct srv s;
    sigset_t set;
    int sig = 0;

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    if (cfg_load(&c, argc, argv, NULL, &err) < 0) {
        fprintf(stderr, "s3serve serve: %s\n", err.msg);
        return 2;
    }
    s3_log_set_level(c.log_level);
    cfg_print(&c, stdout);

    /* signals are taken by sigwait below; every thread started from here inherits the mask */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (srv_start(&s, &c, &srv_engine_default, &err) < 0) {
        fprintf(stderr, "s3serve serve: %s\n", err.msg);
        cfg_deinit(&c);
        return 1;
    }
    int v6 = strchr(c.host, ':') != NULL;
    printf("listening http://%s%s%s:%u model=%s n_ctx=%d\n", v6 ? "[" : "", c.host,
           v6 ? "]" : "", (unsigned)s.port, c.model_id, s.info.n_ctx);
    fflush(stdout);
    S3_LOG(S3_LOG_INFO, "event=listening host=%s port=%u model=%s n_ctx=%d", c.host,
           (unsigned)s.port, c.model_id, s.info.n_ctx);

    while (sigwait(&set, &sig) != 0)
        ;
    S3_LOG(S3_LOG_INFO, "event=shutdown signal=%d", sig);
    srv_stop(&s);
    cfg_deinit(&c);
    return 0;
}
