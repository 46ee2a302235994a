/* tendril: parse the command line, run the app. */
#include "app.h"
#include "cli.h"

int main(int argc, char **argv) {
    td_config cfg;
    int rc = td_cli_parse(argc, argv, &cfg);
    if (rc == TD_CLI_DONE)
        return 0;
    if (rc == TD_CLI_USAGE)
        return 2;
    return td_app_run(&cfg);
}
