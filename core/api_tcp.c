/* TCP for Lua: client sockets (connect, send, receive, pools) and tcp.listen
 * servers whose connections each run in their own task. The policy
 * (default timeouts, name resolution, pools per host) is in
 * lua/tendril/tcp.lua; these are its primitives.
 *
 * A socket userdata ("tendril.socket") holds the socket's handle (slot,
 * serial), never a pointer: every method finds the socket again and a
 * closed one answers nil, "closed". Its __gc closes the socket if it is
 * still open. A wait record is malloc'd per operation that has to wait and
 * freed when the operation ends or is cancelled. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "errors.h"
#include "sock.h"
#include "tls.h"

#define SOCKET_MT "tendril.socket"

typedef td_api_socket sock_box;

static td_transport *transport; /* the loop's, set by td_api_tcp_open */

enum { RECV_BYTES, RECV_LINE, RECV_ALL };

typedef struct sock_wait {
    td_wait wait;
    td_sock *s;
    uint64_t timeout_ms;
    int pattern;
    size_t n;
    size_t len; /* send: the length sent */
    int kind;      /* enum td_wait_kind (td_api_socket.kind) */
    int owns_sock; /* connect: the socket is not in a userdata yet */
    int in_call;   /* the starting C function has not yielded yet */
    int done;      /* ... and the operation ended meanwhile */
    int status;
    char *tls_err; /* TD_ETLS: why, copied while the connection is there */
} sock_wait;

static uint64_t to_ms(lua_State *L, int idx, const char *fname) {
    double t = luaL_checknumber(L, idx);
    if (!(t >= 0))
        luaL_error(L, "%s: a timeout must be a number of seconds >= 0", fname);
    /* 0 means "no wait at all" for a user, not "forever": round up. */
    double ms = t * 1000.0;
    return ms < 1 ? 1 : (uint64_t)ms;
}

static sock_box *check_box(lua_State *L, int idx) { return luaL_checkudata(L, idx, SOCKET_MT); }

/* The open socket the box names, or NULL. */
static td_sock *box_sock(const sock_box *box) { return td_sock_find(transport, box->slot, box->serial); }

static void push_socket(lua_State *L, td_sock *s, uint64_t timeout_ms, int kind) {
    sock_box *box = lua_newuserdata(L, sizeof *box);
    box->slot = s->conn.slot;
    box->serial = td_conn_serial(&s->conn);
    box->timeout_ms = timeout_ms;
    box->kind = kind;
    luaL_getmetatable(L, SOCKET_MT);
    lua_setmetatable(L, -2);
}

/* NULL after pushing nil, err when the task's request is over. */
static sock_wait *new_wait(lua_State *L, const char *fname, td_sock *s, uint64_t timeout_ms, int kind) {
    if (!td_api_wait_start(L, fname, 0))
        return NULL;
    sock_wait *w = calloc(1, sizeof *w);
    if (!w)
        luaL_error(L, "%s: out of memory", fname);
    w->s = s;
    w->timeout_ms = timeout_ms;
    w->kind = kind;
    w->in_call = 1;
    return w;
}

static void free_wait(sock_wait *w) {
    free(w->tls_err);
    free(w);
}

static void cancel_sock_wait(td_wait *wait) {
    sock_wait *w = td_container_of(wait, sock_wait, wait);
    td_sock_cancel(w->s);
    if (w->owns_sock)
        td_sock_close(w->s);
    free_wait(w);
}

/* nil, "tls: <why>" */
static int push_tls_error(lua_State *L, const char *why) {
    lua_pushnil(L);
    lua_pushfstring(L, "tls: %s", why && *why ? why : "handshake failed");
    return 2;
}

/* A handshake ended: keep why it failed for the results. */
static void note_tls_error(sock_wait *w, td_sock *s, int status) {
    if (status == TD_ETLS && !w->tls_err && s->conn.tls)
        w->tls_err = strdup(td_tls_error(s->conn.tls));
}

/* An operation may end inside the call that starts it (a write the kernel
 * takes at once): its callback then only records the status, and the C
 * function returns the results without yielding. Returns 1 in that case. */
static int ended_in_call(sock_wait *w, int status) {
    if (!w->in_call)
        return 0;
    w->done = 1;
    w->status = status;
    return 1;
}

