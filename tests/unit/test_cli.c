/* td_cli_parse: defaults, options and refusals. */
#include "check.h"
#include "cli.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(td_config *cfg, int argc, const char **argv) {
    /* Usage errors print to stderr; keep the test output readable. */
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    int rc = td_cli_parse(argc, (char **)argv, cfg);
    fclose(stderr);
    stderr = saved;
    return rc;
}

static void test_defaults(void) {
    td_config cfg;
    const char *argv[] = {"tendril", "serve", "app.lua"};
    CHECK_EQ_INT(parse(&cfg, 3, argv), TD_CLI_RUN);
    CHECK(strcmp(cfg.app_path, "app.lua") == 0);
    CHECK(strcmp(cfg.host, "127.0.0.1") == 0);
    CHECK_EQ_INT(cfg.port, 8080);
    CHECK_EQ_INT(cfg.max_header_bytes, 16384);
    CHECK_EQ_INT(cfg.max_body_bytes, 1048576);
    CHECK_EQ_INT(cfg.max_connections, 0);
    CHECK(cfg.header_timeout == 10 && cfg.body_timeout == 10);
    CHECK(cfg.keepalive_timeout == 5 && cfg.shutdown_timeout == 10);
    CHECK(cfg.access_log == NULL && cfg.error_log == NULL);
    CHECK_EQ_INT(cfg.stall_warn_ms, 200);
    CHECK_EQ_INT(cfg.no_watch, 0);
    CHECK(cfg.send_timeout == 60);
    CHECK(cfg.request_timeout == 60);
    CHECK_EQ_INT(cfg.lua_memory_limit, 0);
}

/* What a usage error says, for one command line. */
static void said(const char *expect, int argc, const char **argv) {
    td_config cfg;
    char text[512] = "";
    FILE *saved = stderr;
    stderr = tmpfile();
    CHECK_EQ_INT(td_cli_parse(argc, (char **)argv, &cfg), TD_CLI_USAGE);
    rewind(stderr);
    size_t n = fread(text, 1, sizeof text - 1, stderr);
    text[n] = '\0';
    fclose(stderr);
    stderr = saved;
    if (!strstr(text, expect))
        fprintf(stderr, "expected '%s' in: %s\n", expect, text);
    CHECK(strstr(text, expect) != NULL);
}

static void test_messages(void) {
    const char *last[] = {"tendril", "serve", "app.lua", "--bogus"};
    said("unknown option '--bogus'", 4, last);
    const char *valued[] = {"tendril", "serve", "app.lua", "--bogus", "1"};
    said("unknown option '--bogus'", 5, valued);
    const char *missing[] = {"tendril", "serve", "app.lua", "--port"};
    said("option --port needs a value", 4, missing);
    const char *small[] = {"tendril", "serve", "app.lua", "--lua-memory-limit", "1m"};
    said("--lua-memory-limit takes a number of bytes", 5, small);
}

