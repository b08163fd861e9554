/* server/srv.h - the HTTP server (OpenAI-compatible API) as a subcommand of s3serve.
 *
 *     s3serve serve [--host 127.0.0.1] [--port 8080] [--config FILE] [--model PATH] ...
 *
 * Everything else of the server (routes, job queue, engine worker) is internal: see
 * server/srv_int.h. */
#pragma once

/* Run the server until SIGINT/SIGTERM. argv[0] is the subcommand name. Returns a process exit
 * status (0 after a clean shutdown, 1 on a start-up failure, 2 on bad options). Main thread. */
int cli_serve(int argc, char **argv);