/* After starting: yield, or report an operation that ended already (the
 * `finish` function pushes its results on L). */
static int wait_or_finish(lua_State *L, sock_wait *w, int (*finish)(lua_State *, sock_wait *, int)) {
    w->in_call = 0;
    if (w->done) {
        int n = finish(L, w, w->status);
        free_wait(w);
        return n;
    }
    td_vm_wait_begin(td_vm_task_of(L), &w->wait, cancel_sock_wait, 0, w->kind);
    return lua_yield(L, 0);
}

/* From a libuv callback: end the wait and resume with the results. */
static void resume_with(sock_wait *w, int status, int (*finish)(lua_State *, sock_wait *, int)) {
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    int n = finish(co, w, status);
    free_wait(w);
    td_vm_resume(t, n);
}

/* ---- connect ---- */

static int connect_results(lua_State *L, sock_wait *w, int status) {
    if (status == 0 && td_sock_usable(w->s)) {
        push_socket(L, w->s, w->timeout_ms, w->kind);
        return 1;
    }
    td_sock_close(w->s);
    if (status == TD_ETLS)
        return push_tls_error(L, w->tls_err);
    return td_api_fail(L, status ? status : TD_ECLOSED);
}

static void on_connected(td_sock *s, int status, void *ud) {
    note_tls_error(ud, s, status);
    if (!ended_in_call(ud, status))
        resume_with(ud, status, connect_results);
}

/* The TLS options at idx.. (server_name, verify, ca_file, alpn) as a
 * client connection's state; NULL after pushing nil, err. */
static td_tls *new_client_tls(lua_State *L, int idx) {
    const char *server_name = luaL_optstring(L, idx, NULL);
    int verify = lua_toboolean(L, idx + 1);
    const char *ca_file = luaL_optstring(L, idx + 2, NULL);
    const char *alpn = luaL_optstring(L, idx + 3, NULL);
    const char *session_key = luaL_optstring(L, idx + 4, NULL);
    char err[300];
    td_tls *t = td_tls_connect(server_name, verify, ca_file, alpn, session_key, &transport->out_pool, err, sizeof err);
    if (!t)
        push_tls_error(L, err);
    return t;
}

/* [-10, +1|2] sock_connect(ip, port, timeout [, tls, server_name, verify, ca_file, alpn, session_key,
 * for_http]) -> socket | nil, err; yields. With tls, the socket comes after the handshake;
 * session_key: see td_tls_connect; for_http: tendril.http's (its waits count as http). */
static int sock_connect(lua_State *L) {
    const char *ip = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    uint64_t timeout_ms = to_ms(L, 3, "tcp.connect");
    struct sockaddr_storage addr;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&addr) != 0)
        return luaL_error(L, "tcp.connect: '%s' is not an IP address", ip);
    td_tls *t = NULL;
    if (lua_toboolean(L, 4) && !(t = new_client_tls(L, 5)))
        return 2;
    sock_wait *w = new_wait(L, "tcp.connect", NULL, timeout_ms, lua_toboolean(L, 10) ? TD_WAIT_HTTP : TD_WAIT_TCP);
    if (!w) {
        td_tls_free(t);
        return 2;
    }
    int err = 0;
    w->s = td_sock_connect(transport, (struct sockaddr *)&addr, timeout_ms, on_connected, w, &err);
    if (!w->s) {
        td_tls_free(t);
        free_wait(w);
        return td_api_fail(L, err);
    }
    w->owns_sock = 1;
    if (t && (err = td_conn_start_tls(&w->s->conn, t)) != 0) {
        td_sock_close(w->s); /* its callback ran: the wait holds the status */
        int n = connect_results(L, w, err);
        free_wait(w);
        return n;
    }
    return wait_or_finish(L, w, connect_results);
}

/* ---- starttls ---- */

