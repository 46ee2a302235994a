/* The WebSocket primitives behind lua/tendril/websocket.lua: the switch of
 * a request's connection (or a client socket's, after its handshake) to
 * the WebSocket protocol, and recv, send and close on it.
 *
 * A WebSocket is a "tendril.websocket" userdata that holds its protocol
 * state (td_ws_conn): the connection points to it while it is open, and
 * the state outlives the connection, so that recv can still say how it
 * ended. Collecting the userdata closes a connection still open.
 *
 * Waits: one task at a time receives (its wait is in the userdata); any
 * number may wait to send (output past the high-water mark) or for the end
 * (close), each with a small record. When the WebSocket ends every wait
 * ends, and a server's WebSocket kills its request's scope (vm.h): the
 * threads its handler spawned share its fate, as they would a request's. */
#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "errors.h"
#include "ws_conn.h"

#define WS_MT "tendril.websocket"

typedef struct ws_ud {
    td_ws_conn w;
    td_scope *scope;    /* the request's fate (server side), or NULL */
    td_wait rwait;      /* the task in recv */
    td_list waits;      /* ws_wait: senders waiting for room, closers waiting for the end */
    unsigned receiving : 1;
    unsigned end_heard : 1; /* Lua was told the WebSocket ended ("closed") */
} ws_ud;

typedef struct ws_wait {
    td_wait wait;
    td_list link;
    int for_end; /* a close waiting for the end (else a sender for room) */
} ws_wait;

static td_http_server *server;
static td_vm *the_vm;
static td_list all; /* ws_ud.w.link: every open WebSocket */

static inline ws_ud *ud_of(td_ws_conn *w) { return td_container_of(w, ws_ud, w); }
static size_t nopen;

/* ---- results ---- */

/* [-0, +2|4] A message (data, "text" | "binary"), or the end (nil,
 * "closed", code, reason). Returns the count. */
static int push_next(lua_State *L, ws_ud *u) {
    td_ws_msg *m = td_ws_conn_next(&u->w);
    if (m) {
        lua_pushlstring(L, m->data, m->len);
        lua_pushstring(L, m->opcode == TD_WS_TEXT ? "text" : "binary");
        free(m);
        return 2;
    }
    u->end_heard = 1;
    lua_pushnil(L);
    lua_pushstring(L, td_err_name(TD_ECLOSED));
    lua_pushinteger(L, u->w.close_code);
    lua_pushlstring(L, u->w.reason ? u->w.reason : "", u->w.reason_len);
    return 4;
}

static void end_recv(ws_ud *u) {
    u->receiving = 0;
    td_ws_conn_set_recv_deadline(&u->w, 0);
}

/* ---- hooks (inside transport callbacks: resumes are posted) ---- */

/* The receiving task wakes with the next message or the end (status 0),
 * or nil, err. */
static void wake_receiver(ws_ud *u, int status) {
    if (!u->receiving)
        return;
    end_recv(u);
    td_task *t = u->rwait.task;
    lua_State *co = td_vm_wait_end(&u->rwait);
    td_vm_resume(t, status ? td_api_fail(co, status) : push_next(co, u));
}

static void on_message(td_ws_conn *w) { wake_receiver(ud_of(w), 0); }

static void on_recv_timeout(td_ws_conn *w) { wake_receiver(ud_of(w), TD_ETIMEOUT); }

/* Wakes the waits of one kind: senders get false (try again) or nil,
 * "closed"; closers get true. */
static void wake(ws_ud *u, int for_end, int gone) {
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &u->waits) {
        ws_wait *ww = td_container_of(pos, ws_wait, link);
        if (ww->for_end != for_end)
            continue;
        td_list_remove(&ww->link);
        td_task *t = ww->wait.task;
        lua_State *co = td_vm_wait_end(&ww->wait);
        int n = 1;
        if (for_end) {
            lua_pushboolean(co, 1);
        } else if (gone) {
            u->end_heard = 1;
            n = td_api_fail(co, TD_ECLOSED);
        } else {
            lua_pushboolean(co, 0);
        }
        free(ww);
        td_vm_resume(t, n);
    }
}

static void on_drain(td_ws_conn *w) { wake(ud_of(w), 0, 0); }

/* The WebSocket's fate is over for the threads its handler spawned. The
 * handler goes on; if it waits for something else (the bus) without having
 * heard of the end, that wait ends (interrupt). */
