/* A running app: the loop, the HTTP server, the Lua vm, signals and the
 * order in which they start and stop. */
#ifndef TD_APP_H
#define TD_APP_H

#include "cli.h"
#include "shared.h"

/* How this process serves: alone, or as one of the supervisor's workers
 * (supervisor.h). */
typedef struct td_worker {
    int id, count; /* 1..count; 1, 1 alone */
    /* Listening sockets the supervisor made (the worker owns its copies);
     * -1: made here (alone), or none on that side. */
    int http_fd, tls_fd;
    /* The worker writes its id and pid here (two ints, one write) once it
     * serves; -1: alone, it prints the URLs itself. */
    int ready_fd;
    td_shared *shared; /* the dictionaries and the worker's slot */
} td_worker;

/* Runs until SIGTERM or SIGINT. Returns the exit code: 0 when every request
 * finished, 1 when startup failed or the shutdown timeout cut requests off. */
int td_app_run(const td_config *cfg, const td_worker *w);

/* The ports of --port and --tls-port as they serve: plain HTTP and HTTPS,
 * -1 for a side that is off. */
void td_app_ports(const td_config *cfg, int *plain, int *tls);

/* Prints "listening on SCHEME://HOST:PORT". */
void td_app_print_url(const char *scheme, const char *host, int port);

#endif