static int starttls_results(lua_State *L, sock_wait *w, int status) {
    if (status == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (status == TD_ETLS)
        return push_tls_error(L, w->tls_err);
    return td_api_fail(L, status);
}

static void on_upgraded(td_sock *s, int status, void *ud) {
    note_tls_error(ud, s, status);
    if (!ended_in_call(ud, status))
        resume_with(ud, status, starttls_results);
}

/* [-5, +1|2] sock_starttls(sock, server_name, verify, ca_file, alpn) -> true | nil, err;
 * yields. A failed handshake closes the socket. */
static int sock_starttls(lua_State *L) {
    sock_box *box = check_box(L, 1);
    td_sock *s = box_sock(box);
    if (!s || !td_sock_usable(s))
        return td_api_fail(L, TD_ECLOSED);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "sock:starttls: another coroutine is using this socket");
    if (s->conn.tls)
        return luaL_error(L, "sock:starttls: the socket speaks TLS already");
    if (s->in.len > 0) {
        /* Bytes before the handshake (injected by whoever sits between, or
         * the peer's mistake): the socket cannot be trusted any more. */
        td_sock_close(s);
        lua_pushnil(L);
        lua_pushliteral(L, "tls: the peer sent data before the handshake");
        return 2;
    }
    td_tls *t = new_client_tls(L, 2);
    if (!t)
        return 2;
    sock_wait *w = new_wait(L, "sock:starttls", s, box->timeout_ms, box->kind);
    if (!w) {
        td_tls_free(t);
        return 2;
    }
    td_sock_starttls(s, t, box->timeout_ms, on_upgraded, w);
    return wait_or_finish(L, w, starttls_results);
}

/* ---- send ---- */

static int send_results(lua_State *L, sock_wait *w, int status) {
    if (status == 0) {
        lua_pushinteger(L, (lua_Integer)w->len);
        return 1;
    }
    return td_api_fail(L, status);
}

static void on_sent(td_sock *s, int status, void *ud) {
    (void)s;
    if (!ended_in_call(ud, status))
        resume_with(ud, status, send_results);
}

/* [-2, +1|2] sock_send(sock, data) -> bytes | nil, err; may yield */
static int sock_send(lua_State *L) {
    sock_box *box = check_box(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    td_sock *s = box_sock(box);
    if (!s || !td_sock_usable(s))
        return td_api_fail(L, TD_ECLOSED);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "sock:send: another coroutine is using this socket");
    sock_wait *w = new_wait(L, "sock:send", s, box->timeout_ms, box->kind);
    if (!w)
        return 2;
    w->len = len;
    td_sock_write(s, data, len, box->timeout_ms, on_sent, w);
    return wait_or_finish(L, w, send_results);
}

/* ---- receive ---- */

/* Whether the buffer holds what the pattern asks for. */
static int ready(const td_sock *s, int pattern, size_t n) {
    switch (pattern) {
    case RECV_BYTES:
        return s->in.len >= n;
    case RECV_LINE:
        return s->in.len && memchr(s->in.data, '\n', s->in.len) != NULL;
    default:
        return s->read_end == UV_EOF;
    }
}

/* Pushes what the pattern asks for when the buffer holds it. */
static int take(lua_State *L, td_sock *s, int pattern, size_t n) {
    td_buf *in = &s->in;
    switch (pattern) {
    case RECV_BYTES:
        if (in->len < n)
            return 0;
        lua_pushlstring(L, in->data ? in->data : "", n);
        td_sock_consume(s, n);
        return 1;
    case RECV_LINE: {
        char *nl = in->len ? memchr(in->data, '\n', in->len) : NULL;
        if (!nl)
            return 0;
        size_t line = (size_t)(nl - in->data);
        size_t keep = line > 0 && in->data[line - 1] == '\r' ? line - 1 : line;
        lua_pushlstring(L, in->data, keep);
        td_sock_consume(s, line + 1);
        return 1;
    }
    default:
        if (s->read_end != UV_EOF)
            return 0;
        lua_pushlstring(L, in->data ? in->data : "", in->len);
        td_sock_consume(s, in->len);
        return 1;
    }
}

/* The receive failed: nil, err, and what arrived (consumed). */
static int push_partial(lua_State *L, td_sock *s, int status) {
    td_api_fail(L, status);
    if (!s) {
        lua_pushliteral(L, "");
        return 3;
    }
    lua_pushlstring(L, s->in.data ? s->in.data : "", s->in.len);
    td_sock_consume(s, s->in.len);
    return 3;
}

