/* Parses the command line into a td_config; prints help, version and usage
 * errors. */
#include "cli.h"
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: tendril serve APP.lua [options]\n"
    "       tendril run SCRIPT.lua [ARGS...]\n"
    "       tendril run -e CODE [ARGS...]\n"
    "       tendril test [BUSTED OPTIONS] [PATH...]\n"
    "       tendril new DIR\n"
    "       tendril --help | --version\n"
    "\n"
    "serve: serves HTTP with the handler that APP.lua returns.\n"
    "run: runs a script in a task with the whole waiting API (http, tcp, sleep,\n"
    "spawn, fs, run), arg set as luajit sets it; exits when the script returned\n"
    "and nothing it started still runs, with the integer it returned (default 0),\n"
    "or 1 and a traceback when it raised.\n"
    "test: runs busted specs (default spec/, else tests/spec/) inside the runtime,\n"
    "each it in a task of its own; a test whose body leaves a task or a wait\n"
    "behind fails. Busted's own options apply.\n"
    "new: writes a starting project into DIR (an app with a router, a module,\n"
    "a spec, .luacheckrc and a README).\n"
    "\n"
    "options:\n"
    "  --host H                 address to listen on (default 127.0.0.1)\n"
    "  --port P                 port to listen on; 0 picks a free one (default 8080)\n"
    "  --access-log PATH|-      access log; - is stdout (default off)\n"
    "  --access-log-format F    common (Common Log Format, the default), combined (with\n"
    "                           referer and user agent) or json (one object a line, with the\n"
    "                           request's time and the worker)\n"
    "  --error-log PATH         error log (default stderr)\n"
    "  --max-header-bytes N     largest request head (default 16384)\n"
    "  --max-body-bytes N       largest request body (default 1048576)\n"
    "  --max-connections N      connections served at once; more wait in the backlog\n"
    "                           (default: the open-file limit less a reserve for handlers)\n"
    "  --header-timeout S       seconds to receive a request head (default 10)\n"
    "  --body-timeout S         seconds to receive a request body (default 10)\n"
    "  --keepalive-timeout S    seconds an idle keep-alive connection stays open (default 5)\n"
    "  --shutdown-timeout S     seconds in-flight requests get after SIGTERM or SIGINT (default 10)\n"
    "  --send-timeout S         seconds a client may take no byte of its answer before it is\n"
    "                           disconnected (default 60)\n"
    "  --request-timeout S      seconds after which a request's waits fail with \"timeout\"; 0 is\n"
    "                           off (default 60; req:deadline changes it per request)\n"
    "  --stall-warn-ms N        warn when Lua holds the event loop longer than this; 0 is off\n"
    "                           (default 200)\n"
    "  --lua-memory-limit N     bytes the Lua state may hold (suffix k, m or g); a task that\n"
    "                           needs more fails with \"not enough memory\" (default 0: no limit)\n"
    "  --no-watch               do not reload when the app's files change (SIGHUP still does)\n"
    "  --no-timings             do not count where each request's time goes (req:timings()\n"
    "                           and the JSON log's timings then say 0)\n"
    "  --tls-cert FILE          serve HTTPS with this certificate (PEM, chain after the leaf);\n"
    "                           repeat with --tls-key for more names, chosen by SNI (the first\n"
    "                           pair is the default); a reload rereads them\n"
    "  --tls-key FILE           the certificate's private key (PEM)\n"
    "  --tls-port P             HTTPS on P, plain HTTP on --port (default: --port speaks HTTPS\n"
    "                           when certificates are given)\n"
    "  --workers N|auto         worker processes, each with its own event loop and Lua state,\n"
    "                           under a supervisor that restarts them; auto is one per CPU\n"
    "                           (default 1: one process, no supervisor)\n"
    "  --stall-kill S           with workers: a worker whose event loop has not turned for S\n"
    "                           seconds (at least 1) is killed and replaced; 0 is off (default 10)\n"
    "  --shared NAME=SIZE       a dictionary shared by every worker, SIZE bytes (suffix k, m\n"
    "                           or g; at least 64k), for tendril.shared.dict(NAME); repeatable\n"
    "  --help                   this text\n"
    "  --version                the version\n";

static int usage_error(const char *fmt, const char *arg) {
    fputs("tendril: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n(tendril --help lists the options)\n", stderr);
    return TD_CLI_USAGE;
}

static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = (size_t)v;
    return 0;
}

