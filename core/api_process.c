/* tendril.run: a child process with its stdin fed and its stdout and stderr
 * collected, waited for without blocking the loop. The child leads its own
 * process group, so a timeout kills everything it started.
 *
 * One record owns the process handle, three pipes and a timer; the
 * coroutine is resumed once the child exited and every handle closed, and
 * the record is freed right then (or, after teardown cancelled the wait,
 * by the last close callback). The timeout covers the whole call, not only
 * the child: a grandchild that keeps stdout open is killed with the group,
 * and the pipes are closed whoever still holds them. */
#include <lauxlib.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "clock.h"
#include "errors.h"

/* Output kept per stream; a child that writes more is killed. */
#define TD_RUN_MAX_OUTPUT ((size_t)64 << 20)

typedef struct run_wait {
    td_wait wait;
    td_vm *vm;
    uv_process_t proc;
    uv_pipe_t in, out, err;
    uv_timer_t timer;
    uv_write_t write_req;
    td_buf out_buf, err_buf;
    char *input;
    size_t input_len;
    int64_t exit_status;
    int term_signal;
    int open;        /* handles not yet closed */
    int exited;
    int failed;      /* a TD_E/UV code for the caller, or 0 */
    int in_call;     /* still inside tendril.run: do not resume */
    int cancelled;
    int waiting;     /* the coroutine yielded */
} run_wait;

static void finish_if_done(run_wait *r);

static void on_closed(uv_handle_t *h) {
    run_wait *r = h->data;
    r->open--;
    finish_if_done(r);
}

static void close_handle(run_wait *r, uv_handle_t *h) {
    if (!uv_is_closing(h))
        uv_close(h, on_closed);
}

static void close_all(run_wait *r) {
    close_handle(r, (uv_handle_t *)&r->in);
    close_handle(r, (uv_handle_t *)&r->out);
    close_handle(r, (uv_handle_t *)&r->err);
    close_handle(r, (uv_handle_t *)&r->timer);
    /* Also after a failed spawn: libuv initialized the handle. */
    close_handle(r, (uv_handle_t *)&r->proc);
}

static void free_run(run_wait *r) {
    td_buf_free(&r->out_buf);
    td_buf_free(&r->err_buf);
    free(r->input);
    free(r);
}

static int push_results(lua_State *L, run_wait *r) {
    if (r->failed)
        return td_api_fail(L, r->failed);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)r->exit_status);
    lua_setfield(L, -2, "status");
    if (r->term_signal) {
        lua_pushinteger(L, r->term_signal);
        lua_setfield(L, -2, "signal");
    }
    lua_pushlstring(L, r->out_buf.data ? r->out_buf.data : "", r->out_buf.len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, r->err_buf.data ? r->err_buf.data : "", r->err_buf.len);
    lua_setfield(L, -2, "stderr");
    return 1;
}

static void finish_if_done(run_wait *r) {
    if (r->open > 0 || r->in_call)
        return;
    if (r->cancelled || !r->waiting) {
        free_run(r);
        return;
    }
    td_task *t = r->wait.task;
    lua_State *co = td_vm_wait_end(&r->wait);
    int n = push_results(co, r);
    free_run(r);
    td_vm_resume(t, n);
}

/* The group outlives its leader while any member lives, so this also
 * reaches what the child left running. */
static void kill_group(run_wait *r) {
    if (r->proc.pid > 0)
        kill(-r->proc.pid, SIGKILL);
}

/* Done once the child exited and its output ended: the timer goes. */
static void maybe_done(run_wait *r) {
    if (r->exited && uv_is_closing((uv_handle_t *)&r->out) && uv_is_closing((uv_handle_t *)&r->err))
        close_handle(r, (uv_handle_t *)&r->timer);
}

static void on_child_exit(uv_process_t *p, int64_t status, int signal) {
    run_wait *r = p->data;
    r->exited = 1;
    r->exit_status = status;
    r->term_signal = signal;
    close_handle(r, (uv_handle_t *)&r->proc);
    maybe_done(r);
}