/* Results of a receive that waited: the data, or nil, err, partial. */
static int receive_results(lua_State *L, sock_wait *w, int status) {
    if (status == 0 || (status == UV_EOF && w->pattern == RECV_ALL))
        if (take(L, w->s, w->pattern, w->n))
            return 1;
    return push_partial(L, w->s, status ? status : TD_ECLOSED);
}

static void on_readable(td_sock *s, int status, void *ud) {
    sock_wait *w = ud;
    if (status == 0 && !ready(s, w->pattern, w->n)) {
        /* Not enough yet: wait for more without waking Lua. */
        td_sock_read(s, w->timeout_ms, on_readable, w);
        return;
    }
    if (!ended_in_call(w, status))
        resume_with(w, status, receive_results);
}

/* [-2, +1|3] sock_receive(sock, pattern) -> data | nil, err, partial; may yield
 * pattern: a byte count, "*l" (a line without its end) or "*a" (until the
 * peer closes). */
static int sock_receive(lua_State *L) {
    sock_box *box = check_box(L, 1);
    td_sock *s = box_sock(box);
    int pattern;
    size_t n = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, 2);
        if (v < 0)
            return luaL_error(L, "sock:receive: a negative byte count");
        pattern = RECV_BYTES;
        n = (size_t)v;
    } else {
        const char *p = luaL_optstring(L, 2, "*l");
        if (strcmp(p, "*l") == 0 || strcmp(p, "l") == 0)
            pattern = RECV_LINE;
        else if (strcmp(p, "*a") == 0 || strcmp(p, "a") == 0)
            pattern = RECV_ALL;
        else
            return luaL_error(L, "sock:receive: unknown pattern '%s' (a number, \"*l\" or \"*a\")", p);
    }
    if (!s)
        return push_partial(L, NULL, TD_ECLOSED);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "sock:receive: another coroutine is using this socket");
    if (take(L, s, pattern, n))
        return 1;
    if (s->conn.closed)
        return push_partial(L, s, TD_ECLOSED);
    if (s->read_end)
        return push_partial(L, s, s->read_end);
    sock_wait *w = new_wait(L, "sock:receive", s, box->timeout_ms, box->kind);
    if (!w)
        return 2;
    w->pattern = pattern;
    w->n = n;
    td_sock_read(s, box->timeout_ms, on_readable, w);
    return wait_or_finish(L, w, receive_results);
}

/* ---- the rest of the socket ---- */

/* [-2, +0] sock_settimeout(sock, seconds) */
static int sock_settimeout(lua_State *L) {
    sock_box *box = check_box(L, 1);
    box->timeout_ms = to_ms(L, 2, "sock:settimeout");
    return 0;
}

/* [-1, +1] sock_close(sock) -> true */
static int sock_close(lua_State *L) {
    td_sock *s = box_sock(check_box(L, 1));
    if (s)
        td_sock_close(s);
    lua_pushboolean(L, 1);
    return 1;
}

/* [-1, +1] sock_usable(sock) -> boolean: connected, open, nothing pending */
static int sock_usable(lua_State *L) {
    td_sock *s = box_sock(check_box(L, 1));
    lua_pushboolean(L, s && td_sock_usable(s) && s->op == TD_SOCK_IDLE && !s->read_end);
    return 1;
}

/* [-3, +1|2|3] sock_queue(sock, data, max_unsent) -> true | nil, "closed" |
 * nil, "busy" | nil, err, "task": data joins the socket's output, which leaves at the end of
 * the loop turn with whatever else was queued meanwhile (tendril.redis:
 * the commands of every task in a turn in one write). Never waits; "busy"
 * while more than max_unsent bytes are still unsent (a server that stopped
 * reading). Like a wait, it fails at once in a task whose request is over
 * (nil, err, "task"): nothing is sent for a caller that cannot take the
 * reply. */
