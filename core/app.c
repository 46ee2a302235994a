/* Owns the process-wide pieces and their order: logs and limits, then the
 * loop, the vm and its library, the app's top level, the listener; and on
 * SIGTERM/SIGINT the drain, then teardown in reverse with a check that the
 * loop closes clean. `tendril run` is the same process without the HTTP
 * side: its script runs in a task, and the loop stops once that task and
 * everything it started (threads, tcp.listen listeners) are done. */
#include "app.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api.h"
#include "http.h"
#include "log.h"
#include "reload.h"
#include "sock.h"
#include "stall.h"
#include "tls.h"
#include "vm.h"

typedef struct td_app {
    const td_config *cfg;
    const td_worker *w;
    td_worker_slot *slot; /* the worker's beat; NULL alone */
    uv_loop_t loop;
    td_transport *tp;
    td_http_server *hs;
    td_vm *vm;
    uv_async_t stop_async; /* wakes the loop for a stop signal */
    uv_signal_t sigusr1;   /* reopens the log files */
    uv_timer_t shutdown_timer;
    uv_prepare_t log_flusher;
    uv_timer_t trimmer;
    uv_timer_t heartbeat; /* turns an idle worker's loop (slot only) */
    td_reload *reload;
    td_tls_server *tls; /* the HTTPS listener's certificates; NULL: none */
    int stopping;
    int awaiting_daemons; /* drained: the loop stops once the runtime services have ended */
    int finished;         /* the loop was told to stop: the teardown follows, Lua goes first */
    int cut_off;
    /* tendril run: the script's task ended; the exit status it chose. */
    int script_done;
    int run_exit;
} td_app;

/* Why the app could not start: on stderr, or in a worker the error log
 * (its lines name the worker; the supervisor's own says it died). */
