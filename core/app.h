/* A running app: the loop, the HTTP server, the Lua vm, signals and the
 * order in which they start and stop. */
#ifndef TD_APP_H
#define TD_APP_H

#include "cli.h"

/* Runs until SIGTERM or SIGINT. Returns the exit code: 0 when every request
 * finished, 1 when startup failed or the shutdown timeout cut requests off. */
int td_app_run(const td_config *cfg);

#endif