static int sock_queue(lua_State *L) {
    td_sock *s = box_sock(check_box(L, 1));
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    lua_Number max_unsent = luaL_checknumber(L, 3);
    if (!td_api_wait_start(L, "sock_queue", 0)) {
        lua_pushliteral(L, "task"); /* the caller's fate, not the socket's */
        return 3;
    }
    if (!s || !td_sock_usable(s) || s->conn.closing || s->read_end)
        return td_api_fail(L, TD_ECLOSED);
    if ((lua_Number)td_conn_unsent(&s->conn) > max_unsent) {
        lua_pushnil(L);
        lua_pushliteral(L, "busy");
        return 2;
    }
    td_buf *out = td_conn_out(&s->conn, len);
    if (!out)
        return luaL_error(L, "sock_queue: out of memory");
    memcpy(out->data + out->len, data, len);
    out->len += len;
    lua_pushboolean(L, 1);
    return 1;
}

/* [-1, +1] sock_open(sock) -> boolean: open and not idle in a pool
 * (tendril test: a socket a test left open) */
static int sock_open(lua_State *L) {
    td_sock *s = box_sock(check_box(L, 1));
    lua_pushboolean(L, s && !s->pooled && !s->conn.closing && !s->conn.closed);
    return 1;
}

/* [-2, +1|2] sock_pool(sock, idle_seconds) -> true | nil, err */
static int sock_pool(lua_State *L) {
    sock_box *box = check_box(L, 1);
    uint64_t idle_ms = to_ms(L, 2, "sock:setkeepalive");
    td_sock *s = box_sock(box);
    if (!s)
        return td_api_fail(L, TD_ECLOSED);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "sock:setkeepalive: another coroutine is using this socket");
    if (!td_sock_usable(s) || s->in.len > 0 || s->read_end) {
        td_sock_close(s);
        return td_api_fail(L, TD_ECLOSED);
    }
    td_sock_pool(s, idle_ms);
    lua_pushboolean(L, 1);
    return 1;
}

/* [-1, +1] sock_unpool(sock) -> boolean: still usable */
static int sock_unpool(lua_State *L) {
    td_sock *s = box_sock(check_box(L, 1));
    lua_pushboolean(L, s && td_sock_unpool(s) == 0);
    return 1;
}

/* A socket nobody can name any more is closed (only a close is asked:
 * the memory goes in the transport's close callback). */
static int sock_gc(lua_State *L) {
    td_sock *s = transport ? box_sock(lua_touserdata(L, 1)) : NULL;
    if (s)
        td_sock_close(s);
    return 0;
}

static int sock_tostring(lua_State *L) {
    sock_box *box = check_box(L, 1);
    td_sock *s = box_sock(box);
    lua_pushfstring(L, "tendril.socket (%s): %p", s && td_sock_usable(s) ? "open" : "closed", (void *)box);
    return 1;
}

/* ---- listening ---- */

/* A listener outlives the generation that opened it: a reload's top level
 * that listens on the same address takes it over instead of binding again.
 * During a load attempt the new handler waits in pending_ref; the attempt's
 * commit swaps it in and closes the listeners the new generation did not
 * ask for again, a failed attempt drops what it staged. */
typedef struct listener {
    td_listener base;
    td_vm *vm;
    int handler_ref;
    int pending_ref;
    unsigned claimed : 1; /* asked for by the attempt in progress */
    unsigned fresh : 1;   /* opened by the attempt in progress */
    unsigned pending_tls_set : 1; /* the attempt's certificates (pending_tls) replace the listener's */
    td_tls_server *pending_tls;   /* a reference, or NULL: plain */
    td_list link;
    uint64_t timeout_ms;
    struct sockaddr_storage addr;
} listener;

static td_list listeners = {&listeners, &listeners};

/* tcp.listen sessions running, for the shutdown drain. */
static size_t sessions;
static void (*sessions_over)(void *ud);
static void *sessions_over_ud;

size_t td_api_tcp_sessions(void) { return sessions; }

size_t td_api_tcp_listeners(void) {
    size_t n = 0;
    for (td_list *pos = listeners.next; pos != &listeners; pos = pos->next)
        n++;
    return n;
}

void td_api_tcp_on_sessions_over(void (*cb)(void *ud), void *ud) {
    sessions_over = cb;
    sessions_over_ud = ud;
}

/* The session's socket is named by its handle in the task (t->data holds
 * the slot, t->serial the serial): it may close, and its memory go, before
 * the handler returns. */