__attribute__((format(printf, 1, 2))) static void startup_error(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (td_log_worker() > 0)
        td_log(TD_LOG_ERROR, "%s", msg);
    else
        fprintf(stderr, "tendril: %s\n", msg);
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void beat(td_app *app) {
    if (app->slot)
        atomic_fetch_add_explicit(&app->slot->beat, 1, memory_order_relaxed);
}

static void finish(td_app *app);

/* tendril run is over once its script returned and no task it started
 * (a thread, a session) is alive, nor a tcp.listen listener. Runtime
 * services (daemons: a bus bridge) are then stopped, and it ends when they
 * have. */
static void check_run_done(td_app *app) {
    if (!app->script_done || app->stopping || app->finished)
        return;
    if (app->cfg->run_no_wait) {
        finish(app);
        return;
    }
    td_vm_stats st;
    td_vm_stats_get(app->vm, &st);
    if (st.tasks - st.daemons != st.pooled || td_api_tcp_listeners() != 0)
        return;
    if (st.daemons == 0)
        finish(app);
    else
        td_vm_stop_daemons(app->vm);
}

/* The drain is over: the runtime services (a bus bridge, tendril.redis's
 * reader), which served the requests drained, stop now; the loop stops once
 * they have ended (a turn or two: every wait of theirs fails at once). */
static void drained(td_app *app) {
    if (app->finished)
        return; /* (the teardown's closing connections: the vm is gone) */
    td_vm_stop_daemons(app->vm);
    td_vm_stats st;
    td_vm_stats_get(app->vm, &st);
    if (st.daemons == 0)
        finish(app);
    else
        app->awaiting_daemons = 1;
}

/* Once per loop turn: the access log's lines go out, and a worker's
 * heartbeat moves. */
static void on_loop_turn(uv_prepare_t *p) {
    td_app *app = p->data;
    td_log_access_flush();
    beat(app);
    if (app->cfg->command == TD_CMD_RUN)
        check_run_done(app);
    else if (app->awaiting_daemons && !app->finished) {
        td_vm_stats st;
        td_vm_stats_get(app->vm, &st);
        if (st.daemons == 0)
            finish(app);
    }
}

/* The supervisor kills a worker whose beat stood still for --stall-kill
 * seconds, measured from when it saw the beat last move: an idle loop
 * turns every 100 ms (a quarter of a shorter --stall-kill), so a worker
 * that sat idle before it stuck is not killed early by more than that. */
static void on_heartbeat(uv_timer_t *t) {
    beat(t->data);
    td_api_shared_tick();
}

static void start_heartbeat(td_app *app) {
    if (!app->slot)
        return;
    double ms = app->cfg->stall_kill * 250.0;
    uint64_t every = ms <= 0 || ms > 100 ? 100 : ms < 10 ? 10 : (uint64_t)ms;
    uv_timer_start(&app->heartbeat, on_heartbeat, every, every);
    uv_unref((uv_handle_t *)&app->heartbeat);
}

/* ---- the Lua side ---- */

static void open_core(td_app *app) {
    lua_State *L = td_vm_state(app->vm);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_newtable(L);
    td_api_tendril_open(L, app->vm);
    td_api_sleep_open(L, app->vm);
    td_api_http_open(L, app->vm, app->hs, (uint64_t)(app->cfg->request_timeout * 1000.0));
    td_api_http_set_timings(!app->cfg->no_timings);
    td_api_tcp_open(L, app->vm, app->tp);
    td_api_tls_open(L, app->vm);
    td_api_http_client_open(L, app->vm, app->tp);
    td_api_thread_open(L, app->vm);
    td_api_dns_open(L, app->vm);
    td_api_pg_open(L, app->vm);
    td_api_fs_open(L, app->vm);
    td_api_gzip_open(L);
    td_api_process_open(L, app->vm);
    td_api_coroutine_open(L, app->vm);
    td_api_websocket_open(L, app->vm, app->hs);
    td_api_shared_open(L, app->vm, app->w->shared);
    lua_pushinteger(L, app->w->id);
    lua_setfield(L, -2, "worker_id");
    lua_pushinteger(L, app->w->count);
    lua_setfield(L, -2, "worker_count");
    lua_setfield(L, -2, "tendril.core");
    lua_pop(L, 2);
}

/* The app's directory comes first on package.path. */
static void set_app_path(lua_State *L, const char *app_path) {
    const char *slash = strrchr(app_path, '/');
    if (!slash)
        lua_pushliteral(L, ".");
    else if (slash == app_path)
        lua_pushliteral(L, "");
    else
        lua_pushlstring(L, app_path, (size_t)(slash - app_path));
    const char *dir = lua_tostring(L, -1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 3);
}

/* [-0, +1] require(name), errors returned as a message. */
static int require_module(lua_State *L, const char *name) {
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    return lua_pcall(L, 1, 1, 0);
}

/* The library, for serve and run alike: the core API, the script's
 * directory first on package.path, the vm's guards, tendril.boot and the
 * request driver (a script may serve too: tendril.testing). Leaves
 * tendril.server on the stack; -1 when something did not load. */
static int open_runtime(td_app *app, const char *path) {
    lua_State *L = td_vm_state(app->vm);
    open_core(app);
    set_app_path(L, path);
    td_vm_set_stall_guard(app->vm, app->cfg->stall_warn_ms, (uint64_t)(app->cfg->shutdown_timeout * 1000.0));
    td_vm_set_memory_limit(app->vm, app->cfg->lua_memory_limit);
    if (require_module(L, "tendril.boot") != 0 || (lua_pop(L, 1), require_module(L, "tendril.server")) != 0) {
        startup_error("cannot load the runtime library: %s", lua_tostring(L, -1));
        return -1;
    }
    lua_getfield(L, -1, "driver");
    td_vm_set_pool_function(app->vm);
    return 0;
}

/* Loads the library and runs the app's top level as generation 1 (in a
 * task, so it may wait). Returns 0 when the app is ready to serve. */
static int load_app(td_app *app) {
    lua_State *L = td_vm_state(app->vm);
    char abs_path[PATH_MAX];
    const char *path = realpath(app->cfg->app_path, abs_path) ? abs_path : app->cfg->app_path;
    if (open_runtime(app, path) != 0)
        return -1;
    lua_pop(L, 1);
    if (require_module(L, "tendril.generation") != 0) {
        startup_error("cannot load the runtime library: %s", lua_tostring(L, -1));
        return -1;
    }
    lua_getfield(L, -1, "set_app");
    lua_pushstring(L, path);
    const char *slash = strrchr(path, '/');
    if (slash && slash != path)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushstring(L, slash ? "/" : ".");
    lua_call(L, 2, 0);
    app->reload = td_reload_new(app->vm, lua_gettop(L), !app->cfg->no_watch);
    lua_pop(L, 1);
    if (!app->reload) {
        startup_error("out of memory");
        return -1;
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "tendril.core");
    td_reload_open_api(L, app->reload);
    lua_pop(L, 3);
    char err[600];
    if (td_reload_first(app->reload, err, sizeof err) != 0) {
        startup_error("%s", err);
        return -1;
    }
    return 0;
}

/* ---- tendril run ---- */

/* The script returned (an integer is the exit status) or raised (the vm
 * logged it with its traceback: 1). */
static void on_script_end(td_task *t, int status) {
    td_app *app = t->data;
    app->script_done = 1;
    if (status != 0)
        app->run_exit = 1;
    else if (lua_type(t->co, 1) == LUA_TNUMBER)
        app->run_exit = (int)lua_tointeger(t->co, 1) & 0xff;
}

/* Loads the library and starts the script (or -e's code) in a task. */
static int load_script(td_app *app) {
    const td_config *cfg = app->cfg;
    lua_State *L = td_vm_state(app->vm);
    char abs_path[PATH_MAX];
    const char *path = NULL;
    if (cfg->app_path)
        path = realpath(cfg->app_path, abs_path) ? abs_path : cfg->app_path;
    if (open_runtime(app, path ? path : "./-e") != 0)
        return -1;
    lua_pop(L, 1);
    if (require_module(L, "tendril.runner") != 0) {
        startup_error("cannot load the runtime library: %s", lua_tostring(L, -1));
        return -1;
    }
    lua_getfield(L, -1, "prepare");
    if (cfg->app_path)
        lua_pushstring(L, cfg->app_path);
    else
        lua_pushnil(L);
    if (cfg->run_code)
        lua_pushstring(L, cfg->run_code);
    else
        lua_pushnil(L);
    lua_createtable(L, cfg->run_nargs, 0);
    for (int i = 0; i < cfg->run_nargs; i++) {
        lua_pushstring(L, cfg->run_args[i]);
        lua_rawseti(L, -2, i + 1);
    }
    if (lua_pcall(L, 3, 2, 0) != 0 || lua_isnil(L, -2)) {
        startup_error("%s", lua_tostring(L, -1));
        return -1;
    }
    lua_pop(L, 1);
    td_task *t = td_vm_task_new(app->vm, on_script_end);
    lua_pop(L, 1); /* the runner module */
    if (!t) {
        startup_error("out of memory");
        return -1;
    }
    t->data = app;
    t->label = "the script";
    td_vm_resume(t, 0);
    return 0;
}

/* ---- memory after a burst ---- */

/* Connections that must have gone since the last look for it to count as
 * the end of a burst. */
#define TD_TRIM_AFTER 256

/* Once a second: when many connections went since the last look, the
 * burst's garbage is collected and free pages go back to the system
 * (malloc keeps freed memory otherwise; Lua's is malloc's too), so
 * resident memory returns near its level before the burst. */
static void on_trim_tick(uv_timer_t *t) {
    td_app *app = t->data;
    td_transport *tp = app->tp;
    if (tp->peak >= tp->nconns + TD_TRIM_AFTER) {
        td_vm_collect(app->vm);
        malloc_trim(0);
    }
    tp->peak = tp->nconns;
}

/* ---- stopping ---- */

static void finish(td_app *app) {
    app->finished = 1;
    uv_stop(&app->loop);
}


/* What a drain waits for: accepted connections (HTTP and tcp.listen) and
 * tcp.listen sessions whose handler still runs. */
static size_t in_flight(td_app *app) { return app->tp->naccepted + td_api_tcp_sessions(); }

static void on_shutdown_timeout(uv_timer_t *t) {
    td_app *app = t->data;
    if (in_flight(app) > 0) {
        td_log(TD_LOG_WARN, "shutdown timeout: closing %zu connection(s) and %zu tcp.listen session(s) in flight",
               app->tp->naccepted, td_api_tcp_sessions());
        app->cut_off = 1;
    }
    finish(app);
}

static void on_stop_signal(td_app *app, int signum) {
    if (app->cfg->command == TD_CMD_RUN) {
        /* A script is stopped at once, as luajit would be. */
        app->run_exit = 128 + signum;
        app->stopping = 1;
        finish(app);
        return;
    }
    if (app->stopping) {
        if (signum == SIGINT) {
            /* A second Ctrl-C: stop waiting. */
            app->cut_off = in_flight(app) > 0;
            finish(app);
        }
        return;
    }
    app->stopping = 1;
    td_log(TD_LOG_NOTICE, "%s: shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
    /* Ending streams and WebSockets wakes their tasks: they run after
     * this, not inside the walks over the connections. */
    td_vm_hold(app->vm);
    td_http_server_drain(app->hs);
    td_api_websocket_drain();
    td_vm_release(app->vm);
    td_api_tcp_close_listeners();
    td_sock_close_pooled();
    td_reload_stop(app->reload);
    td_api_shared_stop();
    /* (It bounds the runtime services' end too.) */
    uv_timer_start(&app->shutdown_timer, on_shutdown_timeout, (uint64_t)(app->cfg->shutdown_timeout * 1000.0), 0);
    if (in_flight(app) == 0)
        drained(app);
}

/* Stop signals have their own handler rather than uv_signal's: the
 * watchdog must learn of one even while a stuck resume keeps the loop
 * from running (stall.h). The loop reads the counts through an async
 * handle; NULL before and after the loop runs (signals are then counted
 * and dropped). */
static uv_async_t *_Atomic stop_async;
static atomic_uint stop_counts[2]; /* SIGTERM, SIGINT */

static void on_stop_signal_raw(int signum) {
    int saved = errno;
    atomic_fetch_add(&stop_counts[signum == SIGINT], 1);
    uv_async_t *a = stop_async;
    if (a) {
        td_stall_stop_signal();
        uv_async_send(a);
    }
    errno = saved;
}

static void on_stop_async(uv_async_t *a) {
    td_app *app = a->data;
    for (int i = 0; i < 2; i++) {
        for (unsigned n = atomic_exchange(&stop_counts[i], 0); n > 0; n--)
            on_stop_signal(app, i ? SIGINT : SIGTERM);
    }
}

static void catch_stop_signals(td_app *app) {
    atomic_store(&stop_counts[0], 0);
    atomic_store(&stop_counts[1], 0);
    stop_async = &app->stop_async;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal_raw;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static void on_usr1(uv_signal_t *sig, int signum) {
    (void)sig, (void)signum;
    td_log_reopen();
    td_log(TD_LOG_NOTICE, "SIGUSR1: log files reopened");
}

/* The last accepted connection or tcp.listen session ended. */
static void check_drained(td_app *app) {
    if (app->stopping && !app->awaiting_daemons && in_flight(app) == 0)
        drained(app);
}

static void on_empty(td_transport *tp) { check_drained(tp->data); }

static void on_sessions_over(void *ud) { check_drained(ud); }

/* What the Lua side still held when the loop stopped: a wait is a task
 * nobody resumed (a thread still sleeping, or a leak), cancelled now. The
 * tests read these lines: after a clean drain there must be none. */
static void report_leftovers(td_vm *vm) {
    td_vm_stats st;
    td_vm_stats_get(vm, &st);
    if (st.waits)
        td_log(TD_LOG_WARN, "exit: %zu wait(s) still pending were cancelled (%zu task(s), %zu pooled)", st.waits,
               st.tasks, st.pooled);
    if (st.anchored != st.tasks)
        td_log(TD_LOG_CRIT, "teardown: %zu coroutine(s) anchored for %zu task(s)", st.anchored, st.tasks);
}

static void walk_report(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        td_log(TD_LOG_CRIT, "teardown: a %s handle is still open", uv_handle_type_name(h->type));
}

static void close_handle(uv_handle_t *h) {
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* ---- certificates ---- */

static td_tls_server *load_certificates(const td_config *cfg, char *err, size_t size) {
    return td_tls_server_new(cfg->tls_certs, cfg->tls_keys, cfg->ntls_certs, 1, err, size);
}

/* A reload rereads the certificates: a renewed one serves new connections;
 * a bad one leaves the old in place. Open connections are untouched. */
static void reload_certificates(void *ud) {
    td_app *app = ud;
    if (!app->tls)
        return;
    char err[512];
    td_tls_server *s = load_certificates(app->cfg, err, sizeof err);
    if (!s) {
        td_log(TD_LOG_ERROR, "reload: tls: %s; the previous certificates keep serving", err);
        return;
    }
    td_http_server_set_tls(app->hs, s);
    td_tls_server_unref(app->tls);
    app->tls = s;
    td_log(TD_LOG_NOTICE, "reload: tls: certificates reread");
}

/* ---- running ---- */

void td_app_print_url(const char *scheme, const char *host, int port) {
    if (strchr(host, ':'))
        printf("listening on %s://[%s]:%d\n", scheme, host, port);
    else
        printf("listening on %s://%s:%d\n", scheme, host, port);
}

void td_app_ports(const td_config *cfg, int *plain, int *tls) {
    int secure = cfg->ntls_certs > 0;
    *plain = secure && cfg->tls_port < 0 ? -1 : cfg->port;
    *tls = !secure ? -1 : cfg->tls_port < 0 ? cfg->port : cfg->tls_port;
}

/* The listeners: plain on --port and HTTPS on --tls-port, or HTTPS alone on
 * --port; the supervisor's sockets when it made them. 0, or 1 after saying
 * why on stderr. */
static int listen_all(td_app *app) {
    const td_config *cfg = app->cfg;
    const td_worker *w = app->w;
    int plain_port, tls_port, rc;
    td_app_ports(cfg, &plain_port, &tls_port);
    if (plain_port >= 0) {
        int fd = w->http_fd >= 0 ? w->http_fd : td_listen_socket(cfg->host, plain_port, 0);
        if ((rc = td_http_server_listen(app->hs, fd)) != 0) {
            startup_error("cannot listen on %s port %d: %s", cfg->host, plain_port, uv_strerror(rc));
            return 1;
        }
    }
    if (tls_port >= 0) {
        int fd = w->tls_fd >= 0 ? w->tls_fd : td_listen_socket(cfg->host, tls_port, 0);
        if ((rc = td_http_server_listen_tls(app->hs, fd, app->tls)) != 0) {
            startup_error("cannot listen on %s port %d: %s", cfg->host, tls_port, uv_strerror(rc));
            return 1;
        }
    }
    if (w->ready_fd >= 0)
        return 0; /* the supervisor prints the URLs once every worker serves */
    if (plain_port >= 0)
        td_app_print_url("http", cfg->host, td_http_server_port(app->hs));
    if (tls_port >= 0)
        td_app_print_url("https", cfg->host, td_http_server_tls_port(app->hs));
    fflush(stdout);
    return 0;
}

/* A worker tells the supervisor it serves: after its signal handlers are in
 * place, since the supervisor forwards signals from then on. */
static void tell_ready(td_app *app) {
    if (app->w->ready_fd < 0)
        return;
    /* Its id and pid: a replacement is not taken for the worker before it. */
    int rec[2] = {app->w->id, (int)getpid()};
    ssize_t n;
    do
        n = write(app->w->ready_fd, rec, sizeof rec);
    while (n < 0 && errno == EINTR);
}

int td_app_run(const td_config *cfg, const td_worker *w) {
    td_app app = {.cfg = cfg, .w = w};
    if (w->count > 1) {
        td_log_set_worker(w->id);
        app.slot = &w->shared->slots[w->id - 1];
        td_stall_publish(app.slot->stall, sizeof app.slot->stall);
    }
    int rc;
    signal(SIGPIPE, SIG_IGN);
    /* A handler's print reaches a pipe (systemd, Docker) at once. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    raise_fd_limit();
    /* libuv's thread pool runs DNS lookups and file I/O; its default of
     * four lets a burst of slow lookups starve the files. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);
    if ((rc = td_log_open_error(cfg->error_log)) != 0) {
        startup_error("cannot open the error log %s: %s", cfg->error_log, uv_strerror(rc));
        return 1;
    }
    td_log_set_access_format((td_access_format)cfg->access_log_format);
    if ((rc = td_log_open_access(cfg->access_log)) != 0) {
        startup_error("cannot open the access log %s: %s", cfg->access_log, uv_strerror(rc));
        td_log_close();
        return 1;
    }
    if (cfg->ntls_certs > 0) {
        char err[512];
        if (!(app.tls = load_certificates(cfg, err, sizeof err))) {
            startup_error("tls: %s", err);
            td_log_close();
            return 1;
        }
    }
    uv_loop_init(&app.loop);
    app.tp = malloc(sizeof *app.tp);
    app.hs = malloc(sizeof *app.hs);
    td_http_config hc = {
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->max_body_bytes,
        .header_timeout_ms = (uint64_t)(cfg->header_timeout * 1000.0),
        .body_timeout_ms = (uint64_t)(cfg->body_timeout * 1000.0),
        .keepalive_timeout_ms = (uint64_t)(cfg->keepalive_timeout * 1000.0),
        .send_timeout_ms = (uint64_t)(cfg->send_timeout * 1000.0),
    };
    app.vm = app.hs && app.tp ? td_vm_new(&app.loop) : NULL;
    if (!app.vm || td_transport_init(app.tp, &app.loop, cfg->max_connections) != 0) {
        startup_error("out of memory");
        return 1;
    }
    td_http_server_init(app.hs, app.tp, &hc, td_api_http_dispatch, td_api_http_over, app.vm);
    /* The transport never runs Lua: tasks its callbacks wake run when the
     * callback is done. */
    app.tp->enter = td_vm_hold;
    app.tp->leave = td_vm_release;
    app.tp->hook_ud = app.vm;
    app.tp->data = &app;
    app.tp->on_empty = on_empty;
    td_api_tcp_on_sessions_over(on_sessions_over, &app);
    uv_async_init(&app.loop, &app.stop_async, on_stop_async);
    uv_signal_init(&app.loop, &app.sigusr1);
    uv_timer_init(&app.loop, &app.shutdown_timer);
    uv_prepare_init(&app.loop, &app.log_flusher);
    uv_timer_init(&app.loop, &app.trimmer);
    uv_timer_init(&app.loop, &app.heartbeat);
    app.stop_async.data = app.shutdown_timer.data = app.trimmer.data = app.heartbeat.data = app.log_flusher.data =
        &app;

    /* Before the app loads: its top level may wait, and logrotate may come. */
    uv_signal_start(&app.sigusr1, on_usr1, SIGUSR1);
    uv_unref((uv_handle_t *)&app.sigusr1);
    /* Before the app loads too: a top level stuck in a loop is a stuck worker. */
    start_heartbeat(&app);
    int exit_code = 0;
    if (cfg->command == TD_CMD_RUN) {
        catch_stop_signals(&app);
        uv_prepare_start(&app.log_flusher, on_loop_turn);
        if (load_script(&app) != 0) {
            exit_code = 1;
        } else {
            uv_run(&app.loop, UV_RUN_DEFAULT);
            exit_code = app.run_exit;
        }
    } else if (load_app(&app) != 0) {
        exit_code = 1;
    } else if ((catch_stop_signals(&app), listen_all(&app)) != 0) {
        /* (The handlers come before the "listening on" line: a SIGTERM
         * sent as soon as it shows drains, rather than killing.) */
        exit_code = 1;
    } else {
        td_reload_on_reload(app.reload, reload_certificates, &app);
        td_reload_arm(app.reload);
        tell_ready(&app);
        uv_prepare_start(&app.log_flusher, on_loop_turn);
        uv_unref((uv_handle_t *)&app.log_flusher);
        uv_timer_start(&app.trimmer, on_trim_tick, 1000, 1000);
        uv_unref((uv_handle_t *)&app.trimmer);
        uv_run(&app.loop, UV_RUN_DEFAULT);
        exit_code = app.cut_off ? 1 : 0;
    }

    /* Teardown, in reverse: Lua first (its waits own libuv handles), then
     * the connections, then our own handles; the loop must close clean. */
    stop_async = NULL;
    td_api_tcp_close_listeners();
    td_reload_stop(app.reload);
    td_api_http_teardown();
    if (cfg->command != TD_CMD_RUN || (!app.stopping && !cfg->run_no_wait))
        report_leftovers(app.vm);
    /* Nothing below may reach into Lua: its tasks and scopes are gone. */
    app.tp->enter = app.tp->leave = NULL;
    app.hs->on_request = NULL;
    app.hs->on_over = NULL;
    app.hs->on_log = NULL;
    size_t lua_left = td_vm_close(app.vm);
    td_reload_free(app.reload);
    if (lua_left) {
        td_log(TD_LOG_CRIT, "teardown: Lua still holds %zu bytes after closing its state", lua_left);
        exit_code = 1;
    }
    td_http_server_drain(app.hs); /* closes the listener */
    td_transport_close(app.tp);
    td_api_websocket_teardown();
    td_api_shared_teardown();
    close_handle((uv_handle_t *)&app.stop_async);
    close_handle((uv_handle_t *)&app.sigusr1);
    close_handle((uv_handle_t *)&app.shutdown_timer);
    close_handle((uv_handle_t *)&app.log_flusher);
    close_handle((uv_handle_t *)&app.trimmer);
    close_handle((uv_handle_t *)&app.heartbeat);
    uv_run(&app.loop, UV_RUN_DEFAULT);
    td_http_server_destroy(app.hs);
    td_transport_destroy(app.tp);
    free(app.hs);
    free(app.tp);
    td_tls_server_unref(app.tls);
    if (td_tls_live() > 0) {
        td_log(TD_LOG_CRIT, "teardown: %zu TLS connection state(s) not freed", td_tls_live());
        exit_code = 1;
    }
    td_tls_shutdown();
    if (uv_loop_close(&app.loop) != 0) {
        uv_walk(&app.loop, walk_report, NULL);
        td_log(TD_LOG_CRIT, "teardown: the event loop did not close clean");
        exit_code = 1;
    }
    td_log_close();
    return exit_code;
}