static void on_timeout(uv_timer_t *t) {
    run_wait *r = t->data;
    r->failed = TD_ETIMEOUT;
    kill_group(r);
    /* Whoever still holds the pipes (a process that left the group), the
     * call ends now. The process handle closes when the child is reaped. */
    close_handle(r, (uv_handle_t *)&r->in);
    close_handle(r, (uv_handle_t *)&r->out);
    close_handle(r, (uv_handle_t *)&r->err);
    close_handle(r, (uv_handle_t *)&r->timer);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    run_wait *r = h->data;
    td_buf *b = h == (uv_handle_t *)&r->out ? &r->out_buf : &r->err_buf;
    (void)suggested;
    if (td_buf_reserve(b, 65536) != 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = b->data + b->len;
    buf->len = b->cap - b->len;
}

static void on_output(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    run_wait *r = s->data;
    (void)buf;
    if (nread == 0)
        return;
    if (nread < 0) {
        close_handle(r, (uv_handle_t *)s);
        maybe_done(r);
        return;
    }
    td_buf *b = s == (uv_stream_t *)&r->out ? &r->out_buf : &r->err_buf;
    b->len += (size_t)nread;
    if (b->len > TD_RUN_MAX_OUTPUT && !r->failed) {
        r->failed = TD_ETOOLARGE;
        kill_group(r);
    }
}

static void on_input_written(uv_write_t *req, int status) {
    run_wait *r = req->data;
    (void)status; /* a child that does not read its input is its own business */
    close_handle(r, (uv_handle_t *)&r->in);
}

/* The request is over (or the server stops): the group is killed and the
 * pipes and timer close now; the process handle stays until the child is
 * reaped (closing it first would leave a zombie: libuv reaps only the
 * processes it still watches). The last close frees the record. */
static void cancel_run(td_wait *wait) {
    run_wait *r = td_container_of(wait, run_wait, wait);
    r->cancelled = 1;
    kill_group(r);
    close_handle(r, (uv_handle_t *)&r->in);
    close_handle(r, (uv_handle_t *)&r->out);
    close_handle(r, (uv_handle_t *)&r->err);
    close_handle(r, (uv_handle_t *)&r->timer);
    if (r->exited)
        close_handle(r, (uv_handle_t *)&r->proc);
}

/* [-4, +1|2] run(argv, input, timeout, cwd) -> {status, signal, stdout, stderr} | nil, err; yields */
static int run(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t input_len = 0;
    const char *input = luaL_optlstring(L, 2, NULL, &input_len);
    double timeout = luaL_checknumber(L, 3);
    const char *cwd = luaL_optstring(L, 4, NULL);
    int argc = (int)lua_objlen(L, 1);
    if (argc < 1)
        return luaL_error(L, "tendril.run: argv must hold at least the program");
    td_task *t = td_api_wait_start(L, "tendril.run", 0);
    if (!t)
        return 2;

    char **argv = calloc((size_t)argc + 1, sizeof *argv);
    run_wait *r = calloc(1, sizeof *r);
    if (!argv || !r) {
        free(argv);
        free(r);
        return luaL_error(L, "tendril.run: out of memory");
    }
    for (int i = 0; i < argc; i++) {
        lua_rawgeti(L, 1, i + 1);
        argv[i] = (char *)lua_tostring(L, -1);
        if (!argv[i]) {
            free(argv);
            free(r);
            return luaL_error(L, "tendril.run: argv[%d] is not a string", i + 1);
        }
        lua_pop(L, 1); /* the string stays alive in the argv table */
    }
    if (input) {
        r->input = malloc(input_len ? input_len : 1);
        if (!r->input) {
            free(argv);
            free(r);
            return luaL_error(L, "tendril.run: out of memory");
        }
        memcpy(r->input, input, input_len);
        r->input_len = input_len;
    }
    uv_loop_t *loop = td_vm_loop(vm);
    r->vm = vm;
    r->in_call = 1;
    uv_pipe_init(loop, &r->in, 0);
    uv_pipe_init(loop, &r->out, 0);
    uv_pipe_init(loop, &r->err, 0);
    uv_timer_init(loop, &r->timer);
    r->in.data = r->out.data = r->err.data = r->timer.data = r->proc.data = r;
    r->open = 5;

    uv_stdio_container_t stdio[3] = {
        {.flags = input ? (UV_CREATE_PIPE | UV_READABLE_PIPE) : UV_IGNORE, .data.stream = (uv_stream_t *)&r->in},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->err},
    };
    uv_process_options_t opts = {
        .exit_cb = on_child_exit,
        .file = argv[0],
        .args = argv,
        .cwd = cwd,
        .flags = UV_PROCESS_DETACHED, /* its own process group, for the timeout's kill */
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rc = uv_spawn(loop, &r->proc, &opts);
    free(argv);
    if (rc) {
        /* The handles must still close before the record can go. */
        r->failed = rc;
        close_all(r);
        r->in_call = 0;
        if (r->open == 0)
            free_run(r);
        return td_api_fail(L, rc);
    }
    if (input) {
        uv_buf_t b = uv_buf_init(r->input, (unsigned)r->input_len);
        r->write_req.data = r;
        if (uv_write(&r->write_req, (uv_stream_t *)&r->in, &b, 1, on_input_written) != 0)
            close_handle(r, (uv_handle_t *)&r->in);
    } else {
        close_handle(r, (uv_handle_t *)&r->in);
    }
    uv_read_start((uv_stream_t *)&r->out, on_alloc, on_output);
    uv_read_start((uv_stream_t *)&r->err, on_alloc, on_output);
    double ms = timeout * 1000.0;
    uv_timer_start(&r->timer, on_timeout,
                   td_clock_timer_ms(r->timer.loop, ms < 1 ? 1 : ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms), 0);
    r->in_call = 0;
    r->waiting = 1;
    td_vm_wait_begin(t, &r->wait, cancel_run, 0, TD_WAIT_RUN);
    return lua_yield(L, 0);
}

void td_api_process_open(lua_State *L, td_vm *vm) {
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, run, 1);
    lua_setfield(L, -2, "run");
}