static void on_session_end(td_task *t, int status) {
    (void)status;
    td_sock *s = td_sock_find(transport, (uint32_t)(uintptr_t)t->data, t->serial);
    if (s)
        td_sock_close(s);
    if (--sessions == 0 && sessions_over)
        sessions_over(sessions_over_ud);
}

static void on_listener_open(td_listener *base, td_conn *c) {
    listener *l = td_container_of(base, listener, base);
    td_sock *s = (td_sock *)c;
    lua_State *L = td_vm_state(l->vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, l->handler_ref);
    td_task *t = td_vm_task_new(l->vm, on_session_end);
    if (!t) {
        td_sock_close(s);
        return;
    }
    t->data = (void *)(uintptr_t)c->slot;
    t->serial = td_conn_serial(c);
    t->label = "a tcp.listen connection";
    sessions++;
    push_socket(t->co, s, l->timeout_ms, TD_WAIT_TCP);
    td_vm_resume(t, 1);
}

static void free_listener(td_listener *base) { free(td_container_of(base, listener, base)); }

static void drop_pending_tls(listener *l) {
    td_tls_server_unref(l->pending_tls);
    l->pending_tls = NULL;
    l->pending_tls_set = 0;
}

static void close_listener(listener *l) {
    lua_State *L = td_vm_state(l->vm);
    drop_pending_tls(l);
    td_list_remove(&l->link);
    luaL_unref(L, LUA_REGISTRYINDEX, l->handler_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, l->pending_ref);
    td_listener_close(&l->base, free_listener);
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

static int bound_port(listener *l) { return td_listener_port(&l->base); }

/* The load in progress listens where old does: the handler (at 3) and
 * tls wait in old until the load commits. Pushes the port. */
static void take_over(lua_State *L, listener *old, td_tls_server *tls, uint64_t timeout_ms) {
    luaL_unref(L, LUA_REGISTRYINDEX, old->pending_ref);
    lua_pushvalue(L, 3);
    old->pending_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    old->claimed = 1;
    old->timeout_ms = timeout_ms;
    drop_pending_tls(old);
    old->pending_tls = tls;
    old->pending_tls_set = 1;
    lua_pushinteger(L, bound_port(old));
}

/* [-6, +1|2] tcp_listen(ip, port, handler, timeout [, cert, key]) -> port | nil, err
 * With cert and key, the connections speak TLS; the files are read now
 * (each reload's tcp.listen reads them again). */
static int tcp_listen(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *ip = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    uint64_t timeout_ms = to_ms(L, 4, "tcp.listen");
    const char *cert = luaL_optstring(L, 5, NULL), *key = luaL_optstring(L, 6, NULL);
    struct sockaddr_storage addr;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&addr) != 0)
        return luaL_error(L, "tcp.listen: '%s' is not an IP address", ip);
    td_tls_server *tls = NULL;
    char err[600];
    if (cert && key && !(tls = td_tls_server_new(&cert, &key, 1, 0, err, sizeof err))) {
        /* A reload's bad certificate: a listener taken over keeps its
         * handler and its old certificates (as the HTTPS listener does). */
        for (td_list *pos = listeners.next; port != 0 && pos != &listeners; pos = pos->next) {
            listener *old = td_container_of(pos, listener, link);
            if (same_addr(&old->addr, &addr))
                old->claimed = 1;
        }
        return push_tls_error(L, err);
    }
    /* Port 0 asks for a new port: only an explicit port is taken over. */
    td_list *pos;
    for (pos = listeners.next; port != 0 && pos != &listeners; pos = pos->next) {
        listener *old = td_container_of(pos, listener, link);
        if (same_addr(&old->addr, &addr)) {
            /* Asked for twice by the same load (or script): the second
             * would never be served. */
            if (old->claimed) {
                td_tls_server_unref(tls);
                return td_api_fail(L, UV_EADDRINUSE);
            }
            take_over(L, old, tls, timeout_ms);
            return 1;
        }
    }
    listener *l = calloc(1, sizeof *l);
    if (!l) {
        td_tls_server_unref(tls);
        return td_api_fail(L, UV_ENOMEM);
    }
    int rc = td_sock_listen(&l->base, transport, ip, port, on_listener_open);
    if (rc) {
        td_tls_server_unref(tls);
        td_listener_close(&l->base, free_listener);
        return td_api_fail(L, rc);
    }
    if (port == 0) {
        /* A worker's supervisor hands the k-th port-0 listener of every
         * load the same socket: the one a generation before this load
         * serves is taken over as an explicit port is, so that the new
         * handler serves only once the load commits. */
        struct sockaddr_storage bound = addr;
        if (bound.ss_family == AF_INET)
            ((struct sockaddr_in *)&bound)->sin_port = htons((uint16_t)bound_port(l));
        else
            ((struct sockaddr_in6 *)&bound)->sin6_port = htons((uint16_t)bound_port(l));
        for (pos = listeners.next; pos != &listeners; pos = pos->next) {
            listener *old = td_container_of(pos, listener, link);
            if (same_addr(&old->addr, &bound)) {
                td_listener_close(&l->base, free_listener);
                take_over(L, old, tls, timeout_ms);
                return 1;
            }
        }
        addr = bound;
    }
    td_listener_set_tls(&l->base, tls, NULL, 0);
    td_tls_server_unref(tls);
    l->vm = vm;
    l->timeout_ms = timeout_ms;
    l->addr = addr;
    l->pending_ref = LUA_NOREF;
    lua_pushvalue(L, 3);
    l->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    l->claimed = 1;
    l->fresh = 1;
    td_list_push_back(&listeners, &l->link);
    lua_pushinteger(L, bound_port(l));
    return 1;
}

