/* The supervisor of --workers N: it makes the listening sockets and the
 * shared memory, forks N workers (each runs td_app_run with its own loop
 * and Lua state), and does no request work itself. It restarts a worker
 * that dies (with back-off), kills and replaces one whose loop has not
 * turned for --stall-kill seconds, forwards SIGHUP (reload) and SIGUSR1
 * (reopen logs) to every worker, and on SIGTERM or SIGINT drains them all.
 *
 * Signals reach it through a signalfd (they stay blocked): no handler runs
 * while it forks, and workers start with the mask restored. */
#ifndef TD_SUPERVISOR_H
#define TD_SUPERVISOR_H

#include "cli.h"

/* The number of workers cfg asks for (auto: the CPUs online). */
int td_supervisor_workers(const td_config *cfg);
/* Runs until every worker ended after SIGTERM or SIGINT. The exit code: 0
 * when every worker drained, 1 when startup failed or a drain was cut. */
int td_supervisor_run(const td_config *cfg);

#endif