static void test_memory_limit(void) {
    td_config cfg;
    const char *cases[][2] = {{"64m", "67108864"}, {"2G", "2147483648"}, {"5000000", "5000000"},
                              {"4096k", "4194304"}, {"0", "0"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[] = {"tendril", "serve", "a.lua", "--lua-memory-limit", cases[i][0]};
        CHECK_EQ_INT(parse(&cfg, 5, argv), TD_CLI_RUN);
        CHECK(cfg.lua_memory_limit == (size_t)strtoull(cases[i][1], NULL, 10));
    }
    const char *bad[] = {"12x", "-1", "m", "1.5m", "99999999999g"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[] = {"tendril", "serve", "a.lua", "--lua-memory-limit", bad[i]};
        CHECK_EQ_INT(parse(&cfg, 5, argv), TD_CLI_USAGE);
    }
}

static void test_every_option(void) {
    td_config cfg;
    const char *argv[] = {"tendril", "serve", "--host", "::1", "--port=0", "a.lua", "--access-log", "-",
                          "--error-log", "/tmp/e.log", "--max-header-bytes", "8192", "--max-body-bytes=0",
                          "--max-connections", "100", "--header-timeout", "0.5", "--body-timeout", "2",
                          "--keepalive-timeout", "1.5", "--shutdown-timeout", "3", "--stall-warn-ms", "0",
                          "--no-watch", "--send-timeout", "2.5", "--request-timeout", "0"};
    CHECK_EQ_INT(parse(&cfg, (int)(sizeof argv / sizeof argv[0]), argv), TD_CLI_RUN);
    CHECK(strcmp(cfg.host, "::1") == 0);
    CHECK_EQ_INT(cfg.port, 0);
    CHECK(strcmp(cfg.app_path, "a.lua") == 0);
    CHECK(strcmp(cfg.access_log, "-") == 0);
    CHECK(strcmp(cfg.error_log, "/tmp/e.log") == 0);
    CHECK_EQ_INT(cfg.max_header_bytes, 8192);
    CHECK_EQ_INT(cfg.max_body_bytes, 0);
    CHECK_EQ_INT(cfg.max_connections, 100);
    CHECK(cfg.header_timeout == 0.5 && cfg.body_timeout == 2);
    CHECK(cfg.keepalive_timeout == 1.5 && cfg.shutdown_timeout == 3);
    CHECK_EQ_INT(cfg.stall_warn_ms, 0);
    CHECK_EQ_INT(cfg.no_watch, 1);
    CHECK(cfg.send_timeout == 2.5);
    CHECK(cfg.request_timeout == 0);
}

static void test_refusals(void) {
    td_config cfg;
    const char *cases[][5] = {
        {"tendril", NULL},
        {"tendril", "start", "a.lua", NULL},
        {"tendril", "serve", NULL},
        {"tendril", "serve", "a.lua", "b.lua"},
        {"tendril", "serve", "a.lua", "--port"},
        {"tendril", "serve", "a.lua", "--port", "65536"},
        {"tendril", "serve", "a.lua", "--port", "-1"},
        {"tendril", "serve", "a.lua", "--port", "80x"},
        {"tendril", "serve", "a.lua", "--header-timeout", "0"},
        {"tendril", "serve", "a.lua", "--body-timeout", "nan"},
        {"tendril", "serve", "a.lua", "--max-connections", "0"},
        {"tendril", "serve", "a.lua", "--max-header-bytes", "10"},
        {"tendril", "serve", "a.lua", "--frobnicate", "1"},
        {"tendril", "serve", "a.lua", "--stall-warn-ms", "-5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int argc = 0;
        while (argc < 5 && cases[i][argc])
            argc++;
        int rc = parse(&cfg, argc, cases[i]);
        if (rc != TD_CLI_USAGE)
            fprintf(stderr, "case %zu was accepted\n", i);
        CHECK_EQ_INT(rc, TD_CLI_USAGE);
    }
}

static void test_tls_options(void) {
    td_config cfg;
    const char *ok[] = {"tendril", "serve", "a.lua", "--tls-cert", "a.pem", "--tls-key", "a.key",
                        "--tls-cert=b.pem", "--tls-key=b.key", "--tls-port", "8443"};
    CHECK_EQ_INT(parse(&cfg, (int)(sizeof ok / sizeof ok[0]), ok), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.ntls_certs, 2);
    CHECK_EQ_INT(cfg.ntls_keys, 2);
    CHECK(strcmp(cfg.tls_certs[1], "b.pem") == 0 && strcmp(cfg.tls_keys[0], "a.key") == 0);
    CHECK_EQ_INT(cfg.tls_port, 8443);
    const char *alone[] = {"tendril", "serve", "a.lua", "--tls-cert", "a.pem", "--tls-key", "a.key"};
    CHECK_EQ_INT(parse(&cfg, 7, alone), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.tls_port, -1); /* --port speaks HTTPS */
    const char *cases[][9] = {
        {"tendril", "serve", "a.lua", "--tls-cert", "a.pem", NULL},
        {"tendril", "serve", "a.lua", "--tls-port", "8443", NULL},
        {"tendril", "serve", "a.lua", "--tls-cert", "a.pem", "--tls-key", "a.key", "--tls-port=8080", NULL},
        {"tendril", "serve", "a.lua", "--tls-cert", "a.pem", "--tls-key", "a.key", "--tls-port=70000", NULL},
        {"tendril", "serve", "a.lua", "--tls-cert", "", "--tls-key", "a.key", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int argc = 0;
        while (argc < 9 && cases[i][argc])
            argc++;
        int rc = parse(&cfg, argc, cases[i]);
        if (rc != TD_CLI_USAGE)
            fprintf(stderr, "tls case %zu was accepted\n", i);
        CHECK_EQ_INT(rc, TD_CLI_USAGE);
    }
}

static void test_worker_options(void) {
    td_config cfg;
    const char *none[] = {"tendril", "serve", "a.lua"};
    CHECK_EQ_INT(parse(&cfg, 3, none), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.workers, 1);
    CHECK(cfg.stall_kill == 10);
    CHECK_EQ_INT(cfg.nshared, 0);
    const char *ok[] = {"tendril", "serve", "a.lua", "--workers", "auto", "--stall-kill=0",
                        "--shared", "cache=10m", "--shared=hits_2=64k"};
    CHECK_EQ_INT(parse(&cfg, 9, ok), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.workers, 0);
    CHECK(cfg.stall_kill == 0);
    CHECK_EQ_INT(cfg.nshared, 2);
    CHECK(strcmp(cfg.shared_names[0], "cache") == 0 && cfg.shared_sizes[0] == (size_t)10 << 20);
    CHECK(strcmp(cfg.shared_names[1], "hits_2") == 0 && cfg.shared_sizes[1] == (size_t)64 << 10);
    const char *four[] = {"tendril", "serve", "a.lua", "--workers", "4", "--stall-kill", "2.5"};
    CHECK_EQ_INT(parse(&cfg, 7, four), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.workers, 4);
    CHECK(cfg.stall_kill == 2.5);
    const char *w0[] = {"tendril", "serve", "a.lua", "--workers", "0"};
    said("--workers takes auto or a number from 1 to 64, not '0'", 5, w0);
    const char *w65[] = {"tendril", "serve", "a.lua", "--workers=65"};
    said("--workers takes auto or a number from 1 to 64, not '65'", 4, w65);
    const char *small[] = {"tendril", "serve", "a.lua", "--shared", "c=1k"};
    said("--shared: the size is a number of bytes of 64k or more", 5, small);
    const char *noname[] = {"tendril", "serve", "a.lua", "--shared", "=1m"};
    said("--shared takes NAME=SIZE", 5, noname);
    const char *badname[] = {"tendril", "serve", "a.lua", "--shared", "a b=1m"};
    said("--shared takes NAME=SIZE", 5, badname);
    const char *twice[] = {"tendril", "serve", "a.lua", "--shared", "c=1m", "--shared", "c=2m"};
    said("--shared: the dictionary 'c' is declared twice", 7, twice);
    const char *neg[] = {"tendril", "serve", "a.lua", "--stall-kill", "-1"};
    said("--stall-kill takes a number of seconds, 0 (off) or at least 1, not '-1'", 5, neg);
    const char *tiny[] = {"tendril", "serve", "a.lua", "--stall-kill", "0.5"};
    said("--stall-kill takes a number of seconds, 0 (off) or at least 1, not '0.5'", 5, tiny);
}

static void test_access_log_format(void) {
    td_config cfg;
    const char *dflt[] = {"tendril", "serve", "a.lua"};
    CHECK_EQ_INT(parse(&cfg, 3, dflt), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.access_log_format, TD_ACCESS_COMMON);
    const char *json[] = {"tendril", "serve", "a.lua", "--access-log-format", "json"};
    CHECK_EQ_INT(parse(&cfg, 5, json), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.access_log_format, TD_ACCESS_JSON);
    const char *combined[] = {"tendril", "serve", "a.lua", "--access-log-format=combined"};
    CHECK_EQ_INT(parse(&cfg, 4, combined), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.access_log_format, TD_ACCESS_COMBINED);
    const char *bad[] = {"tendril", "serve", "a.lua", "--access-log-format", "xml"};
    said("--access-log-format takes common, combined or json, not 'xml'", 5, bad);
}

/* tendril run: the script, or -e's code, then the script's own arguments
 * (options included: they are not tendril's). */
static void test_run(void) {
    td_config cfg;
    const char *script[] = {"tendril", "run", "job.lua", "a", "--port", "1"};
    CHECK_EQ_INT(parse(&cfg, 6, script), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.command, TD_CMD_RUN);
    CHECK(strcmp(cfg.app_path, "job.lua") == 0 && cfg.run_code == NULL);
    CHECK_EQ_INT(cfg.run_nargs, 3);
    CHECK(strcmp(cfg.run_args[0], "a") == 0 && strcmp(cfg.run_args[1], "--port") == 0);
    CHECK(cfg.request_timeout == 0 && cfg.no_watch);
    const char *code[] = {"tendril", "run", "-e", "print(1)", "x"};
    CHECK_EQ_INT(parse(&cfg, 5, code), TD_CLI_RUN);
    CHECK(cfg.app_path == NULL && strcmp(cfg.run_code, "print(1)") == 0);
    CHECK_EQ_INT(cfg.run_nargs, 1);
    const char *serve[] = {"tendril", "serve", "app.lua"};
    CHECK_EQ_INT(parse(&cfg, 3, serve), TD_CLI_RUN);
    CHECK_EQ_INT(cfg.command, TD_CMD_SERVE);
    const char *none[] = {"tendril", "run"};
    said("missing the script", 2, none);
    const char *bare_e[] = {"tendril", "run", "-e"};
    said("-e needs the code", 3, bare_e);
    const char *option[] = {"tendril", "run", "--workers", "2", "x.lua"};
    said("unknown option '--workers' for run", 5, option);
    const char *other[] = {"tendril", "frobnicate"};
    said("the commands are serve, run, test and new", 2, other);
}

int main(void) {
    test_defaults();
    test_run();
    test_access_log_format();
    test_worker_options();
    test_tls_options();
    test_every_option();
    test_refusals();
    test_messages();
    test_memory_limit();
    return check_result("test_cli");
}