/* [-0, +0] listeners_begin(): a load attempt starts */
static int listeners_begin(lua_State *L) {
    (void)L;
    td_listen_source_begin();
    for (td_list *pos = listeners.next; pos != &listeners; pos = pos->next) {
        listener *l = td_container_of(pos, listener, link);
        l->claimed = 0;
        l->fresh = 0;
    }
    return 0;
}

/* [-0, +0] listeners_commit(): the attempt became the current generation */
static int listeners_commit(lua_State *L) {
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &listeners) {
        listener *l = td_container_of(pos, listener, link);
        if (!l->claimed) {
            close_listener(l);
            continue;
        }
        if (l->pending_ref != LUA_NOREF) {
            luaL_unref(L, LUA_REGISTRYINDEX, l->handler_ref);
            l->handler_ref = l->pending_ref;
            l->pending_ref = LUA_NOREF;
        }
        if (l->pending_tls_set)
            td_listener_set_tls(&l->base, l->pending_tls, NULL, 0);
        drop_pending_tls(l);
        l->claimed = l->fresh = 0;
    }
    return 0;
}

/* [-0, +0] listeners_discard(): the attempt failed; the old ones go on */
static int listeners_discard(lua_State *L) {
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &listeners) {
        listener *l = td_container_of(pos, listener, link);
        if (l->fresh) {
            close_listener(l);
            continue;
        }
        luaL_unref(L, LUA_REGISTRYINDEX, l->pending_ref);
        l->pending_ref = LUA_NOREF;
        l->claimed = 0;
        drop_pending_tls(l);
    }
    return 0;
}

void td_api_tcp_close_listeners(void) {
    while (!td_list_empty(&listeners))
        close_listener(td_container_of(listeners.next, listener, link));
}

void td_api_tcp_open(lua_State *L, td_vm *vm, td_transport *tp) {
    transport = tp;
    static const luaL_Reg funcs[] = {
        {"sock_connect", sock_connect}, {"sock_open", sock_open}, {"sock_queue", sock_queue},   {"sock_send", sock_send},     {"sock_receive", sock_receive},
        {"sock_settimeout", sock_settimeout}, {"sock_close", sock_close}, {"sock_usable", sock_usable},
        {"sock_pool", sock_pool},         {"sock_unpool", sock_unpool}, {"tcp_listen", tcp_listen},
        {"sock_starttls", sock_starttls},
        {"listeners_begin", listeners_begin}, {"listeners_commit", listeners_commit},
        {"listeners_discard", listeners_discard}, {NULL, NULL},
    };
    luaL_newmetatable(L, SOCKET_MT);
    lua_pushcfunction(L, sock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, sock_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_setfield(L, -2, "socket_mt"); /* lua/tendril/tcp.lua adds __index */
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