static void end_scope(ws_ud *u, int interrupt) {
    td_scope *scope = u->scope;
    if (scope) {
        u->scope = NULL;
        scope->ref = NULL;
        td_vm_scope_kill_threads(scope, TD_ECLOSED, interrupt && !u->end_heard);
    }
}

static void on_gone(td_ws_conn *w) {
    ws_ud *u = ud_of(w);
    td_list_remove(&w->link);
    nopen--;
    wake(u, 0, 1);
    wake(u, 1, 1);
    end_scope(u, 1);
}

static const td_ws_hooks hooks = {
    .on_message = on_message,
    .on_drain = on_drain,
    .on_recv_timeout = on_recv_timeout,
    .on_gone = on_gone,
};

/* ---- waits ---- */

static void cancel_recv(td_wait *wait) { end_recv(td_container_of(wait, ws_ud, rwait)); }

static void cancel_wait(td_wait *wait) {
    ws_wait *ww = td_container_of(wait, ws_wait, wait);
    td_list_remove(&ww->link);
    free(ww);
}

static int wait_for(lua_State *L, ws_ud *u, int for_end, const char *fname) {
    td_task *t = td_api_wait_start(L, fname, 1);
    if (!t)
        return 2;
    ws_wait *ww = malloc(sizeof *ww);
    if (!ww)
        return luaL_error(L, "%s: out of memory", fname);
    ww->for_end = for_end;
    td_list_push_back(&u->waits, &ww->link);
    td_vm_wait_begin(t, &ww->wait, cancel_wait, 1, TD_WAIT_WS);
    if (!for_end)
        td_ws_conn_want_drain(&u->w);
    return lua_yield(L, 0);
}

/* ---- making one ---- */

static ws_ud *new_ud(lua_State *L) {
    ws_ud *u = lua_newuserdata(L, sizeof *u);
    memset(u, 0, sizeof *u);
    td_list_init(&u->w.link);
    td_list_init(&u->waits);
    luaL_getmetatable(L, WS_MT);
    lua_setmetatable(L, -2);
    return u;
}

static uint64_t opt_ms(lua_State *L, int idx) {
    double s = luaL_optnumber(L, idx, 0);
    return s > 0 ? (s > 1e9 ? (uint64_t)1e12 : (uint64_t)(s * 1000.0 + 0.5)) : 0;
}

