/* tendril: parse the command line, then serve: in this process, or in
 * worker processes under a supervisor (--workers). */
#include <stdio.h>

#include "app.h"
#include "cli.h"
#include "shared.h"
#include "supervisor.h"

int main(int argc, char **argv) {
    td_config cfg;
    int rc = td_cli_parse(argc, argv, &cfg);
    if (rc == TD_CLI_DONE)
        return 0;
    if (rc == TD_CLI_USAGE)
        return 2;
    if (td_supervisor_workers(&cfg) > 1)
        return td_supervisor_run(&cfg);
    char err[256];
    const char *names[TD_CLI_MAX_SHARED];
    for (size_t i = 0; i < cfg.nshared; i++)
        names[i] = cfg.shared_names[i];
    td_shared *shared = td_shared_new(names, cfg.shared_sizes, cfg.nshared, 1, err, sizeof err);
    if (!shared) {
        fprintf(stderr, "tendril: %s\n", err);
        return 1;
    }
    td_worker alone = {.id = 1, .count = 1, .http_fd = -1, .tls_fd = -1, .ready_fd = -1, .shared = shared};
    rc = td_app_run(&cfg, &alone);
    td_shared_free(shared);
    return rc;
}