/* A size with an optional binary suffix: 64m, 2g. */
static int parse_bytes(const char *s, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -1;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end || v > (SIZE_MAX >> shift))
        return -1;
    *out = (size_t)v << shift;
    return 0;
}

/* The options that take a value: any other name is unknown, wherever it
 * stands on the line. */
static const char *const valued[] = {
    "--host", "--port", "--access-log", "--access-log-format", "--error-log", "--max-header-bytes", "--max-body-bytes",
    "--max-connections", "--header-timeout", "--body-timeout", "--keepalive-timeout", "--shutdown-timeout",
    "--send-timeout", "--request-timeout", "--stall-warn-ms", "--lua-memory-limit", "--tls-cert", "--tls-key",
    "--tls-port", "--workers", "--stall-kill", "--shared", NULL,
};

static int takes_value(const char *name) {
    for (int i = 0; valued[i]; i++)
        if (strcmp(name, valued[i]) == 0)
            return 1;
    return 0;
}

static int parse_seconds(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || !isfinite(v) || v > 1e7)
        return -1;
    *out = v;
    return 0;
}

/* NAME=SIZE: a name of letters, digits, _ and -, and a size of 64k or more. */
static int parse_shared(td_config *cfg, const char *value) {
    const char *eq = strchr(value, '=');
    size_t n = eq ? (size_t)(eq - value) : 0;
    if (!eq || n == 0 || n > 63 || strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                               "0123456789_-") != n)
        return usage_error("--shared takes NAME=SIZE (a name of letters, digits, _ and -, e.g. cache=10m), "
                           "not '%s'", value);
    size_t size;
    if (parse_bytes(eq + 1, &size) != 0 || size < ((size_t)64 << 10))
        return usage_error("--shared: the size is a number of bytes of 64k or more (suffix k, m or g), "
                           "not '%s'", value);
    char name[64];
    memcpy(name, value, n);
    name[n] = '\0';
    for (size_t i = 0; i < cfg->nshared; i++)
        if (strcmp(cfg->shared_names[i], name) == 0)
            return usage_error("--shared: the dictionary '%s' is declared twice", name);
    if (cfg->nshared >= TD_CLI_MAX_SHARED)
        return usage_error("at most 32 shared dictionaries, not more ('%s')", value);
    memcpy(cfg->shared_names[cfg->nshared], name, n + 1);
    cfg->shared_sizes[cfg->nshared++] = size;
    return 0;
}

/* tendril run SCRIPT.lua [ARGS...] | -e CODE [ARGS...]: what follows the
 * script (or the code) is the script's, options included. */
static int parse_run(int argc, char **argv, int i, td_config *cfg) {
    cfg->command = TD_CMD_RUN;
    cfg->no_watch = 1;
    cfg->request_timeout = 0;
    if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
        fputs(usage_text, stdout);
        return TD_CLI_DONE;
    }
    if (i < argc && strcmp(argv[i], "-e") == 0) {
        if (i + 1 >= argc)
            return usage_error("%s", "-e needs the code to run: tendril run -e 'print(1)'");
        cfg->run_code = argv[i + 1];
        i += 2;
    } else if (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
        return usage_error("unknown option '%s' for run (tendril run SCRIPT.lua or -e CODE)", argv[i]);
    } else if (i < argc) {
        cfg->app_path = argv[i++];
    } else {
        return usage_error("%s", "missing the script: tendril run SCRIPT.lua [ARGS...], or -e CODE");
    }
    cfg->run_args = argv + i;
    cfg->run_nargs = argc - i;
    return TD_CLI_RUN;
}