/* The same, at most some 49 days (the config's 32 bits). */
static uint32_t opt_ms32(lua_State *L, int idx) {
    uint64_t ms = opt_ms(L, idx);
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

/* Options at idx..idx+4: max_message bytes, idle timeout, ping interval
 * and close timeout in seconds (0: none), the window bits of
 * permessage-deflate (0: not negotiated). */
static void read_config(lua_State *L, int idx, td_ws_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->max_message = (uint64_t)luaL_checknumber(L, idx);
    cfg->idle_timeout_ms = opt_ms32(L, idx + 1);
    cfg->ping_interval_ms = opt_ms32(L, idx + 2);
    cfg->close_timeout_ms = opt_ms32(L, idx + 3);
    int bits = (int)luaL_optinteger(L, idx + 4, 0);
    cfg->deflate_bits = (uint8_t)(bits >= 9 && bits <= 15 ? bits : 0);
}

/* The server is shutting down: close 1001. */
static void going_away(td_ws_conn *w) {
    static const char why[] = "server shutting down";
    td_ws_conn_close(w, TD_WS_GOING_AWAY, why, sizeof why - 1);
}

static void opened(ws_ud *u) {
    td_list_push_back(&all, &u->w.link);
    nopen++;
}

/* [-8, +1|2] ws_upgrade(slot, serial, lines, max_message, idle, ping,
 * close_timeout, deflate_bits) -> websocket | nil, err. The handshake was checked (in
 * Lua); lines are the 101's own header lines. */
static int ws_upgrade(lua_State *L) {
    td_http_conn *hc = td_http_find(server, (uint32_t)luaL_checkinteger(L, 1), (uint32_t)luaL_checkinteger(L, 2));
    size_t len;
    const char *lines = luaL_checklstring(L, 3, &len);
    td_ws_config cfg;
    read_config(L, 4, &cfg);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    ws_ud *u = new_ud(L);
    td_scope *scope = hc->rq->user;
    td_buf rest = {0};
    /* Taken from the request, which would close it as it ends. */
    hc->rq->user = NULL;
    int rc = td_http_upgrade(hc, "websocket", lines, len, &rest);
    if (rc != 0) {
        hc->rq->user = scope;
        lua_pop(L, 1);
        return td_api_fail(L, rc);
    }
    if (scope) {
        /* The WebSocket keeps the request's scope (its ref pointed into the
         * request state, gone now), without a deadline. */
        td_vm_scope_deadline(scope, 0);
        u->scope = scope;
        scope->ref = (void **)&u->scope;
        scope->timings = NULL; /* they were the request state's */
    }
    opened(u);
    td_ws_conn_attach(&u->w, &hc->conn, 0, &cfg, &hooks, &rest);
    td_buf_free(&rest);
    if (server->draining)
        going_away(&u->w); /* upgraded after the shutdown began */
    return 1;
}

/* [-7, +1|2] ws_client(socket, max_message, idle, ping, close_timeout, deflate_bits)
 * -> websocket | nil, err: a client socket whose handshake is done speaks
 * WebSocket from now on (the socket object is closed for Lua). */
static int ws_client(lua_State *L) {
    td_api_socket *so = luaL_checkudata(L, 1, "tendril.socket");
    td_ws_config cfg;
    read_config(L, 2, &cfg);
    td_sock *s = td_sock_find(server->tp, so->slot, so->serial);
    if (!s || !td_sock_usable(s) || s->op != TD_SOCK_IDLE || s->read_end)
        return td_api_fail(L, TD_ECLOSED);
    ws_ud *u = new_ud(L);
    td_buf rest;
    td_sock_release(s, &rest);
    opened(u);
    td_ws_conn_attach(&u->w, &s->conn, 1, &cfg, &hooks, &rest);
    td_buf_free(&rest);
    return 1;
}

static ws_ud *check_ws(lua_State *L) { return luaL_checkudata(L, 1, WS_MT); }

/* [-0, +2] nil, "closed": Lua hears of the end. */
static int closed(lua_State *L, ws_ud *u) {
    u->end_heard = 1;
    return td_api_fail(L, TD_ECLOSED);
}

/* [-2, +2|4] ws_recv(ws, timeout | nil) -> data, kind | nil, "timeout" |
 * nil, "closed", code, reason; may yield. */
static int ws_recv(lua_State *L) {
    ws_ud *u = check_ws(L);
    uint64_t ms = lua_isnoneornil(L, 2) ? 0 : opt_ms(L, 2);
    if (!lua_isnoneornil(L, 2) && ms == 0)
        ms = 1;
    if (u->w.head || td_ws_conn_ended(&u->w))
        return push_next(L, u);
    if (u->receiving)
        return luaL_error(L, "ws:recv: another task is receiving on this WebSocket");
    td_task *t = td_api_wait_start(L, "ws:recv", 1);
    if (!t)
        return 2;
    u->receiving = 1;
    td_vm_wait_begin(t, &u->rwait, cancel_recv, 1, TD_WAIT_WS);
    if (ms)
        td_ws_conn_set_recv_deadline(&u->w, ms);
    return lua_yield(L, 0);
}

/* [-3, +1|2] ws_send(ws, data, opcode) -> true | nil, err | false (it
 * waited for room: call again); may yield. */
static int ws_send(lua_State *L) {
    ws_ud *u = check_ws(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int opcode = (int)luaL_checkinteger(L, 3);
    if (opcode != TD_WS_TEXT && opcode != TD_WS_BINARY && opcode != TD_WS_PING)
        return luaL_error(L, "ws:send: opcode %d is not text, binary or ping", opcode);
    td_conn *c = u->w.c;
    if (!c || u->w.state != TD_WS_OPEN)
        return closed(L, u);
    if (opcode < TD_WS_CLOSE && td_ws_conn_unsent(&u->w) > TD_WS_HIGH_WATER) {
        td_conn_flush(c);
        if (!u->w.c)
            return closed(L, u);
        if (td_ws_conn_unsent(&u->w) > TD_WS_HIGH_WATER)
            return wait_for(L, u, 0, "ws:send");
    }
    int rc;
    if (len >= TD_API_WRITE_BY_REF) {
        void *ref = td_api_ref_string(L, 2);
        rc = td_ws_conn_send(&u->w, opcode, data, len, td_api_release_ref, ref);
        if (rc != 1)
            td_api_unref_string(L, ref);
    } else {
        rc = td_ws_conn_send(&u->w, opcode, data, len, NULL, NULL);
    }
    if (rc < 0)
        return td_api_fail(L, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* [-5, +1|2] ws_close(ws, code | nil, reason, wait, finish) -> true | nil,
 * "closed": starts the closing handshake; with `wait`, waits for its end.
 * `finish`: the handler returned, and the threads it spawned end too. */
static int ws_close(lua_State *L) {
    ws_ud *u = check_ws(L);
    int code = (int)luaL_optinteger(L, 2, 0);
    size_t len;
    const char *reason = luaL_optlstring(L, 3, "", &len);
    int wait = lua_toboolean(L, 4);
    if (lua_toboolean(L, 5))
        end_scope(u, 0);
    if (!u->w.c)
        return td_api_fail(L, TD_ECLOSED);
    int was_open = u->w.state == TD_WS_OPEN;
    td_ws_conn_close(&u->w, code, reason, len);
    if (wait && u->w.c)
        return wait_for(L, u, 1, "ws:close");
    if (!was_open)
        return td_api_fail(L, TD_ECLOSED);
    lua_pushboolean(L, 1);
    return 1;
}

/* [-1, +0] Collected: a connection still open closes. */
static int ws_gc(lua_State *L) {
    ws_ud *u = check_ws(L);
    if (u->w.c) {
        td_list_remove(&u->w.link);
        nopen--;
        td_ws_conn_abort(&u->w);
    }
    end_scope(u, 0);
    td_ws_conn_free(&u->w);
    return 0;
}

/* [-1, +1] ws_utf8(s) -> whether s is well-formed UTF-8 */
static int ws_utf8(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    td_ws_utf8 u;
    td_ws_utf8_init(&u);
    lua_pushboolean(L, td_ws_utf8_feed(&u, (const uint8_t *)s, len) == 0 && td_ws_utf8_complete(&u));
    return 1;
}

/* [-1, +1] ws_accept(key) -> the Sec-WebSocket-Accept value */
static int ws_accept(lua_State *L) {
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    char out[29];
    if (td_ws_accept_key(key, len, out) != 0)
        return luaL_error(L, "websocket: out of memory");
    lua_pushlstring(L, out, 28);
    return 1;
}

/* [-0, +1] ws_key() -> a fresh Sec-WebSocket-Key: 16 random bytes, base64 */
static int ws_key(lua_State *L) {
    unsigned char raw[16], out[25];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return luaL_error(L, "websocket.connect: no random bytes");
    EVP_EncodeBlock(out, raw, sizeof raw);
    lua_pushlstring(L, (const char *)out, 24);
    return 1;
}

void td_api_websocket_drain(void) {
    /* Closes can end connections (a write fails): the tasks they wake run
     * after the loop, not inside it. */
    td_vm_hold(the_vm);
    /* A close may end other WebSockets (an early flush whose write fails:
     * conn.c), which leave the list: take the first of those still to do
     * each time, never a pointer kept across a close. */
    td_list todo;
    td_list_init(&todo);
    td_list_splice(&all, &todo);
    while (!td_list_empty(&todo)) {
        td_ws_conn *w = td_container_of(todo.next, td_ws_conn, link);
        td_list_remove(&w->link);
        td_list_push_back(&all, &w->link);
        going_away(w);
    }
    td_vm_release(the_vm);
}

/* [-0, +1] ws_count() -> the WebSockets open now (tendril.stats) */
static int ws_count(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)nopen);
    return 1;
}

void td_api_websocket_teardown(void) { td_ws_conn_shutdown(); }

void td_api_websocket_open(lua_State *L, td_vm *vm, td_http_server *hs) {
    static const luaL_Reg funcs[] = {
        {"ws_upgrade", ws_upgrade}, {"ws_client", ws_client}, {"ws_recv", ws_recv}, {"ws_send", ws_send},
        {"ws_close", ws_close},     {"ws_accept", ws_accept}, {"ws_key", ws_key},   {"ws_utf8", ws_utf8}, {"ws_count", ws_count}, {NULL, NULL},
    };
    server = hs;
    the_vm = vm;
    td_list_init(&all);
    nopen = 0;
    luaL_newmetatable(L, WS_MT);
    lua_pushcfunction(L, ws_gc);
    lua_setfield(L, -2, "__gc");
    lua_setfield(L, -2, "websocket_mt"); /* tendril.websocket sets __index */
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
