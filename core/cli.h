/* The command line: `tendril serve APP.lua [options]` and
 * `tendril run SCRIPT.lua|-e CODE [ARGS...]`. */
#ifndef TD_CLI_H
#define TD_CLI_H

#include <stddef.h>

/* Certificate and key pairs (SNI) at most. */
#define TD_CLI_MAX_TLS 16
/* Shared dictionaries at most (shared.h). */
#define TD_CLI_MAX_SHARED 32
/* Worker processes at most (a watch's mask has a bit per worker). */
#define TD_CLI_MAX_WORKERS 64

enum { TD_CMD_SERVE, TD_CMD_RUN };

typedef struct td_config {
    int command;          /* TD_CMD_* */
    const char *app_path; /* serve: the app; run: the script (NULL with -e) */
    /* run: the code of -e, and the script's arguments (its arg[1..]). */
    const char *run_code;
    char **run_args;
    int run_nargs;
    int run_no_wait; /* test: exit when the script returns, whatever it left running */
    const char *host;
    int port;
    const char *access_log; /* NULL: off; "-": stdout */
    int access_log_format;  /* td_access_format (log.h) */
    const char *error_log;  /* NULL: stderr */
    size_t max_header_bytes;
    size_t max_body_bytes;
    size_t max_connections; /* 0: the open-file limit */
    double header_timeout;
    double body_timeout;
    double keepalive_timeout;
    double shutdown_timeout;
    double send_timeout;
    double request_timeout; /* 0: none */
    unsigned long stall_warn_ms; /* 0: the stall guard is off */
    size_t lua_memory_limit;     /* bytes; 0: none beyond the system's */
    int no_watch;                /* reload on SIGHUP only */
    int no_timings;              /* requests' time is not counted (timings.h) */
    /* TLS: certificate and key files, in pairs; the first is the default. */
    const char *tls_certs[TD_CLI_MAX_TLS];
    const char *tls_keys[TD_CLI_MAX_TLS];
    size_t ntls_certs, ntls_keys;
    int tls_port; /* -1: --port itself speaks TLS (when certificates are given) */
    /* Worker processes (0: one per CPU); 1 is the single process without
     * a supervisor. */
    int workers;
    double stall_kill; /* seconds; 0: stuck workers are left alone */
    /* Shared dictionaries: names and sizes in bytes. */
    char shared_names[TD_CLI_MAX_SHARED][64];
    size_t shared_sizes[TD_CLI_MAX_SHARED];
    size_t nshared;
} td_config;

/* Less than this would not hold the runtime's own library. */
#define TD_CLI_MIN_LUA_MEMORY ((size_t)4 << 20)

enum { TD_CLI_RUN = 0, TD_CLI_DONE = 1, TD_CLI_USAGE = -1 };

/* Fills cfg with the defaults, then the options. Returns TD_CLI_RUN,
 * TD_CLI_DONE (it printed --help or --version) or TD_CLI_USAGE (it printed
 * what is wrong on stderr). */
int td_cli_parse(int argc, char **argv, td_config *cfg);

#endif