int td_cli_parse(int argc, char **argv, td_config *cfg) {
    *cfg = (td_config){
        .host = "127.0.0.1",
        .port = 8080,
        .max_header_bytes = 16384,
        .max_body_bytes = 1048576,
        .header_timeout = 10,
        .body_timeout = 10,
        .keepalive_timeout = 5,
        .shutdown_timeout = 10,
        .send_timeout = 60,
        .request_timeout = 60,
        .stall_warn_ms = 200,
        .tls_port = -1,
        .workers = 1,
        .stall_kill = 10,
    };
    int i = 1;
    if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
        fputs(usage_text, stdout);
        return TD_CLI_DONE;
    }
    if (i < argc && strcmp(argv[i], "--version") == 0) {
        printf("tendril %s\n", TD_VERSION);
        return TD_CLI_DONE;
    }
    if (i >= argc)
        return usage_error("%s", "missing command: tendril serve APP.lua, or tendril run SCRIPT.lua");
    if (strcmp(argv[i], "run") == 0)
        return parse_run(argc, argv, i + 1, cfg);
    if (strcmp(argv[i], "new") == 0) {
        cfg->command = TD_CMD_RUN;
        cfg->no_watch = 1;
        cfg->run_code = "return require('tendril.new').run({ ... })";
        cfg->run_args = argv + i + 1;
        cfg->run_nargs = argc - i - 1;
        return TD_CLI_RUN;
    }
    if (strcmp(argv[i], "test") == 0) {
        /* A script of the runtime's own, with busted's command line. */
        cfg->command = TD_CMD_RUN;
        cfg->no_watch = 1;
        cfg->request_timeout = 0;
        cfg->run_code = "return require('tendril.test').run({ ... })";
        cfg->stall_warn_ms = 0; /* a slow test is not a stuck server */
        cfg->run_no_wait = 1;   /* what specs left running was reported */
        cfg->run_args = argv + i + 1;
        cfg->run_nargs = argc - i - 1;
        return TD_CLI_RUN;
    }
    if (strcmp(argv[i], "serve") != 0)
        return usage_error("unknown command '%s' (the commands are serve, run, test and new)", argv[i]);
    for (i++; i < argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage_text, stdout);
            return TD_CLI_DONE;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("tendril %s\n", TD_VERSION);
            return TD_CLI_DONE;
        }
        if (strcmp(arg, "--no-watch") == 0) {
            cfg->no_watch = 1;
            continue;
        }
        if (strcmp(arg, "--no-timings") == 0) {
            cfg->no_timings = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (cfg->app_path)
                return usage_error("unexpected argument '%s' (one app script only)", arg);
            cfg->app_path = arg;
            continue;
        }
        /* --name value or --name=value */
        char name[64];
        const char *value;
        const char *eq = strchr(arg, '=');
        if (eq) {
            size_t n = (size_t)(eq - arg);
            if (n >= sizeof name)
                return usage_error("unknown option '%s'", arg);
            memcpy(name, arg, n);
            name[n] = '\0';
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", arg);
            if (!takes_value(arg))
                return usage_error("unknown option '%s'", arg);
            if (i + 1 >= argc)
                return usage_error("option %s needs a value", arg);
            value = argv[++i];
        }
        if (strcmp(name, "--host") == 0) {
            if (!*value)
                return usage_error("%s", "--host needs an address");
            cfg->host = value;
        } else if (strcmp(name, "--port") == 0) {
            size_t p;
            if (parse_size(value, &p) != 0 || p > 65535)
                return usage_error("--port takes a number from 0 to 65535, not '%s'", value);
            cfg->port = (int)p;
        } else if (strcmp(name, "--access-log") == 0) {
            cfg->access_log = value;
        } else if (strcmp(name, "--access-log-format") == 0) {
            if (strcmp(value, "common") == 0)
                cfg->access_log_format = TD_ACCESS_COMMON;
            else if (strcmp(value, "combined") == 0)
                cfg->access_log_format = TD_ACCESS_COMBINED;
            else if (strcmp(value, "json") == 0)
                cfg->access_log_format = TD_ACCESS_JSON;
            else
                return usage_error("--access-log-format takes common, combined or json, not '%s'", value);
        } else if (strcmp(name, "--error-log") == 0) {
            cfg->error_log = value;
        } else if (strcmp(name, "--max-header-bytes") == 0) {
            if (parse_size(value, &cfg->max_header_bytes) != 0 || cfg->max_header_bytes < 64)
                return usage_error("--max-header-bytes takes a number of bytes (64 or more), not '%s'", value);
        } else if (strcmp(name, "--max-body-bytes") == 0) {
            if (parse_size(value, &cfg->max_body_bytes) != 0)
                return usage_error("--max-body-bytes takes a number of bytes, not '%s'", value);
        } else if (strcmp(name, "--max-connections") == 0) {
            if (parse_size(value, &cfg->max_connections) != 0 || cfg->max_connections == 0)
                return usage_error("--max-connections takes a positive number, not '%s'", value);
        } else if (strcmp(name, "--header-timeout") == 0) {
            if (parse_seconds(value, &cfg->header_timeout) != 0)
                return usage_error("--header-timeout takes a positive number of seconds, not '%s'", value);
        } else if (strcmp(name, "--body-timeout") == 0) {
            if (parse_seconds(value, &cfg->body_timeout) != 0)
                return usage_error("--body-timeout takes a positive number of seconds, not '%s'", value);
        } else if (strcmp(name, "--keepalive-timeout") == 0) {
            if (parse_seconds(value, &cfg->keepalive_timeout) != 0)
                return usage_error("--keepalive-timeout takes a positive number of seconds, not '%s'", value);
        } else if (strcmp(name, "--shutdown-timeout") == 0) {
            if (parse_seconds(value, &cfg->shutdown_timeout) != 0)
                return usage_error("--shutdown-timeout takes a positive number of seconds, not '%s'", value);
        } else if (strcmp(name, "--send-timeout") == 0) {
            if (parse_seconds(value, &cfg->send_timeout) != 0)
                return usage_error("--send-timeout takes a positive number of seconds, not '%s'", value);
        } else if (strcmp(name, "--request-timeout") == 0) {
            if (strcmp(value, "0") != 0 && parse_seconds(value, &cfg->request_timeout) != 0)
                return usage_error("--request-timeout takes a number of seconds (0 turns it off), not '%s'", value);
            if (strcmp(value, "0") == 0)
                cfg->request_timeout = 0;
        } else if (strcmp(name, "--stall-warn-ms") == 0) {
            size_t ms;
            if (parse_size(value, &ms) != 0 || ms > 3600000)
                return usage_error("--stall-warn-ms takes a number of milliseconds (0 turns it off), not '%s'", value);
            cfg->stall_warn_ms = (unsigned long)ms;
        } else if (strcmp(name, "--lua-memory-limit") == 0) {
            if (parse_bytes(value, &cfg->lua_memory_limit) != 0 ||
                (cfg->lua_memory_limit && cfg->lua_memory_limit < TD_CLI_MIN_LUA_MEMORY))
                return usage_error("--lua-memory-limit takes a number of bytes, 0 or at least 4m "
                                   "(suffix k, m or g), not '%s'", value);
        } else if (strcmp(name, "--tls-cert") == 0 || strcmp(name, "--tls-key") == 0) {
            int cert = name[6] == 'c';
            size_t *n = cert ? &cfg->ntls_certs : &cfg->ntls_keys;
            if (!*value)
                return usage_error("%s needs a file", name);
            if (*n >= TD_CLI_MAX_TLS)
                return usage_error("at most 16 certificates, not more ('%s')", value);
            (cert ? cfg->tls_certs : cfg->tls_keys)[(*n)++] = value;
        } else if (strcmp(name, "--tls-port") == 0) {
            size_t p;
            if (parse_size(value, &p) != 0 || p > 65535)
                return usage_error("--tls-port takes a number from 0 to 65535, not '%s'", value);
            cfg->tls_port = (int)p;
        } else if (strcmp(name, "--workers") == 0) {
            size_t w;
            if (strcmp(value, "auto") == 0)
                cfg->workers = 0;
            else if (parse_size(value, &w) != 0 || w < 1 || w > TD_CLI_MAX_WORKERS)
                return usage_error("--workers takes auto or a number from 1 to 64, not '%s'", value);
            else
                cfg->workers = (int)w;
        } else if (strcmp(name, "--stall-kill") == 0) {
            if (strcmp(value, "0") == 0)
                cfg->stall_kill = 0;
            else if (parse_seconds(value, &cfg->stall_kill) != 0 || cfg->stall_kill < 1)
                return usage_error("--stall-kill takes a number of seconds, 0 (off) or at least 1, not '%s'", value);
        } else if (strcmp(name, "--shared") == 0) {
            if (parse_shared(cfg, value) != 0)
                return TD_CLI_USAGE;
        } else {
            return usage_error("unknown option '%s'", name);
        }
    }
    if (cfg->ntls_certs != cfg->ntls_keys)
        return usage_error("%s", "--tls-cert and --tls-key come in pairs: one key for each certificate");
    if (cfg->tls_port >= 0 && cfg->ntls_certs == 0)
        return usage_error("%s", "--tls-port needs a certificate: --tls-cert FILE --tls-key FILE");
    if (cfg->tls_port > 0 && cfg->tls_port == cfg->port)
        return usage_error("%s", "--tls-port must differ from --port (without --tls-port, --port itself speaks HTTPS)");
    if (!cfg->app_path)
        return usage_error("%s", "missing the app script: tendril serve APP.lua");
    return TD_CLI_RUN;
}
